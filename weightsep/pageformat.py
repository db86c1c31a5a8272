"""Page formats: the one definition of how a weight-page is encoded (NumPy; TensorFlow only on demand).

A state stores its pages in one format, chosen when it is created: float32 (the
paper), int8 or int4.  Each format is one `PageFormat` object, found with
`page_format(name)`; the store, training's fake quantization, the runtime's
gather, the export, the report and the plots ask it for everything: the stored
value dtype and shape, the bytes of a page, quantize / dequantize, int4 nibble
packing, and the constants of the quantizer.  docs/FORMAT.md writes the same down
for readers in other languages; the PageGather custom ops (which know nothing of
weightsep) decode pages themselves and are tested bit for bit against this module.

Quantization of a page x (float32 [S]) with qmax = 127 (int8) or 7 (int4):

    scale = float32(max |x| over the page) / float32(qmax)       a float32 division
    q     = clip(rint(x / scale), -qmax, qmax)                    x / scale in float32,
                                                                  rint = round half to even
    scale = 0 when it is below the smallest normal float32 (2**-126): a subnormal scale
            counts as zero, because TensorFlow's CPU kernels flush subnormals to zero and GPUs
            do not, so only a normal scale gives the same bits on every device
    q     = 0 for every element of a page whose scale is 0        (max |x| below
                                                                  127 * 2**-126 for int8)
    dequantized value = float32(q) * scale                        one float32 multiply; a
                                                                  subnormal stored scale
                                                                  decodes as a zero of its sign

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

A format is described by data (bits, qmax, scale dtype), and consumers only call
its methods (stored shapes, bytes, quantize, dequantize), so a new format (finer
scale groups: a scales_shape of [r, S / G]; float16 scales; a per-page choice of
bits) changes this module, not the store, the runtime or the export.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from weightsep.limits import PAGE_DTYPES

# The smallest normal float32: a scale below it counts as zero (module docstring).
SCALE_FLOOR = np.finfo(np.float32).tiny


@dataclasses.dataclass(frozen=True)
class PageFormat:
    """One page encoding.  qmax None: pages stored as float32 values, no scales."""

    name: str
    bits: int                       # bits of one stored weight
    qmax: Optional[int] = None      # quantized values lie in [-qmax, qmax]
    scale_dtype: str = "float32"    # dtype of the stored scales, one per page

    # ---- what is stored ---------------------------------------------------------------

    @property
    def quantized(self) -> bool:
        """Whether pages are stored as integers plus scales."""
        return self.qmax is not None

    @property
    def fake_qmax(self) -> np.float32:
        """qmax as the float32 the quantizer divides by (training's fake quantization uses it)."""
        return np.float32(self.qmax)

    @property
    def values_dtype(self) -> np.dtype:
        """The NumPy dtype of the stored values array."""
        return np.dtype({32: np.float32, 8: np.int8, 4: np.uint8}[self.bits])

    def check_page_size(self, page_size: int) -> int:
        """page_size if pages of that many weights can be stored in this format, else ValueError."""
        if self.bits == 4 and page_size % 2:
            raise ValueError(f"int4 pages pack two weights per byte: the page size must be even, not {page_size}")
        return page_size

    def values_shape(self, rows: int, page_size: int) -> tuple[int, int]:
        """The shape of the stored values array of `rows` pages."""
        self.check_page_size(page_size)
        return (rows, page_size * self.bits // 8 if self.bits < 8 else page_size)

    def scales_shape(self, rows: int, page_size: int) -> Optional[tuple]:
        """The shape of the stored scales array of `rows` pages (None: no scales)."""
        if not self.quantized:
            return None
        self.check_page_size(page_size)
        return (rows,)

    def bytes_per_page(self, page_size: int) -> int:
        """Stored bytes of one page: its values plus, when quantized, its scales."""
        values = int(np.prod(self.values_shape(1, page_size))) * self.values_dtype.itemsize
        scales = self.scales_shape(1, page_size)
        return values + (int(np.prod(scales)) * np.dtype(self.scale_dtype).itemsize if scales else 0)

    def pages_bytes(self, rows: int, page_size: int) -> int:
        """Stored bytes of `rows` pages."""
        return rows * self.bytes_per_page(page_size)

    # ---- packing ----------------------------------------------------------------------

    def pack(self, q: np.ndarray) -> np.ndarray:
        """Integer values [r, S] in [-2**(bits-1), 2**(bits-1) - 1] -> the stored values array."""
        q = np.asarray(q)
        low, high = -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        if q.ndim != 2:
            raise ValueError(f"{self.name} packing needs a 2-D array, got shape {q.shape}")
        if q.size and (q.min() < low or q.max() > high):
            raise ValueError(f"{self.name} values must lie in [{low}, {high}]")
        if self.bits == 8:
            return q.astype(np.int8)
        if q.shape[1] % 2:
            raise ValueError(f"int4 packing needs an even number of columns, got shape {q.shape}")
        nibbles = (q.astype(np.int16) & 0x0F).astype(np.uint8)
        return nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)

    def unpack(self, values: np.ndarray) -> np.ndarray:
        """The stored values array [r, B] -> int8 [r, S]: the inverse of pack (two's complement)."""
        values = np.asarray(values)
        if values.ndim != 2 or values.dtype != self.values_dtype:
            raise ValueError(f"{self.name} page values must be {self.values_dtype} [r, S], "
                             f"got {values.dtype} {values.shape}")
        if self.bits == 8:
            return values
        out = np.empty((values.shape[0], 2 * values.shape[1]), np.int8)
        low = (values & 0x0F).astype(np.int8)
        high = (values >> 4).astype(np.int8)
        out[:, 0::2] = np.where(low >= 8, low - 16, low)
        out[:, 1::2] = np.where(high >= 8, high - 16, high)
        return out

    # ---- quantization -----------------------------------------------------------------

    def scales_of(self, pages) -> np.ndarray:
        """float32 [r]: float32(max |x| per page) / float32(qmax), 0 where below SCALE_FLOOR."""
        pages = _as_pages(pages)
        peak = np.abs(pages).max(axis=1, initial=np.float32(0)).astype(np.float32)
        scales = (peak / self.fake_qmax).astype(np.float32)
        return np.where(scales < SCALE_FLOOR, np.float32(0), scales)

    def quantize(self, pages) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """float32 [r, S] -> (values, scales) in the stored layout; float32: (a copy, None)."""
        pages = _as_pages(pages)
        self.check_page_size(pages.shape[1])
        if not self.quantized:
            return pages.copy(), None
        scales = self.scales_of(pages)
        ratio = np.zeros_like(pages)
        live = scales > 0
        ratio[live] = pages[live] / scales[live, None]  # float32 / float32: a float32 division
        q = np.clip(np.rint(ratio), -self.qmax, self.qmax).astype(np.int8)
        return self.pack(q), scales.astype(self.scale_dtype)

    def dequantize(self, values, scales) -> np.ndarray:
        """(values, scales) in the stored layout -> float32 [r, S]: float32(q) * scale."""
        values = np.asarray(values)
        if values.ndim != 2 or values.dtype != self.values_dtype:
            raise ValueError(f"{self.name} page values must be {self.values_dtype} [r, S], "
                             f"got {values.dtype} {values.shape}")
        if not self.quantized:
            return values.astype(np.float32, copy=True)
        scales = np.asarray(scales)
        if scales.dtype != np.dtype(self.scale_dtype) or scales.shape != (values.shape[0],):
            raise ValueError(f"scales must be {self.scale_dtype} [{values.shape[0]}], got {scales.dtype} {scales.shape}")
        return self.unpack(values).astype(np.float32) * effective_scale(scales)[:, None]

    def check_scales(self, scales) -> None:
        """The one rule of a valid stored scale; ValueError naming the first bad one.

        A scale is valid iff it is finite, not negative (-0.0 is zero), zero or normal (a
        subnormal scale is refused: the quantizer never writes one, see above), and qmax * scale
        is finite in float32, so that no value a quantizer writes can dequantize to infinity.
        """
        scales = np.asarray(scales)
        limit = np.float32(np.finfo(np.float32).max / self.fake_qmax)
        with np.errstate(over="ignore", invalid="ignore"):
            overflows = ~np.isfinite(np.abs(scales) * self.fake_qmax) & np.isfinite(scales)
        subnormal = (scales != 0) & (np.abs(scales) < SCALE_FLOOR)
        checks = (("not finite", ~np.isfinite(scales)), ("negative", scales < 0),
                  ("subnormal (a scale is zero or at least 2**-126)", subnormal),
                  (f"above FLT_MAX / {self.qmax} = {limit:.6g} (its values would overflow)", overflows))
        for what, bad in checks:
            rows = np.flatnonzero(bad)
            if rows.size:
                raise ValueError(f"{rows.size} scale(s) are {what}, the first of page {rows[0]}: {scales[rows[0]]!r}")

    def dequantize_checked(self, values, scales) -> np.ndarray:
        """dequantize for pages read from disk: check_scales first, and ValueError unless every
        value is finite (int8's -128 and int4's -8, never written, may still overflow)."""
        if self.quantized:
            self.check_scales(scales)
        with np.errstate(over="ignore"):
            floats = self.dequantize(values, scales)
        bad = np.count_nonzero(~np.isfinite(floats))
        if bad:
            raise ValueError(f"{bad} weights dequantize to infinity or NaN")
        return floats

    def round_trip(self, pages) -> np.ndarray:
        """float32 [r, S] -> the float32 values the pages hold once stored in this format."""
        return self.dequantize(*self.quantize(pages))

    # ---- TensorFlow -----------------------------------------------------------------

    def dequantize_tf(self, values, scales):
        """The TensorFlow twin of dequantize for gathered rows (values [r, B], scales [r]):
        float32 [r, S].  Imports TensorFlow only when called."""
        import tensorflow as tf

        if not self.quantized:
            return values
        if self.bits == 4:
            # An arithmetic shift of the byte as int8 sign-extends each nibble.
            low = tf.bitwise.right_shift(tf.bitwise.left_shift(tf.cast(values, tf.int8), 4), 4)
            high = tf.bitwise.right_shift(tf.cast(values, tf.int8), 4)
            values = tf.reshape(tf.stack([low, high], axis=-1), [-1, 2 * int(values.shape[-1])])
        return tf.cast(values, tf.float32) * scales[:, None]


def effective_scale(scales) -> np.ndarray:
    """The scales pages are decoded with: a subnormal scale counts as a zero of its sign (the
    PageGatherQuantized kernels decide on the scale's bits, so every device agrees)."""
    bits = np.asarray(scales, np.float32).view(np.uint32)
    return np.where(bits & 0x7F800000, bits, bits & 0x80000000).astype(np.uint32).view(np.float32)


def _as_pages(pages) -> np.ndarray:
    pages = np.asarray(pages)
    if pages.ndim != 2 or pages.dtype != np.float32:
        raise ValueError(f"pages must be float32 [r, S], got {pages.dtype} {pages.shape}")
    if not np.all(np.isfinite(pages)):
        raise ValueError("pages contain NaN or infinite values; only finite weights can be quantized")
    return pages


FORMATS = {f.name: f for f in (PageFormat("float32", 32), PageFormat("int8", 8, 127), PageFormat("int4", 4, 7))}
QUANTIZED_DTYPES = tuple(name for name, f in FORMATS.items() if f.quantized)


def page_format(name) -> PageFormat:
    """The format named `name` ("float32", "int8", "int4"); ValueError naming the choices."""
    if not isinstance(name, str) or name not in FORMATS:
        raise ValueError(f"page dtype {name!r} is not one of {', '.join(PAGE_DTYPES)}")
    return FORMATS[name]
