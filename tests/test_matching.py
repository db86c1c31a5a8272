"""Tests of weightsep.matching: overlapping cost, level structure, greedy and optimal matching."""

import itertools

import numpy as np
import pytest

from weightsep import matching
from weightsep.errors import WeightSepError


def reference_cost(w, f, pool, fsum):
    """Cost(p, q) straight from the paper's formula, one element at a time."""
    m, S = w.shape
    P = pool.shape[0]
    cost = np.zeros((m, P))
    for p in range(m):
        for q in range(P):
            for j in range(S):
                if f[p, j] != 0 and fsum[q, j] != 0:
                    cost[p, q] += (f[p, j] + fsum[q, j]) * (w[p, j] - pool[q, j]) ** 2
    return cost


def random_problem(rng, m, P, S, zero_frac=0.3, empty_pages=0):
    """Task pages and a pool with some zero Fisher elements and some empty shared pages."""
    w = rng.normal(size=(m, S)).astype(np.float32)
    f = rng.random((m, S)) * (rng.random((m, S)) > zero_frac)
    pool = rng.normal(scale=0.5, size=(P, S)).astype(np.float32)
    fsum = rng.random((P, S)) * 3 * (rng.random((P, S)) > zero_frac)
    fsum[rng.permutation(P)[:empty_pages]] = 0
    return w, f.astype(np.float32), pool, fsum.astype(np.float32)


def expected_levels(page_fisher, counts):
    """The occupant count of the level each task page must land on, worked out directly."""
    rank = sorted(range(len(page_fisher)), key=lambda p: (-page_fisher[p], p))
    slots = sorted(counts)  # one slot per shared page, least occupied first
    level = np.empty(len(page_fisher), dtype=int)
    for i, p in enumerate(rank):
        level[p] = slots[i]
    return level


def brute_force_total(cost, page_fisher, counts):
    """Minimum total cost over all injective assignments that respect the level structure."""
    m, P = cost.shape
    level = expected_levels(page_fisher, counts)
    best = np.inf
    for assign in itertools.permutations(range(P), m):
        if all(counts[q] == level[p] for p, q in enumerate(assign)):
            best = min(best, sum(cost[p, q] for p, q in enumerate(assign)))
    return best


# --- cost matrix ----------------------------------------------------------------------

def test_cost_by_hand():
    # Task page w=[1, 2], F=[1, 0]: element 1 never counts (F_t = 0).
    # q0: pool [0, 0], F_sum [1, 1]: (1 + 1) * (1 - 0)^2 = 2.
    # q1: pool [0, 0], F_sum [0, 5]: element 0 masked by F_sum = 0 -> 0.
    # q2: empty page (F_sum = 0) -> 0.
    # q3: pool [3, 0], F_sum [0.5, 0]: (1 + .5) * (1 - 3)^2 = 6.
    w = np.array([[1.0, 2.0]])
    f = np.array([[1.0, 0.0]])
    pool = np.array([[0, 0], [0, 0], [9, 9], [3, 0]], np.float64)
    fsum = np.array([[1, 1], [0, 5], [0, 0], [0.5, 0]], np.float64)
    np.testing.assert_allclose(matching.overlapping_cost_matrix(w, f, pool, fsum), [[2.0, 0.0, 0.0, 6.0]])


@pytest.mark.parametrize("seed", range(5))
def test_cost_matrix_matches_triple_loop(seed):
    rng = np.random.default_rng(seed)
    w, f, pool, fsum = random_problem(rng, m=7, P=9, S=16, empty_pages=2)
    got = matching.overlapping_cost_matrix(w, f, pool, fsum)
    ref = reference_cost(w.astype(np.float64), f.astype(np.float64), pool.astype(np.float64), fsum.astype(np.float64))
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    # Empty shared pages cost exactly 0, not merely about 0.
    empty = np.flatnonzero(~fsum.any(axis=1))
    assert np.all(got[:, empty] == 0)


def test_cost_matrix_blocks_give_the_same_result(monkeypatch):
    rng = np.random.default_rng(11)
    w, f, pool, fsum = random_problem(rng, m=10, P=13, S=8)
    whole = matching.overlapping_cost_matrix(w, f, pool, fsum)
    monkeypatch.setattr(matching, "_BLOCK_ELEMENTS", 6 * 8 * 3)  # blocks of 3 pages
    np.testing.assert_allclose(matching.overlapping_cost_matrix(w, f, pool, fsum), whole, rtol=1e-12, atol=1e-14)


def test_cost_matrix_rejects_bad_shapes():
    z = np.zeros((2, 4))
    with pytest.raises(WeightSepError, match="page_size"):
        matching.overlapping_cost_matrix(z, z, np.zeros((3, 5)), np.zeros((3, 5)))
    with pytest.raises(WeightSepError, match="pool Fisher sums"):
        matching.overlapping_cost_matrix(z, z, np.zeros((3, 4)), np.zeros((2, 4)))
    with pytest.raises(WeightSepError, match="non-negative"):
        matching.overlapping_cost_matrix(z, -np.ones((2, 4)), np.zeros((3, 4)), np.zeros((3, 4)))


# --- level structure ------------------------------------------------------------------

def test_level_plan_by_hand():
    # Counts [1, 0, 2, 0]: level 0 = shared {1, 3}, level 1 = {0}, level 2 = {2}.
    # Page Fisher [1, 5, 3] ranks task pages 1, 2, 0: pages 1 and 2 fill level 0, page 0 goes to level 1.
    plan = matching.level_plan([1.0, 5.0, 3.0], [1, 0, 2, 0])
    assert [(t.tolist(), s.tolist()) for t, s in plan] == [([1, 2], [1, 3]), ([0], [0])]


def test_greedy_and_optimal_by_hand():
    # One level of two shared pages. Page 0 (Fisher 5) goes first in greedy and takes its
    # cheapest page q0 (1), leaving q1 (10) to page 1: total 11. Optimal: 2 + 0 = 2.
    cost = np.array([[1.0, 2.0], [0.0, 10.0]])
    greedy = matching.assign_by_level(cost, [5.0, 1.0], [0, 0], "greedy")
    optimal = matching.assign_by_level(cost, [5.0, 1.0], [0, 0], "optimal")
    np.testing.assert_array_equal(greedy, [0, 1])
    np.testing.assert_array_equal(optimal, [1, 0])


def test_greedy_ties_take_lowest_index():
    cost = np.array([[3.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    # Page 1 (Fisher 2) first: all costs 1 -> q0. Page 0: q1..q3 all cost 1 -> q1.
    np.testing.assert_array_equal(matching.assign_by_level(cost, [1.0, 2.0], [0, 0, 0, 0]), [1, 0])


@pytest.mark.parametrize("method", matching.METHODS)
def test_first_task_maps_to_first_pages(method):
    rng = np.random.default_rng(3)
    m, P, S = 9, 12, 8
    w, f, _, _ = random_problem(rng, m, P, S)
    pool = rng.normal(scale=0.01, size=(P, S)).astype(np.float32)  # the fresh N(0, 0.01) pool
    res = matching.match_pages(w, f, pool, np.zeros((P, S), np.float32), np.zeros(P, int), method)
    np.testing.assert_array_equal(res.assignment, np.arange(m))
    assert res.total_cost == 0.0


@pytest.mark.parametrize("method", matching.METHODS)
def test_top_pages_fill_the_empty_tail_of_the_pool_in_order(method):
    # Like the second task of the paper's run: 5 shared pages hold one occupant, 3 are empty.
    # The 3 highest-Fisher task pages (2, 4, 0) take the empty pages 5, 6, 7 in task page order.
    rng = np.random.default_rng(4)
    P, S = 8, 4
    w = rng.normal(size=(5, S))
    f = np.outer([3.0, 1.0, 9.0, 0.5, 4.0], np.ones(S))
    pool = rng.normal(size=(P, S))
    fsum = np.ones((P, S))
    fsum[5:] = 0
    counts = np.array([1, 1, 1, 1, 1, 0, 0, 0])
    res = matching.match_pages(w, f, pool, fsum, counts, method)
    np.testing.assert_array_equal(res.assignment[[0, 2, 4]], [5, 6, 7])
    assert set(res.assignment[[1, 3]]) <= {0, 1, 2, 3, 4}


# --- optimal vs brute force and greedy ------------------------------------------------

@pytest.mark.parametrize("seed", range(40))
def test_optimal_equals_brute_force(seed):
    rng = np.random.default_rng(1000 + seed)
    P = int(rng.integers(1, 7))
    m = int(rng.integers(1, P + 1))
    counts = rng.integers(0, 3, size=P)
    if seed % 4 == 0:
        cost = rng.integers(0, 3, size=(m, P)).astype(float)  # many ties
        page_fisher = rng.integers(0, 3, size=m).astype(float)
    else:
        cost = rng.random((m, P))
        page_fisher = rng.random(m)
    got = matching.assign_by_level(cost, page_fisher, counts, "optimal")
    assert cost[np.arange(m), got].sum() == pytest.approx(brute_force_total(cost, page_fisher, counts), abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_match_pages_optimal_equals_brute_force(seed):
    rng = np.random.default_rng(2000 + seed)
    P, m, S = 6, 4, 5
    w, f, pool, fsum = random_problem(rng, m, P, S, empty_pages=seed % 3)
    counts = np.where(fsum.any(axis=1), rng.integers(1, 3, size=P), 0)
    res = matching.match_pages(w, f, pool, fsum, counts, "optimal")
    cost = reference_cost(w.astype(float), f.astype(float), pool.astype(float), fsum.astype(float))
    assert res.total_cost == pytest.approx(brute_force_total(cost, f.astype(float).sum(axis=1), counts), rel=1e-9)
    np.testing.assert_allclose(res.page_costs, cost[np.arange(m), res.assignment], rtol=1e-9, atol=1e-12)


def test_random_cases_optimal_never_worse_and_structure_holds():
    rng = np.random.default_rng(12345)
    for _ in range(200):
        P = int(rng.integers(1, 40))
        m = int(rng.integers(0, P + 1))
        S = int(rng.integers(1, 12))
        empty = int(rng.integers(0, P + 1))
        w, f, pool, fsum = random_problem(rng, m, P, S, zero_frac=rng.random() * 0.6, empty_pages=empty)
        counts = np.where(fsum.any(axis=1), rng.integers(1, 4, size=P), 0)
        level = expected_levels(f.astype(np.float64).sum(axis=1), counts)
        results = {method: matching.match_pages(w, f, pool, fsum, counts, method) for method in matching.METHODS}
        assert results["optimal"].total_cost <= results["greedy"].total_cost + 1e-9
        for res in results.values():
            assert res.assignment.shape == (m,)
            assert len(set(res.assignment.tolist())) == m  # no shared page used twice
            assert np.all((res.assignment >= 0) & (res.assignment < P))
            np.testing.assert_array_equal(counts[res.assignment], level)  # least-occupied levels first
            assert res.total_cost == pytest.approx(res.page_costs.sum())


def test_realistic_size_runs_and_respects_levels():
    # A task of 125 sharable pages against a pool of 128 pages of 512 (the paper's sizes).
    rng = np.random.default_rng(9)
    m, P, S = 125, 128, 512
    w, f, pool, fsum = random_problem(rng, m, P, S)
    counts = rng.integers(1, 4, size=P)
    greedy = matching.match_pages(w, f, pool, fsum, counts, "greedy")
    optimal = matching.match_pages(w, f, pool, fsum, counts, "optimal")
    assert optimal.total_cost <= greedy.total_cost + 1e-9
    level = expected_levels(f.astype(np.float64).sum(axis=1), counts)
    np.testing.assert_array_equal(counts[greedy.assignment], level)
    np.testing.assert_array_equal(counts[optimal.assignment], level)


# --- errors ---------------------------------------------------------------------------

def test_more_task_pages_than_pool_rejected():
    z = np.zeros((3, 4))
    with pytest.raises(WeightSepError, match="3 sharable pages but the shared pool has only 2"):
        matching.match_pages(z, z, np.zeros((2, 4)), np.zeros((2, 4)), np.zeros(2, int))


def test_unknown_method_rejected():
    with pytest.raises(WeightSepError, match="-matching"):
        matching.assign_by_level(np.zeros((1, 2)), [1.0], [0, 0], "hungarian")


def test_bad_occupancy_rejected():
    with pytest.raises(WeightSepError, match="occupancy"):
        matching.assign_by_level(np.zeros((1, 2)), [1.0], [0, 0, 0], "greedy")
    with pytest.raises(WeightSepError, match="non-negative"):
        matching.assign_by_level(np.zeros((1, 2)), [1.0], [0, -1], "greedy")
