import Foundation
import LMCore

/// A metadata value in a GGUF file.
public indirect enum GGUFValue: Sendable {
    case uint(UInt64), int(Int64), float(Double), bool(Bool), string(String), array([GGUFValue])

    public var int: Int? {
        switch self { case let .uint(u): return Int(exactly: u); case let .int(i): return Int(exactly: i); default: return nil }
    }
    public var double: Double? {
        switch self { case let .float(f): return f; case let .uint(u): return Double(u); case let .int(i): return Double(i); default: return nil }
    }
    public var string: String? { if case let .string(s) = self { return s }; return nil }
    public var bool: Bool? { if case let .bool(b) = self { return b }; return nil }
    public var array: [GGUFValue]? { if case let .array(a) = self { return a }; return nil }
}

/// ggml tensor types this reader can dequantize.
public enum GGMLType: UInt32, Sendable {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q8_0 = 8, q4_K = 12, q6_K = 14, bf16 = 30

    /// Elements per block and bytes per block.
    public var block: (elements: Int, bytes: Int) {
        switch self {
        case .f32: return (1, 4)
        case .f16, .bf16: return (1, 2)
        case .q4_0: return (32, 18)
        case .q4_1: return (32, 20)
        case .q8_0: return (32, 34)
        case .q4_K: return (256, 144)
        case .q6_K: return (256, 210)
        }
    }
    public var name: String {
        switch self {
        case .f32: return "F32"; case .f16: return "F16"; case .bf16: return "BF16"; case .q4_0: return "Q4_0"
        case .q4_1: return "Q4_1"; case .q8_0: return "Q8_0"; case .q4_K: return "Q4_K"; case .q6_K: return "Q6_K"
        }
    }
}

/// GGUF structural errors, naming the file and tensor or key.
public struct GGUFError: Error, CustomStringConvertible {
    public let file: String
    public let reason: String
    public var description: String { "\(file): \(reason)" }
}

/// A tensor in a GGUF file. `dims` are in ggml order (innermost first).
public struct GGUFTensor: @unchecked Sendable {
    public let name: String
    public let type: GGMLType
    public let dims: [Int]
    public let bytes: UnsafeRawBufferPointer
    /// Shape in PyTorch order (outermost first).
    public var shape: [Int] { dims.reversed() }
    public var count: Int { dims.reduce(1, *) }

    /// Dequantizes the whole tensor to Float (reference implementation, one block at a time).
    public func dequantize() -> [Float] {
        var out = [Float](repeating: 0, count: count)
        out.withUnsafeMutableBufferPointer { GGUFDequant.dequantize(type: type, src: bytes, dst: $0) }
        return out
    }
}

/// A GGUF (v2/v3) file, memory-mapped, with every offset and size validated.
public final class GGUFFile: @unchecked Sendable {
    public let path: String
    public let version: UInt32
    public let metadata: [String: GGUFValue]
    public let metadataKeys: [String]
    public let tensors: [GGUFTensor]
    let mapping: MappedFile
    private let byName: [String: Int]

    public init(path: String) throws {
        self.path = path
        let m = try MappedFile(path: path)
        mapping = m
        var r = ByteReader(m.bytes, source: path)
        func fail(_ s: String) -> GGUFError { GGUFError(file: path, reason: s) }
        guard m.bytes.count >= 4 else { throw fail("not a GGUF file (too small)") }
        let magic = try r.read(UInt32.self, "magic")
        guard magic == 0x4655_4747 else { throw fail("not a GGUF file (bad magic)") }
        version = try r.read(UInt32.self, "version")
        guard version == 2 || version == 3 else { throw fail("GGUF version \(version) is not supported (2 and 3 are)") }
        let nTensors = try r.read(UInt64.self, "tensor count")
        let nKV = try r.read(UInt64.self, "metadata count")
        // Each entry takes at least 8+4 bytes; anything larger than the file is corrupt.
        guard nTensors < UInt64(m.bytes.count / 8), nKV < UInt64(m.bytes.count / 8) else { throw fail("tensor/metadata counts exceed the file size (corrupt header)") }
        func readString(_ what: String) throws -> String {
            let n = try r.read(UInt64.self, what + " length")
            guard n <= UInt64(r.remaining) else { throw fail("truncated: \(what) of \(n) bytes at offset \(r.offset)") }
            let b = try r.readBytes(Int(n), what)
            return String(decoding: b, as: UTF8.self)
        }
        func readValue(_ type: UInt32, _ key: String, depth: Int) throws -> GGUFValue {
            switch type {
            case 0: return .uint(UInt64(try r.read(UInt8.self, key)))
            case 1: return .int(Int64(try r.read(Int8.self, key)))
            case 2: return .uint(UInt64(try r.read(UInt16.self, key)))
            case 3: return .int(Int64(try r.read(Int16.self, key)))
            case 4: return .uint(UInt64(try r.read(UInt32.self, key)))
            case 5: return .int(Int64(try r.read(Int32.self, key)))
            case 6: return .float(Double(try r.readFloat(key)))
            case 7: return .bool(try r.read(UInt8.self, key) != 0)
            case 8: return .string(try readString(key))
            case 9:
                guard depth < 4 else { throw fail("metadata '\(key)': arrays nested too deeply") }
                let et = try r.read(UInt32.self, key)
                let n = try r.read(UInt64.self, key)
                guard n <= UInt64(r.remaining) else { throw fail("metadata '\(key)': array of \(n) elements exceeds the file") }
                var a: [GGUFValue] = []
                a.reserveCapacity(Int(n))
                for _ in 0..<Int(n) { a.append(try readValue(et, key, depth: depth + 1)) }
                return .array(a)
            case 10: return .uint(try r.read(UInt64.self, key))
            case 11: return .int(try r.read(Int64.self, key))
            case 12: return .float(try r.readDouble(key))
            default: throw fail("metadata '\(key)': unknown value type \(type)")
            }
        }
        var meta: [String: GGUFValue] = [:]
        var keys: [String] = []
        for _ in 0..<Int(nKV) {
            let k = try readString("metadata key")
            let t = try r.read(UInt32.self, k)
            meta[k] = try readValue(t, k, depth: 0)
            keys.append(k)
        }
        metadata = meta
        metadataKeys = keys
        struct Info { let name: String; let type: GGMLType; let dims: [Int]; let offset: Int }
        var infos: [Info] = []
        for _ in 0..<Int(nTensors) {
            let name = try readString("tensor name")
            let nd = try r.read(UInt32.self, "\(name) dims")
            guard nd >= 1 && nd <= 4 else { throw fail("tensor '\(name)': \(nd) dimensions (1–4 supported)") }
            var dims: [Int] = []
            for _ in 0..<nd {
                let d = try r.read(UInt64.self, "\(name) dim")
                guard d > 0 && d < (1 << 40) else { throw fail("tensor '\(name)': bad dimension \(d)") }
                dims.append(Int(d))
            }
            let traw = try r.read(UInt32.self, "\(name) type")
            guard let type = GGMLType(rawValue: traw) else {
                throw fail("tensor '\(name)': ggml type \(traw) is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K are)")
            }
            let off = try r.read(UInt64.self, "\(name) offset")
            guard off < UInt64(m.bytes.count) else { throw fail("tensor '\(name)': offset \(off) is beyond the file") }
            infos.append(Info(name: name, type: type, dims: dims, offset: Int(off)))
        }
        let alignment = meta["general.alignment"]?.int ?? 32
        guard alignment > 0 && alignment & (alignment - 1) == 0 else { throw fail("general.alignment \(alignment) is not a power of two") }
        let dataStart = (r.offset + alignment - 1) / alignment * alignment
        var ts: [GGUFTensor] = []
        var idx: [String: Int] = [:]
        var ranges: [(Int, Int, String)] = []
        for i in infos {
            guard let count = Checked.product(i.dims) else { throw fail("tensor '\(i.name)': element count overflows") }
            let (be, bb) = i.type.block
            guard i.dims[0] % be == 0 else { throw fail("tensor '\(i.name)': row of \(i.dims[0]) is not a multiple of the \(i.type.name) block (\(be))") }
            guard let nbytes = Checked.mul(count / be, bb) else { throw fail("tensor '\(i.name)': byte size overflows (\(i.dims) of \(i.type.name))") }
            guard i.offset % alignment == 0 else { throw fail("tensor '\(i.name)': offset \(i.offset) is not aligned to \(alignment)") }
            guard let begin = Checked.add(dataStart, i.offset), let end = Checked.add(begin, nbytes), end <= m.bytes.count else {
                throw fail("tensor '\(i.name)': data (\(nbytes) bytes at \(i.offset)) extends beyond the end of the file (truncated?)")
            }
            guard idx[i.name] == nil else { throw fail("tensor '\(i.name)' appears twice") }
            idx[i.name] = ts.count
            ranges.append((begin, end, i.name))
            ts.append(GGUFTensor(name: i.name, type: i.type, dims: i.dims, bytes: UnsafeRawBufferPointer(rebasing: m.bytes[begin..<end])))
        }
        ranges.sort { $0.0 < $1.0 }
        for k in ranges.indices.dropFirst() where ranges[k].0 < ranges[k - 1].1 {
            throw fail("tensor '\(ranges[k].2)' overlaps tensor '\(ranges[k - 1].2)'")
        }
        tensors = ts
        byName = idx
    }

    public subscript(name: String) -> GGUFTensor? { byName[name].map { tensors[$0] } }
}

/// Reference dequantizers for ggml block formats (layouts from ggml's `block_*` structs).
public enum GGUFDequant {
    public static func dequantize(type: GGMLType, src: UnsafeRawBufferPointer, dst: UnsafeMutableBufferPointer<Float>) {
        let (be, bb) = type.block
        let nBlocks = dst.count / be
        precondition(src.count >= nBlocks * bb)
        @inline(__always) func half(_ o: Int) -> Float { halfToFloat(src.loadUnaligned(fromByteOffset: o, as: UInt16.self)) }
        switch type {
        case .f32, .f16, .bf16:
            convertToFloat(src, dtype: type == .f32 ? .f32 : type == .f16 ? .f16 : .bf16, into: dst)
        case .q8_0:
            for b in 0..<nBlocks {
                let o = b * bb, d = half(o)
                for j in 0..<32 { dst[b * 32 + j] = d * Float(Int8(bitPattern: src[o + 2 + j])) }
            }
        case .q4_0, .q4_1:
            for b in 0..<nBlocks {
                let o = b * bb, d = half(o)
                let m: Float = type == .q4_1 ? half(o + 2) : 0
                let q = o + (type == .q4_1 ? 4 : 2)
                let shift: Float = type == .q4_0 ? -8 : 0
                for j in 0..<16 {
                    let byte = src[q + j]
                    dst[b * 32 + j] = (Float(byte & 0xF) + shift) * d + m
                    dst[b * 32 + j + 16] = (Float(byte >> 4) + shift) * d + m
                }
            }
        case .q4_K:
            for b in 0..<nBlocks {
                let o = b * bb, d = half(o), dmin = half(o + 2)
                let sc = o + 4, qs = o + 16
                func scaleMin(_ j: Int) -> (Float, Float) {
                    if j < 4 { return (Float(src[sc + j] & 63), Float(src[sc + j + 4] & 63)) }
                    let s = (src[sc + j + 4] & 0xF) | ((src[sc + j - 4] >> 6) << 4)
                    let mm = (src[sc + j + 4] >> 4) | ((src[sc + j] >> 6) << 4)
                    return (Float(s), Float(mm))
                }
                var y = b * 256, q = qs, isc = 0
                for _ in 0..<4 {
                    let (s1, m1) = scaleMin(isc), (s2, m2) = scaleMin(isc + 1)
                    let d1 = d * s1, mm1 = dmin * m1, d2 = d * s2, mm2 = dmin * m2
                    for l in 0..<32 { dst[y + l] = d1 * Float(src[q + l] & 0xF) - mm1 }
                    for l in 0..<32 { dst[y + 32 + l] = d2 * Float(src[q + l] >> 4) - mm2 }
                    y += 64; q += 32; isc += 2
                }
            }
        case .q6_K:
            for b in 0..<nBlocks {
                let o = b * bb
                var ql = o, qh = o + 128, sc = o + 192
                let d = half(o + 208)
                var y = b * 256
                for _ in 0..<2 {
                    for l in 0..<32 {
                        let isx = l / 16
                        let q1 = Int(Int8(bitPattern: (src[ql + l] & 0xF) | (((src[qh + l] >> 0) & 3) << 4))) - 32
                        let q2 = Int(Int8(bitPattern: (src[ql + l + 32] & 0xF) | (((src[qh + l] >> 2) & 3) << 4))) - 32
                        let q3 = Int(Int8(bitPattern: (src[ql + l] >> 4) | (((src[qh + l] >> 4) & 3) << 4))) - 32
                        let q4 = Int(Int8(bitPattern: (src[ql + l + 32] >> 4) | (((src[qh + l] >> 6) & 3) << 4))) - 32
                        func s(_ k: Int) -> Float { Float(Int8(bitPattern: src[sc + k])) }
                        dst[y + l] = d * s(isx) * Float(q1)
                        dst[y + l + 32] = d * s(isx + 2) * Float(q2)
                        dst[y + l + 64] = d * s(isx + 4) * Float(q3)
                        dst[y + l + 96] = d * s(isx + 6) * Float(q4)
                    }
                    y += 128; ql += 64; qh += 32; sc += 8
                }
            }
        }
    }
}
