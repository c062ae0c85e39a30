/// Element types of stored tensors.
public enum DType: String, Sendable, CaseIterable {
    case f32 = "F32", f16 = "F16", bf16 = "BF16", f64 = "F64"
    case i8 = "I8", u8 = "U8", i16 = "I16", u16 = "U16", i32 = "I32", u32 = "U32", i64 = "I64", u64 = "U64"
    case bool = "BOOL"

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .i8, .u8, .bool: return 1
        case .f16, .bf16, .i16, .u16: return 2
        case .f32, .i32, .u32: return 4
        case .f64, .i64, .u64: return 8
        }
    }
    public var isFloat: Bool { self == .f32 || self == .f16 || self == .bf16 || self == .f64 }
}

/// Converts IEEE half-precision bits to Float.
@inline(__always) public func halfToFloat(_ h: UInt16) -> Float { Float(Float16(bitPattern: h)) }
/// Converts Float to IEEE half-precision bits (round to nearest even).
@inline(__always) public func floatToHalf(_ f: Float) -> UInt16 { Float16(f).bitPattern }
/// Converts bfloat16 bits to Float (exact).
@inline(__always) public func bf16ToFloat(_ h: UInt16) -> Float { Float(bitPattern: UInt32(h) << 16) }
/// Converts Float to bfloat16 bits, rounding to nearest even (NaN stays NaN).
@inline(__always) public func floatToBF16(_ f: Float) -> UInt16 {
    let b = f.bitPattern
    if f.isNaN { return UInt16(b >> 16) | 0x40 }
    let rounding: UInt32 = 0x7FFF + ((b >> 16) & 1)
    return UInt16((b &+ rounding) >> 16)
}

/// Overflow-checked arithmetic helpers for sizes read from untrusted files.
public enum Checked {
    /// Product of `values`, or nil on overflow or a negative factor.
    public static func product(_ values: [Int]) -> Int? {
        var p = 1
        for v in values {
            guard v >= 0 else { return nil }
            let (r, o) = p.multipliedReportingOverflow(by: v)
            if o { return nil }
            p = r
        }
        return p
    }
    public static func mul(_ a: Int, _ b: Int) -> Int? { let (r, o) = a.multipliedReportingOverflow(by: b); return o ? nil : r }
    public static func add(_ a: Int, _ b: Int) -> Int? { let (r, o) = a.addingReportingOverflow(b); return o ? nil : r }
}

/// Converts a buffer of `dtype` elements (f32/f16/bf16) to Float.
public func convertToFloat(_ src: UnsafeRawBufferPointer, dtype: DType, into dst: UnsafeMutableBufferPointer<Float>) {
    let n = dst.count
    switch dtype {
    case .f32:
        precondition(src.count >= n * 4)
        // Unaligned-safe copy.
        dst.baseAddress!.withMemoryRebound(to: UInt8.self, capacity: n * 4) {
            $0.update(from: src.baseAddress!.assumingMemoryBound(to: UInt8.self), count: n * 4)
        }
    case .f16:
        for i in 0..<n { dst[i] = halfToFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
    case .bf16:
        for i in 0..<n { dst[i] = bf16ToFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
    default:
        preconditionFailure("convertToFloat: \(dtype) is not a float type")
    }
}
