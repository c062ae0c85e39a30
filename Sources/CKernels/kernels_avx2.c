/* AVX2 level (AVX2 + FMA + F16C). matvec_q4 / matvec_q8 are the kernels lmkit shipped
 * when this target was built with -march=native, moved under a target attribute with
 * the same operation order, so their results are bit-identical to those builds (the
 * project's accuracy gates were measured with them). */
#include "lmk_internal.h"
#ifdef LMK_X86
#include <immintrin.h>
#include <math.h>

/* Vector helpers are always inlined: a __m256 argument passed to an out-of-line call
 * would use the target's baseline (non-AVX) ABI and go through memory (seen at -O0). */
#define INLINE static inline __attribute__((always_inline))

INLINE LMK_TARGET_AVX2 float half_to_float_f16c(uint16_t h) { return _cvtsh_ss(h); }

INLINE LMK_TARGET_AVX2 float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Bit-identical to the generic quantizer for every input (NaN and Inf included):
 * amax ignores NaN like `if (a > amax)` does (vmaxps returns its second operand when
 * the first is NaN), d and 1/d are the same IEEE operations, and vcvtps2dq rounds like
 * lrintf under the default rounding mode. The int8 code is the low byte of the 32-bit
 * result, which is what `(int8_t)lrintf` keeps: in range the two agree, and out of range
 * or NaN both give a multiple of 256 (0x80000000 here, LONG_MIN or a float ≥ 2^31 there). */
LMK_TARGET_AVX2 static void quantize_q8_avx2(const float *x, int nblocks, int8_t *qx, float *dx) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256i lowbyte = _mm256_set1_epi32(0xFF);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int b = 0; b < nblocks; b++) {
        const float *v = x + 32 * b;
        __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8);
        __m256 v2 = _mm256_loadu_ps(v + 16), v3 = _mm256_loadu_ps(v + 24);
        __m256 m = _mm256_setzero_ps();
        m = _mm256_max_ps(_mm256_and_ps(v0, absmask), m);
        m = _mm256_max_ps(_mm256_and_ps(v1, absmask), m);
        m = _mm256_max_ps(_mm256_and_ps(v2, absmask), m);
        m = _mm256_max_ps(_mm256_and_ps(v3, absmask), m);
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        const float amax = _mm_cvtss_f32(h);
        const float d = amax / 127.0f, inv = d > 0 ? 1.0f / d : 0.0f;
        dx[b] = d;
        const __m256 iv = _mm256_set1_ps(inv);
        __m256i i0 = _mm256_and_si256(_mm256_cvtps_epi32(_mm256_mul_ps(v0, iv)), lowbyte);
        __m256i i1 = _mm256_and_si256(_mm256_cvtps_epi32(_mm256_mul_ps(v1, iv)), lowbyte);
        __m256i i2 = _mm256_and_si256(_mm256_cvtps_epi32(_mm256_mul_ps(v2, iv)), lowbyte);
        __m256i i3 = _mm256_and_si256(_mm256_cvtps_epi32(_mm256_mul_ps(v3, iv)), lowbyte);
        /* 0..255 values: the unsigned-saturating packs are exact. Lane order after the
         * two in-lane packs is dwords (0 2 4 6 1 3 5 7) of 4 bytes each; permute back. */
        __m256i p = _mm256_packus_epi16(_mm256_packus_epi32(i0, i1), _mm256_packus_epi32(i2, i3));
        _mm256_storeu_si256((__m256i *)(qx + 32 * b), _mm256_permutevar8x32_epi32(p, order));
    }
}

LMK_TARGET_AVX2 static void matvec_q4_avx2(const uint8_t *q, const uint16_t *scales, const uint16_t *mins,
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
        int g = 0;
        __m256 off8 = _mm256_setzero_ps();
        for (; g + 8 <= ngroups; g += 8) {
            __m256 s8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + g)));
            _mm256_storeu_ps(sg + g, s8);
            __m256 m8 = mn ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mn + g))) : _mm256_mul_ps(s8, _mm256_set1_ps(-8.0f));
            off8 = _mm256_fmadd_ps(m8, _mm256_loadu_ps(xsum + g), off8);
        }
        offset = hsum256(off8);
        for (; g < ngroups; g++) {
            sg[g] = half_to_float_f16c(sc[g]);
            /* The -march=native build contracted this statement into one FMA; spelled out
             * so the result does not depend on -ffp-contract. */
            offset = fmaf(mn ? half_to_float_f16c(mn[g]) : -8.0f * sg[g], xsum[g], offset);
        }
        if (bpg == 1) { for (int b = 0; b < nblocks; b++) sd[b] = sg[b] * dx[b]; }
        else { for (int b = 0; b < nblocks; b++) sd[b] = sg[b / bpg] * dx[b]; }
        const __m128i m4 = _mm_set1_epi8(0x0F);
        const __m256i ones = _mm256_set1_epi16(1);
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        int b = 0;
        for (; b + 2 <= nblocks; b += 2) {
            __m128i bytes0 = _mm_loadu_si128((const __m128i *)(row + 16 * b));
            __m128i bytes1 = _mm_loadu_si128((const __m128i *)(row + 16 * b + 16));
            __m256i w0 = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes0, 4), m4), _mm_and_si128(bytes0, m4));
            __m256i w1 = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes1, 4), m4), _mm_and_si128(bytes1, m4));
            __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(w0, _mm256_loadu_si256((const __m256i *)(qx + 32 * b))), ones);
            __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(w1, _mm256_loadu_si256((const __m256i *)(qx + 32 * b + 32))), ones);
            acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_broadcast_ss(sd + b), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_broadcast_ss(sd + b + 1), acc1);
        }
        if (b < nblocks) {
            __m128i bytes0 = _mm_loadu_si128((const __m128i *)(row + 16 * b));
            __m256i w0 = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes0, 4), m4), _mm_and_si128(bytes0, m4));
            __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(w0, _mm256_loadu_si256((const __m256i *)(qx + 32 * b))), ones);
            acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_broadcast_ss(sd + b), acc0);
        }
        out[r] = hsum256(_mm256_add_ps(acc0, acc1)) + offset;
    }
}

LMK_TARGET_AVX2 static void matvec_q8_avx2(const int8_t *q, const void *scales, int r0, int r1, int cols32,
                                           int ngroups, int group, const int8_t *qx, const float *dx, float *out) {
    const int nblocks = cols32 / 32;
    const int bpg = group > 0 ? group / 32 : nblocks;
    for (int r = r0; r < r1; r++) {
        const int8_t *row = q + (size_t)r * cols32;
        float rowScale = 1.0f;
        if (group == 0) memcpy(&rowScale, (const char *)scales + 4 * (size_t)r, 4);
        const uint16_t *gs = (const uint16_t *)scales + (size_t)r * ngroups;
        const __m256i ones = _mm256_set1_epi16(1);
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        int b = 0;
        for (int g = 0; g < ngroups; g++) {
            const float s = group == 0 ? 1.0f : half_to_float_f16c(gs[g]);
            const int end = b + bpg < nblocks ? b + bpg : nblocks;
            for (; b < end; b++) {
                __m256i w = _mm256_loadu_si256((const __m256i *)(row + 32 * b));
                __m256i x = _mm256_loadu_si256((const __m256i *)(qx + 32 * b));
                /* maddubs(|w|, sign(x, w)) = w·x per byte pair: |-128| reads as 128 when
                 * unsigned, so any weight works; with qx in [-127, 127] the pair sums stay
                 * below int16 saturation (2·128·127 < 32767). */
                __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)), ones);
                __m256 f = _mm256_cvtepi32_ps(p);
                if (b & 1) acc1 = _mm256_fmadd_ps(f, _mm256_set1_ps(s * dx[b]), acc1);
                else acc0 = _mm256_fmadd_ps(f, _mm256_set1_ps(s * dx[b]), acc0);
            }
        }
        out[r] = hsum256(_mm256_add_ps(acc0, acc1)) * rowScale;
    }
}

/* ---------------------------------------------------------------------------------- */
/* int3 / int2. One 32-column block unpacks into 32 codes in column order in one register:
 * the int2 plane is a 64-bit word broadcast and shifted right by 0, 2, 4, 6 per 64-bit
 * lane (lane k = columns 8k..8k+7), masked with 3; for int3 the 32-bit high-bit mask is
 * spread to bytes (byte i tests bit i: vpshufb picks mask byte i/8, vpand + vpcmpeqb test
 * bit i%8) and contributes 4. maddubs(codes, qx) + madd(·, 1) give 8 exact int32 sums. */

INLINE LMK_TARGET_AVX2 __m256i lowbit_codes_avx2(const uint8_t *blk, const int bits) {
    uint64_t w;
    memcpy(&w, blk, 8);
    __m256i c = _mm256_and_si256(_mm256_srlv_epi64(_mm256_set1_epi64x((long long)w), _mm256_setr_epi64x(0, 2, 4, 6)), _mm256_set1_epi8(3));
    if (bits == 3) {
        uint32_t m;
        memcpy(&m, blk + 8, 4);
        const __m256i sel = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                             2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
        const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
        const __m256i h = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)m), sel), bit), bit);
        c = _mm256_or_si256(c, _mm256_and_si256(h, _mm256_set1_epi8(4)));
    }
    return c;
}

INLINE LMK_TARGET_AVX2 void matvec_lowbit_avx2(const int bits, const uint8_t *q, const uint16_t *scales, const uint16_t *mins,
                                               int r0, int r1, int cols32, int ngroups, int group,
                                               const int8_t *qx, const float *dx, const float *xsum, float *out) {
    const int bb = 4 * bits, nblocks = cols32 / 32, rowBytes = nblocks * bb, bpg = group / 32;
    float sd[nblocks + 8];
    float sg[ngroups + 8];
    const __m256i ones = _mm256_set1_epi16(1);
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = q + (size_t)r * rowBytes;
        const uint16_t *sc = scales + (size_t)r * ngroups, *mn = mins + (size_t)r * ngroups;
        int g = 0;
        __m256 off8 = _mm256_setzero_ps();
        for (; g + 8 <= ngroups; g += 8) {
            _mm256_storeu_ps(sg + g, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + g))));
            off8 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mn + g))), _mm256_loadu_ps(xsum + g), off8);
        }
        float offset = hsum256(off8);
        for (; g < ngroups; g++) {
            sg[g] = half_to_float_f16c(sc[g]);
            offset = fmaf(half_to_float_f16c(mn[g]), xsum[g], offset);
        }
        /* sd[b] = s_g(b)·dx[b] group by group: no division per block (it cost ~2x at g128). */
        if (bpg == 1) { for (int b = 0; b < nblocks; b++) sd[b] = sg[b] * dx[b]; }
        else {
            for (int g = 0, b = 0; g < ngroups; g++) {
                const float s = sg[g];
                for (const int e = b + bpg < nblocks ? b + bpg : nblocks; b < e; b++) sd[b] = s * dx[b];
            }
        }
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        int b = 0;
        for (; b + 2 <= nblocks; b += 2) {
            const __m256i w0 = lowbit_codes_avx2(row + (size_t)b * bb, bits), w1 = lowbit_codes_avx2(row + (size_t)(b + 1) * bb, bits);
            const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(w0, _mm256_loadu_si256((const __m256i *)(qx + 32 * b))), ones);
            const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(w1, _mm256_loadu_si256((const __m256i *)(qx + 32 * b + 32))), ones);
            acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_broadcast_ss(sd + b), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_broadcast_ss(sd + b + 1), acc1);
        }
        if (b < nblocks) {
            const __m256i w0 = lowbit_codes_avx2(row + (size_t)b * bb, bits);
            const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(w0, _mm256_loadu_si256((const __m256i *)(qx + 32 * b))), ones);
            acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_broadcast_ss(sd + b), acc0);
        }
        out[r] = hsum256(_mm256_add_ps(acc0, acc1)) + offset;
    }
}

LMK_TARGET_AVX2 static void matvec_q3_avx2(const uint8_t *q, const uint16_t *scales, const uint16_t *mins, int r0, int r1, int cols32,
                                           int ngroups, int group, const int8_t *qx, const float *dx, const float *xsum, float *out) {
    matvec_lowbit_avx2(3, q, scales, mins, r0, r1, cols32, ngroups, group, qx, dx, xsum, out);
}

LMK_TARGET_AVX2 static void matvec_q2_avx2(const uint8_t *q, const uint16_t *scales, const uint16_t *mins, int r0, int r1, int cols32,
                                           int ngroups, int group, const int8_t *qx, const float *dx, const float *xsum, float *out) {
    matvec_lowbit_avx2(2, q, scales, mins, r0, r1, cols32, ngroups, group, qx, dx, xsum, out);
}

/* Rows as floats: codes → int32 (vpmovzxbd, 8 at a time, column order) → float, ·s, +m
 * (separate vmulps and vaddps: the reference decoder's two roundings). */
INLINE LMK_TARGET_AVX2 void dequant_lowbit_avx2(const int bits, const uint8_t *q, const uint16_t *scales, const uint16_t *mins,
                                                int r0, int r1, int cols, int ngroups, int group, float *out) {
    const int bb = 4 * bits, nblocks = (cols + 31) / 32, rowBytes = nblocks * bb;
    float tmp[32];
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = q + (size_t)r * rowBytes;
        float *o = out + (size_t)(r - r0) * cols;
        for (int b = 0; b < nblocks; b++) {
            const int g = 32 * b / group;
            const __m256 s = _mm256_set1_ps(half_to_float_f16c(scales[(size_t)r * ngroups + g]));
            const __m256 m = _mm256_set1_ps(half_to_float_f16c(mins[(size_t)r * ngroups + g]));
            const __m256i c = lowbit_codes_avx2(row + (size_t)b * bb, bits);
            const __m128i c0 = _mm256_castsi256_si128(c), c1 = _mm256_extracti128_si256(c, 1);
            const int full = 32 * b + 32 <= cols;
            float *dst = full ? o + 32 * b : tmp;
            _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c0)), s), m));
            _mm256_storeu_ps(dst + 8, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(c0, 8))), s), m));
            _mm256_storeu_ps(dst + 16, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c1)), s), m));
            _mm256_storeu_ps(dst + 24, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(c1, 8))), s), m));
            if (!full) memcpy(o + 32 * b, tmp, sizeof(float) * (size_t)(cols - 32 * b));
        }
    }
}

LMK_TARGET_AVX2 static void dequant_q3_avx2(const uint8_t *q, const uint16_t *scales, const uint16_t *mins, int r0, int r1, int cols, int ngroups, int group, float *out) {
    dequant_lowbit_avx2(3, q, scales, mins, r0, r1, cols, ngroups, group, out);
}

LMK_TARGET_AVX2 static void dequant_q2_avx2(const uint8_t *q, const uint16_t *scales, const uint16_t *mins, int r0, int r1, int cols, int ngroups, int group, float *out) {
    dequant_lowbit_avx2(2, q, scales, mins, r0, r1, cols, ngroups, group, out);
}

const lmk_kernels lmk_table_avx2 = {
    .name = "avx2",
    .level = LMK_LEVEL_AVX2,
    .quantize_q8 = quantize_q8_avx2,
    .matvec_q4 = matvec_q4_avx2,
    .matvec_q8 = matvec_q8_avx2,
    .matvec_nm = lmk_matvec_nm_avx2,
    .matvec_nm_f = lmk_matvec_nm_f_avx2,
    .matvec_q3 = matvec_q3_avx2,
    .matvec_q2 = matvec_q2_avx2,
    .dequant_q3 = dequant_q3_avx2,
    .dequant_q2 = dequant_q2_avx2,
    .exp = &lmk_exp_avx2,
    .kv = &lmk_kv_avx2,
};
#endif
