"""Fisher information of a network's weights (the importance used to separate pages).

For K examples drawn from the training split (with replacement, as the original): f = the
largest softmax probability, g = d log f / d w; F = (1/K) sum_k g_k^2 * f_k, then min-max
normalized to [0, 1] over the whole vector (as the original computes it).  The K per-example gradients come from
one vectorized Jacobian (``GradientTape.jacobian`` with pfor), not a Python loop.
"""

from __future__ import annotations

import numpy as np

from weightsep.errors import WeightSepError
from weightsep.networks import Network
from weightsep.tf import tf


def sample_indices(num_examples: int, k: int, seed: int) -> np.ndarray:
    """K example indices drawn uniformly with replacement, seeded (the original draws each of
    its K samples with np.random.randint)."""
    if num_examples < 1 or k < 1:
        raise WeightSepError(f"the Fisher information needs at least one example and one draw "
                             f"(got {num_examples} examples, -fisher_samples={k})")
    return np.random.default_rng(seed).integers(0, num_examples, size=k)


def fisher_raw(net: Network, w: np.ndarray, x: np.ndarray, chunk: int = 50) -> np.ndarray:
    """Unnormalized empirical Fisher (1/K) sum g^2 f over the examples x, float64."""
    w_t = tf.constant(np.asarray(w, np.float32))

    @tf.function(reduce_retracing=True)
    def per_example(xb):
        with tf.GradientTape() as tape:
            tape.watch(w_t)
            probs = net.forward(w_t, xb)
            top = tf.reduce_max(probs, axis=1)
            log_top = tf.math.log(top)
        jac = tape.jacobian(log_top, w_t, experimental_use_pfor=True)  # [k, n]
        return tf.reduce_sum(tf.square(jac) * top[:, None], axis=0)

    total = np.zeros(net.num_weights, np.float64)
    for start in range(0, len(x), chunk):
        total += per_example(tf.constant(x[start:start + chunk], tf.float32)).numpy()
    return total / max(len(x), 1)


def normalize(fisher: np.ndarray) -> np.ndarray:
    """Min-max normalize to [0, 1]; a constant vector becomes all zeros."""
    lo, hi = float(np.min(fisher)), float(np.max(fisher))
    if hi <= lo:
        return np.zeros_like(fisher, dtype=np.float32)
    return ((fisher - lo) / (hi - lo)).astype(np.float32)


def compute_fisher(net: Network, w: np.ndarray, x_train: np.ndarray, k: int = 50, seed: int = 0) -> np.ndarray:
    """Normalized Fisher of weights w from k examples drawn from x_train."""
    idx = sample_indices(len(x_train), k, seed)
    return normalize(fisher_raw(net, w, x_train[idx]))
