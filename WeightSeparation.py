#!/usr/bin/env python3
"""Weight Separation: one command line for the whole method (original single-dash flags).

  -mode=pretrain -network_path=<task>      train a task's own network
  -mode=import   -network_path=<dir>       import an original TF1 checkpoint
  -mode=a        -network_path=<task>      add: Fisher, separation, overlapping
  -mode=t        -vnn_name=<task> -iter=N  optimize one task with the overlapping loss
  -mode=o        -rounds=R -iter=N         optimize all tasks in one process (optimization.sh)
  -mode=e        -vnn_name=<task>          test accuracy (-target=network: before separation)
  -mode=l                                  list tasks, pool occupation, packing report
  -mode=r        -vnn_name=<task>          remove a task
  -mode=f / c / n / tl / cl / tpr          diagnostics (see README)
  -mode=w / p    [-Q=15]                   binary export of pages (int16 Q-format) / page tables
  -mode=pf pw pnf pnw pnfh pnwh -vnn_name=<task>, -mode=heatmap -vnn_name=a,b
                                           plots, saved as <-plot_dir>/<mode>_<task>.png
Every mode accepts -data=synthetic to run offline on built-in synthetic data.
"""

from __future__ import annotations


from absl import app, flags

from weightsep.cli import main_of

FLAGS = flags.FLAGS

flags.DEFINE_string("mode", None, "what to do: pretrain import a r t o e l f c n tl cl tpr, plots: pf pw pnf pnw pnfh pnwh heatmap")
flags.DEFINE_string("network_path", None, "task folder (pretrain, a, n) or checkpoint folder (import)")
flags.DEFINE_string("vnn_name", None, "task name (t, e, r, f, tl, tpr); two names a,b for -mode=c")
flags.DEFINE_integer("iter", None, "training steps (pretrain: 2000, t: 2000, o: 32 per task per round)")
flags.DEFINE_integer("rounds", 100, "optimize-all rounds (-mode=o)")
flags.DEFINE_float("alpha", 0.5, "alpha of the alpha-loss used for the target performance rate")
flags.DEFINE_float("margin", 0.1, "margin of the exclusive-page walk")
flags.DEFINE_float("target_accuracy", None, "target accuracy; without it the TPR is 1.0")
flags.DEFINE_integer("use_exclusive_page", 1, "0: no exclusive pages unless the pool is too small")
flags.DEFINE_integer("Q", 15, "fraction bits of the int16 Q-format of the binary export (-mode=w)")
flags.DEFINE_string("export_dir", None, "where -mode=w / -mode=p write (default: <state_dir>/export)")
flags.DEFINE_string("state_dir", ".", "where the separated state lives")
flags.DEFINE_integer("page_size", 512, "weights per page")
flags.DEFINE_integer("num_pages", 128, "pages in the shared pool")
flags.DEFINE_enum("matching", "greedy", ["greedy", "optimal"], "page matching: greedy (paper) or optimal")
flags.DEFINE_enum("init", "none", ["none", "merge"], "pool values at add: none (paper) or Fisher-weighted merge")
flags.DEFINE_float("lamb", 0.1, "weight of the overlapping loss")
flags.DEFINE_integer("batch_size", 100, "batch size")
flags.DEFINE_float("lr", 1e-3, "Adam learning rate")
flags.DEFINE_integer("fisher_samples", 50, "examples for the Fisher information")
flags.DEFINE_integer("seed", 0, "random seed (data sampling, synthetic data, pool init)")
flags.DEFINE_enum("data", None, ["real", "synthetic"], "dataset kind (default: real, or what the task was added with)")
flags.DEFINE_enum("target", "vnn", ["vnn", "network"], "-mode=e: the separated task (vnn) or its own network")
flags.DEFINE_string("plot_dir", None, "plot modes: folder of the PNG files (default <state_dir>/plots). "
                    "pf: Fisher per page of the separated task (recomputed on its materialized weights); "
                    "pw: mean |w| per page of the separated task; pnf: network Fisher per page (stored at add); "
                    "pnw: mean |w| per page of the network; pnfh / pnwh: histograms of the network Fisher "
                    "(log10) / weights; heatmap: overlapping cost of a's pages x b's pages (-vnn_name=a,b)")
flags.DEFINE_integer("verbose", 1, "Keras progress output for pretrain: 0 silent, 1 bar, 2 one line per epoch")


def _options():
    from weightsep.pipeline import Options
    return Options(page_size=FLAGS.page_size, num_pages=FLAGS.num_pages, alpha=FLAGS.alpha, margin=FLAGS.margin,
                   target_accuracy=FLAGS.target_accuracy, use_exclusive_page=bool(FLAGS.use_exclusive_page),
                   matching=FLAGS.matching, init=FLAGS.init, lamb=FLAGS.lamb, batch_size=FLAGS.batch_size,
                   lr=FLAGS.lr, fisher_samples=FLAGS.fisher_samples, seed=FLAGS.seed, data=FLAGS.data)


def _need(flag: str) -> str:
    from weightsep.errors import WeightSepError
    value = getattr(FLAGS, flag)
    if not value:
        raise WeightSepError(f"-mode={FLAGS.mode} needs -{flag}=...")
    return value


def _task_name() -> str:
    return (FLAGS.vnn_name or FLAGS.network_path or _need("vnn_name")).rstrip("/").split("/")[-1]


def _session(existing: bool = True):
    from weightsep.errors import StateError
    from weightsep.pipeline import Session
    from weightsep.store import Store
    store = Store(FLAGS.state_dir)
    if existing:
        if not store.exists():
            raise StateError(f"no separated state in {store.dir}: add tasks first with "
                             f"`python WeightSeparation.py -mode=a -network_path=<task>` (or ./formation.sh)")
        store.load()
    return Session(store, _options())


def mode_pretrain():
    from weightsep import data as datasets
    from weightsep.networks import Network, save_network
    from weightsep.tasks import load_task
    from weightsep.training import pretrain
    task = load_task(_need("network_path"))
    kind, iters = FLAGS.data or "real", FLAGS.iter or 2000
    train = datasets.load_split(task, "train", kind, FLAGS.seed)
    val = datasets.load_split(task, "validation", kind, FLAGS.seed)
    test = datasets.load_split(task, "test", kind, FLAGS.seed)
    print(f"pretrain {task.name}: {iters} steps, batch {FLAGS.batch_size}, {datasets.describe(task, kind, FLAGS.seed)}")
    net = Network(task)
    best = pretrain(net, train.x, train.y, val.x, val.y, iters, FLAGS.batch_size, FLAGS.lr, FLAGS.seed, FLAGS.verbose)
    path = save_network(net)
    print(f"best validation accuracy {best:.6f}; saved {path}")
    print(f"{task.name} inference accuracy: {net.accuracy(test.x, test.y):.6f}")


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
    from weightsep.pipeline import Session, add_task, ensure_state
    from weightsep.store import Store
    from weightsep.tasks import load_task
    task = load_task(_need("network_path"))
    store = Store(FLAGS.state_dir)
    explicit = {name for name in ("page_size", "num_pages") if FLAGS[name].present}
    with store.writer():
        options = _options()
        ensure_state(store, options, explicit)
        session = Session(store, options)
        session.use_spec(task)
        add_task(session, task.name)


def mode_train():
    from weightsep.pipeline import train_task
    session = _session()
    name = _task_name()
    with session.store.writer():
        result = train_task(session, name, FLAGS.iter or 2000)
    if result.updated:
        print(f"{name}: validation accuracy {result.start_accuracy:.6f} -> {result.best_accuracy:.6f}; "
              f"weights written to {session.store.vector_path(name, 'weight')}")
    else:
        print(f"{name}: no step beat the starting validation accuracy {result.start_accuracy:.6f}; state unchanged")


def mode_optimize():
    from weightsep.pipeline import optimize_all
    session = _session()
    with session.store.writer():
        optimize_all(session, FLAGS.rounds, FLAGS.iter or 32)


def mode_evaluate():
    from weightsep.pipeline import evaluate_task
    name = _task_name()
    if FLAGS.target == "network":
        from weightsep.pipeline import Session
        from weightsep.store import Store
        from weightsep.tasks import load_task
        task = load_task(FLAGS.vnn_name or _need("network_path"))
        session = Session(Store(FLAGS.state_dir), _options())
        session.use_spec(task)
        name, acc = task.name, evaluate_task(session, task.name, target="network")
    else:
        session = _session()
        with session.store.writer():
            acc = evaluate_task(session, name)
    print(f"{name} inference accuracy: {acc:.6f}")


def mode_list():
    from weightsep import report
    session = _session()
    store = session.store
    print(f"state {store.dir}: {len(store.tasks)} tasks, pool {store.num_pages} pages x {store.page_size} weights, "
          f"{store.exclusive.shape[0]} exclusive pages")
    for rec in store.tasks:
        print(f"[{rec.id}] {rec.name}: {rec.num_weights} weights, {rec.num_pages} pages, "
              f"{rec.num_pages - len(rec.exclusive_pages)} sharable, {len(rec.exclusive_pages)} exclusive "
              f"{rec.exclusive_pages}, trained {rec.settings.get('trained_steps', 0)} steps")
    for line in report.occupation_histogram(store):
        print(line)
    print()
    for line in report.markdown_table(store):
        print(line)


def mode_remove():
    session = _session()
    name = _task_name()
    with session.store.writer():
        session.store.remove_task(name)
    print(f"removed {name}; {len(session.store.tasks)} tasks remain")


def mode_export_weights():
    from pathlib import Path
    from weightsep.export import export_weights
    session = _session()
    print("\n".join(export_weights(session.store, Path(FLAGS.export_dir or Path(FLAGS.state_dir) / "export"), FLAGS.Q)))


def mode_export_page_tables():
    from pathlib import Path
    from weightsep.export import export_page_tables
    session = _session()
    names = [t for t in (FLAGS.vnn_name or "").split(",") if t] or None
    out = Path(FLAGS.export_dir or Path(FLAGS.state_dir) / "export")
    print("\n".join(export_page_tables(session.store, out, names)))


def _diagnostic(fn, existing=True, names=1):
    def run():
        session = _session(existing)
        if names == 2:
            pair = [t for t in (FLAGS.vnn_name or "").split(",") if t]
            if len(pair) != 2:
                from weightsep.errors import WeightSepError
                raise WeightSepError("-mode=c needs two tasks: -vnn_name=a,b")
            lines = fn(session, *pair)
        else:
            lines = fn(session, _task_name())
        print("\n".join(lines))
    return run


def _plot(mode):
    def run():
        from pathlib import Path
        from weightsep.plots import plot_mode
        session = _session()
        names = [t for t in (FLAGS.vnn_name or "").split(",") if t] or [_task_name()]
        plot = plot_mode(session, mode, names, FLAGS.plot_dir or Path(FLAGS.state_dir) / "plots")
        print(f"saved {plot.path}")
    return run


def run():
    modes = {
        "pretrain": mode_pretrain, "import": mode_import, "a": mode_add, "t": mode_train, "o": mode_optimize,
        "e": mode_evaluate, "l": mode_list, "r": mode_remove,
        "w": mode_export_weights, "p": mode_export_page_tables,
    }
    from weightsep import diagnostics as d
    modes.update({"f": _diagnostic(d.fisher_of_separated), "c": _diagnostic(d.pair_cost, names=2),
                  "n": _diagnostic(d.layers, existing=False), "tl": _diagnostic(d.training_loss),
                  "cl": _diagnostic(d.alpha_loss_lines, existing=False),
                  "tpr": _diagnostic(d.tpr_lines, existing=False)})
    modes.update({mode: _plot(mode) for mode in ("pf", "pw", "pnf", "pnw", "pnfh", "pnwh", "heatmap")})
    if FLAGS.mode not in modes:
        raise app.UsageError(f"-mode must be one of {' '.join(modes)}, not {FLAGS.mode!r}")
    modes[FLAGS.mode]()


if __name__ == "__main__":
    app.run(main_of(run))
