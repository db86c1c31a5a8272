"""Converting a float32 state into a quantized copy (-mode=quantize): one commit at the destination."""


from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from weightsep import atomic, pages
from weightsep.errors import StateError, WeightSepError
from weightsep.limits import DEFAULT_INT8_PAGES
from weightsep.pageformat import QUANTIZED_DTYPES, PageFormat, choose_int8_pages, page_format
from weightsep.store.pagearrays import stored_pages
from weightsep.store.registry import TaskRecord, parse_vector_rel, vector_rel
from weightsep.store.state import Store


def page_importance(records: list[TaskRecord], fisher: dict[str, np.ndarray], num_shared: int,
                    num_exclusive: int, page_size: int) -> np.ndarray:
    """float64 [P + E]: per page (pool, then exclusive rows), the summed Fisher information of
    every task on it (fisher: task name -> float32 [n])."""
    importance = np.zeros(num_shared + num_exclusive, np.float64)
    for record in records:
        np.add.at(importance, record.page_table, pages.page_sums(fisher[record.name], page_size))
    return importance


def check_conversion(source: Store, dest_dir: str | os.PathLike, page_dtype: str,
                     int8_pages: float = DEFAULT_INT8_PAGES, group_size: int | None = None) -> PageFormat:
    """The destination's page format; WeightSepError unless the loaded float32 state `source` can be
    converted to page_dtype into dest_dir (a new or empty directory outside the source, that can be
    created and written)."""
    if page_dtype not in QUANTIZED_DTYPES:
        raise WeightSepError(f"a state can be converted to {' or '.join(QUANTIZED_DTYPES)} pages, not {page_dtype!r}")
    source_path, dest_path = source.dir, Path(dest_dir)
    if source.page_dtype != "float32":
        raise StateError(f"{source.registry_path} holds {source.page_dtype} pages; only a float32 state "
                         f"can be converted (quantizing twice would add the errors of both)")
    try:
        fmt = page_format(page_dtype, group_size)
        fmt.check_page_size(source.page_size)
        if not 0.0 <= int8_pages <= 1.0:
            raise ValueError(f"-int8_pages={int8_pages!r} must lie in [0, 1]")
    except (ValueError, TypeError) as e:
        raise WeightSepError(f"{source_path} cannot be converted to {page_dtype}: {e}; convert it to int8 "
                             f"instead") from None
    atomic.check_dir_path(dest_path, "out_dir")
    src, dst = source_path.resolve(), dest_path.resolve()
    if dst == src or dst.is_relative_to(src):
        raise WeightSepError(f"the converted state must go to a new directory outside {source_path}, "
                             f"not {atomic.short_path(dest_path)}")
    if dest_path.exists() and any(dest_path.iterdir()):
        raise WeightSepError(f"{atomic.short_path(dest_path)} exists and is not an empty directory; choose a new "
                             f"directory for the converted state (an interrupted conversion leaves one without "
                             f"a registry: delete it)")
    return fmt


def convert_state(source_dir: str | os.PathLike, dest_dir: str | os.PathLike, page_dtype: str,
                  source: Optional[Store] = None, int8_pages: float = DEFAULT_INT8_PAGES,
                  group_size: int | None = None, masters: bool = True) -> Store:
    """A quantized copy of a float32 state in a new directory: one commit at the destination.

    Same page size, pool size, layout, tasks, ids, page tables, settings and vectors; the pool
    and the exclusive pages quantized to page_dtype ("int8" or "int4").  int4: at most group_size
    weights per scale, and the int8_pages share of all pages (pool and exclusive together) with the
    most summed Fisher information (each task's network_fisher) stored as int8 pages.  The source is only
    read (``source``: the state of source_dir, loaded already).  A task's "separated" accuracy
    was measured on the float32 pages, so the copy drops it (re-run -mode=e there).  dest_dir
    must pass check_conversion.  masters: keep the source's float32 values as the copy's master
    values (docs/FORMAT.md), so that training the copy starts from them.  A crash leaves the destination without a registry, or complete;
    a failure leaves no directory behind (writer).
    """
    dest_path = Path(dest_dir)
    if source is None:
        source = Store(source_dir).load()
    fmt = check_conversion(source, dest_path, page_dtype, int8_pages, group_size)
    # Everything is read (and verified) before anything is written.
    vectors = {rel: source.load_vector(*parse_vector_rel(rel)) for rel in source._reg.files
               if parse_vector_rel(rel) is not None}
    tasks = source.tasks
    for record in tasks:
        record.accuracy.pop("separated", None)
    P, E = source.num_pages, source.num_exclusive
    wide = None
    if fmt.grouped:
        fisher = {r.name: vectors[vector_rel(r.name, "network_fisher")] for r in tasks}
        wide = choose_int8_pages(page_importance(tasks, fisher, P, E, source.page_size), int8_pages)
    dest = Store(dest_path)
    with dest.writer():
        if dest.exists():
            raise StateError(f"a separated state appeared in {dest_path} meanwhile; choose a new directory")
        dest._commit(tasks=tasks, next_id=source._reg.next_id,
                     header={"page_size": source.page_size, "num_pages": source.num_pages,
                             "page_dtype": page_dtype, "group_size": fmt.group_size, "layout": source.layout},
                     new_pages={"shared": stored_pages(fmt, np.array(source.shared), None if wide is None else wide[:P],
                                                       masters=masters),
                                "exclusive": stored_pages(fmt, np.array(source.exclusive),
                                                          None if wide is None else wide[P:], masters=masters)},
                     vectors=vectors)
    return dest
