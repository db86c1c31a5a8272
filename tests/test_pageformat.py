"""Tests of weightsep.pageformat against a per-element reference written independently."""

import numpy as np
import pytest

from weightsep.limits import PAGE_DTYPES
from weightsep.pageformat import FORMATS, SCALE_FLOOR, choose_int8_pages, group_of, page_format

QMAX = {"int8": 127, "int4": 7}


def reference(page, bits_name):
    """One page, element by element with float32 scalars and Python's round (half to even)."""
    qmax = QMAX[bits_name]
    peak = np.float32(0)
    for x in page:
        peak = max(peak, np.float32(abs(x)))
    scale = np.float32(peak) / np.float32(qmax)
    qs, deq = [], []
    for x in page:
        if scale == 0:
            q = 0
        else:
            q = round(float(np.float32(x) / scale))
            q = min(qmax, max(-qmax, q))
        qs.append(q)
        deq.append(np.float32(q) * scale)
    return qs, np.float32(scale), np.array(deq, np.float32)


def unpack_reference(packed_row):
    """Byte k -> (low nibble, high nibble), each a 4-bit two's complement number."""
    out = []
    for byte in packed_row:
        for nibble in (int(byte) & 0xF, int(byte) >> 4):
            out.append(nibble - 16 if nibble >= 8 else nibble)
    return out


@pytest.mark.parametrize("dtype", ["int8"])
def test_matches_per_element_reference(dtype):
    rng = np.random.default_rng(4)
    pages = np.stack([
        rng.normal(0, 0.05, 16),
        rng.uniform(-3, 3, 16),
        np.zeros(16),
        np.r_[rng.normal(0, 1, 15), 40.0],  # one outlier sets the scale
        np.full(16, -2.5),
    ]).astype(np.float32)
    values, scales = page_format(dtype).quantize(pages)[:2]
    deq = page_format(dtype).dequantize(values, scales)
    assert scales.dtype == np.float32 and scales.shape == (5,)
    assert deq.dtype == np.float32 and deq.shape == pages.shape
    if dtype == "int8":
        assert values.dtype == np.int8 and values.shape == (5, 16)
        q = values.astype(int).tolist()
    else:
        assert values.dtype == np.uint8 and values.shape == (5, 8)
        q = [unpack_reference(row) for row in values]
    for r, page in enumerate(pages):
        ref_q, ref_scale, ref_deq = reference(page, dtype)
        assert q[r] == ref_q
        assert scales[r].tobytes() == ref_scale.tobytes()
        assert deq[r].tobytes() == ref_deq.tobytes()  # bit for bit
    np.testing.assert_array_equal(page_format(dtype).round_trip(pages), deq)


def test_round_half_to_even_and_known_values():
    # max |x| = 127 -> scale 1 exactly: x / scale is x, so the ties are visible
    page = np.array([[127, 2.5, 3.5, -2.5, -0.5, 0.5, 1.5, -127]], np.float32)
    values, scales = page_format("int8").quantize(page)[:2]
    assert scales.tolist() == [1.0]
    assert values.tolist() == [[127, 2, 4, -2, 0, 0, 2, -127]]
    # int4: max 7 -> scale 1 (a float16 too); 7.5 cannot occur, saturation only at the extremes
    values, scales, wide, bits = page_format("int4").quantize(np.array([[7, -7, 2.5, 3.5, -6.5, 0]], np.float32))
    assert scales.tolist() == [[1.0]] and scales.dtype == np.float16 and bits.tolist() == [4] and wide.shape == (0, 3)
    assert unpack_reference(values[0]) == [7, -7, 2, 4, -6, 0]


@pytest.mark.parametrize("dtype", ["int8"])
def test_error_bound_and_extremes(dtype):
    rng = np.random.default_rng(9)
    pages = (rng.standard_t(3, size=(64, 32)) * rng.uniform(1e-4, 10, size=(64, 1))).astype(np.float32)
    values, scales = page_format(dtype).quantize(pages)[:2]
    deq = page_format(dtype).dequantize(values, scales)
    err = np.abs(pages.astype(np.float64) - deq)
    assert np.all(err <= scales[:, None].astype(np.float64) / 2 * (1 + 1e-6))
    # The element of largest magnitude maps to +-qmax, so the range is used fully.
    q = page_format("int4").unpack(values) if dtype == "int4" else values
    peak = np.argmax(np.abs(pages), axis=1)
    assert np.all(np.abs(q[np.arange(64), peak]) == QMAX[dtype])
    np.testing.assert_array_equal(scales, np.abs(pages).max(axis=1) / np.float32(QMAX[dtype]))


def test_zero_and_underflowing_pages_give_zero():
    tiny = np.float32(1e-45)  # the smallest denormal: tiny / 127 underflows to 0
    pages = np.array([[0, 0, 0, 0], [tiny, -tiny, 0, tiny]], np.float32)
    values, scales = page_format("int8").quantize(pages)[:2]
    assert scales.tolist() == [0.0, 0.0]
    assert not values.any()
    assert not page_format("int8").dequantize(values, scales).any()


def test_int4_packing_known_bytes():
    q = np.array([[1, -1, 7, -8, 0, 3], [-7, 6, -2, -3, 4, -5]], np.int8)
    packed = page_format("int4").pack(q)
    assert packed.dtype == np.uint8
    # element 2k in the low nibble of byte k, 2k+1 in the high nibble
    assert packed.tolist() == [[0xF1, 0x87, 0x30], [0x69, 0xDE, 0xB4]]
    np.testing.assert_array_equal(page_format("int4").unpack(packed), q)
    every = np.arange(-8, 8, dtype=np.int8).reshape(1, 16)
    np.testing.assert_array_equal(page_format("int4").unpack(page_format("int4").pack(every)), every)
    # -8 is never written by quantize_pages but decodes as -8
    assert page_format("int4").unpack(np.array([[0x08]], np.uint8)).tolist() == [[-8, 0]]
    with pytest.raises(ValueError, match="even"):
        page_format("int4").pack(np.zeros((1, 3), np.int8))
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        page_format("int4").pack(np.array([[8, 0]]))


def test_float32_pages_pass_through():
    pages = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    values, scales, wide, bits = page_format("float32").quantize(pages)
    assert scales is None and wide is None and bits is None and values.tobytes() == pages.tobytes()
    np.testing.assert_array_equal(page_format("float32").dequantize(values, None), pages)


def test_byte_counts_and_shapes():
    assert page_format("float32").pages_bytes(1, 512) == 2048
    assert page_format("int8").pages_bytes(1, 512) == 516
    # int4, groups of 64: 256 value bytes + 8 float16 scales + 1 kind byte; an int8 page 256 more
    assert page_format("int4").pages_bytes(1, 512) == 256 + 16 + 1
    assert page_format("int4").pages_bytes(10, 512, wide_pages=1) == 10 * 273 + 256
    assert page_format("int4", 32).pages_bytes(1, 512) == 256 + 32 + 1
    assert page_format("int8").pages_bytes(222, 512) == 222 * 516
    assert page_format("int4").values_shape(5, 512) == (5, 256)
    assert page_format("int4").scales_shape(5, 512) == (5, 8) and page_format("int4").wide_shape(2, 512) == (2, 256)
    assert page_format("int8").values_dtype == np.int8 and page_format("int4").values_dtype == np.uint8
    with pytest.raises(ValueError, match="even"):
        page_format("int4").pages_bytes(1, 511)
    with pytest.raises(ValueError, match="int5"):
        page_format("int5")


def test_refuses_bad_input():
    with pytest.raises(ValueError, match="NaN or infinite"):
        page_format("int8").quantize(np.array([[1, np.nan]], np.float32))
    with pytest.raises(ValueError, match="float32"):
        page_format("int8").quantize(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="even"):
        page_format("int4").quantize(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="scales"):
        page_format("int8").dequantize(np.zeros((2, 4), np.int8), np.zeros(3, np.float32))


@pytest.mark.parametrize("dtype", ["int8"])
def test_dequantize_any_bytes_and_scales(dtype):
    """Every stored byte and any scale decode as float32(q) * scale, a subnormal scale as a zero of
    its sign (the rule the PageGatherQuantized kernels follow on every device)."""
    rng = np.random.default_rng(5)
    fmt = page_format(dtype)
    values = rng.integers(0, 256, (6, 8)).astype(np.uint8).view(fmt.values_dtype)
    scales = np.array([0.5, -2.0, 0.0, -0.0, 1e-40, -1e-40], np.float32)
    got = fmt.dequantize(values, scales)
    for r in range(6):
        q = values[r].astype(int).tolist() if dtype == "int8" else unpack_reference(values[r])
        scale = scales[r] if abs(scales[r]) >= SCALE_FLOOR else np.copysign(np.float32(0), scales[r])
        want = np.array([np.float32(v) * np.float32(scale) for v in q], np.float32)
        assert got[r].tobytes() == want.tobytes()


def test_formats_are_data():
    """The constants of the three formats (an independent statement of the paper's layout)."""
    assert [(f.bits, f.qmax, f.quantized, f.scale_dtype, f.group_size)
            for f in map(page_format, ("float32", "int8", "int4"))] == [
        (32, None, False, "float32", 0), (8, 127, True, "float32", 0), (4, 7, True, "float16", 64)]
    assert page_format("int8").fake_qmax.dtype == np.float32 and SCALE_FLOOR == np.float32(2.0 ** -126)
    assert tuple(FORMATS) == PAGE_DTYPES  # the CLI offers the names weightsep.limits lists
    assert page_format("int8").scales_shape(3, 512) == (3,) and page_format("float32").scales_shape(3, 512) is None


# ---- int4: float16 group scales, int8 pages by importance ---------------------------------

# Every positive finite float16, ascending (an independent table to pick scales from).
HALVES = np.arange(1, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)


def int4_reference(page, group, wide):
    """One page of an int4 state, element by element: per group the smallest float16 at least
    max|x| / qmax (float32 division) and at least 2**-14, q = round half to even."""
    qmax = 127 if wide else 7
    qs, scales, deq = [], [], []
    for start in range(0, len(page), group):
        chunk = page[start:start + group]
        s32 = np.float32(max(np.float32(abs(x)) for x in chunk)) / np.float32(qmax)
        if s32 == 0:
            scale = np.float32(0)
        else:
            scale = np.float32(HALVES[np.searchsorted(HALVES, max(float(s32), 2.0 ** -14))])
        scales.append(scale)
        for x in chunk:
            q = 0 if scale == 0 else min(qmax, max(-qmax, round(float(np.float32(x) / scale))))
            qs.append(q)
            deq.append(np.float32(q) * scale)
    return qs, scales, np.array(deq, np.float32)


def decode_reference(values_row, wide_row, scales_row, group):
    """Stored int4 arrays of one page -> q and float32 values, from docs/FORMAT.md's words."""
    q = unpack_reference(values_row)
    if wide_row is not None:  # an int8 page: q = 16 h + l, l the unsigned low nibble
        low = [n for byte in wide_row for n in (int(byte) & 0xF, int(byte) >> 4)]
        q = [16 * h + l for h, l in zip(q, low)]
    return q, np.array([np.float32(v) * np.float32(scales_row[j // group]) for j, v in enumerate(q)], np.float32)


@pytest.mark.parametrize("group", [4, 8, 16])
def test_int4_groups_and_int8_pages_match_the_reference(group):
    rng = np.random.default_rng(11)
    pages = np.stack([
        rng.normal(0, 0.05, 16),
        rng.uniform(-3, 3, 16),
        np.zeros(16),
        np.r_[rng.normal(0, 1, 15), 40.0],
        np.r_[np.full(8, 1e-6), rng.normal(0, 1e-3, 8)],   # tiny groups: scales at the float16 floor
        rng.normal(0, 0.05, 16),
    ]).astype(np.float32)
    wide = np.array([False, True, False, True, True, False])
    fmt = page_format("int4", group)
    values, scales, low, bits = fmt.quantize(pages, wide)
    deq = fmt.dequantize(values, scales, low, bits)
    assert values.shape == (6, 8) and scales.shape == (6, 16 // group) and scales.dtype == np.float16
    assert bits.tolist() == [4, 8, 4, 8, 8, 4] and low.shape == (3, 8)
    wide_row = np.cumsum(wide) - 1
    for r, page in enumerate(pages):
        ref_q, ref_scales, ref_deq = int4_reference(page, group, wide[r])
        assert scales[r].astype(np.float32).tolist() == [float(x) for x in ref_scales]
        q, got = decode_reference(values[r], low[wide_row[r]] if wide[r] else None, scales[r].astype(np.float32), group)
        assert q == ref_q
        assert got.tobytes() == ref_deq.tobytes() == deq[r].tobytes()  # bit for bit
    assert np.all(np.abs(pages - deq) <= np.repeat(scales.astype(np.float32), group, axis=1) / 2 * (1 + 1e-6))
    np.testing.assert_array_equal(fmt.round_trip(pages, wide), deq)


def test_int4_scales_never_vanish_or_overflow():
    fmt = page_format("int4", 2)
    # 1e-9 / 7 would be a float16 subnormal, 1e-12 / 7 would round to zero: both get the floor 2**-14
    values, scales, _, _ = fmt.quantize(np.array([[1e-9, -1e-9, 1e-12, 0, 0, 0]], np.float32))
    assert scales.astype(np.float32).tolist() == [[2.0 ** -14, 2.0 ** -14, 0.0]]
    # rounding up: 1.0001 / 7 lies between two float16s, the larger is taken, so no weight clips
    _, scales, _, _ = fmt.quantize(np.array([[1.0001, 0.0]], np.float32))
    assert np.float32(scales[0, 0]) >= np.float32(1.0001) / np.float32(7)
    assert np.float32(np.nextafter(scales[0, 0], np.float16(0))) < np.float32(1.0001) / np.float32(7)
    with pytest.raises(ValueError, match="65504"):
        fmt.quantize(np.array([[7 * 70000.0, 0]], np.float32))
    assert fmt.quantize(np.array([[7 * 65504.0, 0]], np.float32)).scales.tolist() == [[65504.0]]


def test_int4_refuses_inconsistent_arrays():
    fmt = page_format("int4", 4)
    values, scales, low, bits = fmt.quantize(np.ones((3, 8), np.float32), np.array([True, False, False]))
    with pytest.raises(ValueError, match="low nibbles"):
        fmt.dequantize(values, scales, low[:0], bits)
    with pytest.raises(ValueError, match="4 or 8"):
        fmt.dequantize(values, scales, low, np.array([4, 5, 4], np.uint8))
    with pytest.raises(ValueError, match="float16"):
        fmt.dequantize(values, scales.astype(np.float32), low, bits)
    with pytest.raises(ValueError, match="negative"):  # the store's check of what it reads
        fmt.dequantize_checked(values, -scales, low, bits)
    with pytest.raises(ValueError, match="only int4"):
        page_format("int8").quantize(np.ones((1, 4), np.float32), np.array([True]))
    with pytest.raises(ValueError, match="group size"):
        page_format("int4", 1)


def test_group_of_and_choose_int8_pages():
    assert group_of(512, 64) == 64 and group_of(100, 64) == 50 and group_of(6, 64) == 6 and group_of(14, 4) == 2
    importance = np.array([3.0, 9.0, 1.0, 9.0, 0.0, 5.0, 2.0, 8.0, 7.0, 6.0])
    assert np.flatnonzero(choose_int8_pages(importance, 0.1)).tolist() == [1]  # a tie: the lower index
    assert np.flatnonzero(choose_int8_pages(importance, 0.3)).tolist() == [1, 3, 7]
    assert not choose_int8_pages(importance, 0.0).any() and choose_int8_pages(importance, 1.0).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        choose_int8_pages(importance, 1.5)
