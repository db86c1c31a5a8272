"""Task networks: build the Keras model of a spec, see it as one flat weight vector,
save and load it, and import the original TensorFlow 1 checkpoints.

The network vector ``w`` is the model's trainable variables flattened in model
order (kernel, bias, kernel, bias, ...), the same order as the original graphs'
``weight_0, bias_0, weight_1, ...``.  Everything downstream (Fisher, pages,
separation, training) works on that vector, so a spec's custom ``build_model()``
works as well as the declarative layer list.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from weightsep.atomic import write_bytes
from weightsep.errors import WeightSepError, command
from weightsep.tasks import TaskSpec

from weightsep.tf import keras, tf

LEAKY_SLOPE = 0.2

# Orders of the weights in the network vector.  "natural": each variable flattened in its own
# layout (conv [kh, kw, in, out], dense [in, out]), the order of the graphs.  "transposed": the
# original's -transpose=1, the layout of microcontroller kernels: conv kernels as
# [out, in, kh, kw], dense kernels as [out, in], and the first dense layer after the
# convolutions reading its input channel-first ([out, C, H, W]); biases unchanged.
LAYOUTS = ("natural", "transposed")


def build_model(task: TaskSpec) -> keras.Model:
    """The Keras model of a task: the spec's own build_model(), or the layer list.

    Layer list (docs/NETWORKS.md): each conv is stride 1, VALID, with bias, then
    LeakyReLU(0.2) and 2x2/2 VALID max-pool; flatten (NHWC order, as the original
    reshape); hidden dense layers with the spec's activation; a linear output layer and a
    separate softmax layer, so that the logits are reachable (the original's training loss
    normalizes them over the whole batch, see training.py).
    """
    if task.build_model is not None:
        model = task.build_model()
        _check_custom_model(task, model)
        return model
    layers = [keras.Input(shape=task.input_shape, name="neuron_0")]
    channels = task.input_shape[2]
    for i, (kh, kw, filters) in enumerate(task.conv):
        conv = (RowToeplitzConv2D if channels == 1 and kh * kw >= TOEPLITZ_MIN_KERNEL else keras.layers.Conv2D)
        channels = filters
        layers += [
            conv(filters, (kh, kw), padding="valid", name=f"conv_{i}"),
            keras.layers.LeakyReLU(LEAKY_SLOPE),
            keras.layers.MaxPool2D(pool_size=2, strides=2, padding="valid"),
        ]
    layers.append(keras.layers.Flatten())
    for i, units in enumerate(task.dense):
        if task.dense_activation == "sigmoid":
            layers.append(keras.layers.Dense(units, activation="sigmoid", name=f"dense_{i}"))
        else:
            layers += [keras.layers.Dense(units, name=f"dense_{i}"), keras.layers.LeakyReLU(LEAKY_SLOPE)]
    layers += [keras.layers.Dense(task.num_classes, name="output"), keras.layers.Softmax(name="softmax")]
    return keras.Sequential(layers, name=task.name)


# A one-channel convolution with a kernel of at least this many taps runs as RowToeplitzConv2D.
TOEPLITZ_MIN_KERNEL = 128


class RowToeplitzConv2D(keras.layers.Layer):
    """A stride-1 VALID convolution of a one-channel input, computed as one matrix product.

    The same function and variables as keras.layers.Conv2D (kernel [kh, kw, 1, filters], bias
    [filters], the same initializers), for the layers where Conv2D is slow: a large kernel over
    one input channel (obs's 12 x 24 first convolution).  There the direct convolution and its
    filter gradient are memory-bound; here the kh input rows under each output row are laid side
    by side ([B * Ho, kh * W]) and multiplied by a banded matrix built from the kernel
    ([kh * W, Wo * filters], each column the kernel shifted to one output column), so forward
    and gradient are plain matrix products over data kh times the input's size.
    """

    def __init__(self, filters: int, kernel_size: tuple[int, int], padding: str = "valid", **kwargs):
        super().__init__(**kwargs)
        if padding != "valid":
            raise ValueError("RowToeplitzConv2D computes VALID convolutions only")
        self.filters, self.kernel_size = int(filters), tuple(int(k) for k in kernel_size)

    def build(self, input_shape):
        _, height, width, channels = input_shape
        kh, kw = self.kernel_size
        if channels != 1:
            raise ValueError(f"RowToeplitzConv2D needs one input channel, got {channels}")
        self.kernel = self.add_weight(shape=(kh, kw, 1, self.filters), initializer="glorot_uniform", name="kernel")
        self.bias = self.add_weight(shape=(self.filters,), initializer="zeros", name="bias")
        self._out_hw = (height - kh + 1, width - kw + 1)
        # band[r * W + col, j * F + f] = kernel[r, col - j, 0, f] when 0 <= col - j < kw, else 0
        # (index kh * kw * F: a zero appended to the flattened kernel).
        out_w, f = self._out_hw[1], self.filters
        r, col = np.arange(kh)[:, None, None, None], np.arange(width)[None, :, None, None]
        j, c = np.arange(out_w)[None, None, :, None], np.arange(f)[None, None, None, :]
        shift = col - j
        band = np.where((shift >= 0) & (shift < kw), (r * kw + np.clip(shift, 0, kw - 1)) * f + c, kh * kw * f)
        self._band = band.reshape(kh * width, out_w * f).astype(np.int32)

    def call(self, x):
        kh, _ = self.kernel_size
        out_h, out_w = self._out_hw
        taps = tf.concat([tf.reshape(self.kernel, [-1]), tf.zeros([1], self.kernel.dtype)], axis=0)
        band = tf.gather(taps, self._band)
        rows = tf.concat([x[:, r:r + out_h, :, 0] for r in range(kh)], axis=-1)  # [B, Ho, kh * W]
        y = tf.matmul(tf.reshape(rows, [-1, rows.shape[-1]]), band)
        return tf.reshape(y, [-1, out_h, out_w, self.filters]) + self.bias

    def compute_output_shape(self, input_shape):
        kh, kw = self.kernel_size
        return (input_shape[0], input_shape[1] - kh + 1, input_shape[2] - kw + 1, self.filters)


def _check_custom_model(task: TaskSpec, model) -> None:
    if not isinstance(model, keras.Model):
        raise WeightSepError(f"task {task.name}: build_model() must return a keras.Model, got {type(model).__name__}")
    if tuple(model.input_shape[1:]) != tuple(task.input_shape):
        raise WeightSepError(
            f"task {task.name}: build_model() input shape {model.input_shape[1:]} != spec {task.input_shape}")
    if model.output_shape[-1] != task.num_classes:
        raise WeightSepError(
            f"task {task.name}: build_model() has {model.output_shape[-1]} outputs, spec says {task.num_classes} classes")


def _logits_model(model: keras.Model) -> keras.Model | None:
    """The same network up to its softmax, sharing the variables; None when the last layer is
    not a separate softmax (a custom model whose last Dense applies the softmax itself)."""
    last = model.layers[-1] if model.layers else None
    is_softmax = isinstance(last, keras.layers.Softmax) or (
        isinstance(last, keras.layers.Activation) and getattr(last.activation, "__name__", "") == "softmax")
    if not is_softmax:
        return None
    try:
        return keras.Model(model.inputs[0], last.input)
    except (ValueError, AttributeError, TypeError):  # a subclassed model has no graph to cut
        return None


def vector_order(model: keras.Model, layout: str) -> np.ndarray | None:
    """Indices that reorder the natural network vector into ``layout`` (None for natural).

    ``w_layout = w_natural[order]``.  For "transposed", a dense kernel whose variable two places
    earlier is a conv kernel reads the flattened feature map (H, W, C) channel-first.
    """
    if layout not in LAYOUTS:
        raise WeightSepError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if layout == "natural":
        return None
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    parts, offset = [], 0
    for i, shape in enumerate(shapes):
        index = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape) + offset
        offset += index.size
        if len(shape) == 4:
            index = index.transpose(3, 2, 0, 1)
        elif len(shape) == 2:
            index = index.T
            if len(shapes) > 1 and len(shapes[i - 2]) >= 4:
                h, w, c = _flattened_feature_map(model, shape[0])
                index = index.reshape(shape[1], h, w, c).transpose(0, 3, 1, 2)
        parts.append(index.ravel())
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _flattened_feature_map(model: keras.Model, size: int) -> tuple[int, int, int]:
    for layer in model.layers:
        if isinstance(layer, keras.layers.Flatten):
            shape = tuple(layer.input.shape[1:])
            if len(shape) == 3 and int(np.prod(shape)) == size:
                return shape
    raise WeightSepError(f"model {model.name}: -transpose=1 needs a Flatten layer whose (H, W, C) input "
                         f"has the {size} features of the first dense layer")


class Network:
    """A task's model viewed as one flat float32 weight vector.

    ``forward(w, x)`` runs the model with the weights ``w`` given as a tensor, with no
    variable assignment (Keras 3 stateless call), so it can sit inside gradients,
    per-example Jacobians and compiled switch functions.  The vector's order is the
    network's ``layout`` (LAYOUTS); every method takes and returns vectors in that order.
    """

    def __init__(self, task: TaskSpec, model: keras.Model | None = None, layout: str = "natural"):
        self.task = task
        self.model = model if model is not None else build_model(task)
        self.layout = layout
        self.shapes = [tuple(v.shape) for v in self.model.trainable_variables]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.num_weights = int(sum(self.sizes))
        self._non_trainable = [v.value for v in self.model.non_trainable_variables]
        self._logits = _logits_model(self.model)
        self._order = vector_order(self.model, layout)
        self._natural = None if self._order is None else np.argsort(self._order)

    @property
    def variable_names(self) -> list[str]:
        return [v.path for v in self.model.trainable_variables]

    @property
    def has_logits(self) -> bool:
        return self._logits is not None

    def get_vector(self) -> np.ndarray:
        w = np.concatenate([np.asarray(v.numpy(), np.float32).ravel() for v in self.model.trainable_variables])
        return w if self._order is None else w[self._order]

    def set_vector(self, w) -> None:
        w = np.asarray(w, np.float32)
        if w.shape != (self.num_weights,):
            raise WeightSepError(
                f"task {self.task.name}: weight vector has shape {w.shape}, the network needs ({self.num_weights},)")
        if self._natural is not None:
            w = w[self._natural]
        for var, part in zip(self.model.trainable_variables, np.split(w, np.cumsum(self.sizes)[:-1])):
            var.assign(part.reshape(var.shape))

    def unflatten(self, w: tf.Tensor) -> list[tf.Tensor]:
        w = w[: self.num_weights]
        if self._natural is not None:
            w = tf.gather(w, self._natural)
        parts = tf.split(w, self.sizes)
        return [tf.reshape(p, s) for p, s in zip(parts, self.shapes)]

    def forward(self, w: tf.Tensor, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Class probabilities of the network with flat weights ``w`` on inputs ``x``."""
        probs, _ = self.model.stateless_call(self.unflatten(w), self._non_trainable, x, training=training)
        return probs

    def logits_model(self) -> keras.Model:
        """The model up to its final softmax, sharing this model's variables (see has_logits)."""
        if self._logits is None:
            raise WeightSepError(
                f"task {self.task.name}: its model does not end with a separate softmax layer, so its logits "
                f"are out of reach; end build_model() with keras.layers.Softmax(), or use -loss=per_example")
        return self._logits

    def logits(self, w: tf.Tensor, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        """The inputs of the final softmax for flat weights ``w``."""
        z, _ = self.logits_model().stateless_call(self.unflatten(w), self._non_trainable, x, training=training)
        return z

    def predict(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Probabilities of the model's current weights, in batches."""
        out = [self.model(x[i:i + batch_size], training=False) for i in range(0, len(x), batch_size)]
        return np.concatenate([np.asarray(o) for o in out]) if out else np.zeros((0, self.task.num_classes), np.float32)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        if not len(y):
            raise WeightSepError(f"task {self.task.name}: no examples to evaluate")
        return float(np.mean(np.argmax(self.predict(x), axis=1) == y))

    def summary_lines(self) -> list[str]:
        """One line per trainable variable: name, shape, count (the -mode=v listing)."""
        lines = [f"{i:2d} {name:<28s} {str(shape):<22s} {size:>8d}"
                 for i, (name, shape, size) in enumerate(zip(self.variable_names, self.shapes, self.sizes))]
        lines.append(f"total {self.num_weights} weights")
        return lines

    def layer_list(self) -> list[list[int]]:
        """The original's -mode=n listing: [kh, kw, in, out] per conv kernel, [units] per dense kernel."""
        return [list(s) if len(s) == 4 else [s[1]] for s in self.shapes if len(s) in (2, 4)]


# --- the network file ---------------------------------------------------------------

def network_file(task: TaskSpec) -> Path:
    """Where a task's trained network lives: <task folder>/<task>.weights.h5 (Keras weights file)."""
    return task.path(f"{task.name}.weights.h5")


def save_network(net: Network, path: Path | None = None) -> Path:
    """Save the network's weights atomically; non-finite weights are refused (the old file stays)."""
    path = Path(path or network_file(net.task))
    bad = int(np.count_nonzero(~np.isfinite(net.get_vector())))
    if bad:
        raise WeightSepError(f"refusing to save {path}: {bad} of the {net.num_weights} weights of "
                             f"{net.task.name} are NaN or infinite (training diverged; lower -lr); "
                             f"the existing file is unchanged")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keras writes only to a path; it writes to a private scratch file, whose bytes then go
    # through the project's one atomic writer.
    with tempfile.TemporaryDirectory(prefix="weightsep-net-") as scratch:
        scratch_file = Path(scratch) / f"{net.task.name}.weights.h5"
        net.model.save_weights(str(scratch_file), overwrite=True)
        write_bytes(path, scratch_file.read_bytes())
    return path


def _file_shapes(path: Path) -> list[tuple]:
    """Shapes of the arrays in a Keras weights file, in file order ([] when unreadable)."""
    import h5py
    shapes = []
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda _, obj: shapes.append(tuple(obj.shape)) if isinstance(obj, h5py.Dataset) else None)
    except (OSError, ValueError):
        return []
    return shapes


def load_network(task: TaskSpec, path: Path | None = None, layout: str = "natural") -> Network:
    """Build the task's model and restore its saved weights; errors name the file and the fix."""
    path = Path(path or network_file(task))
    folder = str(task.folder) if task.folder is not None else task.name
    pretrain = command("WeightSeparation.py", "-mode=pretrain", f"-network_path={folder}")
    if not path.is_file():
        raise WeightSepError(
            f"no trained network for task {task.name}: {path} is missing; run {pretrain} "
            f"(add -data=synthetic for the offline data) or -mode=import an original checkpoint")
    net = Network(task, layout=layout)
    try:
        net.model.load_weights(str(path))
    except Exception:  # h5py/keras raise many types, with messages that dump whole arrays
        found = _file_shapes(path)
        if not found:
            raise WeightSepError(f"cannot load network file {path} for task {task.name}: it is not a Keras "
                                 f"weights file (corrupt or truncated); delete it and run {pretrain} (or -mode=import)") from None
        raise WeightSepError(
            f"network file {path} does not fit task {task.name}: it holds arrays of shapes "
            f"{', '.join(str(s) for s in found)}, the model needs {', '.join(str(s) for s in net.shapes)}; "
            f"it belongs to another network: run {pretrain} (or -mode=import)") from None
    bad = int(np.count_nonzero(~np.isfinite(net.get_vector())))
    if bad:
        raise WeightSepError(f"network file {path} holds {bad} non-finite weights; run {pretrain}")
    return net


# --- import of the original TensorFlow 1 checkpoints --------------------------------

ORIGINAL_REPOSITORY = "https://github.com/weight-separation/WeightSeparation"

def _checkpoint_prefix(folder: Path, name: str) -> Path:
    prefix = Path(folder) / name
    missing = [str(prefix) + ext for ext in (".meta", ".index", ".data-00000-of-00001")
               if not Path(str(prefix) + ext).is_file()]
    if missing:
        raise WeightSepError(
            f"original checkpoint of {name} is incomplete: missing {', '.join(missing)} "
            f"(expected {name}.meta, {name}.index, {name}.data-00000-of-00001 in {folder}); the authors' "
            f"checkpoints are in the task folders of {ORIGINAL_REPOSITORY}: git clone it, then "
            f"{command('WeightSeparation.py', '-mode=import', f'-network_path=WeightSeparation/{name}')}")
    return prefix


# The only operations the probe check may run from an imported graph: pure math on the inputs
# and on the checkpoint's values (turned into constants).  A graph is a program (TensorFlow can
# read and write files, run Python); the import never runs the checkpoint's own restore ops
# and never runs anything outside this list.
PROBE_OPS = frozenset("""
    Add AddN AddV2 BiasAdd Cast ConcatV2 Const Conv2D Div Equal Exp ExpandDims Fill Floor FloorDiv
    Greater GreaterEqual Identity LeakyRelu Less LessEqual Log MatMul Max MaxPool Maximum Mean Min
    Minimum Mul Neg OnesLike Pack Placeholder PlaceholderWithDefault Prod RandomUniform Range
    RealDiv Relu Reshape Rsqrt Select SelectV2 Shape Sigmoid Size Softmax Sqrt Square Squeeze
    StopGradient StridedSlice Sub Sum Tanh ZerosLike
""".split())
_VARIABLE_OPS = ("VariableV2", "Variable", "VarHandleOp")


def _read_meta_graph(path: Path):
    meta = tf.compat.v1.MetaGraphDef()
    try:
        meta.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError and friends
        raise WeightSepError(f"cannot read {path} as a TF1 MetaGraph ({type(exc).__name__})") from None
    return meta


def _trainable_variable_names(meta) -> list[str]:
    """The graph's trainable variables, in graph order, from its collection (no graph is built)."""
    from tensorflow.core.framework import variable_pb2
    names = []
    for raw in meta.collection_def["trainable_variables"].bytes_list.value:
        var = variable_pb2.VariableDef()
        var.ParseFromString(raw)
        names.append(var.variable_name.split(":")[0])
    return names


def read_tf1_checkpoint(folder: Path, name: str, probe_inputs: np.ndarray | None = None):
    """Read an original TF1 checkpoint without running its graph's restore ops.

    Returns (names, values, probe_outputs): the trainable variables in graph order (names from
    the MetaGraph's collection, values from the checkpoint's data file) and, when probe_inputs
    are given and the graph has the original placeholders, the output probabilities of the
    original graph for each probe input fed one at a time (the original softmax normalizes over
    the whole batch; for one example it is the plain softmax).  For the probe only the ops that
    compute the output are kept, variables become constants, and every op must be in PROBE_OPS.
    """
    prefix = _checkpoint_prefix(folder, name)
    meta = _read_meta_graph(Path(str(prefix) + ".meta"))
    names = _trainable_variable_names(meta)
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        stored = reader.get_variable_to_shape_map()
    except Exception as exc:  # tf.errors.* for a corrupt index or data file
        raise WeightSepError(f"cannot read checkpoint {prefix} ({type(exc).__name__}); "
                             f"the .index or .data file is corrupt") from None
    missing = [n for n in names if n not in stored]
    if missing:
        raise WeightSepError(f"checkpoint {prefix} lacks the values of {', '.join(missing)}")
    values = [np.asarray(reader.get_tensor(n), np.float32) for n in names]
    outputs = None
    if probe_inputs is not None:
        outputs = _run_original_graph(meta.graph_def, dict(zip(names, values)), probe_inputs, len(names), prefix)
    return names, values, outputs


def _frozen_subgraph(graph_def, output: str, values: dict, prefix: Path):
    """The nodes computing ``output``, variables replaced by constants, checked against PROBE_OPS."""
    sub = tf.compat.v1.graph_util.extract_sub_graph(graph_def, [output])
    for node in sub.node:
        if node.op in _VARIABLE_OPS:
            if node.name not in values:
                raise WeightSepError(f"checkpoint {prefix}: the output depends on variable {node.name}, "
                                     f"which is not trainable; not importing it")
            value = values[node.name]
            node.op = "Const"
            node.ClearField("attr")
            node.attr["dtype"].type = tf.float32.as_datatype_enum
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
        elif node.op == "ReadVariableOp":
            node.op = "Identity"
            dtype = node.attr["dtype"].type
            node.ClearField("attr")
            node.attr["T"].type = dtype
    foreign = sorted({node.op for node in sub.node} - PROBE_OPS)
    if foreign:
        raise WeightSepError(f"checkpoint {prefix}: the graph computing {output} uses operations outside the "
                             f"allowed math ({', '.join(foreign)}); it is not run. Import only checkpoints you trust")
    return sub


def _run_original_graph(graph_def, values: dict, inputs, num_variables: int, prefix: Path):
    """Feed probe inputs through the original graph's output tensor neuron_<L>."""
    output = f"neuron_{num_variables // 2}"
    nodes = {node.name for node in graph_def.node}
    if output not in nodes or "neuron_0" not in nodes:
        return None
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(_frozen_subgraph(graph_def, output, values, prefix), name="")
        x_in = graph.get_tensor_by_name("neuron_0:0")
        out = graph.get_tensor_by_name(f"{output}:0")
        feed_extra = {graph.get_tensor_by_name(f"{n}:0"): 1.0 for n in ("keep_prob_input", "keep_prob")
                      if any(op.name == n for op in graph.get_operations())}
        rank = x_in.shape.rank
        with tf.compat.v1.Session(graph=graph) as sess:
            results = [sess.run(out, {x_in: sample.reshape(1, -1) if rank == 2 else sample[None], **feed_extra})[0]
                       for sample in inputs]
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
