#!/usr/bin/env python3
"""Formation and optimization benchmarks (BENCHMARKS.md, issue "Weight separation").

1. Formation of the ten synthetic tasks (add = Fisher + separation + matching), greedy vs
   optimal matching: wall time per stage (median of repeats) and total matching cost.
2. Optimization: the in-process optimize-all mode (./optimization.sh) against the original
   process-per-step loop (WS_LOOP=1 ./optimization.sh: 10 x -mode=t per
   pass, then 10 x -mode=e per round) on the same schedule, from copies of one state: wall-time
   ratio, and the final accuracies, which must be identical.

  .venv/bin/python benchmarks/bench_formation.py [-out=bench_out] [-repeats=3] [-rounds=2] [-passes=1] [-iter=32]
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from absl import app, flags  # noqa: E402

from benchmarks.common import REPO, TASKS, machine, median, pretrained_tasks  # noqa: E402

flags.DEFINE_string("out", "bench_out", "working directory (networks and states)")
flags.DEFINE_integer("repeats", 3, "formation repeats per matching method")
flags.DEFINE_integer("rounds", 2, "optimization rounds")
flags.DEFINE_integer("passes", 1, "passes per round (the original: 10; the loop then starts 10 processes per pass)")
flags.DEFINE_integer("iter", 32, "steps per task per pass")
flags.DEFINE_integer("pretrain_iter", 500, "pretraining steps of the synthetic networks")
FLAGS = flags.FLAGS

def formation(state_dir: Path, folders, matching: str):
    from weightsep.pipeline import Options, Session, form_all
    from weightsep.store import Store
    from weightsep.tasks import load_task
    shutil.rmtree(state_dir, ignore_errors=True)
    store = Store(state_dir)
    with store.writer():
        steps = form_all(Session(store, Options(data="synthetic", matching=matching)),
                         [load_task(folders[name]) for name in TASKS], 0, log=lambda *_: None)
    seconds = {k: sum(step.added.seconds[k] for step in steps) for k in ("fisher", "separation", "matching")}
    return seconds, sum(step.added.matching_cost for step in steps)


def run_script(env_extra: dict, state_dir: Path, folders) -> tuple[float, dict]:
    env = dict(os.environ, TASKS=" ".join(str(folders[t]) for t in TASKS), PYTHONUNBUFFERED="1", **env_extra)
    cmd = [str(REPO / "optimization.sh"), "-data=synthetic", f"-state_dir={state_dir}",
           f"-rounds={FLAGS.rounds}", f"-passes={FLAGS.passes}", f"-iter={FLAGS.iter}"]
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - start
    last = out.rsplit(f"{FLAGS.rounds}-th evaluation", 1)[1]
    accs = dict(re.findall(r"^(\S+) inference accuracy: ([0-9.]+)$", last, re.M))
    return wall, accs


def main(argv):
    out = Path(FLAGS.out).resolve()
    print(f"machine: {machine()}")
    print("pretraining the ten synthetic networks (once; kept in", out / "networks", ")")
    folders = pretrained_tasks(out / "networks", TASKS, FLAGS.pretrain_iter)

    rows = {}
    for matching in ("greedy", "optimal"):
        runs = [formation(out / f"state_{matching}", folders, matching) for _ in range(FLAGS.repeats)]
        rows[matching] = ({k: median([r[0][k] for r in runs]) for k in runs[0][0]}, runs[0][1])
        assert all(r[1] == runs[0][1] for r in runs), "matching cost must be deterministic"
    print()
    print(f"formation of 10 synthetic tasks, median of {FLAGS.repeats} runs (seconds, all tasks):")
    print("| matching | Fisher (s) | separation (s) | matching (s) | total matching cost |")
    print("|---|---:|---:|---:|---:|")
    for matching, (sec, cost) in rows.items():
        print(f"| {matching} | {sec['fisher']:.2f} | {sec['separation']:.3f} | {sec['matching']:.3f} | {cost:.4f} |")

    base = out / "state_greedy"
    timings = {}
    for label, env in (("in-process (-mode=o)", {}), ("process per step (WS_LOOP=1)", {"WS_LOOP": "1"})):
        state = out / f"opt_{'loop' if env else 'inproc'}"
        shutil.rmtree(state, ignore_errors=True)
        shutil.copytree(base, state)
        timings[label] = run_script(env, state, folders)
        print(f"{label}: {timings[label][0]:.1f} s")
    (inproc, acc_a), (loop, acc_b) = timings.values()
    print()
    print(f"optimization, {FLAGS.rounds} rounds x {FLAGS.passes} passes x {FLAGS.iter} steps x 10 tasks "
          f"(whole command, wall time):")
    print("| mode | wall time (s) |")
    print("|---|---:|")
    for label, (wall, _) in timings.items():
        print(f"| {label} | {wall:.1f} |")
    print(f"ratio: {loop / inproc:.1f}x; final accuracies identical: {acc_a == acc_b} "
          f"({len(acc_a)} tasks)")
    if acc_a != acc_b:
        print("differences:", {k: (acc_a.get(k), acc_b.get(k)) for k in set(acc_a) | set(acc_b)
                                if acc_a.get(k) != acc_b.get(k)})


if __name__ == "__main__":
    app.run(main)
