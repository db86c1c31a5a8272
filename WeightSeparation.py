#!/usr/bin/env python3
"""Weight Separation: one command line for the whole method (the original's single-dash flags).

The original's modes (no -mode means -mode=l, as in the original):
  -mode=a   -network_path=<task>       add: Fisher, separation, overlapping (prints total_network_cost)
  -mode=t   -vnn_name=<task> [-iter=N] train one task with the overlapping loss (default 2000 steps)
  -mode=e   -vnn_name=<task>           test accuracy (-target=network: the network before separation)
  -mode=l                              list tasks, pool occupation, packing in weights and bytes
  -mode=r   -vnn_name=<task>           remove a task
  -mode=f   -vnn_name=<task>           Fisher of the separated task, saved as <task>/<task>_fisher.npy
  -mode=c   -vnn_name=a,b[,c...]       overlapping cost summed over every pair of the tasks
  -mode=n / v -vnn_name=<task>         layers / variables of the task's network
  -mode=tl / cl / tpr -vnn_name=<task> target loss (-target_accuracy) / alpha-loss / target performance rate
  -mode=w / p [-Q=8]                   the original's binary files: pool and exclusive pages (float32 and
                                       int16 Q-format), page tables (uint16)
  -mode=testdata [-vnn_name=a,b] [-num_examples=K]   the original's test-data files (inputs <task>_t,
                                       labels <task>_l) of every task, or of the named ones
  -mode=pf pw pnf pnw pnfh pnwh heatmap   plots, saved as PNG files (-plot_dir)
Ours:
  -mode=pretrain -network_path=<task>  train a task's own network
  -mode=import   -network_path=<dir>   import an original TF1 checkpoint
  -mode=o   [-rounds=100 -passes=10 -iter=32]   optimization.sh in one process
  -mode=quantize -state_dir=S -out_dir=D [-page_dtype=int8]   a quantized copy of a float32 state
  -mode=blob                           weights.wsb: the whole state in one file for runtime_c/ (docs/FORMAT.md)
  -mode=loss -vnn_name=<task>          cross-entropy, overlapping loss and accuracies now
Every mode accepts -data=synthetic to run offline on built-in synthetic data.
"""

from __future__ import annotations

import sys

from absl import app, flags

from weightsep.cli import SEED_MAX, FlagError, check_flags, main_of
from weightsep.limits import MAX_NUM_PAGES, MAX_PAGE_SIZE, MAX_POOL_WEIGHTS, MAX_Q, PAGE_DTYPES

FLAGS = flags.FLAGS

flags.DEFINE_string("mode", "l", "what to do (see the list at the top of this file)")
flags.DEFINE_string("network_path", None, "task folder (pretrain, a, and any mode of a task with a custom "
                    "build_model) or checkpoint folder (import)")
flags.DEFINE_string("vnn_name", None, "task name; a comma list for -mode=c and heatmap")
flags.DEFINE_integer("iter", None, "training steps (pretrain: 2000, t: 2000, o: 32 per task per pass)")
flags.DEFINE_integer("rounds", 100, "-mode=o: rounds (each: -passes passes, then every task evaluated)")
flags.DEFINE_integer("passes", 10, "-mode=o: passes per round (each: every task trains -iter steps)")
flags.DEFINE_integer("transpose", 0, "1: the network vector in microcontroller layout (conv [out, in, kh, kw], "
                     "dense [out, in]); chosen when the state is created")
flags.DEFINE_float("alpha", 0.5, "alpha of the alpha-loss used for the target performance rate")
flags.DEFINE_float("margin", 0.1, "margin of the exclusive-page walk")
flags.DEFINE_float("target_accuracy", None, "target accuracy; without it the TPR is 1.0")
flags.DEFINE_integer("use_exclusive_page", 1, "0: no exclusive pages unless the pool is too small")
flags.DEFINE_integer("Q", 8, "fraction bits of the int16 Q-format files of -mode=w")
flags.DEFINE_string("export_dir", None, "where -mode=w / -mode=p / -mode=testdata / -mode=blob write (default: the state "
                    "directory, as the original wrote into its working directory)")
flags.DEFINE_integer("num_examples", None, "-mode=testdata: the first K test examples of each task (default all)")
flags.DEFINE_string("state_dir", ".", "where the separated state lives")
flags.DEFINE_string("out_dir", None, "-mode=quantize: the new state directory (must not exist or be empty)")
flags.DEFINE_integer("page_size", 512, "weights per page (state-wide, chosen at the first -mode=a)")
flags.DEFINE_integer("num_pages", 128, "pages in the shared pool (state-wide)")
flags.DEFINE_enum("page_dtype", "float32", list(PAGE_DTYPES),
                  "storage of weight-pages (state-wide): float32 (the paper) or quantized with one scale per page")
flags.DEFINE_enum("matching", "greedy", ["greedy", "optimal"],
                  "page matching: greedy (the original's PageAlloc) or optimal (exact per level)")
flags.DEFINE_enum("init", "none", ["none", "merge"], "pool values at add: none (original) or Fisher-weighted merge")
flags.DEFINE_enum("loss", "batch_softmax", ["batch_softmax", "per_example"],
                  "training cross-entropy: the original graphs' batch-normalized softmax, or per example")
flags.DEFINE_enum("select_on", "test", ["test", "validation"],
                  "-mode=t/o model selection: the original's test split (before each evaluated step's update), "
                  "or a validation split")
flags.DEFINE_float("validation_split", None, "fraction of the train files cut off as a validation split for a task "
                   "without validation files (default: none, as the original, except 0.1 for -select_on=validation "
                   "and -mode=pretrain)")
flags.DEFINE_float("lamb", 0.1, "weight of the overlapping loss")
flags.DEFINE_integer("batch_size", 100, "batch size")
flags.DEFINE_float("lr", 1e-3, "Adam learning rate")
flags.DEFINE_integer("fisher_samples", 50, "examples drawn for the Fisher information")
flags.DEFINE_integer("seed", 0, "random seed (batches, Fisher samples, pool init; synthetic data at -mode=a)")
flags.DEFINE_enum("data", None, ["real", "synthetic"], "dataset kind (default: real, or what the task was added with)")
flags.DEFINE_enum("target", "vnn", ["vnn", "network"], "-mode=e: the separated task (vnn) or its own network")
flags.DEFINE_string("plot_dir", None, "plot modes: folder of the PNG files (default <state_dir>/plots)")
flags.DEFINE_integer("verbose", 1, "Keras progress output for pretrain: 0 silent, 1 bar, 2 one line per epoch")

# Ranges of the numeric flags, checked before any work.  Sizes are bounded so that no flag can
# ask for more memory than a machine has (P x S float32 weights <= 512 MiB).
BOUNDS = {
    "iter": (1, 10_000_000), "rounds": (1, 1_000_000), "passes": (1, 1_000_000), "transpose": (0, 1),
    "alpha": (0.0, 1.0), "margin": (0.0, 1.0), "target_accuracy": (0.0, 1.0), "use_exclusive_page": (0, 1),
    "Q": (0, MAX_Q), "page_size": (1, MAX_PAGE_SIZE), "num_pages": (1, MAX_NUM_PAGES), "lamb": (0.0, 1e6),
    "batch_size": (1, 100_000), "lr": (1e-12, 1e6), "fisher_samples": (1, 100_000), "seed": (0, SEED_MAX),
    "verbose": (0, 2), "num_examples": (1, 2**31 - 1), "validation_split": (0.0, 0.9),
}


def _options():
    from weightsep.pipeline import Options
    explicit = frozenset(name for name in ("page_size", "num_pages", "page_dtype", "transpose") if FLAGS[name].present)
    return Options(page_size=FLAGS.page_size, num_pages=FLAGS.num_pages, page_dtype=FLAGS.page_dtype,
                   transpose=bool(FLAGS.transpose), alpha=FLAGS.alpha, margin=FLAGS.margin,
                   target_accuracy=FLAGS.target_accuracy, use_exclusive_page=bool(FLAGS.use_exclusive_page),
                   matching=FLAGS.matching, init=FLAGS.init, lamb=FLAGS.lamb, batch_size=FLAGS.batch_size,
                   lr=FLAGS.lr, fisher_samples=FLAGS.fisher_samples, seed=FLAGS.seed, data=FLAGS.data,
                   loss=FLAGS.loss, select_on=FLAGS.select_on, validation_split=FLAGS.validation_split,
                   explicit=explicit)


def _need(flag: str) -> str:
    value = getattr(FLAGS, flag)
    if not value:
        raise FlagError(f"-mode={FLAGS.mode} needs -{flag}=...")
    return value


def _names() -> list[str]:
    """The task names of -vnn_name (a comma list) or, failing that, of -network_path."""
    text = FLAGS.vnn_name or FLAGS.network_path or _need("vnn_name")
    return [part.rstrip("/").split("/")[-1] for part in text.split(",") if part.strip()]


def _task_name() -> str:
    names = _names()
    if len(names) != 1:
        raise FlagError(f"-mode={FLAGS.mode} takes one task, got -vnn_name={FLAGS.vnn_name}")
    return names[0]


def _session(existing: bool = True):
    """A session on the state (which must exist, unless ``existing`` is False: then it is used when
    there is one); a folder named by -network_path supplies its task's spec."""
    from weightsep.pipeline import Session
    from weightsep.store import Store
    from weightsep.tasks import load_task
    store = Store(FLAGS.state_dir)
    session = Session(store.load() if existing or store.exists() else store, _options())
    if FLAGS.network_path:
        session.use_spec(load_task(FLAGS.network_path))
    return session


def _registered_task() -> tuple:
    """(session, name) of a task that must be in the state (a clear error naming the known ones)."""
    session, name = _session(), _task_name()
    session.store.task(name)
    return session, name


def mode_pretrain():
    from weightsep import data as datasets
    from weightsep.tasks import load_task
    from weightsep.training import pretrain_task
    task = load_task(_need("network_path"))
    kind, iters = FLAGS.data or "real", FLAGS.iter or 2000
    fraction = datasets.DEFAULT_VALIDATION_SPLIT if FLAGS.validation_split is None else FLAGS.validation_split
    print(f"pretrain {task.name}: {iters} steps, batch {FLAGS.batch_size}, loss {FLAGS.loss}, "
          f"{datasets.describe(task, kind, FLAGS.seed, fraction)}")
    result = pretrain_task(task, kind, FLAGS.seed, iters, FLAGS.batch_size, FLAGS.lr, FLAGS.loss, FLAGS.verbose,
                           fraction)
    print(f"best validation accuracy {result.best_validation:.6f}; saved {result.path}")
    print(f"{task.name} inference accuracy: {result.test_accuracy:.6f}")


def mode_import():
    from pathlib import Path
    from weightsep.networks import import_tf1_checkpoint, save_network
    from weightsep.tasks import load_task
    folder = Path(_need("network_path"))
    # The original kept each checkpoint in its task folder; a folder without a task.py
    # names the task by -vnn_name or by its own name.
    task = load_task(folder) if (folder / "task.py").is_file() else load_task(FLAGS.vnn_name or folder.resolve().name)
    net = import_tf1_checkpoint(task, folder)
    path = save_network(net)
    print(f"{task.name}: {net.num_weights} weights")
    print(f"saved {path}")


def mode_add():
    from weightsep.pipeline import Session, add_task, prepare_add
    from weightsep.store import Store
    from weightsep.tasks import load_task
    task = load_task(_need("network_path"))
    store = Store(FLAGS.state_dir)
    session = Session(store, _options())
    prepared = prepare_add(session, task)  # the network and the data, checked before the state is touched
    with store.writer():
        add_task(session, task, prepared=prepared)


def mode_train():
    from weightsep.pipeline import train_task
    session, name = _registered_task()
    with session.store.writer():
        result = train_task(session, name, FLAGS.iter or 2000)
    kept = (f"kept the weights of {result.best_accuracy:.6f} ({result.selected_on} accuracy; "
            f"{result.start_accuracy:.6f} at step 0)" if result.updated else
            f"no evaluation beat step 0 ({result.start_accuracy:.6f} {result.selected_on} accuracy): pages unchanged")
    print(f"{name}: {kept}; {session.store.vector_path(name, 'weight')} rewritten")


def mode_optimize():
    from weightsep.pipeline import optimize_all
    session = _session()
    with session.store.writer():
        optimize_all(session, FLAGS.rounds, FLAGS.iter or 32, FLAGS.passes)


def mode_evaluate():
    from weightsep.pipeline import evaluate_network
    from weightsep.tasks import load_task
    if FLAGS.target == "network":
        session, name = _session(existing=False), _task_name()
        task = load_task(FLAGS.network_path) if FLAGS.network_path else session.spec(name)
        acc = evaluate_network(session, task)
        print(f"{task.name} inference accuracy: {acc:.6f}")
        return
    from weightsep.errors import StateLockedError, StateReadOnlyError
    from weightsep.pipeline import evaluate_task, record_accuracy
    session, name = _registered_task()
    try:
        with session.store.writer():  # record the accuracy when nobody else writes the state
            acc = evaluate_task(session, name)
            record_accuracy(session.store, name, acc)
    except (StateLockedError, StateReadOnlyError) as why:
        acc = evaluate_task(session, name)
        print(f"note: accuracy not recorded in the registry ({why})", file=sys.stderr)
    print(f"{name} inference accuracy: {acc:.6f}")


def mode_list():
    from weightsep import report
    from weightsep.store import Store
    print("\n".join(report.listing(Store(FLAGS.state_dir).load())))


def mode_remove():
    session, name = _registered_task()
    with session.store.writer():
        session.store.remove_task(name)
    print(f"removed {name}; {len(session.store.tasks)} tasks remain")


def mode_export_weights():
    from pathlib import Path
    from weightsep.export import export_weights
    session = _session()
    print("\n".join(export_weights(session.store, Path(FLAGS.export_dir or FLAGS.state_dir), FLAGS.Q)))


def mode_export_page_tables():
    from pathlib import Path
    from weightsep.export import export_page_tables
    session = _session()
    print("\n".join(export_page_tables(session.store, Path(FLAGS.export_dir or FLAGS.state_dir))))


def mode_export_blob():
    from pathlib import Path
    from weightsep.blob import export_blob
    session = _session()
    print("\n".join(export_blob(session.store, Path(FLAGS.export_dir or FLAGS.state_dir))))


def mode_export_test_data():
    from pathlib import Path
    from weightsep.export import export_test_data
    session = _session()
    names = _names() if FLAGS.vnn_name else [rec.name for rec in session.store.tasks]
    for name in names:
        session.store.task(name)
    tests = {}
    for name in names:
        test = session.split(name, "test")
        tests[name] = (test.x, test.y, session.spec(name).num_classes)
    print("\n".join(export_test_data(session.store, Path(FLAGS.export_dir or FLAGS.state_dir), tests,
                                      FLAGS.num_examples)))


def mode_quantize():
    from weightsep.pipeline import quantize_state
    if FLAGS.page_dtype == "float32":
        raise FlagError("-mode=quantize needs -page_dtype=int8 or -page_dtype=int4")
    for line in quantize_state(FLAGS.state_dir, _need("out_dir"), FLAGS.page_dtype, _options()):
        print(line)


def _diagnostic(name: str, existing: bool = True, many: bool = False):
    def run():
        from weightsep import diagnostics
        session = _session(existing)
        if existing:
            for task in _names():
                session.store.task(task)
        function = getattr(diagnostics, name)
        lines = function(session, _names()) if many else function(session, _task_name())
        print("\n".join(lines))
    return run


def _plot(mode):
    def run():
        from pathlib import Path
        from weightsep.plots import plot_mode
        session = _session()
        for task in _names():
            session.store.task(task)
        plot = plot_mode(session, mode, _names(), FLAGS.plot_dir or Path(FLAGS.state_dir) / "plots")
        print(f"saved {plot.path}")
    return run


MODES = {
    "pretrain": mode_pretrain, "import": mode_import, "a": mode_add, "t": mode_train, "o": mode_optimize,
    "e": mode_evaluate, "l": mode_list, "r": mode_remove, "w": mode_export_weights, "p": mode_export_page_tables,
    "testdata": mode_export_test_data, "blob": mode_export_blob,
    "quantize": mode_quantize,
    "f": _diagnostic("fisher_of_separated"), "c": _diagnostic("network_cost_lines", many=True),
    "n": _diagnostic("layers", existing=False), "v": _diagnostic("variables", existing=False),
    "tl": _diagnostic("target_loss_lines", existing=False), "cl": _diagnostic("alpha_loss_lines", existing=False),
    "tpr": _diagnostic("tpr_lines", existing=False), "loss": _diagnostic("training_loss"),
    **{mode: _plot(mode) for mode in ("pf", "pw", "pnf", "pnw", "pnfh", "pnwh", "heatmap")},
}


def run():
    if FLAGS.mode not in MODES:
        raise FlagError(f"-mode must be one of {' '.join(MODES)}, not {FLAGS.mode!r}")
    check_flags(FLAGS, BOUNDS)
    if FLAGS.page_size * FLAGS.num_pages > MAX_POOL_WEIGHTS:
        raise FlagError(f"-page_size={FLAGS.page_size} x -num_pages={FLAGS.num_pages} = "
                        f"{FLAGS.page_size * FLAGS.num_pages} weights exceeds the {MAX_POOL_WEIGHTS} a pool may hold")
    MODES[FLAGS.mode]()


if __name__ == "__main__":
    app.run(main_of(run))
