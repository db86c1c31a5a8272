"""Tests of the PageGatherQuantized custom op: bit-exact against the NumPy reference, and its checks.

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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE_DTYPE = {8: np.int8, 4: np.uint8}


def setUpModule():
    if not pg.available():
        subprocess.run(["make", "-C", os.path.join(ROOT, "custom_ops"), f"PYTHON={sys.executable}"],
                       check=True, stdout=subprocess.DEVNULL)
    pg.load_library()


def random_store(rng, rows, page_size, bits):
    """Random bytes (every int8 value, every nibble) and scales: normal, zero, negative, subnormal."""
    width = page_size if bits == 8 else page_size // 2
    q = rng.integers(0, 256, (rows, width)).astype(np.uint8).view(PAGE_DTYPE[bits])
    scale = np.ldexp(rng.uniform(0.5, 1.0, rows), rng.integers(-30, 10, rows)).astype(np.float32)
    kind = rng.integers(0, 20, rows)
    scale[kind == 0] = 0.0
    q[kind == 0] = 0                                        # a page of zeros, as the quantizer writes it
    scale[kind == 1] = -0.0
    scale[kind == 2] = np.float32(1e-40)                    # subnormal
    scale[kind == 3] *= -1
    return q, scale


def random_task(rng, num_weights, page_size, num_shared, num_exclusive, bits, every_row=False):
    shared_q, shared_scale = random_store(rng, num_shared, page_size, bits)
    exclusive_q, exclusive_scale = random_store(rng, num_exclusive, page_size, bits)
    num_pages = -(-num_weights // page_size)
    rows = num_shared + num_exclusive
    table = np.resize(rng.permutation(rows), num_pages) if every_row else rng.integers(0, rows, num_pages)
    return shared_q, shared_scale, exclusive_q, exclusive_scale, table.astype(np.int32)


def bits_of(x):
    return np.asarray(x, np.float32).view(np.uint32)


class TestCase(tf.test.TestCase):
    # tf.test.TestCase's legacy `test_session` helper is not a test.
    test_session = None


class ReferenceTest(TestCase):

    def test_unpack_int4_low_nibble_first_twos_complement(self):
        packed = np.array([[0x8F, 0x70, 0x12], [0x00, 0xFF, 0x88]], np.uint8)
        self.assertAllEqual(pq.unpack_int4(packed), [[-1, -8, 0, 7, 2, 1], [0, 0, -1, -1, -8, -8]])

    def test_known_values(self):
        shared_q = np.array([[1, -2, 3, -128], [127, -127, 0, 5]], np.int8)
        exclusive_q = np.array([[10, 20, 30, 40]], np.int8)
        scale_s = np.array([0.5, 2.0], np.float32)
        scale_e = np.array([0.25], np.float32)
        got = pq.page_gather_quantized_reference(shared_q, scale_s, exclusive_q, scale_e, [2, 0, 1], 10, bits=8)
        self.assertAllEqual(got, [2.5, 5, 7.5, 10, 0.5, -1, 1.5, -64, 254, -254])
        packed = np.array([[0x21, 0x8F]], np.uint8)  # values 1, 2, -1, -8
        got = pq.page_gather_quantized_reference(packed, np.array([3.0], np.float32), np.zeros((0, 2), np.uint8),
                                                 np.zeros(0, np.float32), [0], 4, bits=4)
        self.assertAllEqual(got, [3, 6, -3, -24])

    def test_effective_scale_flushes_subnormals_to_signed_zero(self):
        tiny = np.finfo(np.float32).tiny  # the smallest normal float32
        scales = np.array([1e-40, -1e-40, tiny, -tiny, 0.0, -0.0, 1.5], np.float32)
        want = np.array([0.0, -0.0, tiny, -tiny, 0.0, -0.0, 1.5], np.float32)
        self.assertAllEqual(bits_of(pq.effective_scale(scales)), bits_of(want))


class PageGatherQuantizedTest(TestCase):

    def assert_bit_exact(self, task, num_weights, bits):
        got = pq.page_gather_quantized(*task, num_weights, bits=bits).numpy()
        want = pq.page_gather_quantized_reference(*task, num_weights, bits=bits)
        self.assertEqual(got.dtype, np.float32)
        self.assertEqual(got.shape, (num_weights,))
        self.assertAllEqual(bits_of(got), bits_of(want))

    def test_bit_exact_against_reference(self):
        rng = np.random.default_rng(0)
        cases = [
            # (num_weights, page_size, P, E)
            (1024, 64, 20, 5),          # a page multiple
            (1000, 64, 20, 5),          # a partial last page
            (777, 6, 200, 30),          # S even, not a multiple of 4
            (513, 512, 2, 1),           # a last page of one weight
            (1, 512, 3, 1),             # one weight
            (12 * 32, 32, 16, 0),       # no exclusive pages
            (100, 10, 0, 13),           # no shared pages
            (300_001, 512, 700, 60),    # large enough for the CPU kernel to shard
        ]
        for bits in (8, 4):
            for num_weights, page_size, num_shared, num_exclusive in cases:
                for every_row in (False, True):
                    with self.subTest(bits=bits, n=num_weights, S=page_size, P=num_shared, E=num_exclusive,
                                      every_row=every_row):
                        task = random_task(rng, num_weights, page_size, num_shared, num_exclusive, bits, every_row)
                        self.assert_bit_exact(task, num_weights, bits)

    def test_odd_page_size_with_int8(self):
        rng = np.random.default_rng(1)
        for page_size in (1, 3, 5):
            with self.subTest(S=page_size):
                self.assert_bit_exact(random_task(rng, 101, page_size, 40, 7, 8), 101, 8)

    def test_special_values(self):
        # A zero page, -128, the -8 nibble, a subnormal and a negative zero scale.
        for bits, row in [(8, [-128, 127, -1, 0]), (4, [0x88, 0x7F])]:
            q = np.array([row, row, row, row], PAGE_DTYPE[bits])
            q[0] = 0
            scale = np.array([0.0, 1e-40, -0.0, 0.75], np.float32)
            with self.subTest(bits=bits):
                got = pq.page_gather_quantized(q, scale, q[:0], scale[:0], [0, 1, 2, 3], 16, bits=bits).numpy()
                values = [-128, 127, -1, 0] if bits == 8 else [-8, -8, -1, 7]
                self.assertAllEqual(got[:12], np.zeros(12))
                self.assertAllEqual(np.signbit(got[8:12]), np.signbit(np.float32(-0.0) * np.array(values, np.float32)))
                self.assertAllEqual(got[12:], 0.75 * np.array(values, np.float32))
                self.assert_bit_exact((q, scale, q[:0], scale[:0], np.array([0, 1, 2, 3])), 16, bits)

    def test_zero_weights(self):
        q = np.zeros((2, 4), np.int8)
        out = pq.page_gather_quantized(q, np.ones(2, np.float32), q[:0], np.zeros(0, np.float32), [], 0)
        self.assertEqual(out.shape, (0,))

    def test_inside_tf_function_with_int64_table(self):
        rng = np.random.default_rng(2)
        for bits in (8, 4):
            task = random_task(rng, 333, 16, 10, 4, bits)
            width = task[0].shape[1]

            @tf.function(input_signature=[tf.TensorSpec([None, width], tf.as_dtype(PAGE_DTYPE[bits])),
                                          tf.TensorSpec([None], tf.float32),
                                          tf.TensorSpec([None, width], tf.as_dtype(PAGE_DTYPE[bits])),
                                          tf.TensorSpec([None], tf.float32),
                                          tf.TensorSpec([None], tf.int64)])
            def gather(sq, ss, eq, es, table):
                out = pq.page_gather_quantized(sq, ss, eq, es, table, 333, bits=bits)
                self.assertEqual(out.shape.as_list(), [333])  # static, from the attribute
                return out

            with self.subTest(bits=bits):
                got = gather(*task[:4], task[4].astype(np.int64)).numpy()
                self.assertAllEqual(bits_of(got), bits_of(pq.page_gather_quantized_reference(*task, 333, bits)))
                with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                            r"page_table\[1\] = 4294967301 is out of range \[0, 14\)"):
                    gather(*task[:4], np.array([0, 2**32 + 5] + [0] * 19, np.int64))
                with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "page_table has 20 entries"):
                    gather(*task[:4], np.zeros(20, np.int64))
                bad_scale = task[1][:-1]
                with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                            r"shared_scale must hold one scale per shared page, shape \[10\]"):
                    gather(task[0], bad_scale, *task[2:4], task[4].astype(np.int64))

    def test_not_differentiable(self):
        rng = np.random.default_rng(3)
        shared_q, shared_scale, exclusive_q, exclusive_scale, table = random_task(rng, 40, 8, 4, 2, 8)
        s, e = tf.constant(shared_scale), tf.constant(exclusive_scale)
        with tf.GradientTape() as tape:
            tape.watch([s, e])
            out = pq.page_gather_quantized(shared_q, s, exclusive_q, e, table, 40)
        self.assertEqual(tape.gradient(out, [s, e]), [None, None])


class ArgumentTest(TestCase):
    """Wrong arguments are PageGatherErrors from the wrapper, or InvalidArgument from the kernel."""

    def setUp(self):
        self.task = random_task(np.random.default_rng(4), 20, 8, 20, 3, 8)  # 3 pages, P + E = 23

    def gather(self, table, num_weights=20, bits=8, task=None):
        shared_q, shared_scale, exclusive_q, exclusive_scale, _ = task or self.task
        return pq.page_gather_quantized(shared_q, shared_scale, exclusive_q, exclusive_scale, table,
                                        num_weights, bits=bits)

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
        with self.assertRaisesRegex(PageGatherError, r"page_table\[1\] = 4294967301"):
            pq.page_gather_quantized_reference(*self.task[:4], [0, 2**32 + 5, 3], 20)

    def test_bits_and_dtypes_must_agree(self):
        shared_q, shared_scale, exclusive_q, exclusive_scale, table = self.task
        for bits in (3, 16, True, "8", None):
            with self.subTest(bits=bits):
                with self.assertRaisesRegex(PageGatherError, "bits must be 8 .* or 4"):
                    self.gather(table, bits=bits)
        cases = [
            (dict(bits=4), "shared_q must be uint8, got int8"),
            (dict(shared_q=shared_q.astype(np.int16)), "shared_q must be int8, got int16"),
            (dict(exclusive_q=exclusive_q.astype(np.float32)), "exclusive_q must be int8, got float32"),
            (dict(shared_scale=shared_scale.astype(np.float64)), "shared_scale must be float32, got float64"),
            (dict(exclusive_scale=[float(x) for x in exclusive_scale]), "exclusive_scale must be float32, got float64"),
            (dict(shared_q=tf.constant(shared_q.astype(np.uint8))), "shared_q must be int8, got uint8"),
            (dict(shared_scale=shared_scale[:, None]), "shared_scale must have rank 1"),
        ]
        for change, pattern in cases:
            args = dict(shared_q=shared_q, shared_scale=shared_scale, exclusive_q=exclusive_q,
                        exclusive_scale=exclusive_scale, page_table=table, num_weights=20, bits=8)
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

def mixed_store(rng, rows, page_size, group, share=0.3, raw=False):
    """An int4 state's page array: quantized by weightsep.pageformat from random weights (raw:
    random bytes, every nibble, and random float16 scales: normal, subnormal, zero)."""
    from weightsep.pageformat import page_format
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
        from weightsep.pageformat import page_format
        rng = np.random.default_rng(17)
        for page_size, group, raw in ((64, 64, False), (64, 16, False), (128, 32, True), (16, 2, True), (512, 64, False)):
            shared = mixed_store(rng, 7, page_size, group, raw=raw)
            exclusive = mixed_store(rng, 5, page_size, group, raw=raw)
            for num_weights in (12 * page_size, 3 * page_size + 5, 1):
                num_pages = -(-num_weights // page_size)
                table = np.resize(rng.permutation(12), num_pages).astype(np.int32)
                got = pq.page_gather_quantized_mixed(shared, exclusive, table, num_weights).numpy()
                fmt = page_format("int4", group)
                floats = np.concatenate([fmt.dequantize(*shared), fmt.dequantize(*exclusive)])
                want = floats[table].reshape(-1)[:num_weights]
                self.assertAllEqual(bits_of(got), bits_of(want))
                ref = pq.page_gather_mixed_reference(shared, exclusive, table, num_weights)
                self.assertAllEqual(bits_of(ref), bits_of(want))

    def test_int64_table_inside_tf_function_and_empty_exclusive(self):
        rng = np.random.default_rng(3)
        shared = mixed_store(rng, 6, 32, 8)
        exclusive = mixed_store(rng, 0, 32, 8)
        table = np.array([5, 0, 2], np.int64)

        @tf.function
        def gather(t):
            return pq.page_gather_quantized_mixed(shared, exclusive, t, 70)
        want = pq.page_gather_mixed_reference(shared, exclusive, table, 70)
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
