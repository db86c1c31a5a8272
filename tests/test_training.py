"""Training (weightsep/training.py) against independent references.

Most checks run on one tiny dense network (16 inputs, 8 hidden units with leaky ReLU, 3 classes:
163 weights, 6 pages of 32) whose logits, losses and gradients are computed here again in
NumPy, by hand: the original's batch-softmax cross-entropy, the overlapping loss (plain loops
over hand-made page tables), TensorFlow 1's Adam (Keras' Adam on the NumPy gradients), the
original's model selection (snapshots of the trajectory) and quantization-aware training
(weightsep.pageformat in NumPy).
"""

import math

import numpy as np
import pytest

from conftest import write_task_folder
from weightsep.errors import WeightSepError
from weightsep.networks import Network, load_network, network_file
from weightsep.pageformat import page_format
from weightsep.tasks import load_task
from weightsep.tf import keras, tf
from weightsep.training import (OverlapTargets, SeparatedTrainer, StepLog, TrainingDiverged,
                                batch_softmax_cross_entropy, cross_entropy, fake_quantize, overlap_targets,
                                pretrain, pretrain_task, time_training_step)

SHAPE, HIDDEN, CLASSES = (4, 4, 1), 8, 3
N = 16 * HIDDEN + HIDDEN + HIDDEN * CLASSES + CLASSES  # 163
S = 32                                                 # 6 pages, 29 weights of padding
N_PAGES = 6
LAMB = 0.1


# --- the tiny network, in NumPy -----------------------------------------------------------

def unpack(w):
    w = np.asarray(w, np.float64)[:N]
    w1, w = w[:16 * HIDDEN].reshape(16, HIDDEN), w[16 * HIDDEN:]
    b1, w = w[:HIDDEN], w[HIDDEN:]
    w2, b2 = w[:HIDDEN * CLASSES].reshape(HIDDEN, CLASSES), w[HIDDEN * CLASSES:]
    return w1, b1, w2, b2


def mlp(w, x):
    """(logits, inputs, pre-activations, hidden) of the dense network, float64."""
    w1, b1, w2, b2 = unpack(w)
    inputs = np.asarray(x, np.float64).reshape(len(x), -1)
    pre = inputs @ w1 + b1
    hidden = np.where(pre > 0, pre, 0.2 * pre)
    return hidden @ w2 + b2, inputs, pre, hidden


def softmax_rows(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def batch_softmax(z):
    """The original graphs' softmax: exp(z - max over ALL) / sum over ALL entries."""
    e = np.exp(z - z.max())
    return e / e.sum()


def reference_loss(z, y, loss):
    p = batch_softmax(z) if loss == "batch_softmax" else softmax_rows(z)
    return -np.mean(np.log(p[np.arange(len(y)), y]))


def reference_grad(w, x, y, loss):
    """d loss / d w by hand (backpropagation through the dense network), float64 [N]."""
    z, inputs, pre, hidden = mlp(w, x)
    onehot = np.eye(CLASSES)[y]
    # batch softmax: loss = logsumexp(all z) - mean_i z[i, y_i]; per example: mean of row losses.
    dz = (batch_softmax(z) - onehot / len(y)) if loss == "batch_softmax" else (softmax_rows(z) - onehot) / len(y)
    _, _, w2, _ = unpack(w)
    dpre = (dz @ w2.T) * np.where(pre > 0, 1.0, 0.2)
    return np.concatenate([(inputs.T @ dpre).ravel(), dpre.sum(0), (hidden.T @ dz).ravel(), dz.sum(0)])


def predictions(w, x):
    return np.argmax(mlp(w, x)[0], axis=1)


def margins(w, x):
    """Gap between the two largest logits: examples far from a tie predict the same in float32."""
    z = np.sort(mlp(w, x)[0], axis=1)
    return z[:, -1] - z[:, -2]


def padded(w, fill=0.0):
    out = np.full(N_PAGES * S, fill, np.float32)
    out[:N] = w
    return out


# --- fixtures ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlp_task(tmp_path_factory):
    folder = write_task_folder(tmp_path_factory.mktemp("training"), "mlp", input_shape=SHAPE,
                               num_classes=CLASSES, dense=(HIDDEN,), dense_activation="leaky_relu")
    return load_task(folder)


@pytest.fixture(scope="module")
def net(mlp_task):
    net = Network(mlp_task)
    assert net.num_weights == N
    return net


@pytest.fixture(scope="module")
def trainer(net):
    """The default trainer (lr 1e-3, lamb 0.1, batch softmax, float32 pages): compiled once."""
    return SeparatedTrainer(net, page_size=S)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    x = rng.uniform(0, 1, (40, *SHAPE)).astype(np.float32)
    y = rng.integers(0, CLASSES, 40)
    pool = rng.uniform(0, 1, (3000, *SHAPE)).astype(np.float32)
    w0 = rng.normal(0, 0.3, N).astype(np.float32)
    return x, y, pool, w0


def no_targets():
    return OverlapTargets(np.zeros((0, N), np.float32), np.zeros((0, N), np.float32))


# --- the losses -------------------------------------------------------------------

def test_batch_softmax_loss_is_the_literal_formula():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (7, 5)).astype(np.float32)
    y = rng.integers(0, 5, 7)
    terms = batch_softmax_cross_entropy(tf.constant(z), tf.constant(y)).numpy()
    p = batch_softmax(z.astype(np.float64))
    np.testing.assert_allclose(terms, -np.log(p[np.arange(7), y]), rtol=1e-5)
    np.testing.assert_allclose(terms.mean(), reference_loss(z.astype(np.float64), y, "batch_softmax"), rtol=1e-6)
    # Not the per-example cross-entropy: that one is much smaller here.
    assert terms.mean() > reference_loss(z.astype(np.float64), y, "per_example") + 1.0


def loss_and_grad(net, w, x, y, loss):
    w_t = tf.constant(w)
    with tf.GradientTape() as tape:
        tape.watch(w_t)
        value, probs = cross_entropy(net, w_t, tf.constant(x), tf.constant(y), loss)
    return float(value), probs.numpy(), tape.gradient(value, w_t).numpy()


def test_cross_entropy_values_and_gradients_of_both_losses(net, data):
    x, y, _, w0 = data
    x, y = x[:9], y[:9]
    z = mlp(w0, x)[0]
    grads = {}
    for loss in ("batch_softmax", "per_example"):
        value, probs, grad = loss_and_grad(net, w0, x, y, loss)
        np.testing.assert_allclose(value, reference_loss(z, y, loss), rtol=1e-5)
        np.testing.assert_allclose(probs, softmax_rows(z), rtol=1e-5, atol=1e-7)  # per-example probabilities
        np.testing.assert_allclose(grad, reference_grad(w0, x, y, loss), rtol=1e-4, atol=1e-6)
        grads[loss] = grad
    # The two losses really differ in their gradients, not only in their values.
    diff = np.linalg.norm(grads["batch_softmax"] - grads["per_example"])
    assert diff > 0.1 * np.linalg.norm(grads["per_example"])


def test_for_one_example_the_batch_softmax_is_the_plain_softmax(net, data):
    x, y, _, w0 = data
    one = [loss_and_grad(net, w0, x[3:4], y[3:4], loss) for loss in ("batch_softmax", "per_example")]
    np.testing.assert_allclose(one[0][0], one[1][0], rtol=1e-6)
    np.testing.assert_allclose(one[0][2], one[1][2], rtol=1e-5, atol=1e-7)


# --- the overlapping loss ---------------------------------------------------------

POOL = 8  # shared pages in the hand-made layout below
# This task: 6 pages; page 1 is exclusive (row 1), pages 0, 2, 3, 4, 5 on shared 0, 3, 5, 2, 6.
TABLE = np.array([0, POOL + 1, 3, 5, 2, 6], np.int32)
# Other tasks (n, page table): o1's page 0 sits on shared 3 (our page 2), its page 2 on shared 0
# (our page 0), its last page (4 real weights + padding) on shared 2 (our page 4); o2's page 0 on
# shared 5 (our page 3), its page 1 on shared 2 as well (our page 4, with o1); o3 shares nothing.
OTHERS = {"o1": (100, [3, POOL + 0, 0, 2]), "o2": (64, [5, 2]), "o3": (40, [1, POOL + 2])}


def aligned_reference(table, n, size, num_shared, others):
    """Loops over our elements and the other tasks' pages: (fisher [K, n], weights [K, n])."""
    fishers, weights = [], []
    for table_o, fisher_o, weights_o in others:
        f, v, shares = np.zeros(n, np.float32), np.zeros(n, np.float32), False
        for k in range(n):
            entry = table[k // size]
            if entry >= num_shared:
                continue
            for j, entry_o in enumerate(table_o):
                if entry_o == entry:
                    shares = True
                    source = j * size + k % size
                    if source < len(fisher_o):  # beyond o's last weight: its zero padding
                        f[k], v[k] = fisher_o[source], weights_o[source]
        if shares:
            fishers.append(f)
            weights.append(v)
    return np.array(fishers), np.array(weights)


def overlap_reference(w, fisher, weights):
    """The original's arithmetic_mean, one element at a time (float64)."""
    total = 0.0
    for k in range(len(w)):
        costs = [float(fisher[o, k]) * (float(w[k]) - float(weights[o, k])) ** 2 for o in range(len(fisher))]
        total += sum(costs) / max(1, sum(c != 0 for c in costs))
    return total


def overlap_grad_reference(w, fisher, weights):
    """d overlap / d w with the count of contributing tasks held fixed (it carries no gradient)."""
    w = np.asarray(w, np.float64)[:N]
    cost = fisher * (w - weights) ** 2
    count = np.maximum(1, np.count_nonzero(cost, axis=0))
    return (2 * fisher * (w - weights)).sum(axis=0) / count


@pytest.fixture(scope="module")
def overlap_case(data):
    """Hand-made page tables, the other tasks' vectors, and our weights w, where o1's weights
    equal w at two elements that o1 and o2 both cover (so o1 drops out of the count there)."""
    rng = np.random.default_rng(3)
    w = data[3]
    others = []
    for n_o, table_o in OTHERS.values():
        others.append((np.array(table_o, np.int32), rng.uniform(0.1, 1.0, n_o).astype(np.float32),
                       rng.normal(0, 0.3, n_o).astype(np.float32)))
    # Our page 4 (elements 128..159) holds o1's last page: o1 element 96 + i is our element 128 + i.
    others[0][2][96:98] = w[128:130]
    others[1][1][32 + 5] = 0.0  # and o2's Fisher is zero at our element 133
    return w, others


def test_overlap_targets_align_the_other_tasks_through_the_pool(overlap_case):
    w, others = overlap_case
    targets = overlap_targets(TABLE, N, S, POOL, others)
    ref_f, ref_w = aligned_reference(TABLE, N, S, POOL, others)
    assert targets.num_tasks == 2 == len(ref_f)  # o3 shares no page: left out
    np.testing.assert_array_equal(targets.fisher, ref_f)
    np.testing.assert_array_equal(targets.weights, ref_w)
    # Spot checks of the layout typed in by hand.
    f1, f2 = others[0][1], others[1][1]
    np.testing.assert_array_equal(targets.fisher[0, 0:32], f1[64:96])      # o1 page 2 -> our page 0
    np.testing.assert_array_equal(targets.fisher[0, 64:96], f1[0:32])      # o1 page 0 -> our page 2
    np.testing.assert_array_equal(targets.fisher[0, 128:132], f1[96:100])  # o1's last page ...
    assert not targets.fisher[0, 132:160].any()                            # ... its padding is zero
    np.testing.assert_array_equal(targets.fisher[1, 96:128], f2[0:32])     # o2 page 0 -> our page 3
    np.testing.assert_array_equal(targets.fisher[1, 128:155], f2[32:59])   # o2 page 1 -> our page 4, cut at n
    assert not targets.fisher[:, 32:64].any()                              # our exclusive page
    assert not targets.fisher[:, 160:].any()                               # shared 6: nobody else


def test_overlap_loss_is_the_originals_arithmetic_mean(trainer, overlap_case):
    w, others = overlap_case
    targets = overlap_targets(TABLE, N, S, POOL, others)
    ref = overlap_reference(w, targets.fisher, targets.weights)
    # The case is sharp: dividing by the number of aligned tasks instead (or not at all) differs.
    aligned = np.maximum(1, np.count_nonzero(targets.fisher, axis=0))
    naive = float(np.sum((targets.fisher * (w - targets.weights) ** 2).sum(0) / aligned))
    assert abs(naive - ref) > 1e-3 * ref
    assert math.isclose(targets.value(w), ref, rel_tol=1e-5)
    trainer.reset(padded(w).reshape(N_PAGES, S), targets)
    assert math.isclose(float(trainer._overlap(tf.constant(padded(w)))), ref, rel_tol=1e-5)


def test_logged_losses_are_the_batch_statistics_before_the_update(trainer, data, overlap_case):
    x, y, _, _ = data
    w, others = overlap_case
    targets = overlap_targets(TABLE, N, S, POOL, others)
    trainer.reset(padded(w).reshape(N_PAGES, S), targets)
    logs = []
    outcome = trainer.train(x, y, x[:20], y[:20], 1, np.random.default_rng(11), batch_size=10, log=logs.append)
    batch = np.random.default_rng(11).choice(40, size=10, replace=False)
    [entry] = [e for e in logs if isinstance(e, StepLog)]
    assert entry.step == 0
    # The printed overlapping loss includes lamb, as the original's.
    assert math.isclose(entry.overlapping_loss, LAMB * overlap_reference(w, targets.fisher, targets.weights),
                        rel_tol=1e-5)
    z = mlp(w, x[batch])[0]
    assert math.isclose(entry.original_loss, reference_loss(z, y[batch], "batch_softmax"), rel_tol=1e-5)
    assert entry.train_accuracy == np.mean(np.argmax(z, 1) == y[batch])
    assert entry.selection_accuracy == outcome.start_accuracy == np.mean(predictions(w, x[:20]) == y[:20])


# --- Adam -------------------------------------------------------------------------

def test_adam_steps_equal_tensorflows_adam(trainer, data, overlap_case):
    """Three steps of batch-softmax + lamb * overlap against Keras' Adam (lr 1e-3, beta 0.9 / 0.999,
    epsilon 1e-8: TensorFlow 1's AdamOptimizer update) on gradients computed by hand."""
    x, y, _, _ = data
    w, others = overlap_case
    targets = overlap_targets(TABLE, N, S, POOL, others)
    start = padded(w, fill=0.25)  # the padding holds what the pool has there
    iters = 3

    def run_trainer():
        trainer.reset(start.reshape(N_PAGES, S), targets)
        trainer.train(x, y, x[:5], y[:5], iters, np.random.default_rng(5), batch_size=10)
        return trainer.w.numpy()

    ours = run_trainer()
    var = tf.Variable(w)
    adam = keras.optimizers.Adam(learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
    rng = np.random.default_rng(5)
    for _ in range(iters):
        batch = rng.choice(len(x), size=10, replace=False)
        current = var.numpy()
        g = reference_grad(current, x[batch], y[batch], "batch_softmax") + \
            LAMB * overlap_grad_reference(current, targets.fisher, targets.weights)
        adam.apply_gradients([(tf.constant(g.astype(np.float32)), var)])
    np.testing.assert_allclose(ours[:N], var.numpy(), rtol=0, atol=1e-6)
    assert np.max(np.abs(ours[:N] - w)) > 2e-3  # the weights did move (three steps of about lr)
    np.testing.assert_array_equal(ours[N:], start[N:])
    # A fresh optimizer on every reset: the same call gives the same weights again.
    np.testing.assert_array_equal(run_trainer(), ours)


# --- model selection --------------------------------------------------------------

@pytest.fixture(scope="module")
def trajectory(trainer, data):
    """The weights before each of 205 steps (and after the last), drawn from seed 21 with batches of
    10: the same steps train() takes with the same generator."""
    x, y, _, w0 = data
    trainer.reset(padded(w0).reshape(N_PAGES, S), no_targets())
    rng = np.random.default_rng(21)
    snapshots = []
    for _ in range(205):
        snapshots.append(trainer.w.numpy())
        batch = rng.choice(len(x), size=10, replace=False)
        trainer._step(x[batch], y[batch])
    snapshots.append(trainer.w.numpy())
    return snapshots


def selection_split(pool, snapshots, target, mask=None):
    """Examples (far from ties at every snapshot used) labelled with the predictions of the weights
    `target`: those weights score 1.0 on them."""
    safe = np.all([margins(s, pool) > 1e-4 for s in snapshots], axis=0)
    keep = safe if mask is None else safe & mask
    return pool[keep], predictions(target, pool[keep])


def run_selection(trainer, data, iters, x_sel, y_sel, select_on="test"):
    x, y, _, w0 = data
    trainer.reset(padded(w0).reshape(N_PAGES, S), no_targets())
    logs = []
    outcome = trainer.train(x, y, x_sel, y_sel, iters, np.random.default_rng(21), batch_size=10,
                            select_on=select_on, log=logs.append)
    steps = [e for e in logs if isinstance(e, StepLog)]
    return outcome, steps, trainer.w.numpy()


def accuracy_of(w, x, y):
    return float(np.mean(predictions(w, x) == y))


def test_select_on_test_keeps_the_weights_before_the_last_evaluated_update(trainer, data, trajectory):
    _, _, pool, _ = data
    x_sel, y_sel = selection_split(pool, [trajectory[0], trajectory[4]], trajectory[4])
    start = accuracy_of(trajectory[0], x_sel, y_sel)
    assert start < 1.0  # four steps changed some predictions
    outcome, steps, final = run_selection(trainer, data, 5, x_sel, y_sel)
    assert [e.step for e in steps] == [0, 4]  # i % 100 == 0 and i == iters - 1
    assert [e.selection_accuracy for e in steps] == [start, 1.0]
    assert outcome.start_accuracy == start and outcome.best_accuracy == 1.0
    # Evaluated before step 4's update: the kept weights are those before it, not the final ones.
    np.testing.assert_array_equal(outcome.best_weights, trajectory[4])
    np.testing.assert_array_equal(final, trajectory[5])
    assert not np.array_equal(final, trajectory[4])


def test_select_on_test_over_205_steps_keeps_only_strictly_better_weights(trainer, data, trajectory):
    _, _, pool, _ = data
    used = [trajectory[i] for i in (0, 100, 200, 204)]
    same = predictions(trajectory[100], pool) == predictions(trajectory[200], pool)
    x_sel, y_sel = selection_split(pool, used, trajectory[100], mask=same)
    expected = [accuracy_of(s, x_sel, y_sel) for s in used]
    assert expected[0] < 1.0 and expected[1] == expected[2] == 1.0  # step 200 only ties step 100
    outcome, steps, _ = run_selection(trainer, data, 205, x_sel, y_sel)
    assert [e.step for e in steps] == [0, 100, 200, 204]
    assert [e.selection_accuracy for e in steps] == expected
    np.testing.assert_array_equal(outcome.best_weights, trajectory[100])
    # The logged batch statistics are those of the step's batch before its update.
    rng = np.random.default_rng(21)
    batches = [rng.choice(40, size=10, replace=False) for _ in range(205)]
    x, y, _, _ = data
    for entry in steps:
        z = mlp(trajectory[entry.step], x[batches[entry.step]])[0]
        assert math.isclose(entry.original_loss, reference_loss(z, y[batches[entry.step]], "batch_softmax"),
                            rel_tol=1e-5)
        assert entry.overlapping_loss == 0.0


def test_select_on_test_with_one_step_keeps_nothing(trainer, data, trajectory):
    _, _, pool, _ = data
    # Even a split on which the starting weights score 1.0 is only the starting best.
    x_sel, y_sel = selection_split(pool, [trajectory[0]], trajectory[0])
    outcome, steps, _ = run_selection(trainer, data, 1, x_sel, y_sel)
    assert [e.step for e in steps] == [0]
    assert outcome.best_weights is None
    assert outcome.start_accuracy == outcome.best_accuracy == 1.0


def test_select_on_validation_evaluates_after_updates(trainer, data, trajectory):
    _, _, pool, _ = data
    used = [trajectory[0], trajectory[100], trajectory[101]]
    x_sel, y_sel = selection_split(pool, used, trajectory[100])
    expected = [accuracy_of(s, x_sel, y_sel) for s in used]
    assert expected[0] < 1.0 and expected[1] == 1.0
    outcome, steps, final = run_selection(trainer, data, 101, x_sel, y_sel, select_on="validation")
    # The start, after every 100 updates, after the last update.
    assert [e.step for e in steps] == [0, 100, 101]
    assert [e.selection_accuracy for e in steps] == expected
    np.testing.assert_array_equal(outcome.best_weights, trajectory[100])
    np.testing.assert_array_equal(final, trajectory[101])
    # When the last update is the best, its weights (the final ones) are kept.
    x_sel, y_sel = selection_split(pool, used, trajectory[101])
    assert accuracy_of(trajectory[100], x_sel, y_sel) < 1.0
    outcome, _, final = run_selection(trainer, data, 101, x_sel, y_sel, select_on="validation")
    assert outcome.best_accuracy == 1.0
    np.testing.assert_array_equal(outcome.best_weights, final)


class RecordingRng:
    """A generator that records what train() asks of it."""

    def __init__(self, seed):
        self.rng, self.calls = np.random.default_rng(seed), []

    def choice(self, *args, **kwargs):
        out = self.rng.choice(*args, **kwargs)
        self.calls.append((args, kwargs, out))
        return out


def test_batches_are_drawn_without_replacement(trainer, data):
    x, y, _, w0 = data
    trainer.reset(padded(w0).reshape(N_PAGES, S), no_targets())
    rng = RecordingRng(4)
    trainer.train(x[:20], y[:20], x[:5], y[:5], 3, rng, batch_size=20)
    assert len(rng.calls) == 3
    for _, _, batch in rng.calls:  # a batch of the whole split is a permutation of it
        assert sorted(batch) == list(range(20))
    with pytest.raises(WeightSepError, match=r"-batch_size=21 is larger than the 20 training examples of mlp"):
        trainer.train(x[:20], y[:20], x[:5], y[:5], 3, np.random.default_rng(0), batch_size=21)
    with pytest.raises(WeightSepError, match="-select_on must be one of test, validation"):
        trainer.train(x, y, x, y, 3, np.random.default_rng(0), batch_size=10, select_on="train")


# --- divergence -------------------------------------------------------------------

@pytest.mark.parametrize("lr", [float("nan"), 1e30])
def test_divergence_raises_a_one_line_error(net, data, lr):
    x, y, _, w0 = data
    trainer = SeparatedTrainer(net, page_size=S, lr=lr)
    trainer.reset(padded(w0).reshape(N_PAGES, S), no_targets())
    logs = []
    with pytest.raises(TrainingDiverged) as caught:
        trainer.train(x, y, x[:5], y[:5], 4, np.random.default_rng(0), batch_size=10, log=logs.append)
    assert isinstance(caught.value, WeightSepError)
    message = str(caught.value)
    assert "\n" not in message and "diverged" in message and "lower -lr" in message and "mlp" in message
    assert not any(isinstance(e, str) and e.startswith("get new weight") for e in logs)


# --- quantization-aware training --------------------------------------------------

def round_trip(pages, page_dtype):
    return page_format(page_dtype).round_trip(pages)


def reciprocal_sensitive_page(qmax, size):
    """A page [m, x, 0, ...] whose x sits exactly on a .5 tie of the scale m / qmax, with m chosen so
    that a scale computed as m * (1 / qmax) is one unit in the last place off and x rounds the other
    way: any rewrite of the division shows as a whole quantization step."""
    f32 = np.float32
    for m in np.arange(1.0, 64.0, 1 / 64, dtype=f32):
        scale, other = m / f32(qmax), f32(m * (f32(1) / f32(qmax)))
        for k in range(int(qmax)):
            x = f32(k + 0.5) * scale
            if float(x) == (k + 0.5) * float(scale) and np.rint(x / scale) != np.rint(x / other):
                page = np.zeros(size, f32)
                page[:2] = m, x
                return page
    raise AssertionError("no such page")


def quantization_pages():
    """Random pages of many magnitudes, a zero page, exact .5 ties, tiny and denormal scales."""
    rng = np.random.default_rng(9)
    size = 16
    pages = list(rng.normal(0, 1, (40, size)) * rng.uniform(1e-4, 30, (40, 1)))
    pages += [reciprocal_sensitive_page(127.0, size), reciprocal_sensitive_page(7.0, size)]
    pages.append(np.zeros(size))
    for qmax in (127.0, 7.0):  # max |x| = qmax: scale 1, ratios x exactly, ties at .5 round to even
        pages.append(np.array([qmax, -qmax, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, -3.5, 0.4, -0.6,
                               qmax - 0.5, -(qmax - 0.5), 0.0, 1.0]))
    pages.append(np.full(size, 1e-38) * rng.uniform(-1, 1, size))   # scale below the normal range
    pages.append(np.array([1e-40, -5e-41] + [2e-42] * (size - 2)))  # denormal weights
    pages.append(np.array([1e-44, -1e-45] + [0.0] * (size - 2)))    # scale underflows to 0
    return np.array(pages, np.float32)


def bits(values):
    """The bit patterns, with -0.0 counted as +0.0 (TensorFlow keeps the sign of a zero product)."""
    return (np.asarray(values, np.float32) + np.float32(0.0)).view(np.uint32)


@pytest.mark.parametrize("page_dtype", ["int8", "int4"])
def test_fake_quantize_is_bit_for_bit_the_stored_round_trip(page_dtype):
    fmt = page_format(page_dtype)
    pages = quantization_pages()
    expected = fmt.round_trip(pages)
    eager = fake_quantize(tf.constant(pages), fmt).numpy()
    np.testing.assert_array_equal(bits(eager), bits(expected))
    # Compiled in a tf.function (graph optimizations on): the same bits.
    compiled = tf.function(lambda p: fake_quantize(p, fmt))(tf.constant(pages)).numpy()
    np.testing.assert_array_equal(bits(compiled), bits(expected))


@pytest.mark.parametrize("page_dtype", ["int8", "int4"])
def test_trainer_runs_on_the_quantized_pages(net, page_dtype):
    rng = np.random.default_rng(2)
    start = rng.normal(0, 0.3, N_PAGES * S).astype(np.float32)
    start[S:2 * S] = reciprocal_sensitive_page(page_format(page_dtype).qmax, S)
    trainer = SeparatedTrainer(net, page_size=S, page_dtype=page_dtype)
    trainer.reset(start.reshape(N_PAGES, S), no_targets())
    expected = round_trip(start.reshape(N_PAGES, S), page_dtype).reshape(-1)[:N]
    np.testing.assert_array_equal(bits(trainer.effective_weights()), bits(expected))


def test_quantization_aware_training_uses_a_straight_through_gradient(net, data):
    """int4 pages: the loss and its gradient are those of the quantized weights, applied to the
    latent weights unchanged; the padding of the last page (part of its scale) never moves."""
    x, y, _, _ = data
    rng = np.random.default_rng(12)
    start = rng.normal(0, 0.3, N_PAGES * S).astype(np.float32)  # padding: pool values, not zeros
    start[:S] = reciprocal_sensitive_page(7.0, S)  # a whole int4 step if the forward's scale were off
    trainer = SeparatedTrainer(net, page_size=S, page_dtype="int4")
    trainer.reset(start.reshape(N_PAGES, S), no_targets())
    logs = []
    trainer.train(x, y, x, y, 2, np.random.default_rng(8), batch_size=10, log=logs.append)
    batches = np.random.default_rng(8)
    # TF1 Adam by hand (NumPy), with the gradient taken at the round-tripped pages.
    w, m, v = start.astype(np.float64), np.zeros(len(start)), np.zeros(len(start))
    first_loss = None
    for t in (1, 2):
        batch = batches.choice(len(x), size=10, replace=False)
        wq = round_trip(w.astype(np.float32).reshape(N_PAGES, S), "int4").reshape(-1)
        if t == 1:
            first_loss = reference_loss(mlp(wq, x[batch])[0], y[batch], "batch_softmax")
            first_accuracy = accuracy_of(wq, x, y)
        g = np.zeros(len(w))
        g[:N] = reference_grad(wq, x[batch], y[batch], "batch_softmax")
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w = w - 1e-3 * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-8)
    steps = [e for e in logs if isinstance(e, StepLog)]
    assert math.isclose(steps[0].original_loss, first_loss, rel_tol=1e-5)
    assert steps[0].selection_accuracy == first_accuracy
    latent = trainer.w.numpy()
    np.testing.assert_allclose(latent, w, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(latent[N:], start[N:])
    assert np.max(np.abs(latent[:N] - start[:N])) > 1e-3


# --- pretraining ------------------------------------------------------------------

def test_pretrain_takes_adam_steps_on_the_chosen_loss(mlp_task, data):
    """One full-batch step: Adam's first step moves each weight by lr * g / (|g| + epsilon'), about
    -lr * sign(g) where |g| dwarfs epsilon (whichever of 1e-7 or 1e-8): the sign of that loss's
    gradient, computed by hand."""
    x, y, _, w0 = data
    x, y = x[:12].copy(), y[:12]
    x[0] *= 10  # one example dominates the batch softmax: the two losses' gradients differ in sign
    grads = {loss: reference_grad(w0, x, y, loss) for loss in ("batch_softmax", "per_example")}
    sure = {loss: np.abs(g) > 1e-3 for loss, g in grads.items()}
    both = sure["batch_softmax"] & sure["per_example"]
    assert np.any(np.sign(grads["batch_softmax"][both]) != np.sign(grads["per_example"][both]))
    for loss, g in grads.items():
        net = Network(mlp_task)
        net.set_vector(w0)
        best = pretrain(net, x, y, x, y, 1, batch_size=12, verbose=0, loss=loss)
        moved = (net.get_vector() - w0)[sure[loss]]
        np.testing.assert_allclose(moved, -1e-3 * np.sign(g[sure[loss]]), rtol=0, atol=1e-5)
        assert math.isclose(best, accuracy_of(net.get_vector(), x, y), abs_tol=1e-6)  # the validation accuracy


def test_pretrain_task_saves_and_never_writes_a_diverged_network(mlp_task):
    result = pretrain_task(mlp_task, "synthetic", iters=5, batch_size=100, verbose=0)
    path = network_file(mlp_task)
    assert result.path == path and path.is_file() and result.num_weights == N
    from weightsep import data as datasets
    test = datasets.load_split(mlp_task, "test", "synthetic", 0)
    assert result.test_accuracy == load_network(mlp_task).accuracy(test.x, test.y)
    before = path.read_bytes()
    with pytest.raises(TrainingDiverged, match="diverged") as caught:
        pretrain_task(mlp_task, "synthetic", iters=5, batch_size=100, lr=float("nan"), verbose=0,
                      loss="per_example")
    assert "\n" not in str(caught.value)
    assert path.read_bytes() == before


def test_time_training_step_is_positive(mlp_task):
    seconds = time_training_step(mlp_task, batch_size=8, repeats=2)
    assert 0 < seconds < 10
