"""Shared set-up of the benchmarks: ten synthetic tasks with pretrained networks, machine name."""

from __future__ import annotations

import os
import platform
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def machine() -> str:
    """CPU model, usable cores and kernel (Linux), for the benchmark tables."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {usable} cores usable ({os.cpu_count()} online), {platform.system()} {platform.release()}"


def pretrained_tasks(root: Path, tasks, iters: int = 300, log=print) -> dict[str, Path]:
    """Copies of the task specs under root/, each pretrained on synthetic data (kept if present)."""
    from weightsep import data
    from weightsep.networks import Network, network_file, save_network
    from weightsep.tasks import load_task
    from weightsep.training import pretrain

    folders = {}
    for name in tasks:
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name / "task.py", folder / "task.py")
        task = load_task(folder)
        if not network_file(task).is_file():
            start = time.perf_counter()
            train = data.load_split(task, "train", "synthetic")
            val = data.load_split(task, "validation", "synthetic")
            net = Network(task)
            pretrain(net, train.x, train.y, val.x, val.y, iters, verbose=0)
            save_network(net)
            log(f"  pretrained {name} ({time.perf_counter() - start:.1f} s)")
        folders[name] = folder
    return folders


def median(values):
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])
