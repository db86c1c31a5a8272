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
