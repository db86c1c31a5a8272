#!/usr/bin/env python3
"""The method's settings compared on the ten synthetic tasks (BENCHMARKS.md, "Faithful by
default" and "Quantized weight-pages").

From the same ten pretrained networks, each configuration runs the demo's shortened schedule
(formation: add + 200 steps per task; optimization: 2 rounds x 10 passes x 32 steps; margin
0.25, as the demo) in a state of its own, and reports packing in weights and bytes, the mean
and worst accuracy change, the total matching cost of formation and the wall time:

  original        the defaults: the original's loss (batch softmax), selection (test split,
                  before the update), matching (PageAlloc greedy), float32 pages
  ours            -loss=per_example -select_on=validation
  ours+optimal    the same with -matching=optimal
  int8            the defaults with int8 pages (quantization-aware training)
  int4            the defaults with int4 pages (quantization-aware training)
  original+merge  float32 with -init=merge: each task's shared pages start from the Fisher-
                  weighted mean of its own and its occupants' values, not from the random pool
  int8-retrain    the demo's recipe for quantized pages: the defaults in float32 for formation and
  int4-retrain    all rounds but the last, then -mode=quantize and the last round trained through
                  the quantized pages (the same total schedule)
  int8-ptq        the "original" state converted to int8 afterwards (-mode=quantize: no retraining)
  int4-ptq        the same to int4

Then one round of the original's full schedule (10 passes x 32 steps of every task, then the
evaluation) on the "original" state, timed, and the whole paper schedule extrapolated from it.

  .venv/bin/python benchmarks/bench_method.py [-out=bench_out/method] [-configs=original,ours,...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from absl import app, flags  # noqa: E402

from benchmarks.common import TASKS, emit, machine, pretrained_tasks  # noqa: E402

CONFIGS = {
    "original": {},
    "ours": {"loss": "per_example", "select_on": "validation"},
    "ours+optimal": {"loss": "per_example", "select_on": "validation", "matching": "optimal"},
    "int8": {"page_dtype": "int8"},
    "int4": {"page_dtype": "int4"},
    "original+merge": {"init": "merge"},
    "int8-retrain": {"retrain": "int8"},
    "int4-retrain": {"retrain": "int4"},
    "int8-ptq": None,
    "int4-ptq": None,
}

flags.DEFINE_string("out", "bench_out/method", "working directory (networks and states)")
flags.DEFINE_list("configs", list(CONFIGS), "configurations to run (int*-ptq need original)")
flags.DEFINE_integer("pretrain_iter", 500, "pretraining steps of the synthetic networks")
flags.DEFINE_integer("formation_iter", 200, "steps per task after adding it")
flags.DEFINE_integer("rounds", 2, "optimization rounds")
flags.DEFINE_integer("passes", 10, "passes per round")
flags.DEFINE_integer("iter", 32, "steps per task per pass")
flags.DEFINE_float("margin", 0.25, "margin of the exclusive-page walk (the demo's)")
flags.DEFINE_bool("full_round", True, "also time one round of the full schedule")
flags.DEFINE_string("markdown", None, "also write the tables to this file")
FLAGS = flags.FLAGS


def summary(store, matching_cost: float, seconds: float) -> dict:
    from weightsep import report
    rows = report.task_rows(store)
    diffs = [100 * r["difference"] for r in rows]
    packing = report.packing(store)
    return {"weights": packing.ratio, "bytes": packing.byte_ratio, "packed_bytes": packing.packed_bytes,
            "mean": sum(diffs) / len(diffs), "worst": min(diffs), "cost": matching_cost, "seconds": seconds,
            "per_task": {r["task"]: 100 * r["difference"] for r in rows}}


def run_config(name: str, overrides: dict, folders: dict, out: Path) -> dict:
    import shutil
    from weightsep.pipeline import Options, Session, form_all, optimize_all, quantize_state
    from weightsep.store import Store
    from weightsep.tasks import load_task
    overrides = dict(overrides)
    retrain = overrides.pop("retrain", None)
    state = out / f"state_{name}"
    shutil.rmtree(state, ignore_errors=True)
    shutil.rmtree(out / f"state_{name}_q", ignore_errors=True)
    store = Store(state)
    options = Options(data="synthetic", margin=FLAGS.margin, **overrides)
    session = Session(store, options)
    start = time.perf_counter()
    quiet = lambda *_: None  # noqa: E731

    def progress(r, n, accs):
        print(f"  {name}: round {r}/{n}, mean accuracy {sum(accs.values()) / len(accs):.4f}", flush=True)

    float_rounds = FLAGS.rounds - 1 if retrain else FLAGS.rounds
    with store.writer():
        steps = form_all(session, [load_task(folders[t]) for t in TASKS], FLAGS.formation_iter, log=quiet)
        optimize_all(session, float_rounds, FLAGS.iter, FLAGS.passes, log=quiet, progress=progress)
    if retrain:
        quantize_state(state, out / f"state_{name}_q", retrain, options)
        store = Store(out / f"state_{name}_q").load()
        session = Session(store, Options(data="synthetic", margin=FLAGS.margin, page_dtype=retrain))
        with store.writer():
            optimize_all(session, 1, FLAGS.iter, FLAGS.passes, log=quiet, progress=progress)
    return summary(store, sum(s.added.matching_cost for s in steps), time.perf_counter() - start)


def run_ptq(dtype: str, out: Path) -> dict:
    import shutil
    from weightsep.pipeline import Options, quantize_state
    from weightsep.store import Store
    dest = out / f"state_{dtype}-ptq"
    shutil.rmtree(dest, ignore_errors=True)
    start = time.perf_counter()
    quantize_state(out / "state_original", dest, dtype, Options(data="synthetic"))
    return summary(Store(dest).load(), float("nan"), time.perf_counter() - start)


def full_round(out: Path) -> tuple[float, float]:
    """(seconds of one round of 10 passes x 32 steps + evaluation, seconds per 2000-step formation
    training of all ten tasks), measured on a copy of the "original" state."""
    import shutil
    from weightsep.pipeline import Options, Session, optimize_all, train_task
    from weightsep.store import Store
    state = out / "state_full_round"
    shutil.rmtree(state, ignore_errors=True)
    shutil.copytree(out / "state_original", state)
    session = Session(Store(state).load(), Options(data="synthetic", margin=FLAGS.margin))
    quiet = lambda *_: None  # noqa: E731
    with session.store.writer():
        for rec in session.store.tasks:  # compile every step once, untimed
            train_task(session, rec.name, 1, log=quiet)
        start = time.perf_counter()
        optimize_all(session, 1, 32, 10, log=quiet)
        round_seconds = time.perf_counter() - start
        start = time.perf_counter()
        for rec in session.store.tasks:
            train_task(session, rec.name, 200, log=quiet)
        formation_seconds = (time.perf_counter() - start) * 10
    return round_seconds, formation_seconds


def main(argv):
    del argv
    unknown = set(FLAGS.configs) - set(CONFIGS)
    if unknown:
        raise app.UsageError(f"unknown configurations {sorted(unknown)}; choose from {', '.join(CONFIGS)}")
    out = Path(FLAGS.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"Machine: {machine()}.",
             f"Schedule: pretrain {FLAGS.pretrain_iter} steps; formation + {FLAGS.formation_iter} steps; "
             f"{FLAGS.rounds} rounds x {FLAGS.passes} passes x {FLAGS.iter} steps; margin {FLAGS.margin}; seed 0.", ""]
    print(lines[0], flush=True)
    folders = pretrained_tasks(out / "networks", TASKS, FLAGS.pretrain_iter)
    results = {}
    for name in FLAGS.configs:
        print(f"{name} ...", flush=True)
        if CONFIGS[name] is None:
            results[name] = run_ptq(name.split("-")[0], out)
        else:
            results[name] = run_config(name, CONFIGS[name], folders, out)
        r = results[name]
        print(f"  {name}: {r['weights']:.2f}x weights, {r['bytes']:.1f}x bytes, mean {r['mean']:+.2f}, "
              f"worst {r['worst']:+.2f}, {r['seconds']:.0f} s", flush=True)
    lines += ["| configuration | packing (weights) | packing (bytes) | separated bytes | mean change (points) | "
              "worst change (points) | total matching cost | wall time (s) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        cost = "-" if r["cost"] != r["cost"] else f"{r['cost']:.4f}"
        lines.append(f"| {name} | {r['weights']:.2f}x | {r['bytes']:.1f}x | {r['packed_bytes']:,} | {r['mean']:+.2f} | "
                     f"{r['worst']:+.2f} | {cost} | {r['seconds']:.0f} |")
    lines += ["", "Per task (accuracy change in points):", "",
              "| configuration | " + " | ".join(TASKS) + " |", "|---|" + "---:|" * len(TASKS)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r['per_task'][t]:+.1f}" for t in TASKS) + " |")
    if FLAGS.full_round and "original" in results:
        round_seconds, formation_seconds = full_round(out)
        total = formation_seconds + 100 * round_seconds
        lines += ["", f"One round of the original's schedule (10 passes x 32 steps x 10 tasks, then 10 evaluations): "
                  f"{round_seconds:.0f} s. Formation training (2000 steps x 10 tasks, extrapolated from 200): "
                  f"{formation_seconds:.0f} s. The whole paper schedule (formation + 100 rounds) on this machine: "
                  f"about {total / 3600:.1f} h."]
    emit(lines, FLAGS.markdown)


if __name__ == "__main__":
    app.run(main)
