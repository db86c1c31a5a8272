"""Python side of the PageGatherQuantized custom op: wrapper, int4 unpacking, NumPy reference.

PageGatherQuantized is PageGather over quantized weight-pages with one float32
scale per page (symmetric, zero-point 0). Storage:
- bits 8: int8 [rows, S], q in [-127, 127];
- bits 4: uint8 [rows, S / 2], two values per byte: element 2k is the low
  nibble of byte k, element 2k + 1 the high nibble, each a 4-bit two's-complement
  number (q in [-7, 7] when written by a quantizer; 0b1000 decodes as -8);
- scales: float32 [rows]; a page of zeros has scale 0.
Weight j of a page is float32(q_j) * scale[row]: one float32 multiply, so the op
is bit-exact against page_gather_quantized_reference. A subnormal scale counts
as a zero of its sign on every device (effective_scale). The page table and
num_weights are checked as for PageGather (page_gather.check_page_table).

PageGatherQuantizedMixed is the same over the pages of an int4 state (format
version 2 of the pages, docs/FORMAT.md): per store four arrays, packed 4-bit
codes [rows, S / 2], float16 group scales [rows, S / G], the int8 pages' low
nibbles [K, S / 2] (in page order) and each page's kind [rows] (uint8 4 or 8).
An int4 page's q is its code; an int8 page's q = 16 * code + low nibble.
Weight j is float32(q_j) * float32(scale[j // G]), bit-exact against
page_gather_mixed_reference.

The ops have no gradient (tf.no_gradient): training runs on float32 weights with
fake quantization in TensorFlow, never through them.
"""

import numpy as np
import tensorflow as tf

from custom_ops.page_gather import (PageGatherError, available, check_num_weights, check_page_table,
                                    load_library, static_shape, store_geometry)

__all__ = ["PageGatherError", "available", "effective_scale", "page_gather_quantized",
           "page_gather_quantized_reference", "page_gather_quantized_mixed", "page_gather_mixed_reference",
           "unpack_int4"]

_PAGE_DTYPE = {8: np.int8, 4: np.uint8}

tf.no_gradient("PageGatherQuantized")
tf.no_gradient("PageGatherQuantizedMixed")


def _check_bits(bits):
    if isinstance(bits, (bool, np.bool_)) or bits not in _PAGE_DTYPE:
        raise PageGatherError(f"bits must be 8 (int8 pages) or 4 (packed int4 pages), got {bits!r}")
    return int(bits)


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


def page_gather_quantized(shared_q, shared_scale, exclusive_q, exclusive_scale, page_table, num_weights, bits=8):
    """The task's weights, float32[num_weights], dequantized from its quantized pages.

    shared_q: [P, B] pool pages, int8 (bits 8, S = B) or uint8 packed int4
    (bits 4, S = 2B); shared_scale: float32 [P]; exclusive_q: [E, B] (E may be
    0); exclusive_scale: float32 [E]; page_table: ceil(num_weights / S)
    integer entries in [0, P + E). Arrays must already have these dtypes:
    nothing is converted from another one. Not differentiable. Raises
    PageGatherError for a wrong argument or an unbuilt library; the kernel
    raises tf.errors.InvalidArgumentError for what only it can see (shapes
    known only at run time, symbolic tables).
    """
    bits = _check_bits(bits)
    num_weights = check_num_weights(num_weights)
    dtype = _PAGE_DTYPE[bits]
    shared_q = _typed(shared_q, "shared_q", dtype, 2)
    exclusive_q = _typed(exclusive_q, "exclusive_q", dtype, 2)
    shared_scale = _typed(shared_scale, "shared_scale", np.float32, 1)
    exclusive_scale = _typed(exclusive_scale, "exclusive_scale", np.float32, 1)
    table = check_page_table(page_table, num_weights,
                             *store_geometry(shared_q, exclusive_q, 2 if bits == 4 else 1))
    return load_library().page_gather_quantized(
        shared=shared_q, shared_scale=shared_scale, exclusive=exclusive_q, exclusive_scale=exclusive_scale,
        page_table=table, num_weights=num_weights, bits=bits)


def unpack_int4(packed):
    """int8 [rows, 2B] values of uint8 [rows, B] packed int4 pages (low nibble first)."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise PageGatherError(f"packed int4 pages must be uint8, got {packed.dtype}")
    low = (packed & 0x0F).astype(np.int8)
    high = (packed >> 4).astype(np.int8)
    values = np.stack([low, high], axis=-1).reshape(*packed.shape[:-1], 2 * packed.shape[-1])
    return np.where(values >= 8, values - 16, values).astype(np.int8)


def effective_scale(scale):
    """The scales pages are dequantized with: a subnormal scale counts as a zero of its sign.

    TensorFlow runs CPU kernels with denormals flushed to zero and the GPU does
    not; the op decides on the scale's bits so that every device gives the same
    weights. A quantizer never needs a subnormal scale (any |w| below 2^-126 * 127
    can be stored as a zero page).
    """
    bits = np.asarray(scale, np.float32).view(np.uint32)
    return np.where(bits & 0x7F800000, bits, bits & 0x80000000).astype(np.uint32).view(np.float32)


def page_gather_quantized_reference(shared_q, shared_scale, exclusive_q, exclusive_scale, page_table,
                                    num_weights, bits=8):
    """Plain NumPy PageGatherQuantized with the op's checks (PageGatherError); the reference for tests.

    Dequantizes every row as float32(q) * float32(scale), then gathers as PageGather does.
    """
    bits = _check_bits(bits)
    num_weights = check_num_weights(num_weights)
    stores = []
    for name, q, scale in [("shared", shared_q, shared_scale), ("exclusive", exclusive_q, exclusive_scale)]:
        q, scale = np.asarray(q), np.asarray(scale)
        if q.dtype != _PAGE_DTYPE[bits] or q.ndim != 2:
            raise PageGatherError(f"{name}_q must be a 2-D {np.dtype(_PAGE_DTYPE[bits])} array, "
                                  f"got {q.dtype} of shape {q.shape}")
        if scale.dtype != np.float32 or scale.shape != (len(q),):
            raise PageGatherError(f"{name}_scale must be float32 of shape ({len(q)},), "
                                  f"got {scale.dtype} of shape {scale.shape}")
        values = unpack_int4(q) if bits == 4 else q
        stores.append(values.astype(np.float32) * effective_scale(scale)[:, None])
    shared, exclusive = stores
    if shared.shape[1] != exclusive.shape[1] or shared.shape[1] == 0:
        raise PageGatherError(f"shared_q and exclusive_q rows differ or are empty: "
                              f"{np.shape(shared_q)} and {np.shape(exclusive_q)}")
    table = check_page_table(page_table, num_weights, shared.shape[1], len(shared), len(exclusive))
    return np.concatenate([shared, exclusive])[table].reshape(-1)[:num_weights]


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


def page_gather_mixed_reference(shared, exclusive, page_table, num_weights):
    """Plain NumPy PageGatherQuantizedMixed (the docstring's encoding), the reference for tests."""
    num_weights = check_num_weights(num_weights)
    stores = []
    for values, scales, wide, bits in (shared, exclusive):
        values, scales, wide, bits = map(np.asarray, (values, scales, wide, bits))
        q = unpack_int4(values).astype(np.int32)
        low = np.stack([wide & 0x0F, wide >> 4], axis=-1).reshape(len(wide), 2 * wide.shape[1]).astype(np.int32)
        is_wide = bits == 8
        if not np.isin(bits, (4, 8)).all() or len(low) != np.count_nonzero(is_wide):
            raise PageGatherError("page kinds must be 4 or 8, one wide row per int8 page")
        q[is_wide] = q[is_wide] * 16 + low
        group = q.shape[1] // scales.shape[1]
        stores.append(q.astype(np.float32) * np.repeat(scales.astype(np.float32), group, axis=1))
    table = check_page_table(page_table, num_weights, stores[0].shape[1], len(stores[0]), len(stores[1]))
    return np.concatenate(stores)[table].reshape(-1)[:num_weights]
