/* KV-cache pages (formats/kv-cache.md): the write path (one plain-C function, so a
 * cache's bytes never depend on the CPU), the page kernels of every level, and the
 * paged decode-attention driver.
 *
 * The page kernels are one source compiled three times (generic, AVX2, AVX-512), as in
 * kernels_exp.c: clang's 16-lane vector type, explicit FMAs, no contraction, and
 * reductions defined on the 16-lane vector, so every level gives the same bits.
 *
 * Arithmetic of the kernels (identical at every level):
 * - f32 score: exactly kernels_exp.c's dot (lane FMAs, lanes summed in order from −0,
 *   scalar tail `s += q·k` without contraction), times scale. f32 accum: per channel
 *   acc = fma(p_t, v_tc, acc) for t in order, scalar tail `acc += p_t·v_tc`. Hence
 *   lmk_attend_paged over f32 pages is bit-identical to lmk_exp_kernels.attend.
 * - f16 / bf16 score: lane FMAs over 16-channel chunks (the last chunk zero-padded),
 *   lanes summed by a halving tree, times scale. accum: acc_c = fma(p_t, v_tc, acc_c)
 *   for t in order.
 * - int8 / int4 score: S_t = Σ_c q_c·code_tc (lane FMAs, zero-padded last chunk, tree
 *   sum; int4 keeps low- and high-nibble halves in two vectors added before the tree),
 *   Q = Σ_c q_c (the same way), out[t] = (scale16_t·S_t + min16_t·Q)·scale with
 *   separate roundings (no FMA).
 *   accum: w_t = p_t·scale16_t, M = Σ_t p_t·min16_t (in order, separate roundings),
 *   a_c = fma(w_t, code_tc, a_c) for t in order from 0, then acc_c += (a_c + M).
 * - dequant: f32 copy; f16 / bf16 exact; int: min16 + scale16·code with separate
 *   roundings (no FMA). */
#include "lmk_internal.h"
#include <math.h>

#pragma clang fp contract(off)
#pragma clang diagnostic ignored "-Wpsabi"

typedef float v16f __attribute__((ext_vector_type(16)));
typedef float v8f __attribute__((ext_vector_type(8)));
typedef float v4f __attribute__((ext_vector_type(4)));
typedef float v2f __attribute__((ext_vector_type(2)));
typedef unsigned int v16u __attribute__((ext_vector_type(16)));
typedef int v16i __attribute__((ext_vector_type(16)));
typedef unsigned char v16uc __attribute__((ext_vector_type(16)));
typedef unsigned short v16us __attribute__((ext_vector_type(16)));
#ifdef LMK_X86
typedef _Float16 v16h __attribute__((ext_vector_type(16)));
#endif

/* ---------------------------------------------------------------------------------
 * Write path: float → half / bfloat16 rounding, per-row integer quantization.
 * Integer arithmetic (and double arithmetic for the codes) only: the same bytes on
 * every CPU and with any -m flags. */

#define LMK_HALF_NAN 0x7E00

/* float → IEEE half, round to nearest even; overflow → ±Inf, subnormals rounded
 * correctly, NaN stays a (quiet) NaN. */
static uint16_t f32_to_f16_rne(float f) {
    uint32_t x; memcpy(&x, &f, 4);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    const uint32_t ax = x & 0x7FFFFFFFu;
    if (ax > 0x7F800000u) return sign | LMK_HALF_NAN | (uint16_t)((ax >> 13) & 0x3FF);
    if (ax >= 0x477FF000u) return sign | 0x7C00;           /* ≥ 65520 (incl. Inf) → Inf */
    if (ax < 0x38800000u) {                                 /* below 2^-14: subnormal half */
        const uint32_t e = ax >> 23;
        if (e < 102) return sign;                           /* < 2^-25: rounds to ±0 */
        const uint32_t mant = (ax & 0x7FFFFFu) | 0x800000u, shift = 126 - e;   /* 14…24 */
        uint32_t q = mant >> shift;
        const uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return sign | (uint16_t)q;                          /* q = 0x400 is the smallest normal */
    }
    uint32_t r = ax - ((uint32_t)(127 - 15) << 23);
    r += 0xFFF + ((r >> 13) & 1);
    return sign | (uint16_t)(r >> 13);
}

/* float → bfloat16, round to nearest even; NaN stays a quiet NaN. */
static uint16_t f32_to_bf16_rne(float f) {
    uint32_t x; memcpy(&x, &f, 4);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((x >> 16) | 0x40);
    x += 0x7FFF + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

/* Half bits ↔ a totally ordered integer (both zeros → 0). */
static int half_key(uint16_t h) { return (h & 0x8000) ? -(int)(h & 0x7FFF) : (int)(h & 0x7FFF); }
static uint16_t half_from_key(int k) { return k >= 0 ? (uint16_t)k : (uint16_t)(0x8000 | -k); }

/* x rounded to a half toward −∞ (dir < 0) or +∞ (dir > 0); x finite. */
static uint16_t f32_to_f16_dir(float x, int dir) {
    uint16_t h = f32_to_f16_rne(x);
    const float v = lmk_half_to_float_sw(h);
    if (dir < 0 && v > x) h = half_from_key(half_key(h) - 1);
    if (dir > 0 && v < x) h = half_from_key(half_key(h) + 1);
    return h;
}

static int half_is_finite(uint16_t h) { return (h & 0x7C00) != 0x7C00; }

int64_t lmk_kv_page_bytes(int scheme, int bs, int hd) {
    const int64_t rows = bs, d = hd;
    if (bs < 0 || hd < 0) return -1;
    switch (scheme) {
    case LMK_KV_F32: return rows * d * 4;
    case LMK_KV_F16: case LMK_KV_BF16: return rows * d * 2;
    case LMK_KV_INT8: return 4 * rows + rows * d;
    case LMK_KV_INT4: return (hd & 1) ? -1 : 4 * rows + rows * d / 2;
    default: return -1;
    }
}

/* One integer row: (scale16, min16) and codes 0…qmax; see ckernels.h. */
static void store_int_row(const float *x, int hd, int qmax, uint16_t par[2], uint8_t *codes) {
    float lo = x[0], hi = x[0];
    int finite = 1;
    for (int i = 0; i < hd; i++) {
        if (!isfinite(x[i])) { finite = 0; break; }
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
    }
    uint16_t s16 = LMK_HALF_NAN, m16 = LMK_HALF_NAN;
    if (finite) {
        m16 = f32_to_f16_dir(lo, -1);
        const float mn = lmk_half_to_float_sw(m16);
        s16 = f32_to_f16_dir((float)(((double)hi - (double)mn) / qmax), +1);
        /* The float division may have rounded down: step up until the top code reaches max. */
        while (half_is_finite(s16) && (double)mn + qmax * (double)lmk_half_to_float_sw(s16) < (double)hi)
            s16 = half_from_key(half_key(s16) + 1);
        if (!half_is_finite(m16) || !half_is_finite(s16)) s16 = m16 = LMK_HALF_NAN;   /* outside half range */
    }
    par[0] = s16; par[1] = m16;
    const float sc = lmk_half_to_float_sw(s16), mn = lmk_half_to_float_sw(m16);
    for (int i = 0; i < hd; i++) {
        int c = 0;
        if (half_is_finite(s16) && sc > 0) {
            const double r = rint(((double)x[i] - (double)mn) / (double)sc);   /* round half even */
            c = r < 0 ? 0 : r > qmax ? qmax : (int)r;
        }
        codes[i] = (uint8_t)c;
    }
}

void lmk_kv_store_row(int scheme, const float *x, void *page, int bs, int t, int hd) {
    uint8_t *pb = (uint8_t *)page;
    switch (scheme) {
    case LMK_KV_F32:
        memcpy(pb + (size_t)t * hd * 4, x, (size_t)hd * 4);
        return;
    case LMK_KV_F16: case LMK_KV_BF16: {
        uint8_t *row = pb + (size_t)t * hd * 2;
        for (int i = 0; i < hd; i++) {
            const uint16_t h = scheme == LMK_KV_F16 ? f32_to_f16_rne(x[i]) : f32_to_bf16_rne(x[i]);
            memcpy(row + 2 * i, &h, 2);
        }
        return;
    }
    case LMK_KV_INT8: {
        uint16_t par[2];
        store_int_row(x, hd, 255, par, pb + 4 * (size_t)bs + (size_t)t * hd);
        memcpy(pb + 4 * (size_t)t, par, 4);
        return;
    }
    case LMK_KV_INT4: {
        uint16_t par[2];
        uint8_t codes[hd > 0 ? hd : 1];
        store_int_row(x, hd, 15, par, codes);
        memcpy(pb + 4 * (size_t)t, par, 4);
        const int h = hd / 2;
        uint8_t *row = pb + 4 * (size_t)bs + (size_t)t * h;
        for (int i = 0; i < h; i++) row[i] = (uint8_t)(codes[i] | (codes[i + h] << 4));
        return;
    }
    default: return;
    }
}

/* ---------------------------------------------------------------------------------
 * Lane helpers shared by the levels. They are macros (GNU statement expressions), not
 * functions: clang refuses a 256- or 512-bit vector crossing into a function compiled
 * without the caller's vector width, even an always-inlined one. */

/* Lane-wise exact half → float with integer operations (no F16C): normals and
 * subnormals rebiased (subnormals renormalized through an exact float subtraction of
 * 2^-14), Inf/NaN kept. */
#define lmk_h2f_bits(h) ({                                                                 \
    const v16u hu_ = __builtin_convertvector((h), v16u);                                    \
    const v16u se_ = 0x7C00u << 13;                                                         \
    v16u o_ = (hu_ & 0x7FFFu) << 13;                                                        \
    const v16u e_ = o_ & se_;                                                               \
    o_ += (127u - 15u) << 23;                                                               \
    const v16u inf_ = (v16u)(e_ == se_);                                                    \
    o_ += inf_ & ((128u - 16u) << 23);                                                      \
    o_ |= inf_ & (v16u)((hu_ & 0x3FFu) != 0u) & 0x400000u;  /* NaN → quiet NaN, as F16C */  \
    const v16i z_ = (v16i)(e_ == 0u);                                                       \
    o_ += (v16u)z_ & (1u << 23);                                                            \
    v16f f_ = (v16f)o_;                                                                     \
    f_ = z_ ? f_ - (v16f)(v16u)(113u << 23) : f_;                                           \
    (v16f)((v16u)f_ | ((hu_ & 0x8000u) << 16));                                             \
})

/* bfloat16 → float (exact). */
#define lmk_bf2f(h) ((v16f)(__builtin_convertvector((h), v16u) << 16))
static inline float lmk_bf2f_1(uint16_t h) {
    const uint32_t b = (uint32_t)h << 16; float f; memcpy(&f, &b, 4); return f;
}

/* Scalar half → float (exact; NaN → quiet NaN, as F16C). */
static inline float lmk_h2f_1_sw(uint16_t h) {
    if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF)) h |= 0x200;
    return lmk_half_to_float_sw(h);
}

#ifdef LMK_X86
/* F16C: vcvtph2ps (exact, quiets a signaling NaN). */
#define lmk_h2f_f16c(h) __builtin_convertvector((v16h)(h), v16f)
LMK_TARGET_AVX2 static inline __attribute__((always_inline)) float lmk_h2f_1_f16c(uint16_t b) {
    _Float16 h; memcpy(&h, &b, 2); return (float)h;
}
#endif

/* Halving-tree sum of the 16 lanes. */
#define lmk_tree16(v) ({                                                                                                  \
    const v16f v_ = (v);                                                                                                  \
    const v8f a_ = __builtin_shufflevector(v_, v_, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(v_, v_, 8, 9, 10, 11, 12, 13, 14, 15); \
    const v4f b_ = __builtin_shufflevector(a_, a_, 0, 1, 2, 3) + __builtin_shufflevector(a_, a_, 4, 5, 6, 7);            \
    const v2f c_ = __builtin_shufflevector(b_, b_, 0, 1) + __builtin_shufflevector(b_, b_, 2, 3);                        \
    c_[0] + c_[1];                                                                                                        \
})

/* Loads of 16 elements, and zero-padded partial loads / partial stores of w (< 16). */
#define lmk_loadf(p) ({ v16f v_; memcpy(&v_, (p), 64); v_; })
#define lmk_loadh(p) ({ v16us v_; memcpy(&v_, (p), 32); v_; })
#define lmk_loadb(p) ({ v16uc v_; memcpy(&v_, (p), 16); v_; })
#define lmk_loadf_pad(p, w) ({ float b_[16] = {0}; memcpy(b_, (p), (size_t)(w) * 4); v16f v_; memcpy(&v_, b_, 64); v_; })
#define lmk_loadh_pad(p, w) ({ uint16_t b_[16] = {0}; memcpy(b_, (p), (size_t)(w) * 2); v16us v_; memcpy(&v_, b_, 32); v_; })
#define lmk_loadb_pad(p, w) ({ uint8_t b_[16] = {0}; memcpy(b_, (p), (size_t)(w)); v16uc v_; memcpy(&v_, b_, 16); v_; })
#define lmk_storef_part(p, v, w) do { float b_[16]; const v16f v_ = (v); memcpy(b_, &v_, 64); memcpy((p), b_, (size_t)(w) * 4); } while (0)

/* ---------------------------------------------------------------------------------
 * Page kernels of one level. H2F: the lane-wise half → float of the level; H2F1 the
 * scalar one (both exact, so the levels agree). */

#define DEFINE_KV_KERNELS(SUFFIX, TARGET, H2F, H2F1)                                                          \
    TARGET static inline __attribute__((always_inline)) float kv_sum16_##SUFFIX(v16f v) {                     \
        float r = -0.0f;                                                                                      \
        for (int k = 0; k < 16; k++) r += v[k];                                                               \
        return r;                                                                                             \
    }                                                                                                         \
    /* Σ_c q_c over hd channels: 16-channel chunks (last zero-padded), tree sum. */                          \
    TARGET static inline __attribute__((always_inline)) float kv_qsum_##SUFFIX(const float *q, int hd) {      \
        v16f a = 0.0f;                                                                                        \
        int i = 0;                                                                                            \
        for (; i + 16 <= hd; i += 16) a += lmk_loadf(q + i);                                                  \
        if (i < hd) a += lmk_loadf_pad(q + i, hd - i);                                                        \
        return lmk_tree16(a);                                                                                 \
    }                                                                                                         \
    /* ---- f32 ---- */                                                                                      \
    TARGET static void score_f32_##SUFFIX(const float *q, const void *page, int bs, int n, int hd, float scale, float *out) { \
        (void)bs;                                                                                             \
        const float *K = (const float *)page;                                                                 \
        for (int t = 0; t < n; t++) {                                                                         \
            const float *k = K + (long)t * hd;                                                                \
            v16f acc = 0.0f;                                                                                  \
            int i = 0;                                                                                        \
            for (; i + 16 <= hd; i += 16) acc = __builtin_elementwise_fma(lmk_loadf(q + i), lmk_loadf(k + i), acc); \
            float s = kv_sum16_##SUFFIX(acc);                                                                 \
            for (; i < hd; i++) s += q[i] * k[i];                                                             \
            out[t] = s * scale;                                                                               \
        }                                                                                                     \
    }                                                                                                         \
    TARGET static void accum_f32_##SUFFIX(const float *p, const void *page, int bs, int n, int hd, float *acc) { \
        (void)bs;                                                                                             \
        const float *V = (const float *)page;                                                                 \
        int i = 0;                                                                                            \
        for (; i + 32 <= hd; i += 32) {                                                                       \
            v16f a0 = lmk_loadf(acc + i), a1 = lmk_loadf(acc + i + 16);                                       \
            for (int t = 0; t < n; t++) {                                                                     \
                const v16f pv = p[t];                                                                         \
                a0 = __builtin_elementwise_fma(pv, lmk_loadf(V + (long)t * hd + i), a0);                      \
                a1 = __builtin_elementwise_fma(pv, lmk_loadf(V + (long)t * hd + i + 16), a1);                 \
            }                                                                                                 \
            memcpy(acc + i, &a0, 64); memcpy(acc + i + 16, &a1, 64);                                          \
        }                                                                                                     \
        for (; i + 16 <= hd; i += 16) {                                                                       \
            v16f a = lmk_loadf(acc + i);                                                                      \
            for (int t = 0; t < n; t++) a = __builtin_elementwise_fma((v16f)p[t], lmk_loadf(V + (long)t * hd + i), a); \
            memcpy(acc + i, &a, 64);                                                                          \
        }                                                                                                     \
        for (; i < hd; i++) {                                                                                 \
            float a = acc[i];                                                                                 \
            for (int t = 0; t < n; t++) a += p[t] * V[(long)t * hd + i];                                      \
            acc[i] = a;                                                                                       \
        }                                                                                                     \
    }                                                                                                         \
    TARGET static void dequant_f32_##SUFFIX(const void *page, int bs, int n, int hd, float *out) {            \
        (void)bs;                                                                                             \
        memcpy(out, page, (size_t)n * hd * 4);                                                                \
    }                                                                                                         \
    /* ---- f16 / bf16 (CONV: lane-wise 16-bit → float) ---- */                                              \
    DEFINE_KV_HALF(f16_##SUFFIX, TARGET, H2F, H2F1)                                                           \
    DEFINE_KV_HALF(bf16_##SUFFIX, TARGET, lmk_bf2f, lmk_bf2f_1)                                               \
    /* ---- int8 ---- */                                                                                     \
    TARGET static void score_int8_##SUFFIX(const float *q, const void *page, int bs, int n, int hd, float scale, float *out) { \
        const uint8_t *pb = (const uint8_t *)page, *codes = pb + 4 * (size_t)bs;                              \
        const float Q = kv_qsum_##SUFFIX(q, hd);                                                              \
        const int full = hd & ~15, tail = hd - full;                                                          \
        const v16f qt = tail ? lmk_loadf_pad(q + full, tail) : (v16f)0.0f;                                    \
        for (int t = 0; t < n; t++) {                                                                         \
            uint16_t par[2]; memcpy(par, pb + 4 * (size_t)t, 4);                                              \
            const uint8_t *c = codes + (size_t)t * hd;                                                        \
            v16f a = 0.0f;                                                                                    \
            for (int i = 0; i < full; i += 16)                                                                \
                a = __builtin_elementwise_fma(lmk_loadf(q + i), __builtin_convertvector(lmk_loadb(c + i), v16f), a); \
            if (tail) a = __builtin_elementwise_fma(qt, __builtin_convertvector(lmk_loadb_pad(c + full, tail), v16f), a); \
            const float S = lmk_tree16(a);                                                                    \
            out[t] = (H2F1(par[0]) * S + H2F1(par[1]) * Q) * scale;                                           \
        }                                                                                                     \
    }                                                                                                         \
    TARGET static void accum_int8_##SUFFIX(const float *p, const void *page, int bs, int n, int hd, float *acc) { \
        const uint8_t *pb = (const uint8_t *)page, *codes = pb + 4 * (size_t)bs;                              \
        float w[n > 0 ? n : 1];                                                                               \
        float M = 0.0f;                                                                                       \
        for (int t = 0; t < n; t++) {                                                                         \
            uint16_t par[2]; memcpy(par, pb + 4 * (size_t)t, 4);                                              \
            w[t] = p[t] * H2F1(par[0]);                                                                       \
            M += p[t] * H2F1(par[1]);                                                                         \
        }                                                                                                     \
        const v16f Mv = M;                                                                                    \
        int i = 0;                                                                                            \
        for (; i + 32 <= hd; i += 32) {                                                                       \
            v16f a0 = 0.0f, a1 = 0.0f;                                                                        \
            for (int t = 0; t < n; t++) {                                                                     \
                const uint8_t *c = codes + (size_t)t * hd + i;                                                \
                a0 = __builtin_elementwise_fma((v16f)w[t], __builtin_convertvector(lmk_loadb(c), v16f), a0);  \
                a1 = __builtin_elementwise_fma((v16f)w[t], __builtin_convertvector(lmk_loadb(c + 16), v16f), a1); \
            }                                                                                                 \
            v16f r0 = lmk_loadf(acc + i) + (a0 + Mv), r1 = lmk_loadf(acc + i + 16) + (a1 + Mv);               \
            memcpy(acc + i, &r0, 64); memcpy(acc + i + 16, &r1, 64);                                          \
        }                                                                                                     \
        for (; i < hd; i += 16) {                                                                             \
            const int wd = hd - i < 16 ? hd - i : 16;                                                         \
            v16f a = 0.0f;                                                                                    \
            for (int t = 0; t < n; t++) {                                                                     \
                const uint8_t *c = codes + (size_t)t * hd + i;                                                \
                const v16uc b = wd == 16 ? lmk_loadb(c) : lmk_loadb_pad(c, wd);                               \
                a = __builtin_elementwise_fma((v16f)w[t], __builtin_convertvector(b, v16f), a);               \
            }                                                                                                 \
            if (wd == 16) { v16f r = lmk_loadf(acc + i) + (a + Mv); memcpy(acc + i, &r, 64); }                \
            else { v16f r = lmk_loadf_pad(acc + i, wd) + (a + Mv); lmk_storef_part(acc + i, r, wd); }         \
        }                                                                                                     \
    }                                                                                                         \
    TARGET static void dequant_int8_##SUFFIX(const void *page, int bs, int n, int hd, float *out) {           \
        const uint8_t *pb = (const uint8_t *)page, *codes = pb + 4 * (size_t)bs;                              \
        for (int t = 0; t < n; t++) {                                                                         \
            uint16_t par[2]; memcpy(par, pb + 4 * (size_t)t, 4);                                              \
            const float sc = H2F1(par[0]), mn = H2F1(par[1]);                                                 \
            const uint8_t *c = codes + (size_t)t * hd;                                                        \
            float *o = out + (size_t)t * hd;                                                                  \
            int i = 0;                                                                                        \
            for (; i + 16 <= hd; i += 16) {                                                                   \
                v16f r = (v16f)mn + (v16f)sc * __builtin_convertvector(lmk_loadb(c + i), v16f);               \
                memcpy(o + i, &r, 64);                                                                        \
            }                                                                                                 \
            for (; i < hd; i++) o[i] = mn + sc * (float)c[i];                                                 \
        }                                                                                                     \
    }                                                                                                         \
    /* ---- int4: byte i = channel i (low nibble) | channel i + hd/2 (high nibble) ---- */                   \
    TARGET static void score_int4_##SUFFIX(const float *q, const void *page, int bs, int n, int hd, float scale, float *out) { \
        const uint8_t *pb = (const uint8_t *)page, *codes = pb + 4 * (size_t)bs;                              \
        const float Q = kv_qsum_##SUFFIX(q, hd);                                                              \
        const int h = hd / 2, full = h & ~15, tail = h - full;                                                \
        const float *qh = q + h;                                                                              \
        const v16f qtl = tail ? lmk_loadf_pad(q + full, tail) : (v16f)0.0f;                                   \
        const v16f qth = tail ? lmk_loadf_pad(qh + full, tail) : (v16f)0.0f;                                  \
        for (int t = 0; t < n; t++) {                                                                         \
            uint16_t par[2]; memcpy(par, pb + 4 * (size_t)t, 4);                                              \
            const uint8_t *c = codes + (size_t)t * h;                                                         \
            v16f al = 0.0f, ah = 0.0f;                                                                        \
            for (int i = 0; i < full; i += 16) {                                                              \
                const v16uc b = lmk_loadb(c + i);                                                             \
                al = __builtin_elementwise_fma(lmk_loadf(q + i), __builtin_convertvector(b & (v16uc)15, v16f), al); \
                ah = __builtin_elementwise_fma(lmk_loadf(qh + i), __builtin_convertvector(b >> 4, v16f), ah); \
            }                                                                                                 \
            if (tail) {                                                                                       \
                const v16uc b = lmk_loadb_pad(c + full, tail);                                                \
                al = __builtin_elementwise_fma(qtl, __builtin_convertvector(b & (v16uc)15, v16f), al);        \
                ah = __builtin_elementwise_fma(qth, __builtin_convertvector(b >> 4, v16f), ah);               \
            }                                                                                                 \
            const float S = lmk_tree16(al + ah);                                                              \
            out[t] = (H2F1(par[0]) * S + H2F1(par[1]) * Q) * scale;                                           \
        }                                                                                                     \
    }                                                                                                         \
    TARGET static void accum_int4_##SUFFIX(const float *p, const void *page, int bs, int n, int hd, float *acc) { \
        const uint8_t *pb = (const uint8_t *)page, *codes = pb + 4 * (size_t)bs;                              \
        const int h = hd / 2;                                                                                 \
        float w[n > 0 ? n : 1];                                                                               \
        float M = 0.0f;                                                                                       \
        for (int t = 0; t < n; t++) {                                                                         \
            uint16_t par[2]; memcpy(par, pb + 4 * (size_t)t, 4);                                              \
            w[t] = p[t] * H2F1(par[0]);                                                                       \
            M += p[t] * H2F1(par[1]);                                                                         \
        }                                                                                                     \
        const v16f Mv = M;                                                                                    \
        for (int i = 0; i < h; i += 16) {                                                                     \
            const int wd = h - i < 16 ? h - i : 16;                                                           \
            v16f al = 0.0f, ah = 0.0f;                                                                        \
            for (int t = 0; t < n; t++) {                                                                     \
                const uint8_t *c = codes + (size_t)t * h + i;                                                 \
                const v16uc b = wd == 16 ? lmk_loadb(c) : lmk_loadb_pad(c, wd);                               \
                al = __builtin_elementwise_fma((v16f)w[t], __builtin_convertvector(b & (v16uc)15, v16f), al); \
                ah = __builtin_elementwise_fma((v16f)w[t], __builtin_convertvector(b >> 4, v16f), ah);        \
            }                                                                                                 \
            float *lo = acc + i, *hi = acc + h + i;                                                           \
            if (wd == 16) {                                                                                   \
                v16f rl = lmk_loadf(lo) + (al + Mv), rh = lmk_loadf(hi) + (ah + Mv);                          \
                memcpy(lo, &rl, 64); memcpy(hi, &rh, 64);                                                     \
            } else {                                                                                          \
                lmk_storef_part(lo, lmk_loadf_pad(lo, wd) + (al + Mv), wd);                                   \
                lmk_storef_part(hi, lmk_loadf_pad(hi, wd) + (ah + Mv), wd);                                   \
            }                                                                                                 \
        }                                                                                                     \
    }                                                                                                         \
    TARGET static void dequant_int4_##SUFFIX(const void *page, int bs, int n, int hd, float *out) {           \
        const uint8_t *pb = (const uint8_t *)page, *codes = pb + 4 * (size_t)bs;                              \
        const int h = hd / 2;                                                                                 \
        for (int t = 0; t < n; t++) {                                                                         \
            uint16_t par[2]; memcpy(par, pb + 4 * (size_t)t, 4);                                              \
            const float sc = H2F1(par[0]), mn = H2F1(par[1]);                                                 \
            const uint8_t *c = codes + (size_t)t * h;                                                         \
            float *o = out + (size_t)t * hd;                                                                  \
            int i = 0;                                                                                        \
            for (; i + 16 <= h; i += 16) {                                                                    \
                const v16uc b = lmk_loadb(c + i);                                                             \
                v16f rl = (v16f)mn + (v16f)sc * __builtin_convertvector(b & (v16uc)15, v16f);                 \
                v16f rh = (v16f)mn + (v16f)sc * __builtin_convertvector(b >> 4, v16f);                        \
                memcpy(o + i, &rl, 64); memcpy(o + h + i, &rh, 64);                                           \
            }                                                                                                 \
            for (; i < h; i++) {                                                                              \
                o[i] = mn + sc * (float)(c[i] & 15);                                                          \
                o[h + i] = mn + sc * (float)(c[i] >> 4);                                                      \
            }                                                                                                 \
        }                                                                                                     \
    }                                                                                                         \
    const lmk_kv_kernels lmk_kv_##SUFFIX = {                                                                  \
        .score = {score_f32_##SUFFIX, score_f16_##SUFFIX, score_bf16_##SUFFIX, score_int8_##SUFFIX, score_int4_##SUFFIX}, \
        .accum = {accum_f32_##SUFFIX, accum_f16_##SUFFIX, accum_bf16_##SUFFIX, accum_int8_##SUFFIX, accum_int4_##SUFFIX}, \
        .dequant = {dequant_f32_##SUFFIX, dequant_f16_##SUFFIX, dequant_bf16_##SUFFIX, dequant_int8_##SUFFIX, dequant_int4_##SUFFIX}, \
    };

/* 16-bit float pages (f16 or bf16 through CONV / CONV1). */
#define DEFINE_KV_HALF(NAME, TARGET, CONV, CONV1)                                                             \
    TARGET static void score_##NAME(const float *q, const void *page, int bs, int n, int hd, float scale, float *out) { \
        (void)bs;                                                                                             \
        const uint8_t *K = (const uint8_t *)page;                                                             \
        const int full = hd & ~15, tail = hd - full;                                                          \
        const v16f qt = tail ? lmk_loadf_pad(q + full, tail) : (v16f)0.0f;                                    \
        for (int t = 0; t < n; t++) {                                                                         \
            const uint8_t *k = K + (size_t)t * hd * 2;                                                        \
            v16f a = 0.0f;                                                                                    \
            for (int i = 0; i < full; i += 16) a = __builtin_elementwise_fma(lmk_loadf(q + i), CONV(lmk_loadh(k + 2 * i)), a); \
            if (tail) a = __builtin_elementwise_fma(qt, CONV(lmk_loadh_pad(k + 2 * full, tail)), a);          \
            out[t] = lmk_tree16(a) * scale;                                                                   \
        }                                                                                                     \
    }                                                                                                         \
    TARGET static void accum_##NAME(const float *p, const void *page, int bs, int n, int hd, float *acc) {    \
        (void)bs;                                                                                             \
        const uint8_t *V = (const uint8_t *)page;                                                             \
        int i = 0;                                                                                            \
        for (; i + 32 <= hd; i += 32) {                                                                       \
            v16f a0 = lmk_loadf(acc + i), a1 = lmk_loadf(acc + i + 16);                                       \
            for (int t = 0; t < n; t++) {                                                                     \
                const uint8_t *x = V + ((size_t)t * hd + i) * 2;                                              \
                a0 = __builtin_elementwise_fma((v16f)p[t], CONV(lmk_loadh(x)), a0);                           \
                a1 = __builtin_elementwise_fma((v16f)p[t], CONV(lmk_loadh(x + 32)), a1);                      \
            }                                                                                                 \
            memcpy(acc + i, &a0, 64); memcpy(acc + i + 16, &a1, 64);                                          \
        }                                                                                                     \
        for (; i < hd; i += 16) {                                                                             \
            const int wd = hd - i < 16 ? hd - i : 16;                                                         \
            v16f a = wd == 16 ? lmk_loadf(acc + i) : lmk_loadf_pad(acc + i, wd);                              \
            for (int t = 0; t < n; t++) {                                                                     \
                const uint8_t *x = V + ((size_t)t * hd + i) * 2;                                              \
                a = __builtin_elementwise_fma((v16f)p[t], CONV(wd == 16 ? lmk_loadh(x) : lmk_loadh_pad(x, wd)), a); \
            }                                                                                                 \
            lmk_storef_part(acc + i, a, wd);                                                                  \
        }                                                                                                     \
    }                                                                                                         \
    TARGET static void dequant_##NAME(const void *page, int bs, int n, int hd, float *out) {                  \
        (void)bs;                                                                                             \
        const uint8_t *P = (const uint8_t *)page;                                                             \
        const size_t total = (size_t)n * hd;                                                                  \
        size_t i = 0;                                                                                         \
        for (; i + 16 <= total; i += 16) { v16f r = CONV(lmk_loadh(P + 2 * i)); memcpy(out + i, &r, 64); }    \
        for (; i < total; i++) { uint16_t b; memcpy(&b, P + 2 * i, 2); out[i] = CONV1(b); }                   \
    }

DEFINE_KV_KERNELS(generic, , lmk_h2f_bits, lmk_h2f_1_sw)
#ifdef LMK_X86
DEFINE_KV_KERNELS(avx2, LMK_TARGET_AVX2, lmk_h2f_f16c, lmk_h2f_1_f16c)
DEFINE_KV_KERNELS(avx512, LMK_TARGET_AVX512, lmk_h2f_f16c, lmk_h2f_1_f16c)
#endif

/* ---------------------------------------------------------------------------------
 * Paged decode attention (the driver; the level's kernels do the work). */

void lmk_attend_paged(const lmk_kernels *k, const float *q, const lmk_kv_view *view, int n, int hd, float *scores, float *out, float scale) {
    const lmk_kv_kernels *kv = k->kv;
    const int bs = view->bs;
    const int blocks = bs > 0 ? (n + bs - 1) / bs : 0;
    for (int i = 0; i < blocks; i++) {
        const int rows = n - i * bs < bs ? n - i * bs : bs;
        const uint8_t *page = view->kbase + (int64_t)view->table[i] * view->stride;
        kv->score[view->kscheme](q, page, bs, rows, hd, scale, scores + (size_t)i * bs);
    }
    k->exp->softmax(scores, n);
    for (int c = 0; c < hd; c++) out[c] = 0.0f;
    for (int i = 0; i < blocks; i++) {
        const int rows = n - i * bs < bs ? n - i * bs : bs;
        const uint8_t *page = view->vbase + (int64_t)view->table[i] * view->stride;
        kv->accum[view->vscheme](scores + (size_t)i * bs, page, bs, rows, hd, out);
    }
}
