"""The blob (weights.wsb, -mode=blob) and the C runtime that runs it (runtime_c/).

The blob is read back here by a reader written from docs/FORMAT.md ("The blob (weights.wsb)"),
not with weightsep.blob.  The C runtime is checked against TensorFlow: golden vectors are the
probabilities of each task's Keras network given the store's materialized weights
(Store.materialize) on synthetic inputs, for all ten networks of the paper, in float32, int8 and
int4 states (int4: blob version 2, float16 group scales and mixed int4 / int8 pages) and in the
transposed layout.  The C tool is built once per session (`make -C runtime_c`) and run as a
subprocess, as a user runs it."""

import struct
import subprocess
import zlib

import numpy as np
import pytest

from conftest import REPO, assert_one_line_error, copy_state, run_main
from weightsep.blob import blob_bytes
from weightsep.errors import WeightSepError
from weightsep import export
from weightsep.store import Store, TaskRecord, convert_state
from weightsep.synthetic import random_state
from weightsep.tasks import PAPER_TASKS, load_task

RUNTIME = REPO / "runtime_c"
BUILD = RUNTIME / "build"
F32 = np.float32
EXAMPLES = 6  # synthetic inputs per task


# ---- an independent reader, from docs/FORMAT.md ---------------------------------------------

HEADER_FIELDS = ("total_size", "header_size", "page_dtype", "flags", "page_size", "group_size", "num_tasks",
                 "num_shared", "num_exclusive", "num_layers", "page_stride", "tasks_offset", "layers_offset",
                 "tables_offset", "num_entries", "values_offset", "scales_offset")
TASK_FIELDS = ("input_h", "input_w", "input_c", "num_classes", "num_weights", "num_pages", "table_index",
               "first_layer", "num_layers", "num_exclusive")
LAYER_FIELDS = ("kind", "activation", "flags", "kh", "kw", "in", "out", "kernel_offset")


def _nibbles(data: bytes, rows: int, size: int, off: int) -> np.ndarray:
    """int32 [rows, size] nibbles 0..15: element 2k in the low nibble of byte k, 2k + 1 in the high one."""
    packed = np.frombuffer(data, np.uint8, rows * size // 2, off).reshape(rows, size // 2).astype(np.int32)
    nibbles = np.empty((rows, size), np.int32)
    nibbles[:, 0::2], nibbles[:, 1::2] = packed & 15, packed >> 4
    return nibbles


def _half_to_float32(bits: np.ndarray) -> np.ndarray:
    """float16 bit patterns (zero or normal, as the format allows) -> float32, by the bits."""
    bits = bits.astype(np.uint32)
    exponent = (bits >> 10) & 31
    assert not np.any(exponent == 31) and not np.any((exponent == 0) & ((bits & 0x3FF) != 0))
    out = (bits & 0x8000) << 16
    normal = exponent != 0
    out[normal] |= ((exponent[normal] + 112) << 23) | ((bits[normal] & 0x3FF) << 13)
    return out.view(F32)


def read_blob(data: bytes) -> dict:
    """Every field of a blob, its pages as float32 [P + E, S] (dequantized) and each task's weights."""
    assert data[:8] == b"WSEPBLOB"
    version, crc = struct.unpack_from("<II", data, 8)
    assert version in (1, 2)
    assert zlib.crc32(data[16:]) == crc
    head = dict(zip(HEADER_FIELDS, struct.unpack_from("<17I", data, 16)), version=version)
    assert head["total_size"] == len(data) and head["header_size"] == 128
    if version == 2:
        head.update(zip(("kinds_offset", "wide_offset", "num_wide"), struct.unpack_from("<3I", data, 84)))
    assert data[84 if version == 1 else 96:128] == bytes(44 if version == 1 else 32)
    for key in ("tasks_offset", "layers_offset", "tables_offset", "values_offset", "scales_offset",
                "kinds_offset", "wide_offset"):
        assert head.get(key, 0) % 16 == 0
    rows, size = head["num_shared"] + head["num_exclusive"], head["page_size"]
    dtype = ("float32", "int8", "int4")[head["page_dtype"]]
    off = head["values_offset"]
    if version == 2:  # int4 states: float16 group scales, int4 or int8 pages (kinds), int8 low nibbles
        group = head["group_size"]
        assert dtype == "int4" and size % group == 0 and head["page_stride"] == size // 2
        assert head["scales_offset"] == -(-(off + rows * size // 2) // 16) * 16
        assert head["kinds_offset"] == -(-(head["scales_offset"] + 2 * rows * (size // group)) // 16) * 16
        assert head["wide_offset"] == -(-(head["kinds_offset"] + rows) // 16) * 16
        assert len(data) == -(-(head["wide_offset"] + head["num_wide"] * size // 2) // 16) * 16
        kinds = np.frombuffer(data, np.uint8, rows, head["kinds_offset"])
        assert set(kinds.tolist()) <= {4, 8} and np.count_nonzero(kinds == 8) == head["num_wide"]
        high = _nibbles(data, rows, size, off)
        q = np.where(high >= 8, high - 16, high)
        low = _nibbles(data, head["num_wide"], size, head["wide_offset"])
        q[kinds == 8] = q[kinds == 8] * 16 + low  # the int8 pages' rows of `wide` are in page order
        scales = _half_to_float32(np.frombuffer(data, "<u2", rows * (size // group), head["scales_offset"]))
        pages = (q.astype(F32).reshape(rows, size // group, group) * scales.reshape(rows, -1, 1)).reshape(rows, size)
        head.update(kinds=kinds)
    elif dtype == "float32":
        assert head["page_stride"] == 4 * size and head["scales_offset"] == 0 and head["group_size"] == 0
        pages = np.frombuffer(data, "<f4", rows * size, off).reshape(rows, size).astype(F32)
    else:
        assert head["group_size"] == size
        scales = np.frombuffer(data, "<f4", rows, head["scales_offset"]).astype(F32)
        if dtype == "int8":
            q = np.frombuffer(data, np.int8, rows * size, off).reshape(rows, size).astype(F32)
        else:  # element 2k in the low nibble of byte k, 2k + 1 in the high nibble, 4-bit two's complement
            nibbles = _nibbles(data, rows, size, off)
            q = np.where(nibbles >= 8, nibbles - 16, nibbles).astype(F32)
        pages = q * scales[:, None]
    tables = np.frombuffer(data, "<u4", head["num_entries"], head["tables_offset"])
    tasks = []
    for t in range(head["num_tasks"]):
        base = head["tasks_offset"] + 160 * t
        name = data[base:base + 112].split(b"\0")[0].decode()
        task = dict(zip(TASK_FIELDS, struct.unpack_from("<10I", data, base + 112)), name=name)
        assert data[base + 152:base + 160] == bytes(8)
        table = tables[task["table_index"]:task["table_index"] + task["num_pages"]]
        assert task["num_pages"] == -(-task["num_weights"] // size)
        assert int(np.count_nonzero(table >= head["num_shared"])) == task["num_exclusive"]
        task["page_table"] = table
        task["weights"] = pages[table].reshape(-1)[:task["num_weights"]]
        task["layers"] = [dict(zip(LAYER_FIELDS, struct.unpack_from(
            "<8I", data, head["layers_offset"] + 32 * (task["first_layer"] + i)))) for i in range(task["num_layers"])]
        tasks.append(task)
    return dict(head, dtype=dtype, pages=pages, tasks=tasks)


# ---- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tools():
    """runtime_c built once: the host tool, and the sanitizer builds of the tool and the fuzzer."""
    proc = subprocess.run(["make", "-C", str(RUNTIME), "all", "check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"wsrun": BUILD / "wsrun", "asan": BUILD / "wsrun-asan", "fuzz": BUILD / "fuzz"}


def wsrun(tools, *args, tool="wsrun", check=True):
    proc = subprocess.run([str(tools[tool]), *map(str, args)], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


# The paper's layout: 128 shared pages of 512 weights, and the 104 exclusive pages the faithful
# formation of the ten networks gave (BENCHMARKS.md, "The method's settings").
PAPER_EXCLUSIVE = 104


@pytest.fixture(scope="module")
def paper_states(tmp_path_factory):
    """{state kind: state dir}: the ten networks as float32, int8 and int4 pages (int4: group scales,
    the 10% of pages of most Fisher as int8 pages), and float32 transposed."""
    root = tmp_path_factory.mktemp("paper_states")
    states = {"float32": random_state(root / "float32", PAPER_TASKS, PAPER_EXCLUSIVE).dir,
              "transposed": random_state(root / "transposed", PAPER_TASKS, PAPER_EXCLUSIVE, layout="transposed").dir}
    states["int8"] = convert_state(states["float32"], root / "int8", "int8").dir
    states["int4"] = convert_state(states["float32"], root / "int4", "int4").dir
    return states


@pytest.fixture(scope="module")
def golden(paper_states, tmp_path_factory):
    """{state kind: (blob path, {task: (inputs file, inputs [K, H, W, C], TensorFlow probabilities)})}."""
    from weightsep.networks import Network
    root = tmp_path_factory.mktemp("golden")
    rng = np.random.default_rng(1)
    inputs, networks = {}, {}
    for name in PAPER_TASKS:
        spec = load_task(name)
        x = rng.uniform(0, 1, (EXAMPLES, *spec.input_shape)).astype(F32)
        path = root / f"{name}.in"
        path.write_bytes(x.astype("<f4").tobytes())
        inputs[name] = (path, x)
    found = {}
    for kind, state in paper_states.items():
        store = Store(state).load()
        blob = root / f"{kind}.wsb"
        blob.write_bytes(blob_bytes(store))
        vectors = {}
        for name in PAPER_TASKS:
            key = (name, store.layout)
            if key not in networks:
                networks[key] = Network(load_task(name), layout=store.layout)
            net = networks[key]
            net.set_vector(store.materialize(name))
            vectors[name] = (inputs[name][0], inputs[name][1], net.predict(inputs[name][1]))
        found[kind] = (blob, vectors)
    return found


# ---- the writer, read back from the format's description ------------------------------------

@pytest.mark.parametrize("kind", ["float32", "int8", "int4", "transposed"])
def test_blob_holds_every_task_exactly_as_the_store(paper_states, golden, kind):
    store = Store(paper_states[kind]).load()
    blob = read_blob(golden[kind][0].read_bytes())
    assert blob["dtype"] == store.page_dtype and blob["page_size"] == 512
    assert blob["version"] == (2 if kind == "int4" else 1)
    if kind == "int4":
        kinds = np.concatenate([store.quantized("shared").bits, store.quantized("exclusive").bits])
        np.testing.assert_array_equal(blob["kinds"], kinds)
        assert blob["group_size"] == 64 and 0 < blob["num_wide"] < len(kinds)
    assert (blob["num_shared"], blob["num_exclusive"]) == (128, PAPER_EXCLUSIVE) == (128, store.num_exclusive)
    assert blob["flags"] == (1 if kind == "transposed" else 0)
    assert [t["name"] for t in blob["tasks"]] == list(PAPER_TASKS)
    for task in blob["tasks"]:
        record, spec = store.task(task["name"]), load_task(task["name"])
        np.testing.assert_array_equal(task["page_table"], record.page_table)
        np.testing.assert_array_equal(task["weights"], store.materialize(task["name"]))  # bit for bit
        assert (task["input_h"], task["input_w"], task["input_c"]) == spec.input_shape
        assert task["num_classes"] == spec.num_classes and task["num_exclusive"] == len(record.exclusive_pages)
        layers = task["layers"]
        convs, denses = layers[:len(spec.conv)], layers[len(spec.conv):]
        assert [(l["kind"], l["kh"], l["kw"], l["out"], l["activation"], l["flags"]) for l in convs] == [
            (1, kh, kw, f, 1, 1) for kh, kw, f in spec.conv]
        hidden = 2 if spec.dense_activation == "sigmoid" else 1
        assert [(l["kind"], l["out"], l["activation"]) for l in denses] == [
            (2, u, hidden) for u in spec.dense] + [(2, spec.num_classes, 3)]
        # the first dense layer reads the feature map channel-first only in the transposed layout
        assert [l["flags"] for l in denses] == [2 if kind == "transposed" else 0] + [0] * len(spec.dense)
        offsets = [l["kernel_offset"] for l in layers]
        sizes = [l["kh"] * l["kw"] * l["in"] * l["out"] + l["out"] for l in layers]
        assert offsets == [sum(sizes[:i]) for i in range(len(layers))] and sum(sizes) == record.num_weights


def test_blob_bytes_per_page_dtype(golden):
    """float32 pages take 4 bytes a weight, int8 1 (+ a 4-byte scale a page)."""
    sizes = {kind: golden[kind][0].stat().st_size for kind in ("float32", "int8")}
    pages = read_blob(golden["float32"][0].read_bytes())
    rows = pages["num_shared"] + pages["num_exclusive"]
    meta = pages["values_offset"]
    assert sizes["float32"] == meta + rows * 2048
    assert sizes["int8"] == meta + rows * 512 + (-(-rows * 4 // 16) * 16)


def test_int4_blob_bytes(golden):
    """int4 pages take half a byte a weight, plus a float16 scale per 64 weights, a kind byte per page and
    the int8 pages' low nibbles (half a byte a weight of those pages), each section padded to 16."""
    data = golden["int4"][0].read_bytes()
    blob = read_blob(data)
    rows = blob["num_shared"] + blob["num_exclusive"]
    pad = lambda n: -(-n // 16) * 16
    assert len(data) == blob["values_offset"] + pad(rows * 256) + pad(rows * 8 * 2) + pad(rows) + \
        pad(blob["num_wide"] * 256)


@pytest.mark.parametrize("dtype", ["float32", "int4"])
def test_blob_mode_writes_the_file_and_its_manifest(tiny_state, tmp_path, dtype):
    state = tiny_state if dtype == "float32" else convert_state(tiny_state, tmp_path / dtype, dtype).dir
    out = tmp_path / "export"
    result = run_main("-mode=blob", f"-state_dir={state}", f"-export_dir={out}")
    data = (out / "weights.wsb").read_bytes()
    assert result.stdout.splitlines()[-1] == f"wrote {out / 'weights.wsb'} ({len(data)} bytes)"
    assert data == blob_bytes(Store(state).load())
    version = 2 if dtype == "int4" else 1
    assert struct.unpack_from("<I", data, 8) == (version,)
    assert f"blob format {version} for runtime_c" in (out / "manifest.json").read_text()
    materialized = Store(state).load()
    for task in read_blob(data)["tasks"]:
        np.testing.assert_array_equal(task["weights"], materialized.materialize(task["name"]))


def test_blob_refuses_a_custom_model(tmp_path):
    store = Store(tmp_path / "state")
    spec = dict(load_task("hhar").to_json(), custom_model=True)
    with store.writer():
        store.create(page_size=512, num_pages=4)
        n = 65114
        n_p = -(-n // 512)
        store.add_task(TaskRecord("hhar", n, np.zeros(n_p), list(range(n_p)), spec), np.zeros((n_p, 512), F32),
                       vectors={"network_weight": np.zeros(n, F32), "network_fisher": np.zeros(n, F32)})
    with pytest.raises(WeightSepError, match="custom build_model"):
        blob_bytes(store)
    assert_one_line_error(run_main("-mode=blob", f"-state_dir={store.dir}", f"-export_dir={tmp_path / 'x'}",
                                   check=False), "custom build_model")
    assert not (tmp_path / "x" / "weights.wsb").exists()


# ---- the C runtime against TensorFlow --------------------------------------------------------

@pytest.mark.parametrize("kind", ["float32", "int8", "int4", "transposed"])
def test_c_runtime_matches_tensorflow_on_all_ten_networks(tools, golden, tmp_path, kind):
    """One wsrun process switches through all ten tasks; each task's probabilities are within 1e-5
    of TensorFlow's and pick the same class."""
    blob, vectors = golden[kind]
    args = []
    for name, (path, _, _) in vectors.items():
        args += [name, path, tmp_path / f"{name}.out"]
    wsrun(tools, "sequence", blob, *args)
    for name, (_, _, expected) in vectors.items():
        got = np.fromfile(tmp_path / f"{name}.out", "<f4").reshape(expected.shape)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=f"{kind} {name}")
        assert np.array_equal(got.argmax(1), expected.argmax(1)), (kind, name)
        assert np.allclose(got.sum(1), 1, atol=1e-5)


def test_a_switch_sequence_gives_each_task_alone(tools, golden, tmp_path):
    """Switching back and forth over every task (twice, in shuffled orders) gives, bit for bit, what
    a fresh runtime running that task alone gives."""
    blob, vectors = golden["int8"]
    alone = {}
    for name, (path, _, _) in vectors.items():
        out = tmp_path / f"alone_{name}.out"
        printed = wsrun(tools, "run", blob, name, path, out).stdout.splitlines()
        alone[name] = out.read_bytes()
        probs = np.frombuffer(alone[name], "<f4").reshape(EXAMPLES, -1)
        assert printed == [f"{name} {i}: class {int(p.argmax())} " + " ".join(f"{v:.9g}" for v in p)
                           for i, p in enumerate(probs)]
    order = list(np.random.default_rng(2).permutation(PAPER_TASKS)) + list(PAPER_TASKS[::-1])
    args = []
    for step, name in enumerate(order):
        args += [name, vectors[name][0], tmp_path / f"seq_{step}.out"]
    wsrun(tools, "sequence", blob, *args)
    for step, name in enumerate(order):
        assert (tmp_path / f"seq_{step}.out").read_bytes() == alone[name], (step, name)


def test_info_lists_tasks_pages_and_arena(tools, golden):
    blob, _ = golden["int8"]
    lines = wsrun(tools, "info", blob).stdout.splitlines()
    data = read_blob(blob.read_bytes())
    assert lines[0] == f"blob {blob}: format version 1, {blob.stat().st_size} bytes, int8 pages of 512 weights, " \
                       f"layout natural"
    assert lines[1] == f"pages: 128 shared, {data['num_exclusive']} exclusive (512 bytes each + a float32 scale)"
    assert lines[2].startswith("arena: ")
    # two buffers of the largest layer output (us8k's first conv: 58 x 39 x 8 floats), the page
    # pointers and scale pointers of the largest table (obs: 141 pages), 15 bytes of alignment slack
    largest = 0
    for name in PAPER_TASKS:
        (h, w, _), spec = load_task(name).input_shape, load_task(name)
        for kh, kw, filters in spec.conv:
            largest = max(largest, (h - kh + 1) * (w - kw + 1) * filters)
            h, w = (h - kh + 1) // 2, (w - kw + 1) // 2
    assert largest == 58 * 39 * 8
    pointer = 8
    assert int(lines[2].split()[1]) == 15 + 2 * (-(-141 * pointer // 16) * 16) + 2 * largest * 4
    assert lines[3] == "task cifar10: input 32x32x3, 10 classes, 64670 weights, 127 pages " \
                       f"({data['tasks'][0]['num_exclusive']} exclusive), layers: conv3x3x16+pool conv3x3x32+pool " \
                       "conv3x3x52+pool dense128 dense128 dense10"
    assert len(lines) == 3 + 10


def test_info_of_an_int4_blob(tools, golden):
    """Version 2: the group scales and int8 pages are named; the arena adds one wide pointer per page of
    the largest table (obs: 141) and one uint32 per page of the blob."""
    lines = wsrun(tools, "info", golden["int4"][0]).stdout.splitlines()
    int8 = wsrun(tools, "info", golden["int8"][0]).stdout.splitlines()
    data = read_blob(golden["int4"][0].read_bytes())
    assert lines[0] == f"blob {golden['int4'][0]}: format version 2, {len(golden['int4'][0].read_bytes())} bytes, " \
                       f"int4 pages of 512 weights, layout natural"
    assert lines[1] == f"pages: 128 shared, {PAPER_EXCLUSIVE} exclusive (256 bytes each + 8 float16 scales, one per " \
                       f"64 weights; {data['num_wide']} of them int8 pages with 256 more bytes each)"
    pad = lambda n: -(-n // 16) * 16
    assert int(lines[2].split()[1]) == int(int8[2].split()[1]) + pad(141 * 8) + pad((128 + PAPER_EXCLUSIVE) * 4)
    assert lines[3:] == int8[3:]


def test_a_subnormal_scale_decodes_as_zero(tools, golden, tmp_path):
    """The page format: a scale below the smallest normal float32 counts as zero, in C too."""
    blob, vectors = golden["int8"]
    data = blob.read_bytes()
    head = read_blob(data)
    page = int(head["tasks"][0]["page_table"][0])  # cifar10's first page: its first kernel's weights
    outputs = {}
    for label, scale in (("stored", None), ("subnormal", 1e-40), ("zero", 0.0)):
        copy = bytearray(data)
        if scale is not None:
            struct.pack_into("<f", copy, head["scales_offset"] + 4 * page, scale)
        (tmp_path / f"{label}.wsb").write_bytes(_with_crc(copy))
        wsrun(tools, "run", tmp_path / f"{label}.wsb", "cifar10", vectors["cifar10"][0], tmp_path / f"{label}.out")
        outputs[label] = (tmp_path / f"{label}.out").read_bytes()
    assert outputs["subnormal"] == outputs["zero"] != outputs["stored"]


def test_wsrun_user_errors_are_one_line(tools, golden, tmp_path):
    blob, vectors = golden["int8"]
    one = vectors["mnist"][0].read_bytes()[:28 * 28 * 4]
    (tmp_path / "one.f32").write_bytes(one)
    (tmp_path / "short.f32").write_bytes(one[:-4])
    for args, message in (
            (("run", blob, "nosuch", tmp_path / "one.f32"), "error: no such task in the blob: nosuch\n"),
            (("run", blob, "mnist", tmp_path / "short.f32"), "error: input size is not a whole number of examples "
                                                             f"of the task's input shape: {tmp_path / 'short.f32'}\n"),
            (("run", blob, "mnist", tmp_path / "missing.f32"), f"error: cannot read input: {tmp_path / 'missing.f32'}\n"),
            (("info", tmp_path / "missing.wsb"), f"error: cannot read blob: {tmp_path / 'missing.wsb'}\n"),
            (("sequence", blob, "mnist", tmp_path / "one.f32"), "error: sequence takes BLOB followed by TASK INPUT OUT "
                                                                  "triples\n")):
        proc = wsrun(tools, *args, check=False)
        assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", message), args
    usage = wsrun(tools, "run", blob, check=False)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: wsrun info BLOB\n")
    printed = wsrun(tools, "run", blob, "mnist", tmp_path / "one.f32").stdout
    assert printed.startswith("mnist 0: class ") and len(printed.split()) == 4 + 10


# ---- hostile blobs ---------------------------------------------------------------------------

def _with_crc(data: bytearray) -> bytes:
    struct.pack_into("<I", data, 12, zlib.crc32(bytes(data[16:])))
    return bytes(data)


def corruptions(data: bytes) -> dict:
    """{what: (blob bytes, expected message fragment)}."""
    blob = read_blob(data)
    flipped = bytearray(data)
    flipped[blob["values_offset"] + 1000] ^= 0x10
    version = bytearray(data)
    struct.pack_into("<I", version, 8, 3)
    entry = bytearray(data)
    struct.pack_into("<I", entry, blob["tables_offset"] + 4 * 7, blob["num_shared"] + blob["num_exclusive"])
    layer = bytearray(data)
    struct.pack_into("<I", layer, blob["layers_offset"] + 24, 17)  # cifar10's first conv: 17 filters, not 16
    dtype = bytearray(data)
    struct.pack_into("<I", dtype, 24, 3)
    name = bytearray(data)
    name[128:128 + 112] = b"x" * 112  # no terminating NUL
    return {
        "flipped byte": (bytes(flipped), "CRC-32 does not match"),
        "truncated": (data[:len(data) - 16], "truncated"),
        "truncated header": (data[:100], "truncated"),
        "longer": (data + bytes(16), "longer than the size its header gives"),
        "wrong version": (bytes(version), "unsupported blob format version"),
        "bad magic": (b"WSEPBLOX" + data[8:], "bad magic"),
        "page entry out of range": (_with_crc(entry), "page-table entry names no page"),
        "layer shape": (_with_crc(layer), "invalid layer record"),
        "page dtype": (_with_crc(dtype), "invalid blob header"),
        "task name": (_with_crc(name), "invalid task record"),
    }


def int4_corruptions(data: bytes) -> dict:
    """{what: (blob bytes, expected message fragment)}: damage to the fields of version 2, CRC repaired."""
    blob = read_blob(data)
    scales, kinds = blob["scales_offset"], blob["kinds_offset"]
    wide_page = int(np.flatnonzero(blob["kinds"] == 8)[0])
    found = {}

    def bad(what, fragment, *patches):
        copy = bytearray(data)
        for fmt, at, value in patches:
            struct.pack_into(fmt, copy, at, value)
        found[what] = (_with_crc(copy), fragment)

    page_data = "invalid int4 page data"
    bad("page kind 5", page_data, ("<B", kinds + 3, 5))
    bad("page kind 0", page_data, ("<B", kinds, 0))
    bad("an int8 page made int4 (count disagrees)", page_data, ("<B", kinds + wide_page, 4))
    bad("an int4 page made int8 (count disagrees)", page_data,
        ("<B", kinds + int(np.flatnonzero(blob["kinds"] == 4)[0]), 8))
    for name, bits in (("subnormal", 0x0001), ("largest subnormal", 0x03FF), ("negative", 0xBC00),
                       ("infinite", 0x7C00), ("NaN", 0x7E00), ("negative infinite", 0xFC00)):
        bad(f"{name} group scale", page_data, ("<H", scales + 2 * 37, bits))
    header = "invalid blob header"
    bad("group size 0", header, ("<I", 36, 0))
    bad("group size not dividing the page size", header, ("<I", 36, 3))
    bad("group size above the page size", header, ("<I", 36, 1024))
    bad("one more int8 page than the wide section holds", header, ("<I", 92, blob["num_wide"] + 1))
    bad("kinds offset", header, ("<I", 84, kinds + 16))
    bad("wide offset", header, ("<I", 88, blob["wide_offset"] - 16))
    bad("version 2 with int8 pages", header, ("<I", 24, 1))
    bad("reserved byte of version 2", header, ("<B", 100, 1))
    bad("version 1 reading the version-2 fields as reserved", header, ("<I", 8, 1))
    bad("version 3", "unsupported blob format version", ("<I", 8, 3))
    return found


@pytest.mark.parametrize("kind", ["float32", "int4"])
def test_corrupted_blobs_are_rejected_with_the_right_error(tools, golden, tmp_path, kind):
    blob, _ = golden[kind]
    data = blob.read_bytes()
    cases = dict(corruptions(data), **(int4_corruptions(data) if kind == "int4" else {}))
    for what, (data, fragment) in cases.items():
        path = tmp_path / "bad.wsb"
        path.write_bytes(data)
        for tool in ("wsrun", "asan"):
            proc = wsrun(tools, "info", path, tool=tool, check=False)
            assert proc.returncode == 1 and proc.stdout == "", (what, proc.stdout, proc.stderr)
            assert proc.stderr == f"error: {path}: {proc.stderr.split(': ', 2)[2]}"
            assert fragment in proc.stderr, (what, proc.stderr)


def test_int4_zero_scales_of_either_sign_decode_as_zero(tools, golden, tmp_path):
    """A float16 group scale of -0 is valid (the format's rule: zero of either sign) and gives what +0 gives."""
    blob, vectors = golden["int4"]
    data = blob.read_bytes()
    head = read_blob(data)
    page = int(head["tasks"][0]["page_table"][0])  # cifar10's first page: its first kernel's weights
    outputs = {}
    for label, bits in (("stored", None), ("minus zero", 0x8000), ("zero", 0x0000)):
        copy = bytearray(data)
        if bits is not None:
            struct.pack_into("<H", copy, head["scales_offset"] + 2 * 8 * page, bits)
        (tmp_path / f"{label}.wsb").write_bytes(_with_crc(copy))
        wsrun(tools, "run", tmp_path / f"{label}.wsb", "cifar10", vectors["cifar10"][0], tmp_path / f"{label}.out")
        outputs[label] = (tmp_path / f"{label}.out").read_bytes()
    assert outputs["minus zero"] == outputs["zero"] != outputs["stored"]


@pytest.mark.parametrize("dtype", ["float32", "int8", "int4"])
def test_fuzzed_blobs_never_crash_or_read_out_of_bounds(tools, tiny_state, tmp_path, dtype):
    """1,500 mutated blobs (flips, truncations, structural fields with the CRC repaired) under
    AddressSanitizer and UBSan: each is rejected with a status or runs every task in bounds."""
    state = tiny_state if dtype == "float32" else convert_state(tiny_state, tmp_path / dtype, dtype).dir
    path = tmp_path / "tiny.wsb"
    path.write_bytes(blob_bytes(Store(state).load()))
    proc = subprocess.run([str(tools["fuzz"]), str(path), "1500", "7"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = {int(line.split()[0]): int(line.split()[1]) for line in proc.stdout.splitlines()}
    assert sum(counts.values()) == 1500
    # the CRC catches plain damage; the structural checks catch damage behind a repaired CRC
    for status in (0, 3, 7, 8, 9, 11):  # accepted, truncated, CRC, header, task, layer
        assert counts.get(status, 0) > 0, (status, proc.stdout)
    if dtype == "int4":  # damaged page kinds and group scales behind a repaired CRC
        assert counts.get(16, 0) > 0, proc.stdout


# ---- wsrun eval against -mode=e --------------------------------------------------------------

def test_eval_prints_the_accuracy_of_mode_e(tools, tiny_state, tmp_path):
    """On a trained state: -mode=testdata's files through wsrun eval give -mode=e's line."""
    state = copy_state(tiny_state, tmp_path / "state")
    out = tmp_path / "export"
    run_main("-mode=testdata", "-data=synthetic", f"-state_dir={state}", f"-export_dir={out}")
    run_main("-mode=blob", f"-state_dir={state}", f"-export_dir={out}")
    for name in ("tiny_a", "tiny_b"):
        expected = run_main("-mode=e", f"-vnn_name={name}", "-data=synthetic", f"-state_dir={state}")
        line = [l for l in expected.stdout.splitlines() if "inference accuracy" in l][-1]
        got = wsrun(tools, "eval", out / "weights.wsb", name, out / f"{name}_t", out / f"{name}_l").stdout
        assert got.strip() == line


def test_eval_reads_channel_first_files(tools, golden, tmp_path):
    """The original's files hold each example channel-first: wsrun eval must transpose them back
    (cifar10 has three channels); labels are TensorFlow's classes, so the accuracy is 1."""
    blob, vectors = golden["float32"]
    _, x, probs = vectors["cifar10"]
    data, labels = export.test_data_bytes(x, probs.argmax(1), 10)
    (tmp_path / "c10_t").write_bytes(data)
    (tmp_path / "c10_l").write_bytes(labels)
    got = wsrun(tools, "eval", blob, "cifar10", tmp_path / "c10_t", tmp_path / "c10_l").stdout
    assert got == "cifar10 inference accuracy: 1.000000\n"
    wrong = (probs.argmax(1) + 1) % 10
    (tmp_path / "c10_l").write_bytes(export.test_data_bytes(x, wrong, 10)[1])
    got = wsrun(tools, "eval", blob, "cifar10", tmp_path / "c10_t", tmp_path / "c10_l").stdout
    assert got == "cifar10 inference accuracy: 0.000000\n"
    (tmp_path / "c10_t").write_bytes(data[:-4])
    proc = wsrun(tools, "eval", blob, "cifar10", tmp_path / "c10_t", tmp_path / "c10_l", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: test data file does not hold")


# ---- the same library on a Cortex-M4F, under qemu-system-arm ----------------------------------

MCU_PACKAGES = "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"


@pytest.fixture(scope="module")
def arm_tool():
    """runtime_c's wsrun cross-compiled for QEMU's mps2-an386 (Cortex-M4F).  Missing tools are a
    failure, not a skip: `make setup` installs them (as root, as CI runs)."""
    import shutil
    missing = [tool for tool in ("arm-none-eabi-gcc", "qemu-system-arm") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: the Cortex-M test needs the packages {MCU_PACKAGES}; run "
                    f"`make setup` as root or `apt-get install {MCU_PACKAGES}`", pytrace=False)
    proc = subprocess.run(["make", "-C", str(RUNTIME), "arm"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return BUILD / "arm" / "wsrun.elf"


def run_on_cortex_m(elf, cwd, *args, timeout=300):
    """wsrun on the emulated board: arguments and files through semihosting, relative to cwd;
    main's return value is QEMU's exit status."""
    config = ",".join(["enable=on", "target=native", "arg=wsrun", *(f"arg={a}" for a in args)])
    return subprocess.run(["timeout", str(timeout), "qemu-system-arm", "-M", "mps2-an386", "-nographic", "-monitor",
                           "none", "-serial", "none", "-semihosting-config", config, "-kernel", str(elf)],
                          cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize("kind", ["float32", "int8", "int4"])
def test_cortex_m_gives_the_host_outputs_bit_for_bit(tools, arm_tool, golden, tmp_path, kind):
    """All ten tasks in one run, switching from one to the next: the emulated Cortex-M4F computes
    the same float32 bits as the host (both built -ffp-contract=off, one exp), so it is as close to
    TensorFlow as the host."""
    blob, vectors = golden[kind]
    (tmp_path / "blob.wsb").write_bytes(blob.read_bytes())
    arm_args, host_args = [], []
    for name, (path, _, _) in vectors.items():
        (tmp_path / f"{name}.in").write_bytes(path.read_bytes())
        arm_args += [name, f"{name}.in", f"{name}.arm"]
        host_args += [name, tmp_path / f"{name}.in", tmp_path / f"{name}.host"]
    proc = run_on_cortex_m(arm_tool, tmp_path, "sequence", "blob.wsb", *arm_args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wsrun(tools, "sequence", tmp_path / "blob.wsb", *host_args)
    for name, (_, _, expected) in vectors.items():
        arm = (tmp_path / f"{name}.arm").read_bytes()
        assert arm == (tmp_path / f"{name}.host").read_bytes(), name
        got = np.frombuffer(arm, "<f4").reshape(expected.shape)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=name)
        assert np.array_equal(got.argmax(1), expected.argmax(1)), name


def test_cortex_m_rejects_a_corrupted_blob(arm_tool, golden, tmp_path):
    blob, _ = golden["int8"]
    data = bytearray(blob.read_bytes())
    data[-100] ^= 1
    (tmp_path / "bad.wsb").write_bytes(bytes(data))
    proc = run_on_cortex_m(arm_tool, tmp_path, "info", "bad.wsb")
    assert proc.returncode == 1 and "error: bad.wsb: the blob's CRC-32 does not match" in proc.stderr, proc
