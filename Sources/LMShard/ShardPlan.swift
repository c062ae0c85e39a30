import Foundation
import LMCore
import LMFormats

/// How a model is cut into `worldSize` tensor-parallel ranks (`lmconvert shard`):
/// every rank's ranges and, per tensor, the split axis, ranges and bytes per rank.
///
/// - KV heads go to ranks as evenly as possible, earlier ranks taking the extra ones;
///   query heads follow their KV head (SmolLM2, 3 KV heads, `--tp 2`: 2 + 1 KV heads,
///   6 + 3 query heads).
/// - FFN columns in units of the down projection's column boundary (its group size),
///   as evenly as possible.
/// - Vocabulary rows (the head, and the embedding with `vocabParallel`) as evenly as possible.
///
/// A split that the stored schemes cannot take without re-encoding (a row-parallel
/// input range off a quantization group boundary) is refused before anything is
/// written, naming the tensor and the nearest `--tp` that works.
public struct ShardPlan {
    public let config: ModelConfig
    public let worldSize: Int
    public let vocabParallel: Bool
    /// Rank by rank.
    public let ranges: [ShardRanges]
    /// One line per tensor of the source, in file order.
    public let entries: [Entry]
    /// How the output head is handled (tied or not; replicated or vocab-parallel embedding).
    public let headNote: String

    public struct Entry {
        public let name: String
        public let scheme: QuantScheme
        /// nil: replicated.
        public let axis: Int?
        /// Per rank: the range along `axis` (nil when replicated).
        public let ranges: [Range<Int>?]
        /// Per rank: stored bytes.
        public let bytes: [Int]
    }

    /// Plans `tp` ranks for the whole-model file `f`.
    /// - Throws: `ShardError` naming the tensor and the nearest valid choice.
    public init(source f: LMPKFile, tp: Int, vocabParallel: Bool) throws {
        if let s = f.shard { throw ShardError("\(f.path): already rank \(s.rank) of a \(s.worldSize)-way sharding; shard the whole model") }
        let c = f.config
        guard tp >= 1 else { throw ShardError("--tp \(tp): the world size must be at least 1") }
        if let problem = ShardPlan.problem(f, tp: tp, vocabParallel: vocabParallel) {
            let valid = (1...max(1, c.numKVHeads)).filter { ShardPlan.problem(f, tp: $0, vocabParallel: vocabParallel) == nil }
            let nearest = valid.min { abs($0 - tp) == abs($1 - tp) ? $0 > $1 : abs($0 - tp) < abs($1 - tp) }
            throw ShardError(problem + (nearest.map { "; nearest valid choice: --tp \($0)" } ?? "; no tensor-parallel split of this file works"))
        }
        config = c
        worldSize = tp
        self.vocabParallel = vocabParallel
        ranges = try ShardPlan.ranks(f, tp: tp, vocabParallel: vocabParallel)
        let layouts = ranges.map { ShardLayout(config: c, ranges: $0) }
        var out: [Entry] = []
        for t in f.tensors {
            let parts = layouts.map { l in l.tensors.first { $0.name == t.name } }
            let axis = parts.first??.split?.axis
            let bytes = parts.map { p -> Int in
                guard let p else { return 0 }
                let rows = p.shape.count == 2 ? p.shape[0] : 1, cols = p.shape.count == 2 ? p.shape[1] : p.shape[0]
                return t.scheme.sections(rows: rows, cols: cols).reduce(0) { $0 + $1.bytes }
            }
            out.append(Entry(name: t.name, scheme: t.scheme, axis: axis, ranges: parts.map { $0?.split?.range }, bytes: bytes))
        }
        entries = out
        if c.tieWordEmbeddings {
            headNote = vocabParallel
                ? "tied head: each rank's embedding rows (vocab-parallel) are also its head rows; logits all-gathered"
                : "tied head: the embedding is replicated; each rank's head is a view of its vocabulary rows of it (not stored twice); logits all-gathered"
        } else {
            headNote = "lm_head split by vocabulary rows; logits all-gathered; embedding " + (vocabParallel ? "split by vocabulary rows (lookups all-reduced)" : "replicated")
        }
    }

    /// The ranges of `tp` ranks (no checks of the stored schemes).
    static func ranks(_ f: LMPKFile, tp: Int, vocabParallel: Bool) throws -> [ShardRanges] {
        let c = f.config
        guard tp <= c.numKVHeads else {
            throw ShardError("--tp \(tp): the model has \(c.numKVHeads) KV heads and each rank needs at least one (a query head stays with its KV head)")
        }
        let unit = ffnUnit(f)
        let units = (c.intermediateSize + unit - 1) / unit
        guard units >= tp else {
            throw ShardError("--tp \(tp): the FFN width \(c.intermediateSize) holds only \(units) blocks of \(unit) columns (the down projections' group boundary)")
        }
        guard c.vocabSize >= tp else { throw ShardError("--tp \(tp): the vocabulary has only \(c.vocabSize) rows") }
        func split(_ n: Int, _ r: Int) -> Range<Int> {
            let base = n / tp, extra = n % tp
            let lo = r * base + min(r, extra)
            return lo..<(lo + base + (r < extra ? 1 : 0))
        }
        return (0..<tp).map { r in
            let u = split(units, r)
            return ShardRanges(kvHeads: split(c.numKVHeads, r), ffn: (u.lowerBound * unit)..<min(c.intermediateSize, u.upperBound * unit),
                               vocab: split(c.vocabSize, r), vocabParallel: vocabParallel)
        }
    }

    /// Column boundary of the FFN split: the largest of the down projections' units.
    static func ffnUnit(_ f: LMPKFile) -> Int {
        (0..<f.config.numLayers).compactMap { f["model.layers.\($0).mlp.down_proj.weight"]?.scheme.columnUnit }.max() ?? 1
    }

    /// Why `tp` ranks cannot be cut from `f`, or nil.
    static func problem(_ f: LMPKFile, tp: Int, vocabParallel: Bool) -> String? {
        let ranges: [ShardRanges]
        do { ranges = try ranks(f, tp: tp, vocabParallel: vocabParallel) } catch { return "\(error)" }
        for (r, rg) in ranges.enumerated() {
            for p in ShardLayout(config: f.config, ranges: rg).tensors {
                guard let s = p.split, let t = f[p.name] else { continue }
                if s.axis == 0 && t.shape.count == 2 { continue }     // rows: any range
                let cols = t.cols
                if !t.scheme.canSliceColumns(cols: cols, lo: s.range.lowerBound, hi: s.range.upperBound) {
                    let fits = QuantScheme.supportedGroupSizes.filter { g in
                        (try? QuantScheme(parsing: "\(t.scheme.kind.rawValue)-g\(g)")).map { $0.canSliceColumns(cols: cols, lo: s.range.lowerBound, hi: s.range.upperBound) } ?? false
                    }
                    return "--tp \(tp): tensor '\(p.name)' (\(t.scheme.name)): rank \(r)'s input columns \(s.range.lowerBound)..<\(s.range.upperBound) do not fall on its \(t.scheme.columnUnit)-column quantization groups"
                        + (fits.isEmpty ? "" : " (group size \(fits.map(String.init).joined(separator: " or ")) would)")
                }
            }
        }
        return nil
    }

    /// The plan as a table: tensor, scheme, split axis, range and bytes per rank.
    public func table() -> String {
        var lines: [String] = []
        let c = config
        lines.append("tensor-parallel plan: \(worldSize) rank(s) of \(c.architecture), \(c.numLayers) layers, heads \(c.numHeads)/\(c.numKVHeads), FFN \(c.intermediateSize), vocab \(c.vocabSize)")
        for (r, rg) in ranges.enumerated() {
            let q = rg.qHeads(c)
            lines.append("  rank \(r): KV heads \(rg.kvHeads.lowerBound)..<\(rg.kvHeads.upperBound) (\(rg.kvHeads.count)), query heads \(q.lowerBound)..<\(q.upperBound) (\(q.count)), FFN \(rg.ffn.lowerBound)..<\(rg.ffn.upperBound) (\(rg.ffn.count)), vocab \(rg.vocab.lowerBound)..<\(rg.vocab.upperBound)")
        }
        lines.append("  " + headNote)
        let w = max(40, entries.map(\.name.count).max() ?? 0)
        var head = "tensor".padding(toLength: w, withPad: " ", startingAt: 0) + "  scheme     split"
        for r in 0..<worldSize { head += "  " + "rank \(r) range".padding(toLength: 16, withPad: " ", startingAt: 0) + String(format: "%12@", "bytes") }
        lines.append(head)
        var totals = [Int](repeating: 0, count: worldSize)
        for e in entries {
            var l = e.name.padding(toLength: w, withPad: " ", startingAt: 0) + "  " + e.scheme.name.padding(toLength: 9, withPad: " ", startingAt: 0)
            l += "  " + (e.axis.map { $0 == 0 ? "rows" : "cols" } ?? "repl").padding(toLength: 4, withPad: " ", startingAt: 0)
            for r in 0..<worldSize {
                let rg = e.ranges[r].map { "\($0.lowerBound)..<\($0.upperBound)" } ?? (e.bytes[r] == 0 ? "(view)" : "all")
                l += "  " + rg.padding(toLength: 16, withPad: " ", startingAt: 0) + String(format: "%12d", e.bytes[r])
                totals[r] += e.bytes[r]
            }
            lines.append(l)
        }
        var t = "total".padding(toLength: w + 17, withPad: " ", startingAt: 0)
        for r in 0..<worldSize { t += "  " + "".padding(toLength: 16, withPad: " ", startingAt: 0) + String(format: "%12d", totals[r]) }
        lines.append(t)
        return lines.joined(separator: "\n")
    }

    /// The plan as JSON (`--dry-run --json`).
    public var json: JSON {
        .object([
            ("world_size", .int(Int64(worldSize))), ("vocab_parallel", .bool(vocabParallel)), ("head", .string(headNote)),
            ("ranks", .array(ranges.map(\.json))),
            ("tensors", .array(entries.map { e in
                .object([("name", .string(e.name)), ("scheme", .string(e.scheme.name)),
                         ("axis", e.axis.map { .int(Int64($0)) } ?? .null),
                         ("ranges", .array(e.ranges.map { $0.map { .array([.int(Int64($0.lowerBound)), .int(Int64($0.upperBound))]) } ?? .null })),
                         ("bytes", .array(e.bytes.map { .int(Int64($0)) }))])
            })),
            ("bytes_per_rank", .array((0..<worldSize).map { r in .int(Int64(entries.reduce(0) { $0 + $1.bytes[r] })) })),
        ])
    }
}
