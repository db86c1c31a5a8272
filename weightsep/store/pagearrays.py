"""A state's page arrays in memory: the float32 values every algorithm uses beside the stored
values and scales, the float32 master values of a quantized state that keeps them, and the
rewrite of changed pages (quantized by the state's page format).

Pages whose values do not change keep their exact stored bytes, so that writing back what is
stored changes nothing, and what the store returns is exactly what it stores.  With master
values, a write changes the masters and the stored pages are re-derived from them: an update
smaller than half a quantization step stays in the master (it is not rounded away), and the
values of a page that a write does not change are never re-rounded.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from weightsep.pageformat import Encoded, PageFormat


@dataclasses.dataclass
class Pages:
    """One page array in memory: float32 values as used, and the stored arrays (weightsep.pageformat)."""

    floats: np.ndarray
    stored: Encoded
    master: Optional[np.ndarray] = None  # float32 master values (quantized states that keep them)

    @property
    def exact(self) -> np.ndarray:
        """The values a write starts from: the master values where kept, else the stored floats."""
        return self.floats if self.master is None else self.master

    @property
    def values(self) -> np.ndarray:
        return self.stored.values

    @property
    def scales(self) -> Optional[np.ndarray]:
        return self.stored.scales

    @property
    def wide(self) -> np.ndarray:
        """bool [r]: which pages are int8 pages of an int4 state."""
        bits = self.stored.bits
        return np.zeros(len(self.floats), bool) if bits is None else bits == 8

    def freeze(self) -> "Pages":
        for array in (self.floats, self.master, *self.stored):
            if array is not None:
                array.setflags(write=False)
        return self

    def rows(self, index) -> "Pages":
        """Pages `index` (int array) as their own page array, stored bytes kept."""
        index = np.asarray(index, np.int64)
        return Pages(self.floats[index], self.stored.rows(index), None if self.master is None else self.master[index])

    def concatenate(self, other: "Pages") -> "Pages":
        """This page array followed by other's (same format)."""
        if (self.master is None) != (other.master is None):
            raise ValueError("page arrays with and without master values cannot be joined")
        return Pages(np.concatenate([self.floats, other.floats]),
                     Encoded(*(None if a is None else np.concatenate([a, b]) for a, b in zip(self.stored, other.stored))),
                     None if self.master is None else np.concatenate([self.master, other.master]))


def stored_pages(fmt: PageFormat, floats: np.ndarray, wide=None, masters: bool = False) -> Pages:
    """float32 pages as the state stores them: quantized (when the format is; `wide` marks the
    int8 pages of an int4 state), and their float32 values; masters: keep `floats` as the master values."""
    encoded = fmt.quantize(floats, wide)
    return Pages(fmt.dequantize(*encoded), encoded, np.array(floats, np.float32) if masters else None)


def changed_rows(current: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Bool per row: whether any value differs bit for bit (-0.0 and 0.0 differ)."""
    return np.any(current.view(np.uint32) != new.view(np.uint32), axis=1)


def rewrite(fmt: PageFormat, old: Pages, rows: np.ndarray, new_pages: np.ndarray, wide=None) -> Optional[Pages]:
    """old with pages `rows` set to new_pages (quantized as stored), or None if no page changes.

    Pages whose float values equal the current ones keep their exact stored bytes; every page keeps
    its kind (int4 / int8), unless `wide` (bool [len(old)]) gives every page's kind anew, in which
    case pages whose kind changes are rewritten too.
    """
    changed = changed_rows(old.exact[rows], new_pages)
    if wide is not None:
        outside = np.ones(len(old.floats), bool)
        outside[rows] = False
        if np.any(wide[outside] != old.wide[outside]):
            raise ValueError("a page whose kind changes must be among the pages rewritten")
        changed |= wide[rows] != old.wide[rows]
    else:
        wide = old.wide
    if not changed.any():
        return None
    rows, new_pages = rows[changed], new_pages[changed]
    update = stored_pages(fmt, new_pages, wide[rows] if fmt.grouped else None)
    master = None
    if old.master is not None:
        master = old.master.copy()
        master[rows] = new_pages
    if fmt.grouped:
        # The wide rows follow the kinds: rebuild the whole array from per-page parts.
        floats = old.floats.copy()
        floats[rows] = update.floats
        values, scales = old.values.copy(), old.scales.copy()
        values[rows], scales[rows] = update.values, update.scales
        full_wide = np.zeros((len(floats), values.shape[1]), np.uint8)
        full_wide[old.wide] = old.stored.wide
        full_wide[rows[wide[rows]]] = update.stored.wide
        return Pages(floats, Encoded(values, scales, np.ascontiguousarray(full_wide[wide]),
                                     np.where(wide, 8, 4).astype(np.uint8)), master)
    result = Pages(old.floats.copy(), Encoded(*(None if a is None else a.copy() for a in old.stored)), master)
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


