"""Tests of weightsep.matching against a plain transcription of the original's PageAlloc level loop.

The reference below is written from the original's CUDA op (PageFisherSumKernel,
BitonicSort, PageAlloc) and Python driver (match_page_by_cost) as slow, obvious
loops over positions; the library must give exactly its assignment.
"""

import itertools
import math

import numpy as np
import pytest

from weightsep import matching
from weightsep.errors import WeightSepError


# --- the reference: the original, one position at a time ------------------------------

def ref_page_sum(page):
    """PageFisherSumKernel: a float32 accumulator, element after element."""
    total = np.float32(0)
    for x in page:
        total = np.float32(total + np.float32(x))
    return total


def ref_bitonic(values, indices, page_size):
    """BitonicSort on lists padded to a power of two, the three loops of the CUDA code."""
    n = len(values)
    size = 1 << int(math.ceil(math.log2(n)))
    v = [np.float32(-page_size - 1.0)] * size
    ix = [0] * size
    v[:n], ix[:n] = list(values), list(indices)
    k = 2
    while k <= size:
        j = k >> 1
        while j > 0:
            for i in range(size):  # one GPU thread each; the pairs of one step are disjoint
                ixj = i ^ j
                if ixj > i:
                    if (i & k) == 0 and v[i] < v[ixj] or (i & k) != 0 and v[i] > v[ixj]:
                        v[i], v[ixj] = v[ixj], v[i]
                        ix[i], ix[ixj] = ix[ixj], ix[i]
            j >>= 1
        k <<= 1
    return v[:n], ix[:n]


def ref_pair_cost(f1, w1, f2, w2):
    """SharingCost in float64: only elements where both Fisher values are positive count."""
    terms = [(float(a) + float(b)) * (float(x) - float(y)) ** 2 if a > 0 and b > 0 else 0.0
             for a, x, b, y in zip(f1, w1, f2, w2)]
    return np.sum(np.array(terms, dtype=np.float64))


def ref_page_alloc(f1, w1, list1, f2, w2, list2, page_size, cost):
    """PageAlloc: list 1 = pool pages of one level, list 2 = the task's remaining pages."""
    s1, l1 = ref_bitonic([ref_page_sum(f1[p]) for p in list1], list1, page_size)
    s2, l2 = ref_bitonic([ref_page_sum(f2[p]) for p in list2], list2, page_size)
    len1, len2 = len(l1), len(l2)
    if len1 < len2:
        for i in range(len2 - 1, len1 - 1, -1):
            l2[i] = -1
    elif len1 > len2:
        for i in range(len1 - len2):
            l1[i] = -1
    pos1 = pos2 = 0
    pairs, total = [], 0.0
    for _ in range(min(len1, len2)):
        while l1[pos1] < 0:
            pos1 += 1
        while l2[pos2] < 0:
            pos2 += 1
        best, best_i = math.inf, -1
        if s1[pos1] > s2[pos2]:
            for i in range(len2):
                if l2[i] >= 0 and cost(l1[pos1], l2[i]) < best:
                    best, best_i = cost(l1[pos1], l2[i]), i
            pairs.append((l1[pos1], l2[best_i]))
            l1[pos1] = l2[best_i] = -1
        else:
            for i in range(len1):
                if l1[i] >= 0 and cost(l1[i], l2[pos2]) < best:
                    best, best_i = cost(l1[i], l2[pos2]), i
            pairs.append((l1[best_i], l2[pos2]))
            l1[best_i] = l2[pos2] = -1
        total += best
    return pairs, total


def ref_match_page_by_cost(fsum, pool, counts, net_f, net_w, sharable):
    """match_page_by_cost: one PageAlloc per occupation level, then the set difference."""
    page_size = pool.shape[1]
    memo = {}

    def cost(q, p):
        if (q, p) not in memo:
            memo[q, p] = ref_pair_cost(fsum[q], pool[q], net_f[p], net_w[p])
        return memo[q, p]

    network_page_list = [np.int32(p) for p in sharable]  # the original's element type
    placed, total = {}, 0.0
    for occupation in range(int(np.max(counts)) + 1):
        page_list = list(np.where(counts == occupation)[0])
        if len(page_list) <= 0:
            continue
        pairs, level_cost = ref_page_alloc(fsum, pool, page_list, net_f, net_w, network_page_list,
                                           page_size, cost)
        total += level_cost
        placed.update({int(p): int(q) for q, p in pairs})
        network_page_list = list(set(network_page_list) - set(p for _, p in pairs))
        if not network_page_list:
            break
    return np.array([placed[int(p)] for p in sharable]), total


# --- random cases ---------------------------------------------------------------------

def random_case(rng):
    """A task network (some exclusive pages) and a pool with levels, rich in ties and zeros."""
    P = int(rng.integers(1, 41))
    S = int(rng.integers(4, 17))
    n_p = int(rng.integers(max(1, P // 2), P + 1)) + int(rng.integers(0, 4))
    exclusive = rng.permutation(n_p)[: max(0, n_p - int(rng.integers(1, min(n_p, P) + 1)))]
    sharable = np.setdiff1d(np.arange(n_p), exclusive)
    levels = rng.choice([0, 1, 2, 4, 5], size=int(rng.integers(1, 4)), replace=False)  # 3 always empty
    counts = rng.choice(levels, size=P)
    quantized = rng.random() < 0.5
    if quantized:  # small grids: many exact ties of page sums and of costs
        net_f = rng.integers(0, 3, size=(n_p, S)) * 0.5
        net_w = rng.integers(-1, 2, size=(n_p, S)).astype(np.float64)
        fsum = rng.integers(0, 4, size=(P, S)) * 0.5
        pool = rng.integers(-1, 2, size=(P, S)).astype(np.float64)
    else:
        net_f = rng.random((n_p, S)) * (rng.random((n_p, S)) > 0.3)
        net_w = rng.normal(size=(n_p, S))
        fsum = rng.random((P, S)) * 3 * (rng.random((P, S)) > 0.3)
        pool = rng.normal(scale=0.5, size=(P, S))
    fsum[counts == 0] = 0  # an empty shared page has no Fisher
    net_f[rng.random(n_p) < 0.15] = 0  # all-zero Fisher task pages
    fsum[rng.random(P) < 0.15] = 0
    for _ in range(int(rng.integers(0, 3))):  # duplicate task pages
        a, b = rng.integers(0, n_p, size=2)
        net_f[b], net_w[b] = net_f[a], net_w[a]
    for _ in range(int(rng.integers(0, 3))):  # duplicate shared pages (of the same level)
        a, b = rng.integers(0, P, size=2)
        fsum[b], pool[b], counts[b] = fsum[a], pool[a], counts[a]
    if rng.random() < 0.3:  # page sums equal in float32 only: 1 + 1e-8 rounds to 1
        rows = rng.integers(0, n_p, size=2)
        net_f[rows] = 0
        net_f[rows, 0] = 1.0
        net_f[rows[0], 1] = 1e-8
    return [a.astype(np.float32) for a in (fsum, pool, net_f, net_w)] + [counts, sharable]


def check_against_reference(fsum, pool, net_f, net_w, counts, sharable):
    expected, expected_total = ref_match_page_by_cost(fsum, pool, counts, net_f, net_w, sharable)
    got = matching.match_pages(net_w[sharable], net_f[sharable], pool, fsum, counts, "greedy", sharable)
    np.testing.assert_array_equal(got.assignment, expected)
    assert got.total_cost == pytest.approx(expected_total, rel=1e-9, abs=1e-12)
    return got


def test_greedy_is_the_original_page_alloc_on_random_cases():
    rng = np.random.default_rng(20220321)
    for _ in range(300):
        check_against_reference(*random_case(rng))


def test_reference_cases_cover_the_branches():
    # The random cases above must exercise what the brief lists, not only in principle.
    rng = np.random.default_rng(20220321)
    seen = dict(task_waits=0, level_left_over=0, several_levels=0, empty_level=0, float32_tie=0)
    for _ in range(300):
        fsum, pool, net_f, net_w, counts, sharable = random_case(rng)
        m, levels = len(sharable), np.unique(counts)
        first = int(np.sum(counts == levels[0]))
        seen["task_waits"] += m > first
        seen["level_left_over"] += m < first
        seen["several_levels"] += m > first and len(levels) > 1
        seen["empty_level"] += 3 < levels.max() and m > int(np.sum(counts < 3))
        sums = matching.page_fisher_sums(net_f)
        seen["float32_tie"] += len(set(sums.tolist())) < len(set(net_f.astype(np.float64).sum(axis=1).tolist()))
    assert all(v >= 10 for v in seen.values()), seen


def test_float32_only_tie_is_decided_by_the_bitonic_network():
    # Task pages 0 and 1 have float64 sums 1 and 1 + 1e-8, equal in float32. One free shared page:
    # a float64 ranking would send page 1 there; the original's float32 sums tie, the bitonic
    # network leaves them in order, and page 0 gets the free page.
    S = 4
    net_f = np.zeros((2, S), np.float32)
    net_f[:, 0] = 1.0
    net_f[1, 1] = 1e-8
    net_w = np.ones((2, S), np.float32)
    assert matching.page_fisher_sums(net_f)[0] == matching.page_fisher_sums(net_f)[1]
    fsum = np.ones((3, S), np.float32)
    fsum[2] = 0
    pool = np.zeros((3, S), np.float32)
    counts = np.array([1, 1, 0])
    got = check_against_reference(fsum, pool, net_f, net_w, counts, np.arange(2))
    assert got.assignment[0] == 2


# --- pieces of PageAlloc --------------------------------------------------------------

def test_page_sums_accumulate_in_float32_in_order():
    rng = np.random.default_rng(1)
    f = rng.random((30, 13)).astype(np.float32) * rng.choice([1e-6, 1.0, 1e4], size=(30, 13)).astype(np.float32)
    got = matching.page_fisher_sums(f)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [ref_page_sum(row) for row in f])
    # 1 + 1e-8 + 1e-8 stays 1 when added in order in float32 (a float64 sum would not).
    assert matching.page_fisher_sums(np.array([[1.0, 1e-8, 1e-8]]))[0] == np.float32(1.0)


@pytest.mark.parametrize("seed", range(6))
def test_bitonic_order_is_the_networks_order(seed):
    rng = np.random.default_rng(seed)
    for n in list(range(1, 20)) + [31, 32, 33, 64, 100]:
        values = rng.integers(0, 4, size=n).astype(np.float32)  # mostly ties
        if seed % 2:
            values = rng.random(n).astype(np.float32)
        _, expected = ref_bitonic(values.tolist(), list(range(n)), page_size=8)
        got = matching.bitonic_order(values, page_size=8)
        np.testing.assert_array_equal(got, expected)
        assert np.all(np.diff(values[got]) <= 0)  # descending


def test_bitonic_order_on_ties_is_not_stable():
    # Four equal values: the network leaves them in order; with a larger value last it moves ties.
    np.testing.assert_array_equal(matching.bitonic_order([1, 1, 1, 1], 4), [0, 1, 2, 3])
    np.testing.assert_array_equal(matching.bitonic_order([1, 1, 1, 2], 4), [3, 0, 2, 1])


def test_page_alloc_by_hand():
    # One level of three shared pages (F_sum sums 3, 1, 2) and two task pages (sums 1 and 0.5).
    # The level has more pages than the task: q0 (highest sum) is left out; active q2 (2), q1 (1).
    # Step 1: q2's sum 2 > p0's 1, so q2 takes its cheapest task page: p1 (2.5 * 9 = 22.5 < 3 * 16).
    # Step 2: q1's sum 1 is not > p0's 1, so p0 takes its cheapest remaining shared page q1 (2 * 1).
    # optimal uses all three pages: p0 -> q0 (4 * 1) and p1 -> q1 (1.5 * 4): 10.
    fsum = np.array([[3, 0], [1, 0], [2, 0]], np.float32)
    pool = np.array([[0, 0], [0, 0], [5, 0]], np.float32)
    f = np.array([[1, 0], [0.5, 0]], np.float32)
    w = np.array([[1, 0], [2, 0]], np.float32)
    greedy = matching.match_pages(w, f, pool, fsum, [0, 0, 0], "greedy")
    np.testing.assert_array_equal(greedy.assignment, [1, 2])
    np.testing.assert_array_equal(greedy.page_costs, [2.0, 22.5])
    assert greedy.total_cost == 24.5
    optimal = matching.match_pages(w, f, pool, fsum, [0, 0, 0], "optimal")
    np.testing.assert_array_equal(optimal.assignment, [0, 1])
    assert optimal.total_cost == 10.0


def test_task_pages_wait_for_the_next_level_by_hand():
    # Level 0 = {q1}, level 1 = {q0}, level 3 = {q2}, level 2 empty. Task page sums 1, 3, 2: page 1
    # (highest) takes q1, pages 2 then 0 go to level 1, where only q0 is: page 2; page 0 waits for q2.
    f = np.array([[1, 0], [3, 0], [2, 0]], np.float32)
    w = np.zeros((3, 2), np.float32)
    fsum = np.ones((3, 2), np.float32)
    fsum[1] = 0
    for method in matching.METHODS:
        res = matching.match_pages(w, f, np.zeros((3, 2), np.float32), fsum, [1, 0, 3], method)
        np.testing.assert_array_equal(res.assignment, [2, 1, 0])


def test_empty_pool_lands_on_the_last_pages():
    # No rule maps a first task onto pages 0..m-1 (the caller does that, as the original): on an
    # all-zero pool every sum and cost ties, the network keeps the order and the first P - m pages
    # are left out.
    P, m, S = 10, 6, 4
    res = matching.match_pages(np.ones((m, S)), np.zeros((m, S)), np.zeros((P, S)), np.zeros((P, S)),
                               np.zeros(P, int))
    np.testing.assert_array_equal(res.assignment, np.arange(P - m, P))
    assert res.total_cost == 0.0


def test_no_sharable_page():
    res = matching.match_pages(np.zeros((0, 4)), np.zeros((0, 4)), np.zeros((3, 4)), np.zeros((3, 4)), [0, 1, 0])
    assert res.assignment.shape == (0,) and res.total_cost == 0.0


# --- costs ----------------------------------------------------------------------------

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
    np.testing.assert_array_equal(matching.overlapping_cost_matrix(w, f, pool, fsum), [[2.0, 0.0, 0.0, 6.0]])


@pytest.mark.parametrize("seed", range(4))
def test_cost_matrix_matches_the_pair_reference(seed):
    rng = np.random.default_rng(seed)
    fsum, pool, net_f, net_w, _, _ = random_case(rng)
    got = matching.overlapping_cost_matrix(net_w, net_f, pool, fsum)
    ref = [[ref_pair_cost(fp, wp, fq, wq) for fq, wq in zip(fsum, pool)] for fp, wp in zip(net_f, net_w)]
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0)
    assert np.all(got[:, ~fsum.any(axis=1)] == 0)  # empty shared pages cost exactly 0
    assert np.all(got >= 0)


def test_costs_are_bit_identical_across_blocks_and_duplicates(monkeypatch):
    rng = np.random.default_rng(11)
    S = 24
    w, f = rng.normal(size=(10, S)), rng.random((10, S))
    pool, fsum = rng.normal(size=(13, S)), rng.random((13, S))
    pool[7], fsum[7] = pool[2], fsum[2]
    w[4], f[4] = w[1], f[1]
    whole = matching.overlapping_cost_matrix(w, f, pool, fsum)
    np.testing.assert_array_equal(whole[:, 7], whole[:, 2])
    np.testing.assert_array_equal(whole[4], whole[1])
    for block in (S, 3 * S, 5 * S):  # one pair, three pairs, a ragged split
        monkeypatch.setattr(matching, "_BLOCK_ELEMENTS", block)
        np.testing.assert_array_equal(matching.overlapping_cost_matrix(w, f, pool, fsum), whole)
    # The same page on itself costs exactly 0, not rounding noise.
    assert np.all(matching.overlapping_cost_matrix(pool, fsum, pool, fsum).diagonal() == 0)


# --- optimal --------------------------------------------------------------------------

def test_optimal_never_worse_and_same_levels_on_random_cases():
    rng = np.random.default_rng(777)
    for _ in range(150):
        fsum, pool, net_f, net_w, counts, sharable = random_case(rng)
        args = (net_w[sharable], net_f[sharable], pool, fsum, counts)
        greedy = matching.match_pages(*args, "greedy", sharable)
        optimal = matching.match_pages(*args, "optimal", sharable)
        assert optimal.total_cost <= greedy.total_cost * (1 + 1e-12) + 1e-12
        for res in (greedy, optimal):
            assert len(set(res.assignment.tolist())) == len(sharable)  # distinct shared pages
            assert res.total_cost == pytest.approx(float(np.sum(res.page_costs)))
        np.testing.assert_array_equal(counts[optimal.assignment], counts[greedy.assignment])


@pytest.mark.parametrize("seed", range(10))
def test_optimal_is_the_best_with_the_same_levels(seed):
    rng = np.random.default_rng(3000 + seed)
    P, S = 6, 4
    m = int(rng.integers(1, P + 1))
    counts = rng.integers(0, 2, size=P)
    f, w = rng.random((m, S)).astype(np.float32), rng.normal(size=(m, S)).astype(np.float32)
    fsum, pool = rng.random((P, S)).astype(np.float32), rng.normal(size=(P, S)).astype(np.float32)
    greedy = matching.match_pages(w, f, pool, fsum, counts, "greedy")
    optimal = matching.match_pages(w, f, pool, fsum, counts, "optimal")
    level = counts[greedy.assignment]
    cost = [[ref_pair_cost(fp, wp, fq, wq) for fq, wq in zip(fsum, pool)] for fp, wp in zip(f, w)]
    best = min(sum(cost[p][q] for p, q in enumerate(assign))
               for assign in itertools.permutations(range(P), m)
               if all(counts[q] == level[p] for p, q in enumerate(assign)))
    assert optimal.total_cost == pytest.approx(best, rel=1e-9)


def test_realistic_size():
    # The paper's sizes: 127 sharable pages against 128 shared pages of 512, levels 0..9.
    rng = np.random.default_rng(9)
    m, P, S = 127, 128, 512
    counts = rng.integers(0, 10, size=P)
    f, w = rng.random((m, S)).astype(np.float32), rng.normal(size=(m, S)).astype(np.float32)
    fsum = (rng.random((P, S)) * counts[:, None]).astype(np.float32)
    pool = rng.normal(size=(P, S)).astype(np.float32)
    greedy = matching.match_pages(w, f, pool, fsum, counts, "greedy")
    optimal = matching.match_pages(w, f, pool, fsum, counts, "optimal")
    assert optimal.total_cost <= greedy.total_cost
    np.testing.assert_array_equal(counts[optimal.assignment], counts[greedy.assignment])
    full = matching.overlapping_cost_matrix(w, f, pool, fsum)
    np.testing.assert_array_equal(greedy.page_costs, full[np.arange(m), greedy.assignment])


# --- large levels: BLAS costs with a proven bound, the sparse optimal ------------------

def test_expanded_costs_lie_within_their_bound():
    rng = np.random.default_rng(41)
    for dtype in (np.float32, np.float64):
        for _ in range(20):
            fsum, pool, net_f, net_w, _, _ = random_case(rng)
            fsum, pool, net_f, net_w = (a.astype(dtype) for a in (fsum, pool, net_f, net_w))
            rows_a, rows_b = np.arange(net_f.shape[0]), np.arange(fsum.shape[0])
            approx, bound = matching._expanded_costs(net_f, net_w, rows_a, fsum, pool, rows_b)
            exact = matching.overlapping_cost_matrix(net_w, net_f, pool, fsum)
            assert np.all(np.abs(approx - exact) <= bound)
            if dtype is np.float32:  # a zero bound claims an exact zero
                assert np.all(exact[bound == 0] == 0) and np.all(approx[bound == 0] == 0)
            else:
                assert np.all(bound > 0)
            assert np.all(bound <= 1e-9 * np.abs(exact).max() + 1e-44)


def test_greedy_from_bounded_costs_is_the_original_page_alloc(monkeypatch):
    # Every level through the BLAS costs: the same placements as the pair by pair reference.
    monkeypatch.setattr(matching, "PAIRWISE_MAX_PAIRS", 0)
    rng = np.random.default_rng(20201)
    for _ in range(200):
        check_against_reference(*random_case(rng))


def near_tie_case(k, S, seed):
    """A level of k pages where pair costs differ by a few ulps: pages that are copies of each
    other except for one element nudged by one float32 step."""
    rng = np.random.default_rng(seed)
    base_f, base_w = rng.random(S).astype(np.float32), rng.normal(size=S).astype(np.float32)
    f = np.tile(base_f, (k, 1))
    w = np.tile(base_w, (k, 1))
    w[:, 0] = np.where(rng.random(k) < 0.5, np.nextafter(w[:, 0], np.float32(np.inf)), w[:, 0])
    g = rng.random((k, S)).astype(np.float32)
    g[rng.random(k) < 0.3] = g[0]
    u = (base_w + rng.normal(scale=1e-3, size=(k, S))).astype(np.float32)
    u[rng.random(k) < 0.3] = u[0]
    return w, f, u, g, np.ones(k, np.int64)


@pytest.mark.parametrize("seed", range(3))
def test_greedy_on_a_large_level_is_the_same_either_way(monkeypatch, seed):
    w, f, u, g, counts = near_tie_case(300, 64, seed)
    bounded = matching.match_pages(w, f, u, g, counts, "greedy")  # 90,000 pairs: BLAS costs
    monkeypatch.setattr(matching, "PAIRWISE_MAX_PAIRS", 10 ** 9)
    pairwise = matching.match_pages(w, f, u, g, counts, "greedy")
    np.testing.assert_array_equal(bounded.assignment, pairwise.assignment)
    np.testing.assert_array_equal(bounded.page_costs, pairwise.page_costs)


def test_optimal_on_bounded_costs_is_exact(monkeypatch):
    rng = np.random.default_rng(52)
    for _ in range(60):
        fsum, pool, net_f, net_w, counts, sharable = random_case(rng)
        args = (net_w[sharable], net_f[sharable], pool, fsum, counts, "optimal", sharable)
        pairwise = matching.match_pages(*args)
        monkeypatch.setattr(matching, "PAIRWISE_MAX_PAIRS", 0)
        bounded = matching.match_pages(*args)
        monkeypatch.setattr(matching, "PAIRWISE_MAX_PAIRS", 1 << 16)
        assert bounded.total_cost == pytest.approx(pairwise.total_cost, rel=1e-9, abs=1e-12)


def test_sparse_optimal_lies_between_exact_and_greedy(monkeypatch):
    rng = np.random.default_rng(63)
    for candidates in (1, 3, 1000):
        for _ in range(60):
            fsum, pool, net_f, net_w, counts, sharable = random_case(rng)
            args = (net_w[sharable], net_f[sharable], pool, fsum, counts)
            greedy = matching.match_pages(*args, "greedy", sharable)
            exact = matching.match_pages(*args, "optimal", sharable)
            monkeypatch.setattr(matching, "OPTIMAL_EXACT_MAX_PAIRS", 0)
            monkeypatch.setattr(matching, "PAIRWISE_MAX_PAIRS", 0)
            monkeypatch.setattr(matching, "OPTIMAL_CANDIDATES", candidates)
            approx = matching.match_pages(*args, "optimal", sharable)
            monkeypatch.undo()
            assert exact.total_cost * (1 - 1e-9) - 1e-12 <= approx.total_cost
            assert approx.total_cost <= greedy.total_cost * (1 + 1e-9) + 1e-12
            if candidates >= pool.shape[0]:  # every pair allowed: the exact optimum
                assert approx.total_cost == pytest.approx(exact.total_cost, rel=1e-9, abs=1e-12)
            np.testing.assert_array_equal(counts[approx.assignment], counts[greedy.assignment])
            assert len(set(approx.assignment.tolist())) == len(sharable)
            full = matching.overlapping_cost_matrix(*args[:4])
            np.testing.assert_array_equal(approx.page_costs, full[np.arange(len(sharable)), approx.assignment])


# --- network cost ---------------------------------------------------------------------

def test_network_cost_by_hand():
    # P = 2, S = 2. Shared page 0 holds A's page 0, B's page 1 and C's page 0; page 1 is empty.
    # A-B: A F [1, 0] w [1, 2], B F [2, 1] w [3, 7]: (1 + 2) * (1 - 3)^2 = 12 (element 1: F_A = 0).
    # A-C: C F [.5, 1] w [0, 0]: 1.5 * 1 = 1.5.   B-C: 2.5 * 9 + 2 * 49 = 120.5.   Total 134.
    tables = [np.array([0, 2]), np.array([3, 0]), np.array([0])]
    fishers = [np.array([1, 0, 5], np.float32), np.array([0, 0, 2, 1], np.float32), np.array([0.5, 1], np.float32)]
    weights = [np.array([1, 2, 9], np.float32), np.array([0, 0, 3, 7], np.float32), np.array([0, 0], np.float32)]
    assert matching.network_cost(tables, fishers, weights, 2, 2) == 134.0
    assert matching.network_cost(tables[:2], fishers[:2], weights[:2], 2, 2) == 12.0
    assert matching.network_cost(tables[:1], fishers[:1], weights[:1], 2, 2) == 0.0


def brute_network_cost(tables, fishers, weights, P, S):
    """The original's calculate_network_cost: page-order vectors over the whole pool, aligned by table."""
    def page_order(vector, table):
        out = np.zeros(P * S)
        padded = np.concatenate([vector, np.zeros(-len(vector) % S)]).astype(np.float64)
        for page, entry in enumerate(table):
            if entry < P:
                out[entry * S:(entry + 1) * S] = padded[page * S:(page + 1) * S]
        return out

    total = 0.0
    for i, j in itertools.combinations(range(len(tables)), 2):
        f1, w1 = page_order(fishers[i], tables[i]), page_order(weights[i], tables[i])
        f2, w2 = page_order(fishers[j], tables[j]), page_order(weights[j], tables[j])
        f2[f1 <= 0] = 0
        f1[f2 <= 0] = 0
        total += np.sum((f1 + f2) * (w1 - w2) ** 2)
    return total


@pytest.mark.parametrize("seed", range(8))
def test_network_cost_matches_brute_force(seed):
    rng = np.random.default_rng(500 + seed)
    P, S = 12, int(rng.integers(2, 9))
    tables, fishers, weights = [], [], []
    for _ in range(int(rng.integers(2, 5))):
        n = int(rng.integers(1, 8 * S))
        n_p = -(-n // S)
        table = rng.permutation(P)[:n_p]  # n_p <= 8 <= P
        exclusive = rng.random(n_p) < 0.3
        table[exclusive] = P + rng.permutation(20)[: int(exclusive.sum())]
        tables.append(table)
        fishers.append((rng.random(n) * (rng.random(n) > 0.3)).astype(np.float32))
        weights.append(rng.normal(size=n).astype(np.float32))
    got = matching.network_cost(tables, fishers, weights, P, S)
    assert got == pytest.approx(brute_network_cost(tables, fishers, weights, P, S), rel=1e-9, abs=1e-12)


# --- errors ---------------------------------------------------------------------------

def test_match_pages_rejects_bad_input():
    z4, pool, fsum = np.zeros((2, 4)), np.zeros((3, 4)), np.zeros((3, 4))
    counts = [0, 0, 0]
    with pytest.raises(WeightSepError, match="3 sharable pages but the shared pool has only 2"):
        matching.match_pages(np.zeros((3, 4)), np.zeros((3, 4)), np.zeros((2, 4)), np.zeros((2, 4)), [0, 0])
    with pytest.raises(WeightSepError, match="-matching must be one of greedy, optimal"):
        matching.match_pages(z4, z4, pool, fsum, counts, "hungarian")
    with pytest.raises(WeightSepError, match="page_size"):
        matching.match_pages(z4, z4, np.zeros((3, 5)), np.zeros((3, 5)), counts)
    with pytest.raises(WeightSepError, match="task Fisher pages have shape"):
        matching.match_pages(z4, np.zeros((2, 3)), pool, fsum, counts)
    with pytest.raises(WeightSepError, match="pool Fisher sums have shape"):
        matching.match_pages(z4, z4, pool, np.zeros((2, 4)), counts)
    with pytest.raises(WeightSepError, match="task weights hold NaN"):
        matching.match_pages(np.full((2, 4), np.nan), z4, pool, fsum, counts)
    with pytest.raises(WeightSepError, match="pool Fisher sums hold NaN or Inf"):
        matching.match_pages(z4, z4, pool, np.full((3, 4), np.inf), counts)
    with pytest.raises(WeightSepError, match="non-negative .*Fisher vector is corrupt"):
        matching.match_pages(z4, -np.ones((2, 4)), pool, fsum, counts)
    with pytest.raises(WeightSepError, match="occupation counts have shape"):
        matching.match_pages(z4, z4, pool, fsum, [0, 0])
    with pytest.raises(WeightSepError, match="occupation counts must be non-negative"):
        matching.match_pages(z4, z4, pool, fsum, [0, -1, 0])
    with pytest.raises(WeightSepError, match="occupation counts must be integers"):
        matching.match_pages(z4, z4, pool, fsum, [0.5, 0, 0])
    with pytest.raises(WeightSepError, match="task_pages has shape"):
        matching.match_pages(z4, z4, pool, fsum, counts, task_pages=[0, 1, 2])
    with pytest.raises(WeightSepError, match="ascending"):
        matching.match_pages(z4, z4, pool, fsum, counts, task_pages=[3, 1])
    with pytest.raises(WeightSepError, match="integer page indices"):
        matching.match_pages(z4, z4, pool, fsum, counts, task_pages=[0.0, 1.0])


def test_network_cost_rejects_bad_input():
    f, w = np.ones(4, np.float32), np.ones(4, np.float32)
    with pytest.raises(WeightSepError, match="2 page tables, 1 Fisher"):
        matching.network_cost([[0, 1], [1, 0]], [f], [w, w], 4, 2)
    with pytest.raises(WeightSepError, match="does not fit 4 weights in pages of 2"):
        matching.network_cost([[0, 1, 2]], [f], [w], 4, 2)
    with pytest.raises(WeightSepError, match="uses a shared page twice"):
        matching.network_cost([[1, 1]], [f], [w], 4, 2)
    with pytest.raises(WeightSepError, match="negative entry"):
        matching.network_cost([[-1, 1]], [f], [w], 4, 2)
    with pytest.raises(WeightSepError, match="same length"):
        matching.network_cost([[0, 1]], [f], [np.ones(3)], 4, 2)
    with pytest.raises(WeightSepError, match="NaN or Inf"):
        matching.network_cost([[0, 1]], [f], [np.full(4, np.nan)], 4, 2)
    with pytest.raises(WeightSepError, match="non-negative"):
        matching.network_cost([[0, 1]], [-f], [w], 4, 2)


def test_bitonic_order_rejects_values_at_the_padding():
    with pytest.raises(WeightSepError, match="page sums above -9.0"):
        matching.bitonic_order([1.0, -9.0], 8)
    with pytest.raises(WeightSepError, match="page sums above"):
        matching.bitonic_order([np.nan, 1.0], 8)
