"""Synthetic datasets for the tasks: deterministic, in each task's exact shape and class count.

Used by the tests, the demo and ``-data=synthetic`` (never silently in place of real
data).  ``generate(task_name, input_shape, num_classes, split, seed)`` returns
``(x float32 [N, H, W, C], y int64 [N])``, the same in every process and on every
run for the same arguments (the generators are seeded from SHA-256 of the text
"weightsep-synthetic/<task>/<seed>/<purpose>", not from Python's ``hash()``).

The data are learnable but not trivial: each class has a smooth random prototype
(a few 2D cosines per channel); a sample is its class prototype with a random
amplitude and a circular shift of up to two pixels, plus a fraction of another
class's prototype, uniform noise, and 7% of labels replaced by random ones.  Pixel
values have a mean near 0.5 and mostly lie in [0, 1], like images.  Each split is
drawn independently (sizes in SYNTHETIC_SIZES), so validation and test never repeat
training samples.
"""

from __future__ import annotations

import hashlib

import numpy as np

# Examples per split: a task trains in seconds on a CPU.
SYNTHETIC_SIZES = {"train": 3000, "validation": 500, "test": 1000}

# Difficulty (tuned so the tasks' CNNs reach about 70-95% test accuracy after a few
# hundred Adam steps; see the README).  Changing any of these changes every dataset.
_COSINES = 6                   # 2D cosines per channel of a class prototype
_MAX_FREQ = 3                  # cycles across the image, per axis
_MAX_SHIFT = 2                 # pixels, per axis
_NOISE = 2.0                   # noise std, relative to a prototype's std, for 784 values
_NOISE_SIZE_EXPONENT = 0.5     # ... times (H*W*C / 784) ** this
_NOISE_CLASS_EXPONENT = -0.25  # ... times (num_classes / 10) ** this
_DISTRACTOR = 0.5              # at most this fraction of another class's prototype
_LABEL_NOISE = 0.07            # share of samples whose label is replaced by a random class


def _rng(task_name: str, seed: int, purpose: str) -> np.random.Generator:
    """A generator seeded from text via SHA-256: the same in every process (unlike hash())."""
    digest = hashlib.sha256(f"weightsep-synthetic/{task_name}/{seed}/{purpose}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _prototypes(task_name: str, shape: tuple[int, int, int], num_classes: int, seed: int) -> np.ndarray:
    """Smooth class prototypes, float32 [K, H, W, C], zero mean and unit std each.

    Whole-cycle frequencies make every prototype periodic over the image, so a
    shift is an exact circular roll with no seam.
    """
    h, w, c = shape
    rng = _rng(task_name, seed, "prototypes")
    size = (num_classes, 1, 1, c, _COSINES)
    freq_y = rng.integers(0, _MAX_FREQ + 1, size=size)
    freq_x = rng.integers(0, _MAX_FREQ + 1, size=size)
    phase = rng.uniform(0, 2 * np.pi, size=size)
    amp = rng.normal(size=size)
    iy = (np.arange(h) / h)[None, :, None, None, None]
    jx = (np.arange(w) / w)[None, None, :, None, None]
    proto = (amp * np.cos(2 * np.pi * (freq_y * iy + freq_x * jx) + phase)).sum(axis=-1)
    proto -= proto.mean(axis=(1, 2, 3), keepdims=True)
    proto /= proto.std(axis=(1, 2, 3), keepdims=True) + 1e-6
    return proto.astype(np.float32)


def _shifted(proto: np.ndarray, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """proto[classes], each rolled by a random shift of up to _MAX_SHIFT pixels per axis."""
    shifts = range(-_MAX_SHIFT, _MAX_SHIFT + 1)
    rolled = np.stack([np.roll(proto, (dy, dx), axis=(1, 2)) for dy in shifts for dx in shifts], axis=1)
    num_shifts = rolled.shape[1]
    pick = classes * num_shifts + rng.integers(0, num_shifts, size=len(classes))
    flat = np.take(rolled.reshape(-1, int(np.prod(proto.shape[1:]))), pick, axis=0)
    return flat.reshape((len(classes),) + proto.shape[1:])


def _noise_std(shape: tuple[int, int, int], num_classes: int) -> float:
    """Noise for a task: larger inputs average more noise away, fewer classes are easier to tell apart."""
    return (_NOISE * (float(np.prod(shape)) / 784.0) ** _NOISE_SIZE_EXPONENT
            * (num_classes / 10.0) ** _NOISE_CLASS_EXPONENT)


def generate(task_name: str, input_shape: tuple[int, int, int], num_classes: int,
             split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One split of a task's synthetic data: (x float32 [N, H, W, C], y int64 [N]), read-only.

    Every class appears in every split (labels are balanced before the 7% label noise).
    """
    if split not in SYNTHETIC_SIZES:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SYNTHETIC_SIZES)}")
    shape = tuple(int(d) for d in input_shape)
    proto = _prototypes(task_name, shape, num_classes, seed)
    n, k = SYNTHETIC_SIZES[split], num_classes
    rng = _rng(task_name, seed, split)
    y = np.arange(n) % k
    rng.shuffle(y)
    other = (y + rng.integers(1, k, size=n)) % k if k > 1 else y
    noise = _noise_std(shape, k)
    # Scale so pixels have std about 0.15 around 0.5: values mostly in [0, 1], like images.
    scale = np.float32(0.15 / np.sqrt(1.0 + noise ** 2))
    amplitude = rng.uniform(0.6, 1.4, size=(n, 1, 1, 1)).astype(np.float32) * scale
    distractor = rng.uniform(0, _DISTRACTOR, size=(n, 1, 1, 1)).astype(np.float32) * scale
    # Uniform noise of std `noise` (three times cheaper to draw than Gaussian, same effect here).
    x = rng.random(size=(n,) + shape, dtype=np.float32)
    x -= 0.5
    x *= np.float32(np.sqrt(12.0) * noise) * scale
    x += 0.5
    for classes, weight in ((y, amplitude), (other, distractor)):
        part = _shifted(proto, classes, rng)
        part *= weight
        x += part
    flip = rng.random(n) < _LABEL_NOISE
    y = np.where(flip, rng.integers(0, k, size=n), y).astype(np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def random_state(path, task_names, num_exclusive: int, page_size: int = 512, num_pages: int = 128,
                 layout: str = "natural", seed: int = 0):
    """A float32 state of the named tasks with random pages and page tables, no training: for
    what needs a state of a given shape but not accuracy (the C runtime's tests, the blob's size).

    Each task's exclusive pages hold its freshly initialized network's values (seeded); its other
    pages sit on distinct random pages of a pool ~ N(0, 0.05), shared with other tasks.  The
    num_exclusive exclusive pages are spread over the tasks: each gets the pages it cannot place in
    the pool (a task occupies a shared page once), the rest go round-robin.  Returns the Store.
    """
    from weightsep.networks import Network
    from weightsep.store import Store, TaskRecord
    from weightsep.tasks import load_task
    from weightsep.tf import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    specs = [load_task(name) for name in task_names]
    vectors = [Network(spec, layout=layout).get_vector() for spec in specs]
    sizes = [-(-w.size // page_size) for w in vectors]
    counts = [max(0, n - num_pages) for n in sizes]
    if sum(counts) > num_exclusive or num_exclusive > sum(sizes):
        raise ValueError(f"{num_exclusive} exclusive pages: the tasks need {sum(counts)} to {sum(sizes)}")
    task = 0
    while sum(counts) < num_exclusive:
        if counts[task] < sizes[task]:
            counts[task] += 1
        task = (task + 1) % len(specs)
    store = Store(path)
    with store.writer():
        store.create(page_size=page_size, num_pages=num_pages, layout=layout)
        store.save_shared(rng.normal(0, 0.05, (num_pages, page_size)).astype(np.float32))
        for spec, w, n_p, k in zip(specs, vectors, sizes, counts):
            pages = np.zeros((n_p, page_size), np.float32)
            pages.reshape(-1)[:w.size] = w
            exclusive = sorted(rng.choice(n_p, k, replace=False).tolist())
            shared = [i for i in range(n_p) if i not in exclusive]
            table = np.zeros(n_p, np.int64)
            table[shared] = rng.choice(num_pages, len(shared), replace=False)
            store.add_task(TaskRecord(spec.name, w.size, table, exclusive, spec.to_json()), pages[exclusive],
                           vectors={"network_weight": w, "network_fisher": np.ones(w.size, np.float32)})
    return store
