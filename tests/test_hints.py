"""Every command a hint prints is run as printed and fixes the problem it names: a misspelled
task name, a missing state, a missing network, missing data (downloads: a dry run shows the
file lands where it was missing).  WeightSeparation.py commands run in-process (their words
after the script are the flags); shell commands run in a shell."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, assert_one_line_error, copy_state, copy_task_folder, run_main
from weightsep.errors import StateError
from weightsep.store import Store


def printed_command(message: str, before: str, after: str = "") -> list[str]:
    """The words of the command a one-line error prints between ``before`` and ``after``."""
    found = re.search(re.escape(before) + r"(.*?)" + (re.escape(after) if after else "$"), message)
    assert found, message
    return shlex.split(found[1])


def run_printed(words: list[str], *extra: str):
    """A printed `python WeightSeparation.py ...` command, run in-process."""
    assert Path(words[0]).resolve() == Path(sys.executable).resolve() or words[0] == sys.executable, words
    assert Path(words[1]).name == "WeightSeparation.py", words
    return run_main(*words[2:], *extra)


def test_misspelled_task_gets_the_corrected_command(tiny_state, tmp_path):
    state = copy_state(tiny_state, tmp_path / "st")
    result = run_main("-mode=e", "-vnn_name=tiny_bb", f"-state_dir={state}", check=False)
    assert_one_line_error(result, "task tiny_bb is not in the state", "tiny_a, tiny_b", "did you mean tiny_b?")
    words = printed_command(result.stderr.strip(), "did you mean tiny_b? run ")
    assert "-vnn_name=tiny_b" in words and f"-state_dir={state}" in words
    assert re.fullmatch(r"tiny_b inference accuracy: \d\.\d{6}\n", run_printed(words).stdout)
    # -mode=r the same way: the corrected command removes the task meant.
    result = run_main("-mode=r", "-vnn_name=tiny_bb", f"-state_dir={state}", check=False)
    run_printed(printed_command(result.stderr.strip(), "did you mean tiny_b? run "))
    assert [rec.name for rec in Store(state).load().tasks] == ["tiny_a"]
    # Nothing close: how to add a task.
    result = run_main("-mode=e", "-vnn_name=zzz", f"-state_dir={state}", check=False)
    assert_one_line_error(result, "task zzz is not in the state", "add it with ", "-mode=a -network_path=FOLDER")


def test_missing_state_points_to_the_demo_state(tiny_state, tmp_path, monkeypatch):
    """In a clone where the demo ran, a command without -state_dir is told the demo's."""
    copy_state(tiny_state, tmp_path / "demo_out" / "state")
    monkeypatch.chdir(tmp_path)
    result = run_main("-mode=e", "-vnn_name=tiny_a", check=False)
    assert_one_line_error(result, "no separated state in", "the demo's is in demo_out/state")
    words = printed_command(result.stderr.strip(), "demo_out/state: run ")
    assert re.fullmatch(r"tiny_a inference accuracy: \d\.\d{6}\n", run_printed(words).stdout)


def test_missing_network_hint_pretrains_into_the_folder_that_is_read(tmp_path):
    folder = copy_task_folder(tmp_path / "networks", "hhar")
    state = tmp_path / "st"
    add = ("-mode=a", f"-network_path={folder}", f"-state_dir={state}", "-data=synthetic")
    result = run_main(*add, check=False)
    assert_one_line_error(result, "hhar.weights.h5 is missing")
    words = printed_command(result.stderr.strip(), "; run ", " (add -data=synthetic")
    assert f"-network_path={folder}" in words
    run_printed(words, "-data=synthetic", "-iter=20", "-verbose=0")  # the offline data, as the hint says
    assert (folder / "hhar.weights.h5").is_file()
    assert "total_network_cost:" in run_main(*add).stdout


def test_missing_data_hint_downloads_into_the_task_folder(tmp_path, monkeypatch):
    """A task folder outside the repository (the demo's copies): the hint's download command puts
    the file where it was missing (shown by its dry run; the tests have no network)."""
    monkeypatch.chdir(REPO)  # the hint's paths are relative to where it is printed, and run
    folder = copy_task_folder(tmp_path / "networks", "svhn")
    result = run_main("-mode=pretrain", f"-network_path={folder}", check=False)
    assert_one_line_error(result, "svhn_train_data.npy")
    missing = re.search(r"missing data file (\S+);", result.stderr)[1]
    command = re.search(r"; run (.*) \(or use -data=synthetic\)$", result.stderr.strip())[1]
    assert command.startswith("WS_ROOT=") and "download_dataset.sh svhn" in command
    proc = subprocess.run(command.replace("download_dataset.sh", "download_dataset.sh --dry-run"), shell=True,
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"-> {missing}" in proc.stdout
    # A task folder of the repository needs no WS_ROOT; run from elsewhere, the script's path is whole.
    from weightsep.data import _download_hint
    from weightsep.tasks import load_task
    assert _download_hint(load_task("svhn")) == "run ./download_dataset.sh svhn (or use -data=synthetic)"
    monkeypatch.chdir(tmp_path)
    assert _download_hint(load_task("svhn")) == f"run {REPO}/download_dataset.sh svhn (or use -data=synthetic)"


def test_unknown_task_folder_suggests_the_close_name(tmp_path):
    result = run_main("-mode=pretrain", "-network_path=hhr", "-data=synthetic", check=False)
    assert_one_line_error(result, "unknown task 'hhr'", "did you mean hhar?")


def test_import_without_checkpoint_says_where_the_checkpoints_are(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    result = run_main("-mode=import", f"-network_path={folder}", check=False)
    assert_one_line_error(result, "mnist.meta", "https://github.com/weight-separation/WeightSeparation",
                          "-mode=import -network_path=WeightSeparation/mnist")


def test_adding_a_task_twice_names_the_remove_command(tiny_state, tiny_tasks, tmp_path):
    state = copy_state(tiny_state, tmp_path / "st")
    add = ("-mode=a", f"-network_path={tiny_tasks['tiny_a']}", f"-state_dir={state}", "-data=synthetic")
    result = run_main(*add, check=False)
    assert_one_line_error(result, "task tiny_a is already in the state")
    run_printed(printed_command(result.stderr.strip(), "remove it first: "))
    assert "total_network_cost:" in run_main(*add).stdout
    assert sorted(rec.name for rec in Store(state).load().tasks) == ["tiny_a", "tiny_b"]


def test_corrupt_vector_hint_removes_and_adds_the_task_again(tiny_state, tmp_path):
    """A task vector that fails its checksum names the two commands, for this state, that rebuild it."""
    state = copy_state(tiny_state, tmp_path / "st")
    path = state / "tiny_a" / "tiny_a_network_weight.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(StateError) as info:
        Store(state).load().load_vector("tiny_a", "network_weight")
    message = str(info.value)
    assert "\n" not in message and "checksum" in message
    run_printed(printed_command(message, "remove the task: ", ", then add it again: "))
    assert [rec.name for rec in Store(state).load().tasks] == ["tiny_b"]
    assert "total_network_cost:" in run_printed(printed_command(message, "then add it again: ")).stdout
    store = Store(state).load()
    assert sorted(rec.name for rec in store.tasks) == ["tiny_a", "tiny_b"]
    assert store.load_vector("tiny_a", "network_weight").shape == (store.task("tiny_a").num_weights,)


def test_missing_fisher_hint_computes_it_in_this_state(tiny_state, tmp_path):
    state = copy_state(tiny_state, tmp_path / "st")
    with pytest.raises(StateError) as info:
        Store(state).load().load_vector("tiny_b", "fisher")
    run_printed(printed_command(str(info.value), "compute it: "))
    store = Store(state).load()
    fisher = store.load_vector("tiny_b", "fisher")
    assert fisher.shape == (store.task("tiny_b").num_weights,) and (fisher >= 0).all() and fisher.any()


def test_a_state_without_tasks_names_formation_for_that_state(tmp_path):
    """An execution or plot on a state whose tasks were all removed names formation.sh for it
    (test_scripts runs formation.sh with -state_dir as printed here, on tiny tasks)."""
    from weightsep.errors import WeightSepError
    from weightsep.plots import plot_accuracy
    from weightsep.runtime import load_state
    state = tmp_path / "st"
    with Store(state).writer() as store:
        store.create(page_size=8, num_pages=4)
    for call in (lambda: load_state(state), lambda: plot_accuracy(Store(state).load(), tmp_path / "p.png")):
        with pytest.raises(WeightSepError) as error:
            call()
        message = str(error.value)
        assert f"the state in {state} holds no tasks; add them with " in message and "<" not in message
        words = printed_command(message, "add them with ", " (the ten tasks")
        assert Path(words[0]).resolve() == (REPO / "formation.sh").resolve() and words[1:] == [f"-state_dir={state}"]
