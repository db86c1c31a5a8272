"""Weight-pages and page tables: the data model of weight separation.

A task's network vector w (float32, length n) is cut into weight-pages of S
consecutive weights; the task has n_p = ceil(n / S) pages and the last one is
zero-padded.  All tasks share a pool of P pages (level-1 memory); each task
also owns exclusive pages, stacked for all tasks in an E x S store (level-2
memory).  A task's page table, int32[n_p], says where each of its pages lives:
entry e < P is shared page e, entry e >= P is exclusive row e - P.  This is the
runtime encoding of the original implementation (paper, Sec. "Weight-page
formation" and "Multitask execution").

Occupation (which task pages sit on each shared page) is derived from the page
tables alone, so there is no second copy of that state to keep in sync.

All functions here are pure: arrays in, arrays out.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from weightsep.errors import WeightSepError


def _check_page_size(page_size) -> int:
    if isinstance(page_size, bool) or not isinstance(page_size, (int, np.integer)) or page_size < 1:
        raise WeightSepError(f"page size must be a positive integer, got {page_size!r} (set -page_size, e.g. 512)")
    return int(page_size)


def _as_vector(vector, what: str) -> np.ndarray:
    arr = np.asarray(vector)
    if arr.ndim != 1:
        raise WeightSepError(f"{what} must be a 1-D vector, got shape {arr.shape}")
    return arr


def num_pages(n: int, page_size: int) -> int:
    """Number of weight-pages of a vector of n weights: ceil(n / page_size)."""
    page_size = _check_page_size(page_size)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise WeightSepError(f"number of weights must be a non-negative integer, got {n!r}")
    return -(-int(n) // page_size)


def _padded(vector: np.ndarray, page_size: int, dtype) -> np.ndarray:
    """vector as [n_p, page_size] of dtype, zero-padded at the end."""
    n = vector.shape[0]
    out = np.zeros(num_pages(n, page_size) * page_size, dtype=dtype)
    out[:n] = vector
    return out.reshape(-1, page_size)


def to_pages(vector, page_size: int) -> np.ndarray:
    """Cut a network vector into weight-pages.

    Returns float32 [n_p, page_size]; the last page is zero-padded.
    """
    page_size = _check_page_size(page_size)
    vector = _as_vector(vector, "network vector")
    return _padded(vector, page_size, np.float32)


def from_pages(pages, n: int) -> np.ndarray:
    """Concatenate weight-pages and cut to n weights: the inverse of to_pages.

    `pages` must have exactly num_pages(n, S) rows, so that only the last page's
    padding is dropped. Returns float32 [n].
    """
    pages = np.asarray(pages)
    if pages.ndim != 2:
        raise WeightSepError(f"pages must be a 2-D array [num_pages, page_size], got shape {pages.shape}")
    expected = num_pages(n, pages.shape[1])
    if pages.shape[0] != expected:
        raise WeightSepError(
            f"{pages.shape[0]} pages of {pages.shape[1]} cannot hold exactly {n} weights "
            f"(needs {expected} pages); check the task's number of weights and -page_size"
        )
    return pages.reshape(-1)[:n].astype(np.float32)


def page_sums(vector, page_size: int) -> np.ndarray:
    """Sum of the values in each weight-page (e.g. the Fisher information per page).

    Summed in float64 so that small per-page sums are not lost. Returns float64 [n_p].
    """
    page_size = _check_page_size(page_size)
    vector = _as_vector(vector, "vector")
    return _padded(vector, page_size, np.float64).sum(axis=1)


def validate_page_table(table, num_shared_pages: int, num_exclusive_pages: int, n: int, page_size: int) -> np.ndarray:
    """Check a task's page table and return it as int32[n_p].

    A valid table has one integer entry per page of the task (num_pages(n,
    page_size)), every entry in [0, P + E), and no shared page or exclusive row
    used twice by the task (each task page needs its own slot).
    """
    P, E = int(num_shared_pages), int(num_exclusive_pages)
    if P < 0 or E < 0:
        raise WeightSepError(f"pool sizes must be non-negative, got P={P}, E={E}")
    table = np.asarray(table)
    if table.ndim != 1:
        raise WeightSepError(f"a page table must be a 1-D integer array, got shape {table.shape}")
    if table.size and not np.issubdtype(table.dtype, np.integer):
        raise WeightSepError(f"a page table must hold integers, got dtype {table.dtype}")
    expected = num_pages(n, page_size)
    if table.shape[0] != expected:
        raise WeightSepError(
            f"page table has {table.shape[0]} entries but a task of {n} weights with page size "
            f"{page_size} has {expected} pages; the state was written with another -page_size or network"
        )
    _check_bounds(table, P + E, P, E)
    shared = table[table < P]
    values, counts = np.unique(shared, return_counts=True)
    if np.any(counts > 1):
        dup = int(values[np.argmax(counts > 1)])
        pages = np.flatnonzero(table == dup).tolist()
        raise WeightSepError(
            f"page table uses shared page {dup} for more than one task page ({pages}); "
            "a task may occupy a shared page once"
        )
    values, counts = np.unique(table[table >= P], return_counts=True)
    if np.any(counts > 1):
        dup = int(values[np.argmax(counts > 1)])
        pages = np.flatnonzero(table == dup).tolist()
        raise WeightSepError(f"page table uses exclusive row {dup - P} for more than one task page ({pages})")
    return table.astype(np.int32)


def _check_bounds(table: np.ndarray, limit: int, P: int, E: int) -> None:
    bad = np.flatnonzero((table < 0) | (table >= limit))
    if bad.size:
        i = int(bad[0])
        raise WeightSepError(
            f"page table entry {i} is {int(table[i])}, outside [0, {limit}) "
            f"(P={P} shared pages + E={E} exclusive pages); the page table and the pools do not belong together"
        )


def materialize(shared, exclusive, page_table, n: int) -> np.ndarray:
    """Rebuild a task's network vector from the shared pool and the exclusive store.

    For each page i of the task, take shared[e] if e = page_table[i] < P, else
    exclusive[e - P]; concatenate and cut to n weights. This is what a task
    switch computes (the PageGather custom op does the same on device).
    Returns float32 [n].
    """
    shared = np.asarray(shared)
    exclusive = np.asarray(exclusive)
    table = np.asarray(page_table)
    if shared.ndim != 2 or exclusive.ndim != 2:
        raise WeightSepError(
            f"shared pool and exclusive store must be 2-D [pages, page_size], got {shared.shape} and {exclusive.shape}"
        )
    if shared.shape[1] != exclusive.shape[1]:
        raise WeightSepError(
            f"shared pool pages hold {shared.shape[1]} weights but exclusive pages hold {exclusive.shape[1]}; "
            "both must use the same -page_size"
        )
    if table.ndim != 1 or (table.size and not np.issubdtype(table.dtype, np.integer)):
        raise WeightSepError(f"a page table must be a 1-D integer array, got shape {table.shape}, dtype {table.dtype}")
    S = shared.shape[1]
    expected = num_pages(n, S)
    if table.shape[0] != expected:
        raise WeightSepError(f"page table has {table.shape[0]} entries but {n} weights in pages of {S} need {expected}")
    P, E = shared.shape[0], exclusive.shape[0]
    _check_bounds(table, P + E, P, E)
    return gather_pages(shared, exclusive, table).reshape(-1)[:n]


def gather_pages(shared: np.ndarray, exclusive: np.ndarray, table: np.ndarray) -> np.ndarray:
    """A task's pages, float32 [n_p, S]: shared[e] where e < P, else exclusive[e - P].

    No validation (callers check the table); copies only the task's rows.
    """
    num_shared = shared.shape[0]
    pages = np.empty((len(table), shared.shape[1]), dtype=np.float32)
    on_pool = table < num_shared
    pages[on_pool] = shared[table[on_pool]]
    pages[~on_pool] = exclusive[table[~on_pool] - num_shared]
    return pages


def task_local_table(table, num_shared_pages: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, local table) of a task whose exclusive rows are gathered apart from the store.

    rows: int64 [k], the task's exclusive rows in the store, by ascending task page;
    local table: int64 [n_p], the page table with its i-th exclusive entry renumbered
    P + i, i.e. pointing into those k rows in that order.  The export writes this table
    (<task>_p) beside the task's k pages (<task>_e), and the runtime gathers a switch
    from the rows it brings in.
    """
    table = np.asarray(table).astype(np.int64)
    exclusive = table >= num_shared_pages
    rows = table[exclusive] - num_shared_pages
    local = table.copy()
    local[exclusive] = num_shared_pages + np.arange(len(rows))
    return rows, local


def occupation(page_tables: Mapping[str, np.ndarray], num_shared_pages: int) -> list[list[tuple[str, int]]]:
    """Occupants of each shared page, derived from the tasks' page tables.

    Returns a list of P lists; list q holds the (task name, task page index)
    pairs whose page table points at shared page q, tasks in the mapping's
    order and pages ascending within a task.
    """
    P = int(num_shared_pages)
    occupants: list[list[tuple[str, int]]] = [[] for _ in range(P)]
    for name, table in page_tables.items():
        table = np.asarray(table)
        if np.any(table < 0):
            raise WeightSepError(f"page table of task {name!r} holds a negative entry; the state is corrupt")
        for page in np.flatnonzero(table < P):
            occupants[int(table[page])].append((name, int(page)))
    return occupants


def occupation_counts(page_tables: Mapping[str, np.ndarray], num_shared_pages: int) -> np.ndarray:
    """Number of task pages on each shared page: int64 [P] (the matching's levels)."""
    P = int(num_shared_pages)
    counts = np.zeros(P, dtype=np.int64)
    for name, table in page_tables.items():
        table = np.asarray(table, dtype=np.int64)
        if np.any(table < 0):
            raise WeightSepError(f"page table of task {name!r} holds a negative entry; the state is corrupt")
        counts += np.bincount(table[table < P], minlength=P)
    return counts
