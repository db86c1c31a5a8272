"""Multitask execution: switching between the separated tasks, and the baseline.

``WSRuntime`` is the paper's runtime (ws_execution.py).  The shared pool stays
resident in level-1 memory (GPU memory when TensorFlow sees a GPU and the device
allows, else host RAM) as one tensor; the exclusive pages stay in level-2 memory:

- ``secondary="disk"`` (the CPU default): in ``exclusive_weight_page.npy``.  The file
  is opened once; a switch reads the task's rows with ``os.preadv`` straight into a
  buffer made for that task at start-up, one call per run of consecutive rows (a
  task's rows are consecutive, so one call).  We use pread rather than a memory map
  because a map keeps every page it touched mapped into the process after the first
  switch, so later "reads" would be plain RAM accesses; pread goes through the file
  system on every switch (from the page cache when the file is cached, as here).
  It is also the faster of the two at these sizes (see BENCHMARKS.md).
- ``secondary="host"`` (the GPU default): the whole exclusive store in host RAM; a
  switch copies the task's rows out of it.

A switch to a task = bring in its exclusive rows + ONE PageGather call (shared
pool, the rows brought in, the task's page table renumbered over those rows) whose
output is the weight vector the task's model runs with: each task has a compiled
inference function ``(w, x, y) -> correct`` that calls the network statelessly with
``w``, so nothing is assigned variable by variable.  Without the custom op, a
compiled tf.gather/dynamic_stitch function computes the same vector.

``BaselineRuntime`` is the runtime without weight separation (baseline_execution.py):

- ``baseline="file"`` (the paper's baseline): each switch restores the task's whole
  saved network, ``<task>/<task>.weights.h5``, with ``model.load_weights``.  These
  are the networks before separation, so accuracies differ from the separated ones.
- ``baseline="raw"``: each switch reads the task's flat float32 vector (its separated
  weights, materialized once at start-up into a raw file in a cache folder) and
  writes it into the model's variables in one compiled split-and-assign call.  Same
  weights and accuracies as WSRuntime: only the way weights are loaded differs.

Both runtimes run the same random task sequence for the same seed
(``task_sequence``) and share the loop that prints the original's lines
(``run_executions``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from weightsep import data as datasets
from weightsep.errors import StateError, WeightSepError
from weightsep.networks import Network, load_network, network_file
from weightsep.store import EXCLUSIVE_FILE, Store, TaskRecord
from weightsep.tasks import TaskSpec, load_task
from weightsep.tf import tf

Log = Callable[[str], None]

DEVICES = ("auto", "cpu", "gpu")
SECONDARIES = ("disk", "host")
GATHERS = ("auto", "op", "tf")
BASELINES = ("file", "raw")


# --- shared pieces ------------------------------------------------------------------

def task_sequence(names: list[str], count: int, seed: int) -> list[str]:
    """The random tasks to execute: uniform over ``names`` (registration order), seeded."""
    if not names:
        raise WeightSepError("the state holds no tasks: add some with -mode=a -network_path=<task>")
    picks = np.random.default_rng(seed).integers(0, len(names), size=count)
    return [names[i] for i in picks]


def pick_device(device: str) -> str:
    """The TensorFlow device string for -device=auto|cpu|gpu."""
    if device not in DEVICES:
        raise WeightSepError(f"-device must be one of {', '.join(DEVICES)}, not {device!r}")
    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise WeightSepError("-device=gpu, but TensorFlow sees no GPU (a CPU-only TensorFlow is installed, "
                             "or no CUDA device is visible); use -device=cpu, or install tensorflow[and-cuda]")
    return "/GPU:0" if gpus and device != "cpu" else "/CPU:0"


def _sync(device: str) -> None:
    """Wait for queued device work so that a timing covers it (CPU eager ops are synchronous)."""
    if device.startswith("/GPU"):
        tf.test.experimental.sync_devices()


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def _load_state(state_dir) -> Store:
    store = Store(state_dir)
    if not store.exists():
        raise StateError(f"no separated state in {store.dir}: build one first with "
                         f"`python WeightSeparation.py -mode=a -network_path=<task>` for each task "
                         f"(./formation.sh), or pass the -state_dir that holds it")
    store.load()
    if not store.tasks:
        raise StateError(f"the state in {store.dir} holds no tasks; add some with -mode=a -network_path=<task>")
    return store


def _spec(record: TaskRecord) -> TaskSpec:
    return load_task(record.network_path or record.name)


def _test_split(spec: TaskSpec, record: TaskRecord, data: Optional[str], seed: int) -> datasets.Dataset:
    return datasets.load_split(spec, "test", data=data or record.settings.get("data", "real"), seed=seed)


def _count_correct(probs, y):
    predicted = tf.argmax(probs, axis=1, output_type=tf.int64)
    return tf.reduce_sum(tf.cast(tf.equal(predicted, y), tf.int64))


def _batches(test: datasets.Dataset, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    y = np.asarray(test.y, np.int64)
    return [(test.x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]


def _run_batches(call, batches, device: str) -> float:
    correct = 0
    for x, y in batches:
        correct += int(call(x, y))  # int() waits for the result
    total = sum(len(y) for _, y in batches)
    _sync(device)
    return correct / total if total else float("nan")


class _PreadRows:
    """Reads rows of a float32 [E, S] .npy file with os.preadv into given buffers."""

    def __init__(self, path: Path, shape: tuple[int, int]):
        self.path = path
        with open(path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)(f)
            except ValueError as e:
                raise StateError(f"{path} is not a .npy file ({e})") from None
            self.offset = f.tell()
        file_shape, fortran, dtype = header
        if tuple(file_shape) != tuple(shape) or fortran or dtype != np.dtype("<f4"):
            raise StateError(f"{path} holds {dtype} {file_shape} (fortran order {fortran}), expected "
                             f"little-endian float32 {tuple(shape)} in C order")
        self.row_bytes = shape[1] * 4
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


def _exclusive_file(store: Store) -> Path:
    """The exclusive store file whose content is the committed one (the real file, else its pending file)."""
    committed = store.exclusive
    for path in (store.dir / EXCLUSIVE_FILE, store.dir / EXCLUSIVE_FILE.replace(".npy", ".pending.npy")):
        try:
            on_disk = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            continue
        if on_disk.shape == committed.shape and on_disk.dtype == np.float32 and np.array_equal(on_disk, committed):
            return path
    raise StateError(f"{store.dir / EXCLUSIVE_FILE} does not hold the exclusive pages the registry refers to; "
                     f"re-run a mode that writes the state (e.g. -mode=l) to finish an interrupted commit")


# --- the page gather ----------------------------------------------------------------

def _custom_op():
    """(page_gather, None) when the PageGather op is built and loadable, else (None, why)."""
    try:
        from custom_ops.page_gather import available, page_gather
    except ImportError as exc:
        return None, f"custom_ops.page_gather cannot be imported ({exc})"
    if not available():
        return None, "the op library is not built for this TensorFlow (make -C custom_ops PYTHON=$PWD/.venv/bin/python)"
    return page_gather, None


def _tf_gather_fn(num_shared: int, table: np.ndarray, num_weights: int, page_size: int, rows: int):
    """A compiled (shared, exclusive_rows) -> weights equal to PageGather with the same table."""
    on_pool = np.flatnonzero(table < num_shared).astype(np.int32)
    on_rows = np.flatnonzero(table >= num_shared).astype(np.int32)
    pool_entries = table[on_pool].astype(np.int32)
    row_entries = (table[on_rows] - num_shared).astype(np.int32)

    @tf.function(input_signature=[tf.TensorSpec([num_shared, page_size], tf.float32),
                                  tf.TensorSpec([rows, page_size], tf.float32)])
    def gather(shared, exclusive):
        pages = tf.dynamic_stitch([on_pool, on_rows],
                                  [tf.gather(shared, pool_entries), tf.gather(exclusive, row_entries)])
        return tf.reshape(pages, [-1])[:num_weights]

    return gather


# --- weight separation --------------------------------------------------------------

@dataclasses.dataclass
class _Slot:
    """What a task needs at switch time, all made at start-up."""

    index: int
    record: TaskRecord
    rows: np.ndarray            # its exclusive rows in the store, ascending
    buffer: np.ndarray          # [k, S] float32: where its rows are brought in
    runs: list                  # pread plan for the rows (disk)
    table: object               # int32[n_p] on the device, exclusive entries renumbered P + 0..k-1
    gather: Callable            # (shared, rows) -> weights
    infer: Callable             # compiled (w, x, y) -> correct count
    batches: list


class _Runtime:
    """What both runtimes share: the running task, timed execution, closing."""

    device: str
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
        _sync(self.device)
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
            accuracy = _run_batches(call, batches, self.device)
        return accuracy, time.perf_counter() - start

    def close(self) -> None:
        """Release files and caches (nothing by default)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class WSRuntime(_Runtime):
    """Task switching with weight separation; see the module docstring."""

    def __init__(self, state_dir=".", device: str = "auto", secondary: Optional[str] = None,
                 data: Optional[str] = None, data_seed: int = 0, batch_size: int = 1000,
                 gather: str = "auto", log: Optional[Log] = print):
        log = log or (lambda line: None)
        self.device = pick_device(device)
        self.secondary = secondary or ("host" if self.device.startswith("/GPU") else "disk")
        if self.secondary not in SECONDARIES:
            raise WeightSepError(f"-secondary must be one of {', '.join(SECONDARIES)}, not {self.secondary!r}")
        if gather not in GATHERS:
            raise WeightSepError(f"gather must be one of {', '.join(GATHERS)}, not {gather!r}")
        store = _load_state(state_dir)
        self.state_dir = store.dir
        self.page_size, self.num_shared = store.page_size, store.num_pages

        op, why_not = _custom_op() if gather != "tf" else (None, "gather=tf was asked for")
        if gather == "op" and op is None:
            raise WeightSepError(f"the PageGather custom op is not usable: {why_not}")
        self._op = op
        self.gather_kind = "PageGather custom op" if op is not None else "tf.gather fallback"
        log(f"page gather: {self.gather_kind}" + ("" if op is not None else f" ({why_not}; same result)"))

        start = time.perf_counter()
        with tf.device(self.device):
            self.shared = tf.identity(tf.constant(store.shared))
        _sync(self.device)
        log(f"shared_weight device: {self.shared.device}")
        log(f"init shared_weight {_ms(time.perf_counter() - start)}")

        # Level 2: a file read at each switch, or the whole store in host RAM.
        self._reader = None
        self._host = None
        if self.secondary == "disk":
            self._reader = _PreadRows(_exclusive_file(store), store.exclusive.shape)
            log(f"exclusive pages: {store.exclusive.shape[0]} rows read from {self._reader.path} at each switch")
        else:
            self._host = np.array(store.exclusive)
            log(f"exclusive pages: {store.exclusive.shape[0]} rows in host RAM")

        self._slots: dict[str, _Slot] = {}
        records = sorted(store.tasks, key=lambda r: r.id)
        for index, record in enumerate(records):
            start = time.perf_counter()
            slot = self._make_slot(index, record)
            log(f"[VNN {index}][{record.name}] init page table {_ms(time.perf_counter() - start)}")
            spec = _spec(record)
            slot.batches = _batches(_test_split(spec, record, data, data_seed), batch_size)
            slot.infer = self._make_infer(Network(spec), record.num_weights)
            self._slots[record.name] = slot
        del store  # from here on, the exclusive pages live only in level 2

        self.task_names = [r.name for r in records]
        self.weights = None
        self.current: Optional[str] = None
        start = time.perf_counter()
        for name in self.task_names:  # compile and warm up every function once, untimed
            self.switch(name)
            self.execute(name)
        self.weights, self.current = None, None
        log(f"init networks {_ms(time.perf_counter() - start)} ({len(self.task_names)} compiled, warmed up)")

    def _make_slot(self, index: int, record: TaskRecord) -> _Slot:
        P, S = self.num_shared, self.page_size
        table = record.page_table.astype(np.int64)
        exclusive = table >= P
        rows = np.sort(table[exclusive] - P)
        renumbered = table.copy()
        renumbered[exclusive] = P + np.searchsorted(rows, table[exclusive] - P)
        renumbered = renumbered.astype(np.int32)
        buffer = np.zeros((len(rows), S), np.float32)
        runs = self._reader.plan(rows) if self._reader is not None else []
        with tf.device(self.device):
            table_tensor = tf.identity(tf.constant(renumbered))
        if self._op is not None:
            op, n = self._op, record.num_weights
            gather = lambda shared, exclusive: op(shared, exclusive, table_tensor, n)  # noqa: E731
        else:
            gather = _tf_gather_fn(P, renumbered, record.num_weights, S, len(rows))
        _sync(self.device)
        return _Slot(index, record, rows, buffer, runs, table_tensor, gather, None, [])

    def _make_infer(self, net: Network, num_weights: int) -> Callable:
        def correct(w, x, y):
            return _count_correct(net.forward(w, x), y)
        spec = net.task
        return tf.function(correct, input_signature=[
            tf.TensorSpec([num_weights], tf.float32),
            tf.TensorSpec([None, *spec.input_shape], tf.float32),
            tf.TensorSpec([None], tf.int64)])

    def bring_in(self, name: str) -> np.ndarray:
        """The task's exclusive rows, read from level 2 into its buffer."""
        slot = self._slots[name]
        if self._reader is not None:
            self._reader.read(slot.runs, slot.buffer)
        elif len(slot.rows):
            np.take(self._host, slot.rows, axis=0, out=slot.buffer)
        return slot.buffer

    def _loader(self, name: str) -> Callable[[], None]:
        slot = self._slot(name)

        def load():
            rows = self.bring_in(name)
            with tf.device(self.device):
                self.weights = slot.gather(self.shared, rows)
        return load

    def _inference(self, name: str) -> tuple[Callable, list]:
        slot = self._slots[name]
        return (lambda x, y: slot.infer(self.weights, x, y)), slot.batches

    def current_weights(self) -> np.ndarray:
        """The running task's weight vector, as the model runs it."""
        return np.asarray(self.weights.numpy())

    def gather_floor(self, name: str) -> tuple[float, float]:
        """(seconds to read the task's exclusive bytes, seconds of one bare gather) of one switch."""
        slot = self._slot(name)
        start = time.perf_counter()
        rows = self.bring_in(name)
        read = time.perf_counter() - start
        start = time.perf_counter()
        with tf.device(self.device):
            slot.gather(self.shared, rows)
        _sync(self.device)
        return read, time.perf_counter() - start

    def _slot(self, name: str) -> _Slot:
        if name not in self._slots:
            raise WeightSepError(f"task {name!r} is not in the state (tasks: {', '.join(self._slots)})")
        return self._slots[name]

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


# --- the baseline -------------------------------------------------------------------

@dataclasses.dataclass
class _BaselineTask:
    net: Network
    source: Path
    infer: Callable
    batches: list
    assign: Optional[Callable] = None
    buffer: Optional[np.ndarray] = None
    fd: int = -1


class BaselineRuntime(_Runtime):
    """Task switching without weight separation: a full reload of the task's weights per switch."""

    def __init__(self, state_dir=".", baseline: str = "file", device: str = "auto",
                 data: Optional[str] = None, data_seed: int = 0, batch_size: int = 1000,
                 cache_dir=None, log: Optional[Log] = print):
        log = log or (lambda line: None)
        if baseline not in BASELINES:
            raise WeightSepError(f"-baseline must be one of {', '.join(BASELINES)}, not {baseline!r}")
        self.baseline = baseline
        self.device = pick_device(device)
        store = _load_state(state_dir)
        records = sorted(store.tasks, key=lambda r: r.id)
        self._own_cache = None
        if baseline == "raw":
            if cache_dir is None:
                self._own_cache = cache_dir = tempfile.mkdtemp(prefix="ws_baseline_raw_")
            cache_dir = Path(cache_dir)
            cache_dir.mkdir(parents=True, exist_ok=True)
            log(f"baseline raw: each switch reads the task's separated weights (float32) from {cache_dir} "
                f"and assigns them in one compiled call; accuracies equal the separated tasks'")
        else:
            log("baseline file: each switch restores the task's own network file <task>/<task>.weights.h5 "
                "(the networks before separation; accuracies differ from the separated tasks')")
        self._tasks: dict[str, _BaselineTask] = {}
        with tf.device(self.device):
            for record in records:
                spec = _spec(record)
                if baseline == "file":
                    net = load_network(spec)  # also checks the file is there and loadable
                    source = network_file(spec)
                else:
                    net = Network(spec)
                    source = cache_dir / f"{record.name}.f32"
                    store.materialize(record.name).tofile(source)
                task = _BaselineTask(net, source, self._make_infer(net),
                                     _batches(_test_split(spec, record, data, data_seed), batch_size))
                if baseline == "raw":
                    task.assign = self._make_assign(net)
                    task.buffer = np.empty(net.num_weights, np.float32)
                    task.fd = os.open(source, os.O_RDONLY)
                self._tasks[record.name] = task
                log(f"[DNN {record.id}][{record.name}] {source}")
        self.task_names = [r.name for r in records]
        self.current: Optional[str] = None
        start = time.perf_counter()
        for name in self.task_names:  # compile and warm up every function once, untimed
            self.switch(name)
            self.execute(name)
        self.current = None
        log(f"init networks {_ms(time.perf_counter() - start)} ({len(self.task_names)} compiled, warmed up)")

    @staticmethod
    def _make_infer(net: Network) -> Callable:
        def correct(x, y):
            return _count_correct(net.model(x, training=False), y)
        return tf.function(correct, input_signature=[
            tf.TensorSpec([None, *net.task.input_shape], tf.float32), tf.TensorSpec([None], tf.int64)])

    @staticmethod
    def _make_assign(net: Network) -> Callable:
        variables = list(net.model.trainable_variables)

        @tf.function(input_signature=[tf.TensorSpec([net.num_weights], tf.float32)])
        def assign(w):
            for variable, part in zip(variables, net.unflatten(w)):
                variable.assign(part)
        return assign

    def _loader(self, name: str) -> Callable[[], None]:
        """A switch reloads the task's whole weights."""
        task = self._task(name)

        def load():
            if self.baseline == "file":
                task.net.model.load_weights(str(task.source))
                return
            size = task.buffer.nbytes
            if os.preadv(task.fd, [memoryview(task.buffer).cast("B")], 0) != size:
                raise WeightSepError(f"short read of {task.source}: the cache file changed while running")
            with tf.device(self.device):
                task.assign(task.buffer)
        return load

    def _inference(self, name: str) -> tuple[Callable, list]:
        task = self._tasks[name]
        return task.infer, task.batches

    def current_weights(self) -> np.ndarray:
        return self._tasks[self.current].net.get_vector()

    def _task(self, name: str) -> _BaselineTask:
        if name not in self._tasks:
            raise WeightSepError(f"task {name!r} is not in the state (tasks: {', '.join(self._tasks)})")
        return self._tasks[name]

    def close(self) -> None:
        for task in self._tasks.values():
            if task.fd >= 0:
                os.close(task.fd)
                task.fd = -1
        if self._own_cache:
            shutil.rmtree(self._own_cache, ignore_errors=True)
            self._own_cache = None


# --- the execution loop -------------------------------------------------------------

@dataclasses.dataclass
class Execution:
    task: str
    load_seconds: float
    run_seconds: float
    accuracy: float


def run_executions(runtime, count: int, seed: int, log: Optional[Log] = print) -> list[Execution]:
    """Switch to and run ``count`` random tasks, printing the original's lines."""
    log = log or (lambda line: None)
    results: list[Execution] = []
    total_load = total_run = 0.0
    for i, name in enumerate(task_sequence(runtime.task_names, count, seed)):
        log(f"[{i}/{count}] total_weight_load_time: {_ms(total_load)}, total_execution_time: {_ms(total_run)}")
        log(f"[Executing] {name}")
        load = runtime.switch(name)
        log(f"weights load time : {_ms(load)}")
        accuracy, run = runtime.execute(name)
        log(f"{name} inference accuracy: {accuracy:.6f}")
        log(f"DNN execution time: {_ms(run)}")
        total_load += load
        total_run += run
        results.append(Execution(name, load, run, accuracy))
    log(f"total weights load time : {_ms(total_load)}")
    log(f"total DNN execution time: {_ms(total_run)}")
    if results:
        log(f"median weights load time : {_ms(statistics.median(r.load_seconds for r in results))} "
            f"over {len(results)} switches")
    return results
