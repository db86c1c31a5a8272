"""The method end to end on a Store: add (Fisher, separation, overlapping), train, evaluate,
form all tasks, optimize all.  The CLI modes, the demo, the benchmarks and the tests call these
functions; each workflow exists here once.

A ``Session`` bundles the store with per-process caches (task specs, networks, trainers) so
that in-process loops (form-all, optimize-all, the demo) build each network and compile each
training step once.  Task specs of registered tasks come from the registry's JSON (no code
runs from a state directory); a folder the user names on the command line (-network_path) or
a repository task folder may supply a spec with a custom build_model.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterable, Optional

import numpy as np

from weightsep import data as datasets
from weightsep import fisher as fisher_lib
from weightsep import matching, separation
from weightsep.errors import WeightSepError, command
from weightsep.limits import DEFAULT_GROUP_SIZE, DEFAULT_INT8_PAGES
from weightsep.networks import Network, load_network
from weightsep.pages import gather_pages, num_pages, to_pages
from weightsep.store import Store, TaskRecord
from weightsep.tasks import TaskSpec, load_task
from weightsep.training import DistributedTrainer, SeparatedTrainer, TrainOutcome, overlap_targets, print_log

Log = Callable[[object], None]


@dataclasses.dataclass
class Options:
    """Method settings; defaults reproduce the original code."""

    page_size: int = 512
    num_pages: int = 128
    page_dtype: str = "float32"   # "int8" / "int4": quantized weight-pages (ours)
    transpose: bool = False       # the original's -transpose: the network vector in MCU layout
    alpha: float = 0.5
    margin: float = 0.1
    target_accuracy: Optional[float] = None
    use_exclusive_page: bool = True
    matching: str = "greedy"      # the original's PageAlloc; "optimal": exact per level (ours)
    init: str = "none"            # "none": only training writes the pool (original); "merge" (ours)
    lamb: float = 0.1
    batch_size: int = 100
    lr: float = 1e-3
    fisher_samples: int = 50
    seed: int = 0
    data: Optional[str] = None    # None: the data kind the task was added with (else "real")
    loss: str = "batch_softmax"   # the original graphs' loss; "per_example" (ours)
    select_on: str = "test"       # the original's model selection; "validation" (ours)
    # The fraction of the train files cut off as validation for a task without validation files;
    # None: only when something uses it (-select_on=validation), else the whole files train (original).
    validation_split: Optional[float] = None
    group_size: int = DEFAULT_GROUP_SIZE   # int4 states: weights per float16 scale at most (ours)
    int8_pages: float = DEFAULT_INT8_PAGES  # int4 conversion: share of pages stored as int8 (ours)
    explicit: frozenset = frozenset()  # state-wide flags the user gave (contradictions are errors)

    @property
    def layout(self) -> str:
        return "transposed" if self.transpose else "natural"


class Session:
    """A store plus the per-process caches of specs, networks and trainers."""

    def __init__(self, store: Store, options: Options | None = None):
        self.store = store
        self.options = options or Options()
        self._specs: dict[str, TaskSpec] = {}
        self._networks: dict[str, Network] = {}
        self._trainers: dict[str, SeparatedTrainer] = {}
        self.strategy = None  # a tf.distribute strategy: data-parallel training (weightsep.distribute)

    # -- specs and data --
    def _record(self, name: str) -> TaskRecord | None:
        return self.store.task(name) if self.store.loaded and self.store.has_task(name) else None

    def spec(self, name: str) -> TaskSpec:
        """The task's spec: one the user named, else the registry's JSON, else a repository folder."""
        if name not in self._specs:
            record = self._record(name)
            self._specs[name] = load_task(name) if record is None else record.runnable_spec()
        return self._specs[name]

    def use_spec(self, task: TaskSpec) -> None:
        """Use this spec (from a folder the user named) for its task; it must match the registry's."""
        record = self._record(task.name)
        self._specs[task.name] = task if record is None else record.runnable_spec(task)
        self._networks.pop(task.name, None)
        self._trainers.pop(task.name, None)

    @property
    def layout(self) -> str:
        return self.store.layout if self.store.loaded else self.options.layout

    def network(self, name: str) -> Network:
        if name not in self._networks:
            self._networks[name] = Network(self.spec(name), layout=self.layout)
        return self._networks[name]

    def data_kind(self, name: str) -> str:
        if self.options.data:
            return self.options.data
        record = self._record(name)
        return record.settings.get("data", "real") if record else "real"

    def data_seed(self, name: str) -> int:
        """The seed of the task's synthetic data: recorded when it was added (else -seed)."""
        record = self._record(name)
        return int(record.settings.get("data_seed", self.options.seed)) if record else self.options.seed

    def validation_split(self) -> float:
        """The fraction of a task's train files cut off as validation when it has no validation
        files: -validation_split when given, else 0.1 if model selection uses it, else none."""
        opt = self.options
        if opt.validation_split is not None:
            return opt.validation_split
        return datasets.DEFAULT_VALIDATION_SPLIT if opt.select_on == "validation" else 0.0

    def split(self, name: str, split: str) -> datasets.Dataset:
        """One split of a task's data; every training, Fisher and report caller reads "train" here."""
        return datasets.load_split(self.spec(name), split, data=self.data_kind(name), seed=self.data_seed(name),
                                   validation_split=self.validation_split())

    def selection_split(self, name: str) -> datasets.Dataset:
        """The split model selection evaluates on (-select_on)."""
        return self.split(name, "test" if self.options.select_on == "test" else "validation")

    def trainer(self, name: str) -> SeparatedTrainer:
        if name not in self._trainers:
            opt = self.options
            settings = dict(lr=opt.lr, lamb=opt.lamb, loss=opt.loss, page_dtype=self.store.page_dtype,
                            group_size=self.store.group_size or None)
            if self.strategy is None:
                self._trainers[name] = SeparatedTrainer(self.network(name), self.store.page_size, **settings)
            else:
                self._trainers[name] = DistributedTrainer(self.strategy, self.network(name), self.store.page_size,
                                                          **settings)
        return self._trainers[name]

    def pages_of(self, name: str) -> np.ndarray:
        """The task's pages [n_p, S] as stored (the padding of its last page holds the pool's values)."""
        record = self.store.task(name)
        return gather_pages(self.store.shared, self.store.exclusive, record.page_table)

    def master_pages_of(self, name: str) -> np.ndarray:
        """The task's pages [n_p, S] training starts from: the float32 master values of a quantized
        state that keeps them (its forward pass fake-quantizes them), else as stored."""
        return self.store.master_pages(name)


# --- the state ----------------------------------------------------------------------

STATE_WIDE = (("page_size", "page_size"), ("num_pages", "num_pages"), ("page_dtype", "page_dtype"),
              ("transpose", "layout"))


def ensure_state(store: Store, options: Options, log: Log = print_log) -> bool:
    """Create the state on first use (True when it did, printing the original's two lines);
    refuse state-wide flags that contradict an existing one."""
    if not store.exists():
        store.create(page_size=options.page_size, num_pages=options.num_pages, seed=options.seed,
                     page_dtype=options.page_dtype, layout=options.layout,
                     group_size=options.group_size if options.page_dtype == "int4" else None)
        log("init new weight pages")
        log("no exclusive weight pages")
        return True
    store.load()
    for flag, attribute in STATE_WIDE:
        have = getattr(store, attribute)
        want = options.layout if flag == "transpose" else getattr(options, flag)
        if flag in options.explicit and want != have:
            shown = int(options.transpose) if flag == "transpose" else want
            raise WeightSepError(
                f"-{flag}={shown} contradicts the existing state in {store.dir} ({attribute} {have}); "
                f"drop the flag, or use another -state_dir to start a new state")
    options.page_size, options.num_pages = store.page_size, store.num_pages
    options.page_dtype, options.transpose = store.page_dtype, store.layout == "transposed"
    return False


def pool_fisher(store: Store) -> np.ndarray:
    """F_sum, float32 [P, S]: per shared page, the sum of the network Fisher of the task pages on
    it, added in registration order (the original's float32 sum), aligned through the page tables."""
    P, S = store.num_pages, store.page_size
    total = np.zeros((P, S), np.float32)
    for rec in store.tasks:
        pages = to_pages(store.load_vector(rec.name, "network_fisher"), S)
        on_pool = np.flatnonzero(rec.page_table < P)
        total[rec.page_table[on_pool]] += pages[on_pool]
    return total


def total_network_cost(store: Store, names: Iterable[str] | None = None) -> float:
    """The original's total_network_cost: the pair cost of every two tasks on their shared pages
    (network weights and Fisher), over the given tasks (default all)."""
    records = [store.task(n) for n in names] if names is not None else store.tasks
    return matching.network_cost([r.page_table for r in records],
                                 [store.load_vector(r.name, "network_fisher") for r in records],
                                 [store.load_vector(r.name, "network_weight") for r in records],
                                 store.num_pages, store.page_size)


# --- add: Fisher, separation, overlapping -------------------------------------------

@dataclasses.dataclass
class AddResult:
    record: TaskRecord
    separation: separation.SeparationResult
    matching_cost: float
    network_accuracy: float
    seconds: dict


@dataclasses.dataclass
class PreparedTask:
    """What adding a task reads from its folder, loaded and checked before the state is touched."""

    task: TaskSpec
    network: Network
    train: datasets.Dataset
    test: datasets.Dataset


def prepare_add(session: Session, task: TaskSpec) -> PreparedTask:
    """Load a task's network and its train and test splits (errors name the file and the fix)."""
    store = session.store
    if store.exists():
        store.load()
        if store.has_task(task.name):
            remove = command("WeightSeparation.py", "-mode=r", f"-vnn_name={task.name}", f"-state_dir={store.dir}")
            raise WeightSepError(f"task {task.name} is already in the state in {store.dir}; to add it again, "
                                 f"remove it first: {remove}")
    session.use_spec(task)
    net = load_network(task, layout=store.layout if store.exists() else session.options.layout)
    return PreparedTask(task, net, session.split(task.name, "train"), session.split(task.name, "test"))


def add_task(session: Session, task: TaskSpec, log: Log = print_log,
             prepared: PreparedTask | None = None) -> AddResult:
    """Register a pretrained task: Fisher, separation, overlapping (mode a).  Everything the task
    needs (its network, its data) is loaded and checked (``prepare_add``) before the state is
    created or changed.  Needs the writer lock."""
    store, opt = session.store, session.options
    name = task.name
    if prepared is None or prepared.task is not task:
        prepared = prepare_add(session, task)
    net, train, test = prepared.network, prepared.train, prepared.test
    # The original's lines are logged in its order and wording as the work goes; ours (timings,
    # settings) are collected and logged after them.
    ours = []
    if ensure_state(store, opt, log):
        ours.append(f"new state in {store.dir}: {opt.num_pages} shared pages of {opt.page_size} weights, "
                    f"{opt.page_dtype}")
    if net.layout != store.layout:
        net = load_network(task, layout=store.layout)
    session._networks[name] = net
    w = net.get_vector()
    n, S, P = net.num_weights, store.page_size, store.num_pages
    log("add_vnn")
    log(str(store.vector_path(name, "network_weight")))
    ours.append(f"add {name}: {n} weights from {task.path(task.name + '.weights.h5')}")
    seconds = {}

    start = time.perf_counter()
    fisher = fisher_lib.compute_fisher(net, w, train.x, k=opt.fisher_samples, seed=opt.seed)
    seconds["fisher"] = time.perf_counter() - start
    log("compute_fisher")
    log("do_compute_fisher")
    for i, index in enumerate(fisher_lib.sample_indices(len(train.x), opt.fisher_samples, opt.seed)):
        log(f"{i:3d}, data_idx: {int(index):5d}")
    log(str(store.vector_path(name, "network_fisher")))
    ours.append(f"compute_fisher {seconds['fisher'] * 1e3:.1f} ms ({opt.fisher_samples} examples from "
                f"{len(train.x)} training examples)")

    start = time.perf_counter()
    tpr = 1.0
    if opt.target_accuracy is not None:
        probs = net.predict(train.x)
        for line in compute_loss_lines(len(train.y)) + original_target_loss_lines(name, probs, train.y, opt.alpha):
            log(line)
        tpr = separation.target_performance_rate(probs, train.y, opt.alpha, opt.target_accuracy)
    sep = separation.separate(fisher, n, S, tpr, opt.margin, P, opt.use_exclusive_page)
    seconds["separation"] = time.perf_counter() - start
    for line in sep.summary_lines():
        log(line)
    ours.append(f"target performance rate {tpr:.6f}")

    start = time.perf_counter()
    w_pages, f_pages = to_pages(w, S), to_pages(fisher, S)
    sharable = sep.sharable_pages
    fsum = pool_fisher(store)
    if not store.tasks:  # the original places its first task on pool pages 0..m-1 (F_sum is 0: cost 0)
        assignment, cost = np.arange(len(sharable), dtype=np.int64), 0.0
    else:
        counts = store.occupation_counts()
        result = matching.match_pages(w_pages[sharable], f_pages[sharable], store.shared, fsum,
                                      counts, method=opt.matching, task_pages=sharable)
        assignment, cost = result.assignment, result.total_cost
        for line in matching_lines(counts, assignment, result.page_costs):
            log(line)
    seconds["matching"] = time.perf_counter() - start
    listed = str(np.asarray(assignment, np.int32))
    for line in (f"assign_page {seconds['matching'] * 1e3:.3f} ms", "inexclusive_weight_page_list", listed,
                 f"vnn.weight_page_list {listed}", "[calculate_cost]", f"toal_cost: {cost}"):
        log(line)
    ours += [f"matching: {opt.matching}", f"matching cost: {cost}"]

    table = np.full(num_pages(n, S), -1, np.int64)
    table[sharable] = assignment
    network_accuracy = net.accuracy(test.x, test.y)
    record = TaskRecord(name=name, num_weights=n, page_table=table, exclusive_pages=list(sep.exclusive_pages),
                        spec=task.to_json(), network_path=str(task.folder),
                        settings={"data": session.data_kind(name), "data_seed": session.data_seed(name),
                                  "trained_steps": 0, "tpr": float(tpr), "matching": opt.matching,
                                  "margin": opt.margin},
                        accuracy={"network": network_accuracy})
    shared = merged_pool(store, w_pages[sharable], f_pages[sharable], assignment, fsum) if opt.init == "merge" else None
    record = store.add_task(record, w_pages[sep.exclusive_pages],
                            vectors={"network_weight": w, "network_fisher": fisher}, shared=shared)
    log(f"{len(sharable)} pages allocated for {sep.num_of_inexclusive_weight} weights")
    log(f"total_network_cost: {total_network_cost(store)}")
    ours.append(f"{name}: network test accuracy {network_accuracy:.6f}")
    for line in ours:
        log(line)
    return AddResult(record, sep, float(cost), network_accuracy, seconds)


ALPHA_LOSS_BATCH = 30000  # the original computed the alpha-loss in batches of 30,000 and printed each range


def compute_loss_lines(num_examples: int) -> list[str]:
    """What the original's compute_loss printed: its name, then each batch's range."""
    return ["compute_loss", *(f"{start} {start + ALPHA_LOSS_BATCH}" for start in range(0, num_examples,
                                                                                          ALPHA_LOSS_BATCH))]


def original_target_loss_lines(name: str, probs: np.ndarray, labels: np.ndarray, alpha: float) -> list[str]:
    """What the original's compute_target_loss printed: its name, the network's accuracy on the
    training split (its pintle's line), the alpha-loss's lines, the alpha-accuracy and the loss."""
    loss, alpha_accuracy = separation.alpha_loss(probs, labels, alpha)
    accuracy = float(np.mean(np.argmax(probs, axis=1) == labels))
    return ["compute_target_loss", f"{name} inference accuracy: {accuracy:f}", *compute_loss_lines(len(labels)),
            f"alpha_accuracy: {alpha_accuracy}", f"current_loss: {loss}"]


def matching_lines(counts: np.ndarray, assignment: np.ndarray, page_costs: np.ndarray) -> list[str]:
    """The original's match_page_by_cost printout, from a matching's result: for each occupation
    level 0, 1, ... its shared pages, the task pages still to place, and the level's cost, until
    every page is placed."""
    lines = ["[match_page_by_cost]"]
    level_of = np.asarray(counts)[assignment]
    left = len(assignment)
    for level in range(int(np.max(counts)) + 1):
        pages = int(np.sum(counts == level))
        lines += [f"occupation: {level}", f"len(page_list): {pages}", f"len(network_page_list): {left}"]
        if pages == 0:
            lines += ["cost: 0", ""]
            continue
        placed = level_of == level
        lines += [f"cost: {float(np.sum(page_costs[placed]))}", ""]
        left -= int(np.sum(placed))
        if not left:
            break
    return lines


def merged_pool(store: Store, w_pages, f_pages, assignment, fsum) -> np.ndarray:
    """-init=merge: each shared page the new task lands on becomes the Fisher-weighted mean of its
    occupants' latest values and the new task's own; other pages keep their values."""
    P, S = store.num_pages, store.page_size
    weighted = np.zeros((P, S))
    for rec in store.tasks:
        pages_w = to_pages(latest_weights(store, rec.name), S)
        pages_f = to_pages(store.load_vector(rec.name, "network_fisher"), S)
        on_pool = np.flatnonzero(rec.page_table < P)
        weighted[rec.page_table[on_pool]] += pages_f[on_pool] * pages_w[on_pool]
    pool = store.shared.copy()
    num = weighted[assignment] + f_pages * w_pages
    den = fsum[assignment] + f_pages
    pool[assignment] = np.where(den > 0, num / np.where(den > 0, den, 1), w_pages).astype(np.float32)
    return pool


def latest_weights(store: Store, name: str) -> np.ndarray:
    """A task's w_o for the overlapping loss: its `_weight` vector (rewritten by every -mode=t),
    or its network weights before its first training (where the original would fail)."""
    kind = "weight" if store.has_vector(name, "weight") else "network_weight"
    return store.load_vector(name, kind)


# --- train, evaluate, optimize ------------------------------------------------------

def overlap_for(store: Store, name: str):
    """The overlapping-loss targets of a task: every other task aligned through the pool."""
    rec = store.task(name)
    others = [(o.page_table, store.load_vector(o.name, "network_fisher"), latest_weights(store, o.name))
              for o in store.tasks if o.name != name]
    return overlap_targets(rec.page_table, rec.num_weights, store.page_size, store.num_pages, others)


@dataclasses.dataclass
class TrainResult:
    start_accuracy: float
    best_accuracy: float
    updated: bool
    selected_on: str


def train_task(session: Session, name: str, iters: int, log: Log = print_log) -> TrainResult:
    """The original's -mode=t: train the task with the overlapping loss, write the kept weights
    back (when a later evaluation beat step 0), and rewrite its `_weight` vector from its
    materialized weights, improved or not.  One commit; nothing is written if training diverges.

    Batches come from a generator seeded by (seed, task id, steps trained so far), so the same
    schedule gives the same result in one process or in many.
    """
    store, opt = session.store, session.options
    rec = store.task(name)
    train, selection = session.split(name, "train"), session.selection_split(name)
    trainer = session.trainer(name)
    log("get_overlapping_loss")  # the original's lines before its training loop
    trainer.reset(session.master_pages_of(name), overlap_for(store, name), store.task_wide(name))
    log("v_train")
    steps_before = int(rec.settings.get("trained_steps", 0))
    rng = np.random.default_rng([opt.seed, rec.id, steps_before])
    outcome: TrainOutcome = trainer.train(train.x, train.y, selection.x, selection.y, iters, rng,
                                          batch_size=opt.batch_size, select_on=opt.select_on, log=log)
    settings = dict(rec.settings, trained_steps=steps_before + iters)
    if outcome.best_weights is not None:
        weights = outcome.best_weights[:rec.num_weights]
        store.commit_task(name, weights=weights, vectors={"weight": store.as_stored(name, weights)},
                          settings=settings)
    else:
        store.commit_task(name, vectors={"weight": store.materialize(name)}, settings=settings)
    return TrainResult(outcome.start_accuracy, outcome.best_accuracy, outcome.best_weights is not None,
                       opt.select_on)


def evaluate_task(session: Session, name: str) -> float:
    """Test accuracy of the separated task: its materialized weights, exactly as stored."""
    test = session.split(name, "test")
    return session.trainer(name).evaluate(session.pages_of(name), test.x, test.y, session.store.task_wide(name))


def evaluate_network(session: Session, task: TaskSpec) -> float:
    """Test accuracy of a task's own network (before separation; -target=network)."""
    session.use_spec(task)
    test = session.split(task.name, "test")
    return load_network(task).accuracy(test.x, test.y)


def record_accuracy(store: Store, name: str, accuracy: float) -> None:
    """Record the separated accuracy of a task in the registry (writer lock held)."""
    rec = store.task(name)
    store.commit_task(name, accuracy=dict(rec.accuracy, separated=accuracy))


def optimize_all(session: Session, rounds: int, iters: int, passes: int = 10, log: Log = print_log,
                 progress: Callable[[int, int, dict], None] | None = None,
                 on_train: Callable[[int, int], None] | None = None) -> list[dict[str, float]]:
    """optimization.sh in one process: each round, ``passes`` times every task trains ``iters``
    steps, then every task is evaluated on its test split (and its accuracy recorded).
    ``progress(round, rounds, accuracies)`` is called after each round, ``on_train(done, total)``
    after each task's training (``total`` = rounds x passes x tasks)."""
    names = [rec.name for rec in session.store.tasks]
    history = []
    done, total = 0, rounds * passes * len(names)
    for r in range(1, rounds + 1):
        log(f"{r}-th optimization")
        for _ in range(passes):
            for name in names:
                log(f"[{name}]")
                train_task(session, name, iters, log=log)
                done += 1
                if on_train is not None:
                    on_train(done, total)
        log(f"{r}-th evaluation")
        accs = {}
        for name in names:
            accs[name] = evaluate_task(session, name)
            record_accuracy(session.store, name, accs[name])
            log(f"{name} inference accuracy: {accs[name]:.6f}")
        history.append(accs)
        if progress is not None:
            progress(r, rounds, accs)
    return history


@dataclasses.dataclass
class FormationStep:
    """One task of formation: what adding it gave and its accuracy before and after training."""

    added: AddResult
    separated_before: float
    separated_after: float
    seconds: float


def form_all(session: Session, tasks: list[TaskSpec], iters: int, log: Log = print_log,
             progress: Callable[[int, int, FormationStep], None] | None = None) -> list[FormationStep]:
    """formation.sh in one process: for each task in order, add it, then train it ``iters`` steps."""
    steps = []
    for i, task in enumerate(tasks, 1):
        start = time.perf_counter()
        added = add_task(session, task, log=log)
        before = evaluate_task(session, task.name)
        if iters:
            train_task(session, task.name, iters, log=log)
        after = evaluate_task(session, task.name)
        record_accuracy(session.store, task.name, after)
        step = FormationStep(added, before, after, time.perf_counter() - start)
        steps.append(step)
        if progress is not None:
            progress(i, len(tasks), step)
    return steps


def quantize_state(source_dir, dest_dir, page_dtype: str, options: Options, source: Store | None = None) -> list[str]:
    """-mode=quantize: a quantized copy of a float32 state in a new directory (the source is only
    read), with every task's test accuracy before and after (post-training quantization).
    ``source``: the state of source_dir, loaded already."""
    from weightsep.report import packing
    from weightsep.store import check_conversion, convert_state
    if source is None:
        source = Store(source_dir).load()  # loaded once: the accuracies before are of the state converted
    if source.page_dtype != "float32":
        raise WeightSepError(f"the state in {source.dir} already holds {source.page_dtype} pages; "
                             f"-mode=quantize converts float32 states")
    check_conversion(source, dest_dir, page_dtype, options.int8_pages, options.group_size)  # before the evaluation
    before = Session(source, options)
    accuracy = {rec.name: evaluate_task(before, rec.name) for rec in source.tasks}
    dest = convert_state(source_dir, dest_dir, page_dtype, source=source, int8_pages=options.int8_pages,
                         group_size=options.group_size)
    after = Session(dest, options)
    lines = [f"quantized {source.dir} ({source.page_dtype}) into {dest.dir} ({page_dtype})"]
    with dest.writer():
        for rec in dest.tasks:
            acc = evaluate_task(after, rec.name)
            record_accuracy(dest, rec.name, acc)
            lines.append(f"{rec.name} inference accuracy: {accuracy[rec.name]:.6f} -> {acc:.6f} "
                         f"({100 * (acc - accuracy[rec.name]):+.2f} points)")
    lines += [packing(source).line().replace("packing:", "before:"), packing(dest).line().replace("packing:", "after:")]
    return lines
