import CKernels
import Foundation
import LMCore

/// `int8` (one float32 scale per output channel) and `int8-gG` (one float16 scale per
/// group of G inputs): symmetric, `value = s · q`, codes in [−127, 127]. Rows are
/// `cols32` bytes (zero padding); scales `[rows]` f32 or `[rows, groups]` f16.
public struct Int8Codec: IntegerSchemeCodec, SliceableSchemeCodec {
    public init() {}
    public var family: String { "int8" }
    public var names: [String] { ["int8"] + QuantScheme.supportedGroupSizes.map { "int8-g\($0)" } }
    public var codeRange: ClosedRange<Int32> { -127...127 }
    public var paddingCode: Int32 { 0 }

    public func groupSize(named: Int?, defaultGroup: Int?, name: String) throws -> Int {
        let g = named ?? defaultGroup ?? 0
        guard g == 0 || QuantScheme.supportedGroupSizes.contains(g) else {
            throw QuantSchemeError("scheme '\(name)': group size \(g) is not supported (32, 64, 128, or none for per-channel)")
        }
        return g
    }

    public func sections(rows: Int, cols: Int, groupSize: Int) -> [(role: String, bytes: Int)] {
        let ng = groupSize > 0 ? (cols + groupSize - 1) / groupSize : 1
        return [("q", rows * QuantScheme.paddedCols(cols)), ("scales", groupSize == 0 ? rows * 4 : rows * ng * 2)]
    }

    public func columnUnit(groupSize: Int) -> Int { max(32, groupSize) }
    public func columnLayout(cols: Int, lo: Int, hi: Int, groupSize g: Int) -> [SectionColumns] {
        let q = SectionColumns(stride: QuantScheme.paddedCols(cols), start: lo, count: QuantScheme.paddedCols(hi - lo))
        if g == 0 { return [q, SectionColumns(stride: 4, start: 0, count: 4)] }
        return [q, SectionColumns(stride: 2 * ((cols + g - 1) / g), start: 2 * (lo / g), count: 2 * ((hi - lo + g - 1) / g))]
    }

    public func chooseParameters(_ x: UnsafePointer<Float>, count: Int, clip: ClipMethod, scheme: QuantScheme) -> GroupParameters {
        GroupParameters(scale: symmetricScale(x, count, qmax: 127, clip: clip, storeHalf: scheme.groupSize > 0))
    }

    public var zeroCode: Int32? { 0 }
    public func stored(_ p: GroupParameters, scheme: QuantScheme) -> GroupParameters {
        GroupParameters(scale: scheme.groupSize > 0 ? halfToFloat(floatToHalf(p.scale)) : p.scale)
    }

    public func chooseCodes(_ x: UnsafePointer<Float>, count: Int, parameters p: GroupParameters, into codes: UnsafeMutablePointer<Int32>) {
        let inv: Float = p.scale == 0 ? 0 : 1 / p.scale
        for i in 0..<count { codes[i] = Int32(max(-127, min(127, (x[i] * inv).rounded(.toNearestOrEven)))) }
    }

    public func pack(codes: UnsafePointer<Int32>, parameters: [GroupParameters], row r: Int, cols: Int, scheme: QuantScheme, out: [UnsafeMutableRawPointer]) {
        let c32 = QuantScheme.paddedCols(cols)
        let q = out[0].assumingMemoryBound(to: Int8.self) + r * c32
        for c in 0..<cols { q[c] = Int8(codes[c]) }
        for c in cols..<c32 { q[c] = Int8(paddingCode) }
        if scheme.groupSize == 0 { out[1].storeBytes(of: parameters[0].scale.bitPattern.littleEndian, toByteOffset: 4 * r, as: UInt32.self) }
        else { for (g, p) in parameters.enumerated() { out[1].storeBytes(of: floatToHalf(p.scale).littleEndian, toByteOffset: 2 * (r * parameters.count + g), as: UInt16.self) } }
    }

    public func value(code: Int32, _ p: GroupParameters) -> Float { p.scale * Float(code) }

    public func decodeRow(row r: Int, cols: Int, scheme: QuantScheme, sections s: [UnsafeRawBufferPointer], into out: UnsafeMutablePointer<Float>) {
        let c32 = QuantScheme.paddedCols(cols), ng = scheme.groups(cols: cols)
        let G = scheme.groupSize == 0 ? cols : scheme.groupSize
        for c in 0..<cols {
            let q = Float(Int8(bitPattern: s[0][r * c32 + c]))
            let sc = scheme.groupSize == 0 ? Float(bitPattern: UInt32(littleEndian: s[1].loadUnaligned(fromByteOffset: 4 * r, as: UInt32.self))) : f16At(s[1], r * ng + c / G)
            out[c] = sc * q
        }
    }

    public func makeLinear(_ t: PackedTensor, owner: AnyObject) -> LinearWeight { Int8Linear(t, owner: owner) }
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

