"""The Store facade: one state directory as an object, and the task operations (create, add,
commit, remove) that change it, each one commit (weightsep.store.commit).

Reading needs no lock; a change needs the writer lock (weightsep.store.lock).  In memory the
pool and the exclusive store are float32 (weightsep.store.pagearrays); what `materialize`
returns is exactly what is stored.  Quantized states keep float32 master values beside the
stored pages (docs/FORMAT.md, "Master values"): a write changes the masters, and the stored
pages whose masters changed are quantized from them.
"""


from __future__ import annotations

import contextlib
import copy
import os
import shutil
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import numpy as np

from weightsep import pages
from weightsep.errors import StateError, WeightSepError, closest, command, is_int, shown
from weightsep.limits import LOCK_FILE, MAX_NUM_PAGES, MAX_PAGE_SIZE, MAX_POOL_WEIGHTS, REGISTRY_FILE
from weightsep.pageformat import PAGE_DTYPES, Encoded, PageFormat, page_format
from weightsep.store import commit, lock
from weightsep.store.commit import Committed, state_format
from weightsep.store.files import check_dir
from weightsep.store.pagearrays import as_values, changed_rows, rewrite, stored_pages
from weightsep.store.registry import (LAYOUTS, POOL_FILES, REQUIRED_VECTORS, VECTOR_KINDS, Registry, TaskRecord,
                                      vector_rel)


class StoredFiles(NamedTuple):
    """The committed file(s) of one page array: values, scales for quantized states, the int8
    pages' low nibbles and the page kinds for int4 states (else None); as pageformat.Encoded."""

    values: Path
    scales: Optional[Path] = None
    wide: Optional[Path] = None
    bits: Optional[Path] = None


class Store:
    """The separated state of one directory (its files: docs/FORMAT.md).

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
        self._mem = Committed()

    @property
    def _reg(self) -> Optional[Registry]:
        return self._mem.reg

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
        check_dir(self.dir)
        return self.registry_path.is_file()

    def load(self) -> "Store":
        """Read and validate the registry and the page arrays (vectors are read by load_vector)."""
        check_dir(self.dir)
        self._mem = commit.load(self.dir)
        return self

    def _require_loaded(self) -> Registry:
        if self._reg is None:
            raise StateError(f"the state in {self.dir} is not loaded: call load() (or create() "
                             f"inside writer()) first")
        return self._reg

    @property
    def generation(self) -> int:
        """The number of commits that made this state (the registry's generation)."""
        return self._require_loaded().generation

    @property
    def checksum(self) -> str:
        """The registry's checksum: it names this state's content at this generation."""
        return self._require_loaded().checksum

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
        """How pages are stored: "float32", "int8" or "int4" (weightsep.pageformat)."""
        return self._require_loaded().page_dtype

    @property
    def group_size(self) -> int:
        """int4 states: at most this many weights per scale (weightsep.pageformat); else 0."""
        return self._require_loaded().group_size

    @property
    def format(self) -> PageFormat:
        """The state's page format (weightsep.pageformat)."""
        return state_format(self._require_loaded())

    @property
    def masters(self) -> bool:
        """Whether this quantized state keeps float32 master values of every page (docs/FORMAT.md):
        training starts from them and each commit re-derives the stored pages from them."""
        return self._require_loaded().masters

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
        return self._mem.pages["shared"].floats

    @property
    def exclusive(self) -> np.ndarray:
        """The exclusive store, float32 [E, S] (dequantized for quantized states), read-only."""
        self._require_loaded()
        return self._mem.pages["exclusive"].floats

    def master(self, which: str) -> np.ndarray:
        """The values writes start from, float32 [P, S] / [E, S], read-only: the master values of
        "shared" or "exclusive" where the state keeps them, else the stored (dequantized) values."""
        self._require_loaded()
        if which not in POOL_FILES:
            raise ValueError(f"which must be 'shared' or 'exclusive', not {which!r}")
        return self._mem.pages[which].exact

    def master_pages(self, name: str) -> np.ndarray:
        """The task's pages [n_p, S] as training starts from them: from the master values where the
        state keeps them (else as stored); the padding of its last page holds the pool's values."""
        record = self._reg.tasks[self._index(name)]
        return pages.gather_pages(self.master("shared"), self.master("exclusive"), record.page_table)

    def quantized(self, which: str) -> Encoded:
        """The stored arrays of "shared" or "exclusive", read-only, as on disk
        (weightsep.pageformat.Encoded: values, scales, wide, bits; None where the format has none)."""
        self._require_loaded()
        if which not in POOL_FILES:
            raise ValueError(f"which must be 'shared' or 'exclusive', not {which!r}")
        return self._mem.pages[which].stored

    def exclusive_file(self) -> StoredFiles:
        """The committed file(s) holding the exclusive rows, as load read them (the real file, else
        its pending file): what a runtime reads rows from.  Valid until a writer commits again."""
        self._require_loaded()
        return StoredFiles(*(self._mem.sources.get(name) for name in POOL_FILES["exclusive"]))

    def _index(self, name: str) -> int:
        reg = self._require_loaded()
        for index, record in enumerate(reg.tasks):
            if record.name == name:
                return index
        known = ", ".join(t.name for t in reg.tasks) or "none"
        guess = closest(name, [t.name for t in reg.tasks])
        raise StateError(f"task {shown(name)} is not in {self.registry_path} (known tasks: {known}); " +
                         (f"did you mean {guess}?" if guess else "add its folder with -mode=a -network_path=<folder>"))

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

    def _file(self, rel: str) -> Path:
        return self.dir / rel

    def committed_files(self) -> list[str]:
        """The files of the loaded state, relative to its directory: the registry and every file it refers to."""
        return [REGISTRY_FILE, *self._require_loaded().files]

    def vector_path(self, task: str, kind: str) -> Path:
        """Where a per-task vector lives (its committed content may still be in its pending file)."""
        return self._file(vector_rel(task, kind))

    def has_vector(self, task: str, kind: str) -> bool:
        """Whether the registry records that vector of the task."""
        return vector_rel(task, kind) in self._require_loaded().files

    def _vector_fix(self, task: str, kind: str) -> str:
        """What to run when a vector of the task is missing or corrupt: whole commands for this state."""
        state = f"-state_dir={self.dir}"
        if kind in ("weight", "fisher"):
            mode, what = ("t", "train the task") if kind == "weight" else ("f", "compute it")
            return f"{what}: {command('WeightSeparation.py', f'-mode={mode}', f'-vnn_name={task}', state)}"
        record = self._require_loaded().tasks[self._index(task)]
        add = ["-mode=a", f"-network_path={record.network_path or task}", state]
        if record.settings.get("data", "real") != "real":
            add.append(f"-data={record.settings['data']}")
        return (f"remove the task: {command('WeightSeparation.py', '-mode=r', f'-vnn_name={task}', state)}, "
                f"then add it again: {command('WeightSeparation.py', *add)}")

    def load_vector(self, task: str, kind: str) -> np.ndarray:
        """A per-task float32 [n] vector, checked against the registry's checksum."""
        reg = self._require_loaded()
        rel = vector_rel(task, kind)
        self._index(task)
        fix = self._vector_fix(task, kind)
        if rel not in reg.files:
            raise StateError(f"task '{task}' has no {kind} vector ({self._file(rel)}); {fix}")
        array, _ = commit.read_committed(self.dir, reg, rel, fix)
        return array.copy()

    # ---- the writer lock and recovery --------------------------------------------------

    @contextlib.contextmanager
    def writer(self) -> Iterator["Store"]:
        """Hold the writer lock (without waiting); on entry, finish or discard any interrupted commit
        and reload the state.

        Raises StateLockedError (naming the holder's pid) if another process holds it, and
        StateReadOnlyError if the directory cannot be written (reading it still works).  A writer
        that created the directory removes it again if the work inside fails or commits nothing;
        a commit that fails removes its pending files, so a failure leaves the directory as it was.
        """
        if self._lock_fd is not None:
            raise StateError(f"this Store already holds the writer lock of {self.dir}")
        created = not self.dir.exists()
        with lock.hold(self.dir, self.lock_path) as fd:
            self._lock_fd = fd
            failed = False
            try:
                recovered = commit.recover(self.dir, self.exists())
                if recovered is not None:
                    self._mem = recovered
                yield self
            except BaseException:
                failed = True
                raise
            finally:
                self._lock_fd = None
                if created and (failed or not self.registry_path.exists()):
                    # A directory this writer created, and the work failed (a first -mode=a):
                    # leave nothing behind.  Removed while the lock is held, so that no other
                    # writer can be inside meanwhile.
                    shutil.rmtree(self.dir, ignore_errors=True)
                    self._mem = Committed()

    def _require_writer(self, method: str) -> None:
        if self._lock_fd is None:
            raise StateError(f"Store.{method} changes {self.dir} and needs the writer lock: "
                             f"call it inside `with store.writer():`")

    def _commit(self, **change) -> None:
        commit.commit(self.dir, self._mem, **change)

    # ---- changes ---------------------------------------------------------------------

    def create(self, page_size: int = 512, num_pages: int = 128, seed: int = 0,
               page_dtype: str = "float32", layout: str = "natural", group_size: int | None = None,
               masters: bool = True) -> "Store":
        """Start an empty state: pool ~ N(0, 0.01) (std, seeded; quantized for int8/int4 states, every
        page of an int4 state an int4 page), no exclusive rows, no tasks.  group_size: int4 only.
        masters: a quantized state keeps float32 master values of every page (ignored for float32)."""
        self._require_writer("create")
        if self.exists():
            raise StateError(f"a separated state already exists in {self.dir} ({self.registry_path}); "
                             f"add tasks to it, or delete it to start over")
        for flag, value, limit in (("page_size", page_size, MAX_PAGE_SIZE), ("num_pages", num_pages, MAX_NUM_PAGES)):
            if not is_int(value) or not 1 <= value <= limit:
                raise WeightSepError(f"-{flag}={value!r} must be an integer from 1 to {limit}")
        if page_size * num_pages > MAX_POOL_WEIGHTS:
            raise WeightSepError(f"a pool of -num_pages={num_pages} x -page_size={page_size} weights is larger "
                                 f"than {MAX_POOL_WEIGHTS}; choose smaller values")
        if page_dtype not in PAGE_DTYPES:
            raise WeightSepError(f"-page_dtype={page_dtype!r} must be one of {', '.join(PAGE_DTYPES)}")
        try:
            fmt = page_format(page_dtype, group_size)
            fmt.check_page_size(page_size)
        except ValueError as e:
            raise WeightSepError(f"-page_size={page_size}: {e}") from None
        if layout not in LAYOUTS:
            raise WeightSepError(f"layout {layout!r} must be one of {', '.join(LAYOUTS)}")
        rng = np.random.default_rng(seed)
        pool = rng.normal(0.0, 0.01, size=(num_pages, page_size)).astype(np.float32)
        keep = bool(masters) and fmt.quantized
        self._mem = Committed()
        self._commit(tasks=[], next_id=0,
                     header={"page_size": page_size, "num_pages": num_pages, "page_dtype": page_dtype,
                             "group_size": fmt.group_size, "layout": layout},
                     new_pages={"shared": stored_pages(fmt, pool, masters=keep),
                                "exclusive": stored_pages(fmt, np.zeros((0, page_size), np.float32), masters=keep)})
        return self

    def _check_vectors(self, name: str, num_weights: int, vectors) -> dict[str, np.ndarray]:
        """{registry key: float32 [n] finite copy} for a dict of vectors by kind."""
        if not isinstance(vectors, dict):
            raise ValueError(f"vectors of task '{name}' must be a dict of kind -> float32 [n] vector")
        checked = {}
        for kind, vector in vectors.items():
            rel = vector_rel(name, kind)
            array = as_values(vector, f"{kind} vector of task '{name}'")
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
        values = as_values(exclusive_values, f"exclusive pages of task '{record.name}'")
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
        new_pages = {"exclusive": self._mem.pages["exclusive"].concatenate(
            stored_pages(self.format, values, masters=reg.masters))}
        if shared is not None:
            pool = self._check_pool(shared)
            rewritten = rewrite(self.format, self._mem.pages["shared"], np.arange(reg.num_pages), pool)
            if rewritten is not None:
                new_pages["shared"] = rewritten
        self._commit(tasks=reg.tasks + [stored], next_id=reg.next_id + 1, new_pages=new_pages, vectors=checked)
        return self.task(record.name)

    def _check_pool(self, pool) -> np.ndarray:
        pool = as_values(pool, "shared pool")
        if pool.shape != self.shared.shape:
            raise ValueError(f"shared pool has shape {pool.shape}, expected {self.shared.shape}")
        return pool

    def _task_pages(self, record: TaskRecord, weights) -> np.ndarray:
        """The task's pages with `weights` written in; the padding of its last page keeps its values
        (the master values where the state keeps them, else the stored values)."""
        vector = as_values(weights, f"weights of task '{record.name}'")
        if vector.shape != (record.num_weights,):
            raise ValueError(f"weights of task '{record.name}' have shape {vector.shape}, "
                             f"expected ({record.num_weights},)")
        new = pages.gather_pages(self.master("shared"), self.master("exclusive"), record.page_table)
        new.reshape(-1)[:record.num_weights] = vector
        return new

    def task_wide(self, name: str) -> np.ndarray:
        """bool [n_p]: which of the task's pages are int8 pages of an int4 state (else all False)."""
        table, num_shared = self.task(name).page_table, self.num_pages
        on_pool = table < num_shared
        wide = np.zeros(len(table), bool)
        wide[on_pool] = self._mem.pages["shared"].wide[table[on_pool]]
        wide[~on_pool] = self._mem.pages["exclusive"].wide[table[~on_pool] - num_shared]
        return wide

    def as_stored(self, name: str, weights: np.ndarray) -> np.ndarray:
        """float32[n]: what materialize(name) returns after commit_task(name, weights=weights).

        Equal to weights for a float32 state; their quantized values for int8/int4 (pages
        whose values do not change keep their stored values; with master values, "change" means
        the master values change).  Writes nothing.
        """
        record = self._reg.tasks[self._index(name)]
        new = self._task_pages(record, weights)
        changed = changed_rows(self.master_pages(name), new)
        if self.masters:
            new[~changed] = pages.gather_pages(self.shared, self.exclusive, record.page_table)[~changed]
        if changed.any():
            wide = self.task_wide(name)
            new[changed] = self.format.round_trip(new[changed], wide[changed] if self.format.grouped else None)
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
                rewritten = rewrite(self.format, self._mem.pages[which], rows.astype(np.int64), part)
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
        rewritten = rewrite(self.format, self._mem.pages["shared"], np.arange(reg.num_pages), pool)
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
        compacted = self._mem.pages["exclusive"].rows(np.flatnonzero(keep))
        drop = tuple(vector_rel(name, kind) for kind in VECTOR_KINDS if vector_rel(name, kind) in reg.files)
        self._commit(tasks=tasks, new_pages={} if keep.all() else {"exclusive": compacted}, drop=drop)
