"""-mode=testdata: each task's test split in the original's device files (<stem>_t, <stem>_l),
read back by a reader written here from docs/FORMAT.md ("Test data files"), not with the
module's helpers, and compared with the task's test split as the library loads it."""

import json
import struct

import numpy as np

from conftest import assert_one_line_error, copy_state, run_main
from weightsep import data as datasets
from weightsep.store import Store, TaskRecord
from weightsep.tasks import TaskSpec


def read_inputs(path, input_shape):
    """(N, inputs [N, H, W, C]) of a `<stem>_t` file: int32 N, int32 V, N x V float32 channel-first."""
    raw = path.read_bytes()
    n, values = struct.unpack_from("<ii", raw, 0)
    height, width, channels = input_shape
    assert values == height * width * channels
    assert len(raw) == 8 + 4 * n * values
    flat = np.frombuffer(raw, "<f4", count=n * values, offset=8)
    return n, flat.reshape(n, channels, height, width).transpose(0, 2, 3, 1)


def read_labels(path):
    """The classes of a `<stem>_l` file: int32 N, int32 1, N int8."""
    raw = path.read_bytes()
    n, one = struct.unpack_from("<ii", raw, 0)
    assert one == 1 and len(raw) == 8 + n
    return np.frombuffer(raw, np.int8, count=n, offset=8).astype(np.int64)


def test_every_task_round_trips_exactly(tiny_state, tmp_path):
    """No -vnn_name: every task of the state, all its test examples, into <state_dir>/export
    (the default, as -mode=w), listed in the manifest; tiny_b has two channels (the NCHW order)."""
    state = copy_state(tiny_state, tmp_path / "st")
    result = run_main("-mode=testdata", f"-state_dir={state}")
    out = state / "export"
    manifest = json.loads((out / "manifest.json").read_text())
    store = Store(state).load()
    assert [rec.name for rec in store.tasks] == ["tiny_a", "tiny_b"]
    for rec in store.tasks:
        spec = rec.runnable_spec()
        test = datasets.load_split(spec, "test", "synthetic", int(rec.settings["data_seed"]))
        n, x = read_inputs(out / f"{rec.name}_t", spec.input_shape)
        assert n == len(test.y) == 1000
        assert x.tobytes() == np.asarray(test.x, np.float32).tobytes()
        np.testing.assert_array_equal(read_labels(out / f"{rec.name}_l"), test.y)
        for suffix in ("_t", "_l"):
            assert manifest["files"][rec.name + suffix]["bytes"] == (out / (rec.name + suffix)).stat().st_size
        assert f"data_len: {n}" in result.stdout
    # The state is untouched by the export: it still loads and takes a writer.
    with Store(state).writer() as again:
        assert len(again.tasks) == 2


def test_first_k_examples_of_named_tasks(tiny_state, tmp_path):
    out = tmp_path / "mcu"
    run_main("-mode=testdata", f"-state_dir={tiny_state}", "-vnn_name=tiny_b", "-num_examples=7",
             f"-export_dir={out}")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "tiny_b_l", "tiny_b_t"]
    rec = Store(tiny_state).load().task("tiny_b")
    test = datasets.load_split(rec.runnable_spec(), "test", "synthetic", int(rec.settings["data_seed"]))
    n, x = read_inputs(out / "tiny_b_t", (10, 14, 2))
    assert n == 7 and (out / "tiny_b_t").stat().st_size == 8 + 7 * 280 * 4
    np.testing.assert_array_equal(x, test.x[:7])
    # Channel-first by hand: the second value of the file is channel 0 at (h 0, w 1).
    raw = np.frombuffer((out / "tiny_b_t").read_bytes(), "<f4", offset=8)
    assert raw[1] == test.x[0, 0, 1, 0] and raw[140] == test.x[0, 0, 0, 1]
    np.testing.assert_array_equal(read_labels(out / "tiny_b_l"), test.y[:7])


def test_too_many_examples_is_one_line_error_before_writing(tiny_state, tmp_path):
    out = tmp_path / "mcu"
    result = run_main("-mode=testdata", f"-state_dir={tiny_state}", "-num_examples=1001", f"-export_dir={out}",
                      check=False)
    assert_one_line_error(result, "-num_examples=1001", "1000")
    assert not out.exists()
    result = run_main("-mode=testdata", f"-state_dir={tiny_state}", "-num_examples=0", check=False)
    assert_one_line_error(result, "-num_examples=0")
    result = run_main("-mode=testdata", f"-state_dir={tiny_state}", "-vnn_name=nope", check=False)
    assert_one_line_error(result, "nope")


def test_cifar10_files_keep_the_original_short_name(tmp_path):
    """The original's cifar10_data.py wrote c10_t / c10_l; a hand-built state holding a task named
    cifar10 (a one-unit dense network in its input shape), test data synthetic."""
    store = Store(tmp_path / "st")
    spec = TaskSpec(name="cifar10", input_shape=(32, 32, 3), num_classes=10, dense=(1,))
    n = 32 * 32 * 3 + 1 + 10 + 10
    with store.writer():
        store.create(page_size=512, num_pages=8)
        store.add_task(TaskRecord(name="cifar10", num_weights=n, page_table=np.arange(7), exclusive_pages=[],
                                  spec=spec.to_json()), np.zeros((0, 512), np.float32),
                       vectors={"network_weight": np.ones(n, np.float32), "network_fisher": np.ones(n, np.float32)})
    run_main("-mode=testdata", f"-state_dir={store.dir}", "-data=synthetic", "-num_examples=3")
    out = store.dir / "export"
    assert not (out / "cifar10_t").exists()
    test = datasets.load_split(spec, "test", "synthetic", 0)
    _, x = read_inputs(out / "c10_t", (32, 32, 3))
    np.testing.assert_array_equal(x, test.x[:3])
    np.testing.assert_array_equal(read_labels(out / "c10_l"), test.y[:3])
