import CKernels
import Foundation
import LMCore
import LMRuntime
import Testing

// KV-cache page kernels (CKernels/kernels_kv.c through LMSchemes/KVKernels.swift): the
// write path's rounding, every level against the generic one bit for bit, the kernels
// against a dequantize-then-Double reference twin, and the paged attention driver
// against the contiguous `attend`.

/// Rows with a per-row offset and amplitude, so integer rows are asymmetric.
private func kvRows(_ n: Int, _ hd: Int, seed: UInt64) -> [Float] {
    var rng = SplitMix64(seed: seed)
    var x = [Float](repeating: 0, count: n * hd)
    for t in 0..<n {
        let off = rng.nextSigned(), amp = 0.1 + 2.9 * abs(rng.nextSigned())
        for c in 0..<hd { x[t * hd + c] = off + amp * rng.nextSigned() }
    }
    return x
}

/// A page of `bs` rows with rows `0..<n` written from `x` (the rest left as 0xA5 garbage,
/// which no kernel may read).
private func kvPage(_ s: KVScheme, _ x: [Float], bs: Int, n: Int, hd: Int) -> [UInt8] {
    var p = [UInt8](repeating: 0xA5, count: s.pageBytes(blockSize: bs, headDim: hd))
    p.withUnsafeMutableBytes { pb in
        x.withUnsafeBufferPointer { xb in
            for t in 0..<n { s.storeRow(xb.baseAddress! + t * hd, page: pb.baseAddress!, blockSize: bs, row: t, headDim: hd) }
        }
    }
    return p
}

/// (scale16, min16) of integer row `t`.
private func kvParams(_ p: [UInt8], _ t: Int) -> (scale: Float, min: Float) {
    let s = UInt16(p[4 * t]) | UInt16(p[4 * t + 1]) << 8, m = UInt16(p[4 * t + 2]) | UInt16(p[4 * t + 3]) << 8
    return (Float(Float16(bitPattern: s)), Float(Float16(bitPattern: m)))
}

private func kvDequant(_ k: KernelSet, _ s: KVScheme, _ p: [UInt8], bs: Int, n: Int, hd: Int) -> [Float] {
    var out = [Float](repeating: .nan, count: n * hd + 1)
    out[n * hd] = 12345
    p.withUnsafeBytes { pb in out.withUnsafeMutableBufferPointer { k.kvDequant(s, page: pb.baseAddress!, blockSize: bs, count: n, headDim: hd, out: $0.baseAddress!) } }
    #expect(out[n * hd] == 12345, "dequant wrote past its rows")
    return Array(out[0..<(n * hd)])
}

private func kvScore(_ k: KernelSet, _ s: KVScheme, _ q: [Float], _ p: [UInt8], bs: Int, n: Int, hd: Int, scale: Float) -> [Float] {
    var out = [Float](repeating: .nan, count: n + 1)
    out[n] = 12345
    p.withUnsafeBytes { pb in
        out.withUnsafeMutableBufferPointer { k.kvScore(s, q: q, page: pb.baseAddress!, blockSize: bs, count: n, headDim: hd, scale: scale, out: $0.baseAddress!) }
    }
    #expect(out[n] == 12345, "score wrote past its rows")
    return Array(out[0..<n])
}

private func kvAccum(_ k: KernelSet, _ s: KVScheme, _ w: [Float], _ p: [UInt8], bs: Int, n: Int, hd: Int, acc0: [Float]) -> [Float] {
    var acc = acc0 + [12345]
    p.withUnsafeBytes { pb in
        acc.withUnsafeMutableBufferPointer { k.kvAccum(s, p: w, page: pb.baseAddress!, blockSize: bs, count: n, headDim: hd, acc: $0.baseAddress!) }
    }
    #expect(acc[hd] == 12345, "accum wrote past the head dimension")
    return Array(acc[0..<hd])
}

/// bfloat16 rounding reference: the nearer of the two neighbouring bfloat16 values (in
/// Double), ties to the even one.
private func bf16Reference(_ x: Float) -> Float {
    if x.isNaN || x.isInfinite { return x }
    let lo = Float(bitPattern: x.bitPattern & 0xFFFF_0000)
    let hiBits = (x.bitPattern & 0xFFFF_0000) &+ 0x1_0000
    let hi = Float(bitPattern: hiBits)
    if lo == x { return x }
    let hiD = hi.isInfinite ? (hi < 0 ? -0x1p128 : 0x1p128) : Double(hi)   // the exponent-unbounded neighbour
    let dl = abs(Double(x) - Double(lo)), dh = abs(hiD - Double(x))
    if dl != dh { return dl < dh ? lo : hi }
    return (lo.bitPattern >> 16) & 1 == 0 ? lo : hi
}

/// "same bits" or where the first difference is (short messages instead of two arrays).
private func sameBits(_ a: [Float], _ b: [Float]) -> String {
    if a.count != b.count { return "counts \(a.count) vs \(b.count)" }
    guard let i = a.indices.first(where: { a[$0].bitPattern != b[$0].bitPattern }) else { return "same bits" }
    return "first difference at \(i): \(a[i]) vs \(b[i])"
}

@Suite("KV-cache page kernels")
struct KVKernelTests {
    static let headDims = [2, 8, 10, 34, 64, 66, 130]
    static let blockSizes = [1, 7, 32]
    static let generic = KernelSet(level: 0)!

    @Test("page sizes")
    func pageSizes() {
        #expect(KVScheme.f32.pageBytes(blockSize: 16, headDim: 64) == 4096)
        #expect(KVScheme.f16.pageBytes(blockSize: 16, headDim: 64) == 2048)
        #expect(KVScheme.bf16.pageBytes(blockSize: 16, headDim: 64) == 2048)
        #expect(KVScheme.int8.pageBytes(blockSize: 16, headDim: 64) == 64 + 1024)
        #expect(KVScheme.int4.pageBytes(blockSize: 16, headDim: 64) == 64 + 512)
        #expect(KVScheme.int4.pageBytes(blockSize: 16, headDim: 7) == -1)
        #expect(lmk_kv_page_bytes(9, 16, 64) == -1)
    }

    @Test("store → dequant round trip: f32 exact, f16/bf16 round to nearest even, int8/int4 within scale/2", arguments: KVScheme.allCases)
    func roundTrip(_ s: KVScheme) {
        for hd in Self.headDims {
            for bs in Self.blockSizes {
                var x = kvRows(bs, hd, seed: UInt64(hd * 100 + bs))
                if s == .f16 && hd >= 10 {   // f16 edge cases in the first row
                    let specials: [Float] = [70000, 65519, 65520, -65536, 1e-6, -3e-8, 2.9802322e-8, 0.1, .infinity]
                    for (i, v) in specials.prefix(hd).enumerated() { x[i] = v }
                }
                if s == .bf16 && hd >= 8 {   // ties: 1 + 2^-8 → 1, 1 + 3·2^-8 → 1 + 2^-6
                    x[0] = 1 + 0x1p-8; x[1] = 1 + 3 * 0x1p-8; x[2] = .greatestFiniteMagnitude; x[3] = -.infinity
                }
                let p = kvPage(s, x, bs: bs, n: bs, hd: hd)
                let d = kvDequant(Self.generic, s, p, bs: bs, n: bs, hd: hd)
                switch s {
                case .f32:
                    #expect(sameBits(d, x) == "same bits")
                case .f16:
                    #expect(sameBits(d, x.map { Float(Float16($0)) }) == "same bits", "hd \(hd) bs \(bs)")
                case .bf16:
                    #expect(sameBits(d, x.map(bf16Reference)) == "same bits", "hd \(hd) bs \(bs)")
                    if hd >= 8 { #expect(d[0] == 1 && d[1] == 1 + 0x1p-6 && d[2] == .infinity && d[3] == -.infinity) }
                case .int8, .int4:
                    let qmax: Double = s == .int8 ? 255 : 15
                    for t in 0..<bs {
                        let row = x[(t * hd)..<((t + 1) * hd)], (sc, mn) = kvParams(p, t)
                        let lo = row.min()!, hi = row.max()!
                        #expect(mn <= lo && Double(mn) + qmax * Double(sc) >= Double(hi), "hd \(hd) t \(t)")
                        // The dequantizer's two float roundings (product, sum): a few ulps of the row's magnitude.
                        let floatSlack = 0x1p-21 * Double(max(abs(mn), abs(hi)))
                        for c in 0..<hd {
                            let err = abs(Double(d[t * hd + c]) - Double(row[row.startIndex + c]))
                            #expect(err <= Double(sc) / 2 + floatSlack, "hd \(hd) t \(t) c \(c): \(err) vs scale \(sc)")
                        }
                    }
                }
            }
        }
    }

    @Test("f16 / bf16 rounding over a sweep of float bit patterns and exact ties; every half / bfloat16 pattern decoded exactly at every level")
    func halfSweep() {
        // Floats spread over every exponent, plus the midpoints between neighbouring halves.
        var x = (0..<65536).map { i in Float(bitPattern: UInt32(i) << 16 | (UInt32(i) &* 7919) & 0xFFFF) }
        for h in stride(from: 0, to: 0x7BFF, by: 7) {
            let a = Double(Float16(bitPattern: UInt16(h))), b = Double(Float16(bitPattern: UInt16(h + 1)))
            x.append(Float((a + b) / 2)); x.append(-Float((a + b) / 2))
        }
        if x.count % 2 == 1 { x.append(0) }
        let hd = x.count
        for s in [KVScheme.f16, .bf16] {
            let d = kvDequant(Self.generic, s, kvPage(s, x, bs: 1, n: 1, hd: hd), bs: 1, n: 1, hd: hd)
            let ref = s == .f16 ? x.map { Float(Float16($0)) } : x.map(bf16Reference)
            let bad = (0..<hd).filter { ref[$0].isNaN ? !d[$0].isNaN : d[$0].bitPattern != ref[$0].bitPattern }
            #expect(bad.isEmpty, "\(s): \(bad.count) wrong, first \(bad.first.map { "\(x[$0]) → \(d[$0]) (want \(ref[$0]))" } ?? "")")
        }
        // Decoding: all 65536 patterns (vector path) plus a tail of 10 (scalar path), signalling NaNs included.
        let patterns = (0..<65536).map { UInt16($0) } + [0x0001, 0x03FF, 0x7C01, 0xFC00, 0x8001, 0x7E00, 0x0400, 0x7BFF, 0xFFFF, 0x8000]
        let page = patterns.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }
        for s in [KVScheme.f16, .bf16] {
            let g = kvDequant(Self.generic, s, page, bs: 1, n: 1, hd: patterns.count)
            let ref = patterns.map { s == .f16 ? Float(Float16(bitPattern: $0)) : Float(bitPattern: UInt32($0) << 16) }
            let bad = patterns.indices.filter { ref[$0].isNaN ? !g[$0].isNaN : g[$0].bitPattern != ref[$0].bitPattern }
            #expect(bad.isEmpty, "\(s) decode: \(bad.count) wrong, first pattern \(bad.first.map { String(patterns[$0], radix: 16) } ?? "")")
            for k in KernelSet.available.dropFirst() {
                #expect(sameBits(kvDequant(k, s, page, bs: 1, n: 1, hd: patterns.count), g) == "same bits", "\(k) \(s) decode")
            }
        }
    }

    @Test("integer rows: a constant row, a zero row, and rows holding NaN or ±Inf (read back as NaN everywhere)")
    func specialRows() {
        let hd = 10
        for s in [KVScheme.int8, .int4] {
            let rows: [[Float]] = [
                .init(repeating: 0.5, count: hd), .init(repeating: 0.37, count: hd), .init(repeating: 0, count: hd),
                [1, 2, .nan, 4, 5, 6, 7, 8, 9, 10], [1, 2, 3, 4, 5, 6, 7, 8, 9, .infinity], [-.infinity, 2, 3, 4, 5, 6, 7, 8, 9, 10],
                [1e6, -1e6, 0, 0, 0, 0, 0, 0, 0, 0],   // outside float16's range
            ]
            let bs = rows.count
            let p = kvPage(s, rows.flatMap { $0 }, bs: bs, n: bs, hd: hd)
            for k in KernelSet.available {
                let d = kvDequant(k, s, p, bs: bs, n: bs, hd: hd)
                #expect(Array(d[0..<hd]) == rows[0], "\(k) \(s): a half-exact constant row is exact")
                #expect(kvParams(p, 0).scale == 0)
                for c in 0..<hd { #expect(abs(d[hd + c] - 0.37) <= kvParams(p, 1).scale / 2 + 1e-7) }
                #expect(Array(d[(2 * hd)..<(3 * hd)]) == rows[2])
                for t in 3..<bs { #expect(d[(t * hd)..<((t + 1) * hd)].allSatisfy { $0.isNaN }, "\(k) \(s) row \(t)") }
                let q = [Float](repeating: 0.25, count: hd)
                let sc = kvScore(k, s, q, p, bs: bs, n: bs, hd: hd, scale: 1)
                #expect(sc[0..<3].allSatisfy { $0.isFinite } && sc[3...].allSatisfy { $0.isNaN }, "\(k) \(s) scores \(sc)")
                let acc = kvAccum(k, s, [0, 0, 0, 0.5, 0, 0, 0], p, bs: bs, n: bs, hd: hd, acc0: .init(repeating: 0, count: hd))
                #expect(acc.allSatisfy { $0.isNaN }, "\(k) \(s): a NaN row surfaces through accum")
            }
        }
    }

    @Test("every level's score / accum / dequant is bit-identical to the generic level", arguments: KVScheme.allCases)
    func levelsIdentical(_ s: KVScheme) {
        let levels = KernelSet.available.dropFirst()
        if levels.isEmpty { return }
        for hd in Self.headDims {
            for (bs, n) in [(1, 1), (7, 7), (7, 3), (32, 32), (32, 19)] {
                let seed = UInt64(hd * 1000 + bs * 10 + n)
                let x = kvRows(n, hd, seed: seed)
                let p = kvPage(s, x, bs: bs, n: n, hd: hd)
                var rng = SplitMix64(seed: seed ^ 0xABCD)
                let q = (0..<hd).map { _ in rng.nextSigned() }, w = (0..<n).map { _ in abs(rng.nextSigned()) }
                let acc0 = (0..<hd).map { _ in rng.nextSigned() }
                let g = Self.generic
                let (gs, ga, gd) = (kvScore(g, s, q, p, bs: bs, n: n, hd: hd, scale: 0.125), kvAccum(g, s, w, p, bs: bs, n: n, hd: hd, acc0: acc0),
                                    kvDequant(g, s, p, bs: bs, n: n, hd: hd))
                for k in levels {
                    #expect(sameBits(kvScore(k, s, q, p, bs: bs, n: n, hd: hd, scale: 0.125), gs) == "same bits", "\(k) score hd \(hd) bs \(bs) n \(n)")
                    #expect(sameBits(kvAccum(k, s, w, p, bs: bs, n: n, hd: hd, acc0: acc0), ga) == "same bits", "\(k) accum hd \(hd) bs \(bs) n \(n)")
                    #expect(sameBits(kvDequant(k, s, p, bs: bs, n: n, hd: hd), gd) == "same bits", "\(k) dequant hd \(hd) bs \(bs) n \(n)")
                }
            }
        }
    }

    /// Relative error bounds of score / accum against the reference twin (dequantize, then
    /// Double arithmetic), as a fraction of Σ|terms| (the magnitude the float rounding
    /// scales with). Measured maxima over this test's data: see the printed line.
    /// (Measured, KernelSet.best = generic bits: score f32 8.5e-8, f16 7.1e-8, bf16 6.6e-8,
    /// int8 5.2e-8, int4 7.0e-8; accum f32 1.1e-7, f16 1.4e-7, bf16 1.2e-7, int8 1.6e-7,
    /// int4 1.8e-7. Bounds ≈ 3× that.)
    static let twinBound: [KVScheme: (score: Double, accum: Double)] = [
        .f32: (2.5e-7, 3.5e-7), .f16: (2.5e-7, 4.5e-7), .bf16: (2e-7, 4e-7), .int8: (1.6e-7, 5e-7), .int4: (2.1e-7, 5.5e-7),
    ]

    @Test("score / accum against the reference twin (dequantized rows, Double sums)", arguments: KVScheme.allCases)
    func twin(_ s: KVScheme) {
        var worstScore = 0.0, worstAccum = 0.0
        let k = KernelSet.best
        for hd in Self.headDims {
            for (bs, n) in [(7, 7), (32, 19), (32, 32)] {
                let seed = UInt64(hd * 31 + n)
                let p = kvPage(s, kvRows(n, hd, seed: seed), bs: bs, n: n, hd: hd)
                let d = kvDequant(k, s, p, bs: bs, n: n, hd: hd)
                var rng = SplitMix64(seed: seed ^ 0x5EED)
                let q = (0..<hd).map { _ in rng.nextSigned() }, w = (0..<n).map { _ in abs(rng.nextSigned()) }
                let acc0 = (0..<hd).map { _ in rng.nextSigned() }
                let scale: Float = 0.125
                // Term magnitudes: for integer rows the kernel sums scale·(q·code) and min·q separately.
                func mag(_ t: Int, _ c: Int) -> Double {
                    if s == .int8 || s == .int4 {
                        let mn = kvParams(p, t).min
                        return abs(Double(d[t * hd + c]) - Double(mn)) + abs(Double(mn))
                    }
                    return abs(Double(d[t * hd + c]))
                }
                let sc = kvScore(k, s, q, p, bs: bs, n: n, hd: hd, scale: scale)
                for t in 0..<n {
                    var ref = 0.0, m = 0.0
                    for c in 0..<hd { ref += Double(q[c]) * Double(d[t * hd + c]); m += abs(Double(q[c])) * mag(t, c) }
                    worstScore = max(worstScore, abs(Double(sc[t]) - ref * Double(scale)) / (m * Double(scale)))
                }
                let acc = kvAccum(k, s, w, p, bs: bs, n: n, hd: hd, acc0: acc0)
                for c in 0..<hd {
                    var ref = Double(acc0[c]), m = abs(Double(acc0[c]))
                    for t in 0..<n { ref += Double(w[t]) * Double(d[t * hd + c]); m += Double(w[t]) * mag(t, c) }
                    worstAccum = max(worstAccum, abs(Double(acc[c]) - ref) / m)
                }
            }
        }
        print("KV twin \(s): worst relative error score \(worstScore), accum \(worstAccum)")
        let b = Self.twinBound[s]!
        #expect(worstScore <= b.score && worstAccum <= b.accum, "\(s): score \(worstScore) accum \(worstAccum)")
    }

    /// Pages of `rows` (n × hd) spread over a pool through `table` (block i → pool page
    /// table[i]), K and V in their schemes; calls `body` with the view.
    private func withPaged<R>(k kx: [Float], v vx: [Float], n: Int, hd: Int, bs: Int, table: [Int32], ks: KVScheme, vs: KVScheme,
                              _ body: (UnsafePointer<lmk_kv_view>) -> R) -> R {
        let stride = (max(ks.pageBytes(blockSize: bs, headDim: hd), vs.pageBytes(blockSize: bs, headDim: hd)) + 63) / 64 * 64
        let pages = Int(table.max()!) + 1
        var kpool = [UInt8](repeating: 0xA5, count: pages * stride), vpool = kpool
        for (i, slot) in table.enumerated() {
            let rows = min(bs, n - i * bs)
            let kp = kvPage(ks, Array(kx[(i * bs * hd)..<((i * bs + rows) * hd)]), bs: bs, n: rows, hd: hd)
            let vp = kvPage(vs, Array(vx[(i * bs * hd)..<((i * bs + rows) * hd)]), bs: bs, n: rows, hd: hd)
            kpool.replaceSubrange((Int(slot) * stride)..<(Int(slot) * stride + kp.count), with: kp)
            vpool.replaceSubrange((Int(slot) * stride)..<(Int(slot) * stride + vp.count), with: vp)
        }
        return kpool.withUnsafeBufferPointer { kb in
            vpool.withUnsafeBufferPointer { vb in
                table.withUnsafeBufferPointer { tb in
                    var view = lmk_kv_view(kbase: kb.baseAddress, vbase: vb.baseAddress, table: tb.baseAddress, stride: Int64(stride),
                                           bs: Int32(bs), kscheme: ks.cID, vscheme: vs.cID)
                    return body(&view)
                }
            }
        }
    }

    private func attendContiguous(_ k: KernelSet, q: [Float], K: [Float], V: [Float], n: Int, hd: Int, scale: Float) -> ([Float], [Float]) {
        var scores = [Float](repeating: .nan, count: n), out = [Float](repeating: .nan, count: hd)
        k.attend(q: q, keys: K, values: V, count: n, headDim: hd, scale: scale, scores: &scores, out: &out)
        return (scores, out)
    }

    private func attendPaged(_ k: KernelSet, q: [Float], K: [Float], V: [Float], n: Int, hd: Int, bs: Int, table: [Int32],
                             ks: KVScheme, vs: KVScheme, scale: Float) -> ([Float], [Float]) {
        var scores = [Float](repeating: .nan, count: n), out = [Float](repeating: .nan, count: hd)
        withPaged(k: K, v: V, n: n, hd: hd, bs: bs, table: table, ks: ks, vs: vs) { view in
            k.attendPaged(q: q, view: view, count: n, headDim: hd, scale: scale, scores: &scores, out: &out)
        }
        return (scores, out)
    }

    static let pagedShapes: [(hd: Int, bs: Int, n: Int, table: [Int32])] = [
        (8, 7, 17, [3, 0, 2]), (64, 7, 17, [3, 0, 2]), (66, 16, 40, [3, 0, 2]), (130, 32, 32, [1]), (64, 16, 1, [2]),
    ]

    @Test("attendPaged over f32 pages (block table out of order, last page partial) is bit-identical to attend, at every level")
    func pagedF32() {
        for k in KernelSet.available {
            for (hd, bs, n, table) in Self.pagedShapes {
                let K = kvRows(n, hd, seed: UInt64(hd + n)), V = kvRows(n, hd, seed: UInt64(hd * n + 1))
                var rng = SplitMix64(seed: 99)
                let q = (0..<hd).map { _ in rng.nextSigned() }, scale = 1 / Float(hd).squareRoot()
                let (s0, o0) = attendContiguous(k, q: q, K: K, V: V, n: n, hd: hd, scale: scale)
                let (s1, o1) = attendPaged(k, q: q, K: K, V: V, n: n, hd: hd, bs: bs, table: table, ks: .f32, vs: .f32, scale: scale)
                #expect(sameBits(s1, s0) == "same bits" && sameBits(o1, o0) == "same bits", "\(k) hd \(hd) bs \(bs) n \(n)")
            }
        }
    }

    @Test("attendPagedGroup: every row bit-identical to attendPaged on that row alone (every level, scheme pair and group size; odd hd, partial last page, block table out of order, strided rows)")
    func pagedGroup() {
        let pairs: [(KVScheme, KVScheme)] = [(.f32, .f32), (.int8, .int8), (.int4, .int4), (.int8, .int4), (.f16, .bf16), (.bf16, .int8)]
        let shapes: [(hd: Int, bs: Int, n: Int, table: [Int32])] = [
            (8, 7, 17, [3, 0, 2]), (33, 7, 17, [3, 0, 2]), (64, 16, 40, [3, 0, 2]), (66, 32, 33, [1, 0]), (17, 16, 1, [2]), (64, 16, 1, [2]),
        ]
        for k in KernelSet.available {
            for (ks, vs) in pairs {
                for (hd, bs, n, table) in shapes where hd % 2 == 0 || (ks != .int4 && vs != .int4) {
                    let K = kvRows(n, hd, seed: UInt64(hd + n)), V = kvRows(n, hd, seed: UInt64(hd * n + 1))
                    let scale = 1 / Float(hd).squareRoot()
                    withPaged(k: K, v: V, n: n, hd: hd, bs: bs, table: table, ks: ks, vs: vs) { view in
                        for g in [1, 2, 3, 4, 5, 9] {
                            let qStride = hd + 5, outStride = hd + 3   // rows apart by more than hd
                            var rng = SplitMix64(seed: UInt64(g * 1000 + hd))
                            let q = (0..<(g * qStride)).map { _ in rng.nextSigned() }
                            var want = [Float](repeating: .nan, count: g * n), got = want
                            var wantOut = [Float](repeating: 12345, count: g * outStride), gotOut = wantOut
                            q.withUnsafeBufferPointer { qb in
                                want.withUnsafeMutableBufferPointer { sb in
                                    wantOut.withUnsafeMutableBufferPointer { ob in
                                        for r in 0..<g {
                                            k.attendPaged(q: qb.baseAddress! + r * qStride, view: view, count: n, headDim: hd, scale: scale,
                                                          scores: sb.baseAddress! + r * n, out: ob.baseAddress! + r * outStride)
                                        }
                                    }
                                }
                                got.withUnsafeMutableBufferPointer { sb in
                                    gotOut.withUnsafeMutableBufferPointer { ob in
                                        k.attendPagedGroup(q: qb.baseAddress!, qStride: qStride, rows: g, view: view, count: n, headDim: hd,
                                                           scale: scale, scores: sb.baseAddress!, out: ob.baseAddress!, outStride: outStride)
                                    }
                                }
                            }
                            #expect(sameBits(got, want) == "same bits" && sameBits(gotOut, wantOut) == "same bits",
                                    "\(k) \(ks)/\(vs) hd \(hd) bs \(bs) n \(n) g \(g): scores \(sameBits(got, want)), out \(sameBits(gotOut, wantOut))")
                        }
                    }
                }
            }
        }
    }

    /// |paged − attend(dequantized rows)| / max|V| bound (measured maximum 1.6e-7; ≈ 3×).
    static let pagedBound = 5e-7

    @Test("attendPaged over quantized pages matches attend on the dequantized rows")
    func pagedQuantized() {
        var worst = 0.0
        let k = KernelSet.best
        for (ks, vs) in [(KVScheme.int8, KVScheme.int8), (.int4, .int4), (.int8, .int4), (.f16, .bf16), (.bf16, .int8)] {
            for (hd, bs, n, table) in Self.pagedShapes {
                let K = kvRows(n, hd, seed: UInt64(hd + n)), V = kvRows(n, hd, seed: UInt64(hd * n + 1))
                var rng = SplitMix64(seed: 7)
                let q = (0..<hd).map { _ in rng.nextSigned() }, scale = 1 / Float(hd).squareRoot()
                // The rows as the pages hold them.
                func dequantized(_ s: KVScheme, _ x: [Float]) -> [Float] {
                    stride(from: 0, to: n, by: bs).flatMap { r0 -> [Float] in
                        let rows = min(bs, n - r0)
                        return kvDequant(k, s, kvPage(s, Array(x[(r0 * hd)..<((r0 + rows) * hd)]), bs: bs, n: rows, hd: hd), bs: bs, n: rows, hd: hd)
                    }
                }
                let Kd = dequantized(ks, K), Vd = dequantized(vs, V)
                let (_, o0) = attendContiguous(k, q: q, K: Kd, V: Vd, n: n, hd: hd, scale: scale)
                let (_, o1) = attendPaged(k, q: q, K: K, V: V, n: n, hd: hd, bs: bs, table: table, ks: ks, vs: vs, scale: scale)
                let vmax = Double(Vd.map { abs($0) }.max()!)
                for c in 0..<hd { worst = max(worst, abs(Double(o1[c]) - Double(o0[c])) / vmax) }
            }
        }
        print("KV paged attention vs attend on dequantized rows: worst |Δ|/max|V| \(worst)")
        #expect(worst <= Self.pagedBound)
    }
}
