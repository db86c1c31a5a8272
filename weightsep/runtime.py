"""Multitask execution with weight separation: switching between the separated tasks.

``WSRuntime`` is the paper's runtime (ws_execution.py).  The shared pool stays resident in
level-1 memory (GPU memory when TensorFlow sees a GPU and the device allows, else host RAM) as
one tensor, in its stored form (float32, or int8 / packed int4 values with one scale per
page); the exclusive pages stay in level-2 memory:

- ``secondary="disk"`` (the CPU default): in the store's exclusive file(s), which the store
  names (``Store.exclusive_file()``).  The file is opened once; a switch reads the task's rows
  with ``os.preadv`` straight into the buffer the gather reads, one call per run of
  consecutive rows (a task's rows are consecutive, so one call).  We use pread rather than a
  memory map because a map keeps every page it touched mapped after the first switch, so later
  "reads" would be plain RAM accesses; pread goes through the file system on every switch (from
  the page cache when the file is cached).  Quantized states read 4x (int8) or 8x (int4) fewer
  bytes, plus 4 bytes of scale per page.
- ``secondary="host"`` (the GPU default): the whole exclusive store in host RAM; a switch copies
  the task's rows out of it.

A switch to a task = bring in its exclusive rows + gather the task's pages (the shared pool
and the rows brought in, through the task's page table renumbered over those rows) into the
weight vector the task's model runs with: each task has a compiled inference function
``(w, x, y) -> correct`` that calls the network statelessly with ``w``, so nothing is assigned
variable by variable.  Where the gather runs (``gather=``):

- ``"numpy"`` (the CPU default): the pool stays resident in host RAM in one array with room
  after it for one task's exclusive rows; a switch reads the rows (pread) into that room and
  gathers with ``np.take`` (int8 / int4: values, scales, then one float32 multiply) straight
  into ONE preallocated, 64-byte aligned weight buffer.  The compiled inference reads that
  buffer through a tensor that shares its memory (DLPack, checked at start-up), so a switch
  costs no TensorFlow call, as the original's ``weight_loader`` wrote a task's pages into its
  graph's variables through their addresses without one.  The first TensorFlow call after an
  inference costs 0.2-0.4 ms whatever it does (BENCHMARKS.md: the inference's activations
  evict the caches and TensorFlow's dispatch path runs cold), which is what this path leaves out.
- ``"op"`` (the GPU default; on a CPU, the previous default): ONE call of the PageGather custom
  op (PageGatherQuantized for int8 states, PageGatherQuantizedMixed for int4) over the pool
  resident as a tensor (GPU memory when TensorFlow sees a GPU); its output is the weight vector.
- ``"tf"``: a compiled tf.gather/dynamic_stitch function computing the same vector (also what
  ``"auto"`` falls back to on a GPU when the op is not built).

All three give the store's materialized (dequantized) weights bit for bit.

``weightsep.baseline.BaselineRuntime`` is the runtime without weight separation.  Both run the
same random task sequence for the same seed (``task_sequence``: tasks sorted by name, as the
original's ws_execution.py) and share the loop that prints the original's lines
(``run_executions``).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from weightsep import data as datasets
from weightsep.errors import StateError, WeightSepError, formation_hint
from weightsep.limits import DEFAULT_GATHER, GATHERS, SECONDARIES
from weightsep.networks import Network
from weightsep.pageformat import effective_scale, page_format, wide_rows
from weightsep.pages import task_local_table
from weightsep.store import Store, TaskRecord
from weightsep.tasks import TaskSpec
from weightsep.tf import tf

Log = Callable[[str], None]

DEVICES = ("auto", "cpu", "gpu")


# --- shared pieces ------------------------------------------------------------------

def task_sequence(names: list[str], count: int, seed: int) -> list[str]:
    """The random tasks to execute: uniform over ``names`` (sorted by name), seeded."""
    if not names:
        raise WeightSepError("no tasks to execute: the sequence needs at least one task name")
    picks = np.random.default_rng(seed).integers(0, len(names), size=count)
    ordered = sorted(names)
    return [ordered[i] for i in picks]


def pick_device(device: str) -> str:
    """The TensorFlow device string for -device=auto|cpu|gpu."""
    if device not in DEVICES:
        raise WeightSepError(f"-device must be one of {', '.join(DEVICES)}, not {device!r}")
    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise WeightSepError("-device=gpu, but TensorFlow sees no GPU (a CPU-only TensorFlow is installed, "
                             "or no CUDA device is visible); use -device=cpu, or install tensorflow[and-cuda]")
    return "/GPU:0" if gpus and device != "cpu" else "/CPU:0"


def sync(device: str) -> None:
    """Wait for queued device work so that a timing covers it (CPU eager ops are synchronous)."""
    if device.startswith("/GPU"):
        tf.test.experimental.sync_devices()


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def load_state(state_dir) -> Store:
    """The state of an execution script: it must exist and hold tasks."""
    store = Store(state_dir).load()
    if not store.tasks:
        raise StateError(f"the state in {store.dir} holds no tasks; add them with {formation_hint(store.dir)}")
    return store


def test_batches(spec: TaskSpec, record: TaskRecord, data: Optional[str], data_seed: Optional[int],
                 batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The task's test split in batches (synthetic data: the seed recorded with the task by default)."""
    seed = record.settings.get("data_seed", 0) if data_seed is None else data_seed
    test = datasets.load_split(spec, "test", data=data or record.settings.get("data", "real"), seed=int(seed))
    y = np.asarray(test.y, np.int64)
    return [(test.x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]


def count_correct(probs, y):
    predicted = tf.argmax(probs, axis=1, output_type=tf.int64)
    return tf.reduce_sum(tf.cast(tf.equal(predicted, y), tf.int64))


class Runtime:
    """What both runtimes share: the running task, timed switches and executions, closing."""

    device: str
    description: str
    task_names: list[str]
    current: Optional[str] = None

    def _loader(self, name: str) -> Callable[[], None]:
        """The work of a switch to ``name``, as a call (lookups are done before timing)."""
        raise NotImplementedError

    def _inference(self, name: str) -> tuple[Callable, list]:
        """(call(x, y) -> correct count, test batches) of the running task."""
        raise NotImplementedError

    def switch(self, name: str) -> float:
        """Make ``name`` the running task; returns the seconds it took (the weight load time)."""
        load = self._loader(name)
        start = time.perf_counter()
        load()
        sync(self.device)
        seconds = time.perf_counter() - start
        self.current = name
        return seconds

    def execute(self, name: str) -> tuple[float, float]:
        """(test accuracy, seconds) of the running task, which must be ``name``."""
        if self.current != name:
            raise WeightSepError(f"execute({name!r}) but the running task is {self.current!r}: switch first")
        call, batches = self._inference(name)
        start = time.perf_counter()
        with tf.device(self.device):
            correct = sum(int(call(x, y)) for x, y in batches)  # int() waits for each result
        sync(self.device)
        return correct / sum(len(y) for _, y in batches), time.perf_counter() - start

    def warm_up(self) -> float:
        """Compile and run every task's functions once, untimed; returns the seconds it took."""
        start = time.perf_counter()
        for name in self.task_names:
            self.switch(name)
            self.execute(name)
        self.current = None
        return time.perf_counter() - start

    def close(self) -> None:
        """Release files and caches (nothing by default)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- the page gather ----------------------------------------------------------------

def _custom_ops(page_dtype: str):
    """(gather function of the custom op for this page dtype, None) when built, else (None, why)."""
    try:
        from custom_ops.page_gather import available, page_gather
        from custom_ops.page_gather_quantized import page_gather_quantized, page_gather_quantized_mixed
    except ImportError as exc:
        return None, f"custom_ops cannot be imported ({exc})"
    if not available():
        return None, "the op library is not built for this TensorFlow (make -C custom_ops PYTHON=$PWD/.venv/bin/python)"
    if page_dtype == "float32":
        return (lambda shared, rows, table, n: page_gather(shared[0], rows[0], table, n)), None
    if page_format(page_dtype).grouped:
        return (lambda shared, rows, table, n: page_gather_quantized_mixed(shared, rows, table, n)), None
    return (lambda shared, rows, table, n:
            page_gather_quantized(shared[0], shared[1], rows[0], rows[1], table, n)), None


def _tf_gather_fn(page_dtype: str, num_shared: int, table: np.ndarray, num_weights: int, group_size: int = 0):
    """A compiled (shared, rows) -> weights equal to the custom op with the same table."""
    on_pool = np.flatnonzero(table < num_shared).astype(np.int32)
    on_rows = np.flatnonzero(table >= num_shared).astype(np.int32)
    pool_entries = table[on_pool].astype(np.int32)
    row_entries = (table[on_rows] - num_shared).astype(np.int32)

    fmt = page_format(page_dtype, group_size or None)

    def pages(part, entries):
        values = tf.gather(part[0], entries)
        if not fmt.quantized:
            return values
        if not fmt.grouped:
            return fmt.dequantize_tf(values, tf.gather(part[1], entries))
        _, scales, wide, bits = part
        is_wide = tf.equal(bits, 8)
        rank = tf.cumsum(tf.cast(is_wide, tf.int32)) - 1
        padded = tf.concat([wide, tf.zeros([1, int(wide.shape[1])], tf.uint8)], 0)  # row k: zeros (int4 pages)
        chosen = tf.gather(is_wide, entries)
        low = tf.gather(padded, tf.where(chosen, tf.gather(rank, entries), tf.shape(wide)[0]))
        return fmt.dequantize_tf(values, tf.gather(scales, entries), low, chosen)

    @tf.function
    def gather(shared, rows):
        stitched = tf.dynamic_stitch([on_pool, on_rows], [pages(shared, pool_entries), pages(rows, row_entries)])
        return tf.reshape(stitched, [-1])[:num_weights]

    return gather


# --- the gather in host memory (gather="numpy") -------------------------------------------

def aligned_empty(count: int, dtype, align: int = 64) -> np.ndarray:
    """An uninitialized 1-D array whose data starts on an ``align``-byte boundary (TensorFlow's
    CPU kernels expect 64-byte aligned tensors; NumPy guarantees 16)."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(count * itemsize + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + count * itemsize].view(dtype)


class HostGather:
    """The pool resident in host RAM, room for one task's exclusive rows after it, and ONE weight
    buffer that a switch gathers into and the compiled inferences read (``gather="numpy"``).

    ``parts``: the stored arrays [P + R, ...] (values; and scales for int8 / int4), the pool in
    rows 0..P-1 and the running task's exclusive rows brought in at P..P+k-1 (``staging(k)``), R
    the most exclusive rows of any task.  ``gather(table)`` writes the pages of a task-local table
    (entries < P + k) into the buffer; ``tensor(n)`` is a tf.Tensor over the buffer's first n
    weights that shares its memory, so what a switch writes is what the next inference reads.
    """

    def __init__(self, page_dtype: str, pool: list[np.ndarray], max_rows: int, max_pages: int, page_size: int,
                 group_size: int = 0):
        self.format = page_format(page_dtype, group_size or None)
        self.num_shared = pool[0].shape[0]
        # int4: part 2 holds the int8 pages' low nibbles, the pool's K rows then the task's.
        self.first_row = [self.num_shared] * len(pool)
        if self.format.grouped:
            self.first_row[2] = pool[2].shape[0]
        self.parts = [np.concatenate([part, np.zeros((max_rows, *part.shape[1:]), part.dtype)]) for part in pool]
        self.buffer = aligned_empty(max_pages * page_size, np.float32)
        self.buffer[:] = 0
        self.pages = self.buffer.reshape(max_pages, page_size)
        if self.format.quantized:
            self.values = np.empty((max_pages, *pool[0].shape[1:]), pool[0].dtype)
            self.scales = np.empty(max_pages, np.float32)

    def staging(self, part_rows: list[int]) -> list[np.ndarray]:
        """Where a switch brings in a task's exclusive rows (``part_rows``: how many of each part): views
        of ``parts``."""
        return [part[first:first + rows] for part, first, rows in zip(self.parts, self.first_row, part_rows)]

    def gather(self, table: np.ndarray) -> None:
        """The task's pages into the buffer: float32(q) * scale for quantized pages (the format's
        decoding, bit for bit).  ``table`` must be task-local and checked (mode="clip" skips
        NumPy's per-call bounds pass, which also buffers the output)."""
        count = len(table)
        if not self.format.quantized:
            np.take(self.parts[0], table, axis=0, out=self.pages[:count], mode="clip")
            return
        if self.format.grouped:
            # Mixed int4 / int8 pages: the format's own decoding of the task's pages (rare: int4 states).
            bits = self.parts[3]  # the staged task's rows follow the pool's, as in `wide`
            picked = wide_rows(bits)[table]
            self.pages[:count] = self.format.dequantize(self.parts[0][table], self.parts[1][table],
                                                        self.parts[2][picked[picked >= 0]], bits[table])
            return
        # int8 (int4 pages are always grouped, above): the format's float32(q) * scale, into the buffer.
        values = np.take(self.parts[0], table, axis=0, out=self.values[:count], mode="clip")
        scales = effective_scale(np.take(self.parts[1], table, out=self.scales[:count], mode="clip"))
        np.multiply(values, scales[:, None], out=self.pages[:count])

    def tensor(self, num_weights: int):
        """A CPU tf.Tensor over the buffer's first ``num_weights`` weights, sharing its memory."""
        view = self.buffer[:num_weights]
        tensor = tf.experimental.dlpack.from_dlpack(view.__dlpack__())
        # A TensorFlow that copied here would run every task on stale weights: check it shares.
        saved = view[:1].copy()
        for probe in (np.float32(1.5), np.float32(-2.25)):
            view[0] = probe
            if num_weights and tf.reduce_sum(tensor[:1]).numpy() != probe:
                raise WeightSepError("this TensorFlow copies DLPack tensors from NumPy, so gather=numpy cannot "
                                     "share the weight buffer with the inference; use -gather=op")
        view[:1] = saved
        return tensor


# --- level-2 memory -------------------------------------------------------------------

class _PreadRows:
    """Reads rows of a 2-D (or 1-D: scales) .npy file with os.preadv into given buffers."""

    def __init__(self, path: Path, shape: tuple, dtype: np.dtype):
        self.path = path
        with open(path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)(f)
            except ValueError as e:
                raise StateError(f"{path} is not a .npy file ({e})") from None
            self.offset = f.tell()
        file_shape, fortran, file_dtype = header
        if tuple(file_shape) != tuple(shape) or fortran or file_dtype != np.dtype(dtype).newbyteorder("<"):
            raise StateError(f"{path} holds {file_dtype} {file_shape} (fortran order {fortran}), expected "
                             f"little-endian {np.dtype(dtype)} {tuple(shape)} in C order")
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
        self.fd = os.open(path, os.O_RDONLY)

    def plan(self, rows: np.ndarray) -> list[tuple[int, int, int]]:
        """(file offset, buffer offset, bytes) per run of consecutive rows; rows ascending."""
        runs, start = [], 0
        for i in range(1, len(rows) + 1):
            if i == len(rows) or rows[i] != rows[i - 1] + 1:
                runs.append((self.offset + int(rows[start]) * self.row_bytes, start * self.row_bytes,
                             (i - start) * self.row_bytes))
                start = i
        return runs

    def read(self, runs, buffer: np.ndarray) -> None:
        if not runs:  # nothing to read (e.g. a task without int8 pages): an empty buffer has no byte view
            return
        view = memoryview(buffer).cast("B")
        for file_offset, buffer_offset, size in runs:
            got = os.preadv(self.fd, [view[buffer_offset:buffer_offset + size]], file_offset)
            if got != size:
                raise StateError(f"short read of {self.path}: {got} of {size} bytes at offset {file_offset}; "
                                 f"the file changed while the runtime was running")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# --- weight separation --------------------------------------------------------------

@dataclasses.dataclass
class _Slot:
    """What a task needs at switch time, all made at start-up."""

    record: TaskRecord
    rows: np.ndarray            # its exclusive rows in the store, by ascending task page
    buffers: list               # where its rows are brought in: values (and scales; int4: wide, bits)
    part_rows: list             # per stored part, the rows it brings in
    runs: list                  # pread plans, one per file (disk)
    gather: Callable            # () -> the weights the inference reads, from the rows brought in
    infer: Callable = None      # compiled (w, x, y) -> correct count
    batches: list = dataclasses.field(default_factory=list)


class WSRuntime(Runtime):
    """Task switching with weight separation; see the module docstring."""

    def __init__(self, state_dir=".", device: str = "auto", secondary: Optional[str] = None,
                 data: Optional[str] = None, data_seed: Optional[int] = None, batch_size: int = 1000,
                 gather: str = DEFAULT_GATHER, specs: Optional[dict[str, TaskSpec]] = None, log: Optional[Log] = print):
        log = log or (lambda line: None)
        self.device = pick_device(device)
        on_gpu = self.device.startswith("/GPU")
        self.secondary = secondary or ("host" if on_gpu else "disk")
        if self.secondary not in SECONDARIES:
            raise WeightSepError(f"-secondary must be one of {', '.join(SECONDARIES)}, not {self.secondary!r}")
        if gather not in GATHERS:
            raise WeightSepError(f"-gather must be one of {', '.join(GATHERS)}, not {gather!r}")
        if gather == "numpy" and on_gpu:
            raise WeightSepError("-gather=numpy gathers in host RAM, so it runs on the CPU: add -device=cpu, "
                                 "or use -gather=op on the GPU")
        store = load_state(state_dir)
        self.state_dir, self.page_dtype = store.dir, store.page_dtype
        self.page_size, self.num_shared, self.group_size = store.page_size, store.num_pages, store.group_size
        records = sorted(store.tasks, key=lambda r: r.name)

        self.gather = gather if gather != "auto" else ("op" if on_gpu else "numpy")
        self._op, self._host_gather, self.shared = None, None, None
        kind = ("PageGather" if self.page_dtype == "float32" else
                f"PageGatherQuantized{'Mixed' if page_format(self.page_dtype).grouped else ''} ({self.page_dtype})")
        if self.gather == "op":
            self._op, why_not = _custom_ops(self.page_dtype)
            if self._op is None and gather == "op":
                raise WeightSepError(f"the PageGather custom op is not usable: {why_not}")
            if self._op is None:
                self.gather = "tf"
                log(f"page gather: tf.gather fallback ({why_not}; same result)")
        if self.gather == "numpy":
            self.gather_kind = "NumPy gather into the inference's weight buffer"
        else:
            self.gather_kind = f"{kind} custom op" if self.gather == "op" else "tf.gather fallback"
        self.description = f"{self.gather_kind}, exclusive pages from {self.secondary}"
        log(f"page gather: {self.gather_kind}")

        start = time.perf_counter()
        stored = [part for part in store.quantized("shared") if part is not None]
        exclusive = [part for part in store.quantized("exclusive") if part is not None]
        if self.gather == "numpy":
            tables = {r.name: task_local_table(r.page_table, self.num_shared) for r in records}
            self._host_gather = HostGather(self.page_dtype, stored, max(len(rows) for rows, _ in tables.values()),
                                           max(len(table) for _, table in tables.values()), self.page_size,
                                           self.group_size)
            log("shared_weight device: host RAM (NumPy, beside the rows of one task)")
        else:
            with tf.device(self.device):
                self.shared = tuple(tf.identity(tf.constant(part)) for part in stored)
            sync(self.device)
            log(f"shared_weight device: {self.shared[0].device}")
        log(f"init shared_weight {ms(time.perf_counter() - start)} ({store.page_dtype} pool, "
            f"{sum(int(part.nbytes) for part in stored)} bytes)")

        # Level 2: files read at each switch, or the whole store in host RAM.
        self._parts = exclusive
        bits = store.quantized("exclusive").bits
        self._wide_rows = None if bits is None else wide_rows(bits)
        self._readers, self._host = [], None
        if self.secondary == "disk":
            files = store.exclusive_file()
            paths = [path for path in files if path is not None]
            self._readers = [_PreadRows(path, part.shape, part.dtype) for path, part in zip(paths, self._parts)]
            log(f"exclusive pages: {exclusive[0].shape[0]} rows read from {files.values} at each switch")
        else:
            self._host = [np.array(part) for part in self._parts]
            log(f"exclusive pages: {exclusive[0].shape[0]} rows in host RAM")

        given = specs or {}
        self._slots: dict[str, _Slot] = {}
        for index, record in enumerate(records):
            start = time.perf_counter()
            slot = self._make_slot(record)
            log(f"[VNN {index}][{record.name}] init page table {ms(time.perf_counter() - start)}")
            spec = record.runnable_spec(given.get(record.name))
            slot.batches = test_batches(spec, record, data, data_seed, batch_size)
            slot.infer = self._make_infer(Network(spec, layout=store.layout), record.num_weights)
            self._slots[record.name] = slot
        del store, stored, exclusive  # from here on, the exclusive pages live only in level 2

        self.task_names = [r.name for r in records]
        self.weights = None
        log(f"init networks {ms(self.warm_up())} ({len(self.task_names)} compiled, warmed up)")
        self.weights = None

    def _make_slot(self, record: TaskRecord) -> _Slot:
        P, n = self.num_shared, record.num_weights
        rows, local = task_local_table(record.page_table, P)
        # The int8 pages' low nibbles (int4 states) are rows of their own: those of the task's int8 rows.
        part_rows = [rows] * len(self._parts)
        if self._wide_rows is not None:
            picked = self._wide_rows[rows]
            part_rows[2] = picked[picked >= 0]
        runs = [reader.plan(r) for reader, r in zip(self._readers, part_rows)]
        if self.gather == "numpy":
            host = self._host_gather
            table, weights = local.astype(np.intp), host.tensor(n)

            def gather():
                host.gather(table)
                return weights
            return _Slot(record, rows, host.staging([len(r) for r in part_rows]), part_rows, runs, gather)

        buffers = [np.zeros((len(r), *part.shape[1:]), part.dtype) for r, part in zip(part_rows, self._parts)]
        local = local.astype(np.int32)
        with tf.device(self.device):
            table_tensor = tf.identity(tf.constant(local))
        op = self._op if self.gather == "op" else _tf_gather_fn(self.page_dtype, P, local, n, self.group_size)

        def gather():
            with tf.device(self.device):
                if self.gather == "op":
                    return op(self.shared, buffers, table_tensor, n)
                return op(self.shared, buffers)
        sync(self.device)
        return _Slot(record, rows, buffers, part_rows, runs, gather)

    def _make_infer(self, net: Network, num_weights: int) -> Callable:
        def correct(w, x, y):
            return count_correct(net.forward(w, x), y)
        return tf.function(correct, input_signature=[
            tf.TensorSpec([num_weights], tf.float32),
            tf.TensorSpec([None, *net.task.input_shape], tf.float32),
            tf.TensorSpec([None], tf.int64)])

    def bring_in(self, name: str) -> list[np.ndarray]:
        """The task's exclusive rows (values, and scales), read from level 2 into its buffers."""
        slot = self._slots[name]
        if self._readers:
            for reader, runs, buffer in zip(self._readers, slot.runs, slot.buffers):
                reader.read(runs, buffer)
        elif len(slot.rows):
            for part, rows, buffer in zip(self._host, slot.part_rows, slot.buffers):
                np.take(part, rows, axis=0, out=buffer)
        return slot.buffers

    def _loader(self, name: str) -> Callable[[], None]:
        slot = self._slot(name)

        def load():
            self.bring_in(name)
            self.weights = slot.gather()
        return load

    def _inference(self, name: str) -> tuple[Callable, list]:
        slot = self._slots[name]
        return (lambda x, y: slot.infer(self.weights, x, y)), slot.batches

    def current_weights(self) -> np.ndarray:
        """The running task's weight vector, read through the tensor its inference reads."""
        return np.array(tf.identity(self.weights).numpy())

    def gather_floor(self, name: str) -> tuple[float, float]:
        """(seconds to read the task's exclusive bytes, seconds of one bare gather) of one switch."""
        slot = self._slot(name)
        start = time.perf_counter()
        self.bring_in(name)
        read = time.perf_counter() - start
        start = time.perf_counter()
        slot.gather()
        sync(self.device)
        return read, time.perf_counter() - start

    def _slot(self, name: str) -> _Slot:
        if name not in self._slots:
            raise WeightSepError(f"task {name!r} is not in the state (tasks: {', '.join(self._slots)})")
        return self._slots[name]

    def close(self) -> None:
        for reader in self._readers:
            reader.close()


# --- the execution loop -------------------------------------------------------------

@dataclasses.dataclass
class Execution:
    task: str
    load_seconds: float
    run_seconds: float
    accuracy: float


def run_executions(runtime: Runtime, count: int, seed: int, log: Optional[Log] = print,
                   on_switch: Optional[Callable[[int, Execution, tuple[float, float]], None]] = None
                   ) -> list[Execution]:
    """Switch to and run ``count`` random tasks, printing the original's lines.

    ``on_switch(i, execution, (total load seconds, total run seconds))`` is called after each.
    """
    log = log or (lambda line: None)
    results: list[Execution] = []
    total_load = total_run = 0.0
    for i, name in enumerate(task_sequence(runtime.task_names, count, seed)):
        log(f"[{i}/{count}] total_weight_load_time: {ms(total_load)}, total_execution_time: {ms(total_run)}")
        log(f"[Executing] {name}")
        load = runtime.switch(name)
        log(f"weights load time : {ms(load)}")
        accuracy, run = runtime.execute(name)
        log(f"{name} inference accuracy: {accuracy:.6f}")
        log(f"DNN execution time: {ms(run)}")
        total_load += load
        total_run += run
        results.append(Execution(name, load, run, accuracy))
        if on_switch is not None:
            on_switch(i, results[-1], (total_load, total_run))
    log(f"total weights load time : {ms(total_load)}")
    log(f"total DNN execution time: {ms(total_run)}")
    if results:
        log(f"median weights load time : {ms(statistics.median(r.load_seconds for r in results))} "
            f"over {len(results)} switches")
    return results
