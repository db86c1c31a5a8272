/* wsrun: the command-line face of the wsrt library (host, and Cortex-M under semihosting).
 *
 *   wsrun info BLOB                          tasks, pages, bytes, arena size
 *   wsrun run BLOB TASK INPUT [OUT]          probabilities of each input in INPUT (raw float32
 *                                            NHWC, one or more examples); OUT: raw float32 copy
 *   wsrun sequence BLOB TASK INPUT OUT [TASK INPUT OUT ...]
 *                                            one runtime, switching to each task in turn
 *   wsrun eval BLOB TASK DATA LABELS         accuracy over the original's device test-data files
 *   wsrun bench BLOB [REPEATS]               switch and inference time per task (median)
 *
 * The tool allocates its file buffers; the library it calls does not allocate.
 * Exit status: 0, or 1 with one "error: ..." line on stderr. */
#include "wsrt.h"
#include "wsrun_clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *program = "wsrun";

static int fail(const char *what, const char *detail) {
    fprintf(stderr, "error: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    return 1;
}

static int fail_status(const char *what, ws_status s) { return fail(what, ws_status_message(s)); }

/* The whole file in a malloc'd buffer (16-byte aligned, like a blob in flash). */
static unsigned char *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    unsigned char *data = NULL, *grown;
    size_t cap = 0, n = 0, got;
    if (f == NULL) return NULL;
    for (;;) {
        if (n == cap) {
            cap = cap ? 2 * cap : 1u << 16;
            grown = (unsigned char *)realloc(data, cap);
            if (grown == NULL) break;
            data = grown;
        }
        got = fread(data + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) break;
            fclose(f);
            *size = n;
            return data;
        }
    }
    fclose(f);
    free(data);
    return NULL;
}

static int32_t le32(const unsigned char *p) {
    return (int32_t)((uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24));
}

typedef struct {
    unsigned char *bytes;
    ws_blob blob;
    ws_runtime rt;
    void *arena;
    size_t arena_size;
} session;

static int open_session(session *s, const char *path) {
    size_t size;
    ws_status st;
    memset(s, 0, sizeof *s);
    s->bytes = read_file(path, &size);
    if (s->bytes == NULL) return fail("cannot read blob", path);
    st = ws_blob_open(&s->blob, s->bytes, size);
    if (st != WS_OK) {
        fprintf(stderr, "error: %s: %s\n", path, ws_status_message(st));
        return 1;
    }
    ws_arena_bytes(&s->blob, &s->arena_size);
    s->arena = malloc(s->arena_size);
    if (s->arena == NULL) return fail("out of memory for the arena", NULL);
    st = ws_runtime_init(&s->rt, &s->blob, s->arena, s->arena_size);
    return st == WS_OK ? 0 : fail_status("runtime", st);
}

static void close_session(session *s) {
    free(s->arena);
    free(s->bytes);
}

static int switch_to(session *s, const char *name, ws_task_info *info) {
    uint32_t index;
    ws_status st = ws_task_find(&s->blob, name, &index);
    if (st != WS_OK) return fail("no such task in the blob", name);
    ws_task_get(&s->blob, index, info);
    st = ws_switch(&s->rt, index);
    return st == WS_OK ? 0 : fail_status("switch", st);
}

static const char *DTYPES[] = {"float32", "int8", "int4"};

static int cmd_info(const char *path) {
    session s;
    uint32_t t, l;
    if (open_session(&s, path)) return 1;
    printf("blob %s: format version %u, %u bytes, %s pages of %u weights, layout %s\n", path,
           (unsigned)s.blob.version, (unsigned)s.blob.size, DTYPES[s.blob.page_dtype], (unsigned)s.blob.page_size,
           (s.blob.flags & WS_FLAG_TRANSPOSED) ? "transposed" : "natural");
    if (s.blob.version == 2u)
        printf("pages: %u shared, %u exclusive (%u bytes each + %u float16 scales, one per %u weights; "
               "%u of them int8 pages with %u more bytes each)\n", (unsigned)s.blob.num_shared,
               (unsigned)s.blob.num_exclusive, (unsigned)s.blob.page_stride,
               (unsigned)(s.blob.page_size / s.blob.group_size), (unsigned)s.blob.group_size,
               (unsigned)s.blob.num_wide, (unsigned)s.blob.page_stride);
    else
        printf("pages: %u shared, %u exclusive (%u bytes each%s)\n", (unsigned)s.blob.num_shared,
               (unsigned)s.blob.num_exclusive, (unsigned)s.blob.page_stride,
               s.blob.page_dtype == WS_DTYPE_FLOAT32 ? "" : " + a float32 scale");
    printf("arena: %lu bytes\n", (unsigned long)s.arena_size);
    for (t = 0; t < s.blob.num_tasks; ++t) {
        ws_task_info info;
        ws_task_get(&s.blob, t, &info);
        printf("task %s: input %ux%ux%u, %u classes, %u weights, %u pages (%u exclusive), layers:", info.name,
               (unsigned)info.input_h, (unsigned)info.input_w, (unsigned)info.input_c, (unsigned)info.num_classes,
               (unsigned)info.num_weights, (unsigned)info.num_pages, (unsigned)info.num_exclusive);
        for (l = 0; l < info.num_layers; ++l) {
            ws_layer_info layer;
            ws_layer_get(&s.blob, t, l, &layer);
            if (layer.kind == WS_LAYER_CONV2D)
                printf(" conv%ux%ux%u%s", (unsigned)layer.kh, (unsigned)layer.kw, (unsigned)layer.out,
                       (layer.flags & WS_LAYER_MAXPOOL) ? "+pool" : "");
            else
                printf(" dense%u", (unsigned)layer.out);
        }
        printf("\n");
    }
    close_session(&s);
    return 0;
}

/* Run every example of INPUT through the running task; print and optionally write the probabilities. */
static int run_inputs(session *s, const ws_task_info *info, const char *input, const char *out, int print) {
    size_t size, per = (size_t)info->input_h * info->input_w * info->input_c, count, i, k;
    unsigned char *data = read_file(input, &size);
    float *probs = (float *)malloc(info->num_classes * sizeof(float));
    float *x = (float *)malloc(per * sizeof(float));
    FILE *f = NULL;
    int rc = 0;
    if (data == NULL || probs == NULL || x == NULL) {
        rc = fail("cannot read input", input);
        goto done;
    }
    if (size == 0 || size % (per * sizeof(float))) {
        rc = fail("input size is not a whole number of examples of the task's input shape", input);
        goto done;
    }
    count = size / (per * sizeof(float));
    if (out != NULL && (f = fopen(out, "wb")) == NULL) {
        rc = fail("cannot write", out);
        goto done;
    }
    for (i = 0; i < count; ++i) {
        ws_status st;
        size_t top = 0;
        memcpy(x, data + i * per * sizeof(float), per * sizeof(float));
        st = ws_infer(&s->rt, x, per, probs, info->num_classes);
        if (st != WS_OK) {
            rc = fail_status("inference", st);
            goto done;
        }
        for (k = 1; k < info->num_classes; ++k)
            if (probs[k] > probs[top]) top = k;
        if (print) {
            printf("%s %lu: class %lu", info->name, (unsigned long)i, (unsigned long)top);
            for (k = 0; k < info->num_classes; ++k) printf(" %.9g", (double)probs[k]);
            printf("\n");
        }
        if (f != NULL && fwrite(probs, sizeof(float), info->num_classes, f) != info->num_classes) {
            rc = fail("cannot write", out);
            goto done;
        }
    }
done:
    if (f != NULL && fclose(f) != 0 && rc == 0) rc = fail("cannot write", out);
    free(x);
    free(probs);
    free(data);
    return rc;
}

static int cmd_run(int argc, char **argv) {
    session s;
    ws_task_info info;
    int rc;
    if (open_session(&s, argv[0])) return 1;
    rc = switch_to(&s, argv[1], &info);
    if (rc == 0) rc = run_inputs(&s, &info, argv[2], argc > 3 ? argv[3] : NULL, 1);
    close_session(&s);
    return rc;
}

static int cmd_sequence(int argc, char **argv) {
    session s;
    ws_task_info info;
    int i, rc = 0;
    if ((argc - 1) % 3 || argc < 4) return fail("sequence takes BLOB followed by TASK INPUT OUT triples", NULL);
    if (open_session(&s, argv[0])) return 1;
    for (i = 1; rc == 0 && i < argc; i += 3) {
        rc = switch_to(&s, argv[i], &info);
        if (rc == 0) rc = run_inputs(&s, &info, argv[i + 1], argv[i + 2], 0);
    }
    close_session(&s);
    return rc;
}

/* The original's device test data: int32 N, int32 V, N x V float32 in (C, H, W) order;
 * labels: int32 N, int32 1, N int8 classes. */
static int cmd_eval(char **argv) {
    session s;
    ws_task_info info;
    size_t dsize = 0, lsize = 0, per, i, y, x, c, correct = 0;
    unsigned char *data = NULL, *labels = NULL;
    float *probs = NULL, *input = NULL;
    int32_t n = 0;
    int rc;
    if (open_session(&s, argv[0])) return 1;
    rc = switch_to(&s, argv[1], &info);
    if (rc) goto done;
    per = (size_t)info.input_h * info.input_w * info.input_c;
    data = read_file(argv[2], &dsize);
    labels = read_file(argv[3], &lsize);
    if (data == NULL || labels == NULL) {
        rc = fail("cannot read test data", data == NULL ? argv[2] : argv[3]);
        goto done;
    }
    if (dsize < 8 || (n = le32(data)) <= 0 || le32(data + 4) < 0 || (size_t)le32(data + 4) != per ||
        dsize != 8 + (size_t)n * per * sizeof(float)) {
        rc = fail("test data file does not hold int32 N, int32 H*W*C of the task, then N examples", argv[2]);
        goto done;
    }
    if (lsize < 8 || le32(labels) != n || le32(labels + 4) != 1 || lsize != 8 + (size_t)n) {
        rc = fail("label file does not hold int32 N (as the data), int32 1, then N int8 classes", argv[3]);
        goto done;
    }
    probs = (float *)malloc(info.num_classes * sizeof(float));
    input = (float *)malloc(per * sizeof(float));
    if (probs == NULL || input == NULL) {
        rc = fail("out of memory", NULL);
        goto done;
    }
    for (i = 0; i < (size_t)n; ++i) {
        const unsigned char *ex = data + 8 + i * per * sizeof(float);
        size_t top = 0, k;
        int label = (signed char)labels[8 + i];
        for (c = 0; c < info.input_c; ++c)
            for (y = 0; y < info.input_h; ++y)
                for (x = 0; x < info.input_w; ++x)
                    memcpy(input + (y * info.input_w + x) * info.input_c + c,
                           ex + ((c * info.input_h + y) * info.input_w + x) * sizeof(float), sizeof(float));
        ws_infer(&s.rt, input, per, probs, info.num_classes);
        for (k = 1; k < info.num_classes; ++k)
            if (probs[k] > probs[top]) top = k;
        correct += label >= 0 && (size_t)label == top;
    }
    printf("%s inference accuracy: %.6f\n", info.name, (double)correct / (double)n);
done:
    free(input);
    free(probs);
    free(labels);
    free(data);
    close_session(&s);
    return rc;
}

/* Median of n values (sorts them). */
static double median(double *v, int n) {
    int i, j;
    for (i = 1; i < n; ++i)
        for (j = i; j > 0 && v[j - 1] > v[j]; --j) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#define BENCH_MAX_REPEATS 101

typedef struct {
    ws_runtime *rt;
    const float *x;
    float *probs;
    size_t per, classes;
} infer_call;

static void infer_once(void *arg) {
    infer_call *c = (infer_call *)arg;
    ws_infer(c->rt, c->x, c->per, c->probs, c->classes);
}

/* Per task: the median over REPEATS of one switch (timed over a batch of switches, as one is
 * below the clock's resolution on a host) and of one inference on a constant input. */
static int cmd_bench(int argc, char **argv) {
    session s;
    uint32_t t;
    int r, repeats = argc > 1 ? atoi(argv[1]) : 21, batch = WSRUN_SWITCH_BATCH;
    double sw[BENCH_MAX_REPEATS], inf[BENCH_MAX_REPEATS];
    if (repeats < 1 || repeats > BENCH_MAX_REPEATS) return fail("REPEATS must be 1 to 101", NULL);
    if (open_session(&s, argv[0])) return 1;
    printf("task switch_%s inference_%s stack_bytes (median of %d; %s; stack 0: not measured)\n",
           wsrun_clock_unit, wsrun_clock_unit, repeats, wsrun_clock_note);
    for (t = 0; t < s.blob.num_tasks; ++t) {
        ws_task_info info;
        size_t per, k;
        float *x, *probs;
        ws_task_get(&s.blob, t, &info);
        per = (size_t)info.input_h * info.input_w * info.input_c;
        x = (float *)malloc(per * sizeof(float));
        probs = (float *)malloc(info.num_classes * sizeof(float));
        if (x == NULL || probs == NULL) {
            free(x);
            free(probs);
            close_session(&s);
            return fail("out of memory", NULL);
        }
        for (k = 0; k < per; ++k) x[k] = (float)(k % 7) / 7.0f;
        for (r = 0; r < repeats; ++r) {
            uint64_t t0 = wsrun_clock_now();
            int b;
            for (b = 0; b < batch; ++b) ws_switch(&s.rt, t);
            sw[r] = (double)(wsrun_clock_now() - t0) * wsrun_clock_scale / batch;
            t0 = wsrun_clock_now();
            ws_infer(&s.rt, x, per, probs, info.num_classes);
            inf[r] = (double)(wsrun_clock_now() - t0) * wsrun_clock_scale;
        }
        {
            infer_call call;
            call.rt = &s.rt;
            call.x = x;
            call.probs = probs;
            call.per = per;
            call.classes = info.num_classes;
            printf("%s %.6g %.6g %lu\n", info.name, median(sw, repeats), median(inf, repeats),
                   (unsigned long)wsrun_stack_used(infer_once, &call));
        }
        free(x);
        free(probs);
    }
    close_session(&s);
    return 0;
}

static int usage(void) {
    fprintf(stderr,
            "usage: %s info BLOB\n"
            "       %s run BLOB TASK INPUT [OUT]\n"
            "       %s sequence BLOB TASK INPUT OUT [TASK INPUT OUT ...]\n"
            "       %s eval BLOB TASK DATA LABELS\n"
            "       %s bench BLOB [REPEATS]\n",
            program, program, program, program, program);
    return 2;
}

int main(int argc, char **argv) {
    const char *cmd;
    if (argc < 3) return usage();
    cmd = argv[1];
    if (strcmp(cmd, "info") == 0 && argc == 3) return cmd_info(argv[2]);
    if (strcmp(cmd, "run") == 0 && (argc == 5 || argc == 6)) return cmd_run(argc - 2, argv + 2);
    if (strcmp(cmd, "sequence") == 0) return cmd_sequence(argc - 2, argv + 2);
    if (strcmp(cmd, "eval") == 0 && argc == 6) return cmd_eval(argv + 2);
    if (strcmp(cmd, "bench") == 0 && (argc == 3 || argc == 4)) return cmd_bench(argc - 2, argv + 2);
    return usage();
}
