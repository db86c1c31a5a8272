"""The ten networks match ARCHITECTURES.md exactly; the flat-vector view is lossless."""

import numpy as np
import pytest

from conftest import write_task_folder
from weightsep.errors import WeightSepError
from weightsep.networks import Network, load_network, save_network
from weightsep.tasks import PAPER_TASKS, list_tasks, load_task

# The table of ARCHITECTURES.md, typed in independently of the task specs:
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
    folder = tmp_path / "mlp"
    folder.mkdir()
    (folder / "task.py").write_text(
        "import keras\n"
        "from weightsep.tasks import TaskSpec\n\n"
        "def build():\n"
        "    return keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),\n"
        "                             keras.layers.Dense(5, activation='tanh'),\n"
        "                             keras.layers.Dense(3, activation='softmax')])\n\n"
        "TASK = TaskSpec(name='mlp', input_shape=(4, 4, 1), num_classes=3, build_model=build)\n")
    net = Network(load_task(folder))
    assert net.num_weights == 16 * 5 + 5 + 5 * 3 + 3
    w = np.arange(net.num_weights, dtype=np.float32) / 100
    net.set_vector(w)
    x = np.ones((2, 4, 4, 1), np.float32)
    np.testing.assert_allclose(net.forward(w, x).numpy(), net.model(x).numpy(), rtol=1e-6)


def test_custom_model_with_wrong_output_is_rejected(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "task.py").write_text(
        "import keras\nfrom weightsep.tasks import TaskSpec\n"
        "TASK = TaskSpec(name='bad', input_shape=(4, 4, 1), num_classes=3, build_model=lambda: "
        "keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(2)]))\n")
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
    with pytest.raises(WeightSepError, match=r"cannot load network file .*small\.weights\.h5"):
        load_network(task)
