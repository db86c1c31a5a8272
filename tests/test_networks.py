"""The ten networks match docs/NETWORKS.md exactly; the flat-vector view is lossless; the logits,
the row-Toeplitz convolution, the original's transposed layout and the network files."""

import numpy as np
import pytest

from conftest import write_custom_task, write_task_folder
from weightsep.errors import WeightSepError
from weightsep.networks import Network, RowToeplitzConv2D, load_network, save_network
from weightsep.tasks import PAPER_TASKS, list_tasks, load_task
from weightsep.tf import keras, tf

# The table of docs/NETWORKS.md, typed in independently of the task specs:
# input (H, W, C), conv (kh, kw, out), dense units, classes, flattened size, weights.
TABLE = {
    "cifar10": ((32, 32, 3), [(3, 3, 16), (3, 3, 32), (3, 3, 52)], [128, 128], 10, 208, 64670),
    "mnist": ((28, 28, 1), [(3, 3, 16), (3, 3, 32), (3, 3, 48)], [256, 128], 10, 48, 65402),
    "fmnist": ((28, 28, 1), [(3, 3, 24), (3, 3, 32), (3, 3, 52)], [256, 128], 10, 52, 69966),
    "gtsrb": ((32, 32, 1), [(3, 3, 16), (3, 3, 32), (3, 3, 52)], [128, 128], 43, 208, 68639),
    "svhn": ((32, 32, 3), [(3, 3, 16), (3, 3, 32), (3, 3, 52)], [128, 128], 10, 208, 64670),
    "obs": ((45, 80, 1), [(12, 24, 8), (3, 3, 32), (3, 3, 32)], [128, 128], 4, 320, 72012),
    "gsc": ((61, 13, 1), [(12, 6, 14), (6, 3, 28)], [128, 128], 35, 280, 65101),
    "esc10": ((60, 41, 2), [(12, 6, 8), (3, 3, 16), (3, 3, 32)], [128, 64], 10, 384, 65154),
    "us8k": ((60, 41, 2), [(3, 3, 8), (3, 3, 16), (3, 3, 32)], [124], 10, 480, 66854),
    "hhar": ((20, 120, 1), [(3, 3, 8), (3, 3, 32), (2, 3, 64)], [60], 6, 832, 65114),
}


def expected_shapes(name):
    (h, w, c), convs, dense, classes, flat, _ = TABLE[name]
    shapes, cin = [], c
    for kh, kw, out in convs:
        shapes += [(kh, kw, cin, out), (out,)]
        cin = out
    din = flat
    for units in dense + [classes]:
        shapes += [(din, units), (units,)]
        din = units
    return shapes


def test_all_ten_tasks_are_found_in_paper_order():
    assert list_tasks()[:10] == list(PAPER_TASKS)


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_network_matches_the_table(name):
    net = Network(load_task(name))
    assert net.shapes == expected_shapes(name)
    assert net.num_weights == TABLE[name][-1] == load_task(name).paper_num_weights
    # The tensor entering the first dense layer has the documented flattened size.
    flatten = [layer for layer in net.model.layers if layer.__class__.__name__ == "Flatten"][0]
    assert flatten.output.shape[-1] == TABLE[name][4]


def test_total_weight_count_is_the_papers():
    assert sum(Network(load_task(name)).num_weights for name in PAPER_TASKS) == 667582


def test_vector_round_trip_and_stateless_forward_equal_the_model():
    net = Network(load_task("gsc"))
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.05, net.num_weights).astype(np.float32)
    net.set_vector(w)
    np.testing.assert_array_equal(net.get_vector(), w)
    # Model order is kernel, bias, kernel, bias ... : the first kernel's weights come first.
    np.testing.assert_array_equal(net.model.trainable_variables[0].numpy().ravel(), w[:12 * 6 * 14])
    x = rng.uniform(0, 1, (5, 61, 13, 1)).astype(np.float32)
    np.testing.assert_allclose(net.forward(w, x).numpy(), net.model(x).numpy(), rtol=1e-6, atol=1e-7)
    probs = net.predict(x)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_leaky_relu_slope_and_sigmoid_hidden_layers():
    # cifar10 uses sigmoid hidden dense layers, mnist leaky ReLU (alpha 0.2) everywhere.
    cifar = Network(load_task("cifar10")).model
    dense = [layer for layer in cifar.layers if layer.name.startswith("dense_")]
    assert all(layer.activation.__name__ == "sigmoid" for layer in dense)
    mnist = Network(load_task("mnist")).model
    leaky = [layer for layer in mnist.layers if layer.__class__.__name__ == "LeakyReLU"]
    assert len(leaky) == 3 + 2 and all(abs(layer.negative_slope - 0.2) < 1e-9 for layer in leaky)
    pools = [layer for layer in mnist.layers if layer.__class__.__name__ == "MaxPooling2D"]
    assert [(p.pool_size, p.strides, p.padding) for p in pools] == [((2, 2), (2, 2), "valid")] * 3


def test_custom_build_model_spec(tmp_path):
    folder = write_custom_task(tmp_path, "mlp", (4, 4, 1), 3, "keras.layers.Flatten(), "
                               "keras.layers.Dense(5, activation='tanh'), keras.layers.Dense(3, activation='softmax')")
    net = Network(load_task(folder))
    assert net.num_weights == 16 * 5 + 5 + 5 * 3 + 3
    w = np.arange(net.num_weights, dtype=np.float32) / 100
    net.set_vector(w)
    x = np.ones((2, 4, 4, 1), np.float32)
    np.testing.assert_allclose(net.forward(w, x).numpy(), net.model(x).numpy(), rtol=1e-6)
    # Its last Dense applies the softmax itself: no logits to normalize over the batch.
    assert not net.has_logits
    with pytest.raises(WeightSepError, match=r"mlp.*-loss=per_example"):
        net.logits(w, x)


def test_custom_model_with_wrong_output_is_rejected(tmp_path):
    folder = write_custom_task(tmp_path, "bad", (4, 4, 1), 3, "keras.layers.Flatten(), keras.layers.Dense(2)")
    with pytest.raises(WeightSepError, match="2 outputs, spec says 3 classes"):
        Network(load_task(folder))


def test_unknown_task_names_the_known_ones():
    with pytest.raises(WeightSepError, match=r"unknown task 'nosuch'.*cifar10"):
        load_task("nosuch")


def test_task_folder_and_name_must_agree(tmp_path):
    write_task_folder(tmp_path, "one", input_shape=(4, 4, 1), num_classes=2, dense=(3,))
    (tmp_path / "one").rename(tmp_path / "two")
    with pytest.raises(WeightSepError, match="declares task 'one' but lives in folder 'two'"):
        load_task(tmp_path / "two")


def test_network_file_round_trip_and_errors(tmp_path):
    folder = write_task_folder(tmp_path, "small", input_shape=(8, 8, 1), num_classes=2, conv=((3, 3, 2),),
                               dense=(4,))
    task = load_task(folder)
    with pytest.raises(WeightSepError, match=r"small\.weights\.h5 is missing; run .*-mode=pretrain"):
        load_network(task)
    net = Network(task)
    w = np.linspace(-1, 1, net.num_weights, dtype=np.float32)
    net.set_vector(w)
    path = save_network(net)
    assert path == folder / "small.weights.h5"
    np.testing.assert_array_equal(load_network(task).get_vector(), w)
    path.write_bytes(b"<html>not a network</html>")
    with pytest.raises(WeightSepError, match=r"cannot load network file .*small\.weights\.h5") as caught:
        load_network(task)
    assert "\n" not in str(caught.value)


def test_save_network_refuses_non_finite_weights(tmp_path):
    folder = write_task_folder(tmp_path, "small", input_shape=(8, 8, 1), num_classes=2, conv=((3, 3, 2),),
                               dense=(4,))
    net = Network(load_task(folder))
    path = save_network(net)
    before = path.read_bytes()
    w = net.get_vector()
    w[5], w[-1] = np.nan, np.inf
    net.set_vector(w)
    with pytest.raises(WeightSepError, match=r"refusing to save .*small\.weights\.h5: 2 of the .* NaN or infinite"):
        save_network(net)
    assert path.read_bytes() == before


def test_loading_another_tasks_network_names_both_shape_lists(tmp_path):
    small = load_task(write_task_folder(tmp_path, "small", input_shape=(8, 8, 1), num_classes=2,
                                        conv=((3, 3, 2),), dense=(4,)))
    other = load_task(write_task_folder(tmp_path, "other", input_shape=(8, 8, 1), num_classes=5,
                                        conv=((3, 3, 3),), dense=(6,)))
    theirs = Network(other)
    theirs.set_vector(np.full(theirs.num_weights, 0.5, np.float32))
    path = save_network(theirs)
    with pytest.raises(WeightSepError) as caught:
        load_network(small, path)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 1000  # one line, no dump of weights
    assert "0.5" not in message and "does not fit task small" in message
    ours = Network(small).shapes
    assert ", ".join(str(s) for s in ours) in message       # what the model needs
    for shape in theirs.shapes:                              # what the file holds
        assert str(shape) in message
    assert str(theirs.shapes[0]) not in ", ".join(str(s) for s in ours)


# --- the output layer and its logits -----------------------------------------------------

def test_output_is_a_linear_dense_then_a_softmax_and_logits_are_its_inputs():
    net = Network(load_task("gsc"))
    dense, softmax = net.model.layers[-2:]
    assert isinstance(dense, keras.layers.Dense) and dense.activation.__name__ == "linear"
    assert isinstance(softmax, keras.layers.Softmax)
    assert net.has_logits
    rng = np.random.default_rng(4)
    w = rng.normal(0, 0.05, net.num_weights).astype(np.float32)
    x = rng.uniform(0, 1, (3, 61, 13, 1)).astype(np.float32)
    z = net.logits(w, x).numpy().astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(axis=1, keepdims=True), net.forward(w, x).numpy(), rtol=1e-6, atol=1e-6)
    # The logits are the output Dense of the last hidden layer's activations, computed here again.
    net.set_vector(w)
    hidden = keras.Model(net.model.inputs[0], net.model.layers[-3].output)(x).numpy()
    np.testing.assert_allclose(z, hidden @ dense.kernel.numpy() + dense.bias.numpy(), rtol=1e-5, atol=1e-6)


# --- RowToeplitzConv2D ---------------------------------------------------------------

def conv_pair(filters, kernel_size, input_shape, seed):
    """A RowToeplitzConv2D and a keras Conv2D holding the same random kernel and bias."""
    rng = np.random.default_rng(seed)
    ours = RowToeplitzConv2D(filters, kernel_size)
    ref = keras.layers.Conv2D(filters, kernel_size, padding="valid")
    kernel = rng.normal(0, 1, (*kernel_size, 1, filters)).astype(np.float32)
    bias = rng.normal(0, 1, filters).astype(np.float32)
    for layer in (ours, ref):
        layer.build((None, *input_shape))
        layer.kernel.assign(kernel)
        layer.bias.assign(bias)
    x = rng.normal(0, 1, (3, *input_shape)).astype(np.float32)
    return ours, ref, x


@pytest.mark.parametrize("filters, kernel_size, input_shape", [
    (3, (5, 7), (11, 16, 1)),
    (8, (12, 24), (45, 80, 1)),  # obs's first convolution
])
def test_row_toeplitz_conv_equals_conv2d_with_its_gradients(filters, kernel_size, input_shape):
    ours, ref, x = conv_pair(filters, kernel_size, input_shape, seed=1)
    results = []
    for layer in (ours, ref):
        x_t = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x_t)
            y = layer(x_t)
            # A fixed random cotangent, so that every output element weighs differently.
            cot = tf.constant(np.random.default_rng(2).normal(0, 1, y.shape).astype(np.float32))
            loss = tf.reduce_sum(y * cot)
        grads = tape.gradient(loss, [layer.kernel, layer.bias, x_t])
        results.append([y.numpy()] + [g.numpy() for g in grads])
    expected_shape = (3, input_shape[0] - kernel_size[0] + 1, input_shape[1] - kernel_size[1] + 1, filters)
    assert results[0][0].shape == expected_shape
    for got, want in zip(*results):  # output, d/d kernel, d/d bias, d/d input
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.max(np.abs(want)))


def test_obs_uses_the_row_toeplitz_conv_for_its_first_layer_only():
    model = Network(load_task("obs")).model
    convs = [layer for layer in model.layers if layer.name.startswith("conv_")]
    assert [type(layer).__name__ for layer in convs] == ["RowToeplitzConv2D", "Conv2D", "Conv2D"]
    assert tuple(convs[0].kernel.shape) == (12, 24, 1, 8)


# --- the transposed layout (the original's -transpose=1) -----------------------------------

def transposed_reference(variables, feature_map):
    """The original's weight_list_transpose, then flattened: conv kernels [out, in, kh, kw]; the
    first dense kernel after the convolutions as [out, C, H, W]; other dense kernels [out, in]."""
    parts, first_dense = [], True
    for v in variables:
        if v.ndim == 4:
            v = v.transpose(3, 2, 0, 1)
        elif v.ndim == 2 and first_dense:
            first_dense = False
            v = v.T.reshape(v.shape[1], *feature_map).transpose(0, 3, 1, 2)
        elif v.ndim == 2:
            v = v.T
        parts.append(v.ravel())
    return np.concatenate(parts)


def pooled_feature_map(input_shape, convs):
    """(H, W, C) after each VALID conv and 2x2/2 VALID pool, by arithmetic."""
    h, w, c = input_shape
    for kh, kw, out in convs:
        h, w, c = (h - kh + 1) // 2, (w - kw + 1) // 2, out
    return h, w, c


@pytest.mark.parametrize("spec", [
    dict(input_shape=(14, 18, 2), num_classes=3, conv=((3, 3, 3), (2, 2, 4)), dense=(5, 4)),
    "esc10",  # a feature map of 4 x 3 x 32 before its first dense layer
])
def test_transposed_layout_is_the_originals(tmp_path, spec):
    if isinstance(spec, str):
        task = load_task(spec)
        input_shape, convs = TABLE[spec][0], TABLE[spec][1]
    else:
        task = load_task(write_task_folder(tmp_path, "tr", **spec))
        input_shape, convs = spec["input_shape"], spec["conv"]
    natural = Network(task)
    transposed = Network(task, model=natural.model, layout="transposed")
    rng = np.random.default_rng(6)
    w = rng.normal(0, 0.1, natural.num_weights).astype(np.float32)
    natural.set_vector(w)
    variables = [v.numpy() for v in natural.model.trainable_variables]
    feature_map = pooled_feature_map(input_shape, convs)
    assert min(feature_map) > 1  # H, W and C all matter in the reordering
    first_dense = [v for v in variables if v.ndim == 2][0]
    assert first_dense.shape[0] == np.prod(feature_map)
    w_t = transposed_reference(variables, feature_map)
    np.testing.assert_array_equal(transposed.get_vector(), w_t)
    # The two layouts are the same network: the same outputs.
    x = rng.uniform(0, 1, (2, *input_shape)).astype(np.float32)
    np.testing.assert_allclose(transposed.forward(w_t, x).numpy(), natural.forward(w, x).numpy(), rtol=1e-6,
                               atol=1e-7)
    # set_vector / get_vector round trip in the transposed layout, which the natural view reads back.
    v = rng.normal(0, 0.1, natural.num_weights).astype(np.float32)
    transposed.set_vector(v)
    np.testing.assert_array_equal(transposed.get_vector(), v)
    restored = [var.numpy() for var in natural.model.trainable_variables]
    np.testing.assert_array_equal(transposed_reference(restored, feature_map), v)
