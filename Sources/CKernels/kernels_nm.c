/* Compressed N:M rows (formats/lmpk.md, "Compressed N:M storage") · int8 activations,
 * at every level.
 *
 * A row's kept values are stored dense, in column order, in a value scheme (int8 codes,
 * or int4 codes in the nibble order of dense int4 rows), beside a bit mask of the kept
 * columns (bit i of byte j = column 8j + i). Compressed storage is only written for the
 * patterns where every 8 columns keep exactly 4 (1:2, 2:4, 4:8), so kept block k (32
 * values) holds the kept values of columns [64k, 64k + 64): its first 16 from
 * activation block 2k, its last 16 from block 2k + 1. A kernel gathers those 32
 * activation bytes by the mask and takes one integer dot product per half, scaled by
 * that half's dx.
 *
 * The generic kernel defines the result by the mask alone: the n-th set bit of a kept
 * block's 64 columns meets slot n (n < 32) of the block, whatever the mask holds. The
 * SIMD kernels assume the invariant above (which the loader checks, `NMCodec.validate`,
 * before a tensor is used); on a mask that breaks it they compute a different sum but
 * never read outside their inputs. */
#include "lmk_internal.h"
#include <math.h>
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* Byte j (0..3) of entry m = position (0..7) of the (j+1)-th set bit of m, or 0x80 when
 * m has fewer set bits (a pshufb index that reads as 0). */
static const uint32_t nm_gather_index[256] = {
    0x80808080, 0x80808000, 0x80808001, 0x80800100, 0x80808002, 0x80800200, 0x80800201, 0x80020100,
    0x80808003, 0x80800300, 0x80800301, 0x80030100, 0x80800302, 0x80030200, 0x80030201, 0x03020100,
    0x80808004, 0x80800400, 0x80800401, 0x80040100, 0x80800402, 0x80040200, 0x80040201, 0x04020100,
    0x80800403, 0x80040300, 0x80040301, 0x04030100, 0x80040302, 0x04030200, 0x04030201, 0x03020100,
    0x80808005, 0x80800500, 0x80800501, 0x80050100, 0x80800502, 0x80050200, 0x80050201, 0x05020100,
    0x80800503, 0x80050300, 0x80050301, 0x05030100, 0x80050302, 0x05030200, 0x05030201, 0x03020100,
    0x80800504, 0x80050400, 0x80050401, 0x05040100, 0x80050402, 0x05040200, 0x05040201, 0x04020100,
    0x80050403, 0x05040300, 0x05040301, 0x04030100, 0x05040302, 0x04030200, 0x04030201, 0x03020100,
    0x80808006, 0x80800600, 0x80800601, 0x80060100, 0x80800602, 0x80060200, 0x80060201, 0x06020100,
    0x80800603, 0x80060300, 0x80060301, 0x06030100, 0x80060302, 0x06030200, 0x06030201, 0x03020100,
    0x80800604, 0x80060400, 0x80060401, 0x06040100, 0x80060402, 0x06040200, 0x06040201, 0x04020100,
    0x80060403, 0x06040300, 0x06040301, 0x04030100, 0x06040302, 0x04030200, 0x04030201, 0x03020100,
    0x80800605, 0x80060500, 0x80060501, 0x06050100, 0x80060502, 0x06050200, 0x06050201, 0x05020100,
    0x80060503, 0x06050300, 0x06050301, 0x05030100, 0x06050302, 0x05030200, 0x05030201, 0x03020100,
    0x80060504, 0x06050400, 0x06050401, 0x05040100, 0x06050402, 0x05040200, 0x05040201, 0x04020100,
    0x06050403, 0x05040300, 0x05040301, 0x04030100, 0x05040302, 0x04030200, 0x04030201, 0x03020100,
    0x80808007, 0x80800700, 0x80800701, 0x80070100, 0x80800702, 0x80070200, 0x80070201, 0x07020100,
    0x80800703, 0x80070300, 0x80070301, 0x07030100, 0x80070302, 0x07030200, 0x07030201, 0x03020100,
    0x80800704, 0x80070400, 0x80070401, 0x07040100, 0x80070402, 0x07040200, 0x07040201, 0x04020100,
    0x80070403, 0x07040300, 0x07040301, 0x04030100, 0x07040302, 0x04030200, 0x04030201, 0x03020100,
    0x80800705, 0x80070500, 0x80070501, 0x07050100, 0x80070502, 0x07050200, 0x07050201, 0x05020100,
    0x80070503, 0x07050300, 0x07050301, 0x05030100, 0x07050302, 0x05030200, 0x05030201, 0x03020100,
    0x80070504, 0x07050400, 0x07050401, 0x05040100, 0x07050402, 0x05040200, 0x05040201, 0x04020100,
    0x07050403, 0x05040300, 0x05040301, 0x04030100, 0x05040302, 0x04030200, 0x04030201, 0x03020100,
    0x80800706, 0x80070600, 0x80070601, 0x07060100, 0x80070602, 0x07060200, 0x07060201, 0x06020100,
    0x80070603, 0x07060300, 0x07060301, 0x06030100, 0x07060302, 0x06030200, 0x06030201, 0x03020100,
    0x80070604, 0x07060400, 0x07060401, 0x06040100, 0x07060402, 0x06040200, 0x06040201, 0x04020100,
    0x07060403, 0x06040300, 0x06040301, 0x04030100, 0x06040302, 0x04030200, 0x04030201, 0x03020100,
    0x80070605, 0x07060500, 0x07060501, 0x06050100, 0x07060502, 0x06050200, 0x06050201, 0x05020100,
    0x07060503, 0x06050300, 0x06050301, 0x05030100, 0x06050302, 0x05030200, 0x05030201, 0x03020100,
    0x07060504, 0x06050400, 0x06050401, 0x05040100, 0x06050402, 0x05040200, 0x05040201, 0x04020100,
    0x06050403, 0x05040300, 0x05040301, 0x04030100, 0x05040302, 0x04030200, 0x04030201, 0x03020100
};

static inline float nm_scale(int kind, const void *scales, int r, int ngroups, int g) {
    if (kind == LMK_NM_INT8 && ngroups == 0) { float s; memcpy(&s, (const char *)scales + 4 * (size_t)r, 4); return s; }
    return lmk_half_to_float_sw(((const uint16_t *)scales)[(size_t)r * ngroups + g]);
}

/* Row bytes of the kept codes: int8 kcols32, int4 kcols32 / 2. */
static inline size_t nm_row_bytes(int kind, int kcols32) { return kind == LMK_NM_INT8 ? (size_t)kcols32 : (size_t)kcols32 / 2; }

static inline int nm_code(int kind, const uint8_t *row, int slot) {
    if (kind == LMK_NM_INT8) return (int8_t)row[slot];
    const int b = slot / 32, j = slot % 32;
    const uint8_t byte = row[16 * b + (j & 15)];
    const int c = j < 16 ? (byte & 15) : (byte >> 4);
    return kind == LMK_NM_INT4S ? c - 8 : c;
}

static inline float nm_value_f(int kind, const void *q, size_t i) {
    if (kind == LMK_NMF_F32) { float f; memcpy(&f, (const char *)q + 4 * i, 4); return f; }
    const uint16_t h = ((const uint16_t *)q)[i];
    if (kind == LMK_NMF_F16) return lmk_half_to_float_sw(h);
    const uint32_t b = (uint32_t)h << 16; float f; memcpy(&f, &b, 4); return f;
}

static void matvec_nm_generic(int kind, const void *q, const void *scales, const uint16_t *mins, const uint8_t *mask,
                              int r0, int r1, int cols32, int ngroups, int group,
                              const int8_t *qx, const float *dx, float *out) {
    const int nb = cols32 / 32, nkb = (nb + 1) / 2, kcols32 = 32 * nkb, mstride = cols32 / 8;
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = (const uint8_t *)q + (size_t)r * nm_row_bytes(kind, kcols32);
        const uint8_t *mk = mask + (size_t)r * mstride;
        float total = 0;
        for (int k = 0; k < nkb; k++) {
            const int g = group > 0 ? 32 * k / group : 0;
            const float s = kind == LMK_NM_INT8 && group == 0 ? 1.0f : nm_scale(kind, scales, r, ngroups, g);
            const float m = kind == LMK_NM_INT4 ? lmk_half_to_float_sw(mins[(size_t)r * ngroups + g]) : 0.0f;
            int n = 0;
            for (int h = 0; h < 2 && 2 * k + h < nb; h++) {
                const int b = 2 * k + h;
                int isum = 0, xs = 0;
                for (int i = 0; i < 32 && n < 32; i++) {
                    if (!((mk[4 * b + i / 8] >> (i % 8)) & 1)) continue;
                    const int a = qx[32 * b + i];
                    isum += nm_code(kind, row, 32 * k + n) * a;
                    xs += a;
                    n++;
                }
                total += s * dx[b] * (float)isum;
                if (kind == LMK_NM_INT4) total += m * dx[b] * (float)xs;
            }
        }
        out[r] = kind == LMK_NM_INT8 && group == 0 ? total * nm_scale(kind, scales, r, 0, 0) : total;
    }
}

#ifdef LMK_X86
#include <immintrin.h>
#define INLINE static inline __attribute__((always_inline))

/* The kept activations of 16 columns (mask bytes m0, m1) in the low 8 bytes. */
#define NM_GATHER16(T, SUF) \
INLINE T __m128i nm_gather16_##SUF(const int8_t *x, uint8_t m0, uint8_t m1) { \
    const uint64_t idx = (uint64_t)nm_gather_index[m0] | (uint64_t)(nm_gather_index[m1] + 0x08080808u) << 32; \
    return _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)x), _mm_set_epi64x((long long)0x8080808080808080ull, (long long)idx)); \
}

/* One level's kernel: per kept block, the 32 gathered activations (two halves of 16),
 * the block's codes as 32 bytes, the 8 int32 lane sums of their products (lanes 0–3:
 * half 0, 4–7: half 1), scaled per half and FMA-accumulated; int4 adds the activation
 * sums times the minimum (asymmetric) or −8·scale (symmetric, folded into the codes'
 * offset). DOT(u8, s8) is the level's unsigned × signed dot into 8 int32 lanes. */
#define NM_KERNEL(T, SUF, NAME, DOT) \
NM_GATHER16(T, SUF) \
T static void NAME(int kind, const void *q, const void *scales, const uint16_t *mins, const uint8_t *mask, \
                   int r0, int r1, int cols32, int ngroups, int group, const int8_t *qx, const float *dx, float *out) { \
    const int nb = cols32 / 32, nkb = (nb + 1) / 2, kcols32 = 32 * nkb, mstride = cols32 / 8; \
    const __m256i lo4 = _mm256_set1_epi8(15), ones8 = _mm256_set1_epi8(1); \
    for (int r = r0; r < r1; r++) { \
        const uint8_t *row = (const uint8_t *)q + (size_t)r * nm_row_bytes(kind, kcols32); \
        const uint8_t *mk = mask + (size_t)r * mstride; \
        __m256 acc = _mm256_setzero_ps(); \
        for (int k = 0; k < nkb; k++) { \
            const int b = 2 * k, full = b + 1 < nb; \
            const __m128i h0 = _mm_unpacklo_epi64(nm_gather16_##SUF(qx + 32 * b, mk[4 * b], mk[4 * b + 1]), \
                                                  nm_gather16_##SUF(qx + 32 * b + 16, mk[4 * b + 2], mk[4 * b + 3])); \
            const __m128i h1 = full ? _mm_unpacklo_epi64(nm_gather16_##SUF(qx + 32 * b + 32, mk[4 * b + 4], mk[4 * b + 5]), \
                                                         nm_gather16_##SUF(qx + 32 * b + 48, mk[4 * b + 6], mk[4 * b + 7])) : _mm_setzero_si128(); \
            const __m256i a = _mm256_set_m128i(h1, h0); \
            const int g = group > 0 ? 32 * k / group : 0; \
            const float d0 = dx[b], d1 = full ? dx[b + 1] : 0.0f; \
            if (kind == LMK_NM_INT8) { \
                const __m256i c = _mm256_loadu_si256((const __m256i *)(row + 32 * k)); \
                const __m256i p = DOT(_mm256_sign_epi8(c, c), _mm256_sign_epi8(a, c)); \
                const float s = group == 0 ? 1.0f : _cvtsh_ss(((const uint16_t *)scales)[(size_t)r * ngroups + g]); \
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set_m128(_mm_set1_ps(s * d1), _mm_set1_ps(s * d0)), acc); \
            } else { \
                const __m128i v = _mm_loadu_si128((const __m128i *)(row + 16 * k)); \
                const __m256i c = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), lo4); \
                const __m256i p = DOT(c, a), xs = DOT(ones8, a); \
                const float s = _cvtsh_ss(((const uint16_t *)scales)[(size_t)r * ngroups + g]); \
                const float m = kind == LMK_NM_INT4 ? _cvtsh_ss(mins[(size_t)r * ngroups + g]) : -8.0f * s; \
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set_m128(_mm_set1_ps(s * d1), _mm_set1_ps(s * d0)), acc); \
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(xs), _mm256_set_m128(_mm_set1_ps(m * d1), _mm_set1_ps(m * d0)), acc); \
            } \
        } \
        __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1)); \
        s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4)); \
        s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4)); \
        float t = _mm_cvtss_f32(s4); \
        if (kind == LMK_NM_INT8 && group == 0) { float rs; memcpy(&rs, (const char *)scales + 4 * (size_t)r, 4); t *= rs; } \
        out[r] = t; \
    } \
}

#define A2 LMK_TARGET_AVX2
INLINE A2 __m256i nm_dot_avx2(__m256i u, __m256i s) { return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)); }
NM_KERNEL(A2, avx2, lmk_matvec_nm_avx2_impl, nm_dot_avx2)
#define A5 LMK_TARGET_AVX512
INLINE A5 __m256i nm_dot_vnni(__m256i u, __m256i s) { return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s); }
NM_KERNEL(A5, avx512, lmk_matvec_nm_avx512_impl, nm_dot_vnni)

/* Float values, AVX2: per 16 columns, the kept 8 activations by two vpermps (the mask
 * bytes' positions from nm_gather_index; lanes of a byte with fewer than 4 set bits
 * zeroed), times 8 values widened to float; one FMA chain, lanes summed at the end. */
INLINE A2 __m256 nm_gather8f_avx2(const float *x, uint8_t m0, uint8_t m1) {
    const uint64_t packed = (uint64_t)nm_gather_index[m0] | (uint64_t)nm_gather_index[m1] << 32;
    const __m256i idx = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)packed));
    const __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(x), idx), hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(x + 8), idx);
    const __m256 v = _mm256_blend_ps(lo, hi, 0xF0);
    return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(8), idx)));
}
INLINE A2 __m256 nm_values8_avx2(int kind, const void *q, size_t i, int n) {
    if (n < 8) { float t[8] = {0}; for (int k = 0; k < n; k++) t[k] = nm_value_f(kind, q, i + k); return _mm256_loadu_ps(t); }
    if (kind == LMK_NMF_F32) return _mm256_loadu_ps((const float *)q + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)q + i));
    if (kind == LMK_NMF_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
A2 static void matvec_nm_f_avx2(LMK_NMF_ARGS) {
    const int kc = cols / 2, mstride = cols32 / 8;
    for (int r = r0; r < r1; r++) {
        const uint8_t *mk = mask + (size_t)r * mstride;
        __m256 acc = _mm256_setzero_ps();
        for (int c = 0, j = 0; c < cols32 && j < kc; c += 16, j += 8) {
            const __m256 xv = nm_gather8f_avx2(x + c, mk[c / 8], mk[c / 8 + 1]);
            acc = _mm256_fmadd_ps(nm_values8_avx2(kind, q, (size_t)r * kc + j, kc - j < 8 ? kc - j : 8), xv, acc);
        }
        __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
        out[r] = _mm_cvtss_f32(s4);
    }
}
void lmk_matvec_nm_f_avx2(LMK_NMF_ARGS) { matvec_nm_f_avx2(kind, q, mask, r0, r1, cols, cols32, x, out); }

/* Float values, AVX-512: per 32 columns, vcompressps of each 16 activations by its 16
 * mask bits (8 kept each, unused lanes zero), the two halves joined, times 16 values
 * (masked load at the row's end). */
#define A5F LMK_TARGET_AVX512
A5F static void matvec_nm_f_avx512(LMK_NMF_ARGS) {
    const int kc = cols / 2, mstride = cols32 / 8;
    for (int r = r0; r < r1; r++) {
        const uint8_t *mk = mask + (size_t)r * mstride;
        __m512 acc = _mm512_setzero_ps();
        for (int c = 0, j = 0; c < cols32 && j < kc; c += 32, j += 16) {
            uint32_t m32; memcpy(&m32, mk + c / 8, 4);
            const __m512 a = _mm512_maskz_compress_ps((__mmask16)m32, _mm512_loadu_ps(x + c));
            const __m512 b = _mm512_maskz_compress_ps((__mmask16)(m32 >> 16), _mm512_loadu_ps(x + c + 16));
            const __m512 xv = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(a), _mm256_castps_pd(_mm512_castps512_ps256(b)), 1));
            const int n = kc - j < 16 ? kc - j : 16;
            const __mmask16 lm = (__mmask16)((1u << n) - 1);
            const size_t i = (size_t)r * kc + j;
            __m512 w;
            if (kind == LMK_NMF_F32) w = n == 16 ? _mm512_loadu_ps((const float *)q + i) : _mm512_maskz_loadu_ps(lm, (const float *)q + i);
            else {
                const __m256i h = n == 16 ? _mm256_loadu_si256((const __m256i *)((const uint16_t *)q + i)) : _mm256_maskz_loadu_epi16(lm, (const uint16_t *)q + i);
                w = kind == LMK_NMF_F16 ? _mm512_cvtph_ps(h) : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
            }
            acc = _mm512_fmadd_ps(w, xv, acc);
        }
        out[r] = _mm512_reduce_add_ps(acc);
    }
}
void lmk_matvec_nm_f_avx512(LMK_NMF_ARGS) { matvec_nm_f_avx512(kind, q, mask, r0, r1, cols, cols32, x, out); }

/* AVX-512 VBMI2: the kept codes are *expanded* to their columns (vpexpandb under the
 * row's mask, zeros elsewhere) and meet the dense activations, so a kept block
 * costs one expand more than a dense kernel's 64 columns and reads half the codes.
 * int8: vpdpbusd of (code XOR 0x80) with the activations, started from −128·Σx of each
 * lane's 4 activation bytes (per call), gives exactly Σ code·x (pruned columns have code
 * 0, so 128·x − 128·x); int4s: pruned columns expanded as code 8 (value 0), started from
 * −8·Σx; int4: codes 0..15 expanded as bytes, Σ code·x directly, and the kept activations'
 * sum (vpdpbusd of the mask's ones) for the minimum. (Float values keep the AVX-512 VNNI
 * level's vcompressps gather: measured faster on Zen 4 than expanding 16-bit values.)
 * Lanes 0–7 hold block 2k, lanes 8–15 block 2k + 1; dx per lane from a per-call table. */
#define A5V __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512vbmi2,avx2,fma,f16c")))
INLINE A5V float nm_hsum512(__m512 v) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    return _mm_cvtss_f32(s4);
}
/* One row of matvec_nm_vbmi2 for a constant `kind` (the branches fold away): full pairs
 * with plain loads, then the last, half pair (masked), if any. `sg` holds the row's group
 * scales as floats (the row scale's 1 for per-row int8), `mg` its minimums (int4) or
 * −8·scale (int4s). */
INLINE A5V float nm_row_vbmi2(const int kind, const uint8_t *row, const uint8_t *mk, const float *sg, const float *mg, int nkb, int nb,
                              int kpg, const int8_t *qx, const float *dxv, const int32_t *nc) {
    const __m512i lo4 = _mm512_set1_epi8(15), ones8 = _mm512_set1_epi8(1), bias = _mm512_set1_epi8((char)0x80), eight = _mm512_set1_epi8(8);
    __m512 acc = _mm512_setzero_ps(), accm = _mm512_setzero_ps();
    for (int k = 0; k < nkb; k++) {
        const int full = 2 * k + 1 < nb;
        uint64_t m64 = 0;
        if (full) memcpy(&m64, mk + 8 * k, 8); else memcpy(&m64, mk + 8 * k, 4);
        const __m512i xa = full ? _mm512_loadu_si512(qx + 64 * k) : _mm512_maskz_loadu_epi8((__mmask64)0xFFFFFFFFu, qx + 64 * k);
        const __m512 d = _mm512_loadu_ps(dxv + 16 * k);
        const int g = k / kpg;
        if (kind == LMK_NM_INT8) {
            const __m512i c = _mm512_maskz_expand_epi8((__mmask64)m64, _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(row + 32 * k))));
            const __m512i p = _mm512_dpbusd_epi32(_mm512_loadu_si512(nc + 16 * k), _mm512_xor_si512(c, bias), xa);
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(d, _mm512_set1_ps(sg[g])), acc);
        } else if (kind == LMK_NM_INT4S) {
            /* Pruned columns take code 8 (value 0), so Σ (code − 8)·x over all 64 columns is
             * the kept sum: vpdpbusd started from −8·Σx of each lane's 4 activations (nc / 16). */
            const __m128i v = _mm_loadu_si128((const __m128i *)(row + 16 * k));
            const __m256i u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), _mm256_set1_epi8(15));
            const __m512i c = _mm512_mask_expand_epi8(eight, (__mmask64)m64, _mm512_zextsi256_si512(u));
            const __m512i p = _mm512_dpbusd_epi32(_mm512_srai_epi32(_mm512_loadu_si512(nc + 16 * k), 4), c, xa);
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(d, _mm512_set1_ps(sg[g])), acc);
        } else {
            const __m128i v = _mm_loadu_si128((const __m128i *)(row + 16 * k));
            const __m256i u = _mm256_set_m128i(_mm_srli_epi16(v, 4), v);
            const __m512i c = _mm512_and_si512(_mm512_maskz_expand_epi8((__mmask64)m64, _mm512_zextsi256_si512(u)), lo4);
            const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c, xa);
            const __m512i xs = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_maskz_mov_epi8((__mmask64)m64, ones8), xa);
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(d, _mm512_set1_ps(sg[g])), acc);
            accm = _mm512_fmadd_ps(_mm512_cvtepi32_ps(xs), _mm512_mul_ps(d, _mm512_set1_ps(mg[g])), accm);
        }
    }
    return nm_hsum512(_mm512_add_ps(acc, accm));
}
A5V static void matvec_nm_vbmi2(LMK_NM_ARGS) {
    const int nb = cols32 / 32, nkb = (nb + 1) / 2, kcols32 = 32 * nkb, mstride = cols32 / 8;
    const int ng = group > 0 ? ngroups : 1, kpg = group > 0 ? group / 32 : nkb;
    float dxv[16 * (nkb > 0 ? nkb : 1)], sg[ng + 16], mg[ng + 16];
    int32_t nc[16 * (nkb > 0 ? nkb : 1)];
    for (int k = 0; k < nkb; k++) {
        for (int i = 0; i < 16; i++) {
            const int b = 2 * k + i / 8;
            dxv[16 * k + i] = b < nb ? dx[b] : 0.0f;
            int sx = 0;
            if (b < nb) for (int t = 0; t < 4; t++) sx += qx[32 * b + 4 * (i % 8) + t];
            nc[16 * k + i] = -128 * sx;
        }
    }
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = (const uint8_t *)q + (size_t)r * nm_row_bytes(kind, kcols32);
        const uint8_t *mk = mask + (size_t)r * mstride;
        float rowScale = 1.0f;
        if (group == 0) { memcpy(&rowScale, (const char *)scales + 4 * (size_t)r, 4); sg[0] = 1.0f; }
        else {
            const uint16_t *sc = (const uint16_t *)scales + (size_t)r * ngroups;
            for (int g = 0; g < ng; g++) sg[g] = _cvtsh_ss(sc[g]);
            if (kind == LMK_NM_INT4) { const uint16_t *mn = mins + (size_t)r * ngroups; for (int g = 0; g < ng; g++) mg[g] = _cvtsh_ss(mn[g]); }
            else if (kind == LMK_NM_INT4S) { for (int g = 0; g < ng; g++) mg[g] = -8.0f * sg[g]; }
        }
        float t;
        if (kind == LMK_NM_INT8) t = nm_row_vbmi2(LMK_NM_INT8, row, mk, sg, mg, nkb, nb, kpg, qx, dxv, nc);
        else if (kind == LMK_NM_INT4S) t = nm_row_vbmi2(LMK_NM_INT4S, row, mk, sg, mg, nkb, nb, kpg, qx, dxv, nc);
        else t = nm_row_vbmi2(LMK_NM_INT4, row, mk, sg, mg, nkb, nb, kpg, qx, dxv, nc);
        out[r] = t * rowScale;
    }
}
void lmk_matvec_nm_vbmi2(LMK_NM_ARGS) { matvec_nm_vbmi2(kind, q, scales, mins, mask, r0, r1, cols32, ngroups, group, qx, dx, out); }


void lmk_matvec_nm_avx2(int kind, const void *q, const void *scales, const uint16_t *mins, const uint8_t *mask,
                        int r0, int r1, int cols32, int ngroups, int group, const int8_t *qx, const float *dx, float *out) {
    lmk_matvec_nm_avx2_impl(kind, q, scales, mins, mask, r0, r1, cols32, ngroups, group, qx, dx, out);
}
void lmk_matvec_nm_avx512(int kind, const void *q, const void *scales, const uint16_t *mins, const uint8_t *mask,
                          int r0, int r1, int cols32, int ngroups, int group, const int8_t *qx, const float *dx, float *out) {
    lmk_matvec_nm_avx512_impl(kind, q, scales, mins, mask, r0, r1, cols32, ngroups, group, qx, dx, out);
}
#endif

/* Float values (LMK_NMF_F32 / F16 / BF16), float activations: out[r] = Σ_j w_j · x[c_j]
 * over the kept columns c_j in order (sequential sum). Value rows are `cols / 2` values
 * (not padded); `x` is padded with zeros to cols32. */

void lmk_matvec_nm_f_generic(LMK_NMF_ARGS) {
    const int kc = cols / 2, mstride = cols32 / 8;
    for (int r = r0; r < r1; r++) {
        const uint8_t *mk = mask + (size_t)r * mstride;
        float total = 0;
        int j = 0;
        for (int c = 0; c < cols32 && j < kc; c++) {
            if (!((mk[c / 8] >> (c % 8)) & 1)) continue;
            total += nm_value_f(kind, q, (size_t)r * kc + j) * x[c];
            j++;
        }
        out[r] = total;
    }
}

void lmk_matvec_nm_generic(int kind, const void *q, const void *scales, const uint16_t *mins, const uint8_t *mask,
                           int r0, int r1, int cols32, int ngroups, int group, const int8_t *qx, const float *dx, float *out) {
    matvec_nm_generic(kind, q, scales, mins, mask, r0, r1, cols32, ngroups, group, qx, dx, out);
}
