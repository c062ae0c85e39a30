import CKernels
import COpenBLAS
import Foundation
import LMCore

/// Weights stored in an `.lmpk` scheme, used in place from the mapping.
///
/// Decode (1–3 tokens) runs SIMD matrix–vector kernels that dequantize on the fly;
/// prefill dequantizes tiles of `tileRows` rows into a float scratch and calls
/// `sgemm`. Subclasses supply `dot` (one row · one activation vector) and
/// `decodeRows` (rows → floats); both are tested against `RoundToNearest`'s
/// reference dequantizer.
public class PackedLinear: LinearWeight, @unchecked Sendable {
    public let rows: Int
    public let cols: Int
    public let scheme: QuantScheme
    /// Columns padded to the 32-column storage unit.
    let cols32: Int
    let ngroups: Int
    let group: Int
    let owner: AnyObject
    static let tileRows = 64

    init(rows: Int, cols: Int, scheme: QuantScheme, owner: AnyObject) {
        self.rows = rows; self.cols = cols; self.scheme = scheme; self.owner = owner
        cols32 = QuantScheme.paddedCols(cols)
        ngroups = scheme.groups(cols: cols)
        group = scheme.groupSize == 0 ? cols32 : scheme.groupSize
    }

    /// `Σ_c W[r,c]·x[c]` for rows `r0..<r1` into `out[r]`; `x` is padded to `cols32`
    /// with zeros and `xsum[g]` holds the activation sum of group `g`.
    func matvec(_ x: UnsafePointer<Float>, xsum: UnsafePointer<Float>, rows r0: Int, _ r1: Int, out: UnsafeMutablePointer<Float>) { fatalError("abstract") }
    /// Dequantizes rows `r0..<r1` into `out` (`[r1-r0, cols]`, row stride `cols`).
    func decodeRows(_ r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>) { fatalError("abstract") }
    /// Integer-activation kernel (C, AVX2): rows `r0..<r1` with activations quantized
    /// to int8 per 32 columns (`qx`, `dx`). Returns false when the scheme has none.
    func matvecQ8(_ k: UnsafePointer<lmk_kernels>, _ qx: UnsafePointer<Int8>, dx: UnsafePointer<Float>, xsum: UnsafePointer<Float>, rows r0: Int, _ r1: Int, out: UnsafeMutablePointer<Float>) -> Bool { false }

    /// Decode uses integer-activation kernels for int4/int8 unless `LMKIT_FLOAT_DECODE=1`
    /// (float activations, the Swift SIMD kernels). Like llama.cpp's Q8 dot products,
    /// the activation is rounded to int8 per 32 columns (error ≤ max|x|/254 per element).
    public static let integerDecodeDefault = ProcessInfo.processInfo.environment["LMKIT_FLOAT_DECODE"] != "1"
    /// This weight's decode mode (see `integerDecodeDefault`).
    public var integerDecode = PackedLinear.integerDecodeDefault

    public func row(_ r: Int, into out: UnsafeMutablePointer<Float>) { decodeRows(r, r + 1, into: out) }
    public var storageBytes: Int { scheme.sections(rows: rows, cols: cols).reduce(0) { $0 + $1.bytes } }

    /// Decode (≤ 3 tokens): matrix–vector kernels on the context's workers; prefill:
    /// tiles dequantized into scratch, then `sgemm` (`LinearGroup`).
    public func apply(_ x: UnsafePointer<Float>, tokens: Int, out: UnsafeMutablePointer<Float>, ldOut: Int, context: ComputeContext) {
        LinearGroup.apply([self], x, tokens: tokens, outs: [out], ldOuts: [ldOut], context: context)
    }

    /// Builds packed weights in memory from a scheme's sections (`QuantScheme.sections`
    /// order: `q`, then `scales`, then `mins`), copied into one 64-byte-aligned buffer the
    /// weight owns: tests, calibration and sharding need no temporary `.lmpk`.
    /// - Throws: `RuntimeError` when the section count or a size does not match the scheme.
    public static func make(rows: Int, cols: Int, scheme: QuantScheme, sections: [[UInt8]], name: String = "(in memory)") throws -> LinearWeight {
        let want = scheme.sections(rows: rows, cols: cols)
        guard want.count == sections.count else {
            throw RuntimeError("\(name): scheme \(scheme.name) has \(want.count) sections (\(want.map(\.role).joined(separator: ", "))), got \(sections.count)")
        }
        for (w, s) in zip(want, sections) where w.bytes != s.count {
            throw RuntimeError("\(name): section '\(w.role)' of a \(rows)×\(cols) \(scheme.name) tensor is \(w.bytes) bytes, got \(s.count)")
        }
        let storage = AlignedBytes(sections)
        let t = PackedTensor(rows: rows, cols: cols, scheme: scheme, sections: storage.sections)
        return make(t, owner: storage)
    }

    /// Builds the right subclass for an `.lmpk` tensor (2-D).
    public static func make(_ t: PackedTensor, owner: AnyObject) -> LinearWeight {
        switch t.scheme.kind {
        case .f32:
            let p = t.sections[0].baseAddress!.assumingMemoryBound(to: Float.self)
            return DenseLinear(rows: t.rows, cols: t.cols, borrowing: p, owner: owner)
        case .f16, .bf16: return HalfLinear(t, owner: owner)
        case .int8: return Int8Linear(t, owner: owner)
        case .int4, .int4s: return Int4Linear(t, owner: owner)
        }
    }
}

@inline(__always) func load16(_ p: UnsafePointer<Float>) -> SIMD16<Float> { UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Float>.self) }
@inline(__always) func store16(_ v: SIMD16<Float>, _ p: UnsafeMutablePointer<Float>) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD16<Float>.self) }
@inline(__always) func halfAt(_ p: UnsafePointer<UInt16>, _ i: Int) -> Float { Float(Float16(bitPattern: UInt16(littleEndian: p[i]))) }

/// 16 signed bytes → 16 floats (a plain lane loop compiles to sign-extend + convert).
@inline(__always) func i8x16(_ p: UnsafePointer<Int8>) -> SIMD16<Float> {
    let v = UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Int8>.self)
    var f = SIMD16<Float>()
    for i in 0..<16 { f[i] = Float(v[i]) }
    return f
}

/// 16 packed bytes → (low nibbles, high nibbles) as floats in [0, 15].
@inline(__always) func nibbles16(_ p: UnsafePointer<UInt8>) -> (SIMD16<Float>, SIMD16<Float>) {
    let v = UnsafeRawPointer(p).loadUnaligned(as: SIMD16<UInt8>.self)
    let lo = v & 0x0F, hi = v &>> 4
    var a = SIMD16<Float>(), b = SIMD16<Float>()
    for i in 0..<16 { a[i] = Float(lo[i]); b[i] = Float(hi[i]) }
    return (a, b)
}

/// `int8` per channel (float32 scale per row) or `int8-gG` (float16 scale per group).
final class Int8Linear: PackedLinear, @unchecked Sendable {
    let q: UnsafePointer<Int8>
    let scales: UnsafeRawPointer

    init(_ t: PackedTensor, owner: AnyObject) {
        q = t.sections[0].baseAddress!.assumingMemoryBound(to: Int8.self)
        scales = t.sections[1].baseAddress!
        super.init(rows: t.rows, cols: t.cols, scheme: t.scheme, owner: owner)
    }

    @inline(__always) func scale(_ r: Int, _ g: Int) -> Float {
        scheme.groupSize == 0 ? Float(bitPattern: UInt32(littleEndian: scales.loadUnaligned(fromByteOffset: 4 * r, as: UInt32.self)))
            : halfAt(scales.assumingMemoryBound(to: UInt16.self), r * ngroups + g)
    }

    override func matvec(_ x: UnsafePointer<Float>, xsum: UnsafePointer<Float>, rows r0: Int, _ r1: Int, out: UnsafeMutablePointer<Float>) {
        let blocksPerGroup = group / 16
        let nblocks = cols32 / 16
        for r in r0..<r1 {
            let row = q + r * cols32
            if scheme.groupSize == 0 {
                var acc0 = SIMD16<Float>(), acc1 = SIMD16<Float>()
                var b = 0
                while b + 2 <= nblocks {
                    acc0 = acc0.addingProduct(i8x16(row + 16 * b), load16(x + 16 * b))
                    acc1 = acc1.addingProduct(i8x16(row + 16 * b + 16), load16(x + 16 * b + 16))
                    b += 2
                }
                if b < nblocks { acc0 = acc0.addingProduct(i8x16(row + 16 * b), load16(x + 16 * b)) }
                out[r] = (acc0 + acc1).sum() * scale(r, 0)
                continue
            }
            var acc = SIMD16<Float>()
            var b = 0, g = 0
            while b < nblocks {
                let end = min(nblocks, b + blocksPerGroup)
                var d = SIMD16<Float>()
                while b < end { d = d.addingProduct(i8x16(row + 16 * b), load16(x + 16 * b)); b += 1 }
                acc = acc.addingProduct(d, SIMD16<Float>(repeating: scale(r, g)))
                g += 1
            }
            out[r] = acc.sum()
        }
    }

    override func matvecQ8(_ k: UnsafePointer<lmk_kernels>, _ qx: UnsafePointer<Int8>, dx: UnsafePointer<Float>, xsum: UnsafePointer<Float>, rows r0: Int, _ r1: Int, out: UnsafeMutablePointer<Float>) -> Bool {
        k.pointee.matvec_q8(q, scales, Int32(r0), Int32(r1), Int32(cols32), Int32(ngroups), Int32(scheme.groupSize), qx, dx, out)
        return true
    }

    override func decodeRows(_ r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>) {
        let tmp = UnsafeMutablePointer<Float>.allocate(capacity: cols32)
        defer { tmp.deallocate() }
        for r in r0..<r1 {
            let row = q + r * cols32
            for b in 0..<(cols32 / 16) {
                let s = scale(r, (16 * b) / group)
                store16(i8x16(row + 16 * b) * s, tmp + 16 * b)
            }
            (out + (r - r0) * cols).update(from: tmp, count: cols)
        }
    }
}

/// `int4-gG` (scale + min, float16) and `int4s-gG` (scale, code − 8).
final class Int4Linear: PackedLinear, @unchecked Sendable {
    let q: UnsafePointer<UInt8>
    let scales: UnsafePointer<UInt16>
    let mins: UnsafePointer<UInt16>?

    init(_ t: PackedTensor, owner: AnyObject) {
        q = t.sections[0].baseAddress!.assumingMemoryBound(to: UInt8.self)
        scales = t.sections[1].baseAddress!.assumingMemoryBound(to: UInt16.self)
        mins = t.scheme.kind == .int4 ? t.sections[2].baseAddress!.assumingMemoryBound(to: UInt16.self) : nil
        super.init(rows: t.rows, cols: t.cols, scheme: t.scheme, owner: owner)
    }

    /// Per 32-column block: `d = lo·x[0..16] + hi·x[16..32]` (vector), accumulated as
    /// `acc += d · s_g` so the row needs one horizontal sum; the group offset term
    /// (`m_g · Σx_g`, or `−8 s_g · Σx_g`) is accumulated as a scalar.
    override func matvec(_ x: UnsafePointer<Float>, xsum: UnsafePointer<Float>, rows r0: Int, _ r1: Int, out: UnsafeMutablePointer<Float>) {
        let rowBytes = cols32 / 2
        let blocksPerGroup = group / 32
        let nblocks = cols32 / 32
        for r in r0..<r1 {
            let row = q + r * rowBytes
            var acc = SIMD16<Float>()
            var offset: Float = 0
            var b = 0, g = 0
            let sc = scales + r * ngroups
            let mn = mins.map { $0 + r * ngroups }
            while b < nblocks {
                let end = min(nblocks, b + blocksPerGroup)
                let s = halfAt(sc, g)
                let sv = SIMD16<Float>(repeating: s)
                var d = SIMD16<Float>()
                while b < end {
                    let (lo, hi) = nibbles16(row + 16 * b)
                    d = d.addingProduct(lo, load16(x + 32 * b))
                    d = d.addingProduct(hi, load16(x + 32 * b + 16))
                    b += 1
                }
                acc = acc.addingProduct(d, sv)
                offset += (mn.map { halfAt($0, g) } ?? -8 * s) * xsum[g]
                g += 1
            }
            out[r] = acc.sum() + offset
        }
    }

    override func matvecQ8(_ k: UnsafePointer<lmk_kernels>, _ qx: UnsafePointer<Int8>, dx: UnsafePointer<Float>, xsum: UnsafePointer<Float>, rows r0: Int, _ r1: Int, out: UnsafeMutablePointer<Float>) -> Bool {
        k.pointee.matvec_q4(q, scales, mins, Int32(r0), Int32(r1), Int32(cols32), Int32(ngroups), Int32(group), qx, dx, xsum, out)
        return true
    }

    override func decodeRows(_ r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>) {
        let rowBytes = cols32 / 2
        let tmp = UnsafeMutablePointer<Float>.allocate(capacity: cols32)
        defer { tmp.deallocate() }
        for r in r0..<r1 {
            let row = q + r * rowBytes
            for b in 0..<(cols32 / 32) {
                let g = (32 * b) / group
                let s = halfAt(scales, r * ngroups + g)
                let m = mins.map { halfAt($0, r * ngroups + g) } ?? -8 * s
                let (lo, hi) = nibbles16(row + 16 * b)
                store16(lo * s + m, tmp + 32 * b)
                store16(hi * s + m, tmp + 32 * b + 16)
            }
            (out + (r - r0) * cols).update(from: tmp, count: cols)
        }
    }
}

/// `f16` / `bf16` weights, widened on the fly.
final class HalfLinear: PackedLinear, @unchecked Sendable {
    let q: UnsafePointer<UInt16>
    let isBF16: Bool

    init(_ t: PackedTensor, owner: AnyObject) {
        q = t.sections[0].baseAddress!.assumingMemoryBound(to: UInt16.self)
        isBF16 = t.scheme.kind == .bf16
        super.init(rows: t.rows, cols: t.cols, scheme: t.scheme, owner: owner)
    }

    @inline(__always) func widen16(_ p: UnsafePointer<UInt16>) -> SIMD16<Float> {
        let v = UnsafeRawPointer(p).loadUnaligned(as: SIMD16<UInt16>.self)
        if isBF16 { return unsafeBitCast(SIMD16<UInt32>(truncatingIfNeeded: v) &<< 16, to: SIMD16<Float>.self) }
        var f = SIMD16<Float>()
        for i in 0..<16 { f[i] = Float(Float16(bitPattern: v[i])) }
        return f
    }

    override func matvec(_ x: UnsafePointer<Float>, xsum: UnsafePointer<Float>, rows r0: Int, _ r1: Int, out: UnsafeMutablePointer<Float>) {
        for r in r0..<r1 {
            let row = q + r * cols
            var acc = SIMD16<Float>()
            var c = 0
            while c + 16 <= cols { acc = acc.addingProduct(widen16(row + c), load16(x + c)); c += 16 }
            var s = acc.sum()
            while c < cols { s += (isBF16 ? bf16ToFloat(row[c]) : halfToFloat(row[c])) * x[c]; c += 1 }
            out[r] = s
        }
    }

    override func decodeRows(_ r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>) {
        for r in r0..<r1 {
            let row = q + r * cols, o = out + (r - r0) * cols
            var c = 0
            while c + 16 <= cols { store16(widen16(row + c), o + c); c += 16 }
            while c < cols { o[c] = isBF16 ? bf16ToFloat(row[c]) : halfToFloat(row[c]); c += 1 }
        }
    }
}

/// A matrix's stored sections in its scheme's order (`q`, then `scales`, then
/// `mins`), from an `.lmpk` mapping or from memory. Sizes are the caller's to check.
public struct PackedTensor: @unchecked Sendable {
    public let rows: Int
    public let cols: Int
    public let scheme: QuantScheme
    public let sections: [UnsafeRawBufferPointer]
    public init(rows: Int, cols: Int, scheme: QuantScheme, sections: [UnsafeRawBufferPointer]) {
        self.rows = rows; self.cols = cols; self.scheme = scheme; self.sections = sections
    }
}

/// Sections copied into one owned, 64-byte-aligned allocation (each section aligned).
final class AlignedBytes: @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    let sections: [UnsafeRawBufferPointer]
    init(_ parts: [[UInt8]]) {
        let offsets = parts.reduce(into: [0]) { acc, p in acc.append(acc.last! + (p.count + 63) / 64 * 64) }
        base = .allocate(byteCount: max(offsets.last!, 64), alignment: 64)
        var out: [UnsafeRawBufferPointer] = []
        for (i, p) in parts.enumerated() {
            let dst = base + offsets[i]
            p.withUnsafeBytes { if let src = $0.baseAddress { dst.copyMemory(from: src, byteCount: p.count) } }
            out.append(UnsafeRawBufferPointer(start: dst, count: p.count))
        }
        sections = out
    }
    deinit { base.deallocate() }
}
