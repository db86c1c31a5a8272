"""The commit protocol of a state and its crash recovery: which files hold the committed state.

Every file is written atomically (weightsep.atomic), so each single file is always
either old or new.  A change spans several files (commit_task: pool, exclusive store,
the `weight` vector, settings), so the registry is the commit record of every change:

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
import dataclasses
import json
from pathlib import Path
from typing import Optional

import numpy as np

from weightsep import atomic
from weightsep.errors import StateError, WeightSepError
from weightsep.limits import REGISTRY_FILE
from weightsep.pageformat import Encoded, page_format
from weightsep.store.files import discard_leftovers, matches, pending_name, read_npy, task_dirs
from weightsep.store.pagearrays import Pages
from weightsep.store.registry import (MASTER_FILES, POOL_FILES, SCHEMA_VERSION, VECTOR_KINDS, Invalid, Registry,
                                      TaskRecord, encode_registry, entry_of, parse_registry, read_registry,
                                      start_over, vector_rel)


@dataclasses.dataclass
class Committed:
    """What a store holds in memory of the committed state: the registry, the two page arrays,
    and the file each page file was read from (the real file, or its pending file)."""

    reg: Optional[Registry] = None
    pages: dict = dataclasses.field(default_factory=dict)
    sources: dict = dataclasses.field(default_factory=dict)


def pending_path(state_dir: Path, rel: str) -> Path:
    return state_dir / pending_name(rel)


def read_committed(state_dir: Path, reg: Registry, rel: str, fix: str) -> tuple[np.ndarray, Path]:
    """The file the registry refers to: the real file, else its pending file (see top).

    The real file is tried a second time: a writer may have renamed the pending file over
    it meanwhile.  The error reported is the real file's.
    """
    entry = reg.files[rel]
    real, pending = state_dir / rel, pending_path(state_dir, rel)
    first: Exception | None = None
    for path in (real, pending, real):
        try:
            return read_npy(path, entry, fix), path
        except (FileNotFoundError, StateError) as error:
            first = first or error
    if isinstance(first, FileNotFoundError):
        raise StateError(f"{real} is missing but {REGISTRY_FILE} refers to it; {fix}")
    raise first


def state_format(reg: Registry):
    """The page format of a registry's state (weightsep.pageformat)."""
    return page_format(reg.page_dtype, reg.group_size or None)


def _read_pages(state_dir: Path, reg: Registry, which: str) -> tuple[Pages, dict[str, Path]]:
    """One page array from its committed files, dequantized; and the file each came from."""
    fix = start_over(state_dir)
    arrays, sources = {}, {}
    for name in POOL_FILES[which]:
        if name in reg.files:
            arrays[name], sources[name] = read_committed(state_dir, reg, name, fix)
    stored = Encoded(*(arrays.get(name) for name in POOL_FILES[which]))
    values_name, scales_name = POOL_FILES[which][:2]
    try:
        floats = state_format(reg).dequantize_checked(*stored)
    except ValueError as e:
        raise StateError(f"{sources.get(scales_name, sources[values_name])}: {e}; {fix}") from None
    master = None
    if reg.masters:
        name = MASTER_FILES[which]
        master, sources[name] = read_committed(state_dir, reg, name, fix)
    return Pages(floats, stored, master).freeze(), sources


def _registry_bytes(state_dir: Path) -> bytes | None:
    try:
        return (state_dir / REGISTRY_FILE).read_bytes()
    except OSError:
        return None


def load(state_dir: Path) -> Committed:
    """Read and validate the registry and the page arrays (vectors are read on demand)."""
    for attempt in range(3):
        text, reg = read_registry(state_dir)
        try:
            loaded = {which: _read_pages(state_dir, reg, which) for which in POOL_FILES}
            break
        except StateError:
            # A writer may have committed between our registry read and the array
            # reads (it then renames pending files away); read again in that case.
            if attempt < 2 and _registry_bytes(state_dir) != text:
                continue
            raise
    return Committed(reg, {which: item[0] for which, item in loaded.items()},
                     {rel: path for item in loaded.values() for rel, path in item[1].items()})


def _delete_if_matches(state_dir: Path, rel: str, entry: dict) -> None:
    """Delete a dropped file (and its pending copy) only if it holds exactly what was recorded."""
    for path in (state_dir / rel, pending_path(state_dir, rel)):
        if matches(path, entry):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    # The folder may be the task's spec folder (default state_dir): remove it only if empty.
    with contextlib.suppress(OSError):
        (state_dir / rel).parent.rmdir()


def recover(state_dir: Path, exists: bool) -> Optional[Committed]:
    """With the lock held: finish a committed change (rename its pending files, delete what it
    dropped), delete uncommitted pending and temp files; the loaded state (None: no state)."""
    committed = None
    if exists:
        committed = load(state_dir)
        reg, sources = committed.reg, committed.sources
        for rel, entry in reg.files.items():
            pending = pending_path(state_dir, rel)
            if not pending.is_file():
                continue
            if sources.get(rel) == pending or matches(pending, entry):
                atomic.replace(pending, state_dir / rel)
                if rel in sources:
                    sources[rel] = state_dir / rel
            else:
                with contextlib.suppress(OSError):
                    pending.unlink()
        for rel, entry in reg.obsolete.items():
            _delete_if_matches(state_dir, rel, entry)
    # Whatever pending or temp file is left now belongs to no commit.
    discard_leftovers(state_dir, [*POOL_FILES["shared"], *POOL_FILES["exclusive"], *MASTER_FILES.values(),
                                  REGISTRY_FILE])
    for folder in task_dirs(state_dir):
        names = [Path(vector_rel(folder.name, kind)).name for kind in VECTOR_KINDS]
        if discard_leftovers(folder, names):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: a folder made for pending files of no commit
    return committed


def commit(state_dir: Path, memory: Committed, *, tasks: list[TaskRecord], next_id: int | None = None,
           header: dict | None = None, new_pages: dict[str, Pages] | None = None,
           vectors: dict[str, np.ndarray] | None = None, drop: tuple = ()) -> None:
    """One commit: changed files as pending files, then the registry (the commit point), then
    renames and deletions; see the module docstring.  `memory` follows the committed state.

    new_pages: replaced page arrays ("shared" / "exclusive"); vectors: rel -> float32 vector;
    drop: vector files the new state no longer refers to.  header: the state-wide fields
    (a new state only).
    """
    old = memory.reg
    new_pages = new_pages or {}
    writes: dict[str, np.ndarray] = dict(vectors or {})
    for which, item in new_pages.items():
        for name, array in zip(POOL_FILES[which], item.stored):
            if array is not None:
                writes[name] = array
        if item.master is not None:
            writes[MASTER_FILES[which]] = item.master
    files = {} if old is None else {rel: e for rel, e in old.files.items() if rel not in drop}
    files.update({rel: entry_of(array) for rel, array in writes.items()})
    obsolete = {rel: old.files[rel] for rel in drop if rel not in files} if old is not None else {}
    if old is not None:
        for rel, entry in old.obsolete.items():
            if rel not in files and rel not in obsolete and (
                    (state_dir / rel).exists() or pending_path(state_dir, rel).exists()):
                obsolete[rel] = entry
    fields = header if header is not None else {
        "page_size": old.page_size, "num_pages": old.num_pages, "page_dtype": old.page_dtype,
        "group_size": old.group_size, "layout": old.layout}
    data = {"schema_version": SCHEMA_VERSION, "generation": (old.generation if old else 0) + 1,
            **fields, "next_id": old.next_id if next_id is None else next_id,
            "files": files, "obsolete": obsolete, "tasks": [t.to_json() for t in tasks]}
    try:
        text = encode_registry(data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"settings, accuracy and spec must be plain finite JSON values: {e}") from None
    try:
        # What is adopted is what a load of these bytes gives: memory and disk agree exactly.
        raw = json.loads(text)
        signature = raw.pop("checksum")
        reg = parse_registry(raw)
        reg.checksum = signature
    except Invalid as e:
        raise ValueError(f"refusing to write an inconsistent state to {state_dir}: {e}") from None

    written, made = [], []
    try:
        for rel, array in writes.items():
            folder = pending_path(state_dir, rel).parent
            if folder != state_dir:
                if folder.is_symlink():
                    raise StateError(f"{folder} is a symbolic link; the state writes task files only into "
                                     f"its own folders: replace the link by a folder")
                if not folder.exists():
                    made.append(folder)
                atomic.ensure_dir(folder)
            written.append(pending_path(state_dir, rel))
            atomic.save_npy(pending_path(state_dir, rel), array)
        atomic.write_bytes(state_dir / REGISTRY_FILE, text)
    except WeightSepError:
        if _registry_bytes(state_dir) == text:  # replaced, only the directory sync failed: committed
            _adopt(state_dir, memory, reg, new_pages, writes)
            raise
        # Not committed (a full disk, a read-only file): the state is unchanged; so is the directory.
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    _adopt(state_dir, memory, reg, new_pages, writes)
    for rel in writes:
        atomic.replace(pending_path(state_dir, rel), state_dir / rel)
        if rel in memory.sources:
            memory.sources[rel] = state_dir / rel
    for rel, entry in reg.obsolete.items():
        _delete_if_matches(state_dir, rel, entry)


def _adopt(state_dir: Path, memory: Committed, reg: Registry, new_pages: dict[str, Pages], writes: dict) -> None:
    """Make memory follow a committed registry; written files are in their pending files for now."""
    memory.reg = reg
    for which, item in new_pages.items():
        memory.pages[which] = item.freeze()
    page_files = {name for names in POOL_FILES.values() for name in names} | set(MASTER_FILES.values())
    for rel in writes:
        if rel in page_files:
            memory.sources[rel] = pending_path(state_dir, rel)
