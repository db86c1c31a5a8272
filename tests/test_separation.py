"""Tests of weightsep.separation on hand-made Fisher vectors and probabilities."""

import math

import numpy as np
import pytest

from weightsep import separation
from weightsep.errors import WeightSepError


# --- contribution density -------------------------------------------------------------

def test_contribution_density_by_hand():
    # Pages of 2: [4, 0] [1, 1] [0, 3] [1, pad] -> sums 4, 2, 3, 1 of total 10.
    cd = separation.contribution_density(np.array([4, 0, 1, 1, 0, 3, 1], np.float32), 2)
    np.testing.assert_allclose(cd, [0.4, 0.2, 0.3, 0.1])


def test_contribution_density_all_zero_counts_real_weights():
    # 5 weights in pages of 2: 2, 2 and 1 real weights -> 0.4, 0.4, 0.2.
    np.testing.assert_allclose(separation.contribution_density(np.zeros(5), 2), [0.4, 0.4, 0.2])


@pytest.mark.parametrize("fisher", [np.array([1.0, -0.5]), np.array([1.0, np.nan]), np.zeros(0), np.zeros((2, 2))])
def test_contribution_density_rejects_bad_fisher(fisher):
    with pytest.raises(WeightSepError):
        separation.contribution_density(fisher, 2)


# --- alpha-loss and TPR ---------------------------------------------------------------

# Rows and their L2-normalized true-class probability (alpha = 0.5):
#   [2, 2, 1] label 2: norm 3, p_true 1/3 <= 0.5 -> -log(1/3) = log 3
#   [2, 2, 1] label 0: 2/3 > 0.5               -> 0, correct
#   [1, 0, 0] label 0: 1                       -> 0, correct
#   [1, 2, 2] label 0: norm 3, 1/3             -> log 3
# L = 2 log 3 / 4 = log(3) / 2, alpha_acc = 2 / 4 = 0.5.
PROBS = np.array([[2, 2, 1], [2, 2, 1], [1, 0, 0], [1, 2, 2]], np.float64)
LABELS = np.array([2, 0, 0, 0])


def test_alpha_loss_by_hand():
    loss, acc = separation.alpha_loss(PROBS, LABELS, 0.5)
    assert loss == pytest.approx(math.log(3) / 2)
    assert acc == pytest.approx(0.5)


def test_alpha_loss_is_invariant_to_row_scale():
    scaled = PROBS * np.array([[0.1], [7.0], [0.5], [3.0]])
    assert separation.alpha_loss(scaled, LABELS, 0.5) == pytest.approx(separation.alpha_loss(PROBS, LABELS, 0.5))


def test_alpha_loss_counts_p_true_equal_alpha_as_missed():
    # [3, 4] / 5 = [0.6, 0.8]: p_true = 0.6 exactly, which is <= alpha = 0.6.
    loss, acc = separation.alpha_loss(np.array([[3.0, 4.0]]), np.array([0]), 0.6)
    assert loss == pytest.approx(-math.log(0.6))
    assert acc == 0.0


def test_alpha_loss_zero_probability_stays_finite():
    loss, acc = separation.alpha_loss(np.array([[0.0, 1.0]]), np.array([0]), 0.5)
    assert math.isfinite(loss) and loss > 20
    assert acc == 0.0


def test_tpr_without_target_is_one():
    assert separation.target_performance_rate(PROBS, LABELS) == 1.0


@pytest.mark.parametrize(
    "target, expected",
    [
        # target_loss = L (0.5 + 1 - 0.3) = 1.2 L -> TPR = 1 - 0.2 = 0.8
        (0.3, 0.8),
        # target_loss = L (0.5 + 1 - 0.5) = L -> TPR = 1
        (0.5, 1.0),
        # target_loss = 0.6 L -> TPR = 1 + 0.4 = 1.4 (not clipped above: every page goes exclusive)
        (0.9, 1.4),
        # target_loss = L (0.5 + 1 - 0) = 1.5 L -> TPR = 0.5
        (0.0, 0.5),
    ],
)
def test_tpr_with_target_by_hand(target, expected):
    assert separation.target_performance_rate(PROBS, LABELS, 0.5, target) == pytest.approx(expected)


def test_tpr_when_alpha_loss_is_zero():
    # Every sample has p_true > alpha: L = 0, alpha_acc = 1, TPR = 1 - (1 - target) = target.
    probs = np.array([[1.0, 0.0], [0.1, 0.9]])
    assert separation.target_performance_rate(probs, np.array([0, 1]), 0.5, 0.7) == pytest.approx(0.7)


@pytest.mark.parametrize(
    "probs, labels",
    [
        (np.ones((2, 3)), np.array([0, 3])),  # label out of range
        (np.ones((2, 3)), np.array([0])),  # one label short
        (np.ones((2, 3)), np.array([0.0, 1.0])),  # float labels
        (np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([0, 0])),  # all-zero row
        (np.array([[-1.0, 2.0]]), np.array([0])),
    ],
)
def test_alpha_loss_rejects_bad_input(probs, labels):
    with pytest.raises(WeightSepError):
        separation.alpha_loss(probs, labels, 0.5)


def test_tpr_rejects_target_outside_unit_interval():
    with pytest.raises(WeightSepError, match="target_accuracy"):
        separation.target_performance_rate(PROBS, LABELS, 0.5, 1.5)


# --- exclusive page selection ---------------------------------------------------------

CD = np.array([0.4, 0.2, 0.3, 0.1])  # order by CD: 0, 2, 1, 3


@pytest.mark.parametrize(
    "tpr, margin, expected",
    [
        # c=0: 1-0 >= .35 take 0 (c=.4); .6 >= .35 take 2 (c=.7); .3 < .35 stop.
        (1.0, 0.35, [0, 2]),
        # c=0: take 0 (c=.4); .6 >= .6 take 2 (c=.7); .3 < .6 stop.
        (1.0, 0.6, [0, 2]),
        # c=0: take 0 (c=.4); .6 < .61 stop.
        (1.0, 0.61, [0]),
        # tpr below margin at the start: nothing.
        (0.05, 0.1, []),
        # tpr = 0 (what -use_exclusive_page=0 means): nothing.
        (0.0, 0.1, []),
        # c reaches 1 after all four pages; the walk ends with the pages.
        (1.0, 0.01, [0, 1, 2, 3]),
        # TPR above 1: every page.
        (1.4, 0.1, [0, 1, 2, 3]),
        # tpr = .55: take 0 (c=.4); .15 >= .1 take 2 (c=.7); -.15 < .1 stop.
        (0.55, 0.1, [0, 2]),
        # tpr = .45: take 0 (c=.4); .05 < .1 stop.
        (0.45, 0.1, [0]),
    ],
)
def test_margin_walk(tpr, margin, expected):
    got = separation.select_exclusive_pages(CD, tpr, margin, num_shared_pages=128)
    np.testing.assert_array_equal(got, expected)


def test_ties_broken_by_lower_index():
    # All CDs equal: take 0 (c=.25), .75 >= .6 take 1 (c=.5), .5 < .6 stop.
    got = separation.select_exclusive_pages(np.full(4, 0.25), 1.0, 0.6)
    np.testing.assert_array_equal(got, [0, 1])


def test_use_exclusive_page_off_takes_nothing_even_with_zero_margin():
    got = separation.select_exclusive_pages(CD, 1.0, 0.0, num_shared_pages=128, use_exclusive_page=False)
    assert got.size == 0


@pytest.mark.parametrize(
    "pool, expected",
    [
        (4, []),  # everything fits
        (2, [0, 2]),  # 4 pages, 2 fit: the two highest CD go exclusive
        (1, [0, 1, 2]),  # then page 1 (CD .2), ahead of page 3 (CD .1)
        (0, [0, 1, 2, 3]),
    ],
)
def test_forced_exclusive_when_pool_too_small(pool, expected):
    got = separation.select_exclusive_pages(CD, 1.0, 0.1, num_shared_pages=pool, use_exclusive_page=False)
    np.testing.assert_array_equal(got, expected)


def test_forced_exclusive_after_walk():
    # Walk (tpr 1, margin .65): take 0 (c=.4); .6 < .65 stop -> [0]; 3 sharable > P=2 -> next in order: 2.
    got = separation.select_exclusive_pages(CD, 1.0, 0.65, num_shared_pages=2)
    np.testing.assert_array_equal(got, [0, 2])


def test_select_rejects_bad_parameters():
    with pytest.raises(WeightSepError, match="margin"):
        separation.select_exclusive_pages(CD, 1.0, -0.1)
    with pytest.raises(WeightSepError, match="TPR"):
        separation.select_exclusive_pages(CD, float("nan"), 0.1)


# --- separate and its counts ----------------------------------------------------------

def test_separate_counts_the_partial_last_page():
    # Pages of 2: [0, 1] [0, 0] [5, pad] -> CD 1/6, 0, 5/6.
    # Walk (tpr 1, margin .5): take page 2 (c=5/6); 1/6 < .5 stop.
    # Page 2 holds one real weight: 1 exclusive weight, 4 inexclusive in 2 pages.
    res = separation.separate(np.array([0, 1, 0, 0, 5], np.float32), 5, 2, tpr=1.0, margin=0.5)
    np.testing.assert_array_equal(res.exclusive_pages, [2])
    np.testing.assert_array_equal(res.sharable_pages, [0, 1])
    assert (res.num_of_weight, res.num_of_weight_page) == (5, 3)
    assert (res.num_of_exclusive_weight, res.num_of_exclusive_weight_page) == (1, 1)
    assert (res.num_of_inexclusive_weight, res.num_of_inexclusive_weight_page) == (4, 2)


def test_separate_reproduces_the_original_cifar10_printout():
    # CIFAR-10: 64,670 weights, 127 pages of 512. Put 50% of the Fisher mass in page 0,
    # 45% in page 9 and spread 5% over the rest: the walk (tpr 1, margin .1) takes
    # page 0 (c=.5), page 9 (c=.95), then 1 - .95 < .1 stops.
    n, S = 64670, 512
    fisher = np.full(n, 0.05 / (n - 2 * S), np.float64)
    fisher[:S] = 0.5 / S
    fisher[9 * S:10 * S] = 0.45 / S
    res = separation.separate(fisher, n, S, tpr=1.0, margin=0.1, num_shared_pages=128)
    assert res.summary_lines() == [
        "exclusive_weight_page_list [0, 9]",
        "num_of_weight 64670",
        "num_of_weight_page 127",
        "num_of_exclusive_weight 1024",
        "num_of_exclusive_weight_page 2",
        "num_of_inexclusive_weight 63646",
        "num_of_inexclusive_weight_page 125",
    ]
    assert res.contribution_density.sum() == pytest.approx(1.0)


def test_separate_with_exclusive_pages_off_and_small_pool():
    # 10 weights, pages of 2 -> 5 pages; Fisher puts page CDs in order 3 > 1 > 4 > 0 > 2.
    fisher = np.array([1, 0, 3, 3, 0, 0, 9, 1, 2, 2], np.float32)  # sums 1, 6, 0, 10, 4
    res = separation.separate(fisher, 10, 2, tpr=1.0, margin=0.1, num_shared_pages=3, use_exclusive_page=False)
    np.testing.assert_array_equal(res.exclusive_pages, [1, 3])
    np.testing.assert_array_equal(res.sharable_pages, [0, 2, 4])
    assert res.num_of_exclusive_weight == 4 and res.num_of_inexclusive_weight == 6


def test_separate_rejects_mismatched_fisher():
    with pytest.raises(WeightSepError, match="has 6 weights"):
        separation.separate(np.ones(5), 6, 2, tpr=1.0)
