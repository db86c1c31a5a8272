"""Reports: the -mode=l listing, the paper's two tables (weights/memory per task and accuracy
before/after) in one, and the packing line in weights and in bytes.

Memory of the networks is counted as float32 weights x 4 bytes, 1 KB = 1024 bytes.  The
separated state counts every slot of the shared pool and of the exclusive pages (the padding
of a task's last page included, since that memory is really allocated), in its stored form:
float32, or int8 / int4 values plus one float32 scale per page (weightsep.pageformat), plus the
page tables as the microcontroller export stores them (one uint16 per task page)."""

from __future__ import annotations

import dataclasses

import numpy as np

from weightsep.pageformat import page_format
from weightsep.store import Store


@dataclasses.dataclass
class Packing:
    total_weights: int        # sum of the tasks' weights
    pool_weights: int         # P x S
    exclusive_weights: int    # E x S
    ratio: float              # total / (pool + exclusive)
    page_dtype: str = "float32"
    stored_bytes: int = 0     # bytes of the pool and exclusive pages as stored (quantized: + scales)
    table_bytes: int = 0      # the page tables, one uint16 per task page

    @property
    def packed_weights(self) -> int:
        return self.pool_weights + self.exclusive_weights

    @property
    def network_bytes(self) -> int:
        """The tasks' own networks in float32."""
        return 4 * self.total_weights

    @property
    def packed_bytes(self) -> int:
        return self.stored_bytes + self.table_bytes

    @property
    def byte_ratio(self) -> float:
        return self.network_bytes / self.packed_bytes if self.packed_bytes else 0.0

    def line(self) -> str:
        return (f"packing: {self.total_weights} weights -> {self.packed_weights} weights ({self.ratio:.2f}x); "
                f"{self.network_bytes:,} bytes -> {self.packed_bytes:,} bytes ({self.byte_ratio:.1f}x)")


TABLE_ENTRY_BYTES = 2


def packing(store: Store) -> Packing:
    total = sum(rec.num_weights for rec in store.tasks)
    pool = store.num_pages * store.page_size
    exclusive = int(store.exclusive.shape[0]) * store.page_size
    stored = store.quantized("shared").nbytes + store.quantized("exclusive").nbytes
    tables = TABLE_ENTRY_BYTES * sum(rec.num_pages for rec in store.tasks)
    return Packing(total, pool, exclusive, total / (pool + exclusive) if pool + exclusive else 0.0,
                   store.page_dtype, stored, tables)


def kb(weights: int) -> float:
    return weights * 4 / 1024


def _pct(value) -> str:
    return f"{100 * value:.2f}" if isinstance(value, (int, float)) else "-"


def task_rows(store: Store) -> list[dict]:
    """Per task: weights, memory, pages, exclusive pages, accuracies and their difference."""
    rows = []
    occupancy = store.occupation_counts()
    for rec in store.tasks:
        net_acc = rec.accuracy.get("network")
        sep_acc = rec.accuracy.get("separated")
        diff = (sep_acc - net_acc) if isinstance(net_acc, float) and isinstance(sep_acc, float) else None
        shared = rec.page_table[rec.page_table < store.num_pages]
        rows.append({
            "task": rec.name, "weights": rec.num_weights, "memory_kb": kb(rec.num_weights),
            "pages": rec.num_pages, "exclusive_pages": len(rec.exclusive_pages),
            "sharable_pages": rec.num_pages - len(rec.exclusive_pages),
            "max_sharing": int(occupancy[shared].max()) if len(shared) else 0,
            "network_accuracy": net_acc, "separated_accuracy": sep_acc, "difference": diff,
        })
    return rows


def markdown_table(store: Store) -> list[str]:
    """The paper's tables as one Markdown table, then totals and the packing line."""
    rows = task_rows(store)
    p = packing(store)
    lines = [
        "| DNN | weights | memory (KB) | pages | exclusive pages | network acc. (%) | separated acc. (%) | difference (points) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        diff = f"{100 * r['difference']:+.2f}" if r["difference"] is not None else "-"
        lines.append(f"| {r['task']} | {r['weights']:,} | {r['memory_kb']:.0f} | {r['pages']} | "
                     f"{r['exclusive_pages']} | {_pct(r['network_accuracy'])} | {_pct(r['separated_accuracy'])} | {diff} |")
    diffs = [r["difference"] for r in rows if r["difference"] is not None]
    mean_diff = f"{100 * sum(diffs) / len(diffs):+.2f}" if diffs else "-"
    lines.append(f"| Total | {p.total_weights:,} | {kb(p.total_weights):.0f} | "
                 f"{sum(r['pages'] for r in rows)} | {sum(r['exclusive_pages'] for r in rows)} | | | mean {mean_diff} |")
    lines.append(f"| Weight-separated (pool {store.num_pages} x {store.page_size} + "
                 f"{p.exclusive_weights // store.page_size} exclusive pages) | {p.packed_weights:,} | "
                 f"{p.packed_bytes / 1024:.0f} | | | | | |")
    lines += ["", p.line(),
              f"memory: the networks as float32 weights x 4 bytes, 1 KB = 1024 bytes; the separated state as "
              f"stored ({p.page_dtype} pages{_scales_note(p.page_dtype)}, "
              f"whole pages) + page tables (uint16 per task page)"]
    return lines


def listing(store: Store) -> list[str]:
    """-mode=l: the original's lines (its task lines, then its raw occupation table), then ours:
    the state's settings, training steps, an occupation histogram and the paper's tables."""
    S = store.page_size
    lines = ["[VNN list]"]
    for rec in store.tasks:
        real = [min(S, rec.num_weights - page * S) for page in rec.exclusive_pages]
        exclusive = int(sum(real))
        sharable = rec.num_pages - len(rec.exclusive_pages)
        lines.append(f"Name: {rec.name}, id: {rec.id}, path: {rec.network_path}, num_of_weight: {rec.num_weights} "
                     f"({rec.num_weights - exclusive}/{exclusive}), num_of_page: {rec.num_pages} "
                     f"({sharable}/{len(rec.exclusive_pages)})")
    lines += ["", f"[Weight page] total {store.num_pages} weight pages"]
    lines += original_table_text(original_page_table(store)).splitlines()
    lines += ["", f"state {store.dir}: {len(store.tasks)} tasks, pool {store.num_pages} pages x {S} weights "
                  f"({store.page_dtype}, {store.layout} layout), {store.num_exclusive} exclusive pages"]
    if store.tasks:
        lines.append("trained steps: " + ", ".join(f"{rec.name} {rec.settings.get('trained_steps', 0)}"
                                                   for rec in store.tasks))
    lines += occupation_histogram(store)
    lines.append("")
    return lines + markdown_table(store)


def original_page_table(store: Store) -> list[list[list[int]]]:
    """The original's occupation table (its weight_page_talbe): per shared page, one [task id, i]
    per task page on it, tasks in the order they were added, where i is the page's rank among the
    task's sharable pages (the original's index into its list of shared pages, not the task page)."""
    P = store.num_pages
    table: list[list[list[int]]] = [[] for _ in range(P)]
    for rec in store.tasks:
        on_pool = rec.page_table[rec.page_table < P]  # sharable pages, in ascending task-page order
        for rank, page in enumerate(on_pool):
            table[int(page)].append([rec.id, rank])
    return table


def original_table_text(table: list) -> str:
    """The table as the original's print() showed it: a Python list before any task was added,
    else the NumPy array np.save had made of it (an object array of lists when the pages hold
    different numbers of occupants, an int array when they all hold the same)."""
    if not any(table):
        return str(table)
    counts = {len(entry) for entry in table}
    if len(counts) == 1:
        return str(np.array(table))
    array = np.empty(len(table), dtype=object)
    for i, entry in enumerate(table):
        array[i] = entry
    return str(array)


def occupation_histogram(store: Store) -> list[str]:
    """How many shared pages hold 0, 1, 2 ... task pages."""
    counts = store.occupation_counts()
    lines = ["shared pages by number of occupants:"]
    for k in range(int(counts.max()) + 1 if len(counts) else 0):
        num = int((counts == k).sum())
        if num:
            lines.append(f"  {k:2d} tasks: {num:4d} pages {'#' * min(num, 60)}")
    return lines


def _scales_note(page_dtype: str) -> str:
    fmt = page_format(page_dtype)
    if fmt.grouped:
        return f" + {fmt.scale_dtype} group scales, int8 low nibbles and page kinds"
    return f" + one {fmt.scale_dtype} scale per page" if fmt.quantized else ""


def pretraining(steps: dict, iters: int) -> str:
    """How a run's networks were pretrained: ``iters`` steps per task, and the networks kept from
    an earlier run with their own step counts ({task: steps}, None where unknown)."""
    def count(n):
        return "steps unknown" if n is None else f"{n} step{'' if n == 1 else 's'}"
    kept = {name: n for name, n in steps.items() if n != iters}
    text = f"{count(iters)} per task"
    if kept:
        text += "; kept from an earlier run: " + ", ".join(f"{name} ({count(n)})" for name, n in kept.items())
    return text
