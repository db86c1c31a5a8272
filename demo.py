#!/usr/bin/env python3
"""The whole method on built-in synthetic data, in one process: `make demo` (README: "What
`make demo` does and prints").

Stages: pretrain every task's own network, formation (add each task: Fisher, separation,
overlapping; then retrain it), optimization (rounds of passes of every task with the
overlapping loss), evaluation, multitask execution (switch time with weight separation vs the
baseline's full reload), then the report and plots.  Every stage calls the library's one
workflow function (training.pretrain_task, pipeline.form_all, pipeline.optimize_all, ...);
numbers come back through return values and callbacks, never by reading printed lines.

Everything is written under -out (default demo_out/).  Every flag and task name is checked
first; only then does an earlier output move aside to <out>.previous (replacing the one
before it), so one bad run never loses results:
    demo_out/networks/<task>/   the task's spec (copied) and its pretrained network
    demo_out/state/             the separated state (shared pool, exclusive store, registry)
    demo_out/plots/             PNG figures
    demo_out/report.md          the tables, settings, stage times and links to the plots
The task folders of the repository are only read (their task.py), never written.

The method is the original's (its loss, model selection, matching, pool writes, schedule
shape) with one setting changed, margin 0.25 instead of 0.1 (README, "Schedule"), and a
SHORTENED schedule so that it runs in minutes on two CPU cores: 500 pretraining steps, 200
formation steps, 2 optimization rounds of 10 passes x 32 steps (the original: 2000 formation
steps and 100 rounds of 10 passes x 32 steps).  It prints its expected duration at the start,
calibrated on this CPU.  The method's flags are WeightSeparation.py's own (-margin, -matching,
-page_dtype, -lamb, ...).  Every flag takes its default from the environment variable
DEMO_<FLAG> (upper case):
    DEMO_ROUNDS=10 make demo
    make demo DEMO_ARGS="-page_dtype=int8 -rounds=3"
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from absl import app, flags

from weightsep import cli
from weightsep.cli import FlagError, check_flags, main_of
from weightsep.progress import Progress, duration, plural

REPO = Path(__file__).resolve().parent
FLAGS = flags.FLAGS
TEN = "cifar10,mnist,fmnist,gtsrb,svhn,obs,gsc,esc10,us8k,hhar"
MARKER = ".weightsep-demo"  # marks a folder the demo wrote: only such a folder is ever moved aside
STEPS_FILE = "pretrain_steps.json"  # networks/: the steps each pretrained network was trained

flags.DEFINE_string("out", "demo_out", "output folder; an earlier output there moves to <out>.previous")
flags.DEFINE_list("tasks", TEN, "tasks, comma list, in formation order")
flags.DEFINE_integer("pretrain_iter", 500, "pretraining steps per task")
flags.DEFINE_integer("formation_iter", 200, "training steps right after adding a task (original: 2000)")
flags.DEFINE_integer("rounds", 2, "optimization rounds (original: 100)")
flags.DEFINE_integer("passes", 10, "passes per round (original: 10)")
flags.DEFINE_integer("iter", 32, "steps per task per pass (original: 32)")
flags.DEFINE_integer("switches", 20, "random task executions for each runtime (original: 50)")
flags.DEFINE_bool("reuse_networks", False, "keep the pretrained networks of the previous output and pretrain only "
                  "the tasks that have none")
flags.DEFINE_enum("int4_training", "through", ["through", "after"],
                  "-page_dtype=int4: 'through' quantizes after formation (float32 master values kept) and optimizes "
                  "through the int4 pages; 'after' trains formation and optimization in float32 and quantizes the "
                  "result (measured worse: BENCHMARKS.md, 'int4 pages')")
cli.define_method_flags(defaults={"margin": 0.25}, skip=("data",))  # WeightSeparation.py's own method flags
flags.adopt_module_key_flags(cli)  # -help lists them too
OWN_FLAGS = ("out", "tasks", "pretrain_iter", "formation_iter", "rounds", "passes", "iter", "switches",
             "reuse_networks", "int4_training", *(name for name in cli.METHOD_FLAGS if name != "data"))

BOUNDS = {**cli.METHOD_BOUNDS, "pretrain_iter": (1, 10_000_000), "formation_iter": (0, 10_000_000),
          "rounds": (0, 100_000), "passes": (1, 1000), "iter": (1, 100_000), "switches": (1, 100_000)}
STAGES = 6


def say(line: str = "") -> None:
    print(line, flush=True)


def quiet(_entry) -> None:
    """The pipeline's per-step log, silenced: the demo prints its own progress lines."""


def stage(number: int, title: str) -> float:
    say(f"\n[{number}/{STAGES}] {title}")
    return time.perf_counter()


def env_defaults() -> None:
    """Take each flag's default from DEMO_<FLAG> where that is set (a flag on the command line wins)."""
    for name in OWN_FLAGS:
        variable = f"DEMO_{name.upper()}"
        if variable in os.environ:
            try:
                FLAGS.set_default(name, os.environ[variable])
            except (flags.Error, ValueError) as exc:
                raise FlagError(f"{variable}={os.environ[variable]!r}: {exc}") from None


def corrected(**changed) -> str:
    """This demo's command line with some flags changed: what a hint prints."""
    return cli.command("demo.py", *cli.flag_args(FLAGS, OWN_FLAGS, **changed))


def check_tasks(names: list[str]) -> dict:
    """{name: task folder} of the repository's tasks; a misspelled one is an error with the fixed command."""
    from weightsep.errors import closest
    from weightsep.tasks import list_tasks, load_task
    if not names:
        raise FlagError(f"-tasks is empty; for example {corrected(tasks='mnist,hhar')}")
    if len(set(names)) != len(names):
        raise FlagError(f"-tasks names a task twice: {','.join(names)}")
    known = list_tasks()
    for name in names:
        if name not in known:
            guess = closest(name, known)
            fix = (f"; did you mean {guess}? run {corrected(tasks=','.join(guess if n == name else n for n in names))}"
                   if guess else "")
            raise FlagError(f"-tasks: unknown task {name!r} (the tasks: {', '.join(known)}){fix}")
    return {name: load_task(REPO / name).folder for name in names}


def check_out(out: Path) -> Path | None:
    """Refuse an output folder the demo must not replace; return the earlier output to move aside."""
    previous = out.with_name(out.name + ".previous")
    if out.exists() and not out.is_dir():
        raise FlagError(f"-out={FLAGS.out}: {out} is a file, not a folder")
    if out == REPO or out in REPO.parents or out == Path.home():
        raise FlagError(f"-out={FLAGS.out}: {out} would hold the demo's output; pass a folder of its own, "
                        f"e.g. {corrected(out='demo_out')}")
    for folder in (out, previous):
        if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).is_file():
            raise FlagError(f"-out={FLAGS.out}: {folder} holds files the demo did not write; pass another folder, "
                            f"e.g. {corrected(out=FLAGS.out.rstrip('/') + '_2')}")
    return previous if out.is_dir() and any(out.iterdir()) else None


def prepare_out(out: Path, previous: Path | None) -> str:
    """Move an earlier output aside (replacing the one before it), start a new one; say what happened."""
    note = ""
    if previous is not None:
        if previous.exists():
            shutil.rmtree(previous)
        out.rename(previous)
        note = f"the earlier output moved to {previous}"
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by demo.py; moved to <out>.previous by the next run\n")
    if FLAGS.reuse_networks and previous is not None and (previous / "networks").is_dir():
        shutil.copytree(previous / "networks", out / "networks")
        note += f"; networks copied from {previous / 'networks'}"
    return note


def pretrain_steps(out: Path) -> dict:
    """{task: steps} of the networks under <out>/networks (an unreadable record counts as none)."""
    try:
        steps = json.loads((out / "networks" / STEPS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in steps.items() if isinstance(v, int)} if isinstance(steps, dict) else {}


def expected_seconds(specs: dict) -> tuple[float, float]:
    """(expected duration of the demo, measured seconds per obs-sized training step).

    Times a few compiled training steps of the most expensive network here, then scales by each
    task's multiply-adds and the schedule's step counts (evaluations and Fisher included as
    step equivalents).  A rough guide (+-30%), not a promise.
    """
    from weightsep.training import time_training_step
    costliest = max(specs.values(), key=forward_macs)
    per_step = time_training_step(costliest)
    steps = FLAGS.pretrain_iter + FLAGS.formation_iter + FLAGS.rounds * FLAGS.passes * FLAGS.iter
    calls = 1 + FLAGS.rounds * FLAGS.passes  # -mode=t calls per task; each evaluates the test split twice
    steps += calls * 2 * 10 / 3 + 60  # 1000 test examples ~ 10 forward batches; Fisher ~ 60 steps
    total = sum(per_step * forward_macs(spec) / forward_macs(costliest) * steps for spec in specs.values())
    return total + 15 * len(specs) + 20, per_step  # compiles, start-up, execution and plots


def forward_macs(spec) -> int:
    """Multiply-adds of one example through the spec's layer list."""
    h, w, c = spec.input_shape
    macs = 0
    for kh, kw, filters in spec.conv:
        ho, wo = h - kh + 1, w - kw + 1
        macs += ho * wo * kh * kw * c * filters
        h, w, c = ho // 2, wo // 2, filters
    width = h * w * c
    for units in (*spec.dense, spec.num_classes):
        macs += width * units
        width = units
    return macs


def run_pretrain(out: Path, folders: dict, timings: dict) -> tuple[dict, dict]:
    """Pretrain (or, with -reuse_networks, keep) every task's network; ({name: spec}, {name: steps})."""
    from weightsep.atomic import write_bytes
    from weightsep.networks import network_file
    from weightsep.tasks import copy_spec, load_task
    from weightsep.training import pretrain_task
    specs = {name: load_task(copy_spec(folder, out / "networks")) for name, folder in folders.items()}
    estimate, per_step = expected_seconds(specs)
    say(f"expected duration: about {estimate / 60:.0f} min on this CPU (a training step of the costliest network "
        f"took {per_step * 1e3:.0f} ms here)")
    start = stage(1, f"pretrain: each task's own network, {FLAGS.pretrain_iter} steps, synthetic data")
    steps = pretrain_steps(out)
    names = list(specs)
    for i, (name, spec) in enumerate(specs.items(), 1):
        t0 = time.perf_counter()
        if FLAGS.reuse_networks and network_file(spec).is_file():
            trained = steps.get(name)
            say(f"  [{i}/{len(names)}] {name}: kept {network_file(spec)} "
                f"({plural(trained, 'step') if trained else 'steps unknown'})")
            steps.setdefault(name, None)
            continue
        result = pretrain_task(spec, "synthetic", FLAGS.seed, FLAGS.pretrain_iter, batch_size=FLAGS.batch_size,
                               lr=FLAGS.lr, loss=FLAGS.loss, verbose=0)
        steps[name] = FLAGS.pretrain_iter
        write_bytes(out / "networks" / STEPS_FILE, (json.dumps(steps, indent=1) + "\n").encode())
        say(f"  [{i}/{len(names)}] {name}: {result.num_weights:,} weights, validation {result.best_validation:.3f}, "
            f"test accuracy {result.test_accuracy:.3f} ({time.perf_counter() - t0:.1f} s)")
    timings["pretrain"] = time.perf_counter() - start
    return specs, {name: steps.get(name) for name in names}


def run_formation(session, specs: dict, timings: dict) -> None:
    from weightsep.pipeline import form_all
    start = stage(2, f"formation: add (Fisher, separation, overlapping) + retrain {FLAGS.formation_iter} steps")

    def progress(i, total, step):
        rec = step.added.record
        say(f"  [{i}/{total}] {rec.name}: {rec.num_pages} pages, {len(rec.exclusive_pages)} exclusive; "
            f"accuracy network {step.added.network_accuracy:.3f}, separated {step.separated_before:.3f} -> "
            f"{step.separated_after:.3f} ({step.seconds:.1f} s)")

    form_all(session, list(specs.values()), FLAGS.formation_iter, log=quiet, progress=progress)
    timings["formation"] = time.perf_counter() - start


def run_optimization(session, timings: dict) -> list:
    from weightsep.pipeline import optimize_all
    start = stage(3, f"optimization: {plural(FLAGS.rounds, 'round')} x {plural(FLAGS.passes, 'pass', 'passes')} x "
                     f"{plural(FLAGS.iter, 'step')} per task, overlapping loss")
    last = [start]
    tasks = len(session.store.tasks)
    # A round of the ten tasks takes about a minute here: a line at least every 10 s meanwhile.
    bar = Progress(FLAGS.rounds * FLAGS.passes * tasks, "  trained", every=10.0)

    def on_train(done, total):
        r = (done - 1) // (FLAGS.passes * tasks) + 1
        p = (done - 1) // tasks % FLAGS.passes + 1
        bar.update(done, f"round {r}/{FLAGS.rounds}, pass {p}/{FLAGS.passes}")

    def progress(r, rounds, accuracies):
        now = time.perf_counter()
        bar.finish()
        say(f"  round {r}/{rounds}: mean separated accuracy {sum(accuracies.values()) / len(accuracies):.4f} "
            f"({now - last[0]:.1f} s; {duration(now - start)} elapsed"
            + (f", about {duration((now - start) / r * (rounds - r))} left)" if r < rounds else ")"))
        last[0] = now

    history = optimize_all(session, FLAGS.rounds, FLAGS.iter, FLAGS.passes, log=quiet, progress=progress,
                           on_train=on_train)
    timings["optimization"] = time.perf_counter() - start
    return history


def run_evaluation(session, timings: dict) -> None:
    from weightsep.pipeline import evaluate_task, record_accuracy
    start = stage(4, "evaluation: test accuracy of every separated task (materialized from pool + exclusive pages)")
    names = [rec.name for rec in session.store.tasks]
    for i, name in enumerate(names, 1):
        acc = evaluate_task(session, name)
        record_accuracy(session.store, name, acc)
        net = session.store.task(name).accuracy["network"]
        say(f"  [{i}/{len(names)}] {name}: network {net:.4f}, separated {acc:.4f}, "
            f"difference {100 * (acc - net):+.2f} points")
    timings["evaluation"] = time.perf_counter() - start


def run_execution(state_dir: Path, timings: dict) -> dict:
    from weightsep.baseline import BaselineRuntime
    from weightsep.runtime import WSRuntime, run_executions
    start = stage(5, f"execution: {FLAGS.switches} random task switches with weight separation, then the baseline")
    results = {}
    every = max(1, FLAGS.switches // 4)

    def counter(label):
        def on_switch(i, execution, totals):
            if (i + 1) % every == 0 and i + 1 < FLAGS.switches:
                say(f"  {label}: [{i + 1}/{FLAGS.switches}] total weight-load time {totals[0] * 1e3:.3f} ms, "
                    f"total execution time {totals[1] * 1e3:.3f} ms")
        return on_switch

    for label, make in (("weight-separated", lambda: WSRuntime(state_dir, device="cpu", log=None)),
                        ("baseline", lambda: BaselineRuntime(state_dir, device="cpu", log=None))):
        t0 = time.perf_counter()
        with make() as runtime:
            runs = run_executions(runtime, FLAGS.switches, FLAGS.seed, log=None, on_switch=counter(label))
            detail = runtime.description
        load = sum(r.load_seconds for r in runs) * 1e3
        run = sum(r.run_seconds for r in runs) * 1e3
        results[label] = {"load_ms": load, "run_ms": run, "detail": detail}
        say(f"  {label}: total weight-load time {load:.3f} ms, total execution time {run:.3f} ms "
            f"({detail}; {time.perf_counter() - t0:.1f} s with set-up)")
    timings["execution"] = time.perf_counter() - start
    return results


def run_plots(session, out: Path, names: list[str]) -> dict:
    from weightsep import plots
    store = session.store
    plot_dir = out / "plots"
    made = {
        "accuracy before/after": plots.plot_accuracy(store, plot_dir / "accuracy.png").path,
        "pool occupation": plots.plot_occupation(store, plot_dir / "occupation.png").path,
        "exclusive pages per task": plots.plot_exclusive(store, plot_dir / "exclusive.png").path,
    }
    # The task with the most exclusive pages shows the separation best.
    focus = max(store.tasks, key=lambda r: len(r.exclusive_pages)).name
    made[f"Fisher per page of {focus} (network Fisher)"] = plots.plot_page_fisher(
        store, focus, plot_dir / f"pnf_{focus}.png").path
    if len(names) >= 2:
        a, b = names[0], names[1]
        made[f"sharing-cost heatmap {a} x {b}"] = plots.plot_sharing_cost(
            store, a, b, plot_dir / f"heatmap_{a}_{b}.png").path
    for path in made.values():
        say(f"  saved {path}")
    return made


def report_lines(session, execution: dict, timings: dict, plots_made: dict, out: Path, history: list,
                 steps: dict) -> list[str]:
    from weightsep import report, synthetic
    store, opt = session.store, session.options
    rows = report.task_rows(store)
    packing = report.packing(store)
    diffs = [r["difference"] for r in rows if r["difference"] is not None]
    mean_diff = 100 * sum(diffs) / len(diffs) if diffs else float("nan")
    worst = 100 * min(diffs) if diffs else float("nan")
    goal = packing.ratio >= 4.0 and mean_diff >= -1.0
    sizes = " / ".join(f"{v} {k}" for k, v in synthetic.SYNTHETIC_SIZES.items())
    lines = ["# Weight Separation demo (synthetic data)", "",
             f"{len(rows)} tasks, synthetic data ({sizes} examples per task, seed {FLAGS.seed}); "
             f"accuracies are test accuracies.", "",
             "## Weights, memory and accuracy", ""]
    lines += report.markdown_table(store)
    lines += ["", f"mean accuracy difference (separated - network): {mean_diff:+.2f} points (worst {worst:+.2f}); "
              f"goal (packing >= 4x and mean drop <= 1 point): {'met' if goal else 'NOT met'}"]
    ws, base = execution.get("weight-separated"), execution.get("baseline")
    if ws and base:
        lines += ["", f"## Switching ({FLAGS.switches} random task executions, same sequence for both)", "",
                  "| | DNN switching time (ms) | DNN execution time (ms) |", "|---|---:|---:|",
                  f"| Weight-Separated Execution | {ws['load_ms']:.3f} | {ws['run_ms']:.3f} |",
                  f"| Non-Separated Execution | {base['load_ms']:.3f} | {base['run_ms']:.3f} |", "",
                  f"switching time: {base['load_ms'] / ws['load_ms']:.1f}x faster with weight separation "
                  f"({ws['detail']}; the baseline: {base['detail']}); "
                  f"execution time ratio (baseline / separated) {base['run_ms'] / ws['run_ms']:.2f}"]
    total = sum(timings.values())
    lines += ["", "## Settings and time per stage", "",
              f"- tasks: {', '.join(r['task'] for r in rows)}",
              f"- pretrain: {report.pretraining(steps, FLAGS.pretrain_iter)} (Adam, lr {opt.lr:g}, "
              f"batch {opt.batch_size}, loss {opt.loss})",
              f"- formation: add (Fisher on {opt.fisher_samples} examples, separation with TPR 1.0 and margin "
              f"{opt.margin}, {opt.matching} matching, init {opt.init}) then {plural(FLAGS.formation_iter, 'step')} "
              f"per task",
              f"- optimization: {plural(FLAGS.rounds, 'round')} x {plural(FLAGS.passes, 'pass', 'passes')} x "
              f"{plural(FLAGS.iter, 'step')} per task (the original: 100 x 10 x 32), lamb {opt.lamb:g}, loss "
              f"{opt.loss}, model selection on the {opt.select_on} split",
              f"- pool {store.num_pages} pages x {store.page_size} weights, {store.page_dtype} pages; "
              f"switches: {FLAGS.switches}", "",
              "| stage | wall time (s) |", "|---|---:|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in timings.items()]
    lines += [f"| total | {total:.1f} |"]
    if history:
        means = [sum(h.values()) / len(h) for h in history]
        lines += ["", "mean separated accuracy after each optimization round: "
                  + ", ".join(f"{m:.4f}" for m in means)]
    lines += ["", "## Plots", ""]
    lines += [f"- [{title}]({path.relative_to(out)})" for title, path in plots_made.items()]
    return lines


def run():
    env_defaults()
    check_flags(FLAGS, BOUNDS)
    wall = time.perf_counter()
    out = Path(FLAGS.out).resolve()
    folders = check_tasks([n.strip() for n in FLAGS.tasks if n.strip()])
    previous = check_out(out)  # every argument is checked before anything is moved
    names = list(folders)
    say(f"Weight Separation demo: {len(names)} tasks on synthetic data, {FLAGS.page_dtype} pages; output in {out}")
    note = prepare_out(out, previous)
    if note:
        say(f"({note})")
    t0 = time.perf_counter()
    from weightsep.pipeline import Session  # imports TensorFlow once
    from weightsep.store import Store
    timings = {"start-up (TensorFlow import)": time.perf_counter() - t0}
    specs, steps = run_pretrain(out, folders, timings)
    # int4 pages: formation in float32, then quantized (int8 on the pages with the most Fisher
    # information, int4 in groups elsewhere, float32 master values kept) and the optimization
    # trained from the masters through those final pages (-int4_training=through); measured
    # better than optimizing in float32 and quantizing after (BENCHMARKS.md, "int4 pages").
    # int8 and float32 states train through their own pages from the start.
    after = FLAGS.page_dtype == "int4"
    through = after and FLAGS.int4_training == "through"
    store = Store(out / ("state_float32" if after else "state"))
    session = Session(store, cli.method_options(FLAGS, data="synthetic", **({"page_dtype": "float32"} if after else {})))
    history = []
    with store.writer():
        run_formation(session, specs, timings)
        if not through:
            history = run_optimization(session, timings)
        if not after:
            run_evaluation(session, timings)
    if after:
        from weightsep.store import convert_state
        start = time.perf_counter()
        store = convert_state(store.dir, out / "state", "int4", int8_pages=FLAGS.int8_pages,
                              group_size=FLAGS.group_size)
        say(f"\nquantized the float32 state into {store.dir}: int4 pages in groups of at most {FLAGS.group_size} "
            f"weights, the {FLAGS.int8_pages:.0%} of pages with the most Fisher information int8 "
            f"({time.perf_counter() - start:.1f} s)")
        session = Session(store, cli.method_options(FLAGS, data="synthetic"))
        with store.writer():
            if through:
                history = run_optimization(session, timings)
            run_evaluation(session, timings)
    execution = run_execution(store.dir, timings)
    start = stage(6, "report and plots")
    plots_made = run_plots(session, out, names)
    timings["report and plots"] = time.perf_counter() - start
    lines = report_lines(session, execution, timings, plots_made, out, history, steps)
    report_path = out / "report.md"
    report_path.write_text("\n".join(lines) + "\n")
    say("")
    say("\n".join(lines))
    say(f"\nwrote {report_path}; demo finished in {time.perf_counter() - wall:.1f} s")


if __name__ == "__main__":
    app.run(main_of(run))
