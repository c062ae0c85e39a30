#ifndef LMKIT_CKERNELS_H
#define LMKIT_CKERNELS_H
#include <stdint.h>

/// Integer-activation decode kernels with run-time CPU dispatch.
///
/// The target is compiled for baseline x86-64; every SIMD kernel carries its own
/// `target` attribute. A caller picks a level once (`lmk_best_level`), keeps the
/// table `lmk_kernels_at(level)` returns (static const storage, valid for the whole
/// process) and calls through it. Nothing here keeps mutable global state.
///
/// Storage layouts (shared by every level):
/// - activations: `cols32` floats (zero-padded to a multiple of 32), quantized per
///   32-column block `b` to int8 `qx[32b..32b+31]` with scale `dx[b]`.
/// - int4 rows: `cols32/2` bytes per row; each 32-column block is 16 bytes whose low
///   nibbles are columns 0..15 and high nibbles columns 16..31 of the block (codes
///   0..15). Scales (and optional mins) are float16, `ngroups` per row.
/// - int8 rows: `cols32` signed bytes per row; scales float32 per row (`group` == 0)
///   or float16 per group (`ngroups` per row).
/// - int2 rows (`int2-gG`): `cols32/4` bytes per row, 8 bytes per 32-column block;
///   byte j (0..7) of a block holds columns j, j+8, j+16, j+24 of the block in its bit
///   pairs 0–1, 2–3, 4–5, 6–7 (codes 0..3). A 64-bit load shifted right by 0, 2, 4, 6
///   and masked with 3 per byte gives the block's 32 codes in column order.
/// - int3 rows (`int3-gG`): `3·cols32/8` bytes per row, 12 bytes per 32-column block: the
///   low two bits of each code in the int2 block layout (8 bytes), then a little-endian
///   32-bit mask whose bit i is bit 2 of column i's code (codes 0..7).
/// int2 and int3 are asymmetric: float16 scales and mins, `ngroups` per row, value
/// = s·code + m (mins never NULL).
/// Group sizes are multiples of 32; the last group of a row may be shorter
/// (`ngroups = ceil(cols / group)`).

/// Value schemes of compressed N:M rows (`lmk_kernels.matvec_nm`).
enum { LMK_NM_INT8 = 0, LMK_NM_INT4S = 1, LMK_NM_INT4 = 2 };
/// Float value schemes of compressed N:M rows (`lmk_kernels.matvec_nm_f`).
enum { LMK_NMF_F32 = 0, LMK_NMF_F16 = 1, LMK_NMF_BF16 = 2 };

/// Kernel levels, lowest first.
enum {
    LMK_LEVEL_GENERIC = 0,     ///< plain C, any CPU; the reference the others are tested against
    LMK_LEVEL_AVX2 = 1,        ///< AVX2 + FMA + F16C (x86-64-v3)
    LMK_LEVEL_AVX512VNNI = 2,  ///< AVX-512 F/BW/VL + VNNI (plus the AVX2 level's features)
    LMK_LEVEL_AVX512VBMI2 = 3, ///< the AVX-512 VNNI level + VBMI/VBMI2 (Ice Lake, Zen 4): byte compress for N:M rows
    LMK_LEVEL_COUNT = 4
};

/// Row kernels of the attention and scoring loops (kernels_exp.c): the same lane-wise
/// arithmetic at every level, hence the same bits as each other and as Swift's FastMath.
typedef struct lmk_exp_kernels {
    /// max(x[0..n)) (−∞ for n = 0).
    float (*max)(const float *x, int n);
    /// x[i] = exp(x[i] − shift) (FastMath's polynomial); returns Σ in double (16 float
    /// lanes summed by halving, then the tail added in double).
    double (*exp_shift_sum)(float *x, int n, float shift);
    /// In-place softmax: max-subtracted exp, scaled by (float)(1 / Σ).
    void (*softmax)(float *x, int n);
    /// Decode attention of one query row: scores[j] = (q·K_j)·scale for j < n (K, V are
    /// [n, hd] row-major), softmax(scores), out = Σ_j scores[j]·V_j — the operations of
    /// Swift's Ops.dot / softmax / Ops.axpy in their order (lane FMAs, lanes summed in order).
    void (*attend)(const float *q, const float *K, const float *V, int n, int hd, float scale, float *scores, float *out);
} lmk_exp_kernels;

/// KV-cache schemes of one page (K or V of `bs` token rows of one (layer, block, KV head)).
/// Page layouts (formats/kv-cache.md), for a head dimension `hd`:
/// - LMK_KV_F32: bs·hd floats, row t at t·hd.
/// - LMK_KV_F16 / LMK_KV_BF16: bs·hd uint16 (IEEE half / bfloat16, round to nearest even).
/// - LMK_KV_INT8: bs (scale, min) pairs as float16 (4 bytes a row, row t at 4t), then
///   bs·hd uint8 codes (row t at 4·bs + t·hd); x = min + scale·code, code 0..255.
/// - LMK_KV_INT4 (hd even): bs (scale, min) pairs as float16, then bs·hd/2 bytes (row t
///   at 4·bs + t·hd/2): byte i holds channel i in its low nibble and channel i + hd/2 in
///   its high nibble; x = min + scale·code, code 0..15.
/// - LMK_KV_INT2 (hd % 4 == 0): bs (scale, min) pairs as float16, then bs·hd/4 bytes (row
///   t at 4·bs + t·hd/4): byte i holds channel i + j·hd/4 in bits 2j, 2j + 1 (j = 0..3);
///   x = min + scale·code, code 0..3.
/// - LMK_KV_INT8C / LMK_KV_INT4C / LMK_KV_INT2C ("per channel", for K only): hd float16
///   scales (byte 0), hd float16 mins (byte 2·hd), then bs rows of codes at 4·hd in
///   exactly the INT8 / INT4 / INT2 row layout (row t at 4·hd + t·hd, t·hd/2, t·hd/4);
///   x[t][c] = min_c + scale_c·code[t][c]. INT4C needs an even hd, INT2C hd % 4 == 0.
/// Integer parameters are asymmetric, over one row (per-token schemes) or over one
/// channel's bs rows (per-channel schemes): min is rounded down to float16 and scale =
/// (max − min16)/qmax rounded up, so every value is within scale/2 of its code
/// (code = round-half-even((x − min16)/scale16), all 0 for a constant row / channel); a
/// row / channel holding NaN or ±Inf (or whose min or scale overflows float16) stores
/// NaN scale and min (0x7E00), so everything read from it is NaN (for a per-channel page:
/// every score of the page).
enum {
    LMK_KV_F32 = 0, LMK_KV_F16 = 1, LMK_KV_BF16 = 2, LMK_KV_INT8 = 3, LMK_KV_INT4 = 4,
    LMK_KV_INT2 = 5, LMK_KV_INT8C = 6, LMK_KV_INT4C = 7, LMK_KV_INT2C = 8,
    LMK_KV_SCHEMES = 9
};

/// Bytes of one page of `scheme` (not padded); −1 for an unknown scheme, a negative
/// size, an odd `hd` with int4 / int4c, or `hd % 4 != 0` with int2 / int2c.
int64_t lmk_kv_page_bytes(int scheme, int bs, int hd);

/// Writes row `t` (< bs) of a page of a per-token scheme from `hd` floats (quantizes on
/// write). The same function at every level, so a cache's bytes do not depend on the
/// CPU. A no-op for the per-channel schemes (INT8C / INT4C / INT2C), whose parameters
/// need the whole page: write those with lmk_kv_store_block.
void lmk_kv_store_row(int scheme, const float *x, void *page, int bs, int t, int hd);

/// Writes a whole page (all `bs` rows) from bs·hd floats, row-major (row t at t·hd).
/// Per-channel schemes: each channel's (scale, min) over the bs rows, then the codes;
/// per-token schemes: lmk_kv_store_row on each row. Plain C, the same bytes on every CPU.
void lmk_kv_store_block(int scheme, const float *rows, void *page, int bs, int hd);

/// Page kernels of one level, indexed by scheme (kernels_kv.c). Every level gives the
/// same bits (one 16-lane source, explicit FMAs, no contraction). Rows t ≥ n of a page
/// are never read. Arithmetic: f32 score is the dot of `attend` (lane FMAs, lanes summed
/// in order, scalar tail) and f32 accum its FMA loop, so `lmk_attend_paged` over f32
/// pages equals `attend`; f16/bf16 sum the 16 lanes by a halving tree; per-token int
/// score is (scale16_t·Σ q_c·code_tc + min16_t·Σ q_c)·scale and int accum
/// acc_c += Σ_t (p_t·scale16_t)·code_tc + Σ_t p_t·min16_t (codes only, no float copy);
/// per-channel score is (Σ_c q'_c·code_tc + bias)·scale with q'_c = q_c·scale16_c and
/// bias = Σ_c q_c·min16_c computed once per call.
typedef struct lmk_kv_kernels {
    /// out[t] = scale · (q · k_t) for rows t < n of the page.
    void (*score[LMK_KV_SCHEMES])(const float *q, const void *page, int bs, int n, int hd, float scale, float *out);
    /// acc[c] += Σ_{t<n} p[t] · v_t[c] for c < hd. NULL for the per-channel schemes
    /// (INT8C / INT4C / INT2C are for K only: a V page of them is never read).
    void (*accum[LMK_KV_SCHEMES])(const float *p, const void *page, int bs, int n, int hd, float *acc);
    /// out[t·hd + c] = row t of the page as floats, t < n (the reference twin's input and
    /// prefill's tile): a copy (f32), exact (f16, bf16), min16 + scale16·code with two
    /// roundings, no FMA (integer schemes; per row or per channel).
    void (*dequant[LMK_KV_SCHEMES])(const void *page, int bs, int n, int hd, float *out);
} lmk_kv_kernels;

/// A paged history of one (sequence, layer, KV head): block i's K page is at
/// `kbase + table[i]·stride`, its V page at `vbase + table[i]·stride`.
/// K pages i < kfull are read through `kscheme`; the K rows of blocks i ≥ kfull (the
/// newest, incomplete block of a per-channel K cache) are float32 rows at `ktail`
/// (row t = position kfull·bs + t, hd floats each), scored with the f32 kernel. V has no
/// tail: every V page, the last one included, is read through `vscheme`, which must be a
/// per-token scheme. A view without a tail sets kfull = INT32_MAX and ktail = NULL.
typedef struct lmk_kv_view {
    const uint8_t *kbase;
    const uint8_t *vbase;
    const int32_t *table;
    int64_t stride;
    int bs;
    int kscheme;
    int vscheme;
    const float *ktail;
    int kfull;
} lmk_kv_view;

/// One level's kernels. Tables live in static const storage.
typedef struct lmk_kernels {
    /// "generic", "avx2", "avx512vnni" or "avx512vbmi2".
    const char *name;
    /// The `LMK_LEVEL_*` value.
    int level;
    /// Quantizes `nblocks` blocks of 32 floats to int8: dx[b] = max|x| / 127,
    /// qx = round-half-even(x · (1/dx[b])) in [-127, 127] (dx = 0 → all zero).
    /// Every level gives bit-identical qx and dx.
    void (*quantize_q8)(const float *x, int nblocks, int8_t *qx, float *dx);
    /// int4 rows [r0, r1) · int8 activations (see the layout above); `mins` NULL for
    /// the symmetric code-8 scheme; `group` a multiple of 32 (cols32 for one group per row).
    /// out[r] = Σ_b s_g(b) · dx[b] · Σ_i q_i·qx_i  +  Σ_g (m_g or −8·s_g) · xsum[g].
    void (*matvec_q4)(const uint8_t *q, const uint16_t *scales, const uint16_t *mins,
                      int r0, int r1, int cols32, int ngroups, int group,
                      const int8_t *qx, const float *dx, const float *xsum, float *out);
    /// int8 rows [r0, r1) · int8 activations (see the layout above); `group` 0 means a
    /// float32 scale per row, else float16 scales per group.
    /// out[r] = rowScale · Σ_b s_g(b) · dx[b] · Σ_i q_i·qx_i  (s = 1 or rowScale = 1).
    void (*matvec_q8)(const int8_t *q, const void *scales, int r0, int r1, int cols32,
                      int ngroups, int group, const int8_t *qx, const float *dx, float *out);
    /// int3 / int2 rows [r0, r1) · int8 activations (layouts above); `group` a multiple of 32.
    /// out[r] = Σ_b s_g(b) · dx[b] · Σ_i q_i·qx_i  +  Σ_g m_g · xsum[g]. The integer block
    /// sums are exact at every level; the float sums' order differs between levels.
    void (*matvec_q3)(const uint8_t *q, const uint16_t *scales, const uint16_t *mins,
                      int r0, int r1, int cols32, int ngroups, int group,
                      const int8_t *qx, const float *dx, const float *xsum, float *out);
    void (*matvec_q2)(const uint8_t *q, const uint16_t *scales, const uint16_t *mins,
                      int r0, int r1, int cols32, int ngroups, int group,
                      const int8_t *qx, const float *dx, const float *xsum, float *out);
    /// Dequantizes int3 / int2 rows [r0, r1) into out[(r − r0)·cols + c], c < cols
    /// (prefill's tiles): (float)s·code then + (float)m, two roundings and no FMA, so
    /// every level is bit-identical to the reference decoder (`LowBitCodec.decodeRow`).
    void (*dequant_q3)(const uint8_t *q, const uint16_t *scales, const uint16_t *mins,
                       int r0, int r1, int cols, int ngroups, int group, float *out);
    void (*dequant_q2)(const uint8_t *q, const uint16_t *scales, const uint16_t *mins,
                       int r0, int r1, int cols, int ngroups, int group, float *out);
    /// Compressed N:M rows [r0, r1) (`+1:2`, `+2:4`, `+4:8`: every 8 columns keep 4) · int8
    /// activations over `cols32` columns. A row is its kept values, dense in column order,
    /// as a row of kcols32 = 32·ceil(cols32 / 64) columns of the value scheme `kind`
    /// (LMK_NM_INT8: int8 codes, `scales` float32 per row when `group` == 0, else float16
    /// per `group` kept values; LMK_NM_INT4S / LMK_NM_INT4: int4 codes in the dense nibble
    /// order, float16 scales and, for INT4, float16 `mins`; `ngroups` per row), and its
    /// mask (cols32 / 8 bytes a row; bit i of byte j: column 8j + i is kept). Kept block k
    /// meets the activations of columns [64k, 64k + 64): slots 0..15 block 2k, 16..31 block 2k + 1.
    /// out[r] = Σ_k Σ_h s_g(k)·dx[2k+h]·Σ_i code_i·qx_i (+ m_g·dx·Σ_i qx_i for INT4; INT4S codes − 8).
    void (*matvec_nm)(int kind, const void *q, const void *scales, const uint16_t *mins, const uint8_t *mask,
                      int r0, int r1, int cols32, int ngroups, int group, const int8_t *qx, const float *dx, float *out);
    /// Compressed N:M rows [r0, r1) of float values (`kind` LMK_NMF_*; `cols / 2` values a
    /// row, not padded; mask as `matvec_nm`) · float activations `x` (zero-padded to cols32):
    /// out[r] = Σ_j w_j · x[c_j] over the kept columns c_j in order.
    void (*matvec_nm_f)(int kind, const void *q, const uint8_t *mask, int r0, int r1, int cols, int cols32, const float *x, float *out);
    /// exp / max / softmax rows.
    const lmk_exp_kernels *exp;
    /// KV-cache page kernels.
    const lmk_kv_kernels *kv;
} lmk_kernels;

/// Decode attention of one query row over `n` positions of a paged history, with the
/// kernels of `k`: scores[j] = scale · q·K_j (page by page; the K tail of `view` with the
/// f32 kernel), softmax over the n scores (`k->exp->softmax`), out = Σ_j scores[j]·V_j
/// (page by page, `out` zeroed first). `scores` holds n floats. With f32 pages (and an
/// f32 tail or none) this is bit-identical to `k->exp->attend` on the same rows laid out
/// contiguously.
void lmk_attend_paged(const lmk_kernels *k, const float *q, const lmk_kv_view *view, int n, int hd, float *scores, float *out, float scale);

/// Decode attention of `g` query rows that share one KV head (grouped-query attention),
/// over `n` positions of a paged history: q and out are [g][hd] row-major (q rows `q_stride`
/// floats apart, out rows `out_stride` apart), scores holds g·n floats (row r's n scores,
/// the probabilities on return, at r·n). Each page is read once for all g rows; the rows
/// go in chunks of at most 4, each K / V vector converted once and FMA'd into every row
/// of its chunk. Row r's result is bit-identical to lmk_attend_paged on row r alone.
/// g ≤ 0 does nothing.
void lmk_attend_paged_group(const lmk_kernels *k, const float *q, int64_t q_stride, int g, const lmk_kv_view *view, int n, int hd,
                            float *scores, float *out, int64_t out_stride, float scale);

/// 1 when this CPU can run kernels of `level` (generic: always; avx2: AVX2+FMA+F16C
/// with the OS saving YMM state; avx512vnni: AVX512F+BW+VL+VNNI with the OS saving
/// ZMM state, and also AVX2/FMA/F16C; avx512vbmi2: that and AVX512_VBMI + VBMI2), else 0
/// (also for an unknown level).
/// Reads cpuid on every call: call it once, not per kernel call.
int lmk_cpu_supports(int level);

/// The highest level this CPU supports.
int lmk_best_level(void);

/// The kernel table of `level` (static const storage), or NULL when the level is
/// unknown or the CPU lacks it.
const lmk_kernels *lmk_kernels_at(int level);

/// 1 when the CPU has the build's baseline (AVX2, FMA, F16C), else 0; `missing` (if
/// non-NULL) receives a static string naming what is missing, e.g. "AVX2 FMA" (""
/// when nothing is). A load-time constructor in this library runs the same check and
/// exits with a one-line error instead of letting a too-old CPU die of SIGILL.
int lmk_cpu_baseline_ok(const char **missing);

#endif
