/* Private to the CKernels target: the per-level tables and shared helpers. */
#ifndef LMKIT_CKERNELS_INTERNAL_H
#define LMKIT_CKERNELS_INTERNAL_H
#include "ckernels.h"
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define LMK_X86 1
/* Per-function instruction sets. The target itself is compiled for baseline x86-64, so
 * only functions carrying one of these may contain AVX code, and they may only run
 * after lmk_cpu_supports said yes for their level. */
#define LMK_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define LMK_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
/* Code that must run on any x86-64 CPU (the cpuid check and the load-time constructor):
 * forbids AVX even if the file is built with -march=native. */
#define LMK_TARGET_BASELINE __attribute__((target("no-avx")))
#else
#define LMK_TARGET_BASELINE
#endif

/* IEEE half → float, exact, no F16C needed. */
static inline float lmk_half_to_float_sw(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0) {
        if (man == 0) { bits = sign; }
        else { exp = 127 - 15 + 1; while (!(man & 0x400)) { man <<= 1; exp--; } man &= 0x3FF; bits = sign | (exp << 23) | (man << 13); }
    } else if (exp == 31) { bits = sign | 0x7F800000 | (man << 13); }
    else { bits = sign | ((exp + 127 - 15) << 23) | (man << 13); }
    float f; memcpy(&f, &bits, 4); return f;
}

/* The 32 codes of one int2 (bits = 2, 8 bytes) or int3 (bits = 3, 12 bytes) block, in
 * column order (ckernels.h: "int2 rows", "int3 rows"); the mask is read byte by byte
 * (little-endian whatever the host). The scalar definition of the layout. */
static inline void lmk_lowbit_codes(const uint8_t *blk, int bits, uint8_t codes[32]) {
    for (int i = 0; i < 32; i++) codes[i] = (uint8_t)((blk[i & 7] >> (2 * (i >> 3))) & 3);
    if (bits == 3) {
        const uint32_t m = (uint32_t)blk[8] | (uint32_t)blk[9] << 8 | (uint32_t)blk[10] << 16 | (uint32_t)blk[11] << 24;
        for (int i = 0; i < 32; i++) codes[i] |= (uint8_t)(((m >> i) & 1) << 2);
    }
}

#define LMK_NM_ARGS int kind, const void *q, const void *scales, const uint16_t *mins, const uint8_t *mask, \
    int r0, int r1, int cols32, int ngroups, int group, const int8_t *qx, const float *dx, float *out
#define LMK_NMF_ARGS int kind, const void *q, const uint8_t *mask, int r0, int r1, int cols, int cols32, const float *x, float *out
void lmk_matvec_nm_generic(LMK_NM_ARGS);
void lmk_matvec_nm_f_generic(LMK_NMF_ARGS);
#ifdef LMK_X86
void lmk_matvec_nm_avx2(LMK_NM_ARGS);
void lmk_matvec_nm_avx512(LMK_NM_ARGS);
void lmk_matvec_nm_vbmi2(LMK_NM_ARGS);
void lmk_matvec_nm_f_avx2(LMK_NMF_ARGS);
void lmk_matvec_nm_f_avx512(LMK_NMF_ARGS);
extern const lmk_kernels lmk_table_avx512vbmi2;
#endif

extern const lmk_kernels lmk_table_generic;
extern const lmk_exp_kernels lmk_exp_generic;
extern const lmk_kv_kernels lmk_kv_generic;
#ifdef LMK_X86
extern const lmk_kernels lmk_table_avx2;
extern const lmk_kernels lmk_table_avx512vnni;
extern const lmk_exp_kernels lmk_exp_avx2;
extern const lmk_exp_kernels lmk_exp_avx512;
extern const lmk_kv_kernels lmk_kv_avx2;
extern const lmk_kv_kernels lmk_kv_avx512;
#endif
#endif
