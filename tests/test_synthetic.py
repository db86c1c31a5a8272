"""weightsep.synthetic on its own: pinned values (an accidental change of the generator is caught),
shapes, balance, independence of the splits, and the same arrays through weightsep.data."""

import hashlib

import numpy as np
import pytest

from weightsep import data, synthetic

# Computed once from the generator as it was when it moved out of weightsep/data.py.
# Labels come from the random generator alone: their hash is exact on every machine.
# Pixels go through np.cos, whose last bit may differ between CPUs: compared to 1e-6.
PINNED = {
    ("hhar", (20, 120, 1), 6, "test", 1): dict(
        y_sha256="842c4672dd6f368d5ffd53e4f62533e94850a89e26f78e99f5ccf2ea75a6188f",
        x_values=[0.3786533772945404, 0.34059035778045654, 0.7317527532577515],
        x_sum=1199734.1510522142),
    ("gtsrb", (32, 32, 1), 43, "validation", 0): dict(
        y_sha256="07d160f956c2ced3ff31df3de66c77c1ccab8ef332c54c1bede944368b4fd29d",
        x_values=[0.558230996131897, 0.3500198721885681, 0.4598456025123596],
        x_sum=256011.12431285204),
}


@pytest.mark.parametrize("key", list(PINNED), ids=lambda k: f"{k[0]}-{k[3]}")
def test_pinned_values(key):
    name, shape, k, split, seed = key
    x, y = synthetic.generate(name, shape, k, split, seed)
    pinned = PINNED[key]
    assert hashlib.sha256(y.tobytes()).hexdigest() == pinned["y_sha256"]
    flat = x.reshape(len(x), -1)
    picked = [flat[0, 0], flat[1, 100], flat[-1, -1]]
    np.testing.assert_allclose(picked, pinned["x_values"], rtol=1e-6)
    assert float(x.astype(np.float64).sum()) == pytest.approx(pinned["x_sum"], rel=1e-9)


def test_shapes_balance_and_read_only():
    x, y = synthetic.generate("tiny", (6, 5, 2), 3, "validation", seed=2)
    n = synthetic.SYNTHETIC_SIZES["validation"]
    assert x.shape == (n, 6, 5, 2) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    # Balanced before the 7% label noise: each of 3 classes holds about a third.
    counts = np.bincount(y, minlength=3)
    assert counts.sum() == n and counts.min() > n / 3 - 0.07 * n
    assert not x.flags.writeable and not y.flags.writeable


def test_splits_seeds_and_tasks_differ():
    base = synthetic.generate("tiny", (8, 8, 1), 4, "train", seed=0)[0]
    assert not np.array_equal(base[:500], synthetic.generate("tiny", (8, 8, 1), 4, "validation", 0)[0])
    assert not np.array_equal(base, synthetic.generate("tiny", (8, 8, 1), 4, "train", seed=1)[0])
    assert not np.array_equal(base, synthetic.generate("other", (8, 8, 1), 4, "train", seed=0)[0])
    np.testing.assert_array_equal(base, synthetic.generate("tiny", (8, 8, 1), 4, "train", seed=0)[0])


def test_data_serves_the_generated_arrays():
    from weightsep.tasks import load_task

    data.clear_cache()
    task = load_task("hhar")
    ds = data.load_split(task, "test", data="synthetic", seed=1)
    x, y = synthetic.generate("hhar", task.input_shape, task.num_classes, "test", 1)
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(ds.y, y)
    assert data.SYNTHETIC_SIZES is synthetic.SYNTHETIC_SIZES


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        synthetic.generate("tiny", (4, 4, 1), 2, "dev")
