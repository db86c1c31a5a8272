"""The writer lock of a state directory: one writer at a time, readers never wait.

A writer holds an exclusive, non-blocking flock on `.weightsep.lock` and writes its pid
into it, so that a second writer fails at once naming the holder.  The lock is a file
lock of the kernel: it vanishes with the process, so a crashed writer never leaves the
state locked (the stale pid in the file is harmless).  A directory that cannot be
written gives StateReadOnlyError: the state can still be read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import Iterator

from weightsep import atomic
from weightsep.errors import StateError, StateLockedError, StateReadOnlyError
from weightsep.store.files import check_dir

_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


@contextlib.contextmanager
def hold(state_dir: Path, lock_path: Path) -> Iterator[int]:
    """Hold the writer lock of state_dir (without waiting); yields the lock file's descriptor.

    Raises StateLockedError (naming the holder's pid) if another process holds it, and
    StateReadOnlyError if the directory cannot be written.
    """
    fd = _open_lock(state_dir, lock_path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise StateError(f"cannot lock {lock_path}: {atomic.reason(e)}") from None
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise StateLockedError(
                f"state in {state_dir} is locked by pid {pid} (another WeightSeparation.py is writing "
                f"it); wait for it to finish or, if that process is gone, delete {lock_path} "
                f"and retry") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            fcntl.flock(fd, fcntl.LOCK_UN)
            raise atomic.write_error("write", lock_path, e) from None
        try:
            yield fd
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open_lock(state_dir: Path, lock_path: Path) -> int:
    """Open (create) the lock file; the errors say what is wrong with the directory."""
    check_dir(state_dir)
    read_only = (f"the writer lock {lock_path} cannot be taken; the state can still be read "
                 f"(-mode=e, -mode=l), or copy it to a writable -state_dir to change it")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        error = StateReadOnlyError if e.errno in _READ_ONLY else StateError
        raise error(f"cannot create the state directory {state_dir}: {atomic.reason(e)}; "
                    f"pass a -state_dir you can write") from None
    effective = os.access in os.supports_effective_ids
    if not os.access(state_dir, os.W_OK | os.X_OK, effective_ids=effective):
        raise StateReadOnlyError(f"{state_dir} is read-only: {read_only}")
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(lock_path, flags, 0o644)
    except IsADirectoryError:
        raise StateError(f"{lock_path} is a directory, not a lock file; delete it and retry") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StateError(f"{lock_path} is a symbolic link, not a lock file; delete it and retry") from None
        if e.errno in _READ_ONLY:
            raise StateReadOnlyError(f"cannot open {lock_path}: {atomic.reason(e)}; {read_only}") from None
        raise StateError(f"cannot open {lock_path}: {atomic.reason(e)}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StateError(f"{lock_path} is not a regular file; delete it and retry")
    return fd
