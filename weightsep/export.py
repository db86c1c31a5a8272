"""Binary export of a separated state for microcontrollers (modes w and p): the original's
files, byte for byte, plus our layout for quantized states.

Every file starts with a little-endian int32 count N, followed by N values, little-endian:

    weight          N = P * S float32: the shared pool, page after page
    weight_q        N = P * S int16: the pool in Q-format (below)
    <task>_e        N = k * S float32: the task's k exclusive pages, by ascending task page
                    (no file when the task has no exclusive page, as the original)
    <task>_q        N = k * S int16: the same in Q-format
    <task>_p        N = n_p uint16: the page table; entry e < P is shared page e, entry P + i is
                    the task's i-th exclusive page in <task>_e (task-local, unlike the state's
                    global exclusive rows)

Q-format (-Q, default 8 as the original): v = w * 2**Q, saturated to [-32768, 32767], then
truncated toward zero (the original packed the float with struct 'h', which truncates).

Quantized states (-page_dtype=int8/int4) also get, per pool and per task (our layout):

    weight_int8                 int32 P, int32 S, float32 scales [P], then the values: int8 [P, S]
    weight_int4                 int32 P, int32 S, int32 G (weights per scale), int32 K (int8 pages),
                                float16 scales [P, S / G], uint8 kinds [P] (4 or 8), then the values
                                uint8 [P, S / 2] and the int8 pages' low nibbles uint8 [K, S / 2]
    <task>_e_int8 / _e_int4     the same for the task's k exclusive pages (int32 k, int32 S, ...)

with weight = float32(q) * scale of its page or group (weightsep/pageformat.py, docs/FORMAT.md).  The float32 files hold the
dequantized values, so the original's readers work on quantized states too.

-mode=testdata writes each task's test split as the original's ``<task>_data.py`` modules did
(their write_data() / write_label()), so that a device can be checked against known inputs:

    <stem>_t        int32 N, int32 V (values per example), then N * V float32: each example's
                    input channel-first (C, H, W), example after example
    <stem>_l        int32 N, int32 1, then N int8: each example's class

where <stem> is the task's name, except the original's ``c10`` for cifar10.  docs/FORMAT.md
describes every file byte by byte.  The export directory is replaced all-or-nothing, and its
manifest.json lists exactly the files of the latest export of each mode with their SHA-256
(weightsep/export_dir.py).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from weightsep.errors import WeightSepError
from weightsep.export_dir import ExportFile, publish, state_of
from weightsep.limits import MAX_Q
from weightsep.pages import task_local_table
from weightsep.store import Store


def check_q(q: int) -> int:
    """-Q: the fraction bits of the int16 Q-format, 0..MAX_Q."""
    if not 0 <= q <= MAX_Q:
        raise WeightSepError(f"-Q={q}: the int16 Q-format needs 0..{MAX_Q} fraction bits")
    return q


def q_format(weights: np.ndarray, q: int) -> np.ndarray:
    """int16 Q-format as the original wrote it: w * 2**q, saturated, truncated toward zero."""
    check_q(q)
    scaled = np.asarray(weights, np.float64) * float(1 << q)
    return np.trunc(np.clip(scaled, -32768.0, 32767.0)).astype("<i2")


def _counted(values: np.ndarray) -> bytes:
    """An int32 count, then the values (the original's header + payload)."""
    return struct.pack("<i", values.size) + np.ascontiguousarray(values).tobytes()


def exclusive_rows(store: Store, name: str) -> np.ndarray:
    """The task's rows in the exclusive store, by ascending task page."""
    return task_local_table(store.task(name).page_table, store.num_pages)[0]


def task_exclusive_pages(store: Store, name: str) -> np.ndarray:
    """The task's exclusive pages, float32 [k, S], by ascending task page."""
    return store.exclusive[exclusive_rows(store, name)]


def local_page_table(store: Store, name: str) -> np.ndarray:
    """The page table with exclusive entries numbered P + (rank among the task's exclusive pages)."""
    return task_local_table(store.task(name).page_table, store.num_pages)[1]


def _quantized_file(stored, page_size: int) -> bytes:
    """One pool's or task's quantized pages (pageformat.Encoded) in the export layout (top)."""
    values, scales, wide, bits = stored
    if bits is None:
        return (struct.pack("<ii", len(scales), page_size) + scales.astype("<f4").tobytes()
                + np.ascontiguousarray(values).tobytes())
    return (struct.pack("<iiii", len(scales), page_size, page_size // scales.shape[1], len(wide))
            + scales.astype("<f2").tobytes() + bits.tobytes() + np.ascontiguousarray(values).tobytes()
            + np.ascontiguousarray(wide).tobytes())


# The original's test-data file stems where they are not the task's name (cifar10_data.py wrote c10_t).
TEST_DATA_STEMS = {"cifar10": "c10"}

POOL_FILES = ("weight", "weight_q", "weight_int8", "weight_int4", "manifest.json")


def _check_names(store: Store, suffixes: tuple[str, ...]) -> None:
    """No task's file may overwrite the pool's files or another task's (a task named `weight`)."""
    for rec in store.tasks:
        clash = [f"{rec.name}{suffix}" for suffix in suffixes if f"{rec.name}{suffix}" in POOL_FILES]
        if clash:
            raise WeightSepError(f"task {rec.name} cannot be exported: its file {clash[0]} would overwrite the "
                                 f"pool's file of that name; rename the task (remove it and add it under another name)")


def weight_files(store: Store, q: int = 8) -> list[ExportFile]:
    """-mode=w's files: the pool and every task's exclusive pages, float32 and Q-format (+ quantized)."""
    check_q(q)
    _check_names(store, ("_e", "_q", "_e_int8", "_e_int4"))
    pool = store.shared.reshape(-1)
    files = [ExportFile("weight", _counted(pool.astype("<f4")), "float32 pool"),
             ExportFile("weight_q", _counted(q_format(pool, q)), f"int16 Q{q} pool")]
    quantized = store.page_dtype != "float32"
    if quantized:
        files.append(ExportFile(f"weight_{store.page_dtype}", _quantized_file(store.quantized("shared"),
                                                                              store.page_size),
                                f"{store.page_dtype} pool with its scales"))
        exclusive = store.quantized("exclusive")
    for rec in store.tasks:
        if not rec.exclusive_pages:
            continue
        pages = task_exclusive_pages(store, rec.name).reshape(-1)
        files += [ExportFile(f"{rec.name}_e", _counted(pages.astype("<f4")), "float32 exclusive pages"),
                  ExportFile(f"{rec.name}_q", _counted(q_format(pages, q)), f"int16 Q{q} exclusive pages")]
        if quantized:
            rows = exclusive_rows(store, rec.name)
            files.append(ExportFile(f"{rec.name}_e_{store.page_dtype}",
                                    _quantized_file(exclusive.rows(rows), store.page_size),
                                    f"{store.page_dtype} exclusive pages with their scales"))
    return files


def export_weights(store: Store, out_dir: Path, q: int = 8) -> list[str]:
    """-mode=w: write weight_files into out_dir (all-or-nothing); the original's printed lines."""
    files = weight_files(store, q)  # everything is computed and checked before anything is written
    pool_size = store.shared.size
    lines = [f"weight_len {pool_size}"] * 2
    for rec in store.tasks:
        lines.append(rec.name)
        if rec.exclusive_pages:
            lines += [f"vnn_exclusive_weight_len {len(rec.exclusive_pages) * store.page_size}"] * 2
        else:
            lines.append("no exclusive weight")
    lines += publish(out_dir, "w", files, state_of(store), {"q": q})
    lines.append(f"wrote {out_dir}")
    return lines


def page_table_files(store: Store) -> list[ExportFile]:
    """-mode=p's files: each task's page table as uint16 entries (task-local exclusive numbering)."""
    _check_names(store, ("_p",))
    files = []
    for rec in store.tasks:
        table = local_page_table(store, rec.name)
        if table.size and table.max() > np.iinfo(np.uint16).max:
            raise WeightSepError(f"task {rec.name}: page table entry {int(table.max())} does not fit the uint16 "
                                 f"entries of the original's <task>_p file (pool of {store.num_pages} pages)")
        files.append(ExportFile(f"{rec.name}_p", _counted(table.astype("<u2")), "uint16 page table"))
    return files


def export_page_tables(store: Store, out_dir: Path, full_tables: bool = True) -> list[str]:
    """-mode=p: write page_table_files into out_dir (all-or-nothing); the original's printed lines,
    each table in full, or its first and last entries (``full_tables`` False)."""
    files = page_table_files(store)
    lines = []
    for rec in store.tasks:
        table = local_page_table(store, rec.name)
        lines += [rec.name, str(table.tolist()) if full_tables else _shortened(table),
                  f"weight_page_list_len {table.size}"]
    lines += publish(out_dir, "p", files, state_of(store))
    lines.append(f"wrote {out_dir}")
    return lines


def test_data_files(name: str) -> tuple[str, str]:
    """(inputs, labels) file names of a task's test data: the original's ``<stem>_t``, ``<stem>_l``."""
    stem = TEST_DATA_STEMS.get(name, name)
    return f"{stem}_t", f"{stem}_l"


def test_data_bytes(x: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[bytes, bytes]:
    """The two files' bytes for inputs x [N, H, W, C] and classes y [N]: inputs channel-first
    (the layout the original's microcontroller code reads), classes as int8."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 4 or y.shape != (x.shape[0],):
        raise WeightSepError(f"test data of shape {x.shape} with labels {y.shape}: expected [N, H, W, C] and [N]")
    if num_classes > 128:
        raise WeightSepError(f"{num_classes} classes do not fit the int8 labels of the original's test-data file")
    n, values = x.shape[0], int(np.prod(x.shape[1:]))
    inputs = np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)), dtype="<f4")
    return (struct.pack("<ii", n, values) + inputs.tobytes(),
            struct.pack("<ii", n, 1) + np.asarray(y, "<i1").tobytes())


def export_test_data(store: Store, out_dir: Path, tests: dict, num_examples: int | None = None) -> list[str]:
    """-mode=testdata: for each task, {name: (x [N, H, W, C], y [N], num_classes)}, its first
    ``num_examples`` test examples (default all) in the original's files.  Every task is checked
    (enough examples, distinct file names) before anything is written."""
    files, lines = {}, []
    for name, (x, y, num_classes) in tests.items():
        if num_examples is not None and num_examples > len(y):
            raise WeightSepError(f"-num_examples={num_examples}: the test split of {name} holds only {len(y)} examples")
        k = len(y) if num_examples is None else num_examples
        data_name, label_name = test_data_files(name)
        for taken in (data_name, label_name):
            if taken in files:
                raise WeightSepError(f"tasks {files[taken][0]} and {name} would both write the test-data file "
                                     f"{taken}; export them one at a time (-vnn_name) into different -export_dir")
        data, labels = test_data_bytes(x[:k], y[:k], num_classes)
        files[data_name], files[label_name] = (name, data), (name, labels)
        lines += [name, f"data_len: {k}", f"single_data_size: {int(np.prod(x.shape[1:]))}"]
    exported = [ExportFile(file_name, data, f"{name} " + ("test inputs (float32, channel-first)"
                                                         if file_name.endswith("_t") else "test labels (int8)"))
                for file_name, (name, data) in files.items()]
    lines += publish(out_dir, "testdata", exported, state_of(store), {"num_examples": num_examples})
    lines.append(f"wrote {out_dir}")
    return lines


def _shortened(table: np.ndarray, keep: int = 6) -> str:
    """A long page table as its first and last ``keep`` entries."""
    if table.size <= 2 * keep:
        return str(table.tolist())
    head, tail = ", ".join(map(str, table[:keep].tolist())), ", ".join(map(str, table[-keep:].tolist()))
    return f"[{head}, ..., {tail}] ({table.size} entries; -print_tables prints them all)"

