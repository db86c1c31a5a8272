"""weightsep.data on small files written here: each original format, every check of bad data
(empty splits, label types, huge values, idx bombs), checksums, and synthetic data through it."""

import dataclasses
import gzip
import hashlib
import re
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from weightsep import data, datacheck
from weightsep.errors import DataError, WeightSepError
from weightsep.tasks import PAPER_TASKS, REPO_ROOT, load_task


@pytest.fixture(autouse=True)
def _fresh_cache():
    data.clear_cache()
    yield
    data.clear_cache()


def task_in(tmp_path, name="svhn"):
    return dataclasses.replace(load_task(name), folder=tmp_path)


def images(n, shape, seed=0):
    return np.random.default_rng(seed).random((n,) + tuple(shape)).astype(np.float64)


def one_hot(y, k):
    out = np.zeros((len(y), k))
    out[np.arange(len(y)), y] = 1.0
    return out


def write_split(task, split, x, labels):
    data_file, label_file = task.data.split(split)
    np.save(task.path(data_file), x)
    np.save(task.path(label_file), labels)


# --- the npy format -----------------------------------------------------------------


def test_flattened_data_and_one_hot_labels(tmp_path):
    task = task_in(tmp_path)
    x = images(7, (32, 32, 3))
    y = np.array([0, 1, 2, 9, 4, 5, 3])
    write_split(task, "test", x.reshape(7, -1), one_hot(y, 10))
    ds = data.load_split(task, "test")
    assert ds.x.dtype == np.float32 and ds.x.shape == (7, 32, 32, 3)
    assert ds.y.dtype == np.int64
    np.testing.assert_array_equal(ds.y, y)
    # Flattened rows are NHWC order.
    np.testing.assert_allclose(ds.x, x.astype(np.float32))
    assert ds.files == ("svhn_test_data.npy", "svhn_test_label.npy") and len(ds) == 7


def test_shaped_data_and_integer_labels(tmp_path):
    task = task_in(tmp_path)
    x = images(5, (32, 32, 3), seed=1)
    for labels in (np.array([3, 1, 4, 1, 5]), np.array([[3], [1], [4], [1], [5]], dtype=np.float32)):
        write_split(task, "test", x, labels)
        data.clear_cache()
        ds = data.load_split(task, "test")
        np.testing.assert_array_equal(ds.y, [3, 1, 4, 1, 5])
        np.testing.assert_allclose(ds.x, x.astype(np.float32))


def test_hw_data_accepted_when_one_channel(tmp_path):
    task = task_in(tmp_path, "gtsrb")
    x = images(4, (32, 32), seed=2)
    write_split(task, "test", x, np.array([0, 42, 7, 1]))
    ds = data.load_split(task, "test")
    assert ds.x.shape == (4, 32, 32, 1)
    np.testing.assert_allclose(ds.x[..., 0], x.astype(np.float32))


def test_arrays_are_read_only_and_cached(tmp_path):
    task = task_in(tmp_path)
    write_split(task, "test", images(3, (3072,)), np.array([0, 1, 2]))
    first = data.load_split(task, "test")
    assert data.load_split(task, "test") is first
    with pytest.raises(ValueError):
        first.x[0, 0, 0, 0] = 1.0


def test_replaced_file_is_reloaded(tmp_path):
    task = task_in(tmp_path)
    write_split(task, "test", images(3, (3072,)), np.array([0, 1, 2]))
    assert len(data.load_split(task, "test")) == 3
    write_split(task, "test", images(4, (3072,)), np.array([0, 1, 2, 3]))
    assert len(data.load_split(task, "test")) == 4


# --- splits ----------------------------------------------------------------------------


def test_validation_files_used_when_listed(tmp_path):
    task = task_in(tmp_path)  # svhn lists validation files
    write_split(task, "train", images(20, (3072,)), np.arange(20) % 10)
    write_split(task, "validation", images(6, (3072,), seed=5), np.arange(6))
    assert len(data.load_split(task, "train")) == 20
    val = data.load_split(task, "validation")
    np.testing.assert_array_equal(val.y, np.arange(6))
    assert val.files[0] == "svhn_validation_data.npy"
    assert data.num_examples(task, "train") == 20 and data.num_examples(task, "validation") == 6


def test_train_files_are_all_training_unless_a_validation_split_is_asked(tmp_path):
    """As the original: no validation files, no validation split; the whole files train.  Asked for
    (validation_split=0.1), the last 10% become validation and the first 90% train."""
    task = task_in(tmp_path, "cifar10")  # cifar10 lists no validation files
    x = images(100, (3072,))
    y = np.arange(100) % 10
    write_split(task, "train", x, one_hot(y, 10))
    whole = data.load_split(task, "train")
    assert len(whole) == 100 and data.num_examples(task, "train") == 100
    np.testing.assert_array_equal(whole.y, y)
    for ask in (lambda: data.load_split(task, "validation"), lambda: data.num_examples(task, "validation")):
        with pytest.raises(WeightSepError, match="no validation files.*-validation_split=0.1"):
            ask()
    train = data.load_split(task, "train", validation_split=0.1)
    val = data.load_split(task, "validation", validation_split=0.1)
    assert (len(train), len(val)) == (90, 10)
    # train is the first 90 samples, validation the last 10: disjoint and complete.
    np.testing.assert_allclose(train.x.reshape(90, -1), x[:90].astype(np.float32))
    np.testing.assert_allclose(val.x.reshape(10, -1), x[90:].astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([train.y, val.y]), y)
    assert (train.split, val.split) == ("train", "validation")
    assert data.num_examples(task, "train", validation_split=0.1) == 90
    assert data.num_examples(task, "validation", validation_split=0.1) == 10
    assert len(data.load_split(task, "validation", validation_split=0.25)) == 25
    assert "whole train files" in data.describe(task, "real")
    assert "last 10%" in data.describe(task, "real", validation_split=0.1)


def test_test_split_loads_without_train_files(tmp_path):
    task = task_in(tmp_path)
    write_split(task, "test", images(3, (3072,)), np.array([1, 2, 3]))
    assert not task.path("svhn_train_data.npy").exists()
    assert len(data.load_split(task, "test")) == 3
    with pytest.raises(DataError, match="svhn_train_data.npy"):
        data.load_split(task, "train")


# --- the MNIST idx format --------------------------------------------------------------


def write_idx(path, array, magic):
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_idx_format(tmp_path):
    task = task_in(tmp_path, "mnist")
    n = data.MNIST_VALIDATION_HEAD + 20
    pixels = np.random.default_rng(0).integers(0, 256, size=(n, 28, 28))
    labels = np.arange(n) % 10
    write_idx(task.path("MNIST_data/train-images-idx3-ubyte.gz"), pixels, 2051)
    write_idx(task.path("MNIST_data/train-labels-idx1-ubyte.gz"), labels, 2049)
    # The original's TensorFlow reader: the first 5,000 examples are validation, the rest train,
    # whatever validation split is asked for.
    for fraction in (0.0, 0.1):
        train = data.load_split(task, "train", validation_split=fraction)
        val = data.load_split(task, "validation", validation_split=fraction)
        assert train.x.shape == (20, 28, 28, 1) and val.x.shape == (5000, 28, 28, 1)
        np.testing.assert_allclose(train.x[..., 0], pixels[5000:] / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(val.y, labels[:5000])
        assert data.num_examples(task, "train", validation_split=fraction) == 20
    assert float(train.x.max()) <= 1.0
    assert "first 5000" in data.describe(task, "real")
    few = task_in(tmp_path / "few", "mnist")
    write_idx(few.path("MNIST_data/train-images-idx3-ubyte.gz"), pixels[:5000], 2051)
    write_idx(few.path("MNIST_data/train-labels-idx1-ubyte.gz"), labels[:5000], 2049)
    with pytest.raises(DataError, match="5000 sample.*first 5000 as validation"):
        data.load_split(few, "train")


def test_mnist_idx_wrong_magic_and_truncation(tmp_path):
    task = task_in(tmp_path, "mnist")
    labels_path = task.path("MNIST_data/t10k-labels-idx1-ubyte.gz")
    write_idx(task.path("MNIST_data/t10k-images-idx3-ubyte.gz"), np.zeros((3, 28, 28)), 2049)
    write_idx(labels_path, np.zeros(3), 2049)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz is not an idx image file.*2051"):
        data.load_split(task, "test")
    write_idx(task.path("MNIST_data/t10k-images-idx3-ubyte.gz"), np.zeros((3, 28, 28)), 2051)
    with gzip.open(labels_path, "wb") as f:
        f.write(struct.pack(">II", 2049, 5) + bytes(3))  # header says 5 labels, 3 present
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz holds 11 bytes"):
        data.load_split(task, "test")


# --- errors ----------------------------------------------------------------------------


def test_missing_file_names_path_and_command(tmp_path):
    task = task_in(tmp_path)
    with pytest.raises(DataError) as info:
        data.load_split(task, "test")
    message = str(info.value)
    assert str(tmp_path / "svhn_test_data.npy") in message
    assert "./download_dataset.sh svhn" in message and "\n" not in message


def test_count_mismatch(tmp_path):
    task = task_in(tmp_path)
    write_split(task, "test", images(5, (3072,)), np.arange(4))
    with pytest.raises(DataError, match=r"svhn_test_data.npy has 5 samples but .*svhn_test_label.npy has 4"):
        data.load_split(task, "test")


def test_shape_mismatch(tmp_path):
    task = task_in(tmp_path)
    write_split(task, "test", images(2, (28, 28, 1)), np.arange(2))
    with pytest.raises(DataError, match=r"svhn_test_data.npy: samples have shape \(28, 28, 1\).*\(32, 32, 3\)"):
        data.load_split(task, "test")


def test_label_out_of_range(tmp_path):
    task = task_in(tmp_path)
    write_split(task, "test", images(3, (3072,)), np.array([0, 10, 2]))
    with pytest.raises(DataError, match=r"svhn_test_label.npy: label 10 of sample 1 is out of range 0..9"):
        data.load_split(task, "test")
    write_split(task, "test", images(3, (3072,)), np.array([0, -1, 2]))
    with pytest.raises(DataError, match="out of range"):
        data.load_split(task, "test")


def test_one_hot_rows_must_be_one_hot(tmp_path):
    task = task_in(tmp_path)
    labels = one_hot(np.array([1, 2, 3]), 10)
    labels[2, 5] = 1.0  # two ones in row 2
    write_split(task, "test", images(3, (3072,)), labels)
    with pytest.raises(DataError, match="svhn_test_label.npy: label row 2 is not one-hot"):
        data.load_split(task, "test")
    labels = one_hot(np.array([1, 2, 3]), 10)
    labels[0, 1] = 0.9
    write_split(task, "test", images(3, (3072,)), labels)
    with pytest.raises(DataError, match="label row 0 is not one-hot"):
        data.load_split(task, "test")


def test_non_finite_values(tmp_path):
    task = task_in(tmp_path)
    x = images(4, (3072,))
    x[2, 17] = np.nan
    write_split(task, "test", x, np.arange(4))
    with pytest.raises(DataError, match="svhn_test_data.npy holds non-finite values.*sample 2"):
        data.load_split(task, "test")


def test_html_page_saved_as_npy(tmp_path):
    task = task_in(tmp_path)
    write_split(task, "test", images(2, (3072,)), np.arange(2))
    task.path("svhn_test_data.npy").write_text(
        "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head></html>")
    with pytest.raises(DataError) as info:
        data.load_split(task, "test")
    message = str(info.value)
    assert "svhn_test_data.npy" in message and "HTML page" in message
    assert "./download_dataset.sh svhn" in message


def test_truncated_npy(tmp_path):
    task = task_in(tmp_path)
    write_split(task, "test", images(50, (3072,)), np.arange(50) % 10)
    path = task.path("svhn_test_data.npy")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match="svhn_test_data.npy: the file is truncated"):
        data.load_split(task, "test")


def test_unknown_split_and_kind(tmp_path):
    task = task_in(tmp_path)
    with pytest.raises(Exception, match="unknown split"):
        data.load_split(task, "dev")
    with pytest.raises(Exception, match="unknown data kind"):
        data.load_split(task, "test", data="fake")


# --- empty splits --------------------------------------------------------------------------


def test_empty_test_split_names_both_files(tmp_path):
    task = task_in(tmp_path)
    write_split(task, "test", np.zeros((0, 3072)), np.zeros((0,), dtype=np.int64))
    with pytest.raises(DataError, match=r"svhn_test_data.npy and .*svhn_test_label.npy hold 0 samples") as info:
        data.load_split(task, "test")
    assert "./download_dataset.sh svhn" in str(info.value)
    with pytest.raises(DataError, match="hold 0 samples"):
        data.num_examples(task, "test")


def test_empty_validation_files(tmp_path):
    task = task_in(tmp_path)  # svhn lists validation files
    write_split(task, "validation", np.zeros((0, 32, 32, 3)), np.zeros((0, 10)))
    with pytest.raises(DataError, match="svhn_validation_data.npy and .*svhn_validation_label.npy hold 0"):
        data.load_split(task, "validation")


@pytest.mark.parametrize("split", ["train", "validation"])
def test_empty_train_files_fail_both_fallback_parts(tmp_path, split):
    task = task_in(tmp_path, "cifar10")  # validation = the last 10% of train
    write_split(task, "train", np.zeros((0, 3072)), np.zeros((0, 10)))
    with pytest.raises(DataError, match="cifar10_train_data.npy and .*cifar10_train_label.npy hold 0 samples"):
        data.load_split(task, split)
    with pytest.raises(DataError, match="cifar10_train_data.npy"):
        data.num_examples(task, split)


def test_one_train_sample_is_too_few_to_split(tmp_path):
    task = task_in(tmp_path, "cifar10")
    write_split(task, "train", images(1, (3072,)), np.array([3]))
    with pytest.raises(DataError, match=r"cifar10_train_data.npy: 1 sample\(s\) are too few"):
        data.load_split(task, "validation", validation_split=0.1)


# --- label and data types ------------------------------------------------------------------


@pytest.mark.parametrize("labels, what", [
    (np.array([1, 2, 3], dtype="timedelta64[s]"), r"time spans \(timedelta64\[s\]\)"),
    (np.array([1, 2, 3], dtype="datetime64[D]"), r"dates \(datetime64\[D\]\)"),
    (np.array([1, 2, 3], dtype=np.complex128), r"complex numbers \(complex128\)"),
    (np.array(["1", "2", "3"]), r"text \(<U1\)"),
    (np.array([b"1", b"2", b"3"]), r"bytes \(\|S1\)"),
    (np.zeros(3, dtype=[("a", "<i4")]), r"records \(\[\('a', '<i4'\)\]\)"),
])
def test_labels_that_are_not_real_numbers(tmp_path, labels, what):
    task = task_in(tmp_path)
    write_split(task, "test", images(3, (3072,)), labels)
    with pytest.raises(DataError, match=rf"svhn_test_label.npy holds {what}, not real numbers"):
        data.load_split(task, "test")


def test_pickled_object_labels_are_never_loaded(tmp_path):
    task = task_in(tmp_path)
    write_split(task, "test", images(3, (3072,)), np.array([1, "2", None], dtype=object))
    with pytest.raises(DataError, match=r"svhn_test_label.npy: it holds Python objects \(pickled data\)"):
        data.load_split(task, "test")


def test_complex_data_is_refused(tmp_path):
    task = task_in(tmp_path)
    write_split(task, "test", images(3, (3072,)) + 1j, np.arange(3))
    with pytest.raises(DataError, match=r"svhn_test_data.npy holds complex numbers"):
        data.load_split(task, "test")


def test_bool_labels_only_as_one_hot(tmp_path):
    task = task_in(tmp_path)
    write_split(task, "test", images(3, (3072,)), np.array([True, False, True]))
    with pytest.raises(DataError, match="svhn_test_label.npy: labels are True/False values, not class numbers"):
        data.load_split(task, "test")
    data.clear_cache()
    write_split(task, "test", images(3, (3072,)), one_hot(np.array([4, 0, 9]), 10).astype(bool))
    np.testing.assert_array_equal(data.load_split(task, "test").y, [4, 0, 9])


@pytest.mark.parametrize("labels, shown", [
    (np.array([1.0, 1e300, 2.0]), "1e+300"),
    (np.array([1, 2**64 - 1, 2], dtype=np.uint64), "18446744073709551615"),
    (np.array([1, 2**62 + 1, 2], dtype=np.int64), "4611686018427387905"),
    (np.array([1, -(2**63), 2], dtype=np.int64), "-9223372036854775808"),
    (np.array([1.0, -3.0, 2.0], dtype=np.float32), "-3"),
    (np.array([1, 200, 2], dtype=np.uint8), "200"),
])
def test_out_of_range_label_is_shown_as_it_is(tmp_path, labels, shown):
    task = task_in(tmp_path)
    write_split(task, "test", images(3, (3072,)), labels)
    expected = rf"svhn_test_label.npy: label {re.escape(shown)} of sample 1 is out of range 0..9"
    with pytest.raises(DataError, match=expected):
        data.load_split(task, "test")


@pytest.mark.parametrize("value, shown", [(2.5, "2.5"), (np.nan, "nan"), (np.inf, "inf")])
def test_label_that_is_not_a_whole_number(tmp_path, value, shown):
    task = task_in(tmp_path)
    write_split(task, "test", images(3, (3072,)), np.array([1.0, 2.0, value]))
    with pytest.raises(DataError, match=rf"label {shown} of sample 2 is not a whole class number"):
        data.load_split(task, "test")


def test_data_beyond_float32_is_not_finite(tmp_path):
    task = task_in(tmp_path)
    x = images(3, (3072,))
    x[1, 5] = 1e300
    write_split(task, "test", x, np.arange(3))
    with pytest.raises(DataError, match="svhn_test_data.npy holds non-finite values.*sample 1"):
        data.load_split(task, "test")
    with pytest.raises(DataError, match="svhn_test_data.npy holds non-finite values.*sample 1"):
        datacheck.verify_file(task, "svhn_test_data.npy")


# --- idx files read with a bound -----------------------------------------------------------


def gzip_members(path, header, payload_mib):
    """A gzip file: one member with the idx header, then payload_mib members of 1 MiB of zeros each.

    Concatenated members are one stream to a reader, so a tiny file inflates to payload_mib MiB.
    """
    member = gzip.compress(bytes(1 << 20), compresslevel=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(gzip.compress(header))
        for _ in range(payload_mib):
            f.write(member)


def test_idx_header_promising_too_many_items(tmp_path):
    task = task_in(tmp_path, "mnist")
    path = task.path("MNIST_data/t10k-labels-idx1-ubyte.gz")
    gzip_members(path, struct.pack(">II", 2049, data.IDX_MAX_ITEMS + 1), 0)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: its header announces 10000001 labels, "
                                        r"more than the 10000000"):
        datacheck.verify_file(task, "MNIST_data/t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match="announces 10000001 labels"):
        data.num_examples(task, "test")


def test_idx_image_shape_checked_from_the_header(tmp_path):
    task = task_in(tmp_path, "mnist")
    path = task.path("MNIST_data/t10k-images-idx3-ubyte.gz")
    gzip_members(path, struct.pack(">IIII", 2051, 3, 32, 32), 0)
    with pytest.raises(DataError, match=r"samples have shape \(32, 32\), but task mnist expects"):
        datacheck.verify_file(task, "MNIST_data/t10k-images-idx3-ubyte.gz")


def test_idx_gzip_bomb_is_not_inflated(tmp_path):
    task = task_in(tmp_path, "mnist")
    write_idx(task.path("MNIST_data/t10k-images-idx3-ubyte.gz"), np.zeros((5, 28, 28)), 2051)
    labels = task.path("MNIST_data/t10k-labels-idx1-ubyte.gz")
    gzip_members(labels, struct.pack(">II", 2049, 5) + bytes(5), 200)  # 5 labels, then 200 MiB more
    assert labels.stat().st_size < 500_000
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz holds more than the 13 bytes its header"):
            data.load_split(task, "test")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_idx_header_count_checks_the_magic(tmp_path):
    task = task_in(tmp_path, "mnist")
    write_idx(task.path("MNIST_data/t10k-labels-idx1-ubyte.gz"), np.zeros((3, 28, 28)), 2051)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz is not an idx label file \(magic number 2051"):
        data.num_examples(task, "test")
    write_idx(task.path("MNIST_data/t10k-labels-idx1-ubyte.gz"), np.arange(7), 2049)
    assert data.num_examples(task, "test") == 7


def test_idx_corrupt_stream(tmp_path):
    task = task_in(tmp_path, "mnist")
    path = task.path("MNIST_data/t10k-labels-idx1-ubyte.gz")
    write_idx(path, np.arange(300) % 10, 2049)
    raw = bytearray(path.read_bytes())
    path.write_bytes(bytes(raw[:len(raw) // 2]))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: the file is truncated"):
        datacheck.verify_file(task, "MNIST_data/t10k-labels-idx1-ubyte.gz")
    raw[20:40] = bytes(range(1, 21))  # damage the deflate data
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="cannot read .*t10k-labels-idx1-ubyte.gz"):
        datacheck.verify_file(task, "MNIST_data/t10k-labels-idx1-ubyte.gz")


# --- verification and checksums (used by tools/verify_data.py and download_dataset.sh) ----


def test_verify_file_checks_each_file_alone(tmp_path):
    task = task_in(tmp_path)
    write_split(task, "test", images(3, (32, 32, 3)), one_hot(np.array([0, 1, 2]), 10))
    assert datacheck.verify_file(task, "svhn_test_data.npy") == 3
    assert datacheck.verify_file(task, "svhn_test_label.npy") == 3
    np.save(tmp_path / "other.npy", images(3, (3072,)))
    assert datacheck.verify_file(task, "svhn_test_data.npy", tmp_path / "other.npy") == 3
    np.save(tmp_path / "wrong.npy", images(3, (100,)))
    with pytest.raises(DataError, match="wrong.npy: samples have shape"):
        datacheck.verify_file(task, "svhn_test_data.npy", tmp_path / "wrong.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 3072)))
    with pytest.raises(DataError, match="empty.npy holds 0 samples"):
        datacheck.verify_file(task, "svhn_test_data.npy", tmp_path / "empty.npy")
    with pytest.raises(Exception, match="not a data file of task svhn"):
        datacheck.verify_file(task, "cifar10_test_data.npy")


def hhar_in(tmp_path):
    """hhar's spec with its folder at tmp_path/hhar, holding valid test files: (task, {name: sha256})."""
    task = dataclasses.replace(load_task("hhar"), folder=tmp_path / "hhar")
    task.path("").mkdir()
    write_split(task, "test", images(4, (2400,)), np.array([0, 5, 2, 3]))
    return task, {f: hashlib.sha256(task.path(f).read_bytes()).hexdigest()
                  for f in ("hhar_test_data.npy", "hhar_test_label.npy")}


TEST_FILES = [("hhar_test_data.npy", None), ("hhar_test_label.npy", None)]


def test_check_files_records_the_manifest_once(tmp_path):
    task, sums = hhar_in(tmp_path)
    manifest = tmp_path / "hhar" / "SHA256SUMS"
    checks = datacheck.check_files(task, TEST_FILES)
    assert [(c.name, c.status, c.samples) for c in checks] == [
        ("hhar_test_data.npy", "ok", 4), ("hhar_test_label.npy", "ok", 4)]
    assert checks[0].detail == "4 samples, SHA-256 not recorded" and not manifest.exists()
    checks = datacheck.check_files(task, TEST_FILES, record=True)
    assert checks[0].detail == f"4 samples, SHA-256 recorded in {manifest}"
    # sha256sum format, sorted, paths relative to the root holding the task folders.
    assert manifest.read_text() == (f"{sums['hhar_test_data.npy']}  hhar/hhar_test_data.npy\n"
                                    f"{sums['hhar_test_label.npy']}  hhar/hhar_test_label.npy\n")
    stamp = manifest.stat().st_mtime_ns
    checks = datacheck.check_files(task, TEST_FILES, record=True)
    assert checks[1].detail == f"4 samples, SHA-256 as in {manifest}"
    assert manifest.stat().st_mtime_ns == stamp  # nothing new: not rewritten
    # Missing files are reported, not recorded.
    checks = datacheck.check_files(task, record=True)
    assert [c.status for c in checks] == ["missing", "missing", "ok", "ok"]


def test_check_files_detects_a_changed_file(tmp_path):
    task, sums = hhar_in(tmp_path)
    datacheck.check_files(task, TEST_FILES, record=True)
    np.save(task.path("hhar_test_label.npy"), np.array([1, 5, 2, 3]))  # still valid labels
    now = hashlib.sha256(task.path("hhar_test_label.npy").read_bytes()).hexdigest()
    checks = datacheck.check_files(task, TEST_FILES, record=True)
    assert checks[0].status == "ok"
    assert (checks[1].status, checks[1].sha256) == ("bad", now)
    assert checks[1].detail == (f"SHA-256 mismatch: {task.path('hhar_test_label.npy')} has {now}, but "
                                f"{tmp_path / 'hhar' / 'SHA256SUMS'} expects {sums['hhar_test_label.npy']}")
    assert sums["hhar_test_label.npy"] in (tmp_path / "hhar" / "SHA256SUMS").read_text()  # not overwritten


def test_user_checksums_take_precedence(tmp_path):
    task, sums = hhar_in(tmp_path)
    manifest = tmp_path / "hhar" / "SHA256SUMS"
    manifest.write_text(f"{'0' * 64}  hhar/hhar_test_data.npy\n")
    user_list = tmp_path / "mine.sha256"
    user_list.write_text(f"{sums['hhar_test_data.npy'].upper()} *./hhar/hhar_test_data.npy\n\n"
                         f"{'1' * 64}  hhar/hhar_test_label.npy\n")
    user = datacheck.read_checksums(user_list)
    assert user.sha256 == {"hhar/hhar_test_data.npy": sums["hhar_test_data.npy"],
                           "hhar/hhar_test_label.npy": "1" * 64}
    checks = datacheck.check_files(task, TEST_FILES, checksums=user, record=True)
    assert checks[0].status == "ok" and checks[0].detail.startswith(f"4 samples, SHA-256 as in {user_list}")
    assert checks[1].status == "bad" and f"but {user_list} expects {'1' * 64}" in checks[1].detail
    # The user's sum replaced the manifest's stale one; the bad file was not recorded.
    assert manifest.read_text() == f"{sums['hhar_test_data.npy']}  hhar/hhar_test_data.npy\n"


def test_check_files_named_path_and_count_agreement(tmp_path):
    task, sums = hhar_in(tmp_path)
    part = task.path("hhar_test_label.npy.part")
    np.save(part, np.array([1, 2, 3]))  # 3 labels for 4 samples
    part = part.with_name(part.name + ".npy")
    digest = hashlib.sha256(part.read_bytes()).hexdigest()
    checks = datacheck.check_files(task, [("hhar_test_label.npy", part)], record=True)
    assert (checks[0].status, checks[0].sha256) == ("ok", digest)
    assert f"{digest}  hhar/hhar_test_label.npy" in (tmp_path / "hhar" / "SHA256SUMS").read_text()
    checks = datacheck.check_files(task, [("hhar_test_data.npy", None), ("hhar_test_label.npy", part)])
    assert checks[1].status == "bad"
    assert checks[1].detail.startswith("3 labels but hhar_test_data.npy has 4 samples")
    with pytest.raises(WeightSepError, match="nothing.npy is not a data file of task hhar"):
        datacheck.check_files(task, [("nothing.npy", None)])


@pytest.mark.parametrize("text, error", [
    ("abc  hhar/x.npy\n", "line 1: expected '<64 hex digits>  <path"),
    (f"{'a' * 64}  hhar/x.npy\n{'g' * 64}  hhar/y.npy\n", "line 2: expected"),
    (f"{'a' * 64}hhar/x.npy\n", "line 1: expected"),
    (f"{'a' * 64}  hhar/x.npy\n{'b' * 64}  ./hhar/x.npy\n", "line 2: hhar/x.npy is listed twice"),
])
def test_malformed_checksum_lists(tmp_path, text, error):
    path = tmp_path / "sums"
    path.write_text(text)
    with pytest.raises(DataError, match=re.escape(f"{path}, {error}")):
        datacheck.read_checksums(path)


def test_checksum_list_that_is_no_text_or_too_big(tmp_path):
    path = tmp_path / "sums"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(DataError, match="is not a text file"):
        datacheck.read_checksums(path)
    path.write_bytes(b"#" * ((1 << 20) + 1))
    with pytest.raises(DataError, match="larger than 1048576 bytes"):
        datacheck.read_checksums(path)
    with pytest.raises(DataError, match="cannot read checksum list .*missing"):
        datacheck.read_checksums(tmp_path / "missing")


def test_write_checksums_round_trip_and_leaves_no_temp_file(tmp_path):
    sums = {"b/y.npy": "b" * 64, "a/x.npy": "a" * 64}
    datacheck.write_checksums(tmp_path / "SHA256SUMS", sums)
    assert (tmp_path / "SHA256SUMS").read_text() == f"{'a' * 64}  a/x.npy\n{'b' * 64}  b/y.npy\n"
    assert datacheck.read_checksums(tmp_path / "SHA256SUMS").sha256 == sums
    with pytest.raises(ValueError):
        datacheck.write_checksums(tmp_path / "SHA256SUMS", {"a\nb": "a" * 64})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SHA256SUMS"]
    assert datacheck.sha256_of(tmp_path / "SHA256SUMS")[0] == hashlib.sha256(
        (tmp_path / "SHA256SUMS").read_bytes()).hexdigest()


# --- synthetic data --------------------------------------------------------------------


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_synthetic_shapes_and_classes(name):
    task = load_task(name)
    splits = {s: data.load_split(task, s, data="synthetic") for s in ("train", "validation", "test")}
    for split, ds in splits.items():
        assert ds.x.shape == (data.SYNTHETIC_SIZES[split],) + task.input_shape
        assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64
        assert set(np.unique(ds.y)) == set(range(task.num_classes))
        assert np.isfinite(ds.x).all() and -1.0 < ds.x.min() and ds.x.max() < 2.0
        assert 0.4 < float(ds.x.mean()) < 0.6
        assert data.num_examples(task, split, "synthetic") == len(ds)
    assert not np.array_equal(splits["train"].x[:500], splits["validation"].x)
    assert not np.array_equal(splits["validation"].x[:500], splits["test"].x[:500])


def test_synthetic_is_deterministic_and_seeded():
    task = load_task("gsc")
    a = data.load_split(task, "validation", data="synthetic", seed=3)
    data.clear_cache()
    b = data.load_split(task, "validation", data="synthetic", seed=3)
    assert a is not b
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    c = data.load_split(task, "validation", data="synthetic", seed=4)
    assert not np.array_equal(a.x, c.x)


def test_synthetic_is_the_same_in_another_process():
    task = load_task("hhar")
    ds = data.load_split(task, "test", data="synthetic", seed=1)
    code = ("import sys, hashlib; from weightsep import data; from weightsep.tasks import load_task; "
            "ds = data.load_split(load_task('hhar'), 'test', data='synthetic', seed=1); "
            "print(hashlib.sha256(ds.x.tobytes() + ds.y.tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True,
                         capture_output=True, text=True, env={"PYTHONHASHSEED": "123", "PATH": ""})
    import hashlib
    assert out.stdout.strip() == hashlib.sha256(ds.x.tobytes() + ds.y.tobytes()).hexdigest()


def test_synthetic_needs_no_files_and_is_described(tmp_path):
    task = task_in(tmp_path)
    assert len(data.load_split(task, "train", data="synthetic")) == data.SYNTHETIC_SIZES["train"]
    line = data.describe(task, "synthetic")
    assert "synthetic" in line and "32x32x3" in line and "\n" not in line
    assert "its own validation files" in data.describe(task, "real")
