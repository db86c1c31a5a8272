#!/usr/bin/env python3
"""Task switching on the CPU: weight separation vs the full-reload baselines.

On a separated state of all ten tasks (synthetic data; built in -state_dir with
short pretraining when missing), runs the same -num_execution random switches
(same -seed) with:

  ws        WSRuntime, exclusive pages read from exclusive_weight_page.npy (pread)
  ws host   WSRuntime, exclusive pages in host RAM
  ws int8   WSRuntime on an int8 copy of the state (post-training quantized), exclusive int8 rows
            and their scales read from disk, one PageGatherQuantized call
  file      BaselineRuntime(file): model.load_weights of <task>/<task>.weights.h5 (the paper's baseline)
  raw       BaselineRuntime(raw): one raw float32 read + one compiled split-and-assign

and, in the same run, the WS floor of each switch: reading the task's exclusive
bytes from the file + one bare PageGather call, taken at the switch's place in the
sequence (after the previous task's execution).  The whole sequence is repeated
-repeats times with the runtimes interleaved and their order rotated (so load
from other processes hits all of them alike); the table reports medians over the
repeats.

  .venv/bin/python benchmarks/bench_switch.py -state_dir=out/bench_switch/state
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
flags.DEFINE_string("state_dir", "out/bench_switch/state", "the 10-task state (built here when missing)")
flags.DEFINE_string("tasks_dir", None, "copies of the task folders with their networks (default: next to the state)")
flags.DEFINE_integer("pretrain_iter", 100, "pretraining steps per task when building the state")
flags.DEFINE_integer("num_execution", 50, "switches per run")
flags.DEFINE_integer("seed", 0, "seed of the task sequence")
flags.DEFINE_integer("repeats", 5, "runs of the whole sequence per runtime")
flags.DEFINE_enum("device", "cpu", ["auto", "cpu", "gpu"], "device of the runtimes")
flags.DEFINE_string("markdown", None, "also write the result table to this file")


def build_state(state_dir: Path, tasks_dir: Path, iters: int) -> None:
    """Pretrain the ten tasks briefly on synthetic data and add them (the original's method otherwise),
    then an int8 copy of the state beside it (post-training quantization)."""
    from weightsep.pipeline import Options, Session, form_all
    from weightsep.store import Store, convert_state
    from weightsep.tasks import load_task

    store = Store(state_dir)
    if not store.exists():
        folders = pretrained_tasks(tasks_dir, PAPER_TASKS, iters)
        with store.writer():
            form_all(Session(store, Options(data="synthetic")), [load_task(folders[n]) for n in PAPER_TASKS], 0,
                     log=lambda *_: None,
                     progress=lambda i, n, step: print(f"added {step.added.record.name}: "
                                                       f"{len(step.added.record.exclusive_pages)} exclusive pages",
                                                       flush=True))
    int8 = state_dir.parent / (state_dir.name + "_int8")
    if not Store(int8).exists():
        convert_state(state_dir, int8, "int8")


def floor_run(ws, sequence) -> list[tuple[float, float]]:
    """The WS floor at each switch of the sequence, in the switch's own conditions.

    Each floor is taken where the switch would be, right after the previous task's
    execution (which leaves the caches and TensorFlow's threads in the state the
    switch meets); the real switch and execution then follow, untimed.
    """
    parts = []
    for task in sequence:
        parts.append(ws.gather_floor(task))
        ws.switch(task)
        ws.execute(task)
    return parts


def read_methods(ws, sequence, reps: int = 20) -> tuple[float, float]:
    """Median seconds to bring in a task's exclusive rows: (pread as the runtime does, memory-map + take)."""
    import numpy as np
    reader = ws._readers[0]
    mapped = np.load(reader.path, mmap_mode="r")
    pread, mmap = [], []
    for _ in range(reps):
        for task in sequence:
            slot = ws._slots[task]
            start = time.perf_counter()
            reader.read(slot.runs[0], slot.buffers[0])
            pread.append(time.perf_counter() - start)
            start = time.perf_counter()
            np.take(mapped, slot.rows, axis=0, out=slot.buffers[0])
            mmap.append(time.perf_counter() - start)
    return med(pread), med(mmap)


def med(values) -> float:
    return statistics.median(values)


def main(argv):
    del argv
    state_dir = Path(FLAGS.state_dir)
    tasks_dir = Path(FLAGS.tasks_dir) if FLAGS.tasks_dir else state_dir.parent / "tasks"
    build_state(state_dir, tasks_dir, FLAGS.pretrain_iter)

    from weightsep.baseline import BaselineRuntime
    from weightsep.runtime import WSRuntime, run_executions, task_sequence
    from weightsep.store import Store
    from weightsep.tf import tf

    store = Store(state_dir).load()
    num_weights = sum(r.num_weights for r in store.tasks)
    exclusive_rows = store.exclusive.shape[0]
    del store
    quiet = None
    runtimes = {
        "ws (disk)": WSRuntime(state_dir, device=FLAGS.device, secondary="disk", log=quiet),
        "ws (host)": WSRuntime(state_dir, device=FLAGS.device, secondary="host", log=quiet),
        "ws int8 (disk)": WSRuntime(state_dir.parent / (state_dir.name + "_int8"), device=FLAGS.device,
                                    secondary="disk", log=quiet),
        "baseline file": BaselineRuntime(state_dir, baseline="file", device=FLAGS.device, log=quiet),
        "baseline raw": BaselineRuntime(state_dir, baseline="raw", device=FLAGS.device, log=quiet),
    }
    ws = runtimes["ws (disk)"]
    sequence = task_sequence(ws.task_names, FLAGS.num_execution, FLAGS.seed)
    load_before = os.getloadavg()
    runs = {name: [] for name in runtimes}
    floors, hot_floors = [], []
    order = list(runtimes) + ["floor"]
    for repeat in range(FLAGS.repeats):
        for name in order[repeat % len(order):] + order[:repeat % len(order)]:  # rotate: no runtime always first
            if name == "floor":
                floors.append(floor_run(ws, sequence))
            else:
                runs[name].append(run_executions(runtimes[name], FLAGS.num_execution, FLAGS.seed, log=None))
        hot_floors.append([ws.gather_floor(task) for task in sequence])
        print(f"repeat {repeat + 1}/{FLAGS.repeats} done", flush=True)
    load_after = os.getloadavg()
    pread_s, mmap_s = read_methods(ws, sequence)

    def totals(results):  # per repeat: (total switch, median switch, total execution) in ms
        return ([sum(r.load_seconds for r in run) * 1e3 for run in results],
                [med(r.load_seconds for r in run) * 1e3 for run in results],
                [sum(r.run_seconds for r in run) * 1e3 for run in results])

    table = {name: totals(results) for name, results in runs.items()}
    floor_total = [sum(read + gather for read, gather in run) * 1e3 for run in floors]
    floor_median = [med(read + gather for read, gather in run) * 1e3 for run in floors]
    read_median = [med(read for read, _ in run) * 1e3 for run in floors]
    gather_median = [med(gather for _, gather in run) * 1e3 for run in floors]
    hot_median = [med(read + gather for read, gather in run) * 1e3 for run in hot_floors]
    ws_total = med(table["ws (disk)"][0])
    ws_median = med(table["ws (disk)"][1])

    lines = [
        f"Machine: {machine()}; TensorFlow {tf.__version__}; device {ws.device}; gather: {ws.gather_kind}.",
        f"State: {len(ws.task_names)} tasks, {num_weights} weights, {ws.num_shared} shared pages + "
        f"{exclusive_rows} exclusive pages of {ws.page_size}. Sequence: {FLAGS.num_execution} switches, seed {FLAGS.seed}; "
        f"medians over {FLAGS.repeats} repeats. Load average {load_before[0]:.1f} before, {load_after[0]:.1f} after.",
        "",
        "| runtime | total switch (ms) | median switch (ms) | total / ws | median / ws | total execution (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, (total, median, execution) in table.items():
        lines.append(f"| {name} | {med(total):.3f} | {med(median):.4f} | {med(total) / ws_total:.1f}x | "
                     f"{med(median) / ws_median:.1f}x | {med(execution):.1f} |")
    lines.append(f"| ws floor (read + 1 PageGather) | {med(floor_total):.3f} | {med(floor_median):.4f} | "
                 f"{med(floor_total) / ws_total:.2f}x | {med(floor_median) / ws_median:.2f}x | - |")
    lines += [
        "",
        f"WS floor parts (median per switch): read of the exclusive rows {med(read_median) * 1e3:.1f} us, "
        f"PageGather {med(gather_median) * 1e3:.1f} us. WS switch / floor: total "
        f"{ws_total / med(floor_total):.2f}x, median {ws_median / med(floor_median):.2f}x. "
        f"The same floor taken back to back (caches hot, no execution in between): "
        f"{med(hot_median) * 1e3:.1f} us median. Bringing in a task's rows (median over the sequence, "
        f"back to back): os.preadv {pread_s * 1e6:.1f} us, memory map + np.take {mmap_s * 1e6:.1f} us.",
        f"Speed-up of the switch over the paper's baseline (file): total "
        f"{med(table['baseline file'][0]) / ws_total:.1f}x, median "
        f"{med(table['baseline file'][1]) / ws_median:.1f}x (target >= 50x); over raw: total "
        f"{med(table['baseline raw'][0]) / ws_total:.1f}x.",
        f"Execution (inference) time, ws (disk) / baseline raw (same weights): "
        f"{med(table['ws (disk)'][2]) / med(table['baseline raw'][2]):.2f}; / baseline file: "
        f"{med(table['ws (disk)'][2]) / med(table['baseline file'][2]):.2f}.",
    ]
    for runtime in runtimes.values():
        runtime.close()
    emit(lines, FLAGS.markdown)


if __name__ == "__main__":
    app.run(main)
