"""Loaders of weightsep.data on small files written here in each original format, and synthetic data."""

import dataclasses
import gzip
import struct
import subprocess
import sys

import numpy as np
import pytest

from weightsep import data
from weightsep.errors import DataError
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


def test_validation_falls_back_to_last_tenth_of_train(tmp_path):
    task = task_in(tmp_path, "cifar10")  # cifar10 lists no validation files
    x = images(100, (3072,))
    y = np.arange(100) % 10
    write_split(task, "train", x, one_hot(y, 10))
    train = data.load_split(task, "train")
    val = data.load_split(task, "validation")
    assert (len(train), len(val)) == (90, 10)
    # train is the first 90 samples, validation the last 10: disjoint and complete.
    np.testing.assert_allclose(train.x.reshape(90, -1), x[:90].astype(np.float32))
    np.testing.assert_allclose(val.x.reshape(10, -1), x[90:].astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([train.y, val.y]), y)
    assert (train.split, val.split) == ("train", "validation")
    assert data.num_examples(task, "train") == 90 and data.num_examples(task, "validation") == 10


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
    pixels = np.random.default_rng(0).integers(0, 256, size=(20, 28, 28))
    labels = np.arange(20) % 10
    write_idx(task.path("MNIST_data/train-images-idx3-ubyte.gz"), pixels, 2051)
    write_idx(task.path("MNIST_data/train-labels-idx1-ubyte.gz"), labels, 2049)
    train = data.load_split(task, "train")
    val = data.load_split(task, "validation")
    assert train.x.shape == (18, 28, 28, 1) and val.x.shape == (2, 28, 28, 1)
    np.testing.assert_allclose(train.x[..., 0], pixels[:18] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(val.y, labels[18:])
    assert float(train.x.max()) <= 1.0


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


# --- verification (used by download_dataset.sh) ----------------------------------------


def test_verify_file_checks_each_file_alone(tmp_path):
    task = task_in(tmp_path)
    write_split(task, "test", images(3, (32, 32, 3)), one_hot(np.array([0, 1, 2]), 10))
    assert data.verify_file(task, "svhn_test_data.npy") == 3
    assert data.verify_file(task, "svhn_test_label.npy") == 3
    np.save(tmp_path / "other.npy", images(3, (3072,)))
    assert data.verify_file(task, "svhn_test_data.npy", tmp_path / "other.npy") == 3
    np.save(tmp_path / "wrong.npy", images(3, (100,)))
    with pytest.raises(DataError, match="wrong.npy: samples have shape"):
        data.verify_file(task, "svhn_test_data.npy", tmp_path / "wrong.npy")
    with pytest.raises(Exception, match="not a data file of task svhn"):
        data.verify_file(task, "cifar10_test_data.npy")


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
    assert "last 10%" in data.describe(task_in(tmp_path, "cifar10"), "real")
