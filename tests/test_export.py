"""The binary export for microcontrollers (-mode=w, -mode=p), read back by a reader written here
from the format description (weightsep/export.py's docstring), not with the module's helpers.

The original's files: a little-endian int32 count N, then N values: `weight` (float32 pool),
`weight_q` (int16 Q-format), `<task>_e` / `<task>_q` (the task's exclusive pages by ascending task
page), `<task>_p` (uint16 page table: e < P shared page e, P + i the i-th page of `<task>_e`).
Quantized states add `weight_int8` / `<task>_e_int8`: int32 rows, int32 S, float32 scales [rows],
then the values; `weight_int4` / `<task>_e_int4`: int32 rows, int32 S, int32 G, int32 K, float16
scales [rows, S / G], uint8 kinds [rows], packed nibbles [rows, S / 2], the int8 pages' low
nibbles [K, S / 2]."""

import struct

import numpy as np
import pytest

from conftest import assert_one_line_error, copy_state, run_main
from weightsep.errors import WeightSepError
from weightsep.export import q_format
from weightsep.store import Store, TaskRecord, convert_state
from weightsep.tasks import TaskSpec


# ---- an independent reader -----------------------------------------------------------

def read_counted(path, dtype):
    """The values of a counted file; its size must be exactly 4 + N * itemsize."""
    data = path.read_bytes()
    (count,) = struct.unpack_from("<i", data, 0)
    dtype = np.dtype(dtype)
    assert len(data) == 4 + count * dtype.itemsize, (path, len(data), count)
    return np.frombuffer(data, dtype=dtype, count=count, offset=4)


def nibbles(data, offset, rows, size):
    """int32 [rows, size] unsigned nibbles, element 2k in the low nibble of byte k."""
    packed = np.frombuffer(data, np.uint8, count=rows * size // 2, offset=offset).reshape(rows, size // 2)
    out = np.empty((rows, size), np.int32)
    out[:, 0::2], out[:, 1::2] = packed & 0x0F, packed >> 4
    return out


def read_quantized(path, page_dtype):
    """(rows, S, scale of every weight float32 [rows, S], q int [rows, S], qmax per row) of a
    weight_int8 / weight_int4 / <task>_e_int* file."""
    data = path.read_bytes()
    if page_dtype == "int8":
        rows, size = struct.unpack_from("<ii", data, 0)
        scales = np.frombuffer(data, "<f4", count=rows, offset=8)
        start = 8 + 4 * rows
        assert len(data) == start + rows * size
        q = np.frombuffer(data, np.int8, count=rows * size, offset=start).reshape(rows, size).astype(np.int32)
        return rows, size, np.repeat(scales[:, None], size, axis=1), q, np.full(rows, 127)
    rows, size, group, wide = struct.unpack_from("<iiii", data, 0)
    scales = np.frombuffer(data, "<f2", count=rows * size // group, offset=16).reshape(rows, -1)
    start = 16 + 2 * scales.size
    kinds = np.frombuffer(data, np.uint8, count=rows, offset=start)
    start += rows
    assert len(data) == start + (rows + wide) * size // 2 and np.count_nonzero(kinds == 8) == wide
    high = nibbles(data, start, rows, size)
    q = np.where(high >= 8, high - 16, high)  # 4-bit two's complement
    low = nibbles(data, start + rows * size // 2, wide, size)
    q[kinds == 8] = q[kinds == 8] * 16 + low  # int8 pages: q = 16 h + l
    return rows, size, np.repeat(scales.astype(np.float32), group, axis=1), q, np.where(kinds == 8, 127, 7)


def rebuild(pool, exclusive, table, n):
    """A task's weights from the exported pool [P, S], its exclusive pages [k, S] and its table."""
    num_shared = pool.shape[0]
    pages = [pool[e] if e < num_shared else exclusive[e - num_shared] for e in table]
    return np.concatenate(pages)[:n]


def original_page_list(record, num_shared):
    """The original's -mode=p: the shared entries in task-page order, then each exclusive page
    (ascending) inserted at its position as P + its rank."""
    page_list = [int(e) for i, e in enumerate(record.page_table) if i not in record.exclusive_pages]
    for rank, page in enumerate(sorted(record.exclusive_pages)):
        page_list.insert(page, num_shared + rank)
    return page_list


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- a state built by hand ----------------------------------------------------------

F32 = np.float32
# Chosen to exercise Q-format: saturation both ways, truncation toward zero of negatives.
POOL = np.array([[0.0, 1.0, -1.0, 0.5 / 256],
                 [-0.999 / 256, -1.999 / 256, 1.999 / 256, 127.99],
                 [128.0, -128.0, -128.01, 1e6]], F32)
POOL_Q8 = [0, 256, -256, 0, 0, -1, 1, 32765, 32767, -32768, -32768, 32767]
# Task ta: 10 weights = 3 pages of 4; pages 2 and 0 exclusive, given in that order, so that
# row 0 of the exclusive store is task page 2 and row 1 task page 0; page 1 on shared page 2.
TA_PAGE2 = [-1e6, 3.0 / 256, 0.25, -0.25]
TA_PAGE0 = [2.0, -2.0, 0.125, -0.125]
TA_E = TA_PAGE0 + TA_PAGE2                       # by ascending task page
TA_Q8 = [512, -512, 32, -32, -32768, 3, 64, -64]
# Task tb: 8 weights = 2 pages on shared pages 1 and 0, nothing exclusive.


def spec(name, input_shape, hidden, classes):
    return TaskSpec(name=name, input_shape=input_shape, num_classes=classes, dense=(hidden,)).to_json()


def add(store, name, n, table, exclusive_pages, exclusive_values, input_shape, hidden, classes):
    store.add_task(TaskRecord(name=name, num_weights=n, page_table=table, exclusive_pages=exclusive_pages,
                              spec=spec(name, input_shape, hidden, classes)),
                   np.array(exclusive_values, F32).reshape(len(exclusive_pages), 4),
                   vectors={"network_weight": np.ones(n, F32), "network_fisher": np.ones(n, F32)})


@pytest.fixture
def hand_state(tmp_path):
    store = Store(tmp_path / "hand")
    with store.writer():
        store.create(page_size=4, num_pages=3)
        store.save_shared(POOL)
        add(store, "ta", 10, [-1, 2, -1], [2, 0], TA_PAGE2 + TA_PAGE0, (1, 1, 1), 2, 2)  # (1 + 1) * 2 + (2 + 1) * 2
        add(store, "tb", 8, [1, 0], [], [], (3, 1, 1), 1, 2)                              # (3 + 1) * 1 + (1 + 1) * 2
    return store.dir


def test_q_format_rule_by_hand():
    values = np.array([0.0, 1.0, -1.0, 0.5 / 256, -0.999 / 256, -1.999 / 256, 1.999 / 256, 127.99, 128.0,
                       -128.0, -128.01, 1e6, -1e6, 3.0 / 256], F32)
    expected = {
        8: [0, 256, -256, 0, 0, -1, 1, 32765, 32767, -32768, -32768, 32767, -32768, 3],
        0: [0, 1, -1, 0, 0, 0, 0, 127, 128, -128, -128, 32767, -32768, 0],
        15: [0, 32767, -32768, 64, -127, -255, 255, 32767, 32767, -32768, -32768, 32767, -32768, 384],
    }
    for q, want in expected.items():
        got = q_format(values, q)
        assert got.dtype == np.dtype("<i2")
        assert got.tolist() == want, q
    for bad in (16, -1):
        with pytest.raises(WeightSepError, match=f"-Q={bad}"):
            q_format(values, bad)


def test_hand_built_state_byte_for_byte(hand_state, tmp_path):
    out = tmp_path / "mcu"
    w = run_main("-mode=w", f"-state_dir={hand_state}", f"-export_dir={out}")
    assert w.stdout.splitlines() == ["weight_len 12", "weight_len 12", "ta", "vnn_exclusive_weight_len 8",
                                     "vnn_exclusive_weight_len 8", "tb", "no exclusive weight",
                                     summary_line(out, 4, 52 + 28 + 36 + 20)]
    p = run_main("-mode=p", f"-state_dir={hand_state}", f"-export_dir={out}")
    assert p.stdout.splitlines() == ["ta", "[3, 2, 4]", "weight_page_list_len 3",
                                     "tb", "[1, 0]", "weight_page_list_len 2",
                                     summary_line(out, 6, 52 + 28 + 36 + 20 + 10 + 8)]

    assert (out / "weight").read_bytes() == b"\x0c\x00\x00\x00" + POOL.astype("<f4").tobytes()
    assert (out / "weight_q").read_bytes() == b"\x0c\x00\x00\x00" + np.array(POOL_Q8, "<i2").tobytes()
    assert (out / "ta_e").read_bytes() == b"\x08\x00\x00\x00" + np.array(TA_E, "<f4").tobytes()
    assert (out / "ta_q").read_bytes() == b"\x08\x00\x00\x00" + np.array(TA_Q8, "<i2").tobytes()
    assert (out / "ta_p").read_bytes() == b"\x03\x00\x00\x00" b"\x03\x00\x02\x00\x04\x00"
    assert (out / "tb_p").read_bytes() == b"\x02\x00\x00\x00" b"\x01\x00\x00\x00"
    assert not (out / "tb_e").exists() and not (out / "tb_q").exists()

    store = Store(hand_state).load()
    assert store.task("ta").page_table.tolist() == [4, 2, 3]  # global rows: page 0 is row 1, page 2 row 0
    pool = read_counted(out / "weight", "<f4").reshape(3, 4)
    for name, exclusive in (("ta", read_counted(out / "ta_e", "<f4").reshape(-1, 4)), ("tb", None)):
        table = read_counted(out / f"{name}_p", "<u2")
        rebuilt = rebuild(pool, exclusive, table, store.task(name).num_weights)
        assert rebuilt.tobytes() == store.materialize(name).tobytes(), name


def summary_line(out, files, size, default=""):
    """The last line of -mode=w / -mode=p; files and bytes checked against the folder itself."""
    on_disk = [f for f in out.iterdir() if f.name != "manifest.json"]
    assert len(on_disk) == files and sum(f.stat().st_size for f in on_disk) == size
    return f"export in {out}{default}: {files} files, {size:,} bytes, listed in {out / 'manifest.json'}"


def test_trained_state_rebuilds_every_task(tiny_state, tmp_path):
    """Export into <state_dir>/export (the default); every task rebuilt from `weight` + `<task>_e`
    + `<task>_p` is exactly what the state materializes.  Long page tables print shortened unless
    -print_tables."""
    state = copy_state(tiny_state, tmp_path / "st")
    out = state / "export"
    store = Store(state).load()
    P, S = store.num_pages, store.page_size
    records = store.tasks
    assert all(rec.exclusive_pages for rec in records)  # the fixture's margin leaves exclusive pages
    w = run_main("-mode=w", f"-state_dir={state}")
    expected = [f"weight_len {P * S}"] * 2
    for rec in records:
        expected += [rec.name] + [f"vnn_exclusive_weight_len {len(rec.exclusive_pages) * S}"] * 2
    files = 2 + 2 * len(records)
    size = 2 * 4 + P * S * 6 + sum(2 * 4 + len(rec.exclusive_pages) * S * 6 for rec in records)
    assert w.stdout.splitlines() == expected + [summary_line(out, files, size, " (the default -export_dir)")]
    p = run_main("-mode=p", f"-state_dir={state}")
    full, short = [], []
    for rec in records:
        table = original_page_list(rec, P)
        assert len(table) > 12
        cut = f"[{', '.join(map(str, table[:6]))}, ..., {', '.join(map(str, table[-6:]))}] ({len(table)} entries; " \
              f"-print_tables prints them all)"
        full += [rec.name, str(table), f"weight_page_list_len {rec.num_pages}"]
        short += [rec.name, cut, f"weight_page_list_len {rec.num_pages}"]
    size += sum(4 + 2 * rec.num_pages for rec in records)
    assert p.stdout.splitlines() == short + [summary_line(out, files + len(records), size,
                                                          " (the default -export_dir)")]
    p = run_main("-mode=p", f"-state_dir={state}", "-print_tables")
    assert p.stdout.splitlines()[:-1] == full

    pool = read_counted(out / "weight", "<f4")
    assert pool.tobytes() == store.shared.astype("<f4").tobytes()
    np.testing.assert_array_equal(read_counted(out / "weight_q", "<i2"),
                                  np.trunc(np.clip(pool.astype(np.float64) * 256, -32768, 32767)))
    for rec in records:
        exclusive = read_counted(out / f"{rec.name}_e", "<f4").reshape(-1, S)
        rows = [rec.page_table[page] - P for page in sorted(rec.exclusive_pages)]
        assert exclusive.tobytes() == store.exclusive[rows].astype("<f4").tobytes()
        np.testing.assert_array_equal(read_counted(out / f"{rec.name}_q", "<i2"),
                                      np.trunc(np.clip(exclusive.reshape(-1).astype(np.float64) * 256,
                                                       -32768, 32767)))
        table = read_counted(out / f"{rec.name}_p", "<u2")
        assert table.tolist() == original_page_list(rec, P)
        rebuilt = rebuild(pool.reshape(P, S), exclusive, table, rec.num_weights)
        assert rebuilt.tobytes() == store.materialize(rec.name).tobytes(), rec.name
    # The exported files do not disturb the state: it still loads, lists and takes a writer.
    with Store(state).writer() as again:
        assert [r.name for r in again.tasks] == [r.name for r in records]
    assert (out / "weight").is_file()


@pytest.mark.parametrize("page_dtype", ["int8", "int4"])
def test_quantized_state_files_dequantize_to_the_float_files(tiny_state, tmp_path, page_dtype):
    state = tmp_path / page_dtype
    convert_state(tiny_state, state, page_dtype)
    out = tmp_path / "mcu"
    run_main("-mode=w", f"-state_dir={state}", f"-export_dir={out}", "-Q=10")
    store = Store(state).load()
    P, S = store.num_pages, store.page_size

    def check(path, float_values, rows_expected):
        rows, size, scales, q, qmax = read_quantized(path, page_dtype)
        assert (rows, size) == (rows_expected, S)
        assert np.all(np.abs(q) <= qmax[:, None]) and np.all(scales >= 0)
        dequantized = q.astype(np.float32) * scales
        assert dequantized.tobytes() == float_values.astype("<f4").tobytes(), path

    pool = read_counted(out / "weight", "<f4").reshape(P, S)
    assert pool.tobytes() == store.shared.tobytes()  # the float32 file holds the dequantized values
    np.testing.assert_array_equal(read_counted(out / "weight_q", "<i2"),
                                  np.trunc(np.clip(pool.reshape(-1).astype(np.float64) * 1024, -32768, 32767)))
    check(out / f"weight_{page_dtype}", pool, P)
    for rec in store.tasks:
        exclusive = read_counted(out / f"{rec.name}_e", "<f4").reshape(-1, S)
        check(out / f"{rec.name}_e_{page_dtype}", exclusive, len(rec.exclusive_pages))
        rows = [rec.page_table[page] - P for page in sorted(rec.exclusive_pages)]
        assert exclusive.tobytes() == store.exclusive[rows].tobytes()


def test_page_table_entry_beyond_uint16_is_one_line_error(tmp_path):
    """P = 65535: the second exclusive page of task `wide` would be entry 65536 of a uint16 table
    (task `fits`, listed first, fits: nothing may be written for it either)."""
    store = Store(tmp_path / "big")
    four = {"network_weight": np.ones(4, F32), "network_fisher": np.ones(4, F32)}  # (1 + 1) + (1 + 1) weights
    with store.writer():
        store.create(page_size=1, num_pages=65535)
        store.add_task(TaskRecord(name="fits", num_weights=4, page_table=[0, 1, 2, 65534], exclusive_pages=[],
                                  spec=spec("fits", (1, 1, 1), 1, 1)), np.zeros((0, 1), F32), vectors=four)
        store.add_task(TaskRecord(name="wide", num_weights=4, page_table=[-1, -1, 3, 4], exclusive_pages=[0, 1],
                                  spec=spec("wide", (1, 1, 1), 1, 1)), np.ones((2, 1), F32), vectors=four)
    out = tmp_path / "mcu"
    result = run_main("-mode=p", f"-state_dir={store.dir}", f"-export_dir={out}", check=False)
    assert_one_line_error(result, "wide", "65536", "uint16")
    assert result.returncode == 1
    written = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert written == [], f"a failed export left files behind: {written}"


@pytest.mark.parametrize("q", ["16", "-1"])
def test_bad_Q_is_refused_before_anything_is_written(hand_state, tmp_path, q):
    before = snapshot(hand_state)
    out = tmp_path / "mcu"
    result = run_main("-mode=w", f"-state_dir={hand_state}", f"-export_dir={out}", f"-Q={q}", check=False)
    assert_one_line_error(result, f"-Q={q}")
    assert result.returncode == 2 and result.stdout == ""
    assert not out.exists()
    assert snapshot(hand_state) == before


def test_task_named_weight_does_not_overwrite_the_pool_files(tmp_path):
    """A task may be called `weight`; its `<task>_q` file is then named like the pool's `weight_q`.
    The export must refuse (one line) or keep the pool's file: never a silently wrong pool."""
    store = Store(tmp_path / "st")
    with store.writer():
        store.create(page_size=4, num_pages=3)
        store.save_shared(POOL)
        add(store, "weight", 10, [-1, 2, -1], [2, 0], TA_PAGE2 + TA_PAGE0, (1, 1, 1), 2, 2)
    out = tmp_path / "mcu"
    result = run_main("-mode=w", f"-state_dir={store.dir}", f"-export_dir={out}", check=False)
    if result.returncode:
        assert_one_line_error(result, "weight")
    else:
        assert read_counted(out / "weight_q", "<i2").tolist() == POOL_Q8
