/* Generic level: plain scalar C, no target attribute. It is the reference every SIMD
 * level is tested against, so contraction into FMA is turned off: the results are the
 * same whatever -m flags the file is built with. */
#include "lmk_internal.h"
#include <math.h>

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

static void quantize_q8_generic(const float *x, int nblocks, int8_t *qx, float *dx) {
    for (int b = 0; b < nblocks; b++) {
        const float *v = x + 32 * b;
        float amax = 0;
        for (int i = 0; i < 32; i++) { float a = fabsf(v[i]); if (a > amax) amax = a; }
        float d = amax / 127.0f, inv = d > 0 ? 1.0f / d : 0.0f;
        dx[b] = d;
        for (int i = 0; i < 32; i++) qx[32 * b + i] = (int8_t)lrintf(v[i] * inv);
    }
}

static void matvec_q4_generic(const uint8_t *q, const uint16_t *scales, const uint16_t *mins,
                              int r0, int r1, int cols32, int ngroups, int group,
                              const int8_t *qx, const float *dx, const float *xsum, float *out) {
    const int rowBytes = cols32 / 2, nblocks = cols32 / 32, bpg = group / 32;
    float sd[nblocks + 8];   /* s_g(b) * dx[b] per block */
    float sg[ngroups + 8];   /* group scales as float */
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = q + (size_t)r * rowBytes;
        const uint16_t *sc = scales + (size_t)r * ngroups;
        const uint16_t *mn = mins ? mins + (size_t)r * ngroups : 0;
        float offset = 0;
        for (int g = 0; g < ngroups; g++) {
            sg[g] = lmk_half_to_float_sw(sc[g]);
            offset += (mn ? lmk_half_to_float_sw(mn[g]) : -8.0f * sg[g]) * xsum[g];
        }
        if (bpg == 1) { for (int b = 0; b < nblocks; b++) sd[b] = sg[b] * dx[b]; }
        else { for (int b = 0; b < nblocks; b++) sd[b] = sg[b / bpg] * dx[b]; }
        float total = 0;
        for (int b = 0; b < nblocks; b++) {
            int isum = 0;
            for (int j = 0; j < 16; j++) {
                uint8_t byte = row[16 * b + j];
                isum += (byte & 0x0F) * qx[32 * b + j] + (byte >> 4) * qx[32 * b + 16 + j];
            }
            total += sd[b] * (float)isum;
        }
        out[r] = total + offset;
    }
}

static void matvec_q8_generic(const int8_t *q, const void *scales, int r0, int r1, int cols32,
                              int ngroups, int group, const int8_t *qx, const float *dx, float *out) {
    const int nblocks = cols32 / 32;
    const int bpg = group > 0 ? group / 32 : nblocks;
    for (int r = r0; r < r1; r++) {
        const int8_t *row = q + (size_t)r * cols32;
        float rowScale = 1.0f;
        if (group == 0) memcpy(&rowScale, (const char *)scales + 4 * (size_t)r, 4);
        const uint16_t *gs = (const uint16_t *)scales + (size_t)r * ngroups;
        float total = 0;
        int b = 0;
        for (int g = 0; g < ngroups; g++) {
            const float s = group == 0 ? 1.0f : lmk_half_to_float_sw(gs[g]);
            const int end = b + bpg < nblocks ? b + bpg : nblocks;
            for (; b < end; b++) {
                int isum = 0;
                for (int j = 0; j < 32; j++) isum += row[32 * b + j] * qx[32 * b + j];
                total += s * dx[b] * (float)isum;
            }
        }
        out[r] = total * rowScale;
    }
}

/* int3 / int2 (bits = 3 / 2) · int8 activations: q4's arithmetic with the low-bit
 * block layout (4·bits bytes per 32 columns) and a min per group. */
static void matvec_lowbit_generic(const int bits, const uint8_t *q, const uint16_t *scales, const uint16_t *mins,
                                  int r0, int r1, int cols32, int ngroups, int group,
                                  const int8_t *qx, const float *dx, const float *xsum, float *out) {
    const int bb = 4 * bits, nblocks = cols32 / 32, rowBytes = nblocks * bb, bpg = group / 32;
    float sd[nblocks + 8];
    float sg[ngroups + 8];
    uint8_t codes[32];
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = q + (size_t)r * rowBytes;
        const uint16_t *sc = scales + (size_t)r * ngroups, *mn = mins + (size_t)r * ngroups;
        float offset = 0;
        for (int g = 0; g < ngroups; g++) {
            sg[g] = lmk_half_to_float_sw(sc[g]);
            offset += lmk_half_to_float_sw(mn[g]) * xsum[g];
        }
        /* sd[b] = s_g(b)·dx[b] group by group: no division per block (it cost ~2x at g128). */
        if (bpg == 1) { for (int b = 0; b < nblocks; b++) sd[b] = sg[b] * dx[b]; }
        else {
            for (int g = 0, b = 0; g < ngroups; g++) {
                const float s = sg[g];
                for (const int e = b + bpg < nblocks ? b + bpg : nblocks; b < e; b++) sd[b] = s * dx[b];
            }
        }
        float total = 0;
        for (int b = 0; b < nblocks; b++) {
            lmk_lowbit_codes(row + (size_t)b * bb, bits, codes);
            int isum = 0;
            for (int i = 0; i < 32; i++) isum += codes[i] * qx[32 * b + i];
            total += sd[b] * (float)isum;
        }
        out[r] = total + offset;
    }
}

static void matvec_q3_generic(const uint8_t *q, const uint16_t *scales, const uint16_t *mins, int r0, int r1, int cols32, int ngroups,
                              int group, const int8_t *qx, const float *dx, const float *xsum, float *out) {
    matvec_lowbit_generic(3, q, scales, mins, r0, r1, cols32, ngroups, group, qx, dx, xsum, out);
}

static void matvec_q2_generic(const uint8_t *q, const uint16_t *scales, const uint16_t *mins, int r0, int r1, int cols32, int ngroups,
                              int group, const int8_t *qx, const float *dx, const float *xsum, float *out) {
    matvec_lowbit_generic(2, q, scales, mins, r0, r1, cols32, ngroups, group, qx, dx, xsum, out);
}

/* Rows [r0, r1) as floats: s·code, then + m (FP_CONTRACT is off in this file). */
static void dequant_lowbit_generic(const int bits, const uint8_t *q, const uint16_t *scales, const uint16_t *mins,
                                   int r0, int r1, int cols, int ngroups, int group, float *out) {
    const int bb = 4 * bits, nblocks = (cols + 31) / 32, rowBytes = nblocks * bb;
    uint8_t codes[32];
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = q + (size_t)r * rowBytes;
        float *o = out + (size_t)(r - r0) * cols;
        for (int b = 0; b < nblocks; b++) {
            lmk_lowbit_codes(row + (size_t)b * bb, bits, codes);
            const int g = 32 * b / group;
            const float s = lmk_half_to_float_sw(scales[(size_t)r * ngroups + g]), m = lmk_half_to_float_sw(mins[(size_t)r * ngroups + g]);
            for (int i = 0; i < 32 && 32 * b + i < cols; i++) {
                const float v = s * (float)codes[i];
                o[32 * b + i] = v + m;
            }
        }
    }
}

static void dequant_q3_generic(const uint8_t *q, const uint16_t *scales, const uint16_t *mins, int r0, int r1, int cols, int ngroups, int group, float *out) {
    dequant_lowbit_generic(3, q, scales, mins, r0, r1, cols, ngroups, group, out);
}

static void dequant_q2_generic(const uint8_t *q, const uint16_t *scales, const uint16_t *mins, int r0, int r1, int cols, int ngroups, int group, float *out) {
    dequant_lowbit_generic(2, q, scales, mins, r0, r1, cols, ngroups, group, out);
}

const lmk_kernels lmk_table_generic = {
    .name = "generic",
    .level = LMK_LEVEL_GENERIC,
    .quantize_q8 = quantize_q8_generic,
    .matvec_q4 = matvec_q4_generic,
    .matvec_q8 = matvec_q8_generic,
    .matvec_nm = lmk_matvec_nm_generic,
    .matvec_nm_f = lmk_matvec_nm_f_generic,
    .matvec_q3 = matvec_q3_generic,
    .matvec_q2 = matvec_q2_generic,
    .dequant_q3 = dequant_q3_generic,
    .dequant_q2 = dequant_q2_generic,
    .exp = &lmk_exp_generic,
    .kv = &lmk_kv_generic,
};
