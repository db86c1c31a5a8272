"""Diagnostics of tasks and of a separated state (modes f, c, n, v, tl, cl, tpr, loss): each
function takes a Session and returns the lines to print (the original's lines first)."""

from __future__ import annotations

import numpy as np

from weightsep import fisher as fisher_lib
from weightsep import separation
from weightsep.errors import WeightSepError
from weightsep.networks import load_network
from weightsep.pipeline import (Session, compute_loss_lines, original_target_loss_lines, overlap_for,
                                total_network_cost)
from weightsep.training import cross_entropy
from weightsep.tf import tf


def separated_fisher(session: Session, name: str) -> np.ndarray:
    """The normalized Fisher of the separated task: its materialized weights, the same K
    examples and seed as at add.  -mode=f and the pf plot use it."""
    opt = session.options
    train = session.split(name, "train")
    return fisher_lib.compute_fisher(session.network(name), session.store.materialize(name), train.x,
                                     k=opt.fisher_samples, seed=opt.seed)


def fisher_of_separated(session: Session, name: str) -> list[str]:
    """-mode=f: the Fisher of the separated task, saved as <task>/<task>_fisher.npy (as the
    original), and how it compares with the network's Fisher per page."""
    store = session.store
    now = separated_fisher(session, name)
    with store.writer():
        store.commit_task(name, vectors={"fisher": now})
    before = store.load_vector(name, "network_fisher")
    cd_now = separation.contribution_density(now, store.page_size)
    cd_before = separation.contribution_density(before, store.page_size)
    rec = store.task(name)
    top = np.argsort(-cd_now, kind="stable")[:10]
    corr = float(np.corrcoef(cd_now, cd_before)[0, 1]) if len(cd_now) > 1 else 1.0
    return [str(store.vector_path(name, "fisher")),
            f"{name}: Fisher of the separated weights ({len(cd_now)} pages, {session.options.fisher_samples} examples)",
            f"top pages by contribution density now: {top.tolist()}",
            f"exclusive pages (chosen from the network Fisher): {rec.exclusive_pages}",
            f"share of the Fisher on exclusive pages: now {cd_now[rec.exclusive_pages].sum():.4f}, "
            f"at add {cd_before[rec.exclusive_pages].sum():.4f}",
            f"correlation of page contribution densities (now vs at add): {corr:.4f}"]


def network_cost_lines(session: Session, names: list[str]) -> list[str]:
    """-mode=c: the original's calculate_network_cost over every pair of the given tasks."""
    for name in names:
        session.store.task(name)  # a clear error for a task that is not in the state
    return [f"total cost: {total_network_cost(session.store, names)}"]


def layers(session: Session, name: str) -> list[str]:
    """-mode=n: the original's layer list ([kh, kw, in, out] per conv, [units] per dense)."""
    return [str(session.network(name).layer_list())]


def variables(session: Session, name: str) -> list[str]:
    """-mode=v: the task's trainable variables, one per line (name, shape, dtype)."""
    net = session.network(name)
    return [f"<tf.Variable '{path}' shape={shape} dtype=float32>"
            for path, shape in zip(net.variable_names, net.shapes)]


def training_loss(session: Session, name: str) -> list[str]:
    """-mode=loss: the training loss terms and accuracies of the separated task now."""
    store, opt = session.store, session.options
    trainer = session.trainer(name)
    pages = session.pages_of(name)
    train, selection = session.split(name, "train"), session.selection_split(name)
    selection_acc = trainer.evaluate(pages, selection.x, selection.y, store.task_wide(name))
    w = trainer.effective_weights()
    ce, probs = cross_entropy(session.network(name), tf.constant(w), tf.constant(train.x),
                              tf.constant(train.y), opt.loss)
    targets = overlap_for(store, name)
    overlap = opt.lamb * targets.value(store.materialize(name))
    train_acc = float(np.mean(np.argmax(probs.numpy(), axis=1) == train.y))
    return [f"{name}: original loss {float(ce):.6f} ({opt.loss}, whole training split) overlapping loss "
            f"{overlap:.6f} (lamb {opt.lamb}; shares pages with {targets.num_tasks} tasks)",
            f"{name}: training accuracy {train_acc:.6f} {opt.select_on} accuracy {selection_acc:.6f}"]


def _alpha_loss(session: Session, name: str):
    net = load_network(session.spec(name))
    train = session.split(name, "train")
    probs = net.predict(train.x)
    return net, train, probs, separation.alpha_loss(probs, train.y, session.options.alpha)


def alpha_loss_lines(session: Session, name: str) -> list[str]:
    """-mode=cl: the alpha-loss of the task's own network on its training split (the original's
    lines, then ours)."""
    _, train, _, (loss, alpha_acc) = _alpha_loss(session, name)
    return [*compute_loss_lines(len(train.y)), f"loss: {loss}",
            f"{name}: alpha {session.options.alpha} alpha-accuracy {alpha_acc:.6f}"]


def target_loss_lines(session: Session, name: str) -> list[str]:
    """-mode=tl: the original's target loss for -target_accuracy, with its lines."""
    target = session.options.target_accuracy
    if target is None:
        raise WeightSepError("-mode=tl needs -target_accuracy=<0..1>")
    _, train, probs, (loss, alpha_acc) = _alpha_loss(session, name)
    return [*original_target_loss_lines(name, probs, train.y, session.options.alpha),
            f"target_loss:  {separation.target_loss(loss, alpha_acc, target)}"]


def tpr_lines(session: Session, name: str) -> list[str]:
    """-mode=tpr: the target performance rate and the exclusive pages it would give."""
    opt = session.options
    net, train, probs, _ = _alpha_loss(session, name)
    tpr = separation.target_performance_rate(probs, train.y, opt.alpha, opt.target_accuracy)
    store = session.store
    fisher = (store.load_vector(name, "network_fisher") if store.loaded and store.has_task(name)
              else fisher_lib.compute_fisher(net, net.get_vector(), train.x, opt.fisher_samples, opt.seed))
    page_size = store.page_size if store.loaded else opt.page_size
    num_shared = store.num_pages if store.loaded else opt.num_pages
    # The margin the task was added with, unless -margin asks about another one.
    recorded = store.task(name).settings.get("margin") if store.loaded and store.has_task(name) else None
    if "margin" in opt.explicit or recorded is None:
        margin, source = opt.margin, "-margin" if "margin" in opt.explicit else "the default -margin"
    else:
        margin, source = float(recorded), "as the task was added"
    sep = separation.separate(fisher, net.num_weights, page_size, tpr, margin, num_shared, opt.use_exclusive_page)
    original = compute_loss_lines(len(train.y))
    if opt.target_accuracy is not None:
        original += original_target_loss_lines(name, probs, train.y, opt.alpha)
    return [*original, f"Target performance rate: {tpr}",
            f"{name}: {sep.num_of_exclusive_weight_page} exclusive pages {sep.exclusive_pages.tolist()} "
            f"(margin {margin:g}, {source})"]
