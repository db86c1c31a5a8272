"""The scripts themselves, as a user runs them (subprocesses, so few): WeightSeparation.py answers
usage errors and -help without importing TensorFlow; formation.sh then optimization.sh (in one
process, and WS_LOOP=1: one process per step) give the same result, in the caller's directory."""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from conftest import PYTHON, REPO, TINY_OPTIONS
from weightsep.store import Store


def imported_modules(stderr):
    """The modules `python -X importtime` reports, and the other stderr lines."""
    modules, rest = set(), []
    for line in stderr.splitlines():
        if line.startswith("import time:"):
            modules.add(line.rsplit("|", 1)[-1].strip())
        else:
            rest.append(line)
    return modules, rest


@pytest.mark.parametrize("args, code, message", [
    (["-mode=zz"], 2, "error: -mode must be one of "),
    (["-mode=l", "stray"], 2, "error: unexpected arguments: stray"),
    (["-mode=t", "-vnn_name=mnist", "-iter=0"], 2, "error: -iter=0: must be "),
    (["-mode=e"], 2, "error: -mode=e needs -vnn_name=<task>"),
    (["-mode=pf"], 2, "error: -mode=pf needs -vnn_name=<task>"),
    (["-mode=heatmap", "-vnn_name=mnist"], 2, "error: -mode=heatmap needs two different tasks"),
    (["-mode=c", "-vnn_name=mnist,mnist"], 2, "error: -mode=c needs different tasks"),
    (["-mode=e", "-vnn_name=mnist"], 1, "error: no separated state in "),
    (["-help"], None, None),
], ids=["bad-mode", "stray-argument", "bad-flag", "e-no-task", "pf-no-task", "heatmap-one-task", "c-twice",
        "e-no-state", "help"])
def test_answers_without_importing_tensorflow(tmp_path, args, code, message):
    proc = subprocess.run([PYTHON, "-X", "importtime", str(REPO / "WeightSeparation.py"), *args], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=60)
    modules, rest = imported_modules(proc.stderr)
    assert "absl.app" in modules  # the import report is there: the check below can see imports
    # Looking for a state reads the store's module (NumPy); nothing else may load more than absl.
    light = ("tensorflow", "keras") if code == 1 else ("tensorflow", "keras", "numpy")
    heavy = sorted(m for m in modules if m.split(".")[0] in light)
    assert not heavy, heavy
    assert "Traceback" not in proc.stderr
    if code is None:  # -help: every mode of the table with its line, then every flag with its help
        import WeightSeparation
        for name, mode in WeightSeparation.MODES.items():
            assert re.search(rf"^  -mode={name} {re.escape(mode.usage)} +{re.escape(mode.help)}$", proc.stdout, re.M), name
        for flag in WeightSeparation.OWN_FLAGS:
            assert re.search(rf"^  --(\[no\])?{flag}:", proc.stdout, re.M), flag
        assert rest == []
    else:
        assert proc.returncode == code and proc.stdout == ""
        assert len(rest) == 1 and rest[0].startswith(message), rest
    assert list(tmp_path.iterdir()) == []  # nothing written in the working directory


def run_script(script, *args, cwd, env, loop=False):
    """Start formation.sh / optimization.sh in cwd with the given TASKS environment."""
    env = dict(env, **({"WS_LOOP": "1"} if loop else {}))
    return subprocess.Popen([str(REPO / script), *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{proc.args} failed ({proc.returncode}):\n{out}\n{err}"
    return out


def final_accuracies(stdout):
    found = {}
    for name, acc in re.findall(r"^(\S+) inference accuracy: (\d\.\d{6})$", stdout, re.M):
        found[name] = acc  # the last evaluation of each task
    return found


def test_formation_then_optimization_in_one_process_and_in_a_loop(tiny_tasks, tmp_path):
    """Relative -state_dir from another working directory: the state lands there (the scripts do
    not cd).  Each optimization mode runs on its own copy of the formed state, both at once.
    One task keeps the number of processes (each imports TensorFlow) small; the equality of the
    two modes on several tasks is tested in-process (test_pipeline)."""
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, TASKS=str(tiny_tasks["tiny_b"]), PYTHONUNBUFFERED="1", PYTHON=PYTHON)
    flags = [f"-page_size={TINY_OPTIONS['page_size']}", f"-num_pages={TINY_OPTIONS['num_pages']}",
             f"-margin={TINY_OPTIONS['margin']}", "-data=synthetic"]
    out = finish(run_script("formation.sh", "-state_dir=rel/st", *flags, "-iter=5", cwd=work, env=env))
    assert out.count("== add ") == 1 and out.count("== train ") == 1
    assert out.count("total_network_cost:") == 1 and out.count("step 4, Validation accuracy: ") == 1
    formed = Store(work / "rel" / "st").load()
    assert [r.name for r in formed.tasks] == ["tiny_b"]
    assert formed.task("tiny_b").settings["trained_steps"] == 5
    assert not (REPO / "rel").exists()

    for copy in ("inproc", "loop"):
        shutil.copytree(work / "rel" / "st", work / copy)
    schedule = ["-rounds=1", "-passes=1", "-iter=5"]
    loop = run_script("optimization.sh", "-state_dir=loop", *schedule, cwd=work, env=env, loop=True)
    inproc = run_script("optimization.sh", "-state_dir=inproc", *schedule, cwd=work, env=env)
    out_inproc, out_loop = finish(inproc), finish(loop)
    for out in (out_inproc, out_loop):
        assert "1-th optimization" in out and "1-th evaluation" in out
    # In one process: where the schedule is after each round, and a closing summary.
    assert re.search(r"^round 1/1 done: mean test accuracy \d\.\d{6}; \d+ s elapsed$", out_inproc, re.M)
    assert re.search(r"^optimization done: 1 round x 1 pass x 5 steps of 1 task in \d+ s; mean test accuracy "
                     r"\d\.\d{6}$", out_inproc, re.M)
    accuracies = final_accuracies(out_inproc)
    assert sorted(accuracies) == ["tiny_b"]
    assert final_accuracies(out_loop) == accuracies
    a, b = Store(work / "inproc").load(), Store(work / "loop").load()
    for rec in a.tasks:
        np.testing.assert_array_equal(a.materialize(rec.name), b.materialize(rec.name))
        assert rec.settings["trained_steps"] == b.task(rec.name).settings["trained_steps"] == 10
        assert f"{rec.accuracy['separated']:.6f}" == accuracies[rec.name]


def test_output_into_a_closed_pipe_ends_quietly(tiny_state):
    """`WeightSeparation.py | head -1`: the reader is gone before the listing is written."""
    proc = subprocess.Popen([PYTHON, str(REPO / "WeightSeparation.py"), f"-state_dir={tiny_state}"],
                            env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert err == ""


EXECUTION_FLAGS = ["state_dir", "num_execution", "seed", "device", "data", "data_seed", "batch_size", "network_path"]


@pytest.mark.parametrize("script, own", [("ws_execution.py", ["secondary", "gather"]), ("baseline_execution.py", ["baseline"])])
def test_execution_scripts_help_lists_every_flag(tmp_path, script, own):
    proc = subprocess.run([PYTHON, "-X", "importtime", str(REPO / script), "-help"], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=60)
    modules, rest = imported_modules(proc.stderr)
    assert not sorted(m for m in modules if m.split(".")[0] in ("tensorflow", "keras")) and rest == []
    listed = re.findall(r"^  --(?:\[no\])?(\w+):", proc.stdout, re.M)
    assert sorted(listed) == sorted(EXECUTION_FLAGS + own)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script, first", [("formation.sh", "Step 1 of weight separation"),
                                           ("optimization.sh", "Step 2 of weight separation")])
@pytest.mark.parametrize("flag", ["-help", "--help", "-h"])
def test_shell_scripts_help_starts_no_work(tmp_path, script, first, flag):
    """The usage, then the pointer to WeightSeparation.py's flags; no Python runs, nothing is written."""
    env = dict(os.environ, PYTHON="/bin/false")  # a call of WeightSeparation.py would fail the script
    proc = subprocess.run([str(REPO / script), "-data=synthetic", flag], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith(first) and "WeightSeparation.py -help" in proc.stdout.splitlines()[-1]
    assert not re.search(r"^#", proc.stdout, re.M) and "== add" not in proc.stdout
    assert list(tmp_path.iterdir()) == []
