"""Shared set-up of the benchmarks: ten synthetic tasks with pretrained networks, the machine's
name (CPU model and vector extensions: timings differ several-fold between AVX2 and AVX-512
machines of the same kind), medians."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TASKS = ("cifar10", "mnist", "fmnist", "gtsrb", "svhn", "obs", "gsc", "esc10", "us8k", "hhar")
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile")


def machine() -> str:
    """CPU model, its vector extensions, usable cores and kernel (Linux), for the benchmark tables."""
    model, found = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not found:
                flags = set(line.split(":", 1)[1].split())
                found = [f for f in VECTOR_FLAGS if f in flags]
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return (f"{model} ({' '.join(found) or 'vector extensions unknown'}"
            f"{f'; ONEDNN_MAX_CPU_ISA={isa}' if isa else ''}), {usable} cores usable ({os.cpu_count()} online), "
            f"{platform.system()} {platform.release()}")


def pretrained_tasks(root: Path, tasks=TASKS, iters: int = 500, seed: int = 0, log=print) -> dict[str, Path]:
    """Copies of the task specs under root/, each pretrained on synthetic data (kept if present)."""
    from weightsep.networks import network_file
    from weightsep.tasks import copy_spec, load_task
    from weightsep.training import pretrain_task

    folders = {}
    for name in tasks:
        folder = copy_spec(name, root)
        spec = load_task(folder)
        if not network_file(spec).is_file():
            start = time.perf_counter()
            pretrain_task(spec, "synthetic", seed, iters, verbose=0)
            log(f"  pretrained {name} ({time.perf_counter() - start:.1f} s)")
        folders[name] = folder
    return folders


def emit(lines: list[str], markdown: str | None) -> None:
    """Print a benchmark's result lines, and write them to ``markdown`` when given."""
    text = "\n".join(lines)
    print(text)
    if markdown:
        Path(markdown).write_text(text + "\n")


def median(values) -> float:
    return float(statistics.median(values))
