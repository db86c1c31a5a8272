"""End to end: a tiny demo run (two tasks, a few steps) and its report checked against the state."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from weightsep.limits import DEFAULT_BASELINE, DEFAULT_GATHER

REPO = Path(__file__).resolve().parents[1]
TASKS = ("hhar", "mnist")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A mistyped task first: the demo refuses it before touching the earlier output, and prints
    the corrected command, which is then run as printed (the tiny schedule comes from DEMO_*)."""
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    (out / "stale").mkdir(parents=True)  # an earlier demo's output: it moves to demo_out.previous
    (out / ".weightsep-demo").write_text("")
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", DEMO_OUT=str(out),
               DEMO_TASKS="hhar,mnst", DEMO_PRETRAIN_ITER="30", DEMO_FORMATION_ITER="20",
               DEMO_ROUNDS="1", DEMO_PASSES="1", DEMO_ITER="10", DEMO_SWITCHES="4")
    typo = subprocess.run([sys.executable, str(REPO / "demo.py")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert typo.returncode == 2 and typo.stdout == "", typo
    assert sorted(p.name for p in out.iterdir()) == [".weightsep-demo", "stale"]
    hint = re.fullmatch(r"error: -tasks: unknown task 'mnst' \(the tasks: .*\); did you mean mnist\? run (.*)\n",
                        typo.stderr)
    assert hint, typo.stderr
    proc = subprocess.run(hint[1], shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout}\n{proc.stderr}"
    return out, proc.stdout


def test_demo_progress_and_outputs(demo):
    out, stdout = demo
    assert not (out / "stale").exists() and (out.with_name("demo_out.previous") / "stale").is_dir()
    assert f"(the earlier output moved to {out.with_name('demo_out.previous')})" in stdout
    assert re.search(r"^expected duration: about \d+ min on this CPU \(a training step of the costliest network "
                     r"took \d+ ms here\)$", stdout, re.M)
    for number, title in enumerate(["pretrain", "formation", "optimization", "evaluation", "execution",
                                    "report and plots"], 1):
        assert f"[{number}/6] {title}" in stdout
    assert "[3/6] optimization: 1 round x 1 pass x 10 steps per task" in stdout
    assert "[2/2] mnist:" in stdout and "round 1/1: mean separated accuracy" in stdout
    # The first training of the optimization is always shown (then at most one line every 10 s).
    assert re.search(r"^  trained: 1/2 \(round 1/1, pass 1/1\), \d+ s elapsed, about \d+ s left$", stdout, re.M)
    assert "step 0," not in stdout  # the pipeline's per-step lines stay quiet
    for name in TASKS:
        assert (out / "networks" / name / f"{name}.weights.h5").is_file()
        assert (out / "networks" / name / "task.py").read_text() == (REPO / name / "task.py").read_text()
    assert json.loads((out / "networks" / "pretrain_steps.json").read_text()) == {"hhar": 30, "mnist": 30}
    # The Fisher plot shows the task with the most exclusive pages (the first such in task order).
    registry = json.loads((out / "state" / "weightsep_state.json").read_text())
    focus = max(registry["tasks"], key=lambda t: len(t["exclusive_pages"]))["name"]
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert plots == sorted(["accuracy.png", "occupation.png", "exclusive.png", "heatmap_hhar_mnist.png",
                            f"pnf_{focus}.png"])
    report = (out / "report.md").read_text()
    assert "- pretrain: 30 steps per task (Adam" in report and "| difference (points) |" in report
    for name in plots:
        assert f"(plots/{name})" in report
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_packing_equals_state_counts(demo):
    out, _ = demo
    registry = json.loads((out / "state" / "weightsep_state.json").read_text())
    S, P = registry["page_size"], registry["num_pages"]
    E = np.load(out / "state" / "exclusive_weight_page.npy", allow_pickle=False).shape[0]
    total = sum(t["num_weights"] for t in registry["tasks"])
    assert E == sum(len(t["exclusive_pages"]) for t in registry["tasks"])
    line = re.search(r"packing: (\d+) weights -> (\d+) weights \(([\d.]+)x\); ([\d,]+) bytes -> ([\d,]+) bytes",
                     (out / "report.md").read_text())
    assert line, "no packing line in the report"
    assert int(line[1]) == total and int(line[2]) == P * S + E * S
    assert line[3] == f"{total / (P * S + E * S):.2f}"
    tables = 2 * sum(len(t["page_table"]) for t in registry["tasks"])
    assert int(line[4].replace(",", "")) == 4 * total
    assert int(line[5].replace(",", "")) == 4 * (P + E) * S + tables


def test_demo_accuracies_equal_evaluation_of_the_state(demo):
    out, _ = demo
    from weightsep.pipeline import Options, Session, evaluate_network, evaluate_task
    from weightsep.store import Store
    session = Session(Store(out / "state").load(), Options())
    report = (out / "report.md").read_text()
    for name in TASKS:
        row = re.search(rf"^\| {name} \|(.*)$", report, re.M)[1].split("|")
        network, separated = row[4].strip(), row[5].strip()
        assert separated == f"{100 * evaluate_task(session, name):.2f}"
        assert network == f"{100 * evaluate_network(session, session.spec(name)):.2f}"
    switching = re.search(r"\| Weight-Separated Execution \| ([\d.]+) \| ([\d.]+) \|", report)
    baseline = re.search(r"\| Non-Separated Execution \| ([\d.]+) \| ([\d.]+) \|", report)
    assert switching and baseline and float(switching[1]) > 0 and float(baseline[1]) > 0
    # the execution scripts' defaults on a CPU: the NumPy gather against the checkpoint baseline
    assert DEFAULT_GATHER == "auto" and re.search(
        rf"\(NumPy gather into the inference's weight buffer, exclusive pages from disk; the baseline: "
        rf"{DEFAULT_BASELINE}: ", report)


def test_pretraining_line_names_kept_networks():
    from weightsep.report import pretraining
    assert pretraining({"hhar": 30, "mnist": 30}, 30) == "30 steps per task"
    assert pretraining({"hhar": 100, "mnist": 500, "gsc": None}, 500) == \
        "500 steps per task; kept from an earlier run: hhar (100 steps), gsc (steps unknown)"


def run_demo(*args, cwd):
    return subprocess.run([sys.executable, str(REPO / "demo.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_demo_refuses_an_output_folder_it_did_not_write(tmp_path):
    """Checked before anything moves: a folder of other files, the repository, a bad DEMO_* value."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("months of work")
    result = run_demo("-out=mine", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: -out=mine: ") and "holds files the demo did not write" in result.stderr
    assert "-out=mine_2" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["mine"] and (tmp_path / "mine" / "thesis.tex").is_file()
    result = run_demo(f"-out={REPO}", cwd=tmp_path)
    assert result.returncode == 2 and "would hold the demo's output" in result.stderr
    result = subprocess.run([sys.executable, str(REPO / "demo.py")], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO), DEMO_ROUNDS="two"))
    assert result.returncode == 2 and result.stderr.startswith("error: DEMO_ROUNDS='two': ")
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]
