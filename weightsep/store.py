"""The persistent separated state: shared pool, exclusive store and task registry.

One `Store` object is the state of one `-state_dir` (default: the current
directory).  Files, named as in the original project where it had them:

    shared_weight_page.npy       float32 [P, S]  the shared pool (level-1 memory)
    exclusive_weight_page.npy    float32 [E, S]  all tasks' exclusive pages stacked (E may be 0)
    weightsep_state.json         the registry: page size, pool size, settings, tasks
    <task>/<task>_network_weight.npy, _network_fisher.npy, _weight.npy
                                 per-task float32 vectors of length n
    .weightsep.lock              writer lock; holds the writer's pid

A task's page table follows the original runtime encoding: entry e < P is shared
page e, entry e >= P is exclusive row e - P.  Occupation of the shared pages is
never stored; it is derived from the page tables.

No pickle anywhere: arrays are plain .npy read with allow_pickle=False, the
registry is JSON.  Every load validates shapes, dtypes, finiteness and page-table
bounds, and fails with a StateError naming the file and the fix.

Crash safety.  Every file is written to a temporary file in the same directory,
flushed, fsynced, and renamed over the target with os.replace (then the directory
is fsynced), so each single file is always either old or new.  Changes that span
several files (add_task: exclusive store + registry; write_task_pages: pool +
exclusive store + registry; remove_task: compaction renumbers rows) must also be
all-old or all-new, and appending alone cannot guarantee that for compaction.
So the registry is the commit record:

  1. each changed array is first written to a *pending* file
     (`shared_weight_page.pending.npy`, `exclusive_weight_page.pending.npy`);
  2. the registry is then replaced; it records the shape and SHA-256 of every
     array it refers to.  This rename is the commit point;
  3. the pending files are renamed over the real ones.

A load takes, for each array, the real file if its checksum matches the registry,
else the pending file if that one matches.  A crash before 2 leaves the old
registry, which matches the untouched real files (stale pending files are
ignored, and deleted by the next writer).  A crash between 2 and 3 leaves the new
registry, which matches the pending files; the next writer finishes step 3.  The
checksum also turns any other mismatch (a pool copied from another state, a file
edited by hand) into a named error rather than silently wrong weights.  Per-task
vectors are single files, each written atomically; remove_task deletes them only
after the registry no longer lists the task, so a crash leaves orphan files at
worst, never a registered task without its files.
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
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from weightsep.errors import StateError, StateLockedError
from weightsep.pages import gather_pages

SCHEMA_VERSION = 1
SHARED_FILE = "shared_weight_page.npy"
EXCLUSIVE_FILE = "exclusive_weight_page.npy"
REGISTRY_FILE = "weightsep_state.json"
LOCK_FILE = ".weightsep.lock"
VECTOR_KINDS = ("network_weight", "network_fisher", "weight")

_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _is_temp_of(file_name: str, target: str) -> bool:
    """Whether file_name is a temp file of _atomic_write for target: ".<target>.<random>.tmp"."""
    prefix = f".{target}."
    return (file_name.startswith(prefix) and file_name.endswith(".tmp")
            and file_name[len(prefix):-4].replace("_", "").isalnum())


@dataclasses.dataclass(eq=False)
class TaskRecord:
    """One task in the registry.

    page_table: int32[n_p], n_p = ceil(num_weights / page_size); entry e < P is
    shared page e, e >= P is exclusive row e - P.  exclusive_pages lists the task
    page indices that are exclusive; for add_task their table entries are filled
    in by the store.  id is the registration order, assigned by the store.
    """

    name: str
    num_weights: int
    page_table: np.ndarray
    exclusive_pages: list[int]
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

    def __eq__(self, other) -> bool:
        if not isinstance(other, TaskRecord):
            return NotImplemented
        return (self.name == other.name and self.id == other.id
                and self.num_weights == other.num_weights
                and np.array_equal(self.page_table, other.page_table)
                and self.exclusive_pages == other.exclusive_pages
                and self.network_path == other.network_path
                and self.settings == other.settings and self.accuracy == other.accuracy)

    def to_json(self) -> dict:
        return {"name": self.name, "id": self.id, "num_weights": self.num_weights,
                "page_table": [int(e) for e in self.page_table],
                "exclusive_pages": list(self.exclusive_pages),
                "network_path": self.network_path,
                "settings": self.settings, "accuracy": self.accuracy}


class _Invalid(Exception):
    """A consistency problem; callers add the file and the fix."""


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable) -> None:
    """Write `path` via a temp file in its directory: fsync, os.replace, fsync the dir."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; state files are ordinary readable files
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _save_npy(path: Path, array: np.ndarray) -> None:
    _atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_task(record: TaskRecord, page_size: int, num_shared: int, num_exclusive: int) -> None:
    """Raise _Invalid if one task's record is inconsistent on its own."""
    name = record.name
    if not isinstance(name, str) or not _TASK_NAME.match(name):
        raise _Invalid(f"task name {name!r} is not a plain folder name (letters, digits, _ . -)")
    if not _is_int(record.num_weights) or record.num_weights < 1:
        raise _Invalid(f"task '{name}': num_weights {record.num_weights!r} is not a positive integer")
    expected = math.ceil(record.num_weights / page_size)
    table = record.page_table
    if table.ndim != 1 or len(table) != expected:
        raise _Invalid(f"task '{name}': page table has {table.size} entries, but {record.num_weights} "
                       f"weights in pages of {page_size} need {expected}")
    bad = np.flatnonzero((table < 0) | (table >= num_shared + num_exclusive))
    if bad.size:
        raise _Invalid(f"task '{name}': page table entry {bad[0]} is {table[bad[0]]}, outside the "
                       f"{num_shared} shared + {num_exclusive} exclusive pages")
    exclusive = record.exclusive_pages
    if len(set(exclusive)) != len(exclusive) or any(not 0 <= i < expected for i in exclusive):
        raise _Invalid(f"task '{name}': exclusive_pages {exclusive} repeat a page or lie outside "
                       f"its {expected} pages")
    is_exclusive = np.zeros(expected, dtype=bool)
    is_exclusive[exclusive] = True
    mismatch = np.flatnonzero(is_exclusive != (table >= num_shared))
    if mismatch.size:
        page = mismatch[0]
        kind = "exclusive" if is_exclusive[page] else "sharable"
        raise _Invalid(f"task '{name}': page {page} is {kind} but its table entry is {table[page]} "
                       f"(shared pages are < {num_shared}, exclusive rows >= {num_shared})")
    pool_entries = table[~is_exclusive]
    if len(np.unique(pool_entries)) != len(pool_entries):
        values, counts = np.unique(pool_entries, return_counts=True)
        raise _Invalid(f"task '{name}': uses shared page {values[counts > 1][0]} twice")


def _check_tasks(tasks: list[TaskRecord], page_size: int, num_shared: int, num_exclusive: int) -> None:
    """Raise _Invalid unless the tasks are consistent with each other and with E rows."""
    names, ids = set(), set()
    owner = np.full(num_exclusive, -1, dtype=np.int64)
    for index, record in enumerate(tasks):
        _check_task(record, page_size, num_shared, num_exclusive)
        if record.name in names:
            raise _Invalid(f"task '{record.name}' is listed twice")
        if not _is_int(record.id) or record.id < 0 or record.id in ids:
            raise _Invalid(f"task '{record.name}': id {record.id!r} is not a new non-negative integer")
        names.add(record.name)
        ids.add(record.id)
        rows = record.page_table[record.exclusive_pages].astype(np.int64) - num_shared
        taken = rows[owner[rows] >= 0]
        if taken.size or len(np.unique(rows)) != len(rows):
            row = taken[0] if taken.size else rows[0]
            raise _Invalid(f"task '{record.name}': exclusive row {row} is used twice")
        owner[rows] = index
    unused = np.flatnonzero(owner < 0)
    if unused.size:
        raise _Invalid(f"exclusive rows {unused[:5].tolist()} are used by no task")


class Store:
    """The separated state of one directory.  See the module docstring for the files.

    Reading needs no lock: `Store(d).load()`.  Changing the state needs the writer
    lock: `with store.writer(): store.add_task(...)`.  Arrays handed out are
    read-only views; change them through the methods, which write to disk first.
    """

    def __init__(self, state_dir: str | os.PathLike = "."):
        self.dir = Path(state_dir)
        self.registry_path = self.dir / REGISTRY_FILE
        self.lock_path = self.dir / LOCK_FILE
        self._lock_fd: int | None = None
        self._loaded = False
        self._page_size = 0
        self._num_pages = 0
        self._settings: dict = {}
        self._tasks: list[TaskRecord] = []
        self._shared = np.zeros((0, 0), np.float32)
        self._exclusive = np.zeros((0, 0), np.float32)
        self._generation = 0
        self._next_id = 0

    def __repr__(self) -> str:
        if not self._loaded:
            return f"Store({str(self.dir)!r}, not loaded)"
        return (f"Store({str(self.dir)!r}, P={self._num_pages}, S={self._page_size}, "
                f"E={len(self._exclusive)}, tasks={[t.name for t in self._tasks]})")

    # ---- reading -----------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether load() (or create()) has read the state into this object."""
        return self._loaded

    def exists(self) -> bool:
        """Whether the directory holds a registry (a created state)."""
        return self.registry_path.is_file()

    def _start_over(self) -> str:
        return f"restore {self.dir} from a backup, or delete it and re-run -mode=a for each task to start over"

    def load(self) -> "Store":
        """Read and validate the registry, the shared pool and the exclusive store."""
        for attempt in range(3):
            raw = self._read_registry()
            try:
                shared, from_pending_s = self._read_committed(SHARED_FILE, raw)
                exclusive, from_pending_e = self._read_committed(EXCLUSIVE_FILE, raw)
                break
            except StateError:
                # A writer may have committed between our registry read and the array
                # reads (it then renames pending files away); read again in that case.
                if attempt < 2 and self._registry_changed(raw):
                    continue
                raise
        self._adopt(raw, shared, exclusive)
        if self._lock_fd is not None:
            self._finish_commit(promote=[name for name, pending in
                                         ((SHARED_FILE, from_pending_s), (EXCLUSIVE_FILE, from_pending_e))
                                         if pending])
        return self

    def _registry_changed(self, raw: dict) -> bool:
        try:
            return json.loads(self.registry_path.read_bytes()).get("generation") != raw["generation"]
        except (OSError, ValueError, AttributeError):
            return True

    def _read_registry(self) -> dict:
        path = self.registry_path
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            raise StateError(f"no separated state in {self.dir}: {path} is missing; add a first task with "
                             f"-mode=a -vnn_name=<task>, or pass the -state_dir that holds the state") from None
        except OSError as e:
            raise StateError(f"cannot read {path}: {e.strerror}; check its permissions") from None
        try:
            raw = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise StateError(f"{path} is not valid JSON ({e}); {self._start_over()}") from None
        if not isinstance(raw, dict):
            raise StateError(f"{path} does not hold a JSON object; {self._start_over()}")
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StateError(f"{path} has schema_version {version!r}, but this toolkit reads version "
                             f"{SCHEMA_VERSION}; use the toolkit version that wrote it, or delete {self.dir} "
                             f"and re-run -mode=a for each task")
        try:
            self._parse_registry(raw)
        except _Invalid as e:
            raise StateError(f"{path}: {e}; {self._start_over()}") from None
        return raw

    def _parse_registry(self, raw: dict) -> None:
        """Check the registry's own structure; put TaskRecords into raw['_records']."""
        for key in ("page_size", "num_pages", "generation", "next_id"):
            if not _is_int(raw.get(key)) or raw[key] < (0 if key in ("generation", "next_id") else 1):
                raise _Invalid(f"'{key}' is {raw.get(key)!r}, expected a positive integer")
        if not isinstance(raw.get("settings"), dict):
            raise _Invalid("'settings' is not an object")
        arrays = raw.get("arrays")
        for name in (SHARED_FILE, EXCLUSIVE_FILE):
            entry = arrays.get(name) if isinstance(arrays, dict) else None
            if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
                    or not isinstance(entry.get("shape"), list) or len(entry["shape"]) != 2
                    or not all(_is_int(d) and d >= 0 for d in entry["shape"])):
                raise _Invalid(f"'arrays' lacks a valid shape and sha256 for {name}")
        page_size, num_pages = raw["page_size"], raw["num_pages"]
        if arrays[SHARED_FILE]["shape"] != [num_pages, page_size]:
            raise _Invalid(f"{SHARED_FILE} is recorded as {arrays[SHARED_FILE]['shape']}, "
                           f"but num_pages x page_size is {[num_pages, page_size]}")
        num_rows, width = arrays[EXCLUSIVE_FILE]["shape"]
        if width != page_size:
            raise _Invalid(f"{EXCLUSIVE_FILE} is recorded with rows of {width}, not page_size {page_size}")
        if not isinstance(raw.get("tasks"), list):
            raise _Invalid("'tasks' is not a list")
        records = []
        for item in raw["tasks"]:
            if not isinstance(item, dict):
                raise _Invalid("a task entry is not an object")
            name = item.get("name")
            table, exclusive = item.get("page_table"), item.get("exclusive_pages")
            if not isinstance(table, list) or not all(_is_int(e) for e in table):
                raise _Invalid(f"task {name!r}: page_table is not a list of integers")
            if not isinstance(exclusive, list) or not all(_is_int(e) for e in exclusive):
                raise _Invalid(f"task {name!r}: exclusive_pages is not a list of integers")
            if (not isinstance(item.get("network_path", ""), str)
                    or not isinstance(item.get("settings", {}), dict)
                    or not isinstance(item.get("accuracy", {}), dict)):
                raise _Invalid(f"task {name!r}: network_path, settings or accuracy has the wrong type")
            if any(abs(e) >= 2**31 for e in table):
                raise _Invalid(f"task {name!r}: a page table entry does not fit int32")
            records.append(TaskRecord(name=name, id=item.get("id"), num_weights=item.get("num_weights"),
                                      page_table=np.array(table, dtype=np.int64).astype(np.int32),
                                      exclusive_pages=exclusive,
                                      network_path=item.get("network_path", ""),
                                      settings=item.get("settings", {}), accuracy=item.get("accuracy", {})))
        _check_tasks(records, page_size, num_pages, num_rows)
        if any(r.id >= raw["next_id"] for r in records):
            raise _Invalid("a task id is not below 'next_id'")
        raw["_records"] = records

    def _read_committed(self, name: str, raw: dict) -> tuple[np.ndarray, bool]:
        """The array the registry refers to: the real file, else its pending file (see top)."""
        entry = raw["arrays"][name]
        path, pending = self.dir / name, self._pending(name)
        try:
            return self._read_array(path, entry), False
        except (StateError, FileNotFoundError) as error:
            first = error
        try:
            return self._read_array(pending, entry), True
        except (StateError, FileNotFoundError):
            pass
        if isinstance(first, FileNotFoundError):
            raise StateError(f"{path} is missing but {self.registry_path} refers to it; "
                             f"{self._start_over()}") from None
        raise first

    def _read_array(self, path: Path, entry: dict) -> np.ndarray:
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise
        except (ValueError, OSError, EOFError) as e:
            raise StateError(f"{path} is unreadable ({e}): it is truncated or not a .npy file; "
                             f"{self._start_over()}") from None
        expected = tuple(entry["shape"])
        if array.dtype != np.float32:
            raise StateError(f"{path} holds {array.dtype} values, expected float32; {self._start_over()}")
        if array.shape != expected:
            raise StateError(f"{path} has shape {array.shape}, but {REGISTRY_FILE} expects {expected}; "
                             f"{self._start_over()}")
        bad = np.count_nonzero(~np.isfinite(array))
        if bad:
            raise StateError(f"{path} contains {bad} NaN or infinite values; {self._start_over()}")
        if _digest(array) != entry["sha256"]:
            raise StateError(f"{path} does not match {REGISTRY_FILE} (checksum differs): it was changed "
                             f"by another program or copied from another state; {self._start_over()}")
        array.setflags(write=False)
        return array

    def _adopt(self, raw: dict, shared: np.ndarray, exclusive: np.ndarray) -> None:
        self._page_size, self._num_pages = raw["page_size"], raw["num_pages"]
        self._settings = raw["settings"]
        self._tasks = raw["_records"]
        self._generation, self._next_id = raw["generation"], raw["next_id"]
        shared.setflags(write=False)
        exclusive.setflags(write=False)
        self._shared, self._exclusive = shared, exclusive
        self._loaded = True

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise StateError(f"the state in {self.dir} is not loaded: call load() (or create() "
                             f"inside writer()) first")

    @property
    def page_size(self) -> int:
        self._require_loaded()
        return self._page_size

    @property
    def num_pages(self) -> int:
        """P, the number of shared pages."""
        self._require_loaded()
        return self._num_pages

    @property
    def settings(self) -> dict:
        self._require_loaded()
        return copy.deepcopy(self._settings)

    @property
    def tasks(self) -> list[TaskRecord]:
        """Copies of the task records, in registration order."""
        self._require_loaded()
        return copy.deepcopy(self._tasks)

    @property
    def shared(self) -> np.ndarray:
        """The shared pool, float32 [P, S], read-only."""
        self._require_loaded()
        return self._shared

    @property
    def exclusive(self) -> np.ndarray:
        """The exclusive store, float32 [E, S], read-only."""
        self._require_loaded()
        return self._exclusive

    def _index(self, name: str) -> int:
        self._require_loaded()
        for index, record in enumerate(self._tasks):
            if record.name == name:
                return index
        known = ", ".join(t.name for t in self._tasks) or "none"
        raise StateError(f"task '{name}' is not in {self.registry_path} (known tasks: {known}); "
                         f"add it with -mode=a -vnn_name={name}")

    def task(self, name: str) -> TaskRecord:
        """A copy of one task's record; StateError naming the known tasks if absent."""
        return copy.deepcopy(self._tasks[self._index(name)])

    def has_task(self, name: str) -> bool:
        self._require_loaded()
        return any(t.name == name for t in self._tasks)

    def materialize(self, name: str) -> np.ndarray:
        """The task's weight vector, float32[n]: its pages gathered from pool and store, cut to n."""
        record = self._tasks[self._index(name)]
        pages = gather_pages(self._shared, self._exclusive, record.page_table)
        return pages.reshape(-1)[:record.num_weights].copy()

    def occupation(self) -> np.ndarray:
        """int64[P]: how many (task, task page) pairs live on each shared page."""
        self._require_loaded()
        counts = np.zeros(self._num_pages, dtype=np.int64)
        for record in self._tasks:
            table = record.page_table
            np.add.at(counts, table[table < self._num_pages], 1)
        return counts

    def occupants(self, page: int) -> list[tuple[str, int]]:
        """The (task name, task page index) pairs on shared page `page`, in task order."""
        self._require_loaded()
        if not 0 <= page < self._num_pages:
            raise IndexError(f"shared page {page} is outside 0..{self._num_pages - 1}")
        return [(r.name, int(i)) for r in self._tasks for i in np.flatnonzero(r.page_table == page)]

    # ---- per-task vectors ------------------------------------------------------------

    def vector_path(self, task: str, kind: str) -> Path:
        if kind not in VECTOR_KINDS:
            raise ValueError(f"vector kind {kind!r} is not one of {VECTOR_KINDS}")
        if not isinstance(task, str) or not _TASK_NAME.match(task):
            raise ValueError(f"task name {task!r} is not a plain folder name (letters, digits, _ . -)")
        return self.dir / task / f"{task}_{kind}.npy"

    def has_vector(self, task: str, kind: str) -> bool:
        return self.vector_path(task, kind).is_file()

    def _expected_length(self, task: str) -> int | None:
        if self._loaded:
            for record in self._tasks:
                if record.name == task:
                    return record.num_weights
        return None

    def load_vector(self, task: str, kind: str) -> np.ndarray:
        """A per-task float32 vector; checked against num_weights when the task is registered."""
        path = self.vector_path(task, kind)
        fix = (f"train the task with -mode=t -vnn_name={task}" if kind == "weight"
               else f"re-run -mode=a -vnn_name={task} (remove it first with -mode=r if it is registered)")
        try:
            vector = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise StateError(f"{path} is missing; {fix}") from None
        except (ValueError, OSError, EOFError) as e:
            raise StateError(f"{path} is unreadable ({e}): it is truncated or not a .npy file; {fix}") from None
        if vector.dtype != np.float32 or vector.ndim != 1:
            raise StateError(f"{path} holds {vector.dtype} of shape {vector.shape}, expected a float32 "
                             f"vector; {fix}")
        expected = self._expected_length(task)
        if expected is not None and len(vector) != expected:
            raise StateError(f"{path} has {len(vector)} weights, but task '{task}' has {expected}; {fix}")
        if not np.all(np.isfinite(vector)):
            raise StateError(f"{path} contains NaN or infinite values; {fix}")
        return vector

    def save_vector(self, task: str, kind: str, vector: np.ndarray) -> None:
        """Atomically write a per-task vector (float32, finite; length n if the task is registered)."""
        self._require_writer("save_vector")
        path = self.vector_path(task, kind)
        vector = self._as_values(vector, f"{kind} vector of task '{task}'")
        expected = self._expected_length(task)
        if vector.ndim != 1 or (expected is not None and len(vector) != expected):
            raise ValueError(f"{kind} vector of task '{task}' has shape {vector.shape}, "
                             f"expected ({expected if expected is not None else 'n'},)")
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_npy(path, vector)

    # ---- writing ---------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self) -> Iterator["Store"]:
        """Hold the writer lock; on entry, finish any interrupted commit and reload the state.

        Raises StateLockedError naming the holder's pid if another process holds it.
        """
        if self._lock_fd is not None:
            raise StateError(f"this Store already holds the writer lock of {self.dir}")
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise StateLockedError(
                    f"state in {self.dir} is locked by pid {pid} (another WeightSeparation.py is writing "
                    f"it); wait for it to finish or, if that process is gone, delete {self.lock_path} "
                    f"and retry") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._lock_fd = fd
            try:
                self._remove_leftovers()
                if self.exists():
                    self.load()
                yield self
            finally:
                self._lock_fd = None
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _require_writer(self, method: str) -> None:
        if self._lock_fd is None:
            raise StateError(f"Store.{method} changes {self.dir} and needs the writer lock: "
                             f"call it inside `with store.writer():`")

    def _pending(self, name: str) -> Path:
        return self.dir / name.replace(".npy", ".pending.npy")

    def _remove_leftovers(self) -> None:
        """Delete temp files of interrupted writes and uncommitted pending files (lock held)."""
        targets = {self.dir: [SHARED_FILE, EXCLUSIVE_FILE, REGISTRY_FILE,
                              self._pending(SHARED_FILE).name, self._pending(EXCLUSIVE_FILE).name]}
        for folder in self.dir.iterdir():
            if _TASK_NAME.match(folder.name) and folder.is_dir():
                targets[folder] = [self.vector_path(folder.name, kind).name for kind in VECTOR_KINDS]
        for folder, names in targets.items():
            for path in folder.iterdir():
                if any(_is_temp_of(path.name, name) for name in names):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
        if not self.exists():
            self._finish_commit(promote=[])

    def _finish_commit(self, promote: list[str]) -> None:
        """Step 3 of a commit: rename committed pending files over the real ones; drop stale ones."""
        for name in (SHARED_FILE, EXCLUSIVE_FILE):
            pending = self._pending(name)
            if name in promote:
                os.replace(pending, self.dir / name)
            elif pending.exists():
                pending.unlink()
        if promote:
            _fsync_dir(self.dir)

    def _commit(self, *, tasks: list[TaskRecord], shared: np.ndarray | None = None,
                exclusive: np.ndarray | None = None, settings: dict | None = None,
                page_size: int | None = None, num_pages: int | None = None, next_id: int | None = None) -> None:
        """Write arrays (pending), then the registry (commit point), then rename; see the module doc."""
        page_size = self._page_size if page_size is None else page_size
        num_pages = self._num_pages if num_pages is None else num_pages
        settings = self._settings if settings is None else settings
        next_id = self._next_id if next_id is None else next_id
        new_shared = self._shared if shared is None else shared
        new_exclusive = self._exclusive if exclusive is None else exclusive
        try:
            _check_tasks(tasks, page_size, num_pages, len(new_exclusive))
        except _Invalid as e:
            raise ValueError(f"refusing to write an inconsistent state to {self.dir}: {e}") from None
        registry = {
            "schema_version": SCHEMA_VERSION, "generation": self._generation + 1,
            "page_size": page_size, "num_pages": num_pages, "next_id": next_id, "settings": settings,
            "arrays": {SHARED_FILE: {"shape": list(new_shared.shape), "sha256": _digest(new_shared)},
                       EXCLUSIVE_FILE: {"shape": list(new_exclusive.shape), "sha256": _digest(new_exclusive)}},
            "tasks": [t.to_json() for t in tasks],
        }
        try:
            text = json.dumps(registry, indent=1, allow_nan=False).encode()
        except (TypeError, ValueError) as e:
            raise ValueError(f"settings or accuracy must be plain finite JSON values: {e}") from None
        changed = [name for name, array in ((SHARED_FILE, shared), (EXCLUSIVE_FILE, exclusive))
                   if array is not None]
        for name, array in ((SHARED_FILE, shared), (EXCLUSIVE_FILE, exclusive)):
            if array is not None:
                _save_npy(self._pending(name), array)
        _atomic_write(self.registry_path, lambda f: f.write(text))
        # Committed: memory follows disk even if the renames below fail (loads use pending then).
        registry["_records"] = copy.deepcopy(tasks)
        self._adopt(registry, new_shared, new_exclusive)
        self._finish_commit(promote=changed)

    def _as_values(self, values, what: str) -> np.ndarray:
        array = np.asarray(values)
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{what} has dtype {array.dtype}, expected floating point")
        array = np.array(array, dtype=np.float32, order="C", copy=True)  # the store owns its arrays
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{what} contains NaN or infinite values")
        return array

    def create(self, page_size: int = 512, num_pages: int = 128, seed: int = 0,
               settings: dict | None = None) -> "Store":
        """Start an empty state: pool ~ N(0, 0.01) (std, seeded), exclusive store [0, S], no tasks."""
        self._require_writer("create")
        if self.exists():
            raise StateError(f"a separated state already exists in {self.dir} ({self.registry_path}); "
                             f"add tasks to it, or delete it to start over")
        if not (_is_int(page_size) and page_size > 0 and _is_int(num_pages) and num_pages > 0):
            raise ValueError(f"page_size and num_pages must be positive integers, got {page_size}, {num_pages}")
        rng = np.random.default_rng(seed)
        pool = rng.normal(0.0, 0.01, size=(num_pages, page_size)).astype(np.float32)
        self._generation = 0
        self._commit(tasks=[], shared=pool, exclusive=np.zeros((0, page_size), np.float32),
                     settings=dict(settings or {}), page_size=page_size, num_pages=num_pages, next_id=0)
        return self

    def update_settings(self, settings: dict) -> None:
        """Replace the state-wide settings (free-form JSON)."""
        self._require_writer("update_settings")
        self._require_loaded()
        self._commit(tasks=self._tasks, settings=dict(settings))

    def add_task(self, record: TaskRecord, exclusive_values: np.ndarray) -> TaskRecord:
        """Register a task and append its exclusive pages to the exclusive store.

        record.page_table holds the shared page of every sharable page; the entries of
        record.exclusive_pages are filled in here (P + row, rows appended in
        exclusive_pages order).  exclusive_values: [len(exclusive_pages), S].
        Returns the stored record (with its id).
        """
        self._require_writer("add_task")
        self._require_loaded()
        if self.has_task(record.name):
            raise StateError(f"task '{record.name}' is already in {self.registry_path}; remove it first "
                             f"with -mode=r -vnn_name={record.name}")
        values = self._as_values(exclusive_values, f"exclusive pages of task '{record.name}'")
        k = len(record.exclusive_pages)
        if any(not 0 <= i < record.num_pages for i in record.exclusive_pages):
            raise ValueError(f"exclusive_pages {record.exclusive_pages} of task '{record.name}' lie "
                             f"outside its {record.num_pages} pages")
        if values.shape != (k, self._page_size):
            raise ValueError(f"exclusive pages of task '{record.name}' have shape {values.shape}, "
                             f"expected ({k}, {self._page_size})")
        stored = copy.deepcopy(record)
        stored.id = self._next_id
        first_row = len(self._exclusive)
        table = stored.page_table.copy()
        table[stored.exclusive_pages] = self._num_pages + first_row + np.arange(k)
        stored.page_table = table
        self._commit(tasks=self._tasks + [stored], exclusive=np.concatenate([self._exclusive, values]),
                     next_id=self._next_id + 1)
        return copy.deepcopy(stored)

    def remove_task(self, name: str) -> None:
        """Unregister a task, compact the exclusive store, then delete its vector files.

        Shared pages it used just lose an occupant; their values stay.
        """
        self._require_writer("remove_task")
        index = self._index(name)
        gone = self._tasks[index]
        num_shared = self._num_pages
        gone_rows = gone.page_table[gone.exclusive_pages] - num_shared
        keep = np.ones(len(self._exclusive), dtype=bool)
        keep[gone_rows] = False
        new_row = np.cumsum(keep) - 1  # old row -> row after compaction
        tasks = []
        for record in self._tasks[:index] + self._tasks[index + 1:]:
            record = copy.deepcopy(record)
            on_store = record.page_table >= num_shared
            record.page_table[on_store] = num_shared + new_row[record.page_table[on_store] - num_shared]
            tasks.append(record)
        self._commit(tasks=tasks, exclusive=self._exclusive[keep])
        for kind in VECTOR_KINDS:
            with contextlib.suppress(FileNotFoundError):
                self.vector_path(name, kind).unlink()
        # The folder may be the task's spec folder (default state_dir): remove it only if empty.
        with contextlib.suppress(OSError):
            (self.dir / name).rmdir()

    def update_task(self, record: TaskRecord) -> None:
        """Replace a task's network_path, settings and accuracy; its placement must not change."""
        self._require_writer("update_task")
        index = self._index(record.name)
        old = self._tasks[index]
        if (record.num_weights != old.num_weights or record.exclusive_pages != old.exclusive_pages
                or not np.array_equal(record.page_table, old.page_table)):
            raise ValueError(f"update_task changes only network_path, settings and accuracy of "
                             f"'{record.name}'; to place it anew, remove_task then add_task")
        new = copy.deepcopy(old)
        new.network_path = record.network_path
        new.settings = copy.deepcopy(record.settings)
        new.accuracy = copy.deepcopy(record.accuracy)
        self._commit(tasks=self._tasks[:index] + [new] + self._tasks[index + 1:])

    def save_shared(self, pool: np.ndarray) -> None:
        """Replace the shared pool (float32 [P, S], finite)."""
        self._require_writer("save_shared")
        self._require_loaded()
        pool = self._as_values(pool, "shared pool")
        if pool.shape != self._shared.shape:
            raise ValueError(f"shared pool has shape {pool.shape}, expected {self._shared.shape}")
        self._commit(tasks=self._tasks, shared=pool)

    def save_exclusive(self, store: np.ndarray) -> None:
        """Replace the exclusive store's values (float32 [E, S], same E: rows belong to tasks)."""
        self._require_writer("save_exclusive")
        self._require_loaded()
        store = self._as_values(store, "exclusive store")
        if store.shape != self._exclusive.shape:
            raise ValueError(f"exclusive store has shape {store.shape}, expected {self._exclusive.shape}")
        self._commit(tasks=self._tasks, exclusive=store)

    def write_task_pages(self, name: str, vector: np.ndarray) -> None:
        """Write a task's weight vector back: sharable pages into the pool, exclusive ones into the store.

        The zero padding of the last page is not written: other tasks on that shared
        page keep their values there.
        """
        self._require_writer("write_task_pages")
        record = self._tasks[self._index(name)]
        vector = self._as_values(vector, f"weights of task '{name}'")
        if vector.shape != (record.num_weights,):
            raise ValueError(f"weights of task '{name}' have shape {vector.shape}, "
                             f"expected ({record.num_weights},)")
        pages = gather_pages(self._shared, self._exclusive, record.page_table)
        pages.reshape(-1)[:record.num_weights] = vector
        table = record.page_table
        on_pool = table < self._num_pages
        shared, exclusive = self._shared.copy(), self._exclusive.copy()
        shared[table[on_pool]] = pages[on_pool]
        exclusive[table[~on_pool] - self._num_pages] = pages[~on_pool]
        self._commit(tasks=self._tasks, shared=shared if on_pool.any() else None,
                     exclusive=exclusive if (~on_pool).any() else None)
