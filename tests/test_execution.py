"""Multitask execution (weightsep.runtime, weightsep.baseline, ws_execution.py,
baseline_execution.py) on the tiny state of conftest and on its int8 / int4 copies."""

import re
import shutil

import numpy as np
import pytest

from conftest import TINY_OPTIONS, copy_state, run_cli
from weightsep.baseline import BaselineRuntime
from weightsep.errors import StateError, WeightSepError
from weightsep.networks import load_network
from weightsep.pipeline import Options, Session, evaluate_task
from weightsep.runtime import WSRuntime, aligned_empty, run_executions, task_sequence
from weightsep.store import Store, convert_state


@pytest.fixture(scope="module")
def states(tiny_state, tmp_path_factory):
    """{page dtype: state dir}: the tiny float32 state and its int8 and int4 copies."""
    root = tmp_path_factory.mktemp("execution")
    found = {"float32": copy_state(tiny_state, root / "float32")}
    for dtype in ("int8", "int4"):
        convert_state(found["float32"], root / dtype, dtype)
        found[dtype] = root / dtype
    store = Store(found["float32"]).load()
    assert all(0 < len(r.exclusive_pages) < r.num_pages for r in store.tasks)
    return found


@pytest.fixture(scope="module")
def expected_accuracy(states):
    """-mode=e's accuracy of each separated task, per state."""
    return {dtype: {name: evaluate_task(Session(Store(state).load(), Options(**TINY_OPTIONS)), name)
                    for name in ("tiny_a", "tiny_b")}
            for dtype, state in states.items()}


@pytest.mark.parametrize("dtype,secondary,gather", [("float32", "disk", "numpy"), ("float32", "host", "numpy"),
                                                    ("int8", "disk", "numpy"), ("int8", "host", "numpy"),
                                                    ("int4", "disk", "numpy"), ("int4", "host", "numpy"),
                                                    ("float32", "disk", "op"), ("float32", "host", "op"),
                                                    ("float32", "disk", "tf"), ("int8", "disk", "op"),
                                                    ("int8", "host", "tf"), ("int4", "disk", "op"),
                                                    ("int4", "disk", "tf")])
def test_switch_gathers_exactly_the_stored_weights(states, expected_accuracy, dtype, secondary, gather):
    """Every switch's weights, read through the tensor the compiled inference reads, equal the
    store's materialized (dequantized) weights bit for bit: gathered with NumPy into the shared
    buffer (the CPU default), with the custom op (always built in CI: `gather="op"` fails
    without it) or with the tf fallback.  Switching back and forth checks that one task's
    gather leaves nothing of another's in the buffer."""
    store = Store(states[dtype]).load()
    with WSRuntime(states[dtype], device="cpu", secondary=secondary, gather=gather, log=None) as runtime:
        assert runtime.task_names == ["tiny_a", "tiny_b"]
        assert runtime.gather == gather
        assert ("custom op" in runtime.gather_kind) == (gather == "op")
        for name in ["tiny_b", "tiny_a", "tiny_a", "tiny_b"]:
            runtime.switch(name)
            np.testing.assert_array_equal(runtime.current_weights(), store.materialize(name))
            accuracy, seconds = runtime.execute(name)
            assert accuracy == expected_accuracy[dtype][name] and seconds > 0


def test_numpy_gather_shares_its_buffer_with_the_inference(states):
    """The weight buffer is 64-byte aligned and IS the memory the inference reads: a value
    written into it shows in the running task's tensor (no copy between switch and inference)."""
    with WSRuntime(states["float32"], device="cpu", gather="numpy", log=None) as runtime:
        host = runtime._host_gather
        assert host.buffer.ctypes.data % 64 == 0
        runtime.switch("tiny_a")
        before = runtime.current_weights()
        host.buffer[3] += 1.0
        after = runtime.current_weights()
        assert after[3] == before[3] + np.float32(1.0) and np.array_equal(np.delete(after, 3), np.delete(before, 3))
    for count, dtype in ((5, np.float32), (1, np.int8), (1000, np.float64)):
        array = aligned_empty(count, dtype)
        assert array.shape == (count,) and array.dtype == dtype and array.ctypes.data % 64 == 0


def test_int4_state_without_int8_pages_switches_from_disk(states, tmp_path):
    """An int4 state with no int8 page (-int8_pages=0): the tasks' int8 rows are empty reads."""
    state = convert_state(states["float32"], tmp_path / "int4_0", "int4", int8_pages=0.0).dir
    store = Store(state).load()
    assert not (store.quantized("exclusive").bits == 8).any()
    for gather in ("numpy", "op"):
        with WSRuntime(state, device="cpu", secondary="disk", gather=gather, log=None) as runtime:
            for name in ("tiny_b", "tiny_a"):
                runtime.switch(name)
                np.testing.assert_array_equal(runtime.current_weights(), store.materialize(name))


def test_quantized_switches_read_fewer_bytes(states):
    """A switch reads the task's exclusive rows in their stored form: int8 a quarter of float32
    plus 4 bytes of scale per page, int4 an eighth plus a float16 scale per group of 64 and a kind
    byte per page, and an eighth more for each int8 page among them."""
    store = Store(states["float32"]).load()
    rows = {name: store.task(name).page_table[store.task(name).exclusive_pages] - store.num_pages
            for name in ("tiny_a", "tiny_b")}
    kinds = np.load(states["int4"] / "exclusive_weight_bits.npy")
    assert (kinds == 8).any()  # the int8 pages of the tiny state include exclusive rows
    for dtype, per_page in (("float32", 64 * 4), ("int8", 64 + 4), ("int4", 32 + 2 + 1)):
        with WSRuntime(states[dtype], device="cpu", log=None) as runtime:
            for name, task_rows in rows.items():
                wide = np.count_nonzero(kinds[task_rows] == 8) if dtype == "int4" else 0
                # what the switch's read (bring_in) fills from level 2
                read = runtime.bring_in(name)
                assert sum(int(b.nbytes) for b in read) == len(task_rows) * per_page + 32 * wide


def test_disk_switch_reads_the_file_every_time(states, tmp_path):
    """secondary=disk keeps no copy: rows changed on disk show up at the next switch."""
    copy = shutil.copytree(states["float32"], tmp_path / "state")
    store = Store(copy).load()
    record = store.task("tiny_b")
    row = int(record.page_table[record.exclusive_pages[0]]) - store.num_pages
    with WSRuntime(copy, device="cpu", secondary="disk", log=None) as runtime:
        reader = runtime._readers[0]
        exclusive = np.load(reader.path)
        exclusive[row] += 1.0
        with open(reader.path, "r+b") as f:  # in place, as the runtime holds the file open
            f.seek(reader.offset)
            f.write(exclusive.tobytes())
        runtime.switch("tiny_b")
        page = record.exclusive_pages[0] * store.page_size
        got, want = runtime.current_weights(), store.materialize("tiny_b")
        np.testing.assert_array_equal(got[page:page + 4], want[page:page + 4] + 1.0)


def test_baselines_load_the_weights_of_their_sources(states, expected_accuracy):
    state = states["float32"]
    store = Store(state).load()
    with BaselineRuntime(state, baseline="raw", device="cpu", log=None) as raw:
        for name in ["tiny_b", "tiny_a"]:
            raw.switch(name)
            np.testing.assert_array_equal(raw.current_weights(), store.materialize(name))
            assert raw.execute(name)[0] == expected_accuracy["float32"][name]
    for baseline in ("checkpoint", "file"):  # both restore the task's network before separation
        with BaselineRuntime(state, baseline=baseline, device="cpu", log=None) as runtime:
            assert runtime.baseline == baseline
            for name in ["tiny_b", "tiny_a", "tiny_b"]:
                network = load_network(store.task(name).task_spec())
                runtime._tasks[name].net.set_vector(np.zeros(network.num_weights, np.float32))  # the switch restores
                runtime.switch(name)
                np.testing.assert_array_equal(runtime.current_weights(), network.get_vector())
                assert runtime.execute(name)[0] == store.task(name).accuracy["network"]


def test_task_sequence_is_seeded_uniform_and_sorted_by_name():
    names = ["c", "a", "b"]
    assert task_sequence(names, 50, 7) == task_sequence(names, 50, 7)
    assert task_sequence(names, 50, 7) != task_sequence(names, 50, 8)
    picks = np.random.default_rng(7).integers(0, 3, size=50)
    assert task_sequence(names, 50, 7) == [["a", "b", "c"][i] for i in picks]
    with pytest.raises(WeightSepError, match="no tasks"):
        task_sequence([], 5, 0)


def test_run_executions_prints_the_original_lines(states, expected_accuracy):
    lines, seen = [], []
    with WSRuntime(states["float32"], device="cpu", log=None) as runtime:
        results = run_executions(runtime, 4, 3, log=lines.append,
                                 on_switch=lambda i, execution, totals: seen.append((i, execution, totals)))
    assert [r.task for r in results] == task_sequence(["tiny_a", "tiny_b"], 4, 3)
    assert lines[0] == "[0/4] total_weight_load_time: 0.000 ms, total_execution_time: 0.000 ms"
    assert lines[-3].startswith("total weights load time : ")
    assert sum(r.load_seconds for r in results) * 1e3 == pytest.approx(float(lines[-3].split()[-2]), abs=1e-3)
    assert all(r.accuracy == expected_accuracy["float32"][r.task] for r in results)
    # The callback gets every execution and the running totals, as data.
    assert [i for i, _, _ in seen] == [0, 1, 2, 3] and [e for _, e, _ in seen] == results
    assert seen[-1][2][0] == pytest.approx(sum(r.load_seconds for r in results))


def test_missing_state_and_missing_network_file_are_errors(states, tmp_path):
    with pytest.raises(StateError, match="no separated state"):
        WSRuntime(tmp_path / "nothing", device="cpu", log=None)
    with pytest.raises(StateError, match="no separated state"):
        BaselineRuntime(tmp_path / "nothing", device="cpu", log=None)
    network = Store(states["float32"]).load().task("tiny_a").task_spec().path("tiny_a.weights.h5")
    moved = tmp_path / "moved.weights.h5"
    shutil.move(network, moved)
    try:
        for baseline in ("checkpoint", "file"):
            with pytest.raises(WeightSepError, match="no trained network for task tiny_a"):
                BaselineRuntime(states["float32"], baseline=baseline, device="cpu", log=None)
    finally:
        shutil.move(moved, network)


# --- the scripts themselves (subprocesses) ------------------------------------------------

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


def test_scripts_print_the_original_lines_and_agree(states, expected_accuracy):
    state = states["int8"]
    ws = run_cli(f"-state_dir={state}", "-num_execution=6", "-seed=5", "-device=cpu", script="ws_execution.py")
    base = run_cli(f"-state_dir={state}", "-num_execution=6", "-seed=5", "-baseline=raw",
                   script="baseline_execution.py")
    check_lines(ws.stdout, 6)
    check_lines(base.stdout, 6)
    assert "page gather: NumPy gather into the inference's weight buffer" in ws.stdout
    assert re.search(r"^\[VNN 0\]\[tiny_a\] init page table \d+\.\d{3} ms$", ws.stdout, re.M)
    assert re.search(r"^\[VNN 1\]\[tiny_b\] init page table \d+\.\d{3} ms$", ws.stdout, re.M)
    assert re.search(r"^init shared_weight \d+\.\d{3} ms \(int8 pool, \d+ bytes\)$", ws.stdout, re.M)
    ws_tasks, ws_accuracy = parse_run(ws.stdout)
    base_tasks, base_accuracy = parse_run(base.stdout)
    assert ws_tasks == base_tasks == task_sequence(["tiny_a", "tiny_b"], 6, 5)
    formatted = {name: f"{acc:.6f}" for name, acc in expected_accuracy["int8"].items() if name in ws_accuracy}
    assert ws_accuracy == base_accuracy == formatted


@pytest.mark.parametrize("script,flag", [("ws_execution.py", "-num_execution=-1"),
                                         ("baseline_execution.py", "-batch_size=0"),
                                         ("ws_execution.py", "-seed=-1"),
                                         ("baseline_execution.py", "-data_seed=-3")])
def test_scripts_check_their_flags_first(tmp_path, script, flag):
    proc = run_cli(f"-state_dir={tmp_path}", flag, script=script, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith(f"error: {flag}") and len(proc.stderr.strip().splitlines()) == 1


def test_scripts_fail_in_one_line_without_a_state(tmp_path):
    proc = run_cli(f"-state_dir={tmp_path}", "-num_execution=2", script="ws_execution.py", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: no separated state") and len(proc.stderr.strip().splitlines()) == 1
