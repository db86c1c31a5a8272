#!/usr/bin/env python3
"""How much the original's batch-softmax cross-entropy changes the training signal.

For each of the ten synthetic networks (pretrained as the demo does), on -batches random
training batches of 100: the gradient of the original's loss (softmax normalized over the whole
batch x classes) and of the per-example cross-entropy with respect to all weights, at the
network's weights; reports their cosine similarity and norm ratio (medians over the batches) and
the network's confidence (mean largest probability) on those batches.

  .venv/bin/python benchmarks/bench_loss.py [-out=bench_out/method] [-batches=20]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from absl import app, flags  # noqa: E402

from benchmarks.common import TASKS, machine, median, pretrained_tasks  # noqa: E402

flags.DEFINE_string("out", "bench_out/method", "working directory (the networks are shared with bench_method)")
flags.DEFINE_integer("batches", 20, "random training batches per network")
flags.DEFINE_integer("pretrain_iter", 500, "pretraining steps of the synthetic networks")
FLAGS = flags.FLAGS


def gradients(net, x, y):
    from weightsep.tf import tf
    from weightsep.training import cross_entropy
    w = tf.constant(net.get_vector())
    found = {}
    for loss in ("batch_softmax", "per_example"):
        with tf.GradientTape() as tape:
            tape.watch(w)
            ce, probs = cross_entropy(net, w, tf.constant(x), tf.constant(y), loss)
        found[loss] = tape.gradient(ce, w).numpy().astype("float64")
    return found, float(probs.numpy().max(axis=1).mean())


def main(argv):
    del argv
    import numpy as np
    from weightsep import data
    from weightsep.networks import load_network
    from weightsep.tasks import load_task
    folders = pretrained_tasks(Path(FLAGS.out).resolve() / "networks", TASKS, FLAGS.pretrain_iter)
    lines = [f"Machine: {machine()}.", "",
             "| task | confidence (mean max prob.) | cosine(batch-softmax, per-example) | "
             "norm ratio batch-softmax / per-example |", "|---|---:|---:|---:|"]
    rng = np.random.default_rng(0)
    for name in TASKS:
        spec = load_task(folders[name])
        net = load_network(spec)
        train = data.load_split(spec, "train", "synthetic")
        cosines, ratios, confidences = [], [], []
        for _ in range(FLAGS.batches):
            idx = rng.choice(len(train.y), 100, replace=False)
            g, confidence = gradients(net, train.x[idx], train.y[idx])
            a, b = g["batch_softmax"], g["per_example"]
            cosines.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            ratios.append(np.linalg.norm(a) / np.linalg.norm(b))
            confidences.append(confidence)
        lines.append(f"| {name} | {median(confidences):.3f} | {median(cosines):.3f} | {median(ratios):.3f} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
