"""The command line: output lines of the original, and one-line errors with a non-zero exit."""

import json

import pytest

from conftest import copy_task_folder, run_cli, write_task_folder


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert err.startswith("error: ") and len(err.splitlines()) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_pretrain_then_evaluate_network(tmp_path):
    folder = write_task_folder(tmp_path, "clitask", input_shape=(8, 8, 1), num_classes=3, conv=((3, 3, 2),),
                               dense=(6,))
    proc = run_cli("-mode=pretrain", f"-network_path={folder}", "-data=synthetic", "-iter=40", "-verbose=0")
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("clitask inference accuracy: 0.") and len(last.split(": ")[1]) == 8
    assert (folder / "clitask.weights.h5").is_file()
    proc = run_cli("-mode=e", f"-vnn_name={folder}", "-target=network", "-data=synthetic")
    assert proc.stdout.strip() == last


def test_unknown_task(tmp_path):
    proc = run_cli("-mode=pretrain", "-network_path=nosuch", "-data=synthetic", check=False)
    assert_one_line_error(proc, "unknown task 'nosuch'", "cifar10")


def test_missing_real_data_names_file_and_download_command(tmp_path):
    folder = copy_task_folder(tmp_path, "svhn")
    proc = run_cli("-mode=pretrain", f"-network_path={folder}", check=False)
    assert_one_line_error(proc, "svhn_train_data.npy", "./download_dataset.sh svhn")


def test_corrupt_data_names_the_file(tmp_path):
    folder = copy_task_folder(tmp_path, "hhar")
    for split in ("train", "test"):
        (folder / f"hhar_{split}_data.npy").write_text("<!DOCTYPE html><html>quota exceeded</html>")
        (folder / f"hhar_{split}_label.npy").write_text("<html></html>")
    proc = run_cli("-mode=pretrain", f"-network_path={folder}", check=False)
    assert_one_line_error(proc, "hhar_train_data.npy")


def test_missing_network_and_missing_state(tmp_path):
    folder = copy_task_folder(tmp_path, "mnist")
    proc = run_cli("-mode=a", f"-network_path={folder}", f"-state_dir={tmp_path / 'st'}", "-data=synthetic",
                   check=False)
    assert_one_line_error(proc, "mnist.weights.h5 is missing", "-mode=pretrain")
    proc = run_cli("-mode=e", "-vnn_name=mnist", f"-state_dir={tmp_path / 'empty'}", check=False)
    assert_one_line_error(proc, "no separated state in", "-mode=a")


def test_bad_mode_is_a_usage_error():
    proc = run_cli("-mode=zz", check=False)
    assert proc.returncode != 0 and "-mode must be one of" in proc.stderr


def test_corrupt_state_is_reported_by_name(tmp_path, tiny_tasks):
    state = tmp_path / "st"
    proc = run_cli("-mode=a", f"-network_path={tiny_tasks['tiny_a']}", f"-state_dir={state}", "-data=synthetic",
                   "-page_size=64", "-num_pages=16")
    for key in ("num_of_weight 1724", "num_of_weight_page 27", "pages allocated for", "matching cost: 0.0"):
        assert key in proc.stdout
    registry = json.loads((state / "weightsep_state.json").read_text())
    registry["tasks"][0]["page_table"][0] = 10_000
    (state / "weightsep_state.json").write_text(json.dumps(registry))
    proc = run_cli("-mode=l", f"-state_dir={state}", check=False)
    assert_one_line_error(proc, "weightsep_state.json")


@pytest.mark.slow
def test_formation_and_optimization_scripts(tmp_path, tiny_tasks):
    """formation.sh + optimization.sh (both modes) on two tiny tasks; -mode=l reports the packing."""
    import os
    import subprocess
    from conftest import REPO
    state = tmp_path / "st"
    env = dict(os.environ, TASKS=" ".join(str(f) for f in tiny_tasks.values()), PYTHONUNBUFFERED="1")
    flags = ["-data=synthetic", f"-state_dir={state}", "-page_size=64", "-num_pages=16", "-margin=0.6"]
    out = subprocess.run([str(REPO / "formation.sh"), *flags, "-iter=100"], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.count("matching cost:") == 2 and "step 100, Validation accuracy" in out
    out = subprocess.run([str(REPO / "optimization.sh"), *flags, "-rounds=2", "-iter=10"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "2-th evaluation" in out and out.count("inference accuracy:") == 4
    listing = run_cli("-mode=l", f"-state_dir={state}").stdout
    assert "packing: 2696 weights -> " in listing
