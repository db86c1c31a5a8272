"""The microcontroller blob, weights.wsb (-mode=blob): one self-describing file per export that a
device uses in place from flash, read by runtime_c/ (the C runtime).

docs/FORMAT.md, section "The blob (weights.wsb)", is the byte-by-byte definition; this module
writes exactly that.  In short (all little-endian, every section 16-byte aligned, offsets from
the start of the file, so the blob is position independent):

    header   128 bytes: magic "WSEPBLOB", version, CRC-32 of bytes 16.., total size, page
             dtype, layout flags, page size, scale group size, counts, section offsets
    tasks    one 160-byte record per task: name, input shape, classes, weight and page counts,
             its slice of the page tables and of the layer records, its exclusive page count
    layers   one 32-byte record per layer: kind, activation, flags, kernel shape, weight offset
    tables   uint32 page-table entries of every task (entry e names page e of the values)
    values   the shared pool's P pages, then the E exclusive pages, in the page dtype
    scales   float32, one per page (int8 blobs, version 1); float16, one per group of G
             weights of each page (int4 blobs, version 2)
    kinds    version 2 only: uint8 per page, 4 (int4 page) or 8 (int8 page)
    wide     version 2 only: the low nibbles of the int8 pages, one row of S / 2 bytes each

float32 and int8 states are written as version 1 (unchanged, so existing readers keep working);
int4 states (pageformat's grouped, mixed int4 / int8 format) as version 2.  The page values are
the store's stored values (weightsep/pageformat.py defines the encodings), so the blob's weights
are bit for bit what Store.materialize returns.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from weightsep.errors import WeightSepError
from weightsep.export_dir import ExportFile, publish, state_of
from weightsep.store import Store

BLOB_NAME = "weights.wsb"
MAGIC = b"WSEPBLOB"
VERSION = 1          # float32 and int8 states
VERSION_GROUPED = 2  # int4 states: float16 group scales, per-page kinds, int8 pages' low nibbles
HEADER_BYTES = 128
TASK_BYTES = 160
LAYER_BYTES = 32
NAME_BYTES = 112
ALIGN = 16

DTYPE_CODES = {"float32": 0, "int8": 1, "int4": 2}
FLAG_TRANSPOSED = 1
CONV2D, DENSE = 1, 2
ACT_NONE, ACT_LEAKY_RELU, ACT_SIGMOID, ACT_SOFTMAX = 0, 1, 2, 3
LAYER_MAXPOOL, LAYER_CHANNEL_FIRST = 1, 2
ACTIVATION_CODES = {"leaky_relu": ACT_LEAKY_RELU, "sigmoid": ACT_SIGMOID}


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def layer_records(spec: dict, layout: str) -> list[tuple[int, ...]]:
    """(kind, activation, flags, kh, kw, in, out, kernel offset) per layer of a declarative spec
    (TaskSpec.to_json()): convs (leaky ReLU, 2x2 pool), hidden dense layers, the softmax output."""
    h, w, c = spec["input_shape"]
    records, offset = [], 0
    for kh, kw, filters in spec["conv"]:
        records.append((CONV2D, ACT_LEAKY_RELU, LAYER_MAXPOOL, kh, kw, c, filters, offset))
        offset += kh * kw * c * filters + filters
        h, w, c = (h - kh + 1) // 2, (w - kw + 1) // 2, filters
    features = h * w * c
    # The original's -transpose=1 reads the flattened feature map channel-first (networks.vector_order).
    first_flags = LAYER_CHANNEL_FIRST if layout == "transposed" and spec["conv"] else 0
    units = list(spec["dense"]) + [spec["num_classes"]]
    for i, out in enumerate(units):
        last = i == len(units) - 1
        activation = ACT_SOFTMAX if last else ACTIVATION_CODES[spec["dense_activation"]]
        records.append((DENSE, activation, first_flags if i == 0 else 0, 1, 1, features, out, offset))
        offset += features * out + out
        features = out
    return records


def _check_task(store: Store, record) -> list[tuple[int, ...]]:
    spec = record.spec
    if spec.get("custom_model"):
        raise WeightSepError(f"task {record.name} has a custom build_model(): the blob describes only the "
                             f"declarative layer list (conv, dense) of a task.py; export it with -mode=w / -mode=p")
    if len(record.name.encode()) >= NAME_BYTES:
        raise WeightSepError(f"task name {record.name!r} is longer than the blob's {NAME_BYTES - 1} bytes")
    layers = layer_records(spec, store.layout)
    kh, kw, cin, out, offset = layers[-1][3:]
    declared = offset + kh * kw * cin * out + out
    if declared != record.num_weights:
        raise WeightSepError(f"task {record.name}: its layer list has {declared} weights but the state records "
                             f"{record.num_weights}; the state does not match its spec")
    return layers


def blob_bytes(store: Store) -> bytes:
    """The blob of a loaded store (docs/FORMAT.md, "The blob (weights.wsb)")."""
    page_dtype, page_size = store.page_dtype, store.page_size
    fmt = store.format
    tasks = store.tasks
    layers = {rec.name: _check_task(store, rec) for rec in tasks}
    shared, exclusive = store.quantized("shared"), store.quantized("exclusive")
    shared_values, exclusive_values = shared.values, exclusive.values
    values = np.concatenate([shared_values, exclusive_values])
    num_shared, num_exclusive = len(shared_values), len(exclusive_values)
    stride = fmt.values_shape(1, page_size)[1] * fmt.values_dtype.itemsize
    num_layers = sum(len(v) for v in layers.values())
    num_entries = sum(rec.num_pages for rec in tasks)

    tasks_off = HEADER_BYTES
    layers_off = _align(tasks_off + TASK_BYTES * len(tasks))
    tables_off = _align(layers_off + LAYER_BYTES * num_layers)
    values_off = _align(tables_off + 4 * num_entries)
    end = _align(values_off + stride * len(values))
    scales_off = kinds_off = wide_off = num_wide = 0
    if fmt.grouped:
        scales = np.concatenate([shared.scales, exclusive.scales]).astype("<f2")
        kinds = np.concatenate([shared.bits, exclusive.bits]).astype(np.uint8)
        wide = np.concatenate([shared.wide, exclusive.wide]).astype(np.uint8)  # int8 pages in page order
        num_wide = len(wide)
        scales_off = end
        kinds_off = _align(scales_off + scales.nbytes)
        wide_off = _align(kinds_off + kinds.nbytes)
        end = _align(wide_off + wide.nbytes)
    elif fmt.quantized:
        scales = np.concatenate([shared.scales, exclusive.scales]).astype("<f4")
        scales_off, end = end, _align(end + scales.nbytes)

    out = bytearray(end)
    entry = layer = 0
    for i, rec in enumerate(tasks):
        h, w, c = rec.spec["input_shape"]
        base = tasks_off + TASK_BYTES * i
        out[base:base + NAME_BYTES] = rec.name.encode().ljust(NAME_BYTES, b"\0")
        exclusive = int(np.count_nonzero(rec.page_table >= num_shared))
        struct.pack_into("<10I", out, base + NAME_BYTES, h, w, c, rec.spec["num_classes"], rec.num_weights,
                         rec.num_pages, entry, layer, len(layers[rec.name]), exclusive)
        out[tables_off + 4 * entry:tables_off + 4 * (entry + rec.num_pages)] = rec.page_table.astype("<u4").tobytes()
        for fields in layers[rec.name]:
            struct.pack_into("<8I", out, layers_off + LAYER_BYTES * layer, *fields)
            layer += 1
        entry += rec.num_pages
    out[values_off:values_off + stride * len(values)] = np.ascontiguousarray(values).astype(
        values.dtype.newbyteorder("<")).tobytes()
    if scales_off:
        out[scales_off:scales_off + scales.nbytes] = scales.tobytes()
    if fmt.grouped:
        out[kinds_off:kinds_off + kinds.nbytes] = kinds.tobytes()
        out[wide_off:wide_off + wide.nbytes] = wide.tobytes()
        struct.pack_into("<3I", out, 84, kinds_off, wide_off, num_wide)

    flags = FLAG_TRANSPOSED if store.layout == "transposed" else 0
    group = fmt.group(page_size) if fmt.quantized else 0
    struct.pack_into("<8s", out, 0, MAGIC)
    struct.pack_into("<I", out, 8, blob_version(fmt))
    struct.pack_into("<17I", out, 16, end, HEADER_BYTES, DTYPE_CODES[page_dtype], flags, page_size, group,
                     len(tasks), num_shared, num_exclusive, num_layers, stride, tasks_off, layers_off, tables_off,
                     num_entries, values_off, scales_off)
    struct.pack_into("<I", out, 12, zlib.crc32(bytes(out[16:])))
    return bytes(out)


def blob_version(fmt) -> int:
    """The blob version that carries a page format: 2 for int4 (grouped) states, else 1."""
    return VERSION_GROUPED if fmt.grouped else VERSION


def export_blob(store: Store, out_dir: Path) -> list[str]:
    """-mode=blob: write <out_dir>/weights.wsb (all-or-nothing, with the manifest); lines to print."""
    data = blob_bytes(store)  # every check passes before anything is written
    notes = publish(out_dir, "blob", [ExportFile(BLOB_NAME, data, f"blob format {blob_version(store.format)} for runtime_c "
                                                                  f"(docs/FORMAT.md)")], state_of(store))
    return [f"{len(store.tasks)} tasks, {store.num_pages} shared + {store.num_exclusive} exclusive "
            f"{store.page_dtype} pages of {store.page_size} weights", *notes,
            f"wrote {out_dir / BLOB_NAME} ({len(data)} bytes)"]
