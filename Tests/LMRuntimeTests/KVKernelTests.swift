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

/// Bytes of one row of codes of an integer scheme.
private func kvCodeBytes(_ s: KVScheme, _ hd: Int) -> Int {
    switch s {
    case .int4, .int4c: return hd / 2
    case .int2, .int2c: return hd / 4
    default: return hd
    }
}

/// The top code of an integer scheme.
private func kvQmax(_ s: KVScheme) -> Double {
    switch s {
    case .int8, .int8c: return 255
    case .int4, .int4c: return 15
    default: return 3
    }
}

/// A page of `bs` rows with rows `0..<n` written from `x` (the rest left as 0xA5 garbage,
/// which no kernel may read). A per-channel page is written whole (`storeBlock`): rows
/// n..<bs from other values (in the parameters), their codes then overwritten by garbage.
private func kvPage(_ s: KVScheme, _ x: [Float], bs: Int, n: Int, hd: Int) -> [UInt8] {
    var p = [UInt8](repeating: 0xA5, count: s.pageBytes(blockSize: bs, headDim: hd))
    if s.isPerChannel {
        let rows = Array(x[0..<(n * hd)]) + (n < bs ? kvRows(bs - n, hd, seed: UInt64(n * 7 + hd)) : [])
        p.withUnsafeMutableBytes { pb in
            rows.withUnsafeBufferPointer { s.storeBlock($0.baseAddress!, page: pb.baseAddress!, blockSize: bs, headDim: hd) }
        }
        let w = kvCodeBytes(s, hd)
        for i in (4 * hd + n * w)..<(4 * hd + bs * w) { p[i] = 0xA5 }
        return p
    }
    p.withUnsafeMutableBytes { pb in
        x.withUnsafeBufferPointer { xb in
            for t in 0..<n { s.storeRow(xb.baseAddress! + t * hd, page: pb.baseAddress!, blockSize: bs, row: t, headDim: hd) }
        }
    }
    return p
}

private func half(_ p: [UInt8], _ at: Int) -> Float { Float(Float16(bitPattern: UInt16(p[at]) | UInt16(p[at + 1]) << 8)) }

/// (scale16, min16) of integer row `t`.
private func kvParams(_ p: [UInt8], _ t: Int) -> (scale: Float, min: Float) { (half(p, 4 * t), half(p, 4 * t + 2)) }

/// (scale16, min16) of channel `c` of a per-channel page of `hd` channels.
private func kvChannelParams(_ p: [UInt8], _ c: Int, hd: Int) -> (scale: Float, min: Float) { (half(p, 2 * c), half(p, 2 * hd + 2 * c)) }

/// (scale16, min16) of element (t, c) of an integer page.
private func kvElementParams(_ s: KVScheme, _ p: [UInt8], t: Int, c: Int, hd: Int) -> (scale: Float, min: Float) {
    s.isPerChannel ? kvChannelParams(p, c, hd: hd) : kvParams(p, t)
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
    static let integer: [KVScheme] = [.int8, .int4, .int2, .int8c, .int4c, .int2c]

    /// The head sizes each scheme is tested on (the new schemes: odd-ish shapes they allow).
    static func dims(_ s: KVScheme) -> [Int] {
        switch s {
        case .int2, .int2c: return [8, 12, 64, 68]
        case .int4c: return [2, 10, 12, 64, 66, 68]
        case .int8c: return [7, 8, 12, 33, 64, 68]
        default: return headDims
        }
    }

    @Test("page sizes")
    func pageSizes() {
        #expect(KVScheme.f32.pageBytes(blockSize: 16, headDim: 64) == 4096)
        #expect(KVScheme.f16.pageBytes(blockSize: 16, headDim: 64) == 2048)
        #expect(KVScheme.bf16.pageBytes(blockSize: 16, headDim: 64) == 2048)
        #expect(KVScheme.int8.pageBytes(blockSize: 16, headDim: 64) == 64 + 1024)
        #expect(KVScheme.int4.pageBytes(blockSize: 16, headDim: 64) == 64 + 512)
        #expect(KVScheme.int4.pageBytes(blockSize: 16, headDim: 7) == -1)
        #expect(KVScheme.int2.pageBytes(blockSize: 16, headDim: 64) == 64 + 256)
        #expect(KVScheme.int2.pageBytes(blockSize: 16, headDim: 66) == -1)
        #expect(KVScheme.int8c.pageBytes(blockSize: 16, headDim: 64) == 256 + 1024)
        #expect(KVScheme.int8c.pageBytes(blockSize: 16, headDim: 7) == 28 + 112)
        #expect(KVScheme.int4c.pageBytes(blockSize: 16, headDim: 64) == 256 + 512)
        #expect(KVScheme.int4c.pageBytes(blockSize: 16, headDim: 7) == -1)
        #expect(KVScheme.int2c.pageBytes(blockSize: 16, headDim: 64) == 256 + 256)
        #expect(KVScheme.int2c.pageBytes(blockSize: 16, headDim: 66) == -1)
        #expect(lmk_kv_page_bytes(9, 16, 64) == -1)
        // Raw values, names, the per-channel flag; CaseIterable in raw-value order.
        #expect(KVScheme.allCases.map(\.rawValue) == Array(0..<Int(LMK_KV_SCHEMES)))
        #expect(KVScheme.allCases.map(\.description) == ["f32", "f16", "bf16", "int8", "int4", "int2", "int8c", "int4c", "int2c"])
        #expect(KVScheme.allCases.allSatisfy { KVScheme(name: $0.description) == $0 })
        #expect(KVScheme.allCases.filter(\.isPerChannel) == [.int8c, .int4c, .int2c])
        #expect([KVScheme.int2.cID, KVScheme.int8c.cID, KVScheme.int4c.cID, KVScheme.int2c.cID] == [LMK_KV_INT2, LMK_KV_INT8C, LMK_KV_INT4C, LMK_KV_INT2C].map { Int32($0) })
        // storeRow does nothing on a per-channel page.
        for s in KVScheme.allCases where s.isPerChannel {
            var p = [UInt8](repeating: 0xA5, count: s.pageBytes(blockSize: 4, headDim: 8))
            let x = [Float](repeating: 1.5, count: 8)
            p.withUnsafeMutableBytes { s.storeRow(x, page: $0.baseAddress!, blockSize: 4, row: 1, headDim: 8) }
            #expect(p.allSatisfy { $0 == 0xA5 }, "\(s)")
        }
    }

    @Test("store → dequant round trip: f32 exact, f16/bf16 round to nearest even, integer schemes within scale/2 (per row or per channel)", arguments: KVScheme.allCases)
    func roundTrip(_ s: KVScheme) {
        for hd in Self.dims(s) {
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
                case .int8c, .int4c, .int2c:
                    let qmax = kvQmax(s)
                    for c in 0..<hd {
                        let col = (0..<bs).map { x[$0 * hd + c] }, (sc, mn) = kvChannelParams(p, c, hd: hd)
                        let lo = col.min()!, hi = col.max()!
                        #expect(mn <= lo && Double(mn) + qmax * Double(sc) >= Double(hi), "\(s) hd \(hd) c \(c)")
                        let floatSlack = 0x1p-21 * Double(max(abs(mn), abs(hi)))
                        for t in 0..<bs {
                            let err = abs(Double(d[t * hd + c]) - Double(col[t]))
                            #expect(err <= Double(sc) / 2 + floatSlack, "\(s) hd \(hd) t \(t) c \(c): \(err) vs scale \(sc)")
                        }
                    }
                case .int8, .int4, .int2:
                    let qmax = kvQmax(s)
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
        for s in [KVScheme.int8, .int4, .int2] {
            let hd = s == .int2 ? 12 : 10
            let rows: [[Float]] = [
                .init(repeating: 0.5, count: hd), .init(repeating: 0.37, count: hd), .init(repeating: 0, count: hd),
                [1, 2, .nan, 4, 5, 6, 7, 8, 9, 10], [1, 2, 3, 4, 5, 6, 7, 8, 9, .infinity], [-.infinity, 2, 3, 4, 5, 6, 7, 8, 9, 10],
                [1e6, -1e6, 0, 0, 0, 0, 0, 0, 0, 0],   // outside float16's range
            ].map { $0.count == hd ? $0 : $0 + [11, 12] }
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
        for hd in Self.dims(s) {
            for (bs, n) in [(1, 1), (7, 7), (7, 3), (32, 32), (32, 19)] {
                let seed = UInt64(hd * 1000 + bs * 10 + n)
                let x = kvRows(n, hd, seed: seed)
                let p = kvPage(s, x, bs: bs, n: n, hd: hd)
                var rng = SplitMix64(seed: seed ^ 0xABCD)
                let q = (0..<hd).map { _ in rng.nextSigned() }, w = (0..<n).map { _ in abs(rng.nextSigned()) }
                let acc0 = (0..<hd).map { _ in rng.nextSigned() }
                let g = Self.generic
                let (gs, gd) = (kvScore(g, s, q, p, bs: bs, n: n, hd: hd, scale: 0.125), kvDequant(g, s, p, bs: bs, n: n, hd: hd))
                let ga = s.isPerChannel ? [] : kvAccum(g, s, w, p, bs: bs, n: n, hd: hd, acc0: acc0)
                for k in levels {
                    #expect(sameBits(kvScore(k, s, q, p, bs: bs, n: n, hd: hd, scale: 0.125), gs) == "same bits", "\(k) score hd \(hd) bs \(bs) n \(n)")
                    if !s.isPerChannel {
                        #expect(sameBits(kvAccum(k, s, w, p, bs: bs, n: n, hd: hd, acc0: acc0), ga) == "same bits", "\(k) accum hd \(hd) bs \(bs) n \(n)")
                    }
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
    /// (int2: score 4.3e-8, accum 1.5e-7; per channel, score only: int8c 5.2e-8, int4c 6.6e-8,
    /// int2c 4.3e-8.)
    static let twinBound: [KVScheme: (score: Double, accum: Double)] = [
        .f32: (2.5e-7, 3.5e-7), .f16: (2.5e-7, 4.5e-7), .bf16: (2e-7, 4e-7), .int8: (1.6e-7, 5e-7), .int4: (2.1e-7, 5.5e-7),
        .int2: (1.3e-7, 4.5e-7), .int8c: (1.6e-7, 0), .int4c: (2e-7, 0), .int2c: (1.3e-7, 0),
    ]

    @Test("score / accum against the reference twin (dequantized rows, Double sums)", arguments: KVScheme.allCases)
    func twin(_ s: KVScheme) {
        var worstScore = 0.0, worstAccum = 0.0
        let k = KernelSet.best
        for hd in Self.dims(s) {
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
                    if Self.integer.contains(s) {
                        let mn = kvElementParams(s, p, t: t, c: c, hd: hd).min
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
                if s.isPerChannel { continue }   // K only: no accum
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
    /// Blocks i ≥ `kfull` keep their K rows as the view's f32 tail (their K pages left as
    /// garbage); kfull ≥ the block count: no tail (kfull = Int32.max in the view).
    private func withPaged<R>(k kx: [Float], v vx: [Float], n: Int, hd: Int, bs: Int, table: [Int32], ks: KVScheme, vs: KVScheme,
                              kfull: Int = Int(Int32.max), _ body: (UnsafePointer<lmk_kv_view>) -> R) -> R {
        let stride = (max(ks.pageBytes(blockSize: bs, headDim: hd), vs.pageBytes(blockSize: bs, headDim: hd)) + 63) / 64 * 64
        let pages = Int(table.max()!) + 1
        var kpool = [UInt8](repeating: 0xA5, count: pages * stride), vpool = kpool
        for (i, slot) in table.enumerated() {
            let rows = min(bs, n - i * bs)
            let vp = kvPage(vs, Array(vx[(i * bs * hd)..<((i * bs + rows) * hd)]), bs: bs, n: rows, hd: hd)
            vpool.replaceSubrange((Int(slot) * stride)..<(Int(slot) * stride + vp.count), with: vp)
            if i >= kfull { continue }
            let kp = kvPage(ks, Array(kx[(i * bs * hd)..<((i * bs + rows) * hd)]), bs: bs, n: rows, hd: hd)
            kpool.replaceSubrange((Int(slot) * stride)..<(Int(slot) * stride + kp.count), with: kp)
        }
        let tail = kfull < table.count ? Array(kx[(kfull * bs * hd)..<(n * hd)]) : [Float.nan]
        return kpool.withUnsafeBufferPointer { kb in
            vpool.withUnsafeBufferPointer { vb in
                table.withUnsafeBufferPointer { tb in
                    tail.withUnsafeBufferPointer { tl in
                        var view = lmk_kv_view(kbase: kb.baseAddress, vbase: vb.baseAddress, table: tb.baseAddress, stride: Int64(stride),
                                               bs: Int32(bs), kscheme: ks.cID, vscheme: vs.cID,
                                               ktail: kfull < table.count ? tl.baseAddress : nil, kfull: Int32(min(kfull, Int(Int32.max))))
                        return body(&view)
                    }
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
                             ks: KVScheme, vs: KVScheme, kfull: Int = Int(Int32.max), scale: Float) -> ([Float], [Float]) {
        var scores = [Float](repeating: .nan, count: n), out = [Float](repeating: .nan, count: hd)
        withPaged(k: K, v: V, n: n, hd: hd, bs: bs, table: table, ks: ks, vs: vs, kfull: kfull) { view in
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
        // (K, V, K tail from the last block on: the per-channel K schemes with and without one)
        let pairs: [(KVScheme, KVScheme, Bool)] = [
            (.f32, .f32, false), (.int8, .int8, false), (.int4, .int4, false), (.int8, .int4, false), (.f16, .bf16, false), (.bf16, .int8, false),
            (.int2, .int2, false), (.int8c, .int2, true), (.int4c, .int8, true), (.int2c, .int4, true), (.int4c, .f16, false), (.f32, .f32, true),
        ]
        let shapes: [(hd: Int, bs: Int, n: Int, table: [Int32])] = [
            (8, 7, 17, [3, 0, 2]), (33, 7, 17, [3, 0, 2]), (64, 16, 40, [3, 0, 2]), (66, 32, 33, [1, 0]), (17, 16, 1, [2]), (64, 16, 1, [2]),
        ]
        for k in KernelSet.available {
            for (ks, vs, tailed) in pairs {
                for (hd, bs, n, table) in shapes where ks.pageBytes(blockSize: bs, headDim: hd) > 0 && vs.pageBytes(blockSize: bs, headDim: hd) > 0 {
                    let K = kvRows(n, hd, seed: UInt64(hd + n)), V = kvRows(n, hd, seed: UInt64(hd * n + 1))
                    let scale = 1 / Float(hd).squareRoot()
                    withPaged(k: K, v: V, n: n, hd: hd, bs: bs, table: table, ks: ks, vs: vs, kfull: tailed ? table.count - 1 : Int(Int32.max)) { view in
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
                                    "\(k) \(ks)/\(vs) tail \(tailed) hd \(hd) bs \(bs) n \(n) g \(g): scores \(sameBits(got, want)), out \(sameBits(gotOut, wantOut))")
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
        for (ks, vs) in [(KVScheme.int8, KVScheme.int8), (.int4, .int4), (.int8, .int4), (.f16, .bf16), (.bf16, .int8), (.int2, .int2), (.int4c, .int2)] {
            for (hd, bs, n, table) in Self.pagedShapes where ks.pageBytes(blockSize: bs, headDim: hd) > 0 && vs.pageBytes(blockSize: bs, headDim: hd) > 0 {
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

    @Test("per-channel pages: a constant channel is exact; a channel holding NaN, ±Inf or a value outside float16 makes every score of the page NaN (every level)")
    func perChannelSpecial() {
        let hd = 12, bs = 7
        var base = kvRows(bs, hd, seed: 4242)
        for t in 0..<bs { base[t * hd + 1] = 0.5; base[t * hd + 2] = 0 }   // channel 1 constant, channel 2 zero
        var rng = SplitMix64(seed: 17)
        let q = (0..<hd).map { _ in rng.nextSigned() }
        for s in KVScheme.allCases where s.isPerChannel {
            let p = kvPage(s, base, bs: bs, n: bs, hd: hd)
            #expect(kvChannelParams(p, 1, hd: hd).scale == 0 && kvChannelParams(p, 2, hd: hd).scale == 0)
            for k in KernelSet.available {
                let d = kvDequant(k, s, p, bs: bs, n: bs, hd: hd)
                #expect((0..<bs).allSatisfy { d[$0 * hd + 1] == 0.5 && d[$0 * hd + 2] == 0 }, "\(k) \(s)")
                #expect(kvScore(k, s, q, p, bs: bs, n: bs, hd: hd, scale: 1).allSatisfy { $0.isFinite }, "\(k) \(s)")
            }
            for bad: Float in [.nan, .infinity, -.infinity, -1e6] {   // −1e6: a min below float16's range
                var x = base
                x[3 * hd + 5] = bad
                let p = kvPage(s, x, bs: bs, n: bs, hd: hd)
                for k in KernelSet.available {
                    let d = kvDequant(k, s, p, bs: bs, n: bs, hd: hd)
                    #expect((0..<bs).allSatisfy { d[$0 * hd + 5].isNaN }, "\(k) \(s) \(bad): the channel reads back NaN")
                    #expect((0..<(bs * hd)).allSatisfy { $0 % hd == 5 || d[$0].isFinite }, "\(k) \(s) \(bad): the other channels do not")
                    // q_5 = 0 too: 0·NaN is NaN.
                    for q in [q, q.enumerated().map { $0.offset == 5 ? 0 : $0.element }] {
                        let sc = kvScore(k, s, q, p, bs: bs, n: bs, hd: hd, scale: 1)
                        #expect(sc.allSatisfy { $0.isNaN }, "\(k) \(s) \(bad): scores \(sc)")
                    }
                }
            }
        }
    }

    @Test("kvAccum on a per-channel (K-only) scheme is a fatal error, not a call through a NULL entry")
    func accumPerChannelTraps() async {
        await #expect(processExitsWith: .failure) {
            let page = [UInt8](repeating: 0, count: KVScheme.int4c.pageBytes(blockSize: 1, headDim: 8))
            var acc = [Float](repeating: 0, count: 8)
            KernelSet.best.kvAccum(.int4c, p: [1], page: page, blockSize: 1, count: 1, headDim: 8, acc: &acc)
        }
    }

    @Test("an outlier channel (100× the others) costs the other channels little precision per channel, much per token (int4c vs int4, int2c vs int2, int8c vs int8)")
    func outlierChannel() {
        let hd = 64, bs = 32
        var rng = SplitMix64(seed: 2024)
        var x = [Float](repeating: 0, count: bs * hd)
        for t in 0..<bs {
            for c in 0..<hd { x[t * hd + c] = rng.nextSigned() }
            x[t * hd] *= 100
        }
        var report: [String] = []
        // Required ratios: 2-bit per token cannot err by more than the others' range (2), 2-bit per
        // channel errs by up to range/3/2, so ~6× is all there is.
        for (tok, chan, ratio) in [(KVScheme.int8, KVScheme.int8c, 20.0), (.int4, .int4c, 20), (.int2, .int2c, 5)] {
            func worstOthers(_ s: KVScheme) -> Double {
                let d = kvDequant(Self.generic, s, kvPage(s, x, bs: bs, n: bs, hd: hd), bs: bs, n: bs, hd: hd)
                return (0..<(bs * hd)).filter { $0 % hd != 0 }.map { abs(Double(d[$0]) - Double(x[$0])) }.max()!
            }
            let et = worstOthers(tok), ec = worstOthers(chan)
            report.append("\(tok) \(et), \(chan) \(ec) (\(Int((et / ec).rounded()))×)")
            #expect(ec * ratio < et, "\(tok) \(et) vs \(chan) \(ec)")
            // Per channel the others keep their own precision: range 2 over qmax codes.
            #expect(ec <= 2 / kvQmax(chan) / 2 * 1.01, "\(chan) \(ec)")
        }
        print("KV outlier channel, worst error on the other channels: " + report.joined(separator: "; "))
    }

    /// |paged − attend(dequantized pages + the f32 tail)| / max|V| bound (measured maximum
    /// 1.5e-7 over every level; ≈ 3×).
    static let tailBound = 5e-7

    @Test("attendPaged / attendPagedGroup with an f32 K tail (pages [c, c, tail], tail partial): f32 pages bit-identical to attend on the contiguous rows; per-channel pages within a measured bound of attend on the dequantized rows")
    func pagedTail() {
        let shapes: [(hd: Int, bs: Int, n: Int, table: [Int32])] = [(64, 16, 40, [3, 0, 2]), (12, 7, 17, [1, 2, 0]), (68, 32, 65, [0, 2, 1])]
        var worst = 0.0
        for k in KernelSet.available {
            for (ks, vs) in [(KVScheme.f32, KVScheme.f32), (.int4c, .f32), (.int4c, .int4), (.int8c, .int8), (.int2c, .int8)] {
                for (hd, bs, n, table) in shapes where ks.pageBytes(blockSize: bs, headDim: hd) > 0 {
                    let K = kvRows(n, hd, seed: UInt64(hd + n + 5)), V = kvRows(n, hd, seed: UInt64(hd * n + 3))
                    var rng = SplitMix64(seed: 31)
                    let g = 5
                    let q = (0..<(g * hd)).map { _ in rng.nextSigned() }, scale = 1 / Float(hd).squareRoot()
                    // The rows as the pages (and the tail) hold them.
                    func held(_ s: KVScheme, _ x: [Float], pages: Int) -> [Float] {
                        (0..<table.count).flatMap { i -> [Float] in
                            let rows = min(bs, n - i * bs), part = Array(x[(i * bs * hd)..<((i * bs + rows) * hd)])
                            return i >= pages ? part : kvDequant(k, s, kvPage(s, part, bs: bs, n: rows, hd: hd), bs: bs, n: rows, hd: hd)
                        }
                    }
                    let Kd = held(ks, K, pages: 2), Vd = held(vs, V, pages: table.count)
                    var gotS = [Float](repeating: .nan, count: g * n), gotO = [Float](repeating: .nan, count: g * hd)
                    withPaged(k: K, v: V, n: n, hd: hd, bs: bs, table: table, ks: ks, vs: vs, kfull: 2) { view in
                        k.attendPagedGroup(q: q, qStride: hd, rows: g, view: view, count: n, headDim: hd, scale: scale,
                                           scores: &gotS, out: &gotO, outStride: hd)
                    }
                    let vmax = Double(Vd.map { abs($0) }.max()!)
                    for r in 0..<g {
                        let qr = Array(q[(r * hd)..<((r + 1) * hd)])
                        let (s0, o0) = attendContiguous(k, q: qr, K: Kd, V: Vd, n: n, hd: hd, scale: scale)
                        let (s1, o1) = attendPaged(k, q: qr, K: K, V: V, n: n, hd: hd, bs: bs, table: table, ks: ks, vs: vs, kfull: 2, scale: scale)
                        let gs = Array(gotS[(r * n)..<((r + 1) * n)]), go = Array(gotO[(r * hd)..<((r + 1) * hd)])
                        #expect(sameBits(gs, s1) == "same bits" && sameBits(go, o1) == "same bits", "\(k) \(ks)/\(vs) hd \(hd) row \(r): group vs one row")
                        if ks == .f32 && vs == .f32 {
                            #expect(sameBits(s1, s0) == "same bits" && sameBits(o1, o0) == "same bits", "\(k) hd \(hd) bs \(bs) n \(n) row \(r)")
                        } else {
                            for c in 0..<hd { worst = max(worst, abs(Double(o1[c]) - Double(o0[c])) / vmax) }
                        }
                    }
                }
            }
        }
        print("KV paged attention with an f32 K tail vs attend on the held rows: worst |Δ|/max|V| \(worst)")
        #expect(worst <= Self.tailBound)
    }
}
