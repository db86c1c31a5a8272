"""Page formats: the one definition of how a weight-page is encoded (NumPy; TensorFlow only on demand).

A state stores its pages in one format, chosen when it is created: float32 (the
paper), int8 or int4.  Each format is one `PageFormat` object, found with
`page_format(name, group_size)`; the store, training's fake quantization, the runtime's
gather, the export, the report and the plots ask it for everything: the stored
arrays and their shapes, quantize / dequantize, nibble packing, the choice of the
int8 pages of a mixed state, and the constants of the quantizer.  docs/FORMAT.md
writes the same down for readers in other languages; the PageGather custom ops
(which know nothing of weightsep) decode pages themselves and are tested bit for
bit against this module.

int8: one float32 scale per page (format version 1, unchanged).  Quantization of
a page x (float32 [S]) with qmax = 127:

    scale = float32(max |x| over the page) / float32(qmax)       a float32 division
    q     = clip(rint(x / scale), -qmax, qmax)                    x / scale in float32,
                                                                  rint = round half to even
    scale = 0 when it is below the smallest normal float32 (2**-126): a subnormal scale
            counts as zero, because TensorFlow's CPU kernels flush subnormals to zero and GPUs
            do not, so only a normal scale gives the same bits on every device
    q     = 0 for every element of a page whose scale is 0
    dequantized value = float32(q) * scale                        one float32 multiply

int4 (format version 2): mixed int4 / int8 pages with group scales.  Every page
is split into groups of G consecutive weights (G = `group_of(S)`: the largest
divisor of S not above the state's group size, 64 by default), each with one
float16 scale; each page is either an int4 page (qmax 7) or an int8 page (qmax
127), a per-page tag.  Which pages are int8 is chosen by importance
(`choose_int8_pages`: the share of pages with the most summed Fisher information
of the tasks on them), because separation puts each task's most important
weights together and 4 bits on those pages is what costs accuracy.  Per group:

    s32   = float32(max |x| over the group) / float32(qmax)      as int8
    scale = the smallest float16 >= s32, at least 2**-14 (the smallest normal float16);
            0 when s32 is 0.  Rounding up keeps |x / scale| <= qmax, so no weight is
            clipped; never rounding to zero or to a subnormal keeps a group of small
            weights from silently becoming zeros (the step is then at most 2**-14, an
            error of at most 2**-15).  s32 above 65504 (weights above 65504 * qmax) is
            refused: float16 cannot hold the scale.
    q     = clip(rint(x / float32(scale)), -qmax, qmax)
    dequantized value = float32(q) * float32(scale)              one float32 multiply

Why float16 scales: a float32 scale per 64 int4 weights would cost 1 bit per weight
on top of 4 (12.5% more bytes); float16 costs half that and its 11-bit precision is
far finer than a 4-bit step.  Every float16 >= 2**-14 converts to a normal float32,
so the product is the same on every device (no subnormal is ever involved).

Symmetric, zero-point 0: -qmax .. qmax, so -128 (int8) and -8 (int4) are never
written (they still decode as -128 * scale and -8 * scale).  Input values must be finite.

Stored layout, r pages of S weights (int4: k of them int8 pages, G weights per group):

    float32   values float32 [r, S]
    int8      values int8 [r, S], scales float32 [r]
    int4      values uint8 [r, S / 2]   the page's int4 codes (int4 pages), or the HIGH
                                        parts h = q >> 4 (arithmetic, -8..7) of its int8
                                        codes (int8 pages); two 4-bit two's-complement
                                        numbers per byte: element 2k in the LOW nibble of
                                        byte k, element 2k + 1 in the HIGH nibble
              scales float16 [r, S / G]
              wide uint8 [k, S / 2]     the LOW parts l = q & 15 (0..15, unsigned) of the
                                        int8 pages' codes, same nibble order, one row per
                                        int8 page in page order; q = 16 h + l
              bits uint8 [r]            4 or 8: the page's kind; an int8 page's row in
                                        `wide` is the number of int8 pages before it

S must be even for int4.  The split of an int8 code into two nibbles keeps every
page's row in `values` the same size, so the page table and the gather by row are
those of uniform pages, and an int8 page costs exactly S bytes.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import numpy as np

from weightsep.limits import DEFAULT_GROUP_SIZE, DEFAULT_INT8_PAGES, PAGE_DTYPES

# The smallest normal float32: an int8 page's scale below it counts as zero (module docstring).
SCALE_FLOOR = np.finfo(np.float32).tiny
# Float16 scales of int4 states: the smallest normal float16 (no group scale is below it,
# except 0) and the largest finite one (a larger scale is refused).
HALF_FLOOR = np.float16(2.0 ** -14)
HALF_MAX = np.float16(65504.0)
WIDE_QMAX = 127  # the qmax of the int8 pages of an int4 state


class Encoded(NamedTuple):
    """A page array as stored: values, and (quantized) scales; int4 also wide and bits."""

    values: np.ndarray
    scales: Optional[np.ndarray] = None
    wide: Optional[np.ndarray] = None
    bits: Optional[np.ndarray] = None

    @property
    def nbytes(self) -> int:
        """Bytes of every stored array (values, scales, wide rows and page tags)."""
        return sum(int(a.nbytes) for a in self if a is not None)

    def rows(self, index) -> "Encoded":
        """The pages `index` (int array) as their own page array (int8 pages keep their wide rows)."""
        index = np.asarray(index, np.int64)
        if self.bits is None:
            return Encoded(self.values[index], None if self.scales is None else self.scales[index])
        wide_row = wide_rows(self.bits)
        picked = wide_row[index]
        return Encoded(self.values[index], self.scales[index], self.wide[picked[picked >= 0]], self.bits[index])


def wide_rows(bits) -> np.ndarray:
    """int64 [r]: each page's row in `wide` (its number of int8 pages before it), -1 for int4 pages."""
    wide = np.asarray(bits) == 8
    return np.where(wide, np.cumsum(wide) - 1, -1).astype(np.int64)


def group_of(page_size: int, group_size: int) -> int:
    """The weights per scale of a grouped page: the largest divisor of S not above group_size."""
    for g in range(min(group_size, page_size), 0, -1):
        if page_size % g == 0:
            return g
    raise ValueError(f"group size {group_size} must be at least 1")


def half_scales(s32: np.ndarray) -> np.ndarray:
    """float32 scales -> float16: the smallest float16 >= s, at least HALF_FLOOR; 0 stays 0.

    ValueError if a scale is above 65504 (float16 cannot hold it)."""
    s32 = np.asarray(s32, np.float32)
    if s32.size and s32.max() > np.float32(HALF_MAX):
        raise ValueError(f"weights up to {float(s32.max()):.6g} times qmax need a scale above 65504, the "
                         f"largest float16; int4 pages cannot store them (use int8 or float32 pages)")
    half = s32.astype(np.float16)
    up = half.astype(np.float32) < s32
    half[up] = np.nextafter(half[up], np.float16(np.inf))
    half = np.maximum(half, HALF_FLOOR)
    return np.where(s32 > 0, half, np.float16(0)).astype(np.float16)


@dataclasses.dataclass(frozen=True)
class PageFormat:
    """One page encoding.  qmax None: pages stored as float32 values, no scales.
    group_size 0: one scale per page; else the grouped, mixed int4 / int8 encoding."""

    name: str
    bits: int                       # bits of one stored weight (int4: of an int4 page)
    qmax: Optional[int] = None      # quantized values lie in [-qmax, qmax]
    scale_dtype: str = "float32"    # dtype of the stored scales
    group_size: int = 0             # 0: one scale per page; else at most this many weights per scale

    # ---- what is stored ---------------------------------------------------------------

    @property
    def quantized(self) -> bool:
        """Whether pages are stored as integers plus scales."""
        return self.qmax is not None

    @property
    def grouped(self) -> bool:
        """Whether pages have group scales and a per-page kind (int4 / int8): the int4 format."""
        return self.group_size > 0

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

    def group(self, page_size: int) -> int:
        """Weights per scale of a page of page_size weights."""
        return group_of(page_size, self.group_size) if self.grouped else page_size

    def values_shape(self, rows: int, page_size: int) -> tuple[int, int]:
        """The shape of the stored values array of `rows` pages."""
        self.check_page_size(page_size)
        return (rows, page_size * self.bits // 8 if self.bits < 8 else page_size)

    def scales_shape(self, rows: int, page_size: int) -> Optional[tuple]:
        """The shape of the stored scales array of `rows` pages (None: no scales)."""
        if not self.quantized:
            return None
        self.check_page_size(page_size)
        return (rows, page_size // self.group(page_size)) if self.grouped else (rows,)

    def wide_shape(self, wide_pages: int, page_size: int) -> Optional[tuple]:
        """The shape of the stored low nibbles of `wide_pages` int8 pages (None: not this format)."""
        return (wide_pages, page_size // 2) if self.grouped else None

    def pages_bytes(self, rows: int, page_size: int, wide_pages: int = 0) -> int:
        """Stored bytes of `rows` pages, `wide_pages` of them int8 pages of an int4 state."""
        shapes = [(self.values_shape(rows, page_size), self.values_dtype),
                  (self.scales_shape(rows, page_size), np.dtype(self.scale_dtype))]
        if self.grouped:
            shapes += [(self.wide_shape(wide_pages, page_size), np.dtype(np.uint8)), ((rows,), np.dtype(np.uint8))]
        return sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in shapes if shape is not None)

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
        return _pack_nibbles(q)

    def unpack(self, values: np.ndarray) -> np.ndarray:
        """The stored values array [r, B] -> int8 [r, S]: the inverse of pack (two's complement)."""
        values = np.asarray(values)
        if values.ndim != 2 or values.dtype != self.values_dtype:
            raise ValueError(f"{self.name} page values must be {self.values_dtype} [r, S], "
                             f"got {values.dtype} {values.shape}")
        if self.bits == 8:
            return values
        signed = _unpack_nibbles(values)
        return np.where(signed >= 8, signed - 16, signed).astype(np.int8)

    # ---- quantization -----------------------------------------------------------------

    def scales_of(self, pages, wide=None) -> np.ndarray:
        """The stored scales of pages: float32 [r] (int8), float16 [r, S / G] (int4; `wide` marks
        the int8 pages, module docstring)."""
        pages = _as_pages(pages)
        if self.grouped:
            r, size = pages.shape
            g = self.group(size)
            qmax = np.where(self._wide(wide, r), np.float32(WIDE_QMAX), self.fake_qmax).astype(np.float32)
            peak = np.abs(pages.reshape(r, size // g, g)).max(axis=2, initial=np.float32(0)).astype(np.float32)
            return half_scales((peak / qmax[:, None]).astype(np.float32))
        peak = np.abs(pages).max(axis=1, initial=np.float32(0)).astype(np.float32)
        scales = (peak / self.fake_qmax).astype(np.float32)
        return np.where(scales < SCALE_FLOOR, np.float32(0), scales)

    def _wide(self, wide, rows: int) -> np.ndarray:
        if wide is None:
            return np.zeros(rows, bool)
        wide = np.asarray(wide)
        if wide.dtype != bool or wide.shape != (rows,):
            raise ValueError(f"wide must be bool [{rows}] (which pages are int8), got {wide.dtype} {wide.shape}")
        if wide.any() and not self.grouped:
            raise ValueError(f"{self.name} pages have no per-page kind; only int4 states mix in int8 pages")
        return wide

    def quantize(self, pages, wide=None) -> Encoded:
        """float32 [r, S] -> the stored arrays; float32: (a copy).  wide (int4 only): bool [r],
        the pages to store as int8 (default none)."""
        pages = _as_pages(pages)
        r, size = pages.shape
        self.check_page_size(size)
        wide = self._wide(wide, r)
        if not self.quantized:
            return Encoded(pages.copy())
        scales = self.scales_of(pages, wide)
        if not self.grouped:
            ratio = np.zeros_like(pages)
            live = scales > 0
            ratio[live] = pages[live] / scales[live, None]  # float32 / float32: a float32 division
            q = np.clip(np.rint(ratio), -self.qmax, self.qmax).astype(np.int8)
            return Encoded(self.pack(q), scales.astype(self.scale_dtype))
        g = self.group(size)
        step = np.repeat(scales.astype(np.float32), g, axis=1)  # [r, S]
        ratio = np.zeros_like(pages)
        live = step > 0
        ratio[live] = pages[live] / step[live]
        qmax = np.where(wide, WIDE_QMAX, self.qmax)[:, None]
        q = np.clip(np.rint(ratio), -qmax, qmax).astype(np.int16)
        high = np.where(wide[:, None], q >> 4, q)
        return Encoded(_pack_nibbles(high), scales, _pack_nibbles(q[wide] & 0x0F),
                       np.where(wide, 8, 4).astype(np.uint8))

    def dequantize(self, values, scales=None, wide=None, bits=None) -> np.ndarray:
        """The stored arrays -> float32 [r, S]: float32(q) * scale (`dequantize(*encoded)`)."""
        values = np.asarray(values)
        if values.ndim != 2 or values.dtype != self.values_dtype:
            raise ValueError(f"{self.name} page values must be {self.values_dtype} [r, S], "
                             f"got {values.dtype} {values.shape}")
        if not self.quantized:
            return values.astype(np.float32, copy=True)
        scales = np.asarray(scales)
        r = values.shape[0]
        if not self.grouped:
            if scales.dtype != np.dtype(self.scale_dtype) or scales.shape != (r,):
                raise ValueError(f"scales must be {self.scale_dtype} [{r}], got {scales.dtype} {scales.shape}")
            return self.unpack(values).astype(np.float32) * effective_scale(scales)[:, None]
        self.check_int4_arrays(values, scales, wide, bits)
        q = self.unpack(values).astype(np.int16)
        rows = np.flatnonzero(np.asarray(bits) == 8)
        q[rows] = q[rows] * 16 + _unpack_nibbles(np.asarray(wide)).astype(np.int16)
        size = q.shape[1]
        g = self.group(size)
        out = q.astype(np.float32).reshape(r, size // g, g) * scales.astype(np.float32)[:, :, None]
        return out.reshape(r, size)

    def check_scales(self, scales) -> None:
        """The one rule of a valid stored scale; ValueError naming the first bad one.

        A scale is valid iff it is finite, not negative (-0.0 is zero), zero or normal (a
        subnormal scale is refused: the quantizer never writes one, see above), and qmax * scale
        is finite in float32, so that no value a quantizer writes can dequantize to infinity.
        """
        scales = np.asarray(scales)
        if self.grouped:  # float16 group scales: as above, with float16's smallest normal
            checks = (("not finite", ~np.isfinite(scales)), ("negative", np.signbit(scales) & (scales != 0)),
                      ("subnormal (a scale is zero or at least 2**-14)", (scales != 0) & (np.abs(scales) < HALF_FLOOR)))
            for what, bad in checks:
                where = np.argwhere(bad)
                if where.size:
                    raise ValueError(f"{len(where)} scale(s) are {what}, the first of page {where[0][0]}: "
                                     f"{scales[tuple(where[0])]!r}")
            return
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

    def dequantize_checked(self, values, scales=None, wide=None, bits=None) -> np.ndarray:
        """dequantize for pages read from disk: check_scales first, and ValueError unless every
        value is finite (int8's -128 and int4's -8, never written, may still overflow)."""
        if self.quantized:
            self.check_scales(scales)
        with np.errstate(over="ignore"):
            floats = self.dequantize(values, scales, wide, bits)
        bad = np.count_nonzero(~np.isfinite(floats))
        if bad:
            raise ValueError(f"{bad} weights dequantize to infinity or NaN")
        return floats

    def check_int4_arrays(self, values, scales, wide, bits) -> None:
        """ValueError unless (values, scales, wide, bits) are a consistent int4 page array."""
        r, size = values.shape[0], 2 * values.shape[1]
        want = self.scales_shape(r, size)
        if scales is None or scales.dtype != np.float16 or scales.shape != want:
            raise ValueError(f"scales must be float16 {list(want)}, got "
                             f"{None if scales is None else (scales.dtype, scales.shape)}")
        bits, wide = np.asarray(bits), np.asarray(wide)
        if bits.dtype != np.uint8 or bits.shape != (r,) or not np.isin(bits, (4, 8)).all():
            raise ValueError(f"page kinds must be uint8 [{r}] holding 4 or 8")
        k = int(np.count_nonzero(bits == 8))
        if wide.dtype != np.uint8 or wide.shape != (k, size // 2):
            raise ValueError(f"the int8 pages' low nibbles must be uint8 [{k}, {size // 2}], "
                             f"got {wide.dtype} {wide.shape}")

    def round_trip(self, pages, wide=None) -> np.ndarray:
        """float32 [r, S] -> the float32 values the pages hold once stored in this format."""
        return self.dequantize(*self.quantize(pages, wide))

    # ---- TensorFlow -----------------------------------------------------------------

    def dequantize_tf(self, values, scales, wide=None, is_wide=None):
        """The TensorFlow twin of dequantize for gathered rows: values [r, B], scales [r] (int8)
        or [r, S / G] (int4), wide: the gathered rows' low nibbles [r, S / 2] (zeros for int4
        pages) and is_wide bool [r] -> float32 [r, S].  Imports TensorFlow only when called."""
        import tensorflow as tf

        if not self.quantized:
            return values
        if self.bits == 8:
            return tf.cast(values, tf.float32) * scales[:, None]
        q = _nibbles_tf(values, signed=True)
        if not self.grouped:
            return tf.cast(q, tf.float32) * scales[:, None]
        q = tf.cast(q, tf.int32)
        low = tf.cast(_nibbles_tf(wide, signed=False), tf.int32)
        q = tf.where(is_wide[:, None], q * 16 + low, q)
        size = int(q.shape[-1])
        g = self.group(size)
        out = tf.reshape(tf.cast(q, tf.float32), [-1, size // g, g]) * tf.cast(scales, tf.float32)[:, :, None]
        return tf.reshape(out, [-1, size])


def _pack_nibbles(q) -> np.ndarray:
    """[r, S] integers, each in -8..15 -> uint8 [r, S / 2] of their low 4 bits, element 2k low."""
    q = np.asarray(q)
    if q.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even number of columns, got shape {q.shape}")
    nibbles = (q.astype(np.int16) & 0x0F).astype(np.uint8)
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def _unpack_nibbles(values) -> np.ndarray:
    """uint8 [r, B] -> uint8 [r, 2B] nibbles 0..15 (element 2k = low nibble of byte k)."""
    values = np.asarray(values)
    out = np.empty((*values.shape[:-1], 2 * values.shape[-1]), np.uint8)
    out[..., 0::2] = values & 0x0F
    out[..., 1::2] = values >> 4
    return out


def _nibbles_tf(values, signed: bool):
    import tensorflow as tf

    if signed:  # an arithmetic shift of the byte as int8 sign-extends each nibble
        low = tf.bitwise.right_shift(tf.bitwise.left_shift(tf.cast(values, tf.int8), 4), 4)
        high = tf.bitwise.right_shift(tf.cast(values, tf.int8), 4)
    else:
        low = tf.bitwise.bitwise_and(values, tf.constant(0x0F, tf.uint8))
        high = tf.bitwise.right_shift(values, tf.constant(4, tf.uint8))
    return tf.reshape(tf.stack([low, high], axis=-1), [-1, 2 * int(values.shape[-1])])


def choose_int8_pages(importance, share: float) -> np.ndarray:
    """bool [r]: the round(share * r) pages of highest importance (ties: the lower index)."""
    importance = np.asarray(importance, np.float64)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"the share of int8 pages must lie in [0, 1], not {share!r}")
    count = int(np.floor(share * importance.size + 0.5))
    wide = np.zeros(importance.size, bool)
    wide[np.argsort(-importance, kind="stable")[:count]] = True
    return wide


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


FORMATS = {f.name: f for f in (PageFormat("float32", 32), PageFormat("int8", 8, 127),
                                PageFormat("int4", 4, 7, "float16", DEFAULT_GROUP_SIZE))}
QUANTIZED_DTYPES = tuple(name for name, f in FORMATS.items() if f.quantized)


def page_format(name, group_size: Optional[int] = None) -> PageFormat:
    """The format named `name` ("float32", "int8", "int4"); int4 with at most group_size weights
    per scale (default DEFAULT_GROUP_SIZE); ValueError naming the choices."""
    if not isinstance(name, str) or name not in FORMATS:
        raise ValueError(f"page dtype {name!r} is not one of {', '.join(PAGE_DTYPES)}")
    fmt = FORMATS[name]
    if group_size is None or not fmt.grouped:
        return fmt
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or not 2 <= group_size <= 1 << 20:
        raise ValueError(f"the int4 group size must be an integer from 2 to {1 << 20}, not {group_size!r}")
    return dataclasses.replace(fmt, group_size=int(group_size))
