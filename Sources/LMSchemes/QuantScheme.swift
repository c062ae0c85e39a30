import LMCore

/// A storage scheme of the `.lmpk` format: its name, byte layout and size
/// (formats/lmpk.md, "Schemes").
public struct QuantScheme: Hashable, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable, CaseIterable { case f32, f16, bf16, int8, int4, int4s }
    public let kind: Kind
    /// Group size along the input dimension; 0 = one scale per output channel (int8) or unquantized.
    public let groupSize: Int

    public static let supportedGroupSizes = [32, 64, 128]
    public static let allNames = ["f32", "f16", "bf16", "int8", "int8-g32", "int8-g64", "int8-g128",
                                  "int4-g32", "int4-g64", "int4-g128", "int4s-g32", "int4s-g64", "int4s-g128"]

    public init(kind: Kind, groupSize: Int = 0) { self.kind = kind; self.groupSize = groupSize }

    /// Parses `f16`, `int8`, `int8-g64`, `int4-g128`, `int4s-g32`…; `int4`/`int4s`
    /// without a group take `defaultGroup` (32 unless given).
    public init(parsing s: String, defaultGroup: Int? = nil) throws {
        let parts = s.lowercased().split(separator: "-g", maxSplits: 1).map(String.init)
        guard let kind = Kind(rawValue: parts[0]) else {
            throw QuantSchemeError("unknown scheme '\(s)'; supported: \(QuantScheme.allNames.joined(separator: ", "))")
        }
        var g = 0
        if parts.count == 2 {
            guard let v = Int(parts[1]) else { throw QuantSchemeError("scheme '\(s)': group size '\(parts[1])' is not a number") }
            g = v
        } else if kind == .int4 || kind == .int4s {
            g = defaultGroup ?? 32
        } else if kind == .int8, let d = defaultGroup {
            g = d
        }
        switch kind {
        case .f32, .f16, .bf16:
            if g != 0 { throw QuantSchemeError("scheme '\(s)': float schemes take no group size") }
        case .int8, .int4, .int4s:
            if !(g == 0 && kind == .int8) && !QuantScheme.supportedGroupSizes.contains(g) {
                throw QuantSchemeError("scheme '\(s)': group size \(g) is not supported (32, 64, 128\(kind == .int8 ? ", or none for per-channel" : ""))")
            }
        }
        self.kind = kind; groupSize = g
    }

    public var name: String { groupSize > 0 ? "\(kind.rawValue)-g\(groupSize)" : kind.rawValue }
    public var description: String { name }
    public var isQuantized: Bool { kind == .int8 || kind == .int4 || kind == .int4s }

    /// Columns rounded up to the 32-column storage unit.
    public static func paddedCols(_ cols: Int) -> Int { (cols + 31) / 32 * 32 }
    public func groups(cols: Int) -> Int { groupSize > 0 ? (cols + groupSize - 1) / groupSize : 1 }

    /// Section roles and byte sizes for a `[rows, cols]` tensor (vectors: rows = 1... use `cols = count`).
    public func sections(rows: Int, cols: Int) -> [(role: String, bytes: Int)] {
        let c32 = QuantScheme.paddedCols(cols)
        let ng = groups(cols: cols)
        switch kind {
        case .f32: return [("q", rows * cols * 4)]
        case .f16, .bf16: return [("q", rows * cols * 2)]
        case .int8: return [("q", rows * c32), ("scales", groupSize == 0 ? rows * 4 : rows * ng * 2)]
        case .int4: return [("q", rows * c32 / 2), ("scales", rows * ng * 2), ("mins", rows * ng * 2)]
        case .int4s: return [("q", rows * c32 / 2), ("scales", rows * ng * 2)]
        }
    }

    /// Exact stored bits per weight (padding and scales included).
    public func bitsPerWeight(rows: Int, cols: Int) -> Double {
        Double(sections(rows: rows, cols: cols).reduce(0) { $0 + $1.bytes } * 8) / Double(max(rows * cols, 1))
    }
}

public struct QuantSchemeError: Error, CustomStringConvertible {
    public let description: String
    public init(_ s: String) { description = s }
}
