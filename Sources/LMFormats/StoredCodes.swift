import LMCore
import LMSchemes

/// The integer codes of a stored row, column by column, for exporters that re-pack them
/// into another format's blocks without dequantizing (GGUF, compressed-tensors).
///
/// Symmetric int4 (`int4s`) codes are unsigned, 0…15 with 8 = value 0; int8 codes are the
/// int8 bit patterns. A compressed `+N:M` row's kept codes are scattered to their columns and
/// every pruned column gets the zero code, so every column's value is its group's scale times
/// its signed code. `group(ofColumn:)` says which of the stored groups holds a column.
enum StoredCodes {
    /// Kept (stored) columns per row.
    static func storedColumns(_ scheme: QuantScheme, cols: Int) -> Int {
        scheme.sparsity.map { cols / $0.m * $0.n } ?? cols
    }

    /// Stored groups per row (`ceil(stored columns / G)`; 1 for per-channel int8).
    static func groupsPerRow(_ scheme: QuantScheme, cols: Int) -> Int {
        scheme.groupSize == 0 ? 1 : (storedColumns(scheme, cols: cols) + scheme.groupSize - 1) / scheme.groupSize
    }

    /// The stored group holding column `c`: groups count stored values, and a compressed row
    /// keeps exactly `n` of every `m` columns on whole mask bytes (validated), so column `c`
    /// of an aligned run of 8 has kept index `c·n/m` up to the run's own offset.
    static func group(ofColumn c: Int, scheme: QuantScheme) -> Int {
        guard scheme.groupSize > 0 else { return 0 }
        let kept = scheme.sparsity.map { c / 8 * 8 / $0.m * $0.n } ?? c
        return kept / scheme.groupSize
    }

    /// Row `r`'s codes, one per column (`cols` of them).
    static func row(_ scheme: QuantScheme, sections s: [UnsafeRawBufferPointer], row r: Int, cols: Int) -> [UInt8] {
        let int8 = scheme.kind == .int8
        let k = storedColumns(scheme, cols: cols), k32 = QuantScheme.paddedCols(k)
        func code(_ j: Int) -> UInt8 {
            if int8 { return s[0][r * k32 + j] }
            let byte = s[0][r * k32 / 2 + (j / 32) * 16 + (j % 32) % 16]
            return (j % 32) < 16 ? byte & 0xF : byte >> 4
        }
        var codes = [UInt8](repeating: 0, count: cols)
        if scheme.sparsity != nil {
            let mask = s[s.count - 1], mb = NMCodec.maskRowBytes(cols: cols)
            let zero: UInt8 = int8 ? 0 : 8
            var j = 0
            for c in 0..<cols {
                if (mask[r * mb + c / 8] >> UInt8(c % 8)) & 1 == 1 && j < k { codes[c] = code(j); j += 1 } else { codes[c] = zero }
            }
        } else {
            for c in 0..<cols { codes[c] = code(c) }
        }
        return codes
    }
}
