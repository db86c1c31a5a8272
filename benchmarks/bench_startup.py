#!/usr/bin/env python3
"""Start-up of the command line: how long WeightSeparation.py takes to answer a usage error,
-help and -mode=l (which need no TensorFlow), against a mode that imports TensorFlow.
Median of -repeats runs of each command, as whole processes.

  .venv/bin/python benchmarks/bench_startup.py [-state_dir=<a state for -mode=l>] [-repeats=11]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from absl import app, flags  # noqa: E402

from benchmarks.common import REPO, machine  # noqa: E402

flags.DEFINE_string("state_dir", None, "a separated state for -mode=l (required)")
flags.DEFINE_string("task", "hhar", "task of the -mode=n run (imports TensorFlow)")
flags.DEFINE_integer("repeats", 11, "runs per command")
FLAGS = flags.FLAGS


def timed(args: list[str]) -> float:
    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "WeightSeparation.py"), *args], capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv):
    del argv
    if not FLAGS.state_dir:
        raise app.UsageError("-state_dir=<a separated state> is required (for -mode=l)")
    commands = {"-mode=zz (usage error)": ["-mode=zz"], "-help": ["-help"],
                "-mode=l (ten tasks)": [f"-state_dir={FLAGS.state_dir}"],
                "-iter=0 -mode=t (bad flag)": ["-mode=t", "-iter=0"],
                f"-mode=n -vnn_name={FLAGS.task} (imports TensorFlow)": ["-mode=n", f"-vnn_name={FLAGS.task}"]}
    lines = [f"Machine: {machine()}. Median of {FLAGS.repeats} runs, whole process.", "",
             "| command | seconds |", "|---|---:|"]
    for label, args in commands.items():
        lines.append(f"| `WeightSeparation.py {' '.join(args)}` ({label}) | {timed(args):.3f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
