"""A state's page arrays in memory: the float32 values every algorithm uses beside the stored
values and scales, and the rewrite of changed pages (quantized by the state's page format).

Pages whose float values do not change keep their exact stored bytes, so that writing back
what is stored changes nothing, and what the store returns is exactly what it stores.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from weightsep.pageformat import page_format


@dataclasses.dataclass
class Pages:
    """One page array in memory: float32 values as used, and the stored values (+ scales)."""

    floats: np.ndarray
    values: np.ndarray
    scales: Optional[np.ndarray]

    def freeze(self) -> "Pages":
        for array in (self.floats, self.values, self.scales):
            if array is not None:
                array.setflags(write=False)
        return self


def stored_pages(page_dtype: str, floats: np.ndarray) -> Pages:
    """float32 pages as the state stores them: quantized (when the format is), and their float32 values."""
    fmt = page_format(page_dtype)
    values, scales = fmt.quantize(floats)
    return Pages(fmt.dequantize(values, scales), values, scales)


def changed_rows(current: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Bool per row: whether any value differs bit for bit (-0.0 and 0.0 differ)."""
    return np.any(current.view(np.uint32) != new.view(np.uint32), axis=1)


def rewrite(page_dtype: str, old: Pages, rows: np.ndarray, new_pages: np.ndarray) -> Optional[Pages]:
    """old with pages `rows` set to new_pages (quantized as stored), or None if no page changes.

    Pages whose float values equal the current ones keep their exact stored bytes.
    """
    changed = changed_rows(old.floats[rows], new_pages)
    if not changed.any():
        return None
    rows, new_pages = rows[changed], new_pages[changed]
    update = stored_pages(page_dtype, new_pages)
    result = Pages(old.floats.copy(), old.values.copy(), None if old.scales is None else old.scales.copy())
    result.floats[rows] = update.floats
    result.values[rows] = update.values
    if result.scales is not None:
        result.scales[rows] = update.scales
    return result


def as_values(values, what: str) -> np.ndarray:
    """A float32 C-order copy of floating-point values; ValueError if they are not finite."""
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{what} has dtype {array.dtype}, expected floating point")
    array = np.array(array, dtype=np.float32, order="C", copy=True)  # the store owns its arrays
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contains NaN or infinite values")
    return array


