/* AVX-512 VNNI level: 512-bit registers and vpdpbusd (u8 × s8 → i32, 4 products per
 * 32-bit lane, accumulated without saturation).
 *
 * Both matvec kernels share one scheme for the per-block float scales
 * sd[b] = s_g(b) · dx[b]: rows are walked in chunks of 16 blocks (512 columns); per row
 * and chunk, the 16 float16 group scales starting at the chunk's first group are
 * converted at once (vcvtph2ps), spread to blocks with a per-call index vector
 * (vpermps, which handles any blocks-per-group count, including one group per row),
 * and multiplied by the chunk's dx. The integer dot products leave each block's sum in
 * 4 (int4) or 8 (int8) consecutive int32 lanes, so each vpdpbusd result is converted,
 * multiplied by the matching lanes of sd (one more vpermps) and FMA-accumulated; one
 * horizontal sum per row at the end.
 *
 * Four rows are processed together (ROWS_Q4 / ROWS_Q8) so the activation loads, the
 * chunk tables and the loop overhead are shared and the rows' FMA chains interleave.
 * The four rows come from four equal runs of [r0, r1) (rows j, j+run, j+2·run, ...),
 * so each run is one long sequential stream: four adjacent rows read in lockstep look
 * like many short streams to the hardware prefetchers, which cost up to 2x on weights
 * streamed from DRAM (measured; software prefetch did not help either way).
 *
 * Per-call setup (activation rearrangement, tables) lives in stack arrays (about
 * 1.4 · cols32 bytes for int4, 3 · cols32 for int8; 48 KB at 16384 columns); nothing is
 * global. Every load that could run past an input
 * array's end is masked (the tests put each input against a PROT_NONE page).
 *
 * matvec_q4's float summation order differs from the generic and AVX2 kernels
 * (lane-parallel partial sums), so it agrees with them to float rounding, not bit for
 * bit; the integer block sums are exact. matvec_q8 is bit-identical to the AVX2 level
 * (see there). quantize_q8 is bit-identical to the generic one. */
#include "lmk_internal.h"
#ifdef LMK_X86
#include <immintrin.h>

#define T LMK_TARGET_AVX512
/* Everything taking or returning a vector is always inlined: an out-of-line call would
 * pass __m512 values with the target's baseline ABI, through memory (seen at -O0). */
#define INLINE static inline __attribute__((always_inline))

/* Rows per step (measured on Zen 4: 4 beats 2, 8 is no better). */
enum { ROWS_Q4 = 4, ROWS_Q8 = 4 };

T static inline int8_t *align64(void *p) { return (int8_t *)(((uintptr_t)p + 63) & ~(uintptr_t)63); }
T static inline __mmask16 mask16(int n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n > 0 ? n : 0)) - 1); }
T static inline __mmask64 mask64(int n) { return n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (n > 0 ? n : 0)) - 1); }

/* Σ of the 16 lanes as hsum256(low half + high half) in the AVX2 level: the same
 * addition tree, which makes matvec_q8 here bit-identical to matvec_q8 there. */
INLINE T float hsum512(const __m512 v) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---------------------------------------------------------------------------------- */
/* quantize_q8: bit-identical to the generic quantizer for every input (see the AVX2
 * version for the argument): NaN-ignoring max (vmaxps returns its second operand when
 * the first is NaN), the same scalar d and 1/d, vcvtps2dq (round-half-even under the
 * default MXCSR), and vpmovdb keeps the low byte as (int8_t)lrintf does. */
T static void quantize_q8_avx512(const float *x, int nblocks, int8_t *qx, float *dx) {
    for (int b = 0; b < nblocks; b++) {
        const __m512 v0 = _mm512_loadu_ps(x + 32 * b), v1 = _mm512_loadu_ps(x + 32 * b + 16);
        __m512 m = _mm512_max_ps(_mm512_abs_ps(v0), _mm512_setzero_ps());
        m = _mm512_max_ps(_mm512_abs_ps(v1), m);
        const float amax = _mm512_reduce_max_ps(m);   /* m has no NaN: order is irrelevant */
        const float d = amax / 127.0f, inv = d > 0 ? 1.0f / d : 0.0f;
        dx[b] = d;
        const __m512 iv = _mm512_set1_ps(inv);
        _mm_storeu_si128((__m128i *)(qx + 32 * b), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v0, iv))));
        _mm_storeu_si128((__m128i *)(qx + 32 * b + 16), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v1, iv))));
    }
}

/* ---------------------------------------------------------------------------------- */
/* Per-call tables for the chunked scale scheme (see the top of the file). */
typedef struct {
    const float *dxp;       /* dx padded with zeros to 16 · nchunks, 64-byte aligned */
    const int32_t *gidx;    /* per chunk, 16 lanes: group of block (16c + j) − first group */
    const int *g0;          /* per chunk: its first group */
    int nchunks;
    int nblocks;
    int ngroups;
} chunk_tables;

/* Fills the tables; `dxbuf`, `gbuf`, `g0buf` hold 16·nchunks + 16, 16·nchunks + 16 and
 * nchunks + 1 elements. `bpg` ≥ 1 (group / 32, or nblocks for one group per row). */
T static chunk_tables chunk_tables_make(const float *dx, int nblocks, int ngroups, int bpg,
                                        float *dxbuf, int32_t *gbuf, int *g0buf) {
    chunk_tables t = { .nchunks = (nblocks + 15) / 16, .nblocks = nblocks, .ngroups = ngroups };
    float *dxp = (float *)align64(dxbuf);
    int32_t *gidx = (int32_t *)align64(gbuf);
    for (int c = 0; c < t.nchunks; c++) {
        const int g0 = (16 * c) / bpg;
        g0buf[c] = g0;
        for (int j = 0; j < 16; j++) {
            const int b = 16 * c + j;
            dxp[b] = b < nblocks ? dx[b] : 0.0f;
            gidx[b] = b < nblocks ? b / bpg - g0 : 0;   /* in 0..15 since bpg ≥ 1 */
        }
    }
    t.dxp = dxp; t.gidx = gidx; t.g0 = g0buf;
    return t;
}

/* sd for the 16 blocks of chunk `c` of one row (zero for blocks past the row's end,
 * whatever the scale bits there: the masked lanes never see a NaN or Inf). */
INLINE T __m512 chunk_sd(const chunk_tables *t, int c, const uint16_t *rowScales) {
    const int g0 = t->g0[c];
    const __m512 s = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask16(t->ngroups - g0), rowScales + g0));
    const __m512 sb = _mm512_permutexvar_ps(_mm512_load_si512(t->gidx + 16 * c), s);
    return _mm512_maskz_mul_ps(mask16(t->nblocks - 16 * c), sb, _mm512_load_ps(t->dxp + 16 * c));
}

/* ---------------------------------------------------------------------------------- */
/* matvec_q4.
 *
 * Activations are rearranged once per call into "quads" of 4 blocks: 64 bytes holding
 * columns 0..15 of blocks 4k..4k+3 (xlo) and 64 bytes holding their columns 16..31 (xhi).
 * Then one 64-byte load of a row's weights (4 blocks of 16 bytes) splits into low
 * nibbles (lane j ↔ block 4k + j/4, columns 0..15 in order) and high nibbles, and two
 * vpdpbusd (nibbles are the unsigned operand, qx the signed one) give each block's sum
 * in 4 int32 lanes. The offset term Σ_g (m_g or −8 s_g)·xsum[g] is accumulated into the
 * same float accumulator (xsum is premultiplied by −8 once per call for the symmetric
 * scheme). */

/* One quad of `R` rows: acc[i] += cvt(dpbusd(lo) + dpbusd(hi)) · sd[i] spread by `qi`. */
INLINE T void q4_quad(const int R, __m512 *acc, const uint8_t *const *rows, const size_t off, const __mmask64 wm,
                      const int masked, const __m512i xl, const __m512i xh, const __m512i qi, const __m512 *sd) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int i = 0; i < R; i++) {
        const __m512i w = masked ? _mm512_maskz_loadu_epi8(wm, rows[i] + off) : _mm512_loadu_si512(rows[i] + off);
        const __m512i lo = _mm512_and_si512(w, m4);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), m4);
        const __m512i s = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xl), hi, xh);
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_permutexvar_ps(qi, sd[i]), acc[i]);
    }
}

/* Rows r + i·stride, i < R. */
INLINE T void q4_rows(const int R, const uint8_t *q, const uint16_t *scales, const uint16_t *mins, const int r, const int stride,
                      const int rowBytes, const int ngroups, const int8_t *xa, const float *xs,
                      const chunk_tables *t, float *out) {
    const int nblocks = t->nblocks, nquads = (nblocks + 3) / 4, nfull = nblocks / 4;
    const __mmask64 tailmask = mask64(16 * (nblocks - 4 * nfull));
    const __m512i qbase = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m512i q1 = _mm512_add_epi32(qbase, _mm512_set1_epi32(4));
    const __m512i q2 = _mm512_add_epi32(qbase, _mm512_set1_epi32(8));
    const __m512i q3 = _mm512_add_epi32(qbase, _mm512_set1_epi32(12));
    const uint8_t *rows[R];
    const uint16_t *sc[R];
    __m512 acc[R], sd[R];
    for (int i = 0; i < R; i++) {
        rows[i] = q + (size_t)(r + i * stride) * rowBytes;
        sc[i] = scales + (size_t)(r + i * stride) * ngroups;
        acc[i] = _mm512_setzero_ps();
    }
    for (int c = 0; c < t->nchunks; c++) {
        for (int i = 0; i < R; i++) sd[i] = chunk_sd(t, c, sc[i]);
        const int k0 = 4 * c;
        const int8_t *x = xa + 128 * (size_t)k0;
        if (k0 + 4 <= nfull) {   /* 4 full quads, constant spread indices */
            const size_t o = 64 * (size_t)k0;
            q4_quad(R, acc, rows, o, 0, 0, _mm512_load_si512(x), _mm512_load_si512(x + 64), qbase, sd);
            q4_quad(R, acc, rows, o + 64, 0, 0, _mm512_load_si512(x + 128), _mm512_load_si512(x + 192), q1, sd);
            q4_quad(R, acc, rows, o + 128, 0, 0, _mm512_load_si512(x + 256), _mm512_load_si512(x + 320), q2, sd);
            q4_quad(R, acc, rows, o + 192, 0, 0, _mm512_load_si512(x + 384), _mm512_load_si512(x + 448), q3, sd);
        } else {                 /* the last chunk: up to 4 quads, the last maybe partial */
            const int k1 = nquads < k0 + 4 ? nquads : k0 + 4;
            for (int k = k0; k < k1; k++) {
                const __m512i qi = _mm512_add_epi32(qbase, _mm512_set1_epi32(4 * (k - k0)));
                const int8_t *xk = xa + 128 * (size_t)k;
                const __m512i xl = _mm512_load_si512(xk), xh = _mm512_load_si512(xk + 64);
                if (k < nfull) q4_quad(R, acc, rows, 64 * (size_t)k, 0, 0, xl, xh, qi, sd);
                else q4_quad(R, acc, rows, 64 * (size_t)k, tailmask, 1, xl, xh, qi, sd);
            }
        }
    }
    /* Offset term, 16 groups at a time (xs is zero-padded; loads past ngroups masked). */
    for (int g = 0; g < ngroups; g += 16) {
        const __mmask16 gm = mask16(ngroups - g);
        const __m512 xv = _mm512_load_ps(xs + g);
        for (int i = 0; i < R; i++) {
            const uint16_t *src = mins ? mins + (size_t)(r + i * stride) * ngroups : sc[i];
            acc[i] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(gm, src + g)), xv, acc[i]);
        }
    }
    for (int i = 0; i < R; i++) out[r + i * stride] = hsum512(acc[i]);
}

T static void matvec_q4_avx512(const uint8_t *q, const uint16_t *scales, const uint16_t *mins,
                               int r0, int r1, int cols32, int ngroups, int group,
                               const int8_t *qx, const float *dx, const float *xsum, float *out) {
    const int nblocks = cols32 / 32, rowBytes = cols32 / 2, bpg = group / 32;
    if (r1 <= r0) return;
    if (nblocks <= 0 || bpg <= 0) {   /* no columns: only the (empty) offset remains */
        for (int r = r0; r < r1; r++) out[r] = 0.0f;
        return;
    }
    const int nquads = (nblocks + 3) / 4, nchunks = (nblocks + 15) / 16, ng16 = (ngroups + 15) / 16;

    /* Activations in quad order (zero-padded to whole quads). */
    int8_t xbuf[128 * nquads + 64];
    int8_t *xa = align64(xbuf);
    for (int k = 0; k < nquads; k++) {
        const int avail = 32 * nblocks - 128 * k;   /* valid qx bytes from quad k on */
        const __m512i a = _mm512_maskz_loadu_epi8(mask64(avail), qx + 128 * (size_t)k);
        const __m512i b = _mm512_maskz_loadu_epi8(mask64(avail - 64), qx + 128 * (size_t)k + 64);
        _mm512_store_si512(xa + 128 * (size_t)k, _mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(2, 0, 2, 0)));
        _mm512_store_si512(xa + 128 * (size_t)k + 64, _mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
    }
    /* xsum padded to whole 16-group steps; ×(−8) for the symmetric scheme (exact). */
    float xsbuf[16 * ng16 + 16];
    float *xs = (float *)align64(xsbuf);
    for (int g = 0; g < 16 * ng16; g++) xs[g] = g < ngroups ? (mins ? xsum[g] : -8.0f * xsum[g]) : 0.0f;

    float dxbuf[16 * nchunks + 16];
    int32_t gbuf[16 * nchunks + 16];
    int g0buf[nchunks + 1];
    const chunk_tables t = chunk_tables_make(dx, nblocks, ngroups, bpg, dxbuf, gbuf, g0buf);

    /* ROWS_Q4 rows at a time, taken from ROWS_Q4 equal runs of the range so that each
     * run is one long sequential stream for the hardware prefetchers (adjacent rows read
     * in lockstep are many short streams, which they follow poorly). */
    const int run = (r1 - r0) / ROWS_Q4;
    for (int j = 0; j < run; j++) q4_rows(ROWS_Q4, q, scales, mins, r0 + j, run, rowBytes, ngroups, xa, xs, &t, out);
    for (int r = r0 + ROWS_Q4 * run; r < r1; r++) q4_rows(1, q, scales, mins, r, 0, rowBytes, ngroups, xa, xs, &t, out);
}

/* ---------------------------------------------------------------------------------- */
/* matvec_q8.
 *
 * Signed × signed with vpdpbusd: the weight byte w is biased to the unsigned w + 128
 * (w XOR 0x80), so vpdpbusd(acc, w ^ 0x80, x) adds Σ w·x + 128·Σ x per lane. The
 * accumulator starts at the per-call correction −128·Σx of the lane's 4 activation
 * bytes, so each lane ends with exactly Σ w·x. This is exact for every int8 weight,
 * −128 included, and any int8 activation (|lane| ≤ 4·255·128 fits int32 easily), so
 * no assumption on the quantizer's code range is needed.
 *
 * 64 bytes = 2 blocks per vpdpbusd: lanes 0..7 block 2p, lanes 8..15 block 2p + 1.
 * Per-row float32 scale (group 0): sd[b] = dx[b] is the same for every row, so it is
 * spread to lanes once per call (dxe) and the row scale applied after the sum.
 * Per-group float16 scales: sd from the chunk scheme, spread per pair with vpermps.
 *
 * Each int32 lane sums 4 consecutive products, lanes 0..7 / 8..15 accumulate the even /
 * odd blocks, sd is the same float product s·dx, the FMAs run in block order and the
 * final sum uses the AVX2 level's tree: exactly what the AVX2 kernel computes (its
 * maddubs + madd lanes and acc0 / acc1), so the two give bit-identical results. */

typedef struct {
    const int8_t *xq;     /* qx zero-padded to whole pairs, 64-byte aligned */
    const int32_t *nc;    /* per pair, 16 lanes: −128 · (sum of the lane's 4 activation bytes) */
    const float *dxe;     /* group 0 only: per pair, [dx[2p] ×8, dx[2p+1] ×8] */
    int npairs;
    int nfullp;           /* pairs with both blocks present */
} q8_tables;

/* Exact int32 lane sums Σ w·x of one pair of one row; `masked` reads only the first
 * block (the second is past the row's end). */
INLINE T __m512i q8_dot(const int8_t *w8, const int masked, const __m512i nc, const __m512i x) {
    const __m512i w = masked ? _mm512_maskz_loadu_epi8((__mmask64)0xFFFFFFFFu, w8) : _mm512_loadu_si512(w8);
    return _mm512_dpbusd_epi32(nc, _mm512_xor_si512(w, _mm512_set1_epi8((char)0x80)), x);
}

/* Pair `p` of `R` rows: acc[i] += cvt(Σ w·x) · lanescale[i] (the lanes' sd). */
INLINE T void q8_pair(const int R, __m512 *acc, const int8_t *const *rows, const q8_tables *t, const int p,
                      const int masked, const __m512 *lanescale) {
    const __m512i x = _mm512_load_si512(t->xq + 64 * (size_t)p);
    const __m512i nc = _mm512_load_si512(t->nc + 16 * (size_t)p);
    for (int i = 0; i < R; i++)
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q8_dot(rows[i] + 64 * (size_t)p, masked, nc, x)), lanescale[i], acc[i]);
}

/* Rows r + i·stride, i < R, per-row float32 scale. */
INLINE T void q8_rows_rowscale(const int R, const int8_t *q, const float *rowScales, const int r, const int stride, const int cols32,
                               const q8_tables *t, float *out) {
    const int8_t *rows[R];
    __m512 acc[R];
    for (int i = 0; i < R; i++) { rows[i] = q + (size_t)(r + i * stride) * cols32; acc[i] = _mm512_setzero_ps(); }
    __m512 ls[R];   /* the same dx lanes for every row */
    for (int p = 0; p < t->npairs; p++) {
        const __m512 d = _mm512_load_ps(t->dxe + 16 * (size_t)p);
        for (int i = 0; i < R; i++) ls[i] = d;
        q8_pair(R, acc, rows, t, p, p >= t->nfullp, ls);   /* odd block count: last pair half */
    }
    for (int i = 0; i < R; i++) {
        float s;
        memcpy(&s, rowScales + r + i * stride, 4);
        out[r + i * stride] = hsum512(acc[i]) * s;
    }
}

/* Rows r + i·stride, i < R, float16 per-group scales. */
INLINE T void q8_rows_group(const int R, const int8_t *q, const uint16_t *scales, const int r, const int stride, const int cols32,
                            const int ngroups, const q8_tables *t, const chunk_tables *ct, float *out) {
    const __m512i pbase = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const int8_t *rows[R];
    const uint16_t *sc[R];
    __m512 acc[R], sd[R], ls[R];
    for (int i = 0; i < R; i++) {
        rows[i] = q + (size_t)(r + i * stride) * cols32;
        sc[i] = scales + (size_t)(r + i * stride) * ngroups;
        acc[i] = _mm512_setzero_ps();
    }
    for (int c = 0; c < ct->nchunks; c++) {
        for (int i = 0; i < R; i++) sd[i] = chunk_sd(ct, c, sc[i]);
        const int p0 = 8 * c;
        if (p0 + 8 <= t->nfullp) {   /* 8 full pairs; constant spread indices */
#define LMK_Q8_PAIR(k)                                                                           \
            {                                                                                    \
                const __m512i pi = _mm512_add_epi32(pbase, _mm512_set1_epi32(2 * (k)));          \
                for (int i = 0; i < R; i++) ls[i] = _mm512_permutexvar_ps(pi, sd[i]);            \
                q8_pair(R, acc, rows, t, p0 + (k), 0, ls);                                       \
            }
            LMK_Q8_PAIR(0) LMK_Q8_PAIR(1) LMK_Q8_PAIR(2) LMK_Q8_PAIR(3)
            LMK_Q8_PAIR(4) LMK_Q8_PAIR(5) LMK_Q8_PAIR(6) LMK_Q8_PAIR(7)
#undef LMK_Q8_PAIR
        } else {
            const int p1 = t->npairs < p0 + 8 ? t->npairs : p0 + 8;
            for (int p = p0; p < p1; p++) {
                const __m512i pi = _mm512_add_epi32(pbase, _mm512_set1_epi32(2 * (p - p0)));
                for (int i = 0; i < R; i++) ls[i] = _mm512_permutexvar_ps(pi, sd[i]);
                q8_pair(R, acc, rows, t, p, p >= t->nfullp, ls);
            }
        }
    }
    for (int i = 0; i < R; i++) out[r + i * stride] = hsum512(acc[i]);
}

T static void matvec_q8_avx512(const int8_t *q, const void *scales, int r0, int r1, int cols32,
                               int ngroups, int group, const int8_t *qx, const float *dx, float *out) {
    const int nblocks = cols32 / 32;
    if (r1 <= r0) return;
    if (nblocks <= 0) {
        for (int r = r0; r < r1; r++) out[r] = 0.0f;
        return;
    }
    const int npairs = (nblocks + 1) / 2;
    int8_t xbuf[64 * npairs + 64];
    int32_t ncbuf[16 * npairs + 16];
    int8_t *xq = align64(xbuf);
    int32_t *nc = (int32_t *)align64(ncbuf);
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    for (int p = 0; p < npairs; p++) {
        const __m512i x = _mm512_maskz_loadu_epi8(mask64(32 * nblocks - 64 * p), qx + 64 * (size_t)p);
        _mm512_store_si512(xq + 64 * (size_t)p, x);
        _mm512_store_si512(nc + 16 * (size_t)p, _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, x)));
    }
    q8_tables t = { .xq = xq, .nc = nc, .dxe = 0, .npairs = npairs, .nfullp = nblocks / 2 };

    /* ROWS_Q8 rows at a time from ROWS_Q8 equal runs of the range (see matvec_q4). */
    const int run = (r1 - r0) / ROWS_Q8;
    if (group == 0) {
        float dbuf[16 * npairs + 16];
        float *dxe = (float *)align64(dbuf);
        for (int p = 0; p < npairs; p++) {
            const float d0 = dx[2 * p], d1 = 2 * p + 1 < nblocks ? dx[2 * p + 1] : 0.0f;
            _mm512_store_ps(dxe + 16 * (size_t)p, _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d0), _mm512_set1_ps(d1)));
        }
        t.dxe = dxe;
        const float *rs = (const float *)scales;
        for (int j = 0; j < run; j++) q8_rows_rowscale(ROWS_Q8, q, rs, r0 + j, run, cols32, &t, out);
        for (int r = r0 + ROWS_Q8 * run; r < r1; r++) q8_rows_rowscale(1, q, rs, r, 0, cols32, &t, out);
        return;
    }
    const int bpg = group / 32 > 0 ? group / 32 : 1, nchunks = (nblocks + 15) / 16;
    float dxbuf[16 * nchunks + 16];
    int32_t gbuf[16 * nchunks + 16];
    int g0buf[nchunks + 1];
    const chunk_tables ct = chunk_tables_make(dx, nblocks, ngroups, bpg, dxbuf, gbuf, g0buf);
    const uint16_t *gs = (const uint16_t *)scales;
    for (int j = 0; j < run; j++) q8_rows_group(ROWS_Q8, q, gs, r0 + j, run, cols32, ngroups, &t, &ct, out);
    for (int r = r0 + ROWS_Q8 * run; r < r1; r++) q8_rows_group(1, q, gs, r, 0, cols32, ngroups, &t, &ct, out);
}

/* ---------------------------------------------------------------------------------- */
/* matvec_q3 / matvec_q2.
 *
 * Two blocks per 512-bit step, as matvec_q8's pairs: the pair's code planes (2·8 bytes
 * for int2; for int3 the dwords 0, 1 and 3, 4 of its 24 bytes) are spread to the eight
 * 64-bit lanes with vpermq / vpermd and shifted right by 0, 2, 4, 6 (lanes 0..3 block 2p,
 * 4..7 block 2p + 1), masked with 3: the pair's 64 codes in column order, against 64
 * contiguous activation bytes. int3 adds 4 under its two 32-bit high-bit masks taken as
 * one 64-bit opmask (vpaddb with a mask). The codes are unsigned (0..7), so vpdpbusd takes
 * them directly, no bias: lanes 0..7 hold block 2p's exact sums, 8..15 block 2p + 1's,
 * scaled by sd spread per pair from the chunk tables; the min term as matvec_q4's offset.
 * Rows: ROWS_LOWBIT at a time from equal runs of the range (see matvec_q4). Every load
 * past the row's or the activations' end is masked. */

enum { ROWS_LOWBIT = 4 };

/* Codes of pair p of one row (`two` = 0 when only block 2p exists). */
INLINE T __m512i lowbit_pair_codes(const int bits, const uint8_t *row, const int p, const int two) {
    const __m512i shifts = _mm512_setr_epi64(0, 2, 4, 6, 0, 2, 4, 6);
    __m512i c;
    if (bits == 2) {
        const __m128i w = _mm_maskz_loadu_epi8(two ? (__mmask16)0xFFFF : (__mmask16)0x00FF, row + 16 * (size_t)p);
        c = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 0, 0, 0, 1, 1, 1, 1), _mm512_castsi128_si512(w));
    } else {
        const __m256i w = _mm256_maskz_loadu_epi32(two ? (__mmask8)0x3F : (__mmask8)0x07, row + 24 * (size_t)p);
        c = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 1, 0, 1, 0, 1, 0, 1, 3, 4, 3, 4, 3, 4, 3, 4), _mm512_castsi256_si512(w));
    }
    c = _mm512_and_si512(_mm512_srlv_epi64(c, shifts), _mm512_set1_epi8(3));
    if (bits == 3) {
        uint32_t m0, m1 = 0;
        memcpy(&m0, row + 24 * (size_t)p + 8, 4);
        if (two) memcpy(&m1, row + 24 * (size_t)p + 20, 4);
        c = _mm512_mask_add_epi8(c, _cvtu64_mask64((uint64_t)m0 | (uint64_t)m1 << 32), c, _mm512_set1_epi8(4));
    }
    return c;
}

/* Rows r + i·stride, i < R. */
INLINE T void lowbit_rows(const int bits, const int R, const uint8_t *q, const uint16_t *scales, const uint16_t *mins, const int r,
                          const int stride, const int rowBytes, const int ngroups, const int8_t *qx, const float *xs,
                          const chunk_tables *ct, float *out) {
    const __m512i pbase = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const int nblocks = ct->nblocks, npairs = (nblocks + 1) / 2;
    const uint8_t *rows[R];
    const uint16_t *sc[R];
    __m512 acc[R], sd[R];
    for (int i = 0; i < R; i++) {
        rows[i] = q + (size_t)(r + i * stride) * rowBytes;
        sc[i] = scales + (size_t)(r + i * stride) * ngroups;
        acc[i] = _mm512_setzero_ps();
    }
    for (int c = 0; c < ct->nchunks; c++) {
        for (int i = 0; i < R; i++) sd[i] = chunk_sd(ct, c, sc[i]);
        const int p1 = npairs < 8 * c + 8 ? npairs : 8 * c + 8;
        for (int p = 8 * c; p < p1; p++) {
            const int two = 2 * p + 1 < nblocks;
            const __m512i x = _mm512_maskz_loadu_epi8(mask64(32 * nblocks - 64 * p), qx + 64 * (size_t)p);
            const __m512i pi = _mm512_add_epi32(pbase, _mm512_set1_epi32(2 * (p - 8 * c)));
            for (int i = 0; i < R; i++) {
                const __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lowbit_pair_codes(bits, rows[i], p, two), x);
                acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_permutexvar_ps(pi, sd[i]), acc[i]);
            }
        }
    }
    for (int g = 0; g < ngroups; g += 16) {
        const __mmask16 gm = mask16(ngroups - g);
        const __m512 xv = _mm512_load_ps(xs + g);
        for (int i = 0; i < R; i++) {
            const uint16_t *mn = mins + (size_t)(r + i * stride) * ngroups;
            acc[i] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(gm, mn + g)), xv, acc[i]);
        }
    }
    for (int i = 0; i < R; i++) out[r + i * stride] = hsum512(acc[i]);
}

INLINE T void matvec_lowbit_avx512(const int bits, const uint8_t *q, const uint16_t *scales, const uint16_t *mins,
                                   int r0, int r1, int cols32, int ngroups, int group,
                                   const int8_t *qx, const float *dx, const float *xsum, float *out) {
    const int nblocks = cols32 / 32, rowBytes = nblocks * 4 * bits, bpg = group / 32;
    if (r1 <= r0) return;
    if (nblocks <= 0 || bpg <= 0) {
        for (int r = r0; r < r1; r++) out[r] = 0.0f;
        return;
    }
    const int nchunks = (nblocks + 15) / 16, ng16 = (ngroups + 15) / 16;
    float xsbuf[16 * ng16 + 16];
    float *xs = (float *)align64(xsbuf);
    for (int g = 0; g < 16 * ng16; g++) xs[g] = g < ngroups ? xsum[g] : 0.0f;
    float dxbuf[16 * nchunks + 16];
    int32_t gbuf[16 * nchunks + 16];
    int g0buf[nchunks + 1];
    const chunk_tables ct = chunk_tables_make(dx, nblocks, ngroups, bpg, dxbuf, gbuf, g0buf);
    const int run = (r1 - r0) / ROWS_LOWBIT;
    for (int j = 0; j < run; j++) lowbit_rows(bits, ROWS_LOWBIT, q, scales, mins, r0 + j, run, rowBytes, ngroups, qx, xs, &ct, out);
    for (int r = r0 + ROWS_LOWBIT * run; r < r1; r++) lowbit_rows(bits, 1, q, scales, mins, r, 0, rowBytes, ngroups, qx, xs, &ct, out);
}

T static void matvec_q3_avx512(const uint8_t *q, const uint16_t *scales, const uint16_t *mins, int r0, int r1, int cols32,
                               int ngroups, int group, const int8_t *qx, const float *dx, const float *xsum, float *out) {
    matvec_lowbit_avx512(3, q, scales, mins, r0, r1, cols32, ngroups, group, qx, dx, xsum, out);
}

T static void matvec_q2_avx512(const uint8_t *q, const uint16_t *scales, const uint16_t *mins, int r0, int r1, int cols32,
                               int ngroups, int group, const int8_t *qx, const float *dx, const float *xsum, float *out) {
    matvec_lowbit_avx512(2, q, scales, mins, r0, r1, cols32, ngroups, group, qx, dx, xsum, out);
}

/* Rows as floats, a pair of blocks (64 columns) per step: codes → 4 × 16 int32
 * (vpmovzxbd) → float, ·s, +m (separate multiply and add, as the reference). Stores past
 * `cols` are masked. */
INLINE T void dequant_lowbit_avx512(const int bits, const uint8_t *q, const uint16_t *scales, const uint16_t *mins,
                                    int r0, int r1, int cols, int ngroups, int group, float *out) {
    const int nblocks = (cols + 31) / 32, rowBytes = nblocks * 4 * bits, npairs = (nblocks + 1) / 2;
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = q + (size_t)r * rowBytes;
        const uint16_t *sc = scales + (size_t)r * ngroups, *mn = mins + (size_t)r * ngroups;
        float *o = out + (size_t)(r - r0) * cols;
        for (int p = 0; p < npairs; p++) {
            const int two = 2 * p + 1 < nblocks;
            const __m512i c = lowbit_pair_codes(bits, row, p, two);
            for (int k = 0; k < 4; k++) {
                const int col = 64 * p + 16 * k;
                if (col >= cols) break;
                const int g = col / group;
                const __m512 s = _mm512_set1_ps(_cvtsh_ss(sc[g])), m = _mm512_set1_ps(_cvtsh_ss(mn[g]));
                const __m128i part = k == 0 ? _mm512_castsi512_si128(c) : k == 1 ? _mm512_extracti32x4_epi32(c, 1) : k == 2 ? _mm512_extracti32x4_epi32(c, 2) : _mm512_extracti32x4_epi32(c, 3);
                const __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(part)), s), m);
                _mm512_mask_storeu_ps(o + col, mask16(cols - col), v);
            }
        }
    }
}

T static void dequant_q3_avx512(const uint8_t *q, const uint16_t *scales, const uint16_t *mins, int r0, int r1, int cols, int ngroups, int group, float *out) {
    dequant_lowbit_avx512(3, q, scales, mins, r0, r1, cols, ngroups, group, out);
}

T static void dequant_q2_avx512(const uint8_t *q, const uint16_t *scales, const uint16_t *mins, int r0, int r1, int cols, int ngroups, int group, float *out) {
    dequant_lowbit_avx512(2, q, scales, mins, r0, r1, cols, ngroups, group, out);
}

const lmk_kernels lmk_table_avx512vnni = {
    .name = "avx512vnni",
    .level = LMK_LEVEL_AVX512VNNI,
    .quantize_q8 = quantize_q8_avx512,
    .matvec_q4 = matvec_q4_avx512,
    .matvec_q8 = matvec_q8_avx512,
    .matvec_nm = lmk_matvec_nm_avx512,
    .matvec_nm_f = lmk_matvec_nm_f_avx512,
    .matvec_q3 = matvec_q3_avx512,
    .matvec_q2 = matvec_q2_avx512,
    .dequant_q3 = dequant_q3_avx512,
    .dequant_q2 = dequant_q2_avx512,
    .exp = &lmk_exp_avx512,
    .kv = &lmk_kv_avx512,
};

/* The VNNI level with the byte-compress N:M kernel (AVX-512 VBMI2). */
const lmk_kernels lmk_table_avx512vbmi2 = {
    .name = "avx512vbmi2",
    .level = LMK_LEVEL_AVX512VBMI2,
    .quantize_q8 = quantize_q8_avx512,
    .matvec_q4 = matvec_q4_avx512,
    .matvec_q8 = matvec_q8_avx512,
    .matvec_nm = lmk_matvec_nm_vbmi2,
    .matvec_nm_f = lmk_matvec_nm_f_avx512,
    .matvec_q3 = matvec_q3_avx512,
    .matvec_q2 = matvec_q2_avx512,
    .dequant_q3 = dequant_q3_avx512,
    .dequant_q2 = dequant_q2_avx512,
    .exp = &lmk_exp_avx512,
    .kv = &lmk_kv_avx512,
};
#endif
