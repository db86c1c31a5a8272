"""Overlapping: place a new task's sharable pages onto distinct shared pages.

From the paper (Sec. "Weight-page overlapping") and the original implementation
(`match_page_by_cost` driving the CUDA op `PageAlloc`). The cost of putting task
page p on shared page q is the Fisher-weighted squared distance between the
task's weights and the pool's current values,

    Cost(p, q) = sum_j (F_t[p, j] + F_sum[q, j]) * (w_t[p, j] - pool[q, j])^2,

counted only where F_t[p, j] > 0 and F_sum[q, j] > 0 (F_sum[q] is the summed
Fisher of the task pages already on q, so an empty shared page costs 0). Costs
are computed pair by pair in float64, never by expanding the square: identical
inputs give bit-identical costs and exact zeros stay zero, which matters because
ties decide the greedy. (Large levels screen candidates with an expanded square
and a proven error bound, then decide on pair by pair costs: "Large levels" below.)

Level structure. The occupation count of a shared page (how many task pages sit
on it) is its level. Levels are visited from the least occupied up, skipping
levels that have no page. At each level both lists, the level's shared pages
(ascending) and the task's pages still unplaced, are ranked by their page-Fisher
sum (float32, accumulated element by element as the original's kernel does)
in descending order, by the very bitonic network the original runs on the GPU
(lists padded to a power of two), so equal sums keep the order that network
leaves them in. If the level has fewer pages than the task still has, the
task's lowest-ranked pages wait for the next level. The unplaced pages handed to
the next level are the original's `list(set(remaining) - set(placed))`, so
their order (which only matters for ties) is Python's set order, as there (the
original ran on Python 2, whose set tables may iterate some integers in another
order than Python 3's: ties between levels can then fall differently).

`greedy` (the original's PageAlloc). If the level has more pages than the task
still has, the level's highest-ranked pages are left out and the task lands on
its lowest-ranked ones. Then, until every page is paired, compare the top
remaining shared page with the top remaining task page: if the shared page's
sum is strictly larger, it takes its cheapest remaining task page, otherwise the
task page takes its cheapest remaining shared page. Among equal costs the
highest-ranked candidate wins. Not reproduced, on purpose: the original finds
that minimum with a CUDA kernel in which every thread first resets the shared
running minimum and index, and then lowers the minimum (atomicMin) and writes
the index (atomicExch) as two separate steps. Threads race on both, so the
kernel can return a candidate that is not the cheapest, or an index that does
not belong to the cost it reports, differently from run to run (and none at all
when every cost is above its 1e10 start value). A nondeterministic result cannot
be a reference, so we take the true minimum with a fixed tie rule. Costs and
their total are float64 here (float32 in the original's kernel).

`optimal` keeps the same levels and the same task pages per level but solves
each level exactly over all of the level's shared pages
(scipy.optimize.linear_sum_assignment), so its total cost is never above
greedy's.

Large levels (ours: the original computed every pair on a GPU). A level of k task pages on
n shared pages needs k x n pair costs of S elements each; pair by pair that is hours for
10,000 pages on a CPU. Above PAIRWISE_MAX_PAIRS pairs a level's costs come from BLAS instead,
by expanding the square into six dot products per pair (two matrix products, O(k n S) in
optimized code), together with a proven bound on how far each such cost can lie from the pair
by pair value (see _expanded_costs). `greedy` uses them only to find the few candidates that
can be the cheapest; it recomputes those pair by pair and decides on the pair by pair values,
so its placement is the same as with the full pair by pair matrix (tested), only faster.
`optimal` solves levels of up to OPTIMAL_EXACT_MAX_PAIRS pairs exactly (on the expanded
costs above PAIRWISE_MAX_PAIRS: within about 1e-12 of each pair's value). Above that,
linear_sum_assignment's cubic time is out of reach, so `optimal` becomes a bounded
approximation, named `sparse`: each task page may go to its OPTIMAL_CANDIDATES cheapest shared
pages of the level or to the page the greedy gives it, and the assignment is exact on that
sparse graph (scipy's min_weight_full_bipartite_matching, LAPJVsp). It therefore never costs
more than the greedy; its gap to the exact assignment is measured in BENCHMARKS.md.

`network_cost` is the original's `calculate_network_cost`: the pair cost
summed over every shared page two tasks both occupy, over all pairs of tasks.
The original lines up the two occupants of a shared page by their rank among
each task's sharable pages, which reads the wrong page once a task has
exclusive pages; here they are lined up through the page tables.

The first task of a state is not matched here: the caller places it on pages
0..m-1, as the original does.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from weightsep import pages as pages_lib
from weightsep.errors import WeightSepError

METHODS = ("greedy", "optimal")

# Elements of one [rows, cols, S] block of pair costs: two float64 and a few bool
# temporaries of this size stay under 64 MiB together.
_BLOCK_ELEMENTS = 1 << 21
_BLOCK_COLUMNS = 64

_NETWORK_COST_BLOCK = 1 << 16

# Levels with more pairs (task pages x shared pages) than this get their costs from BLAS with
# an error bound (module doc); smaller ones pair by pair, as always.
PAIRWISE_MAX_PAIRS = 1 << 16
# Levels with more pairs than this are solved by -matching=optimal's sparse approximation.
OPTIMAL_EXACT_MAX_PAIRS = 1 << 24
# Shared pages each task page may take in the sparse approximation (besides the greedy's).
OPTIMAL_CANDIDATES = 256
# Rows of the expanded cost matrix formed at once (bounds the matrix products' temporaries).
_EXPANDED_BLOCK_ROWS = 1024


class Match(NamedTuple):
    """Result of match_pages; unpacks as (assignment, total_cost, page_costs)."""

    assignment: np.ndarray  # int64[m]: shared page of each task page
    total_cost: float
    page_costs: np.ndarray  # float64[m]: Cost(p, assignment[p])


class Level(NamedTuple):
    """One occupation level as both methods see it (see plan_levels)."""

    shared_pages: np.ndarray  # int64: all the level's shared pages, in bitonic (descending F_sum) order
    shared_sums: np.ndarray  # float32: their page-Fisher sums, same order
    rows: np.ndarray  # int64: the task rows placed on this level, in bitonic (descending page Fisher) order
    row_sums: np.ndarray  # float32: their page-Fisher sums, same order


# --- costs ----------------------------------------------------------------------------

def _masked_cost(fa, wa, fb, wb) -> np.ndarray:
    """Pair cost on broadcastable float64 [..., S] operands, summed over the last axis."""
    cost = np.add(fa, fb)
    diff = np.subtract(wa, wb)
    np.square(diff, out=diff)
    np.multiply(cost, diff, out=cost)
    del diff
    np.copyto(cost, 0.0, where=~((fa > 0) & (fb > 0)))
    return cost.sum(axis=-1)


def _pair_costs(fa, wa, rows_a, fb, wb, rows_b) -> np.ndarray:
    """Cost of rows rows_a of (fa, wa) against rows rows_b of (fb, wb): float64 [len(rows_a), len(rows_b)].

    Rows are gathered and widened to float64 block by block, so neither the
    inputs nor the [rows, cols, S] temporaries are copied whole.
    """
    na, nb, S = rows_a.shape[0], rows_b.shape[0], fa.shape[1]
    cost = np.empty((na, nb), dtype=np.float64)
    # A narrow column block keeps its widened copy small; rows fill the rest of the budget.
    cols = min(max(nb, 1), _BLOCK_COLUMNS, max(1, _BLOCK_ELEMENTS // S))
    rows = max(1, _BLOCK_ELEMENTS // (cols * S))
    for b0 in range(0, nb, cols):
        b = rows_b[b0:b0 + cols]
        fb_, wb_ = fb[b].astype(np.float64)[None], wb[b].astype(np.float64)[None]
        for a0 in range(0, na, rows):
            a = rows_a[a0:a0 + rows]
            fa_, wa_ = fa[a].astype(np.float64)[:, None], wa[a].astype(np.float64)[:, None]
            cost[a0:a0 + a.shape[0], b0:b0 + b.shape[0]] = _masked_cost(fa_, wa_, fb_, wb_)
    return cost


def _pair_list_costs(fa, wa, rows_a, fb, wb, rows_b) -> np.ndarray:
    """Cost of each pair (rows_a[i], rows_b[i]): float64[len(rows_a)], the very value _pair_costs gives it."""
    n, S = rows_a.shape[0], fa.shape[1]
    cost = np.empty(n, dtype=np.float64)
    step = max(1, _BLOCK_ELEMENTS // S)
    for i in range(0, n, step):
        a, b = rows_a[i:i + step], rows_b[i:i + step]
        cost[i:i + a.shape[0]] = _masked_cost(fa[a].astype(np.float64), wa[a].astype(np.float64),
                                              fb[b].astype(np.float64), wb[b].astype(np.float64))
    return cost


def _expanded_features(f, w, rows) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-row factors of the expanded square (see _expanded_costs), float64: the a side's
    [f w^2, f, m w^2, m] and [f w, m w] and the b side's [m, m w^2, f, f w^2] and [m w, f w]."""
    f = f[rows].astype(np.float64)
    w = w[rows].astype(np.float64)
    m = (f > 0).astype(np.float64)
    w2 = np.square(w)
    left = (np.hstack([f * w2, f, m * w2, m]), np.hstack([f * w, m * w]))
    right = (np.hstack([m, m * w2, f, f * w2]), np.hstack([m * w, f * w]))
    return left + right


def _expanded_costs(fa, wa, rows_a, fb, wb, rows_b):
    """Costs of rows_a against rows_b by two matrix products, and a bound on their error.

    With ma = [fa > 0] and mb = [fb > 0] (so ma fa = fa), a pair's cost
    sum ma mb (fa + fb)(wa - wb)^2 is T - 2X with
        T = sum fa wa^2 mb + fa mb wb^2 + ma wa^2 fb + ma fb wb^2   (every term >= 0),
        X = sum fa wa mb wb + ma wa fb wb,
    and 2|X| <= T term by term (2|xy| <= x^2 + y^2). A dot product of length n computed in any
    order errs by at most n u sum|terms| (u = eps / 2), so the BLAS value errs by at most about
    (4S + 2S + 10) u 2T, and the pair by pair float64 value (S + 4) u 2T: the bound taken,
    (16 S + 64) eps T, is twice their sum. Where T is 0 every term is 0 and both values are
    exactly 0 (float32 inputs cannot underflow in float64 products; other inputs get an
    absolute margin for underflow, so nothing counts as exact). Returns (approx float64
    [na, nb], bound float32 [na, nb], rounded up), or None if a value overflows.
    """
    S = fa.shape[1]
    _, _, right4, right2 = _expanded_features(fb, wb, rows_b)
    na, nb = rows_a.shape[0], rows_b.shape[0]
    approx = np.empty((na, nb), dtype=np.float64)
    bound = np.empty((na, nb), dtype=np.float32)
    relative = (16 * S + 64) * np.finfo(np.float64).eps
    exact_zeros = all(a.dtype == np.float32 for a in (fa, wa, fb, wb))
    absolute = 0.0 if exact_zeros else 64 * 6 * S * np.finfo(np.float64).tiny
    for a0 in range(0, na, _EXPANDED_BLOCK_ROWS):
        left4, left2, _, _ = _expanded_features(fa, wa, rows_a[a0:a0 + _EXPANDED_BLOCK_ROWS])
        t = left4 @ right4.T
        x = left2 @ right2.T
        block = slice(a0, a0 + t.shape[0])
        np.subtract(t, 2 * x, out=approx[block])
        if not np.all(np.isfinite(t)) or not np.all(np.isfinite(approx[block])):
            return None
        t *= relative
        t += absolute
        b32 = t.astype(np.float32)
        low = b32 < t
        b32[low] = np.nextafter(b32[low], np.float32(np.inf))
        bound[block] = b32
    return approx, bound


def _cheapest(values, bounds, exact_of) -> int:
    """Position of the first cheapest candidate by exact cost, as np.argmin of exact costs.

    values: costs (approximations when bounds is given, each within bounds of the exact one);
    exact_of(positions) gives exact costs of some positions. Only the candidates whose lower
    end can reach the lowest upper end are recomputed (a zero bound means an exact value).
    """
    if bounds is None:
        return int(np.argmin(values))
    upper = np.min(values + bounds)
    close = np.flatnonzero(values - bounds <= upper)
    if close.shape[0] == 1:
        return int(close[0])
    exact = values[close]
    unsure = bounds[close] > 0
    if np.any(unsure):
        exact[unsure] = exact_of(close[unsure])
    return int(close[np.argmin(exact)])


def _check_pages(task_pages_w, task_pages_F, pool, fisher_sum):
    """The four page arrays as NumPy arrays of real numbers, checked against each other."""
    arrays = [np.asarray(a) for a in (task_pages_w, task_pages_F, pool, fisher_sum)]
    names = ("task weights", "task Fisher", "shared pool", "pool Fisher sums")
    for name, arr in zip(names, arrays):
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise WeightSepError(f"{name} must be real numbers, got dtype {arr.dtype}")
    w, f, u, g = arrays
    if w.ndim != 2 or u.ndim != 2:
        raise WeightSepError(f"task pages and pool must be 2-D [pages, page_size], got {w.shape} and {u.shape}")
    if f.shape != w.shape:
        raise WeightSepError(f"task Fisher pages have shape {f.shape} but task weight pages have {w.shape}")
    if g.shape != u.shape:
        raise WeightSepError(f"pool Fisher sums have shape {g.shape} but the pool has {u.shape}")
    if w.shape[1] != u.shape[1]:
        raise WeightSepError(
            f"task pages hold {w.shape[1]} weights but shared pages hold {u.shape[1]}; use the state's -page_size"
        )
    if w.shape[1] < 1:
        raise WeightSepError(f"pages must hold at least one weight, got page size {w.shape[1]}")
    for name, arr in zip(names, arrays):
        if not np.all(np.isfinite(arr)):
            raise WeightSepError(f"{name} hold NaN or Inf; the state or the task's files are corrupt")
    if np.any(f < 0) or np.any(g < 0):
        raise WeightSepError("Fisher information must be non-negative (a mean of squared gradients): the task's "
                             "Fisher vector is corrupt")
    return arrays


def overlapping_cost_matrix(task_pages_w, task_pages_F, pool, fisher_sum) -> np.ndarray:
    """Cost(p, q) of every task page p on every shared page q: float64 [m, P].

    Each pair is summed directly over its S elements, in blocks that bound the
    temporaries (about 40 MiB); a pair's cost does not depend on the blocking.
    The inputs may be float32 or float64; costs are computed in float64.
    """
    w, f, u, g = _check_pages(task_pages_w, task_pages_F, pool, fisher_sum)
    return _pair_costs(f, w, np.arange(w.shape[0]), g, u, np.arange(u.shape[0]))


# --- ranking --------------------------------------------------------------------------

def page_fisher_sums(fisher_pages) -> np.ndarray:
    """Per-page Fisher sums as the original's kernel forms them: float32, added j = 0..S-1 in order."""
    f = np.asarray(fisher_pages, dtype=np.float32)
    if f.shape[-1] == 0:
        return np.zeros(f.shape[:-1], dtype=np.float32)
    return np.add.accumulate(f, axis=-1, dtype=np.float32)[..., -1]


def bitonic_order(values, page_size: int) -> np.ndarray:
    """Positions of `values` in descending order, as the original's bitonic network leaves them.

    The list is padded to the next power of two with -(page_size + 1) (below any
    page sum), then sorted by the iterative network (k = 2, 4, ..., L; j = k/2,
    ..., 1); each (k, j) step compares disjoint pairs, so one vectorized step is
    exactly the GPU's. Equal values stay where the network leaves them. The
    values must lie above the padding, as sums of non-negative Fisher do.
    Returns int64[len(values)].
    """
    v = np.asarray(values, dtype=np.float32)
    pad = np.float32(-page_size - 1.0)
    if v.ndim != 1 or not np.all(v > pad):
        raise WeightSepError(f"bitonic_order sorts a 1-D list of page sums above {pad}, got shape {v.shape}")
    n = v.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    size = 1 << (n - 1).bit_length()
    vals = np.full(size, pad, dtype=np.float32)
    vals[:n] = v
    idx = np.zeros(size, dtype=np.int64)
    idx[:n] = np.arange(n)
    i = np.arange(size)
    k = 2
    while k <= size:
        j = k >> 1
        while j > 0:
            lo = i[(i ^ j) > i]
            hi = lo ^ j
            descending = (lo & k) == 0
            swap = np.where(descending, vals[lo] < vals[hi], vals[lo] > vals[hi])
            a, b = lo[swap], hi[swap]
            vals[a], vals[b] = vals[b], vals[a]  # fancy indexing copies: a true swap
            idx[a], idx[b] = idx[b], idx[a]
            j >>= 1
        k <<= 1
    return idx[:n]


def plan_levels(task_sums, shared_sums, occupation_counts, task_pages, page_size: int) -> list[Level]:
    """The original's level loop: which task rows are placed on which occupation level.

    task_sums float32[m] and shared_sums float32[P] are page-Fisher sums;
    task_pages int[m] (ascending) are the task's page indices of the rows, which
    fix the set order of the pages handed from one level to the next.
    """
    counts = np.asarray(occupation_counts)
    shared_sums = np.asarray(shared_sums, dtype=np.float32)
    task_sums = np.asarray(task_sums, dtype=np.float32)
    row_of = {int(p): r for r, p in enumerate(task_pages)}
    remaining = [int(p) for p in task_pages]
    levels = []
    for level in np.unique(counts):
        if not remaining:
            break
        shared = np.flatnonzero(counts == level)
        rows = np.array([row_of[p] for p in remaining], dtype=np.int64)
        shared = shared[bitonic_order(shared_sums[shared], page_size)]
        rows = rows[bitonic_order(task_sums[rows], page_size)][: shared.shape[0]]
        levels.append(Level(shared, shared_sums[shared], rows, task_sums[rows]))
        remaining = list(set(remaining) - {int(task_pages[r]) for r in rows})
    return levels


# --- matching within a level ----------------------------------------------------------

def _two_sided_greedy(cost, shared_sums, row_sums, bound=None, exact=None) -> np.ndarray:
    """PageAlloc's pairing on a square [k, k] cost (shared x task, both in rank order).

    With bound, cost holds approximations within bound of the exact costs, and
    exact(shared_positions, task_positions) gives exact ones: every choice is made on exact
    values. Returns int64[k]: for each task position, the shared position it takes.
    """
    k = cost.shape[0]
    shared_left = np.ones(k, dtype=bool)
    task_left = np.ones(k, dtype=bool)
    shared_of_task = np.empty(k, dtype=np.int64)
    top_shared = top_task = 0
    for _ in range(k):
        while not shared_left[top_shared]:
            top_shared += 1
        while not task_left[top_task]:
            top_task += 1
        if shared_sums[top_shared] > row_sums[top_task]:
            candidates = np.flatnonzero(task_left)
            s = top_shared
            pick = _cheapest(cost[s, candidates], None if bound is None else bound[s, candidates],
                             lambda i: exact(np.full(i.shape[0], s), candidates[i]))
            t = int(candidates[pick])
        else:
            candidates = np.flatnonzero(shared_left)
            t = top_task
            pick = _cheapest(cost[candidates, t], None if bound is None else bound[candidates, t],
                             lambda i: exact(candidates[i], np.full(i.shape[0], t)))
            s = int(candidates[pick])
        shared_left[s] = task_left[t] = False
        shared_of_task[t] = s
    return shared_of_task


def _greedy_level(f, w, g, u, shared, shared_sums, rows, row_sums, expanded=None):
    """PageAlloc on one level's k task rows and k shared pages (both in rank order).

    expanded: the level's (approx, bound) costs as [shared, task] arrays, or None to compute
    them here (pair by pair when small). Returns (shared position of each task position,
    exact cost of each task position's pair).
    """
    k = rows.shape[0]
    if expanded is None and k * k > PAIRWISE_MAX_PAIRS:
        expanded = _expanded_costs(g, u, shared, f, w, rows)
    if expanded is None:
        cost = _pair_costs(g, u, shared, f, w, rows)
        taken = _two_sided_greedy(cost, shared_sums, row_sums)
        return taken, cost[taken, np.arange(k)]
    approx, bound = expanded

    def exact(s_pos, t_pos):
        return _pair_list_costs(g, u, shared[s_pos], f, w, rows[t_pos])

    taken = _two_sided_greedy(approx, shared_sums, row_sums, bound, exact)
    return taken, exact(taken, np.arange(k))


def _sparse_assignment(approx, greedy_cols) -> np.ndarray:
    """-matching=optimal above OPTIMAL_EXACT_MAX_PAIRS: the exact assignment of the k rows of
    approx [k, n] (k <= n) among each row's OPTIMAL_CANDIDATES cheapest columns and its greedy
    column (so a full matching exists and none costs more than the greedy's). Returns the
    column of each row."""
    k, n = approx.shape
    keep = min(OPTIMAL_CANDIDATES, n)
    cols = np.empty((k, keep), dtype=np.int64)
    for r0 in range(0, k, _EXPANDED_BLOCK_ROWS):
        block = approx[r0:r0 + _EXPANDED_BLOCK_ROWS]
        cols[r0:r0 + block.shape[0]] = (np.argpartition(block, keep - 1, axis=1)[:, :keep]
                                        if keep < n else np.arange(n))
    edges = np.unique(np.concatenate([(np.arange(k)[:, None] * n + cols).ravel(),
                                      np.arange(k) * n + greedy_cols]))
    r, c = np.divmod(edges, n)
    weight = approx[r, c]
    # Every full matching has k edges, so a constant shift keeps the optimum; it keeps weights
    # positive, since the sparse format cannot hold an explicit zero.
    lo, hi = float(weight.min()), float(weight.max())
    weight = weight - lo + max((hi - lo) * 2.0 ** -30, np.finfo(np.float64).tiny)
    graph = sparse.csr_array((weight, (r, c)), shape=(k, n))
    row_ind, col_ind = min_weight_full_bipartite_matching(graph)
    result = np.empty(k, dtype=np.int64)
    result[row_ind] = col_ind
    return result


def _check_counts(occupation_counts, P: int) -> np.ndarray:
    counts = np.asarray(occupation_counts)
    if counts.ndim != 1 or counts.shape[0] != P:
        raise WeightSepError(f"occupation counts have shape {counts.shape} but the pool has {P} pages")
    if counts.size and not np.issubdtype(counts.dtype, np.integer):
        raise WeightSepError(f"occupation counts must be integers, got dtype {counts.dtype}")
    if np.any(counts < 0):
        raise WeightSepError("occupation counts must be non-negative; the state's page tables are corrupt")
    return counts.astype(np.int64)


def _check_task_pages(task_pages, m: int) -> np.ndarray:
    if task_pages is None:
        return np.arange(m, dtype=np.int64)
    pages = np.asarray(task_pages)
    if pages.shape != (m,):
        raise WeightSepError(f"task_pages has shape {pages.shape} but there are {m} sharable pages")
    if m and not np.issubdtype(pages.dtype, np.integer):
        raise WeightSepError(f"task_pages must hold integer page indices, got dtype {pages.dtype}")
    pages = pages.astype(np.int64)
    if m and (pages[0] < 0 or np.any(np.diff(pages) <= 0)):
        raise WeightSepError("task_pages must be distinct non-negative page indices in ascending order")
    return pages


def match_pages(
    task_pages_w,
    task_pages_F,
    pool,
    fisher_sum,
    occupation_counts,
    method: str = "greedy",
    task_pages=None,
) -> Match:
    """Overlap a task's m sharable pages onto the shared pool, level by level.

    task_pages_w, task_pages_F: [m, S] weights and network Fisher of the
    sharable pages, in ascending task-page order; pool, fisher_sum: [P, S]
    current shared values and summed occupant Fisher (F_sum);
    occupation_counts: int[P], task pages on each shared page (its level);
    task_pages: int[m] the task's page index of each row (default 0..m-1), used
    only for the original's set order between levels. Returns
    Match(assignment, total_cost, page_costs), assignment[i] the shared page of
    row i.
    """
    if method not in METHODS:
        raise WeightSepError(f"-matching must be one of {', '.join(METHODS)}, got {method!r}")
    w, f, u, g = _check_pages(task_pages_w, task_pages_F, pool, fisher_sum)
    (m, S), P = w.shape, u.shape[0]
    if m > P:
        raise WeightSepError(
            f"the task has {m} sharable pages but the shared pool has only {P}; "
            "raise -num_pages or lower -margin so more pages are exclusive"
        )
    counts = _check_counts(occupation_counts, P)
    rows_pages = _check_task_pages(task_pages, m)
    assignment = np.full(m, -1, dtype=np.int64)
    page_costs = np.zeros(m, dtype=np.float64)
    levels = plan_levels(page_fisher_sums(f), page_fisher_sums(g), counts, rows_pages, S)
    for level in levels:
        rows, k = level.rows, level.rows.shape[0]
        n = level.shared_pages.shape[0]
        if method == "greedy":
            # The level's highest-sum shared pages are left out, as in PageAlloc.
            shared = level.shared_pages[n - k:]
            taken, costs = _greedy_level(f, w, g, u, shared, level.shared_sums[n - k:], rows, level.row_sums)
            assignment[rows] = shared[taken]
            page_costs[rows] = costs
            continue
        expanded = _expanded_costs(f, w, rows, g, u, level.shared_pages) if k * n > PAIRWISE_MAX_PAIRS else None
        if expanded is None:
            cost = _pair_costs(f, w, rows, g, u, level.shared_pages)
            if not np.all(np.isfinite(cost)):
                raise WeightSepError("overlapping costs overflow float64; the task's or the pool's weights are corrupt")
            task_pos, shared_pos = linear_sum_assignment(cost)
            assignment[rows[task_pos]] = level.shared_pages[shared_pos]
            page_costs[rows[task_pos]] = cost[task_pos, shared_pos]
            continue
        approx, bound = expanded
        if k * n <= OPTIMAL_EXACT_MAX_PAIRS:
            shared_pos = np.empty(k, dtype=np.int64)
            task_pos, cols = linear_sum_assignment(approx)
            shared_pos[task_pos] = cols
        else:
            # The greedy's pairs keep a full matching in the sparse graph (module doc).
            sub = slice(n - k, n)
            taken, _ = _greedy_level(f, w, g, u, level.shared_pages[sub], level.shared_sums[sub], rows,
                                     level.row_sums, (approx[:, sub].T, bound[:, sub].T))
            shared_pos = _sparse_assignment(approx, taken + (n - k))
        assignment[rows] = level.shared_pages[shared_pos]
        page_costs[rows] = _pair_list_costs(f, w, rows, g, u, level.shared_pages[shared_pos])
    if np.any(assignment < 0) or np.unique(assignment).shape[0] != m:
        raise RuntimeError("page matching left a page unplaced or used a shared page twice")
    return Match(assignment, float(page_costs.sum()), page_costs)


# --- cost of a formed state -----------------------------------------------------------

def network_cost(
    tables: Sequence,
    fishers: Sequence,
    weights: Sequence,
    num_shared_pages: int,
    page_size: int,
) -> float:
    """Overlapping cost of a set of tasks (the original's calculate_network_cost).

    For every pair of tasks and every shared page both occupy, the pair cost
    between the two tasks' pages on it (network Fisher and network weights),
    summed. tables: the tasks' page tables (entries >= num_shared_pages are
    exclusive and ignored); fishers, weights: their full vectors of n weights.
    """
    if not len(tables) == len(fishers) == len(weights):
        raise WeightSepError(
            f"network_cost got {len(tables)} page tables, {len(fishers)} Fisher and {len(weights)} weight vectors"
        )
    P = int(num_shared_pages)
    tasks = []
    for t, (table, fisher, weight) in enumerate(zip(tables, fishers, weights)):
        fisher, weight = np.asarray(fisher), np.asarray(weight)
        if fisher.ndim != 1 or fisher.shape != weight.shape:
            raise WeightSepError(
                f"task {t}: Fisher {fisher.shape} and weights {weight.shape} must be vectors of the same length"
            )
        if not (np.all(np.isfinite(fisher)) and np.all(np.isfinite(weight))):
            raise WeightSepError(f"task {t}: Fisher or weights hold NaN or Inf; the task's files are corrupt")
        if np.any(fisher < 0):
            raise WeightSepError(f"task {t}: Fisher information must be non-negative (a mean of squared gradients): "
                                 "its Fisher vector is corrupt")
        table = np.asarray(table)
        expected = pages_lib.num_pages(fisher.shape[0], page_size)
        if table.shape != (expected,) or (table.size and not np.issubdtype(table.dtype, np.integer)):
            raise WeightSepError(
                f"task {t}: page table of shape {table.shape}, dtype {table.dtype} does not fit "
                f"{fisher.shape[0]} weights in pages of {page_size} ({expected} integer entries)"
            )
        if np.any(table < 0):
            raise WeightSepError(f"task {t}: page table holds a negative entry; the state is corrupt")
        on_pool = np.flatnonzero(table < P)
        shared = table[on_pool].astype(np.int64)
        if np.unique(shared).shape[0] != shared.shape[0]:
            raise WeightSepError(f"task {t}: page table uses a shared page twice; the state is corrupt")
        tasks.append((shared, on_pool, fisher, weight))
    # Every page of every task on the pool, grouped by shared page: the pairs to cost are the
    # pairs of rows within a group, found without a loop over pairs of tasks (which grew with
    # the square of the number of tasks).
    if not tasks:
        return 0.0
    shared = np.concatenate([t[0] for t in tasks])
    owner = np.concatenate([np.full(t[0].shape[0], i) for i, t in enumerate(tasks)])
    order = np.lexsort((owner, shared))
    shared = shared[order]
    f_rows = np.concatenate([pages_lib.to_pages(f, page_size)[on_pool] for _, on_pool, f, _ in tasks])[order]
    w_rows = np.concatenate([pages_lib.to_pages(w, page_size)[on_pool] for _, on_pool, _, w in tasks])[order]
    first, second = [], []
    for gap in range(1, int(np.max(np.bincount(shared))) if shared.size else 1):
        same = np.flatnonzero(shared[gap:] == shared[:-gap])
        first.append(same)
        second.append(same + gap)
    if not first or not sum(a.size for a in first):
        return 0.0
    first, second = np.concatenate(first), np.concatenate(second)
    total = 0.0
    step = max(1, _NETWORK_COST_BLOCK // page_size)  # small blocks: their temporaries stay in cache
    for i in range(0, first.shape[0], step):
        a, b = first[i:i + step], second[i:i + step]
        total += float(_masked_cost(f_rows[a].astype(np.float64), w_rows[a].astype(np.float64),
                                    f_rows[b].astype(np.float64), w_rows[b].astype(np.float64)).sum())
    return total
