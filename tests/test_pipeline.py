"""The method end to end on tiny tasks: add, train (-mode=t), form-all, optimize-all (-mode=o),
remove, quantized states, and what a state may and may not do (it never runs code)."""

import hashlib

import numpy as np
import pytest

from conftest import TINY_OPTIONS, copy_state, write_custom_task, write_task_folder
from weightsep import matching, pipeline
from weightsep.errors import WeightSepError
from weightsep.pages import gather_pages, to_pages
from weightsep.pipeline import (Options, Session, add_task, evaluate_task, form_all, optimize_all,
                                record_accuracy, train_task)
from weightsep.store import Store
from weightsep.tasks import load_task
from weightsep.training import TrainingDiverged

quiet = lambda *_: None  # noqa: E731


def session_on(state, **opts) -> Session:
    return Session(Store(state).load(), Options(**{**TINY_OPTIONS, **opts}))


def state_bytes(state) -> dict:
    return {str(p.relative_to(state)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(state.rglob("*")) if p.is_file() and p.name != ".weightsep.lock"}


@pytest.fixture(scope="module")
def added(tmp_path_factory, tiny_tasks):
    """A state with both tiny tasks added (no training), and the lines add_task logged."""
    state = tmp_path_factory.mktemp("added") / "state"
    store, lines = Store(state), []
    session = Session(store, Options(**TINY_OPTIONS))
    with store.writer():
        results = [add_task(session, load_task(folder), log=lines.append) for folder in tiny_tasks.values()]
    return state, results, lines


def test_add_registers_pages_consistently(added):
    state, results, lines = added
    store = Store(state).load()
    assert [t.name for t in store.tasks] == ["tiny_a", "tiny_b"]
    for rec in store.tasks:
        network = store.load_vector(rec.name, "network_weight")
        shared = rec.page_table[rec.page_table < store.num_pages]
        assert len(np.unique(shared)) == len(shared)
        # Exclusive pages hold the network's own values exactly.
        stored = to_pages(store.materialize(rec.name), 64)
        for k in rec.exclusive_pages:
            np.testing.assert_array_equal(stored[k], to_pages(network, 64)[k])
        assert rec.settings["data"] == "synthetic" and rec.settings["data_seed"] == 0
        assert rec.spec == load_task(rec.network_path).to_json()
    # The first task maps its sharable pages to shared pages 0..m-1 in order (the original).
    first = store.tasks[0]
    sharable = [i for i in range(first.num_pages) if i not in first.exclusive_pages]
    assert first.page_table[sharable].tolist() == list(range(len(sharable)))
    assert results[0].matching_cost == 0.0
    # The counts of the pool are those of the page tables.
    assert store.occupation_counts().sum() == sum(r.num_pages - len(r.exclusive_pages) for r in store.tasks)


def test_matching_uses_the_pool_fisher_aligned_through_page_tables(added, tiny_tasks):
    state, results, lines = added
    store = Store(state).load()
    a, b = store.tasks
    # F_sum: a's network Fisher moved to the shared pages a's table names; nothing else there.
    fsum = np.zeros((store.num_pages, 64), np.float32)
    fa = to_pages(store.load_vector("tiny_a", "network_fisher"), 64)
    for page, entry in enumerate(a.page_table):
        if entry < store.num_pages:
            fsum[entry] += fa[page]
    # Recompute b's matching against the state as it was when b was added (only a in it).
    sharable_b = np.flatnonzero(b.page_table < store.num_pages)
    counts = np.bincount(a.page_table[a.page_table < store.num_pages], minlength=store.num_pages)
    wb = to_pages(store.load_vector("tiny_b", "network_weight"), 64)[sharable_b]
    fb = to_pages(store.load_vector("tiny_b", "network_fisher"), 64)[sharable_b]
    pool_then = store.shared  # no training happened: the pool is still the initial one
    expected = matching.match_pages(wb, fb, pool_then, fsum, counts, "greedy", task_pages=sharable_b)
    np.testing.assert_array_equal(b.page_table[sharable_b], expected.assignment)
    assert results[1].matching_cost == pytest.approx(expected.total_cost, rel=1e-12)
    # -mode=a prints the original's total_network_cost over all tasks.
    printed = [float(line.split(": ")[1]) for line in lines if str(line).startswith("total_network_cost:")]
    assert printed[-1] == pytest.approx(pipeline.total_network_cost(store), rel=1e-12)


def test_add_checks_everything_before_creating_the_state(tmp_path, tiny_tasks):
    folder = write_task_folder(tmp_path, "nonet", input_shape=(8, 8, 1), num_classes=2, dense=(4,))
    store = Store(tmp_path / "state")
    with store.writer(), pytest.raises(WeightSepError, match=r"nonet\.weights\.h5 is missing"):
        add_task(Session(store, Options(**TINY_OPTIONS)), load_task(folder), log=quiet)
    assert not store.exists()


def test_adding_twice_and_contradicting_the_state_are_errors(added, tiny_tasks, tmp_path):
    state = copy_state(added[0], tmp_path / "state")
    store = Store(state)
    with store.writer():
        with pytest.raises(WeightSepError, match="already in the state"):
            add_task(Session(store, Options(**TINY_OPTIONS)), load_task(tiny_tasks["tiny_a"]), log=quiet)
        store.remove_task("tiny_b")
        for flag, value in (("page_size", 32), ("page_dtype", "int8"), ("transpose", True)):
            options = Options(**{**TINY_OPTIONS, flag: value}, explicit=frozenset({flag}))
            with pytest.raises(WeightSepError, match=f"-{flag}=.* contradicts the existing state"):
                add_task(Session(store, options), load_task(tiny_tasks["tiny_b"]), log=quiet)


def test_train_writes_weights_and_weight_vector_in_one_commit(tiny_state, tmp_path):
    state = copy_state(tiny_state, tmp_path / "state")
    session = session_on(state)
    store = session.store
    before = store.task("tiny_a")
    with store.writer():
        result = train_task(session, "tiny_a", 120, log=quiet)
    after = store.task("tiny_a")
    assert after.settings["trained_steps"] == before.settings["trained_steps"] + 120
    # The `_weight` vector is the materialized weights after the call, improved or not.
    np.testing.assert_array_equal(store.load_vector("tiny_a", "weight"), store.materialize("tiny_a"))
    assert result.selected_on == "test"
    assert Store(state).load().task("tiny_a") == after


def test_no_improvement_keeps_the_pages_but_rewrites_the_weight_vector(tiny_state, tmp_path):
    state = copy_state(tiny_state, tmp_path / "state")
    session = session_on(state)
    store = session.store
    pool, exclusive = store.shared.copy(), store.exclusive.copy()
    with store.writer():
        result = train_task(session, "tiny_b", 1, log=quiet)  # one step: only step 0 is evaluated
    assert not result.updated
    np.testing.assert_array_equal(store.shared, pool)
    np.testing.assert_array_equal(store.exclusive, exclusive)
    np.testing.assert_array_equal(store.load_vector("tiny_b", "weight"), store.materialize("tiny_b"))


def test_diverged_training_leaves_the_state_byte_identical(tiny_state, tmp_path):
    state = copy_state(tiny_state, tmp_path / "state")
    before = state_bytes(state)
    for lr in (float("nan"), 1e30):
        session = session_on(state, lr=lr)
        with session.store.writer(), pytest.raises(TrainingDiverged, match="state is unchanged"):
            train_task(session, "tiny_a", 50, log=quiet)
    assert state_bytes(state) == before


def test_optimize_all_equals_one_process_per_step(tiny_state, tmp_path):
    """-mode=o in one process gives exactly the weights of the original loop of -mode=t / -mode=e
    processes (a new Session for every call stands for a new process)."""
    one = copy_state(tiny_state, tmp_path / "one")
    many = copy_state(tiny_state, tmp_path / "many")
    session = session_on(one)
    seen = []
    with session.store.writer():
        history = optimize_all(session, rounds=2, iters=6, passes=2, log=quiet,
                               progress=lambda r, n, accs: seen.append((r, n, dict(accs))))
    for _ in range(2):
        for _ in range(2):
            for name in ("tiny_a", "tiny_b"):
                fresh = session_on(many)
                with fresh.store.writer():
                    train_task(fresh, name, 6, log=quiet)
    final = session_on(many)
    for name in ("tiny_a", "tiny_b"):
        np.testing.assert_array_equal(session.store.materialize(name), final.store.materialize(name))
        assert history[-1][name] == evaluate_task(final, name)
        assert session.store.task(name).accuracy["separated"] == history[-1][name]
        assert session.store.task(name).settings["trained_steps"] == final.store.task(name).settings["trained_steps"]
    assert [(r, n) for r, n, _ in seen] == [(1, 2), (2, 2)] and seen[-1][2] == history[-1]


def test_remove_frees_pages_and_keeps_the_rest(tiny_state, tmp_path):
    state = copy_state(tiny_state, tmp_path / "state")
    store = Store(state).load()
    kept = store.materialize("tiny_b")
    with store.writer():
        store.remove_task("tiny_a")
    assert [t.name for t in store.tasks] == ["tiny_b"]
    np.testing.assert_array_equal(Store(state).load().materialize("tiny_b"), kept)
    assert not (state / "tiny_a").exists()


def test_options_of_add_change_what_they_say(tmp_path, tiny_tasks):
    specs = [load_task(f) for f in tiny_tasks.values()]

    def formed(name, **opts):
        store = Store(tmp_path / name)
        with store.writer():
            form_all(Session(store, Options(**{**TINY_OPTIONS, **opts})), specs, 0, log=quiet)
        return store

    plain = formed("plain")
    # -use_exclusive_page=0: only the pages the pool cannot hold are exclusive.
    no_exclusive = formed("none", use_exclusive_page=False)
    for rec in no_exclusive.tasks:
        assert len(rec.exclusive_pages) == max(0, rec.num_pages - no_exclusive.num_pages)
    # -matching=optimal never costs more than the original's greedy on the same pool.
    optimal = formed("optimal", matching="optimal")
    greedy_cost = pipeline.total_network_cost(plain)
    assert [r.exclusive_pages for r in optimal.tasks] == [r.exclusive_pages for r in plain.tasks]
    assert optimal.tasks[1].settings["matching"] == "optimal"
    sharable = [np.flatnonzero(r.page_table < 16) for r in plain.tasks]
    assert len(sharable[1]) == len(np.flatnonzero(optimal.tasks[1].page_table < 16))
    assert np.isfinite(greedy_cost)
    # -init=merge: every shared page of the second task is the Fisher-weighted mean of its
    # occupants' values (the first task's `_weight`, i.e. its stored values) and its own.
    merged = formed("merge", init="merge")
    a, b = merged.tasks
    wa = to_pages(merged.load_vector("tiny_a", "network_weight"), 64)
    fa = to_pages(merged.load_vector("tiny_a", "network_fisher"), 64)
    wb = to_pages(merged.load_vector("tiny_b", "network_weight"), 64)
    fb = to_pages(merged.load_vector("tiny_b", "network_fisher"), 64)
    where_a = {int(e): i for i, e in enumerate(a.page_table) if e < 16}
    for j, entry in enumerate(b.page_table):
        if entry >= 16:
            continue
        i = where_a.get(int(entry))
        num = fb[j] * wb[j] + (fa[i] * wa[i] if i is not None else 0)
        den = fb[j] + (fa[i] if i is not None else 0)
        expected = np.where(den > 0, num / np.where(den > 0, den, 1), wb[j]).astype(np.float32)
        np.testing.assert_allclose(merged.shared[entry], expected, rtol=1e-6, atol=1e-7)


def test_target_accuracy_sets_the_tpr_from_the_alpha_loss(tmp_path, tiny_tasks):
    from weightsep.networks import load_network
    from weightsep.separation import target_performance_rate
    spec = load_task(tiny_tasks["tiny_a"])
    store = Store(tmp_path / "state")
    session = Session(store, Options(**TINY_OPTIONS, target_accuracy=0.3))
    with store.writer():
        add_task(session, spec, log=quiet)
    train = session.split("tiny_a", "train")
    expected = target_performance_rate(load_network(spec).predict(train.x), train.y, 0.5, 0.3)
    assert store.task("tiny_a").settings["tpr"] == pytest.approx(expected)


def test_a_state_never_runs_code_from_its_task_folders(tiny_state, tmp_path):
    state = copy_state(tiny_state, tmp_path / "state")
    store = Store(state).load()
    marker = tmp_path / "ran"
    for rec in store.tasks:
        # A task.py that would leave a mark if anything imported it.
        (tmp_path / rec.name).mkdir()
        (tmp_path / rec.name / "task.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    session = session_on(state)
    for name in ("tiny_a", "tiny_b"):
        assert 0.0 <= evaluate_task(session, name) <= 1.0
        with session.store.writer():
            train_task(session, name, 2, log=quiet)
    assert not marker.exists()
    # The spec comes from the registry; the folder the task was added from holds its files.
    assert session.spec("tiny_a").to_json() == store.task("tiny_a").spec


def test_a_custom_model_needs_its_folder_named(tmp_path):
    folder = write_custom_task(tmp_path, "mlp", (6, 6, 1), 3, "keras.layers.Flatten(), "
                               "keras.layers.Dense(8, activation='tanh'), keras.layers.Dense(3), keras.layers.Softmax()")
    from weightsep.training import pretrain_task
    spec = load_task(folder)
    pretrain_task(spec, "synthetic", iters=20, verbose=0)
    store = Store(tmp_path / "state")
    with store.writer():
        add_task(Session(store, Options(**TINY_OPTIONS)), spec, log=quiet)
    fresh = session_on(tmp_path / "state")
    with pytest.raises(WeightSepError, match="custom build_model.*-network_path"):
        evaluate_task(fresh, "mlp")
    fresh.use_spec(load_task(folder))
    assert 0.0 <= evaluate_task(fresh, "mlp") <= 1.0


def test_int8_state_trains_through_its_quantized_pages(tiny_tasks, tmp_path):
    """QAT: the kept weights are stored quantized, and evaluation sees exactly what training saw."""
    from weightsep.pageformat import page_format
    store = Store(tmp_path / "state")
    session = Session(store, Options(**TINY_OPTIONS, page_dtype="int8"))
    with store.writer():
        form_all(session, [load_task(f) for f in tiny_tasks.values()], 0, log=quiet)
        train_task(session, "tiny_a", 101, log=quiet)
    values, scales = store.quantized("shared")[:2]
    assert values.dtype == np.int8 and scales.dtype == np.float32
    # Every stored page is a fixed point of quantization (what is stored is already quantized).
    pages = session.pages_of("tiny_a")
    np.testing.assert_array_equal(page_format("int8").round_trip(pages), pages)
    # The trainer's fake-quantized forward weights equal the stored weights bit for bit.
    trainer = session.trainer("tiny_a")
    trainer.reset(pages, pipeline.overlap_for(store, "tiny_a"))
    np.testing.assert_array_equal(trainer.effective_weights(), store.materialize("tiny_a"))


def test_quantize_state_converts_and_reports(tiny_state, tmp_path):
    source = copy_state(tiny_state, tmp_path / "source")
    before = state_bytes(source)
    lines = pipeline.quantize_state(source, tmp_path / "int8", "int8", Options(**TINY_OPTIONS))
    assert state_bytes(source) == before
    dest = Store(tmp_path / "int8").load()
    assert dest.page_dtype == "int8"
    for name in ("tiny_a", "tiny_b"):
        line = next(line for line in lines if line.startswith(f"{name} inference accuracy:"))
        after = float(line.split("-> ")[1].split()[0])
        assert after == round(evaluate_task(session_on(tmp_path / "int8"), name), 6)
        assert dest.task(name).accuracy["separated"] == pytest.approx(after, abs=1e-6)
    assert any(line.startswith("after: packing:") or line.startswith("after:") for line in lines)


def test_evaluation_records_only_what_it_is_asked_to(tiny_state, tmp_path):
    state = copy_state(tiny_state, tmp_path / "state")
    session = session_on(state)
    before = state_bytes(state)
    acc = evaluate_task(session, "tiny_a")
    assert state_bytes(state) == before  # evaluating writes nothing
    with session.store.writer():
        record_accuracy(session.store, "tiny_a", acc)
    assert Store(state).load().task("tiny_a").accuracy["separated"] == acc


def test_training_through_int4_pages_improves_on_post_training_quantization(tiny_state, tmp_path):
    """QAT on a small case: the int4 copy of a float32 state (-mode=quantize, no retraining),
    then trained through its int4 pages: the stored int4 network (what -mode=e runs) ends with a
    lower training loss and a higher accuracy on held-out data than the converted one.  (That
    the forward pass is exactly the stored int4 network is test_int8_state_trains_through_...)."""
    from weightsep.store import convert_state
    from weightsep.training import cross_entropy
    from weightsep.tf import tf
    convert_state(tiny_state, tmp_path / "int4", "int4")
    options = dict(select_on="validation", loss="per_example")
    session = session_on(tmp_path / "int4", **options)
    net, train = session.network("tiny_a"), session.split("tiny_a", "train")

    def measured():
        w = tf.constant(session.store.materialize("tiny_a"))
        return (float(cross_entropy(net, w, tf.constant(train.x), tf.constant(train.y), "per_example")[0]),
                evaluate_task(session, "tiny_a"))

    post_training = measured()
    with session.store.writer():
        result = train_task(session, "tiny_a", 300, log=quiet)
    trained = measured()
    assert result.updated and session.store.page_dtype == "int4"
    assert trained[0] < post_training[0] and trained[1] > post_training[1], (post_training, trained)


def test_training_an_int4_state_starts_from_its_masters_and_stores_their_rounding(tiny_state, tmp_path):
    """Training through int4 pages with master values: the trainer starts from the float32 masters
    (the converted float32 state's values, not their rounding), the kept weights become the masters,
    and every stored page is the page format's rounding of its master page, with its own kind."""
    from weightsep.pageformat import page_format
    from weightsep.store import convert_state
    source = Store(tiny_state).load()
    convert_state(tiny_state, tmp_path / "int4", "int4")
    session = session_on(tmp_path / "int4", select_on="validation", loss="per_example")
    store = session.store
    np.testing.assert_array_equal(session.master_pages_of("tiny_a"), gather_pages(
        source.shared, source.exclusive, source.task("tiny_a").page_table))
    with store.writer():
        result = train_task(session, "tiny_a", 300, log=quiet)
    assert result.updated
    masters = store.master_pages("tiny_a")
    assert np.any(masters != gather_pages(source.shared, source.exclusive, source.task("tiny_a").page_table))
    assert np.any(masters != session.pages_of("tiny_a"))  # the masters are not rounded
    fmt = page_format("int4", store.group_size)
    for which in ("shared", "exclusive"):
        wide = store.quantized(which).bits == 8
        np.testing.assert_array_equal(getattr(store, which), fmt.round_trip(store.master(which), wide))
    np.testing.assert_array_equal(store.load_vector("tiny_a", "weight"), store.materialize("tiny_a"))


def test_transposed_layout_keeps_the_vectors_in_microcontroller_order(tiny_tasks, tmp_path):
    """-transpose=1 (recorded in the state): the network vectors, the pages and the training all
    use the transposed order; the model still computes the same function."""
    from weightsep.networks import load_network
    spec = load_task(tiny_tasks["tiny_a"])
    store = Store(tmp_path / "state")
    session = Session(store, Options(**TINY_OPTIONS, transpose=True))
    with store.writer():
        add_task(session, spec, log=quiet)
    assert store.layout == "transposed"
    transposed = load_network(spec, layout="transposed").get_vector()
    natural = load_network(spec).get_vector()
    assert not np.array_equal(transposed, natural) and np.array_equal(np.sort(transposed), np.sort(natural))
    np.testing.assert_array_equal(store.load_vector("tiny_a", "network_weight"), transposed)
    stored = to_pages(store.materialize("tiny_a"), 64)
    for page in store.task("tiny_a").exclusive_pages:
        np.testing.assert_array_equal(stored[page], to_pages(transposed, 64)[page])
    with store.writer():
        train_task(session, "tiny_a", 3, log=quiet)
    # The separated weights assigned to the model's variables (set_vector undoes the order) give
    # the accuracy that -mode=e computes statelessly from the transposed vector.
    net = load_network(spec, layout="transposed")
    net.set_vector(store.materialize("tiny_a"))
    test = session.split("tiny_a", "test")
    assert evaluate_task(session, "tiny_a") == net.accuracy(test.x, test.y)
