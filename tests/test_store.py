"""Tests of weightsep.store: round trips, crash safety, the writer lock, validated loads."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from weightsep import store as store_mod
from weightsep.errors import StateError, StateLockedError
from weightsep.store import EXCLUSIVE_FILE, REGISTRY_FILE, SHARED_FILE, Store, TaskRecord

REPO = Path(__file__).resolve().parents[1]
S, P = 8, 6


def reference_materialize(shared, exclusive, table, n):
    """Page by page, the plain way: shared[e] if e < P else exclusive[e - P]."""
    out = []
    for e in table:
        out.extend(shared[e] if e < len(shared) else exclusive[e - len(shared)])
    return np.array(out[:n], dtype=np.float32)


def make_state(directory):
    """A state with three hand-placed tasks; returns the store and the exclusive values added."""
    store = Store(directory)
    rng = np.random.default_rng(1)
    values = {}
    with store.writer():
        store.create(page_size=S, num_pages=P, seed=3, settings={"matching": "greedy", "margin": 0.1})
        # a: 20 weights -> 3 pages; page 1 exclusive
        values["a"] = rng.normal(size=(1, S)).astype(np.float32)
        store.add_task(TaskRecord("a", 20, [0, -1, 1], [1], network_path="a/net.h5",
                                  accuracy={"network": 0.9}), values["a"])
        # b: 33 weights -> 5 pages; pages 0 and 3 exclusive, shares pool pages 0, 1, 2 with a
        values["b"] = rng.normal(size=(2, S)).astype(np.float32)
        store.add_task(TaskRecord("b", 33, [-1, 1, 0, -1, 2], [0, 3], settings={"tpr": 0.7}), values["b"])
        # c: 8 weights -> 1 page, exclusive
        values["c"] = rng.normal(size=(1, S)).astype(np.float32)
        store.add_task(TaskRecord("c", 8, [-1], [0]), values["c"])
    return store, values


def test_create_initializes_pool_and_empty_store(tmp_path):
    store = Store(tmp_path)
    assert not store.exists()
    with store.writer():
        store.create(page_size=S, num_pages=P, seed=5)
    expected = np.random.default_rng(5).normal(0.0, 0.01, size=(P, S)).astype(np.float32)
    loaded = Store(tmp_path).load()
    np.testing.assert_array_equal(loaded.shared, expected)
    assert loaded.exclusive.shape == (0, S) and loaded.exclusive.dtype == np.float32
    assert loaded.tasks == [] and loaded.page_size == S and loaded.num_pages == P
    with store.writer(), pytest.raises(StateError, match=REGISTRY_FILE):
        store.create(page_size=S, num_pages=P)


def test_round_trip_and_materialize(tmp_path):
    store, values = make_state(tmp_path)
    # tables filled with P + row, rows appended in registration order
    assert store.task("a").page_table.tolist() == [0, P + 0, 1]
    assert store.task("b").page_table.tolist() == [P + 1, 1, 0, P + 2, 2]
    assert store.task("c").page_table.tolist() == [P + 3]
    assert [t.id for t in store.tasks] == [0, 1, 2]
    np.testing.assert_array_equal(store.exclusive, np.concatenate([values["a"], values["b"], values["c"]]))

    loaded = Store(tmp_path).load()
    assert loaded.tasks == store.tasks
    assert loaded.task("a").network_path == "a/net.h5" and loaded.task("a").accuracy == {"network": 0.9}
    assert loaded.task("b").settings == {"tpr": 0.7}
    assert loaded.settings == {"matching": "greedy", "margin": 0.1}
    np.testing.assert_array_equal(loaded.shared, store.shared)
    np.testing.assert_array_equal(loaded.exclusive, store.exclusive)
    for t in loaded.tasks:
        assert t.page_table.dtype == np.int32
        np.testing.assert_array_equal(
            loaded.materialize(t.name),
            reference_materialize(loaded.shared, loaded.exclusive, t.page_table, t.num_weights))
    assert loaded.occupation().tolist() == [2, 2, 1, 0, 0, 0]
    assert loaded.occupants(1) == [("a", 2), ("b", 1)]
    assert loaded.occupants(5) == []
    with pytest.raises(StateError, match="known tasks: a, b, c"):
        loaded.task("zz")


def test_write_task_pages_then_materialize(tmp_path):
    store, _ = make_state(tmp_path)
    before_a = store.materialize("a")
    vector = np.arange(33, dtype=np.float32) + 100.0
    with store.writer():
        store.write_task_pages("b", vector)
    np.testing.assert_array_equal(store.materialize("b"), vector)
    reloaded = Store(tmp_path).load()
    np.testing.assert_array_equal(reloaded.materialize("b"), vector)
    # a shares pool pages 0 and 1 with b (its pages 0 and 2); its exclusive page is untouched
    a = reloaded.materialize("a")
    np.testing.assert_array_equal(a[:S], vector[2 * S:3 * S])
    np.testing.assert_array_equal(a[S:2 * S], before_a[S:2 * S])
    np.testing.assert_array_equal(a[2 * S:], vector[S:S + 4])
    # b's last page holds one weight on pool page 2: the padding stays the old pool values
    np.testing.assert_array_equal(reloaded.shared[2, 1:], make_state(tmp_path / "fresh")[0].shared[2, 1:])


def test_remove_task_compacts_and_keeps_others(tmp_path):
    store, values = make_state(tmp_path)
    with store.writer():
        for kind in ("network_weight", "network_fisher", "weight"):
            store.save_vector("a", kind, np.full(20, 0.5, np.float32))
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
        assert s.occupation().tolist() == [1, 1, 1, 0, 0, 0]
    assert not (tmp_path / "a").exists()
    # ids keep registration order and are not reused
    with store.writer():
        added = store.add_task(TaskRecord("a", 8, [3], []), np.zeros((0, S), np.float32))
    assert added.id == 3


def test_vectors_round_trip_and_checks(tmp_path):
    store, _ = make_state(tmp_path)
    vector = np.linspace(-1, 1, 20).astype(np.float32)
    with pytest.raises(StateError, match="writer"):
        store.save_vector("a", "weight", vector)
    assert not store.has_vector("a", "weight")
    with pytest.raises(StateError, match="a_weight.npy is missing; train"):
        store.load_vector("a", "weight")
    with store.writer():
        store.save_vector("a", "weight", vector)
        with pytest.raises(ValueError, match="expected \\(20,\\)"):
            store.save_vector("a", "network_weight", np.zeros(21, np.float32))
        with pytest.raises(ValueError, match="kind"):
            store.save_vector("a", "bias", vector)
    assert (tmp_path / "a" / "a_weight.npy").is_file()
    np.testing.assert_array_equal(Store(tmp_path).load().load_vector("a", "weight"), vector)


def test_update_task_and_mutation_rules(tmp_path):
    store, _ = make_state(tmp_path)
    record = store.task("b")
    record.accuracy = {"network": 0.8, "separated": 0.75}
    with pytest.raises(StateError, match="with store.writer"):
        store.update_task(record)
    with store.writer():
        store.update_task(record)
        moved = store.task("b")
        moved.page_table[1] = 4
        with pytest.raises(ValueError, match="remove_task then add_task"):
            store.update_task(moved)
        with pytest.raises(StateError, match="already in"):
            store.add_task(TaskRecord("b", 8, [5], []), np.zeros((0, S), np.float32))
        with pytest.raises(ValueError, match="shared page 5 twice"):
            store.add_task(TaskRecord("d", 16, [5, 5], []), np.zeros((0, S), np.float32))
        with pytest.raises(ValueError, match="shape"):
            store.save_shared(np.zeros((P + 1, S), np.float32))
        with pytest.raises(ValueError, match="NaN"):
            store.save_exclusive(np.full(store.exclusive.shape, np.nan, np.float32))
    assert Store(tmp_path).load().task("b").accuracy == {"network": 0.8, "separated": 0.75}
    assert not store.shared.flags.writeable


# ---- crash safety ------------------------------------------------------------------------

def snapshot(directory):
    s = Store(directory).load()
    return s.tasks, s.shared.copy(), s.exclusive.copy()


def assert_same(a, b):
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])


def count_replaces(monkeypatch, action):
    calls = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda *a: (calls.append(a), real(*a))[1])
    action()
    monkeypatch.setattr(os, "replace", real)
    return len(calls)


MUTATIONS = {
    "add_task": lambda s: s.add_task(TaskRecord("d", 16, [3, -1], [1]), np.full((1, S), 7, np.float32)),
    "remove_task": lambda s: s.remove_task("a"),
    "write_task_pages": lambda s: s.write_task_pages("b", np.full(33, 9, np.float32)),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_failure_at_every_rename_leaves_old_or_new_state(tmp_path, monkeypatch, mutation):
    make_state(tmp_path / "probe")
    store = Store(tmp_path / "probe")
    with store.writer():
        n_replaces = count_replaces(monkeypatch, lambda: MUTATIONS[mutation](store))
    new = snapshot(tmp_path / "probe")
    assert n_replaces >= 2  # pending file(s) + registry (+ the renames after the commit)

    real = os.replace
    for fail_at in range(n_replaces):
        directory = tmp_path / f"fail{fail_at}"
        store, _ = make_state(directory)
        old = snapshot(directory)
        calls = []

        def flaky(src, dst):
            calls.append(dst)
            if len(calls) - 1 == fail_at:
                raise OSError("simulated crash")
            return real(src, dst)

        monkeypatch.setattr(os, "replace", flaky)
        with store.writer():
            with pytest.raises(OSError, match="simulated crash"):
                MUTATIONS[mutation](store)
        monkeypatch.setattr(os, "replace", real)
        committed = any(Path(d).name == REGISTRY_FILE for d in calls[:fail_at])
        assert_same(snapshot(directory), new if committed else old)
        assert not list(directory.glob(".*.tmp"))
        # the next writer finishes or discards the interrupted commit
        with Store(directory).writer():
            pass
        assert not list(directory.glob("*.pending.npy"))
        assert_same(snapshot(directory), new if committed else old)


CRASH_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from weightsep.store import Store, TaskRecord
    S, P, N = 1024, 1024, 200 * 1024
    store = Store(sys.argv[1])
    with store.writer():
        if not store.exists():
            store.create(page_size=S, num_pages=P, seed=0)
            for name in ("a", "b"):
                store.add_task(TaskRecord(name, N, list(range(200)), list(range(190, 200))),
                               np.zeros((10, S), np.float32))
        value = max([store.settings.get("value", 0)] + [t.settings.get("value", 0) for t in store.tasks])
        print("ready", flush=True)
        while True:
            value += 1
            # re-adding alternately renumbers the other task's exclusive rows on removal
            name = "a" if value % 2 else "b"
            if store.has_task(name):  # absent if a kill fell between remove and add
                store.remove_task(name)
            store.add_task(TaskRecord(name, N, list(range(200)), list(range(190, 200)),
                                      settings={"value": value}), np.full((10, S), value, np.float32))
            store.write_task_pages(name, np.full(N, value, np.float32))
            store.update_settings({"value": value})
""")


def test_sigkill_mid_write_leaves_a_loadable_consistent_state(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    rng = random.Random(0)
    seen_values = set()
    for _ in range(5):
        child = subprocess.Popen([sys.executable, "-c", CRASH_CHILD, str(tmp_path)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "ready\n", child.stderr.read()
        time.sleep(rng.uniform(0.05, 0.4))
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL, child.stderr.read()

        store = Store(tmp_path).load()
        assert 1 <= len(store.tasks) <= 2
        for task in store.tasks:
            value = task.settings.get("value", 0)
            rows = task.page_table[task.exclusive_pages] - store.num_pages
            # exclusive pages of a task hold what its own add_task or write_task_pages wrote
            np.testing.assert_array_equal(store.exclusive[rows], np.full((10, 1024), value, np.float32))
            pool_part = store.shared[task.page_table[:190]]
            assert np.unique(pool_part).size == 1  # one write_task_pages wrote all its pool pages
            seen_values.add(value)
    assert len(seen_values) > 1  # the child made progress between kills


# ---- the writer lock -----------------------------------------------------------------

def test_second_writer_gets_locked_error_with_pid(tmp_path):
    make_state(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\nfrom weightsep.store import Store\n"
         "with Store(sys.argv[1]).writer():\n    print('held', flush=True)\n    sys.stdin.read()\n",
         str(tmp_path)],
        env=dict(os.environ, PYTHONPATH=str(REPO)), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        store = Store(tmp_path)
        with pytest.raises(StateLockedError, match=f"locked by pid {holder.pid} "):
            with store.writer():
                pass
        assert snapshot(tmp_path)[0]  # reading needs no lock
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    with store.writer():  # released when the holder exits
        store.update_settings({"after": True})
    assert Store(tmp_path).load().settings == {"after": True}


# ---- validated loads ---------------------------------------------------------------------

def edit_registry(directory, change):
    path = directory / REGISTRY_FILE
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 20])


def resave(path, array):
    np.save(path, array, allow_pickle=False)


CORRUPTIONS = {
    "truncated pool": (lambda d: truncate(d / SHARED_FILE), SHARED_FILE, "truncated"),
    "truncated exclusive": (lambda d: truncate(d / EXCLUSIVE_FILE), EXCLUSIVE_FILE, "truncated"),
    "corrupt json": (lambda d: (d / REGISTRY_FILE).write_text('{"schema_version": 1, "page_'),
                     REGISTRY_FILE, "not valid JSON"),
    "wrong shape pool": (lambda d: resave(d / SHARED_FILE, np.zeros((P + 1, S), np.float32)),
                         SHARED_FILE, "shape"),
    "float64 pool": (lambda d: resave(d / SHARED_FILE, np.zeros((P, S))), SHARED_FILE, "float32"),
    "nan in pool": (lambda d: resave(d / SHARED_FILE, np.where(np.eye(P, S) > 0, np.nan,
                                                               np.load(d / SHARED_FILE)).astype(np.float32)),
                    SHARED_FILE, "NaN"),
    "pool edited": (lambda d: resave(d / SHARED_FILE, np.load(d / SHARED_FILE) + 1), SHARED_FILE, "checksum"),
    "pickled pool": (lambda d: np.save(d / SHARED_FILE, np.array([{"x": 1}], dtype=object)),
                     SHARED_FILE, "truncated or not a .npy"),
    "table out of bounds": (lambda d: edit_registry(d, lambda r: r["tasks"][0]["page_table"].__setitem__(2, 99)),
                            REGISTRY_FILE, "entry 2 is 99"),
    "table too short": (lambda d: edit_registry(d, lambda r: r["tasks"][1]["page_table"].pop()),
                        REGISTRY_FILE, "need 5"),
    "exclusive flag mismatch": (lambda d: edit_registry(d, lambda r: r["tasks"][0].__setitem__("exclusive_pages", [])),
                                REGISTRY_FILE, "page 1 is sharable"),
    "exclusive row twice": (lambda d: edit_registry(d, lambda r: r["tasks"][2]["page_table"].__setitem__(0, P)),
                            REGISTRY_FILE, "exclusive row 0 is used twice"),
    "shared page twice": (lambda d: edit_registry(d, lambda r: r["tasks"][0]["page_table"].__setitem__(2, 0)),
                          REGISTRY_FILE, "shared page 0 twice"),
    "schema version": (lambda d: edit_registry(d, lambda r: r.__setitem__("schema_version", 2)),
                       REGISTRY_FILE, "schema_version 2"),
    "missing pool": (lambda d: (d / SHARED_FILE).unlink(), SHARED_FILE, "missing"),
    "missing registry": (lambda d: (d / REGISTRY_FILE).unlink(), REGISTRY_FILE, "-mode=a"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_state_raises_named_error(tmp_path, case):
    make_state(tmp_path)
    corrupt, file_name, phrase = CORRUPTIONS[case]
    corrupt(tmp_path)
    with pytest.raises(StateError) as error:
        Store(tmp_path).load()
    message = str(error.value)
    assert file_name in message and phrase in message
    assert "-mode=a" in message or "delete" in message


def test_corrupt_vector_raises_named_error(tmp_path):
    store, _ = make_state(tmp_path)
    with store.writer():
        store.save_vector("b", "network_fisher", np.ones(33, np.float32))
    path = tmp_path / "b" / "b_network_fisher.npy"
    truncate(path)
    with pytest.raises(StateError, match="b_network_fisher.npy is unreadable.*-mode=a"):
        store.load_vector("b", "network_fisher")
    resave(path, np.ones(32, np.float32))
    with pytest.raises(StateError, match="b_network_fisher.npy has 32 weights"):
        store.load_vector("b", "network_fisher")
    resave(path, np.full(33, np.inf, np.float32))
    with pytest.raises(StateError, match="b_network_fisher.npy contains NaN"):
        store.load_vector("b", "network_fisher")


def test_no_pickle_in_files(tmp_path):
    store, _ = make_state(tmp_path)
    for name in (SHARED_FILE, EXCLUSIVE_FILE):
        np.load(tmp_path / name, allow_pickle=False)
    assert json.loads((tmp_path / REGISTRY_FILE).read_text())["schema_version"] == 1
    assert store_mod.SCHEMA_VERSION == 1
