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
Validation: the task's validation files when its spec lists them; otherwise the
last 10% of the train files (N // 10 samples, at least 1) and "train" is then the
first 90%, so training never sees a validation sample.

Every load checks that the files exist, are loadable arrays, agree in sample count,
match the task's input shape, hold labels in 0..num_classes-1 (one-hot rows with
exactly one 1) and finite values; any problem is a DataError naming the file and
what to run.

Synthetic data (``data="synthetic"``) is deterministic per (task name, seed, split)
in any process, in the task's exact input shape and class count, and learnable but
not trivial: each class has a smooth random prototype (a few 2D cosines per
channel); a sample is its class prototype with a random amplitude and a shift of up
to two pixels, a fraction of another class's prototype, uniform noise, and 7% of
labels replaced by random ones.  Its validation split is drawn independently of
train (sizes in SYNTHETIC_SIZES).

``python -m weightsep.data verify TASK [FILE ...]`` checks a task's files on disk;
download_dataset.sh uses it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gzip
import hashlib
import os
import struct
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from weightsep.errors import DataError, WeightSepError
from weightsep.tasks import SPLITS, TaskSpec, load_task

DATA_KINDS = ("real", "synthetic")

# Examples per split of the synthetic data: trains in seconds on a CPU.
SYNTHETIC_SIZES = {"train": 3000, "validation": 500, "test": 1000}

# Synthetic difficulty (tuned so the tasks' CNNs reach about 70-95% test accuracy
# after a few hundred Adam steps; see the README).
_SYN_COSINES = 6          # 2D cosines per channel of a class prototype
_SYN_MAX_FREQ = 3         # cycles across the image, per axis
_SYN_MAX_SHIFT = 2        # pixels, per axis
_SYN_NOISE = 2.0          # noise std, relative to a prototype's std, for 784 values
_SYN_NOISE_SIZE_EXPONENT = 0.5    # ... times (H*W*C / 784) ** this
_SYN_NOISE_CLASS_EXPONENT = -0.25  # ... times (num_classes / 10) ** this
_SYN_DISTRACTOR = 0.5     # at most this fraction of another class's prototype
_SYN_LABEL_NOISE = 0.07   # share of samples whose label is replaced by a random class


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
    return f"run ./download_dataset.sh {task.name} (or use -data=synthetic)"


def _check_kind(task: TaskSpec, split: str, data: str) -> None:
    if split not in SPLITS:
        raise WeightSepError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if data not in DATA_KINDS:
        raise WeightSepError(f"unknown data kind {data!r}; expected one of {', '.join(DATA_KINDS)}")
    if data == "real" and task.data is None:
        raise DataError(f"task {task.name} declares no data files in its task.py; "
                        "add DataFiles(...) to it or use -data=synthetic")


def load_split(task: TaskSpec, split: str, data: str = "real", seed: int = 0) -> Dataset:
    """Load one split of a task's data (cached per process; arrays are read-only)."""
    _check_kind(task, split, data)
    if data == "synthetic":
        return _synthetic_cached(task.name, tuple(task.input_shape), task.num_classes, split, int(seed))
    if split == "test" or task.data.validation is not None:
        return _load_files(task, split, task.data.split(split))
    # No validation files: train and validation are the two parts of the train files.
    full = _load_files(task, "train", task.data.train)
    n_val = _fallback_validation_size(len(full), task)
    cut = len(full) - n_val
    part = slice(0, cut) if split == "train" else slice(cut, None)
    return dataclasses.replace(full, x=full.x[part], y=full.y[part], split=split)


def _fallback_validation_size(n: int, task: TaskSpec) -> int:
    """Size of the validation part (the last 10%) of the train files."""
    if n < 2:
        raise DataError(f"{task.path(task.data.train[0])}: {n} sample(s) are too few to split off "
                        f"a validation set; {_download_hint(task)}")
    return max(1, n // 10)


def num_examples(task: TaskSpec, split: str, data: str = "real") -> int:
    """Examples in a split, reading only file headers for real data."""
    _check_kind(task, split, data)
    if data == "synthetic":
        return SYNTHETIC_SIZES[split]
    if split == "test" or task.data.validation is not None:
        return _header_count(task, task.data.split(split)[1])
    n = _header_count(task, task.data.train[1])
    n_val = _fallback_validation_size(n, task)
    return n_val if split == "validation" else n - n_val


def describe(task: TaskSpec, data: str = "real", seed: int = 0) -> str:
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
    else:
        validation = "validation = last 10% of the train files"
    return (f"{task.name}: real data ({task.data.format}) from {folder}, "
            f"{shape}, {task.num_classes} classes, {validation}")


def clear_cache() -> None:
    """Forget every cached split (e.g. after files were replaced on disk)."""
    _load_cached.cache_clear()
    _synthetic_cached.cache_clear()


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
    x = _to_images(task, x_raw, data_path)
    if task.data.format == "mnist_idx":
        x *= np.float32(1.0 / 255.0)
    _check_finite(task, x, data_path)
    y = _to_class_indices(task, y_raw, label_path)
    x.flags.writeable = False
    y.flags.writeable = False
    return Dataset(x=x, y=y, task=task.name, split=split, data="real",
                   files=(data_path.name, label_path.name))


def _read_npy(task: TaskSpec, path: Path) -> np.ndarray:
    """Open a .npy file without pickle, memory-mapped; a bad file is a DataError."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"cannot load {path}: {_explain_bad_file(path, exc)}; delete it and "
                        f"{_download_hint(task)}") from None
    if not isinstance(array, np.ndarray):
        raise DataError(f"{path} is an .npz archive, not a single .npy array; {_download_hint(task)}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise DataError(f"{path} holds {array.dtype} values, not numbers; {_download_hint(task)}")
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
    if "mmap length" in text or "cannot reshape" in text or isinstance(exc, EOFError):
        return "the file is truncated (an interrupted download)"
    return f"not a valid .npy array ({text})"


def _read_idx(task: TaskSpec, path: Path, magic: int) -> np.ndarray:
    """Parse a gzip'd idx file: images uint8 [N, rows, cols] (magic 2051) or labels uint8 [N] (2049)."""
    what = "image" if magic == 2051 else "label"
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        if _looks_like_html(path):
            reason = "it is an HTML page, not a gzip file (a failed download)"
        elif isinstance(exc, EOFError):
            reason = "the file is truncated (an interrupted download)"
        else:
            reason = f"not a valid gzip file ({exc})"
        raise DataError(f"cannot read {path}: {reason}; delete it and {_download_hint(task)}") from None
    ndim = 3 if magic == 2051 else 1
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is too short for an idx {what} file; {_download_hint(task)}")
    found = struct.unpack(">I", raw[:4])[0]
    if found != magic:
        raise DataError(f"{path} is not an idx {what} file (magic number {found}, expected {magic}); "
                        f"{_download_hint(task)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(f"{path} holds {len(raw)} bytes but its header {dims} needs {expected}; "
                        f"{_download_hint(task)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


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
    return np.array(x, dtype=np.float32).reshape((x.shape[0],) + tuple(task.input_shape))


def _check_finite(task: TaskSpec, x: np.ndarray, path: Path) -> None:
    """All values finite; works in chunks, so a memory-mapped file is never read whole."""
    chunk = max(1, 2**24 // max(1, int(np.prod(x.shape[1:]))))
    for start in range(0, len(x), chunk):
        bad = ~np.isfinite(np.asarray(x[start:start + chunk]))
        if bad.any():
            first = start + int(np.argmax(bad.reshape(len(bad), -1).any(axis=1)))
            raise DataError(f"{path} holds non-finite values (NaN/inf), the first in sample {first}; "
                            f"{_download_hint(task)}")


def _to_class_indices(task: TaskSpec, labels: np.ndarray, path: Path) -> np.ndarray:
    """One-hot [N, K] or integer [N] / [N, 1] labels -> int64 [N], checked."""
    k = task.num_classes
    labels = np.asarray(labels)
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
    if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
        raise DataError(f"{path}: labels are not whole class numbers; {_download_hint(task)}")
    y = labels.astype(np.int64)
    out = np.flatnonzero((y < 0) | (y >= k))
    if out.size:
        raise DataError(f"{path}: label {int(y[out[0]])} of sample {int(out[0])} is out of range "
                        f"0..{k - 1} for task {task.name} ({out.size} such labels); {_download_hint(task)}")
    return y


def _header_count(task: TaskSpec, filename: str) -> int:
    """Sample count from a file header, without reading the samples."""
    path = task.path(filename)
    if not path.is_file():
        raise DataError(f"missing data file {path}; {_download_hint(task)}")
    if task.data.format == "mnist_idx":
        try:
            with gzip.open(path, "rb") as f:
                head = f.read(8)
        except (OSError, EOFError) as exc:
            raise DataError(f"cannot read {path}: {exc}; {_download_hint(task)}") from None
        if len(head) < 8:
            raise DataError(f"{path} is too short for an idx file; {_download_hint(task)}")
        return struct.unpack(">I", head[4:8])[0]
    return int(_read_npy(task, path).shape[0])


# ---------------------------------------------------------------------------
# Synthetic data


def _rng(task_name: str, seed: int, purpose: str) -> np.random.Generator:
    """A generator seeded from text via SHA-256: the same in every process (unlike hash())."""
    digest = hashlib.sha256(f"weightsep-synthetic/{task_name}/{seed}/{purpose}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _prototypes(task_name: str, shape: tuple[int, int, int], num_classes: int, seed: int) -> np.ndarray:
    """Smooth class prototypes, float32 [K, H, W, C], zero mean and unit std each.

    Whole-cycle frequencies make every prototype periodic over the image, so a
    shift is an exact circular roll with no seam.
    """
    h, w, c = shape
    rng = _rng(task_name, seed, "prototypes")
    size = (num_classes, 1, 1, c, _SYN_COSINES)
    freq_y = rng.integers(0, _SYN_MAX_FREQ + 1, size=size)
    freq_x = rng.integers(0, _SYN_MAX_FREQ + 1, size=size)
    phase = rng.uniform(0, 2 * np.pi, size=size)
    amp = rng.normal(size=size)
    iy = (np.arange(h) / h)[None, :, None, None, None]
    jx = (np.arange(w) / w)[None, None, :, None, None]
    proto = (amp * np.cos(2 * np.pi * (freq_y * iy + freq_x * jx) + phase)).sum(axis=-1)
    proto -= proto.mean(axis=(1, 2, 3), keepdims=True)
    proto /= proto.std(axis=(1, 2, 3), keepdims=True) + 1e-6
    return proto.astype(np.float32)


def _shifted(proto: np.ndarray, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """proto[classes], each rolled by a random shift of up to _SYN_MAX_SHIFT pixels per axis."""
    shifts = range(-_SYN_MAX_SHIFT, _SYN_MAX_SHIFT + 1)
    rolled = np.stack([np.roll(proto, (dy, dx), axis=(1, 2)) for dy in shifts for dx in shifts], axis=1)
    num_shifts = rolled.shape[1]
    pick = classes * num_shifts + rng.integers(0, num_shifts, size=len(classes))
    flat = np.take(rolled.reshape(-1, int(np.prod(proto.shape[1:]))), pick, axis=0)
    return flat.reshape((len(classes),) + proto.shape[1:])


def _noise_std(shape: tuple[int, int, int], num_classes: int) -> float:
    """Noise for a task: larger inputs average more noise away, fewer classes are easier to tell apart."""
    return (_SYN_NOISE * (float(np.prod(shape)) / 784.0) ** _SYN_NOISE_SIZE_EXPONENT
            * (num_classes / 10.0) ** _SYN_NOISE_CLASS_EXPONENT)


@functools.lru_cache(maxsize=64)
def _synthetic_cached(task_name: str, shape: tuple[int, int, int], num_classes: int,
                      split: str, seed: int) -> Dataset:
    proto = _prototypes(task_name, shape, num_classes, seed)
    n, k = SYNTHETIC_SIZES[split], num_classes
    rng = _rng(task_name, seed, split)
    y = np.arange(n) % k                       # balanced: every class present
    rng.shuffle(y)
    other = (y + rng.integers(1, k, size=n)) % k if k > 1 else y
    noise = _noise_std(shape, k)
    # Scale so pixels have std about 0.15 around 0.5: values mostly in [0, 1], like images.
    scale = np.float32(0.15 / np.sqrt(1.0 + noise ** 2))
    amplitude = rng.uniform(0.6, 1.4, size=(n, 1, 1, 1)).astype(np.float32) * scale
    distractor = rng.uniform(0, _SYN_DISTRACTOR, size=(n, 1, 1, 1)).astype(np.float32) * scale
    # Uniform noise of std `noise` (three times cheaper to draw than Gaussian, same effect here).
    x = rng.random(size=(n,) + shape, dtype=np.float32)
    x -= 0.5
    x *= np.float32(np.sqrt(12.0) * noise) * scale
    x += 0.5
    for classes, weight in ((y, amplitude), (other, distractor)):
        part = _shifted(proto, classes, rng)
        part *= weight
        x += part
    flip = rng.random(n) < _SYN_LABEL_NOISE
    y = np.where(flip, rng.integers(0, k, size=n), y).astype(np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return Dataset(x=x, y=y, task=task_name, split=split, data="synthetic",
                   files=(f"synthetic:{task_name}:{split}:seed={seed}",))


# ---------------------------------------------------------------------------
# Verification of the files on disk (used by download_dataset.sh)


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


def verify_file(task: TaskSpec, filename: str, path: Optional[Path] = None) -> int:
    """Check one data file (at ``path``, default its place in the task folder) on its own.

    Returns its sample count; raises DataError when it is missing or bad.
    Checks: loadable, sample shape (data) or label shape, range and one-hotness (labels),
    finite values.  Data files are memory-mapped and scanned in chunks.
    """
    split, index = _file_role(task, filename)
    path = Path(path) if path is not None else task.path(filename)
    if not path.is_file():
        raise DataError(f"missing data file {path}; {_download_hint(task)}")
    if task.data.format == "mnist_idx":
        array = _read_idx(task, path, 2051 if index == 0 else 2049)
    else:
        array = _read_npy(task, path)
    if index == 0:
        _check_sample_shape(task, tuple(array.shape[1:]), path)
        _check_finite(task, array, path)
    else:
        _to_class_indices(task, array, path)
    return int(array.shape[0])


def _task_for_root(name: str, root: Optional[str]) -> TaskSpec:
    """The task ``name`` with its folder under ``root`` (its spec from there, else from this repository)."""
    if root is None:
        return load_task(name)
    if (Path(root) / name / "task.py").is_file():
        return load_task(name, root=root)
    return dataclasses.replace(load_task(name), folder=Path(root).resolve() / name)


def _verify_main(args: argparse.Namespace) -> int:
    task = _task_for_root(args.task, args.root)
    if task.data is None:
        raise DataError(f"task {task.name} declares no data files in its task.py")
    requested = args.files or data_files(task)
    counts: dict[str, int] = {}
    failed = 0
    for item in requested:
        name, _, other = item.partition("=")
        shown = f"{task.name}/{name}"
        try:
            counts[name] = verify_file(task, name, Path(other) if other else None)
            print(f"ok       {shown}  {counts[name]} samples" + (f" (checked {other})" if other else ""))
        except DataError as exc:
            failed += 1
            status = "missing" if str(exc).startswith("missing data file") else "bad"
            print(f"{status:<8} {shown}  {exc}")
    # Data and labels of a split must agree in sample count.
    for split in SPLITS:
        files = task.data.split(split)
        if files and all(f in counts for f in files) and counts[files[0]] != counts[files[1]]:
            failed += 1
            print(f"bad      {task.name}/{files[1]}  {counts[files[1]]} labels but {files[0]} has "
                  f"{counts[files[0]]} samples; {_download_hint(task)}")
    return 1 if failed else 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weightsep.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser(
        "verify", help="check a task's data files; one line per file: ok / missing / bad")
    verify.add_argument("--root", default=os.environ.get("WS_ROOT"),
                        help="folder holding the task folders (default: $WS_ROOT, else the repository)")
    verify.add_argument("task")
    verify.add_argument("files", nargs="*",
                        help="file names in the task folder (default: all); NAME=PATH checks PATH as NAME")
    listing = commands.add_parser("files", help="print a task's data file names, one per line")
    listing.add_argument("--root", default=os.environ.get("WS_ROOT"))
    listing.add_argument("task")
    args = parser.parse_args(argv)
    try:
        if args.command == "files":
            print("\n".join(data_files(_task_for_root(args.task, args.root))))
            return 0
        return _verify_main(args)
    except WeightSepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
