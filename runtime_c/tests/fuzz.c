/* Mutation fuzzing of ws_blob_open and of running whatever it accepts.
 *
 *   fuzz BLOB ITERATIONS SEED
 *
 * Each iteration copies the valid blob into a buffer of exactly its (mutated) length and
 * applies one mutation: random byte flips anywhere; a truncation; flips or a 32-bit field
 * overwritten in the header, task, layer or table sections with the CRC (and size) repaired,
 * so that the structural checks, not only the CRC, see the damage; flips in the sections after
 * the page values (scales; version 2 also page kinds and int8 pages' low nibbles), CRC repaired.  An accepted blob then
 * runs every task on an arena of exactly ws_arena_bytes().  Built with AddressSanitizer and
 * UBSan, any read or write out of bounds aborts.  Prints one count per status; exit 0. */
#include "wsrt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state;

static uint32_t rnd(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void repair(uint8_t *b, size_t n) {
    if (n < 20) return;
    put32(b + 16, (uint32_t)n);
    put32(b + 12, ws_crc32(0, b + 16, n - 16));
}

/* Run every task of an accepted blob once, on buffers of exactly the sizes it asks for. */
static int exercise(const ws_blob *blob) {
    size_t arena_size;
    void *arena;
    ws_runtime rt;
    uint32_t t;
    ws_arena_bytes(blob, &arena_size);
    arena = malloc(arena_size ? arena_size : 1);
    if (arena == NULL || ws_runtime_init(&rt, blob, arena, arena_size) != WS_OK) {
        free(arena);
        return 1;
    }
    for (t = 0; t < blob->num_tasks; ++t) {
        ws_task_info info;
        size_t per, k;
        float *x, *p;
        ws_task_get(blob, t, &info);
        per = (size_t)info.input_h * info.input_w * info.input_c;
        x = (float *)malloc(per * sizeof(float));
        p = (float *)malloc(info.num_classes * sizeof(float));
        if (x == NULL || p == NULL) {
            free(x);
            free(p);
            free(arena);
            return 1;
        }
        for (k = 0; k < per; ++k) x[k] = (float)(rnd() % 1000) / 1000.0f;
        if (ws_switch(&rt, t) != WS_OK || ws_infer(&rt, x, per, p, info.num_classes) != WS_OK) {
            free(x);
            free(p);
            free(arena);
            return 1;
        }
        free(x);
        free(p);
    }
    free(arena);
    return 0;
}

int main(int argc, char **argv) {
    FILE *f;
    uint8_t *orig;
    long size;
    unsigned long counts[WS_STATUS_COUNT] = {0}, iterations, i;
    ws_blob blob;
    uint32_t structural, tail;
    int s;
    if (argc != 4) {
        fprintf(stderr, "usage: fuzz BLOB ITERATIONS SEED\n");
        return 2;
    }
    f = fopen(argv[1], "rb");
    if (f == NULL || fseek(f, 0, SEEK_END) || (size = ftell(f)) <= 0 || fseek(f, 0, SEEK_SET)) return 2;
    orig = (uint8_t *)malloc((size_t)size);
    if (orig == NULL || fread(orig, 1, (size_t)size, f) != (size_t)size) return 2;
    fclose(f);
    iterations = strtoul(argv[2], NULL, 10);
    rng_state = strtoull(argv[3], NULL, 10);
    if (ws_blob_open(&blob, orig, (size_t)size) != WS_OK) {
        fprintf(stderr, "fuzz: the original blob does not open\n");
        return 2;
    }
    structural = blob.values_offset; /* header, tasks, layers, tables */
    tail = blob.scales_offset ? blob.scales_offset : structural; /* scales, kinds, wide (none: structural) */
    for (i = 0; i < iterations; ++i) {
        size_t n = (size_t)size, k, flips;
        uint32_t kind = rnd() % 6;
        uint8_t *b;
        ws_status st;
        if (kind == 1 || kind == 4) n = rnd() % (size_t)size;
        b = (uint8_t *)malloc(n ? n : 1);
        if (b == NULL) return 2;
        memcpy(b, orig, n);
        switch (kind) {
        case 0: /* random flips anywhere, CRC left as it was */
            for (flips = 1 + rnd() % 8, k = 0; k < flips; ++k) b[rnd() % n] ^= (uint8_t)(1u << (rnd() % 8));
            break;
        case 1: /* truncated */
            break;
        case 2: /* flips in the structural sections, CRC repaired */
            for (flips = 1 + rnd() % 4, k = 0; k < flips; ++k) b[16 + rnd() % (structural - 16)] ^= (uint8_t)(1u << (rnd() % 8));
            repair(b, n);
            break;
        case 3: { /* one 32-bit field set to an edge value, CRC repaired */
            static const uint32_t edges[] = {0u, 1u, 2u, 3u, 0x7fffffffu, 0x80000000u, 0xffffffffu, 0xfffffff0u, 16u, 512u};
            size_t at = 16 + 4 * (rnd() % ((structural - 16) / 4));
            uint32_t v = rnd() % 3 ? edges[rnd() % (sizeof edges / sizeof edges[0])] : get32(b + at) + rnd() % 5 - 2;
            put32(b + at, v);
            repair(b, n);
            break;
        }
        case 5: /* flips after the page values (or, without scales, in the structural sections), CRC repaired */
            for (flips = 1 + rnd() % 4, k = 0; k < flips; ++k) {
                size_t at = tail == structural ? 16 + rnd() % (structural - 16) : tail + rnd() % ((size_t)size - tail);
                b[at] ^= (uint8_t)(1u << (rnd() % 8));
            }
            repair(b, n);
            break;
        default: /* truncated, with size and CRC repaired */
            repair(b, n);
            break;
        }
        st = ws_blob_open(&blob, b, n);
        if ((unsigned)st >= WS_STATUS_COUNT) return 3;
        counts[st]++;
        if (st == WS_OK && exercise(&blob)) {
            fprintf(stderr, "fuzz: an accepted blob failed to run (iteration %lu)\n", i);
            return 4;
        }
        free(b);
    }
    for (s = 0; s < WS_STATUS_COUNT; ++s)
        if (counts[s]) printf("%d %lu %s\n", s, counts[s], ws_status_message((ws_status)s));
    free(orig);
    return 0;
}
