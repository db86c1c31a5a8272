#!/usr/bin/env python3
"""Task switching on the CPU: weight separation vs the full-reload baselines, for 3 and 10 tasks.

For each task count, a separated state of the first N paper tasks (synthetic data; built under
-out with short pretraining when missing, plus an int8 copy) runs the same -num_execution random
switches (same -seed) with each runtime, every switch followed by the task's inference:

  ws numpy         WSRuntime, gather=numpy (ws_execution.py's CPU default): the task's exclusive
                   rows read with pread from exclusive_weight_page.npy, then np.take of the pool
                   and those rows straight into the buffer the compiled inference reads
  ws op            WSRuntime, gather=op (the previous default): the same read, then one PageGather
                   custom-op call whose output the inference reads
  ws int8 numpy    the int8 copy of the state: int8 rows and their scales read, gathered and
                   dequantized with NumPy into the same kind of buffer
  base checkpoint  BaselineRuntime(checkpoint) (baseline_execution.py's default): a
                   tf.train.Checkpoint restore of the task's network (the original's saver.restore)
  base file        BaselineRuntime(file): model.load_weights of <task>/<task>.weights.h5
  base raw         BaselineRuntime(raw): one raw float32 read + one compiled split-and-assign

and the floor of the ws numpy switch at each switch's place (right after the previous task's
inference): the read of the task's exclusive bytes + one bare NumPy gather.  The whole sequence
is repeated -repeats times with the runtimes interleaved and their order rotated (so load from
other processes hits all of them alike); tables report medians over the repeats.  Paired
differences then come from one more pass per repeat that interleaves, at every position of the
sequence, a ws numpy switch + inference, a ws op switch + inference and the same task's inference
again with no switch (all three right after an inference), so load from elsewhere hits the three
alike: whether the inference after a switch that makes no TensorFlow call grows.

Then (-profile) where the 0.2-0.4 ms of the first TensorFlow call after an inference goes: the
same calls timed right after an inference, back to back, after a sweep of 256 MB of other data
(no inference), and 5 ms after an inference.

  .venv/bin/python benchmarks/bench_switch.py [-out=bench_out/switch] [-markdown=FILE]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import emit, machine, pretrained_tasks  # noqa: E402
from weightsep.tasks import PAPER_TASKS  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "bench_out/switch", "where the states live (built when missing): tasks/, state10/, state3/")
flags.DEFINE_list("task_counts", ["3", "10"], "states of the first N paper tasks to run")
flags.DEFINE_integer("pretrain_iter", 100, "pretraining steps per task when building the states")
flags.DEFINE_integer("num_execution", 50, "switches per run")
flags.DEFINE_integer("seed", 0, "seed of the task sequence")
flags.DEFINE_integer("repeats", 5, "runs of the whole sequence per runtime")
flags.DEFINE_bool("profile", True, "also time the first TensorFlow call after an inference in several conditions")
flags.DEFINE_string("markdown", None, "also write the result tables to this file")

WS = "ws numpy"


def build_states(out: Path, counts: list[int], iters: int) -> dict[int, Path]:
    """{N: state of the first N paper tasks}: each pretrained briefly on synthetic data and added with
    the original's defaults, no optimization (a switch's cost does not depend on the pool's values),
    and an int8 copy beside each (post-training quantization)."""
    from weightsep.pipeline import Options, Session, form_all
    from weightsep.store import Store, convert_state
    from weightsep.tasks import load_task

    folders = pretrained_tasks(out / "tasks", PAPER_TASKS[:max(counts)], iters)
    states = {}
    for count in counts:
        state = out / f"state{count}"
        store = Store(state)
        if not store.exists():
            with store.writer():
                form_all(Session(store, Options(data="synthetic")),
                         [load_task(folders[name]) for name in PAPER_TASKS[:count]], 0, log=lambda *_: None)
            print(f"built {state}", flush=True)
        if not Store(int8_of(state)).exists():
            convert_state(state, int8_of(state), "int8")
        states[count] = state
    return states


def int8_of(state: Path) -> Path:
    return state.parent / (state.name + "_int8")


def floor_run(ws, sequence) -> list[tuple[float, float]]:
    """The ws switch's floor at each switch of the sequence, in the switch's own conditions: taken
    right after the previous task's inference; the real switch and inference then follow, untimed."""
    parts = []
    for task in sequence:
        parts.append(ws.gather_floor(task))
        ws.switch(task)
        ws.execute(task)
    return parts


def paired_run(numpy_ws, op_ws, sequence) -> list[dict[str, tuple[float, float]]]:
    """At each position: {kind: (switch seconds, inference seconds)} for a ws numpy switch, a ws op
    switch and no switch (the task's inference again), interleaved in rotated order."""
    kinds = ["numpy", "op", "none"]
    rows = []
    for i, task in enumerate(sequence):
        row = {}
        for kind in kinds[i % 3:] + kinds[:i % 3]:
            ws = op_ws if kind == "op" else numpy_ws
            if kind == "none":
                ws.switch(task)
                ws.execute(task)
                row[kind] = (0.0, ws.execute(task)[1])
            else:
                row[kind] = (ws.switch(task), ws.execute(task)[1])
        rows.append(row)
    return rows


def med(values) -> float:
    return float(statistics.median(values))


def run_state(count: int, state: Path) -> tuple[list[str], dict]:
    """The runs on one state; returns (markdown lines, figures)."""
    from weightsep.baseline import BaselineRuntime
    from weightsep.runtime import WSRuntime, run_executions, task_sequence
    from weightsep.store import Store

    store = Store(state).load()
    num_weights = sum(r.num_weights for r in store.tasks)
    exclusive_rows, shared_pages, page_size = store.exclusive.shape[0], store.num_pages, store.page_size
    del store
    quiet = None
    runtimes = {
        WS: WSRuntime(state, device="cpu", gather="numpy", log=quiet),
        "ws op": WSRuntime(state, device="cpu", gather="op", log=quiet),
        "ws int8 numpy": WSRuntime(int8_of(state), device="cpu", gather="numpy", log=quiet),
        "base checkpoint": BaselineRuntime(state, baseline="checkpoint", device="cpu", log=quiet),
        "base file": BaselineRuntime(state, baseline="file", device="cpu", log=quiet),
        "base raw": BaselineRuntime(state, baseline="raw", device="cpu", log=quiet),
    }
    ws = runtimes[WS]
    sequence = task_sequence(ws.task_names, FLAGS.num_execution, FLAGS.seed)
    load_before = os.getloadavg()
    runs = {name: [] for name in runtimes}
    floors, pairs = [], []
    order = list(runtimes) + ["floor"]
    for repeat in range(FLAGS.repeats):
        for name in order[repeat % len(order):] + order[:repeat % len(order)]:  # rotate: no runtime always first
            if name == "floor":
                floors.append(floor_run(ws, sequence))
                pairs.extend(paired_run(ws, runtimes["ws op"], sequence))
            else:
                runs[name].append(run_executions(runtimes[name], FLAGS.num_execution, FLAGS.seed, log=None))
        print(f"{count} tasks: repeat {repeat + 1}/{FLAGS.repeats} done", flush=True)
    load_after = os.getloadavg()
    for runtime in runtimes.values():
        runtime.close()

    def figures(results):  # medians over repeats, in ms: total switch, median switch, total execution
        return (med(sum(r.load_seconds for r in run) for run in results) * 1e3,
                med(med(r.load_seconds for r in run) for run in results) * 1e3,
                med(sum(r.run_seconds for r in run) for run in results) * 1e3,
                med(sum(r.load_seconds + r.run_seconds for r in run) for run in results) * 1e3)

    table = {name: figures(results) for name, results in runs.items()}
    floor_total = med(sum(read + gather for read, gather in run) for run in floors) * 1e3
    floor_median = med(med(read + gather for read, gather in run) for run in floors) * 1e3
    read_median = med(med(read for read, _ in run) for run in floors) * 1e6
    gather_median = med(med(gather for _, gather in run) for run in floors) * 1e6

    def paired(a, b, part):  # a - b over the interleaved pass: median in us (part 1: inference, 2: both)
        value = (lambda t: t[1]) if part == 1 else (lambda t: t[0] + t[1])
        return med(value(row[a]) - value(row[b]) for row in pairs) * 1e6

    inference = {kind: med(row[kind][1] for row in pairs) * 1e3 for kind in ("numpy", "op", "none")}
    ws_total, ws_median = table[WS][0], table[WS][1]
    lines = [
        f"### {count} tasks",
        "",
        f"State: {count} tasks ({', '.join(PAPER_TASKS[:count])}), {num_weights:,} weights, {shared_pages} shared + "
        f"{exclusive_rows} exclusive pages of {page_size}. Sequence: {FLAGS.num_execution} switches, seed "
        f"{FLAGS.seed}; medians over {FLAGS.repeats} repeats. Load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after.",
        "",
        "| runtime | total switch (ms) | median switch (us) | x ws numpy (total / median) | total execution (ms) "
        "| switch + execution (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, (total, median, execution, both) in table.items():
        lines.append(f"| {name} | {total:.3f} | {median * 1e3:.1f} | {total / ws_total:.1f}x / "
                     f"{median / ws_median:.1f}x | {execution:.1f} | {both:.1f} |")
    lines.append(f"| ws numpy floor (read + bare np.take) | {floor_total:.3f} | {floor_median * 1e3:.1f} | "
                 f"{floor_total / ws_total:.2f}x / {floor_median / ws_median:.2f}x | - | - |")
    checkpoint, file = table["base checkpoint"], table["base file"]
    lines += [
        "",
        f"- The original's protocol (the paper's 52x: `saver.restore` vs the page loader): base checkpoint / "
        f"ws numpy = **{checkpoint[0] / ws_total:.1f}x** total, {checkpoint[1] / ws_median:.1f}x median.",
        f"- Ours before this change (PageGather op vs the Keras weights file): base file / ws op = "
        f"**{file[0] / table['ws op'][0]:.1f}x** total; base file / ws numpy = **{file[0] / ws_total:.1f}x** "
        f"total, {file[1] / ws_median:.1f}x median (target >= 100x); base checkpoint / ws op = "
        f"{checkpoint[0] / table['ws op'][0]:.1f}x.",
        f"- ws numpy switch / its floor: {ws_total / floor_total:.2f}x total, {ws_median / floor_median:.2f}x "
        f"median (floor parts, median per switch: read {read_median:.1f} us, np.take {gather_median:.1f} us). "
        f"ws op / ws numpy: {table['ws op'][0] / ws_total:.1f}x total.",
        f"- Switch + inference, interleaved pass ({len(pairs)} positions): median inference after a ws numpy "
        f"switch {inference['numpy']:.2f} ms, after a ws op switch {inference['op']:.2f} ms, with no switch "
        f"{inference['none']:.2f} ms. Paired medians: inference numpy - op {paired('numpy', 'op', 1):+.0f} us, "
        f"numpy - no switch {paired('numpy', 'none', 1):+.0f} us; switch + inference numpy - op "
        f"{paired('numpy', 'op', 2):+.0f} us. Totals of the timed runs above: {table[WS][3]:.1f} (ws numpy) vs "
        f"{table['ws op'][3]:.1f} ms (ws op).",
        "",
    ]
    return lines, {"ws": ws_total, "checkpoint": checkpoint[0], "file": file[0]}


def profile(state: Path) -> list[str]:
    """Where the first TensorFlow call after an inference spends its time: medians over 40 calls."""
    import numpy as np

    from weightsep.runtime import WSRuntime, task_sequence
    from weightsep.tf import tf

    numpy_ws = WSRuntime(state, device="cpu", gather="numpy", log=None)
    op_ws = WSRuntime(state, device="cpu", gather="op", log=None)
    sequence = task_sequence(numpy_ws.task_names, 40, FLAGS.seed + 1)
    small = tf.constant(np.zeros(10, np.float32))
    sweep = np.ones(256 * 2**20 // 4, np.float32)

    calls = {
        "eager tf.add of 10 floats": lambda task: small + 1.0,
        "PageGather op (read + call)": lambda task: op_ws.gather_floor(task),
        "NumPy gather (read + np.take)": lambda task: numpy_ws.gather_floor(task),
    }

    def after_inference(task):
        op_ws.switch(task)
        op_ws.execute(task)

    conditions = {
        "right after an inference": after_inference,
        "5 ms after an inference": lambda task: (after_inference(task), time.sleep(0.005)),
        "after a 256 MB data sweep, no inference": lambda task: sweep.__iadd__(1.0),
        "back to back (after the same call)": None,
    }
    rows = []
    for label, call in calls.items():
        cells = []
        for before in conditions.values():
            times = []
            for task in sequence:
                (before or call)(task)
                start = time.perf_counter()
                call(task)
                times.append(time.perf_counter() - start)
            cells.append(med(times) * 1e6)
        rows.append(f"| {label} | " + " | ".join(f"{cell:.0f}" for cell in cells) + " |")
    numpy_ws.close()
    op_ws.close()
    return ["### The first TensorFlow call after an inference",
            "",
            "Microseconds, median of 40 (10-task state; 'read' = the pread of the task's exclusive rows):",
            "",
            "| call | " + " | ".join(conditions) + " |",
            "|---|" + "---:|" * len(conditions),
            *rows,
            ""]


def main(argv):
    del argv
    from weightsep.tf import tf

    counts = sorted(int(c) for c in FLAGS.task_counts)
    if not counts or counts[0] < 1 or counts[-1] > len(PAPER_TASKS):
        raise app.UsageError(f"-task_counts must lie in 1..{len(PAPER_TASKS)}")
    states = build_states(Path(FLAGS.out), counts, FLAGS.pretrain_iter)
    lines = [f"Machine: {machine()}; TensorFlow {tf.__version__}; `uptime` load average at start: "
             f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}.", ""]
    for count in counts:
        lines += run_state(count, states[count])[0]
    if FLAGS.profile:
        lines += profile(states[counts[-1]])
    emit(lines, FLAGS.markdown)


if __name__ == "__main__":
    app.run(main)
