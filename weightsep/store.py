"""The persistent separated state: shared pool, exclusive store, per-task vectors and task registry.

One `Store` object is the state of one `-state_dir` (default: the current
directory).  Files, named as in the original project where it had them
(P shared pages, E exclusive rows, S weights per page, n weights of a task):

    shared_weight_page.npy        the shared pool (level-1 memory), [P, S] values
    exclusive_weight_page.npy     all tasks' exclusive pages stacked (level-2 memory), [E, S] values
    shared_weight_scale.npy       quantized states only: float32 [P], one scale per shared page
    exclusive_weight_scale.npy    quantized states only: float32 [E], one scale per exclusive row
    <task>/<task>_<kind>.npy      per-task float32 [n] vectors, kind one of
                                  network_weight, network_fisher (the network and its Fisher, from
                                  -mode=a), weight (the task's materialized weights, rewritten by
                                  -mode=t), fisher (the Fisher of the separated task, -mode=f)
    weightsep_state.json          the registry (below)
    .weightsep.lock               writer lock; holds the writer's pid

Page dtype (chosen at creation, weightsep.quantize): a float32 state stores its
pages as float32 [P, S] / [E, S]; an int8 state as int8 [P, S] / [E, S] plus the
two scale files; an int4 state as uint8 [P, S / 2] / [E, S / 2] (two weights per
byte) plus the scale files.  In memory `Store.shared` and `Store.exclusive` are
always float32 [P, S] / [E, S] (dequantized once at load), so every algorithm works
unchanged; `Store.quantized()` gives the stored arrays.  Every write of float
values quantizes the pages whose values change; the other pages keep their exact
stored bytes, and what `materialize` returns is exactly what is stored.

The registry (JSON, schema version SCHEMA_VERSION) holds the state-wide fields
(page_size, num_pages, page_dtype, layout: the order of weights in the network
vector, "natural" or "transposed" as the original's -transpose), the tasks (id,
name, n, page table, exclusive pages, the task spec as JSON data, the folder it
was added from as information only, settings, accuracy), the dtype, shape and
SHA-256 of every file listed above, and a checksum: the SHA-256 of a canonical
encoding of everything else in it.  The checksum makes a hand edit (two page-table
entries swapped, a changed weight count) an error instead of a silently different
state; it is an integrity check, not a signature.  Nothing in a state directory is
ever run: a task's spec is data (weightsep.tasks.TaskSpec.from_json).

A task's page table follows the original runtime encoding: entry e < P is shared
page e, entry e >= P is exclusive row e - P.  Occupation of the shared pages is
never stored; it is derived from the page tables (weightsep.pages).

No pickle anywhere: arrays are plain .npy files whose header is checked against
the registry before any data is read, the registry is JSON.  Every load validates
dtypes, shapes, finiteness, checksums and page-table bounds, and fails with a
StateError naming the file and the fix.

Crash safety.  Every file is written atomically (weightsep.atomic), so each single
file is always either old or new.  A change spans several files (commit_task: pool,
exclusive store, the `weight` vector, settings), so the registry is the commit
record of every change:

  1. each changed file is first written to its *pending* file
     (`shared_weight_page.pending.npy`, `<task>/<task>_weight.pending.npy` ...);
  2. the registry is then replaced; it records the checksum of every file it
     refers to.  This rename is the commit point;
  3. the pending files are renamed over the real ones; files the new state no
     longer refers to (a removed task's vectors) are deleted.

A load takes, for each file, the real file if its checksum matches the registry,
else the pending file if that one matches.  A crash before 2 leaves the old
registry, which matches the untouched real files (stale pending files are
ignored, and deleted by the next writer).  A crash between 2 and 3 leaves the new
registry, which matches the pending files; the next writer finishes step 3 (the
registry lists the files to delete, with their checksums, so that the next writer
deletes exactly those).  The checksums also turn any other mismatch (a pool copied
from another state, a vector swapped with another task's) into a named error rather
than silently wrong weights.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import numpy as np

from weightsep import atomic, pages, quantize
from weightsep.errors import (StateError, StateLockedError, StateReadOnlyError, WeightSepError,
                              WriteError, is_int, shown)
from weightsep.tasks import MAX_WEIGHTS, TaskSpec, check_task_name

SCHEMA_VERSION = 2
SHARED_FILE = "shared_weight_page.npy"
EXCLUSIVE_FILE = "exclusive_weight_page.npy"
SHARED_SCALE_FILE = "shared_weight_scale.npy"
EXCLUSIVE_SCALE_FILE = "exclusive_weight_scale.npy"
REGISTRY_FILE = "weightsep_state.json"
LOCK_FILE = ".weightsep.lock"
VECTOR_KINDS = ("network_weight", "network_fisher", "weight", "fisher")
REQUIRED_VECTORS = ("network_weight", "network_fisher")
LAYOUTS = ("natural", "transposed")
# (values file, scales file) of the two page arrays.
POOL_FILES = {"shared": (SHARED_FILE, SHARED_SCALE_FILE), "exclusive": (EXCLUSIVE_FILE, EXCLUSIVE_SCALE_FILE)}

# Bounds a registry must respect, so that no state can ask for absurd memory.
MAX_PAGE_SIZE = 1 << 20
MAX_NUM_PAGES = 1 << 20
MAX_POOL_VALUES = 1 << 30
MAX_TABLE_ENTRY = (1 << 31) - 1       # page-table entries are int32
MAX_REGISTRY_BYTES = 64 << 20
MAX_NETWORK_PATH = 4096

_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_VECTOR_REL = re.compile(r"^([^/]+)/([^/]+)\.npy$")
_TOP_FILES = (SHARED_FILE, EXCLUSIVE_FILE, SHARED_SCALE_FILE, EXCLUSIVE_SCALE_FILE, REGISTRY_FILE, LOCK_FILE)
_REGISTRY_KEYS = ("schema_version", "generation", "page_size", "num_pages", "page_dtype", "layout",
                  "next_id", "files", "obsolete", "tasks")
_TASK_KEYS = ("name", "id", "num_weights", "page_table", "exclusive_pages", "network_path", "spec",
              "settings", "accuracy")
_ENTRY_KEYS = ("dtype", "shape", "sha256")


@dataclasses.dataclass(eq=False)
class TaskRecord:
    """One task in the registry.

    page_table: int32[n_p], n_p = ceil(num_weights / page_size); entry e < P is
    shared page e, e >= P is exclusive row e - P.  exclusive_pages lists the task
    page indices that are exclusive; for add_task their table entries are filled
    in by the store.  spec: the task spec as JSON data (TaskSpec.to_json()).
    network_path: the folder the task was added from (where its network file and
    data live); information only, never imported.  id is the registration order,
    assigned by the store.
    """

    name: str
    num_weights: int
    page_table: np.ndarray
    exclusive_pages: list[int]
    spec: dict
    id: int = -1
    network_path: str = ""
    settings: dict = dataclasses.field(default_factory=dict)
    accuracy: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.page_table = np.asarray(self.page_table, dtype=np.int32)
        self.exclusive_pages = [int(i) for i in self.exclusive_pages]

    @property
    def num_pages(self) -> int:
        return len(self.page_table)

    def task_spec(self) -> TaskSpec:
        """The recorded spec as a TaskSpec whose files live in network_path (custom models: no build_model)."""
        return TaskSpec.from_json(self.spec, folder=self.network_path or None)

    def runnable_spec(self, given: TaskSpec | None = None) -> TaskSpec:
        """The spec to build the task's network from: ``given`` (from a folder the user named,
        which must describe the recorded task), else the recorded one, which must not need code."""
        if given is not None:
            if given.to_json() != self.spec:
                raise WeightSepError(f"{given.folder}/task.py does not describe the task {self.name} recorded in "
                                     f"the state; pass the folder it was added from, or remove and re-add it")
            return given
        spec = self.task_spec()
        if spec.custom_model:
            raise WeightSepError(f"task {self.name} has a custom build_model(), which the state cannot hold as "
                                 f"data; name its folder with -network_path=<folder> (its code then runs)")
        return spec

    def __eq__(self, other) -> bool:
        if not isinstance(other, TaskRecord):
            return NotImplemented
        return (self.name == other.name and self.id == other.id
                and self.num_weights == other.num_weights
                and np.array_equal(self.page_table, other.page_table)
                and self.exclusive_pages == other.exclusive_pages
                and self.spec == other.spec and self.network_path == other.network_path
                and self.settings == other.settings and self.accuracy == other.accuracy)

    def to_json(self) -> dict:
        return {"name": self.name, "id": self.id, "num_weights": self.num_weights,
                "page_table": [int(e) for e in self.page_table],
                "exclusive_pages": list(self.exclusive_pages),
                "network_path": self.network_path, "spec": self.spec,
                "settings": self.settings, "accuracy": self.accuracy}


class StoredFiles(NamedTuple):
    """The committed file(s) of one page array: values, and scales for quantized states (else None)."""

    values: Path
    scales: Optional[Path]


class _Invalid(Exception):
    """A consistency problem; callers add the file and the fix."""


@dataclasses.dataclass
class _Registry:
    """A parsed, validated registry."""

    page_size: int
    num_pages: int
    page_dtype: str
    layout: str
    generation: int
    next_id: int
    files: dict
    obsolete: dict
    tasks: list
    num_exclusive: int

    def to_json(self) -> dict:
        """The registry as JSON data, without its checksum."""
        return {"schema_version": SCHEMA_VERSION, "generation": self.generation,
                "page_size": self.page_size, "num_pages": self.num_pages,
                "page_dtype": self.page_dtype, "layout": self.layout, "next_id": self.next_id,
                "files": self.files, "obsolete": self.obsolete,
                "tasks": [t.to_json() for t in self.tasks]}


# ---- encodings ---------------------------------------------------------------------

def _entry(array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array)
    return {"dtype": str(array.dtype), "shape": list(array.shape),
            "sha256": hashlib.sha256(array.data).hexdigest()}


def _canonical(data: dict) -> bytes:
    """The registry's canonical encoding: sorted keys, no spaces, ASCII, finite numbers."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _checksum(data: dict) -> str:
    return hashlib.sha256(_canonical(data)).hexdigest()


def _encode_registry(data: dict) -> bytes:
    """The registry file's bytes: data plus its checksum, indented for people to read."""
    signed = dict(data, checksum=_checksum(data))
    return json.dumps(signed, indent=1, allow_nan=False).encode("ascii") + b"\n"


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:30]} is out of range")
    return value


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list) -> dict:
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"key {key[:40]!r} appears twice in an object")
        seen.add(key)
    return dict(pairs)


def _decode_json(text: bytes):
    """Parse registry bytes strictly (UTF-8, finite numbers, unique keys); _Invalid on any problem."""
    try:
        string = text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Invalid(f"not UTF-8 text (invalid byte at offset {e.start})") from None
    try:
        return json.loads(string, parse_float=_finite_float, parse_constant=_reject_constant,
                          object_pairs_hook=_unique_keys)
    except RecursionError:
        raise _Invalid("JSON nested too deeply") from None
    except ValueError as e:
        raise _Invalid(f"not valid JSON ({_one_line(e)})") from None


def _one_line(error) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:197] + "..."



def _vector_rel(task: str, kind: str) -> str:
    """The registry key (and path relative to the state directory) of a per-task vector."""
    if kind not in VECTOR_KINDS:
        raise ValueError(f"vector kind {kind!r} is not one of {VECTOR_KINDS}")
    try:
        check_task_name(task)
    except WeightSepError as e:
        raise ValueError(str(e)) from None
    return f"{task}/{task}_{kind}.npy"


def _parse_vector_rel(rel: str) -> Optional[tuple[str, str]]:
    """(task, kind) of a vector key, or None if rel is not exactly the key of one."""
    match = _VECTOR_REL.match(rel) if isinstance(rel, str) else None
    if not match:
        return None
    task = match.group(1)
    for kind in VECTOR_KINDS:
        if match.group(2) == f"{task}_{kind}":
            try:
                if _vector_rel(task, kind) == rel:
                    return task, kind
            except ValueError:
                return None
    return None


def _open_regular(path: Path):
    """Open a file for reading; StateError if it is not a regular file (a FIFO would block forever,
    a device would never end).  FileNotFoundError and other OSErrors propagate."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        kind = "a directory" if os.path.isdir(path) else "not a regular file"
        raise StateError(f"{path} is {kind}; delete it, or restore the state from a backup")
    return os.fdopen(fd, "rb")


def _pending_name(name: str) -> str:
    return name[:-len(".npy")] + ".pending.npy"


# ---- registry validation -----------------------------------------------------------

def _check_entry(rel: str, entry, dtype: np.dtype | None = None, shape: tuple | None = None) -> None:
    if not isinstance(entry, dict) or sorted(entry) != sorted(_ENTRY_KEYS):
        raise _Invalid(f"the entry of {rel} must hold exactly {', '.join(_ENTRY_KEYS)}")
    if not isinstance(entry["sha256"], str) or not _SHA256.match(entry["sha256"]):
        raise _Invalid(f"the sha256 of {rel} is not 64 lowercase hex digits")
    got_shape = entry["shape"]
    if not isinstance(got_shape, list) or not all(is_int(d) and 0 <= d <= MAX_POOL_VALUES for d in got_shape):
        raise _Invalid(f"the shape of {rel} is not a list of non-negative integers")
    if dtype is not None and entry["dtype"] != str(dtype):
        raise _Invalid(f"{rel} is recorded as {shown(entry['dtype'])}, expected {dtype}")
    if shape is not None and tuple(got_shape) != tuple(shape):
        raise _Invalid(f"{rel} is recorded with shape {got_shape}, expected {list(shape)}")



def _parse_task(item, page_size: int) -> TaskRecord:
    """One task entry -> TaskRecord, checking its own types and spec (not yet its table bounds)."""
    if not isinstance(item, dict):
        raise _Invalid("a task entry is not an object")
    name = item.get("name")
    try:
        check_task_name(name)
    except WeightSepError as e:
        raise _Invalid(str(e)) from None
    if name in _TOP_FILES:
        raise _Invalid(f"task name {name!r} is the name of a state file")
    if sorted(item) != sorted(_TASK_KEYS):
        raise _Invalid(f"task '{name}' must hold exactly the keys {', '.join(_TASK_KEYS)}")
    n = item["num_weights"]
    if not is_int(n) or not 1 <= n <= MAX_WEIGHTS:
        raise _Invalid(f"task '{name}': num_weights {shown(n)} is not an integer from 1 to {MAX_WEIGHTS}")
    table, exclusive = item["page_table"], item["exclusive_pages"]
    expected = pages.num_pages(n, page_size)
    if not isinstance(table, list) or len(table) != expected:
        size = len(table) if isinstance(table, list) else "no"
        raise _Invalid(f"task '{name}': page table has {size} entries, but {n} weights in pages of "
                       f"{page_size} need {expected}")
    if not all(is_int(e) and -MAX_TABLE_ENTRY - 1 <= e <= MAX_TABLE_ENTRY for e in table):
        raise _Invalid(f"task '{name}': page_table is not a list of int32 entries")
    if (not isinstance(exclusive, list) or len(exclusive) > expected
            or not all(is_int(i) and 0 <= i < expected for i in exclusive)):
        raise _Invalid(f"task '{name}': exclusive_pages is not a list of its page indices (0 to {expected - 1})")
    if len(set(exclusive)) != len(exclusive):
        raise _Invalid(f"task '{name}': exclusive_pages {exclusive} repeat a page")
    if not isinstance(item["network_path"], str) or len(item["network_path"]) > MAX_NETWORK_PATH:
        raise _Invalid(f"task '{name}': network_path is not a path")
    for key in ("settings", "accuracy"):
        if not isinstance(item[key], dict):
            raise _Invalid(f"task '{name}': {key} is not an object")
    if not is_int(item["id"]) or item["id"] < 0:
        raise _Invalid(f"task '{name}': id {shown(item['id'])} is not a non-negative integer")
    try:
        spec = TaskSpec.from_json(item["spec"])
    except WeightSepError as e:
        raise _Invalid(f"task '{name}': {e}") from None
    if spec.name != name:
        raise _Invalid(f"task '{name}': its spec describes task {spec.name!r}")
    return TaskRecord(name=name, id=item["id"], num_weights=n,
                      page_table=np.array(table, dtype=np.int64).astype(np.int32), exclusive_pages=exclusive,
                      spec=item["spec"], network_path=item["network_path"],
                      settings=item["settings"], accuracy=item["accuracy"])


def _check_tasks(tasks: list[TaskRecord], page_size: int, num_shared: int, num_exclusive: int) -> None:
    """Raise _Invalid unless every table is valid (weightsep.pages), exclusive pages are the table's
    exclusive entries, and every exclusive row belongs to exactly one task page."""
    names, ids = set(), set()
    owner = np.zeros(num_exclusive, dtype=np.int64)
    for record in tasks:
        name = record.name
        if name in names:
            raise _Invalid(f"task '{name}' is listed twice")
        if record.id in ids:
            raise _Invalid(f"task '{name}': id {record.id} is used twice")
        names.add(name)
        ids.add(record.id)
        try:
            table = pages.validate_page_table(record.page_table, num_shared, num_exclusive,
                                              record.num_weights, page_size)
        except WeightSepError as e:
            raise _Invalid(f"task '{name}': {e}") from None
        is_exclusive = np.zeros(len(table), dtype=bool)
        is_exclusive[record.exclusive_pages] = True
        mismatch = np.flatnonzero(is_exclusive != (table >= num_shared))
        if mismatch.size:
            page = mismatch[0]
            kind = "exclusive" if is_exclusive[page] else "sharable"
            raise _Invalid(f"task '{name}': page {page} is {kind} but its table entry is {table[page]} "
                           f"(shared pages are < {num_shared}, exclusive rows >= {num_shared})")
        rows = table[is_exclusive].astype(np.int64) - num_shared
        taken = rows[owner[rows] > 0]
        if taken.size:
            raise _Invalid(f"task '{name}': exclusive row {taken[0]} is used twice")
        owner[rows] += 1
    unused = np.flatnonzero(owner == 0)
    if unused.size:
        raise _Invalid(f"exclusive rows {unused[:5].tolist()} are used by no task")


def _parse_registry(raw) -> _Registry:
    """Check a registry's structure and consistency (its checksum already removed)."""
    if not isinstance(raw, dict):
        raise _Invalid("not a JSON object")
    unknown = sorted(str(k)[:40] for k in raw if k not in _REGISTRY_KEYS)
    missing = [k for k in _REGISTRY_KEYS if k not in raw]
    if unknown or missing:
        raise _Invalid(f"unknown keys {unknown}" if unknown else f"missing keys {missing}")
    for key, low, high in (("page_size", 1, MAX_PAGE_SIZE), ("num_pages", 1, MAX_NUM_PAGES),
                           ("generation", 0, 1 << 62), ("next_id", 0, MAX_TABLE_ENTRY)):
        if not is_int(raw[key]) or not low <= raw[key] <= high:
            raise _Invalid(f"'{key}' is {shown(raw[key])}, expected an integer from {low} to {high}")
    page_size, num_pages = raw["page_size"], raw["num_pages"]
    if page_size * num_pages > MAX_POOL_VALUES:
        raise _Invalid(f"a pool of {num_pages} x {page_size} weights is larger than {MAX_POOL_VALUES}")
    page_dtype, layout = raw["page_dtype"], raw["layout"]
    if page_dtype not in quantize.PAGE_DTYPES:
        raise _Invalid(f"page_dtype {shown(page_dtype)} is not one of {', '.join(quantize.PAGE_DTYPES)}")
    if page_dtype == "int4" and page_size % 2:
        raise _Invalid(f"int4 pages need an even page_size, not {page_size}")
    if layout not in LAYOUTS:
        raise _Invalid(f"layout {shown(layout)} is not one of {', '.join(LAYOUTS)}")
    files, obsolete, items = raw["files"], raw["obsolete"], raw["tasks"]
    if not isinstance(files, dict) or not isinstance(obsolete, dict) or not isinstance(items, list):
        raise _Invalid("'files' and 'obsolete' must be objects and 'tasks' a list")

    # The page arrays: their dtypes and shapes follow from P, S and the page dtype; E from the record.
    values_dtype = quantize.values_dtype(page_dtype)
    _check_entry(EXCLUSIVE_FILE, files.get(EXCLUSIVE_FILE))
    exclusive_shape = files[EXCLUSIVE_FILE]["shape"]
    num_exclusive = exclusive_shape[0] if exclusive_shape else -1
    if not 0 <= num_exclusive <= MAX_TABLE_ENTRY - num_pages:
        raise _Invalid(f"{EXCLUSIVE_FILE} is recorded with shape {exclusive_shape}")
    expected = {SHARED_FILE: (values_dtype, quantize.values_shape(page_dtype, num_pages, page_size)),
                EXCLUSIVE_FILE: (values_dtype, quantize.values_shape(page_dtype, num_exclusive, page_size))}
    if quantize.has_scales(page_dtype):
        expected[SHARED_SCALE_FILE] = (np.dtype(np.float32), (num_pages,))
        expected[EXCLUSIVE_SCALE_FILE] = (np.dtype(np.float32), (num_exclusive,))

    tasks = [_parse_task(item, page_size) for item in items]
    for record in tasks:
        if record.id >= raw["next_id"]:
            raise _Invalid(f"task '{record.name}': id {record.id} is not below next_id {raw['next_id']}")
        for kind in VECTOR_KINDS:
            rel = _vector_rel(record.name, kind)
            if rel in files:
                expected[rel] = (np.dtype(np.float32), (record.num_weights,))
            elif kind in REQUIRED_VECTORS:
                raise _Invalid(f"task '{record.name}' has no {kind} vector ({rel})")
    for rel in files:
        if rel not in expected:
            raise _Invalid(f"'files' lists {shown(rel)}, which this state does not use")
    for rel, (dtype, shape) in expected.items():
        if rel not in files:
            raise _Invalid(f"'files' lacks {rel}")
        _check_entry(rel, files[rel], dtype, shape)
    for rel, entry in obsolete.items():
        if _parse_vector_rel(rel) is None or rel in files:
            raise _Invalid(f"'obsolete' lists {shown(rel)}, which is not a vector file the state dropped")
        _check_entry(rel, entry, np.dtype(np.float32))
    _check_tasks(tasks, page_size, num_pages, num_exclusive)
    return _Registry(page_size=page_size, num_pages=num_pages, page_dtype=page_dtype, layout=layout,
                     generation=raw["generation"], next_id=raw["next_id"], files=files, obsolete=obsolete,
                     tasks=tasks, num_exclusive=num_exclusive)


# ---- page writes -------------------------------------------------------------------

@dataclasses.dataclass
class _Pages:
    """One page array in memory: float32 values as used, and the stored values (+ scales)."""

    floats: np.ndarray
    values: np.ndarray
    scales: Optional[np.ndarray]

    def freeze(self) -> "_Pages":
        for array in (self.floats, self.values, self.scales):
            if array is not None:
                array.setflags(write=False)
        return self


def _stored_pages(page_dtype: str, floats: np.ndarray) -> _Pages:
    values, scales = quantize.quantize_pages(floats, page_dtype)
    return _Pages(quantize.dequantize_pages(values, scales, page_dtype), values, scales)


def _changed_rows(current: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Bool per row: whether any value differs bit for bit (-0.0 and 0.0 differ)."""
    return np.any(current.view(np.uint32) != new.view(np.uint32), axis=1)


def _rewrite(page_dtype: str, old: _Pages, rows: np.ndarray, new_pages: np.ndarray) -> Optional[_Pages]:
    """old with pages `rows` set to new_pages (quantized as stored), or None if no page changes.

    Pages whose float values equal the current ones keep their exact stored bytes.
    """
    changed = _changed_rows(old.floats[rows], new_pages)
    if not changed.any():
        return None
    rows, new_pages = rows[changed], new_pages[changed]
    update = _stored_pages(page_dtype, new_pages)
    result = _Pages(old.floats.copy(), old.values.copy(), None if old.scales is None else old.scales.copy())
    result.floats[rows] = update.floats
    result.values[rows] = update.values
    if result.scales is not None:
        result.scales[rows] = update.scales
    return result


def _as_values(values, what: str) -> np.ndarray:
    """A float32 C-order copy of floating-point values; ValueError if they are not finite."""
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{what} has dtype {array.dtype}, expected floating point")
    array = np.array(array, dtype=np.float32, order="C", copy=True)  # the store owns its arrays
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contains NaN or infinite values")
    return array


# ---- the store ---------------------------------------------------------------------

class Store:
    """The separated state of one directory.  See the module docstring for the files.

    Reading needs no lock (and works on a read-only directory): `Store(d).load()`.
    Changing the state needs the writer lock: `with store.writer(): store.add_task(...)`.
    Each change is one commit.  Arrays handed out are read-only; change the state
    through the methods, which write to disk first.
    """

    def __init__(self, state_dir: str | os.PathLike = "."):
        self.dir = Path(state_dir)
        self.registry_path = self.dir / REGISTRY_FILE
        self.lock_path = self.dir / LOCK_FILE
        self._lock_fd: int | None = None
        self._reg: _Registry | None = None
        self._pages: dict[str, _Pages] = {}
        self._sources: dict[str, Path] = {}

    def __repr__(self) -> str:
        if self._reg is None:
            return f"Store({str(self.dir)!r}, not loaded)"
        return (f"Store({str(self.dir)!r}, P={self._reg.num_pages}, S={self._reg.page_size}, "
                f"E={self._reg.num_exclusive}, {self._reg.page_dtype}, tasks={[t.name for t in self._reg.tasks]})")

    # ---- reading -----------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether load() (or create()) has read the state into this object."""
        return self._reg is not None

    def exists(self) -> bool:
        """Whether the directory holds a registry (a created state); StateError if -state_dir is a file."""
        self._check_dir()
        return self.registry_path.is_file()

    def _start_over(self) -> str:
        return f"restore {self.dir} from a backup, or delete it and re-run -mode=a for each task to start over"

    def _check_dir(self) -> None:
        if self.dir.exists() and not self.dir.is_dir():
            raise StateError(f"-state_dir {self.dir} is a file, not a directory; pass the directory that "
                             f"holds the state (a new one is created on first use)")

    def load(self) -> "Store":
        """Read and validate the registry and the page arrays (vectors are read by load_vector)."""
        self._check_dir()
        for attempt in range(3):
            text, reg = self._read_registry()
            try:
                loaded = {which: self._read_pages(reg, which) for which in POOL_FILES}
                break
            except StateError:
                # A writer may have committed between our registry read and the array
                # reads (it then renames pending files away); read again in that case.
                if attempt < 2 and self._registry_bytes() != text:
                    continue
                raise
        self._reg = reg
        self._pages = {which: item[0] for which, item in loaded.items()}
        self._sources = {rel: path for item in loaded.values() for rel, path in item[1].items()}
        return self

    def _registry_bytes(self) -> bytes | None:
        try:
            return self.registry_path.read_bytes()
        except OSError:
            return None

    def _read_registry(self) -> tuple[bytes, _Registry]:
        path = self.registry_path
        try:
            with _open_regular(path) as f:
                if os.fstat(f.fileno()).st_size > MAX_REGISTRY_BYTES:
                    raise StateError(f"{path} is larger than {MAX_REGISTRY_BYTES} bytes, too large for a registry; "
                                     f"{self._start_over()}")
                text = f.read(MAX_REGISTRY_BYTES + 1)
        except FileNotFoundError:
            raise StateError(f"no separated state in {self.dir} ({path.name} is missing): add tasks first with "
                             f"`python WeightSeparation.py -mode=a -network_path=<task>` (or ./formation.sh), "
                             f"or pass the -state_dir that holds the state") from None
        except IsADirectoryError:
            raise StateError(f"{path} is a directory, not the registry file; {self._start_over()}") from None
        except OSError as e:
            raise StateError(f"cannot read {path}: {atomic.reason(e)}; check its permissions") from None
        try:
            raw = _decode_json(text)
            if not isinstance(raw, dict):
                raise _Invalid("not a JSON object")
            version = raw.get("schema_version")
            if version != SCHEMA_VERSION:
                raise StateError(f"{path} has schema_version {shown(version)}, but this toolkit reads version "
                                 f"{SCHEMA_VERSION}; use the toolkit version that wrote it, or delete {self.dir} "
                                 f"and re-run -mode=a for each task")
            recorded = raw.pop("checksum", None)
            try:
                actual = _checksum(raw)
            except (ValueError, RecursionError):
                raise _Invalid("holds values that have no canonical JSON encoding") from None
            if recorded != actual:
                raise StateError(f"{path} was edited outside the toolkit (its checksum does not match its "
                                 f"content), so it would load as a silently different state; "
                                 f"{self._start_over()}")
            return text, _parse_registry(raw)
        except _Invalid as e:
            raise StateError(f"{path}: {e}; {self._start_over()}") from None

    def _read_pages(self, reg: _Registry, which: str) -> tuple[_Pages, dict[str, Path]]:
        """One page array from its committed files, dequantized; and the file each came from."""
        names = [name for name in POOL_FILES[which] if name in reg.files]
        arrays, sources = {}, {}
        for name in names:
            arrays[name], sources[name] = self._read_committed(reg, name, self._start_over())
        values_name, scales_name = POOL_FILES[which]
        scales = arrays.get(scales_name)
        if scales is not None and np.any(scales < 0):
            raise StateError(f"{sources[scales_name]} holds negative scales; {self._start_over()}")
        floats = quantize.dequantize_pages(arrays[values_name], scales, reg.page_dtype)
        return _Pages(floats, arrays[values_name], scales).freeze(), sources

    def _path(self, rel: str) -> Path:
        return self.dir / rel

    def _pending_path(self, rel: str) -> Path:
        return self.dir / _pending_name(rel)

    def _read_committed(self, reg: _Registry, rel: str, fix: str) -> tuple[np.ndarray, Path]:
        """The file the registry refers to: the real file, else its pending file (see top).

        The real file is tried a second time: a writer may have renamed the pending file over
        it meanwhile.  The error reported is the real file's.
        """
        entry = reg.files[rel]
        real, pending = self._path(rel), self._pending_path(rel)
        first: Exception | None = None
        for path in (real, pending, real):
            try:
                return self._read_file(path, entry, fix), path
            except (FileNotFoundError, StateError) as error:
                first = first or error
        if isinstance(first, FileNotFoundError):
            raise StateError(f"{real} is missing but {REGISTRY_FILE} refers to it; {fix}")
        raise first

    def _read_file(self, path: Path, entry: dict, fix: str) -> np.ndarray:
        """A .npy file checked against its registry entry (header first: no data is read blindly)."""
        dtype, shape = np.dtype(entry["dtype"]), tuple(entry["shape"])
        try:
            with _open_regular(path) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    file_shape, fortran, file_dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    file_shape, fortran, file_dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
                if file_dtype != dtype:
                    raise StateError(f"{path} holds {file_dtype} values, expected {dtype}; {fix}")
                if fortran or tuple(file_shape) != shape:
                    raise StateError(f"{path} has shape {tuple(file_shape)}, but {REGISTRY_FILE} expects "
                                     f"{shape}; {fix}")
                nbytes = math.prod(shape) * dtype.itemsize
                remaining = os.fstat(f.fileno()).st_size - f.tell()
                if remaining != nbytes:
                    raise StateError(f"{path} holds {remaining} data bytes where {nbytes} are expected: it is "
                                     f"truncated or was changed; {fix}")
                data = f.read(nbytes)
        except (FileNotFoundError, StateError):
            raise
        except (ValueError, EOFError) as e:
            raise StateError(f"{path} is unreadable ({_one_line(e)}): it is truncated or not a .npy file; "
                             f"{fix}") from None
        except OSError as e:
            raise StateError(f"cannot read {path}: {atomic.reason(e)}; {fix}") from None
        if len(data) != nbytes:
            raise StateError(f"{path} is truncated (changed while being read); {fix}")
        array = np.frombuffer(data, dtype=dtype).reshape(shape)
        if dtype.kind == "f":
            bad = np.count_nonzero(~np.isfinite(array))
            if bad:
                raise StateError(f"{path} contains {bad} NaN or infinite values; {fix}")
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise StateError(f"{path} does not match {REGISTRY_FILE} (checksum differs): it was changed "
                             f"outside the toolkit, copied from another state, or rewritten by a writer since "
                             f"this state was loaded; {fix}")
        return array

    def _require_loaded(self) -> _Registry:
        if self._reg is None:
            raise StateError(f"the state in {self.dir} is not loaded: call load() (or create() "
                             f"inside writer()) first")
        return self._reg

    @property
    def page_size(self) -> int:
        """S, the number of weights per page."""
        return self._require_loaded().page_size

    @property
    def num_pages(self) -> int:
        """P, the number of shared pages."""
        return self._require_loaded().num_pages

    @property
    def num_exclusive(self) -> int:
        """E, the number of exclusive rows of all tasks."""
        return self._require_loaded().num_exclusive

    @property
    def page_dtype(self) -> str:
        """How pages are stored: "float32", "int8" or "int4" (weightsep.quantize)."""
        return self._require_loaded().page_dtype

    @property
    def layout(self) -> str:
        """The order of weights in the network vectors: "natural" or "transposed" (the original's -transpose)."""
        return self._require_loaded().layout

    @property
    def tasks(self) -> list[TaskRecord]:
        """Copies of the task records, in registration order."""
        return copy.deepcopy(self._require_loaded().tasks)

    @property
    def shared(self) -> np.ndarray:
        """The shared pool, float32 [P, S] (dequantized for quantized states), read-only."""
        self._require_loaded()
        return self._pages["shared"].floats

    @property
    def exclusive(self) -> np.ndarray:
        """The exclusive store, float32 [E, S] (dequantized for quantized states), read-only."""
        self._require_loaded()
        return self._pages["exclusive"].floats

    def quantized(self, which: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """The stored arrays of "shared" or "exclusive": (values, scales), read-only.

        values as on disk (int8 [r, S], uint8 [r, S / 2] for int4, float32 [r, S] for a
        float32 state); scales float32 [r], None for a float32 state.
        """
        self._require_loaded()
        if which not in POOL_FILES:
            raise ValueError(f"which must be 'shared' or 'exclusive', not {which!r}")
        return self._pages[which].values, self._pages[which].scales

    def exclusive_file(self) -> StoredFiles:
        """The committed file(s) holding the exclusive rows, as load read them (the real file, else
        its pending file): what a runtime reads rows from.  Valid until a writer commits again."""
        self._require_loaded()
        values, scales = POOL_FILES["exclusive"]
        return StoredFiles(self._sources[values], self._sources.get(scales))

    def _index(self, name: str) -> int:
        reg = self._require_loaded()
        for index, record in enumerate(reg.tasks):
            if record.name == name:
                return index
        known = ", ".join(t.name for t in reg.tasks) or "none"
        raise StateError(f"task '{name}' is not in {self.registry_path} (known tasks: {known}); "
                         f"add it with -mode=a -vnn_name={name}")

    def task(self, name: str) -> TaskRecord:
        """A copy of one task's record; StateError naming the known tasks if absent."""
        return copy.deepcopy(self._reg.tasks[self._index(name)])

    def has_task(self, name: str) -> bool:
        return any(t.name == name for t in self._require_loaded().tasks)

    def materialize(self, name: str) -> np.ndarray:
        """The task's weight vector, float32[n], exactly as stored (weightsep.pages.materialize)."""
        record = self._reg.tasks[self._index(name)]
        return pages.materialize(self.shared, self.exclusive, record.page_table, record.num_weights)

    def _page_tables(self) -> dict[str, np.ndarray]:
        return {r.name: r.page_table for r in self._require_loaded().tasks}

    def occupation(self) -> list[list[tuple[str, int]]]:
        """Per shared page, the (task name, task page) pairs on it (weightsep.pages.occupation)."""
        return pages.occupation(self._page_tables(), self.num_pages)

    def occupation_counts(self) -> np.ndarray:
        """int64[P]: how many task pages live on each shared page (weightsep.pages.occupation_counts)."""
        return pages.occupation_counts(self._page_tables(), self.num_pages)

    # ---- per-task vectors ------------------------------------------------------------

    def vector_path(self, task: str, kind: str) -> Path:
        """Where a per-task vector lives (its committed content may still be in its pending file)."""
        return self._path(_vector_rel(task, kind))

    def has_vector(self, task: str, kind: str) -> bool:
        """Whether the registry records that vector of the task."""
        return _vector_rel(task, kind) in self._require_loaded().files

    def _vector_fix(self, task: str, kind: str) -> str:
        return {"weight": f"train the task with -mode=t -vnn_name={task}",
                "fisher": f"compute it with -mode=f -vnn_name={task}"}.get(
            kind, f"remove the task with -mode=r -vnn_name={task} and add it again with -mode=a")

    def load_vector(self, task: str, kind: str) -> np.ndarray:
        """A per-task float32 [n] vector, checked against the registry's checksum."""
        reg = self._require_loaded()
        rel = _vector_rel(task, kind)
        self._index(task)
        fix = self._vector_fix(task, kind)
        if rel not in reg.files:
            raise StateError(f"task '{task}' has no {kind} vector ({self._path(rel)}); {fix}")
        array, _ = self._read_committed(reg, rel, fix)
        return array.copy()

    # ---- the writer lock and recovery --------------------------------------------------

    @contextlib.contextmanager
    def writer(self) -> Iterator["Store"]:
        """Hold the writer lock (without waiting); on entry, finish or discard any interrupted commit
        and reload the state.

        Raises StateLockedError (naming the holder's pid) if another process holds it, and
        StateReadOnlyError if the directory cannot be written (reading it still works).
        """
        if self._lock_fd is not None:
            raise StateError(f"this Store already holds the writer lock of {self.dir}")
        fd = self._open_lock()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise StateError(f"cannot lock {self.lock_path}: {atomic.reason(e)}") from None
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise StateLockedError(
                    f"state in {self.dir} is locked by pid {pid} (another WeightSeparation.py is writing "
                    f"it); wait for it to finish or, if that process is gone, delete {self.lock_path} "
                    f"and retry") from None
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError as e:
                fcntl.flock(fd, fcntl.LOCK_UN)
                raise atomic.write_error("write", self.lock_path, e) from None
            self._lock_fd = fd
            try:
                self._recover()
                yield self
            finally:
                self._lock_fd = None
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _open_lock(self) -> int:
        """Open (create) the lock file; the errors say what is wrong with the directory."""
        self._check_dir()
        read_only = (f"the writer lock {self.lock_path} cannot be taken; the state can still be read "
                     f"(-mode=e, -mode=l), or copy it to a writable -state_dir to change it")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            error = StateReadOnlyError if e.errno in _READ_ONLY else StateError
            raise error(f"cannot create the state directory {self.dir}: {atomic.reason(e)}; "
                        f"pass a -state_dir you can write") from None
        effective = os.access in os.supports_effective_ids
        if not os.access(self.dir, os.W_OK | os.X_OK, effective_ids=effective):
            raise StateReadOnlyError(f"{self.dir} is read-only: {read_only}")
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.lock_path, flags, 0o644)
        except IsADirectoryError:
            raise StateError(f"{self.lock_path} is a directory, not a lock file; delete it and retry") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StateError(f"{self.lock_path} is a symbolic link, not a lock file; delete it and retry") from None
            if e.errno in _READ_ONLY:
                raise StateReadOnlyError(f"cannot open {self.lock_path}: {atomic.reason(e)}; {read_only}") from None
            raise StateError(f"cannot open {self.lock_path}: {atomic.reason(e)}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StateError(f"{self.lock_path} is not a regular file; delete it and retry")
        return fd

    def _require_writer(self, method: str) -> None:
        if self._lock_fd is None:
            raise StateError(f"Store.{method} changes {self.dir} and needs the writer lock: "
                             f"call it inside `with store.writer():`")

    def _task_dirs(self) -> list[Path]:
        """Sub-directories that may hold per-task vector files (plain names, not symbolic links)."""
        found = []
        for path in self.dir.iterdir():
            with contextlib.suppress(WeightSepError):
                if check_task_name(path.name) and path.is_dir() and not path.is_symlink():
                    found.append(path)
        return found

    def _recover(self) -> None:
        """With the lock held: finish a committed change (rename its pending files, delete what it
        dropped), delete uncommitted pending and temp files, and load the state."""
        if self.exists():
            self.load()
            reg = self._reg
            for rel, entry in reg.files.items():
                pending = self._pending_path(rel)
                if not pending.is_file():
                    continue
                if self._sources.get(rel) == pending or self._matches(pending, entry):
                    atomic.replace(pending, self._path(rel))
                    if rel in self._sources:
                        self._sources[rel] = self._path(rel)
                else:
                    with contextlib.suppress(OSError):
                        pending.unlink()
            for rel, entry in reg.obsolete.items():
                self._delete_if_matches(rel, entry)
        # Whatever pending or temp file is left now belongs to no commit.
        self._discard_leftovers(self.dir, [SHARED_FILE, EXCLUSIVE_FILE, SHARED_SCALE_FILE,
                                           EXCLUSIVE_SCALE_FILE, REGISTRY_FILE])
        for folder in self._task_dirs():
            names = [Path(_vector_rel(folder.name, kind)).name for kind in VECTOR_KINDS]
            if self._discard_leftovers(folder, names):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if empty: a folder made for pending files of no commit

    def _discard_leftovers(self, folder: Path, names: list[str]) -> bool:
        """Delete the pending files of `names` and the temp files of both; whether any was deleted."""
        pendings = {_pending_name(name) for name in names if name.endswith(".npy")}
        targets = list(names) + sorted(pendings)
        removed = False
        for path in folder.iterdir():
            if path.name in pendings or (path.name.startswith(".")
                                         and any(atomic.is_temp_of(path.name, t) for t in targets)):
                if path.is_file() and not path.is_symlink():
                    with contextlib.suppress(OSError):
                        path.unlink()
                        removed = True
        return removed

    def _matches(self, path: Path, entry: dict) -> bool:
        try:
            self._read_file(path, entry, "")
            return True
        except (StateError, FileNotFoundError):
            return False

    def _delete_if_matches(self, rel: str, entry: dict) -> None:
        """Delete a dropped file (and its pending copy) only if it holds exactly what was recorded."""
        for path in (self._path(rel), self._pending_path(rel)):
            if self._matches(path, entry):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        # The folder may be the task's spec folder (default state_dir): remove it only if empty.
        with contextlib.suppress(OSError):
            self._path(rel).parent.rmdir()

    # ---- commits ---------------------------------------------------------------------

    def _commit(self, *, tasks: list[TaskRecord], next_id: int | None = None, header: dict | None = None,
                new_pages: dict[str, _Pages] | None = None, vectors: dict[str, np.ndarray] | None = None,
                drop: tuple = ()) -> None:
        """One commit: changed files as pending files, then the registry (the commit point), then
        renames and deletions; see the module docstring.

        new_pages: replaced page arrays ("shared" / "exclusive"); vectors: rel -> float32 vector;
        drop: vector files the new state no longer refers to.  header: the state-wide fields
        (create and convert_state only).
        """
        old = self._reg
        new_pages = new_pages or {}
        writes: dict[str, np.ndarray] = dict(vectors or {})
        for which, item in new_pages.items():
            values_name, scales_name = POOL_FILES[which]
            writes[values_name] = item.values
            if item.scales is not None:
                writes[scales_name] = item.scales
        files = {} if old is None else {rel: e for rel, e in old.files.items() if rel not in drop}
        files.update({rel: _entry(array) for rel, array in writes.items()})
        obsolete = {rel: old.files[rel] for rel in drop if rel not in files} if old is not None else {}
        if old is not None:
            for rel, entry in old.obsolete.items():
                if rel not in files and rel not in obsolete and (
                        self._path(rel).exists() or self._pending_path(rel).exists()):
                    obsolete[rel] = entry
        fields = header if header is not None else {
            "page_size": old.page_size, "num_pages": old.num_pages, "page_dtype": old.page_dtype,
            "layout": old.layout}
        data = {"schema_version": SCHEMA_VERSION, "generation": (old.generation if old else 0) + 1,
                **fields, "next_id": old.next_id if next_id is None else next_id,
                "files": files, "obsolete": obsolete, "tasks": [t.to_json() for t in tasks]}
        try:
            text = _encode_registry(data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"settings, accuracy and spec must be plain finite JSON values: {e}") from None
        try:
            # What is adopted is what a load of these bytes gives: memory and disk agree exactly.
            raw = json.loads(text)
            raw.pop("checksum")
            reg = _parse_registry(raw)
        except _Invalid as e:
            raise ValueError(f"refusing to write an inconsistent state to {self.dir}: {e}") from None

        for rel, array in writes.items():
            folder = self._pending_path(rel).parent
            if folder != self.dir:
                if folder.is_symlink():
                    raise StateError(f"{folder} is a symbolic link; the state writes task files only into "
                                     f"its own folders: replace the link by a folder")
                atomic.ensure_dir(folder)
            atomic.save_npy(self._pending_path(rel), array)
        try:
            atomic.write_bytes(self.registry_path, text)
        except WriteError:
            if self._registry_bytes() == text:  # replaced, only the directory sync failed: committed
                self._adopt(reg, new_pages, writes)
            raise
        self._adopt(reg, new_pages, writes)
        for rel in writes:
            atomic.replace(self._pending_path(rel), self._path(rel))
            if rel in self._sources:
                self._sources[rel] = self._path(rel)
        for rel, entry in reg.obsolete.items():
            self._delete_if_matches(rel, entry)

    def _adopt(self, reg: _Registry, new_pages: dict[str, _Pages], writes: dict) -> None:
        """Make memory follow a committed registry; written files are in their pending files for now."""
        self._reg = reg
        for which, item in new_pages.items():
            self._pages[which] = item.freeze()
        for rel in writes:
            if rel in (SHARED_FILE, EXCLUSIVE_FILE, SHARED_SCALE_FILE, EXCLUSIVE_SCALE_FILE):
                self._sources[rel] = self._pending_path(rel)

    # ---- changes ---------------------------------------------------------------------

    def create(self, page_size: int = 512, num_pages: int = 128, seed: int = 0,
               page_dtype: str = "float32", layout: str = "natural") -> "Store":
        """Start an empty state: pool ~ N(0, 0.01) (std, seeded; quantized for int8/int4 states),
        no exclusive rows, no tasks."""
        self._require_writer("create")
        if self.exists():
            raise StateError(f"a separated state already exists in {self.dir} ({self.registry_path}); "
                             f"add tasks to it, or delete it to start over")
        for flag, value, limit in (("page_size", page_size, MAX_PAGE_SIZE), ("num_pages", num_pages, MAX_NUM_PAGES)):
            if not is_int(value) or not 1 <= value <= limit:
                raise WeightSepError(f"-{flag}={value!r} must be an integer from 1 to {limit}")
        if page_size * num_pages > MAX_POOL_VALUES:
            raise WeightSepError(f"a pool of -num_pages={num_pages} x -page_size={page_size} weights is larger "
                                 f"than {MAX_POOL_VALUES}; choose smaller values")
        if page_dtype not in quantize.PAGE_DTYPES:
            raise WeightSepError(f"-page_dtype={page_dtype!r} must be one of {', '.join(quantize.PAGE_DTYPES)}")
        if page_dtype == "int4" and page_size % 2:
            raise WeightSepError(f"int4 pages pack two weights per byte: -page_size={page_size} must be even")
        if layout not in LAYOUTS:
            raise WeightSepError(f"layout {layout!r} must be one of {', '.join(LAYOUTS)}")
        rng = np.random.default_rng(seed)
        pool = rng.normal(0.0, 0.01, size=(num_pages, page_size)).astype(np.float32)
        self._reg = None
        self._pages, self._sources = {}, {}
        self._commit(tasks=[], next_id=0,
                     header={"page_size": page_size, "num_pages": num_pages, "page_dtype": page_dtype,
                             "layout": layout},
                     new_pages={"shared": _stored_pages(page_dtype, pool),
                                "exclusive": _stored_pages(page_dtype, np.zeros((0, page_size), np.float32))})
        return self

    def _check_vectors(self, name: str, num_weights: int, vectors) -> dict[str, np.ndarray]:
        """{registry key: float32 [n] finite copy} for a dict of vectors by kind."""
        if not isinstance(vectors, dict):
            raise ValueError(f"vectors of task '{name}' must be a dict of kind -> float32 [n] vector")
        checked = {}
        for kind, vector in vectors.items():
            rel = _vector_rel(name, kind)
            array = _as_values(vector, f"{kind} vector of task '{name}'")
            if array.shape != (num_weights,):
                raise ValueError(f"{kind} vector of task '{name}' has shape {array.shape}, expected ({num_weights},)")
            checked[rel] = array
        return checked

    def add_task(self, record: TaskRecord, exclusive_values: np.ndarray, vectors: dict[str, np.ndarray],
                 shared: np.ndarray | None = None) -> TaskRecord:
        """Register a task, append its exclusive pages and write its vectors: one commit.

        record.page_table holds the shared page of every sharable page; the entries of
        record.exclusive_pages are filled in here (P + row, rows appended in
        exclusive_pages order).  exclusive_values: float32 [len(exclusive_pages), S].
        vectors: kind -> float32 [n], at least network_weight and network_fisher.
        shared: optionally, new values for the whole pool (float32 [P, S], -init=merge).
        Returns the stored record (with its id).
        """
        self._require_writer("add_task")
        reg = self._require_loaded()
        if self.has_task(record.name):
            raise StateError(f"task '{record.name}' is already in {self.registry_path}; remove it first "
                             f"with -mode=r -vnn_name={record.name}")
        values = _as_values(exclusive_values, f"exclusive pages of task '{record.name}'")
        k = len(record.exclusive_pages)
        if any(not 0 <= i < record.num_pages for i in record.exclusive_pages):
            raise ValueError(f"exclusive_pages {record.exclusive_pages} of task '{record.name}' lie "
                             f"outside its {record.num_pages} pages")
        if values.shape != (k, reg.page_size):
            raise ValueError(f"exclusive pages of task '{record.name}' have shape {values.shape}, "
                             f"expected ({k}, {reg.page_size})")
        missing = [kind for kind in REQUIRED_VECTORS if kind not in (vectors or {})]
        if missing:
            raise ValueError(f"add_task of '{record.name}' needs the vectors {', '.join(missing)}")
        checked = self._check_vectors(record.name, record.num_weights, vectors)
        stored = copy.deepcopy(record)
        stored.id = reg.next_id
        table = stored.page_table.copy()
        table[stored.exclusive_pages] = reg.num_pages + reg.num_exclusive + np.arange(k)
        stored.page_table = table
        old = self._pages["exclusive"]
        added = _stored_pages(reg.page_dtype, values)
        new_pages = {"exclusive": _Pages(
            np.concatenate([old.floats, added.floats]), np.concatenate([old.values, added.values]),
            None if old.scales is None else np.concatenate([old.scales, added.scales]))}
        if shared is not None:
            pool = self._check_pool(shared)
            rewritten = _rewrite(reg.page_dtype, self._pages["shared"], np.arange(reg.num_pages), pool)
            if rewritten is not None:
                new_pages["shared"] = rewritten
        self._commit(tasks=reg.tasks + [stored], next_id=reg.next_id + 1, new_pages=new_pages, vectors=checked)
        return self.task(record.name)

    def _check_pool(self, pool) -> np.ndarray:
        pool = _as_values(pool, "shared pool")
        if pool.shape != self.shared.shape:
            raise ValueError(f"shared pool has shape {pool.shape}, expected {self.shared.shape}")
        return pool

    def _task_pages(self, record: TaskRecord, weights) -> np.ndarray:
        """The task's pages with `weights` written in; the padding of its last page keeps the stored values."""
        vector = _as_values(weights, f"weights of task '{record.name}'")
        if vector.shape != (record.num_weights,):
            raise ValueError(f"weights of task '{record.name}' have shape {vector.shape}, "
                             f"expected ({record.num_weights},)")
        new = pages.gather_pages(self.shared, self.exclusive, record.page_table)
        new.reshape(-1)[:record.num_weights] = vector
        return new

    def as_stored(self, name: str, weights: np.ndarray) -> np.ndarray:
        """float32[n]: what materialize(name) returns after commit_task(name, weights=weights).

        Equal to weights for a float32 state; their quantized values for int8/int4 (pages
        whose values do not change keep their stored values).  Writes nothing.
        """
        record = self._reg.tasks[self._index(name)]
        new = self._task_pages(record, weights)
        current = pages.gather_pages(self.shared, self.exclusive, record.page_table)
        changed = _changed_rows(current, new)
        if changed.any():
            new[changed] = quantize.round_trip(new[changed], self.page_dtype)
        return pages.from_pages(new, record.num_weights)

    def commit_task(self, name: str, *, weights: np.ndarray | None = None,
                    vectors: dict[str, np.ndarray] | None = None, settings: dict | None = None,
                    accuracy: dict | None = None) -> TaskRecord:
        """Change one task in one commit (all or nothing).

        weights: float32 [n], written into the task's pages (sharable pages into the pool,
        exclusive pages into the exclusive store; the padding of its last page is not
        written).  vectors: kind -> float32 [n], replacing those vectors.  settings,
        accuracy: replace the task's.  Returns the stored record.
        """
        self._require_writer("commit_task")
        reg = self._require_loaded()
        index = self._index(name)
        record = copy.deepcopy(reg.tasks[index])
        new_pages = {}
        if weights is not None:
            new = self._task_pages(record, weights)
            table, num_shared = record.page_table, reg.num_pages
            on_pool = table < num_shared
            for which, rows, part in (("shared", table[on_pool], new[on_pool]),
                                      ("exclusive", table[~on_pool] - num_shared, new[~on_pool])):
                rewritten = _rewrite(reg.page_dtype, self._pages[which], rows.astype(np.int64), part)
                if rewritten is not None:
                    new_pages[which] = rewritten
        checked = self._check_vectors(name, record.num_weights, vectors or {})
        for key, value in (("settings", settings), ("accuracy", accuracy)):
            if value is not None:
                if not isinstance(value, dict):
                    raise ValueError(f"{key} of task '{name}' must be a dict, got {type(value).__name__}")
                setattr(record, key, copy.deepcopy(value))
        tasks = reg.tasks[:index] + [record] + reg.tasks[index + 1:]
        self._commit(tasks=tasks, new_pages=new_pages, vectors=checked)
        return self.task(name)

    def save_shared(self, pool: np.ndarray) -> None:
        """Replace the shared pool's values (float32 [P, S], finite): one commit."""
        self._require_writer("save_shared")
        reg = self._require_loaded()
        pool = self._check_pool(pool)
        rewritten = _rewrite(reg.page_dtype, self._pages["shared"], np.arange(reg.num_pages), pool)
        self._commit(tasks=reg.tasks, new_pages={} if rewritten is None else {"shared": rewritten})

    def remove_task(self, name: str) -> None:
        """Unregister a task, compact the exclusive store and drop its vectors: one commit.

        Shared pages it used just lose an occupant; their values stay.  Its vector files
        are deleted after the commit.
        """
        self._require_writer("remove_task")
        reg = self._require_loaded()
        index = self._index(name)
        gone = reg.tasks[index]
        num_shared = reg.num_pages
        keep = np.ones(reg.num_exclusive, dtype=bool)
        keep[gone.page_table[gone.exclusive_pages] - num_shared] = False
        new_row = np.cumsum(keep) - 1  # old row -> row after compaction
        tasks = []
        for record in reg.tasks[:index] + reg.tasks[index + 1:]:
            record = copy.deepcopy(record)
            on_store = record.page_table >= num_shared
            record.page_table[on_store] = num_shared + new_row[record.page_table[on_store] - num_shared]
            tasks.append(record)
        old = self._pages["exclusive"]
        compacted = _Pages(old.floats[keep], old.values[keep], None if old.scales is None else old.scales[keep])
        drop = tuple(_vector_rel(name, kind) for kind in VECTOR_KINDS if _vector_rel(name, kind) in reg.files)
        self._commit(tasks=tasks, new_pages={} if keep.all() else {"exclusive": compacted}, drop=drop)


def convert_state(source_dir: str | os.PathLike, dest_dir: str | os.PathLike, page_dtype: str) -> Store:
    """A quantized copy of a float32 state in a new directory: one commit at the destination.

    Same page size, pool size, layout, tasks, ids, page tables, settings and vectors; the pool
    and the exclusive pages quantized to page_dtype ("int8" or "int4").  The source is only
    read.  A task's "separated" accuracy was measured on the float32 pages, so the copy drops
    it (re-run -mode=e there).  dest_dir must not exist or be empty, and must not be the
    source or inside it.  A crash leaves the destination without a registry, or complete.
    """
    if page_dtype not in ("int8", "int4"):
        raise WeightSepError(f"a state can be converted to int8 or int4 pages, not {page_dtype!r}")
    source_path, dest_path = Path(source_dir), Path(dest_dir)
    source = Store(source_path).load()
    if source.page_dtype != "float32":
        raise StateError(f"{source.registry_path} holds {source.page_dtype} pages; only a float32 state "
                         f"can be converted (quantizing twice would add the errors of both)")
    if page_dtype == "int4" and source.page_size % 2:
        raise WeightSepError(f"int4 pages pack two weights per byte, but {source_path} has an odd page size "
                             f"{source.page_size}; convert it to int8 instead")
    src, dst = source_path.resolve(), dest_path.resolve()
    if dst == src or dst.is_relative_to(src):
        raise WeightSepError(f"the converted state must go to a new directory outside {source_path}, "
                             f"not {dest_path}")
    if dest_path.exists() and (not dest_path.is_dir() or any(dest_path.iterdir())):
        raise WeightSepError(f"{dest_path} exists and is not an empty directory; choose a new directory "
                             f"for the converted state (an interrupted conversion leaves one without a "
                             f"registry: delete it)")
    # Everything is read (and verified) before anything is written.
    vectors = {rel: source.load_vector(*_parse_vector_rel(rel)) for rel in source._reg.files
               if _parse_vector_rel(rel) is not None}
    tasks = source.tasks
    for record in tasks:
        record.accuracy.pop("separated", None)
    dest = Store(dest_path)
    with dest.writer():
        if dest.exists():
            raise StateError(f"a separated state appeared in {dest_path} meanwhile; choose a new directory")
        dest._commit(tasks=tasks, next_id=source._reg.next_id,
                     header={"page_size": source.page_size, "num_pages": source.num_pages,
                             "page_dtype": page_dtype, "layout": source.layout},
                     new_pages={"shared": _stored_pages(page_dtype, np.array(source.shared)),
                                "exclusive": _stored_pages(page_dtype, np.array(source.exclusive))},
                     vectors=vectors)
    return dest
