import CKernels
import Foundation
import LMCore

/// `int4-gG` (asymmetric: `value = s · q + m`, float16 scale and minimum per group) and
/// `int4s-gG` (symmetric: `value = s · (q − 8)`, float16 scale per group, `s` from the
/// group's signed extreme as ggml's Q4_0, so all 16 codes are used); codes 0…15,
/// two per byte in ggml's order (per 32 columns: low nibbles = columns 0…15, high
/// nibbles = 16…31), rows padded to 32 columns.
public struct Int4Codec: IntegerSchemeCodec, SliceableSchemeCodec {
    public let symmetric: Bool
    public init(symmetric: Bool) { self.symmetric = symmetric }
    public var family: String { symmetric ? "int4s" : "int4" }
    public var names: [String] { QuantScheme.supportedGroupSizes.map { "\(family)-g\($0)" } }
    public var codeRange: ClosedRange<Int32> { 0...15 }
    /// Padding: asymmetric code 0, symmetric code 8 (= 0).
    public var paddingCode: Int32 { symmetric ? 8 : 0 }

    public func groupSize(named: Int?, defaultGroup: Int?, name: String) throws -> Int {
        try groupWiseSize(named: named, defaultGroup: defaultGroup, name: name)
    }

    public func sections(rows: Int, cols: Int, groupSize: Int) -> [(role: String, bytes: Int)] {
        let ng = (cols + groupSize - 1) / groupSize, c32 = QuantScheme.paddedCols(cols)
        return symmetric ? [("q", rows * c32 / 2), ("scales", rows * ng * 2)]
            : [("q", rows * c32 / 2), ("scales", rows * ng * 2), ("mins", rows * ng * 2)]
    }

    public func columnUnit(groupSize: Int) -> Int { max(32, groupSize) }
    public func columnLayout(cols: Int, lo: Int, hi: Int, groupSize g: Int) -> [SectionColumns] {
        let q = SectionColumns(stride: QuantScheme.paddedCols(cols) / 2, start: lo / 2, count: QuantScheme.paddedCols(hi - lo) / 2)
        let p = SectionColumns(stride: 2 * ((cols + g - 1) / g), start: 2 * (lo / g), count: 2 * ((hi - lo + g - 1) / g))
        return symmetric ? [q, p] : [q, p, p]
    }

    public func chooseParameters(_ x: UnsafePointer<Float>, count: Int, clip: ClipMethod, scheme: QuantScheme) -> GroupParameters {
        if symmetric {
            let s = signedExtremeScale(x, count, clip: clip)
            return GroupParameters(scale: s, min: -8 * s)
        }
        let (s, m) = asymmetricRange(x, count, levels: 15, clip: clip)
        return GroupParameters(scale: s, min: m)
    }

    public var zeroCode: Int32? { symmetric ? 8 : nil }
    public func stored(_ p: GroupParameters, scheme: QuantScheme) -> GroupParameters {
        let s = halfToFloat(floatToHalf(p.scale))
        return symmetric ? GroupParameters(scale: s, min: -8 * s) : GroupParameters(scale: s, min: halfToFloat(floatToHalf(p.min)))
    }

    public func chooseCodes(_ x: UnsafePointer<Float>, count: Int, parameters p: GroupParameters, into codes: UnsafeMutablePointer<Int32>) {
        let inv: Float = p.scale == 0 ? 0 : 1 / p.scale
        if symmetric {
            for i in 0..<count { codes[i] = Int32(max(-8, min(7, (x[i] * inv).rounded(.toNearestOrEven)))) + 8 }
        } else {
            for i in 0..<count { codes[i] = Int32(max(0, min(15, ((x[i] - p.min) * inv).rounded(.toNearestOrEven)))) }
        }
    }

    public func pack(codes: UnsafePointer<Int32>, parameters: [GroupParameters], row r: Int, cols: Int, scheme: QuantScheme, out: [UnsafeMutableRawPointer]) {
        let c32 = QuantScheme.paddedCols(cols), ng = parameters.count
        let q = out[0].assumingMemoryBound(to: UInt8.self) + r * (c32 / 2)
        func code(_ c: Int) -> UInt8 { UInt8(c < cols ? codes[c] : paddingCode) }
        for b in 0..<(c32 / 32) {
            for j in 0..<16 { q[b * 16 + j] = code(b * 32 + j) | (code(b * 32 + 16 + j) << 4) }
        }
        for (g, p) in parameters.enumerated() {
            out[1].storeBytes(of: floatToHalf(p.scale).littleEndian, toByteOffset: 2 * (r * ng + g), as: UInt16.self)
            if !symmetric { out[2].storeBytes(of: floatToHalf(p.min).littleEndian, toByteOffset: 2 * (r * ng + g), as: UInt16.self) }
        }
    }

    public func value(code: Int32, _ p: GroupParameters) -> Float {
        symmetric ? p.scale * Float(code - 8) : p.scale * Float(code) + p.min
    }

    public func decodeRow(row r: Int, cols: Int, scheme: QuantScheme, sections s: [UnsafeRawBufferPointer], into out: UnsafeMutablePointer<Float>) {
        let c32 = QuantScheme.paddedCols(cols), ng = scheme.groups(cols: cols), G = scheme.groupSize
        for c in 0..<cols {
            let g = c / G
            let byte = s[0][r * (c32 / 2) + (c / 32) * 16 + (c % 32) % 16]
            let code = Float((c % 32) < 16 ? byte & 0xF : byte >> 4)
            out[c] = symmetric ? f16At(s[1], r * ng + g) * (code - 8) : f16At(s[1], r * ng + g) * code + f16At(s[2], r * ng + g)
        }
    }

    public func makeLinear(_ t: PackedTensor, owner: AnyObject) -> LinearWeight { Int4Linear(t, owner: owner) }
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

