"""Diagnostics of a separated state (modes f, c, n, tl, cl, tpr): each returns lines to print."""

from __future__ import annotations

import numpy as np

from weightsep import fisher as fisher_lib
from weightsep import separation
from weightsep.errors import WeightSepError
from weightsep.networks import Network, load_network
from weightsep.pages import to_pages
from weightsep.pipeline import Session, overlap_for
from weightsep.tf import keras


def fisher_of_separated(session: Session, name: str) -> list[str]:
    """-mode=f: Fisher of the separated weights vs the network's, per page."""
    store, opt = session.store, session.options
    net = session.network(name)
    w = store.materialize(name)
    train = session.split(name, "train")
    now = fisher_lib.compute_fisher(net, w, train.x, k=opt.fisher_samples, seed=opt.seed)
    before = store.load_vector(name, "network_fisher")
    cd_now = separation.contribution_density(now, store.page_size)
    cd_before = separation.contribution_density(before, store.page_size)
    rec = store.task(name)
    top = np.argsort(-cd_now, kind="stable")[:10]
    corr = float(np.corrcoef(cd_now, cd_before)[0, 1]) if len(cd_now) > 1 else 1.0
    lines = [f"{name}: Fisher of the separated weights ({len(cd_now)} pages, {opt.fisher_samples} examples)",
             f"top pages by contribution density now: {top.tolist()}",
             f"exclusive pages (chosen from the network Fisher): {rec.exclusive_pages}",
             f"share of the Fisher on exclusive pages: now {cd_now[rec.exclusive_pages].sum():.4f}, "
             f"at add {cd_before[rec.exclusive_pages].sum():.4f}",
             f"correlation of page contribution densities (now vs at add): {corr:.4f}"]
    return lines


def pair_cost(session: Session, a: str, b: str) -> list[str]:
    """-mode=c: the overlapping cost between two tasks on the shared pages they both use."""
    store = session.store
    P, S = store.num_pages, store.page_size
    ra, rb = store.task(a), store.task(b)
    where_b = {int(q): j for j, q in enumerate(rb.page_table) if q < P}
    pairs = [(i, where_b[int(q)]) for i, q in enumerate(ra.page_table) if q < P and int(q) in where_b]
    if not pairs:
        return [f"{a} and {b} share no page: overlapping cost 0"]
    fa, fb, wa, wb = (to_pages(store.load_vector(task, kind), S).astype(np.float64)
                      for kind in ("network_fisher", "network_weight") for task in (a, b))
    i, j = np.array(pairs).T
    both = (fa[i] != 0) & (fb[j] != 0)
    cost = np.where(both, (fa[i] + fb[j]) * (wa[i] - wb[j]) ** 2, 0.0).sum(axis=1)
    return [f"{a} and {b} share {len(pairs)} shared pages",
            f"overlapping cost of {a} and {b}: {float(cost.sum())} (network weights and Fisher)",
            f"costliest shared pages: {[int(ra.page_table[k]) for k in i[np.argsort(-cost)[:10]]]}"]


def layers(session: Session, name: str) -> list[str]:
    """-mode=n: the network's trainable variables with shapes and counts."""
    return [f"{name}:"] + Network(session.spec(name)).summary_lines()


def training_loss(session: Session, name: str) -> list[str]:
    """-mode=tl: cross-entropy, overlapping loss and accuracies of the separated task now."""
    store = session.store
    net = session.network(name)
    w = store.materialize(name)
    net.set_vector(w)
    train, val = session.split(name, "train"), session.split(name, "validation")
    probs = net.predict(train.x)
    ce = float(np.mean(keras.losses.sparse_categorical_crossentropy(train.y, probs)))
    terms = overlap_for(store, name)
    return [f"{name}: original loss {ce:.6f} overlapping loss {terms.value(w):.6f} "
            f"(shares pages with {terms.num_tasks} tasks; lamb {session.options.lamb})",
            f"{name}: training accuracy {np.mean(np.argmax(probs, 1) == train.y):.6f} "
            f"validation accuracy {net.accuracy(val.x, val.y):.6f}"]


def alpha_loss_lines(session: Session, name: str) -> list[str]:
    """-mode=cl: the alpha-loss of the task's own network on its training split."""
    net = load_network(session.spec(name))
    train = session.split(name, "train")
    loss, alpha_acc = separation.alpha_loss(net.predict(train.x), train.y, session.options.alpha)
    return [f"{name}: alpha {session.options.alpha} alpha-loss {loss:.6f} alpha-accuracy {alpha_acc:.6f}"]


def tpr_lines(session: Session, name: str) -> list[str]:
    """-mode=tpr: the target performance rate and the exclusive pages it would give."""
    opt = session.options
    if opt.target_accuracy is None:
        raise WeightSepError("-mode=tpr needs -target_accuracy=<0..1>")
    net = load_network(session.spec(name))
    train = session.split(name, "train")
    probs = net.predict(train.x)
    loss, alpha_acc = separation.alpha_loss(probs, train.y, opt.alpha)
    tpr = separation.target_performance_rate(probs, train.y, opt.alpha, opt.target_accuracy)
    fisher = (session.store.load_vector(name, "network_fisher")
              if session.store.exists() and session.store.has_task(name)
              else fisher_lib.compute_fisher(net, net.get_vector(), train.x, opt.fisher_samples, opt.seed))
    sep = separation.separate(fisher, net.num_weights, opt.page_size, tpr, opt.margin, opt.num_pages,
                              opt.use_exclusive_page)
    return [f"{name}: alpha-loss {loss:.6f} alpha-accuracy {alpha_acc:.6f} target accuracy {opt.target_accuracy}",
            f"{name}: TPR {tpr:.6f} -> {sep.num_of_exclusive_weight_page} exclusive pages "
            f"{sep.exclusive_pages.tolist()} (margin {opt.margin})"]
