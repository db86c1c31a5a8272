"""Overlapping: place a new task's sharable pages onto distinct shared pages.

From the paper (Sec. "Weight-page overlapping"). The cost of putting task page
p on shared page q is the Fisher-weighted squared distance between the task's
weights and the pool's current values,

    Cost(p, q) = sum_j (F_t[p, j] + F_sum[q, j]) * (w_t[p, j] - pool[q, j])^2,

where F_sum[q] is the sum of the Fisher vectors of the task pages already on q
and only elements with F_t != 0 and F_sum != 0 count (so an empty shared page
costs 0: nothing there to disturb).

Pages are placed level by level (`level_plan`): first on the shared pages with
the fewest occupants; if a level has fewer pages than the task still has to
place, the task's highest-Fisher pages go there and the rest wait for the next
level. Within a level, `greedy` (the paper) lets task pages in descending
page-Fisher order each take the cheapest free shared page, and `optimal`
solves the same level subproblem exactly (Hungarian method), so its total cost
is never higher than greedy's.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from weightsep.errors import WeightSepError

METHODS = ("greedy", "optimal")

# Bound on the float64 elements of one stacked block in overlapping_cost_matrix (64 MiB).
_BLOCK_ELEMENTS = 1 << 23


class Match(NamedTuple):
    """Result of match_pages; unpacks as (assignment, total_cost, page_costs)."""

    assignment: np.ndarray  # int64[m]: shared page of each task page
    total_cost: float
    page_costs: np.ndarray  # float64[m]: Cost(p, assignment[p])


def overlapping_cost_matrix(task_pages_w, task_pages_F, pool, fisher_sum) -> np.ndarray:
    """Cost(p, q) of every task page p on every shared page q: float64 [m, P].

    Vectorized by expanding the masked product: with a = [F_t != 0] and
    b = [F_sum != 0], (F_t + F_sum) a b = F_t b + a F_sum (a F_t = F_t), and
    (w - u)^2 = w^2 - 2 w u + u^2, so Cost is one matmul of two stacks of six
    [*, S] terms. Blocks over both task pages and pool pages bound the memory
    for big pools. Rounding of the expansion can leave -1e-16 where the exact
    cost is 0, so the result is clipped at 0; fully masked pairs are exactly 0.
    """
    w = np.asarray(task_pages_w, dtype=np.float64)
    f = np.asarray(task_pages_F, dtype=np.float64)
    u = np.asarray(pool, dtype=np.float64)
    g = np.asarray(fisher_sum, dtype=np.float64)
    _check_shapes(w, f, u, g)
    m, S = w.shape
    P = u.shape[0]
    cost = np.empty((m, P), dtype=np.float64)
    block = max(1, _BLOCK_ELEMENTS // (6 * S))
    for p0 in range(0, m, block):
        wp, fp = w[p0:p0 + block], f[p0:p0 + block]
        ap = (fp != 0).astype(np.float64)
        left = np.concatenate([fp * wp * wp, fp * wp, fp, ap * wp * wp, ap * wp, ap], axis=1)
        for q0 in range(0, P, block):
            uq, gq = u[q0:q0 + block], g[q0:q0 + block]
            bq = (gq != 0).astype(np.float64)
            right = np.concatenate([bq, -2.0 * bq * uq, bq * uq * uq, gq, -2.0 * gq * uq, gq * uq * uq], axis=1)
            cost[p0:p0 + block, q0:q0 + block] = left @ right.T
    return np.maximum(cost, 0.0)


def _check_shapes(w, f, u, g) -> None:
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
    for name, arr in (("task weights", w), ("task Fisher", f), ("shared pool", u), ("pool Fisher sums", g)):
        if not np.all(np.isfinite(arr)):
            raise WeightSepError(f"{name} hold NaN or Inf; the state or the task's files are corrupt")
    if np.any(f < 0) or np.any(g < 0):
        raise WeightSepError("Fisher information must be non-negative; recompute it with -mode=f")


def level_plan(page_fisher, occupancy_count) -> list[tuple[np.ndarray, np.ndarray]]:
    """Which task pages go to which level of shared pages.

    Levels are the groups of shared pages with equal occupant counts, fewest
    occupants first. Task pages are ranked by page Fisher descending (ties:
    lower index first); each level takes as many of the next-ranked pages as it
    has shared pages. Returns [(task pages in rank order, shared pages of the
    level ascending)], one entry per level used.
    """
    page_fisher = np.asarray(page_fisher, dtype=np.float64)
    counts = np.asarray(occupancy_count)
    m, P = page_fisher.shape[0], counts.shape[0]
    if m > P:
        raise WeightSepError(
            f"the task has {m} sharable pages but the shared pool has only {P}; "
            "raise -num_pages or lower -margin so more pages are exclusive"
        )
    ranked = np.argsort(-page_fisher, kind="stable")
    plan = []
    placed = 0
    for level in np.unique(counts):
        if placed == m:
            break
        shared = np.flatnonzero(counts == level)
        k = min(shared.shape[0], m - placed)
        plan.append((ranked[placed:placed + k], shared))
        placed += k
    return plan


def assign_by_level(cost, page_fisher, occupancy_count, method: str = "greedy") -> np.ndarray:
    """Assign each task page a distinct shared page, level by level (see level_plan).

    Within a level, `greedy`: task pages in rank order each take the cheapest
    still-free shared page of the level (ties: lowest index); `optimal`:
    scipy.optimize.linear_sum_assignment on the level's cost submatrix.
    A level whose costs are all zero (e.g. an empty pool) carries nothing to
    choose by: its task pages, in index order, take its shared pages in index
    order, which maps the first task onto pages 0..m-1 as in the paper.
    Returns int64[m], the shared page of each task page.
    """
    if method not in METHODS:
        raise WeightSepError(f"-matching must be one of {', '.join(METHODS)}, got {method!r}")
    cost = np.asarray(cost, dtype=np.float64)
    m = cost.shape[0]
    counts = np.asarray(occupancy_count)
    if counts.ndim != 1 or counts.shape[0] != cost.shape[1]:
        raise WeightSepError(f"occupancy counts have shape {counts.shape} but the pool has {cost.shape[1]} pages")
    if np.any(counts < 0):
        raise WeightSepError("occupancy counts must be non-negative")
    if np.shape(page_fisher) != (m,):
        raise WeightSepError(f"page Fisher has shape {np.shape(page_fisher)} but the cost matrix has {m} task pages")
    assignment = np.full(m, -1, dtype=np.int64)
    for task_pages, shared in level_plan(page_fisher, counts):
        sub = cost[np.ix_(task_pages, shared)]
        if not np.any(sub):
            assignment[np.sort(task_pages)] = shared[: task_pages.shape[0]]
        elif method == "greedy":
            free = np.ones(shared.shape[0], dtype=bool)
            for row, page in enumerate(task_pages):
                col = int(np.argmin(np.where(free, sub[row], np.inf)))
                free[col] = False
                assignment[page] = shared[col]
        else:
            rows, cols = linear_sum_assignment(sub)
            assignment[task_pages[rows]] = shared[cols]
    assert np.all(assignment >= 0), "every task page must be placed"
    assert np.unique(assignment).shape[0] == m, "a task never uses a shared page twice"
    return assignment


def match_pages(
    task_pages_w,
    task_pages_F,
    pool,
    fisher_sum,
    occupancy_count,
    method: str = "greedy",
) -> Match:
    """Overlap a task's m sharable pages onto the shared pool.

    task_pages_w, task_pages_F: [m, S] weights and Fisher of the sharable pages;
    pool, fisher_sum: [P, S] current shared values and summed occupant Fisher;
    occupancy_count: [P] occupants per shared page. Page Fisher (the ranking
    within levels) is the sum of each task page's Fisher. Returns
    Match(assignment, total_cost, page_costs).
    """
    m, P = np.shape(task_pages_w)[0], np.shape(pool)[0]
    if m > P:
        raise WeightSepError(
            f"the task has {m} sharable pages but the shared pool has only {P}; "
            "raise -num_pages or lower -margin so more pages are exclusive"
        )
    cost = overlapping_cost_matrix(task_pages_w, task_pages_F, pool, fisher_sum)
    page_fisher = np.asarray(task_pages_F, dtype=np.float64).sum(axis=1)
    assignment = assign_by_level(cost, page_fisher, occupancy_count, method)
    page_costs = cost[np.arange(cost.shape[0]), assignment]
    return Match(assignment, float(page_costs.sum()), page_costs)
