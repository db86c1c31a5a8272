"""Multitask execution without weight separation: the baseline of the switch benchmark
(baseline_execution.py).  Every switch reloads the task's whole weights:

- ``baseline="checkpoint"`` (the default: the original's ``saver.restore`` of each network's
  TF1 checkpoint, in its modern form): ``tf.train.Checkpoint.restore`` of a TensorFlow
  checkpoint of the task's network, written at start-up (in a cache folder) from its network
  file.  The networks before separation, so accuracies differ from the separated ones.
- ``baseline="file"``: restore the task's own network file, ``<task folder>/<task>.weights.h5``
  (Keras 3's weights format, which the networks are stored in here), with
  ``model.load_weights``: the same networks, read through Keras' h5 loader (several times
  slower than a checkpoint restore; BENCHMARKS.md).
- ``baseline="raw"``: read the task's flat float32 vector (its separated weights, materialized
  once at start-up into a raw file in a cache folder) and write it into the model's variables in
  one compiled split-and-assign call.  Same weights and accuracies as WSRuntime: only the way
  weights are loaded differs.

It runs the same task sequence as ``weightsep.runtime.WSRuntime`` for the same seed.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from absl import logging as absl_logging

from weightsep.errors import WeightSepError
from weightsep.limits import BASELINES, DEFAULT_BASELINE
from weightsep.networks import Network, load_network, network_file
from weightsep.runtime import Log, Runtime, count_correct, load_state, pick_device, test_batches
from weightsep.tasks import TaskSpec
from weightsep.tf import tf


def _save_quietly(checkpoint, prefix: Path) -> Path:
    """checkpoint.save(prefix) without the INFO line TensorFlow logs (through absl) for each save."""
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        return Path(checkpoint.save(str(prefix)))
    finally:
        absl_logging.set_verbosity(level)


@dataclasses.dataclass
class _BaselineTask:
    net: Network
    source: Path
    infer: Callable
    batches: list
    assign: Optional[Callable] = None
    checkpoint: Optional[object] = None
    buffer: Optional[np.ndarray] = None
    fd: int = -1


class BaselineRuntime(Runtime):
    """Task switching without weight separation: a full reload of the task's weights per switch."""

    def __init__(self, state_dir=".", baseline: str = DEFAULT_BASELINE, device: str = "auto",
                 data: Optional[str] = None, data_seed: Optional[int] = None, batch_size: int = 1000,
                 cache_dir=None, specs: Optional[dict[str, TaskSpec]] = None, log: Optional[Log] = print):
        log = log or (lambda line: None)
        if baseline not in BASELINES:
            raise WeightSepError(f"-baseline must be one of {', '.join(BASELINES)}, not {baseline!r}")
        self.baseline = baseline
        self.device = pick_device(device)
        store = load_state(state_dir)
        records = sorted(store.tasks, key=lambda r: r.name)
        self._own_cache = None
        if baseline != "file":
            if cache_dir is None:
                self._own_cache = cache_dir = tempfile.mkdtemp(prefix=f"ws_baseline_{baseline}_")
            cache_dir = Path(cache_dir)
            cache_dir.mkdir(parents=True, exist_ok=True)
        if baseline == "checkpoint":
            self.description = "checkpoint: tf.train.Checkpoint restore of the task's network per switch"
            log(f"baseline checkpoint: each switch restores a TensorFlow checkpoint of the task's network "
                f"(written in {cache_dir} from <task>/<task>.weights.h5; the networks before separation, "
                f"so accuracies differ from the separated tasks')")
        elif baseline == "raw":
            self.description = "raw: one float32 read of the separated weights + one compiled assign per switch"
            log(f"baseline raw: each switch reads the task's separated weights (float32) from {cache_dir} "
                f"and assigns them in one compiled call; accuracies equal the separated tasks'")
        else:
            self.description = "file: model.load_weights of <task>/<task>.weights.h5 per switch"
            log("baseline file: each switch restores the task's own network file <task>/<task>.weights.h5 "
                "(the networks before separation; accuracies differ from the separated tasks')")
        self._tasks: dict[str, _BaselineTask] = {}
        given = specs or {}
        with tf.device(self.device):
            for index, record in enumerate(records):
                spec = record.runnable_spec(given.get(record.name))
                if baseline == "file":
                    net = load_network(spec)  # also checks the file is there and loadable
                    source = network_file(spec)
                elif baseline == "checkpoint":
                    net = load_network(spec)
                    checkpoint = tf.train.Checkpoint(model=net.model)
                    source = _save_quietly(checkpoint, cache_dir / record.name / "network")
                else:
                    net = Network(spec, layout=store.layout)
                    source = cache_dir / f"{record.name}.f32"
                    store.materialize(record.name).tofile(source)
                task = _BaselineTask(net, source, self._make_infer(net),
                                     test_batches(spec, record, data, data_seed, batch_size))
                if baseline == "checkpoint":
                    task.checkpoint = self._checked_checkpoint(checkpoint, source, net)
                if baseline == "raw":
                    task.assign = self._make_assign(net)
                    task.buffer = np.empty(net.num_weights, np.float32)
                    task.fd = os.open(source, os.O_RDONLY)
                self._tasks[record.name] = task
                log(f"[DNN {index}][{record.name}] {source}")
        self.task_names = [r.name for r in records]
        log(f"init networks {self.warm_up() * 1e3:.3f} ms ({len(self.task_names)} compiled, warmed up)")

    @staticmethod
    def _make_infer(net: Network) -> Callable:
        def correct(x, y):
            return count_correct(net.model(x, training=False), y)
        return tf.function(correct, input_signature=[
            tf.TensorSpec([None, *net.task.input_shape], tf.float32), tf.TensorSpec([None], tf.int64)])

    @staticmethod
    def _checked_checkpoint(checkpoint, source: Path, net: Network):
        """The checkpoint, once it is known to restore every variable of the network exactly."""
        saved = net.get_vector()
        net.set_vector(np.zeros_like(saved))
        try:
            checkpoint.restore(str(source)).assert_consumed()
        except AssertionError as exc:
            raise WeightSepError(f"the checkpoint {source} does not match task {net.task.name}'s network: "
                                 f"{exc}") from None
        if not np.array_equal(net.get_vector(), saved):
            raise WeightSepError(f"restoring {source} did not give back task {net.task.name}'s weights")
        return checkpoint

    @staticmethod
    def _make_assign(net: Network) -> Callable:
        variables = list(net.model.trainable_variables)

        @tf.function(input_signature=[tf.TensorSpec([net.num_weights], tf.float32)])
        def assign(w):
            for variable, part in zip(variables, net.unflatten(w)):
                variable.assign(part)
        return assign

    def _loader(self, name: str) -> Callable[[], None]:
        """A switch reloads the task's whole weights."""
        task = self._task(name)

        def load():
            if self.baseline == "checkpoint":
                task.checkpoint.restore(str(task.source))
                return
            if self.baseline == "file":
                task.net.model.load_weights(str(task.source))
                return
            size = task.buffer.nbytes
            if os.preadv(task.fd, [memoryview(task.buffer).cast("B")], 0) != size:
                raise WeightSepError(f"short read of {task.source}: the cache file changed while running")
            with tf.device(self.device):
                task.assign(task.buffer)
        return load

    def _inference(self, name: str) -> tuple[Callable, list]:
        task = self._tasks[name]
        return task.infer, task.batches

    def current_weights(self) -> np.ndarray:
        """The running task's weights in the state's layout (raw) or natural order (checkpoint, file)."""
        return self._tasks[self.current].net.get_vector()

    def _task(self, name: str) -> _BaselineTask:
        if name not in self._tasks:
            raise WeightSepError(f"task {name!r} is not in the state (tasks: {', '.join(self._tasks)})")
        return self._tasks[name]

    def close(self) -> None:
        for task in self._tasks.values():
            if task.fd >= 0:
                os.close(task.fd)
                task.fd = -1
        if self._own_cache:
            shutil.rmtree(self._own_cache, ignore_errors=True)
            self._own_cache = None
