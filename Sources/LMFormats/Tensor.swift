import LMCore

/// A read-only view of one stored tensor: its dtype, shape and bytes, borrowed
/// from a mapping (zero copy). `owner` keeps the mapping alive.
public struct TensorView: @unchecked Sendable {
    public let name: String
    public let dtype: DType
    /// Row-major shape, outermost first (PyTorch / safetensors order).
    public let shape: [Int]
    public let bytes: UnsafeRawBufferPointer
    public let owner: AnyObject

    public init(name: String, dtype: DType, shape: [Int], bytes: UnsafeRawBufferPointer, owner: AnyObject) {
        self.name = name; self.dtype = dtype; self.shape = shape; self.bytes = bytes; self.owner = owner
    }

    public var count: Int { shape.reduce(1, *) }

    /// Drops this tensor's resident pages when it is backed by a file mapping.
    public func releasePages() { (owner as? MappedFile)?.release(bytes) }

    /// Copies/converts the elements to Float (F32, F16, BF16 only).
    public func toFloat() throws -> [Float] {
        guard dtype == .f32 || dtype == .f16 || dtype == .bf16 else {
            throw ModelError.unsupportedDType(tensor: name, dtype: dtype.rawValue, expected: "F32, F16 or BF16")
        }
        var out = [Float](repeating: 0, count: count)
        out.withUnsafeMutableBufferPointer { convertToFloat(bytes, dtype: dtype, into: $0) }
        return out
    }

    /// Reads an integer tensor (I32/I64/U8/I8/I16/U16/U32) as [Int].
    public func toInts() throws -> [Int] {
        let n = count
        switch dtype {
        case .i32: return (0..<n).map { Int(Int32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self))) }
        case .u32: return (0..<n).map { Int(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) }
        case .i64: return (0..<n).map { Int(Int64(littleEndian: bytes.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self))) }
        case .i16: return (0..<n).map { Int(Int16(littleEndian: bytes.loadUnaligned(fromByteOffset: 2 * $0, as: Int16.self))) }
        case .u16: return (0..<n).map { Int(UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self))) }
        case .i8: return (0..<n).map { Int(Int8(bitPattern: bytes[$0])) }
        case .u8: return (0..<n).map { Int(bytes[$0]) }
        default: throw ModelError.unsupportedDType(tensor: name, dtype: dtype.rawValue, expected: "an integer type")
        }
    }
}

/// Errors about a model's contents (as opposed to a file's structure).
public enum ModelError: Error, CustomStringConvertible {
    case unsupportedDType(tensor: String, dtype: String, expected: String)
    case missingTensor(String, source: String)
    case shapeMismatch(tensor: String, expected: [Int], found: [Int])
    case unsupportedArchitecture(String, source: String)
    case badConfig(key: String, reason: String, source: String)
    case missingFile(String, hint: String)
    case nonFinite(tensor: String, index: Int, value: Float)

    public var description: String {
        switch self {
        case let .unsupportedDType(t, d, e): return "tensor '\(t)': dtype \(d) is not supported here (expected \(e))"
        case let .missingTensor(t, s): return "\(s): tensor '\(t)' is missing"
        case let .shapeMismatch(t, e, f): return "tensor '\(t)': expected shape \(e), found \(f)"
        case let .unsupportedArchitecture(a, s):
            return "\(s): architecture '\(a)' is not supported; supported: \(ModelConfig.supportedArchitectures.joined(separator: ", "))"
        case let .badConfig(k, r, s): return "\(s): config key '\(k)': \(r)"
        case let .missingFile(f, h): return "\(f) not found: \(h)"
        case let .nonFinite(t, i, v): return "tensor '\(t)': element \(i) is \(v); NaN/Inf weights are refused"
        }
    }
}
