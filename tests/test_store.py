"""Tests of weightsep.store: round trips, one commit per change, crash safety, the writer lock,
validated loads, quantized states and their conversion."""

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import unprivileged
from weightsep.pageformat import page_format
from weightsep import store as store_mod
from weightsep.errors import StateError, StateLockedError, StateReadOnlyError, WeightSepError, WriteError
from weightsep.limits import EXCLUSIVE_MASTER_FILE, SHARED_MASTER_FILE
from weightsep.store import (EXCLUSIVE_FILE, EXCLUSIVE_SCALE_FILE, LOCK_FILE, REGISTRY_FILE, SHARED_FILE,
                             SHARED_SCALE_FILE, Store, TaskRecord, convert_state)
from weightsep.tasks import TaskSpec

REPO = Path(__file__).resolve().parents[1]
S, P = 8, 6


def spec(name):
    return TaskSpec(name=name, input_shape=(4, 4, 1), num_classes=2, dense=(3,)).to_json()


def vectors(n, seed):
    rng = np.random.default_rng(seed)
    return {"network_weight": rng.normal(size=n).astype(np.float32),
            "network_fisher": rng.random(n).astype(np.float32)}


def reference_materialize(shared, exclusive, table, n):
    """Page by page, the plain way: shared[e] if e < P else exclusive[e - P]."""
    out = []
    for e in table:
        out.extend(shared[e] if e < len(shared) else exclusive[e - len(shared)])
    return np.array(out[:n], dtype=np.float32)


def make_state(directory, page_dtype="float32", masters=True):
    """A state with three hand-placed tasks; returns the store and the exclusive values added."""
    store = Store(directory)
    rng = np.random.default_rng(1)
    values = {name: rng.normal(size=(k, S)).astype(np.float32) for name, k in (("a", 1), ("b", 2), ("c", 1))}
    with store.writer():
        store.create(page_size=S, num_pages=P, seed=3, page_dtype=page_dtype, masters=masters)
        # a: 20 weights -> 3 pages; page 1 exclusive
        store.add_task(TaskRecord("a", 20, [0, -1, 1], [1], spec("a"), network_path="nets/a",
                                  accuracy={"network": 0.9}), values["a"], vectors(20, 0))
        # b: 33 weights -> 5 pages; pages 0 and 3 exclusive, shares pool pages 0, 1, 2 with a
        store.add_task(TaskRecord("b", 33, [-1, 1, 0, -1, 2], [0, 3], spec("b"), settings={"tpr": 0.7}),
                       values["b"], vectors(33, 1))
        # c: 8 weights -> 1 page, exclusive
        store.add_task(TaskRecord("c", 8, [-1], [0], spec("c")), values["c"], vectors(8, 2))
    return store, values


def snapshot(directory):
    """Everything a load sees: records, float pages, stored arrays, every vector."""
    s = Store(directory).load()
    stored = [a.copy() if a is not None else None for which in ("shared", "exclusive") for a in s.quantized(which)]
    stored += [s.master(which).copy() for which in ("shared", "exclusive")]
    vecs = {(t.name, k): s.load_vector(t.name, k) for t in s.tasks for k in store_mod.VECTOR_KINDS
            if s.has_vector(t.name, k)}
    return s.tasks, s.shared.copy(), s.exclusive.copy(), stored, vecs


def assert_same(a, b):
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])
    for x, y in zip(a[3], b[3]):
        assert (x is None and y is None) or x.tobytes() == y.tobytes()
    assert a[4].keys() == b[4].keys()
    for key in a[4]:
        np.testing.assert_array_equal(a[4][key], b[4][key])


def files_on_disk(directory):
    return sorted(str(p.relative_to(directory)) for p in Path(directory).rglob("*") if p.is_file())


def expected_files(directory):
    raw = json.loads((Path(directory) / REGISTRY_FILE).read_text())
    return sorted(list(raw["files"]) + [REGISTRY_FILE, LOCK_FILE])


def all_bytes(directory):
    return {p: (Path(directory) / p).read_bytes() for p in files_on_disk(directory)}


# ---- round trips -------------------------------------------------------------------------

def test_create_initializes_pool_and_empty_store(tmp_path):
    store = Store(tmp_path)
    assert not store.exists()
    with store.writer():
        store.create(page_size=S, num_pages=P, seed=5, layout="transposed")
    expected = np.random.default_rng(5).normal(0.0, 0.01, size=(P, S)).astype(np.float32)
    loaded = Store(tmp_path).load()
    np.testing.assert_array_equal(loaded.shared, expected)
    assert loaded.exclusive.shape == (0, S) and loaded.exclusive.dtype == np.float32
    assert loaded.tasks == [] and loaded.page_size == S and loaded.num_pages == P
    assert loaded.page_dtype == "float32" and loaded.layout == "transposed" and loaded.num_exclusive == 0
    assert files_on_disk(tmp_path) == sorted([SHARED_FILE, EXCLUSIVE_FILE, REGISTRY_FILE, LOCK_FILE])
    with store.writer(), pytest.raises(StateError, match=REGISTRY_FILE):
        store.create(page_size=S, num_pages=P)


@pytest.mark.parametrize("kwargs, phrase", [
    (dict(page_size=0), "-page_size=0"), (dict(num_pages=2**21), "-num_pages"),
    (dict(page_dtype="int5"), "-page_dtype='int5'"), (dict(page_size=7, page_dtype="int4"), "even"),
    (dict(layout="diagonal"), "layout"), (dict(page_size=1 << 20, num_pages=1 << 11), "larger than")])
def test_create_rejects_bad_settings(tmp_path, kwargs, phrase):
    store = Store(tmp_path)
    with store.writer(), pytest.raises(WeightSepError, match=phrase):
        store.create(**kwargs)
    assert not store.exists()


def test_round_trip_materialize_and_occupation(tmp_path):
    store, values = make_state(tmp_path)
    # tables filled with P + row, rows appended in registration order
    assert store.task("a").page_table.tolist() == [0, P + 0, 1]
    assert store.task("b").page_table.tolist() == [P + 1, 1, 0, P + 2, 2]
    assert store.task("c").page_table.tolist() == [P + 3]
    assert [t.id for t in store.tasks] == [0, 1, 2]
    np.testing.assert_array_equal(store.exclusive, np.concatenate([values["a"], values["b"], values["c"]]))

    loaded = Store(tmp_path).load()
    assert loaded.tasks == store.tasks
    assert loaded.task("a").network_path == "nets/a" and loaded.task("a").accuracy == {"network": 0.9}
    assert loaded.task("b").settings == {"tpr": 0.7} and loaded.task("b").spec == spec("b")
    assert loaded.task("a").task_spec().folder == Path("nets/a")
    np.testing.assert_array_equal(loaded.shared, store.shared)
    np.testing.assert_array_equal(loaded.exclusive, store.exclusive)
    for t in loaded.tasks:
        assert t.page_table.dtype == np.int32
        np.testing.assert_array_equal(
            loaded.materialize(t.name),
            reference_materialize(loaded.shared, loaded.exclusive, t.page_table, t.num_weights))
        for kind, vector in vectors(t.num_weights, "abc".index(t.name)).items():
            np.testing.assert_array_equal(loaded.load_vector(t.name, kind), vector)
    assert loaded.occupation() == [[("a", 0), ("b", 2)], [("a", 2), ("b", 1)], [("b", 4)], [], [], []]
    assert loaded.occupation_counts().tolist() == [2, 2, 1, 0, 0, 0]
    assert loaded.exclusive_file() == (tmp_path / EXCLUSIVE_FILE, None, None, None)
    with pytest.raises(StateError, match="known tasks: a, b, c"):
        loaded.task("zz")
    assert files_on_disk(tmp_path) == expected_files(tmp_path)


def test_commit_task_writes_pages_vectors_settings_in_one_commit(tmp_path):
    store, _ = make_state(tmp_path / "state")
    fresh_pool = make_state(tmp_path / "fresh")[0].shared
    tmp_path = tmp_path / "state"
    before_a = store.materialize("a")
    vector = np.arange(33, dtype=np.float32) + 100.0
    generation = json.loads((tmp_path / REGISTRY_FILE).read_text())["generation"]
    with store.writer():
        assert store.as_stored("b", vector).tolist() == vector.tolist()  # float32: stored exactly
        record = store.commit_task("b", weights=vector, vectors={"weight": vector, "fisher": vector / 200},
                                   settings={"trained_steps": 32}, accuracy={"separated": 0.5})
    assert record == store.task("b") and record.settings == {"trained_steps": 32}
    assert json.loads((tmp_path / REGISTRY_FILE).read_text())["generation"] == generation + 1
    np.testing.assert_array_equal(store.materialize("b"), vector)
    reloaded = Store(tmp_path).load()
    np.testing.assert_array_equal(reloaded.materialize("b"), vector)
    np.testing.assert_array_equal(reloaded.load_vector("b", "weight"), vector)
    np.testing.assert_array_equal(reloaded.load_vector("b", "fisher"), vector / 200)
    assert reloaded.task("b").accuracy == {"separated": 0.5}
    # a shares pool pages 0 and 1 with b (its pages 0 and 2); its exclusive page is untouched
    a = reloaded.materialize("a")
    np.testing.assert_array_equal(a[:S], vector[2 * S:3 * S])
    np.testing.assert_array_equal(a[S:2 * S], before_a[S:2 * S])
    np.testing.assert_array_equal(a[2 * S:], vector[S:S + 4])
    # b's last page holds one weight on pool page 2: the padding stays the old pool values
    np.testing.assert_array_equal(reloaded.shared[2, 1:], fresh_pool[2, 1:])
    np.testing.assert_array_equal(reloaded.shared[3:], fresh_pool[3:])
    assert files_on_disk(tmp_path) == expected_files(tmp_path)


def test_remove_task_compacts_drops_vectors_and_keeps_others(tmp_path):
    store, values = make_state(tmp_path)
    with store.writer():
        store.commit_task("a", vectors={"weight": np.full(20, 0.5, np.float32)})
    before = {name: store.materialize(name) for name in ("b", "c")}
    with store.writer():
        store.remove_task("a")
    for s in (store, Store(tmp_path).load()):
        assert [t.name for t in s.tasks] == ["b", "c"]
        np.testing.assert_array_equal(s.exclusive, np.concatenate([values["b"], values["c"]]))
        assert s.task("b").page_table.tolist() == [P + 0, 1, 0, P + 1, 2]
        assert s.task("c").page_table.tolist() == [P + 2]
        for name in before:
            np.testing.assert_array_equal(s.materialize(name), before[name])
        assert s.occupation_counts().tolist() == [1, 1, 1, 0, 0, 0]
        assert not s.has_vector("a", "weight")
    assert not (tmp_path / "a").exists()
    assert files_on_disk(tmp_path) == expected_files(tmp_path)
    # ids keep registration order and are not reused; the name can come back
    with store.writer():
        added = store.add_task(TaskRecord("a", 8, [3], [], spec("a")), np.zeros((0, S), np.float32), vectors(8, 5))
    assert added.id == 3
    np.testing.assert_array_equal(Store(tmp_path).load().load_vector("a", "network_weight"),
                                  vectors(8, 5)["network_weight"])


def test_add_task_with_merged_pool_is_one_commit(tmp_path):
    store, _ = make_state(tmp_path)
    pool = store.shared.copy()
    pool[4] = 3.0
    with store.writer():
        store.add_task(TaskRecord("d", 8, [4], [], spec("d")), np.zeros((0, S), np.float32), vectors(8, 3),
                       shared=pool)
    loaded = Store(tmp_path).load()
    np.testing.assert_array_equal(loaded.shared, pool)
    np.testing.assert_array_equal(loaded.materialize("d"), np.full(8, 3.0, np.float32))


def test_mutation_rules_and_non_finite_values_are_refused(tmp_path):
    store, _ = make_state(tmp_path)
    old = snapshot(tmp_path)
    with pytest.raises(StateError, match="with store.writer"):
        store.commit_task("b", accuracy={"x": 1.0})
    nan20 = np.full(20, np.nan, np.float32)
    with store.writer():
        with pytest.raises(StateError, match="already in"):
            store.add_task(TaskRecord("b", 8, [5], [], spec("b")), np.zeros((0, S), np.float32), vectors(8, 0))
        with pytest.raises(ValueError, match="shared page 5 for more than one"):
            store.add_task(TaskRecord("d", 16, [5, 5], [], spec("d")), np.zeros((0, S), np.float32), vectors(16, 0))
        with pytest.raises(ValueError, match="needs the vectors network_fisher"):
            store.add_task(TaskRecord("d", 8, [5], [], spec("d")), np.zeros((0, S), np.float32),
                           {"network_weight": np.zeros(8, np.float32)})
        with pytest.raises(ValueError, match="its spec describes task 'c'"):
            store.add_task(TaskRecord("d", 8, [5], [], spec("c")), np.zeros((0, S), np.float32), vectors(8, 0))
        with pytest.raises(ValueError, match="NaN"):
            store.add_task(TaskRecord("d", 8, [-1], [0], spec("d")), np.full((1, S), np.inf, np.float32),
                           vectors(8, 0))
        with pytest.raises(ValueError, match="NaN"):
            store.commit_task("a", weights=nan20)
        with pytest.raises(ValueError, match="NaN"):
            store.commit_task("a", vectors={"weight": nan20})
        with pytest.raises(ValueError, match=r"expected \(20,\)"):
            store.commit_task("a", vectors={"weight": np.zeros(21, np.float32)})
        with pytest.raises(ValueError, match="kind"):
            store.commit_task("a", vectors={"bias": np.zeros(20, np.float32)})
        with pytest.raises(ValueError, match="finite JSON"):
            store.commit_task("a", accuracy={"separated": float("nan")})
        with pytest.raises(ValueError, match="shape"):
            store.save_shared(np.zeros((P + 1, S), np.float32))
        with pytest.raises(ValueError, match="NaN"):
            store.save_shared(np.full((P, S), np.nan, np.float32))
        with pytest.raises(StateError, match="known tasks"):
            store.remove_task("zz")
    assert_same(snapshot(tmp_path), old)
    assert not store.shared.flags.writeable and not store.exclusive.flags.writeable


def test_vectors_are_checksummed(tmp_path):
    store, _ = make_state(tmp_path)
    with store.writer():
        store.add_task(TaskRecord("d", 20, [3, 4, 5], [], spec("d")), np.zeros((0, S), np.float32), vectors(20, 9))
    with pytest.raises(StateError, match="a_weight.npy.*train the task: .*-mode=t -vnn_name=a"):
        store.load_vector("a", "weight")
    with pytest.raises(StateError, match="has no fisher vector.*-mode=f"):
        store.load_vector("a", "fisher")
    with pytest.raises(StateError, match="task 'zz' is not in"):
        store.load_vector("zz", "weight")
    # another task's vector of the same length, copied over: detected
    shutil.copy(tmp_path / "d" / "d_network_weight.npy", tmp_path / "a" / "a_network_weight.npy")
    with pytest.raises(StateError, match="a_network_weight.npy does not match .*checksum.*-mode=r"):
        Store(tmp_path).load().load_vector("a", "network_weight")
    path = tmp_path / "b" / "b_network_fisher.npy"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(StateError, match="b_network_fisher.npy holds 112 data bytes where 132"):
        store.load_vector("b", "network_fisher")
    np.save(path, np.ones(32, np.float32))
    with pytest.raises(StateError, match=r"b_network_fisher.npy has shape \(32,\)"):
        store.load_vector("b", "network_fisher")
    np.save(path, np.full(33, np.inf, np.float32))
    with pytest.raises(StateError, match="b_network_fisher.npy contains 33 NaN"):
        store.load_vector("b", "network_fisher")


# ---- crash safety ------------------------------------------------------------------------

def count_calls(monkeypatch, name, action):
    calls = []
    real = getattr(os, name)
    monkeypatch.setattr(os, name, lambda *a: (calls.append(a), real(*a))[1])
    action()
    monkeypatch.setattr(os, name, real)
    return len(calls)


MUTATIONS = {
    "add_task": lambda s: s.add_task(TaskRecord("d", 16, [3, -1], [1], spec("d"), settings={"v": 1}),
                                     np.full((1, S), 7, np.float32), vectors(16, 7)),
    "remove_task": lambda s: s.remove_task("a"),
    "commit_task": lambda s: s.commit_task("b", weights=np.full(33, 9, np.float32),
                                           vectors={"weight": np.full(33, 9, np.float32)},
                                           settings={"trained_steps": 100}),
    "save_shared": lambda s: s.save_shared(np.full((P, S), 0.25, np.float32)),
}


@pytest.mark.parametrize("mutation, page_dtype", [(m, "float32") for m in sorted(MUTATIONS)]
                         + [("commit_task", "int4"), ("remove_task", "int8"), ("add_task", "int4"),
                            ("save_shared", "int8")])
def test_failure_at_every_rename_leaves_old_or_new_state(tmp_path, monkeypatch, mutation, page_dtype):
    make_state(tmp_path / "probe", page_dtype)
    store = Store(tmp_path / "probe")
    with store.writer():
        n_replaces = count_calls(monkeypatch, "replace", lambda: MUTATIONS[mutation](store))
    new = snapshot(tmp_path / "probe")
    assert n_replaces >= 3  # pending file(s), the registry, the renames after the commit

    real = os.replace
    for fail_at in range(n_replaces):
        directory = tmp_path / f"fail{fail_at}"
        store, _ = make_state(directory, page_dtype)
        old = snapshot(directory)
        calls = []

        def flaky(src, dst):
            calls.append(dst)
            if len(calls) - 1 == fail_at:
                raise OSError("simulated crash")
            return real(src, dst)

        monkeypatch.setattr(os, "replace", flaky)
        with store.writer():
            with pytest.raises(WriteError, match="simulated crash"):
                MUTATIONS[mutation](store)
            committed = any(Path(d).name == REGISTRY_FILE for d in calls[:fail_at])
            assert_same(snapshot(directory), new if committed else old)  # what another process sees
        monkeypatch.setattr(os, "replace", real)
        assert_same(snapshot(directory), new if committed else old)
        assert not list(directory.rglob(".*.tmp"))
        # the next writer finishes or discards the interrupted commit: no pending, no orphan file
        with Store(directory).writer():
            pass
        assert files_on_disk(directory) == expected_files(directory)
        assert_same(snapshot(directory), new if committed else old)


def test_disk_full_names_the_file_and_keeps_the_state(tmp_path, monkeypatch):
    store, _ = make_state(tmp_path)
    old, old_bytes = snapshot(tmp_path), all_bytes(tmp_path)
    real = os.fsync
    named = set()
    for fail_at in range(4):  # the pending pool, exclusive store and vector, then the registry
        calls = []

        def full(fd):
            if stat.S_ISREG(os.fstat(fd).st_mode):
                calls.append(fd)
                if len(calls) - 1 == fail_at:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd)

        monkeypatch.setattr(os, "fsync", full)
        with store.writer():
            with pytest.raises(WriteError) as error:
                MUTATIONS["commit_task"](store)
        monkeypatch.setattr(os, "fsync", real)
        message = str(error.value)
        assert message.startswith(f"cannot write {tmp_path}/") and "\n" not in message
        assert message.endswith(": No space left on device; free some disk space and retry")
        named.add(message[len("cannot write "):message.index(": No space")])
        assert not list(tmp_path.rglob(".*.tmp"))
        assert_same(snapshot(tmp_path), old)
        with Store(tmp_path).writer():
            pass
        assert all_bytes(tmp_path) == old_bytes
    assert named == {str(tmp_path / name) for name in ("shared_weight_page.pending.npy", REGISTRY_FILE,
                                                       "exclusive_weight_page.pending.npy", "b/b_weight.pending.npy")}


CRASH_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from weightsep.store import Store, TaskRecord
    from weightsep.tasks import TaskSpec
    S, P, N = 1024, 1024, 200 * 1024
    spec = lambda name: TaskSpec(name=name, input_shape=(4, 4, 1), num_classes=2, dense=(3,)).to_json()
    full = lambda value: np.full(N, value, np.float32)
    store = Store(sys.argv[1])
    with store.writer():
        if not store.exists():
            store.create(page_size=S, num_pages=P, seed=0, page_dtype=sys.argv[2])
        value = max([0] + [t.settings["value"] for t in store.tasks])
        print("ready", flush=True)
        while True:
            value += 1
            # re-adding alternately renumbers the other task's exclusive rows on removal
            name = "a" if value % 2 else "b"
            if store.has_task(name):
                store.remove_task(name)
            first = 0 if name == "a" else 200  # the two tasks on disjoint pool pages
            store.add_task(TaskRecord(name, N, list(range(first, first + 200)), list(range(190, 200)), spec(name),
                                      settings={"value": value, "written": False}),
                           np.full((10, S), value, np.float32),
                           {"network_weight": full(value), "network_fisher": full(value)})
            store.commit_task(name, weights=full(value), vectors={"weight": full(value)},
                              settings={"value": value, "written": True})
""")


def test_sigkill_mid_write_leaves_a_loadable_consistent_state(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    rng = random.Random(0)
    seen_values = set()
    for attempt in range(4):
        page_dtype = "float32" if attempt % 2 == 0 else "int8"
        directory = tmp_path / page_dtype
        child = subprocess.Popen([sys.executable, "-c", CRASH_CHILD, str(directory), page_dtype], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "ready\n", child.stderr.read()
        time.sleep(rng.uniform(0.15, 0.45))
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL, child.stderr.read()

        store = Store(directory).load()
        assert len(store.tasks) <= 2
        for task in store.tasks:
            value, written = task.settings["value"], task.settings["written"]
            rows = task.page_table[task.exclusive_pages] - store.num_pages
            # integers up to 127 are exact in int8 pages (scale = value / 127)
            np.testing.assert_array_equal(store.exclusive[rows], np.full((10, 1024), value, np.float32))
            np.testing.assert_array_equal(store.load_vector(task.name, "network_weight"), np.full(200 * 1024, value))
            pool_part = store.shared[task.page_table[:190]]
            if written:  # commit_task: the pool pages, the weight vector and the settings together
                np.testing.assert_array_equal(pool_part, np.full((190, 1024), value, np.float32))
                np.testing.assert_array_equal(store.load_vector(task.name, "weight"), np.full(200 * 1024, value))
            else:
                assert not store.has_vector(task.name, "weight")
            seen_values.add(value)
        with Store(directory).writer():  # recovery leaves exactly the committed files
            pass
        assert files_on_disk(directory) == expected_files(directory)
    assert len(seen_values) > 2  # the children made progress


# ---- the writer lock -----------------------------------------------------------------

def test_second_writer_gets_locked_error_with_pid(tmp_path):
    make_state(tmp_path)
    holder = Store(tmp_path)
    with holder.writer():
        with pytest.raises(StateLockedError, match=f"locked by pid {os.getpid()} "):
            with Store(tmp_path).writer():
                pass
        with pytest.raises(StateError, match="already holds"):
            with holder.writer():
                pass
        assert snapshot(tmp_path)[0]  # reading needs no lock
    with Store(tmp_path).writer() as again:  # released on exit
        again.commit_task("a", settings={"after": True})
    assert Store(tmp_path).load().task("a").settings == {"after": True}


def test_state_dir_that_is_a_file(tmp_path):
    path = tmp_path / "state"
    path.write_text("not a directory")
    for action in (lambda: Store(path).load(), lambda: Store(path).writer().__enter__()):
        with pytest.raises(StateError, match=f"-state_dir {path} is a file, not a directory"):
            action()
    assert path.read_text() == "not a directory"


def test_lock_path_that_is_a_directory_or_a_link(tmp_path):
    make_state(tmp_path)
    (tmp_path / LOCK_FILE).unlink()
    (tmp_path / LOCK_FILE).mkdir()
    with pytest.raises(StateError, match=f"{LOCK_FILE} is a directory, not a lock file; delete it"):
        with Store(tmp_path).writer():
            pass
    assert Store(tmp_path).load().tasks  # reading still works
    (tmp_path / LOCK_FILE).rmdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / LOCK_FILE).symlink_to(victim)
    with pytest.raises(StateError, match="symbolic link"):
        with Store(tmp_path).writer():
            pass
    assert victim.read_text() == "keep me"


@pytest.fixture
def shared_tmp():
    """A directory that an unprivileged user can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="weightsep-ro-"))
    path.chmod(0o755)
    yield path
    for folder, _, _ in os.walk(path):
        os.chmod(folder, 0o755)
    shutil.rmtree(path)


def test_read_only_directory_loads_but_refuses_the_writer(shared_tmp):
    directory = shared_tmp / "state"
    make_state(directory)
    old = snapshot(directory)
    directory.chmod(0o555)
    with unprivileged():
        store = Store(directory).load()
        assert store.task("b").num_weights == 33
        np.testing.assert_array_equal(store.load_vector("b", "network_weight"), vectors(33, 1)["network_weight"])
        with pytest.raises(StateReadOnlyError) as error:
            with store.writer():
                pass
    message = str(error.value)
    assert f"{directory} is read-only" in message and "\n" not in message and "-state_dir" in message
    assert not isinstance(error.value, StateLockedError)
    assert_same(snapshot(directory), old)


def test_directory_turning_read_only_during_a_write(shared_tmp):
    directory = shared_tmp / "state"
    store, _ = make_state(directory)
    old = snapshot(directory)
    if os.geteuid() == 0:
        for path in [directory, *directory.rglob("*")]:
            os.chown(path, 65534, 65534)
    with unprivileged():
        with store.writer():
            directory.chmod(0o555)
            with pytest.raises(WriteError) as error:
                MUTATIONS["commit_task"](store)
            directory.chmod(0o755)
    message = str(error.value)
    assert f"cannot write {directory}/{SHARED_FILE.replace('.npy', '.pending.npy')}: Permission denied" in message
    assert "\n" not in message
    assert_same(snapshot(directory), old)


# ---- validated loads ---------------------------------------------------------------------

def read_registry(directory):
    return json.loads((directory / REGISTRY_FILE).read_text())


def write_registry(directory, raw, sign):
    if sign:  # the canonical encoding, written out independently of the store
        body = {k: v for k, v in raw.items() if k != "checksum"}
        raw["checksum"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    (directory / REGISTRY_FILE).write_text(json.dumps(raw))


def edit_registry(directory, change, sign=False):
    raw = read_registry(directory)
    change(raw)
    write_registry(directory, raw, sign)


def swap_b_pages(raw):
    table = raw["tasks"][1]["page_table"]
    table[1], table[2] = table[2], table[1]


HAND_EDITS = {
    "swapped page-table entries": swap_b_pages,
    "num_weights": lambda r: r["tasks"][0].__setitem__("num_weights", 19),
    "trained_steps": lambda r: r["tasks"][1]["settings"].__setitem__("trained_steps", 2000),
    "accuracy": lambda r: r["tasks"][0]["accuracy"].__setitem__("network", 0.99),
    "checksum removed": lambda r: r.pop("checksum"),
}


@pytest.mark.parametrize("case", sorted(HAND_EDITS))
def test_registry_checksum_catches_hand_edits(tmp_path, case):
    make_state(tmp_path)
    edit_registry(tmp_path, HAND_EDITS[case])
    with pytest.raises(StateError, match=f"{REGISTRY_FILE} was edited outside the toolkit .its checksum"):
        Store(tmp_path).load()


def test_resigned_consistent_edit_loads_as_edited(tmp_path):
    """The checksum is the only thing between a consistent hand edit and a different state."""
    make_state(tmp_path)
    edit_registry(tmp_path, swap_b_pages, sign=True)
    assert Store(tmp_path).load().task("b").page_table.tolist() == [P + 1, 0, 1, P + 2, 2]


def _set(path, value):
    def apply(raw):
        target = raw
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return apply


# Hostile registries with a valid checksum: each must still be refused, naming the problem.
HOSTILE = {
    "table out of bounds": (_set(["tasks", 0, "page_table", 2], 99), "entry 2 is 99"),
    "table too short": (lambda r: r["tasks"][1]["page_table"].pop(), "need 5"),
    "table entry huge": (_set(["tasks", 0, "page_table", 0], 2**40), "not a list of int32"),
    "exclusive flag mismatch": (_set(["tasks", 0, "exclusive_pages"], []), "page 1 is sharable"),
    "exclusive row twice": (_set(["tasks", 2, "page_table", 0], P), "exclusive row 0 is used twice"),
    "shared page twice": (_set(["tasks", 0, "page_table", 2], 0), "shared page 0 for more than one"),
    "huge num_weights": (_set(["tasks", 0, "num_weights"], 10**12), "num_weights 1000000000000"),
    "bool id": (_set(["tasks", 0, "id"], True), "id True"),
    "huge page size": (_set(["page_size"], 2**40), "'page_size' is 1099511627776"),
    "unknown dtype": (_set(["page_dtype"], "float16"), "page_dtype 'float16'"),
    "unknown key": (_set(["plugin"], "os.system"), "unknown keys ['plugin']"),
    "unknown task key": (_set(["tasks", 0, "module"], "task.py"), "must hold exactly the keys"),
    "task name escapes": (_set(["tasks", 0, "name"], "../a"), "not a plain folder name"),
    "spec dotdot": (_set(["tasks", 0, "spec", "data"], {"format": "npy", "train": ["../../x", "y"],
                                                        "test": ["a", "b"], "validation": None}), "'..'"),
    "spec of other task": (_set(["tasks", 0, "spec"], spec("b")), "its spec describes task 'b'"),
    "file outside": (_set(["files", "../../etc/passwd"], {"dtype": "float32", "shape": [1], "sha256": "0" * 64}),
                     "'../../etc/passwd', which this state does not use"),
    "obsolete outside": (_set(["obsolete", "../x.npy"], {"dtype": "float32", "shape": [1], "sha256": "0" * 64}),
                         "not a vector file the state dropped"),
    "vector missing": (lambda r: r["files"].pop("a/a_network_fisher.npy"), "has no network_fisher vector"),
    "pool dtype": (_set(["files", SHARED_FILE, "dtype"], "float64"), "expected float32"),
    "bad sha": (_set(["files", SHARED_FILE, "sha256"], "xyz"), "64 lowercase hex"),
    "schema version": (_set(["schema_version"], 1), "schema_version 1"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_registry_with_valid_checksum_is_refused(tmp_path, case):
    make_state(tmp_path)
    edit, phrase = HOSTILE[case]
    edit_registry(tmp_path, edit, sign=True)
    with pytest.raises(StateError) as error:
        Store(tmp_path).load()
    message = str(error.value)
    assert REGISTRY_FILE in message and phrase in message and "\n" not in message
    assert "-mode=a" in message or "delete" in message


RAW_REGISTRIES = {
    "deep nesting": (b"[" * 200000 + b"]" * 200000, "nested too deeply"),
    "invalid utf-8": (b'{"schema_version": 2, "x": "\xff\xfe"}', "not UTF-8 text"),
    "huge float": (b'{"schema_version": 1e999}', "out of range"),
    "huge int": (b'{"schema_version": ' + b"9" * 5000 + b"}", "not valid JSON"),
    "nan": (b'{"schema_version": NaN}', "NaN is not a JSON number"),
    "duplicate key": (b'{"schema_version": 2, "schema_version": 2}', "appears twice"),
    "truncated": (b'{"schema_version": 2, "page_', "not valid JSON"),
    "not an object": (b"[2]", "not a JSON object"),
}


@pytest.mark.parametrize("case", sorted(RAW_REGISTRIES))
def test_malformed_registry_bytes_give_one_line_errors(tmp_path, case):
    make_state(tmp_path)
    text, phrase = RAW_REGISTRIES[case]
    (tmp_path / REGISTRY_FILE).write_bytes(text)
    with pytest.raises(StateError) as error:
        Store(tmp_path).load()
    message = str(error.value)
    assert REGISTRY_FILE in message and phrase in message and "\n" not in message and len(message) < 400


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 20])


def resave(path, array):
    np.save(path, array, allow_pickle=False)


CORRUPTIONS = {
    "truncated pool": (lambda d: truncate(d / SHARED_FILE), SHARED_FILE, "truncated"),
    "truncated exclusive": (lambda d: truncate(d / EXCLUSIVE_FILE), EXCLUSIVE_FILE, "truncated"),
    "garbage pool": (lambda d: (d / SHARED_FILE).write_bytes(b"garbage"), SHARED_FILE, "not a .npy file"),
    "wrong shape pool": (lambda d: resave(d / SHARED_FILE, np.zeros((P + 1, S), np.float32)), SHARED_FILE, "shape"),
    "float64 pool": (lambda d: resave(d / SHARED_FILE, np.zeros((P, S))), SHARED_FILE,
                     "float64 values, expected float32"),
    "nan in pool": (lambda d: resave(d / SHARED_FILE, np.where(np.eye(P, S) > 0, np.nan,
                                                               np.load(d / SHARED_FILE)).astype(np.float32)),
                    SHARED_FILE, "NaN"),
    "pool edited": (lambda d: resave(d / SHARED_FILE, np.load(d / SHARED_FILE) + 1), SHARED_FILE, "checksum"),
    "pickled pool": (lambda d: np.save(d / SHARED_FILE, np.array([{"x": 1}], dtype=object)),
                     SHARED_FILE, "object values, expected float32"),
    "pool from another state": (lambda d: shutil.copy(d.parent / "other" / SHARED_FILE, d / SHARED_FILE),
                                SHARED_FILE, "checksum"),
    "missing pool": (lambda d: (d / SHARED_FILE).unlink(), SHARED_FILE, "missing"),
    "missing registry": (lambda d: (d / REGISTRY_FILE).unlink(), REGISTRY_FILE, "-mode=a"),
    "registry a directory": (lambda d: ((d / REGISTRY_FILE).unlink(), (d / REGISTRY_FILE).mkdir()),
                             REGISTRY_FILE, "is a directory"),
    "registry a fifo": (lambda d: ((d / REGISTRY_FILE).unlink(), os.mkfifo(d / REGISTRY_FILE)),
                        REGISTRY_FILE, "is not a regular file"),
    "pool a device": (lambda d: ((d / SHARED_FILE).unlink(), (d / SHARED_FILE).symlink_to("/dev/zero")),
                      SHARED_FILE, "is not a regular file"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_state_raises_named_error(tmp_path, case):
    make_state(tmp_path / "state")
    with Store(tmp_path / "other").writer() as other:
        other.create(page_size=S, num_pages=P, seed=4)
    corrupt, file_name, phrase = CORRUPTIONS[case]
    corrupt(tmp_path / "state")
    with pytest.raises(StateError) as error:
        Store(tmp_path / "state").load()
    message = str(error.value)
    assert file_name in message and phrase in message and "\n" not in message
    assert "-mode=a" in message or "delete" in message


def test_registry_files_are_plain_json_and_npy(tmp_path):
    make_state(tmp_path, "int8")
    for name in (SHARED_FILE, EXCLUSIVE_FILE, SHARED_SCALE_FILE, EXCLUSIVE_SCALE_FILE):
        np.load(tmp_path / name, allow_pickle=False)
    raw = read_registry(tmp_path)
    assert raw["schema_version"] == store_mod.SCHEMA_VERSION == 3 and raw["group_size"] == 0
    assert raw["page_dtype"] == "int8" and raw["layout"] == "natural"
    assert set(raw["files"]) == {SHARED_FILE, EXCLUSIVE_FILE, SHARED_SCALE_FILE, EXCLUSIVE_SCALE_FILE,
                                 SHARED_MASTER_FILE, EXCLUSIVE_MASTER_FILE} | {
        f"{t}/{t}_{k}.npy" for t in "abc" for k in ("network_weight", "network_fisher")}
    assert raw["files"][SHARED_FILE]["sha256"] == hashlib.sha256(np.load(tmp_path / SHARED_FILE).tobytes()).hexdigest()


# ---- quantized states --------------------------------------------------------------------

@pytest.mark.parametrize("page_dtype", ["int8", "int4"])
def test_quantized_state_round_trip(tmp_path, page_dtype):
    store, values = make_state(tmp_path, page_dtype)
    pool = np.random.default_rng(3).normal(0.0, 0.01, size=(P, S)).astype(np.float32)
    q_pool = page_format(page_dtype).quantize(pool)
    exclusive = np.concatenate([values["a"], values["b"], values["c"]])
    q_excl = page_format(page_dtype).quantize(exclusive)
    width = S // 2 if page_dtype == "int4" else S
    loaded = Store(tmp_path).load()
    names = store_mod.POOL_FILES["exclusive"]
    for s in (store, loaded):
        assert s.quantized("shared").values.dtype == page_format(page_dtype).values_dtype
        assert s.quantized("shared").values.shape == (P, width)
        for which, want in (("shared", q_pool), ("exclusive", q_excl)):
            for got, ref in zip(s.quantized(which), want):
                assert (got is None and ref is None) or (got.dtype == ref.dtype and got.tobytes() == ref.tobytes())
        # in memory: float32, exactly the dequantized stored values
        np.testing.assert_array_equal(s.shared, page_format(page_dtype).dequantize(*q_pool))
        np.testing.assert_array_equal(s.exclusive, page_format(page_dtype).dequantize(*q_excl))
        assert s.exclusive_file() == tuple(None if a is None else tmp_path / n for n, a in zip(names, q_excl))
    for name, ref in zip(names, q_excl):
        if ref is not None:
            np.testing.assert_array_equal(np.load(tmp_path / name), ref)
    assert loaded.tasks == store.tasks


@pytest.mark.parametrize("page_dtype", ["int8", "int4"])
def test_quantized_writes_touch_only_changed_pages(tmp_path, page_dtype):
    store, _ = make_state(tmp_path, page_dtype)
    stored = lambda s: [a.copy() for w in ("shared", "exclusive") for a in s.quantized(w) if a is not None]  # noqa: E731
    before = stored(store)
    weights = np.linspace(-1, 1, 33).astype(np.float32)
    with store.writer():
        # writing back what is stored changes no byte
        store.commit_task("a", weights=store.materialize("a"))
        assert all(x.tobytes() == y.tobytes() for x, y in zip(before, stored(store)))
        expected = store.as_stored("b", weights)
        store.commit_task("b", weights=weights, vectors={"weight": expected})
    loaded = Store(tmp_path).load()
    np.testing.assert_array_equal(loaded.materialize("b"), expected)
    np.testing.assert_array_equal(loaded.load_vector("b", "weight"), loaded.materialize("b"))
    assert np.abs(expected - weights).max() > 0  # quantized, not the float32 values
    values, scales = loaded.quantized("shared")[:2]
    b_pool = [1, 0, 2]  # pool pages of b; pages 3.. are nobody's and keep their bytes
    half = len(before) // 2
    assert values[3:].tobytes() == before[0][3:].tobytes() and scales[3:].tobytes() == before[1][3:].tobytes()
    ref_values, ref_scales = page_format(page_dtype).quantize(
        np.stack([np.r_[weights[8:16]], np.r_[weights[16:24]], np.r_[weights[32], loaded.shared[2, 1:]]]))[:2]
    np.testing.assert_array_equal(values[b_pool[:2]], ref_values[:2])
    np.testing.assert_array_equal(scales[b_pool[:2]], ref_scales[:2])
    # exclusive rows of a and c keep their bytes
    values_e, scales_e = loaded.quantized("exclusive")[:2]
    for row in (0, 3):
        assert values_e[row].tobytes() == before[half][row].tobytes()
        assert scales_e[row].tobytes() == before[half + 1][row].tobytes()


def test_exclusive_file_is_the_pending_file_after_an_interrupted_commit(tmp_path, monkeypatch):
    store, _ = make_state(tmp_path, "int8")
    real = os.replace

    def fail_on_exclusive(src, dst):
        if Path(dst).name == EXCLUSIVE_FILE:
            raise OSError("simulated crash")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_exclusive)
    with store.writer(), pytest.raises(WriteError, match="cannot rename"):
        store.commit_task("c", weights=np.full(8, 0.5, np.float32))
    monkeypatch.setattr(os, "replace", real)
    loaded = Store(tmp_path).load()
    files = loaded.exclusive_file()
    assert files.values.name == "exclusive_weight_page.pending.npy"
    assert files.scales == tmp_path / "exclusive_weight_scale.pending.npy"  # the failure stopped the renames
    stored = page_format("int8").dequantize(np.load(files.values), np.load(files.scales))
    np.testing.assert_array_equal(stored, loaded.exclusive)
    np.testing.assert_array_equal(loaded.materialize("c"), np.full(8, 0.5, np.float32))


# ---- conversion --------------------------------------------------------------------------

@pytest.mark.parametrize("page_dtype", ["int8", "int4"])
def test_convert_state_quantizes_a_copy(tmp_path, page_dtype):
    source, _ = make_state(tmp_path / "source")
    with source.writer():
        source.commit_task("a", vectors={"weight": np.ones(20, np.float32)},
                           accuracy={"network": 0.9, "separated": 0.8})
    before = all_bytes(tmp_path / "source")
    converted = convert_state(tmp_path / "source", tmp_path / "dest", page_dtype)
    assert all_bytes(tmp_path / "source") == before
    loaded = Store(tmp_path / "dest").load()
    for s in (converted, loaded):
        assert s.page_dtype == page_dtype and s.page_size == S and s.num_pages == P and s.layout == "natural"
        # An independent choice of the int8 pages of an int4 state: the 10% (here 1 of 12) pages with
        # the most summed network_fisher of the tasks on them.
        importance = np.zeros(P + source.num_exclusive)
        for record in source.tasks:
            fisher = np.zeros(record.num_pages * S)
            fisher[:record.num_weights] = source.load_vector(record.name, "network_fisher")
            for page, entry in enumerate(record.page_table):
                importance[entry] += fisher[page * S:(page + 1) * S].sum()
        wide = np.zeros(P + source.num_exclusive, bool)
        wide[np.argmax(importance)] = page_dtype == "int4"
        for which, floats, part in (("shared", source.shared, wide[:P]), ("exclusive", source.exclusive, wide[P:])):
            want = page_format(page_dtype).quantize(floats, part if page_dtype == "int4" else None)
            for got, ref in zip(s.quantized(which), want):
                assert (got is None and ref is None) or got.tobytes() == ref.tobytes()
        assert np.count_nonzero(wide) == (1 if page_dtype == "int4" else 0)  # 10% of the 10-12 pages
        if page_dtype == "int4":
            assert s.quantized("shared").bits.tolist() + s.quantized("exclusive").bits.tolist() == np.where(
                wide, 8, 4).tolist()
        for old, new in zip(source.tasks, s.tasks):
            assert (new.name, new.id, new.num_weights, new.exclusive_pages, new.spec, new.settings) == (
                old.name, old.id, old.num_weights, old.exclusive_pages, old.spec, old.settings)
            np.testing.assert_array_equal(new.page_table, old.page_table)
            assert new.accuracy == {k: v for k, v in old.accuracy.items() if k != "separated"}
            for kind in store_mod.VECTOR_KINDS:
                assert s.has_vector(new.name, kind) == source.has_vector(old.name, kind)
                if source.has_vector(old.name, kind):
                    np.testing.assert_array_equal(s.load_vector(new.name, kind), source.load_vector(old.name, kind))
    assert files_on_disk(tmp_path / "dest") == expected_files(tmp_path / "dest")


def test_convert_state_refusals(tmp_path):
    make_state(tmp_path / "source")
    make_state(tmp_path / "quantized", "int8")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    cases = [
        ((tmp_path / "source", tmp_path / "source", "int8"), "new directory outside"),
        ((tmp_path / "source", tmp_path / "source" / "sub", "int8"), "new directory outside"),
        ((tmp_path / "source", tmp_path / "busy", "int8"), "not an empty directory"),
        ((tmp_path / "quantized", tmp_path / "new", "int4"), "only a float32 state"),
        ((tmp_path / "source", tmp_path / "new", "float16"), "int8 or int4"),
        ((tmp_path / "nothing", tmp_path / "new", "int8"), "no separated state"),
    ]
    for args, phrase in cases:
        with pytest.raises(WeightSepError, match=phrase):
            convert_state(*args)
    assert not (tmp_path / "new").exists() and not (tmp_path / "source" / "sub").exists()


def test_convert_state_crash_leaves_source_untouched(tmp_path, monkeypatch):
    make_state(tmp_path / "source")
    before = all_bytes(tmp_path / "source")
    good = convert_state(tmp_path / "source", tmp_path / "good", "int4")
    n_replaces = count_calls(monkeypatch, "replace", lambda: convert_state(tmp_path / "source", tmp_path / "n", "int4"))
    n_fsyncs = count_calls(monkeypatch, "fsync", lambda: convert_state(tmp_path / "source", tmp_path / "m", "int4"))
    assert n_replaces >= 8 and n_fsyncs >= n_replaces
    for name, count in (("replace", n_replaces), ("fsync", n_fsyncs)):
        real = getattr(os, name)
        for fail_at in range(count):
            dest = tmp_path / f"{name}{fail_at}"
            calls = []

            def flaky(*args):
                calls.append(args)
                if len(calls) - 1 == fail_at:
                    raise OSError(errno.EIO, "simulated crash")
                return real(*args)

            monkeypatch.setattr(os, name, flaky)
            with pytest.raises(WriteError, match="simulated crash"):
                convert_state(tmp_path / "source", dest, "int4")
            monkeypatch.setattr(os, name, real)
            assert all_bytes(tmp_path / "source") == before
            if (dest / REGISTRY_FILE).exists():  # committed: complete after the next writer
                with Store(dest).writer():
                    pass
                assert_same(snapshot(dest), snapshot(tmp_path / "good"))
            else:
                with pytest.raises(StateError, match="no separated state"):
                    Store(dest).load()
    assert good.page_dtype == "int4"


# ---- start-up cost -------------------------------------------------------------------------

def test_state_modules_do_not_import_tensorflow():
    code = ("import sys\n"
            "import weightsep.store, weightsep.pages, weightsep.tasks, weightsep.pageformat, weightsep.limits, weightsep.report\n"
            "import weightsep.atomic, weightsep.errors\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---- master values of quantized states ---------------------------------------------------

def test_masters_keep_updates_smaller_than_half_a_step(tmp_path):
    """Six commits of +0.2 quantization steps each on one weight: with master values the weight's
    master moves by exactly what was written and its stored value follows (1.2 steps: it moves);
    without them (a state of before) each commit starts from the stored, rounded value and the
    update is rounded away every time."""
    moved = {}
    for masters in (True, False):
        store, _ = make_state(tmp_path / str(masters), "int4", masters=masters)
        assert store.masters is masters
        start_stored = store.materialize("c").copy()
        w = store.master_pages("c").reshape(-1)[:8].copy()
        i = int(np.argmin(np.abs(w)))  # far from the page's largest value: the scale does not move
        row = store.task("c").page_table[0] - P
        step = np.float32(store.quantized("exclusive").scales[row, 0])
        with store.writer():
            for _ in range(6):
                # a training call starts from the masters where kept, else from the stored weights
                w = (store.master_pages("c").reshape(-1)[:8] if masters else store.materialize("c")).copy()
                w[i] += np.float32(0.2) * step
                expected = store.as_stored("c", w)
                store.commit_task("c", weights=w)
                np.testing.assert_array_equal(store.materialize("c"), expected)
        loaded = Store(tmp_path / str(masters)).load()
        if masters:
            np.testing.assert_array_equal(loaded.master_pages("c").reshape(-1)[:8], w)  # exactly what was written
            # the stored page is the page format's rounding of the master page
            np.testing.assert_array_equal(loaded.exclusive[row], page_format("int4", S).round_trip(
                loaded.master("exclusive")[row:row + 1])[0])
        else:
            np.testing.assert_array_equal(loaded.master_pages("c"), loaded.exclusive[[row]])
        moved[masters] = loaded.materialize("c")[i] - start_stored[i]
    assert moved[True] >= step * 0.99 and moved[False] == 0.0, moved


def test_masters_of_other_tasks_on_a_shared_page_are_not_re_rounded(tmp_path):
    """Task a changes one weight on pool page 0, which b shares: every other master value of pool
    page 0 keeps its float32 value (the seeded pool, drawn here independently), the stored page 0
    is re-derived from the masters, and pages a did not change keep their stored bytes."""
    store, _ = make_state(tmp_path, "int4")
    pool = np.random.default_rng(3).normal(0.0, 0.01, size=(P, S)).astype(np.float32)
    np.testing.assert_array_equal(store.master("shared"), pool)
    assert np.any(store.shared[0] != pool[0])  # the stored page is rounded: the master is not
    before = [a.copy() for a in store.quantized("shared")]
    w = store.master_pages("a").reshape(-1)[:20].copy()
    w[3] = np.float32(0.02)  # a's page 0 is pool page 0 (weights 0-7)
    with store.writer():
        store.commit_task("a", weights=w)
    loaded = Store(tmp_path).load()
    expected = pool.copy()
    expected[0, 3] = np.float32(0.02)
    np.testing.assert_array_equal(loaded.master("shared"), expected)
    np.testing.assert_array_equal(loaded.shared[0], page_format("int4", S).round_trip(expected[:1])[0])
    values, scales = loaded.quantized("shared")[:2]
    for page in range(1, P):
        assert values[page].tobytes() == before[0][page].tobytes()
        assert scales[page].tobytes() == before[1][page].tobytes()
    # b reads the new shared values on its page 2 (pool page 0), masters elsewhere unchanged
    np.testing.assert_array_equal(loaded.master_pages("b")[2], expected[0])


def test_master_files_are_validated_and_kept_out_of_the_stored_pages(tmp_path):
    store, _ = make_state(tmp_path, "int8")
    assert store.quantized("shared").nbytes == P * S + P * 4  # int8 values and scales only
    path = tmp_path / SHARED_MASTER_FILE
    master = np.load(path)
    np.save(path, master + np.float32(1.0))
    with pytest.raises(StateError, match=f"{SHARED_MASTER_FILE} does not match .*checksum"):
        Store(tmp_path).load()
    np.save(path, master)
    Store(tmp_path).load()
    edit_registry(tmp_path, lambda raw: raw["files"].pop(EXCLUSIVE_MASTER_FILE), sign=True)
    with pytest.raises(StateError, match=f"lists {SHARED_MASTER_FILE} without {EXCLUSIVE_MASTER_FILE}"):
        Store(tmp_path).load()


def test_convert_state_keeps_the_float32_values_as_masters(tmp_path):
    source, _ = make_state(tmp_path / "source")
    dest = convert_state(tmp_path / "source", tmp_path / "dest", "int4")
    assert dest.masters and not source.masters
    for which in ("shared", "exclusive"):
        np.testing.assert_array_equal(dest.master(which), getattr(source, which))
    assert not convert_state(tmp_path / "source", tmp_path / "plain", "int4", masters=False).masters
