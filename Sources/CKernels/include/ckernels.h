#ifndef LMKIT_CKERNELS_H
#define LMKIT_CKERNELS_H
#include <stdint.h>

/// Quantizes `nblocks` blocks of 32 floats to int8: dx[b] = max|x| / 127,
/// qx = round(x / dx[b]) in [-127, 127] (dx = 0 → all zero).
void lmk_quantize_q8(const float *x, int nblocks, int8_t *qx, float *dx);

/// int4 rows [r0, r1) · int8 activations. Row layout: cols32/2 bytes (ggml nibble
/// order per 32 columns), float16 scales[ngroups] (and mins[ngroups], or NULL for
/// the symmetric code-8 scheme), group size `group` (multiple of 32).
/// out[r] = Σ_b s_g · dx[b] · Σ_i q_i·qx_i  +  Σ_g (m_g or −8·s_g) · xsum[g].
void lmk_matvec_q4(const uint8_t *q, const uint16_t *scales, const uint16_t *mins,
                   int r0, int r1, int cols32, int ngroups, int group,
                   const int8_t *qx, const float *dx, const float *xsum, float *out);

/// int8 rows [r0, r1) · int8 activations. Row layout: cols32 int8; scales: float32
/// per row (`group` = 0) or float16 per group.
void lmk_matvec_q8(const int8_t *q, const void *scales, int r0, int r1, int cols32,
                   int ngroups, int group, const int8_t *qx, const float *dx, float *out);

/// 1 when the AVX2 paths were compiled in.
int lmk_has_avx2(void);
#endif
