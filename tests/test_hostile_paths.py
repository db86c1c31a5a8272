"""The audit of issue 21, kept: every mode that takes a path, given a hostile one (a file, a path
below a file, a read-only directory, a 5,000-character name, a full disk through RLIMIT_FSIZE),
answers with one `error:` line and exit status 1, and leaves the state, the previous export and
everything else on disk exactly as it was."""

import os
import shutil
import tempfile
from contextlib import nullcontext
from pathlib import Path

import pytest

from conftest import TINY_OPTIONS, assert_one_line_error, run_main, unprivileged
from test_reliability import file_size_limit, hand_state, snapshot

KINDS = ("file", "below_file", "read_only", "too_long", "full_disk")
STATE_FLAGS = [f"-{k}={v}" for k, v in TINY_OPTIONS.items() if k != "margin"]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A state `st` and its previous export `export`, built once (copied by `world`)."""
    root = tmp_path_factory.mktemp("template")
    state = hand_state(root / "st")
    run_main("-mode=w", f"-state_dir={state}", f"-export_dir={root / 'export'}")
    run_main("-mode=p", f"-state_dir={state}", f"-export_dir={root / 'export'}")
    return root


@pytest.fixture
def world(template):
    """A world-readable root (the read-only cases run as nobody when the tests run as root)
    holding a state `st`, its previous export `export`, a file and a read-only directory."""
    root = Path(tempfile.mkdtemp(prefix="weightsep-hostile-"))
    root.chmod(0o755)
    for name in ("st", "export"):
        shutil.copytree(template / name, root / name)
    (root / "afile").write_text("not a directory")
    (root / "ro").mkdir(mode=0o555)
    (root / "ro").chmod(0o555)
    yield root
    for folder, _, _ in os.walk(root):
        os.chmod(folder, 0o755)
    shutil.rmtree(root)


def hostile(root, kind, fresh="new"):
    """(path, context to run in, words the error must hold) of one kind of hostile path; `fresh`
    is the path used for the full disk (a new directory, or one that exists)."""
    return {
        "file": (root / "afile", nullcontext(), ["afile", "is a file"]),
        "below_file": (root / "afile" / "sub", nullcontext(), ["afile", "file"]),
        "read_only": (root / "ro" / "sub", unprivileged(), ["ro", "read-only"]),
        "too_long": (root / ("x" * 5000), nullcontext(), ["File name too long", "(5"]),
        "full_disk": (root / fresh, file_size_limit(20), ["file-size limit"]),
    }[kind]


def run_hostile(root, args, fragments, context):
    before = snapshot(root)
    with context:
        result = run_main(*args, check=False)
    assert_one_line_error(result, *fragments)
    assert result.returncode == 1, result.stderr
    assert len(result.stderr) < 600, "a long path must be shown short"
    assert snapshot(root) == before


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["w", "p", "testdata", "blob"])
def test_export_dir(world, mode, kind):
    path, context, fragments = hostile(world, kind, fresh="export")
    run_hostile(world, [f"-mode={mode}", f"-state_dir={world / 'st'}", f"-export_dir={path}", "-data=synthetic"],
                fragments, context)


@pytest.mark.parametrize("kind", KINDS)
def test_plot_dir(world, kind):
    path, context, fragments = hostile(world, kind)
    run_hostile(world, ["-mode=pw", "-vnn_name=ta", f"-state_dir={world / 'st'}", f"-plot_dir={path}"],
                fragments, context)


@pytest.mark.parametrize("kind", KINDS[:4])
def test_out_dir_of_quantize(world, kind):
    # Checked before any task is evaluated; the full disk of a conversion: test below.
    path, context, fragments = hostile(world, kind)
    run_hostile(world, ["-mode=quantize", "-page_dtype=int8", f"-state_dir={world / 'st'}", f"-out_dir={path}"],
                fragments, context)


def test_out_dir_of_quantize_on_a_full_disk(world, tiny_state):
    shutil.copytree(tiny_state, world / "tiny")
    path, context, fragments = hostile(world, "full_disk")
    run_hostile(world, ["-mode=quantize", "-page_dtype=int8", f"-state_dir={world / 'tiny'}", f"-out_dir={path}"],
                fragments, file_size_limit(2000))


@pytest.mark.parametrize("kind", KINDS)
def test_state_dir_of_a_first_add(world, tiny_tasks, kind):
    path, context, fragments = hostile(world, kind)
    run_hostile(world, ["-mode=a", f"-network_path={tiny_tasks['tiny_a']}", f"-state_dir={path}", *STATE_FLAGS],
                fragments, context)


READERS = (["-mode=l"], ["-mode=e", "-vnn_name=ta"], ["-mode=c", "-vnn_name=ta,tb"], ["-mode=r", "-vnn_name=ta"],
           ["-mode=t", "-vnn_name=ta"], ["-mode=f", "-vnn_name=ta"], ["-mode=w"], ["-mode=p"], ["-mode=testdata"],
           ["-mode=blob"], ["-mode=pw", "-vnn_name=ta"], ["-mode=loss", "-vnn_name=ta"],
           ["-mode=quantize", "-page_dtype=int8", "-out_dir=q"])


@pytest.mark.parametrize("kind", ["file", "below_file", "too_long"])
@pytest.mark.parametrize("args", READERS, ids=lambda args: args[0][6:])
def test_state_dir_of_every_mode_that_reads_one(world, args, kind):
    path, context, fragments = hostile(world, kind)
    fragments = fragments if kind == "too_long" else ["afile"]
    run_hostile(world, [*args, f"-state_dir={path}"], fragments, context)


@pytest.mark.parametrize("kind", ["read_only", "full_disk"])
@pytest.mark.parametrize("args", [["-mode=r", "-vnn_name=ta"], ["-mode=t", "-vnn_name=ta"]], ids=["r", "t"])
def test_a_writer_on_a_read_only_state_or_a_full_disk(world, args, kind):
    state = world / "st"
    if kind == "read_only":
        for folder, _, files in os.walk(state):
            for name in files:
                os.chmod(os.path.join(folder, name), 0o444)
            os.chmod(folder, 0o555)
        context, fragments = unprivileged(), ["read-only"]
    else:
        context, fragments = file_size_limit(20), ["file-size limit"]
    if args[0] == "-mode=t" and kind == "full_disk":
        args = [*args, "-iter=1", "-data=synthetic"]  # trains, then the commit fails
    run_hostile(world, [*args, f"-state_dir={state}"], fragments, context)


@pytest.mark.parametrize("args", [["-mode=a"], ["-mode=n"], ["-mode=pretrain"], ["-mode=import"],
                                  ["-mode=e", "-target=network"]], ids=lambda args: args[0][6:])
def test_a_network_path_too_long(world, args):
    run_hostile(world, [*args, f"-network_path={world / ('x' * 5000)}", f"-state_dir={world / 'st'}"],
                ["File name too long"], nullcontext())
