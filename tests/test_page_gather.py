"""Tests of the PageGather custom op: bit for bit against weightsep.pageformat's float32 pages and
an independent NumPy reference written here, and its argument checks.

Builds the op with `make -C custom_ops` when it is not built yet.
"""

import ast
import glob
import os
import subprocess
import sys
import tempfile
from unittest import mock

import numpy as np
import tensorflow as tf

import custom_ops.page_gather as pg
from custom_ops.page_gather import PageGatherError
from weightsep.pageformat import page_format

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setUpModule():
    if not pg.available():
        subprocess.run(["make", "-C", os.path.join(ROOT, "custom_ops"), f"PYTHON={sys.executable}"],
                       check=True, stdout=subprocess.DEVNULL)
    pg.load_library()


def random_task(rng, num_weights, page_size, num_shared, num_exclusive, exclusive_fraction=0.3):
    """A random pool, exclusive store and table mixing both kinds of page."""
    shared = rng.standard_normal((num_shared, page_size)).astype(np.float32)
    exclusive = rng.standard_normal((num_exclusive, page_size)).astype(np.float32)
    num_pages = -(-num_weights // page_size)
    table = rng.integers(0, num_shared, num_pages)
    if num_exclusive:
        mask = rng.random(num_pages) < exclusive_fraction
        table[mask] = num_shared + rng.integers(0, num_exclusive, mask.sum())
    return shared, exclusive, table.astype(np.int32)


def reference(shared, exclusive, table, num_weights):
    """PageGather in plain NumPy: the table's rows of shared then exclusive, flattened, cut."""
    rows = np.concatenate([np.asarray(shared, np.float32), np.asarray(exclusive, np.float32)])
    return rows[np.asarray(table, np.int64)].reshape(-1)[:num_weights]


def format_gather(shared, exclusive, table, num_weights):
    """The weights of the pages as weightsep.pageformat decodes float32 pages, gathered by table."""
    fmt = page_format("float32")
    rows = np.concatenate([fmt.dequantize(shared), fmt.dequantize(exclusive)])
    return rows[np.asarray(table, np.int64)].reshape(-1)[:num_weights]


class TestCase(tf.test.TestCase):
    # tf.test.TestCase has a legacy `test_session` helper that pytest would collect and
    # report as skipped; it is not a test.
    test_session = None


class ReferenceTest(TestCase):

    def test_known_values(self):
        shared = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
        exclusive = np.array([[7, 8, 9]], np.float32)
        got = reference(shared, exclusive, [2, 0, 1], 8)
        self.assertAllEqual(got, [7, 8, 9, 1, 2, 3, 4, 5])


class PageGatherTest(TestCase):

    def assert_matches_reference(self, shared, exclusive, table, num_weights):
        got = pg.page_gather(shared, exclusive, table, num_weights).numpy()
        want = reference(shared, exclusive, table, num_weights)
        self.assertEqual(got.shape, (num_weights,))
        self.assertAllEqual(got.view(np.uint32), want.view(np.uint32))
        self.assertAllEqual(got.view(np.uint32), format_gather(shared, exclusive, table, num_weights).view(np.uint32))

    def test_matches_reference(self):
        rng = np.random.default_rng(0)
        cases = [
            # (num_weights, page_size, P, E)
            (1024, 64, 20, 5),       # a page multiple
            (1000, 64, 20, 5),       # a partial last page
            (777, 5, 200, 30),       # page size not a multiple of 4
            (1, 512, 3, 1),          # one weight
            (12 * 512, 512, 16, 0),  # empty exclusive store
            (300_001, 512, 700, 60), # large enough for the CPU kernel to shard
        ]
        for num_weights, page_size, num_shared, num_exclusive in cases:
            with self.subTest(n=num_weights, S=page_size, P=num_shared, E=num_exclusive):
                shared, exclusive, table = random_task(rng, num_weights, page_size, num_shared, num_exclusive)
                self.assert_matches_reference(shared, exclusive, table, num_weights)

    def test_only_exclusive_pages(self):
        rng = np.random.default_rng(1)
        shared, exclusive, _ = random_task(rng, 100, 8, 4, 13)
        table = (4 + rng.permutation(13)).astype(np.int32)
        self.assert_matches_reference(shared, exclusive, table, 100)

    def test_zero_weights(self):
        out = pg.page_gather(np.ones((2, 4), np.float32), np.zeros((0, 4), np.float32),
                             np.zeros([0], np.int32), 0)
        self.assertEqual(out.shape, (0,))

    def test_entry_out_of_range_names_entry(self):
        shared = np.ones((4, 8), np.float32)
        exclusive = np.ones((2, 8), np.float32)
        for bad, value in [(2, -1), (0, 6), (3, 1 << 30)]:
            table = np.array([0, 4, 1, 5], np.int32)
            table[bad] = value
            with self.subTest(entry=bad, value=value):
                with self.assertRaisesRegex(PageGatherError,
                                            rf"page_table\[{bad}\] = {value} is out of range \[0, 6\)"):
                    pg.page_gather(shared, exclusive, table, 30)

    def test_bad_shapes(self):
        table = np.zeros([2], np.int32)
        kernel = (tf.errors.InvalidArgumentError, ValueError)
        cases = [
            (np.ones([16], np.float32), np.ones((1, 8), np.float32), table, kernel, "rank|matrix"),
            (np.ones((2, 8), np.float32), np.ones((1, 4), np.float32), table, kernel, "8 and 4|same page size"),
            (np.ones((2, 8), np.float32), np.ones((1, 8), np.float32), np.zeros((2, 1), np.int32),
             PageGatherError, "1-D vector"),
        ]
        for shared, exclusive, tab, error, pattern in cases:
            with self.subTest(shared=shared.shape, exclusive=exclusive.shape, table=tab.shape):
                with self.assertRaisesRegex(error, pattern):
                    pg.page_gather(shared, exclusive, tab, 10)

    def test_num_weights_inconsistent_with_table(self):
        shared = np.ones((4, 8), np.float32)
        exclusive = np.ones((1, 8), np.float32)
        table = np.zeros([3], np.int32)
        for num_weights in [16, 25]:  # needs 2 and 4 pages, the table has 3
            with self.subTest(num_weights=num_weights):
                with self.assertRaisesRegex(PageGatherError, "page_table has 3 entries"):
                    pg.page_gather(shared, exclusive, table, num_weights)

    def test_table_length_checked_by_kernel_when_shape_unknown(self):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
        def gather(table):
            return pg.page_gather(tf.ones((4, 8)), tf.ones((1, 8)), table, 20)

        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "page_table has 2 entries"):
            gather(tf.zeros([2], tf.int32))

    def test_inside_tf_function(self):
        rng = np.random.default_rng(2)
        shared, exclusive, table = random_task(rng, 333, 16, 10, 4)

        @tf.function(input_signature=[tf.TensorSpec([None, 16], tf.float32),
                                      tf.TensorSpec([None, 16], tf.float32),
                                      tf.TensorSpec([None], tf.int32)])
        def gather(s, e, t):
            out = pg.page_gather(s, e, t, 333)
            self.assertEqual(out.shape.as_list(), [333])  # static, from the attribute
            return out * 2.0

        got = gather(shared, exclusive, table).numpy()
        self.assertAllEqual(got, 2.0 * reference(shared, exclusive, table, 333))

    def test_gradient_matches_numerical(self):
        rng = np.random.default_rng(3)
        shared, exclusive, _ = random_task(rng, 11, 4, 3, 2)
        table = np.array([4, 0, 0], np.int32)  # shared page 0 used twice, exclusive page 1 once
        weights = rng.standard_normal(11).astype(np.float32)

        def loss(s, e):
            return tf.reduce_sum(pg.page_gather(s, e, table, 11) * weights)

        theoretical, numerical = tf.test.compute_gradient(loss, [shared, exclusive])
        for t, n in zip(theoretical, numerical):
            self.assertAllClose(t, n, atol=1e-2)

    def test_gradient_scatter_adds(self):
        rng = np.random.default_rng(4)
        shared, exclusive, _ = random_task(rng, 10, 4, 3, 2)
        table = np.array([4, 0, 0], np.int32)
        upstream = rng.standard_normal(10).astype(np.float32)
        s, e = tf.constant(shared), tf.constant(exclusive)
        with tf.GradientTape() as tape:
            tape.watch([s, e])
            out = pg.page_gather(s, e, table, 10)
        grad_s, grad_e = tape.gradient(out, [s, e], output_gradients=tf.constant(upstream))
        padded = np.concatenate([upstream, np.zeros(2, np.float32)]).reshape(3, 4)
        want_s = np.zeros_like(shared)
        want_s[0] = padded[1] + padded[2]
        want_e = np.zeros_like(exclusive)
        want_e[1] = padded[0]
        self.assertAllClose(grad_s, want_s)
        self.assertAllClose(grad_e, want_e)


class TableValidationTest(TestCase):
    """A table the op would misread (wrapped, truncated, out of range) is an error, never a gather."""

    def setUp(self):
        rng = np.random.default_rng(5)
        self.shared, self.exclusive, _ = random_task(rng, 20, 8, 20, 3)  # P = 20, E = 3, 3 pages

    def gather(self, table, num_weights=20):
        return pg.page_gather(self.shared, self.exclusive, table, num_weights)

    def test_entry_beyond_int32_is_not_wrapped(self):
        # 2**32 + 5 wraps to 5 in int32: it must be refused, not read as shared page 5.
        message = r"page_table\[1\] = 4294967301 is out of range \[0, 23\)"
        for table in ([0, 2**32 + 5, 3], np.array([0, 2**32 + 5, 3], np.int64), np.array([0, 2**32 + 5, 3], np.uint64)):
            with self.subTest(table=repr(table)):
                with self.assertRaisesRegex(PageGatherError, message):
                    self.gather(table)
        # A tensor goes to the kernel as it is, which checks int64 entries before narrowing.
        for table in (tf.constant([0, 2**32 + 5, 3], tf.int64), tf.Variable([0, 2**32 + 5, 3], dtype=tf.int64)):
            with self.subTest(table=type(table).__name__):
                with self.assertRaisesRegex(tf.errors.InvalidArgumentError, message):
                    self.gather(table)

    def test_non_integer_tables_are_refused(self):
        for table in (np.array([0.0, 2.0, 1.0]), [0.0, 2.0, 1.0], np.array([0, 2, 1], np.float32),
                      np.array([True, False, True]), [True, False, True],
                      np.array(["0", "2", "1"]), np.array([0, 2, 1], object)):
            with self.subTest(table=repr(table)):
                with self.assertRaisesRegex(PageGatherError, "page_table must be an array of integers"):
                    self.gather(table)
        for table in (tf.constant([0.0, 2.0, 1.0]), tf.constant([True, False, True]), tf.constant([0, 2, 1], tf.uint8)):
            with self.subTest(table=repr(table)):
                with self.assertRaisesRegex(PageGatherError, "page_table must be an int32 or int64 tensor"):
                    self.gather(table)

    def test_out_of_range_entry_of_every_integer_dtype(self):
        for dtype in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64):
            for value in ([23, 100] + ([-1, -100] if np.issubdtype(dtype, np.signedinteger) else [])):
                table = np.array([0, 22, 4], dtype)
                table[2] = value
                with self.subTest(dtype=np.dtype(dtype).name, value=value):
                    with self.assertRaisesRegex(PageGatherError, rf"page_table\[2\] = {value} is out of range"):
                        self.gather(table)

    def test_every_integer_dtype_in_range_matches_reference(self):
        want = reference(self.shared, self.exclusive, [21, 0, 19], 20)
        self.assertAllEqual(want[:8], self.exclusive[1])  # the reference itself, checked by hand
        for dtype in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64):
            with self.subTest(dtype=np.dtype(dtype).name):
                self.assertAllEqual(self.gather(np.array([21, 0, 19], dtype)), want)
        self.assertAllEqual(self.gather([21, 0, 19]), want)
        for dtype in (tf.int32, tf.int64):
            self.assertAllEqual(self.gather(tf.constant([21, 0, 19], dtype)), want)
            self.assertAllEqual(self.gather(tf.Variable([21, 0, 19], dtype=dtype)), want)

    def test_wrong_shapes_and_lengths(self):
        for table, pattern in [([0, 1], "page_table has 2 entries .* needs ceil\\(20 / 8\\) = 3 pages"),
                               ([0, 1, 2, 3], "page_table has 4 entries"),
                               (np.zeros((3, 1), np.int32), "1-D vector")]:
            with self.subTest(table=np.shape(table)):
                with self.assertRaisesRegex(PageGatherError, pattern):
                    self.gather(table)

    def test_num_weights_must_be_a_non_negative_integer(self):
        for num_weights in (20.0, True, -1, "20", None, np.float32(20)):
            with self.subTest(num_weights=repr(num_weights)):
                with self.assertRaisesRegex(PageGatherError, "num_weights must be a non-negative integer"):
                    self.gather([0, 1, 2], num_weights)
        self.assertEqual(self.gather([0, 1, 2], np.int64(20)).shape, (20,))

    def test_tensor_tables_are_checked_by_the_kernel(self):
        for dtype in (tf.int32, tf.int64):
            with self.subTest(dtype=dtype.name):
                with self.assertRaisesRegex(tf.errors.InvalidArgumentError, r"page_table\[2\] = 23 is out of range"):
                    self.gather(tf.constant([0, 0, 23], dtype))
                with self.assertRaisesRegex(tf.errors.InvalidArgumentError, r"page_table\[0\] = -1 is out of range"):
                    self.gather(tf.constant([-1, 0, 5], dtype))
                with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "page_table has 2 entries"):
                    self.gather(tf.constant([0, 0], dtype))
        with self.assertRaisesRegex(PageGatherError, "1-D vector"):
            self.gather(tf.zeros((3, 1), tf.int32))

    def test_symbolic_tables_are_checked_by_the_kernel(self):
        for dtype in (tf.int32, tf.int64):
            @tf.function(input_signature=[tf.TensorSpec([None], dtype)])
            def gather(table):
                return self.gather(table)

            with self.subTest(dtype=dtype.name):
                self.assertAllEqual(gather(tf.constant([22, 0, 5], dtype)),
                                    reference(self.shared, self.exclusive, [22, 0, 5], 20))
                with self.assertRaisesRegex(tf.errors.InvalidArgumentError, r"page_table\[0\] = -1 is out of range"):
                    gather(tf.constant([-1, 0, 5], dtype))
                with self.assertRaisesRegex(tf.errors.InvalidArgumentError, r"page_table\[2\] = 23 is out of range"):
                    gather(tf.constant([0, 0, 23], dtype))
                with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "page_table has 2 entries"):
                    gather(tf.constant([0, 0], dtype))
                if dtype == tf.int64:  # checked in int64, before the kernel narrows it
                    with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                                r"page_table\[1\] = 4294967301 is out of range \[0, 23\)"):
                        gather(tf.constant([0, 2**32 + 5, 3], dtype))

    def test_symbolic_non_integer_table_is_refused(self):
        for dtype in (tf.float32, tf.bool, tf.uint8):
            with self.subTest(dtype=dtype.name):
                @tf.function(input_signature=[tf.TensorSpec([None], dtype)])
                def gather(table):
                    return self.gather(table)

                with self.assertRaisesRegex(PageGatherError, "page_table must be an int32 or int64 tensor"):
                    gather.get_concrete_function()


class PackageTest(TestCase):

    def test_custom_ops_imports_nothing_of_weightsep(self):
        # custom_ops stands alone, as the custom-op template's ops know nothing of their users.
        sources = glob.glob(os.path.join(ROOT, "custom_ops", "*.py"))
        self.assertIn(os.path.join(ROOT, "custom_ops", "page_gather.py"), sources)
        for path in sources:
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                for name in names:
                    with self.subTest(file=os.path.basename(path), module=name):
                        self.assertNotEqual(name.split(".")[0], "weightsep")


class LoadingTest(TestCase):

    def test_stale_or_missing_library_names_the_build_command(self):
        with tempfile.TemporaryDirectory() as tmp:
            stamp = os.path.join(tmp, "stamp")
            with open(stamp, "w") as f:
                f.write("0.0.1\n")
            cases = [
                (pg.LIBRARY_PATH, stamp, "built for TensorFlow 0.0.1"),
                (os.path.join(tmp, "missing.so"), stamp, "not built"),
                (pg.LIBRARY_PATH, os.path.join(tmp, "none"), "version"),
            ]
            for lib, stamp_path, pattern in cases:
                with self.subTest(pattern=pattern), mock.patch.object(pg, "_module", None), \
                        mock.patch.object(pg, "LIBRARY_PATH", lib), mock.patch.object(pg, "STAMP_PATH", stamp_path):
                    with self.assertRaisesRegex(PageGatherError, pattern + r".*make -C custom_ops"):
                        pg.load_library()
                    self.assertFalse(pg.available())


if __name__ == "__main__":
    tf.test.main()
