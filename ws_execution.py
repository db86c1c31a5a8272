#!/usr/bin/env python3
"""Multitask DNN execution with weight separation: the switch benchmark of the original.

Runs -num_execution random tasks of the separated state in -state_dir.  A switch brings in the
task's exclusive pages from level 2 (-secondary=disk: read from the store's exclusive file(s);
host: kept in RAM) and gathers its weights over the resident shared pool: on a CPU with NumPy
straight into the buffer the compiled inference reads (-gather=numpy), or with one PageGather
custom-op call (-gather=op, the GPU default; PageGatherQuantized(Mixed) for int8 (int4) states).
Prints per-switch and total weight load and execution times in the original's format.

  python ws_execution.py -state_dir=. -num_execution=50 -seed=0
"""

from __future__ import annotations

from absl import app, flags

from weightsep import cli
from weightsep.cli import EXECUTION_BOUNDS, check_flags, define_execution_flags, execution_specs, main_of
from weightsep.limits import DEFAULT_GATHER, GATHERS, SECONDARIES

FLAGS = flags.FLAGS
define_execution_flags()
flags.adopt_module_key_flags(cli)  # -help lists the shared flags too, not only this script's own

flags.DEFINE_enum("secondary", None, list(SECONDARIES),
                  "level-2 memory of the exclusive pages (default: disk on a CPU, host with a GPU)")
flags.DEFINE_enum("gather", DEFAULT_GATHER, list(GATHERS),
                  "how a switch gathers the pages: numpy (CPU default) into the buffer the inference reads, "
                  "op: one PageGather custom-op call (GPU default), tf: compiled tf.gather")


def run():
    check_flags(FLAGS, EXECUTION_BOUNDS)
    from weightsep.runtime import WSRuntime, run_executions
    with WSRuntime(FLAGS.state_dir, device=FLAGS.device, secondary=FLAGS.secondary, gather=FLAGS.gather,
                   data=FLAGS.data, data_seed=FLAGS.data_seed, batch_size=FLAGS.batch_size,
                   specs=execution_specs()) as runtime:
        run_executions(runtime, FLAGS.num_execution, FLAGS.seed)


if __name__ == "__main__":
    app.run(main_of(run))
