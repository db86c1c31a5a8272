#!/usr/bin/env python3
"""Multitask DNN execution with weight separation: the switch benchmark of the original.

Runs -num_execution random tasks of the separated state in -state_dir.  A switch
brings in the task's exclusive pages from level 2 (-secondary=disk: read from
exclusive_weight_page.npy; host: kept in RAM) and builds its weights with one
PageGather call over the resident shared pool.  Prints per-switch and total weight
load and execution times in the original's format.

  python ws_execution.py -state_dir=. -num_execution=50 -seed=0
"""

from __future__ import annotations

from absl import app, flags

from weightsep.cli import main_of

FLAGS = flags.FLAGS

flags.DEFINE_string("state_dir", ".", "where the separated state lives")
flags.DEFINE_integer("num_execution", 50, "how many random tasks to switch to and run")
flags.DEFINE_integer("seed", 0, "seed of the random task sequence (same sequence as baseline_execution.py)")
flags.DEFINE_enum("device", "auto", ["auto", "cpu", "gpu"], "where the shared pool and the networks run")
flags.DEFINE_enum("secondary", None, ["disk", "host"],
                  "level-2 memory of the exclusive pages (default: disk on a CPU, host with a GPU)")
flags.DEFINE_enum("data", None, ["real", "synthetic"], "test data (default: what each task was added with)")
flags.DEFINE_integer("data_seed", 0, "seed of the synthetic data (the -seed the state was built with)")
flags.DEFINE_integer("batch_size", 1000, "inference batch size")


def run():
    from weightsep.runtime import WSRuntime, run_executions
    with WSRuntime(FLAGS.state_dir, device=FLAGS.device, secondary=FLAGS.secondary, data=FLAGS.data,
                   data_seed=FLAGS.data_seed, batch_size=FLAGS.batch_size) as runtime:
        run_executions(runtime, FLAGS.num_execution, FLAGS.seed)


if __name__ == "__main__":
    app.run(main_of(run))
