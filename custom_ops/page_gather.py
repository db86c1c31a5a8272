"""Python side of the PageGather custom op: loading, argument checks, wrapper, gradient.

PageGather(shared [P, S], exclusive [E, S], page_table [n_p], num_weights)
returns float32[num_weights]: for page i with entry e = page_table[i], shared
row e when e < P, else exclusive row e - P; concatenated and cut to
num_weights, with n_p = ceil(num_weights / S). This is the page-table encoding
of the original Weight Separation runtime. The library (which also holds
PageGatherQuantized, see page_gather_quantized.py) is built by
`make -C custom_ops` (or `make setup`) and loaded on first use.

This package imports nothing of its users: every problem it reports is a
PageGatherError, which callers may translate into their own errors.
"""

import numbers
import os
import threading

import numpy as np
import tensorflow as tf

_DIR = os.path.dirname(os.path.abspath(__file__))
LIBRARY_PATH = os.path.join(_DIR, "_page_gather_ops.so")
STAMP_PATH = os.path.join(_DIR, "_page_gather_ops.tfversion")
BUILD_HINT = "run `make setup` at the repository root, or `make -C custom_ops`"
INT32_MAX = 2**31 - 1

_lock = threading.Lock()
_module = None


class PageGatherError(Exception):
    """The op library cannot be used, or an argument is wrong; the message says what to do."""


def load_library():
    """The loaded op module (loaded once); raises PageGatherError saying how to build it."""
    global _module
    with _lock:
        if _module is not None:
            return _module
        if not os.path.exists(LIBRARY_PATH):
            raise PageGatherError(f"the PageGather op is not built ({LIBRARY_PATH} is missing): {BUILD_HINT}.")
        try:
            with open(STAMP_PATH) as f:
                built_for = f.read().strip()
        except OSError:
            raise PageGatherError(
                f"{STAMP_PATH} is missing, so the TensorFlow version {LIBRARY_PATH} was built "
                f"against is unknown: {BUILD_HINT}.") from None
        if built_for != tf.__version__:
            raise PageGatherError(
                f"{LIBRARY_PATH} was built for TensorFlow {built_for} but TensorFlow "
                f"{tf.__version__} is installed: {BUILD_HINT} to rebuild it.")
        try:
            _module = tf.load_op_library(LIBRARY_PATH)
        except (tf.errors.NotFoundError, OSError) as e:
            raise PageGatherError(f"cannot load {LIBRARY_PATH} ({e}): {BUILD_HINT} to rebuild it.") from None
        return _module


def available():
    """True when the op library is built for this TensorFlow and loads."""
    try:
        load_library()
    except PageGatherError:
        return False
    return True


def static_shape(x):
    """x's shape as a tuple (None for unknown dimensions), or None when its rank is unknown.

    Reads tensors' static shapes and arrays' shapes without converting anything.
    """
    if isinstance(x, (tf.Tensor, tf.Variable)):
        shape = x.shape
        return None if shape.rank is None else tuple(shape.as_list())
    return np.shape(x)


def check_num_weights(num_weights):
    """num_weights as an int; PageGatherError unless it is a non-negative integer (not a bool)."""
    if isinstance(num_weights, (bool, np.bool_)) or not isinstance(num_weights, numbers.Integral):
        raise PageGatherError(f"num_weights must be a non-negative integer, got {num_weights!r}")
    if num_weights < 0:
        raise PageGatherError(f"num_weights must be a non-negative integer, got {num_weights}")
    return int(num_weights)


def check_page_table(page_table, num_weights, page_size=None, num_shared=None, num_exclusive=None):
    """The page table, validated, ready for the op: an int32 array, or an int32/int64 tensor.

    A table of values in Python (a list of ints, an integer NumPy array of any
    width) must be 1-D, of an integer dtype (no floats, not even 2.0, no
    bools), hold ceil(num_weights / page_size) entries when page_size is
    known, and every entry must lie in [0, num_shared + num_exclusive) when
    both are known (else in [0, 2^31)); entries are compared in the table's
    own dtype, before narrowing to int32. Raises PageGatherError naming the
    first bad entry and its value.

    A tensor or variable (eager, or symbolic inside tf.function) must be
    int32 or int64 and goes to the op unchanged: the kernel checks its length
    and every entry in that dtype, before narrowing, and raises
    tf.errors.InvalidArgumentError with the same message. (Reading an eager
    tensor's values here would cost a copy and a check per switch.)
    """
    if isinstance(page_table, (tf.Tensor, tf.Variable)):
        if page_table.dtype not in (tf.int32, tf.int64):
            raise PageGatherError(f"page_table must be an int32 or int64 tensor, got {page_table.dtype.name}")
        if page_table.shape.rank not in (None, 1):
            raise PageGatherError(f"page_table must be a 1-D vector, got shape {page_table.shape}")
        return page_table
    table = np.asarray(page_table)
    if table.size == 0 and not isinstance(page_table, np.ndarray):
        table = table.astype(np.int32)  # NumPy makes [] float64, but it holds no non-integer
    if table.dtype.kind not in "iu":
        raise PageGatherError(f"page_table must be an array of integers (int8 to int64, uint8 to uint64), "
                              f"got dtype {table.dtype}")
    if table.ndim != 1:
        raise PageGatherError(f"page_table must be a 1-D vector, got shape {table.shape}")
    if page_size:
        needed = -(-num_weights // page_size)
        if len(table) != needed:
            raise PageGatherError(
                f"page_table has {len(table)} entries but num_weights = {num_weights} with page size "
                f"{page_size} needs ceil({num_weights} / {page_size}) = {needed} pages")
    known = num_shared is not None and num_exclusive is not None
    limit = min(num_shared + num_exclusive, INT32_MAX + 1) if known else INT32_MAX + 1
    bad = np.flatnonzero((table < 0) | (table >= limit))
    if len(bad):
        i = int(bad[0])
        pages = f": there are {num_shared} shared and {num_exclusive} exclusive pages" if known else ""
        raise PageGatherError(f"page_table[{i}] = {int(table[i])} is out of range [0, {limit}){pages}")
    return table.astype(np.int32)


def as_float32(x):
    """x as a float32 tensor; a float32 tensor as is (converting it again costs microseconds per switch)."""
    if isinstance(x, tf.Tensor) and x.dtype == tf.float32:
        return x
    return tf.convert_to_tensor(x, tf.float32)


def store_geometry(shared, exclusive, weights_per_row_item=1):
    """(S, P, E) from the stores' static shapes, None where unknown or inconsistent.

    weights_per_row_item: weights per element of a row (2 for packed int4 bytes).
    """
    s, e = static_shape(shared), static_shape(exclusive)
    if s is None or e is None or len(s) != 2 or len(e) != 2:
        return None, None, None
    page_size = s[1] * weights_per_row_item if s[1] is not None and s[1] == e[1] else None
    return page_size, s[0], e[0]


def page_gather(shared, exclusive, page_table, num_weights):
    """The task's weights, float32[num_weights], gathered from its pages.

    shared: [P, S] float32 pool; exclusive: [E, S] float32 (E may be 0);
    page_table: ceil(num_weights / S) integer entries in [0, P + E) (see
    check_page_table). Differentiable with respect to shared and exclusive.
    Raises PageGatherError for a bad table or num_weights, or an unbuilt
    library; the kernel raises tf.errors.InvalidArgumentError for what only it
    sees (a table given as a tensor, shapes).
    """
    num_weights = check_num_weights(num_weights)
    table = check_page_table(page_table, num_weights, *store_geometry(shared, exclusive))
    return load_library().page_gather(
        shared=as_float32(shared),
        exclusive=as_float32(exclusive),
        page_table=table,
        num_weights=num_weights)


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

