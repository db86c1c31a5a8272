"""Tests of the PageGatherQuantized and PageGatherQuantizedMixed custom ops: bit for bit against
weightsep.pageformat (the one definition of the page encodings) and against independent NumPy
references written here from docs/FORMAT.md, and their argument checks.

Builds the op with `make -C custom_ops` when it is not built yet.
"""

import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

import custom_ops.page_gather as pg
import custom_ops.page_gather_quantized as pq
from custom_ops.page_gather import PageGatherError
from weightsep.pageformat import page_format

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = np.finfo(np.float32).tiny  # the smallest normal float32


def setUpModule():
    if not pg.available():
        subprocess.run(["make", "-C", os.path.join(ROOT, "custom_ops"), f"PYTHON={sys.executable}"],
                       check=True, stdout=subprocess.DEVNULL)
    pg.load_library()


def random_store(rng, rows, page_size):
    """Random int8 pages (every value, -128 included) and scales: normal, zero, negative, subnormal."""
    q = rng.integers(0, 256, (rows, page_size)).astype(np.uint8).view(np.int8)
    scale = np.ldexp(rng.uniform(0.5, 1.0, rows), rng.integers(-30, 10, rows)).astype(np.float32)
    kind = rng.integers(0, 20, rows)
    scale[kind == 0] = 0.0
    q[kind == 0] = 0                                        # a page of zeros, as the quantizer writes it
    scale[kind == 1] = -0.0
    scale[kind == 2] = np.float32(1e-40)                    # subnormal
    scale[kind == 3] *= -1
    return q, scale


def random_task(rng, num_weights, page_size, num_shared, num_exclusive, every_row=False):
    shared_q, shared_scale = random_store(rng, num_shared, page_size)
    exclusive_q, exclusive_scale = random_store(rng, num_exclusive, page_size)
    num_pages = -(-num_weights // page_size)
    rows = num_shared + num_exclusive
    table = np.resize(rng.permutation(rows), num_pages) if every_row else rng.integers(0, rows, num_pages)
    return shared_q, shared_scale, exclusive_q, exclusive_scale, table.astype(np.int32)


def bits_of(x):
    return np.asarray(x, np.float32).view(np.uint32)


def gather_rows(rows, table, num_weights):
    return rows[np.asarray(table, np.int64)].reshape(-1)[:num_weights]


def int8_reference(shared_q, shared_scale, exclusive_q, exclusive_scale, table, num_weights):
    """PageGatherQuantized from docs/FORMAT.md alone: float32(q) * scale, a subnormal scale taken
    as a zero of its sign (written with copysign, not pageformat's bit mask)."""
    stores = []
    for q, scale in ((shared_q, shared_scale), (exclusive_q, exclusive_scale)):
        scale = np.asarray(scale, np.float32)
        scale = np.where(np.abs(scale) < TINY, np.copysign(np.float32(0), scale), scale).astype(np.float32)
        stores.append(np.asarray(q, np.int8).astype(np.float32) * scale[:, None])
    return gather_rows(np.concatenate(stores), table, num_weights)


def int8_format_gather(shared_q, shared_scale, exclusive_q, exclusive_scale, table, num_weights):
    """The weights as weightsep.pageformat decodes int8 pages, gathered by table."""
    fmt = page_format("int8")
    rows = np.concatenate([fmt.dequantize(shared_q, shared_scale), fmt.dequantize(exclusive_q, exclusive_scale)])
    return gather_rows(rows, table, num_weights)


class TestCase(tf.test.TestCase):
    # tf.test.TestCase's legacy `test_session` helper is not a test.
    test_session = None


class ReferenceTest(TestCase):
    """The test's own references, checked by hand."""

    def test_int8_known_values(self):
        shared_q = np.array([[1, -2, 3, -128], [127, -127, 0, 5]], np.int8)
        exclusive_q = np.array([[10, 20, 30, 40]], np.int8)
        scale_s = np.array([0.5, 2.0], np.float32)
        scale_e = np.array([0.25], np.float32)
        got = int8_reference(shared_q, scale_s, exclusive_q, scale_e, [2, 0, 1], 10)
        self.assertAllEqual(got, [2.5, 5, 7.5, 10, 0.5, -1, 1.5, -64, 254, -254])
        scales = np.array([1e-40, -1e-40, TINY, -TINY, 0.0, -0.0, 1.5], np.float32)
        got = int8_reference(np.ones((7, 1), np.int8), scales, np.zeros((0, 1), np.int8), scales[:0], range(7), 7)
        self.assertAllEqual(bits_of(got), bits_of(np.array([0.0, -0.0, TINY, -TINY, 0.0, -0.0, 1.5], np.float32)))

    def test_mixed_known_values(self):
        # Page 0: int4, codes 1, 2, -1, -8 (bytes 0x21, 0x8F), group scales 0.5 and 2.
        # Page 1: int8, q = 16 * high + low: bytes 0x7F (highs -1, 7) and 0xA3 (highs 3, -6)
        # with low nibbles 0x0F, 0x21 -> q = -16 + 15, 112 + 0, 48 + 1, -96 + 2.
        values = np.array([[0x21, 0x8F], [0x7F, 0xA3]], np.uint8)
        scales = np.array([[0.5, 2.0], [1.0, 0.25]], np.float16)
        store = (values, scales, np.array([[0x0F, 0x21]], np.uint8), np.array([4, 8], np.uint8))
        empty = (values[:0], scales[:0], values[:0], np.zeros(0, np.uint8))
        got = mixed_reference(store, empty, [1, 0], 7)
        self.assertAllEqual(got, [-1, 112, 12.25, -23.5, 0.5, 1, -2])


class PageGatherQuantizedTest(TestCase):

    def assert_bit_exact(self, task, num_weights):
        got = pq.page_gather_quantized(*task, num_weights).numpy()
        self.assertEqual(got.dtype, np.float32)
        self.assertEqual(got.shape, (num_weights,))
        self.assertAllEqual(bits_of(got), bits_of(int8_format_gather(*task, num_weights)))
        self.assertAllEqual(bits_of(got), bits_of(int8_reference(*task, num_weights)))

    def test_bit_exact_against_the_page_format_and_the_reference(self):
        rng = np.random.default_rng(0)
        cases = [
            # (num_weights, page_size, P, E)
            (1024, 64, 20, 5),          # a page multiple
            (1000, 64, 20, 5),          # a partial last page
            (777, 6, 200, 30),          # S not a multiple of 4
            (101, 3, 40, 7),            # S odd
            (101, 1, 40, 7),            # one weight per page
            (513, 512, 2, 1),           # a last page of one weight
            (1, 512, 3, 1),             # one weight
            (12 * 32, 32, 16, 0),       # no exclusive pages
            (100, 10, 0, 13),           # no shared pages
            (300_001, 512, 700, 60),    # large enough for the CPU kernel to shard
        ]
        for num_weights, page_size, num_shared, num_exclusive in cases:
            for every_row in (False, True):
                with self.subTest(n=num_weights, S=page_size, P=num_shared, E=num_exclusive, every_row=every_row):
                    task = random_task(rng, num_weights, page_size, num_shared, num_exclusive, every_row)
                    self.assert_bit_exact(task, num_weights)

    def test_pages_written_by_the_page_format(self):
        rng = np.random.default_rng(6)
        fmt = page_format("int8")
        pages = (rng.standard_t(3, (30, 64)) * rng.uniform(1e-3, 10, (30, 1))).astype(np.float32)
        pages[0] = 0
        pages[1] *= np.float32(1e-39)  # a scale below the smallest normal float32: stored as a zero page
        shared, exclusive = fmt.quantize(pages[:20]), fmt.quantize(pages[20:])
        table = rng.permutation(30).astype(np.int32)
        got = pq.page_gather_quantized(*shared[:2], *exclusive[:2], table, 30 * 64 - 7).numpy()
        want = gather_rows(fmt.round_trip(pages), table, 30 * 64 - 7)
        self.assertAllEqual(bits_of(got), bits_of(want))

    def test_special_values(self):
        # A zero page, -128, a subnormal and a negative zero scale.
        values = [-128, 127, -1, 0]
        q = np.array([values] * 4, np.int8)
        q[0] = 0
        scale = np.array([0.0, 1e-40, -0.0, 0.75], np.float32)
        got = pq.page_gather_quantized(q, scale, q[:0], scale[:0], [0, 1, 2, 3], 16).numpy()
        self.assertAllEqual(got[:12], np.zeros(12))
        self.assertAllEqual(np.signbit(got[8:12]), np.signbit(np.float32(-0.0) * np.array(values, np.float32)))
        self.assertAllEqual(got[12:], 0.75 * np.array(values, np.float32))
        self.assert_bit_exact((q, scale, q[:0], scale[:0], np.array([0, 1, 2, 3])), 16)

    def test_zero_weights(self):
        q = np.zeros((2, 4), np.int8)
        out = pq.page_gather_quantized(q, np.ones(2, np.float32), q[:0], np.zeros(0, np.float32), [], 0)
        self.assertEqual(out.shape, (0,))

    def test_inside_tf_function_with_int64_table(self):
        task = random_task(np.random.default_rng(2), 333, 16, 10, 4)

        @tf.function(input_signature=[tf.TensorSpec([None, 16], tf.int8), tf.TensorSpec([None], tf.float32),
                                      tf.TensorSpec([None, 16], tf.int8), tf.TensorSpec([None], tf.float32),
                                      tf.TensorSpec([None], tf.int64)])
        def gather(sq, ss, eq, es, table):
            out = pq.page_gather_quantized(sq, ss, eq, es, table, 333)
            self.assertEqual(out.shape.as_list(), [333])  # static, from the attribute
            return out

        got = gather(*task[:4], task[4].astype(np.int64)).numpy()
        self.assertAllEqual(bits_of(got), bits_of(int8_format_gather(*task, 333)))
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                    r"page_table\[1\] = 4294967301 is out of range \[0, 14\)"):
            gather(*task[:4], np.array([0, 2**32 + 5] + [0] * 19, np.int64))
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "page_table has 20 entries"):
            gather(*task[:4], np.zeros(20, np.int64))
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                    r"shared_scale must hold one scale per shared page, shape \[10\]"):
            gather(task[0], task[1][:-1], *task[2:4], task[4].astype(np.int64))

    def test_not_differentiable(self):
        rng = np.random.default_rng(3)
        shared_q, shared_scale, exclusive_q, exclusive_scale, table = random_task(rng, 40, 8, 4, 2)
        s, e = tf.constant(shared_scale), tf.constant(exclusive_scale)
        with tf.GradientTape() as tape:
            tape.watch([s, e])
            out = pq.page_gather_quantized(shared_q, s, exclusive_q, e, table, 40)
        self.assertEqual(tape.gradient(out, [s, e]), [None, None])


class ArgumentTest(TestCase):
    """Wrong arguments are PageGatherErrors from the wrapper, or InvalidArgument from the kernel."""

    def setUp(self):
        self.task = random_task(np.random.default_rng(4), 20, 8, 20, 3)  # 3 pages, P + E = 23

    def gather(self, table, num_weights=20):
        shared_q, shared_scale, exclusive_q, exclusive_scale, _ = self.task
        return pq.page_gather_quantized(shared_q, shared_scale, exclusive_q, exclusive_scale, table, num_weights)

    def test_table_checks_as_page_gather(self):
        cases = [
            ([0, 2**32 + 5, 3], r"page_table\[1\] = 4294967301 is out of range \[0, 23\)"),
            (np.array([0, 23, 1], np.uint8), r"page_table\[1\] = 23 is out of range"),
            (np.array([0, -1, 1], np.int16), r"page_table\[1\] = -1 is out of range"),
            (np.array([0.0, 2.0, 1.0]), "must be an array of integers"),
            (np.array([True, False, True]), "must be an array of integers"),
            ([0, 1], "page_table has 2 entries"),
        ]
        for table, pattern in cases:
            with self.subTest(table=repr(table)):
                with self.assertRaisesRegex(PageGatherError, pattern):
                    self.gather(table)
        with self.assertRaisesRegex(PageGatherError, "num_weights must be a non-negative integer"):
            self.gather([0, 1, 2], num_weights=20.0)

    def test_dtypes_are_never_converted(self):
        shared_q, shared_scale, exclusive_q, exclusive_scale, table = self.task
        cases = [
            (dict(shared_q=shared_q.view(np.uint8)), "shared_q must be int8, got uint8"),
            (dict(shared_q=shared_q.astype(np.int16)), "shared_q must be int8, got int16"),
            (dict(exclusive_q=exclusive_q.astype(np.float32)), "exclusive_q must be int8, got float32"),
            (dict(shared_scale=shared_scale.astype(np.float64)), "shared_scale must be float32, got float64"),
            (dict(exclusive_scale=[float(x) for x in exclusive_scale]), "exclusive_scale must be float32, got float64"),
            (dict(shared_q=tf.constant(shared_q.view(np.uint8))), "shared_q must be int8, got uint8"),
            (dict(shared_scale=shared_scale[:, None]), "shared_scale must have rank 1"),
        ]
        for change, pattern in cases:
            args = dict(shared_q=shared_q, shared_scale=shared_scale, exclusive_q=exclusive_q,
                        exclusive_scale=exclusive_scale, page_table=table, num_weights=20)
            args.update(change)
            with self.subTest(change=list(change)):
                with self.assertRaisesRegex(PageGatherError, pattern):
                    pq.page_gather_quantized(**args)

    def test_shape_errors_from_the_kernel(self):
        shared_q, shared_scale, exclusive_q, exclusive_scale, table = self.task
        cases = [
            ((shared_q, shared_scale[:-1], exclusive_q, exclusive_scale), "shared_scale must hold one scale"),
            ((shared_q, shared_scale, exclusive_q, exclusive_scale[:-1]), "exclusive_scale must hold one scale"),
            ((shared_q, shared_scale, exclusive_q[:, :4], exclusive_scale), "exclusive page rows hold 4 bytes"),
        ]
        for stores, pattern in cases:
            with self.subTest(pattern=pattern):
                with self.assertRaisesRegex(tf.errors.InvalidArgumentError, pattern):
                    pq.page_gather_quantized(*stores, table, 20)


# ---- PageGatherQuantizedMixed: the pages of int4 states ---------------------------------------

def mixed_reference(shared, exclusive, table, num_weights):
    """PageGatherQuantizedMixed from docs/FORMAT.md alone: nibble k of a byte is (byte >> 4k) & 15,
    a two's-complement 4-bit code; an int8 page's q = 16 * code + its low nibble (unsigned);
    weight j = float32(q_j) * float32(scale[j // G])."""
    stores = []
    for values, scales, wide, kinds in (shared, exclusive):
        values, wide, kinds = np.asarray(values, np.int32), np.asarray(wide, np.int32), np.asarray(kinds)
        nibbles = np.stack([values % 16, values // 16], axis=-1).reshape(len(values), 2 * values.shape[1])
        q = nibbles - 16 * (nibbles > 7)
        low = np.stack([wide % 16, wide // 16], axis=-1).reshape(len(wide), 2 * wide.shape[1])
        q[kinds == 8] = 16 * q[kinds == 8] + low
        group = q.shape[1] // scales.shape[1]
        stores.append(q.astype(np.float32) * np.repeat(np.asarray(scales).astype(np.float32), group, axis=1))
    return gather_rows(np.concatenate(stores), table, num_weights)


def mixed_format_gather(shared, exclusive, table, num_weights, group):
    """The weights as weightsep.pageformat decodes int4 pages, gathered by table."""
    fmt = page_format("int4", group)
    return gather_rows(np.concatenate([fmt.dequantize(*shared), fmt.dequantize(*exclusive)]), table, num_weights)


def mixed_store(rng, rows, page_size, group, share=0.3, raw=False):
    """An int4 state's page array: quantized by weightsep.pageformat from random weights (raw:
    random bytes, every nibble, and random float16 scales: normal, subnormal, zero)."""
    wide = rng.random(rows) < share
    if not raw:
        pages = (rng.standard_t(3, (rows, page_size)) * rng.uniform(1e-4, 3, (rows, 1))).astype(np.float32)
        return page_format("int4", group).quantize(pages, wide)
    values = rng.integers(0, 256, (rows, page_size // 2)).astype(np.uint8)
    scales = np.ldexp(rng.uniform(0.5, 1, (rows, page_size // group)), rng.integers(-24, 15, (rows, page_size // group)))
    scales = scales.astype(np.float16)
    scales[rng.random(scales.shape) < 0.1] = 0
    low = rng.integers(0, 256, (int(wide.sum()), page_size // 2)).astype(np.uint8)
    return values, scales, low, np.where(wide, 8, 4).astype(np.uint8)


class MixedOpTest(TestCase):
    def test_bit_exact_against_the_page_format_and_the_reference(self):
        rng = np.random.default_rng(17)
        for page_size, group, raw in ((64, 64, False), (64, 16, False), (128, 32, True), (16, 2, True), (512, 64, False)):
            shared = mixed_store(rng, 7, page_size, group, raw=raw)
            exclusive = mixed_store(rng, 5, page_size, group, raw=raw)
            for num_weights in (12 * page_size, 3 * page_size + 5, 1):
                num_pages = -(-num_weights // page_size)
                table = np.resize(rng.permutation(12), num_pages).astype(np.int32)
                got = pq.page_gather_quantized_mixed(shared, exclusive, table, num_weights).numpy()
                want = mixed_format_gather(shared, exclusive, table, num_weights, group)
                self.assertAllEqual(bits_of(got), bits_of(want))
                self.assertAllEqual(bits_of(got), bits_of(mixed_reference(shared, exclusive, table, num_weights)))

    def test_int64_table_inside_tf_function_and_empty_exclusive(self):
        rng = np.random.default_rng(3)
        shared = mixed_store(rng, 6, 32, 8)
        exclusive = mixed_store(rng, 0, 32, 8)
        table = np.array([5, 0, 2], np.int64)

        @tf.function
        def gather(t):
            return pq.page_gather_quantized_mixed(shared, exclusive, t, 70)
        want = mixed_format_gather(shared, exclusive, table, 70, 8)
        self.assertAllEqual(bits_of(gather(tf.constant(table))), bits_of(want))

    def test_kernel_refuses_inconsistent_stores(self):
        rng = np.random.default_rng(5)
        shared = list(mixed_store(rng, 4, 16, 4, share=0.5))
        exclusive = list(mixed_store(rng, 2, 16, 4, share=0.0))
        table = np.array([0, 5], np.int32)
        cases = [
            (lambda s, e: s.__setitem__(3, np.array([4, 8, 5, 4], np.uint8)), "is not a page kind"),
            (lambda s, e: s.__setitem__(2, s[2][:0]), "one row of 8 bytes per int8 page"),
            (lambda s, e: s.__setitem__(1, -np.abs(s[1]) - np.float16(1)), "negative, infinite or NaN"),
            (lambda s, e: s.__setitem__(1, np.full_like(s[1], np.inf)), "negative, infinite or NaN"),
            (lambda s, e: e.__setitem__(1, np.ones((2, 2), np.float16)), "same group size"),
            (lambda s, e: s.__setitem__(1, np.ones((4, 3), np.float16)), "G dividing S"),
        ]
        for corrupt, message in cases:
            s, e = [a.copy() for a in shared], [a.copy() for a in exclusive]
            corrupt(s, e)
            with self.assertRaisesRegex(tf.errors.InvalidArgumentError, message):
                pq.page_gather_quantized_mixed(s, e, table, 32)
        with self.assertRaisesRegex(PageGatherError, "out of range"):
            pq.page_gather_quantized_mixed(shared, exclusive, np.array([0, 6], np.int32), 32)
        with self.assertRaisesRegex(PageGatherError, "float16"):
            pq.page_gather_quantized_mixed([shared[0], shared[1].astype(np.float32), *shared[2:]], exclusive,
                                           table, 32)
        with self.assertRaisesRegex(PageGatherError, r"\(values, scales, wide, bits\)"):
            pq.page_gather_quantized_mixed(shared[:2], exclusive, table, 32)
