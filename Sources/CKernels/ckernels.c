#include "ckernels.h"
#include <math.h>
#include <string.h>
#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#include <immintrin.h>
#define LMK_AVX2 1
#endif

static inline float half_to_float(uint16_t h) {
#ifdef LMK_AVX2
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0) {
        if (man == 0) { bits = sign; }
        else { exp = 127 - 15 + 1; while (!(man & 0x400)) { man <<= 1; exp--; } man &= 0x3FF; bits = sign | (exp << 23) | (man << 13); }
    } else if (exp == 31) { bits = sign | 0x7F800000 | (man << 13); }
    else { bits = sign | ((exp + 127 - 15) << 23) | (man << 13); }
    float f; memcpy(&f, &bits, 4); return f;
#endif
}

int lmk_has_avx2(void) {
#ifdef LMK_AVX2
    return 1;
#else
    return 0;
#endif
}

void lmk_quantize_q8(const float *x, int nblocks, int8_t *qx, float *dx) {
    for (int b = 0; b < nblocks; b++) {
        const float *v = x + 32 * b;
        float amax = 0;
        for (int i = 0; i < 32; i++) { float a = fabsf(v[i]); if (a > amax) amax = a; }
        float d = amax / 127.0f, inv = d > 0 ? 1.0f / d : 0.0f;
        dx[b] = d;
        for (int i = 0; i < 32; i++) qx[32 * b + i] = (int8_t)lrintf(v[i] * inv);
    }
}

#ifdef LMK_AVX2
static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

void lmk_matvec_q4(const uint8_t *q, const uint16_t *scales, const uint16_t *mins,
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
#ifdef LMK_AVX2
        __m256 off8 = _mm256_setzero_ps();
        for (; g + 8 <= ngroups; g += 8) {
            __m256 s8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + g)));
            _mm256_storeu_ps(sg + g, s8);
            __m256 m8 = mn ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mn + g))) : _mm256_mul_ps(s8, _mm256_set1_ps(-8.0f));
            off8 = _mm256_fmadd_ps(m8, _mm256_loadu_ps(xsum + g), off8);
        }
        offset = hsum256(off8);
#endif
        for (; g < ngroups; g++) {
            sg[g] = half_to_float(sc[g]);
            offset += (mn ? half_to_float(mn[g]) : -8.0f * sg[g]) * xsum[g];
        }
        if (bpg == 1) { for (int b = 0; b < nblocks; b++) sd[b] = sg[b] * dx[b]; }
        else { for (int b = 0; b < nblocks; b++) sd[b] = sg[b / bpg] * dx[b]; }
#ifdef LMK_AVX2
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
#else
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
#endif
    }
}

void lmk_matvec_q8(const int8_t *q, const void *scales, int r0, int r1, int cols32,
                   int ngroups, int group, const int8_t *qx, const float *dx, float *out) {
    const int nblocks = cols32 / 32;
    const int bpg = group > 0 ? group / 32 : nblocks;
    for (int r = r0; r < r1; r++) {
        const int8_t *row = q + (size_t)r * cols32;
        float rowScale = 1.0f;
        if (group == 0) memcpy(&rowScale, (const char *)scales + 4 * (size_t)r, 4);
        const uint16_t *gs = (const uint16_t *)scales + (size_t)r * ngroups;
#ifdef LMK_AVX2
        const __m256i ones = _mm256_set1_epi16(1);
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        int b = 0;
        for (int g = 0; g < ngroups; g++) {
            const float s = group == 0 ? 1.0f : half_to_float(gs[g]);
            const int end = b + bpg < nblocks ? b + bpg : nblocks;
            for (; b < end; b++) {
                __m256i w = _mm256_loadu_si256((const __m256i *)(row + 32 * b));
                __m256i x = _mm256_loadu_si256((const __m256i *)(qx + 32 * b));
                __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)), ones);
                __m256 f = _mm256_cvtepi32_ps(p);
                if (b & 1) acc1 = _mm256_fmadd_ps(f, _mm256_set1_ps(s * dx[b]), acc1);
                else acc0 = _mm256_fmadd_ps(f, _mm256_set1_ps(s * dx[b]), acc0);
            }
        }
        out[r] = hsum256(_mm256_add_ps(acc0, acc1)) * rowScale;
#else
        float total = 0;
        int b = 0;
        for (int g = 0; g < ngroups; g++) {
            const float s = group == 0 ? 1.0f : half_to_float(gs[g]);
            const int end = b + bpg < nblocks ? b + bpg : nblocks;
            for (; b < end; b++) {
                int isum = 0;
                for (int j = 0; j < 32; j++) isum += row[32 * b + j] * qx[32 * b + j];
                total += s * dx[b] * (float)isum;
            }
        }
        out[r] = total * rowScale;
#endif
    }
}
