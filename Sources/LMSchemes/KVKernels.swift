import CKernels

// KV-cache page kernels (CKernels' kernels_kv.c): the write path, and the per-level
// score / weighted-sum / dequantize kernels plus the paged decode-attention driver.
// Page layouts: `KVScheme`, ckernels.h and formats/kv-cache.md.

extension KVScheme {
    /// Writes row `row` (< `blockSize`) of a page of this scheme from `headDim` floats,
    /// quantizing on write (f16/bf16: round to nearest even; int8/int4/int2: per-row
    /// asymmetric float16 scale and min, a row holding NaN or ±Inf reads back as NaN).
    /// The same function on every CPU, so a cache's bytes do not depend on the machine.
    /// `page` holds `pageBytes(blockSize:headDim:)` bytes; `headDim` is even for int4, a
    /// multiple of 4 for int2. Does nothing for a per-channel scheme (`storeBlock`).
    @inline(__always)
    public func storeRow(_ x: UnsafePointer<Float>, page: UnsafeMutableRawPointer, blockSize: Int, row: Int, headDim: Int) {
        lmk_kv_store_row(cID, x, page, Int32(blockSize), Int32(row), Int32(headDim))
    }

    /// Writes a whole page from `blockSize · headDim` floats (row-major, row t at t·headDim):
    /// per-channel schemes take each channel's float16 scale and min over the page's rows
    /// (a channel holding NaN or ±Inf makes every score of the page NaN); other schemes
    /// store each row as `storeRow`. The same bytes on every CPU.
    @inline(__always)
    public func storeBlock(_ rows: UnsafePointer<Float>, page: UnsafeMutableRawPointer, blockSize: Int, headDim: Int) {
        lmk_kv_store_block(cID, rows, page, Int32(blockSize), Int32(headDim))
    }
}

extension lmk_kv_view {
    /// A view without a K tail (every K page read through `kscheme`: kfull = Int32.max).
    public init(kbase: UnsafePointer<UInt8>?, vbase: UnsafePointer<UInt8>?, table: UnsafePointer<Int32>?, stride: Int64, bs: Int32,
                kscheme: Int32, vscheme: Int32) {
        self.init(kbase: kbase, vbase: vbase, table: table, stride: stride, bs: bs, kscheme: kscheme, vscheme: vscheme,
                  ktail: nil, kfull: Int32.max)
    }
}

extension KernelSet {
    /// `out[t] = scale · (q · k_t)` for the first `count` rows of a K page of scheme `s`
    /// (f32: bit-identical to the dot of `attend`).
    @inline(__always)
    public func kvScore(_ s: KVScheme, q: UnsafePointer<Float>, page: UnsafeRawPointer, blockSize: Int, count: Int, headDim: Int,
                        scale: Float, out: UnsafeMutablePointer<Float>) {
        Self.pick(table.pointee.kv.pointee.score, s)(q, page, Int32(blockSize), Int32(count), Int32(headDim), scale, out)
    }

    /// `acc[c] += Σ_{t<count} p[t] · v_t[c]` for `c < headDim`, over a V page of scheme `s`
    /// (f32: the same FMAs as `attend`'s weighted sum). `s` must not be per channel (those
    /// are for K only; the cache never calls this with one): a fatal error.
    @inline(__always)
    public func kvAccum(_ s: KVScheme, p: UnsafePointer<Float>, page: UnsafeRawPointer, blockSize: Int, count: Int, headDim: Int,
                        acc: UnsafeMutablePointer<Float>) {
        // fatalError, not precondition: this module is built -Ounchecked.
        if s.isPerChannel { fatalError("kvAccum: \(s) is a K-only (per-channel) scheme") }
        Self.pick(table.pointee.kv.pointee.accum, s)(p, page, Int32(blockSize), Int32(count), Int32(headDim), acc)
    }

    /// The first `count` rows of a page of scheme `s` as floats, row-major into `out`
    /// (`count · headDim` floats): exact for f32/f16/bf16, `min + scale·code` (two
    /// roundings, no FMA) for the integer schemes (per row or per channel).
    @inline(__always)
    public func kvDequant(_ s: KVScheme, page: UnsafeRawPointer, blockSize: Int, count: Int, headDim: Int, out: UnsafeMutablePointer<Float>) {
        Self.pick(table.pointee.kv.pointee.dequant, s)(page, Int32(blockSize), Int32(count), Int32(headDim), out)
    }

    /// Entry `s` of a per-scheme table (C's `fn[LMK_KV_SCHEMES]`, imported as a 9-tuple;
    /// every entry is set in every level's table except accum of the per-channel schemes).
    @inline(__always)
    static func pick<F>(_ t: (F?, F?, F?, F?, F?, F?, F?, F?, F?), _ s: KVScheme) -> F {
        switch s {
        case .f32: return t.0!
        case .f16: return t.1!
        case .bf16: return t.2!
        case .int8: return t.3!
        case .int4: return t.4!
        case .int2: return t.5!
        case .int8c: return t.6!
        case .int4c: return t.7!
        case .int2c: return t.8!
        }
    }

    /// Decode attention of one query row over `count` positions of a paged history
    /// (`lmk_attend_paged`): scores page by page (K pages from `view.kfull` on: the f32 rows
    /// at `view.ktail`), softmax, weighted sum of the V pages. `scores` holds `count` floats
    /// (the probabilities on return), `out` `headDim`. With f32 pages (and an f32 tail or
    /// none), bit-identical to `attend` on the same rows laid out contiguously.
    @inline(__always)
    public func attendPaged(q: UnsafePointer<Float>, view: UnsafePointer<lmk_kv_view>, count: Int, headDim: Int, scale: Float,
                            scores: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>) {
        lmk_attend_paged(table, q, view, Int32(count), Int32(headDim), scores, out, scale)
    }

    /// Decode attention of `rows` query rows sharing one KV head (grouped-query attention)
    /// over `count` positions of a paged history (`lmk_attend_paged_group`): row r's query
    /// at `q + r·qStride`, its output at `out + r·outStride` (`headDim` floats each), its
    /// `count` scores (the probabilities on return) at `scores + r·count`. Each page is
    /// read once for all rows (each K / V vector converted once for up to 4 rows), and
    /// row r's result is bit-identical to `attendPaged` on row r alone.
    @inline(__always)
    public func attendPagedGroup(q: UnsafePointer<Float>, qStride: Int, rows: Int, view: UnsafePointer<lmk_kv_view>, count: Int,
                                 headDim: Int, scale: Float, scores: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>,
                                 outStride: Int) {
        lmk_attend_paged_group(table, q, Int64(qStride), Int32(rows), view, Int32(count), Int32(headDim), scores, out, Int64(outStride), scale)
    }
}
