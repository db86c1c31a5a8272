"""Reports: the paper's two tables (weights/memory per task and accuracy before/after)
in one, and the packing line.  Memory is counted as float32 weights x 4 bytes,
1 KB = 1024 bytes; the shared pool and exclusive pages count every slot (padding of a
task's last page included, since that memory is really allocated)."""

from __future__ import annotations

import dataclasses

from weightsep.store import Store


@dataclasses.dataclass
class Packing:
    total_weights: int        # sum of the tasks' weights
    pool_weights: int         # P x S
    exclusive_weights: int    # E x S
    ratio: float              # total / (pool + exclusive)

    @property
    def packed_weights(self) -> int:
        return self.pool_weights + self.exclusive_weights

    def line(self) -> str:
        return (f"packing: {self.total_weights} weights -> {self.packed_weights} weights "
                f"({self.ratio:.2f}x)")


def packing(store: Store) -> Packing:
    total = sum(rec.num_weights for rec in store.tasks)
    pool = store.num_pages * store.page_size
    exclusive = int(store.exclusive.shape[0]) * store.page_size
    return Packing(total, pool, exclusive, total / (pool + exclusive) if pool + exclusive else 0.0)


def kb(weights: int) -> float:
    return weights * 4 / 1024


def _pct(value) -> str:
    return f"{100 * value:.2f}" if isinstance(value, (int, float)) else "-"


def task_rows(store: Store) -> list[dict]:
    """Per task: weights, memory, pages, exclusive pages, accuracies and their difference."""
    rows = []
    occupancy = store.occupation()
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
        "| DNN | weights | memory (KB) | pages | exclusive pages | network acc. (%) | separated acc. (%) | difference (%) |",
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
                 f"{kb(p.packed_weights):.0f} | | | | | |")
    lines += ["", p.line(),
              "memory: float32 weights x 4 bytes, 1 KB = 1024 bytes; pool and exclusive pages count whole pages"]
    return lines


def occupation_histogram(store: Store) -> list[str]:
    """How many shared pages hold 0, 1, 2 ... task pages."""
    counts = store.occupation()
    lines = ["shared pages by number of occupants:"]
    for k in range(int(counts.max()) + 1 if len(counts) else 0):
        num = int((counts == k).sum())
        if num:
            lines.append(f"  {k:2d} tasks: {num:4d} pages {'#' * min(num, 60)}")
    return lines
