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
 * - int2 score: as int8 / int4, the four 2-bit planes in four vectors added
 *   ((0 + 1) + (2 + 3)) before the tree; int2 accum: as int8 / int4.
 * - per-channel (int8c / int4c / int2c) score: q'_c = q_c·scale16_c and
 *   bias = Σ_c q_c·min16_c (lane FMAs, zero-padded last chunk, tree sum) once a call,
 *   S_t = Σ_c q'_c·code_tc as int8 / int4 / int2, out[t] = (S_t + bias)·scale. No accum
 *   (K only).
 * - dequant: f32 copy; f16 / bf16 exact; int: min16 + scale16·code with separate
 *   roundings (no FMA), per row or per channel. */
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
    case LMK_KV_INT2: return (hd & 3) ? -1 : 4 * rows + rows * d / 4;
    case LMK_KV_INT8C: return 4 * d + rows * d;
    case LMK_KV_INT4C: return (hd & 1) ? -1 : 4 * d + rows * d / 2;
    case LMK_KV_INT2C: return (hd & 3) ? -1 : 4 * d + rows * d / 4;
    default: return -1;
    }
}

/* (scale16, min16) of n values x[0], x[stride], …, for codes 0…qmax; see ckernels.h. */
static void int_params(const float *x, int n, size_t stride, int qmax, uint16_t par[2]) {
    float lo = n > 0 ? x[0] : 0, hi = lo;
    int finite = 1;
    for (int i = 0; i < n; i++) {
        const float v = x[(size_t)i * stride];
        if (!isfinite(v)) { finite = 0; break; }
        if (v < lo) lo = v;
        if (v > hi) hi = v;
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
}

/* (scale, min) as the coder uses them: sc = 0 codes everything as 0 (a constant or a NaN
 * row / channel). */
typedef struct { double sc, mn; } int_coder;
static int_coder int_coder_of(const uint16_t par[2]) {
    const float sc = lmk_half_to_float_sw(par[0]);
    const int_coder k = {half_is_finite(par[0]) && sc > 0 ? sc : 0, lmk_half_to_float_sw(par[1])};
    return k;
}
/* round-half-even((x − min)/scale) clamped to 0…qmax. */
static int int_code(float x, int_coder k, int qmax) {
    if (k.sc == 0) return 0;
    const double r = rint(((double)x - k.mn) / k.sc);   /* round half even */
    return r < 0 ? 0 : r > qmax ? qmax : (int)r;
}

/* Packs hd codes (0…2^(8/P) − 1) into hd/P bytes: byte i holds channel i + j·hd/P in
 * bits j·8/P … (P = 1, 2, 4: the int8, int4, int2 row layouts). */
static void pack_codes(const uint8_t *codes, int hd, int P, uint8_t *row) {
    const int w = hd / P, bits = 8 / P;
    for (int i = 0; i < w; i++) {
        unsigned b = 0;
        for (int j = 0; j < P; j++) b |= (unsigned)codes[i + j * w] << (j * bits);
        row[i] = (uint8_t)b;
    }
}

/* Planes a byte of codes holds (1, 2, 4) and the top code, by integer scheme; 0 for a
 * float scheme. */
static int scheme_planes(int scheme) {
    switch (scheme) {
    case LMK_KV_INT8: case LMK_KV_INT8C: return 1;
    case LMK_KV_INT4: case LMK_KV_INT4C: return 2;
    case LMK_KV_INT2: case LMK_KV_INT2C: return 4;
    default: return 0;
    }
}
static int is_per_channel(int scheme) { return scheme == LMK_KV_INT8C || scheme == LMK_KV_INT4C || scheme == LMK_KV_INT2C; }

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
    case LMK_KV_INT8: case LMK_KV_INT4: case LMK_KV_INT2: {
        const int P = scheme_planes(scheme), qmax = (1 << (8 / P)) - 1;
        uint16_t par[2];
        int_params(x, hd, 1, qmax, par);
        memcpy(pb + 4 * (size_t)t, par, 4);
        uint8_t codes[hd > 0 ? hd : 1];
        const int_coder k = int_coder_of(par);
        for (int i = 0; i < hd; i++) codes[i] = (uint8_t)int_code(x[i], k, qmax);
        pack_codes(codes, hd, P, pb + 4 * (size_t)bs + (size_t)t * (hd / P));
        return;
    }
    default: return;   /* unknown, or per channel (lmk_kv_store_block) */
    }
}

void lmk_kv_store_block(int scheme, const float *rows, void *page, int bs, int hd) {
    if (!is_per_channel(scheme)) {
        for (int t = 0; t < bs; t++) lmk_kv_store_row(scheme, rows + (size_t)t * hd, page, bs, t, hd);
        return;
    }
    uint8_t *pb = (uint8_t *)page, *codes = pb + 4 * (size_t)hd;
    const int P = scheme_planes(scheme), qmax = (1 << (8 / P)) - 1, w = hd / P, bits = 8 / P;
    memset(codes, 0, (size_t)bs * w);
    for (int c = 0; c < hd; c++) {
        uint16_t par[2];
        int_params(rows + c, bs, (size_t)hd, qmax, par);
        memcpy(pb + 2 * (size_t)c, &par[0], 2);
        memcpy(pb + 2 * (size_t)hd + 2 * (size_t)c, &par[1], 2);
        const int_coder k = int_coder_of(par);
        const int i = c % w, shift = (c / w) * bits;
        for (int t = 0; t < bs; t++)
            codes[(size_t)t * w + i] |= (uint8_t)(int_code(rows[(size_t)t * hd + c], k, qmax) << shift);
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

/* The halving-tree sums (lmk_tree16) of 16 vectors A[0..15] at once, as one vector
 * (lane u = lmk_tree16(A[u])): the same additions with the same operands in the same
 * order, four levels each adding two vectors' halves (30 shuffles and 15 adds for 16
 * sums instead of 16 × (4 + 4)). */
#define lmk_tree16x16(A) ({                                                                                   \
    const v16f *A_ = (A);                                                                                     \
    v16f X_[8], Y_[4], Z_[2];                                                                                 \
    for (int j_ = 0; j_ < 8; j_++)                                                                            \
        X_[j_] = __builtin_shufflevector(A_[2 * j_], A_[2 * j_ + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) \
               + __builtin_shufflevector(A_[2 * j_], A_[2 * j_ + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31); \
    for (int j_ = 0; j_ < 4; j_++)                                                                            \
        Y_[j_] = __builtin_shufflevector(X_[2 * j_], X_[2 * j_ + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) \
               + __builtin_shufflevector(X_[2 * j_], X_[2 * j_ + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31); \
    for (int j_ = 0; j_ < 2; j_++)                                                                            \
        Z_[j_] = __builtin_shufflevector(Y_[2 * j_], Y_[2 * j_ + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) \
               + __builtin_shufflevector(Y_[2 * j_], Y_[2 * j_ + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31); \
    __builtin_shufflevector(Z_[0], Z_[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)            \
        + __builtin_shufflevector(Z_[0], Z_[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);     \
})

/* The in-order lane sums (−0 + v[0] + v[1] + … + v[15]) of 16 vectors A[0..15] at once
 * (lane u = the sum of A[u]): a 16 × 16 transpose (off-diagonal blocks swapped at
 * distances 8, 4, 2, 1), then the columns added in order. */
#define lmk_sum16x16(A) ({                                                                                    \
    v16f T_[16];                                                                                              \
    for (int j_ = 0; j_ < 16; j_++) T_[j_] = (A)[j_];                                                         \
    for (int j_ = 0; j_ < 16; j_++) {                                                                         \
        if (j_ & 8) continue;                                                                                 \
        const v16f a_ = T_[j_], b_ = T_[j_ + 8];                                                              \
        T_[j_] = __builtin_shufflevector(a_, b_, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);     \
        T_[j_ + 8] = __builtin_shufflevector(a_, b_, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);\
    }                                                                                                         \
    for (int j_ = 0; j_ < 16; j_++) {                                                                         \
        if (j_ & 4) continue;                                                                                 \
        const v16f a_ = T_[j_], b_ = T_[j_ + 4];                                                              \
        T_[j_] = __builtin_shufflevector(a_, b_, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);   \
        T_[j_ + 4] = __builtin_shufflevector(a_, b_, 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);\
    }                                                                                                         \
    for (int j_ = 0; j_ < 16; j_++) {                                                                         \
        if (j_ & 2) continue;                                                                                 \
        const v16f a_ = T_[j_], b_ = T_[j_ + 2];                                                              \
        T_[j_] = __builtin_shufflevector(a_, b_, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);   \
        T_[j_ + 2] = __builtin_shufflevector(a_, b_, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);\
    }                                                                                                         \
    for (int j_ = 0; j_ < 16; j_++) {                                                                         \
        if (j_ & 1) continue;                                                                                 \
        const v16f a_ = T_[j_], b_ = T_[j_ + 1];                                                              \
        T_[j_] = __builtin_shufflevector(a_, b_, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);  \
        T_[j_ + 1] = __builtin_shufflevector(a_, b_, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);\
    }                                                                                                         \
    v16f R_ = -0.0f;                                                                                          \
    for (int j_ = 0; j_ < 16; j_++) R_ += T_[j_];                                                             \
    R_;                                                                                                       \
})

/* The same sums one vector at a time (faster where the 16-lane shuffles above are not
 * single instructions: the in-order sums on AVX2, both on the generic level). */
#define lmk_tree16_each(A) ({ float s_[16]; for (int u_ = 0; u_ < 16; u_++) s_[u_] = lmk_tree16((A)[u_]); lmk_loadf(s_); })
#define lmk_sum16_each(A) ({                                                                                  \
    float s_[16];                                                                                             \
    for (int u_ = 0; u_ < 16; u_++) { float r_ = -0.0f; for (int k_ = 0; k_ < 16; k_++) r_ += (A)[u_][k_]; s_[u_] = r_; } \
    lmk_loadf(s_);                                                                                            \
})

/* (scale16, min16) of integer rows t0 … t0 + m − 1 (1 ≤ m ≤ 16) as float lanes, exact
 * (H2F); lanes ≥ m are 0 and nothing past row t0 + m − 1 is read. */
#define lmk_kv_params16(pb, t0, m, H2F, SC, MN) do {                                                         \
    const uint8_t *pp_ = (pb) + 4 * (size_t)(t0);                                                             \
    const int m_ = (m);                                                                                       \
    const v16us p0_ = m_ >= 8 ? lmk_loadh(pp_) : lmk_loadh_pad(pp_, 2 * m_);                                  \
    const v16us p1_ = m_ == 16 ? lmk_loadh(pp_ + 32) : m_ > 8 ? lmk_loadh_pad(pp_ + 32, 2 * (m_ - 8)) : (v16us)0; \
    SC = H2F(__builtin_shufflevector(p0_, p1_, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30));    \
    MN = H2F(__builtin_shufflevector(p0_, p1_, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31));    \
} while (0)

/* Stores the first m (1 ≤ m ≤ 16) lanes of v at p. */
#define lmk_storef_m(p, v, m) do { if ((m) == 16) { const v16f s_ = (v); memcpy((p), &s_, 64); } else lmk_storef_part((p), (v), (m)); } while (0)

/* Plane j of 16 code bytes holding P planes (1, 2, 4: bits j·8/P …) as float lanes. */
#define lmk_kv_plane(b, P, j) __builtin_convertvector(                                                     \
    (P) == 1 ? (b) : ((b) >> (v16uc)(unsigned char)((j) * (8 / (P)))) & (v16uc)(unsigned char)((1 << (8 / (P))) - 1), v16f)

/* ---------------------------------------------------------------------------------
 * Page kernels of one level. H2F: the lane-wise half → float of the level; H2F1 the
 * scalar one (both exact, so the levels agree).
 *
 * Every score / accum kernel is one body for G query rows (1 ≤ G ≤ LMK_KV_GMAX, a
 * compile-time constant where it is inlined, so the accumulators stay in registers):
 * rows r < G of q (p) lie `qs` (`ps`) floats apart, row r's scores (accumulator) `os`
 * (`as`) floats apart. Each K / V vector is loaded and converted once and FMA'd into
 * every row's accumulator; each row's operations, and their order, do not depend on G,
 * so a row's result is the same bits whether it comes alone (G = 1: the table's
 * one-row kernels) or in a group (the multi-row table below). Score kernels keep the
 * accumulators of 16 positions and reduce them together (TREEX, SUMX: lmk_tree16x16 or
 * lmk_tree16_each, lmk_sum16x16 or lmk_sum16_each, whichever is faster at the level;
 * the same additions either way). Accum kernels run 16·NV channels at a time (NVOF:
 * LMK_KV_NV_*, by level and G). */

#define LMK_KV_GMAX 4
/* Accum vectors a row (NV), by level and G (16·NV·G floats of accumulators in registers). */
#define LMK_KV_NV_GENERIC(G) 2
#define LMK_KV_NV_AVX2(G) ((G) == 1 ? 4 : (G) == 2 ? 2 : 1)
#define LMK_KV_NV_AVX512(G) 4
#define LMK_KV_BODY static inline __attribute__((always_inline))

/* 16-bit float pages (f16 or bf16 through CONV / CONV1). */
#define DEFINE_KV_HALF(NAME, TARGET, NVOF, TREEX, CONV, CONV1)                                                \
    TARGET LMK_KV_BODY void score_##NAME##_b(const int G, const float *q, int64_t qs, const void *page, int bs, int n, int hd, float scale, float *out, int64_t os) { \
        (void)bs;                                                                                             \
        const uint8_t *K = (const uint8_t *)page;                                                             \
        const int full = hd & ~15, tail = hd - full;                                                          \
        v16f qt[LMK_KV_GMAX];                                                                                 \
        for (int r = 0; r < G; r++) qt[r] = tail ? lmk_loadf_pad(q + r * qs + full, tail) : (v16f)0.0f;       \
        for (int t0 = 0; t0 < n; t0 += 16) {                                                                  \
            const int m = n - t0 < 16 ? n - t0 : 16;                                                          \
            v16f A[LMK_KV_GMAX][16];                                                                          \
            for (int u = 0; u < 16; u++) {                                                                    \
                v16f a[LMK_KV_GMAX];                                                                          \
                for (int r = 0; r < G; r++) a[r] = 0.0f;                                                      \
                if (u < m) {                                                                                  \
                    const uint8_t *k = K + (size_t)(t0 + u) * hd * 2;                                         \
                    for (int i = 0; i < full; i += 16) {                                                      \
                        const v16f kv = CONV(lmk_loadh(k + 2 * i));                                           \
                        for (int r = 0; r < G; r++) a[r] = __builtin_elementwise_fma(lmk_loadf(q + r * qs + i), kv, a[r]); \
                    }                                                                                         \
                    if (tail) {                                                                               \
                        const v16f kv = CONV(lmk_loadh_pad(k + 2 * full, tail));                              \
                        for (int r = 0; r < G; r++) a[r] = __builtin_elementwise_fma(qt[r], kv, a[r]);        \
                    }                                                                                         \
                }                                                                                             \
                for (int r = 0; r < G; r++) A[r][u] = a[r];                                                   \
            }                                                                                                 \
            for (int r = 0; r < G; r++) lmk_storef_m(out + r * os + t0, TREEX(A[r]) * scale, m);              \
        }                                                                                                     \
    }                                                                                                         \
    TARGET LMK_KV_BODY void accum_##NAME##_b(const int G, const float *p, int64_t ps, const void *page, int bs, int n, int hd, float *acc, int64_t as) { \
        (void)bs;                                                                                             \
        const uint8_t *V = (const uint8_t *)page;                                                             \
        const int NV = NVOF(G);                                                                               \
        int i = 0;                                                                                            \
        for (; i + 16 * NV <= hd; i += 16 * NV) {                                                             \
            v16f a[LMK_KV_GMAX][4];                                                                           \
            for (int r = 0; r < G; r++)                                                                       \
                for (int v = 0; v < NV; v++) a[r][v] = lmk_loadf(acc + r * as + i + 16 * v);                  \
            for (int t = 0; t < n; t++) {                                                                     \
                const uint8_t *x = V + ((size_t)t * hd + i) * 2;                                              \
                v16f xv[4];                                                                                   \
                for (int v = 0; v < NV; v++) xv[v] = CONV(lmk_loadh(x + 32 * v));                             \
                for (int r = 0; r < G; r++) {                                                                 \
                    const v16f pv = p[r * ps + t];                                                            \
                    for (int v = 0; v < NV; v++) a[r][v] = __builtin_elementwise_fma(pv, xv[v], a[r][v]);     \
                }                                                                                             \
            }                                                                                                 \
            for (int r = 0; r < G; r++)                                                                       \
                for (int v = 0; v < NV; v++) memcpy(acc + r * as + i + 16 * v, &a[r][v], 64);                 \
        }                                                                                                     \
        for (; i < hd; i += 16) {                                                                             \
            const int wd = hd - i < 16 ? hd - i : 16;                                                         \
            v16f a[LMK_KV_GMAX];                                                                              \
            for (int r = 0; r < G; r++) a[r] = wd == 16 ? lmk_loadf(acc + r * as + i) : lmk_loadf_pad(acc + r * as + i, wd); \
            for (int t = 0; t < n; t++) {                                                                     \
                const uint8_t *x = V + ((size_t)t * hd + i) * 2;                                              \
                const v16f xv = CONV(wd == 16 ? lmk_loadh(x) : lmk_loadh_pad(x, wd));                         \
                for (int r = 0; r < G; r++) a[r] = __builtin_elementwise_fma((v16f)p[r * ps + t], xv, a[r]);  \
            }                                                                                                 \
            for (int r = 0; r < G; r++) lmk_storef_m(acc + r * as + i, a[r], wd);                             \
        }                                                                                                     \
    }                                                                                                         \
    TARGET static void score_##NAME(const float *q, const void *page, int bs, int n, int hd, float scale, float *out) { \
        score_##NAME##_b(1, q, 0, page, bs, n, hd, scale, out, 0);                                            \
    }                                                                                                         \
    TARGET static void accum_##NAME(const float *p, const void *page, int bs, int n, int hd, float *acc) {    \
        accum_##NAME##_b(1, p, 0, page, bs, n, hd, acc, 0);                                                   \
    }                                                                                                         \
    TARGET static void dequant_##NAME(const void *page, int bs, int n, int hd, float *out) {                  \
        (void)bs;                                                                                             \
        const uint8_t *P = (const uint8_t *)page;                                                             \
        const size_t total = (size_t)n * hd;                                                                  \
        size_t i = 0;                                                                                         \
        for (; i + 16 <= total; i += 16) { v16f r = CONV(lmk_loadh(P + 2 * i)); memcpy(out + i, &r, 64); }    \
        for (; i < total; i++) { uint16_t b; memcpy(&b, P + 2 * i, 2); out[i] = CONV1(b); }                   \
    }

#define DEFINE_KV_KERNELS(SUFFIX, TARGET, NVOF, TREEX, SUMX, H2F, H2F1)                                       \
    /* Σ_c q_c over hd channels: 16-channel chunks (last zero-padded), tree sum. */                           \
    TARGET LMK_KV_BODY float kv_qsum_##SUFFIX(const float *q, int hd) {                                       \
        v16f a = 0.0f;                                                                                        \
        int i = 0;                                                                                            \
        for (; i + 16 <= hd; i += 16) a += lmk_loadf(q + i);                                                  \
        if (i < hd) a += lmk_loadf_pad(q + i, hd - i);                                                        \
        return lmk_tree16(a);                                                                                 \
    }                                                                                                         \
    /* ---- f32 ---- */                                                                                       \
    TARGET LMK_KV_BODY void score_f32_b_##SUFFIX(const int G, const float *q, int64_t qs, const void *page, int bs, int n, int hd, float scale, float *out, int64_t os) { \
        (void)bs;                                                                                             \
        const float *K = (const float *)page;                                                                 \
        const int full = hd & ~15;                                                                            \
        for (int t0 = 0; t0 < n; t0 += 16) {                                                                  \
            const int m = n - t0 < 16 ? n - t0 : 16;                                                          \
            v16f A[LMK_KV_GMAX][16];                                                                          \
            for (int u = 0; u < 16; u++) {                                                                    \
                v16f a[LMK_KV_GMAX];                                                                          \
                for (int r = 0; r < G; r++) a[r] = 0.0f;                                                      \
                if (u < m) {                                                                                  \
                    const float *k = K + (size_t)(t0 + u) * hd;                                               \
                    for (int i = 0; i < full; i += 16) {                                                      \
                        const v16f kv = lmk_loadf(k + i);                                                     \
                        for (int r = 0; r < G; r++) a[r] = __builtin_elementwise_fma(lmk_loadf(q + r * qs + i), kv, a[r]); \
                    }                                                                                         \
                }                                                                                             \
                for (int r = 0; r < G; r++) A[r][u] = a[r];                                                   \
            }                                                                                                 \
            for (int r = 0; r < G; r++) {                                                                     \
                const v16f S = SUMX(A[r]);                                                                    \
                float *o = out + r * os + t0;                                                                 \
                if (full == hd) { lmk_storef_m(o, S * scale, m); continue; }                                  \
                const float *qr = q + r * qs;                                                                 \
                for (int u = 0; u < m; u++) {   /* the scalar tail, as attend's dot */                        \
                    const float *k = K + (size_t)(t0 + u) * hd;                                               \
                    float s = S[u];                                                                           \
                    for (int j = full; j < hd; j++) s += qr[j] * k[j];                                        \
                    o[u] = s * scale;                                                                         \
                }                                                                                             \
            }                                                                                                 \
        }                                                                                                     \
    }                                                                                                         \
    TARGET LMK_KV_BODY void accum_f32_b_##SUFFIX(const int G, const float *p, int64_t ps, const void *page, int bs, int n, int hd, float *acc, int64_t as) { \
        (void)bs;                                                                                             \
        const float *V = (const float *)page;                                                                 \
        const int NV = NVOF(G);                                                                               \
        int i = 0;                                                                                            \
        for (; i + 16 * NV <= hd; i += 16 * NV) {                                                             \
            v16f a[LMK_KV_GMAX][4];                                                                           \
            for (int r = 0; r < G; r++)                                                                       \
                for (int v = 0; v < NV; v++) a[r][v] = lmk_loadf(acc + r * as + i + 16 * v);                  \
            for (int t = 0; t < n; t++) {                                                                     \
                v16f xv[4];                                                                                   \
                for (int v = 0; v < NV; v++) xv[v] = lmk_loadf(V + (size_t)t * hd + i + 16 * v);              \
                for (int r = 0; r < G; r++) {                                                                 \
                    const v16f pv = p[r * ps + t];                                                            \
                    for (int v = 0; v < NV; v++) a[r][v] = __builtin_elementwise_fma(pv, xv[v], a[r][v]);     \
                }                                                                                             \
            }                                                                                                 \
            for (int r = 0; r < G; r++)                                                                       \
                for (int v = 0; v < NV; v++) memcpy(acc + r * as + i + 16 * v, &a[r][v], 64);                 \
        }                                                                                                     \
        for (; i + 16 <= hd; i += 16) {                                                                       \
            v16f a[LMK_KV_GMAX];                                                                              \
            for (int r = 0; r < G; r++) a[r] = lmk_loadf(acc + r * as + i);                                   \
            for (int t = 0; t < n; t++) {                                                                     \
                const v16f xv = lmk_loadf(V + (size_t)t * hd + i);                                            \
                for (int r = 0; r < G; r++) a[r] = __builtin_elementwise_fma((v16f)p[r * ps + t], xv, a[r]);  \
            }                                                                                                 \
            for (int r = 0; r < G; r++) memcpy(acc + r * as + i, &a[r], 64);                                  \
        }                                                                                                     \
        for (; i < hd; i++) {   /* the scalar tail, as attend's weighted sum */                               \
            for (int r = 0; r < G; r++) {                                                                     \
                const float *pr = p + r * ps;                                                                 \
                float a = acc[r * as + i];                                                                    \
                for (int t = 0; t < n; t++) a += pr[t] * V[(size_t)t * hd + i];                               \
                acc[r * as + i] = a;                                                                          \
            }                                                                                                 \
        }                                                                                                     \
    }                                                                                                         \
    TARGET static void dequant_f32_##SUFFIX(const void *page, int bs, int n, int hd, float *out) {            \
        (void)bs;                                                                                             \
        memcpy(out, page, (size_t)n * hd * 4);                                                                \
    }                                                                                                         \
    /* ---- f16 / bf16 (CONV: lane-wise 16-bit → float) ---- */                                               \
    DEFINE_KV_HALF(f16_##SUFFIX, TARGET, NVOF, TREEX, H2F, H2F1)                                              \
    DEFINE_KV_HALF(bf16_##SUFFIX, TARGET, NVOF, TREEX, lmk_bf2f, lmk_bf2f_1)                                  \
    /* ---- int8 / int4 ---- */                                                                               \
    /* w[r·n + t] = p_r[t]·scale16_t, M[r] = Σ_t p_r[t]·min16_t (in order from 0, separate roundings). */     \
    TARGET LMK_KV_BODY void kv_weights_##SUFFIX(const int G, const float *p, int64_t ps, const uint8_t *pb, int n, float *w, float *M) { \
        for (int r = 0; r < G; r++) M[r] = 0.0f;                                                              \
        for (int t0 = 0; t0 < n; t0 += 16) {                                                                  \
            const int m = n - t0 < 16 ? n - t0 : 16;                                                          \
            v16f scv, mnv;                                                                                    \
            lmk_kv_params16(pb, t0, m, H2F, scv, mnv);                                                        \
            for (int r = 0; r < G; r++) {                                                                     \
                const float *pr = p + r * ps + t0;                                                            \
                const v16f pv = m == 16 ? lmk_loadf(pr) : lmk_loadf_pad(pr, m);                               \
                lmk_storef_m(w + r * n + t0, pv * scv, m);                                                    \
                float pm[16];                                                                                 \
                const v16f x = pv * mnv;                                                                      \
                memcpy(pm, &x, 64);                                                                           \
                for (int u = 0; u < m; u++) M[r] += pm[u];                                                    \
            }                                                                                                 \
        }                                                                                                     \
    }                                                                                                         \
    TARGET LMK_KV_BODY void score_int8_b_##SUFFIX(const int G, const float *q, int64_t qs, const void *page, int bs, int n, int hd, float scale, float *out, int64_t os) { \
        const uint8_t *pb = (const uint8_t *)page, *codes = pb + 4 * (size_t)bs;                              \
        const int full = hd & ~15, tail = hd - full;                                                          \
        float Q[LMK_KV_GMAX];                                                                                 \
        v16f qt[LMK_KV_GMAX];                                                                                 \
        for (int r = 0; r < G; r++) {                                                                         \
            Q[r] = kv_qsum_##SUFFIX(q + r * qs, hd);                                                          \
            qt[r] = tail ? lmk_loadf_pad(q + r * qs + full, tail) : (v16f)0.0f;                               \
        }                                                                                                     \
        for (int t0 = 0; t0 < n; t0 += 16) {                                                                  \
            const int m = n - t0 < 16 ? n - t0 : 16;                                                          \
            v16f A[LMK_KV_GMAX][16];                                                                          \
            for (int u = 0; u < 16; u++) {                                                                    \
                v16f a[LMK_KV_GMAX];                                                                          \
                for (int r = 0; r < G; r++) a[r] = 0.0f;                                                      \
                if (u < m) {                                                                                  \
                    const uint8_t *c = codes + (size_t)(t0 + u) * hd;                                         \
                    for (int i = 0; i < full; i += 16) {                                                      \
                        const v16f cv = __builtin_convertvector(lmk_loadb(c + i), v16f);                      \
                        for (int r = 0; r < G; r++) a[r] = __builtin_elementwise_fma(lmk_loadf(q + r * qs + i), cv, a[r]); \
                    }                                                                                         \
                    if (tail) {                                                                               \
                        const v16f cv = __builtin_convertvector(lmk_loadb_pad(c + full, tail), v16f);         \
                        for (int r = 0; r < G; r++) a[r] = __builtin_elementwise_fma(qt[r], cv, a[r]);        \
                    }                                                                                         \
                }                                                                                             \
                for (int r = 0; r < G; r++) A[r][u] = a[r];                                                   \
            }                                                                                                 \
            v16f scv, mnv;                                                                                    \
            lmk_kv_params16(pb, t0, m, H2F, scv, mnv);                                                        \
            for (int r = 0; r < G; r++) lmk_storef_m(out + r * os + t0, (scv * TREEX(A[r]) + mnv * Q[r]) * scale, m); \
        }                                                                                                     \
    }                                                                                                         \
    TARGET LMK_KV_BODY void accum_int8_b_##SUFFIX(const int G, const float *p, int64_t ps, const void *page, int bs, int n, int hd, float *acc, int64_t as) { \
        const uint8_t *pb = (const uint8_t *)page, *codes = pb + 4 * (size_t)bs;                              \
        const int NV = NVOF(G);                                                                               \
        float w[G * (n > 0 ? n : 1)], M[LMK_KV_GMAX];                                                         \
        kv_weights_##SUFFIX(G, p, ps, pb, n, w, M);                                                           \
        int i = 0;                                                                                            \
        for (; i + 16 * NV <= hd; i += 16 * NV) {                                                             \
            v16f a[LMK_KV_GMAX][4];                                                                           \
            for (int r = 0; r < G; r++)                                                                       \
                for (int v = 0; v < NV; v++) a[r][v] = 0.0f;                                                  \
            for (int t = 0; t < n; t++) {                                                                     \
                const uint8_t *c = codes + (size_t)t * hd + i;                                                \
                v16f cv[4];                                                                                   \
                for (int v = 0; v < NV; v++) cv[v] = __builtin_convertvector(lmk_loadb(c + 16 * v), v16f);    \
                for (int r = 0; r < G; r++) {                                                                 \
                    const v16f wv = w[r * n + t];                                                             \
                    for (int v = 0; v < NV; v++) a[r][v] = __builtin_elementwise_fma(wv, cv[v], a[r][v]);     \
                }                                                                                             \
            }                                                                                                 \
            for (int r = 0; r < G; r++)                                                                       \
                for (int v = 0; v < NV; v++) {                                                                \
                    float *ar = acc + r * as + i + 16 * v;                                                    \
                    const v16f x = lmk_loadf(ar) + (a[r][v] + M[r]);                                          \
                    memcpy(ar, &x, 64);                                                                       \
                }                                                                                             \
        }                                                                                                     \
        for (; i < hd; i += 16) {                                                                             \
            const int wd = hd - i < 16 ? hd - i : 16;                                                         \
            v16f a[LMK_KV_GMAX];                                                                              \
            for (int r = 0; r < G; r++) a[r] = 0.0f;                                                          \
            for (int t = 0; t < n; t++) {                                                                     \
                const uint8_t *c = codes + (size_t)t * hd + i;                                                \
                const v16f cv = __builtin_convertvector(wd == 16 ? lmk_loadb(c) : lmk_loadb_pad(c, wd), v16f); \
                for (int r = 0; r < G; r++) a[r] = __builtin_elementwise_fma((v16f)w[r * n + t], cv, a[r]);   \
            }                                                                                                 \
            for (int r = 0; r < G; r++) {                                                                     \
                float *ar = acc + r * as + i;                                                                 \
                lmk_storef_m(ar, (wd == 16 ? lmk_loadf(ar) : lmk_loadf_pad(ar, wd)) + (a[r] + M[r]), wd);     \
            }                                                                                                 \
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
    /* int4: byte i = channel i (low nibble) | channel i + hd/2 (high nibble). */                             \
    TARGET LMK_KV_BODY void score_int4_b_##SUFFIX(const int G, const float *q, int64_t qs, const void *page, int bs, int n, int hd, float scale, float *out, int64_t os) { \
        const uint8_t *pb = (const uint8_t *)page, *codes = pb + 4 * (size_t)bs;                              \
        const int h = hd / 2, full = h & ~15, tail = h - full;                                                \
        float Q[LMK_KV_GMAX];                                                                                 \
        v16f qtl[LMK_KV_GMAX], qth[LMK_KV_GMAX];                                                              \
        for (int r = 0; r < G; r++) {                                                                         \
            const float *qr = q + r * qs;                                                                     \
            Q[r] = kv_qsum_##SUFFIX(qr, hd);                                                                  \
            qtl[r] = tail ? lmk_loadf_pad(qr + full, tail) : (v16f)0.0f;                                      \
            qth[r] = tail ? lmk_loadf_pad(qr + h + full, tail) : (v16f)0.0f;                                  \
        }                                                                                                     \
        for (int t0 = 0; t0 < n; t0 += 16) {                                                                  \
            const int m = n - t0 < 16 ? n - t0 : 16;                                                          \
            v16f A[LMK_KV_GMAX][16];                                                                          \
            for (int u = 0; u < 16; u++) {                                                                    \
                v16f al[LMK_KV_GMAX], ah[LMK_KV_GMAX];                                                        \
                for (int r = 0; r < G; r++) { al[r] = 0.0f; ah[r] = 0.0f; }                                   \
                if (u < m) {                                                                                  \
                    const uint8_t *c = codes + (size_t)(t0 + u) * h;                                          \
                    for (int i = 0; i < full; i += 16) {                                                      \
                        const v16uc b = lmk_loadb(c + i);                                                     \
                        const v16f lo = __builtin_convertvector(b & (v16uc)15, v16f), hi = __builtin_convertvector(b >> 4, v16f); \
                        for (int r = 0; r < G; r++) {                                                         \
                            al[r] = __builtin_elementwise_fma(lmk_loadf(q + r * qs + i), lo, al[r]);          \
                            ah[r] = __builtin_elementwise_fma(lmk_loadf(q + r * qs + h + i), hi, ah[r]);      \
                        }                                                                                     \
                    }                                                                                         \
                    if (tail) {                                                                               \
                        const v16uc b = lmk_loadb_pad(c + full, tail);                                        \
                        const v16f lo = __builtin_convertvector(b & (v16uc)15, v16f), hi = __builtin_convertvector(b >> 4, v16f); \
                        for (int r = 0; r < G; r++) {                                                         \
                            al[r] = __builtin_elementwise_fma(qtl[r], lo, al[r]);                             \
                            ah[r] = __builtin_elementwise_fma(qth[r], hi, ah[r]);                             \
                        }                                                                                     \
                    }                                                                                         \
                }                                                                                             \
                for (int r = 0; r < G; r++) A[r][u] = al[r] + ah[r];                                          \
            }                                                                                                 \
            v16f scv, mnv;                                                                                    \
            lmk_kv_params16(pb, t0, m, H2F, scv, mnv);                                                        \
            for (int r = 0; r < G; r++) lmk_storef_m(out + r * os + t0, (scv * TREEX(A[r]) + mnv * Q[r]) * scale, m); \
        }                                                                                                     \
    }                                                                                                         \
    TARGET LMK_KV_BODY void accum_int4_b_##SUFFIX(const int G, const float *p, int64_t ps, const void *page, int bs, int n, int hd, float *acc, int64_t as) { \
        const uint8_t *pb = (const uint8_t *)page, *codes = pb + 4 * (size_t)bs;                              \
        const int h = hd / 2, NB = (NVOF(G) + 1) / 2;   /* NB 16-byte chunks (2·NB vectors) a block */        \
        float w[G * (n > 0 ? n : 1)], M[LMK_KV_GMAX];                                                         \
        kv_weights_##SUFFIX(G, p, ps, pb, n, w, M);                                                           \
        int i = 0;                                                                                            \
        for (; i + 16 * NB <= h; i += 16 * NB) {                                                              \
            v16f al[LMK_KV_GMAX][2], ah[LMK_KV_GMAX][2];                                                      \
            for (int r = 0; r < G; r++)                                                                       \
                for (int v = 0; v < NB; v++) { al[r][v] = 0.0f; ah[r][v] = 0.0f; }                            \
            for (int t = 0; t < n; t++) {                                                                     \
                const uint8_t *c = codes + (size_t)t * h + i;                                                 \
                v16f lo[2], hi[2];                                                                            \
                for (int v = 0; v < NB; v++) {                                                                \
                    const v16uc b = lmk_loadb(c + 16 * v);                                                    \
                    lo[v] = __builtin_convertvector(b & (v16uc)15, v16f);                                     \
                    hi[v] = __builtin_convertvector(b >> 4, v16f);                                            \
                }                                                                                             \
                for (int r = 0; r < G; r++) {                                                                 \
                    const v16f wv = w[r * n + t];                                                             \
                    for (int v = 0; v < NB; v++) {                                                            \
                        al[r][v] = __builtin_elementwise_fma(wv, lo[v], al[r][v]);                            \
                        ah[r][v] = __builtin_elementwise_fma(wv, hi[v], ah[r][v]);                            \
                    }                                                                                         \
                }                                                                                             \
            }                                                                                                 \
            for (int r = 0; r < G; r++)                                                                       \
                for (int v = 0; v < NB; v++) {                                                                \
                    float *lo = acc + r * as + i + 16 * v, *hi = lo + h;                                      \
                    const v16f rl = lmk_loadf(lo) + (al[r][v] + M[r]), rh = lmk_loadf(hi) + (ah[r][v] + M[r]); \
                    memcpy(lo, &rl, 64); memcpy(hi, &rh, 64);                                                 \
                }                                                                                             \
        }                                                                                                     \
        for (; i < h; i += 16) {                                                                              \
            const int wd = h - i < 16 ? h - i : 16;                                                           \
            v16f al[LMK_KV_GMAX], ah[LMK_KV_GMAX];                                                            \
            for (int r = 0; r < G; r++) { al[r] = 0.0f; ah[r] = 0.0f; }                                       \
            for (int t = 0; t < n; t++) {                                                                     \
                const uint8_t *c = codes + (size_t)t * h + i;                                                 \
                const v16uc b = wd == 16 ? lmk_loadb(c) : lmk_loadb_pad(c, wd);                               \
                const v16f lo = __builtin_convertvector(b & (v16uc)15, v16f), hi = __builtin_convertvector(b >> 4, v16f); \
                for (int r = 0; r < G; r++) {                                                                 \
                    const v16f wv = w[r * n + t];                                                             \
                    al[r] = __builtin_elementwise_fma(wv, lo, al[r]);                                         \
                    ah[r] = __builtin_elementwise_fma(wv, hi, ah[r]);                                         \
                }                                                                                             \
            }                                                                                                 \
            for (int r = 0; r < G; r++) {                                                                     \
                float *lo = acc + r * as + i, *hi = lo + h;                                                   \
                lmk_storef_m(lo, (wd == 16 ? lmk_loadf(lo) : lmk_loadf_pad(lo, wd)) + (al[r] + M[r]), wd);    \
                lmk_storef_m(hi, (wd == 16 ? lmk_loadf(hi) : lmk_loadf_pad(hi, wd)) + (ah[r] + M[r]), wd);    \
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
    /* ---- int2 and the per-channel schemes (P code planes a byte: 1, 2, 4) ---- */                         \
    /* S[r·ss + t] = Σ_c q_r[c]·code_tc for rows t < n of codes in the P-plane row layout (row t at t·hd/P):  \
     * per plane, lane FMAs over 16-byte chunks (the last zero-padded); the planes added as                   \
     * ((0 + 1) + (2 + 3)); the 16 lanes summed by TREEX. */                                                  \
    TARGET LMK_KV_BODY void kv_dot_b_##SUFFIX(const int G, const int P, const float *q, int64_t qs, const uint8_t *codes, int n, int hd, float *S, int64_t ss) { \
        const int w = hd / P, full = w & ~15, tail = w - full;                                                \
        v16f qt[LMK_KV_GMAX][4];                                                                              \
        for (int r = 0; r < G; r++)                                                                           \
            for (int j = 0; j < P; j++) qt[r][j] = tail ? lmk_loadf_pad(q + r * qs + j * w + full, tail) : (v16f)0.0f; \
        for (int t0 = 0; t0 < n; t0 += 16) {                                                                  \
            const int m = n - t0 < 16 ? n - t0 : 16;                                                          \
            v16f A[LMK_KV_GMAX][16];                                                                          \
            for (int u = 0; u < 16; u++) {                                                                    \
                v16f a[LMK_KV_GMAX][4];                                                                       \
                for (int r = 0; r < G; r++)                                                                   \
                    for (int j = 0; j < P; j++) a[r][j] = 0.0f;                                               \
                if (u < m) {                                                                                  \
                    const uint8_t *c = codes + (size_t)(t0 + u) * w;                                          \
                    for (int i = 0; i < full; i += 16) {                                                      \
                        const v16uc b = lmk_loadb(c + i);                                                     \
                        v16f pl[4];                                                                           \
                        for (int j = 0; j < P; j++) pl[j] = lmk_kv_plane(b, P, j);                            \
                        for (int r = 0; r < G; r++)                                                           \
                            for (int j = 0; j < P; j++)                                                       \
                                a[r][j] = __builtin_elementwise_fma(lmk_loadf(q + r * qs + j * w + i), pl[j], a[r][j]); \
                    }                                                                                         \
                    if (tail) {                                                                               \
                        const v16uc b = lmk_loadb_pad(c + full, tail);                                        \
                        v16f pl[4];                                                                           \
                        for (int j = 0; j < P; j++) pl[j] = lmk_kv_plane(b, P, j);                            \
                        for (int r = 0; r < G; r++)                                                           \
                            for (int j = 0; j < P; j++) a[r][j] = __builtin_elementwise_fma(qt[r][j], pl[j], a[r][j]); \
                    }                                                                                         \
                }                                                                                             \
                for (int r = 0; r < G; r++)                                                                   \
                    A[r][u] = P == 1 ? a[r][0] : P == 2 ? a[r][0] + a[r][1] : (a[r][0] + a[r][1]) + (a[r][2] + a[r][3]); \
            }                                                                                                 \
            for (int r = 0; r < G; r++) lmk_storef_m(S + r * ss + t0, TREEX(A[r]), m);                        \
        }                                                                                                     \
    }                                                                                                         \
    /* int2 (per token): out[t] = (scale16_t·S_t + min16_t·Q)·scale, as int8 / int4. */                       \
    TARGET LMK_KV_BODY void score_int2_b_##SUFFIX(const int G, const float *q, int64_t qs, const void *page, int bs, int n, int hd, float scale, float *out, int64_t os) { \
        const uint8_t *pb = (const uint8_t *)page;                                                            \
        kv_dot_b_##SUFFIX(G, 4, q, qs, pb + 4 * (size_t)bs, n, hd, out, os);                                  \
        for (int r = 0; r < G; r++) {                                                                         \
            const float Q = kv_qsum_##SUFFIX(q + r * qs, hd);                                                 \
            float *o = out + r * os;                                                                          \
            for (int t0 = 0; t0 < n; t0 += 16) {                                                              \
                const int m = n - t0 < 16 ? n - t0 : 16;                                                      \
                v16f scv, mnv;                                                                                \
                lmk_kv_params16(pb, t0, m, H2F, scv, mnv);                                                    \
                const v16f S = m == 16 ? lmk_loadf(o + t0) : lmk_loadf_pad(o + t0, m);                        \
                lmk_storef_m(o + t0, (scv * S + mnv * Q) * scale, m);                                         \
            }                                                                                                 \
        }                                                                                                     \
    }                                                                                                         \
    /* int2 accum: as int4, NVOF(G) planes (1, 2 or 4) of a 16-byte chunk a pass; each channel's FMA chain    \
     * over t is the same whatever the pass. */                                                               \
    TARGET LMK_KV_BODY void accum_int2_b_##SUFFIX(const int G, const float *p, int64_t ps, const void *page, int bs, int n, int hd, float *acc, int64_t as) { \
        const uint8_t *pb = (const uint8_t *)page, *codes = pb + 4 * (size_t)bs;                              \
        const int w = hd / 4, NP = NVOF(G);                                                                   \
        float wt[G * (n > 0 ? n : 1)], M[LMK_KV_GMAX];                                                        \
        kv_weights_##SUFFIX(G, p, ps, pb, n, wt, M);                                                          \
        for (int i = 0; i < w; i += 16) {                                                                     \
            const int wd = w - i < 16 ? w - i : 16;                                                           \
            for (int j0 = 0; j0 < 4; j0 += NP) {                                                              \
                v16f a[LMK_KV_GMAX][4];                                                                       \
                for (int r = 0; r < G; r++)                                                                   \
                    for (int v = 0; v < NP; v++) a[r][v] = 0.0f;                                              \
                for (int t = 0; t < n; t++) {                                                                 \
                    const uint8_t *c = codes + (size_t)t * w + i;                                             \
                    const v16uc b = wd == 16 ? lmk_loadb(c) : lmk_loadb_pad(c, wd);                           \
                    v16f pl[4];                                                                               \
                    for (int v = 0; v < NP; v++) pl[v] = lmk_kv_plane(b, 4, j0 + v);                          \
                    for (int r = 0; r < G; r++) {                                                             \
                        const v16f wv = wt[r * n + t];                                                        \
                        for (int v = 0; v < NP; v++) a[r][v] = __builtin_elementwise_fma(wv, pl[v], a[r][v]); \
                    }                                                                                         \
                }                                                                                             \
                for (int r = 0; r < G; r++)                                                                   \
                    for (int v = 0; v < NP; v++) {                                                            \
                        float *ar = acc + r * as + (j0 + v) * w + i;                                          \
                        lmk_storef_m(ar, (wd == 16 ? lmk_loadf(ar) : lmk_loadf_pad(ar, wd)) + (a[r][v] + M[r]), wd); \
                    }                                                                                         \
            }                                                                                                 \
        }                                                                                                     \
    }                                                                                                         \
    /* Per channel: q'_c = q_c·scale16_c and bias = Σ_c q_c·min16_c (lane FMAs over 16-channel chunks, the   \
     * last zero-padded, tree sum), once a call; out[t] = (Σ_c q'_c·code_tc + bias)·scale. */                 \
    TARGET LMK_KV_BODY void score_chan_b_##SUFFIX(const int G, const int P, const float *q, int64_t qs, const void *page, int n, int hd, float scale, float *out, int64_t os) { \
        const uint8_t *pb = (const uint8_t *)page;                                                            \
        float qp[G * (hd > 0 ? hd : 1)];                                                                      \
        v16f bv[LMK_KV_GMAX];                                                                                 \
        for (int r = 0; r < G; r++) bv[r] = 0.0f;                                                             \
        for (int i = 0; i < hd; i += 16) {                                                                    \
            const int wd = hd - i < 16 ? hd - i : 16;                                                         \
            const uint8_t *ps_ = pb + 2 * (size_t)i, *pm_ = pb + 2 * (size_t)hd + 2 * (size_t)i;              \
            const v16f sc = H2F(wd == 16 ? lmk_loadh(ps_) : lmk_loadh_pad(ps_, wd));                          \
            const v16f mn = H2F(wd == 16 ? lmk_loadh(pm_) : lmk_loadh_pad(pm_, wd));                          \
            for (int r = 0; r < G; r++) {                                                                     \
                const float *qr = q + r * qs + i;                                                             \
                const v16f qv = wd == 16 ? lmk_loadf(qr) : lmk_loadf_pad(qr, wd);                             \
                bv[r] = __builtin_elementwise_fma(qv, mn, bv[r]);                                             \
                lmk_storef_m(qp + r * hd + i, qv * sc, wd);                                                   \
            }                                                                                                 \
        }                                                                                                     \
        kv_dot_b_##SUFFIX(G, P, qp, hd, pb + 4 * (size_t)hd, n, hd, out, os);                                 \
        for (int r = 0; r < G; r++) {                                                                         \
            const float bias = lmk_tree16(bv[r]);                                                             \
            float *o = out + r * os;                                                                          \
            for (int t0 = 0; t0 < n; t0 += 16) {                                                              \
                const int m = n - t0 < 16 ? n - t0 : 16;                                                      \
                const v16f S = m == 16 ? lmk_loadf(o + t0) : lmk_loadf_pad(o + t0, m);                        \
                lmk_storef_m(o + t0, (S + bias) * scale, m);                                                  \
            }                                                                                                 \
        }                                                                                                     \
    }                                                                                                         \
    TARGET LMK_KV_BODY void score_int8c_b_##SUFFIX(const int G, const float *q, int64_t qs, const void *page, int bs, int n, int hd, float scale, float *out, int64_t os) { \
        (void)bs; score_chan_b_##SUFFIX(G, 1, q, qs, page, n, hd, scale, out, os);                            \
    }                                                                                                         \
    TARGET LMK_KV_BODY void score_int4c_b_##SUFFIX(const int G, const float *q, int64_t qs, const void *page, int bs, int n, int hd, float scale, float *out, int64_t os) { \
        (void)bs; score_chan_b_##SUFFIX(G, 2, q, qs, page, n, hd, scale, out, os);                            \
    }                                                                                                         \
    TARGET LMK_KV_BODY void score_int2c_b_##SUFFIX(const int G, const float *q, int64_t qs, const void *page, int bs, int n, int hd, float scale, float *out, int64_t os) { \
        (void)bs; score_chan_b_##SUFFIX(G, 4, q, qs, page, n, hd, scale, out, os);                            \
    }                                                                                                         \
    /* Dequant of a P-plane page, per token (CHAN = 0) or per channel (CHAN = 1): min + scale·code, two       \
     * roundings, no FMA. */                                                                                  \
    TARGET LMK_KV_BODY void dequant_planes_b_##SUFFIX(const int P, const int CHAN, const void *page, int bs, int n, int hd, float *out) { \
        const uint8_t *pb = (const uint8_t *)page, *codes = pb + 4 * (size_t)(CHAN ? hd : bs);                \
        const int w = hd / P, bits = 8 / P, mask = (1 << bits) - 1;                                           \
        float scf[CHAN && hd > 0 ? hd : 1], mnf[CHAN && hd > 0 ? hd : 1];                                     \
        if (CHAN)                                                                                             \
            for (int i = 0; i < hd; i += 16) {                                                                \
                const int wd = hd - i < 16 ? hd - i : 16;                                                     \
                const uint8_t *ps_ = pb + 2 * (size_t)i, *pm_ = pb + 2 * (size_t)hd + 2 * (size_t)i;          \
                lmk_storef_m(scf + i, H2F(wd == 16 ? lmk_loadh(ps_) : lmk_loadh_pad(ps_, wd)), wd);           \
                lmk_storef_m(mnf + i, H2F(wd == 16 ? lmk_loadh(pm_) : lmk_loadh_pad(pm_, wd)), wd);           \
            }                                                                                                 \
        for (int t = 0; t < n; t++) {                                                                         \
            float sc = 0, mn = 0;                                                                             \
            if (!CHAN) { uint16_t par[2]; memcpy(par, pb + 4 * (size_t)t, 4); sc = H2F1(par[0]); mn = H2F1(par[1]); } \
            const uint8_t *c = codes + (size_t)t * w;                                                         \
            float *o = out + (size_t)t * hd;                                                                  \
            int i = 0;                                                                                        \
            for (; i + 16 <= w; i += 16) {                                                                    \
                const v16uc b = lmk_loadb(c + i);                                                             \
                for (int j = 0; j < P; j++) {                                                                 \
                    const int c0 = j * w + i;                                                                 \
                    const v16f cv = lmk_kv_plane(b, P, j);                                                    \
                    const v16f r = CHAN ? lmk_loadf(mnf + c0) + lmk_loadf(scf + c0) * cv : (v16f)mn + (v16f)sc * cv; \
                    memcpy(o + c0, &r, 64);                                                                   \
                }                                                                                             \
            }                                                                                                 \
            for (; i < w; i++)                                                                                \
                for (int j = 0; j < P; j++) {                                                                 \
                    const int c0 = j * w + i;                                                                 \
                    const float code = (float)((c[i] >> (j * bits)) & mask);                                  \
                    o[c0] = CHAN ? mnf[c0] + scf[c0] * code : mn + sc * code;                                 \
                }                                                                                             \
        }                                                                                                     \
    }                                                                                                         \
    TARGET static void dequant_int2_##SUFFIX(const void *page, int bs, int n, int hd, float *out) { dequant_planes_b_##SUFFIX(4, 0, page, bs, n, hd, out); } \
    TARGET static void dequant_int8c_##SUFFIX(const void *page, int bs, int n, int hd, float *out) { dequant_planes_b_##SUFFIX(1, 1, page, bs, n, hd, out); } \
    TARGET static void dequant_int4c_##SUFFIX(const void *page, int bs, int n, int hd, float *out) { dequant_planes_b_##SUFFIX(2, 1, page, bs, n, hd, out); } \
    TARGET static void dequant_int2c_##SUFFIX(const void *page, int bs, int n, int hd, float *out) { dequant_planes_b_##SUFFIX(4, 1, page, bs, n, hd, out); } \
    /* ---- the one-row entry points (G = 1) and the table ---- */                                            \
    TARGET static void score_f32_##SUFFIX(const float *q, const void *page, int bs, int n, int hd, float scale, float *out) { score_f32_b_##SUFFIX(1, q, 0, page, bs, n, hd, scale, out, 0); } \
    TARGET static void accum_f32_##SUFFIX(const float *p, const void *page, int bs, int n, int hd, float *acc) { accum_f32_b_##SUFFIX(1, p, 0, page, bs, n, hd, acc, 0); } \
    TARGET static void score_int8_##SUFFIX(const float *q, const void *page, int bs, int n, int hd, float scale, float *out) { score_int8_b_##SUFFIX(1, q, 0, page, bs, n, hd, scale, out, 0); } \
    TARGET static void accum_int8_##SUFFIX(const float *p, const void *page, int bs, int n, int hd, float *acc) { accum_int8_b_##SUFFIX(1, p, 0, page, bs, n, hd, acc, 0); } \
    TARGET static void score_int4_##SUFFIX(const float *q, const void *page, int bs, int n, int hd, float scale, float *out) { score_int4_b_##SUFFIX(1, q, 0, page, bs, n, hd, scale, out, 0); } \
    TARGET static void accum_int4_##SUFFIX(const float *p, const void *page, int bs, int n, int hd, float *acc) { accum_int4_b_##SUFFIX(1, p, 0, page, bs, n, hd, acc, 0); } \
    TARGET static void score_int2_##SUFFIX(const float *q, const void *page, int bs, int n, int hd, float scale, float *out) { score_int2_b_##SUFFIX(1, q, 0, page, bs, n, hd, scale, out, 0); } \
    TARGET static void accum_int2_##SUFFIX(const float *p, const void *page, int bs, int n, int hd, float *acc) { accum_int2_b_##SUFFIX(1, p, 0, page, bs, n, hd, acc, 0); } \
    TARGET static void score_int8c_##SUFFIX(const float *q, const void *page, int bs, int n, int hd, float scale, float *out) { score_int8c_b_##SUFFIX(1, q, 0, page, bs, n, hd, scale, out, 0); } \
    TARGET static void score_int4c_##SUFFIX(const float *q, const void *page, int bs, int n, int hd, float scale, float *out) { score_int4c_b_##SUFFIX(1, q, 0, page, bs, n, hd, scale, out, 0); } \
    TARGET static void score_int2c_##SUFFIX(const float *q, const void *page, int bs, int n, int hd, float scale, float *out) { score_int2c_b_##SUFFIX(1, q, 0, page, bs, n, hd, scale, out, 0); } \
    /* accum is NULL for the per-channel schemes: they are for K only. */                                     \
    const lmk_kv_kernels lmk_kv_##SUFFIX = {                                                                  \
        .score = {score_f32_##SUFFIX, score_f16_##SUFFIX, score_bf16_##SUFFIX, score_int8_##SUFFIX, score_int4_##SUFFIX, \
                  score_int2_##SUFFIX, score_int8c_##SUFFIX, score_int4c_##SUFFIX, score_int2c_##SUFFIX},    \
        .accum = {accum_f32_##SUFFIX, accum_f16_##SUFFIX, accum_bf16_##SUFFIX, accum_int8_##SUFFIX, accum_int4_##SUFFIX, \
                  accum_int2_##SUFFIX, NULL, NULL, NULL},                                                     \
        .dequant = {dequant_f32_##SUFFIX, dequant_f16_##SUFFIX, dequant_bf16_##SUFFIX, dequant_int8_##SUFFIX, dequant_int4_##SUFFIX, \
                    dequant_int2_##SUFFIX, dequant_int8c_##SUFFIX, dequant_int4c_##SUFFIX, dequant_int2c_##SUFFIX}, \
    };

DEFINE_KV_KERNELS(generic, , LMK_KV_NV_GENERIC, lmk_tree16_each, lmk_sum16_each, lmk_h2f_bits, lmk_h2f_1_sw)
#ifdef LMK_X86
DEFINE_KV_KERNELS(avx2, LMK_TARGET_AVX2, LMK_KV_NV_AVX2, lmk_tree16x16, lmk_sum16_each, lmk_h2f_f16c, lmk_h2f_1_f16c)
DEFINE_KV_KERNELS(avx512, LMK_TARGET_AVX512, LMK_KV_NV_AVX512, lmk_tree16x16, lmk_sum16x16, lmk_h2f_f16c, lmk_h2f_1_f16c)
#endif

/* ---------------------------------------------------------------------------------
 * Multi-row kernels (grouped-query decode): the bodies above for g = 1 … LMK_KV_GMAX
 * rows sharing one page. Not built for the generic level (the baseline the build
 * requires has AVX2; the driver loops its one-row kernels instead, the same bits). */

typedef struct lmk_kv_group_kernels {
    void (*score[LMK_KV_SCHEMES])(const float *q, int64_t qs, int g, const void *page, int bs, int n, int hd, float scale, float *out, int64_t os);
    void (*accum[LMK_KV_SCHEMES])(const float *p, int64_t ps, int g, const void *page, int bs, int n, int hd, float *acc, int64_t as);
} lmk_kv_group_kernels;

#define LMK_KV_GSWITCH(FN, ...)                                   \
    switch (g) {                                                  \
    case 1: FN(1, __VA_ARGS__); break;                            \
    case 2: FN(2, __VA_ARGS__); break;                            \
    case 3: FN(3, __VA_ARGS__); break;                            \
    case 4: FN(4, __VA_ARGS__); break;                            \
    default: break;                                               \
    }

#ifdef LMK_X86
#define DEFINE_KV_GROUP(SUFFIX, TARGET)                                                                       \
    TARGET static void gscore_f32_##SUFFIX(const float *q, int64_t qs, int g, const void *page, int bs, int n, int hd, float scale, float *out, int64_t os) { \
        LMK_KV_GSWITCH(score_f32_b_##SUFFIX, q, qs, page, bs, n, hd, scale, out, os)                          \
    }                                                                                                         \
    TARGET static void gaccum_f32_##SUFFIX(const float *p, int64_t ps, int g, const void *page, int bs, int n, int hd, float *acc, int64_t as) { \
        LMK_KV_GSWITCH(accum_f32_b_##SUFFIX, p, ps, page, bs, n, hd, acc, as)                                 \
    }                                                                                                         \
    TARGET static void gscore_f16_##SUFFIX(const float *q, int64_t qs, int g, const void *page, int bs, int n, int hd, float scale, float *out, int64_t os) { \
        LMK_KV_GSWITCH(score_f16_##SUFFIX##_b, q, qs, page, bs, n, hd, scale, out, os)                        \
    }                                                                                                         \
    TARGET static void gaccum_f16_##SUFFIX(const float *p, int64_t ps, int g, const void *page, int bs, int n, int hd, float *acc, int64_t as) { \
        LMK_KV_GSWITCH(accum_f16_##SUFFIX##_b, p, ps, page, bs, n, hd, acc, as)                               \
    }                                                                                                         \
    TARGET static void gscore_bf16_##SUFFIX(const float *q, int64_t qs, int g, const void *page, int bs, int n, int hd, float scale, float *out, int64_t os) { \
        LMK_KV_GSWITCH(score_bf16_##SUFFIX##_b, q, qs, page, bs, n, hd, scale, out, os)                       \
    }                                                                                                         \
    TARGET static void gaccum_bf16_##SUFFIX(const float *p, int64_t ps, int g, const void *page, int bs, int n, int hd, float *acc, int64_t as) { \
        LMK_KV_GSWITCH(accum_bf16_##SUFFIX##_b, p, ps, page, bs, n, hd, acc, as)                              \
    }                                                                                                         \
    TARGET static void gscore_int8_##SUFFIX(const float *q, int64_t qs, int g, const void *page, int bs, int n, int hd, float scale, float *out, int64_t os) { \
        LMK_KV_GSWITCH(score_int8_b_##SUFFIX, q, qs, page, bs, n, hd, scale, out, os)                         \
    }                                                                                                         \
    TARGET static void gaccum_int8_##SUFFIX(const float *p, int64_t ps, int g, const void *page, int bs, int n, int hd, float *acc, int64_t as) { \
        LMK_KV_GSWITCH(accum_int8_b_##SUFFIX, p, ps, page, bs, n, hd, acc, as)                                \
    }                                                                                                         \
    TARGET static void gscore_int4_##SUFFIX(const float *q, int64_t qs, int g, const void *page, int bs, int n, int hd, float scale, float *out, int64_t os) { \
        LMK_KV_GSWITCH(score_int4_b_##SUFFIX, q, qs, page, bs, n, hd, scale, out, os)                         \
    }                                                                                                         \
    TARGET static void gaccum_int4_##SUFFIX(const float *p, int64_t ps, int g, const void *page, int bs, int n, int hd, float *acc, int64_t as) { \
        LMK_KV_GSWITCH(accum_int4_b_##SUFFIX, p, ps, page, bs, n, hd, acc, as)                                \
    }                                                                                                         \
    TARGET static void gscore_int2_##SUFFIX(const float *q, int64_t qs, int g, const void *page, int bs, int n, int hd, float scale, float *out, int64_t os) { \
        LMK_KV_GSWITCH(score_int2_b_##SUFFIX, q, qs, page, bs, n, hd, scale, out, os)                         \
    }                                                                                                         \
    TARGET static void gaccum_int2_##SUFFIX(const float *p, int64_t ps, int g, const void *page, int bs, int n, int hd, float *acc, int64_t as) { \
        LMK_KV_GSWITCH(accum_int2_b_##SUFFIX, p, ps, page, bs, n, hd, acc, as)                                \
    }                                                                                                         \
    TARGET static void gscore_int8c_##SUFFIX(const float *q, int64_t qs, int g, const void *page, int bs, int n, int hd, float scale, float *out, int64_t os) { \
        LMK_KV_GSWITCH(score_int8c_b_##SUFFIX, q, qs, page, bs, n, hd, scale, out, os)                        \
    }                                                                                                         \
    TARGET static void gscore_int4c_##SUFFIX(const float *q, int64_t qs, int g, const void *page, int bs, int n, int hd, float scale, float *out, int64_t os) { \
        LMK_KV_GSWITCH(score_int4c_b_##SUFFIX, q, qs, page, bs, n, hd, scale, out, os)                        \
    }                                                                                                         \
    TARGET static void gscore_int2c_##SUFFIX(const float *q, int64_t qs, int g, const void *page, int bs, int n, int hd, float scale, float *out, int64_t os) { \
        LMK_KV_GSWITCH(score_int2c_b_##SUFFIX, q, qs, page, bs, n, hd, scale, out, os)                        \
    }                                                                                                         \
    static const lmk_kv_group_kernels lmk_kvg_##SUFFIX = {                                                    \
        .score = {gscore_f32_##SUFFIX, gscore_f16_##SUFFIX, gscore_bf16_##SUFFIX, gscore_int8_##SUFFIX, gscore_int4_##SUFFIX, \
                  gscore_int2_##SUFFIX, gscore_int8c_##SUFFIX, gscore_int4c_##SUFFIX, gscore_int2c_##SUFFIX}, \
        .accum = {gaccum_f32_##SUFFIX, gaccum_f16_##SUFFIX, gaccum_bf16_##SUFFIX, gaccum_int8_##SUFFIX, gaccum_int4_##SUFFIX, \
                  gaccum_int2_##SUFFIX, NULL, NULL, NULL},                                                    \
    };

DEFINE_KV_GROUP(avx2, LMK_TARGET_AVX2)
DEFINE_KV_GROUP(avx512, LMK_TARGET_AVX512)
#endif

/* ---------------------------------------------------------------------------------
 * Paged decode attention (the driver; the level's kernels do the work). */

/* Block i ≥ kfull's K rows in the view's f32 tail. */
static const void *kv_tail_page(const lmk_kv_view *view, int i, int hd) {
    return view->ktail + ((int64_t)i - view->kfull) * view->bs * hd;
}

void lmk_attend_paged(const lmk_kernels *k, const float *q, const lmk_kv_view *view, int n, int hd, float *scores, float *out, float scale) {
    const lmk_kv_kernels *kv = k->kv;
    const int bs = view->bs;
    const int blocks = bs > 0 ? (n + bs - 1) / bs : 0;
    for (int i = 0; i < blocks; i++) {
        const int rows = n - i * bs < bs ? n - i * bs : bs;
        if (i >= view->kfull) {   /* the K tail: f32 rows */
            kv->score[LMK_KV_F32](q, kv_tail_page(view, i, hd), bs, rows, hd, scale, scores + (size_t)i * bs);
            continue;
        }
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

/* The multi-row kernels of the level whose one-row table is `kv` (NULL: none). */
static const lmk_kv_group_kernels *group_kernels_of(const lmk_kv_kernels *kv) {
#ifdef LMK_X86
    if (kv == &lmk_kv_avx2) return &lmk_kvg_avx2;
    if (kv == &lmk_kv_avx512) return &lmk_kvg_avx512;
#endif
    (void)kv;
    return NULL;
}

void lmk_attend_paged_group(const lmk_kernels *k, const float *q, int64_t q_stride, int g, const lmk_kv_view *view, int n, int hd,
                            float *scores, float *out, int64_t out_stride, float scale) {
    if (g <= 0) return;
    const lmk_kv_kernels *kv = k->kv;
    const lmk_kv_group_kernels *gk = group_kernels_of(kv);
    const int bs = view->bs;
    const int blocks = bs > 0 ? (n + bs - 1) / bs : 0;
    /* The rows in chunks of at most LMK_KV_GMAX, as even as possible (7 = 4 + 3, 9 = 3 + 3 + 3). */
    const int chunks = (g + LMK_KV_GMAX - 1) / LMK_KV_GMAX, base = g / chunks, extra = g % chunks;
    /* Pass 1, page by page; within a page, chunk by chunk. */
    for (int i = 0; i < blocks; i++) {
        const int rows = n - i * bs < bs ? n - i * bs : bs;
        const int tail = i >= view->kfull, ks = tail ? LMK_KV_F32 : view->kscheme;
        const void *page = tail ? kv_tail_page(view, i, hd) : view->kbase + (int64_t)view->table[i] * view->stride;
        for (int c = 0, r0 = 0, gc; c < chunks; c++, r0 += gc) {
            gc = base + (c < extra);
            const float *qr = q + (int64_t)r0 * q_stride;
            float *sr = scores + (int64_t)r0 * n + (int64_t)i * bs;
            if (gk) gk->score[ks](qr, q_stride, gc, page, bs, rows, hd, scale, sr, n);
            else for (int r = 0; r < gc; r++) kv->score[ks](qr + r * q_stride, page, bs, rows, hd, scale, sr + (int64_t)r * n);
        }
    }
    for (int r = 0; r < g; r++) {
        k->exp->softmax(scores + (int64_t)r * n, n);
        for (int c = 0; c < hd; c++) out[(int64_t)r * out_stride + c] = 0.0f;
    }
    /* Pass 2, the same way. */
    for (int i = 0; i < blocks; i++) {
        const int rows = n - i * bs < bs ? n - i * bs : bs;
        const uint8_t *page = view->vbase + (int64_t)view->table[i] * view->stride;
        for (int c = 0, r0 = 0, gc; c < chunks; c++, r0 += gc) {
            gc = base + (c < extra);
            const float *pr = scores + (int64_t)r0 * n + (int64_t)i * bs;
            float *orow = out + (int64_t)r0 * out_stride;
            if (gk) gk->accum[view->vscheme](pr, n, gc, page, bs, rows, hd, orow, out_stride);
            else for (int r = 0; r < gc; r++) kv->accum[view->vscheme](pr + (int64_t)r * n, page, bs, rows, hd, orow + r * out_stride);
        }
    }
}
