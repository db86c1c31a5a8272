"""The method end to end on tiny tasks: add, train (-mode=t), optimize-all (-mode=o), remove."""

import shutil

import numpy as np
import pytest

from weightsep.errors import WeightSepError
from weightsep.pages import to_pages
from weightsep.pipeline import (Options, Session, add_task, ensure_state, evaluate_task, optimize_all,
                                train_task)
from weightsep.store import Store
from weightsep.tasks import load_task
from weightsep.training import overlap_terms

quiet = lambda *_: None  # noqa: E731


def new_session(state_dir, tiny_tasks, **opts):
    options = Options(**{"page_size": 64, "num_pages": 16, "margin": 0.6, "data": "synthetic", **opts})
    store = Store(state_dir)
    session = Session(store, options)
    session.added = []
    with store.writer():
        ensure_state(store, options, log=quiet)
        for name, folder in tiny_tasks.items():
            session.use_spec(load_task(folder))
            session.added.append(add_task(session, name, log=quiet))
    return session


@pytest.fixture(scope="module")
def added_state(tmp_path_factory, tiny_tasks):
    """A state with both tiny tasks added (no training yet); copy it before changing it."""
    state = tmp_path_factory.mktemp("added")
    new_session(state, tiny_tasks)
    return state


def fresh_copy(src, dst):
    shutil.copytree(src, dst)
    store = Store(dst).load()
    return Session(store, Options(page_size=64, num_pages=16, data="synthetic"))


def test_add_registers_pages_consistently(added_state, tiny_tasks):
    store = Store(added_state).load()
    assert [t.name for t in store.tasks] == ["tiny_a", "tiny_b"]
    for rec in store.tasks:
        w = store.load_vector(rec.name, "network_weight")
        shared = rec.page_table[rec.page_table < store.num_pages]
        assert len(np.unique(shared)) == len(shared)
        # Exclusive pages hold the network's own values exactly.
        mat = store.materialize(rec.name)
        pages = to_pages(w, 64)
        for k in rec.exclusive_pages:
            np.testing.assert_array_equal(to_pages(mat, 64)[k], pages[k])
    # The first task maps its sharable pages to shared pages 0..m-1 in order.
    first = store.tasks[0]
    sharable = [i for i in range(first.num_pages) if i not in first.exclusive_pages]
    assert list(first.page_table[sharable]) == list(range(len(sharable)))
    assert store.occupation().sum() == sum(r.num_pages - len(r.exclusive_pages) for r in store.tasks)


def test_adding_twice_and_contradicting_the_pool_are_errors(added_state, tiny_tasks, tmp_path):
    session = fresh_copy(added_state, tmp_path / "s")
    with session.store.writer():
        with pytest.raises(WeightSepError, match="tiny_a is already in the state"):
            add_task(session, "tiny_a", log=quiet)
        with pytest.raises(WeightSepError, match="-page_size=512 contradicts the existing state"):
            ensure_state(session.store, Options(page_size=512, num_pages=16), explicit={"page_size"}, log=quiet)


def overlap_reference(store, name):
    """Per element: the mean over contributing tasks of F_o (w - w_o)^2, as a function of w."""
    P, S = store.num_pages, store.page_size
    rec = store.task(name)
    fs, ws = [], []
    for o in store.tasks:
        if o.name == name:
            continue
        f_al = np.zeros((rec.num_pages, S))
        w_al = np.zeros((rec.num_pages, S))
        fo = to_pages(store.load_vector(o.name, "network_fisher"), S)
        wo = to_pages(store.load_vector(o.name, "network_weight"), S)
        for i, q in enumerate(rec.page_table):
            for j, q2 in enumerate(o.page_table):
                if q < P and q == q2:
                    f_al[i], w_al[i] = fo[j], wo[j]
        fs.append(f_al.ravel()[:rec.num_weights])
        ws.append(w_al.ravel()[:rec.num_weights])

    def value(w):
        costs = np.array([f * (w - wo) ** 2 for f, wo in zip(fs, ws)])
        count = np.maximum((np.array(fs) != 0).sum(axis=0), 1)
        return float((costs.sum(axis=0) / count).sum())
    return value


def test_overlap_terms_equal_the_direct_definition(added_state):
    store = Store(added_state).load()
    rec = store.task("tiny_b")
    other = store.task("tiny_a")
    terms = overlap_terms(rec.page_table, rec.num_weights, 64, 16,
                          [(other.page_table, store.load_vector("tiny_a", "network_fisher"),
                            store.load_vector("tiny_a", "network_weight"))])
    reference = overlap_reference(store, "tiny_b")
    rng = np.random.default_rng(0)
    for _ in range(3):
        w = rng.normal(0, 0.3, rec.num_weights)
        assert terms.value(w) == pytest.approx(reference(w), rel=1e-5)
    assert terms.num_tasks == 1


def test_train_then_evaluate(added_state, tmp_path):
    session = fresh_copy(added_state, tmp_path / "s")
    store = session.store
    before = store.materialize("tiny_a")
    with store.writer():
        result = train_task(session, "tiny_a", iters=150, log=quiet)
        assert result.updated and result.best_accuracy > result.start_accuracy
        after = store.materialize("tiny_a")
        np.testing.assert_array_equal(after, store.load_vector("tiny_a", "weight"))
        assert not np.array_equal(before, after)
        acc = evaluate_task(session, "tiny_a")
    net = session.network("tiny_a")
    net.set_vector(Store(store.dir).load().materialize("tiny_a"))
    test = session.split("tiny_a", "test")
    assert acc == pytest.approx(np.mean(np.argmax(net.predict(test.x), 1) == test.y))
    assert Store(store.dir).load().task("tiny_a").accuracy["separated"] == acc


def test_no_improvement_changes_no_weights(added_state, tmp_path):
    session = fresh_copy(added_state, tmp_path / "s")
    session.options.lr = 0.0  # no step can beat step 0
    pool = session.store.shared.copy()
    with session.store.writer():
        result = train_task(session, "tiny_b", iters=20, log=quiet)
    assert not result.updated
    reloaded = Store(session.store.dir).load()
    np.testing.assert_array_equal(reloaded.shared, pool)
    assert not reloaded.has_vector("tiny_b", "weight")
    assert reloaded.task("tiny_b").settings["trained_steps"] == 20


def test_optimize_all_equals_repeated_mode_t(added_state, tmp_path):
    """-mode=o in one process gives exactly what the original loop of -mode=t / -mode=e gives."""
    rounds, iters = 2, 12
    looped_accs = []
    for _ in range(rounds):
        for name in ("tiny_a", "tiny_b"):
            session = fresh_copy(added_state, tmp_path / "loop") if not (tmp_path / "loop").exists() else \
                Session(Store(tmp_path / "loop").load(), Options(data="synthetic"))
            with session.store.writer():
                train_task(session, name, iters, log=quiet)
        session = Session(Store(tmp_path / "loop").load(), Options(data="synthetic"))
        with session.store.writer():
            looped_accs.append({n: evaluate_task(session, n) for n in ("tiny_a", "tiny_b")})
    inproc = fresh_copy(added_state, tmp_path / "inproc")
    with inproc.store.writer():
        history = optimize_all(inproc, rounds, iters, log=quiet)
    assert history == looped_accs
    a, b = Store(tmp_path / "loop").load(), Store(tmp_path / "inproc").load()
    np.testing.assert_array_equal(a.shared, b.shared)
    np.testing.assert_array_equal(a.exclusive, b.exclusive)


def test_remove_frees_pages_and_keeps_the_rest(added_state, tmp_path):
    session = fresh_copy(added_state, tmp_path / "s")
    store = session.store
    kept = store.materialize("tiny_b")
    with store.writer():
        store.remove_task("tiny_a")
    reloaded = Store(store.dir).load()
    assert [t.name for t in reloaded.tasks] == ["tiny_b"]
    np.testing.assert_array_equal(reloaded.materialize("tiny_b"), kept)
    rec = reloaded.task("tiny_b")
    assert reloaded.exclusive.shape[0] == len(rec.exclusive_pages)
    assert reloaded.occupation().sum() == rec.num_pages - len(rec.exclusive_pages)


def test_without_exclusive_pages_only_forced_ones_remain(tmp_path, tiny_tasks):
    session = new_session(tmp_path / "s", tiny_tasks, use_exclusive_page=False)
    for rec in session.store.tasks:
        # Forced exclusive pages: only what does not fit into the 16-page pool.
        assert len(rec.exclusive_pages) == max(0, rec.num_pages - 16)


def test_optimal_matching_never_costs_more_than_greedy(tmp_path, tiny_tasks):
    greedy = new_session(tmp_path / "greedy", tiny_tasks, matching="greedy").added
    optimal = new_session(tmp_path / "optimal", tiny_tasks, matching="optimal").added
    # Same separation and the same problem for the second task (same pool, same first task).
    assert [r.record.exclusive_pages for r in greedy] == [r.record.exclusive_pages for r in optimal]
    assert greedy[0].matching_cost == optimal[0].matching_cost == 0.0
    assert optimal[1].matching_cost <= greedy[1].matching_cost + 1e-12
    assert greedy[1].matching_cost > 0


def test_pair_cost_diagnostic_equals_the_matching_cost_formula(added_state):
    from weightsep import diagnostics
    from weightsep.matching import overlapping_cost_matrix
    session = fresh_copy(added_state, added_state.parent / "diag")
    store = session.store
    lines = diagnostics.pair_cost(session, "tiny_a", "tiny_b")
    ra, rb = store.task("tiny_a"), store.task("tiny_b")
    pairs = [(i, int(np.nonzero(rb.page_table == q)[0][0])) for i, q in enumerate(ra.page_table)
             if q < 16 and q in rb.page_table]
    fa, fb = (to_pages(store.load_vector(t, "network_fisher"), 64) for t in ("tiny_a", "tiny_b"))
    wa, wb = (to_pages(store.load_vector(t, "network_weight"), 64) for t in ("tiny_a", "tiny_b"))
    # The pair cost of pages i (of a) and j (of b) is the matching cost of a's page i on a pool
    # page holding b's page j.
    expected = sum(overlapping_cost_matrix(wa[[i]], fa[[i]], wb[[j]], fb[[j]])[0, 0] for i, j in pairs)
    assert lines[0] == f"tiny_a and tiny_b share {len(pairs)} shared pages"
    assert float(lines[1].split(": ")[1].split()[0]) == pytest.approx(expected, rel=1e-9)


def test_layers_diagnostic_lists_every_variable(added_state):
    from weightsep import diagnostics
    session = fresh_copy(added_state, added_state.parent / "diag2")
    lines = diagnostics.layers(session, "tiny_a")
    assert lines[-1] == "total 1724 weights"
    assert "(3, 3, 1, 4)" in lines[1] and lines[1].split()[-1] == "36"


def test_binary_export_round_trips(added_state, tmp_path):
    import json
    from weightsep.export import export_page_tables, export_weights
    store = Store(added_state).load()
    q = 12
    export_weights(store, tmp_path, q)
    export_page_tables(store, tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["q"] == q and manifest["num_shared_pages"] == 16 and manifest["page_size"] == 64
    pool = np.fromfile(tmp_path / "shared_weight_page.bin", "<i2").reshape(16, 64)
    unsaturated = np.abs(store.shared) < 32767 / 2 ** q
    assert np.all(np.abs(pool / 2 ** q - store.shared)[unsaturated] <= 0.5 / 2 ** q + 1e-9)
    exclusive = np.fromfile(tmp_path / "exclusive_weight_page.bin", "<i2")
    assert exclusive.size == store.exclusive.size
    for rec in store.tasks:
        table = np.fromfile(tmp_path / f"{rec.name}_page_table.bin", "<u2")
        np.testing.assert_array_equal(table, rec.page_table)
    big = np.array([200.0, -200.0, 0.25])
    from weightsep.export import quantize
    qz = quantize(big, 8)
    assert qz.saturated == 2 and list(qz.values) == [32767, -32768, 64]


def test_init_merge_writes_the_fisher_weighted_mean(tmp_path, tiny_tasks):
    session = new_session(tmp_path / "s", tiny_tasks, init="merge")
    store = session.store
    a, b = store.task("tiny_a"), store.task("tiny_b")
    fa, fb = (to_pages(store.load_vector(t, "network_fisher"), 64).astype(np.float64) for t in ("tiny_a", "tiny_b"))
    wa, wb = (to_pages(store.load_vector(t, "network_weight"), 64).astype(np.float64) for t in ("tiny_a", "tiny_b"))
    checked = 0
    for j, q in enumerate(b.page_table):
        if q >= 16:
            continue
        on_a = np.nonzero(a.page_table == q)[0]
        num, den = fb[j] * wb[j], fb[j].copy()
        if len(on_a):
            num, den = num + fa[on_a[0]] * wa[on_a[0]], den + fa[on_a[0]]
        expected = np.where(den > 0, num / np.where(den > 0, den, 1), wb[j])
        np.testing.assert_allclose(store.shared[q], expected, rtol=1e-5, atol=1e-7)
        checked += len(on_a)
    assert checked > 0  # some pages really were merged with tiny_a's


def test_target_accuracy_sets_the_tpr_from_the_alpha_loss(tmp_path, tiny_tasks):
    from weightsep import separation
    from weightsep.networks import load_network
    session = new_session(tmp_path / "s", tiny_tasks, target_accuracy=0.5)
    rec = session.store.task("tiny_a")
    net = load_network(load_task(tiny_tasks["tiny_a"]))
    train = session.split("tiny_a", "train")
    expected = separation.target_performance_rate(net.predict(train.x), train.y, 0.5, 0.5)
    assert rec.settings["tpr"] == pytest.approx(expected, rel=1e-6)
    assert expected != 1.0
    sep = separation.separate(session.store.load_vector("tiny_a", "network_fisher"), rec.num_weights, 64, expected,
                              0.6, 16)
    assert rec.exclusive_pages == sep.exclusive_pages.tolist()


def test_loss_diagnostics_report_real_values(added_state, tiny_tasks):
    from weightsep import diagnostics, separation
    from weightsep.networks import load_network
    session = fresh_copy(added_state, added_state.parent / "diag3")
    net = load_network(load_task(tiny_tasks["tiny_b"]))
    train = session.split("tiny_b", "train")
    loss, acc = separation.alpha_loss(net.predict(train.x), train.y, 0.5)
    assert diagnostics.alpha_loss_lines(session, "tiny_b") == [
        f"tiny_b: alpha 0.5 alpha-loss {loss:.6f} alpha-accuracy {acc:.6f}"]
    line = diagnostics.training_loss(session, "tiny_b")[0]
    w = session.store.materialize("tiny_b")
    expected_overlap = overlap_reference(session.store, "tiny_b")(w.astype(np.float64))
    assert float(line.split("overlapping loss ")[1].split()[0]) == pytest.approx(expected_overlap, rel=1e-4, abs=1e-6)
    session.options.target_accuracy = 0.5
    tpr_line = diagnostics.tpr_lines(session, "tiny_b")[1]
    expected_tpr = separation.target_performance_rate(net.predict(train.x), train.y, 0.5, 0.5)
    assert tpr_line.startswith(f"tiny_b: TPR {expected_tpr:.6f} -> ")
    lines = diagnostics.fisher_of_separated(session, "tiny_b")
    assert lines[2] == f"exclusive pages (chosen from the network Fisher): {session.store.task('tiny_b').exclusive_pages}"
