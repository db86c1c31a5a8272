"""Quantized weight-pages: int8 and int4 pages with one float32 scale per page (NumPy only).

A state's pages are stored as float32 (the paper), int8 or int4, chosen when the
state is created.  The semantics below are exact: the TensorFlow fake quantization
used in training and the PageGather custom op mirror them bit for bit.

Quantization of a page x (float32 [S]) with qmax = 127 (int8) or 7 (int4):

    scale = float32(max |x| over the page) / float32(qmax)       a float32 division
    q     = clip(rint(x / scale), -qmax, qmax)                    x / scale in float32,
                                                                  rint = round half to even
    scale = 0 when it is below the smallest normal float32 (2**-126): a subnormal scale
            counts as zero, because TensorFlow's CPU kernels flush subnormals to zero and GPUs
            do not, so only a normal scale gives the same bits on every device
    q     = 0 for every element of a page whose scale is 0        (max |x| below
                                                                  127 * 2**-126 for int8)
    dequantized value = float32(q) * scale                        one float32 multiply

Symmetric, zero-point 0: -qmax .. qmax, so -128 (int8) and -8 (int4) are never
written (they still decode as -128 * scale and -8 * scale).  Input values must be finite.

The scale is per page because a page is the unit that is shared, moved and
gathered: one scale per page leaves the page-table encoding and the gather
unchanged (a switch gathers a page's values and its one scale), costs 4 bytes per
page (512 weights by default), and adapts to each page's own range.

Stored layout, r pages of S weights:

    float32   values float32 [r, S], no scales
    int8      values int8 [r, S], scales float32 [r]
    int4      values uint8 [r, S / 2], scales float32 [r]; S must be even.  Two
              4-bit two's-complement values per byte: element 2k in the LOW nibble
              of byte k, element 2k + 1 in the HIGH nibble.
"""

from __future__ import annotations

import numpy as np

PAGE_DTYPES = ("float32", "int8", "int4")
QMAX = {"int8": 127, "int4": 7}
SCALE_BYTES = 4


def check_page_dtype(page_dtype) -> str:
    """page_dtype if it is one of PAGE_DTYPES, else ValueError naming the choices."""
    if page_dtype not in PAGE_DTYPES:
        raise ValueError(f"page dtype {page_dtype!r} is not one of {', '.join(PAGE_DTYPES)}")
    return page_dtype


def check_page_size(page_dtype: str, page_size: int) -> None:
    """ValueError unless pages of page_size weights can be stored as page_dtype (int4: even S)."""
    check_page_dtype(page_dtype)
    if page_dtype == "int4" and page_size % 2:
        raise ValueError(f"int4 pages pack two weights per byte: the page size must be even, not {page_size}")


def values_dtype(page_dtype: str) -> np.dtype:
    """The NumPy dtype of the stored values array."""
    return np.dtype({"float32": np.float32, "int8": np.int8, "int4": np.uint8}[check_page_dtype(page_dtype)])


def values_shape(page_dtype: str, rows: int, page_size: int) -> tuple[int, int]:
    """The shape of the stored values array of `rows` pages."""
    check_page_size(page_dtype, page_size)
    return (rows, page_size // 2 if page_dtype == "int4" else page_size)


def has_scales(page_dtype: str) -> bool:
    return check_page_dtype(page_dtype) != "float32"


def bytes_per_page(page_dtype: str, page_size: int) -> int:
    """Stored bytes of one page: its values plus, when quantized, its float32 scale."""
    check_page_size(page_dtype, page_size)
    values = {"float32": 4 * page_size, "int8": page_size, "int4": page_size // 2}[page_dtype]
    return values + (SCALE_BYTES if has_scales(page_dtype) else 0)


def pages_bytes(page_dtype: str, rows: int, page_size: int) -> int:
    """Stored bytes of `rows` pages."""
    return rows * bytes_per_page(page_dtype, page_size)


def pack_int4(q: np.ndarray) -> np.ndarray:
    """int values in [-8, 7], shape [r, S] (S even) -> uint8 [r, S / 2], 2k low nibble, 2k+1 high."""
    q = np.asarray(q)
    if q.ndim != 2 or q.shape[1] % 2:
        raise ValueError(f"int4 packing needs a 2-D array with an even number of columns, got shape {q.shape}")
    if q.size and (q.min() < -8 or q.max() > 7):
        raise ValueError("int4 values must lie in [-8, 7]")
    nibbles = (q.astype(np.int16) & 0x0F).astype(np.uint8)
    return nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """uint8 [r, S / 2] -> int8 [r, S]: the inverse of pack_int4 (4-bit two's complement)."""
    packed = np.asarray(packed)
    if packed.ndim != 2 or packed.dtype != np.uint8:
        raise ValueError(f"packed int4 pages must be uint8 [r, S / 2], got {packed.dtype} {packed.shape}")
    out = np.empty((packed.shape[0], 2 * packed.shape[1]), np.int8)
    low = (packed & 0x0F).astype(np.int8)
    high = (packed >> 4).astype(np.int8)
    out[:, 0::2] = np.where(low >= 8, low - 16, low)
    out[:, 1::2] = np.where(high >= 8, high - 16, high)
    return out


def _as_pages(pages) -> np.ndarray:
    pages = np.asarray(pages)
    if pages.ndim != 2 or pages.dtype != np.float32:
        raise ValueError(f"pages must be float32 [r, S], got {pages.dtype} {pages.shape}")
    if not np.all(np.isfinite(pages)):
        raise ValueError("pages contain NaN or infinite values; only finite weights can be quantized")
    return pages


def scales_of(pages, page_dtype: str) -> np.ndarray:
    """float32 [r]: float32(max |x| per page) / float32(qmax)."""
    pages = _as_pages(pages)
    qmax = np.float32(QMAX[page_dtype])
    peak = np.abs(pages).max(axis=1, initial=np.float32(0)).astype(np.float32)
    scales = (peak / qmax).astype(np.float32)
    return np.where(scales < np.finfo(np.float32).tiny, np.float32(0), scales)


def quantize_pages(pages, page_dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 [r, S] -> (values, scales) in the stored layout (module docstring).

    For "float32" the values are a float32 copy and scales is None.
    """
    pages = _as_pages(pages)
    check_page_size(page_dtype, pages.shape[1])
    if page_dtype == "float32":
        return pages.copy(), None
    qmax = QMAX[page_dtype]
    scales = scales_of(pages, page_dtype)
    ratio = np.zeros_like(pages)
    live = scales > 0
    ratio[live] = pages[live] / scales[live, None]  # float32 / float32: a float32 division
    q = np.clip(np.rint(ratio), -qmax, qmax).astype(np.int8)
    values = pack_int4(q) if page_dtype == "int4" else q
    return values, scales


def dequantize_pages(values, scales, page_dtype: str) -> np.ndarray:
    """(values, scales) in the stored layout -> float32 [r, S]: float32(q) * scale."""
    check_page_dtype(page_dtype)
    values = np.asarray(values)
    if values.ndim != 2 or values.dtype != values_dtype(page_dtype):
        raise ValueError(f"{page_dtype} page values must be {values_dtype(page_dtype)} [r, S], "
                         f"got {values.dtype} {values.shape}")
    if page_dtype == "float32":
        return values.astype(np.float32, copy=True)
    scales = np.asarray(scales)
    if scales.dtype != np.float32 or scales.shape != (values.shape[0],):
        raise ValueError(f"scales must be float32 [{values.shape[0]}], got {scales.dtype} {scales.shape}")
    q = unpack_int4(values) if page_dtype == "int4" else values
    return q.astype(np.float32) * scales[:, None]


def round_trip(pages, page_dtype: str) -> np.ndarray:
    """float32 [r, S] -> the float32 values the pages hold once stored as page_dtype."""
    values, scales = quantize_pages(pages, page_dtype)
    return dequantize_pages(values, scales, page_dtype)
