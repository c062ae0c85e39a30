/* exp / max / softmax over float rows, at each kernel level.
 *
 * One source, compiled three times (generic, AVX2, AVX-512) through clang's
 * 16-lane vector type: the lane-wise arithmetic is the same at every level, only the
 * register width differs, so every level gives the same bits as the others and as the
 * Swift reference `FastMath` (Cephes-style exp: range reduction by ln 2, degree-6
 * polynomial, exponent by bit construction; no FMA contraction; lanes summed in order,
 * as Swift's `SIMD16.sum()`). Softmax is the attention and scoring
 * hot loop; in Swift it could only be compiled for one instruction set. */
#include "lmk_internal.h"

#pragma clang fp contract(off)
/* The 16-lane helpers are always inlined, so no vector crosses a call boundary. */
#pragma clang diagnostic ignored "-Wpsabi"

typedef float v16f __attribute__((ext_vector_type(16)));
typedef int v16i __attribute__((ext_vector_type(16)));

#define DEFINE_EXP_KERNELS(SUFFIX, TARGET)                                                                   \
    TARGET static inline __attribute__((always_inline)) v16f lmk_exp16_##SUFFIX(v16f x) {                    \
        const v16f lo = -87.3f, hi = 88.7f;                                                                  \
        v16f xc = x < lo ? lo : x;            /* Swift pointwiseMax(x, lo): lo where x < lo */              \
        xc = hi < xc ? hi : xc;               /* pointwiseMin(xc, hi): hi where hi < xc */                  \
        const v16f magic = 12582912.0f;                                                                     \
        v16f t = xc * 1.44269504088896341f + magic;                                                         \
        v16f n = t - magic;                                                                                 \
        v16f r = xc - n * 0.693359375f;                                                                     \
        r = r - n * -2.12194440e-4f;                                                                        \
        v16f p = 1.9875691500e-4f;                                                                          \
        p = p * r + 1.3981999507e-3f;                                                                       \
        p = p * r + 8.3334519073e-3f;                                                                       \
        p = p * r + 4.1665795894e-2f;                                                                       \
        p = p * r + 1.6666665459e-1f;                                                                       \
        p = p * r + 5.0000001201e-1f;                                                                       \
        v16f y = p * (r * r) + r + 1.0f;                                                                    \
        v16i bits = (v16i)t - (v16i)magic;                                                                  \
        v16f scale = (v16f)((bits + 127) << 23);                                                            \
        return y * scale;                                                                                   \
    }                                                                                                       \
    TARGET static inline __attribute__((always_inline)) float lmk_sum16_##SUFFIX(v16f v) {                   \
        float r = -0.0f;                      /* Swift's SIMD sum(): lanes in order from −0 */              \
        for (int k = 0; k < 16; k++) r += v[k];                                                             \
        return r;                                                                                           \
    }                                                                                                       \
    TARGET static float max_##SUFFIX(const float *x, int n) {                                               \
        v16f m = -__builtin_inff();                                                                         \
        int i = 0;                                                                                          \
        for (; i + 16 <= n; i += 16) {                                                                      \
            v16f v; memcpy(&v, x + i, sizeof v);                                                            \
            m = m < v ? v : m;                                                                              \
        }                                                                                                   \
        float r = -__builtin_inff();                                                                        \
        for (int k = 0; k < 16; k++) r = r < m[k] ? m[k] : r;                                               \
        for (; i < n; i++) r = r < x[i] ? x[i] : r;                                                         \
        return r;                                                                                           \
    }                                                                                                       \
    TARGET static double exp_shift_sum_##SUFFIX(float *x, int n, float shift) {                             \
        v16f acc = 0.0f;                                                                                    \
        const v16f s = shift;                                                                               \
        int i = 0;                                                                                          \
        for (; i + 16 <= n; i += 16) {                                                                      \
            v16f v; memcpy(&v, x + i, sizeof v);                                                            \
            v16f e = lmk_exp16_##SUFFIX(v - s);                                                             \
            memcpy(x + i, &e, sizeof e);                                                                    \
            acc += e;                                                                                       \
        }                                                                                                   \
        double total = (double)lmk_sum16_##SUFFIX(acc);                                                     \
        for (; i < n; i++) {                                                                                \
            v16f e = lmk_exp16_##SUFFIX((v16f)(x[i] - shift));                                              \
            x[i] = e[0];                                                                                    \
            total += (double)e[0];                                                                          \
        }                                                                                                   \
        return total;                                                                                       \
    }                                                                                                       \
    TARGET static void softmax_##SUFFIX(float *x, int n) {                                                  \
        float m = max_##SUFFIX(x, n);                                                                       \
        float inv = (float)(1.0 / exp_shift_sum_##SUFFIX(x, n, m));                                         \
        for (int i = 0; i < n; i++) x[i] *= inv;                                                            \
    }                                                                                                       \
    /* Swift's Ops.dot: fused multiply-add per lane, lanes summed in order, scalar tail. */                 \
    TARGET static inline __attribute__((always_inline)) float dot_##SUFFIX(const float *a, const float *b, int n) { \
        v16f acc = 0.0f;                                                                                    \
        int i = 0;                                                                                          \
        for (; i + 16 <= n; i += 16) {                                                                      \
            v16f x, y; memcpy(&x, a + i, sizeof x); memcpy(&y, b + i, sizeof y);                            \
            acc = __builtin_elementwise_fma(x, y, acc);                                                     \
        }                                                                                                   \
        float s = lmk_sum16_##SUFFIX(acc);                                                                  \
        for (; i < n; i++) s += a[i] * b[i];                                                                \
        return s;                                                                                           \
    }                                                                                                       \
    /* One query row against n keys/values (decode attention): scores = q·Kᵀ·scale, softmax, out = Σ p_j V_j; \
       the same operations as Ops.dot / softmax / Ops.axpy, in the same order. */                           \
    TARGET static void attend_##SUFFIX(const float *q, const float *K, const float *V, int n, int hd, float scale, \
                                       float *scores, float *out) {                                         \
        for (int j = 0; j < n; j++) scores[j] = dot_##SUFFIX(q, K + (long)j * hd, hd) * scale;              \
        softmax_##SUFFIX(scores, n);                                                                        \
        for (int i = 0; i < hd; i++) out[i] = 0.0f;                                                         \
        for (int j = 0; j < n; j++) {                                                                       \
            const float *x = V + (long)j * hd;                                                              \
            const v16f av = scores[j];                                                                      \
            int i = 0;                                                                                      \
            for (; i + 16 <= hd; i += 16) {                                                                 \
                v16f xv, yv; memcpy(&xv, x + i, sizeof xv); memcpy(&yv, out + i, sizeof yv);                \
                yv = __builtin_elementwise_fma(av, xv, yv);                                                 \
                memcpy(out + i, &yv, sizeof yv);                                                            \
            }                                                                                               \
            for (; i < hd; i++) out[i] += scores[j] * x[i];                                                 \
        }                                                                                                   \
    }

DEFINE_EXP_KERNELS(generic, )
const lmk_exp_kernels lmk_exp_generic = {max_generic, exp_shift_sum_generic, softmax_generic, attend_generic};
#ifdef LMK_X86
DEFINE_EXP_KERNELS(avx2, LMK_TARGET_AVX2)
DEFINE_EXP_KERNELS(avx512, LMK_TARGET_AVX512)
const lmk_exp_kernels lmk_exp_avx2 = {max_avx2, exp_shift_sum_avx2, softmax_avx2, attend_avx2};
const lmk_exp_kernels lmk_exp_avx512 = {max_avx512, exp_shift_sum_avx512, softmax_avx512, attend_avx512};
#endif
