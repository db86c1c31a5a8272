#!/usr/bin/env python3
"""Quantization schemes of one separated float32 state, after training (BENCHMARKS.md, "int4 pages").

Each scheme converts the same float32 state (-mode=quantize's workflow, weightsep.pipeline.
quantize_state) and measures every task's test accuracy, against the float32 state's:

  int8            one float32 scale per page
  int4-mixed-P    int4 pages with float16 scales per G weights, the P% of pages with the most summed
                  Fisher information of their tasks stored as int8 (-int8_pages=P/100 -group_size=G)

Bytes count the pages as stored (values, scales, int8 pages' low nibbles, page kinds) and the page
tables (one uint16 per task page), as the packing line does.  The ratios are against the ten
networks stored separately: in float32 (4 bytes a weight), and in int4 (each network cut into
its own pages of S weights, stored with the int4 format's group scales, no int8 page, no table).

  .venv/bin/python benchmarks/bench_int4.py -state=demo_out/state [-out=bench_out/int4] [-markdown=F]
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from absl import app, flags  # noqa: E402

from benchmarks.common import machine  # noqa: E402

# name -> (page dtype, group size, share of int8 pages)
SCHEMES = {
    "int8": ("int8", None, 0.0),
    "int4, one scale per page": ("int4", 512, 0.0),
    "int4, groups of 128": ("int4", 128, 0.0),
    "int4, groups of 64": ("int4", 64, 0.0),
    "int4, groups of 32": ("int4", 32, 0.0),
    "int4 groups of 64 + 5% int8 pages": ("int4", 64, 0.05),
    "int4 groups of 64 + 10% int8 pages (default)": ("int4", 64, 0.10),
    "int4 groups of 128 + 10% int8 pages": ("int4", 128, 0.10),
    "int4 groups of 32 + 10% int8 pages": ("int4", 32, 0.10),
    "int4 groups of 64 + 20% int8 pages": ("int4", 64, 0.20),
}

flags.DEFINE_string("state", None, "the float32 separated state (e.g. the demo's demo_out/state)")
flags.DEFINE_string("out", "bench_out/int4", "where the converted states go (replaced)")
flags.DEFINE_list("schemes", list(SCHEMES), "schemes to run, by name")
flags.DEFINE_string("markdown", None, "also write the table to this file")
FLAGS = flags.FLAGS


def int4_networks_bytes(store) -> int:
    """The ten networks stored separately as int4 pages (S weights, group scales, no sharing)."""
    from weightsep.pageformat import page_format
    from weightsep.pages import num_pages
    fmt = page_format("int4")
    return sum(fmt.pages_bytes(num_pages(rec.num_weights, store.page_size), store.page_size) for rec in store.tasks)


def main(argv):
    del argv
    from weightsep.pipeline import Options, Session, evaluate_task, quantize_state
    from weightsep.report import packing
    from weightsep.store import Store
    if not FLAGS.state:
        raise app.UsageError("-state=... is required")
    source = Store(FLAGS.state).load()
    if source.page_dtype != "float32":
        raise app.UsageError(f"{FLAGS.state} holds {source.page_dtype} pages; give a float32 state")
    options = Options()
    session = Session(source, options)
    base = {rec.name: evaluate_task(session, rec.name) for rec in source.tasks}
    float_bytes = packing(source).network_bytes
    int4_bytes = int4_networks_bytes(source)
    out = Path(FLAGS.out)
    lines = [f"{machine()}", "",
             f"float32 state: {source.num_pages} pool + {source.num_exclusive} exclusive pages of {source.page_size} "
             f"weights, {len(source.tasks)} tasks; the ten networks take {float_bytes:,} bytes in float32, "
             f"{int4_bytes:,} as int4 networks stored separately; float32 separated state "
             f"{packing(source).packed_bytes:,} bytes ({float_bytes / packing(source).packed_bytes:.1f}x)", "",
             "| scheme | bytes | vs float32 nets | vs int4 nets | mean | worst | worst task |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name in FLAGS.schemes:
        dtype, group, share = SCHEMES[name]
        dest = out / name.replace(" ", "_").replace(",", "").replace("%", "pct").replace("(", "").replace(")", "")
        shutil.rmtree(dest, ignore_errors=True)
        start = time.perf_counter()
        opts = Options(group_size=group or 64, int8_pages=share)
        quantize_state(FLAGS.state, dest, dtype, opts)
        store = Store(dest).load()
        after = Session(store, options)
        diffs = {rec.name: 100 * (evaluate_task(after, rec.name) - base[rec.name]) for rec in store.tasks}
        worst = min(diffs, key=diffs.get)
        bytes_ = packing(store).packed_bytes
        row = (f"| {name} | {bytes_:,} | {float_bytes / bytes_:.1f}x | {int4_bytes / bytes_:.2f}x | "
               f"{sum(diffs.values()) / len(diffs):+.2f} | {diffs[worst]:+.1f} | {worst} |")
        lines.append(row)
        print(row, f"({time.perf_counter() - start:.0f} s)", flush=True)
    text = "\n".join(lines)
    print(text)
    if FLAGS.markdown:
        Path(FLAGS.markdown).write_text(text + "\n")


if __name__ == "__main__":
    app.run(main)
