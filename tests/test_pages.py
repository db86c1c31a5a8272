"""Tests of weightsep.pages: page formation, page tables, occupation."""

import numpy as np
import pytest

from weightsep import pages
from weightsep.errors import WeightSepError

S = 8


@pytest.mark.parametrize("n", [1, 5, S - 1, S, S + 1, 3 * S, 3 * S + 5])
def test_round_trip(n):
    rng = np.random.default_rng(n)
    w = rng.normal(size=n).astype(np.float32)
    p = pages.to_pages(w, S)
    assert p.dtype == np.float32
    assert p.shape == (pages.num_pages(n, S), S)
    assert p.shape[0] == -(-n // S)
    # The padding of the last page is zeros.
    assert np.all(p.reshape(-1)[n:] == 0)
    np.testing.assert_array_equal(pages.from_pages(p, n), w)


def test_num_pages_known_values():
    assert pages.num_pages(0, 512) == 0
    assert pages.num_pages(1, 512) == 1
    assert pages.num_pages(512, 512) == 1
    assert pages.num_pages(513, 512) == 2
    # The original's CIFAR-10 network: 64,670 weights in 127 pages.
    assert pages.num_pages(64670, 512) == 127


def test_bad_page_size_and_shapes_rejected():
    with pytest.raises(WeightSepError, match="page size"):
        pages.to_pages(np.zeros(4), 0)
    with pytest.raises(WeightSepError, match="1-D"):
        pages.to_pages(np.zeros((2, 2)), 4)
    with pytest.raises(WeightSepError, match="needs 2 pages"):
        pages.from_pages(np.zeros((3, 4)), 5)


def test_page_sums():
    v = np.arange(1, 11, dtype=np.float32)  # 1..10 in pages of 4: [1..4], [5..8], [9, 10, pad, pad]
    np.testing.assert_allclose(pages.page_sums(v, 4), [10.0, 26.0, 19.0])


def _reference_materialize(shared, exclusive, table, n):
    out = []
    for e in table:
        out.extend(shared[e] if e < shared.shape[0] else exclusive[e - shared.shape[0]])
    return np.array(out[:n], dtype=np.float32)


@pytest.mark.parametrize("n", [3, S, 5 * S, 5 * S + 3])
def test_materialize_matches_loop(n):
    rng = np.random.default_rng(100 + n)
    P, E = 6, 7
    shared = rng.normal(size=(P, S)).astype(np.float32)
    exclusive = rng.normal(size=(E, S)).astype(np.float32)
    n_p = pages.num_pages(n, S)
    table = rng.permutation(P + E)[:n_p].astype(np.int32)
    got = pages.materialize(shared, exclusive, table, n)
    assert got.dtype == np.float32 and got.shape == (n,)
    np.testing.assert_array_equal(got, _reference_materialize(shared, exclusive, table, n))


def test_materialize_with_empty_exclusive_store():
    shared = np.arange(12, dtype=np.float32).reshape(3, 4)
    got = pages.materialize(shared, np.zeros((0, 4), np.float32), np.array([2, 0], np.int32), 6)
    np.testing.assert_array_equal(got, [8, 9, 10, 11, 0, 1])


def test_materialize_rejects_out_of_bounds_entry():
    shared = np.zeros((3, 4), np.float32)
    exclusive = np.zeros((2, 4), np.float32)
    with pytest.raises(WeightSepError, match=r"entry 1 is 5, outside \[0, 5\)"):
        pages.materialize(shared, exclusive, np.array([0, 5]), 8)
    with pytest.raises(WeightSepError, match=r"entry 0 is -1"):
        pages.materialize(shared, exclusive, np.array([-1, 0]), 8)
    with pytest.raises(WeightSepError, match="page table has 3 entries"):
        pages.materialize(shared, exclusive, np.array([0, 1, 2]), 8)
    with pytest.raises(WeightSepError, match="same -page_size"):
        pages.materialize(shared, np.zeros((2, 5), np.float32), np.array([0, 1]), 8)


def test_validate_page_table_accepts_and_converts():
    table = pages.validate_page_table(np.array([3, 0, 5, 6], dtype=np.int64), 4, 3, 30, 8)
    assert table.dtype == np.int32
    np.testing.assert_array_equal(table, [3, 0, 5, 6])


@pytest.mark.parametrize(
    "table, message",
    [
        (np.array([0, 1, 2]), "has 3 entries"),  # n=30, S=8 needs 4 pages
        (np.array([0, 1, 2, 7]), r"entry 3 is 7, outside \[0, 7\)"),
        (np.array([0, 1, -2, 3]), "entry 2 is -2"),
        (np.array([0.0, 1.0, 2.0, 3.0]), "integers"),
        (np.array([[0, 1, 2, 3]]), "1-D"),
        (np.array([1, 2, 1, 4]), r"shared page 1 for more than one task page \(\[0, 2\]\)"),
        (np.array([0, 5, 1, 5]), "exclusive row 1 for more than one"),
    ],
)
def test_validate_page_table_rejects(table, message):
    with pytest.raises(WeightSepError, match=message):
        pages.validate_page_table(table, 4, 3, 30, 8)


def test_occupation_lists_and_counts_agree():
    P = 5
    tables = {
        "a": np.array([0, 1, 2, 5], np.int32),  # page 3 is exclusive row 0
        "b": np.array([2, 6, 0], np.int32),
        "c": np.array([4], np.int32),
    }
    occ = pages.occupation(tables, P)
    assert occ == [
        [("a", 0), ("b", 2)],
        [("a", 1)],
        [("a", 2), ("b", 0)],
        [],
        [("c", 0)],
    ]
    counts = pages.occupation_counts(tables, P)
    np.testing.assert_array_equal(counts, [2, 1, 2, 0, 1])
    np.testing.assert_array_equal(counts, [len(o) for o in occ])


def test_occupation_counts_random_consistency():
    rng = np.random.default_rng(7)
    P, E = 20, 50
    tables = {f"t{i}": rng.permutation(P + E)[: rng.integers(1, 30)] for i in range(6)}
    occ = pages.occupation(tables, P)
    counts = pages.occupation_counts(tables, P)
    np.testing.assert_array_equal(counts, [len(o) for o in occ])
    assert counts.sum() == sum(int(np.sum(t < P)) for t in tables.values())
    for q, occupants in enumerate(occ):
        for name, page in occupants:
            assert tables[name][page] == q


def test_occupation_rejects_negative_entries():
    with pytest.raises(WeightSepError, match="task 'a'"):
        pages.occupation_counts({"a": np.array([0, -1])}, 3)
    with pytest.raises(WeightSepError, match="task 'a'"):
        pages.occupation({"a": np.array([0, -1])}, 3)
