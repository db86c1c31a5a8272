"""Multitask execution (weightsep.runtime, ws_execution.py, baseline_execution.py) on a tiny state.

The state: the two tiny tasks of conftest, added with small pages so that both have
shared and exclusive pages, and one task trained a few steps so that the pool
differs from the networks.
"""

import re
import shutil

import numpy as np
import pytest

from conftest import run_cli
from weightsep.errors import StateError, WeightSepError
from weightsep.networks import load_network
from weightsep.pipeline import Options, Session, add_task, ensure_state, evaluate_task, train_task
from weightsep.runtime import BaselineRuntime, WSRuntime, run_executions, task_sequence
from weightsep.store import Store
from weightsep.tasks import load_task

quiet = lambda *_: None  # noqa: E731
OPTIONS = dict(page_size=64, num_pages=16, margin=0.6, data="synthetic", fisher_samples=10)


@pytest.fixture(scope="module")
def state(tmp_path_factory, tiny_tasks):
    """A separated state of the two tiny tasks (its own copies of the task folders)."""
    root = tmp_path_factory.mktemp("execution")
    state_dir = root / "state"
    store = Store(state_dir)
    session = Session(store, Options(**OPTIONS))
    with store.writer():
        ensure_state(store, session.options, log=quiet)
        for name, folder in tiny_tasks.items():
            own = shutil.copytree(folder, root / "tasks" / name)
            session.use_spec(load_task(own))
            add_task(session, name, log=quiet)
        train_task(session, "tiny_a", 5, log=quiet)
    store.load()
    assert all(len(r.exclusive_pages) and len(r.exclusive_pages) < r.num_pages for r in store.tasks)
    return state_dir


@pytest.fixture(scope="module")
def expected_accuracy(state):
    """-mode=e's accuracy of each separated task."""
    session = Session(Store(state).load(), Options(**OPTIONS))
    return {name: evaluate_task(session, name, record=False) for name in ("tiny_a", "tiny_b")}


@pytest.mark.parametrize("secondary,gather", [("disk", "auto"), ("host", "auto"), ("disk", "tf")])
def test_switch_gathers_exactly_the_materialized_weights(state, expected_accuracy, secondary, gather):
    store = Store(state).load()
    with WSRuntime(state, device="cpu", secondary=secondary, gather=gather, log=None) as runtime:
        assert runtime.task_names == ["tiny_a", "tiny_b"]
        for name in ["tiny_b", "tiny_a", "tiny_a", "tiny_b"]:
            runtime.switch(name)
            np.testing.assert_array_equal(runtime.current_weights(), store.materialize(name))
            accuracy, seconds = runtime.execute(name)
            assert accuracy == expected_accuracy[name] and seconds > 0


def test_the_op_is_used_when_built(state):
    from custom_ops.page_gather import available
    with WSRuntime(state, device="cpu", log=None) as runtime:
        assert runtime.gather_kind == ("PageGather custom op" if available() else "tf.gather fallback")


def test_disk_switch_reads_the_file_every_time(state, tmp_path):
    """secondary=disk keeps no copy: rows changed on disk show up at the next switch."""
    copy = shutil.copytree(state, tmp_path / "state")
    store = Store(copy).load()
    record = store.task("tiny_b")
    row = int(record.page_table[record.exclusive_pages[0]]) - store.num_pages
    with WSRuntime(copy, device="cpu", secondary="disk", log=None) as runtime:
        path = runtime._reader.path
        exclusive = np.load(path)
        exclusive[row] += 1.0
        with open(path, "r+b") as f:  # in place, as the runtime holds the file open
            f.seek(runtime._reader.offset)
            f.write(exclusive.tobytes())
        runtime.switch("tiny_b")
        page = record.exclusive_pages[0] * store.page_size
        got = runtime.current_weights()
        want = store.materialize("tiny_b")
        np.testing.assert_array_equal(got[page:page + 4], want[page:page + 4] + 1.0)


def test_baselines_load_the_weights_of_their_sources(state, expected_accuracy):
    store = Store(state).load()
    with BaselineRuntime(state, baseline="raw", device="cpu", log=None) as raw:
        for name in ["tiny_b", "tiny_a"]:
            raw.switch(name)
            np.testing.assert_array_equal(raw.current_weights(), store.materialize(name))
            assert raw.execute(name)[0] == expected_accuracy[name]
    with BaselineRuntime(state, baseline="file", device="cpu", log=None) as file:
        for name in ["tiny_b", "tiny_a"]:
            spec = load_task(store.task(name).network_path)
            file.switch(name)
            network = load_network(spec)
            np.testing.assert_array_equal(file.current_weights(), network.get_vector())
            assert file.execute(name)[0] == store.task(name).accuracy["network"]


def test_task_sequence_is_seeded_and_uniform_over_tasks():
    names = ["a", "b", "c"]
    assert task_sequence(names, 50, 7) == task_sequence(names, 50, 7)
    assert task_sequence(names, 50, 7) != task_sequence(names, 50, 8)
    picks = np.random.default_rng(7).integers(0, 3, size=50)
    assert task_sequence(names, 50, 7) == [names[i] for i in picks]
    with pytest.raises(WeightSepError, match="no tasks"):
        task_sequence([], 5, 0)


def test_run_executions_prints_the_original_lines(state, expected_accuracy):
    lines = []
    with WSRuntime(state, device="cpu", log=None) as runtime:
        results = run_executions(runtime, 4, 3, log=lines.append)
    assert [r.task for r in results] == task_sequence(["tiny_a", "tiny_b"], 4, 3)
    assert lines[0] == "[0/4] total_weight_load_time: 0.000 ms, total_execution_time: 0.000 ms"
    assert lines[-3].startswith("total weights load time : ")
    assert sum(r.load_seconds for r in results) * 1e3 == pytest.approx(float(lines[-3].split()[-2]), abs=1e-3)
    assert all(r.accuracy == expected_accuracy[r.task] for r in results)


def test_missing_state_and_missing_network_file_are_errors(state, tmp_path):
    with pytest.raises(StateError, match="no separated state"):
        WSRuntime(tmp_path / "nothing", device="cpu", log=None)
    with pytest.raises(StateError, match="no separated state"):
        BaselineRuntime(tmp_path / "nothing", device="cpu", log=None)
    network = load_task(Store(state).load().task("tiny_a").network_path).path("tiny_a.weights.h5")
    moved = tmp_path / "moved.weights.h5"
    shutil.move(network, moved)
    try:
        with pytest.raises(WeightSepError, match="no trained network for task tiny_a"):
            BaselineRuntime(state, baseline="file", device="cpu", log=None)
    finally:
        shutil.move(moved, network)


# --- the scripts, once each -----------------------------------------------------------

def parse_run(stdout: str):
    executed = re.findall(r"^\[Executing\] (\S+)$", stdout, re.M)
    accuracy = dict(re.findall(r"^(\S+) inference accuracy: (\d\.\d{6})$", stdout, re.M))
    return executed, accuracy


def check_lines(stdout: str, count: int):
    for pattern, expected in [(r"^\[Executing\] \S+$", count),
                              (r"^weights load time : \d+\.\d{3} ms$", count),
                              (r"^\S+ inference accuracy: \d\.\d{6}$", count),
                              (r"^DNN execution time: \d+\.\d{3} ms$", count),
                              (r"^\[\d+/%d\] total_weight_load_time: \d+\.\d{3} ms, "
                               r"total_execution_time: \d+\.\d{3} ms$" % count, count),
                              (r"^total weights load time : \d+\.\d{3} ms$", 1),
                              (r"^total DNN execution time: \d+\.\d{3} ms$", 1),
                              (r"^median weights load time : \d+\.\d{3} ms over %d switches$" % count, 1)]:
        assert len(re.findall(pattern, stdout, re.M)) == expected, pattern
    # The [i/N] progress lines count 0..N-1 and carry the running totals.
    loads = [float(v) for v in re.findall(r"^weights load time : (\S+) ms$", stdout, re.M)]
    totals = [float(v) for v in re.findall(r"total_weight_load_time: (\S+) ms", stdout)]
    assert totals == pytest.approx([sum(loads[:i]) for i in range(count)], abs=0.002 * count)


def test_scripts_print_the_original_lines_and_agree(state, expected_accuracy):
    ws = run_cli(f"-state_dir={state}", "-num_execution=6", "-seed=5", "-device=cpu", script="ws_execution.py")
    base = run_cli(f"-state_dir={state}", "-num_execution=6", "-seed=5", "-baseline=raw",
                   script="baseline_execution.py")
    check_lines(ws.stdout, 6)
    check_lines(base.stdout, 6)
    assert re.search(r"^\[VNN 0\]\[tiny_a\] init page table \d+\.\d{3} ms$", ws.stdout, re.M)
    assert re.search(r"^\[VNN 1\]\[tiny_b\] init page table \d+\.\d{3} ms$", ws.stdout, re.M)
    assert re.search(r"^init shared_weight \d+\.\d{3} ms$", ws.stdout, re.M)
    ws_tasks, ws_accuracy = parse_run(ws.stdout)
    base_tasks, base_accuracy = parse_run(base.stdout)
    assert ws_tasks == base_tasks == task_sequence(["tiny_a", "tiny_b"], 6, 5)
    formatted = {name: f"{acc:.6f}" for name, acc in expected_accuracy.items() if name in ws_accuracy}
    assert ws_accuracy == base_accuracy == formatted


def test_scripts_fail_in_one_line_without_a_state(tmp_path):
    proc = run_cli(f"-state_dir={tmp_path}", "-num_execution=2", script="ws_execution.py", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: no separated state") and len(proc.stderr.strip().splitlines()) == 1
