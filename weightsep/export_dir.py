"""The export directory: written all-or-nothing, described by a manifest that verifies it.

Every export (-mode=w, -mode=p, and any later one) hands its files to ``publish`` under an
export name ("w", "p", ...).  The directory then holds exactly the files of the latest export
of each name, plus ``manifest.json`` (docs/FORMAT.md, "Manifest"): the manifest version, the
state the files come from (its generation and registry checksum), the settings of each export
and, per file, its byte count and SHA-256.  ``verify`` checks a directory against its manifest.

All-or-nothing.  The new directory is built beside the old one, in a hidden staging directory
``.<name>.staging-<random>``: the new files, the files of the other exports kept from the old
directory (only when they come from the same state generation and checksum, and each verifies;
else they are left out and the caller is told), and the manifest, each fsynced.  The staging
directory then replaces the export directory in one step (Linux ``renameat2`` with
``RENAME_EXCHANGE``), and the old one, now under the staging name, is deleted.  Where the
filesystem cannot exchange, the old directory is first renamed to ``.<name>.old-<random>``;
a crash between the two renames leaves no export directory but that one, and the next export
puts it back before anything else.  Leftover staging and old directories are removed by the
next export.  A reader therefore finds the previous export or the new one, never a mix.

Exports of one directory are serialized by an flock on its parent directory.  The export
directory is the exports' own: an existing directory that holds files but no manifest is
refused rather than replaced.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

from weightsep import atomic
from weightsep.datacheck import sha256_of
from weightsep.errors import WeightSepError, is_int, shown

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "weightsep-export"
MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 16 << 20
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}")


class ExportError(WeightSepError):
    """An export directory that does not match its manifest (or has none)."""


@dataclasses.dataclass(frozen=True)
class ExportFile:
    """One file of an export: its name in the export directory, its bytes, and what it holds."""

    name: str
    data: bytes
    what: str


def state_of(store) -> dict:
    """What the manifest records of the state an export comes from."""
    return {"generation": store.generation, "checksum": store.checksum, "page_size": store.page_size,
            "num_pages": store.num_pages, "page_dtype": store.page_dtype, "layout": store.layout}


# Test hook: called with a step name before each step that changes the disk ("write <file>",
# "exchange", ...), so that tests can kill the process at every step.
_step: Callable[[str], None] = lambda _name: None


def publish(out_dir, export: str, files: list[ExportFile], state: dict, settings: dict | None = None) -> list[str]:
    """Replace export ``export``'s files in out_dir by ``files``, all-or-nothing (module docstring).

    ``state`` is ``state_of(store)``; ``settings`` (plain JSON) is recorded with the export.
    Returns notes for the user (files of other exports left out because they are stale).
    Raises WeightSepError (one line) for an unusable directory or a failed write; out_dir is
    then unchanged.
    """
    out_dir = Path(out_dir)
    names = [f.name for f in files]
    for name in names:
        if not _NAME.fullmatch(name) or name == MANIFEST:
            raise ValueError(f"export file name {name!r} is not a plain file name")
    if len(set(names)) != len(names):
        raise ValueError(f"export {export} lists a file twice")
    parent = _parent_of(out_dir)
    with _locked(parent):
        recover(out_dir)
        old = _current_manifest(out_dir)
        kept, notes = _kept_exports(out_dir, old, export, state, set(names))
        manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "state": state,
                    "exports": {name: section for name, section in kept["exports"].items()},
                    "files": dict(kept["files"])}
        manifest["exports"][export] = {"settings": settings or {}}
        staging = _mkdtemp(parent, f".{out_dir.name}.staging-")
        try:
            for f in files:
                _step(f"write {f.name}")
                _write(staging / f.name, f.data)
                manifest["files"][f.name] = {"export": export, "bytes": len(f.data),
                                             "sha256": hashlib.sha256(f.data).hexdigest(), "what": f.what}
            for name in kept["files"]:
                _step(f"keep {name}")
                _keep(out_dir / name, staging / name)
            manifest["exports"] = dict(sorted(manifest["exports"].items()))
            manifest["files"] = dict(sorted(manifest["files"].items()))
            _step(f"write {MANIFEST}")
            _write(staging / MANIFEST, (json.dumps(manifest, indent=1, allow_nan=False) + "\n").encode())
            atomic.fsync_dir(staging)
            _swap(staging, out_dir)
        finally:
            if staging.exists():
                _remove_tree(staging)
    return notes


def read_manifest(out_dir) -> dict:
    """The manifest of an export directory, validated; ExportError if missing or malformed."""
    path = Path(out_dir) / MANIFEST
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise ExportError(f"{path} is missing: {out_dir} is not an export directory "
                          f"(write one with -mode=w or -mode=p)") from None
    except OSError as e:
        raise ExportError(f"cannot read {path}: {atomic.reason(e)}") from None
    try:
        if len(text) > MAX_MANIFEST_BYTES:
            raise ValueError("too large")
        manifest = json.loads(text)
        _check_manifest(manifest)
    except (ValueError, RecursionError, TypeError, KeyError, AttributeError) as e:
        raise ExportError(f"{path} is not a valid export manifest ({shown(str(e))}); "
                          f"write the export again") from None
    return manifest


def verify(out_dir) -> dict:
    """Check every file the manifest lists (size and SHA-256) and that no other file is there;
    returns the manifest, or raises ExportError naming the first file that differs."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    for name, entry in manifest["files"].items():
        path = out_dir / name
        try:
            digest, size = sha256_of(path)
        except FileNotFoundError:
            raise ExportError(f"{path} is listed in {MANIFEST} but missing; write the export again") from None
        except OSError as e:
            raise ExportError(f"cannot read {path}: {atomic.reason(e)}") from None
        if size != entry["bytes"] or digest != entry["sha256"]:
            raise ExportError(f"{path} does not match {MANIFEST} (changed since it was exported); "
                              f"write the export again")
    extra = sorted(set(os.listdir(out_dir)) - set(manifest["files"]) - {MANIFEST})
    if extra:
        raise ExportError(f"{out_dir / extra[0]} is not listed in {MANIFEST}; remove it or write the export again")
    return manifest


# ---- the steps -------------------------------------------------------------------------

def _check_manifest(manifest) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"not a {MANIFEST_FORMAT} manifest")
    if manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(f"manifest version {shown(manifest.get('version'))}, this toolkit reads "
                         f"version {MANIFEST_VERSION}")
    if not isinstance(manifest["state"], dict) or not isinstance(manifest["exports"], dict):
        raise ValueError("state and exports must be objects")
    for name, entry in manifest["files"].items():
        if not _NAME.fullmatch(name) or name == MANIFEST:
            raise ValueError(f"file name {shown(name)}")
        if (entry["export"] not in manifest["exports"] or not is_int(entry["bytes"]) or entry["bytes"] < 0
                or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])):
            raise ValueError(f"entry of {shown(name)}")


def _parent_of(out_dir: Path) -> Path:
    """The existing parent of out_dir (created if missing); one-line errors for unusable paths."""
    try:
        if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
            raise WeightSepError(f"-export_dir {_path(out_dir)} is a file or a symbolic link, not a directory; "
                                 f"pass a new or existing export directory")
    except OSError as e:
        raise atomic.write_error("use export directory", _path(out_dir), e) from None
    if out_dir.name in ("", ".", ".."):
        raise WeightSepError(f"-export_dir {_path(out_dir)}: name the export directory itself "
                             f"(e.g. {_path(out_dir / 'export')})")
    parent = out_dir.parent
    atomic.ensure_dir(parent)
    return parent


@contextlib.contextmanager
def _locked(parent: Path):
    try:
        fd = os.open(parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as e:
        raise atomic.write_error("open directory", _path(parent), e) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise WeightSepError(f"another export is writing into {_path(parent)}; wait for it to finish "
                                     f"and retry") from None
            raise atomic.write_error("lock directory", _path(parent), e) from None
        yield
    finally:
        os.close(fd)


def _leftovers(out_dir: Path, kind: str) -> list[Path]:
    prefix = f".{out_dir.name}.{kind}-"
    try:
        return sorted(p for p in out_dir.parent.iterdir() if p.name.startswith(prefix) and p.is_dir()
                      and not p.is_symlink())
    except OSError as e:
        raise atomic.write_error("list directory", _path(out_dir.parent), e) from None


def recover(out_dir) -> None:
    """Finish what an interrupted export left: put back a moved-away old directory, remove the rest
    (publish does it first, under the lock)."""
    out_dir = Path(out_dir)
    old = _leftovers(out_dir, "old")
    if old and not out_dir.exists():
        atomic.replace(old[-1], out_dir)
        old = old[:-1]
    for leftover in old + _leftovers(out_dir, "staging"):
        _remove_tree(leftover)


def _current_manifest(out_dir: Path) -> Optional[dict]:
    """The current export's manifest; None for a missing or empty directory.  A directory holding
    files but no manifest is not ours to replace."""
    if not out_dir.exists():
        return None
    try:
        entries = os.listdir(out_dir)
    except OSError as e:
        raise atomic.write_error("list directory", _path(out_dir), e) from None
    if not entries:
        return None
    if MANIFEST not in entries:
        raise WeightSepError(f"-export_dir {_path(out_dir)} holds files but no {MANIFEST}, so it is not an "
                             f"export directory; pass a new or empty directory")
    try:
        return read_manifest(out_dir)
    except ExportError:
        return None  # an unreadable manifest: the export is rewritten from scratch


def _kept_exports(out_dir: Path, old: Optional[dict], export: str, state: dict,
                  new_names: set) -> tuple[dict, list[str]]:
    """The other exports' sections and files to carry over, and notes on those left out."""
    kept = {"exports": {}, "files": {}}
    if old is None:
        return kept, []
    notes = []
    for name in sorted(old["exports"]):
        if name == export:
            continue
        files = {f: e for f, e in old["files"].items() if e["export"] == name}
        if old["state"] != state:
            notes.append(f"note: removed the files of -mode={name} from {_path(out_dir)}: they come from "
                         f"another state generation; run -mode={name} again")
            continue
        clash = sorted(new_names & set(files))
        if clash:
            raise WeightSepError(f"file {clash[0]} of -mode={export} would replace the file of that name of "
                                 f"-mode={name} in {_path(out_dir)}; rename the task")
        try:
            for f, entry in files.items():
                digest, size = sha256_of(out_dir / f)
                if (digest, size) != (entry["sha256"], entry["bytes"]):
                    raise ExportError(f)
        except (OSError, ExportError):
            notes.append(f"note: removed the files of -mode={name} from {_path(out_dir)}: they no longer "
                         f"match {MANIFEST}; run -mode={name} again")
            continue
        kept["exports"][name] = old["exports"][name]
        kept["files"].update(files)
    return kept, notes


def _mkdtemp(parent: Path, prefix: str) -> Path:
    try:
        return Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    except OSError as e:
        raise atomic.write_error("create a directory in", _path(parent), e) from None


def _write(path: Path, data: bytes) -> None:
    try:
        with open(path, "xb") as f:
            written = f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise atomic.write_error("write", _path(path), e) from None
    if written != len(data):
        raise atomic.short_write_error(_path(path), len(data), written)


def _keep(source: Path, target: Path) -> None:
    """A kept file: a hard link where the filesystem allows, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        try:
            shutil.copyfile(source, target)
            with open(target, "rb+") as f:
                os.fsync(f.fileno())
        except OSError as e:
            raise atomic.write_error("copy", _path(source), e) from None


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    libc_name = ctypes.util.find_library("c")
    renameat2 = getattr(ctypes.CDLL(libc_name, use_errno=True), "renameat2", None) if libc_name else None
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise atomic.write_error(f"exchange {_path(a)} with", _path(b), OSError(code, os.strerror(code)))


def _swap(staging: Path, out_dir: Path) -> None:
    """Put staging in place of out_dir in one step; the old directory ends under the staging name."""
    _step("exchange")
    if not out_dir.exists():
        atomic.replace(staging, out_dir)
        return
    if _exchange(staging, out_dir):
        atomic.fsync_dir(out_dir.parent)
        return
    old = _mkdtemp(out_dir.parent, f".{out_dir.name}.old-")
    atomic.replace(out_dir, old)  # a directory may be renamed over an empty one
    _step("rename staging")
    atomic.replace(staging, out_dir)
    _remove_tree(old)


def _remove_tree(path: Path) -> None:
    # Best effort: a leftover is hidden, ignored by readers and removed by the next export.
    shutil.rmtree(path, ignore_errors=True)


def _path(path) -> str:
    """A path for a one-line message, cut short when long."""
    return atomic.short_path(path)
