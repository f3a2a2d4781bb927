// gen_blocks writes ggml_blocks.safetensors: ggml's own dequantization of
// pseudo-random blocks of every type zimage decodes, and ggml's encoders
// (the _ref ones, and the importance-matrix ones) applied to assorted
// inputs. The Go tests in model/gguf compare against it bit for bit.
//
// It calls ggml-quants.c from a ggml checkout and contains none of it; see
// gen.sh for the build. Deterministic: a fixed splitmix64 stream.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml.h"
#include "ggml-quants.h"

// ggml-quants.o refers to these for error paths the generator never takes.
void ggml_abort(const char *file, int line, const char *fmt, ...) {
    fprintf(stderr, "ggml_abort at %s:%d\n", file, line);
    abort();
}
// The encoders size rows with these; only the types generated here.
static int64_t blck(enum ggml_type t) { return t == GGML_TYPE_Q4_K ? 256 : 32; }
size_t ggml_type_size(enum ggml_type t) {
    switch (t) {
    case GGML_TYPE_Q8_0: return 34;
    case GGML_TYPE_Q4_0: return 18;
    case GGML_TYPE_Q4_1: return 20;
    case GGML_TYPE_Q5_0: return 22;
    case GGML_TYPE_Q5_1: return 24;
    case GGML_TYPE_Q4_K: return 144;
    default: abort();
    }
}
size_t ggml_row_size(enum ggml_type t, int64_t ne) { return ggml_type_size(t) * (size_t)(ne / blck(t)); }
const char *ggml_type_name(enum ggml_type type) { (void)type; return "?"; }

static uint64_t rng = 0x5eed2024ULL;
static uint64_t next_u64(void) {
    uint64_t z = (rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static float uniform(void) { return (float)((next_u64() >> 40) * (1.0 / 16777216.0)); } // [0,1)
static float normal(void) {
    float u = uniform() + 1e-7f, v = uniform();
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}
// A finite half: random sign, exponent and mantissa (no Inf/NaN).
static uint16_t finite_half(void) {
    uint16_t h;
    do { h = (uint16_t)next_u64(); } while ((h & 0x7c00) == 0x7c00);
    return h;
}

// --- a minimal safetensors writer ---
#define MAXT 64
static struct { char name[64]; const char *dtype; int64_t shape; void *data; size_t bytes; } ts[MAXT];
static int nts;
static void add(const char *name, const char *dtype, int64_t n, size_t elem, void *data) {
    snprintf(ts[nts].name, sizeof ts[nts].name, "%s", name);
    ts[nts].dtype = dtype; ts[nts].shape = n; ts[nts].data = data; ts[nts].bytes = (size_t)n * elem;
    nts++;
}
static void write_file(const char *path) {
    char *hdr = malloc(1 << 16); size_t h = 0, off = 0;
    h += sprintf(hdr + h, "{");
    for (int i = 0; i < nts; i++) {
        h += sprintf(hdr + h, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld],\"data_offsets\":[%zu,%zu]}",
                     i ? "," : "", ts[i].name, ts[i].dtype, (long long)ts[i].shape, off, off + ts[i].bytes);
        off += ts[i].bytes;
    }
    h += sprintf(hdr + h, "}");
    while (h % 8) hdr[h++] = ' ';
    FILE *f = fopen(path, "wb");
    uint64_t n = h;
    fwrite(&n, 8, 1, f); fwrite(hdr, 1, h, f);
    for (int i = 0; i < nts; i++) fwrite(ts[i].data, 1, ts[i].bytes, f);
    fclose(f);
}

typedef void (*dequant_fn)(const void *, float *, int64_t);
struct dq { const char *name; int block, bytes, nblocks; dequant_fn fn; int half_at[3]; };

// Offsets of the F16 scale fields in each block (-1: none), so that random
// blocks get finite scales; the other bytes are uniformly random.
static const struct dq dqs[] = {
    {"Q4_0", 32, 18, 48, (dequant_fn)dequantize_row_q4_0, {0, -1, -1}},
    {"Q4_1", 32, 20, 48, (dequant_fn)dequantize_row_q4_1, {0, 2, -1}},
    {"Q5_0", 32, 22, 48, (dequant_fn)dequantize_row_q5_0, {0, -1, -1}},
    {"Q5_1", 32, 24, 48, (dequant_fn)dequantize_row_q5_1, {0, 2, -1}},
    {"Q8_0", 32, 34, 48, (dequant_fn)dequantize_row_q8_0, {0, -1, -1}},
    {"Q2_K", 256, 84, 12, (dequant_fn)dequantize_row_q2_K, {80, 82, -1}},
    {"Q3_K", 256, 110, 12, (dequant_fn)dequantize_row_q3_K, {108, -1, -1}},
    {"Q4_K", 256, 144, 12, (dequant_fn)dequantize_row_q4_K, {0, 2, -1}},
    {"Q5_K", 256, 176, 12, (dequant_fn)dequantize_row_q5_K, {0, 2, -1}},
    {"Q6_K", 256, 210, 12, (dequant_fn)dequantize_row_q6_K, {208, -1, -1}},
};

// Inputs for the encoders: 16 rows of 512, each row a different shape of
// data (8 32-blocks or 2 super-blocks per half row see different cases).
#define ROWS 16
#define ROW 512
static void fill_inputs(float *x) {
    for (int r = 0; r < ROWS; r++) {
        float *y = x + r * ROW;
        for (int i = 0; i < ROW; i++) {
            switch (r) {
            case 0: y[i] = normal() * 0.05f; break;                      // weight-like
            case 1: y[i] = normal(); break;
            case 2: y[i] = uniform() * 2 - 1; break;
            case 3: y[i] = 1.0f; break;                                  // norm weights
            case 4: y[i] = 0.0f; break;                                  // all zero
            case 5: y[i] = (i % 37 == 0) ? 3.5f : 0.0f; break;           // sparse
            case 6: y[i] = -fabsf(normal()); break;                      // all negative
            case 7: y[i] = fabsf(normal()) + 2.0f; break;                // all positive, offset
            case 8: y[i] = normal() * 1000.0f; break;                    // large
            case 9: y[i] = normal() * 1e-6f; break;                      // tiny (subnormal halves)
            case 10: y[i] = (i & 1) ? 1.0f : -1.0f; break;               // two values
            case 11: y[i] = normal() * ((i / 32) % 4 == 0 ? 10.0f : 0.01f); break; // uneven blocks
            case 12: y[i] = (float)((i % 32) - 16) / 16.0f; break;       // ramps
            case 13: y[i] = normal() * 0.05f + (i % 256 < 32 ? 0.5f : 0.0f); break;
            case 14: y[i] = ldexpf(normal(), (int)(uniform() * 20) - 10); break; // mixed magnitudes
            default: y[i] = normal() * 0.02f - 0.01f; break;
            }
        }
    }
}

int main(int argc, char **argv) {
    const char *out = argc > 1 ? argv[1] : "ggml_blocks.safetensors";
    for (size_t t = 0; t < sizeof dqs / sizeof dqs[0]; t++) {
        const struct dq *q = &dqs[t];
        size_t nb = (size_t)q->nblocks * q->bytes;
        uint8_t *b = malloc(nb);
        for (size_t i = 0; i < nb; i++) b[i] = (uint8_t)next_u64();
        for (int k = 0; k < q->nblocks; k++) {
            uint8_t *blk = b + (size_t)k * q->bytes;
            if (k == 1) memset(blk, 0xff, q->bytes);  // every bit set
            if (k == 2) memset(blk, 0x00, q->bytes);  // every bit clear
            for (int j = 0; j < 3; j++) {
                int at = q->half_at[j];
                if (at < 0) continue;
                uint16_t h = finite_half();
                if (k == 1) h = 0x7bff;                // largest finite half
                if (k == 2) h = 0x3c00;                // 1.0
                if (k == 3) h = 0x0001;                // smallest subnormal
                if (k == 4) h = 0x8000;                // -0
                if (k == 5) h = (uint16_t)(0xfbff - j); // large negative
                memcpy(blk + at, &h, 2);
            }
        }
        float *v = malloc(sizeof(float) * (size_t)q->nblocks * q->block);
        q->fn(b, v, (int64_t)q->nblocks * q->block);
        char name[64];
        snprintf(name, sizeof name, "dequant.%s.blocks", q->name);
        add(name, "U8", (int64_t)nb, 1, b);
        snprintf(name, sizeof name, "dequant.%s.values", q->name);
        add(name, "F32", (int64_t)q->nblocks * q->block, 4, v);
    }

    float *x = malloc(sizeof(float) * ROWS * ROW);
    fill_inputs(x);
    add("quant.inputs", "F32", ROWS * ROW, 4, x);
    float *w = malloc(sizeof(float) * ROW);
    for (int i = 0; i < ROW; i++) w[i] = 0.05f + uniform() * 4.0f;
    add("quant.weights", "F32", ROW, 4, w);

    struct { const char *name; int block, bytes; void (*ref)(const float *, void *, int64_t);
             size_t (*imat)(const float *, void *, int64_t, int64_t, const float *); } qs[] = {
        {"Q8_0", 32, 34, (void *)quantize_row_q8_0_ref, quantize_q8_0},
        {"Q4_0", 32, 18, (void *)quantize_row_q4_0_ref, quantize_q4_0},
        {"Q4_1", 32, 20, (void *)quantize_row_q4_1_ref, quantize_q4_1},
        {"Q5_0", 32, 22, (void *)quantize_row_q5_0_ref, quantize_q5_0},
        {"Q5_1", 32, 24, (void *)quantize_row_q5_1_ref, quantize_q5_1},
        {"Q4_K", 256, 144, (void *)quantize_row_q4_K_ref, quantize_q4_K},
    };
    for (size_t t = 0; t < sizeof qs / sizeof qs[0]; t++) {
        size_t nb = (size_t)ROWS * ROW / qs[t].block * qs[t].bytes;
        uint8_t *ref = malloc(nb), *imat = malloc(nb);
        qs[t].ref(x, ref, ROWS * ROW);
        qs[t].imat(x, imat, ROWS, ROW, w);
        char name[64];
        snprintf(name, sizeof name, "quant.%s.ref", qs[t].name);
        add(name, "U8", (int64_t)nb, 1, ref);
        snprintf(name, sizeof name, "quant.%s.imatrix", qs[t].name);
        add(name, "U8", (int64_t)nb, 1, imat);
    }
    write_file(out);
    return 0;
}
