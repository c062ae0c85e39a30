import Foundation
import LMCore
import LMFormats

/// Quantized bytes of one tensor, one buffer per section in scheme order.
public struct QuantizedTensor: Sendable {
    public let scheme: QuantScheme
    public let rows: Int
    public let cols: Int
    public var sections: [(role: String, bytes: [UInt8])]

    /// The values these bytes decode to (the reference decoder), `[rows, cols]` row-major.
    public func dequantized() -> [Float] {
        sections.map { $0.bytes }.withUnsafeBufferPointers { RoundToNearest.dequantize(scheme: scheme, rows: rows, cols: cols, sections: $0) }
    }
}

/// Round-to-nearest quantization into the `.lmpk` layouts, and the reference
/// dequantizer every fast kernel is tested against: both drive the scheme's codec
/// (`SchemeCodec.encodeRow` / `decodeRow`) over the rows.
public enum RoundToNearest {
    /// Quantizes `values` (`[rows, cols]` row-major). Rows are independent and
    /// processed in parallel chunks; the result does not depend on the thread count.
    /// `importance` (`cols` non-negative weights, e.g. the inputs' mean squares): each
    /// group's range by the importance-weighted search (`weightedParameters`) instead of
    /// `clip`; ignored by float schemes.
    /// `keep` (a pruning mask, `[rows, cols]`, `true` = kept): for a compressed N:M scheme,
    /// the stored mask is the pruner's (`NMCodec.keptMask`); ignored by dense schemes.
    public static func quantize(_ values: [Float], rows: Int, cols: Int, scheme: QuantScheme, clip: ClipMethod = .minmax,
                                importance: [Float]? = nil, keep: [Bool]? = nil) -> QuantizedTensor {
        precondition(values.count == rows * cols)
        precondition(keep == nil || keep!.count == rows * cols)
        let nm = keep != nil ? scheme.codec as? NMCodec : nil
        let keepFlags = keep ?? []
        precondition(importance == nil || importance!.count == cols)
        let codec = scheme.codec
        let weighted = importance != nil ? codec as? any ImportanceWeightedCodec : nil
        let imp = importance ?? []
        let layout = scheme.sections(rows: rows, cols: cols)
        let workers = ProcessInfo.processInfo.activeProcessorCount
        let chunk = max(1, (rows + workers * 4 - 1) / (workers * 4))
        let nChunks = (rows + chunk - 1) / chunk
        let raws = layout.map { UnsafeMutableRawPointer.allocate(byteCount: max($0.bytes, 1), alignment: 64) }
        defer { raws.forEach { $0.deallocate() } }
        for (p, l) in zip(raws, layout) { p.initializeMemory(as: UInt8.self, repeating: 0, count: l.bytes) }
        let ptrs = raws.map { UnsafeSendableRaw($0) }
        values.withUnsafeBufferPointer { vp in
            imp.withUnsafeBufferPointer { ip in
            keepFlags.withUnsafeBufferPointer { kp in
                let v = UnsafeSendableFloat(vp.baseAddress!), w = ip.baseAddress.map { UnsafeSendableFloat($0) }
                let kf = kp.baseAddress.map { UnsafeSendableBool($0) }
                DispatchQueue.concurrentPerform(iterations: nChunks) { c in
                    for r in (c * chunk)..<min(rows, (c + 1) * chunk) {
                        if let nm, let kf {
                            if let w, importance != nil {
                                nm.encodeRow(v.p + r * cols, row: r, cols: cols, scheme: scheme, importance: w.p, keep: kf.p + r * cols, out: ptrs.map { $0.p })
                            } else {
                                nm.encodeRow(v.p + r * cols, row: r, cols: cols, scheme: scheme, clip: clip, keep: kf.p + r * cols, out: ptrs.map { $0.p })
                            }
                        } else if let weighted, let w {
                            weighted.encodeRow(v.p + r * cols, row: r, cols: cols, scheme: scheme, importance: w.p, out: ptrs.map { $0.p })
                        } else {
                            codec.encodeRow(v.p + r * cols, row: r, cols: cols, scheme: scheme, clip: clip, out: ptrs.map { $0.p })
                        }
                    }
                }
            }
            }
        }
        let bufs = layout.indices.map { Array(UnsafeRawBufferPointer(start: raws[$0], count: layout[$0].bytes)) }
        return QuantizedTensor(scheme: scheme, rows: rows, cols: cols, sections: zip(layout, bufs).map { ($0.role, $1) })
    }

    /// Reference dequantization of `[rows, cols]` from the sections' bytes.
    public static func dequantize(scheme: QuantScheme, rows: Int, cols: Int, sections: [UnsafeRawBufferPointer]) -> [Float] {
        var out = [Float](repeating: 0, count: rows * cols)
        out.withUnsafeMutableBufferPointer { o in
            for r in 0..<rows { dequantizeRow(scheme: scheme, row: r, cols: cols, sections: sections, into: o.baseAddress! + r * cols) }
        }
        return out
    }

    /// Reference dequantization of one row (the codec's scalar decoder).
    public static func dequantizeRow(scheme: QuantScheme, row r: Int, cols: Int, sections s: [UnsafeRawBufferPointer], into out: UnsafeMutablePointer<Float>) {
        scheme.codec.decodeRow(row: r, cols: cols, scheme: scheme, sections: s, into: out)
    }
}

/// A tensor a scheme cannot store (e.g. a range beyond its float16 scales).
public struct QuantizeError: Error, CustomStringConvertible {
    public let tensor: String, reason: String
    public var description: String { "tensor '\(tensor)': \(reason)" }
}

extension RoundToNearest {
    /// Largest |value| for which no float16 field of any scheme can overflow (a scale is
    /// at most 2·amax per level, a min at most amax): below it the check is skipped.
    static let float16SafeMagnitude: Float = 4096

    /// Throws when `q` decodes to a non-finite value although `values` were finite: a
    /// float16 scale, min or value overflowed (65504). Checked only for tensors whose
    /// magnitude could overflow, with the reference decoder.
    public static func checkRepresentable(_ q: QuantizedTensor, values: [Float], tensor: String) throws {
        var amax: Float = 0
        for x in values { amax = max(amax, abs(x)) }
        guard amax > float16SafeMagnitude else { return }
        let back = q.sections.map { $0.bytes }
        let decoded: [Float] = back.withUnsafeBufferPointers { dequantize(scheme: q.scheme, rows: q.rows, cols: q.cols, sections: $0) }
        if let bad = decoded.firstIndex(where: { !$0.isFinite }) {
            throw QuantizeError(tensor: tensor, reason: "values up to \(amax) overflow the float16 fields of scheme \(q.scheme.name) (row \(bad / max(q.cols, 1)), column \(bad % max(q.cols, 1)) decodes to \(decoded[bad])); store this tensor as int8 (per-channel float32 scales), bf16 or f32, e.g. --override '\(NSRegularExpression.escapedPattern(for: tensor))=bf16'")
        }
    }
}

extension Array where Element == [UInt8] {
    /// Calls `body` with raw views of every buffer.
    func withUnsafeBufferPointers<R>(_ body: ([UnsafeRawBufferPointer]) throws -> R) rethrows -> R {
        var ptrs: [UnsafeRawBufferPointer] = []
        func go(_ i: Int) throws -> R {
            if i == count { return try body(ptrs) }
            return try self[i].withUnsafeBytes { p in ptrs.append(p); return try go(i + 1) }
        }
        return try go(0)
    }
}

struct UnsafeSendableRaw: @unchecked Sendable { let p: UnsafeMutableRawPointer; init(_ p: UnsafeMutableRawPointer) { self.p = p } }
struct UnsafeSendableBool: @unchecked Sendable { let p: UnsafePointer<Bool>; init(_ p: UnsafePointer<Bool>) { self.p = p } }
struct UnsafeSendableFloat: @unchecked Sendable { let p: UnsafePointer<Float>; init(_ p: UnsafePointer<Float>) { self.p = p } }
