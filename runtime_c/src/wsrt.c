/* wsrt: verification of a weights.wsb blob and inference through page tables (see wsrt.h,
 * docs/FORMAT.md "The blob").  Every read of the blob is bounds-checked at open time; the
 * kernels then rely only on what ws_blob_open verified. */
#include "wsrt.h"

#include <float.h>
#include <math.h>
#include <string.h>

#define LEAKY_SLOPE 0.2f
#define MAX_DIM 65536u                   /* one input, kernel or layer dimension */
#define MAX_PAGE_SIZE (1u << 20)
#define MAX_ACTIVATION (1ull << 26)      /* values of one layer output */
#define MAX_TASK_LAYERS 256u
#define ALIGN 16u

static const char *const MESSAGES[WS_STATUS_COUNT] = {
    "ok",
    "invalid argument (a NULL pointer or an index out of range)",
    "this host is not little-endian; the blob format is little-endian",
    "the blob is truncated (shorter than its header or than the size its header gives)",
    "not a weight-separation blob (bad magic)",
    "unsupported blob format version",
    "the blob is longer than the size its header gives",
    "the blob's CRC-32 does not match its contents (corrupted)",
    "invalid blob header (page dtype, page size, counts or section offsets out of range)",
    "invalid task record (name, input shape, page count, page table or layer range)",
    "a page-table entry names no page of the blob, or a task's exclusive page count is wrong",
    "invalid layer record (kind, activation, shapes or weight offsets disagree with the task)",
    "no such task in the blob",
    "the arena is smaller than ws_arena_bytes() reports",
    "no task is running: call ws_switch first",
    "the input or output length differs from the task's input shape or class count",
    "invalid int4 page data (a page kind other than 4 or 8, an int8 page count that disagrees, or a group "
    "scale that is negative, subnormal, infinite or NaN)",
};

const char *ws_status_message(ws_status status) {
    if ((unsigned)status >= (unsigned)WS_STATUS_COUNT) return "unknown status";
    return MESSAGES[status];
}

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static float rdf32(const uint8_t *p) {
    float f;
    memcpy(&f, p, sizeof f);  /* the host is little-endian (checked at open) */
    return f;
}

static uint32_t rd16(const uint8_t *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8); }

/* A float16 group scale -> float32, by bits (no compiler or FPU half support needed).  Open
 * admits only zeros (either sign) and positive normal float16, which convert exactly: the
 * exponent is rebiased (15 -> 127) and the 10 mantissa bits move to the top of float32's 23. */
static float half_to_float(uint32_t h) {
    uint32_t bits = (h & 0x8000u) << 16, e = (h >> 10) & 31u;
    float f;
    if (e != 0) bits |= ((e + 112u) << 23) | ((h & 0x3ffu) << 13);
    memcpy(&f, &bits, sizeof f);
    return f;
}

static uint64_t align_up(uint64_t x) { return (x + (ALIGN - 1)) & ~(uint64_t)(ALIGN - 1); }

uint32_t ws_crc32(uint32_t crc, const void *data, size_t n) {
    static const uint32_t nibble[16] = {
        0x00000000u, 0x1db71064u, 0x3b6e20c8u, 0x26d930acu, 0x76dc4190u, 0x6b6b51f4u, 0x4db26158u, 0x5005713cu,
        0xedb88320u, 0xf00f9344u, 0xd6d6a3e8u, 0xcb61b38cu, 0x9b64c2b0u, 0x86d3d2d4u, 0xa00ae278u, 0xbdbdf21cu};
    const uint8_t *p = (const uint8_t *)data;
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        crc = (crc >> 4) ^ nibble[crc & 15u];
        crc = (crc >> 4) ^ nibble[crc & 15u];
    }
    return ~crc;
}

static int little_endian(void) {
    const uint32_t one = 1;
    uint8_t first;
    memcpy(&first, &one, 1);
    return first == 1;
}

/* Header field offsets (docs/FORMAT.md). */
enum {
    H_VERSION = 8, H_CRC = 12, H_TOTAL = 16, H_HEADER_SIZE = 20, H_DTYPE = 24, H_FLAGS = 28, H_PAGE_SIZE = 32,
    H_GROUP = 36, H_TASKS = 40, H_SHARED = 44, H_EXCLUSIVE = 48, H_LAYERS = 52, H_STRIDE = 56,
    H_TASKS_OFF = 60, H_LAYERS_OFF = 64, H_TABLES_OFF = 68, H_ENTRIES = 72, H_VALUES_OFF = 76,
    H_SCALES_OFF = 80, H_RESERVED = 84,
    /* version 2 */
    H_KINDS_OFF = 84, H_WIDE_OFF = 88, H_WIDE = 92, H_RESERVED_2 = 96
};
/* Task record field offsets. */
enum {
    T_INPUT_H = 112, T_INPUT_W = 116, T_INPUT_C = 120, T_CLASSES = 124, T_WEIGHTS = 128, T_PAGES = 132,
    T_TABLE = 136, T_FIRST_LAYER = 140, T_LAYERS = 144, T_EXCLUSIVE = 148, T_RESERVED = 152
};
/* Layer record field offsets. */
enum { L_KIND = 0, L_ACT = 4, L_FLAGS = 8, L_KH = 12, L_KW = 16, L_IN = 20, L_OUT = 24, L_OFFSET = 28 };

static const uint8_t MAGIC[8] = {'W', 'S', 'E', 'P', 'B', 'L', 'O', 'B'};

static const uint8_t *task_record(const ws_blob *b, uint32_t t) {
    return b->data + b->tasks_offset + (size_t)t * WS_TASK_RECORD_BYTES;
}

static const uint8_t *layer_record(const ws_blob *b, uint32_t l) {
    return b->data + b->layers_offset + (size_t)l * WS_LAYER_RECORD_BYTES;
}

static ws_status check_header(ws_blob *b, const uint8_t *d, size_t size) {
    uint32_t i, dtype, page_size, stride, group, grouped = b->version == 2u;
    uint64_t end, rows;
    if (rd32(d + H_HEADER_SIZE) != WS_HEADER_BYTES) return WS_E_HEADER;
    for (i = grouped ? H_RESERVED_2 : H_RESERVED; i < WS_HEADER_BYTES; ++i)
        if (d[i]) return WS_E_HEADER;
    dtype = rd32(d + H_DTYPE);
    page_size = rd32(d + H_PAGE_SIZE);
    stride = rd32(d + H_STRIDE);
    group = rd32(d + H_GROUP);
    if (dtype > WS_DTYPE_INT4 || page_size == 0 || page_size > MAX_PAGE_SIZE) return WS_E_HEADER;
    if (rd32(d + H_FLAGS) & ~WS_FLAG_TRANSPOSED) return WS_E_HEADER;
    if (dtype == WS_DTYPE_INT4 && page_size % 2) return WS_E_HEADER;
    if (stride != (dtype == WS_DTYPE_FLOAT32 ? 4 * page_size : dtype == WS_DTYPE_INT8 ? page_size : page_size / 2))
        return WS_E_HEADER;
    if (grouped) {
        /* Version 2: int4 states only, G weights per float16 scale, G dividing S. */
        if (dtype != WS_DTYPE_INT4 || group == 0 || group > page_size || page_size % group) return WS_E_HEADER;
    } else if (group != (dtype == WS_DTYPE_FLOAT32 ? 0u : page_size)) {
        return WS_E_HEADER;  /* version 1: one scale per page (group = page size), none for float32 */
    }
    b->flags = rd32(d + H_FLAGS);
    b->page_dtype = dtype;
    b->page_size = page_size;
    b->page_stride = stride;
    b->group_size = group;
    b->num_tasks = rd32(d + H_TASKS);
    b->num_shared = rd32(d + H_SHARED);
    b->num_exclusive = rd32(d + H_EXCLUSIVE);
    b->num_layers = rd32(d + H_LAYERS);
    b->num_entries = rd32(d + H_ENTRIES);
    b->tasks_offset = rd32(d + H_TASKS_OFF);
    b->layers_offset = rd32(d + H_LAYERS_OFF);
    b->tables_offset = rd32(d + H_TABLES_OFF);
    b->values_offset = rd32(d + H_VALUES_OFF);
    b->scales_offset = rd32(d + H_SCALES_OFF);
    if (grouped) {
        b->kinds_offset = rd32(d + H_KINDS_OFF);
        b->wide_offset = rd32(d + H_WIDE_OFF);
        b->num_wide = rd32(d + H_WIDE);
    }
    if ((uint64_t)b->num_shared + b->num_exclusive > 0xffffffffu) return WS_E_HEADER;
    /* Every section sits where the format puts it: in order, each 16-byte aligned, no gaps. */
    end = WS_HEADER_BYTES;
    if (b->tasks_offset != end) return WS_E_HEADER;
    end = align_up(end + (uint64_t)b->num_tasks * WS_TASK_RECORD_BYTES);
    if (b->layers_offset != end) return WS_E_HEADER;
    end = align_up(end + (uint64_t)b->num_layers * WS_LAYER_RECORD_BYTES);
    if (b->tables_offset != end) return WS_E_HEADER;
    end = align_up(end + 4ull * b->num_entries);
    if (b->values_offset != end) return WS_E_HEADER;
    rows = (uint64_t)b->num_shared + b->num_exclusive;
    end = align_up(end + rows * stride);
    if (grouped) {
        /* scales: float16 [rows][S / G]; kinds: uint8 [rows]; wide: uint8 [num_wide][S / 2] */
        if (b->num_wide > rows) return WS_E_HEADER;
        if (b->scales_offset != end) return WS_E_HEADER;
        end = align_up(end + 2u * rows * (page_size / group));
        if (b->kinds_offset != end) return WS_E_HEADER;
        end = align_up(end + rows);
        if (b->wide_offset != end) return WS_E_HEADER;
        end = align_up(end + (uint64_t)b->num_wide * stride);
    } else if (dtype == WS_DTYPE_FLOAT32) {
        if (b->scales_offset != 0) return WS_E_HEADER;
    } else {
        if (b->scales_offset != end) return WS_E_HEADER;
        end = align_up(end + 4ull * ((uint64_t)b->num_shared + b->num_exclusive));
    }
    if (end != size) return WS_E_HEADER;
    return WS_OK;
}

/* Version 2: every page kind is 4 or 8, as many 8s as int8 rows in the wide section, and every
 * group scale is valid under the page format's rule: zero (either sign) or a positive normal
 * float16 (no subnormal, infinity or NaN; the quantizer writes none, see docs/FORMAT.md). */
static ws_status check_pages(const ws_blob *b) {
    uint32_t rows = b->num_shared + b->num_exclusive, wide = 0, i;
    uint64_t k, scales = (uint64_t)rows * (b->page_size / b->group_size);
    for (i = 0; i < rows; ++i) {
        uint8_t kind = b->data[b->kinds_offset + (size_t)i];
        if (kind != 4u && kind != 8u) return WS_E_PAGE_FORMAT;
        wide += kind == 8u;
    }
    if (wide != b->num_wide) return WS_E_PAGE_FORMAT;
    for (k = 0; k < scales; ++k) {
        uint32_t h = rd16(b->data + b->scales_offset + 2 * (size_t)k), e = (h >> 10) & 31u;
        if ((h & 0x7fffu) == 0) continue;
        if ((h & 0x8000u) || e == 0 || e == 31u) return WS_E_PAGE_FORMAT;
    }
    return WS_OK;
}

/* Verify one task's layers: kinds, activations, the shape chain from its input to its
 * classes, and weight offsets that tile its weight vector exactly (kernel, bias, ...). */
static ws_status check_layers(ws_blob *b, const uint8_t *t) {
    uint32_t h = rd32(t + T_INPUT_H), w = rd32(t + T_INPUT_W), c = rd32(t + T_INPUT_C);
    uint32_t classes = rd32(t + T_CLASSES), n = rd32(t + T_WEIGHTS);
    uint32_t first = rd32(t + T_FIRST_LAYER), count = rd32(t + T_LAYERS), i;
    uint64_t offset = 0;
    for (i = 0; i < count; ++i) {
        const uint8_t *l = layer_record(b, first + i);
        uint32_t kind = rd32(l + L_KIND), act = rd32(l + L_ACT), flags = rd32(l + L_FLAGS);
        uint32_t kh = rd32(l + L_KH), kw = rd32(l + L_KW), in = rd32(l + L_IN), out = rd32(l + L_OUT);
        uint64_t kernel, values;
        int last = i + 1 == count;
        if (act > WS_ACT_SOFTMAX || (act == WS_ACT_SOFTMAX) != last) return WS_E_LAYER;
        if (kh == 0 || kw == 0 || in == 0 || out == 0 || kh > MAX_DIM || kw > MAX_DIM || in > MAX_DIM ||
            out > MAX_DIM)
            return WS_E_LAYER;
        if (rd32(l + L_OFFSET) != offset) return WS_E_LAYER;
        kernel = (uint64_t)kh * kw;
        if (kernel > n) return WS_E_LAYER;
        kernel *= in;
        if (kernel > n) return WS_E_LAYER;
        kernel *= out;
        if (kind == WS_LAYER_CONV2D) {
            if (flags & ~WS_LAYER_MAXPOOL) return WS_E_LAYER;
            if (in != c || kh > h || kw > w) return WS_E_LAYER;
            h = h - kh + 1;
            w = w - kw + 1;
            c = out;
            values = (uint64_t)h * w * c;
            if (values > MAX_ACTIVATION) return WS_E_LAYER;
            if (values > b->max_activation) b->max_activation = (uint32_t)values;
            if (flags & WS_LAYER_MAXPOOL) {
                h /= 2;
                w /= 2;
                if (h == 0 || w == 0) return WS_E_LAYER;
            }
        } else if (kind == WS_LAYER_DENSE) {
            if (flags & ~WS_LAYER_CHANNEL_FIRST) return WS_E_LAYER;
            if (kh != 1 || kw != 1 || (uint64_t)h * w * c != in) return WS_E_LAYER;
            h = w = 1;
            c = out;
            if (out > b->max_activation) b->max_activation = out;
        } else {
            return WS_E_LAYER;
        }
        offset += kernel + out;
        if (offset > n) return WS_E_LAYER;
        if (last && (kind != WS_LAYER_DENSE || out != classes)) return WS_E_LAYER;
    }
    if (offset != n) return WS_E_LAYER;
    return WS_OK;
}

static ws_status check_task(ws_blob *b, uint32_t index) {
    const uint8_t *t = task_record(b, index);
    uint32_t i, h, w, c, n, pages, table, exclusive, seen = 0, first, count, total = b->num_shared + b->num_exclusive;
    uint64_t input;
    if (t[0] == 0 || memchr(t, 0, WS_NAME_BYTES) == NULL) return WS_E_TASK;
    for (i = T_RESERVED; i < WS_TASK_RECORD_BYTES; ++i)
        if (t[i]) return WS_E_TASK;
    h = rd32(t + T_INPUT_H);
    w = rd32(t + T_INPUT_W);
    c = rd32(t + T_INPUT_C);
    n = rd32(t + T_WEIGHTS);
    pages = rd32(t + T_PAGES);
    table = rd32(t + T_TABLE);
    exclusive = rd32(t + T_EXCLUSIVE);
    first = rd32(t + T_FIRST_LAYER);
    count = rd32(t + T_LAYERS);
    if (h == 0 || w == 0 || c == 0 || h > MAX_DIM || w > MAX_DIM || c > MAX_DIM) return WS_E_TASK;
    input = (uint64_t)h * w * c;
    if (input > MAX_ACTIVATION) return WS_E_TASK;
    if (rd32(t + T_CLASSES) == 0 || n == 0) return WS_E_TASK;
    if (pages != (uint32_t)(((uint64_t)n + b->page_size - 1) / b->page_size)) return WS_E_TASK;
    if ((uint64_t)table + pages > b->num_entries) return WS_E_TASK;
    if (count == 0 || count > MAX_TASK_LAYERS || (uint64_t)first + count > b->num_layers) return WS_E_TASK;
    for (i = 0; i < pages; ++i) {
        uint32_t e = rd32(b->data + b->tables_offset + 4 * ((size_t)table + i));
        if (e >= total) return WS_E_PAGE_TABLE;
        seen += e >= b->num_shared;
    }
    if (seen != exclusive) return WS_E_PAGE_TABLE;
    if (pages > b->max_task_pages) b->max_task_pages = pages;
    return check_layers(b, t);
}

ws_status ws_blob_open(ws_blob *blob, const void *data, size_t size) {
    const uint8_t *d = (const uint8_t *)data;
    ws_status s;
    uint32_t i, total;
    if (blob == NULL) return WS_E_ARGUMENT;
    memset(blob, 0, sizeof *blob);
    if (d == NULL) return WS_E_ARGUMENT;
    if (!little_endian()) return WS_E_ENDIAN;
    if (size < WS_HEADER_BYTES) return size >= 8 && memcmp(d, MAGIC, 8) ? WS_E_MAGIC : WS_E_TRUNCATED;
    if (memcmp(d, MAGIC, 8)) return WS_E_MAGIC;
    if (rd32(d + H_VERSION) < WS_FORMAT_VERSION_MIN || rd32(d + H_VERSION) > WS_FORMAT_VERSION) return WS_E_VERSION;
    total = rd32(d + H_TOTAL);
    if (size < total || total < WS_HEADER_BYTES) return WS_E_TRUNCATED;
    if (size > total) return WS_E_SIZE;
    if (ws_crc32(0, d + H_TOTAL, size - H_TOTAL) != rd32(d + H_CRC)) return WS_E_CRC;
    blob->data = d;
    blob->size = total;
    blob->version = rd32(d + H_VERSION);
    s = check_header(blob, d, size);
    if (s == WS_OK && blob->version == 2u) s = check_pages(blob);
    for (i = 0; s == WS_OK && i < blob->num_tasks; ++i) s = check_task(blob, i);
    if (s != WS_OK) memset(blob, 0, sizeof *blob);
    return s;
}

ws_status ws_task_get(const ws_blob *blob, uint32_t index, ws_task_info *info) {
    const uint8_t *t;
    if (blob == NULL || info == NULL || blob->data == NULL) return WS_E_ARGUMENT;
    if (index >= blob->num_tasks) return WS_E_NO_TASK;
    t = task_record(blob, index);
    memcpy(info->name, t, WS_NAME_BYTES);  /* NUL-terminated: checked at open */
    info->input_h = rd32(t + T_INPUT_H);
    info->input_w = rd32(t + T_INPUT_W);
    info->input_c = rd32(t + T_INPUT_C);
    info->num_classes = rd32(t + T_CLASSES);
    info->num_weights = rd32(t + T_WEIGHTS);
    info->num_pages = rd32(t + T_PAGES);
    info->num_exclusive = rd32(t + T_EXCLUSIVE);
    info->num_layers = rd32(t + T_LAYERS);
    return WS_OK;
}

ws_status ws_task_find(const ws_blob *blob, const char *name, uint32_t *index) {
    uint32_t i;
    if (blob == NULL || name == NULL || index == NULL || blob->data == NULL) return WS_E_ARGUMENT;
    for (i = 0; i < blob->num_tasks; ++i) {
        if (strncmp((const char *)task_record(blob, i), name, WS_NAME_BYTES) == 0) {
            *index = i;
            return WS_OK;
        }
    }
    return WS_E_NO_TASK;
}

ws_status ws_layer_get(const ws_blob *blob, uint32_t task, uint32_t layer, ws_layer_info *info) {
    const uint8_t *t, *l;
    if (blob == NULL || info == NULL || blob->data == NULL) return WS_E_ARGUMENT;
    if (task >= blob->num_tasks) return WS_E_NO_TASK;
    t = task_record(blob, task);
    if (layer >= rd32(t + T_LAYERS)) return WS_E_ARGUMENT;
    l = layer_record(blob, rd32(t + T_FIRST_LAYER) + layer);
    info->kind = rd32(l + L_KIND);
    info->activation = rd32(l + L_ACT);
    info->flags = rd32(l + L_FLAGS);
    info->kh = rd32(l + L_KH);
    info->kw = rd32(l + L_KW);
    info->in = rd32(l + L_IN);
    info->out = rd32(l + L_OUT);
    info->kernel_offset = rd32(l + L_OFFSET);
    return WS_OK;
}

/* The arena's parts, in order, each 16-byte aligned: page, scale and (version 2) wide pointers
 * of the largest table, (version 2) the wide row of every page, the two activation buffers. */
enum { A_PAGE, A_SCALE, A_WIDE, A_WIDE_ROW, A_BUFFER0, A_BUFFER1, A_PARTS };

static void arena_layout(const ws_blob *b, size_t part[A_PARTS]) {
    int grouped = b->version == 2u;
    part[A_PAGE] = (size_t)align_up((uint64_t)b->max_task_pages * sizeof(const uint8_t *));
    part[A_SCALE] = part[A_PAGE];
    part[A_WIDE] = grouped ? part[A_PAGE] : 0;
    part[A_WIDE_ROW] = grouped ? (size_t)align_up(((uint64_t)b->num_shared + b->num_exclusive) * 4u) : 0;
    part[A_BUFFER0] = (size_t)align_up((uint64_t)b->max_activation * sizeof(float));
    part[A_BUFFER1] = part[A_BUFFER0];
}

ws_status ws_arena_bytes(const ws_blob *blob, size_t *bytes) {
    size_t part[A_PARTS];
    int i;
    if (blob == NULL || bytes == NULL || blob->data == NULL) return WS_E_ARGUMENT;
    arena_layout(blob, part);
    *bytes = ALIGN - 1;
    for (i = 0; i < A_PARTS; ++i) *bytes += part[i];
    return WS_OK;
}

ws_status ws_runtime_init(ws_runtime *rt, const ws_blob *blob, void *arena, size_t arena_size) {
    size_t part[A_PARTS], need;
    uint32_t e, row = 0;
    uint8_t *p;
    if (rt == NULL) return WS_E_ARGUMENT;
    memset(rt, 0, sizeof *rt);
    rt->task = UINT32_MAX;
    if (blob == NULL || arena == NULL || blob->data == NULL) return WS_E_ARGUMENT;
    ws_arena_bytes(blob, &need);
    if (arena_size < need) return WS_E_ARENA;
    arena_layout(blob, part);
    p = (uint8_t *)arena;
    p += (ALIGN - (uintptr_t)p % ALIGN) % ALIGN;
    rt->page = (const uint8_t **)(void *)p;
    p += part[A_PAGE];
    rt->scale = (const uint8_t **)(void *)p;
    p += part[A_SCALE];
    rt->wide = part[A_WIDE] ? (const uint8_t **)(void *)p : NULL;
    p += part[A_WIDE];
    rt->wide_row = part[A_WIDE_ROW] ? (uint32_t *)(void *)p : NULL;
    p += part[A_WIDE_ROW];
    rt->buffer[0] = (float *)(void *)p;
    rt->buffer[1] = (float *)(void *)(p + part[A_BUFFER0]);
    rt->blob = blob;
    /* An int8 page's row in the wide section is the number of int8 pages before it. */
    for (e = 0; rt->wide_row != NULL && e < blob->num_shared + blob->num_exclusive; ++e) {
        rt->wide_row[e] = row;
        row += blob->data[blob->kinds_offset + (size_t)e] == 8u;
    }
    return WS_OK;
}

ws_status ws_switch(ws_runtime *rt, uint32_t task) {
    const ws_blob *b;
    const uint8_t *t, *entries, *values, *scales, *kinds, *wide;
    size_t stride, scale_row;
    uint32_t i, pages;
    if (rt == NULL || rt->blob == NULL) return WS_E_ARGUMENT;
    b = rt->blob;
    if (task >= b->num_tasks) return WS_E_NO_TASK;
    t = task_record(b, task);
    pages = rd32(t + T_PAGES);
    /* Loop invariants in locals: the stores through rt's pointer arrays could alias *b. */
    entries = b->data + b->tables_offset + 4 * (size_t)rd32(t + T_TABLE);
    values = b->data + b->values_offset;
    scales = b->scales_offset ? b->data + b->scales_offset : NULL;
    stride = b->page_stride;
    if (b->version == 2u) {
        kinds = b->data + b->kinds_offset;
        wide = b->data + b->wide_offset;
        scale_row = 2 * (size_t)(b->page_size / b->group_size);
        for (i = 0; i < pages; ++i) {
            uint32_t e = rd32(entries + 4 * (size_t)i);
            rt->page[i] = values + (size_t)e * stride;
            rt->scale[i] = scales + (size_t)e * scale_row;
            rt->wide[i] = kinds[e] == 8u ? wide + (size_t)rt->wide_row[e] * stride : NULL;
        }
    } else {
        for (i = 0; i < pages; ++i) {
            uint32_t e = rd32(entries + 4 * (size_t)i);
            rt->page[i] = values + (size_t)e * stride;
            rt->scale[i] = scales ? scales + 4 * (size_t)e : NULL;
        }
    }
    rt->task = task;
    return WS_OK;
}

/* Walks a task's weight vector in order, page by page, dequantizing as it reads. */
typedef struct {
    const ws_runtime *rt;
    const uint8_t *values;
    const uint8_t *wide;    /* version 2: the int8 page's low nibbles, NULL on an int4 page */
    float scale;            /* the scale of the current page (version 1) or group (version 2) */
    uint32_t page, pos;
    uint32_t group_left;    /* version 2: weights left in the current group */
} cursor;

static void cursor_load(cursor *c) {
    const ws_blob *b = c->rt->blob;
    c->values = c->rt->page[c->page];
    if (b->version == 2u) {
        c->wide = c->rt->wide[c->page];
        c->scale = half_to_float(rd16(c->rt->scale[c->page] + 2 * (size_t)(c->pos / b->group_size)));
        c->group_left = b->group_size - c->pos % b->group_size;
        return;
    }
    c->scale = c->rt->scale[c->page] ? rdf32(c->rt->scale[c->page]) : 1.0f;
    /* The page format: a subnormal scale decodes as a zero of its sign (devices that flush
     * subnormals and devices that do not then agree). */
    if (fabsf(c->scale) < FLT_MIN) c->scale = copysignf(0.0f, c->scale);
}

static void cursor_seek(cursor *c, const ws_runtime *rt, uint32_t index) {
    c->rt = rt;
    c->page = index / rt->blob->page_size;
    c->pos = index % rt->blob->page_size;
    cursor_load(c);
}

static float cursor_next(cursor *c) {
    const ws_blob *b = c->rt->blob;
    float w;
    int q;
    switch (b->page_dtype) {
    case WS_DTYPE_FLOAT32:
        w = rdf32(c->values + 4 * (size_t)c->pos);
        break;
    case WS_DTYPE_INT8:
        q = c->values[c->pos];
        w = (float)(q >= 128 ? q - 256 : q) * c->scale;
        break;
    default:  /* int4: element 2k in the low nibble of byte k, 2k + 1 in the high one */
        q = c->values[c->pos >> 1];
        q = (c->pos & 1u) ? q >> 4 : q & 15;
        q = q >= 8 ? q - 16 : q;
        if (c->wide != NULL) {  /* an int8 page: q is the high part, the wide row holds the low one */
            int low = c->wide[c->pos >> 1];
            q = q * 16 + ((c->pos & 1u) ? low >> 4 : low & 15);
        }
        w = (float)q * c->scale;
        if (b->version == 2u && --c->group_left == 0 && c->pos + 1 < b->page_size) {
            c->scale = half_to_float(rd16(c->rt->scale[c->page] + 2 * (size_t)((c->pos + 1) / b->group_size)));
            c->group_left = b->group_size;
        }
        break;
    }
    if (++c->pos == b->page_size) {
        c->pos = 0;
        ++c->page;
        /* The last page of a task is never left through its end: layers tile the weights. */
        if (c->page * (uint64_t)b->page_size < rd32(task_record(b, c->rt->task) + T_WEIGHTS)) cursor_load(c);
    }
    return w;
}

typedef struct {
    uint32_t h, w, c;
} shape3;

/* Stride-1 VALID convolution + bias, weight-stationary: every weight is read once, in
 * stored order ([kh][kw][in][out], or [out][in][kh][kw] when transposed). */
static void conv2d(cursor *cur, const ws_layer_info *l, int transposed, const float *in, shape3 s, float *out) {
    uint32_t ho = s.h - l->kh + 1, wo = s.w - l->kw + 1, co = l->out, k, total = l->kh * l->kw * l->in * l->out;
    uint32_t dy, dx, ci, o, y, x;
    memset(out, 0, (size_t)ho * wo * co * sizeof(float));
    for (k = 0; k < total; ++k) {
        float wt = cursor_next(cur);
        if (transposed) {
            dx = k % l->kw;
            dy = k / l->kw % l->kh;
            ci = k / (l->kw * l->kh) % l->in;
            o = k / (l->kw * l->kh * l->in);
        } else {
            o = k % co;
            ci = k / co % l->in;
            dx = k / (co * l->in) % l->kw;
            dy = k / (co * l->in * l->kw);
        }
        for (y = 0; y < ho; ++y) {
            const float *row = in + ((size_t)(y + dy) * s.w + dx) * s.c + ci;
            float *dst = out + (size_t)y * wo * co + o;
            for (x = 0; x < wo; ++x) dst[(size_t)x * co] += row[(size_t)x * s.c] * wt;
        }
    }
    for (o = 0; o < co; ++o) {
        float bias = cursor_next(cur);
        for (k = 0; k < ho * wo; ++k) out[(size_t)k * co + o] += bias;
    }
}

static float dense_input(const float *in, shape3 s, uint32_t i, int channel_first) {
    uint32_t hw;
    if (!channel_first) return in[i];
    hw = s.h * s.w;
    return in[(size_t)(i % hw) * s.c + i / hw];
}

static void dense(cursor *cur, const ws_layer_info *l, int transposed, const float *in, shape3 s, float *out) {
    uint32_t i, o;
    int cf = (l->flags & WS_LAYER_CHANNEL_FIRST) != 0;
    if (transposed) {
        for (o = 0; o < l->out; ++o) {
            float acc = 0.0f;
            for (i = 0; i < l->in; ++i) acc += cursor_next(cur) * dense_input(in, s, i, cf);
            out[o] = acc;
        }
    } else {
        memset(out, 0, l->out * sizeof(float));
        for (i = 0; i < l->in; ++i) {
            float x = dense_input(in, s, i, cf);
            for (o = 0; o < l->out; ++o) out[o] += x * cursor_next(cur);
        }
    }
    for (o = 0; o < l->out; ++o) out[o] += cursor_next(cur);
}

/* exp in float32 operations only (Cody-Waite reduction by ln 2, a degree-6 polynomial, within about
 * 1 ulp), instead of libm's expf: C libraries differ in expf's last bit, and with this one a host
 * and a Cortex-M compute bit-identical probabilities. */
static float exp_f32(float x) {
    float k, r, p;
    if (x != x) return x;
    if (x > 88.72283f) return HUGE_VALF;
    if (x < -103.97208f) return 0.0f;
    k = floorf(x * 1.44269504f + 0.5f);
    r = x - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    return ldexpf(p, (int)k);
}

static void activate(float *v, size_t n, uint32_t act) {
    size_t i;
    if (act == WS_ACT_LEAKY_RELU) {
        for (i = 0; i < n; ++i) v[i] = v[i] >= 0.0f ? v[i] : LEAKY_SLOPE * v[i];
    } else if (act == WS_ACT_SIGMOID) {
        for (i = 0; i < n; ++i) v[i] = 1.0f / (1.0f + exp_f32(-v[i]));
    }
}

/* 2x2 / stride 2 VALID max pooling in place (the write index never passes the read index). */
static shape3 maxpool(float *v, shape3 s) {
    shape3 p;
    uint32_t y, x, c;
    p.h = s.h / 2;
    p.w = s.w / 2;
    p.c = s.c;
    for (y = 0; y < p.h; ++y)
        for (x = 0; x < p.w; ++x)
            for (c = 0; c < s.c; ++c) {
                const float *a = v + ((size_t)(2 * y) * s.w + 2 * x) * s.c + c;
                const float *b = a + (size_t)s.w * s.c;
                float m = a[0];
                if (a[s.c] > m) m = a[s.c];
                if (b[0] > m) m = b[0];
                if (b[s.c] > m) m = b[s.c];
                v[((size_t)y * p.w + x) * s.c + c] = m;
            }
    return p;
}

static void softmax(const float *z, uint32_t n, float *p) {
    uint32_t i;
    float m = z[0], sum = 0.0f;
    for (i = 1; i < n; ++i)
        if (z[i] > m) m = z[i];
    for (i = 0; i < n; ++i) {
        p[i] = exp_f32(z[i] - m);
        sum += p[i];
    }
    for (i = 0; i < n; ++i) p[i] /= sum;
}

ws_status ws_infer(ws_runtime *rt, const float *input, size_t input_len, float *probs, size_t probs_len) {
    ws_task_info task;
    ws_layer_info layer;
    cursor cur;
    shape3 s;
    const float *src;
    uint32_t i;
    int transposed;
    if (rt == NULL || rt->blob == NULL || input == NULL || probs == NULL) return WS_E_ARGUMENT;
    if (rt->task == UINT32_MAX) return WS_E_NOT_SWITCHED;
    ws_task_get(rt->blob, rt->task, &task);
    if (input_len != (size_t)task.input_h * task.input_w * task.input_c || probs_len != task.num_classes)
        return WS_E_INPUT_SIZE;
    transposed = (rt->blob->flags & WS_FLAG_TRANSPOSED) != 0;
    s.h = task.input_h;
    s.w = task.input_w;
    s.c = task.input_c;
    src = input;
    cursor_seek(&cur, rt, 0);
    for (i = 0; i < task.num_layers; ++i) {
        float *dst = rt->buffer[i % 2];
        ws_layer_get(rt->blob, rt->task, i, &layer);
        if (layer.kind == WS_LAYER_CONV2D) {
            conv2d(&cur, &layer, transposed, src, s, dst);
            s.h = s.h - layer.kh + 1;
            s.w = s.w - layer.kw + 1;
            s.c = layer.out;
            activate(dst, (size_t)s.h * s.w * s.c, layer.activation);
            if (layer.flags & WS_LAYER_MAXPOOL) s = maxpool(dst, s);
        } else {
            dense(&cur, &layer, transposed, src, s, dst);
            s.h = s.w = 1;
            s.c = layer.out;
            if (layer.activation == WS_ACT_SOFTMAX) softmax(dst, layer.out, probs);
            else activate(dst, layer.out, layer.activation);
        }
        src = dst;
    }
    return WS_OK;
}
