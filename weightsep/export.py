"""Binary export of the separated state for microcontrollers (modes w and p).

Weights are written as signed 16-bit fixed point in Q-format: value = int16 / 2**Q,
little-endian, row-major pages (the shared pool [P, S], then the exclusive store
[E, S] in its own file).  Values outside the int16 range saturate; the export reports
how many did and the largest rounding error.  Page tables are uint16 little-endian
(entry e < P: shared page e; e >= P: exclusive row e - P).  A JSON manifest lists
the sizes, the Q value and every file, so a firmware build script can check them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from weightsep.errors import WeightSepError
from weightsep.store import Store


@dataclasses.dataclass
class Quantized:
    values: np.ndarray      # int16
    saturated: int          # how many weights hit the int16 range
    max_error: float        # largest |dequantized - original| among the unsaturated weights


def quantize(weights: np.ndarray, q: int) -> Quantized:
    """Round to int16 Q-format with q fraction bits (0 <= q <= 15), saturating."""
    if not 0 <= q <= 15:
        raise WeightSepError(f"-Q={q}: the Q-format needs 0..15 fraction bits for int16")
    scaled = np.rint(np.asarray(weights, np.float64) * (1 << q))
    info = np.iinfo(np.int16)
    saturated = (scaled < info.min) | (scaled > info.max)
    values = np.clip(scaled, info.min, info.max).astype("<i2")
    ok = ~saturated
    error = np.abs(values[ok] / (1 << q) - weights[ok]).max() if ok.any() else 0.0
    return Quantized(values, int(saturated.sum()), float(error))


def _write(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(array.tobytes(order="C"))
    tmp.replace(path)


def export_weights(store: Store, out_dir: Path, q: int) -> list[str]:
    """-mode=w: the shared pool and the exclusive store as int16 Q-format files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    manifest = _manifest(out_dir, store)
    manifest.update({"q": q, "weight_dtype": "int16 little-endian, value = int / 2**q"})
    for name, array in (("shared_weight_page", store.shared), ("exclusive_weight_page", store.exclusive)):
        quant = quantize(array, q)
        path = out_dir / f"{name}.bin"
        _write(path, quant.values)
        manifest["files"][path.name] = {"shape": list(array.shape), "dtype": "<i2"}
        lines.append(f"saved {path}: {array.shape[0]} pages x {array.shape[1]} weights, Q{q}, "
                     f"{quant.saturated} saturated, max rounding error {quant.max_error:.3g}")
    _save_manifest(out_dir, manifest)
    return lines


def export_page_tables(store: Store, out_dir: Path, names: list[str] | None = None) -> list[str]:
    """-mode=p: each task's page table as uint16 entries."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(out_dir, store)
    lines = []
    limit = store.num_pages + store.exclusive.shape[0]
    if limit > np.iinfo(np.uint16).max:
        raise WeightSepError(f"{limit} pages do not fit uint16 page-table entries")
    for name in names or [t.name for t in store.tasks]:
        rec = store.task(name)
        path = out_dir / f"{name}_page_table.bin"
        _write(path, rec.page_table.astype("<u2"))
        manifest["files"][path.name] = {"shape": [rec.num_pages], "dtype": "<u2", "num_weights": rec.num_weights}
        lines.append(f"saved {path}: {rec.num_pages} entries for {rec.num_weights} weights")
    _save_manifest(out_dir, manifest)
    return lines


def _manifest(out_dir: Path, store: Store) -> dict:
    path = out_dir / "manifest.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {"files": {}}
    manifest.update({"page_size": store.page_size, "num_shared_pages": store.num_pages,
                     "num_exclusive_pages": int(store.exclusive.shape[0])})
    return manifest


def _save_manifest(out_dir: Path, manifest: dict) -> None:
    _write(out_dir / "manifest.json", np.frombuffer(json.dumps(manifest, indent=1).encode(), np.uint8))
