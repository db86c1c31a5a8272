/* wsrt: a C99 runtime for Weight Separation blobs (weights.wsb, docs/FORMAT.md).
 *
 * It opens a blob in place (from flash or a buffer; nothing is copied), verifies it
 * completely, switches to a task by resolving the task's page table into one pointer
 * per page, and runs the task's network on one input.  No allocation: the caller hands
 * one arena of ws_arena_bytes() bytes.  Every function returns a ws_status; nothing
 * prints or aborts; ws_status_message() gives a status's sentence.
 *
 * The blob must stay readable and unchanged while a ws_blob or ws_runtime refers to it.
 * Little-endian hosts only (ws_blob_open says so on another).
 */
#ifndef WSRT_H
#define WSRT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The blob format versions this library reads: 1 (float32, int8 and per-page int4 pages) and 2
 * (int4 states: float16 group scales, a per-page kind, int4 or int8; docs/FORMAT.md). */
#define WS_FORMAT_VERSION 2u
#define WS_FORMAT_VERSION_MIN 1u
#define WS_HEADER_BYTES 128u
#define WS_TASK_RECORD_BYTES 160u
#define WS_LAYER_RECORD_BYTES 32u
#define WS_NAME_BYTES 112u

typedef enum {
    WS_OK = 0,
    WS_E_ARGUMENT,      /* a NULL pointer or an argument out of range */
    WS_E_ENDIAN,        /* this host is not little-endian */
    WS_E_TRUNCATED,     /* the buffer is shorter than the header or than the size the header gives */
    WS_E_MAGIC,         /* not a blob: the first 8 bytes are not "WSEPBLOB" */
    WS_E_VERSION,       /* a format version this library does not read */
    WS_E_SIZE,          /* the buffer is longer than the size the header gives */
    WS_E_CRC,           /* the CRC-32 of the bytes after the header's CRC field does not match */
    WS_E_HEADER,        /* a header field is out of range (dtype, sizes, section offsets, reserved bytes) */
    WS_E_TASK,          /* a task record is out of range (name, shape, page count, table or layer slice) */
    WS_E_PAGE_TABLE,    /* a page-table entry names no page, or the exclusive count disagrees */
    WS_E_LAYER,         /* a layer record is invalid or its shapes disagree with the weights */
    WS_E_NO_TASK,       /* no task of that name or index */
    WS_E_ARENA,         /* the arena is smaller than ws_arena_bytes() */
    WS_E_NOT_SWITCHED,  /* ws_infer before any ws_switch */
    WS_E_INPUT_SIZE,    /* the input or output length differs from the task's */
    WS_E_PAGE_FORMAT,   /* version 2: a page kind other than 4 or 8, an int8 page count that disagrees,
                           or a group scale that is negative, subnormal, infinite or NaN */
    WS_STATUS_COUNT
} ws_status;

/* A sentence for a status (never NULL; "unknown status" for a value outside the enum). */
const char *ws_status_message(ws_status status);

typedef enum { WS_DTYPE_FLOAT32 = 0, WS_DTYPE_INT8 = 1, WS_DTYPE_INT4 = 2 } ws_dtype;
typedef enum { WS_LAYER_CONV2D = 1, WS_LAYER_DENSE = 2 } ws_layer_kind;
typedef enum { WS_ACT_NONE = 0, WS_ACT_LEAKY_RELU = 1, WS_ACT_SIGMOID = 2, WS_ACT_SOFTMAX = 3 } ws_activation;

#define WS_LAYER_MAXPOOL 1u        /* layer flag: 2x2 / stride 2 max pooling (floor) after the activation */
#define WS_LAYER_CHANNEL_FIRST 2u  /* layer flag: a dense layer reads its flattened input in (C, H, W) order */
#define WS_FLAG_TRANSPOSED 1u      /* header flag: kernels stored [out][in][kh][kw] and [out][in] */

/* A verified blob: a view of the caller's bytes. */
typedef struct {
    const uint8_t *data;
    uint32_t size;
    uint32_t version, flags, page_dtype, page_size, group_size, page_stride;
    uint32_t num_tasks, num_shared, num_exclusive, num_layers, num_entries;
    uint32_t tasks_offset, layers_offset, tables_offset, values_offset, scales_offset;
    uint32_t kinds_offset, wide_offset, num_wide;  /* version 2 only (else 0) */
    uint32_t max_task_pages;  /* the largest page table */
    uint32_t max_activation;  /* the largest layer output (values, before pooling) */
} ws_blob;

typedef struct {
    char name[WS_NAME_BYTES];
    uint32_t input_h, input_w, input_c, num_classes;
    uint32_t num_weights, num_pages, num_exclusive, num_layers;
} ws_task_info;

typedef struct {
    uint32_t kind, activation, flags, kh, kw, in, out, kernel_offset;
} ws_layer_info;

/* Verify `size` bytes at `data` and fill `blob`.  On any error `blob` is zeroed. */
ws_status ws_blob_open(ws_blob *blob, const void *data, size_t size);
ws_status ws_task_get(const ws_blob *blob, uint32_t index, ws_task_info *info);
ws_status ws_task_find(const ws_blob *blob, const char *name, uint32_t *index);
ws_status ws_layer_get(const ws_blob *blob, uint32_t task, uint32_t layer, ws_layer_info *info);
/* The arena any task of the blob needs: page pointers and scales of the largest page
 * table, and two activation buffers of the largest layer output, plus alignment slack; a
 * version-2 blob adds the low-nibble pointers of the largest page table and one uint32 per
 * page of the blob (each int8 page's row in the wide section, computed once at init). */
ws_status ws_arena_bytes(const ws_blob *blob, size_t *bytes);

typedef struct {
    const ws_blob *blob;
    const uint8_t **page;    /* in the arena: the switched task's page values, one per page */
    const uint8_t **scale;   /* in the arena: where each page's float32 scale (version 1) or its
                                row of float16 group scales (version 2) lies; NULL for float32 */
    const uint8_t **wide;    /* in the arena, version 2: each page's low nibbles (int8 pages), else NULL */
    uint32_t *wide_row;      /* in the arena, version 2: per page of the blob, its row in the wide section */
    float *buffer[2];        /* in the arena: ping-pong activations */
    uint32_t task;           /* the switched task, or UINT32_MAX before the first switch */
} ws_runtime;

/* Lay out the runtime in `arena` (any alignment; at least ws_arena_bytes() bytes). */
ws_status ws_runtime_init(ws_runtime *rt, const ws_blob *blob, void *arena, size_t arena_size);
/* Make `task` the running task: its page pointers are rebuilt; no weight is copied. */
ws_status ws_switch(ws_runtime *rt, uint32_t task);
/* Class probabilities of one input (float32 H x W x C, NHWC order) of the running task. */
ws_status ws_infer(ws_runtime *rt, const float *input, size_t input_len, float *probs, size_t probs_len);

/* CRC-32 (IEEE 802.3, as zlib's crc32) of n bytes, continuing from `crc` (0 to start). */
uint32_t ws_crc32(uint32_t crc, const void *data, size_t n);

#ifdef __cplusplus
}
#endif
#endif
