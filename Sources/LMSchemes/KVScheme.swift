import CKernels

/// Storage scheme of one side (K or V) of the KV cache (formats/kv-cache.md).
///
/// Per-token integer schemes (int8, int4, int2) are asymmetric with one float16 scale
/// and min per (token, KV head), quantized on write, no calibration (LMDeploy's
/// `quant_policy` 8 and 4). Per-channel schemes (int8c, int4c, int2c) hold one float16
/// scale and min per channel over a page's rows: for K only (its outlier channels), a
/// page written whole (`storeBlock`), the newest incomplete block kept in float32.
public enum KVScheme: Int, Sendable, CaseIterable, CustomStringConvertible {
    case f32 = 0, f16 = 1, bf16 = 2, int8 = 3, int4 = 4, int2 = 5, int8c = 6, int4c = 7, int2c = 8

    /// The flag spelling: "f32", "f16", "bf16", "int8", "int4", "int2", "int8c", "int4c", "int2c".
    public var description: String {
        switch self {
        case .f32: return "f32"
        case .f16: return "f16"
        case .bf16: return "bf16"
        case .int8: return "int8"
        case .int4: return "int4"
        case .int2: return "int2"
        case .int8c: return "int8c"
        case .int4c: return "int4c"
        case .int2c: return "int2c"
        }
    }

    /// Parses a flag spelling ("fp16"/"float16", "fp32"/"float32", "q8", "q4", "q2" accepted too).
    public init?(name: String) {
        switch name.lowercased() {
        case "f32", "fp32", "float32": self = .f32
        case "f16", "fp16", "float16", "half": self = .f16
        case "bf16", "bfloat16": self = .bf16
        case "int8", "q8", "i8": self = .int8
        case "int4", "q4", "i4": self = .int4
        case "int2", "q2", "i2": self = .int2
        case "int8c": self = .int8c
        case "int4c": self = .int4c
        case "int2c": self = .int2c
        default: return nil
        }
    }

    /// True for the per-channel schemes (int8c, int4c, int2c): parameters per channel over a
    /// whole page, written with `storeBlock` only, K only (no `kvAccum`).
    public var isPerChannel: Bool { self == .int8c || self == .int4c || self == .int2c }

    /// The C kernels' scheme id (`LMK_KV_*`).
    public var cID: Int32 { Int32(rawValue) }

    /// Bytes of one page of `blockSize` rows of `headDim` (before the pool's 64-byte padding);
    /// −1 when `headDim` does not suit the scheme (odd with int4/int4c, not a multiple of 4
    /// with int2/int2c).
    public func pageBytes(blockSize: Int, headDim: Int) -> Int {
        Int(lmk_kv_page_bytes(cID, Int32(blockSize), Int32(headDim)))
    }
}
