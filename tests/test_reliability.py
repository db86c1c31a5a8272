"""The reliability defects of issue 21, each reproduced first: quantized scales that overflow or
are subnormal, an export directory that is all-or-nothing with a manifest that verifies it,
results kept on a full disk, short writes that say why, user input echoed short, and flags
checked before any work.  (Hostile paths for every mode: test_hostile_paths.py.)"""

import contextlib
import errno
import hashlib
import json
import os
import resource
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, assert_one_line_error, copy_state, run_main
from weightsep import atomic, export_dir
from weightsep.errors import StateError, WeightSepError, WriteError
from weightsep.export import export_page_tables, export_weights
from weightsep.pageformat import page_format
from weightsep.store import Store, TaskRecord, convert_state
from weightsep.tasks import TaskSpec

F32 = np.float32
FLT_MAX = np.finfo(F32).max


# ---- a small state built by hand (no TensorFlow) ---------------------------------------

def spec(name):
    """ta: (1 + 1) x 2 + (2 + 1) x 2 = 10 weights; tb: (3 + 1) x 1 + (1 + 1) x 2 = 8."""
    shape, hidden = {"ta": ((1, 1, 1), 2), "tb": ((3, 1, 1), 1)}[name]
    return TaskSpec(name=name, input_shape=shape, num_classes=2, dense=(hidden,)).to_json()


def hand_state(path, page_dtype="float32", tasks=("ta", "tb")):
    """Pages of 4, a pool of 3; ta (10 weights: pages 0 and 2 exclusive), tb (8 weights, shared)."""
    store = Store(path)
    rng = np.random.default_rng(0)
    with store.writer():
        store.create(page_size=4, num_pages=3)
        store.save_shared(rng.normal(size=(3, 4)).astype(F32))
        layouts = {"ta": (10, [-1, 2, -1], [2, 0]), "tb": (8, [1, 0], [])}
        for name in tasks:
            n, table, exclusive = layouts[name]
            store.add_task(TaskRecord(name=name, num_weights=n, page_table=table, exclusive_pages=exclusive,
                                      spec=spec(name)), rng.normal(size=(len(exclusive), 4)).astype(F32),
                           vectors={"network_weight": np.ones(n, F32), "network_fisher": np.ones(n, F32)})
    if page_dtype == "float32":
        return store.dir
    quantized = path.parent / f"{path.name}_{page_dtype}"
    convert_state(path, quantized, page_dtype)
    return quantized


def rewrite_signed(state, rel, array):
    """Replace a state file and re-sign the registry (file checksum and registry checksum), as a
    buggy writer could: only the content checks can then tell."""
    np.save(state / rel, array, allow_pickle=False)
    registry_path = state / "weightsep_state.json"
    registry = json.loads(registry_path.read_text())
    registry["files"][rel]["sha256"] = hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()
    body = {k: v for k, v in registry.items() if k != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    registry_path.write_text(json.dumps(dict(body, checksum=hashlib.sha256(canonical).hexdigest())))


def snapshot(folder):
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


# ---- 1, 2: scales ---------------------------------------------------------------------

@pytest.mark.parametrize("scale, phrase", [(3e38, "above FLT_MAX / 127"), (5e-39, "subnormal"),
                                           (-1.0, "negative"), (np.inf, "NaN or infinite")])
def test_a_bad_scale_is_refused_at_load(tmp_path, scale, phrase):
    state = hand_state(tmp_path / "st", "int8")
    rewrite_signed(state, "shared_weight_scale.npy", np.full(3, scale, F32))
    with pytest.raises(StateError, match=phrase):
        Store(state).load()
    for mode in (["-mode=l"], ["-mode=w", f"-export_dir={tmp_path / 'out'}"]):
        result = run_main(*mode, f"-state_dir={state}", check=False)
        assert_one_line_error(result, "shared_weight_scale.npy", phrase)
        assert result.returncode == 1
    assert not (tmp_path / "out").exists()


def test_a_scale_at_the_limit_loads_but_an_overflowing_value_is_refused(tmp_path):
    """scale * qmax <= FLT_MAX is valid; -128 (never written, still decoded) can overflow it."""
    state = hand_state(tmp_path / "st", "int8")
    limit = F32(FLT_MAX / F32(127))
    with np.errstate(over="ignore"):
        while not np.isfinite(limit * F32(127)):  # the largest scale whose float32 product with 127 is finite
            limit = np.nextafter(limit, F32(0))
    rewrite_signed(state, "shared_weight_scale.npy", np.full(3, limit, F32))
    assert np.isfinite(Store(state).load().shared).all()
    values = np.load(state / "shared_weight_page.npy")
    values[1, 2] = -128
    rewrite_signed(state, "shared_weight_page.npy", values)
    with pytest.raises(StateError, match="1 weights dequantize to infinity"):
        Store(state).load()


def test_the_scale_rule_by_hand():
    tiny = np.finfo(F32).tiny
    int8, int4 = page_format("int8"), page_format("int4")
    int8.check_scales(np.array([0.0, -0.0, tiny, 1.0, FLT_MAX / 128], F32))
    for bad in (np.nextafter(tiny, F32(0)), -tiny, np.nextafter(F32(FLT_MAX / 127), F32(np.inf)), np.nan):
        with pytest.raises(ValueError):
            int8.check_scales(np.array([1.0, bad], F32))
    # int4: float16 group scales [pages, groups]; zero or normal (at least 2**-14), finite, not negative
    int4.check_scales(np.array([[0.0, -0.0], [2.0 ** -14, 65504.0]], np.float16))
    for bad, what in ((2.0 ** -15, "subnormal"), (-1.0, "negative"), (np.inf, "not finite"), (np.nan, "not finite")):
        with pytest.raises(ValueError, match=what):
            int4.check_scales(np.array([[1.0, 1.0], [1.0, bad]], np.float16))


def test_every_path_flushes_a_subnormal_scale_as_the_op_does():
    """The NumPy dequantization (the store's, the export's) and PageGatherQuantized agree bit for
    bit on subnormal scales: one rule (a subnormal scale is a zero of its sign)."""
    import custom_ops.page_gather as pg
    import custom_ops.page_gather_quantized as pq
    if not pg.available():
        subprocess.run(["make", "-C", str(REPO / "custom_ops"), f"PYTHON={sys.executable}"], check=True,
                       stdout=subprocess.DEVNULL)
    pg.load_library()
    rng = np.random.default_rng(1)
    scales = np.array([5e-39, -5e-39, 1e-45, np.finfo(F32).tiny, 0.5, 0.0], F32)
    # int8 only: int4 pages have float16 group scales, never subnormal
    values = rng.integers(0, 256, (6, 8)).astype(np.uint8).view(np.int8)
    op = pq.page_gather_quantized(values, scales, values[:0], scales[:0], np.arange(6), 48).numpy()
    mine = page_format("int8").dequantize(values, scales).reshape(-1)
    assert mine.view(np.uint32).tolist() == op.view(np.uint32).tolist()
    assert not mine[:24].any() and mine[24:32].any()


# ---- 3, 4: the export directory -------------------------------------------------------

def listing(folder):
    return sorted(os.listdir(folder))


def test_the_manifest_lists_exactly_the_last_export(tmp_path):
    out = tmp_path / "out"
    int8 = Store(hand_state(tmp_path / "st", "int8")).load()
    export_weights(int8, out)
    export_page_tables(int8, out)
    assert listing(out) == ["manifest.json", "ta_e", "ta_e_int8", "ta_p", "ta_q", "tb_p",
                            "weight", "weight_int8", "weight_q"]
    manifest = export_dir.verify(out)
    assert manifest["state"]["generation"] == int8.generation and set(manifest["exports"]) == {"w", "p"}
    for name, entry in manifest["files"].items():
        data = (out / name).read_bytes()
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()

    float32 = Store(tmp_path / "st").load()  # another state: -mode=p's int8 files are not its own
    lines = export_weights(float32, out)
    assert any("removed the files of -mode=p" in line for line in lines)
    assert listing(out) == ["manifest.json", "ta_e", "ta_q", "weight", "weight_q"]
    assert set(export_dir.verify(out)["files"]) == {"ta_e", "ta_q", "weight", "weight_q"}

    with float32.writer():
        float32.remove_task("ta")
    export_weights(float32, out)
    export_page_tables(float32, out)
    assert listing(out) == ["manifest.json", "tb_p", "weight", "weight_q"]
    assert export_dir.verify(out)["state"]["generation"] == float32.generation


def test_verify_names_a_changed_missing_or_extra_file(tmp_path):
    out = tmp_path / "out"
    store = Store(hand_state(tmp_path / "st")).load()
    export_weights(store, out)
    (out / "weight_q").write_bytes(b"\0" + (out / "weight_q").read_bytes()[1:])
    with pytest.raises(export_dir.ExportError, match="weight_q does not match manifest.json"):
        export_dir.verify(out)
    export_weights(store, out)
    (out / "stray").write_text("x")
    with pytest.raises(export_dir.ExportError, match="stray is not listed"):
        export_dir.verify(out)
    (out / "stray").unlink()
    (out / "ta_e").unlink()
    with pytest.raises(export_dir.ExportError, match="ta_e is listed in manifest.json but missing"):
        export_dir.verify(out)


def killed_at(step, action, exchange=True):
    """Run action() in a child process that is killed (os._exit, no clean-up) at the export step
    named `step`; True if the step was reached."""
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no clean-up, as after a SIGKILL
        try:
            def hook(name):
                if name == step:
                    os._exit(9)
            export_dir._step = hook
            if not exchange:
                export_dir._exchange = lambda a, b: False
            action()
        finally:
            os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 9


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two renames"])
def test_an_export_killed_at_any_step_leaves_the_old_or_the_new(tmp_path, exchange):
    out = tmp_path / "out"
    int8 = Store(hand_state(tmp_path / "st", "int8")).load()
    export_weights(int8, out)
    export_page_tables(int8, out)
    old = snapshot(out)
    float32 = Store(tmp_path / "st").load()
    steps = []
    export_dir._step = steps.append
    try:
        export_weights(float32, tmp_path / "rehearsal")
    finally:
        export_dir._step = lambda name: None
    steps += ["exchange", "rename staging"] if not exchange else []
    assert steps[0] == "write weight" and "write manifest.json" in steps and "exchange" in steps
    new = None
    for step in dict.fromkeys(steps):
        assert killed_at(step, lambda: export_weights(float32, out), exchange), step
        export_dir.recover(out)  # what the next export does first, under the lock
        assert snapshot(out) == old, step
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], step
    assert not killed_at("never", lambda: export_weights(float32, out), exchange)
    new = snapshot(out)
    assert new != old and export_dir.verify(out)["state"]["page_dtype"] == "float32"


def test_a_full_disk_during_an_export_leaves_the_previous_one(tmp_path):
    out = tmp_path / "out"
    store = Store(hand_state(tmp_path / "st", "int8")).load()
    export_weights(store, out)
    old = snapshot(out)
    with file_size_limit(60):
        result = run_main("-mode=w", f"-state_dir={tmp_path / 'st_int8'}", f"-export_dir={out}", "-Q=10",
                          check=False)
    assert_one_line_error(result, "file-size limit")
    assert result.returncode == 1 and snapshot(out) == old
    assert listing(tmp_path) == ["out", "st", "st_int8"]


def test_a_second_export_beside_a_running_one_is_refused(tmp_path):
    import fcntl
    out = tmp_path / "out"
    store = Store(hand_state(tmp_path / "st")).load()
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a running export holds
        with pytest.raises(WeightSepError, match="another export is writing into"):
            export_weights(store, out)
    finally:
        os.close(fd)
    assert listing(tmp_path) == ["st"]
    export_weights(store, out)
    assert export_dir.verify(out)["exports"] == {"w": {"settings": {"q": 8}}}


def test_an_export_directory_that_is_not_an_export_is_refused(tmp_path):
    state = hand_state(tmp_path / "st")
    before = snapshot(state)
    result = run_main("-mode=w", f"-state_dir={state}", f"-export_dir={state}", check=False)
    assert_one_line_error(result, "holds files but no manifest.json")
    assert snapshot(state) == before


# ---- 5, 7: full disks -----------------------------------------------------------------

@contextlib.contextmanager
def file_size_limit(nbytes):
    """RLIMIT_FSIZE in this process: a write past nbytes fails with EFBIG (Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_evaluate_on_a_full_disk_prints_the_accuracy_then_a_note(tiny_state, tmp_path, monkeypatch):
    state = copy_state(tiny_state, tmp_path / "st")
    before = snapshot(state)
    want = run_main("-mode=e", "-vnn_name=tiny_a", f"-state_dir={copy_state(tiny_state, tmp_path / 'ok')}").stdout

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "pwrite", full)  # the lock's pid: the first write of -mode=e
    result = run_main("-mode=e", "-vnn_name=tiny_a", f"-state_dir={state}")
    assert result.stdout == want
    assert result.stderr.startswith("note: accuracy not recorded in the registry (cannot write")
    assert "No space left on device; free some disk space" in result.stderr
    monkeypatch.undo()
    with file_size_limit(0):  # the registry's commit fails after the accuracy is computed
        monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: len(data))
        result = run_main("-mode=e", "-vnn_name=tiny_a", f"-state_dir={state}")
    assert result.stdout == want and "File too large" in result.stderr
    assert snapshot(state) == before


def test_a_short_write_says_the_disk_or_the_limit_is_full(tmp_path):
    target = tmp_path / "x.npy"
    with file_size_limit(1000), pytest.raises(WriteError) as error:
        atomic.save_npy(target, np.ones(1724, F32))
    message = str(error.value)
    assert "bytes were written" in message and "file-size limit (ulimit -f) is full" in message
    assert "requested" not in message and listing(tmp_path) == []


# ---- 6, 8, 9 and the notes: the command line ------------------------------------------

def test_a_long_unknown_task_name_is_echoed_short(tmp_path):
    state = hand_state(tmp_path / "st")
    result = run_main("-mode=e", f"-vnn_name={'a' * 5000}", f"-state_dir={state}", check=False)
    assert_one_line_error(result, "aaa...")
    assert len(result.stderr) < 400


def test_a_task_name_with_a_path_is_refused(tiny_state):
    result = run_main("-mode=e", "-vnn_name=../tiny_a", f"-state_dir={tiny_state}", check=False)
    assert_one_line_error(result, "-vnn_name", "'../tiny_a'", "neither a task name", "nor a task folder")
    assert result.returncode == 2


def test_a_bad_first_add_leaves_no_directory(tiny_tasks, tmp_path, monkeypatch):
    state = tmp_path / "new"
    result = run_main("-mode=a", f"-network_path={tiny_tasks['tiny_a']}", f"-state_dir={state}", "-page_size=3",
                      "-page_dtype=int4", "-data=synthetic", check=False)
    assert_one_line_error(result, "-page_size=3", "must be even")
    assert result.returncode == 2 and not state.exists()
    # A failure inside the writer of a directory it created: nothing is left either.
    from weightsep import pipeline
    monkeypatch.setattr(pipeline, "ensure_state", lambda *a: (_ for _ in ()).throw(WeightSepError("no")))
    result = run_main("-mode=a", f"-network_path={tiny_tasks['tiny_a']}", f"-state_dir={state}",
                      "-data=synthetic", check=False)
    assert_one_line_error(result, "no")
    assert not state.exists()


def test_quantize_checks_out_dir_before_evaluating_and_loads_once(tiny_state, tmp_path, monkeypatch):
    from weightsep import pipeline
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(pipeline, "evaluate_task", lambda *a: pytest.fail("evaluated before -out_dir was checked"))
    for out, phrase in ((tmp_path / "afile", "is a file"), (tmp_path / "afile" / "q", "is below"),
                        (tiny_state / "q", "outside")):
        result = run_main("-mode=quantize", f"-state_dir={tiny_state}", f"-out_dir={out}", "-page_dtype=int8",
                          check=False)
        assert_one_line_error(result, phrase)
    monkeypatch.undo()
    loads = []
    original = Store.load
    monkeypatch.setattr(Store, "load", lambda self: loads.append(self.dir) or original(self))
    run_main("-mode=quantize", f"-state_dir={tiny_state}", f"-out_dir={tmp_path / 'q'}", "-page_dtype=int8")
    assert loads.count(tiny_state) == 1
