"""Vectorized Fisher information against a slow per-example reference."""

import numpy as np
import tensorflow as tf

from conftest import write_task_folder
from weightsep import fisher
from weightsep.networks import Network
from weightsep.tasks import load_task


def reference_fisher(net, w, x):
    """One GradientTape per example on the Keras variables: (1/K) sum g^2 f."""
    net.set_vector(w)
    total = np.zeros(net.num_weights, np.float64)
    for sample in x:
        with tf.GradientTape() as tape:
            probs = net.model(sample[None], training=False)[0]
            top = tf.reduce_max(probs)
            log_top = tf.math.log(top)
        grads = tape.gradient(log_top, net.model.trainable_variables)
        g = np.concatenate([gr.numpy().ravel() for gr in grads]).astype(np.float64)
        total += g * g * float(top)
    return total / len(x)


def test_fisher_matches_per_example_reference(tmp_path):
    folder = write_task_folder(tmp_path, "tiny", input_shape=(9, 9, 2), num_classes=3, conv=((3, 3, 3),),
                               dense=(5,), dense_activation="sigmoid")
    net = Network(load_task(folder))
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.5, net.num_weights).astype(np.float32)
    x = rng.uniform(0, 1, (7, 9, 9, 2)).astype(np.float32)
    ours = fisher.fisher_raw(net, w, x, chunk=3)  # chunks of 3, 3, 1 examples
    ref = reference_fisher(net, w, x)
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 1e-4
    assert np.all(ours >= 0)


def test_normalize_is_min_max():
    f = np.array([2.0, 4.0, 3.0, 2.0])
    np.testing.assert_allclose(fisher.normalize(f), [0.0, 1.0, 0.5, 0.0])
    np.testing.assert_array_equal(fisher.normalize(np.full(3, 7.0)), np.zeros(3))


def test_compute_fisher_draws_k_distinct_seeded_examples(tmp_path):
    idx = fisher.sample_indices(100, 50, seed=3)
    assert len(np.unique(idx)) == 50 and idx.max() < 100
    np.testing.assert_array_equal(idx, fisher.sample_indices(100, 50, seed=3))
    assert len(fisher.sample_indices(20, 50, seed=3)) == 20
    folder = write_task_folder(tmp_path, "tiny2", input_shape=(6, 6, 1), num_classes=2, dense=(4,))
    net = Network(load_task(folder))
    x = np.random.default_rng(1).uniform(0, 1, (30, 6, 6, 1)).astype(np.float32)
    w = net.get_vector()
    f = fisher.compute_fisher(net, w, x, k=10, seed=5)
    expected = fisher.normalize(reference_fisher(net, w, x[fisher.sample_indices(30, 10, 5)]))
    np.testing.assert_allclose(f, expected, atol=1e-4)
    assert f.min() == 0.0 and f.max() == 1.0
