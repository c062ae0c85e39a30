import LMCore

/// A storage scheme of the `.lmpk` format: a family (`SchemeCodec`) and a group size
/// (formats/lmpk.md, "Schemes"). Names: `f32`, `f16`, `bf16`, `int8`, `int8-gG`,
/// `int4-gG`, `int4s-gG`, `int3-gG`, `int2-gG`; any of f32, f16, bf16, int8(-gG), int4(-gG),
/// int4s(-gG) with `+N:M` (`+1:2`, `+2:4`, `+4:8`) stores an N:M-sparse matrix compressed
/// (its kept values in that scheme, plus a bit mask: `NMCodec`).
public struct QuantScheme: Hashable, Sendable, CustomStringConvertible {
    /// A scheme family's name; `codec` is its definition.
    public struct Kind: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }
        public static let f32 = Kind(rawValue: "f32"), f16 = Kind(rawValue: "f16"), bf16 = Kind(rawValue: "bf16")
        public static let int8 = Kind(rawValue: "int8"), int4 = Kind(rawValue: "int4"), int4s = Kind(rawValue: "int4s")
    }
    public let kind: Kind
    /// Group size along the input dimension; 0 = one scale per output channel (int8) or unquantized.
    public let groupSize: Int
    /// N:M compressed storage (`+N:M`), or nil for a dense tensor.
    public let sparsity: Sparsity?

    /// An N:M pattern of compressed storage: in every aligned run of `m` inputs, `n` kept.
    public struct Sparsity: Hashable, Sendable, CustomStringConvertible {
        public let n: Int, m: Int
        public init(n: Int, m: Int) { self.n = n; self.m = m }
        public var description: String { "\(n):\(m)" }
        /// The patterns compressed storage supports: each 8-column byte of the mask keeps
        /// exactly 4 (so the kernels gather a fixed 16 of every 32 activations).
        public static let supported = [Sparsity(n: 1, m: 2), Sparsity(n: 2, m: 4), Sparsity(n: 4, m: 8)]
    }

    public static let supportedGroupSizes = [32, 64, 128]
    /// Every accepted name, from the registry.
    public static var allNames: [String] { SchemeRegistry.codecs.flatMap(\.names) }

    /// A scheme of a registered family (the caller vouches for the group size).
    public init(kind: Kind, groupSize: Int = 0, sparsity: Sparsity? = nil) { self.kind = kind; self.groupSize = groupSize; self.sparsity = sparsity }

    /// The same values stored dense (no `+N:M`).
    public var dense: QuantScheme { QuantScheme(kind: kind, groupSize: groupSize) }
    /// This scheme compressed under `s` (nil: dense).
    public func compressed(_ s: Sparsity?) -> QuantScheme { QuantScheme(kind: kind, groupSize: groupSize, sparsity: s) }

    /// Parses `f16`, `int8`, `int8-g64`, `int4-g128`, `int4s-g32`…: the family's codec
    /// decides the group (`int4`/`int4s` without one take `defaultGroup`, 32 unless given).
    public init(parsing s: String, defaultGroup: Int? = nil) throws {
        let plus = s.lowercased().split(separator: "+", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        var sparsity: Sparsity? = nil
        if plus.count == 2 {
            let nm = plus[1].split(separator: ":", omittingEmptySubsequences: false)
            guard nm.count == 2, let n = Int(nm[0]), let m = Int(nm[1]), Sparsity.supported.contains(Sparsity(n: n, m: m)) else {
                throw QuantSchemeError("scheme '\(s)': compressed storage '+\(plus[1])' is not supported (+1:2, +2:4, +4:8)")
            }
            sparsity = Sparsity(n: n, m: m)
        }
        let parts = plus[0].split(separator: "-g", maxSplits: 1).map(String.init)
        guard let family = parts.first else {
            throw QuantSchemeError("'\(s)' is not a scheme name; supported: \(QuantScheme.allNames.joined(separator: ", "))")
        }
        guard let codec = SchemeRegistry.codec(family) else {
            throw QuantSchemeError("unknown scheme '\(s)'; supported: \(QuantScheme.allNames.joined(separator: ", "))")
        }
        var named: Int? = nil
        if parts.count == 2 {
            guard let v = Int(parts[1]) else { throw QuantSchemeError("scheme '\(s)': group size '\(parts[1])' is not a number") }
            named = v
        }
        kind = Kind(rawValue: codec.family)
        groupSize = try codec.groupSize(named: named, defaultGroup: defaultGroup, name: s)
        if sparsity != nil, !NMCodec.valueFamilies.contains(codec.family) {
            throw QuantSchemeError("scheme '\(s)': compressed N:M storage takes f32, f16, bf16, int8, int4 or int4s values, not \(codec.family)")
        }
        self.sparsity = sparsity
    }

    /// The family's definition (registered: every `Kind` a scheme can hold has one); for
    /// `+N:M`, the compressed form around it.
    public var codec: any SchemeCodec {
        let c = SchemeRegistry.codec(kind.rawValue)!
        guard let s = sparsity else { return c }
        return NMCodec(value: c, sparsity: s)
    }
    /// The codec of the stored values (the dense family's, whether compressed or not).
    public var valueCodec: any SchemeCodec { SchemeRegistry.codec(kind.rawValue)! }
    public var name: String { (groupSize > 0 ? "\(kind.rawValue)-g\(groupSize)" : kind.rawValue) + (sparsity.map { "+\($0)" } ?? "") }
    public var description: String { name }
    public var isQuantized: Bool { codec.isQuantized }

    /// Columns rounded up to the 32-column storage unit.
    public static func paddedCols(_ cols: Int) -> Int { (cols + 31) / 32 * 32 }
    public func groups(cols: Int) -> Int { groupSize > 0 ? (cols + groupSize - 1) / groupSize : 1 }

    /// Section roles and byte sizes for a `[rows, cols]` tensor (vectors: `rows = 1`, `cols = count`).
    public func sections(rows: Int, cols: Int) -> [(role: String, bytes: Int)] { codec.sections(rows: rows, cols: cols, groupSize: groupSize) }

    /// Exact stored bits per weight (padding and scales included).
    public func bitsPerWeight(rows: Int, cols: Int) -> Double {
        Double(sections(rows: rows, cols: cols).reduce(0) { $0 + $1.bytes } * 8) / Double(max(rows * cols, 1))
    }
}

public struct QuantSchemeError: Error, CustomStringConvertible {
    public let description: String
    public init(_ s: String) { description = s }
}
