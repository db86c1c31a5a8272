#!/usr/bin/env python3
"""Weight Separation: one command line for the whole method (the original's single-dash flags).

usage: python WeightSeparation.py -mode=<mode> [-flag=value ...]
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Callable, Optional

from absl import app, flags

from weightsep import cli
from weightsep.cli import FlagError, check_flags, main_of
from weightsep.limits import MAX_POOL_WEIGHTS, MAX_Q

FLAGS = flags.FLAGS

flags.DEFINE_string("mode", "l", "what to do: one of the modes listed above")
flags.DEFINE_string("network_path", None, "task folder (pretrain, a, and any mode of a task with a custom "
                    "build_model) or checkpoint folder (import)")
flags.DEFINE_string("vnn_name", None, "task name; a comma list for -mode=c and heatmap")
flags.DEFINE_integer("iter", None, "training steps (pretrain: 2000, t: 2000, o: 32 per task per pass)")
flags.DEFINE_integer("rounds", 100, "-mode=o: rounds (each: -passes passes, then every task evaluated)")
flags.DEFINE_integer("passes", 10, "-mode=o: passes per round (each: every task trains -iter steps)")
flags.DEFINE_integer("Q", 8, "fraction bits of the int16 Q-format files of -mode=w")
flags.DEFINE_string("export_dir", None, "where -mode=w / -mode=p / -mode=testdata / -mode=blob write, replaced "
                    "all-or-nothing with a manifest (default: <state_dir>/export; the original wrote into its working "
                    "directory)")
flags.DEFINE_integer("num_examples", None, "-mode=testdata: the first K test examples of each task (default all)")
flags.DEFINE_bool("print_tables", False, "-mode=p: print every page table in full (default: long tables shortened)")
flags.DEFINE_string("state_dir", ".", "where the separated state lives")
flags.DEFINE_string("out_dir", None, "-mode=quantize: the new state directory (must not exist or be empty)")
flags.DEFINE_enum("target", "vnn", ["vnn", "network"], "-mode=e: the separated task (vnn) or its own network")
flags.DEFINE_enum("heatmap", "original", ["original", "pages"], "-mode=heatmap: the original's figure (chunks "
                  "of 100 weights, every element counted) or ours (the state's pages, the matching's cost, shared "
                  "pairs marked)")
flags.DEFINE_string("plot_dir", None, "plot modes: folder of the PNG files (default <state_dir>/plots)")
flags.DEFINE_enum("distribute", "none", ["none", "multi_worker"],
                  "-mode=pretrain/t/o: none (one process, the original) or multi_worker (data-parallel on the workers of "
                  "TF_CONFIG through tf.distribute; -batch_size is the global batch; the chief writes the state)")
flags.DEFINE_integer("verbose", 1, "Keras progress output for pretrain: 0 silent, 1 bar, 2 one line per epoch")
cli.define_method_flags()
flags.adopt_module_key_flags(cli)  # -help lists the method flags too

# Ranges of the numeric flags, checked before any work.  Sizes are bounded so that no flag can
# ask for more memory than a machine has (P x S float32 weights <= 512 MiB).
BOUNDS = {**cli.METHOD_BOUNDS, "iter": (1, 10_000_000), "rounds": (1, 1_000_000), "passes": (1, 1_000_000),
          "Q": (0, MAX_Q), "verbose": (0, 2), "num_examples": (1, 2**31 - 1)}
OWN_FLAGS = ("mode", "network_path", "vnn_name", "iter", "rounds", "passes", "Q", "export_dir", "num_examples",
             "print_tables",
             "state_dir", "out_dir", "target", "heatmap", "plot_dir", "distribute", "verbose", *cli.METHOD_FLAGS)


@dataclasses.dataclass
class Call:
    """What the checks before any work found: the state (loaded, when the mode reads one) and
    the task names of -vnn_name (or of -network_path)."""

    store: Optional[object]
    names: list[str]

    @property
    def name(self) -> str:
        return self.names[0]


@dataclasses.dataclass(frozen=True)
class Mode:
    """One -mode: the function that runs it, its flags as -help shows them, one line of help,
    and what is checked before any work (and before TensorFlow is imported)."""

    run: Callable[[Call], None]
    usage: str                     # the flags it takes
    help: str                      # what it does, one line
    needs: tuple[str, ...] = ()    # flags it cannot run without
    tasks: int = 0                 # task names it needs: 0 none, 1 one, 2 two different, -1 two or more different
    state: str = "none"            # "need": an existing state; "use": the state if there is one; "none"
    ours: bool = False             # a mode the original did not have
    writes: str = ""               # the flag of the directory it writes into (checked before any work)


# --- helpers ------------------------------------------------------------------------

def _names() -> list[str]:
    """The task names of -vnn_name (a comma list of task names or task folders) or, failing that,
    the name of the -network_path folder.  A name with a path must be a task folder (one with a
    task.py), so that `../a` is never silently read as the task a."""
    import re
    from weightsep.errors import shown
    from weightsep.limits import MAX_NAME_LENGTH, TASK_NAME_PATTERN
    if not FLAGS.vnn_name:
        return [FLAGS.network_path.rstrip("/").split("/")[-1]] if FLAGS.network_path else []
    names = []
    for part in (part.strip() for part in FLAGS.vnn_name.split(",") if part.strip()):
        name = part.rstrip("/").split("/")[-1] if "/" in part and (Path(part) / "task.py").is_file() else part
        if len(name) > MAX_NAME_LENGTH or not re.fullmatch(TASK_NAME_PATTERN, name):
            raise FlagError(f"-vnn_name: {shown(part)} is neither a task name (letters, digits, _ . -, starting with "
                            f"a letter or digit, at most {MAX_NAME_LENGTH} characters) nor a task folder")
        names.append(name)
    return names


def _check_names(mode: str, spec: Mode, names: list[str]) -> None:
    from weightsep.errors import shown
    if spec.tasks == 0:
        return
    example = {1: "-vnn_name=<task>", 2: "-vnn_name=<a>,<b>", -1: "-vnn_name=<a>,<b>[,...]"}[spec.tasks]
    if not names:
        raise FlagError(f"-mode={mode} needs {example}")
    if spec.tasks == 1 and len(names) != 1:
        raise FlagError(f"-mode={mode} takes one task, got -vnn_name={shown(FLAGS.vnn_name)}")
    if spec.tasks in (2, -1):
        if len(set(names)) != len(names):
            raise FlagError(f"-mode={mode} needs different tasks, got -vnn_name={shown(FLAGS.vnn_name)}")
        if len(names) < 2 or (spec.tasks == 2 and len(names) != 2):
            raise FlagError(f"-mode={mode} needs {'two' if spec.tasks == 2 else 'two or more'} different tasks "
                            f"({example}), got -vnn_name={shown(FLAGS.vnn_name or FLAGS.network_path)}")


def _missing_state(store) -> str:
    """The error for a -state_dir without a state, with commands that make or find one."""
    from weightsep.errors import formation_hint
    here = FLAGS.state_dir
    demo = Path("demo_out/state")
    if (demo / "weightsep_state.json").is_file() and Path(here).resolve() != demo.resolve():
        found = cli.command("WeightSeparation.py", *cli.flag_args(FLAGS, OWN_FLAGS, state_dir=str(demo)))
        return f"no separated state in {store.dir}; the demo's is in {demo}: run {found}"
    return (f"no separated state in {store.dir}: make one with "
            f"{formation_hint(here)}, "
            f"or pass the -state_dir that holds it")


def _unknown_task(store, name: str) -> str:
    """The error for a task that is not in the state: the closest name's command, or how to add it."""
    from weightsep.errors import closest
    from weightsep.tasks import REPO_ROOT
    known = [rec.name for rec in store.tasks]
    listed = ", ".join(known) or "none"
    guess = closest(name, known)
    if guess:
        fixed = ",".join(guess if n == name else n for n in _names())
        corrected = cli.command("WeightSeparation.py", *cli.flag_args(
            FLAGS, [flag for flag in OWN_FLAGS if flag != "network_path"], vnn_name=fixed))
        return (f"task {name} is not in the state in {store.dir} (tasks: {listed}); did you mean {guess}? "
                f"run {corrected}")
    folder = Path(REPO_ROOT) / name
    add = (cli.command("WeightSeparation.py", "-mode=a", f"-network_path={folder}", f"-state_dir={FLAGS.state_dir}")
           if (folder / "task.py").is_file() else
           cli.command("WeightSeparation.py", "-mode=a", "-network_path=FOLDER", f"-state_dir={FLAGS.state_dir}")
           + " (FOLDER: the folder of its task.py)")
    return f"task {name} is not in the state in {store.dir} (tasks: {listed}); add it with {add}"


def _check_distribute(mode: str) -> None:
    """-distribute=multi_worker: a training mode, a TF_CONFIG, a global batch that splits evenly."""
    if FLAGS.distribute == "none":
        return
    from weightsep.distribute import DISTRIBUTED_MODES, read_tf_config
    if mode not in DISTRIBUTED_MODES:
        raise FlagError(f"-distribute={FLAGS.distribute} applies to -mode={' / -mode='.join(DISTRIBUTED_MODES)}; "
                        f"-mode={mode} runs in one process")
    workers = read_tf_config().num_workers
    if FLAGS.batch_size % workers:
        raise FlagError(f"-batch_size={FLAGS.batch_size} must be a multiple of the {workers} workers of "
                        f"TF_CONFIG (the global batch is split evenly)")


def preflight(mode: str, spec: Mode) -> Call:
    """Every check that needs no network: flag ranges, the flags and task names the mode needs,
    and the state it reads (with its task names): a usage error answers before TensorFlow loads."""
    check_flags(FLAGS, BOUNDS)
    _check_distribute(mode)
    if FLAGS.page_size * FLAGS.num_pages > MAX_POOL_WEIGHTS:
        raise FlagError(f"-page_size={FLAGS.page_size} x -num_pages={FLAGS.num_pages} = "
                        f"{FLAGS.page_size * FLAGS.num_pages} weights exceeds the {MAX_POOL_WEIGHTS} a pool may hold")
    for flag in spec.needs:
        if FLAGS[flag].value is None:
            raise FlagError(f"-mode={mode} needs -{flag}=...: {mode} {spec.usage}")
    names = _names()
    _check_names(mode, spec, names)
    # Past the usage errors above (answered without NumPy): the page format and the directory written.
    from weightsep.atomic import check_dir_path
    from weightsep.pageformat import page_format
    try:
        page_format(FLAGS.page_dtype).check_page_size(FLAGS.page_size)
    except ValueError as why:
        raise FlagError(f"-page_dtype={FLAGS.page_dtype} -page_size={FLAGS.page_size}: {why}") from None
    if spec.writes:
        default = {"export_dir": _export_dir, "plot_dir": _plot_dir}.get(spec.writes)
        check_dir_path(default() if default else FLAGS[spec.writes].value, spec.writes)
    state = spec.state if not (mode == "e" and FLAGS.target == "network") else "use"
    if state == "none":
        return Call(None, names)
    from weightsep.errors import StateError
    from weightsep.store import Store
    store = Store(FLAGS.state_dir)
    if not store.exists():
        if state == "need":
            raise StateError(_missing_state(store))
        return Call(store, names)
    store.load()
    if state == "need":
        for name in names:
            if not store.has_task(name):
                raise StateError(_unknown_task(store, name))
    return Call(store, names)


def _options():
    return cli.method_options(FLAGS)


def _session(call: Call):
    """A session on the call's state (or a new, empty one); a folder named by -network_path
    supplies its task's spec."""
    from weightsep.pipeline import Session
    from weightsep.store import Store
    from weightsep.tasks import load_task
    session = Session(call.store if call.store is not None else Store(FLAGS.state_dir), _options())
    if FLAGS.network_path:
        session.use_spec(load_task(FLAGS.network_path))
    return session


def _print(lines) -> None:
    print("\n".join(lines))


# --- the modes ----------------------------------------------------------------------

def mode_pretrain(call: Call):
    from weightsep import data as datasets
    from weightsep.tasks import load_task
    from weightsep.training import pretrain_task
    task = load_task(FLAGS.network_path)
    cluster = _cluster()
    kind, iters = FLAGS.data or "real", FLAGS.iter or 2000
    fraction = datasets.DEFAULT_VALIDATION_SPLIT if FLAGS.validation_split is None else FLAGS.validation_split
    print(f"pretrain {task.name}: {iters} steps, batch {FLAGS.batch_size}, loss {FLAGS.loss}, "
          f"{datasets.describe(task, kind, FLAGS.seed, fraction)}")
    if cluster is None:
        result = pretrain_task(task, kind, FLAGS.seed, iters, FLAGS.batch_size, FLAGS.lr, FLAGS.loss, FLAGS.verbose,
                               fraction)
    else:
        from weightsep.distribute import failures
        with failures(cluster.config, task.folder):
            result = pretrain_task(task, kind, FLAGS.seed, iters, FLAGS.batch_size, FLAGS.lr, FLAGS.loss,
                                   FLAGS.verbose, fraction, cluster=cluster)
    saved = f"saved {result.path}" if result.path else f"saved by the chief ({cluster.config.name} saves nothing)"
    print(f"best validation accuracy {result.best_validation:.6f}; {saved}")
    print(f"{task.name} inference accuracy: {result.test_accuracy:.6f}")


def mode_import(call: Call):
    from weightsep.networks import import_tf1_checkpoint, save_network
    from weightsep.tasks import load_task
    folder = Path(FLAGS.network_path)
    # The original kept each checkpoint in its task folder; a folder without a task.py
    # names the task by -vnn_name or by its own name.
    task = load_task(folder) if (folder / "task.py").is_file() else load_task(FLAGS.vnn_name or folder.resolve().name)
    net = import_tf1_checkpoint(task, folder)
    path = save_network(net)
    print(f"{task.name}: {net.num_weights} weights")
    print(f"saved {path}")


def mode_add(call: Call):
    from weightsep.pipeline import Session, add_task, prepare_add
    from weightsep.store import Store
    from weightsep.tasks import load_task
    task = load_task(FLAGS.network_path)
    store = Store(FLAGS.state_dir)
    session = Session(store, _options())
    prepared = prepare_add(session, task)  # the network and the data, checked before the state is touched
    with store.writer():
        add_task(session, task, prepared=prepared)


def _cluster():
    """The cluster of -distribute=multi_worker, connected (None: one process). Called first in a
    mode, since the strategy must exist before TensorFlow runs any op."""
    if FLAGS.distribute == "none":
        return None
    from weightsep.distribute import connect, read_tf_config
    return connect(read_tf_config())


def _training_session(cluster, session):
    """The session to train in: the state under its writer lock, or a worker's scratch copy."""
    from weightsep.distribute import training_state
    session.strategy = cluster.strategy if cluster else None
    return training_state(session, cluster)


def mode_train(call: Call):
    from weightsep.pipeline import train_task
    cluster = _cluster()
    session = _session(call)
    with _training_session(cluster, session):
        result = train_task(session, call.name, FLAGS.iter or 2000)
    kept = (f"kept the weights of {result.best_accuracy:.6f} ({result.selected_on} accuracy; "
            f"{result.start_accuracy:.6f} at step 0)" if result.updated else
            f"no evaluation beat step 0 ({result.start_accuracy:.6f} {result.selected_on} accuracy): pages unchanged")
    if cluster and not cluster.is_chief:
        print(f"{call.name}: {kept}; written by the chief ({cluster.config.name} keeps no copy)")
        return
    print(f"{call.name}: {kept}; {session.store.vector_path(call.name, 'weight')} rewritten")


def mode_optimize(call: Call):
    from weightsep.pipeline import optimize_all
    from weightsep.progress import RoundReport
    cluster = _cluster()
    session = _session(call)
    report = RoundReport(FLAGS.rounds, FLAGS.passes, FLAGS.iter or 32, len(session.store.tasks))
    with _training_session(cluster, session):
        history = optimize_all(session, FLAGS.rounds, FLAGS.iter or 32, FLAGS.passes, progress=report.round_done)
    report.finish(history)


def mode_evaluate(call: Call):
    from weightsep.pipeline import evaluate_network
    from weightsep.tasks import load_task
    if FLAGS.target == "network":
        session = _session(call)
        task = load_task(FLAGS.network_path) if FLAGS.network_path else session.spec(call.name)
        print(f"{task.name} inference accuracy: {evaluate_network(session, task):.6f}")
        return
    from weightsep.errors import StateLockedError, StateReadOnlyError, WriteError
    from weightsep.pipeline import evaluate_task, record_accuracy
    session = _session(call)
    acc = None
    try:
        with session.store.writer():  # record the accuracy when nobody else writes the state
            acc = evaluate_task(session, call.name)
            record_accuracy(session.store, call.name, acc)
    except (StateLockedError, StateReadOnlyError, WriteError) as why:
        # The accuracy is the result; the registry is only where it is kept (a full disk, a
        # read-only or locked state: say so, after the result).
        if acc is None:
            acc = evaluate_task(session, call.name)
        print(f"{call.name} inference accuracy: {acc:.6f}")
        print(f"note: accuracy not recorded in the registry ({why})", file=sys.stderr)
        return
    print(f"{call.name} inference accuracy: {acc:.6f}")


def mode_list(call: Call):
    from weightsep import report
    _print(report.listing(call.store))


def mode_remove(call: Call):
    store = call.store
    with store.writer():
        store.remove_task(call.name)
    print(f"removed {call.name}; {len(store.tasks)} tasks remain")


def _export_dir() -> Path:
    return Path(FLAGS.export_dir) if FLAGS.export_dir else Path(FLAGS.state_dir) / "export"


def _export_summary(lines: list[str], out_dir: Path) -> list[str]:
    """The export's own lines, then what the folder holds (files and bytes, from its manifest)."""
    import json
    files = json.loads((out_dir / "manifest.json").read_text()).get("files", {})
    size = sum(int(entry.get("bytes", 0)) for entry in files.values())
    where = "" if FLAGS.export_dir else " (the default -export_dir)"
    return [line for line in lines if not line.startswith("wrote ")] + [
        f"export in {out_dir}{where}: {len(files)} files, {size:,} bytes, listed in {out_dir / 'manifest.json'}"]


def mode_export_weights(call: Call):
    from weightsep.export import export_weights
    out_dir = _export_dir()
    _print(_export_summary(export_weights(call.store, out_dir, FLAGS.Q), out_dir))


def mode_export_page_tables(call: Call):
    from weightsep.export import export_page_tables
    out_dir = _export_dir()
    _print(_export_summary(export_page_tables(call.store, out_dir, full_tables=FLAGS.print_tables), out_dir))


def mode_export_test_data(call: Call):
    from weightsep.export import export_test_data
    session = _session(call)
    names = call.names or [rec.name for rec in session.store.tasks]
    tests = {}
    for name in names:
        test = session.split(name, "test")
        tests[name] = (test.x, test.y, session.spec(name).num_classes)
    out_dir = _export_dir()
    _print(_export_summary(export_test_data(session.store, out_dir, tests, FLAGS.num_examples), out_dir))


def mode_export_blob(call: Call):
    from weightsep.blob import export_blob
    _print(export_blob(call.store, _export_dir()))


def mode_quantize(call: Call):
    from weightsep.pipeline import quantize_state
    if FLAGS.page_dtype == "float32":
        raise FlagError("-mode=quantize needs -page_dtype=int8 or -page_dtype=int4")
    _print(quantize_state(FLAGS.state_dir, FLAGS.out_dir, FLAGS.page_dtype, _options(), source=call.store))


# Diagnostics: each prints the lines of its function in weightsep/diagnostics.py.

def mode_fisher(call: Call):
    from weightsep import diagnostics
    _print(diagnostics.fisher_of_separated(_session(call), call.name))


def mode_cost(call: Call):
    from weightsep import diagnostics
    _print(diagnostics.network_cost_lines(_session(call), call.names))


def mode_layers(call: Call):
    from weightsep import diagnostics
    _print(diagnostics.layers(_session(call), call.name))


def mode_variables(call: Call):
    from weightsep import diagnostics
    _print(diagnostics.variables(_session(call), call.name))


def mode_target_loss(call: Call):
    from weightsep import diagnostics
    _print(diagnostics.target_loss_lines(_session(call), call.name))


def mode_alpha_loss(call: Call):
    from weightsep import diagnostics
    _print(diagnostics.alpha_loss_lines(_session(call), call.name))


def mode_tpr(call: Call):
    from weightsep import diagnostics
    _print(diagnostics.tpr_lines(_session(call), call.name))


def mode_loss(call: Call):
    from weightsep import diagnostics
    _print(diagnostics.training_loss(_session(call), call.name))


# Plots: each saves one PNG file through its function in weightsep/plots.py.

def _plot_dir() -> Path:
    return Path(FLAGS.plot_dir) if FLAGS.plot_dir else Path(FLAGS.state_dir) / "plots"


def mode_plot_fisher_separated(call: Call):
    from weightsep import plots
    print(f"saved {plots.separated_fisher_per_page(_session(call), call.name, _plot_dir()).path}")


def mode_plot_weights_separated(call: Call):
    from weightsep import plots
    print(f"saved {plots.separated_weights_per_page(call.store, call.name, _plot_dir()).path}")


def mode_plot_fisher_network(call: Call):
    from weightsep import plots
    print(f"saved {plots.network_fisher_per_page(call.store, call.name, _plot_dir()).path}")


def mode_plot_weights_network(call: Call):
    from weightsep import plots
    print(f"saved {plots.network_weights_per_page(call.store, call.name, _plot_dir()).path}")


def mode_plot_fisher_histogram(call: Call):
    from weightsep import plots
    print(f"saved {plots.network_fisher_histogram(call.store, call.name, _plot_dir()).path}")


def mode_plot_weights_histogram(call: Call):
    from weightsep import plots
    print(f"saved {plots.network_weights_histogram(call.store, call.name, _plot_dir()).path}")


def mode_heatmap(call: Call):
    from weightsep import plots
    plot = plots.sharing_cost_heatmap(call.store, call.names[0], call.names[1], _plot_dir(), FLAGS.heatmap)
    print(f"saved {plot.path}")


# Every mode, one row each: -help lists them from here, and run() calls the row's function.
T = "-vnn_name=T"
MODES: dict[str, Mode] = {
    "l": Mode(mode_list, "", "list tasks and the raw occupation table (the original's), then occupation and packing",
              state="need"),
    "a": Mode(mode_add, "-network_path=T", "add a task: Fisher, separation, overlapping",
              needs=("network_path",), writes="state_dir"),
    "t": Mode(mode_train, f"{T} [-iter=2000]", "train one task with the overlapping loss", tasks=1, state="need"),
    "e": Mode(mode_evaluate, f"{T} [-target=network]", "test accuracy of the separated task (or of its own network)",
              tasks=1, state="need"),
    "r": Mode(mode_remove, T, "remove a task, free its pages", tasks=1, state="need"),
    "f": Mode(mode_fisher, T, "Fisher of the separated task, saved as T/T_fisher.npy", tasks=1,
              state="need"),
    "c": Mode(mode_cost, "-vnn_name=A,B[,...]", "overlapping cost summed over every pair of the tasks",
              tasks=-1, state="need"),
    "n": Mode(mode_layers, T, "the layer list of the task's network", tasks=1, state="use"),
    "v": Mode(mode_variables, T, "the trainable variables of the task's network", tasks=1, state="use"),
    "tl": Mode(mode_target_loss, f"{T} -target_accuracy=A", "target loss of the task's network for -target_accuracy",
               needs=("target_accuracy",), tasks=1, state="use"),
    "cl": Mode(mode_alpha_loss, T, "alpha-loss of the task's network on its training split (-alpha)", tasks=1,
               state="use"),
    "tpr": Mode(mode_tpr, T, "target performance rate and the exclusive pages it gives",
                tasks=1, state="use"),
    "w": Mode(mode_export_weights, "[-Q=8 -export_dir=D]",
              "the original's binary files: pool and exclusive pages (float32, int16 Q-format)", state="need",
              writes="export_dir"),
    "p": Mode(mode_export_page_tables, "[-export_dir=D -print_tables]", "the original's binary page tables (uint16)",
              state="need", writes="export_dir"),
    "testdata": Mode(mode_export_test_data, "[-vnn_name=A,B] [-num_examples=K]", "the original's test-data files "
                     "(<task>_t inputs, <task>_l labels) for a device", state="need", writes="export_dir"),
    "pf": Mode(mode_plot_fisher_separated, T, "plot: Fisher per page of the separated task (recomputed): pf_T.png",
               tasks=1, state="need", writes="plot_dir"),
    "pw": Mode(mode_plot_weights_separated, T, "plot: mean |w| per page of the separated task: pw_T.png", tasks=1,
               state="need", writes="plot_dir"),
    "pnf": Mode(mode_plot_fisher_network, T, "plot: Fisher per page of the task's network (at add): pnf_T.png",
                tasks=1, state="need", writes="plot_dir"),
    "pnw": Mode(mode_plot_weights_network, T, "plot: mean |w| per page of the task's network: pnw_T.png", tasks=1,
                state="need", writes="plot_dir"),
    "pnfh": Mode(mode_plot_fisher_histogram, T, "plot: histogram of the network's Fisher values: pnfh_T.png",
                 tasks=1, state="need", writes="plot_dir"),
    "pnwh": Mode(mode_plot_weights_histogram, T, "plot: histogram of the network's weights: pnwh_T.png", tasks=1,
                 state="need", writes="plot_dir"),
    "heatmap": Mode(mode_heatmap, "-vnn_name=A,B [-heatmap=pages]", "plot: sharing cost of A x B as the original drew "
                    "it (-heatmap=pages: per page of the state): heatmap_A_B.png", tasks=2, state="need",
                    writes="plot_dir"),
    "pretrain": Mode(mode_pretrain, "-network_path=T [-iter=2000]", "train a task's own network",
                     needs=("network_path",), ours=True),
    "import": Mode(mode_import, "-network_path=DIR [-vnn_name=T]", "import an original TF1 checkpoint (DIR/T.meta ...)",
                   needs=("network_path",), ours=True),
    "o": Mode(mode_optimize, "[-rounds=100 -passes=10 -iter=32]",
              "optimization.sh in one process (round i/N, time left)", state="need", ours=True),
    "quantize": Mode(mode_quantize, "-out_dir=D -page_dtype=int8", "a quantized copy of a float32 state",
                     needs=("out_dir",), state="need", writes="out_dir", ours=True),
    "blob": Mode(mode_export_blob, "[-export_dir=D]", "weights.wsb: the whole state in one file for runtime_c/ "
                 "(docs/FORMAT.md)", state="need", writes="export_dir", ours=True),
    "loss": Mode(mode_loss, T, "the training loss terms and accuracies now", tasks=1,
                 state="need", ours=True),
}


def modes_help() -> str:
    """The modes, one line each, as -help prints them (from MODES)."""
    rows = [(f"-mode={name} {mode.usage}".rstrip(), mode.help) for name, mode in MODES.items()]
    width = max(len(left) for left, _ in rows) + 2
    original = [f"  {left:<{width}}{text}" for (left, text), mode in zip(rows, MODES.values()) if not mode.ours]
    ours = [f"  {left:<{width}}{text}" for (left, text), mode in zip(rows, MODES.values()) if mode.ours]
    lines = ["Modes of the original (no -mode: l):", *original, "Ours:", *ours]
    lines += ["T: a task name (a folder such as mnist/).  Plots (PNG) go to -plot_dir (default <state_dir>/plots),",
              "exports to -export_dir (default <state_dir>/export).  Every mode takes -state_dir=DIR (default: the",
              "current directory, as the original) and -data=synthetic (offline, built-in synthetic data)."]
    return "\n".join(lines)


__doc__ = f"{__doc__}\n{modes_help()}\n"


def run():
    mode = MODES.get(FLAGS.mode)
    if mode is None:
        from weightsep.errors import shown
        raise FlagError(f"-mode must be one of {' '.join(MODES)}, not {shown(FLAGS.mode)} (-help describes each)")
    mode.run(preflight(FLAGS.mode, mode))


if __name__ == "__main__":
    app.run(main_of(run))
