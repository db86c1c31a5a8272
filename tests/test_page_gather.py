"""Tests of the PageGather custom op against the NumPy reference.

Builds the op with `make -C custom_ops` when it is not built yet.
"""

import os
import subprocess
import sys
import tempfile
from unittest import mock

import numpy as np
import tensorflow as tf

import custom_ops.page_gather as pg
from weightsep.errors import WeightSepError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setUpModule():
    if not pg.available():
        subprocess.run(["make", "-C", os.path.join(ROOT, "custom_ops"), f"PYTHON={sys.executable}"],
                       check=True, stdout=subprocess.DEVNULL)
    pg._load()


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


class TestCase(tf.test.TestCase):
    # tf.test.TestCase has a legacy `test_session` helper that pytest would collect and
    # report as skipped; it is not a test.
    test_session = None


class ReferenceTest(TestCase):

    def test_known_values(self):
        shared = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
        exclusive = np.array([[7, 8, 9]], np.float32)
        got = pg.page_gather_reference(shared, exclusive, [2, 0, 1], 8)
        self.assertAllEqual(got, [7, 8, 9, 1, 2, 3, 4, 5])


class PageGatherTest(TestCase):

    def assert_matches_reference(self, shared, exclusive, table, num_weights):
        got = pg.page_gather(shared, exclusive, table, num_weights).numpy()
        want = pg.page_gather_reference(shared, exclusive, table, num_weights)
        self.assertEqual(got.shape, (num_weights,))
        self.assertAllEqual(got, want)

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
                with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                            rf"page_table\[{bad}\] = {value} is out of range \[0, 6\)"):
                    pg.page_gather(shared, exclusive, table, 30)

    def test_bad_shapes(self):
        table = np.zeros([2], np.int32)
        cases = [
            (np.ones([16], np.float32), np.ones((1, 8), np.float32), table, "rank|matrix"),
            (np.ones((2, 8), np.float32), np.ones((1, 4), np.float32), table, "8 and 4|same page size"),
            (np.ones((2, 8), np.float32), np.ones((1, 8), np.float32), np.zeros((2, 1), np.int32), "rank|vector"),
        ]
        for shared, exclusive, tab, pattern in cases:
            with self.subTest(shared=shared.shape, exclusive=exclusive.shape, table=tab.shape):
                with self.assertRaisesRegex((tf.errors.InvalidArgumentError, ValueError), pattern):
                    pg.page_gather(shared, exclusive, tab, 10)

    def test_num_weights_inconsistent_with_table(self):
        shared = np.ones((4, 8), np.float32)
        exclusive = np.ones((1, 8), np.float32)
        table = np.zeros([3], np.int32)
        for num_weights in [16, 25]:  # needs 2 and 4 pages, the table has 3
            with self.subTest(num_weights=num_weights):
                with self.assertRaisesRegex((tf.errors.InvalidArgumentError, ValueError),
                                            "page_table has 3 entries"):
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
        self.assertAllEqual(got, 2.0 * pg.page_gather_reference(shared, exclusive, table, 333))

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
                    with self.assertRaisesRegex(WeightSepError, pattern + r".*make -C custom_ops"):
                        pg._load()
                    self.assertFalse(pg.available())


if __name__ == "__main__":
    tf.test.main()
