#!/usr/bin/env python3
"""The blob and the C runtime (runtime_c/): bytes per page dtype against the ten networks stored
separately, the Cortex-M4F build's flash and RAM, switch and inference time per task on this
host, and instructions per switch and inference under QEMU (mps2-an386, -icount shift=0).

The state has the ten paper networks in the layout of the faithful formation (BENCHMARKS.md,
"The method's settings": 128 shared pages of 512 weights and 104 exclusive pages) with random
values: sizes and times depend on the layout, not on the values.

  .venv/bin/python benchmarks/bench_runtime_c.py [-repeats=21] [-out=bench_out/runtime_c]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from absl import app, flags  # noqa: E402

from benchmarks.common import REPO, machine  # noqa: E402

flags.DEFINE_integer("repeats", 21, "repeats of each host timing (the median is reported)")
flags.DEFINE_string("out", "bench_out/runtime_c", "where the states and blobs are written (replaced)")
FLAGS = flags.FLAGS

RUNTIME = REPO / "runtime_c"
EXCLUSIVE = 104
DTYPES = ("float32", "int8", "int4")


def run(*args, cwd=None) -> str:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def qemu(elf: Path, cwd: Path, *args, icount=True) -> str:
    config = ",".join(["enable=on", "target=native", "arg=wsrun", *(f"arg={a}" for a in args)])
    return run("qemu-system-arm", "-M", "mps2-an386", *(["-icount", "shift=0"] if icount else []), "-nographic",
               "-monitor", "none", "-serial", "none", "-semihosting-config", config, "-kernel", elf, cwd=cwd)


def bench_rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in text.splitlines()[1:]}


def main(argv):
    del argv
    from weightsep.blob import blob_bytes
    from weightsep.store import Store, convert_state
    from weightsep.synthetic import random_state
    from weightsep.tasks import PAPER_TASKS

    out = REPO / FLAGS.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    states = {"float32": random_state(out / "float32", PAPER_TASKS, EXCLUSIVE).dir}
    for dtype in DTYPES[1:]:
        states[dtype] = convert_state(states["float32"], out / dtype, dtype).dir
    blobs = {}
    for dtype, state in states.items():
        blobs[dtype] = out / f"{dtype}.wsb"
        blobs[dtype].write_bytes(blob_bytes(Store(state).load()))
    store = Store(states["float32"]).load()
    weights = sum(rec.num_weights for rec in store.tasks)
    pages = sum(rec.num_pages for rec in store.tasks)
    # Each network alone in its own pages of S weights: float32; int8 with a float32 scale a page;
    # int4 with a float16 scale a group (the int4 format's group of S, no int8 pages).
    group = Store(states["int4"]).load().format.group(store.page_size)
    separate = {"float32": 4 * weights, "int8": weights + 4 * pages,
                "int4": pages * (store.page_size // 2 + 2 * (store.page_size // group))}

    lines = [f"Machine: {machine()}; load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}.", "",
             f"Blob of the ten networks: {store.num_pages} shared + {store.num_exclusive} exclusive pages of "
             f"{store.page_size} weights ({weights:,} weights in {pages} task pages).", "",
             "| page dtype | blob bytes | ten networks stored separately | smaller by | pages | tables + records + header |",
             "|---|---:|---:|---:|---:|---:|"]
    for dtype in DTYPES:
        data = blobs[dtype].read_bytes()
        size = len(data)
        meta = int.from_bytes(data[76:80], "little")  # the values offset: every section after it holds pages
        lines.append(f"| {dtype} | {size:,} | {separate[dtype]:,} | {separate[dtype] / size:.2f}x | "
                     f"{size - meta:,} | {meta:,} |")

    run("make", "-C", RUNTIME, "all")
    host = {dtype: bench_rows(run(RUNTIME / "build" / "wsrun", "bench", blobs[dtype], FLAGS.repeats))
            for dtype in DTYPES}
    lines += ["", f"Host (`wsrun bench`, -O2, scalar C, median of {FLAGS.repeats}; one switch timed as 1/1000 of "
                  f"1,000 switches):", "",
              "| task | " + " | ".join(f"switch {d} (us) | inference {d} (us)" for d in DTYPES) + " |",
              "|---|" + "---:|" * 2 * len(DTYPES)]
    for name in PAPER_TASKS:
        lines.append(f"| {name} | " + " | ".join(f"{float(host[d][name][0]):.3f} | {float(host[d][name][1]):.0f}"
                                                 for d in DTYPES) + " |")

    if shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc"):
        run("make", "-C", RUNTIME, "arm")
        elf = RUNTIME / "build" / "arm" / "wsrun.elf"
        lib = run("arm-none-eabi-size", RUNTIME / "build" / "arm" / "wsrt.o").splitlines()[1].split()
        whole = run("arm-none-eabi-size", elf).splitlines()[1].split()
        arena = {dtype: qemu(elf, out, "info", blobs[dtype].name, icount=False).splitlines()[2].split()[1]
                 for dtype in DTYPES}
        emulated = {dtype: bench_rows(qemu(elf, out, "bench", blobs[dtype].name, 3)) for dtype in DTYPES}
        stack = max(int(row[2]) for table in emulated.values() for row in table.values())
        lines += ["", "Cortex-M4F build (`make -C runtime_c arm`, arm-none-eabi-gcc -O2, `arm-none-eabi-size`):", "",
                  f"- library (`wsrt.o`): flash {lib[0]} bytes of code and constants, {lib[1]} data, {lib[2]} bss;",
                  f"- whole `wsrun` program with newlib and semihosting: text {whole[0]}, data {whole[1]}, "
                  f"bss {whole[2]} bytes;",
                  f"- RAM of the runtime: arena {int(arena['float32']):,} bytes (float32 blob) / "
                  f"{int(arena['int8']):,} (int8) / {int(arena['int4']):,} (int4) + stack of one inference {stack} bytes (measured by painting); "
                  f"the blob stays in flash.", "",
                  "Instructions under emulation (QEMU mps2-an386, `-icount shift=0`, SysTick: 40 instructions per "
                  "tick; instructions, not cycles), median of 3:", "",
                  "| task | " + " | ".join(f"switch {d} | inference {d}" for d in DTYPES) + " |",
                  "|---|" + "---:|" * 2 * len(DTYPES)]
        for name in PAPER_TASKS:
            lines.append(f"| {name} | " + " | ".join(f"{float(emulated[d][name][0]):,.0f} | "
                                                     f"{float(emulated[d][name][1]):,.0f}" for d in DTYPES) + " |")
    else:
        lines += ["", "(no arm-none-eabi-gcc / qemu-system-arm here: the Cortex-M figures are missing)"]
    lines.append(f"\nLoad average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}.")
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
