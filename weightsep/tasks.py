"""Task specs: what each of the ten networks is and where its data lives.

A task folder (``cifar10/``, ``mnist/`` ...) holds a ``task.py`` that declares one
``TASK = TaskSpec(...)``: input shape, class count, layer list and data file names
(the facts of shared/ARCHITECTURES.md).  No algorithm code lives in a task folder.
A spec may instead give ``build_model``, a function returning any Keras model with
that input shape and class count: the rest of the toolkit only uses the model's
trainable variables, so arbitrary architectures work too.  A user adds a new DNN by
adding a folder with a ``task.py``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Callable, Optional

from weightsep.errors import WeightSepError

# The repository root: the default place to look for task folders.
REPO_ROOT = Path(__file__).resolve().parent.parent

# The ten tasks of the paper's multitask IoT system, in the paper's order.
PAPER_TASKS = ("cifar10", "mnist", "fmnist", "gtsrb", "svhn", "obs", "gsc", "esc10", "us8k", "hhar")

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class DataFiles:
    """Where a task's data lives, relative to its folder.

    format: "npy" (one data and one label array per split, labels one-hot or integer,
    data flattened per sample or already shaped) or "mnist_idx" (the standard MNIST
    idx ``.gz`` files; ``train``/``test`` then name the image and label files).
    A missing ``validation`` means: use the last 10% of train.
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
    with bias, then LeakyReLU(0.2) and 2x2 max-pool (ARCHITECTURES.md).
    dense: units of the hidden dense layers, each followed by ``dense_activation``
    ("leaky_relu" or "sigmoid"); a final dense layer of ``num_classes`` units and a
    softmax follow.
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

    def __post_init__(self):
        if self.dense_activation not in ("leaky_relu", "sigmoid"):
            raise WeightSepError(
                f"task {self.name}: dense_activation must be 'leaky_relu' or 'sigmoid', "
                f"not {self.dense_activation!r}")
        if len(self.input_shape) != 3:
            raise WeightSepError(f"task {self.name}: input_shape must be (H, W, C), got {self.input_shape}")
        if self.build_model is None and not (self.conv or self.dense):
            raise WeightSepError(f"task {self.name}: give conv/dense layers or a build_model function")

    def path(self, filename: str) -> Path:
        """The absolute path of a data or network file of this task."""
        base = self.folder if self.folder is not None else REPO_ROOT / self.name
        return Path(base) / filename


def _task_file(folder: Path) -> Path:
    return Path(folder) / "task.py"


def load_task(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None) -> TaskSpec:
    """Load a task spec by name (``cifar10``) or by folder path (``./cifar10/``).

    A bare name is looked up under ``root`` (default: the repository root).
    """
    text = str(name_or_path).rstrip("/\\")
    if not text:
        raise WeightSepError("no task given: pass -network_path=<task folder> or -vnn_name=<task>")
    candidates = [Path(text)]
    if not os.sep in text and "/" not in text:
        candidates.insert(0, Path(root or REPO_ROOT) / text)
    for folder in candidates:
        if _task_file(folder).is_file():
            break
    else:
        known = ", ".join(t for t in list_tasks(root)) or "none"
        raise WeightSepError(
            f"unknown task {text!r}: no {text}/task.py found (known tasks: {known})")
    folder = folder.resolve()
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


def list_tasks(root: str | os.PathLike | None = None) -> list[str]:
    """Names of the task folders under root (default: the repository root), paper tasks first."""
    root = Path(root or REPO_ROOT)
    found = sorted(p.name for p in root.iterdir() if _task_file(p).is_file()) if root.is_dir() else []
    return [t for t in PAPER_TASKS if t in found] + [t for t in found if t not in PAPER_TASKS]
