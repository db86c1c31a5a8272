"""Python side of the PageGather custom op: loading, wrapper, gradient, reference.

PageGather(shared [P, S], exclusive [E, S], page_table int32[n_p], num_weights)
returns float32[num_weights]: for page i with entry e = page_table[i], shared
row e when e < P, else exclusive row e - P; concatenated and cut to
num_weights, with n_p = ceil(num_weights / S). This is the page-table encoding
of the original Weight Separation runtime. The library is built by
`make -C custom_ops` (or `make setup`) and loaded on first use.
"""

import os
import threading

import numpy as np
import tensorflow as tf

from weightsep.errors import WeightSepError

_DIR = os.path.dirname(os.path.abspath(__file__))
LIBRARY_PATH = os.path.join(_DIR, "_page_gather_ops.so")
STAMP_PATH = os.path.join(_DIR, "_page_gather_ops.tfversion")
BUILD_HINT = "run `make setup` at the repository root, or `make -C custom_ops`"

_lock = threading.Lock()
_module = None


def _load():
    """Loads the op library once; raises WeightSepError saying how to build it."""
    global _module
    with _lock:
        if _module is not None:
            return _module
        if not os.path.exists(LIBRARY_PATH):
            raise WeightSepError(f"the PageGather op is not built ({LIBRARY_PATH} is missing): {BUILD_HINT}.")
        try:
            with open(STAMP_PATH) as f:
                built_for = f.read().strip()
        except OSError:
            raise WeightSepError(
                f"{STAMP_PATH} is missing, so the TensorFlow version {LIBRARY_PATH} was built "
                f"against is unknown: {BUILD_HINT}.") from None
        if built_for != tf.__version__:
            raise WeightSepError(
                f"{LIBRARY_PATH} was built for TensorFlow {built_for} but TensorFlow "
                f"{tf.__version__} is installed: {BUILD_HINT} to rebuild it.")
        try:
            _module = tf.load_op_library(LIBRARY_PATH)
        except (tf.errors.NotFoundError, OSError) as e:
            raise WeightSepError(f"cannot load {LIBRARY_PATH} ({e}): {BUILD_HINT} to rebuild it.") from None
        return _module


def available():
    """True when the op library is built for this TensorFlow and loads."""
    try:
        _load()
    except WeightSepError:
        return False
    return True


def page_gather(shared, exclusive, page_table, num_weights):
    """The task's weights, float32[num_weights], gathered from its pages.

    shared: [P, S] float32 pool; exclusive: [E, S] float32 (E may be 0);
    page_table: int32[ceil(num_weights / S)], entries in [0, P + E).
    Differentiable with respect to shared and exclusive.
    """
    return _load().page_gather(
        shared=tf.convert_to_tensor(shared, tf.float32),
        exclusive=tf.convert_to_tensor(exclusive, tf.float32),
        page_table=tf.convert_to_tensor(page_table, tf.int32),
        num_weights=int(num_weights))


@tf.RegisterGradient("PageGather")
def _page_gather_grad(op, grad):
    """Scatter-adds the output gradient back onto the pages it was read from.

    A page used by several table entries receives the sum of their gradients.
    """
    shared, exclusive, table = op.inputs
    num_weights = op.get_attr("num_weights")
    num_shared = tf.shape(shared)[0]
    page_size = tf.shape(shared)[1]
    num_pages = tf.size(table)
    padded = tf.pad(grad, [[0, num_pages * page_size - num_weights]])
    per_page = tf.reshape(padded, [num_pages, page_size])
    rows = tf.math.unsorted_segment_sum(per_page, table, num_shared + tf.shape(exclusive)[0])
    return [rows[:num_shared], rows[num_shared:], None]


def page_gather_reference(shared, exclusive, page_table, num_weights):
    """Plain NumPy PageGather with the op's checks; the reference for tests."""
    shared = np.asarray(shared, np.float32)
    exclusive = np.asarray(exclusive, np.float32)
    table = np.asarray(page_table)
    if shared.ndim != 2 or exclusive.ndim != 2 or shared.shape[1] != exclusive.shape[1]:
        raise ValueError(f"shared {shared.shape} and exclusive {exclusive.shape} must be [P, S] and [E, S]")
    page_size = shared.shape[1]
    if table.ndim != 1 or len(table) != -(-num_weights // page_size):
        raise ValueError(f"page_table of shape {table.shape} does not hold ceil({num_weights} / {page_size}) entries")
    rows = np.concatenate([shared, exclusive])
    if len(table) and (table.min() < 0 or table.max() >= len(rows)):
        raise ValueError(f"page_table entries must lie in [0, {len(rows)})")
    return rows[table.astype(np.int64)].reshape(-1)[:num_weights]
