#!/usr/bin/env python3
"""Multitask DNN execution without weight separation: the baseline of the switch benchmark.

Runs the same random task sequence as ws_execution.py (same -seed); every switch reloads the
task's whole weights:
  -baseline=checkpoint  (the default; the original's saver.restore) tf.train.Checkpoint restore of
                  the task's network, checkpointed at start-up from <task>/<task>.weights.h5: the
                  networks before separation, so accuracies differ from ws_execution.py's;
  -baseline=file  restore the network file <task>/<task>.weights.h5 itself (Keras' h5 loader);
  -baseline=raw   read the task's separated weights as one raw float32 file and assign them in
                  one compiled call: same weights as ws_execution.py.

  python baseline_execution.py -state_dir=. -num_execution=50 -seed=0
"""

from __future__ import annotations

from absl import app, flags

from weightsep import cli
from weightsep.cli import EXECUTION_BOUNDS, check_flags, define_execution_flags, execution_specs, main_of
from weightsep.limits import BASELINES, DEFAULT_BASELINE

FLAGS = flags.FLAGS
define_execution_flags()
flags.adopt_module_key_flags(cli)  # -help lists the shared flags too, not only this script's own

flags.DEFINE_enum("baseline", DEFAULT_BASELINE, list(BASELINES),
                  "checkpoint: restore a TF checkpoint of each task's network (the original's saver.restore); "
                  "file: load its .weights.h5 file; raw: read its separated weights as raw float32")


def run():
    check_flags(FLAGS, EXECUTION_BOUNDS)
    from weightsep.baseline import BaselineRuntime
    from weightsep.runtime import run_executions
    with BaselineRuntime(FLAGS.state_dir, baseline=FLAGS.baseline, device=FLAGS.device, data=FLAGS.data,
                         data_seed=FLAGS.data_seed, batch_size=FLAGS.batch_size,
                         specs=execution_specs()) as runtime:
        run_executions(runtime, FLAGS.num_execution, FLAGS.seed)


if __name__ == "__main__":
    app.run(main_of(run))
