"""The registry of a state: its JSON schema, strict parsing, validation and checksum.

The registry (weightsep_state.json, schema version SCHEMA_VERSION) is the commit
record of a state: the state-wide fields (page size, pool size, page dtype, layout),
the tasks (TaskRecord: page table, exclusive pages, spec as data, settings,
accuracy), the dtype, shape and SHA-256 of every array file, the files a commit
dropped, and a checksum (SHA-256 of the canonical encoding of everything else), so
that a hand edit is an error rather than a silently different state.  This module
turns bytes into a validated `Registry` and back; it reads no array.  The schema is
written down in docs/FORMAT.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Optional

import numpy as np

from weightsep import atomic, pages
from weightsep.errors import StateError, WeightSepError, is_int, shown
from weightsep.limits import (EXCLUSIVE_BITS_FILE, EXCLUSIVE_FILE, EXCLUSIVE_MASTER_FILE, EXCLUSIVE_SCALE_FILE,
                              EXCLUSIVE_WIDE_FILE, LOCK_FILE, SHARED_MASTER_FILE, MAX_NUM_PAGES, MAX_PAGE_SIZE, MAX_POOL_WEIGHTS, MAX_WEIGHTS, REGISTRY_FILE,
                              SHARED_BITS_FILE, SHARED_FILE, SHARED_SCALE_FILE, SHARED_WIDE_FILE)
from weightsep.pageformat import PAGE_DTYPES, page_format
from weightsep.store.files import one_line, open_regular
from weightsep.tasks import TaskSpec, check_task_name

SCHEMA_VERSION = 3
# Version 2 differs only in int4 states (one float32 scale per page, no group_size key): its float32
# and int8 states load unchanged (group_size 0); its int4 states are refused (convert again).
OLD_SCHEMA_VERSIONS = (2,)
VECTOR_KINDS = ("network_weight", "network_fisher", "weight", "fisher")
REQUIRED_VECTORS = ("network_weight", "network_fisher")
LAYOUTS = ("natural", "transposed")
# (values, scales, wide, bits) files of the two page arrays, as weightsep.pageformat.Encoded.
POOL_FILES = {"shared": (SHARED_FILE, SHARED_SCALE_FILE, SHARED_WIDE_FILE, SHARED_BITS_FILE),
              "exclusive": (EXCLUSIVE_FILE, EXCLUSIVE_SCALE_FILE, EXCLUSIVE_WIDE_FILE, EXCLUSIVE_BITS_FILE)}
# Quantized states: the float32 master values of every page (what training starts from and what the
# stored pages are re-derived from at each commit); never part of what a device reads.
MASTER_FILES = {"shared": SHARED_MASTER_FILE, "exclusive": EXCLUSIVE_MASTER_FILE}
TOP_FILES = (*POOL_FILES["shared"], *POOL_FILES["exclusive"], *MASTER_FILES.values(), REGISTRY_FILE, LOCK_FILE)

# Bounds of the registry itself, so that no state can ask for absurd memory.
MAX_DIM = 1 << 30                     # any one dimension of a recorded array
MAX_TABLE_ENTRY = (1 << 31) - 1       # page-table entries are int32
MAX_REGISTRY_BYTES = 64 << 20
MAX_NETWORK_PATH = 4096

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_VECTOR_REL = re.compile(r"^([^/]+)/([^/]+)\.npy$")
_REGISTRY_KEYS = ("schema_version", "generation", "page_size", "num_pages", "page_dtype", "group_size", "layout",
                  "next_id", "files", "obsolete", "tasks")
_TASK_KEYS = ("name", "id", "num_weights", "page_table", "exclusive_pages", "network_path", "spec",
              "settings", "accuracy")
_ENTRY_KEYS = ("dtype", "shape", "sha256")


@dataclasses.dataclass(eq=False)
class TaskRecord:
    """One task in the registry.

    page_table: int32[n_p], n_p = ceil(num_weights / page_size); entry e < P is
    shared page e, e >= P is exclusive row e - P.  exclusive_pages lists the task
    page indices that are exclusive; for add_task their table entries are filled
    in by the store.  spec: the task spec as JSON data (TaskSpec.to_json()).
    network_path: the folder the task was added from (where its network file and
    data live); information only, never imported.  id is the registration order,
    assigned by the store.
    """

    name: str
    num_weights: int
    page_table: np.ndarray
    exclusive_pages: list[int]
    spec: dict
    id: int = -1
    network_path: str = ""
    settings: dict = dataclasses.field(default_factory=dict)
    accuracy: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.page_table = np.asarray(self.page_table, dtype=np.int32)
        self.exclusive_pages = [int(i) for i in self.exclusive_pages]

    @property
    def num_pages(self) -> int:
        return len(self.page_table)

    def task_spec(self) -> TaskSpec:
        """The recorded spec as a TaskSpec whose files live in network_path (custom models: no build_model)."""
        return TaskSpec.from_json(self.spec, folder=self.network_path or None)

    def runnable_spec(self, given: TaskSpec | None = None) -> TaskSpec:
        """The spec to build the task's network from: ``given`` (from a folder the user named,
        which must describe the recorded task), else the recorded one, which must not need code."""
        if given is not None:
            if given.to_json() != self.spec:
                raise WeightSepError(f"{given.folder}/task.py does not describe the task {self.name} recorded in "
                                     f"the state; pass the folder it was added from, or remove and re-add it")
            return given
        spec = self.task_spec()
        if spec.custom_model:
            raise WeightSepError(f"task {self.name} has a custom build_model(), which the state cannot hold as "
                                 f"data; name its folder with -network_path=<folder> (its code then runs)")
        return spec

    def __eq__(self, other) -> bool:
        if not isinstance(other, TaskRecord):
            return NotImplemented
        return (self.name == other.name and self.id == other.id
                and self.num_weights == other.num_weights
                and np.array_equal(self.page_table, other.page_table)
                and self.exclusive_pages == other.exclusive_pages
                and self.spec == other.spec and self.network_path == other.network_path
                and self.settings == other.settings and self.accuracy == other.accuracy)

    def to_json(self) -> dict:
        return {"name": self.name, "id": self.id, "num_weights": self.num_weights,
                "page_table": [int(e) for e in self.page_table],
                "exclusive_pages": list(self.exclusive_pages),
                "network_path": self.network_path, "spec": self.spec,
                "settings": self.settings, "accuracy": self.accuracy}


class Invalid(Exception):
    """A consistency problem; callers add the file and the fix."""


@dataclasses.dataclass
class Registry:
    """A parsed, validated registry."""

    page_size: int
    num_pages: int
    page_dtype: str
    layout: str
    group_size: int  # int4: at most this many weights per scale (weightsep.pageformat); else 0
    generation: int
    next_id: int
    files: dict
    obsolete: dict
    tasks: list
    num_exclusive: int
    checksum: str = ""  # the registry's checksum: it names the state's content at this generation

    @property
    def masters(self) -> bool:
        """Whether the state keeps float32 master values beside its quantized pages."""
        return SHARED_MASTER_FILE in self.files


def start_over(state_dir: Path) -> str:
    """The fix of a corrupt state."""
    return f"restore {state_dir} from a backup, or delete it and re-run -mode=a for each task to start over"


# ---- encodings ---------------------------------------------------------------------

def entry_of(array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array)
    return {"dtype": str(array.dtype), "shape": list(array.shape),
            "sha256": hashlib.sha256(array.data).hexdigest()}


def _canonical(data: dict) -> bytes:
    """The registry's canonical encoding: sorted keys, no spaces, ASCII, finite numbers."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def checksum(data: dict) -> str:
    return hashlib.sha256(_canonical(data)).hexdigest()


def encode_registry(data: dict) -> bytes:
    """The registry file's bytes: data plus its checksum, indented for people to read."""
    signed = dict(data, checksum=checksum(data))
    return json.dumps(signed, indent=1, allow_nan=False).encode("ascii") + b"\n"


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:30]} is out of range")
    return value


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list) -> dict:
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"key {key[:40]!r} appears twice in an object")
        seen.add(key)
    return dict(pairs)


def decode_json(text: bytes):
    """Parse registry bytes strictly (UTF-8, finite numbers, unique keys); Invalid on any problem."""
    try:
        string = text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Invalid(f"not UTF-8 text (invalid byte at offset {e.start})") from None
    try:
        return json.loads(string, parse_float=_finite_float, parse_constant=_reject_constant,
                          object_pairs_hook=_unique_keys)
    except RecursionError:
        raise Invalid("JSON nested too deeply") from None
    except ValueError as e:
        raise Invalid(f"not valid JSON ({one_line(e)})") from None


def vector_rel(task: str, kind: str) -> str:
    """The registry key (and path relative to the state directory) of a per-task vector."""
    if kind not in VECTOR_KINDS:
        raise ValueError(f"vector kind {kind!r} is not one of {VECTOR_KINDS}")
    try:
        check_task_name(task)
    except WeightSepError as e:
        raise ValueError(str(e)) from None
    return f"{task}/{task}_{kind}.npy"


def parse_vector_rel(rel: str) -> Optional[tuple[str, str]]:
    """(task, kind) of a vector key, or None if rel is not exactly the key of one."""
    match = _VECTOR_REL.match(rel) if isinstance(rel, str) else None
    if not match:
        return None
    task = match.group(1)
    for kind in VECTOR_KINDS:
        if match.group(2) == f"{task}_{kind}":
            try:
                if vector_rel(task, kind) == rel:
                    return task, kind
            except ValueError:
                return None
    return None

# ---- registry validation -----------------------------------------------------------

def check_entry(rel: str, entry, dtype: np.dtype | None = None, shape: tuple | None = None) -> None:
    if not isinstance(entry, dict) or sorted(entry) != sorted(_ENTRY_KEYS):
        raise Invalid(f"the entry of {rel} must hold exactly {', '.join(_ENTRY_KEYS)}")
    if not isinstance(entry["sha256"], str) or not _SHA256.match(entry["sha256"]):
        raise Invalid(f"the sha256 of {rel} is not 64 lowercase hex digits")
    got_shape = entry["shape"]
    if not isinstance(got_shape, list) or not all(is_int(d) and 0 <= d <= MAX_DIM for d in got_shape):
        raise Invalid(f"the shape of {rel} is not a list of non-negative integers")
    if dtype is not None and entry["dtype"] != str(dtype):
        raise Invalid(f"{rel} is recorded as {shown(entry['dtype'])}, expected {dtype}")
    if shape is not None and tuple(got_shape) != tuple(shape):
        raise Invalid(f"{rel} is recorded with shape {got_shape}, expected {list(shape)}")



def parse_task(item, page_size: int) -> TaskRecord:
    """One task entry -> TaskRecord, checking its own types and spec (not yet its table bounds)."""
    if not isinstance(item, dict):
        raise Invalid("a task entry is not an object")
    name = item.get("name")
    try:
        check_task_name(name)
    except WeightSepError as e:
        raise Invalid(str(e)) from None
    if name in TOP_FILES:
        raise Invalid(f"task name {name!r} is the name of a state file")
    if sorted(item) != sorted(_TASK_KEYS):
        raise Invalid(f"task '{name}' must hold exactly the keys {', '.join(_TASK_KEYS)}")
    n = item["num_weights"]
    if not is_int(n) or not 1 <= n <= MAX_WEIGHTS:
        raise Invalid(f"task '{name}': num_weights {shown(n)} is not an integer from 1 to {MAX_WEIGHTS}")
    table, exclusive = item["page_table"], item["exclusive_pages"]
    expected = pages.num_pages(n, page_size)
    if not isinstance(table, list) or len(table) != expected:
        size = len(table) if isinstance(table, list) else "no"
        raise Invalid(f"task '{name}': page table has {size} entries, but {n} weights in pages of "
                       f"{page_size} need {expected}")
    if not all(is_int(e) and -MAX_TABLE_ENTRY - 1 <= e <= MAX_TABLE_ENTRY for e in table):
        raise Invalid(f"task '{name}': page_table is not a list of int32 entries")
    if (not isinstance(exclusive, list) or len(exclusive) > expected
            or not all(is_int(i) and 0 <= i < expected for i in exclusive)):
        raise Invalid(f"task '{name}': exclusive_pages is not a list of its page indices (0 to {expected - 1})")
    if len(set(exclusive)) != len(exclusive):
        raise Invalid(f"task '{name}': exclusive_pages {exclusive} repeat a page")
    if not isinstance(item["network_path"], str) or len(item["network_path"]) > MAX_NETWORK_PATH:
        raise Invalid(f"task '{name}': network_path is not a path")
    for key in ("settings", "accuracy"):
        if not isinstance(item[key], dict):
            raise Invalid(f"task '{name}': {key} is not an object")
    if not is_int(item["id"]) or item["id"] < 0:
        raise Invalid(f"task '{name}': id {shown(item['id'])} is not a non-negative integer")
    try:
        spec = TaskSpec.from_json(item["spec"])
    except WeightSepError as e:
        raise Invalid(f"task '{name}': {e}") from None
    if spec.name != name:
        raise Invalid(f"task '{name}': its spec describes task {spec.name!r}")
    return TaskRecord(name=name, id=item["id"], num_weights=n,
                      page_table=np.array(table, dtype=np.int64).astype(np.int32), exclusive_pages=exclusive,
                      spec=item["spec"], network_path=item["network_path"],
                      settings=item["settings"], accuracy=item["accuracy"])


def check_tasks(tasks: list[TaskRecord], page_size: int, num_shared: int, num_exclusive: int) -> None:
    """Raise Invalid unless every table is valid (weightsep.pages), exclusive pages are the table's
    exclusive entries, and every exclusive row belongs to exactly one task page."""
    names, ids = set(), set()
    owner = np.zeros(num_exclusive, dtype=np.int64)
    for record in tasks:
        name = record.name
        if name in names:
            raise Invalid(f"task '{name}' is listed twice")
        if record.id in ids:
            raise Invalid(f"task '{name}': id {record.id} is used twice")
        names.add(name)
        ids.add(record.id)
        try:
            table = pages.validate_page_table(record.page_table, num_shared, num_exclusive,
                                              record.num_weights, page_size)
        except WeightSepError as e:
            raise Invalid(f"task '{name}': {e}") from None
        is_exclusive = np.zeros(len(table), dtype=bool)
        is_exclusive[record.exclusive_pages] = True
        mismatch = np.flatnonzero(is_exclusive != (table >= num_shared))
        if mismatch.size:
            page = mismatch[0]
            kind = "exclusive" if is_exclusive[page] else "sharable"
            raise Invalid(f"task '{name}': page {page} is {kind} but its table entry is {table[page]} "
                           f"(shared pages are < {num_shared}, exclusive rows >= {num_shared})")
        rows = table[is_exclusive].astype(np.int64) - num_shared
        taken = rows[owner[rows] > 0]
        if taken.size:
            raise Invalid(f"task '{name}': exclusive row {taken[0]} is used twice")
        owner[rows] += 1
    unused = np.flatnonzero(owner == 0)
    if unused.size:
        raise Invalid(f"exclusive rows {unused[:5].tolist()} are used by no task")


def parse_registry(raw) -> Registry:
    """Check a registry's structure and consistency (its checksum already removed)."""
    if not isinstance(raw, dict):
        raise Invalid("not a JSON object")
    unknown = sorted(str(k)[:40] for k in raw if k not in _REGISTRY_KEYS)
    missing = [k for k in _REGISTRY_KEYS if k not in raw]
    if unknown or missing:
        raise Invalid(f"unknown keys {unknown}" if unknown else f"missing keys {missing}")
    for key, low, high in (("page_size", 1, MAX_PAGE_SIZE), ("num_pages", 1, MAX_NUM_PAGES),
                           ("generation", 0, 1 << 62), ("next_id", 0, MAX_TABLE_ENTRY)):
        if not is_int(raw[key]) or not low <= raw[key] <= high:
            raise Invalid(f"'{key}' is {shown(raw[key])}, expected an integer from {low} to {high}")
    page_size, num_pages = raw["page_size"], raw["num_pages"]
    if page_size * num_pages > MAX_POOL_WEIGHTS:
        raise Invalid(f"a pool of {num_pages} x {page_size} weights is larger than {MAX_POOL_WEIGHTS}")
    page_dtype, layout = raw["page_dtype"], raw["layout"]
    if page_dtype not in PAGE_DTYPES:
        raise Invalid(f"page_dtype {shown(page_dtype)} is not one of {', '.join(PAGE_DTYPES)}")
    group_size = raw["group_size"]
    if page_dtype == "int4":
        if not is_int(group_size) or not 2 <= group_size <= MAX_PAGE_SIZE:
            raise Invalid(f"'group_size' is {shown(group_size)}, expected an integer from 2 to {MAX_PAGE_SIZE}")
    elif group_size != 0:
        raise Invalid(f"'group_size' is {shown(group_size)}; only int4 states have one (else 0)")
    fmt = page_format(page_dtype, group_size or None)
    try:
        fmt.check_page_size(page_size)
    except ValueError as e:
        raise Invalid(str(e)) from None
    if layout not in LAYOUTS:
        raise Invalid(f"layout {shown(layout)} is not one of {', '.join(LAYOUTS)}")
    files, obsolete, items = raw["files"], raw["obsolete"], raw["tasks"]
    if not isinstance(files, dict) or not isinstance(obsolete, dict) or not isinstance(items, list):
        raise Invalid("'files' and 'obsolete' must be objects and 'tasks' a list")

    # The page arrays: their dtypes and shapes follow from P, S and the page dtype; E from the record.
    check_entry(EXCLUSIVE_FILE, files.get(EXCLUSIVE_FILE))
    exclusive_shape = files[EXCLUSIVE_FILE]["shape"]
    num_exclusive = exclusive_shape[0] if exclusive_shape else -1
    if not 0 <= num_exclusive <= MAX_TABLE_ENTRY - num_pages:
        raise Invalid(f"{EXCLUSIVE_FILE} is recorded with shape {exclusive_shape}")
    expected = {}
    for rows, (values_file, scales_file, wide_file, bits_file) in ((num_pages, POOL_FILES["shared"]),
                                                                   (num_exclusive, POOL_FILES["exclusive"])):
        expected[values_file] = (fmt.values_dtype, fmt.values_shape(rows, page_size))
        if fmt.quantized:
            expected[scales_file] = (np.dtype(fmt.scale_dtype), fmt.scales_shape(rows, page_size))
        if fmt.grouped:
            # How many pages are int8 is data (the bits file, checked against this at load).
            check_entry(wide_file, files.get(wide_file))
            wide_pages = files[wide_file]["shape"][0] if files[wide_file]["shape"] else -1
            if not 0 <= wide_pages <= rows:
                raise Invalid(f"{wide_file} is recorded with shape {files[wide_file]['shape']}")
            expected[wide_file] = (np.dtype(np.uint8), fmt.wide_shape(wide_pages, page_size))
            expected[bits_file] = (np.dtype(np.uint8), (rows,))
    # Master values: a quantized state has both files or neither (a state written before they existed).
    masters = [name for name in MASTER_FILES.values() if name in files]
    if masters and not fmt.quantized:
        raise Invalid(f"'files' lists {masters[0]}, but a float32 state keeps no master values")
    if len(masters) == 1:
        raise Invalid(f"'files' lists {masters[0]} without {(set(MASTER_FILES.values()) - set(masters)).pop()}")
    if masters:
        for rows, which in ((num_pages, "shared"), (num_exclusive, "exclusive")):
            expected[MASTER_FILES[which]] = (np.dtype(np.float32), (rows, page_size))

    tasks = [parse_task(item, page_size) for item in items]
    for record in tasks:
        if record.id >= raw["next_id"]:
            raise Invalid(f"task '{record.name}': id {record.id} is not below next_id {raw['next_id']}")
        for kind in VECTOR_KINDS:
            rel = vector_rel(record.name, kind)
            if rel in files:
                expected[rel] = (np.dtype(np.float32), (record.num_weights,))
            elif kind in REQUIRED_VECTORS:
                raise Invalid(f"task '{record.name}' has no {kind} vector ({rel})")
    for rel in files:
        if rel not in expected:
            raise Invalid(f"'files' lists {shown(rel)}, which this state does not use")
    for rel, (dtype, shape) in expected.items():
        if rel not in files:
            raise Invalid(f"'files' lacks {rel}")
        check_entry(rel, files[rel], dtype, shape)
    for rel, entry in obsolete.items():
        if parse_vector_rel(rel) is None or rel in files:
            raise Invalid(f"'obsolete' lists {shown(rel)}, which is not a vector file the state dropped")
        check_entry(rel, entry, np.dtype(np.float32))
    check_tasks(tasks, page_size, num_pages, num_exclusive)
    return Registry(page_size=page_size, num_pages=num_pages, page_dtype=page_dtype, layout=layout,
                    group_size=group_size,
                    generation=raw["generation"], next_id=raw["next_id"], files=files, obsolete=obsolete,
                    tasks=tasks, num_exclusive=num_exclusive)




def read_registry(state_dir: Path) -> tuple[bytes, Registry]:
    """The registry file's bytes and the validated Registry; StateError naming the file and the fix."""
    path = state_dir / REGISTRY_FILE
    fix = start_over(state_dir)
    try:
        with open_regular(path) as f:
            if os.fstat(f.fileno()).st_size > MAX_REGISTRY_BYTES:
                raise StateError(f"{path} is larger than {MAX_REGISTRY_BYTES} bytes, too large for a registry; {fix}")
            text = f.read(MAX_REGISTRY_BYTES + 1)
    except FileNotFoundError:
        raise StateError(f"no separated state in {state_dir} ({path.name} is missing): add tasks first with "
                         f"`python WeightSeparation.py -mode=a -network_path=<task>` (or ./formation.sh), "
                         f"or pass the -state_dir that holds the state") from None
    except IsADirectoryError:
        raise StateError(f"{path} is a directory, not the registry file; {fix}") from None
    except OSError as e:
        fix_it = atomic.hint(e) or "; check its permissions"
        raise StateError(f"cannot read {path}: {atomic.reason(e)}{fix_it}") from None
    try:
        raw = decode_json(text)
        if not isinstance(raw, dict):
            raise Invalid("not a JSON object")
        version = raw.get("schema_version")
        if version in OLD_SCHEMA_VERSIONS and raw.get("page_dtype") == "int4":
            raise StateError(f"{path} holds int4 pages of schema version {version} (one float32 scale per "
                             f"page), which this toolkit no longer reads; quantize the float32 state again "
                             f"with -mode=quantize -page_dtype=int4")
        if version != SCHEMA_VERSION and version not in OLD_SCHEMA_VERSIONS:
            raise StateError(f"{path} has schema_version {shown(version)}, but this toolkit reads version "
                             f"{SCHEMA_VERSION}; use the toolkit version that wrote it, or delete {state_dir} "
                             f"and re-run -mode=a for each task")
        recorded = raw.pop("checksum", None)
        try:
            actual = checksum(raw)
        except (ValueError, RecursionError):
            raise Invalid("holds values that have no canonical JSON encoding") from None
        if recorded != actual:
            raise StateError(f"{path} was edited outside the toolkit (its checksum does not match its "
                             f"content), so it would load as a silently different state; {fix}")
        if version in OLD_SCHEMA_VERSIONS:
            raw.setdefault("group_size", 0)
        reg = parse_registry(raw)
        reg.checksum = actual
        return text, reg
    except Invalid as e:
        raise StateError(f"{path}: {e}; {fix}") from None
