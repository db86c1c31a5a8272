"""The persistent separated state: shared pool, exclusive store, per-task vectors and task registry.

One `Store` object is the state of one `-state_dir` (default: the current
directory); docs/FORMAT.md describes its files byte by byte.  In memory
`Store.shared` and `Store.exclusive` are always float32 [P, S] / [E, S] (dequantized
once at load, weightsep.pageformat), so every algorithm works unchanged;
`Store.quantized()` gives the stored arrays.  Every write of float values quantizes
the pages whose values change; the other pages keep their exact stored bytes, and
what `materialize` returns is exactly what is stored.  A quantized state also keeps
float32 master values of every page (`Store.master`, `Store.master_pages`): writes go
into the masters and the stored pages are re-derived from them, so training through
quantized pages loses neither small updates nor other tasks' values on shared pages.

A task's page table follows the original runtime encoding: entry e < P is shared
page e, entry e >= P is exclusive row e - P.  Occupation of the shared pages is
never stored; it is derived from the page tables (weightsep.pages).

The package, one concern per module: `registry` (schema, parsing, validation,
checksum), `files` (checked .npy reads, pending files, leftovers), `commit` (the
commit protocol and crash recovery), `lock` (the writer lock), `pagearrays` (page
arrays in memory and their rewrite), `state` (the Store facade and the task
operations), `convert` (a quantized copy of a state); this module names what
callers use.  Nothing in a state directory is ever run: a task's spec is data,
and no file can hold a pickle.
"""

from weightsep.limits import (EXCLUSIVE_FILE, EXCLUSIVE_SCALE_FILE, LOCK_FILE, REGISTRY_FILE, SHARED_FILE,
                              SHARED_SCALE_FILE)
from weightsep.store.convert import check_conversion, convert_state
from weightsep.store.registry import POOL_FILES, SCHEMA_VERSION, VECTOR_KINDS, TaskRecord
from weightsep.store.state import Store, StoredFiles

__all__ = ["Store", "TaskRecord", "StoredFiles", "check_conversion", "convert_state", "SCHEMA_VERSION",
           "VECTOR_KINDS", "POOL_FILES", "SHARED_FILE", "EXCLUSIVE_FILE", "SHARED_SCALE_FILE", "EXCLUSIVE_SCALE_FILE",
           "REGISTRY_FILE", "LOCK_FILE"]
