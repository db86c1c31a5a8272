"""Import of original TensorFlow 1 checkpoints, made here with tf.compat.v1 like the originals."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import copy_task_folder, run_cli
from weightsep.errors import WeightSepError
from weightsep.networks import import_tf1_checkpoint, load_network
from weightsep.tasks import load_task

tf1 = tf.compat.v1


def make_tf1_checkpoint(folder, task, dense_override=None, seed=0):
    """Build the original graph by hand (placeholders neuron_0, keep_prob_input, keep_prob, y_;
    variables weight_i/bias_i; output neuron_L with the batch-wide softmax) and save it."""
    h, w, c = task.input_shape
    dense = list(dense_override or task.dense)
    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, h * w * c], name="neuron_0")
        keep_in = tf1.placeholder(tf.float32, name="keep_prob_input")
        keep = tf1.placeholder(tf.float32, name="keep_prob")
        tf1.placeholder(tf.float32, [None, task.num_classes], name="y_")
        act = tf.reshape(tf1.nn.dropout(x, keep_prob=keep_in), [-1, h, w, c])
        layer, cin = 0, c
        for kh, kw, out in task.conv:
            kernel = tf1.Variable(rng.normal(0, 0.2, (kh, kw, cin, out)).astype(np.float32), name=f"weight_{layer}")
            bias = tf1.Variable(rng.normal(0, 0.1, (out,)).astype(np.float32), name=f"bias_{layer}")
            conv = tf.nn.conv2d(act, kernel, strides=[1, 1, 1, 1], padding="VALID") + bias
            act = tf.nn.max_pool2d(tf.nn.leaky_relu(conv, alpha=0.2), 2, 2, padding="VALID")
            layer, cin = layer + 1, out
        din = int(np.prod(act.shape[1:]))
        act = tf.reshape(act, [-1, din])
        for units in dense + [task.num_classes]:
            kernel = tf1.Variable(rng.normal(0, 0.2, (din, units)).astype(np.float32), name=f"weight_{layer}")
            bias = tf1.Variable(rng.normal(0, 0.1, (units,)).astype(np.float32), name=f"bias_{layer}")
            z = tf.matmul(act, kernel) + bias
            layer, din = layer + 1, units
            if units == task.num_classes and layer == len(task.conv) + len(dense) + 1:
                e = tf.exp(z - tf.reduce_max(z))  # the original's batch-wide softmax
                tf.identity(e / tf.reduce_sum(e), name=f"neuron_{layer}")
            else:
                a = tf.sigmoid(z) if task.dense_activation == "sigmoid" else tf.nn.leaky_relu(z, alpha=0.2)
                act = tf1.nn.dropout(a, keep_prob=keep)
        saver = tf1.train.Saver()
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            values = sess.run(tf1.trainable_variables())
            saver.save(sess, str(folder / task.name))
    return values


def test_import_copies_values_and_reproduces_the_original_graph(tmp_path):
    folder = copy_task_folder(tmp_path, "hhar")
    task = load_task(folder)
    values = make_tf1_checkpoint(folder, task)
    net = import_tf1_checkpoint(task, folder)
    np.testing.assert_array_equal(net.get_vector(), np.concatenate([v.ravel() for v in values]))


def test_import_cli_saves_the_network_and_prints_the_count(tmp_path):
    folder = copy_task_folder(tmp_path, "gsc")
    values = make_tf1_checkpoint(folder, load_task(folder), seed=1)
    proc = run_cli("-mode=import", f"-network_path={folder}")
    assert "gsc: 65101 weights" in proc.stdout.splitlines()
    saved = load_network(load_task(folder)).get_vector()
    np.testing.assert_array_equal(saved, np.concatenate([v.ravel() for v in values]))


def test_mismatched_checkpoint_lists_both_sides_and_copies_nothing(tmp_path):
    folder = copy_task_folder(tmp_path, "hhar")
    task = load_task(folder)
    make_tf1_checkpoint(folder, task, dense_override=[61])
    with pytest.raises(WeightSepError) as err:
        import_tf1_checkpoint(task, folder)
    message = str(err.value)
    assert "weight_3 (832, 61)" in message and "(832, 60)" in message
    proc = run_cli("-mode=import", f"-network_path={folder}", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: checkpoint") and "Traceback" not in proc.stderr
    assert not (folder / "hhar.weights.h5").exists()


def test_incomplete_checkpoint_names_the_missing_files(tmp_path):
    folder = copy_task_folder(tmp_path, "hhar")
    make_tf1_checkpoint(folder, load_task(folder))
    (folder / "hhar.index").unlink()
    with pytest.raises(WeightSepError, match=r"missing .*hhar\.index"):
        import_tf1_checkpoint(load_task(folder), folder)
