"""Shared fixtures: tiny task folders (fast networks on synthetic data) in temp dirs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# Two small networks in the shape of the real ones (conv + pool + dense), fast to train.
TINY_SPECS = {
    "tiny_a": dict(input_shape=(12, 12, 1), num_classes=4, conv=((3, 3, 4),), dense=(16,),
                   dense_activation="leaky_relu"),
    "tiny_b": dict(input_shape=(10, 14, 2), num_classes=3, conv=((3, 3, 3),), dense=(12,),
                   dense_activation="sigmoid"),
}


def write_task_folder(root: Path, name: str, **fields) -> Path:
    """A task folder with a declarative task.py, as a user would write it."""
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    args = ",\n    ".join(f"{k}={v!r}" for k, v in fields.items())
    (folder / "task.py").write_text(
        "from weightsep.tasks import TaskSpec\n\n"
        f"TASK = TaskSpec(\n    name={name!r},\n    {args},\n)\n")
    return folder


def copy_task_folder(root: Path, name: str) -> Path:
    """A copy of a repository task folder's spec (no data, no network)."""
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / name / "task.py", folder / "task.py")
    return folder


def run_cli(*args, cwd=None, check=True, script="WeightSeparation.py", timeout=600):
    """Run one of the command-line scripts; returns the CompletedProcess (text)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.run([PYTHON, str(REPO / script), *args], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tiny_tasks(tmp_path_factory):
    """Two tiny tasks, each pretrained briefly on synthetic data: {name: folder}."""
    from weightsep import data
    from weightsep.networks import Network, save_network
    from weightsep.tasks import load_task
    from weightsep.training import pretrain

    root = tmp_path_factory.mktemp("tiny_tasks")
    folders = {}
    for name, fields in TINY_SPECS.items():
        folder = write_task_folder(root, name, **fields)
        task = load_task(folder)
        train = data.load_split(task, "train", "synthetic")
        val = data.load_split(task, "validation", "synthetic")
        net = Network(task)
        pretrain(net, train.x, train.y, val.x, val.y, iters=60, verbose=0)
        save_network(net)
        folders[name] = folder
    return folders
