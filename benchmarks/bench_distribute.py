#!/usr/bin/env python3
"""Data-parallel optimization on localhost workers (BENCHMARKS.md and README, "Training on a cluster").

The demo's optimize step (-mode=o: every task of the ten synthetic tasks trains 32 steps per
pass, then every task is evaluated) run as one process and as -distribute=multi_worker on
2 worker processes of this machine (TF_CONFIG on free localhost ports), from copies of one
state: wall time of the whole command (median of -repeats, the runs interleaved) and the
largest difference between the pools they leave.

The state: the ten task specs with untrained networks (a step costs the same whatever the
weights), added with the demo's margin (0.25), no formation training.

  .venv/bin/python benchmarks/bench_distribute.py [-out=bench_out/distribute] [-passes=2] [-repeats=2]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from absl import app, flags  # noqa: E402

from benchmarks.common import REPO, TASKS, emit, machine, median  # noqa: E402
from weightsep.distribute import free_local_ports  # noqa: E402

flags.DEFINE_string("out", "bench_out/distribute", "working directory (networks, states)")
flags.DEFINE_integer("passes", 2, "passes of the optimize step (the demo: 2 rounds x 10 passes)")
flags.DEFINE_integer("iter", 32, "steps per task per pass")
flags.DEFINE_integer("repeats", 2, "runs of each setting")
flags.DEFINE_string("markdown", None, "also write the table to this file")
FLAGS = flags.FLAGS


def build_state(out: Path) -> Path:
    """The ten tasks, untrained networks, added with the demo's margin (kept if present)."""
    from weightsep.networks import Network, network_file, save_network
    from weightsep.pipeline import Options, Session, form_all
    from weightsep.store import Store
    from weightsep.tasks import copy_spec, load_task
    state = out / "state"
    if (state / "weightsep_state.json").is_file():
        return state
    shutil.rmtree(state, ignore_errors=True)
    specs = []
    for name in TASKS:
        spec = load_task(copy_spec(name, out / "networks"))
        if not network_file(spec).is_file():
            save_network(Network(spec))
        specs.append(spec)
    store = Store(state)
    with store.writer():
        form_all(Session(store, Options(margin=0.25, data="synthetic")), specs, 0, log=lambda *_: None)
    return state


def run(states: list[Path]) -> float:
    """Wall time of -mode=o on len(states) workers (one process: no -distribute)."""
    args = [sys.executable, str(REPO / "WeightSeparation.py"), "-mode=o", "-rounds=1",
            f"-passes={FLAGS.passes}", f"-iter={FLAGS.iter}"]
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    workers = [f"localhost:{p}" for p in free_local_ports(len(states))]
    procs = []
    start = time.perf_counter()
    for index, state in enumerate(states):
        extra, worker_env = [], dict(env)
        if len(states) > 1:
            extra = ["-distribute=multi_worker"]
            worker_env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers},
                                                  "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen([*args, *extra, f"-state_dir={state}"], env=worker_env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    errors = [proc.communicate()[1] for proc in procs]
    seconds = time.perf_counter() - start
    for proc, err in zip(procs, errors):
        if proc.returncode:
            raise SystemExit(f"-mode=o failed ({proc.returncode}):\n{err[-2000:]}")
    return seconds


def main(argv):
    import numpy as np
    out = Path(FLAGS.out).resolve()
    print(f"machine: {machine()}")
    base = build_state(out)
    times = {1: [], 2: []}
    finals = {}
    load_before = os.getloadavg()
    for _ in range(FLAGS.repeats):
        for workers in (1, 2):
            states = [out / f"run_{workers}_{i}" for i in range(workers)]
            for state in states:
                shutil.rmtree(state, ignore_errors=True)
                shutil.copytree(base, state)
            times[workers].append(run(states))
            finals[workers] = np.load(states[0] / "shared_weight_page.npy")
            print(f"  {workers} worker(s): {times[workers][-1]:.1f} s")
    one, two = median(times[1]), median(times[2])
    lines = [f"machine: {machine()}",
             f"load average before / after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f}", "",
             f"-mode=o -rounds=1 -passes={FLAGS.passes} -iter={FLAGS.iter} on the ten synthetic tasks "
             f"(whole command, median of {FLAGS.repeats}):", "",
             "| workers | global batch | wall time (s) | speed-up |", "|---:|---:|---:|---:|",
             f"| 1 (one process, no -distribute) | 100 | {one:.1f} | 1.00x |",
             f"| 2 (localhost, -distribute=multi_worker) | 100 (2 x 50) | {two:.1f} | {one / two:.2f}x |", "",
             f"largest difference between the pools left by the two: {np.max(np.abs(finals[1] - finals[2])):.2e}"]
    emit(lines, FLAGS.markdown)


if __name__ == "__main__":
    app.run(main)
