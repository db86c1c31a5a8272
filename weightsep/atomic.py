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
import re
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from weightsep.errors import WriteError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
_HINTS = {
    errno.EFBIG: "; the file-size limit (ulimit -f) is reached: raise it or write less, and retry",
    errno.ENAMETOOLONG: "; use a shorter path",
    errno.ENOTDIR: "; a part of the path is a file, not a directory: choose another path",
    errno.EISDIR: "; it is a directory: choose another path",
    errno.EEXIST: "; something else exists there: choose another path",
    errno.ELOOP: "; the path has too many symbolic links: choose another path",
}
# NumPy reports a short write of np.save / tofile as "<n> requested and <m> written", without errno.
_SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")
MAX_SHOWN_PATH = 120


def short_path(path) -> str:
    """A path for a one-line message: as is, or its start and end around "..." when long."""
    text = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    if len(text) <= MAX_SHOWN_PATH:
        return text
    return f"{text[:50]}...{text[-50:]} ({len(text)} characters)"


def reason(error: OSError) -> str:
    """The reason of an OSError on one line ("No space left on device")."""
    text = error.strerror or str(error) or type(error).__name__
    return " ".join(str(text).split())


def hint(error: OSError) -> str:
    """What to do about an OSError, as "; ..." to append to its reason (empty when nothing applies)."""
    if error.errno in _NO_SPACE:
        return "; free some disk space and retry"
    if error.errno in _NOT_WRITABLE:
        return "; make the directory writable or choose another one, and retry"
    return _HINTS.get(error.errno, "")


def short_write_error(path, requested: int, written: int) -> WriteError:
    """A write that stopped short without an error code: the disk or the file-size limit is full."""
    return WriteError(f"cannot write {short_path(path)}: only {written} of {requested} bytes were written, "
                      f"so the disk or the file-size limit (ulimit -f) is full; free some disk space (or "
                      f"raise the limit) and retry")


def write_error(action: str, path, error: OSError) -> WriteError:
    """A WriteError for `action` ("write", "rename ... to") on path, one line."""
    short = _SHORT_WRITE.search(str(error)) if error.errno is None else None
    if short:
        return short_write_error(path, int(short.group(1)), int(short.group(2)))
    return WriteError(f"cannot {action} {short_path(path)}: {reason(error)}{hint(error)}")


def os_error_line(error: OSError) -> str:
    """Any OSError on a user's path as one line naming the path, the reason and the fix."""
    path = error.filename if error.filename is not None else "a file"
    line = str(write_error("use", path, error))
    if error.filename2 is not None:
        line += f" (and {short_path(error.filename2)})"
    return line


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


def check_dir_path(directory, flag: str) -> None:
    """WriteError (one line, naming -flag) unless `directory` is a directory, or can be created as
    one, that this process may write: checked before any work, so that a typo costs nothing."""
    directory = Path(directory)
    probe = directory
    try:
        while True:
            try:
                info = os.stat(probe)
                break
            except (FileNotFoundError, NotADirectoryError):
                if probe.parent == probe:
                    return
                probe = probe.parent
    except OSError as e:
        raise WriteError(f"-{flag}={short_path(directory)}: {reason(e)}{hint(e)}") from None
    if not stat.S_ISDIR(info.st_mode):
        where = "is a file" if probe == directory else f"is below {short_path(probe)}, a file"
        raise WriteError(f"-{flag}={short_path(directory)} {where}, not a directory; choose another path")
    effective = os.access in os.supports_effective_ids
    if not os.access(probe, os.W_OK | os.X_OK, effective_ids=effective):
        raise WriteError(f"-{flag}={short_path(directory)}: {short_path(probe)} is read-only; make it writable "
                         f"or choose another path")


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
        raise write_error(f"rename {short_path(source)} to", target, e) from e
    fsync_dir(Path(target).parent)


def is_temp_of(file_name: str, target: str) -> bool:
    """Whether file_name is a temporary file of atomic_write for target: ".<target>.<random>.tmp"."""
    prefix = f".{target}."
    middle = file_name[len(prefix):-len(".tmp")]
    return (file_name.startswith(prefix) and file_name.endswith(".tmp") and bool(middle)
            and middle.replace("_", "").isalnum())
