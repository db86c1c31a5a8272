"""-distribute=multi_worker: TF_CONFIG checks, and two worker processes on localhost giving the
weights of one process with the whole batch, with only the chief writing the state."""

import json
import os
import re
import signal
import subprocess
import threading

import numpy as np
import pytest

from conftest import TINY_OPTIONS, TINY_SPECS, PYTHON, REPO, assert_one_line_error, copy_state, run_main, write_task_folder
from weightsep.distribute import free_local_ports, read_tf_config
from weightsep.errors import WeightSepError


def tf_config(workers, index, kind="worker", chief=()):
    cluster = {"worker": list(workers)}
    if chief:
        cluster["chief"] = list(chief)
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})}


def test_tf_config_is_read_and_checked():
    config = read_tf_config(tf_config(["a:1", "b:2"], 1))
    assert (config.num_workers, config.is_chief, config.name) == (2, False, "worker 1")
    assert read_tf_config(tf_config(["a:1", "b:2"], 0)).is_chief
    with_chief = read_tf_config(tf_config(["a:1"], 0, "chief", chief=["c:3"]))
    assert (with_chief.num_workers, with_chief.is_chief) == (2, True)
    assert not read_tf_config(tf_config(["a:1"], 0, chief=["c:3"])).is_chief
    bad = {
        "": "needs the TF_CONFIG environment variable",
        "{": "not JSON",
        "[]": "needs a \"cluster\" and a \"task\"",
        json.dumps({"cluster": {"ps": ["a:1"]}, "task": {}}): "ps tasks",
        json.dumps({"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}): "host:port",
        json.dumps({"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}): "twice",
        json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}): "not one of",
        json.dumps({"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}): "at least one worker",
    }
    for text, fragment in bad.items():
        with pytest.raises(WeightSepError, match=fragment):
            read_tf_config({"TF_CONFIG": text})


def test_distribute_flag_is_checked_before_any_work(tiny_state, tmp_path, monkeypatch):
    state = copy_state(tiny_state, tmp_path / "state")
    monkeypatch.setenv("TF_CONFIG", tf_config(["localhost:1", "localhost:2", "localhost:3"], 0)["TF_CONFIG"])
    assert_one_line_error(run_main("-mode=a", "-distribute=multi_worker", f"-state_dir={state}", check=False),
                          "applies to -mode=pretrain / -mode=t / -mode=o")
    assert_one_line_error(run_main("-mode=t", "-vnn_name=tiny_a", "-distribute=multi_worker", f"-state_dir={state}",
                                   check=False), "-batch_size=100 must be a multiple of the 3 workers")
    monkeypatch.delenv("TF_CONFIG")
    assert_one_line_error(run_main("-mode=o", "-distribute=multi_worker", f"-state_dir={state}", check=False),
                          "needs the TF_CONFIG environment variable")


def run_workers(args_of_worker, attempts=2):
    """Run WeightSeparation.py on len(args_of_worker) localhost workers (free ports, bounded
    time, killed if still running); their outputs (each must exit 0). A port taken by another
    process between our probe and the workers' bind is retried once on new ports."""
    for attempt in range(attempts):
        outputs, codes = _start_workers(args_of_worker)
        if all(code == 0 for code in codes) or not any("in use" in out.lower() for out in outputs):
            break
    for code, output in zip(codes, outputs):
        assert code == 0, output
    return outputs


def _start_workers(args_of_worker):
    procs = _spawn_workers(args_of_worker)[0]
    try:
        outputs = [proc.communicate(timeout=180)[0] for proc in procs]
    finally:
        _kill(procs)
    return outputs, [proc.returncode for proc in procs]


def _spawn_workers(args_of_worker, stderr=subprocess.STDOUT, **env):
    """Start WeightSeparation.py on localhost workers (free ports): (processes, addresses). A
    variable of env set to None is taken out of the workers' environment."""
    workers = [f"localhost:{port}" for port in free_local_ports(len(args_of_worker))]
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2") | env
    env = {key: value for key, value in env.items() if value is not None}
    procs = [subprocess.Popen([PYTHON, str(REPO / "WeightSeparation.py"), *args, "-distribute=multi_worker"],
                              env=dict(env, **tf_config(workers, index)), stdout=subprocess.PIPE,
                              stderr=stderr, text=True)
             for index, args in enumerate(args_of_worker)]
    return procs, workers


def _kill(procs):
    """Kill those still running and reap them all."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def files_of(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_workers_train_as_one_process_with_the_whole_batch(tiny_tasks, tmp_path):
    from weightsep.pipeline import Options, Session, form_all
    from weightsep.store import Store
    from weightsep.tasks import load_task

    # Both tiny tasks added without training: tiny_a starts from the random pool, so a few steps
    # surely improve it and the run keeps its trained pages (the comparison is about trained
    # pages). The learning rate is taken where the one-process reference improves by a clear
    # margin, so that no rounding difference can flip the choice.
    tiny_state = tmp_path / "start"
    with Store(tiny_state).writer() as store:
        form_all(Session(store, Options(**TINY_OPTIONS)), [load_task(f) for f in tiny_tasks.values()], 0,
                 log=lambda *_: None)
    for lr in ("0.01", "0.003", "0.03"):
        args = ["-mode=t", "-vnn_name=tiny_a", "-iter=10", f"-lr={lr}", "-select_on=validation", "-batch_size=100"]
        reference = tmp_path / f"reference_{lr}"
        one = run_main(*args, f"-state_dir={copy_state(tiny_state, reference)}")  # one process, batch of 100
        kept = re.search(r"kept the weights of ([0-9.]+) \(validation accuracy; ([0-9.]+) at step 0\)", one.stdout)
        if kept and float(kept[1]) - float(kept[2]) >= 0.02:
            break
    else:
        pytest.fail(f"no learning rate made 10 steps of tiny_a better by 2 points:\n{one.stdout}")
    chief, other = copy_state(tiny_state, tmp_path / "chief"), copy_state(tiny_state, tmp_path / "other")
    (other / ".weightsep.lock").unlink(missing_ok=True)
    before = files_of(other)
    outputs = run_workers([[*args, f"-state_dir={state}"] for state in (chief, other)])

    for rel in ("shared_weight_page.npy", "exclusive_weight_page.npy", "tiny_a/tiny_a_weight.npy"):
        got, want = np.load(chief / rel), np.load(reference / rel)
        if (tiny_state / rel).exists():  # the weight vector is first written by training
            assert np.max(np.abs(want - np.load(tiny_state / rel))) > 1e-3  # the run changed the pages
        # Summation order differs between the all-reduce and one batch; Adam divides by sqrt(v), so an
        # element whose gradient is near zero can move by up to lr * 1e-3 more (seen: 1.3e-5 on 1 of 832).
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
        assert np.mean(np.abs(got - want) > 1e-6) < 0.01  # nearly every weight agrees to float rounding
    assert "written by the chief" in outputs[1]
    # The other worker trained the same way but wrote nothing and never took the lock.
    assert [line for line in outputs[0].splitlines() if line.startswith("step ")] == \
        [line for line in outputs[1].splitlines() if line.startswith("step ")]
    assert files_of(other) == before
    assert not (other / ".weightsep.lock").exists()


def test_two_workers_pretrain_as_one_replica_with_the_whole_batch(tmp_path):
    from weightsep import data as datasets
    from weightsep.networks import Network, load_network
    from weightsep.tasks import load_task
    from weightsep.tf import keras, tf
    from weightsep.training import pretrain_distributed

    chief, other = (write_task_folder(tmp_path / root, "tiny_a", **TINY_SPECS["tiny_a"]) for root in ("c", "o"))
    outputs = run_workers([["-mode=pretrain", f"-network_path={folder}", "-data=synthetic", "-iter=30"]
                           for folder in (chief, other)])
    assert "saved by the chief" in outputs[1]
    assert sorted(p.name for p in other.iterdir()) == ["task.py"]  # the other worker saved nothing

    # The same loop on one replica with the whole batch of 100, in this process.
    task = load_task(chief)
    train, val = (datasets.load_split(task, split, "synthetic", 0, datasets.DEFAULT_VALIDATION_SPLIT)
                  for split in ("train", "validation"))
    keras.utils.set_random_seed(0)
    net = Network(task)
    start = net.get_vector()
    pretrain_distributed(net, tf.distribute.MirroredStrategy(["/cpu:0"]), train.x, train.y, val.x, val.y, 30)
    got = load_network(task).get_vector()
    assert np.max(np.abs(net.get_vector() - start)) > 1e-2
    np.testing.assert_allclose(got, net.get_vector(), rtol=0, atol=1e-5)


def _first_step_line(proc, timeout):
    """Wait (at most timeout seconds) for the first `step ` line of proc's stdout; the lines read."""
    lines, seen = [], threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("step "):
                break
        seen.set()

    threading.Thread(target=read, daemon=True).start()
    seen.wait(timeout)
    return lines


def test_a_worker_killed_while_training_stops_the_chief_with_one_line_and_no_commit(tiny_state, tmp_path):
    from weightsep.store import Store

    chief, other = copy_state(tiny_state, tmp_path / "chief"), copy_state(tiny_state, tmp_path / "other")
    before = files_of(chief)
    # Far more steps than run before the kill, so the chief is surely inside training (it commits
    # only once training ends). TensorFlow logs at the program's default level (what a user sees),
    # so the chief's stderr is its one line. TMPDIR: the killed worker cannot delete its scratch copy.
    args = ["-mode=t", "-vnn_name=tiny_a", "-iter=100000", "-batch_size=100"]
    for attempt in range(2):
        procs, workers = _spawn_workers([[*args, f"-state_dir={state}"] for state in (chief, other)],
                                        stderr=subprocess.PIPE, TMPDIR=str(tmp_path), TF_CPP_MIN_LOG_LEVEL=None)
        try:
            lines = _first_step_line(procs[1], timeout=120)
            started = bool(lines) and lines[-1].startswith("step ")
            if started:
                procs[1].send_signal(signal.SIGKILL)
                procs[1].wait()
            # Bounded: gRPC reports the lost peer at the chief's next collective (under a second here).
            out, err = procs[0].communicate(timeout=60)
        finally:
            _kill(procs)
        if started or "in use" not in (out + err).lower():
            break
    assert started, "".join(lines) + procs[1].stderr.read()
    result = subprocess.CompletedProcess(procs[0].args, procs[0].returncode, out, err)
    assert_one_line_error(result, f"worker 1 ({workers[1]}) of the cluster failed or stopped answering",
                          "worker 0 stopped too", f"the state in {chief} keeps its last commit")
    assert "step 0" in out  # the chief was training when its peer died
    # No commit, no pending file, the lock released and empty: the state is byte for byte as before.
    assert files_of(chief) == before
    with Store(chief).writer():
        pass
