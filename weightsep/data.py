"""Datasets of the tasks: the authors' preprocessed arrays, MNIST, or synthetic data.

``load_split(task, split)`` returns a ``Dataset`` (x float32 [N, H, W, C] in the
task's input shape, y int64 [N] class indices) for one of the splits "train",
"validation", "test".  Splits load lazily and independently; loaded arrays are
cached per process and returned read-only.

Real data (``data="real"``) comes in the two formats the original toolkit used:
- "npy": one data and one label array per split in the task folder; data flattened
  per sample [N, H*W*C] (NHWC order) or shaped [N, H, W, C] ([N, H, W] when C == 1);
  labels one-hot [N, num_classes] or integer [N] / [N, 1].
- "mnist_idx": the standard MNIST idx ``.gz`` files, images scaled to [0, 1].
Validation: the task's validation files when its spec lists them.  Otherwise, as the
original, "train" is the whole train files and there is no validation split, unless the
caller asks for one with ``validation_split`` (a fraction f: the last floor(N x f) samples,
at least 1, become "validation" and "train" is the rest, so training never sees a validation
sample).  MNIST is the exception the original made: its TensorFlow reader kept the first
5,000 examples of the idx train files as validation and trained on the other 55,000, and so
does the "mnist_idx" format here, whatever ``validation_split`` says.

Every load checks that the files exist, are loadable arrays of real numbers, agree
in sample count, hold at least one sample, match the task's input shape, hold
labels in 0..num_classes-1 (one-hot rows with exactly one 1) and finite values;
any problem is a DataError naming the file and what to run.  Idx files are
decompressed as a stream, bounded by what their header announces.

Synthetic data (``data="synthetic"``) comes from weightsep.synthetic.

Checking the files on disk one by one (SHA-256 included) is weightsep.datacheck.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import shlex
import struct
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from weightsep import synthetic
from weightsep.errors import DataError, WeightSepError, command
from weightsep.synthetic import SYNTHETIC_SIZES
from weightsep.tasks import PAPER_TASKS, REPO_ROOT, SPLITS, TaskSpec

__all__ = ["DATA_KINDS", "DEFAULT_VALIDATION_SPLIT", "MNIST_VALIDATION_HEAD", "SYNTHETIC_SIZES", "IDX_MAX_ITEMS",
           "Dataset", "load_split", "num_examples", "describe", "clear_cache", "data_files"]

DATA_KINDS = ("real", "synthetic")

# The fraction of the train files cut off as validation when something needs a validation split
# (-select_on=validation, pretraining) and the task has no validation files.
DEFAULT_VALIDATION_SPLIT = 0.1
# The original read MNIST with TensorFlow's tutorial reader (read_data_sets), which keeps the first
# 5,000 examples of the idx train files as its validation set.
MNIST_VALIDATION_HEAD = 5000

# An idx header announcing more items than this is refused before anything is
# decompressed (MNIST has 60,000): a crafted header must not make us allocate or inflate gigabytes.
IDX_MAX_ITEMS = 10_000_000


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """One split of a task: x float32 [N, H, W, C], y int64 [N], and where it came from."""

    x: np.ndarray
    y: np.ndarray
    task: str
    split: str
    data: str
    files: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_examples(self) -> int:
        return len(self)


def _download_hint(task: TaskSpec) -> str:
    """The command that downloads the task's files into its folder (wherever that folder is)."""
    if task.name not in PAPER_TASKS:
        return f"put the task's data files into {task.folder} (or use -data=synthetic)"
    folder = Path(task.folder) if task.folder is not None else REPO_ROOT / task.name
    env = "" if folder.resolve() == (REPO_ROOT / task.name).resolve() else f"WS_ROOT={shlex.quote(str(folder.parent))}"
    return f"run {command('download_dataset.sh', task.name, env=env)} (or use -data=synthetic)"


def _check_kind(task: TaskSpec, split: str, data: str) -> None:
    if split not in SPLITS:
        raise WeightSepError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if data not in DATA_KINDS:
        raise WeightSepError(f"unknown data kind {data!r}; expected one of {', '.join(DATA_KINDS)}")
    if data == "real" and task.data is None:
        raise DataError(f"task {task.name} declares no data files in its task.py; "
                        "add DataFiles(...) to it or use -data=synthetic")


def load_split(task: TaskSpec, split: str, data: str = "real", seed: int = 0,
               validation_split: float = 0.0) -> Dataset:
    """Load one split of a task's data (cached per process; arrays are read-only).
    ``validation_split``: the fraction of the train files that becomes the validation split when
    the task has no validation files (0: none, "train" is the whole train files)."""
    _check_kind(task, split, data)
    if data == "synthetic":
        return _synthetic_cached(task.name, tuple(task.input_shape), task.num_classes, split, int(seed))
    if split == "test" or task.data.validation is not None:
        return _load_files(task, split, task.data.split(split))
    full = _load_files(task, "train", task.data.train)
    train, validation = _train_parts(task, len(full), validation_split)
    part = train if split == "train" else validation
    if part is None:
        raise WeightSepError(_no_validation(task))
    if part == slice(0, len(full)):
        return full
    return dataclasses.replace(full, x=full.x[part], y=full.y[part], split=split)


def _no_validation(task: TaskSpec) -> str:
    return (f"task {task.name} has no validation files, and its train files are all used for training (as the "
            f"original); ask for a validation split cut from them with -validation_split=0.1")


def _train_parts(task: TaskSpec, n: int, validation_split: float) -> tuple[slice, Optional[slice]]:
    """(train, validation) parts of a task's n train-file samples when it has no validation files;
    validation is None when no validation split is asked for."""
    if task.data.format == "mnist_idx":
        if n <= MNIST_VALIDATION_HEAD:
            raise DataError(f"{task.path(task.data.train[0])}: {n} sample(s); the original's MNIST reader keeps "
                            f"the first {MNIST_VALIDATION_HEAD} as validation and needs more; {_download_hint(task)}")
        return slice(MNIST_VALIDATION_HEAD, n), slice(0, MNIST_VALIDATION_HEAD)
    if not validation_split:
        return slice(0, n), None
    if n < 2:
        raise DataError(f"{task.path(task.data.train[0])}: {n} sample(s) are too few to split off "
                        f"a validation set; {_download_hint(task)}")
    # A small epsilon so that e.g. 0.1 x 70 counts 7 (not 6.999...); both parts stay non-empty.
    n_val = min(n - 1, max(1, int(n * validation_split + 1e-9)))
    return slice(0, n - n_val), slice(n - n_val, n)


def num_examples(task: TaskSpec, split: str, data: str = "real", validation_split: float = 0.0) -> int:
    """Examples in a split, reading only file headers for real data (an empty split is a DataError)."""
    _check_kind(task, split, data)
    if data == "synthetic":
        return SYNTHETIC_SIZES[split]
    if split == "test" or task.data.validation is not None:
        files = task.data.split(split)
        return _check_not_empty(task, _header_count(task, files[1]), files)
    n = _check_not_empty(task, _header_count(task, task.data.train[1]), task.data.train)
    train, validation = _train_parts(task, n, validation_split)
    part = train if split == "train" else validation
    if part is None:
        raise WeightSepError(_no_validation(task))
    return part.stop - part.start


def describe(task: TaskSpec, data: str = "real", seed: int = 0, validation_split: float = 0.0) -> str:
    """One line for logs saying which data a run uses."""
    shape = "x".join(str(d) for d in task.input_shape)
    if data == "synthetic":
        sizes = " / ".join(f"{SYNTHETIC_SIZES[s]} {s}" for s in SPLITS)
        return (f"{task.name}: synthetic data (seed {seed}), {sizes}, "
                f"{shape}, {task.num_classes} classes")
    _check_kind(task, "train", data)
    folder = task.path("")
    if task.data.validation is not None:
        validation = "its own validation files"
    elif task.data.format == "mnist_idx":
        validation = f"validation = first {MNIST_VALIDATION_HEAD} examples of the train files (the original's reader)"
    elif validation_split:
        validation = f"validation = last {100 * validation_split:g}% of the train files"
    else:
        validation = "training on the whole train files, no validation split"
    return (f"{task.name}: real data ({task.data.format}) from {folder}, "
            f"{shape}, {task.num_classes} classes, {validation}")


def clear_cache() -> None:
    """Forget every cached split (e.g. after files were replaced on disk)."""
    _load_cached.cache_clear()
    _synthetic_cached.cache_clear()


@functools.lru_cache(maxsize=64)
def _synthetic_cached(task_name: str, shape: tuple[int, int, int], num_classes: int,
                      split: str, seed: int) -> Dataset:
    x, y = synthetic.generate(task_name, shape, num_classes, split, seed)
    return Dataset(x=x, y=y, task=task_name, split=split, data="synthetic",
                   files=(f"synthetic:{task_name}:{split}:seed={seed}",))


# ---------------------------------------------------------------------------
# Real data


def _file_signature(paths: tuple[Path, ...]) -> tuple:
    """(size, mtime) per file: a replaced file is reloaded, not served from the cache."""
    signature = []
    for path in paths:
        try:
            st = path.stat()
            signature.append((st.st_size, st.st_mtime_ns))
        except OSError:
            signature.append(None)
    return tuple(signature)


def _load_files(task: TaskSpec, split: str, files: tuple[str, str]) -> Dataset:
    paths = tuple(task.path(f) for f in files)
    return _load_cached(task, split, files, _file_signature(paths))


def _check_not_empty(task: TaskSpec, n: int, files: tuple[str, str]) -> int:
    if n == 0:
        data_path, label_path = (task.path(f) for f in files)
        raise DataError(f"{data_path} and {label_path} hold 0 samples (an empty split); "
                        f"{_download_hint(task)}")
    return n


@functools.lru_cache(maxsize=32)
def _load_cached(task: TaskSpec, split: str, files: tuple[str, str], signature: tuple) -> Dataset:
    data_path, label_path = (task.path(f) for f in files)
    for path in (data_path, label_path):
        if not path.is_file():
            raise DataError(f"missing data file {path}; {_download_hint(task)}")
    if task.data.format == "npy":
        x_raw, y_raw = _read_npy(task, data_path), _read_npy(task, label_path)
    elif task.data.format == "mnist_idx":
        x_raw, y_raw = _read_idx(task, data_path, 2051), _read_idx(task, label_path, 2049)
    else:
        raise DataError(f"task {task.name}: unknown data format {task.data.format!r} in its task.py; "
                        "expected 'npy' or 'mnist_idx'")
    if x_raw.shape[0] != y_raw.shape[0]:
        raise DataError(f"{data_path} has {x_raw.shape[0]} samples but {label_path} has "
                        f"{y_raw.shape[0]}; {_download_hint(task)}")
    _check_not_empty(task, x_raw.shape[0], files)
    x = _to_images(task, x_raw, data_path)
    if task.data.format == "mnist_idx":
        x *= np.float32(1.0 / 255.0)
    _check_finite(task, x, data_path)
    y = _to_class_indices(task, y_raw, label_path)
    x.flags.writeable = False
    y.flags.writeable = False
    return Dataset(x=x, y=y, task=task.name, split=split, data="real",
                   files=(data_path.name, label_path.name))


# What a file holds when its dtype is not a real number (np.dtype.kind -> words).
_NOT_NUMBERS = {"c": "complex numbers", "m": "time spans", "M": "dates",
                "O": "Python objects", "U": "text", "S": "bytes", "V": "records"}


def _read_npy(task: TaskSpec, path: Path) -> np.ndarray:
    """Open a .npy file without pickle, memory-mapped; a bad file is a DataError."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"cannot load {path}: {_explain_bad_file(path, exc)}; delete it and "
                        f"{_download_hint(task)}") from None
    if not isinstance(array, np.ndarray):
        raise DataError(f"{path} is an .npz archive, not a single .npy array; {_download_hint(task)}")
    if array.dtype.kind not in "biuf":
        what = _NOT_NUMBERS.get(array.dtype.kind, "values")
        raise DataError(f"{path} holds {what} ({array.dtype}), not real numbers; {_download_hint(task)}")
    if array.ndim == 0:
        raise DataError(f"{path} holds a scalar, not an array of samples; {_download_hint(task)}")
    return array


def _looks_like_html(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(512).lstrip().lower()
    except OSError:
        return False
    return head.startswith(b"<") or b"<html" in head


def _explain_bad_file(path: Path, exc: Exception) -> str:
    if _looks_like_html(path):
        return "it is an HTML page, not an array (a failed download)"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "allow_pickle" in text or "Python objects" in text:
        return "it holds Python objects (pickled data), which are never loaded"
    if "mmap length" in text or "cannot reshape" in text or isinstance(exc, EOFError):
        return "the file is truncated (an interrupted download)"
    return f"not a valid .npy array ({text})"


def _read_idx(task: TaskSpec, path: Path, magic: int, count_only: bool = False) -> np.ndarray | int:
    """Parse a gzip'd idx file: images uint8 [N, rows, cols] (magic 2051) or labels uint8 [N] (2049).

    The header is read and checked first (magic, item count, image shape); the rest is
    decompressed as a stream into a buffer of exactly the announced size, and a file
    holding more than that is refused, so a gzip bomb is never inflated.
    With ``count_only`` the item count from the checked header is returned.
    """
    what = "image" if magic == 2051 else "label"
    ndim = 3 if magic == 2051 else 1
    header = 4 + 4 * ndim
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(header)
            if len(head) < header:
                raise DataError(f"{path} is too short for an idx {what} file; {_download_hint(task)}")
            found = struct.unpack(">I", head[:4])[0]
            if found != magic:
                raise DataError(f"{path} is not an idx {what} file (magic number {found}, expected "
                                f"{magic}); {_download_hint(task)}")
            dims = struct.unpack(f">{ndim}I", head[4:])
            if dims[0] > IDX_MAX_ITEMS:
                raise DataError(f"{path}: its header announces {dims[0]} {what}s, more than the "
                                f"{IDX_MAX_ITEMS} this toolkit reads (not an MNIST file); {_download_hint(task)}")
            if magic == 2051:
                _check_sample_shape(task, tuple(dims[1:]), path)
            if count_only:
                return dims[0]
            size = int(np.prod(dims, dtype=np.int64))
            try:
                buffer = np.empty(size, dtype=np.uint8)
            except MemoryError:
                raise DataError(f"{path}: its header announces {dims[0]} {what}s ({size} bytes), more than "
                                f"this machine can hold in memory") from None
            view, got = memoryview(buffer), 0
            while got < size:
                n = f.readinto(view[got:got + (1 << 24)])
                if not n:
                    break
                got += n
            if got < size:
                raise DataError(f"{path} holds {header + got} bytes but its header {dims} needs "
                                f"{header + size}; {_download_hint(task)}")
            if f.read(1):
                raise DataError(f"{path} holds more than the {header + size} bytes its header {dims} "
                                f"announces (a corrupt or crafted file); delete it and {_download_hint(task)}")
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        if _looks_like_html(path):
            reason = "it is an HTML page, not a gzip file (a failed download)"
        elif isinstance(exc, EOFError):
            reason = "the file is truncated (an interrupted download)"
        else:
            reason = f"not a valid gzip file ({exc})"
        raise DataError(f"cannot read {path}: {reason}; delete it and {_download_hint(task)}") from None
    return buffer.reshape(dims)


def _check_sample_shape(task: TaskSpec, sample: tuple, path: Path) -> None:
    h, w, c = task.input_shape
    if sample == (h * w * c,) or sample == (h, w, c) or (c == 1 and sample == (h, w)):
        return
    raise DataError(f"{path}: samples have shape {sample}, but task {task.name} expects "
                    f"({h}, {w}, {c}) or flattened ({h * w * c},); wrong file for this task? "
                    f"{_download_hint(task)}")


def _to_images(task: TaskSpec, x: np.ndarray, path: Path) -> np.ndarray:
    """Flattened or shaped samples -> float32 [N, H, W, C] (copied out of the file)."""
    _check_sample_shape(task, tuple(x.shape[1:]), path)
    with np.errstate(over="ignore"):  # values beyond float32 become inf, which _check_finite names
        return np.array(x, dtype=np.float32).reshape((x.shape[0],) + tuple(task.input_shape))


def _check_finite(task: TaskSpec, x: np.ndarray, path: Path) -> None:
    """All values finite as float32; works in chunks, so a memory-mapped file is never read whole."""
    chunk = max(1, 2**24 // max(1, int(np.prod(x.shape[1:]))))
    for start in range(0, len(x), chunk):
        with np.errstate(over="ignore"):
            bad = ~np.isfinite(np.asarray(x[start:start + chunk], dtype=np.float32))
        if bad.any():
            first = start + int(np.argmax(bad.reshape(len(bad), -1).any(axis=1)))
            raise DataError(f"{path} holds non-finite values (NaN, inf, or beyond float32's 3.4e38), "
                            f"the first in sample {first}; {_download_hint(task)}")


def _number_text(value: np.generic) -> str:
    """A label value as the file holds it: exact for integers of any size, shortest form for floats."""
    if isinstance(value, np.integer):
        return str(int(value))
    if np.isfinite(value) and value == np.floor(value) and abs(value) < 2**53:
        return str(int(value))
    return str(value)


def _to_class_indices(task: TaskSpec, labels: np.ndarray, path: Path) -> np.ndarray:
    """One-hot [N, K] or integer [N] / [N, 1] labels -> int64 [N], checked.

    Range and wholeness are checked in the file's own dtype, before any cast, so a
    huge value is reported as it is (not as an overflowed int64).
    """
    k = task.num_classes
    labels = np.asarray(labels)  # real numbers or bool: _read_npy / _read_idx checked the dtype
    if labels.ndim == 2 and labels.shape[1] == k and k > 1:
        is_binary = (labels == 0) | (labels == 1)
        ones = (labels == 1).sum(axis=1)
        bad_rows = np.flatnonzero(~is_binary.all(axis=1) | (ones != 1))
        if bad_rows.size:
            row = int(bad_rows[0])
            raise DataError(f"{path}: label row {row} is not one-hot ({bad_rows.size} such rows; each "
                            f"row needs exactly one 1 and zeros elsewhere); {_download_hint(task)}")
        return np.argmax(labels, axis=1).astype(np.int64)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{path}: labels have shape {labels.shape}; task {task.name} expects one-hot "
                        f"[N, {k}] or class indices [N]; {_download_hint(task)}")
    if labels.dtype.kind == "b":
        raise DataError(f"{path}: labels are True/False values, not class numbers (bool is accepted "
                        f"only in one-hot rows [N, {k}]); {_download_hint(task)}")
    if labels.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            not_whole = np.flatnonzero(~np.isfinite(labels) | (labels != np.floor(labels)))
        if not_whole.size:
            i = int(not_whole[0])
            raise DataError(f"{path}: label {_number_text(labels[i])} of sample {i} is not a whole class "
                            f"number ({not_whole.size} such labels); {_download_hint(task)}")
    out = np.flatnonzero((labels < 0) | (labels >= k))
    if out.size:
        i = int(out[0])
        raise DataError(f"{path}: label {_number_text(labels[i])} of sample {i} is out of range "
                        f"0..{k - 1} for task {task.name} ({out.size} such labels); {_download_hint(task)}")
    return labels.astype(np.int64)


def _header_count(task: TaskSpec, filename: str) -> int:
    """Sample count from a file header, without reading the samples."""
    path = task.path(filename)
    if not path.is_file():
        raise DataError(f"missing data file {path}; {_download_hint(task)}")
    if task.data.format == "mnist_idx":
        _, index = _file_role(task, filename)
        return _read_idx(task, path, 2051 if index == 0 else 2049, count_only=True)
    return int(_read_npy(task, path).shape[0])


def _file_role(task: TaskSpec, filename: str) -> tuple[str, int]:
    """(split, 0 for data / 1 for labels) of one of the task's data files."""
    for split in SPLITS:
        files = task.data.split(split)
        if files is not None and filename in files:
            return split, files.index(filename)
    known = ", ".join(f for split in SPLITS for f in (task.data.split(split) or ()))
    raise WeightSepError(f"{filename} is not a data file of task {task.name} (its files: {known})")


def data_files(task: TaskSpec) -> list[str]:
    """The task's data file names, relative to its folder: train, validation, test; data then labels."""
    if task.data is None:
        return []
    return [f for split in SPLITS for f in (task.data.split(split) or ())]
