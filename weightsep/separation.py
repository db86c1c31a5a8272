"""Separation: split a task's weight-pages into exclusive and sharable pages.

From the paper (Sec. "Weight-page separation"): the pages that carry most of a
task's Fisher information are kept exclusive (level-2 memory, never shared);
the others are sharable and are later overlapped onto the shared pool.  How
much Fisher mass to keep exclusive is set by the target performance rate
(TPR), which comes from the alpha-loss of the task's network on its training
data and the user's -target_accuracy.

Pipeline: contribution_density -> (alpha_loss ->) target_performance_rate ->
select_exclusive_pages, all wrapped by `separate`, which also counts weights
the way the original printed them.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from weightsep.errors import WeightSepError
from weightsep.pages import num_pages, page_sums

# -log(p) of a zero probability would be infinite; clip so one dead sample cannot make L infinite.
_MIN_PROB = 1e-12


def contribution_density(fisher, page_size: int) -> np.ndarray:
    """Contribution density of each weight-page: CD_i = sum(F in page i) / sum(F).

    `fisher` is the task's Fisher information vector (non-negative, length n).
    When it is all zero there is no information to rank pages by, so every
    weight counts the same: CD_i = (real weights in page i) / n (the padding
    of the last page counts for nothing). Returns float64 [n_p], summing to 1.
    """
    fisher = np.asarray(fisher)
    if fisher.ndim != 1:
        raise WeightSepError(f"Fisher information must be a 1-D vector, got shape {fisher.shape}")
    if fisher.size == 0:
        raise WeightSepError("Fisher information is empty; the task has no weights")
    if not np.all(np.isfinite(fisher)):
        raise WeightSepError("Fisher information holds NaN or Inf: the network's gradients are not finite")
    if np.any(fisher < 0):
        raise WeightSepError("Fisher information must be non-negative (a mean of squared gradients): the Fisher "
                             "vector is corrupt")
    sums = page_sums(fisher, page_size)
    total = sums.sum()
    if total == 0:
        return page_sums(np.ones(fisher.shape[0]), page_size) / fisher.shape[0]
    return sums / total


def alpha_loss(probs, labels, alpha: float) -> tuple[float, float]:
    """The alpha-loss of a network on labelled samples (paper, Sec. "TPR").

    Each probability row is divided by its L2 norm; p_true is the normalized
    probability of the true class. L = mean over all samples of -log(p_true),
    where samples with p_true > alpha count 0; alpha_acc = fraction of samples
    with p_true > alpha. Returns (L, alpha_acc) as Python floats.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise WeightSepError(f"probabilities must be a non-empty [samples, classes] array, got shape {probs.shape}")
    if labels.shape != (probs.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise WeightSepError(
            f"labels must be {probs.shape[0]} integer class indices (one per sample), "
            f"got shape {labels.shape}, dtype {labels.dtype}"
        )
    if np.any(labels < 0) or np.any(labels >= probs.shape[1]):
        raise WeightSepError(f"labels must lie in [0, {probs.shape[1]}); check the task's number of classes")
    if not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise WeightSepError("probabilities must be finite and non-negative (softmax outputs)")
    norms = np.linalg.norm(probs, axis=1)
    if np.any(norms == 0):
        raise WeightSepError(f"sample {int(np.argmax(norms == 0))} has an all-zero probability row")
    p_true = probs[np.arange(probs.shape[0]), labels] / norms
    missed = p_true <= alpha
    loss = np.where(missed, -np.log(np.maximum(p_true, _MIN_PROB)), 0.0).mean()
    return float(loss), float(np.mean(~missed))


def target_performance_rate(probs, labels, alpha: float = 0.5, target_accuracy: float | None = None) -> float:
    """Target performance rate (TPR): the share of Fisher mass to keep exclusive.

    1.0 when no target accuracy is given (keep the network as it is). Otherwise,
    with (L, alpha_acc) = alpha_loss(probs, labels, alpha):
    target_loss = L * (alpha_acc + 1 - target_accuracy) and
    TPR = max(0, 1 - (target_loss - L) / L).
    When L == 0 the ratio (target_loss - L) / L is taken at its value for any
    L > 0, alpha_acc - target_accuracy, instead of dividing by zero.
    The TPR may exceed 1 when the target is above alpha_acc (then every page
    ends up exclusive, as in the original).
    """
    if target_accuracy is None:
        return 1.0
    loss, alpha_acc = alpha_loss(probs, labels, alpha)
    if loss > 0:
        ratio = (target_loss(loss, alpha_acc, target_accuracy) - loss) / loss
    else:
        ratio = alpha_acc - target_accuracy
    return max(0.0, 1.0 - ratio)


def target_loss(loss: float, alpha_acc: float, target_accuracy: float) -> float:
    """The original's target loss: L * (alpha_acc + 1 - target_accuracy) (-mode=tl)."""
    if not 0.0 <= target_accuracy <= 1.0:
        raise WeightSepError(f"-target_accuracy must lie in [0, 1], got {target_accuracy}")
    return loss * (alpha_acc + 1.0 - target_accuracy)


def select_exclusive_pages(
    cd,
    tpr: float,
    margin: float = 0.1,
    num_shared_pages: int = 128,
    use_exclusive_page: bool = True,
) -> np.ndarray:
    """Choose a task's exclusive pages from its contribution densities.

    Walk the pages by CD descending with a running sum c = 0: before taking a
    page, stop if tpr - c < margin; otherwise take it and add its CD. With
    use_exclusive_page=False the TPR is 0, so the walk takes nothing (also when
    margin is 0). Then, while more than num_shared_pages pages remain sharable,
    the next pages of the same order become exclusive, since the pool could not
    hold them.

    Ties in CD are broken by page index, lower first (a stable sort), so the
    result is deterministic. Returns the exclusive page indices, sorted, int64.
    """
    cd = np.asarray(cd, dtype=np.float64)
    if cd.ndim != 1:
        raise WeightSepError(f"contribution densities must be a 1-D vector, got shape {cd.shape}")
    if not math.isfinite(tpr) or tpr < 0:
        raise WeightSepError(f"TPR must be a finite non-negative number, got {tpr}")
    if not math.isfinite(margin) or margin < 0:
        raise WeightSepError(f"-margin must be a finite non-negative number, got {margin}")
    if num_shared_pages < 0:
        raise WeightSepError(f"-num_pages must be non-negative, got {num_shared_pages}")
    order = np.argsort(-cd, kind="stable")
    taken = 0
    if use_exclusive_page:
        c = 0.0
        for page in order:
            if tpr - c < margin:
                break
            c += float(cd[page])
            taken += 1
    taken = max(taken, cd.shape[0] - int(num_shared_pages))
    return np.sort(order[:taken]).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class SeparationResult:
    """Outcome of separating one task; the counts are those the original printed.

    Weight counts are real weights: the padding of the last page never counts.
    """

    exclusive_pages: np.ndarray  # sorted task page indices kept exclusive
    sharable_pages: np.ndarray  # sorted task page indices to overlap onto the pool
    contribution_density: np.ndarray  # CD per task page
    num_of_weight: int
    num_of_weight_page: int
    num_of_exclusive_weight: int
    num_of_exclusive_weight_page: int
    num_of_inexclusive_weight: int
    num_of_inexclusive_weight_page: int

    def summary_lines(self) -> list[str]:
        """The original's printout of a separation, line by line."""
        lines = [f"exclusive_weight_page_list {self.exclusive_pages.tolist()}"]
        for field in (
            "num_of_weight",
            "num_of_weight_page",
            "num_of_exclusive_weight",
            "num_of_exclusive_weight_page",
            "num_of_inexclusive_weight",
            "num_of_inexclusive_weight_page",
        ):
            lines.append(f"{field} {getattr(self, field)}")
        return lines


def separate(
    fisher,
    n: int,
    page_size: int,
    tpr: float,
    margin: float = 0.1,
    num_shared_pages: int = 128,
    use_exclusive_page: bool = True,
) -> SeparationResult:
    """Separate a task of n weights with Fisher vector `fisher` into exclusive and sharable pages."""
    fisher = np.asarray(fisher)
    if fisher.shape != (n,):
        raise WeightSepError(
            f"Fisher information has shape {fisher.shape} but the task has {n} weights: it is another network's"
        )
    cd = contribution_density(fisher, page_size)
    exclusive = select_exclusive_pages(cd, tpr, margin, num_shared_pages, use_exclusive_page)
    n_p = num_pages(n, page_size)
    is_exclusive = np.zeros(n_p, dtype=bool)
    is_exclusive[exclusive] = True
    weights_per_page = np.full(n_p, page_size, dtype=np.int64)
    weights_per_page[-1] = n - (n_p - 1) * page_size
    num_exclusive_weight = int(weights_per_page[is_exclusive].sum())
    return SeparationResult(
        exclusive_pages=exclusive,
        sharable_pages=np.flatnonzero(~is_exclusive).astype(np.int64),
        contribution_density=cd,
        num_of_weight=int(n),
        num_of_weight_page=n_p,
        num_of_exclusive_weight=num_exclusive_weight,
        num_of_exclusive_weight_page=int(exclusive.shape[0]),
        num_of_inexclusive_weight=int(n) - num_exclusive_weight,
        num_of_inexclusive_weight_page=n_p - int(exclusive.shape[0]),
    )
