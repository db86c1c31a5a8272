#!/usr/bin/env python3
"""Scale-up of formation (BENCHMARKS.md, "Scale-up: many tasks, large networks").

How -mode=a's parts grow with the number of tasks in a state and with the size of the
networks. Every configuration runs the library's add workflow (pipeline.add_task, what -mode=a
runs) on synthetic tasks whose networks are saved untrained (formation's costs do not depend
on training), in a fresh process of its own (so that its peak memory is its own), once with
each matching method:

  tasks:    10, 30, 100 tasks of a 0.1M-weight network; the pool grown with them (the tasks'
            pages / 10: every shared page ends with 10 occupants, as the paper's ten tasks)
  networks: 3 tasks of 0.1M, 1M and 5M weights on a pool of one network's pages (the second
            task is matched on a level of 10,000 pages for 5M)

Recorded per add: Fisher, separation and matching time; per configuration: peak resident
memory and the time to load the formed state (Store.load, median of 3). Then the matching
alone on a 10,000-page level (random pages), against the pair by pair cost path of before on
smaller levels, and the cost gap of -matching=optimal's sparse approximation against the exact
assignment on a level exact can still do. A plot goes next to the tables (PNG, git-ignored).

  .venv/bin/python benchmarks/bench_scale.py [-out=bench_out/scale] [-tasks=10,30,100]
      [-sizes=0.1M,1M,5M] [-fisher_samples=10] [-level_pages=10000] [-gap_pages=3000]
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from absl import app, flags  # noqa: E402

from benchmarks.common import REPO, emit, machine, median  # noqa: E402

flags.DEFINE_string("out", "bench_out/scale", "working directory (states, results, plot)")
flags.DEFINE_list("tasks", ["10", "30", "100"], "numbers of tasks of the task sweep (0.1M-weight networks)")
flags.DEFINE_list("sizes", ["0.1M", "1M", "5M"], "networks of the size sweep (keys of NETWORKS)")
flags.DEFINE_integer("size_tasks", 3, "tasks per configuration of the size sweep")
flags.DEFINE_integer("fisher_samples", 10, "examples of each task's Fisher information (-fisher_samples)")
flags.DEFINE_integer("level_pages", 10000, "pages of the matching-alone level (task pages = pool pages)")
flags.DEFINE_integer("gap_pages", 3000, "pages of the level where the sparse optimal is compared with exact")
flags.DEFINE_string("markdown", None, "also write the tables to this file")
flags.DEFINE_string("child", None, "internal: run one configuration (JSON) and write its result to -result")
flags.DEFINE_string("result", None, "internal: where -child writes its result (JSON)")
FLAGS = flags.FLAGS

# The networks, as data: conv (kernel_h, kernel_w, filters) with 2x2 max-pool each, then dense.
NETWORKS = {
    "0.1M": dict(input_shape=(32, 32, 3), num_classes=10, conv=((5, 5, 32), (5, 5, 64)), dense=(32,)),
    "1M": dict(input_shape=(32, 32, 3), num_classes=10, conv=((3, 3, 64), (3, 3, 128)), dense=(192, 64)),
    "5M": dict(input_shape=(64, 64, 3), num_classes=10, conv=((3, 3, 64), (3, 3, 128), (3, 3, 256)),
               dense=(512, 128)),
}
PAGE_SIZE = 512
METHODS = ("greedy", "optimal")


# --- one configuration, in its own process ---------------------------------------------

def run_configuration(config: dict) -> dict:
    """Add config["tasks"] synthetic tasks of one network to a fresh state; the add workflow's
    timings per task, the peak memory and the formed state's load time."""
    from weightsep import data as datasets
    from weightsep.networks import Network, save_network
    from weightsep.pipeline import Options, Session, add_task
    from weightsep.store import Store
    from weightsep.tasks import TaskSpec

    root = Path(config["dir"])
    shutil.rmtree(root, ignore_errors=True)
    specs = []
    for i in range(config["tasks"]):
        spec = TaskSpec(name=f"syn{i:03d}", folder=root / "tasks" / f"syn{i:03d}", **NETWORKS[config["network"]])
        save_network(Network(spec))  # untrained: formation's costs do not depend on the values
        specs.append(spec)
    store = Store(root / "state")
    # All pages sharable (no exclusive pages), so that every page is matched: matching's worst case.
    session = Session(store, Options(page_size=PAGE_SIZE, num_pages=config["pool"], use_exclusive_page=False,
                                     matching=config["method"], fisher_samples=config["fisher_samples"],
                                     data="synthetic"))
    adds = []
    with store.writer():
        for spec in specs:
            start = time.perf_counter()
            result = add_task(session, spec, log=lambda *_: None)
            adds.append(dict(result.seconds, total=time.perf_counter() - start,
                             pages=int(result.record.num_pages)))
            datasets.clear_cache()  # the benchmark's own memory: no split is needed twice
    loads = []
    for _ in range(3):
        start = time.perf_counter()
        Store(root / "state").load()
        loads.append(time.perf_counter() - start)
    shutil.rmtree(root, ignore_errors=True)
    return dict(config, adds=adds, load_s=median(loads),
                peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def configuration(out: Path, network: str, tasks: int, method: str) -> dict:
    """Run one configuration in a fresh process; its result."""
    pages = math.ceil(_num_weights(network) / PAGE_SIZE)
    pool = pages if tasks <= 10 else math.ceil(tasks * pages / 10)
    config = dict(network=network, tasks=tasks, pool=pool, method=method, fisher_samples=FLAGS.fisher_samples,
                  dir=str(out / f"run_{network}_{tasks}_{method}"))
    result_file = out / f"result_{network}_{tasks}_{method}.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run([sys.executable, __file__, f"-child={json.dumps(config)}", f"-result={result_file}"],
                   env=env, check=True)
    return json.loads(result_file.read_text())


def _num_weights(network: str) -> int:
    from weightsep.tasks import TaskSpec, declared_num_weights
    return declared_num_weights(TaskSpec(name="count", **NETWORKS[network]))


# --- the matching alone ------------------------------------------------------------------

def random_level(k: int, seed: int = 0):
    """k task pages and a level of k shared pages of PAGE_SIZE, every page occupied once."""
    import numpy as np
    rng = np.random.default_rng(seed)
    f = rng.random((k, PAGE_SIZE), dtype=np.float32)
    w = rng.normal(scale=0.05, size=(k, PAGE_SIZE)).astype(np.float32)
    g = rng.random((k, PAGE_SIZE), dtype=np.float32)
    u = rng.normal(scale=0.05, size=(k, PAGE_SIZE)).astype(np.float32)
    return w, f, u, g, np.ones(k, np.int64)


def time_matching(k: int, method: str, **constants) -> tuple[float, float, float]:
    """(seconds, peak traced MiB, total cost) of match_pages on a random level of k pages, with
    matching's module constants set as given for the call."""
    import tracemalloc
    from weightsep import matching
    level = random_level(k)
    saved = {name: getattr(matching, name) for name in constants}
    for name, value in constants.items():
        setattr(matching, name, value)
    try:
        tracemalloc.start()
        start = time.perf_counter()
        result = matching.match_pages(*level, method)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
        tracemalloc.stop()
    finally:
        for name, value in saved.items():
            setattr(matching, name, value)
    return seconds, peak, result.total_cost


# --- report --------------------------------------------------------------------------------

def plot(path: Path, task_runs: list[dict], size_runs: list[dict], level: dict) -> None:
    """Four panels: per-add time of the parts against tasks in the state and against network
    size, peak memory, and the matching alone against level size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    for runs, ax, key, label in ((task_runs, axes[0], "tasks", "tasks in the state (0.1M weights each)"),
                                 (size_runs, axes[1], "weights", "weights per network (3 tasks)")):
        for method in METHODS:
            chosen = [r for r in runs if r["method"] == method]
            xs = [r["tasks"] if key == "tasks" else _num_weights(r["network"]) for r in chosen]
            ax.plot(xs, [r["matching_s"] for r in chosen], "o-", label=f"matching ({method}), last add")
        greedy = [r for r in runs if r["method"] == "greedy"]
        xs = [r["tasks"] if key == "tasks" else _num_weights(r["network"]) for r in greedy]
        for part in ("fisher", "separation", "load"):
            ax.plot(xs, [r[f"{part}_s"] for r in greedy], "s--", label=part if part != "load" else "state load")
        ax.set(xscale="log", yscale="log", xlabel=label, ylabel="seconds")
        ax.legend(fontsize=7)
    for runs, marker, label in ((task_runs, "o-", "tasks sweep"), (size_runs, "s-", "size sweep")):
        greedy = [r for r in runs if r["method"] == "greedy"]
        axes[2].plot(range(len(greedy)), [r["peak_rss_mib"] for r in greedy], marker, label=label)
        axes[2].set_xticks(range(len(greedy)), [f"{r['tasks']}x{r['network']}" for r in greedy], fontsize=7)
    axes[2].set(ylabel="peak resident memory (MiB)", title="peak memory (greedy runs)")
    axes[2].legend(fontsize=7)
    for method, points in level.items():
        axes[3].plot([p[0] for p in points], [p[1] for p in points], "o-", label=method)
    axes[3].set(xscale="log", yscale="log", xlabel="pages on the level", ylabel="seconds", title="matching alone")
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def summarize(run: dict) -> dict:
    """The last add's parts (the largest state), and sums over the adds."""
    last = run["adds"][-1]
    return dict(run, fisher_s=last["fisher"], separation_s=last["separation"], matching_s=last["matching"],
                matching_total_s=sum(a["matching"] for a in run["adds"]), add_s=last["total"],
                pages=last["pages"])


def main(argv):
    if FLAGS.child:
        result = run_configuration(json.loads(FLAGS.child))
        Path(FLAGS.result).write_text(json.dumps(result))
        return
    out = Path(FLAGS.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    lines = [f"machine: {machine()}", f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"]
    print(lines[0])

    task_runs = [summarize(configuration(out, "0.1M", int(t), m)) for t in FLAGS.tasks for m in METHODS]
    size_runs = [summarize(configuration(out, s, FLAGS.size_tasks, m)) for s in FLAGS.sizes for m in METHODS]
    lines += ["", "Formation (-mode=a's add workflow), the last add of each configuration (seconds):", "",
              "| tasks x network | pool pages | pages per task | matching | Fisher | separation | matching "
              "| matching, all adds | whole add | peak memory (MiB) | state load (s) |",
              "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in task_runs + size_runs:
        lines.append(f"| {r['tasks']} x {r['network']} | {r['pool']} | {r['pages']} | {r['method']} | "
                     f"{r['fisher_s']:.2f} | {r['separation_s']:.4f} | {r['matching_s']:.3f} | "
                     f"{r['matching_total_s']:.2f} | {r['add_s']:.2f} | {r['peak_rss_mib']:.0f} | {r['load_s']:.4f} |")

    level = {m: [] for m in ("greedy", "optimal", "greedy, pair by pair (before)")}
    lines += ["", f"Matching alone, one level of k task pages on k shared pages of {PAGE_SIZE} (seconds; "
              "peak traced NumPy memory):", "", "| k | method | seconds | peak (MiB) | total cost |",
              "|---:|---|---:|---:|---:|"]
    for k in sorted({1000, 3000, FLAGS.level_pages}):
        for method in METHODS:
            seconds, peak, cost = time_matching(k, method)
            level[method].append((k, seconds))
            lines.append(f"| {k} | {method} | {seconds:.2f} | {peak:.0f} | {cost:.4f} |")
    for k in (500, 1000):  # the code of before: every pair summed element by element
        seconds, peak, cost = time_matching(k, "greedy", PAIRWISE_MAX_PAIRS=10 ** 12)
        level["greedy, pair by pair (before)"].append((k, seconds))
        lines.append(f"| {k} | greedy, pair by pair (before) | {seconds:.2f} | {peak:.0f} | {cost:.4f} |")

    from weightsep import matching
    k = FLAGS.gap_pages
    exact = time_matching(k, "optimal")
    sparse = time_matching(k, "optimal", OPTIMAL_EXACT_MAX_PAIRS=0)
    greedy = time_matching(k, "greedy")
    lines += ["", f"Optimal's sparse approximation against the exact assignment on a {k}-page level "
              f"({matching.OPTIMAL_CANDIDATES} candidates per page + the greedy's):", "",
              "| method | seconds | total cost | above exact |", "|---|---:|---:|---:|"]
    for label, (seconds, _, cost) in (("exact (linear_sum_assignment)", exact), ("sparse (above the bound)", sparse),
                                      ("greedy", greedy)):
        lines.append(f"| {label} | {seconds:.2f} | {cost:.4f} | {100 * (cost / exact[2] - 1):+.3f}% |")

    png = out / "scale.png"
    plot(png, task_runs, size_runs, level)
    lines += ["", f"plot: {png}", f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
              f"benchmark wall time: {time.perf_counter() - started:.0f} s"]
    emit(lines, FLAGS.markdown)


if __name__ == "__main__":
    app.run(main)
