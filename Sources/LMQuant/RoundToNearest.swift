import Foundation
import LMCore
import LMFormats

/// How a group's range is chosen before rounding.
public enum ClipMethod: String, Sendable, CaseIterable {
    /// The group's own min/max (absmax for symmetric schemes).
    case minmax
    /// Shrink the range by α ∈ {1, 0.99, …, 0.80}; keep the α with the least squared
    /// reconstruction error of the group.
    case mse
}

/// Quantized bytes of one tensor, one buffer per section in scheme order.
public struct QuantizedTensor: Sendable {
    public let scheme: QuantScheme
    public let rows: Int
    public let cols: Int
    public var sections: [(role: String, bytes: [UInt8])]
}

/// Round-to-nearest quantization into the `.lmpk` layouts, and the reference
/// dequantizer every fast kernel is tested against.
public enum RoundToNearest {
    static let alphas: [Float] = (0...20).map { 1 - Float($0) * 0.01 }

    /// Quantizes `values` (`[rows, cols]` row-major). Rows are independent and
    /// processed in parallel chunks; the result does not depend on the thread count.
    public static func quantize(_ values: [Float], rows: Int, cols: Int, scheme: QuantScheme, clip: ClipMethod = .minmax) -> QuantizedTensor {
        precondition(values.count == rows * cols)
        let layout = scheme.sections(rows: rows, cols: cols)
        var bufs = layout.map { [UInt8](repeating: 0, count: $0.bytes) }
        switch scheme.kind {
        case .f32:
            bufs[0].withUnsafeMutableBytes { d in values.withUnsafeBytes { d.copyMemory(from: $0) } }
        case .f16:
            bufs[0].withUnsafeMutableBytes { d in for i in 0..<values.count { d.storeBytes(of: floatToHalf(values[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self) } }
        case .bf16:
            bufs[0].withUnsafeMutableBytes { d in for i in 0..<values.count { d.storeBytes(of: floatToBF16(values[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self) } }
        case .int8, .int4, .int4s:
            let workers = ProcessInfo.processInfo.activeProcessorCount
            let chunk = max(1, (rows + workers * 4 - 1) / (workers * 4))
            let nChunks = (rows + chunk - 1) / chunk
            let raws = layout.map { UnsafeMutableRawPointer.allocate(byteCount: max($0.bytes, 1), alignment: 64) }
            defer { raws.forEach { $0.deallocate() } }
            for (p, l) in zip(raws, layout) { p.initializeMemory(as: UInt8.self, repeating: 0, count: l.bytes) }
            let ptrs = raws.map { UnsafeSendableRaw($0) }
            values.withUnsafeBufferPointer { vp in
                let v = UnsafeSendableFloat(vp.baseAddress!)
                DispatchQueue.concurrentPerform(iterations: nChunks) { c in
                    for r in (c * chunk)..<min(rows, (c + 1) * chunk) {
                        quantizeRow(v.p + r * cols, row: r, cols: cols, scheme: scheme, clip: clip, out: ptrs.map { $0.p })
                    }
                }
            }
            for i in bufs.indices { bufs[i] = Array(UnsafeRawBufferPointer(start: raws[i], count: layout[i].bytes)) }
        }
        return QuantizedTensor(scheme: scheme, rows: rows, cols: cols, sections: zip(layout, bufs).map { ($0.role, $1) })
    }

    /// One row into its slices of the sections.
    static func quantizeRow(_ x: UnsafePointer<Float>, row r: Int, cols: Int, scheme: QuantScheme, clip: ClipMethod, out: [UnsafeMutableRawPointer]) {
        let c32 = QuantScheme.paddedCols(cols)
        let G = scheme.groupSize == 0 ? cols : scheme.groupSize
        let ng = scheme.groups(cols: cols)
        switch scheme.kind {
        case .int8:
            let q = out[0].assumingMemoryBound(to: Int8.self) + r * c32
            for g in 0..<ng {
                let lo = g * G, n = min(G, cols - lo)
                let s = symmetricScale(x + lo, n, qmax: 127, clip: clip, storeHalf: scheme.groupSize > 0)
                if scheme.groupSize == 0 { out[1].storeBytes(of: s.bitPattern.littleEndian, toByteOffset: 4 * r, as: UInt32.self) }
                else { out[1].storeBytes(of: floatToHalf(s).littleEndian, toByteOffset: 2 * (r * ng + g), as: UInt16.self) }
                let inv: Float = s == 0 ? 0 : 1 / s
                for i in 0..<n { q[lo + i] = Int8(max(-127, min(127, (x[lo + i] * inv).rounded(.toNearestOrEven)))) }
            }
        case .int4, .int4s:
            let q = out[0].assumingMemoryBound(to: UInt8.self) + r * (c32 / 2)
            var codes = [UInt8](repeating: scheme.kind == .int4s ? 8 : 0, count: c32)
            for g in 0..<ng {
                let lo = g * G, n = min(G, cols - lo)
                if scheme.kind == .int4s {
                    let s = symmetricScale(x + lo, n, qmax: 7, clip: clip, storeHalf: true)
                    out[1].storeBytes(of: floatToHalf(s).littleEndian, toByteOffset: 2 * (r * ng + g), as: UInt16.self)
                    let inv: Float = s == 0 ? 0 : 1 / s
                    for i in 0..<n { codes[lo + i] = UInt8(max(-8, min(7, (x[lo + i] * inv).rounded(.toNearestOrEven))) + 8) }
                } else {
                    let (s, m) = asymmetricRange(x + lo, n, clip: clip)
                    out[1].storeBytes(of: floatToHalf(s).littleEndian, toByteOffset: 2 * (r * ng + g), as: UInt16.self)
                    out[2].storeBytes(of: floatToHalf(m).littleEndian, toByteOffset: 2 * (r * ng + g), as: UInt16.self)
                    let inv: Float = s == 0 ? 0 : 1 / s
                    for i in 0..<n { codes[lo + i] = UInt8(max(0, min(15, ((x[lo + i] - m) * inv).rounded(.toNearestOrEven)))) }
                }
            }
            // Padding: asymmetric code 0 (activations there are zero), symmetric code 8 (= 0).
            if scheme.kind == .int4 { for i in cols..<c32 { codes[i] = 0 } }
            for b in 0..<(c32 / 32) {
                for j in 0..<16 { q[b * 16 + j] = codes[b * 32 + j] | (codes[b * 32 + 16 + j] << 4) }
            }
        default: break
        }
    }

    /// Scale for a symmetric group (rounded to its storage precision before use).
    static func symmetricScale(_ x: UnsafePointer<Float>, _ n: Int, qmax: Float, clip: ClipMethod, storeHalf: Bool) -> Float {
        var amax: Float = 0
        for i in 0..<n { amax = max(amax, abs(x[i])) }
        if amax == 0 { return 0 }
        func stored(_ s: Float) -> Float { storeHalf ? halfToFloat(floatToHalf(s)) : s }
        guard clip == .mse else { return stored(amax / qmax) }
        var best = stored(amax / qmax), bestErr = Float.infinity
        for a in alphas {
            let s = stored(amax * a / qmax)
            if s == 0 { continue }
            let inv = 1 / s
            var err: Float = 0
            for i in 0..<n {
                let q = max(-qmax - (qmax == 7 ? 1 : 0), min(qmax, (x[i] * inv).rounded(.toNearestOrEven)))
                let d = q * s - x[i]; err += d * d
            }
            if err < bestErr { bestErr = err; best = s }
        }
        return best
    }

    /// (scale, min) for an asymmetric 4-bit group, both rounded to float16 before use.
    static func asymmetricRange(_ x: UnsafePointer<Float>, _ n: Int, clip: ClipMethod) -> (Float, Float) {
        var lo = Float.infinity, hi = -Float.infinity
        for i in 0..<n { lo = min(lo, x[i]); hi = max(hi, x[i]) }
        func params(_ l: Float, _ h: Float) -> (Float, Float) {
            let m = halfToFloat(floatToHalf(l))
            let s = halfToFloat(floatToHalf(max(h - m, 0) / 15))
            return (s, m)
        }
        guard clip == .mse, hi > lo else { return params(lo, hi) }
        var best = params(lo, hi), bestErr = Float.infinity
        let mid = (lo + hi) / 2
        for a in alphas {
            let (s, m) = params(mid - (mid - lo) * a, mid + (hi - mid) * a)
            if s == 0 { continue }
            let inv = 1 / s
            var err: Float = 0
            for i in 0..<n {
                let q = max(0, min(15, ((x[i] - m) * inv).rounded(.toNearestOrEven)))
                let d = q * s + m - x[i]; err += d * d
            }
            if err < bestErr { bestErr = err; best = (s, m) }
        }
        return best
    }

    /// Reference dequantization of `[rows, cols]` from the sections' bytes.
    public static func dequantize(scheme: QuantScheme, rows: Int, cols: Int, sections: [UnsafeRawBufferPointer]) -> [Float] {
        var out = [Float](repeating: 0, count: rows * cols)
        out.withUnsafeMutableBufferPointer { o in
            for r in 0..<rows { dequantizeRow(scheme: scheme, row: r, cols: cols, sections: sections, into: o.baseAddress! + r * cols) }
        }
        return out
    }

    /// Reference dequantization of one row (scalar, formula by formula).
    public static func dequantizeRow(scheme: QuantScheme, row r: Int, cols: Int, sections s: [UnsafeRawBufferPointer], into out: UnsafeMutablePointer<Float>) {
        let c32 = QuantScheme.paddedCols(cols), ng = scheme.groups(cols: cols)
        let G = scheme.groupSize == 0 ? cols : scheme.groupSize
        func f16(_ b: UnsafeRawBufferPointer, _ i: Int) -> Float { halfToFloat(UInt16(littleEndian: b.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
        for c in 0..<cols {
            let g = c / G
            switch scheme.kind {
            case .f32: out[c] = Float(bitPattern: UInt32(littleEndian: s[0].loadUnaligned(fromByteOffset: 4 * (r * cols + c), as: UInt32.self)))
            case .f16: out[c] = f16(s[0], r * cols + c)
            case .bf16: out[c] = bf16ToFloat(UInt16(littleEndian: s[0].loadUnaligned(fromByteOffset: 2 * (r * cols + c), as: UInt16.self)))
            case .int8:
                let q = Float(Int8(bitPattern: s[0][r * c32 + c]))
                let sc = scheme.groupSize == 0 ? Float(bitPattern: UInt32(littleEndian: s[1].loadUnaligned(fromByteOffset: 4 * r, as: UInt32.self))) : f16(s[1], r * ng + g)
                out[c] = sc * q
            case .int4, .int4s:
                let byte = s[0][r * (c32 / 2) + (c / 32) * 16 + (c % 32) % 16]
                let code = Float((c % 32) < 16 ? byte & 0xF : byte >> 4)
                out[c] = scheme.kind == .int4 ? f16(s[1], r * ng + g) * code + f16(s[2], r * ng + g) : f16(s[1], r * ng + g) * (code - 8)
            }
        }
    }
}

struct UnsafeSendableRaw: @unchecked Sendable { let p: UnsafeMutableRawPointer; init(_ p: UnsafeMutableRawPointer) { self.p = p } }
struct UnsafeSendableFloat: @unchecked Sendable { let p: UnsafePointer<Float>; init(_ p: UnsafePointer<Float>) { self.p = p } }
