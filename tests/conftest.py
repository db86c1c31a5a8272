"""Shared fixtures: tiny task folders (fast networks on synthetic data) in temp dirs, and helpers
that run the command-line scripts in-process (absl flags parsed per call) or, for the few tests
of a script itself, as a subprocess."""

import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Two small networks in the shape of the real ones (conv + pool + dense), fast to train.
TINY_SPECS = {
    "tiny_a": dict(input_shape=(12, 12, 1), num_classes=4, conv=((3, 3, 4),), dense=(16,),
                   dense_activation="leaky_relu"),
    "tiny_b": dict(input_shape=(10, 14, 2), num_classes=3, conv=((3, 3, 3),), dense=(12,),
                   dense_activation="sigmoid"),
}
# The layout every pipeline test uses for them: 1,724 and 972 weights in pages of 64.
TINY_OPTIONS = dict(page_size=64, num_pages=16, margin=0.6, data="synthetic")


def write_task_folder(root: Path, name: str, **fields) -> Path:
    """A task folder with a declarative task.py, as a user would write it."""
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    args = ",\n    ".join(f"{k}={v!r}" for k, v in fields.items())
    (folder / "task.py").write_text(
        "from weightsep.tasks import TaskSpec\n\n"
        f"TASK = TaskSpec(\n    name={name!r},\n    {args},\n)\n")
    return folder


def write_custom_task(root: Path, name: str, input_shape, num_classes: int, layers: str) -> Path:
    """A task folder whose task.py gives build_model(): a keras.Sequential of ``layers`` (Python
    source of the layers after the Input, e.g. "keras.layers.Flatten(), keras.layers.Dense(3)")."""
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "task.py").write_text(
        "import keras\nfrom weightsep.tasks import TaskSpec\n\n"
        f"def build():\n    return keras.Sequential([keras.Input({tuple(input_shape)!r}), {layers}])\n\n"
        f"TASK = TaskSpec(name={name!r}, input_shape={tuple(input_shape)!r}, num_classes={num_classes}, "
        f"build_model=build)\n")
    return folder


@contextlib.contextmanager
def unprivileged():
    """The body runs without the power to write what it does not own (as nobody when root,
    as the tests run in CI): for read-only directories."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def copy_task_folder(root: Path, name: str) -> Path:
    """A copy of a repository task folder's spec (no data, no network)."""
    from weightsep.tasks import copy_spec
    return copy_spec(name, root)


def run_cli(*args, cwd=None, check=True, script="WeightSeparation.py", timeout=600, env=None):
    """Run one of the command-line scripts as a subprocess; returns the CompletedProcess (text).
    For tests of a script itself (start-up, exit codes): everything else runs in-process."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run([PYTHON, str(REPO / script), *args], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


class Result:
    """What an in-process run of WeightSeparation.py returned and printed."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_main(*args, check=True) -> Result:
    """WeightSeparation.py in this process: parse ``args`` as its flags, run its absl main."""
    import WeightSeparation
    from absl import flags
    from absl.testing import flagsaver
    from weightsep.cli import main_of
    out, err = io.StringIO(), io.StringIO()
    with flagsaver.flagsaver(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        flags.FLAGS.unparse_flags()
        try:
            argv = flags.FLAGS(["WeightSeparation.py", *args])
        except flags.Error as exc:  # absl's own parse errors (unknown flag, bad enum value)
            print(f"error: {exc}", file=sys.stderr)
            code = 2
        else:
            code = main_of(WeightSeparation.run)(argv)
        flags.FLAGS.unparse_flags()
    result = Result(code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"WeightSeparation.py {' '.join(args)} failed ({code}):\n{result.stdout}\n{result.stderr}")
    return result


def assert_one_line_error(result, *fragments):
    """A user error: exit status != 0, one `error: ...` line on stderr, no traceback."""
    assert result.returncode != 0
    err = result.stderr.strip()
    assert "Traceback" not in result.stderr, result.stderr
    assert err.startswith("error: ") and len(err.splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in err, (fragment, err)


@pytest.fixture(scope="session")
def tiny_tasks(tmp_path_factory):
    """Two tiny tasks, each pretrained briefly on synthetic data: {name: folder}."""
    from weightsep.tasks import load_task
    from weightsep.training import pretrain_task

    root = tmp_path_factory.mktemp("tiny_tasks")
    folders = {}
    for name, fields in TINY_SPECS.items():
        folder = write_task_folder(root, name, **fields)
        pretrain_task(load_task(folder), "synthetic", iters=60, verbose=0)
        folders[name] = folder
    return folders


@pytest.fixture(scope="session")
def tiny_state(tmp_path_factory, tiny_tasks):
    """A float32 state with both tiny tasks added and trained (formation, 40 steps each).
    Copy it (``copy_state``) before changing it."""
    from weightsep.pipeline import Options, Session, form_all
    from weightsep.store import Store
    from weightsep.tasks import load_task

    state = tmp_path_factory.mktemp("tiny_state") / "state"
    store = Store(state)
    with store.writer():
        form_all(Session(store, Options(**TINY_OPTIONS)), [load_task(f) for f in tiny_tasks.values()], 40,
                 log=lambda *_: None)
    return state


def copy_state(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
