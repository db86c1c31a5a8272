"""The project's one atomic file writer: a file is either its old content or its new one.

A write goes to a temporary file ``.<name>.<random>.tmp`` in the target's own
directory (so that the final rename never crosses a filesystem), is flushed and
fsynced, renamed over the target with ``os.replace`` (atomic on POSIX), and then the
directory is fsynced so that the rename itself survives a power cut.

Any OSError on the way (disk full, quota, read-only filesystem, no permission ...)
becomes a ``WriteError`` whose one-line message names the file and the reason, after
the temporary file is removed; the target is then untouched.  Other exceptions
(a bug in the caller's ``write_fn``) also remove the temporary file and propagate.

Arrays are written with ``np.save(..., allow_pickle=False)``: no file this project
writes can hold a pickle.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from weightsep.errors import WriteError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def reason(error: OSError) -> str:
    """The reason of an OSError on one line ("No space left on device")."""
    text = error.strerror or str(error) or type(error).__name__
    return " ".join(str(text).split())


def _hint(error: OSError) -> str:
    if error.errno in _NO_SPACE:
        return "; free some disk space and retry"
    if error.errno in _NOT_WRITABLE:
        return "; make the directory writable or choose another one, and retry"
    return ""


def write_error(action: str, path, error: OSError) -> WriteError:
    """A WriteError for `action` ("write", "rename ... to") on path, one line."""
    return WriteError(f"cannot {action} {path}: {reason(error)}{_hint(error)}")


def fsync_dir(directory) -> None:
    """Make renames and unlinks in `directory` durable."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        # Some filesystems cannot fsync a directory; the rename is still atomic there.
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise write_error("sync directory", directory, e) from e


def ensure_dir(directory) -> Path:
    """Create `directory` (and its parents) if missing; WriteError if that fails."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error("create directory", directory, e) from e
    return directory


def atomic_write(path, write_fn: Callable[[BinaryIO], None]) -> None:
    """Write `path` through write_fn(file) via a temp file, fsync, os.replace, fsync the directory."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; written files are ordinary readable files
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise write_error("write", path, e) from e
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    fsync_dir(path.parent)


def write_bytes(path, data: bytes) -> None:
    """Atomically replace `path` with `data`."""
    atomic_write(path, lambda f: f.write(data))


def save_npy(path, array: np.ndarray) -> None:
    """Atomically write `array` as a .npy file (C order, never pickled)."""
    array = np.ascontiguousarray(array)
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def replace(source, target) -> None:
    """Rename source over target (atomic), then fsync the target's directory; WriteError if it fails."""
    try:
        os.replace(source, target)
    except OSError as e:
        raise write_error(f"rename {source} to", target, e) from e
    fsync_dir(Path(target).parent)


def is_temp_of(file_name: str, target: str) -> bool:
    """Whether file_name is a temporary file of atomic_write for target: ".<target>.<random>.tmp"."""
    prefix = f".{target}."
    middle = file_name[len(prefix):-len(".tmp")]
    return (file_name.startswith(prefix) and file_name.endswith(".tmp") and bool(middle)
            and middle.replace("_", "").isalnum())
