"""docs/FORMAT.md as a contract: readers written from the document alone (NumPy, json, hashlib,
struct; no weightsep code) read a state directory and a -mode=w / -mode=p export and get the
weights Store.materialize returns, bit for bit, for every page format."""

import ast
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from weightsep.export import export_page_tables, export_weights
from weightsep.store import Store, TaskRecord, convert_state
from weightsep.tasks import TaskSpec

S, P = 8, 5


# ---- the readers (from docs/FORMAT.md) -------------------------------------------------------

def nibbles(packed, signed=True):
    """Two 4-bit numbers per byte: element 2k the LOW nibble of byte k, 2k + 1 the HIGH nibble."""
    out = np.empty((packed.shape[0], 2 * packed.shape[1]), np.int16)
    out[:, 0::2] = packed & 0x0F
    out[:, 1::2] = packed >> 4
    if signed:
        out[out >= 8] -= 16
    return out


def decode_pages(page_dtype, values, scales=None, wide=None, bits=None):
    """Weight-pages: float32 as is; int8 float32(q) * scale (a subnormal scale a signed zero); int4
    float32(q) * float32(group scale), q the code of an int4 page or 16 h + l of an int8 page."""
    if page_dtype == "float32":
        return values.astype(np.float32)
    if page_dtype == "int8":
        scales = scales.astype(np.float32)
        scales = np.where(np.abs(scales) < np.float32(2.0 ** -126), np.copysign(np.float32(0), scales), scales)
        return values.astype(np.float32) * scales[:, None]
    q = nibbles(values)
    low = nibbles(wide, signed=False)
    rows8 = np.flatnonzero(bits == 8)
    assert set(bits.tolist()) <= {4, 8} and len(rows8) == len(wide)
    q[rows8] = 16 * q[rows8] + low  # the k-th int8 page has row k of the low nibbles
    group = q.shape[1] // scales.shape[1]
    return q.astype(np.float32) * np.repeat(scales.astype(np.float32), group, axis=1)


def read_npy(path: Path, entry: dict) -> np.ndarray:
    """An array file: magic, version, header, C-order little-endian data, checked against its
    entry; ValueError when it does not match."""
    raw = path.read_bytes()
    if raw[:6] != b"\x93NUMPY" or raw[6] not in (1, 2):
        raise ValueError(f"{path.name} is not a .npy file")
    if raw[6] == 1:
        (length,), start = struct.unpack("<H", raw[8:10]), 10
    else:
        (length,), start = struct.unpack("<I", raw[8:12]), 12
    header = ast.literal_eval(raw[start:start + length].decode("ascii"))
    data = raw[start + length:]
    dtype = {"float32": "<f4", "float16": "<f2", "int8": "|i1", "uint8": "|u1"}[entry["dtype"]]
    if (header["descr"], header["fortran_order"], list(header["shape"])) != (dtype, False, entry["shape"]):
        raise ValueError(f"{path.name}: header {header} is not the registry's {entry}")
    if len(data) != int(np.prod(entry["shape"])) * np.dtype(dtype).itemsize:
        raise ValueError(f"{path.name}: {len(data)} data bytes")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ValueError(f"{path.name} does not match the registry")
    return np.frombuffer(data, dtype).reshape(entry["shape"])


def read_committed(state: Path, rel: str, entry: dict) -> np.ndarray:
    """The real file if it matches the registry, else its pending file."""
    try:
        return read_npy(state / rel, entry)
    except (FileNotFoundError, ValueError):
        return read_npy(state / (rel[:-len(".npy")] + ".pending.npy"), entry)


def read_state(state: Path) -> dict:
    """Each task's weights, from the state directory's files."""
    registry = json.loads((state / "weightsep_state.json").read_text("utf-8"))
    assert registry["schema_version"] == 3
    body = {k: v for k, v in registry.items() if k != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    assert hashlib.sha256(canonical).hexdigest() == registry["checksum"]
    files, page_dtype = registry["files"], registry["page_dtype"]
    num_shared, page_size = registry["num_pages"], registry["page_size"]
    parts = {"float32": ("page",), "int8": ("page", "scale"), "int4": ("page", "scale", "wide", "bits")}[page_dtype]
    rows = []
    for which in ("shared", "exclusive"):
        names = [f"{which}_weight_{part}.npy" for part in parts]
        # the master values (quantized states): float32 beside the stored pages, not what a reader decodes
        master = [f"{which}_weight_master.npy"] if page_dtype != "float32" else []
        assert [name for name in files if name.startswith(which)] == names + master
        rows.append(decode_pages(page_dtype, *(read_committed(state, name, files[name]) for name in names)))
    shared, exclusive = rows
    assert shared.shape == (num_shared, page_size) and exclusive.shape[0] == files["exclusive_weight_page.npy"]["shape"][0]
    weights = {}
    for task in registry["tasks"]:
        table = task["page_table"]
        assert sorted(task["exclusive_pages"]) == [i for i, e in enumerate(table) if e >= num_shared]
        pages = [shared[e] if e < num_shared else exclusive[e - num_shared] for e in table]
        weights[task["name"]] = np.concatenate(pages)[:task["num_weights"]]
    return weights


def read_counted(path: Path, dtype: str) -> np.ndarray:
    """An int32 count N, then N values, nothing after them."""
    raw = path.read_bytes()
    (count,) = struct.unpack("<i", raw[:4])
    assert len(raw) == 4 + count * np.dtype(dtype).itemsize
    return np.frombuffer(raw[4:], dtype)


def read_quantized(path: Path, page_dtype: str) -> np.ndarray:
    """weight_int8 / <task>_e_int8: int32 r, int32 S, float32 scales [r], int8 values [r, S].
    weight_int4 / <task>_e_int4: int32 r, S, G, K, float16 scales [r, S / G], kinds uint8 [r],
    codes uint8 [r, S / 2], low nibbles uint8 [K, S / 2].  Decoded, float32 [r, S]."""
    raw = path.read_bytes()

    def take(dtype, count, at):
        return np.frombuffer(raw, dtype, count, at), at + count * np.dtype(dtype).itemsize

    if page_dtype == "int8":
        rows, page_size = struct.unpack("<ii", raw[:8])
        scales, at = take("<f4", rows, 8)
        values, at = take("|i1", rows * page_size, at)
        assert at == len(raw)
        return decode_pages("int8", values.reshape(rows, page_size), scales)
    rows, page_size, group, num_wide = struct.unpack("<iiii", raw[:16])
    scales, at = take("<f2", rows * (page_size // group), 16)
    bits, at = take("|u1", rows, at)
    codes, at = take("|u1", rows * page_size // 2, at)
    wide, at = take("|u1", num_wide * page_size // 2, at)
    assert at == len(raw)
    return decode_pages("int4", codes.reshape(rows, -1), scales.reshape(rows, -1), wide.reshape(num_wide, page_size // 2), bits)


def read_export(out: Path, names_and_sizes: dict, num_shared: int, page_size: int, page_dtype: str):
    """Each task's weights from the export, once from the float32 files and once from the
    quantized ones (quantized states); n comes from the registry, as the document says."""
    pool = read_counted(out / "weight", "<f4").reshape(-1, page_size)
    assert len(pool) == num_shared
    quantized = page_dtype != "float32"
    if quantized:
        np.testing.assert_array_equal(read_quantized(out / f"weight_{page_dtype}", page_dtype), pool)
    weights = {}
    for name, n in names_and_sizes.items():
        table = read_counted(out / f"{name}_p", "<u2")
        k = int(np.count_nonzero(table >= num_shared))
        if k:
            own = read_counted(out / f"{name}_e", "<f4").reshape(k, page_size)
            if quantized:
                np.testing.assert_array_equal(read_quantized(out / f"{name}_e_{page_dtype}", page_dtype), own)
        else:
            assert not (out / f"{name}_e").exists() and not (out / f"{name}_q").exists()
        pages = [pool[e] if e < num_shared else own[e - num_shared] for e in table]
        weights[name] = np.concatenate(pages)[:n]
    return weights


# ---- the state ------------------------------------------------------------------------------

def spec(name):
    return TaskSpec(name=name, input_shape=(4, 4, 1), num_classes=2, dense=(3,)).to_json()


def make_state(directory: Path, page_dtype: str) -> Store:
    """Three tasks: exclusive pages added out of task-page order, none, and several; weights with
    tiny and zero pages.  int4: a float32 state converted, a third of its pages int8 pages (by Fisher), groups
    of 4 weights."""
    if page_dtype == "int4":
        make_state(directory.parent / "float32", "float32")
        return convert_state(directory.parent / "float32", directory, "int4", int8_pages=0.34, group_size=4)
    rng = np.random.default_rng(7)
    store = Store(directory)
    tasks = [("a", 37, [0, 1, 2, 4, -1], [4, 1]), ("b", 16, [3, 4], []), ("c", 20, [-1, 2, -1], [2, 0])]
    with store.writer():
        store.create(page_size=S, num_pages=P, seed=1, page_dtype=page_dtype)
        for name, n, table, exclusive in tasks:
            values = rng.normal(0, 1, (len(exclusive), S)).astype(np.float32)
            if name == "c":
                values[1] = 0.0
                values[0] *= np.float32(1e-30)
            vectors = {"network_weight": rng.normal(size=n).astype(np.float32),
                       "network_fisher": rng.random(n).astype(np.float32)}
            store.add_task(TaskRecord(name, n, table, exclusive, spec(name)), values, vectors)
        store.commit_task("a", weights=rng.normal(0, 0.1, 37).astype(np.float32))
    return store


@pytest.mark.parametrize("page_dtype", ["float32", "int8", "int4"])
def test_independent_readers_get_the_stored_weights(tmp_path, page_dtype):
    store = make_state(tmp_path / "state", page_dtype)
    expected = {rec.name: store.materialize(rec.name) for rec in store.tasks}
    assert any(rec.exclusive_pages == [] for rec in store.tasks)
    if page_dtype == "int4":  # int4 and int8 pages, more than one scale per page
        kinds = np.concatenate([store.quantized(which).bits for which in ("shared", "exclusive")])
        assert set(kinds.tolist()) == {4, 8}
        assert store.quantized("shared").scales.shape == (store.num_pages, S // 4)

    from_state = read_state(tmp_path / "state")
    out = tmp_path / "export"
    export_weights(store, out, 8)
    export_page_tables(store, out)
    from_export = read_export(out, {rec.name: rec.num_weights for rec in store.tasks}, store.num_pages,
                              store.page_size, page_dtype)
    for name, weights in expected.items():
        assert from_state[name].tobytes() == weights.tobytes(), name
        assert from_export[name].tobytes() == weights.tobytes(), name

    # A commit interrupted after its commit point: the registry's content is in the pending files.
    state = tmp_path / "state"
    (state / "exclusive_weight_page.npy").rename(state / "exclusive_weight_page.pending.npy")
    (state / "exclusive_weight_page.npy").write_bytes(b"stale")
    for name, weights in read_state(state).items():
        assert weights.tobytes() == expected[name].tobytes()
