"""Python side of the PageGatherQuantized and PageGatherQuantizedMixed custom ops: wrappers.

PageGatherQuantized is PageGather over int8 weight-pages with one float32
scale per page (symmetric, zero-point 0): int8 [rows, S] and float32 [rows];
a page of zeros has scale 0. Weight j of a page is float32(q_j) * scale[row]:
one float32 multiply. A subnormal scale counts as a zero of its sign on every
device. The page table and num_weights are checked as for PageGather
(page_gather.check_page_table).

PageGatherQuantizedMixed is the same over the pages of an int4 state (format
version 2 of the pages, docs/FORMAT.md): per store four arrays, packed 4-bit
codes [rows, S / 2], float16 group scales [rows, S / G], the int8 pages' low
nibbles [K, S / 2] (in page order) and each page's kind [rows] (uint8 4 or 8).
Weight j is float32(q_j) * float32(scale[j // G]).

The encodings are those of weightsep/pageformat.py and docs/FORMAT.md; this
package imports nothing of weightsep, so its kernels decode pages themselves,
and tests/test_page_gather_quantized.py checks them bit for bit against
weightsep.pageformat for every format. The ops have no gradient
(tf.no_gradient): training runs on float32 weights with fake quantization in
TensorFlow, never through them.
"""

import numpy as np
import tensorflow as tf

from custom_ops.page_gather import (PageGatherError, available, check_num_weights, check_page_table,
                                    load_library, static_shape, store_geometry)

__all__ = ["PageGatherError", "available", "page_gather_quantized", "page_gather_quantized_mixed"]

tf.no_gradient("PageGatherQuantized")
tf.no_gradient("PageGatherQuantizedMixed")


def _typed(x, name, dtype, rank):
    """x as a tensor of exactly dtype and rank (static), never converted from another dtype."""
    want = tf.as_dtype(dtype)
    if isinstance(x, (tf.Tensor, tf.Variable)):
        got = x.dtype
    else:
        x = np.asarray(x)
        got = tf.as_dtype(x.dtype) if x.dtype.kind in "biufc" else None
    if got != want:
        raise PageGatherError(f"{name} must be {want.name}, got {got.name if got is not None else np.asarray(x).dtype}")
    shape = static_shape(x)
    if shape is not None and len(shape) != rank:
        raise PageGatherError(f"{name} must have rank {rank}, got shape {tuple(shape)}")
    return x if isinstance(x, tf.Tensor) else tf.convert_to_tensor(x, want)


def page_gather_quantized(shared_q, shared_scale, exclusive_q, exclusive_scale, page_table, num_weights):
    """The task's weights, float32[num_weights], dequantized from its int8 pages.

    shared_q: int8 [P, S] pool pages; shared_scale: float32 [P]; exclusive_q:
    int8 [E, S] (E may be 0); exclusive_scale: float32 [E]; page_table:
    ceil(num_weights / S) integer entries in [0, P + E). Arrays must already
    have these dtypes: nothing is converted from another one. Not
    differentiable. Raises PageGatherError for a wrong argument or an unbuilt
    library; the kernel raises tf.errors.InvalidArgumentError for what only it
    can see (shapes known only at run time, symbolic tables).
    """
    num_weights = check_num_weights(num_weights)
    shared_q = _typed(shared_q, "shared_q", np.int8, 2)
    exclusive_q = _typed(exclusive_q, "exclusive_q", np.int8, 2)
    shared_scale = _typed(shared_scale, "shared_scale", np.float32, 1)
    exclusive_scale = _typed(exclusive_scale, "exclusive_scale", np.float32, 1)
    table = check_page_table(page_table, num_weights, *store_geometry(shared_q, exclusive_q, 1))
    return load_library().page_gather_quantized(
        shared=shared_q, shared_scale=shared_scale, exclusive=exclusive_q, exclusive_scale=exclusive_scale,
        page_table=table, num_weights=num_weights)


_MIXED_PARTS = (("", np.uint8, 2), ("_scale", np.float16, 2), ("_wide", np.uint8, 2), ("_bits", np.uint8, 1))


def page_gather_quantized_mixed(shared, exclusive, page_table, num_weights):
    """The task's weights, float32[num_weights], from the mixed int4 / int8 pages of an int4 state.

    shared, exclusive: each a sequence (values uint8 [rows, S / 2], scales float16 [rows, S / G],
    wide uint8 [K, S / 2], bits uint8 [rows]); page_table as for PageGather. Arrays must already
    have these dtypes. Not differentiable. Raises PageGatherError for a wrong argument or an
    unbuilt library; the kernel raises tf.errors.InvalidArgumentError for what only it sees
    (kinds other than 4 or 8, a wide store of the wrong size, negative or non-finite scales).
    """
    num_weights = check_num_weights(num_weights)
    parts = {}
    for which, store in (("shared", shared), ("exclusive", exclusive)):
        if len(store) != 4:
            raise PageGatherError(f"{which} must be (values, scales, wide, bits), got {len(store)} arrays")
        for (suffix, dtype, rank), array in zip(_MIXED_PARTS, store):
            parts[which + suffix] = _typed(array, which + suffix, dtype, rank)
    table = check_page_table(page_table, num_weights, *store_geometry(parts["shared"], parts["exclusive"], 2))
    return load_library().page_gather_quantized_mixed(**parts, page_table=table, num_weights=num_weights)

