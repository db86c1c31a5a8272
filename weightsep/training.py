"""Training: pretraining a task's own network, and the paper's per-task optimization
of a separated task with the overlapping loss.

Optimization of task t (DESIGN.md section 3): start from its materialized weights
(shared pool + its exclusive pages); loss = cross-entropy + lamb * overlap, where
overlap pulls the weights of every shared page towards the other tasks that sit on
the same shared page, weighted by their Fisher information:

    overlap(w) = sum_j  mean_{o contributing at j}  F_o[j] * (w[j] - w_o[j])^2

A task o "contributes" at element j when its (aligned) Fisher is nonzero there.
Per element, sum_o F_o (w - w_o)^2 / c = A (w - M)^2 + R with A = sum F_o / c,
M = sum F_o w_o / sum F_o, R = the constant rest; we train on that form because it
has fixed-size tensors whatever the number of overlapping tasks, so one compiled
step serves every round.  Adam, fresh state per call; the weights kept are the
best on the validation split, evaluated at step 0, every 100 steps and at the end.
"""

from __future__ import annotations

import dataclasses
import math
import sys

import numpy as np

from weightsep.networks import Network
from weightsep.pages import num_pages, to_pages
from weightsep.tf import keras, tf


# --- pretraining ----------------------------------------------------------------------

class _KeepBest(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the best validation accuracy (in memory)."""

    def __init__(self):
        super().__init__()
        self.best_acc, self.best_epoch, self.best_weights = -1.0, -1, None

    def on_epoch_end(self, epoch, logs=None):
        acc = (logs or {}).get("val_accuracy", -1.0)
        if acc > self.best_acc:
            self.best_acc, self.best_epoch = acc, epoch
            self.best_weights = [np.array(v) for v in self.model.get_weights()]

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def pretrain(net: Network, x_train, y_train, x_val, y_val, iters: int, batch_size: int = 100,
             lr: float = 1e-3, seed: int = 0, verbose: int = 1) -> float:
    """Train the network for about ``iters`` Adam steps; keep the best-validation weights.

    Training runs in whole epochs of the training split (ceil(iters / steps per epoch)
    of them), with Keras' progress output.  Returns the best validation accuracy.
    """
    keras.utils.set_random_seed(seed)
    steps_per_epoch = max(1, math.ceil(len(x_train) / batch_size))
    epochs = max(1, math.ceil(iters / steps_per_epoch))
    net.model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    keeper = _KeepBest()
    net.model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, validation_data=(x_val, y_val),
                  callbacks=[keeper], verbose=verbose, shuffle=True)
    return float(keeper.best_acc)


# --- the overlapping loss -----------------------------------------------------------

@dataclasses.dataclass
class OverlapTerms:
    """The overlapping loss of one task as A (w - M)^2 summed, plus a constant R."""

    strength: np.ndarray   # A, float32 [n]
    target: np.ndarray     # M, float32 [n]
    constant: float        # R
    num_tasks: int         # how many other tasks share at least one page with this one

    def value(self, w: np.ndarray) -> float:
        return float(np.sum(self.strength.astype(np.float64) * (w - self.target) ** 2) + self.constant)


def overlap_terms(page_table: np.ndarray, n: int, page_size: int, num_shared: int,
                  others: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> OverlapTerms:
    """Align every other task to this one through the shared pool and fold them.

    others: (page_table_o, fisher_o [n_o], weights_o [n_o]) per other task.  Where page i
    of this task and page j of task o sit on the same shared page, o's page j of Fisher
    and weights go to our page i; elsewhere zero.
    """
    n_p = num_pages(n, page_size)
    ours = np.asarray(page_table)
    shared_rows = np.nonzero(ours < num_shared)[0]
    sum_f = np.zeros((n_p, page_size))
    sum_fw = np.zeros((n_p, page_size))
    sum_fww = np.zeros((n_p, page_size))
    count = np.zeros((n_p, page_size))
    sharing = 0
    for table_o, fisher_o, weights_o in others:
        table_o = np.asarray(table_o)
        where_o = np.full(num_shared, -1)
        on_pool = np.nonzero(table_o < num_shared)[0]
        where_o[table_o[on_pool]] = on_pool
        j = where_o[ours[shared_rows]]
        hit = j >= 0
        if not np.any(hit):
            continue
        sharing += 1
        i = shared_rows[hit]
        f = to_pages(fisher_o, page_size)[j[hit]].astype(np.float64)
        w = to_pages(weights_o, page_size)[j[hit]].astype(np.float64)
        sum_f[i] += f
        sum_fw[i] += f * w
        sum_fww[i] += f * w * w
        count[i] += f != 0
    c = np.maximum(count, 1)
    a = sum_f / c
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(sum_f > 0, sum_fw / sum_f, 0.0)
    rest = float(np.sum((sum_fww - sum_fw * m) / c))
    return OverlapTerms(a.ravel()[:n].astype(np.float32), m.ravel()[:n].astype(np.float32), rest, sharing)


# --- per-task optimization ------------------------------------------------------------

@dataclasses.dataclass
class StepLog:
    step: int
    train_accuracy: float
    original_loss: float
    overlapping_loss: float
    val_accuracy: float | None = None


class SeparatedTrainer:
    """The compiled training step of one separated task, built once and reused.

    Holds the task's weights as one flat variable, the overlap terms and a hand-written
    Adam state (m, v, t) as variables, so that resetting between calls (a fresh
    optimizer, new starting weights, new overlap terms) never retraces.
    """

    def __init__(self, net: Network, lr: float = 1e-3, lamb: float = 0.1,
                 beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-7):
        self.net = net
        n = net.num_weights
        self.lr, self.lamb, self.beta1, self.beta2, self.epsilon = lr, lamb, beta1, beta2, epsilon
        self.w = tf.Variable(tf.zeros([n]), name="w")
        self.m = tf.Variable(tf.zeros([n]), name="adam_m")
        self.v = tf.Variable(tf.zeros([n]), name="adam_v")
        self.t = tf.Variable(0.0, name="adam_t")
        self.strength = tf.Variable(tf.zeros([n]), name="overlap_strength")
        self.target = tf.Variable(tf.zeros([n]), name="overlap_target")
        self.constant = tf.Variable(0.0, dtype=tf.float64, name="overlap_constant")
        shape = (None, *net.task.input_shape)
        self._step = tf.function(self._train_step, input_signature=[
            tf.TensorSpec(shape, tf.float32), tf.TensorSpec([None], tf.int64)])
        self._predict = tf.function(lambda x: tf.argmax(net.forward(self.w, x), axis=1),
                                    input_signature=[tf.TensorSpec(shape, tf.float32)])

    def reset(self, w0: np.ndarray, terms: OverlapTerms) -> None:
        """New starting weights and overlap terms; a fresh optimizer."""
        self.w.assign(np.asarray(w0, np.float32))
        for var in (self.m, self.v):
            var.assign(tf.zeros_like(var))
        self.t.assign(0.0)
        self.strength.assign(terms.strength)
        self.target.assign(terms.target)
        self.constant.assign(terms.constant)

    def _overlap(self):
        quad = tf.reduce_sum(self.strength * tf.square(self.w - self.target))
        return tf.cast(quad, tf.float64) + self.constant

    def _train_step(self, x, y):
        with tf.GradientTape() as tape:
            probs = self.net.forward(self.w, x, training=True)
            ce = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, probs))
            quad = tf.reduce_sum(self.strength * tf.square(self.w - self.target))
            loss = ce + self.lamb * quad
        g = tape.gradient(loss, self.w)
        self.t.assign_add(1.0)
        self.m.assign(self.beta1 * self.m + (1 - self.beta1) * g)
        self.v.assign(self.beta2 * self.v + (1 - self.beta2) * tf.square(g))
        m_hat = self.m / (1 - tf.pow(self.beta1, self.t))
        v_hat = self.v / (1 - tf.pow(self.beta2, self.t))
        self.w.assign_sub(self.lr * m_hat / (tf.sqrt(v_hat) + self.epsilon))
        accuracy = tf.reduce_mean(tf.cast(tf.argmax(probs, axis=1) == y, tf.float32))
        return accuracy, ce, self._overlap()

    def evaluate(self, w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
        """Accuracy of the weights ``w`` (they become the trainer's current weights)."""
        self.w.assign(np.asarray(w, np.float32))
        return self.accuracy(x, y)

    def accuracy(self, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> float:
        hits = 0
        for i in range(0, len(x), batch_size):
            hits += int(np.sum(self._predict(x[i:i + batch_size]).numpy() == y[i:i + batch_size]))
        return hits / max(len(y), 1)

    def train(self, x_train, y_train, x_val, y_val, iters: int, rng: np.random.Generator,
              batch_size: int = 100, eval_every: int = 100, log=None):
        """Run ``iters`` steps; return (best weights or None if step 0 stayed best, best acc, start acc).

        Validation at step 0 (the starting weights), after every ``eval_every`` updates
        and after the last; ``log`` receives a StepLog at each of those points.
        """
        start_acc = self.accuracy(x_val, y_val)
        best_acc, best_w = start_acc, None
        for step in range(iters):
            idx = rng.integers(0, len(x_train), size=batch_size)
            # The batch statistics are those of the weights before this update.
            acc, ce, ov = self._step(x_train[idx], y_train[idx])
            if step == 0 and log is not None:
                log(StepLog(0, float(acc), float(ce), float(ov), start_acc))
            done = step + 1
            if done % eval_every == 0 or done == iters:
                val = self.accuracy(x_val, y_val)
                if log is not None:
                    log(StepLog(done, float(acc), float(ce), float(ov), val))
                if val > best_acc:
                    best_acc, best_w = val, self.w.numpy()
                    if log is not None:
                        log(f"get new weight for {val:.6f}")
        return best_w, best_acc, start_acc


def print_log(entry) -> None:
    """The original's progress lines."""
    if isinstance(entry, StepLog):
        print(f"step {entry.step}, training accuracy: {entry.train_accuracy:.6f} "
              f"original loss: {entry.original_loss:.6f} overlapping loss: {entry.overlapping_loss:.6f}")
        if entry.val_accuracy is not None:
            print(f"step {entry.step}, Validation accuracy: {entry.val_accuracy:.6f}")
    else:
        print(entry)
    sys.stdout.flush()

