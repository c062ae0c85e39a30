import CKernels
import Foundation
import LMCore

extension QuantScheme.Kind {
    /// `int3-gG` (`LowBitCodec(bits: 3)`).
    public static let int3 = QuantScheme.Kind(rawValue: "int3")
    /// `int2-gG` (`LowBitCodec(bits: 2)`).
    public static let int2 = QuantScheme.Kind(rawValue: "int2")
}

/// `int3-gG` and `int2-gG`: asymmetric like `int4-gG` (`value = s · q + m`, float16 scale
/// and minimum per group of G columns), codes 0…7 or 0…3, rows padded to 32 columns
/// (padding code 0).
///
/// Storage per 32-column block (formats/lmpk.md, "Schemes"): int2 is 8 bytes, byte `j`
/// holding columns `j, j+8, j+16, j+24` in its bit pairs 0–1, 2–3, 4–5, 6–7; int3 is 12
/// bytes, the codes' low two bits in exactly that layout followed by a little-endian
/// 32-bit mask whose bit `i` is bit 2 of column `i`'s code (ggml Q3_K's `hmask` idea).
/// Both unpack with a shift per 64-bit lane and a mask, in column order.
public struct LowBitCodec: IntegerSchemeCodec, SliceableSchemeCodec {
    /// Bits per code: 3 or 2.
    public let bits: Int
    /// - Parameter bits: 3 (`int3`) or 2 (`int2`).
    public init(bits: Int) {
        precondition(bits == 2 || bits == 3, "LowBitCodec stores 2- or 3-bit codes")
        self.bits = bits
    }
    public var family: String { "int\(bits)" }
    public var names: [String] { QuantScheme.supportedGroupSizes.map { "\(family)-g\($0)" } }
    public var codeRange: ClosedRange<Int32> { 0...Int32((1 << bits) - 1) }
    public var paddingCode: Int32 { 0 }
    /// Bytes per 32-column block: 4 · bits.
    public var blockBytes: Int { 4 * bits }

    public func groupSize(named: Int?, defaultGroup: Int?, name: String) throws -> Int {
        try groupWiseSize(named: named, defaultGroup: defaultGroup, name: name)
    }

    public func sections(rows: Int, cols: Int, groupSize: Int) -> [(role: String, bytes: Int)] {
        let ng = (cols + groupSize - 1) / groupSize, c32 = QuantScheme.paddedCols(cols)
        return [("q", rows * c32 / 32 * blockBytes), ("scales", rows * ng * 2), ("mins", rows * ng * 2)]
    }

    public func columnUnit(groupSize: Int) -> Int { max(32, groupSize) }
    public func columnLayout(cols: Int, lo: Int, hi: Int, groupSize g: Int) -> [SectionColumns] {
        let q = SectionColumns(stride: QuantScheme.paddedCols(cols) / 32 * blockBytes, start: lo / 32 * blockBytes,
                               count: QuantScheme.paddedCols(hi - lo) / 32 * blockBytes)
        let p = SectionColumns(stride: 2 * ((cols + g - 1) / g), start: 2 * (lo / g), count: 2 * ((hi - lo + g - 1) / g))
        return [q, p, p]
    }

    public func chooseParameters(_ x: UnsafePointer<Float>, count: Int, clip: ClipMethod, scheme: QuantScheme) -> GroupParameters {
        let (s, m) = asymmetricRange(x, count, levels: Float((1 << bits) - 1), clip: clip)
        return GroupParameters(scale: s, min: m)
    }

    public var zeroCode: Int32? { nil }
    public func stored(_ p: GroupParameters, scheme: QuantScheme) -> GroupParameters {
        GroupParameters(scale: halfToFloat(floatToHalf(p.scale)), min: halfToFloat(floatToHalf(p.min)))
    }

    public func chooseCodes(_ x: UnsafePointer<Float>, count: Int, parameters p: GroupParameters, into codes: UnsafeMutablePointer<Int32>) {
        let inv: Float = p.scale == 0 ? 0 : 1 / p.scale
        let top = Float((1 << bits) - 1)
        for i in 0..<count { codes[i] = Int32(max(0, min(top, ((x[i] - p.min) * inv).rounded(.toNearestOrEven)))) }
    }

    public func pack(codes: UnsafePointer<Int32>, parameters: [GroupParameters], row r: Int, cols: Int, scheme: QuantScheme, out: [UnsafeMutableRawPointer]) {
        let c32 = QuantScheme.paddedCols(cols), ng = parameters.count, bb = blockBytes
        let q = out[0].assumingMemoryBound(to: UInt8.self) + r * (c32 / 32 * bb)
        func code(_ c: Int) -> UInt32 { UInt32(c < cols ? codes[c] : paddingCode) }
        for b in 0..<(c32 / 32) {
            let blk = q + b * bb
            for j in 0..<8 {
                var byte: UInt32 = 0
                for k in 0..<4 { byte |= (code(32 * b + j + 8 * k) & 3) << (2 * k) }
                blk[j] = UInt8(byte)
            }
            if bits == 3 {
                var mask: UInt32 = 0
                for i in 0..<32 { mask |= ((code(32 * b + i) >> 2) & 1) << i }
                for k in 0..<4 { blk[8 + k] = UInt8(truncatingIfNeeded: mask >> (8 * k)) }
            }
        }
        for (g, p) in parameters.enumerated() {
            out[1].storeBytes(of: floatToHalf(p.scale).littleEndian, toByteOffset: 2 * (r * ng + g), as: UInt16.self)
            out[2].storeBytes(of: floatToHalf(p.min).littleEndian, toByteOffset: 2 * (r * ng + g), as: UInt16.self)
        }
    }

    public func value(code: Int32, _ p: GroupParameters) -> Float { p.scale * Float(code) + p.min }

    /// The code of column `c` of the row whose packed bytes start at `rowStart` of the `q`
    /// section (the layout, formula by formula; the reference decoder and the tests read it).
    @inline(__always) public func code(_ q: UnsafeRawBufferPointer, rowStart: Int, column c: Int) -> Int {
        let blk = rowStart + (c / 32) * blockBytes, i = c % 32
        var v = Int(q[blk + i % 8] >> (2 * (i / 8))) & 3
        if bits == 3 { v |= Int((q[blk + 8 + i / 8] >> (i % 8)) & 1) << 2 }
        return v
    }

    public func decodeRow(row r: Int, cols: Int, scheme: QuantScheme, sections s: [UnsafeRawBufferPointer], into out: UnsafeMutablePointer<Float>) {
        let c32 = QuantScheme.paddedCols(cols), ng = scheme.groups(cols: cols), G = scheme.groupSize
        let rowStart = r * (c32 / 32 * blockBytes)
        for c in 0..<cols {
            let g = c / G
            out[c] = f16At(s[1], r * ng + g) * Float(code(s[0], rowStart: rowStart, column: c)) + f16At(s[2], r * ng + g)
        }
    }

    public func makeLinear(_ t: PackedTensor, owner: AnyObject) -> LinearWeight { LowBitLinear(t, bits: bits, owner: owner) }
}

/// `int3-gG` / `int2-gG` weights: integer decode through the kernel set's `matvec_q3` /
/// `matvec_q2`, prefill tiles through its `dequant_q3` / `dequant_q2` (bit-identical to
/// `LowBitCodec.decodeRow` at every level), float-activation decode in Swift SIMD.
final class LowBitLinear: PackedLinear, @unchecked Sendable {
    let bits: Int
    let q: UnsafePointer<UInt8>
    let scales: UnsafePointer<UInt16>
    let mins: UnsafePointer<UInt16>
    /// The generic (scalar C) table, for lookups made without a context (`row`).
    let generic: UnsafePointer<lmk_kernels>

    init(_ t: PackedTensor, bits: Int, owner: AnyObject) {
        self.bits = bits
        q = t.sections[0].baseAddress!.assumingMemoryBound(to: UInt8.self)
        scales = t.sections[1].baseAddress!.assumingMemoryBound(to: UInt16.self)
        mins = t.sections[2].baseAddress!.assumingMemoryBound(to: UInt16.self)
        generic = lmk_kernels_at(Int32(LMK_LEVEL_GENERIC))!
        super.init(rows: t.rows, cols: t.cols, scheme: t.scheme, owner: owner)
    }

    /// Block `b` of `row` as two 16-float vectors (columns 0…15, 16…31 of the block).
    @inline(__always) func block(_ row: UnsafePointer<UInt8>, _ b: Int) -> (SIMD16<Float>, SIMD16<Float>) {
        let p = UnsafeRawPointer(row + b * 4 * bits)
        let v = p.loadUnaligned(as: SIMD8<UInt8>.self)
        var lo = SIMD16<UInt8>(lowHalf: v & 3, highHalf: (v &>> 2) & 3)
        var hi = SIMD16<UInt8>(lowHalf: (v &>> 4) & 3, highHalf: v &>> 6)
        if bits == 3 {
            let m = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
            let lane = SIMD16<UInt32>(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
            let hl = (SIMD16<UInt32>(repeating: m) &>> lane) & 1, hh = (SIMD16<UInt32>(repeating: m >> 16) &>> lane) & 1
            lo |= SIMD16<UInt8>(truncatingIfNeeded: hl &<< 2)
            hi |= SIMD16<UInt8>(truncatingIfNeeded: hh &<< 2)
        }
        var a = SIMD16<Float>(), c = SIMD16<Float>()
        for i in 0..<16 { a[i] = Float(lo[i]); c[i] = Float(hi[i]) }
        return (a, c)
    }

    /// As `Int4Linear.matvec`: per group `acc += s_g · Σ codes·x`, plus `Σ m_g · xsum[g]`.
    override func matvec(_ x: UnsafePointer<Float>, xsum: UnsafePointer<Float>, rows r0: Int, _ r1: Int, out: UnsafeMutablePointer<Float>) {
        let rowBytes = cols32 / 32 * 4 * bits, blocksPerGroup = group / 32, nblocks = cols32 / 32
        for r in r0..<r1 {
            let row = q + r * rowBytes
            var acc = SIMD16<Float>()
            var offset: Float = 0
            var b = 0, g = 0
            while b < nblocks {
                let end = min(nblocks, b + blocksPerGroup)
                var d = SIMD16<Float>()
                while b < end {
                    let (lo, hi) = block(row, b)
                    d = d.addingProduct(lo, load16(x + 32 * b))
                    d = d.addingProduct(hi, load16(x + 32 * b + 16))
                    b += 1
                }
                acc = acc.addingProduct(d, SIMD16<Float>(repeating: halfAt(scales, r * ngroups + g)))
                offset += halfAt(mins, r * ngroups + g) * xsum[g]
                g += 1
            }
            out[r] = acc.sum() + offset
        }
    }

    override func matvecQ8(_ k: UnsafePointer<lmk_kernels>, _ qx: UnsafePointer<Int8>, dx: UnsafePointer<Float>, xsum: UnsafePointer<Float>, rows r0: Int, _ r1: Int, out: UnsafeMutablePointer<Float>) -> Bool {
        let f = bits == 3 ? k.pointee.matvec_q3 : k.pointee.matvec_q2
        f!(q, scales, mins, Int32(r0), Int32(r1), Int32(cols32), Int32(ngroups), Int32(group), qx, dx, xsum, out)
        return true
    }

    override func decodeTile(_ k: UnsafePointer<lmk_kernels>, _ r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>) {
        let f = bits == 3 ? k.pointee.dequant_q3 : k.pointee.dequant_q2
        f!(q, scales, mins, Int32(r0), Int32(r1), Int32(cols), Int32(ngroups), Int32(group), out)
    }

    override func decodeRows(_ r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>) { decodeTile(generic, r0, r1, into: out) }
}
