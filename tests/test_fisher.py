"""Vectorized Fisher information against a slow per-example reference."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import write_task_folder
from weightsep import fisher
from weightsep.errors import WeightSepError
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


def test_sample_indices_draw_with_replacement_seeded():
    idx = fisher.sample_indices(100, 50, seed=3)
    assert idx.shape == (50,) and np.issubdtype(idx.dtype, np.integer)
    assert idx.min() >= 0 and idx.max() < 100
    np.testing.assert_array_equal(idx, fisher.sample_indices(100, 50, seed=3))
    assert not np.array_equal(idx, fisher.sample_indices(100, 50, seed=4))
    # With replacement, repeats occur even for k < n (for 50 draws of 100 all but certainly).
    assert len(np.unique(idx)) < 50
    # k may exceed n: 50 draws from 20 examples, so some repeat.
    small = fisher.sample_indices(20, 50, seed=3)
    assert len(small) == 50 and small.min() >= 0 and small.max() < 20 and len(np.unique(small)) < 50
    # Each draw is uniform and independent of the others (as np.random.randint per sample): with
    # 3000 draws from 3 examples every count is near 1000, and repeats are as frequent as chance.
    many = fisher.sample_indices(3, 3000, seed=0)
    assert set(np.unique(many)) == {0, 1, 2}
    assert np.all(np.abs(np.bincount(many, minlength=3) - 1000) < 100)
    assert abs(np.mean(many[1:] == many[:-1]) - 1 / 3) < 0.05
    for n, k in ((0, 50), (10, 0)):
        with pytest.raises(WeightSepError, match="at least one example and one draw"):
            fisher.sample_indices(n, k, seed=0)


def test_compute_fisher_is_the_normalized_fisher_of_the_drawn_examples(tmp_path):
    folder = write_task_folder(tmp_path, "tiny2", input_shape=(6, 6, 1), num_classes=2, dense=(4,))
    net = Network(load_task(folder))
    x = np.random.default_rng(1).uniform(0, 1, (30, 6, 6, 1)).astype(np.float32)
    w = net.get_vector()
    f = fisher.compute_fisher(net, w, x, k=10, seed=5)
    drawn = x[fisher.sample_indices(30, 10, 5)]
    expected = fisher.normalize(reference_fisher(net, w, drawn))
    np.testing.assert_allclose(f, expected, atol=1e-4)
    assert f.min() == 0.0 and f.max() == 1.0
    # Another draw gives another Fisher: the examples used are the drawn ones.
    other = fisher.normalize(reference_fisher(net, w, x[fisher.sample_indices(30, 10, 6)]))
    assert np.max(np.abs(other - expected)) > 1e-2
