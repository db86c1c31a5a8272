"""Task networks: build the Keras model of a spec, see it as one flat weight vector,
save and load it, and import the original TensorFlow 1 checkpoints.

The network vector ``w`` is the model's trainable variables flattened in model
order (kernel, bias, kernel, bias, ...), the same order as the original graphs'
``weight_0, bias_0, weight_1, ...``.  Everything downstream (Fisher, pages,
separation, training) works on that vector, so a spec's custom ``build_model()``
works as well as the declarative layer list.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from weightsep.errors import WeightSepError
from weightsep.tasks import TaskSpec

from weightsep.tf import keras, tf

LEAKY_SLOPE = 0.2


def build_model(task: TaskSpec) -> keras.Model:
    """The Keras model of a task: the spec's own build_model(), or the layer list.

    Layer list (ARCHITECTURES.md): each conv is stride 1, VALID, with bias, then
    LeakyReLU(0.2) and 2x2/2 VALID max-pool; flatten (NHWC order, as the original
    reshape); hidden dense layers with the spec's activation; a softmax output.
    """
    if task.build_model is not None:
        model = task.build_model()
        _check_custom_model(task, model)
        return model
    hidden_act = "sigmoid" if task.dense_activation == "sigmoid" else keras.layers.LeakyReLU(LEAKY_SLOPE)
    layers = [keras.Input(shape=task.input_shape, name="neuron_0")]
    for i, (kh, kw, filters) in enumerate(task.conv):
        layers += [
            keras.layers.Conv2D(filters, (kh, kw), padding="valid", name=f"conv_{i}"),
            keras.layers.LeakyReLU(LEAKY_SLOPE),
            keras.layers.MaxPool2D(pool_size=2, strides=2, padding="valid"),
        ]
    layers.append(keras.layers.Flatten())
    for i, units in enumerate(task.dense):
        act = hidden_act if isinstance(hidden_act, str) else None
        layers.append(keras.layers.Dense(units, activation=act, name=f"dense_{i}"))
        if act is None:
            layers.append(keras.layers.LeakyReLU(LEAKY_SLOPE))
    layers.append(keras.layers.Dense(task.num_classes, activation="softmax", name="output"))
    return keras.Sequential(layers, name=task.name)


def _check_custom_model(task: TaskSpec, model) -> None:
    if not isinstance(model, keras.Model):
        raise WeightSepError(f"task {task.name}: build_model() must return a keras.Model, got {type(model).__name__}")
    if tuple(model.input_shape[1:]) != tuple(task.input_shape):
        raise WeightSepError(
            f"task {task.name}: build_model() input shape {model.input_shape[1:]} != spec {task.input_shape}")
    if model.output_shape[-1] != task.num_classes:
        raise WeightSepError(
            f"task {task.name}: build_model() has {model.output_shape[-1]} outputs, spec says {task.num_classes} classes")


class Network:
    """A task's model viewed as one flat float32 weight vector.

    ``forward(w, x)`` runs the model with the weights ``w`` given as a tensor, with no
    variable assignment (Keras 3 stateless call), so it can sit inside gradients,
    per-example Jacobians and compiled switch functions.
    """

    def __init__(self, task: TaskSpec, model: keras.Model | None = None):
        self.task = task
        self.model = model if model is not None else build_model(task)
        self.shapes = [tuple(v.shape) for v in self.model.trainable_variables]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.num_weights = int(sum(self.sizes))
        self._non_trainable = [v.value for v in self.model.non_trainable_variables]

    @property
    def variable_names(self) -> list[str]:
        return [v.path for v in self.model.trainable_variables]

    def get_vector(self) -> np.ndarray:
        return np.concatenate([np.asarray(v.numpy(), np.float32).ravel() for v in self.model.trainable_variables])

    def set_vector(self, w) -> None:
        w = np.asarray(w, np.float32)
        if w.shape != (self.num_weights,):
            raise WeightSepError(
                f"task {self.task.name}: weight vector has shape {w.shape}, the network needs ({self.num_weights},)")
        for var, part in zip(self.model.trainable_variables, self.unflatten_np(w)):
            var.assign(part)

    def unflatten_np(self, w: np.ndarray) -> list[np.ndarray]:
        parts = np.split(np.asarray(w), np.cumsum(self.sizes)[:-1])
        return [p.reshape(s) for p, s in zip(parts, self.shapes)]

    def unflatten(self, w: tf.Tensor) -> list[tf.Tensor]:
        parts = tf.split(w[: self.num_weights], self.sizes)
        return [tf.reshape(p, s) for p, s in zip(parts, self.shapes)]

    def forward(self, w: tf.Tensor, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Class probabilities of the network with flat weights ``w`` on inputs ``x``."""
        probs, _ = self.model.stateless_call(self.unflatten(w), self._non_trainable, x, training=training)
        return probs

    def predict(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Probabilities of the model's current weights, in batches."""
        out = [self.model(x[i:i + batch_size], training=False) for i in range(0, len(x), batch_size)]
        return np.concatenate([np.asarray(o) for o in out]) if out else np.zeros((0, self.task.num_classes), np.float32)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(np.argmax(self.predict(x), axis=1) == y)) if len(y) else float("nan")

    def summary_lines(self) -> list[str]:
        """One line per trainable variable: name, shape, count (the -mode=n listing)."""
        lines = [f"{i:2d} {name:<28s} {str(shape):<22s} {size:>8d}"
                 for i, (name, shape, size) in enumerate(zip(self.variable_names, self.shapes, self.sizes))]
        lines.append(f"total {self.num_weights} weights")
        return lines


# --- the network file ---------------------------------------------------------------

def network_file(task: TaskSpec) -> Path:
    """Where a task's trained network lives: <task folder>/<task>.weights.h5 (Keras weights file)."""
    return task.path(f"{task.name}.weights.h5")


def save_network(net: Network, path: Path | None = None) -> Path:
    """Save the network's weights atomically (temp file in the same folder, then rename)."""
    path = Path(path or network_file(net.task))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".weights.h5")
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; a network file is an ordinary readable file
    os.close(fd)
    try:
        net.model.save_weights(tmp, overwrite=True)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_network(task: TaskSpec, path: Path | None = None) -> Network:
    """Build the task's model and restore its saved weights; errors name the file and the fix."""
    path = Path(path or network_file(task))
    if not path.is_file():
        raise WeightSepError(
            f"no trained network for task {task.name}: {path} is missing; run "
            f"`python WeightSeparation.py -mode=pretrain -network_path={task.name}` "
            f"(add -data=synthetic for the offline data) or -mode=import an original checkpoint")
    net = Network(task)
    try:
        net.model.load_weights(str(path))
    except Exception as exc:  # h5py/keras raise many types for a bad or foreign file
        raise WeightSepError(
            f"cannot load network file {path} for task {task.name} ({type(exc).__name__}: {exc}); "
            f"it is corrupt or was saved for another architecture: re-run -mode=pretrain or -mode=import") from exc
    w = net.get_vector()
    if not np.all(np.isfinite(w)):
        raise WeightSepError(f"network file {path} holds non-finite weights; re-run -mode=pretrain")
    return net


# --- import of the original TensorFlow 1 checkpoints --------------------------------

def _checkpoint_prefix(folder: Path, name: str) -> Path:
    prefix = Path(folder) / name
    missing = [str(prefix) + ext for ext in (".meta", ".index", ".data-00000-of-00001")
               if not Path(str(prefix) + ext).is_file()]
    if missing:
        raise WeightSepError(
            f"original checkpoint of {name} is incomplete: missing {', '.join(missing)} "
            f"(expected {name}.meta, {name}.index, {name}.data-00000-of-00001 in {folder})")
    return prefix


def read_tf1_checkpoint(folder: Path, name: str, probe_inputs: np.ndarray | None = None):
    """Restore an original TF1 checkpoint in graph mode.

    Returns (names, values, probe_outputs): the trainable variables in graph order and,
    when probe_inputs are given and the graph has the original placeholders, the
    graph's output probabilities for each probe input fed one at a time (the original
    softmax normalizes over the whole batch; for one example it is the plain softmax).
    """
    prefix = _checkpoint_prefix(folder, name)
    graph = tf.Graph()
    with graph.as_default():
        try:
            saver = tf.compat.v1.train.import_meta_graph(str(prefix) + ".meta", clear_devices=True)
        except Exception as exc:
            raise WeightSepError(f"cannot read {prefix}.meta as a TF1 MetaGraph: {exc}") from exc
        variables = tf.compat.v1.trainable_variables()
        with tf.compat.v1.Session(graph=graph) as sess:
            try:
                saver.restore(sess, str(prefix))
            except Exception as exc:
                raise WeightSepError(f"cannot restore checkpoint {prefix}: {exc}") from exc
            values = [np.asarray(v, np.float32) for v in sess.run(variables)]
            outputs = None
            if probe_inputs is not None:
                outputs = _run_original_graph(graph, sess, probe_inputs, len(variables))
    names = [v.op.name for v in variables]
    return names, values, outputs


def _run_original_graph(graph, sess, inputs, num_variables):
    """Feed probe inputs through the original graph's output tensor neuron_<L>."""
    try:
        x_in = graph.get_tensor_by_name("neuron_0:0")
        out = graph.get_tensor_by_name(f"neuron_{num_variables // 2}:0")
    except KeyError:
        return None
    feed_extra = {}
    for name in ("keep_prob_input", "keep_prob"):
        try:
            feed_extra[graph.get_tensor_by_name(f"{name}:0")] = 1.0
        except KeyError:
            pass
    rank = x_in.shape.rank
    results = []
    for sample in inputs:
        feed = sample.reshape(1, -1) if rank == 2 else sample[None]
        results.append(sess.run(out, {x_in: feed, **feed_extra})[0])
    return np.stack(results)


def import_tf1_checkpoint(task: TaskSpec, folder: Path, probe_count: int = 8, tolerance: float = 1e-4) -> Network:
    """Copy an original checkpoint's values into our model for the task.

    The variables must line up one-to-one, in order and shape, with our model's
    (the original graph's order is weight_0, bias_0, weight_1, ...); nothing is copied
    otherwise.  No transform is applied: TF1 and Keras share the [kh, kw, in, out] and
    [in, out] kernel layouts.  When the graph has the original placeholders, its output
    on random probe inputs must match ours to ``tolerance``.
    """
    net = Network(task)
    rng = np.random.default_rng(0)
    probes = rng.uniform(0.0, 1.0, size=(probe_count, *task.input_shape)).astype(np.float32)
    names, values, original_out = read_tf1_checkpoint(Path(folder), task.name, probes)
    theirs = [f"{n} {tuple(v.shape)}" for n, v in zip(names, values)]
    ours = [f"{n} {s}" for n, s in zip(net.variable_names, net.shapes)]
    if len(values) != len(net.shapes) or any(tuple(v.shape) != s for v, s in zip(values, net.shapes)):
        raise WeightSepError(
            f"checkpoint {Path(folder) / task.name} does not match the {task.name} network: "
            f"checkpoint has [{'; '.join(theirs)}], our model has [{'; '.join(ours)}]")
    for var, value in zip(net.model.trainable_variables, values):
        var.assign(value)
    if original_out is not None:
        diff = float(np.max(np.abs(net.predict(probes) - original_out)))
        if not diff <= tolerance:
            raise WeightSepError(
                f"checkpoint {Path(folder) / task.name}: shapes match but the original graph's output differs "
                f"from our {task.name} model by {diff:.3g} (> {tolerance}); the architecture in "
                f"{task.folder}/task.py does not reproduce the original (activations, pooling, flatten order)")
    return net
