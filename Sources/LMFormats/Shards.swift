import Foundation
import LMCore

/// The part of a full tensor that a tensor-parallel rank file holds: `range` along
/// `axis` (0: rows, or a vector's elements; 1: columns) of a tensor of shape `full`.
public struct TensorSplit: Equatable, Sendable {
    public let axis: Int
    public let range: Range<Int>
    public let full: [Int]
    public init(axis: Int, range: Range<Int>, full: [Int]) { self.axis = axis; self.range = range; self.full = full }

    /// The shape of the part.
    public var shape: [Int] { var s = full; s[axis] = range.count; return s }

    public var json: JSON {
        .object([("axis", .int(Int64(axis))), ("range", .array([.int(Int64(range.lowerBound)), .int(Int64(range.upperBound))])),
                 ("full", .array(full.map { .int(Int64($0)) }))])
    }

    /// `null` or absent → nil.
    static func parse(_ j: JSON?) throws -> TensorSplit? {
        guard let j, !j.isNull else { return nil }
        guard let axis = j["axis"]?.int, let r = j["range"]?.array, r.count == 2, let lo = r[0].int, let hi = r[1].int,
              let f = j["full"]?.array, !f.isEmpty, f.count <= 2 else { throw ShardError("split must be {axis, range: [lo, hi], full: [..]}") }
        let full = f.compactMap(\.int)
        guard full.count == f.count, axis >= 0, axis < full.count, 0 <= lo, lo < hi, hi <= full[axis] else {
            throw ShardError("split range [\(lo), \(hi)) on axis \(axis) does not fit the full shape \(full)")
        }
        return TensorSplit(axis: axis, range: lo..<hi, full: full)
    }
}

/// Errors of shard files, manifests and plans.
public struct ShardError: Error, CustomStringConvertible {
    public let description: String
    public init(_ s: String) { description = s }
}

/// One rank's share of the dimensions a tensor-parallel sharding splits.
public struct ShardRanges: Equatable, Sendable {
    /// KV heads (query heads follow: `kvHeads × group`, so a query head stays with its KV head).
    public var kvHeads: Range<Int>
    /// FFN columns (gate/up rows, down columns).
    public var ffn: Range<Int>
    /// Vocabulary rows of the output head (and of the embedding with `vocabParallel`).
    public var vocab: Range<Int>
    /// The embedding is split by vocabulary rows (looked up where held, then all-reduced) instead of replicated.
    public var vocabParallel: Bool

    public init(kvHeads: Range<Int>, ffn: Range<Int>, vocab: Range<Int>, vocabParallel: Bool) {
        self.kvHeads = kvHeads; self.ffn = ffn; self.vocab = vocab; self.vocabParallel = vocabParallel
    }

    /// Query heads of this rank.
    public func qHeads(_ c: ModelConfig) -> Range<Int> {
        let g = c.numHeads / c.numKVHeads
        return (kvHeads.lowerBound * g)..<(kvHeads.upperBound * g)
    }

    public var json: JSON {
        func r(_ x: Range<Int>) -> JSON { .array([.int(Int64(x.lowerBound)), .int(Int64(x.upperBound))]) }
        return .object([("kv_heads", r(kvHeads)), ("ffn", r(ffn)), ("vocab", r(vocab)), ("vocab_parallel", .bool(vocabParallel))])
    }

    /// Parses and checks the ranges against the full `config`.
    static func parse(_ j: JSON?, config c: ModelConfig, source: String) throws -> ShardRanges {
        func range(_ k: String, _ n: Int) throws -> Range<Int> {
            guard let a = j?[k]?.array, a.count == 2, let lo = a[0].int, let hi = a[1].int else { throw ShardError("\(source): '\(k)' must be [lo, hi]") }
            guard 0 <= lo, lo < hi, hi <= n else { throw ShardError("\(source): '\(k)' [\(lo), \(hi)) is not a non-empty range inside 0..<\(n)") }
            return lo..<hi
        }
        guard let vp = j?["vocab_parallel"]?.bool else { throw ShardError("\(source): 'vocab_parallel' must be true or false") }
        return ShardRanges(kvHeads: try range("kv_heads", c.numKVHeads), ffn: try range("ffn", c.intermediateSize),
                           vocab: try range("vocab", c.vocabSize), vocabParallel: vp)
    }
}

/// What one rank holds of each tensor of a model: the single definition shared by the
/// sharder (what to write) and the reader (what a rank file must contain).
///
/// - q/k/v (and their biases) by whole KV-head groups, column-parallel (rows of the weight);
/// - gate/up by FFN rows; o_proj and down_proj row-parallel (columns of the weight);
/// - norms replicated; the embedding replicated, or by vocabulary rows with `vocabParallel`;
/// - the head by vocabulary rows. A tied head is not stored: it is rows `vocab` of the
///   (replicated or vocab-parallel) embedding.
public struct ShardLayout {
    public let tensors: [(name: String, shape: [Int], split: TensorSplit?)]
    /// The rank's local shape: its query/KV heads and FFN width (hidden size, head size
    /// and vocabulary unchanged: token ids are global).
    public let localConfig: ModelConfig

    public init(config c: ModelConfig, ranges r: ShardRanges) {
        let hd = c.headDim, qh = r.qHeads(c)
        let q = (qh.lowerBound * hd)..<(qh.upperBound * hd), kv = (r.kvHeads.lowerBound * hd)..<(r.kvHeads.upperBound * hd)
        var out: [(String, [Int], TensorSplit?)] = []
        func add(_ n: String, _ full: [Int], _ axis: Int?, _ range: Range<Int>) {
            guard let axis else { out.append((n, full, nil)); return }
            let s = TensorSplit(axis: axis, range: range, full: full)
            out.append((n, s.shape, s))
        }
        for (n, full) in c.expectedTensors() {
            switch n {
            case "model.embed_tokens.weight": add(n, full, r.vocabParallel ? 0 : nil, r.vocab)
            case "lm_head.weight": add(n, full, 0, r.vocab)
            case _ where n.hasSuffix("q_proj.weight") || n.hasSuffix("q_proj.bias"): add(n, full, 0, q)
            case _ where n.hasSuffix("k_proj.weight") || n.hasSuffix("k_proj.bias") || n.hasSuffix("v_proj.weight") || n.hasSuffix("v_proj.bias"): add(n, full, 0, kv)
            case _ where n.hasSuffix("o_proj.weight"): add(n, full, 1, q)
            case _ where n.hasSuffix("gate_proj.weight") || n.hasSuffix("up_proj.weight"): add(n, full, 0, r.ffn)
            case _ where n.hasSuffix("down_proj.weight"): add(n, full, 1, r.ffn)
            default: add(n, full, nil, 0..<0)     // norms
            }
        }
        tensors = out
        var lc = c
        lc.numHeads = qh.count; lc.numKVHeads = r.kvHeads.count; lc.intermediateSize = r.ffn.count
        localConfig = lc
    }
}

/// The `tensor_parallel` header object of a rank file (formats/lmpk.md, "Tensor-parallel shards").
public struct ShardInfo: Equatable, Sendable {
    public let worldSize: Int
    public let rank: Int
    /// Digest shared by every rank of one sharding (source digest, world size, every rank's ranges).
    public let sharding: String
    /// SHA-256 of the `.lmpk` the shards were cut from.
    public let sourceSHA256: String
    public let ranges: ShardRanges

    public init(worldSize: Int, rank: Int, sharding: String, sourceSHA256: String, ranges: ShardRanges) {
        self.worldSize = worldSize; self.rank = rank; self.sharding = sharding; self.sourceSHA256 = sourceSHA256; self.ranges = ranges
    }

    public var json: JSON {
        .object([("world_size", .int(Int64(worldSize))), ("rank", .int(Int64(rank))), ("sharding", .string(sharding)),
                 ("source_sha256", .string(sourceSHA256)), ("ranges", ranges.json)])
    }

    /// nil for a whole-model file (no `sharding` digest).
    static func parse(_ j: JSON?, config: ModelConfig) throws -> ShardInfo? {
        guard let j, !j.isNull, j["sharding"] != nil else { return nil }
        guard let w = j["world_size"]?.int, let r = j["rank"]?.int, w >= 1, w <= 4096, r >= 0, r < w else {
            throw ShardError("tensor_parallel: world_size and rank must satisfy 0 ≤ rank < world_size")
        }
        guard let d = j["sharding"]?.string, let s = j["source_sha256"]?.string else { throw ShardError("tensor_parallel: 'sharding' and 'source_sha256' must be strings") }
        return ShardInfo(worldSize: w, rank: r, sharding: d, sourceSHA256: s, ranges: try ShardRanges.parse(j["ranges"], config: config, source: "tensor_parallel.ranges"))
    }

    /// The digest of a sharding: SHA-256 of the canonical JSON of its source digest,
    /// world size and every rank's ranges.
    public static func shardingDigest(sourceSHA256: String, ranges: [ShardRanges]) -> String {
        let j = JSON.object([("source_sha256", .string(sourceSHA256)), ("world_size", .int(Int64(ranges.count))),
                             ("ranges", .array(ranges.map(\.json)))])
        return SHA256.hex(Array(j.serialized().utf8))
    }
}

/// `manifest.json` of a shard folder: the world, each rank's file with its size and
/// digest and ranges, the source digest (formats/lmpk.md, "Tensor-parallel shards").
public struct ShardManifest: Equatable, Sendable {
    public struct Rank: Equatable, Sendable {
        public let rank: Int, file: String, bytes: Int, sha256: String, ranges: ShardRanges
        public init(rank: Int, file: String, bytes: Int, sha256: String, ranges: ShardRanges) {
            self.rank = rank; self.file = file; self.bytes = bytes; self.sha256 = sha256; self.ranges = ranges
        }
    }
    public static let fileName = "manifest.json"
    public static func rankFileName(_ rank: Int, of world: Int) -> String { "rank-\(rank)-of-\(world).lmpk" }

    public let worldSize: Int
    /// The full model's config (every rank file carries the same).
    public let config: ModelConfig
    public let sharding: String
    public let source: String
    public let sourceSHA256: String
    public let ranks: [Rank]

    public init(worldSize: Int, config: ModelConfig, sharding: String, source: String, sourceSHA256: String, ranks: [Rank]) {
        self.worldSize = worldSize; self.config = config; self.sharding = sharding; self.source = source; self.sourceSHA256 = sourceSHA256; self.ranks = ranks
    }

    public var json: JSON {
        .object([("format", .string("lmpk-shards")), ("version", .int(1)), ("world_size", .int(Int64(worldSize))), ("config", config.toJSON()),
                 ("sharding", .string(sharding)), ("source", .string(source)), ("source_sha256", .string(sourceSHA256)),
                 ("ranks", .array(ranks.map { r in
                     .object([("rank", .int(Int64(r.rank))), ("file", .string(r.file)), ("bytes", .int(Int64(r.bytes))),
                              ("sha256", .string(r.sha256)), ("ranges", r.ranges.json)])
                 }))])
    }

    /// Reads and checks `DIR/manifest.json` (without opening the rank files): every rank
    /// 0…N−1 exactly once, ranges inside the config that match the sharding digest, no
    /// `.lmpk` in the folder that the manifest does not list.
    public static func load(folder: String) throws -> ShardManifest {
        let path = folder + "/" + fileName
        guard FileManager.default.fileExists(atPath: path) else {
            throw ShardError("\(folder): no \(fileName): not a shard folder (`lmconvert shard --tp N -i MODEL -o \(folder)` makes one)")
        }
        let j = try JSON.parse(file: path)
        func bad(_ s: String) -> ShardError { ShardError("\(path): \(s)") }
        guard j["format"]?.string == "lmpk-shards" else { throw bad("'format' is not 'lmpk-shards'") }
        guard (j["version"]?.int ?? 0) == 1 else { throw bad("manifest version \(j["version"]?.int ?? -1) is not supported (this tool reads 1); upgrade lmkit") }
        guard let w = j["world_size"]?.int, w >= 1, w <= 4096 else { throw bad("'world_size' must be a positive integer") }
        guard let sharding = j["sharding"]?.string, let src = j["source_sha256"]?.string else { throw bad("'sharding' and 'source_sha256' are required") }
        guard let cj = j["config"] else { throw bad("'config' is required") }
        let c = try ModelConfig.parse(cj, source: path + " (config)")
        guard let rj = j["ranks"]?.array else { throw bad("'ranks' must be a list") }
        var byRank: [Int: Rank] = [:]
        var seenFiles = Set<String>()
        for e in rj {
            guard let r = e["rank"]?.int, let f = e["file"]?.string, let b = e["bytes"]?.int, let d = e["sha256"]?.string else {
                throw bad("each rank needs 'rank', 'file', 'bytes' and 'sha256'")
            }
            guard r >= 0 && r < w else { throw bad("rank \(r) is outside 0..<\(w) (world_size \(w))") }
            guard byRank[r] == nil else { throw bad("rank \(r) is listed twice") }
            guard !f.contains("/"), f.hasSuffix(".lmpk"), seenFiles.insert(f).inserted else { throw bad("rank \(r): file '\(f)' must be a distinct .lmpk name in the folder") }
            byRank[r] = Rank(rank: r, file: f, bytes: b, sha256: d, ranges: try ShardRanges.parse(e["ranges"], config: c, source: "\(path) rank \(r)"))
        }
        let missing = (0..<w).filter { byRank[$0] == nil }
        guard missing.isEmpty else { throw bad("rank(s) \(missing.map(String.init).joined(separator: ", ")) of \(w) are missing") }
        let ranks = (0..<w).map { byRank[$0]! }
        guard ShardInfo.shardingDigest(sourceSHA256: src, ranges: ranks.map(\.ranges)) == sharding else {
            throw bad("the ranks' ranges do not match the sharding digest \(sharding.prefix(12))…: the manifest was edited or is corrupt")
        }
        let extra = (try FileManager.default.contentsOfDirectory(atPath: folder)).filter { $0.hasSuffix(".lmpk") && !seenFiles.contains($0) }.sorted()
        guard extra.isEmpty else {
            throw ShardError("\(folder): extra rank file(s) \(extra.joined(separator: ", ")) not in \(fileName): remove them, or re-run `lmconvert shard` into an empty folder")
        }
        return ShardManifest(worldSize: w, config: c, sharding: sharding, source: j["source"]?.string ?? "", sourceSHA256: src, ranks: ranks)
    }

    /// Opens rank `rank`'s file and checks it against the manifest: its world, rank,
    /// sharding, source and ranges, its size, and (with `verifyDigest`) its SHA-256.
    public func open(rank: Int, folder: String, verifyDigest: Bool = true) throws -> LMPKFile {
        let e = ranks[rank]
        let path = folder + "/" + e.file
        guard FileManager.default.fileExists(atPath: path) else { throw ShardError("\(path): rank \(rank)'s file is missing") }
        let f = try LMPKFile(path: path)
        guard let s = f.shard else { throw ShardError("\(path): not a rank file (a whole model, no tensor_parallel sharding)") }
        guard s.worldSize == worldSize, s.sharding == sharding, s.sourceSHA256 == sourceSHA256 else {
            throw ShardError("\(path): belongs to a different sharding (world \(s.worldSize), sharding \(s.sharding.prefix(12))…, source \(s.sourceSHA256.prefix(12))…) than \(ShardManifest.fileName) (world \(worldSize), sharding \(sharding.prefix(12))…, source \(sourceSHA256.prefix(12))…)")
        }
        guard s.rank == rank else { throw ShardError("\(path): holds rank \(s.rank), the manifest lists it as rank \(rank)") }
        guard f.config == config else { throw ShardError("\(path): its model config differs from \(ShardManifest.fileName)'s") }
        guard s.ranges == e.ranges else { throw ShardError("\(path): its ranges \(s.ranges.json.serialized()) differ from the manifest's \(e.ranges.json.serialized())") }
        guard f.fileBytes == e.bytes else { throw ShardError("\(path): \(f.fileBytes) bytes, the manifest says \(e.bytes) (truncated or replaced?)") }
        if verifyDigest {
            let d = f.sha256()
            guard d == e.sha256 else { throw ShardError("\(path): SHA-256 \(d.prefix(16))… does not match the manifest's \(e.sha256.prefix(16))… (corrupt rank file, or a manifest from another sharding)") }
        }
        return f
    }
}

extension LMPKFile {
    /// SHA-256 of the whole file, read in 16 MiB steps whose pages are dropped after
    /// hashing (resident memory stays bounded by a step, not the file).
    public func sha256() -> String {
        var h = SHA256()
        let step = 16 << 20
        var off = 0
        while off < mapping.bytes.count {
            let part = UnsafeRawBufferPointer(rebasing: mapping.bytes[off..<min(mapping.bytes.count, off + step)])
            h.update(part)
            mapping.release(part)
            off += step
        }
        return h.finalizeHex()
    }

    /// Drops the resident pages of `t`'s sections (re-read from the file if touched again).
    public func release(_ t: LMPKTensor) {
        mapping.release(UnsafeRawBufferPointer(rebasing: mapping.bytes[t.range]))
    }
}
