import CKernels

/// Storage scheme of one side (K or V) of the KV cache (formats/kv-cache.md).
///
/// Integer schemes are asymmetric with one float16 scale and min per (token, KV head),
/// quantized on write, no calibration (LMDeploy's `quant_policy` 8 and 4).
public enum KVScheme: Int, Sendable, CaseIterable, CustomStringConvertible {
    case f32 = 0, f16 = 1, bf16 = 2, int8 = 3, int4 = 4

    /// The flag spelling: "f32", "f16", "bf16", "int8", "int4".
    public var description: String {
        switch self {
        case .f32: return "f32"
        case .f16: return "f16"
        case .bf16: return "bf16"
        case .int8: return "int8"
        case .int4: return "int4"
        }
    }

    /// Parses a flag spelling ("fp16"/"float16", "fp32"/"float32", "q8", "q4" accepted too).
    public init?(name: String) {
        switch name.lowercased() {
        case "f32", "fp32", "float32": self = .f32
        case "f16", "fp16", "float16", "half": self = .f16
        case "bf16", "bfloat16": self = .bf16
        case "int8", "q8", "i8": self = .int8
        case "int4", "q4", "i4": self = .int4
        default: return nil
        }
    }

    /// The C kernels' scheme id (`LMK_KV_*`).
    public var cID: Int32 { Int32(rawValue) }

    /// Bytes of one page of `blockSize` rows of `headDim` (before the pool's 64-byte padding).
    public func pageBytes(blockSize: Int, headDim: Int) -> Int {
        Int(lmk_kv_page_bytes(cID, Int32(blockSize), Int32(headDim)))
    }
}
