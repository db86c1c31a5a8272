"""Training: pretraining a task's own network, and the paper's per-task optimization of a
separated task with the overlapping loss.

Optimization of task t (the paper's overlapping loss), as the original's ``train_vnn`` +
``pintle.v_train``: start from its materialized weights (shared pool + its exclusive pages);
loss = cross-entropy + lamb * overlap with

    overlap(w) = sum_j  [sum_o F_o[j] (w[j] - w_o[j])^2] / max(1, #{o : F_o[j] (w[j] - w_o[j])^2 != 0})

over the other tasks o aligned to t through the pool (where page i of t and page j of o sit on
the same shared page, o's page j of its network Fisher F_o and of its ``_weight`` vector w_o go
to t's page i; elsewhere zero).  The count of contributing tasks is the original's
``count_nonzero`` of the per-task costs, recomputed at every step (it carries no gradient).
Adam as TensorFlow 1's AdamOptimizer (lr 1e-3, beta 0.9 / 0.999, epsilon 1e-8, the bias
correction folded into the step size), fresh state per call, batches drawn without
replacement within a batch.

Two choices of the original are defaults, each with our alternative one flag away:
- ``-loss=batch_softmax``: the original graphs' ``cross_entropy``, whose softmax is normalized
  over the whole batch x classes: mean over examples of -(z_iy - logsumexp over all of z).
  ``-loss=per_example`` is the usual per-example cross-entropy.
- ``-select_on=test``: evaluate at step i when i % 100 == 0 and at i == iter - 1, before that
  step's update, on the test split; keep the weights of the best evaluation after step 0.
  ``-select_on=validation`` evaluates the starting weights, every 100 updates and after the
  last update on a validation split, and keeps the best that beats the start.

With quantized weight-pages (int8 / int4 states) the forward pass runs on fake-quantized pages
(each page of the task's padded weight vector quantized as weightsep.pageformat does it, bit for
bit, with a straight-through gradient), so training sees exactly what the store will keep.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Callable, Optional

import numpy as np

from weightsep import data as datasets
from weightsep.errors import WeightSepError
from weightsep.networks import Network, save_network
from weightsep.pageformat import HALF_FLOOR, HALF_MAX, SCALE_FLOOR, WIDE_QMAX, PageFormat, page_format
from weightsep.pages import num_pages, to_pages
from weightsep.tasks import TaskSpec
from weightsep.tf import keras, tf

LOSSES = ("batch_softmax", "per_example")
SELECTIONS = ("test", "validation")
EVAL_EVERY = 100

Log = Callable[[object], None]


class TrainingDiverged(WeightSepError):
    """The loss or the weights became NaN or infinite; nothing was written."""


# --- losses -----------------------------------------------------------------------------

def batch_softmax_cross_entropy(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Per-example terms of the original's cross-entropy: the softmax normalized over the whole
    batch x classes.  Their mean is the loss: mean_i -(z_{i,y_i} - logsumexp(z))."""
    true = tf.gather(logits, y, axis=1, batch_dims=1)
    return tf.reduce_logsumexp(logits) - true


def cross_entropy(net: Network, w: tf.Tensor, x: tf.Tensor, y: tf.Tensor, loss: str,
                  training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """(mean cross-entropy, class probabilities) of the weights w on a batch."""
    if loss == "batch_softmax":
        logits = net.logits(w, x, training=training)
        return tf.reduce_mean(batch_softmax_cross_entropy(logits, y)), tf.nn.softmax(logits)
    probs = net.forward(w, x, training=training)
    return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probs)), probs


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise WeightSepError(f"-loss must be one of {', '.join(LOSSES)}, not {loss!r}")
    return loss


# --- pretraining ----------------------------------------------------------------------

class _KeepBest(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the best validation accuracy among finite epochs."""

    def __init__(self):
        super().__init__()
        self.best_acc, self.best_weights, self.diverged = -1.0, None, False

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        weights = [np.array(v) for v in self.model.get_weights()]
        if not math.isfinite(logs.get("loss", math.nan)) or not all(np.all(np.isfinite(v)) for v in weights):
            self.diverged = True
            self.model.stop_training = True
            return
        acc = logs.get("val_accuracy", -1.0)
        if acc > self.best_acc:
            self.best_acc, self.best_weights = acc, weights

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def pretrain(net: Network, x_train, y_train, x_val, y_val, iters: int, batch_size: int = 100,
             lr: float = 1e-3, seed: int = 0, verbose: int = 1, loss: str = "batch_softmax") -> float:
    """Train the network for about ``iters`` Adam steps; keep the best-validation weights.

    Training runs in whole epochs of the training split (ceil(iters / steps per epoch) of them),
    with Keras' progress output.  Returns the best validation accuracy.  A run whose loss or
    weights become non-finite stops; the best finite epoch is kept (TrainingDiverged if none).
    """
    check_loss(loss)
    keras.utils.set_random_seed(seed)
    steps_per_epoch = max(1, math.ceil(len(x_train) / batch_size))
    epochs = max(1, math.ceil(iters / steps_per_epoch))
    if loss == "batch_softmax":
        model = net.logits_model()
        model.compile(optimizer=keras.optimizers.Adam(lr), loss=batch_softmax_cross_entropy_keras,
                      metrics=["accuracy"])
    else:
        model = net.model
        model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    keeper = _KeepBest()
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, validation_data=(x_val, y_val),
              callbacks=[keeper], verbose=verbose, shuffle=True)
    if keeper.best_weights is None:
        raise TrainingDiverged(f"pretraining {net.task.name} diverged in its first epoch (the loss became NaN "
                               f"or infinite at lr {lr}); nothing was saved; lower -lr")
    return float(keeper.best_acc)


def batch_softmax_cross_entropy_keras(y_true, logits):
    """The batch-softmax loss with Keras' (y_true, y_pred) signature; labels arrive as [B] or [B, 1]."""
    y = tf.reshape(tf.cast(y_true, tf.int64), [-1])
    return batch_softmax_cross_entropy(logits, y)


def pretrain_distributed(net: Network, strategy, x_train, y_train, x_val, y_val, iters: int,
                         batch_size: int = 100, lr: float = 1e-3, seed: int = 0, loss: str = "batch_softmax",
                         log: Optional[Log] = None) -> float:
    """-mode=pretrain -distribute=multi_worker: pretraining data parallel on a tf.distribute
    strategy (DistributedTrainer with the whole network as one page and no overlap term).

    Keras 3's fit does not run on MultiWorkerMirroredStrategy (it rejects the strategy's
    distributed batches), so this loop stands in for it, with fit's settings: Adam with Keras'
    epsilon (1e-7), whole epochs of shuffled global batches (a last partial batch is dropped, as
    it could not be split evenly), the weights of the epoch with the best validation accuracy
    kept; a run that diverges keeps its best finite epoch (TrainingDiverged if none). Every
    worker draws the same shuffles (seeded), so the replicas' shares make up one global batch.
    Returns the best validation accuracy; the network holds the kept weights.
    """
    check_loss(loss)
    log = log or (lambda entry: None)
    n = net.num_weights
    steps_per_epoch = max(1, len(x_train) // batch_size)
    epochs = max(1, math.ceil(iters / steps_per_epoch))
    trainer = DistributedTrainer(strategy, net, page_size=n, lr=lr, lamb=0.0, loss=loss, epsilon=1e-7)
    trainer.reset(net.get_vector()[None, :], OverlapTargets(np.zeros((0, n), np.float32), np.zeros((0, n), np.float32)))
    rng = np.random.default_rng(seed)
    best_acc, best_w = -1.0, None
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        try:
            for b in range(steps_per_epoch):
                idx = order[b * batch_size:(b + 1) * batch_size]
                trainer._checked_step(x_train[idx], y_train[idx], epoch * steps_per_epoch + b)
        except TrainingDiverged:
            if best_w is None:
                raise
            break
        acc = trainer.accuracy(x_val, y_val)
        log(f"epoch {epoch + 1}/{epochs}: validation accuracy {acc:.4f}")
        if acc > best_acc:
            best_acc, best_w = acc, trainer.w.numpy()[:n]
    net.set_vector(best_w)
    return float(best_acc)


@dataclasses.dataclass
class PretrainResult:
    path: object             # None on a worker that is not the chief (it saves nothing)
    num_weights: int
    best_validation: float
    test_accuracy: float


def pretrain_task(task: TaskSpec, data: str = "real", seed: int = 0, iters: int = 2000,
                  batch_size: int = 100, lr: float = 1e-3, loss: str = "batch_softmax",
                  verbose: int = 1, validation_split: float = datasets.DEFAULT_VALIDATION_SPLIT,
                  cluster=None) -> PretrainResult:
    """The one pretraining workflow: load the splits, train, save ``<task>/<task>.weights.h5``.
    Pretraining keeps its best epoch by validation accuracy, so a task without validation files
    has ``validation_split`` of its train files cut off for it. With a cluster
    (weightsep.distribute), data parallel; only its chief saves."""
    train = datasets.load_split(task, "train", data, seed, validation_split)
    val = datasets.load_split(task, "validation", data, seed, validation_split)
    test = datasets.load_split(task, "test", data, seed)
    if cluster is not None:
        keras.utils.set_random_seed(seed)  # the same initial weights on every worker
    net = Network(task)
    if cluster is None:
        best = pretrain(net, train.x, train.y, val.x, val.y, iters, batch_size, lr, seed, verbose, loss)
    else:
        best = pretrain_distributed(net, cluster.strategy, train.x, train.y, val.x, val.y, iters, batch_size, lr,
                                    seed, loss, log=print_log if verbose else None)
    path = save_network(net) if cluster is None or cluster.is_chief else None
    return PretrainResult(path, net.num_weights, best, net.accuracy(test.x, test.y))


def time_training_step(task: TaskSpec, batch_size: int = 100, repeats: int = 5) -> float:
    """Median seconds of one compiled training step of the task's network on random data (after
    one untimed step that compiles it): a calibration of this CPU for schedule estimates."""
    import time
    net = Network(task)
    trainer = SeparatedTrainer(net, page_size=net.num_weights, loss="per_example")
    trainer.reset(net.get_vector()[None, :], OverlapTargets(np.zeros((0, net.num_weights), np.float32),
                                                            np.zeros((0, net.num_weights), np.float32)))
    rng = np.random.default_rng(0)
    x = rng.random((batch_size, *task.input_shape), dtype=np.float32)
    y = rng.integers(0, task.num_classes, batch_size)
    trainer._step(x, y)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        trainer._step(x, y)[0].numpy()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


# --- the overlapping loss -----------------------------------------------------------

@dataclasses.dataclass
class OverlapTargets:
    """The other tasks aligned to one task: Fisher and weights, [K, n] each (zero off-share)."""

    fisher: np.ndarray
    weights: np.ndarray

    @property
    def num_tasks(self) -> int:
        return int(self.fisher.shape[0])

    def value(self, w: np.ndarray) -> float:
        """The overlap term (without lamb) at weights w, as the trainer computes it."""
        cost = self.fisher * np.square(np.asarray(w, np.float32)[None, :] - self.weights)
        count = np.count_nonzero(cost, axis=0)
        return float(np.sum(cost.sum(axis=0) / np.where(count == 0, 1, count)))


def overlap_targets(page_table: np.ndarray, n: int, page_size: int, num_shared: int,
                    others: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> OverlapTargets:
    """Align every other task to this one through the shared pool.

    others: (page_table_o, fisher_o [n_o], weights_o [n_o]) per other task.  Tasks that share no
    page contribute nothing (their cost is zero everywhere) and are left out.
    """
    n_p = num_pages(n, page_size)
    ours = np.asarray(page_table)
    shared_rows = np.flatnonzero(ours < num_shared)
    fishers, weights = [], []
    for table_o, fisher_o, weights_o in others:
        table_o = np.asarray(table_o)
        where_o = np.full(num_shared, -1)
        on_pool = np.flatnonzero(table_o < num_shared)
        where_o[table_o[on_pool]] = on_pool
        j = where_o[ours[shared_rows]]
        hit = j >= 0
        if not np.any(hit):
            continue
        i = shared_rows[hit]
        f = np.zeros((n_p, page_size), np.float32)
        v = np.zeros((n_p, page_size), np.float32)
        f[i] = to_pages(fisher_o, page_size)[j[hit]]
        v[i] = to_pages(weights_o, page_size)[j[hit]]
        fishers.append(f.reshape(-1)[:n])
        weights.append(v.reshape(-1)[:n])
    if not fishers:
        return OverlapTargets(np.zeros((0, n), np.float32), np.zeros((0, n), np.float32))
    return OverlapTargets(np.stack(fishers), np.stack(weights))


# --- per-task optimization ------------------------------------------------------------

@dataclasses.dataclass
class StepLog:
    """One evaluation point: the batch statistics (before the step's update) and the
    selection accuracy.  overlapping_loss includes lamb, as the original printed it."""

    step: int
    train_accuracy: float
    original_loss: float
    overlapping_loss: float
    selection_accuracy: float | None = None
    selection_split: str = "test"  # the split selection_accuracy was measured on


@dataclasses.dataclass
class TrainOutcome:
    best_weights: Optional[np.ndarray]   # padded [n_p * S]; None when nothing beat the start
    best_accuracy: float
    start_accuracy: float


def fake_quantize(pages: tf.Tensor, fmt: PageFormat, wide=None) -> tf.Tensor:
    """Per-page symmetric quantize-dequantize, bit for bit as fmt.round_trip in NumPy
    (weightsep.pageformat; every constant comes from fmt):
    scale = max|x| / qmax; q = clip(rint(x / scale), -qmax, qmax); value = q * scale
    (all in float32; a page whose scale is zero or subnormal becomes zero).

    The scale is a divide_no_nan: inside tf.function, Grappler's constant folding turns a plain
    division by a constant into a multiplication by its reciprocal, which can differ from the
    true division (what NumPy computes) by one unit in the last place.  q goes through an
    integer, as the stored int8 does, so that a rounded -0 becomes +0.

    int4 (grouped) states: group scales rounded up to float16, int8 pages where `wide` (bool [r])
    says (weightsep.pageformat), bit for bit as fmt.round_trip(pages, wide); a scale above the
    largest float16, which the store refuses, is clamped to it here."""
    qmax = tf.constant(fmt.fake_qmax, tf.float32)
    if fmt.grouped:
        if wide is not None:
            qmax = tf.where(wide, tf.constant(WIDE_QMAX, tf.float32), qmax)[:, None, None]
        size = int(pages.shape[1])
        g = fmt.group(size)
        groups = tf.reshape(pages, [-1, size // g, g])
        s32 = tf.math.divide_no_nan(tf.reduce_max(tf.abs(groups), axis=2, keepdims=True), qmax)
        half = tf.cast(tf.minimum(s32, float(HALF_MAX)), tf.float16)
        up = tf.cast(half, tf.float32) < s32
        half = tf.where(up, tf.bitcast(tf.bitcast(half, tf.uint16) + 1, tf.float16), half)  # next float16 up
        scale = tf.where(s32 > 0, tf.maximum(tf.cast(half, tf.float32), float(HALF_FLOOR)), 0.0)
        nonzero = scale > 0
        q = tf.clip_by_value(tf.round(groups / tf.where(nonzero, scale, 1.0)), -qmax, qmax)
        q = tf.cast(tf.cast(q, tf.int32), tf.float32)
        return tf.reshape(tf.where(nonzero, q * scale, 0.0), [-1, size])
    scale = tf.math.divide_no_nan(tf.reduce_max(tf.abs(pages), axis=1, keepdims=True), qmax)
    nonzero = scale >= SCALE_FLOOR  # a subnormal scale counts as zero
    q = tf.clip_by_value(tf.round(pages / tf.where(nonzero, scale, 1.0)), -qmax, qmax)
    q = tf.cast(tf.cast(q, tf.int32), tf.float32)
    return tf.where(nonzero, q * scale, 0.0)


class SeparatedTrainer:
    """The compiled training step of one separated task, built once and reused.

    Holds the task's padded weight vector (its n_p pages; the padding of the last page holds
    what the pool has there and never changes), the overlap targets and a hand-written Adam
    state as variables, so that resetting between calls never retraces.
    """

    def __init__(self, net: Network, page_size: int, lr: float = 1e-3, lamb: float = 0.1,
                 loss: str = "batch_softmax", page_dtype: str = "float32", group_size: int | None = None,
                 beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-8):
        try:
            self.format = page_format(page_dtype, group_size)
        except ValueError as e:
            raise WeightSepError(str(e)) from None
        self.net, self.loss, self.page_size = net, check_loss(loss), page_size
        n = net.num_weights
        self.padded = num_pages(n, page_size) * page_size
        self.lr, self.lamb, self.beta1, self.beta2, self.epsilon = lr, lamb, beta1, beta2, epsilon
        self.w = tf.Variable(tf.zeros([self.padded]), name="w")
        self.m = tf.Variable(tf.zeros([self.padded]), name="adam_m")
        self.v = tf.Variable(tf.zeros([self.padded]), name="adam_v")
        self.t = tf.Variable(0.0, name="adam_t")
        # int4 states: which of the task's pages are int8 pages (the fake quantization follows them).
        self.wide = tf.Variable(tf.zeros([self.padded // page_size], tf.bool), name="int8_pages")
        self.ov_fisher = tf.Variable(tf.zeros([0, n]), shape=tf.TensorShape([None, n]), name="overlap_fisher")
        self.ov_weights = tf.Variable(tf.zeros([0, n]), shape=tf.TensorShape([None, n]), name="overlap_weights")
        shape = (None, *net.task.input_shape)
        self._step = tf.function(self._train_step, input_signature=[
            tf.TensorSpec(shape, tf.float32), tf.TensorSpec([None], tf.int64)])
        self._predict = tf.function(lambda x: tf.argmax(net.forward(self._effective(self.w), x), axis=1),
                                    input_signature=[tf.TensorSpec(shape, tf.float32)])
        self._effective_fn = tf.function(lambda: self._effective(self.w))

    # -- pieces of the step --
    def _effective(self, w: tf.Tensor) -> tf.Tensor:
        """The weights the network runs with: w, or its fake-quantized pages (straight-through)."""
        if not self.format.quantized:
            return w
        fmt, size = self.format, self.page_size
        wide = self.wide.read_value() if fmt.grouped else None  # a tensor: the gradient has no variables

        @tf.custom_gradient
        def straight_through(x):
            out = tf.reshape(fake_quantize(tf.reshape(x, [-1, size]), fmt, wide), [-1])
            return out, lambda dy: dy
        return straight_through(w)

    def _overlap(self, w: tf.Tensor) -> tf.Tensor:
        cost = self.ov_fisher * tf.square(w[: self.net.num_weights] - self.ov_weights)
        count = tf.math.count_nonzero(cost, axis=0, dtype=tf.float32)
        return tf.reduce_sum(tf.reduce_sum(cost, axis=0) / tf.where(count == 0, 1.0, count))

    def _train_step(self, x, y):
        with tf.GradientTape() as tape:
            ce, probs = cross_entropy(self.net, self._effective(self.w), x, y, self.loss, training=True)
            overlap = self.lamb * self._overlap(self.w)
            loss = ce + overlap
        g = tape.gradient(loss, self.w)
        finite = self._adam_update(g)
        accuracy = tf.reduce_mean(tf.cast(tf.argmax(probs, axis=1) == y, tf.float32))
        return accuracy, ce, overlap, finite

    def _adam_update(self, g: tf.Tensor) -> tf.Tensor:
        """One step of TensorFlow 1's Adam on w with gradient g; returns whether w stayed finite."""
        self.t.assign_add(1.0)
        self.m.assign(self.beta1 * self.m + (1 - self.beta1) * g)
        self.v.assign(self.beta2 * self.v + (1 - self.beta2) * tf.square(g))
        step = self.lr * tf.sqrt(1 - tf.pow(self.beta2, self.t)) / (1 - tf.pow(self.beta1, self.t))
        self.w.assign_sub(step * self.m / (tf.sqrt(self.v) + self.epsilon))
        return tf.reduce_all(tf.math.is_finite(self.w))

    # -- public --
    def set_wide(self, wide) -> None:
        """Which of the task's pages are int8 pages of an int4 state (bool [n_p]; None: none)."""
        self.wide.assign(np.zeros(self.wide.shape, bool) if wide is None else np.asarray(wide, bool))

    def reset(self, pages: np.ndarray, targets: OverlapTargets, wide=None) -> None:
        """New starting weights (the task's pages, [n_p, S]) and overlap targets; a fresh optimizer.
        wide: the task's int8 pages of an int4 state (bool [n_p]; default none)."""
        self.set_wide(wide)
        self.w.assign(np.asarray(pages, np.float32).reshape(-1))
        for var in (self.m, self.v):
            var.assign(tf.zeros_like(var))
        self.t.assign(0.0)
        self.ov_fisher.assign(targets.fisher)
        self.ov_weights.assign(targets.weights)

    def effective_weights(self) -> np.ndarray:
        """The task's weights as the network runs them (float32[n])."""
        return self._effective_fn().numpy()[: self.net.num_weights]

    def evaluate(self, pages: np.ndarray, x: np.ndarray, y: np.ndarray, wide=None) -> float:
        """Accuracy of the task's pages [n_p, S] (they become the trainer's current weights; wide:
        its int8 pages of an int4 state)."""
        self.set_wide(wide)
        self.w.assign(np.asarray(pages, np.float32).reshape(-1))
        return self.accuracy(x, y)

    def accuracy(self, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> float:
        if not len(y):
            raise WeightSepError(f"task {self.net.task.name}: no examples to evaluate")
        hits = 0
        for i in range(0, len(x), batch_size):
            hits += int(np.sum(self._predict(x[i:i + batch_size]).numpy() == y[i:i + batch_size]))
        return hits / len(y)

    def _run_step(self, x, y):
        """One training step on the batch (x, y): (accuracy, cross-entropy, overlap, finite)."""
        return self._step(x, y)

    def _checked_step(self, x, y, step: int):
        accuracy, ce, overlap, finite = self._run_step(x, y)
        ce, overlap = float(ce), float(overlap)
        if not (bool(finite) and math.isfinite(ce) and math.isfinite(overlap)):
            raise TrainingDiverged(
                f"training of {self.net.task.name} diverged at step {step} (loss {ce + overlap}, weights "
                f"finite: {bool(finite)}) with lr {self.lr}; nothing was written: the state is unchanged; "
                f"lower -lr")
        return float(accuracy), ce, overlap

    def train(self, x_train, y_train, x_sel, y_sel, iters: int, rng: np.random.Generator,
              batch_size: int = 100, select_on: str = "test", log: Optional[Log] = None) -> TrainOutcome:
        """Run ``iters`` steps and keep the best weights, as ``select_on`` says (module doc)."""
        if select_on not in SELECTIONS:
            raise WeightSepError(f"-select_on must be one of {', '.join(SELECTIONS)}, not {select_on!r}")
        if batch_size > len(x_train):
            raise WeightSepError(f"-batch_size={batch_size} is larger than the {len(x_train)} training examples "
                                 f"of {self.net.task.name}")
        log = log or (lambda entry: None)
        batches = (rng.choice(len(x_train), size=batch_size, replace=False) for _ in range(iters))
        if select_on == "test":
            return self._train_select_before_update(x_train, y_train, x_sel, y_sel, iters, batches, log)
        return self._train_select_after_update(x_train, y_train, x_sel, y_sel, iters, batches, log)

    def _train_select_before_update(self, x_train, y_train, x_sel, y_sel, iters, batches, log):
        best_w, best_acc, start_acc = None, math.nan, math.nan
        for i, idx in enumerate(batches):
            evaluate = i % EVAL_EVERY == 0 or i == iters - 1
            improved = False
            if evaluate:
                acc = self.accuracy(x_sel, y_sel)
                if i == 0:
                    best_acc = start_acc = acc
                elif acc > best_acc:
                    best_acc, best_w, improved = acc, self.w.numpy(), True
            stats = self._checked_step(x_train[idx], y_train[idx], i)
            if evaluate:
                log(StepLog(i, *stats, acc, "test"))
                if improved:
                    log(f"get new weight for {best_acc:.6f}")
        return TrainOutcome(best_w, best_acc, start_acc)

    def _train_select_after_update(self, x_train, y_train, x_sel, y_sel, iters, batches, log):
        start_acc = self.accuracy(x_sel, y_sel)
        best_acc, best_w = start_acc, None
        for i, idx in enumerate(batches):
            stats = self._checked_step(x_train[idx], y_train[idx], i)
            if i == 0:
                log(StepLog(0, *stats, start_acc, "validation"))
            done = i + 1
            if done % EVAL_EVERY == 0 or done == iters:
                acc = self.accuracy(x_sel, y_sel)
                log(StepLog(done, *stats, acc, "validation"))
                if acc > best_acc:
                    best_acc, best_w = acc, self.w.numpy()
                    log(f"get new weight for {acc:.6f}")
        return TrainOutcome(best_w, best_acc, start_acc)


def replica_device(strategy):
    """A device scope for collectives inside strategy.run: the strategy leaves a single local
    replica's ops without a device inside tf.function, and collectives then find no
    destination (several local replicas run under their own device scopes already)."""
    import contextlib
    devices = strategy.extended.worker_devices
    return tf.device(devices[0]) if len(devices) == 1 else contextlib.nullcontext()


class DistributedTrainer(SeparatedTrainer):
    """SeparatedTrainer, data parallel on a tf.distribute strategy (-distribute=multi_worker, ours).

    Every worker draws the same global batch (the same seeded generator as one process) and its
    replicas take consecutive equal shares of it. Each replica's cross-entropy gradient, scaled
    by the global batch size, is summed over all replicas by the strategy's all-reduce, and the
    overlap term's gradient (the same on every replica) is added once; then every replica
    applies the same Adam step to its mirrored copies of the pages and the optimizer state, so
    the copies stay identical. The original's batch-softmax loss normalizes over the whole
    global batch: the replicas all-gather their largest logit and all-reduce their sums of
    exponentials, so the global softmax is exact, and each replica differentiates the surrogate
    sum(p * z) - sum(z_true) / B (p the global softmax, held constant; B the global batch), whose
    gradient in z, p - onehot / B, is the batch loss's. Model selection evaluates on every worker (the same weights, the same
    decisions), so every worker runs the same schedule of collective steps.
    """

    def __init__(self, strategy, net: Network, page_size: int, **kwargs):
        self.strategy = strategy
        with strategy.scope():
            super().__init__(net, page_size, **kwargs)
        self._distributed_step = tf.function(self._global_step, reduce_retracing=True)

    def _replica_step(self, x, y, global_batch):
        ctx = tf.distribute.get_replica_context()
        with replica_device(self.strategy):
            with tf.GradientTape() as tape:
                effective = self._effective(self.w)
                if self.loss == "batch_softmax":
                    logits = self.net.logits(effective, x, training=True)
                    z = tf.stop_gradient(logits)
                    top = tf.reduce_max(ctx.all_gather(tf.reduce_max(z)[None], axis=0))
                    lse = top + tf.math.log(ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                                           tf.reduce_sum(tf.exp(z - top))))
                    true = tf.gather(logits, y, axis=1, batch_dims=1)
                    part = tf.reduce_sum(tf.exp(z - lse) * logits) - tf.reduce_sum(true) / global_batch
                    ce_sum = tf.reduce_sum(lse - tf.stop_gradient(true))
                else:
                    probs = self.net.forward(effective, x, training=True)
                    terms = keras.losses.sparse_categorical_crossentropy(y, probs)
                    part = tf.reduce_sum(terms) / global_batch
                    ce_sum, z = tf.stop_gradient(tf.reduce_sum(terms)), tf.stop_gradient(probs)
            g = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tape.gradient(part, self.w))
            with tf.GradientTape() as tape:
                overlap = self.lamb * self._overlap(self.w)
            g = g + tape.gradient(overlap, self.w)
            hits = tf.reduce_sum(tf.cast(tf.argmax(z, axis=1) == y, tf.float32))
            stats = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.stack([hits, ce_sum])) / global_batch
            return g, stats, overlap

    def _global_step(self, x, y, global_batch):
        g, stats, overlap = self.strategy.run(self._replica_step, args=(x, y, global_batch))
        first = self.strategy.experimental_local_results
        g, stats, overlap = first(g)[0], first(stats)[0], first(overlap)[0]
        finite = self._adam_update(g)  # cross-replica context: every local copy gets the same step
        return stats[0], stats[1], overlap, finite

    def _run_step(self, x, y):
        replicas = self.strategy.num_replicas_in_sync
        if len(x) % replicas:
            raise WeightSepError(f"-batch_size={len(x)} must be a multiple of the {replicas} replicas "
                                 f"of the cluster (the global batch is split evenly)")
        share = len(x) // replicas

        def part(array, dtype):
            def value(ctx):
                start = ctx.replica_id_in_sync_group * share
                return tf.constant(array[start:start + share], dtype)
            return self.strategy.experimental_distribute_values_from_function(value)

        return self._distributed_step(part(x, tf.float32), part(y, tf.int64), tf.constant(float(len(x))))


def print_log(entry) -> None:
    """The original's progress lines."""
    if isinstance(entry, StepLog):
        print(f"step {entry.step}, training accuracy: {entry.train_accuracy:.6f} "
              f"original loss: {entry.original_loss:.6f} overlapping loss: {entry.overlapping_loss:.6f}")
        if entry.selection_accuracy is not None:
            # The original's words, though it measured the test split: the split is said after them.
            said = "test split, as the original" if entry.selection_split == "test" else "validation split"
            print(f"step {entry.step}, Validation accuracy: {entry.selection_accuracy:.6f} ({said})")
    else:
        print(entry)
    sys.stdout.flush()
