import CKernels
import Foundation
import LMCore

/// Float schemes take no group size.
func floatGroupSize(named: Int?, name: String) throws -> Int {
    if named != nil { throw QuantSchemeError("scheme '\(name)': float schemes take no group size") }
    return 0
}

/// `f32`: little-endian float32, used in place (no copy) by `DenseLinear`.
public struct Float32Codec: SliceableSchemeCodec {
    public init() {}
    public var family: String { "f32" }
    public var isQuantized: Bool { false }
    public var names: [String] { ["f32"] }
    public func columnUnit(groupSize: Int) -> Int { 1 }
    public func columnLayout(cols: Int, lo: Int, hi: Int, groupSize: Int) -> [SectionColumns] { [SectionColumns(stride: 4 * cols, start: 4 * lo, count: 4 * (hi - lo))] }
    public func groupSize(named: Int?, defaultGroup: Int?, name: String) throws -> Int { try floatGroupSize(named: named, name: name) }
    public func sections(rows: Int, cols: Int, groupSize: Int) -> [(role: String, bytes: Int)] { [("q", rows * cols * 4)] }
    public func encodeRow(_ x: UnsafePointer<Float>, row: Int, cols: Int, scheme: QuantScheme, clip: ClipMethod, out: [UnsafeMutableRawPointer]) {
        for c in 0..<cols { out[0].storeBytes(of: x[c].bitPattern.littleEndian, toByteOffset: 4 * (row * cols + c), as: UInt32.self) }
    }
    public func decodeRow(row r: Int, cols: Int, scheme: QuantScheme, sections s: [UnsafeRawBufferPointer], into out: UnsafeMutablePointer<Float>) {
        for c in 0..<cols { out[c] = Float(bitPattern: UInt32(littleEndian: s[0].loadUnaligned(fromByteOffset: 4 * (r * cols + c), as: UInt32.self))) }
    }
    public func makeLinear(_ t: PackedTensor, owner: AnyObject) -> LinearWeight {
        DenseLinear(rows: t.rows, cols: t.cols, borrowing: t.sections[0].baseAddress!.assumingMemoryBound(to: Float.self), owner: owner)
    }
}

/// `f16` (IEEE half) and `bf16` (bfloat16): little-endian 16-bit values, widened on the fly.
public struct HalfCodec: SliceableSchemeCodec {
    public let bf16: Bool
    public init(bf16: Bool) { self.bf16 = bf16 }
    public var family: String { bf16 ? "bf16" : "f16" }
    public var isQuantized: Bool { false }
    public var names: [String] { [family] }
    public func columnUnit(groupSize: Int) -> Int { 1 }
    public func columnLayout(cols: Int, lo: Int, hi: Int, groupSize: Int) -> [SectionColumns] { [SectionColumns(stride: 2 * cols, start: 2 * lo, count: 2 * (hi - lo))] }
    public func groupSize(named: Int?, defaultGroup: Int?, name: String) throws -> Int { try floatGroupSize(named: named, name: name) }
    public func sections(rows: Int, cols: Int, groupSize: Int) -> [(role: String, bytes: Int)] { [("q", rows * cols * 2)] }
    public func encodeRow(_ x: UnsafePointer<Float>, row: Int, cols: Int, scheme: QuantScheme, clip: ClipMethod, out: [UnsafeMutableRawPointer]) {
        for c in 0..<cols {
            out[0].storeBytes(of: (bf16 ? floatToBF16(x[c]) : floatToHalf(x[c])).littleEndian, toByteOffset: 2 * (row * cols + c), as: UInt16.self)
        }
    }
    public func decodeRow(row r: Int, cols: Int, scheme: QuantScheme, sections s: [UnsafeRawBufferPointer], into out: UnsafeMutablePointer<Float>) {
        for c in 0..<cols {
            let h = UInt16(littleEndian: s[0].loadUnaligned(fromByteOffset: 2 * (r * cols + c), as: UInt16.self))
            out[c] = bf16 ? bf16ToFloat(h) : halfToFloat(h)
        }
    }
    public func makeLinear(_ t: PackedTensor, owner: AnyObject) -> LinearWeight { HalfLinear(t, owner: owner) }
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

