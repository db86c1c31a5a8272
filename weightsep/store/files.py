"""The files of a state directory: reading a .npy file checked against its registry entry,
pending-file names, and cleaning up files that belong to no commit.

A state's arrays are plain .npy files (docs/FORMAT.md); a file is read only after its
header (version, dtype, shape, C order) and size match what the registry records,
and its data must hash to the recorded SHA-256.  Writes go through weightsep.atomic
(each file is old or new, never half); which file of a pair (real or pending) holds
the committed content is the business of weightsep.store.commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import stat
from pathlib import Path

import numpy as np

from weightsep import atomic
from weightsep.errors import StateError, WeightSepError
from weightsep.limits import REGISTRY_FILE
from weightsep.tasks import check_task_name


def one_line(error) -> str:
    """An error's text on one line, cut short."""
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:197] + "..."


def open_regular(path: Path):
    """Open a file for reading; StateError if it is not a regular file (a FIFO would block forever,
    a device would never end).  FileNotFoundError and other OSErrors propagate."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        kind = "a directory" if os.path.isdir(path) else "not a regular file"
        raise StateError(f"{path} is {kind}; delete it, or restore the state from a backup")
    return os.fdopen(fd, "rb")


def pending_name(name: str) -> str:
    """The pending file of a .npy file name (`x.npy` -> `x.pending.npy`)."""
    return name[:-len(".npy")] + ".pending.npy"


def check_dir(state_dir: Path) -> None:
    """StateError if -state_dir names a file."""
    if state_dir.exists() and not state_dir.is_dir():
        raise StateError(f"-state_dir {state_dir} is a file, not a directory; pass the directory that "
                         f"holds the state (a new one is created on first use)")


def read_npy(path: Path, entry: dict, fix: str) -> np.ndarray:
    """A .npy file checked against its registry entry (header first: no data is read blindly)."""
    dtype, shape = np.dtype(entry["dtype"]), tuple(entry["shape"])
    try:
        with open_regular(path) as f:
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
        raise StateError(f"{path} is unreadable ({one_line(e)}): it is truncated or not a .npy file; "
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


def matches(path: Path, entry: dict) -> bool:
    """Whether the file at path holds exactly what the registry entry records."""
    try:
        read_npy(path, entry, "")
        return True
    except (StateError, FileNotFoundError):
        return False


def task_dirs(state_dir: Path) -> list[Path]:
    """Sub-directories that may hold per-task vector files (plain names, not symbolic links)."""
    found = []
    for path in state_dir.iterdir():
        with contextlib.suppress(WeightSepError):
            if check_task_name(path.name) and path.is_dir() and not path.is_symlink():
                found.append(path)
    return found


def discard_leftovers(folder: Path, names: list[str]) -> bool:
    """Delete the pending files of `names` and the temp files of both; whether any was deleted."""
    pendings = {pending_name(name) for name in names if name.endswith(".npy")}
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

