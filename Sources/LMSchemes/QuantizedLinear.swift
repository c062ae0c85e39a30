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
    /// `matvec` with the calling context's kernel set, for schemes whose float-activation
    /// kernel is C per level (compressed N:M); the default is `matvec`.
    func matvec(_ k: UnsafePointer<lmk_kernels>, _ x: UnsafePointer<Float>, xsum: UnsafePointer<Float>, rows r0: Int, _ r1: Int, out: UnsafeMutablePointer<Float>) {
        matvec(x, xsum: xsum, rows: r0, r1, out: out)
    }
    /// Dequantizes rows `r0..<r1` into `out` (`[r1-r0, cols]`, row stride `cols`).
    func decodeRows(_ r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>) { fatalError("abstract") }
    /// Prefill's tile: rows `r0..<r1` as floats (as `decodeRows`), with the kernel set of
    /// the calling context when the scheme has C dequantizers per level (int3, int2).
    func decodeTile(_ k: UnsafePointer<lmk_kernels>, _ r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>) { decodeRows(r0, r1, into: out) }
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
        try scheme.codec.validate(t, name: name)
        return make(t, owner: storage)
    }

    /// The runtime weight of a stored matrix: its scheme's codec builds it (`SchemeCodec.makeLinear`).
    public static func make(_ t: PackedTensor, owner: AnyObject) -> LinearWeight { t.scheme.codec.makeLinear(t, owner: owner) }
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
