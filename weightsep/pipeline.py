"""The method end to end on a Store: add (Fisher, separation, overlapping), train,
evaluate, optimize all, remove.  The CLI modes are thin calls into these functions.

A ``Session`` bundles the store with per-process caches (task specs, networks,
datasets) so that in-process loops (optimize-all, the demo) build each network and
load each dataset once.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

import numpy as np

from weightsep import data as datasets
from weightsep import fisher as fisher_lib
from weightsep import matching, separation
from weightsep.errors import WeightSepError
from weightsep.networks import Network, load_network
from weightsep.pages import num_pages, to_pages
from weightsep.store import Store, TaskRecord
from weightsep.tasks import TaskSpec, load_task
from weightsep.training import SeparatedTrainer, overlap_terms, print_log

Log = Callable[[object], None]


@dataclasses.dataclass
class Options:
    """Method settings; defaults reproduce the paper."""

    page_size: int = 512
    num_pages: int = 128
    alpha: float = 0.5
    margin: float = 0.1
    target_accuracy: Optional[float] = None
    use_exclusive_page: bool = True
    matching: str = "greedy"
    init: str = "none"            # "none" (the paper: only training writes the pool) or "merge"
    lamb: float = 0.1
    batch_size: int = 100
    lr: float = 1e-3
    fisher_samples: int = 50
    seed: int = 0
    data: Optional[str] = None    # None: the data kind the task was added with (else "real")


class Session:
    """A store plus the per-process caches of specs, networks and datasets."""

    def __init__(self, store: Store, options: Options | None = None):
        self.store = store
        self.options = options or Options()
        self._specs: dict[str, TaskSpec] = {}
        self._networks: dict[str, Network] = {}
        self._trainers: dict[str, SeparatedTrainer] = {}

    # -- caches --
    def spec(self, name: str) -> TaskSpec:
        """The task's spec: from the folder it was added from, else by name or path."""
        if name not in self._specs:
            path = self.store.task(name).network_path if self._registered(name) else ""
            self._specs[name] = load_task(path or name)
        return self._specs[name]

    def use_spec(self, task: TaskSpec) -> None:
        """Use this spec for its task (e.g. a folder given on the command line)."""
        self._specs[task.name] = task

    def _registered(self, name: str) -> bool:
        return self.store.loaded and self.store.has_task(name)

    def network(self, name: str) -> Network:
        if name not in self._networks:
            self._networks[name] = Network(self.spec(name))
        return self._networks[name]

    def data_kind(self, name: str) -> str:
        if self.options.data:
            return self.options.data
        if self._registered(name):
            return self.store.task(name).settings.get("data", "real")
        return "real"

    def split(self, name: str, split: str) -> datasets.Dataset:
        return datasets.load_split(self.spec(name), split, data=self.data_kind(name), seed=self.options.seed)

    def trainer(self, name: str) -> SeparatedTrainer:
        if name not in self._trainers:
            self._trainers[name] = SeparatedTrainer(self.network(name), lr=self.options.lr, lamb=self.options.lamb)
        return self._trainers[name]


# --- add: Fisher, separation, overlapping -------------------------------------------

@dataclasses.dataclass
class AddResult:
    record: TaskRecord
    separation: separation.SeparationResult
    matching_cost: float
    seconds: dict


def ensure_state(store: Store, options: Options, explicit: set[str] = frozenset(), log: Log = print_log) -> None:
    """Create the state on first use; refuse a page size / pool size that contradicts it."""
    if not store.exists():
        store.create(page_size=options.page_size, num_pages=options.num_pages, seed=options.seed,
                     settings={"matching": options.matching, "init": options.init})
        log(f"init new weight pages ({options.num_pages} shared pages of {options.page_size} weights "
            f"in {store.dir})")
        return
    store.load()
    for flag, have in (("page_size", store.page_size), ("num_pages", store.num_pages)):
        want = getattr(options, flag)
        if flag in explicit and want != have:
            raise WeightSepError(
                f"-{flag}={want} contradicts the existing state in {store.dir} ({flag} {have}); "
                f"drop the flag, or use another -state_dir to start a new state")
    options.page_size, options.num_pages = store.page_size, store.num_pages


def pool_fisher(store: Store, exclude: str | None = None) -> np.ndarray:
    """F_sum: per shared page, the sum of the network Fisher of the task pages on it."""
    P, S = store.num_pages, store.page_size
    total = np.zeros((P, S), np.float64)
    for rec in store.tasks:
        if rec.name == exclude:
            continue
        pages = to_pages(store.load_vector(rec.name, "network_fisher"), S)
        on_pool = np.nonzero(rec.page_table < P)[0]
        total[rec.page_table[on_pool]] += pages[on_pool]
    return total


def add_task(session: Session, name: str, log: Log = print_log) -> AddResult:
    """Register a pretrained task: Fisher, separation, overlapping (mode a)."""
    store, opt = session.store, session.options
    if store.has_task(name):
        raise WeightSepError(f"task {name} is already in the state in {store.dir}; "
                             f"remove it first with -mode=r -vnn_name={name}")
    spec = session.spec(name)
    net = load_network(spec)
    session._networks[name] = net  # reuse the loaded network for later evaluation
    w = net.get_vector()
    n, S, P = net.num_weights, store.page_size, store.num_pages
    log(f"add {name}: {n} weights from {spec.path(spec.name + '.weights.h5')}")
    seconds = {}

    start = time.perf_counter()
    train = session.split(name, "train")
    fisher = fisher_lib.compute_fisher(net, w, train.x, k=opt.fisher_samples, seed=opt.seed)
    seconds["fisher"] = time.perf_counter() - start
    store.save_vector(name, "network_weight", w)
    store.save_vector(name, "network_fisher", fisher)
    log(f"compute_fisher {seconds['fisher'] * 1e3:.1f} ms ({min(opt.fisher_samples, len(train.x))} examples)")

    start = time.perf_counter()
    tpr = 1.0
    if opt.target_accuracy is not None:
        tpr = separation.target_performance_rate(net.predict(train.x), train.y, opt.alpha, opt.target_accuracy)
    sep = separation.separate(fisher, n, S, tpr, opt.margin, P, opt.use_exclusive_page)
    seconds["separation"] = time.perf_counter() - start
    log(f"target performance rate {tpr:.6f}")
    for line in sep.summary_lines():
        log(line)

    start = time.perf_counter()
    w_pages, f_pages = to_pages(w, S), to_pages(fisher, S)
    sharable = sep.sharable_pages
    fsum = pool_fisher(store)
    result = matching.match_pages(w_pages[sharable], f_pages[sharable], store.shared, fsum,
                                  store.occupation(), method=opt.matching)
    seconds["matching"] = time.perf_counter() - start
    log(f"assign_page {seconds['matching'] * 1e3:.3f} ms ({opt.matching})")

    table = np.full(num_pages(n, S), -1, np.int64)
    table[sharable] = result.assignment
    record = TaskRecord(name=name, num_weights=n, page_table=table, exclusive_pages=list(sep.exclusive_pages),
                        network_path=str(spec.folder),
                        settings={"data": session.data_kind(name), "trained_steps": 0,
                                  "tpr": tpr, "matching": opt.matching, "margin": opt.margin},
                        accuracy={})
    test = session.split(name, "test")
    record.accuracy["network"] = net.accuracy(test.x, test.y)
    record = store.add_task(record, w_pages[sep.exclusive_pages])
    if opt.init == "merge":
        merge_into_pool(store, name, w_pages[sharable], f_pages[sharable], result.assignment, fsum)
    log(f"{len(sharable)} pages allocated for {sep.num_of_inexclusive_weight} weights")
    log(f"matching cost: {result.total_cost}")
    return AddResult(record, sep, float(result.total_cost), seconds)


def merge_into_pool(store: Store, name: str, w_pages, f_pages, assignment, fsum) -> None:
    """-init=merge: each used shared page becomes the Fisher-weighted mean of its occupants' values."""
    P, S = store.num_pages, store.page_size
    weighted = np.zeros((P, S))
    for rec in store.tasks:
        if rec.name == name:
            continue
        latest = "weight" if store.has_vector(rec.name, "weight") else "network_weight"
        pages_w = to_pages(store.load_vector(rec.name, latest), S)
        pages_f = to_pages(store.load_vector(rec.name, "network_fisher"), S)
        on_pool = np.nonzero(rec.page_table < P)[0]
        weighted[rec.page_table[on_pool]] += pages_f[on_pool] * pages_w[on_pool]
    pool = store.shared.copy()
    num = weighted[assignment] + f_pages * w_pages
    den = fsum[assignment] + f_pages
    pool[assignment] = np.where(den > 0, num / np.where(den > 0, den, 1), w_pages).astype(np.float32)
    store.save_shared(pool)


# --- train, evaluate, optimize ------------------------------------------------------

def overlap_for(store: Store, name: str):
    """The overlapping-loss terms of a task against every other task in the state."""
    rec = store.task(name)
    others = []
    for o in store.tasks:
        if o.name == name:
            continue
        latest = "weight" if store.has_vector(o.name, "weight") else "network_weight"
        others.append((o.page_table, store.load_vector(o.name, "network_fisher"), store.load_vector(o.name, latest)))
    return overlap_terms(rec.page_table, rec.num_weights, store.page_size, store.num_pages, others)


@dataclasses.dataclass
class TrainResult:
    start_accuracy: float
    best_accuracy: float
    updated: bool


def train_task(session: Session, name: str, iters: int, log: Log = print_log) -> TrainResult:
    """The paper's optimization step of one task (mode t); writes back only an improvement.

    Batches come from a generator seeded by (seed, task id, steps trained so far), so
    the same schedule gives the same result in one process or in many.
    """
    store, opt = session.store, session.options
    rec = store.task(name)
    train, val = session.split(name, "train"), session.split(name, "validation")
    trainer = session.trainer(name)
    trainer.reset(store.materialize(name), overlap_for(store, name))
    steps_before = int(rec.settings.get("trained_steps", 0))
    rng = np.random.default_rng([opt.seed, rec.id, steps_before])
    best_w, best_acc, start_acc = trainer.train(train.x, train.y, val.x, val.y, iters, rng,
                                                batch_size=opt.batch_size, log=log)
    if best_w is not None:
        store.write_task_pages(name, best_w)
        store.save_vector(name, "weight", best_w)
    rec = store.task(name)
    rec.settings["trained_steps"] = steps_before + iters
    store.update_task(rec)
    return TrainResult(start_acc, best_acc, best_w is not None)


def evaluate_task(session: Session, name: str, target: str = "vnn", record: bool = True) -> float:
    """Test accuracy of the separated task (target "vnn") or of its own network ("network")."""
    spec = session.spec(name)
    test = session.split(name, "test")
    if target == "network":
        return load_network(spec).accuracy(test.x, test.y)
    # The task's compiled stateless predict (built once per process), fed the materialized weights.
    acc = session.trainer(name).evaluate(session.store.materialize(name), test.x, test.y)
    if record:
        rec = session.store.task(name)
        rec.accuracy["separated"] = acc
        session.store.update_task(rec)
    return acc


def optimize_all(session: Session, rounds: int, iters: int, log: Log = print_log,
                 progress: Callable[[int, int], None] | None = None) -> list[dict[str, float]]:
    """optimization.sh in one process: each round, every task ``iters`` steps, then evaluate all."""
    names = [rec.name for rec in session.store.tasks]
    history = []
    for r in range(1, rounds + 1):
        log(f"{r}-th optimization")
        for name in names:
            log(f"[{name}]")
            train_task(session, name, iters, log=log)
        log(f"{r}-th evaluation")
        accs = {}
        for name in names:
            accs[name] = evaluate_task(session, name)
            log(f"{name} inference accuracy: {accs[name]:.6f}")
        history.append(accs)
        if progress is not None:
            progress(r, rounds)
    return history
