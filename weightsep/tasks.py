"""Task specs: what each of the ten networks is and where its data lives.

A task folder (``cifar10/``, ``mnist/`` ...) holds a ``task.py`` that declares one
``TASK = TaskSpec(...)``: input shape, class count, layer list and data file names
(docs/NETWORKS.md).  No algorithm code lives in a task folder.
A spec may instead give ``build_model``, a function returning any Keras model with
that input shape and class count: the rest of the toolkit only uses the model's
trainable variables, so arbitrary architectures work too.  A user adds a new DNN by
adding a folder with a ``task.py``.

A spec is also data: ``TaskSpec.to_json()`` is what the state's registry records for
each task, and ``TaskSpec.from_json()`` reads it back, validating it as hostile input
(a registry may come from someone else), so loading a state never imports a
``task.py``.  Only a spec with a custom ``build_model`` cannot be rebuilt from JSON:
its JSON says ``"custom_model": true`` and the user names the folder whose
``task.py`` provides the function (``load_task``, for folders named on the command
line and the repository's own task folders).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

from weightsep import atomic
from weightsep.errors import WeightSepError, closest, is_int, shown
from weightsep.limits import MAX_NAME_LENGTH, MAX_WEIGHTS, TASK_NAME_PATTERN

# The repository root: the default place to look for task folders.
REPO_ROOT = Path(__file__).resolve().parent.parent

# The ten tasks of the paper's multitask IoT system, in the paper's order.
PAPER_TASKS = ("cifar10", "mnist", "fmnist", "gtsrb", "svhn", "obs", "gsc", "esc10", "us8k", "hhar")

SPLITS = ("train", "validation", "test")
DATA_FORMATS = ("npy", "mnist_idx")
DENSE_ACTIVATIONS = ("leaky_relu", "sigmoid")

# Bounds that keep any spec, however hostile, from asking for absurd memory.
MAX_DIM = 1 << 16               # one input dimension or kernel dimension
MAX_UNITS = 1 << 16             # filters, dense units, classes
MAX_LAYERS = 64                 # conv layers, dense layers (each)
MAX_INPUT_VALUES = 1 << 24      # H * W * C of one example
MAX_ACTIVATIONS = 1 << 26       # values of one example's largest conv output
MAX_FILE_NAME = 1024

_TASK_NAME = re.compile(f"^{TASK_NAME_PATTERN}$")
_JSON_KEYS = ("name", "input_shape", "num_classes", "conv", "dense", "dense_activation", "data",
              "paper_num_weights", "custom_model")
_DATA_KEYS = ("format", "train", "test", "validation")


def check_task_name(name) -> str:
    """name if it is a plain folder name (letters, digits, _ . -, starting alphanumeric)."""
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH or not _TASK_NAME.match(name):
        raise WeightSepError(f"task name {shown(name)} is not a plain folder name (letters, digits, _ . -, "
                             f"starting with a letter or digit, at most {MAX_NAME_LENGTH} characters)")
    return name


@dataclasses.dataclass(frozen=True)
class DataFiles:
    """Where a task's data lives, relative to its folder.

    format: "npy" (one data and one label array per split, labels one-hot or integer,
    data flattened per sample or already shaped) or "mnist_idx" (the standard MNIST
    idx ``.gz`` files; ``train``/``test`` then name the image and label files).
    A missing ``validation`` means: the whole train files train, as the original; a validation
    split is cut from them only when asked for (weightsep.data).
    """

    format: str
    train: tuple[str, str]
    test: tuple[str, str]
    validation: Optional[tuple[str, str]] = None

    def split(self, name: str) -> Optional[tuple[str, str]]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A task: its network architecture and its data files.

    conv: (kernel_h, kernel_w, filters) per convolution; each is stride 1, VALID,
    with bias, then LeakyReLU(0.2) and 2x2 max-pool (docs/NETWORKS.md).
    dense: units of the hidden dense layers, each followed by ``dense_activation``
    ("leaky_relu" or "sigmoid"); a final dense layer of ``num_classes`` units and a
    softmax follow.
    custom_model: the network comes from a ``build_model`` function (set
    automatically when build_model is given; True with build_model None for a spec
    read from JSON, which cannot hold the function).
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    conv: tuple[tuple[int, int, int], ...] = ()
    dense: tuple[int, ...] = ()
    dense_activation: str = "leaky_relu"
    data: Optional[DataFiles] = None
    build_model: Optional[Callable] = None
    # Weight count from the paper's table, where known; checked by the tests.
    paper_num_weights: Optional[int] = None
    # The folder the spec was loaded from (filled in by load_task).
    folder: Optional[Path] = None
    custom_model: bool = False

    def __post_init__(self):
        if self.build_model is not None:
            object.__setattr__(self, "custom_model", True)
        try:
            data = self.to_json()
        except (TypeError, ValueError, AttributeError) as e:
            raise WeightSepError(f"task spec {self.name!r}: malformed field ({e}); "
                                 f"see the repository's cifar10/task.py for the expected form") from None
        _check_json(data)
        # Normalize lists to tuples so that equal specs compare equal.
        for key, value in _fields_from_json(data).items():
            object.__setattr__(self, key, value)

    def path(self, filename: str) -> Path:
        """The absolute path of a data or network file of this task."""
        base = self.folder if self.folder is not None else REPO_ROOT / self.name
        return Path(base) / filename

    def to_json(self) -> dict:
        """The spec as plain JSON data (what the state's registry records); build_model and folder excluded."""
        data = self.data
        return {
            "name": self.name,
            "input_shape": [_plain(d) for d in self.input_shape],
            "num_classes": _plain(self.num_classes),
            "conv": [[_plain(v) for v in layer] for layer in self.conv],
            "dense": [_plain(u) for u in self.dense],
            "dense_activation": self.dense_activation,
            "data": None if data is None else {
                "format": data.format, "train": list(data.train), "test": list(data.test),
                "validation": None if data.validation is None else list(data.validation)},
            "paper_num_weights": _plain(self.paper_num_weights),
            "custom_model": bool(self.custom_model),
        }

    @classmethod
    def from_json(cls, data, folder: str | os.PathLike | None = None) -> "TaskSpec":
        """A spec from its JSON form, validated as hostile input (WeightSepError, one line).

        folder: where the task's network and data files live (None: the repository's
        folder of that name).  A custom-model spec comes back with build_model None and
        custom_model True.
        """
        _check_json(data)
        return cls(**_fields_from_json(data), folder=Path(folder) if folder else None)


def _plain(value):
    """Integral numbers (a NumPy integer in a task.py) as Python ints; anything else unchanged."""
    if hasattr(value, "__index__") and not isinstance(value, (bool, int)):
        return int(value.__index__())
    return value


def _fields_from_json(data: dict) -> dict:
    """TaskSpec fields (tuples) from checked JSON."""
    files = data.get("data")
    return {
        "name": data["name"],
        "input_shape": tuple(data["input_shape"]),
        "num_classes": data["num_classes"],
        "conv": tuple(tuple(layer) for layer in data.get("conv", [])),
        "dense": tuple(data.get("dense", [])),
        "dense_activation": data.get("dense_activation", "leaky_relu"),
        "data": None if files is None else DataFiles(
            format=files["format"], train=tuple(files["train"]), test=tuple(files["test"]),
            validation=None if files.get("validation") is None else tuple(files["validation"])),
        "paper_num_weights": data.get("paper_num_weights"),
        "custom_model": data.get("custom_model", False),
    }



def _check_json(data) -> None:
    """Raise WeightSepError (one line) unless data is a valid, bounded spec in JSON form."""
    if not isinstance(data, dict):
        raise WeightSepError(f"a task spec must be a JSON object, got {type(data).__name__}")
    name = data.get("name")
    where = f"task spec {name!r}" if isinstance(name, str) and len(name) <= MAX_NAME_LENGTH else "task spec"

    def bad(problem: str) -> WeightSepError:
        return WeightSepError(f"{where}: {problem}")

    unknown = sorted(str(k)[:40] for k in data if k not in _JSON_KEYS)
    if unknown:
        raise bad(f"unknown key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(_JSON_KEYS)}")
    for key in ("name", "input_shape", "num_classes"):
        if key not in data:
            raise bad(f"'{key}' is missing")
    try:
        check_task_name(name)
    except WeightSepError as e:
        raise bad(str(e)) from None

    def positive(value, limit: int, what: str) -> int:
        if not is_int(value) or not 1 <= value <= limit:
            raise bad(f"{what} is {shown(value)}, expected an integer from 1 to {limit}")
        return value

    def int_list(value, length: Optional[int], what: str) -> list:
        if not isinstance(value, list) or (length is not None and len(value) != length):
            count = f"{length} " if length is not None else ""
            raise bad(f"{what} is {shown(value)}, expected a list of {count}integers")
        return value

    shape = int_list(data["input_shape"], 3, "input_shape (H, W, C)")
    for axis, dim in zip("HWC", shape):
        positive(dim, MAX_DIM, f"input_shape {axis}")
    if math.prod(shape) > MAX_INPUT_VALUES:
        raise bad(f"input_shape {shape} has {math.prod(shape)} values per example, more than {MAX_INPUT_VALUES}")
    positive(data["num_classes"], MAX_UNITS, "num_classes")
    conv = data.get("conv", [])
    if not isinstance(conv, list) or len(conv) > MAX_LAYERS:
        raise bad(f"conv is {shown(conv)}, expected a list of at most {MAX_LAYERS} [kh, kw, filters] layers")
    for i, layer in enumerate(conv):
        int_list(layer, 3, f"conv[{i}] (kernel height, kernel width, filters)")
        positive(layer[0], MAX_DIM, f"conv[{i}] kernel height")
        positive(layer[1], MAX_DIM, f"conv[{i}] kernel width")
        positive(layer[2], MAX_UNITS, f"conv[{i}] filters")
    dense = data.get("dense", [])
    if not isinstance(dense, list) or len(dense) > MAX_LAYERS:
        raise bad(f"dense is {shown(dense)}, expected a list of at most {MAX_LAYERS} unit counts")
    for i, units in enumerate(dense):
        positive(units, MAX_UNITS, f"dense[{i}] units")
    activation = data.get("dense_activation", "leaky_relu")
    if activation not in DENSE_ACTIVATIONS:
        raise bad(f"dense_activation is {shown(activation)}, expected one of {', '.join(DENSE_ACTIVATIONS)}")
    custom = data.get("custom_model", False)
    if not isinstance(custom, bool):
        raise bad(f"custom_model is {shown(custom)}, expected true or false")
    if not custom and not (conv or dense):
        raise bad("no layers: give conv/dense layers or a build_model function")
    if data.get("paper_num_weights") is not None:
        positive(data["paper_num_weights"], MAX_WEIGHTS, "paper_num_weights")
    if data.get("data") is not None:
        _check_data_files(data["data"], bad)
    if not custom:
        try:
            _count_weights(shape, conv, dense, data["num_classes"])
        except ValueError as e:
            raise bad(str(e)) from None


def _check_data_files(files, bad) -> None:
    if not isinstance(files, dict):
        raise bad(f"data is {shown(files)}, expected an object with {', '.join(_DATA_KEYS)}")
    unknown = sorted(str(k)[:40] for k in files if k not in _DATA_KEYS)
    if unknown:
        raise bad(f"data has unknown key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(_DATA_KEYS)}")
    if files.get("format") not in DATA_FORMATS:
        raise bad(f"data format is {shown(files.get('format'))}, expected one of {', '.join(DATA_FORMATS)}")
    for split in SPLITS:
        pair = files.get(split)
        if pair is None and split == "validation":
            continue
        if not isinstance(pair, list) or len(pair) != 2:
            raise bad(f"data {split} is {shown(pair)}, expected [data file, label file]")
        for file_name in pair:
            problem = _file_name_problem(file_name)
            if problem:
                raise bad(f"data file {shown(file_name)} of {split}: {problem}")


def _file_name_problem(name) -> Optional[str]:
    """Why a data file name is not a plain relative path inside the task folder, or None."""
    if not isinstance(name, str) or not name or len(name) > MAX_FILE_NAME:
        return f"expected a non-empty file name of at most {MAX_FILE_NAME} characters"
    if any(ord(c) < 32 or c in "\\\x7f" for c in name):
        return "contains a backslash or a control character"
    path = PurePosixPath(name)
    if name.startswith("/") or path.is_absolute():
        return "is an absolute path; data files are relative to the task folder"
    if ".." in path.parts:
        return "contains '..'; data files must stay inside the task folder"
    return None



def _count_weights(input_shape, conv, dense, num_classes) -> int:
    """Trainable weights of the declared layers (conv VALID stride 1 + bias, 2x2 max-pool VALID,
    flatten, dense + bias); ValueError if a layer does not fit or a bound is passed."""
    height, width, channels = input_shape
    total = 0
    for i, (kh, kw, filters) in enumerate(conv):
        height, width = height - kh + 1, width - kw + 1
        if height < 1 or width < 1:
            raise ValueError(f"conv[{i}] kernel {kh}x{kw} does not fit its input (the input_shape is too small)")
        if height * width * filters > MAX_ACTIVATIONS:
            raise ValueError(f"conv[{i}] outputs {height * width * filters} values per example, "
                             f"more than {MAX_ACTIVATIONS}")
        total += kh * kw * channels * filters + filters
        height, width, channels = height // 2, width // 2, filters
        if height < 1 or width < 1:
            raise ValueError(f"the 2x2 max-pool after conv[{i}] has nothing to pool (the input_shape is too small)")
    inputs = height * width * channels
    for units in list(dense) + [num_classes]:
        total += inputs * units + units
        inputs = units
        if total > MAX_WEIGHTS:
            break
    if total > MAX_WEIGHTS:
        raise ValueError(f"the layers hold {total} weights, more than {MAX_WEIGHTS}")
    return total


def declared_num_weights(task: TaskSpec) -> Optional[int]:
    """Trainable weights of a spec's declared layers; None for a custom model (only its model knows)."""
    if task.custom_model:
        return None
    return _count_weights(task.input_shape, task.conv, task.dense, task.num_classes)


def _task_file(folder: Path) -> Path:
    return Path(folder) / "task.py"


def _find_folder(name_or_path: str | os.PathLike, root: str | os.PathLike | None) -> Path:
    """The task folder of a name (looked up under root) or of a path; WeightSepError if none."""
    text = str(name_or_path).rstrip("/\\")
    if not text:
        raise WeightSepError("no task given: pass -network_path=<task folder> or -vnn_name=<task>")
    candidates = [Path(text)]
    if os.sep not in text and "/" not in text:
        candidates.insert(0, Path(root or REPO_ROOT) / text)
    for folder in candidates:
        if _task_file(folder).is_file():
            return folder
    names = list(list_tasks(root))
    guess = closest(Path(text).name, names)
    raise WeightSepError(f"unknown task {text!r}: no {text}/task.py found (known tasks: {', '.join(names) or 'none'})"
                         + (f"; did you mean {guess}?" if guess else ""))


def load_task(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None) -> TaskSpec:
    """Load a task spec by name (``cifar10``) or by folder path (``./cifar10/``).

    A bare name is looked up under ``root`` (default: the repository root).  This runs
    the folder's task.py: use it only for folders the user names and the repository's
    own task folders, never for anything found in a state directory.
    """
    folder = _find_folder(name_or_path, root).resolve()
    module_name = f"weightsep_task_{folder.name}"
    spec = importlib.util.spec_from_file_location(module_name, _task_file(folder))
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a user's task.py with an error: say which file
        raise WeightSepError(f"cannot load task spec {_task_file(folder)}: {exc}") from exc
    task = getattr(module, "TASK", None)
    if not isinstance(task, TaskSpec):
        raise WeightSepError(f"{_task_file(folder)} must define TASK = TaskSpec(...)")
    if task.name != folder.name:
        raise WeightSepError(
            f"{_task_file(folder)} declares task {task.name!r} but lives in folder {folder.name!r}; "
            "the folder name must equal the task name")
    return dataclasses.replace(task, folder=folder)


def copy_spec(source: TaskSpec | str | os.PathLike, dest_root: str | os.PathLike) -> Path:
    """Copy a task's task.py into dest_root/<name>/ (atomically) and return that folder.

    source: a TaskSpec (its folder, else the repository's folder of its name), a task
    folder, or a bare task name under the repository root.  The file is copied, not run.
    """
    if isinstance(source, TaskSpec):
        folder = Path(source.folder) if source.folder is not None else REPO_ROOT / source.name
        if not _task_file(folder).is_file():
            raise WeightSepError(f"task {source.name} has no {_task_file(folder)} to copy")
    else:
        folder = _find_folder(source, None)
    name = check_task_name(folder.resolve().name)
    dest = Path(dest_root) / name
    if dest.resolve() == folder.resolve():
        return dest
    try:
        text = _task_file(folder).read_bytes()
    except OSError as e:
        raise WeightSepError(f"cannot read {_task_file(folder)}: {atomic.reason(e)}") from None
    atomic.ensure_dir(dest)
    atomic.write_bytes(_task_file(dest), text)
    return dest


def list_tasks(root: str | os.PathLike | None = None) -> list[str]:
    """Names of the task folders under root (default: the repository root), paper tasks first."""
    root = Path(root or REPO_ROOT)
    found = sorted(p.name for p in root.iterdir() if _task_file(p).is_file()) if root.is_dir() else []
    return [t for t in PAPER_TASKS if t in found] + [t for t in found if t not in PAPER_TASKS]
