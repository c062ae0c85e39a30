import Foundation
import LMCore
import LMFormats

/// What `Sharder.write` did.
public struct ShardSummary: Sendable {
    public var manifest: ShardManifest
    /// Per rank: file bytes.
    public var fileBytes: [Int]
    public var seconds: Double
    public var peakRSSBytes: Int
}

/// Writes a `ShardPlan`: one self-contained `.lmpk` per rank (version 2: `split`
/// ranges, the full config, the rank's ranges and the sharding digest) and
/// `manifest.json` (formats/lmpk.md, "Tensor-parallel shards").
///
/// Streams a tensor at a time: each rank's part is copied from the source mapping
/// (whole groups with their scales, never re-encoded), written and dropped, so memory
/// is bounded by the largest tensor part. Rank files are written atomically and the
/// manifest last, after any old one is removed: an interrupted run leaves no folder
/// that loads. The same source and plan give the same bytes.
public enum Sharder {
    /// - Parameter sourceName: recorded in the manifest (default: the source file's name).
    public static func write(plan: ShardPlan, source f: LMPKFile, sourceName: String? = nil, output dir: String, progress: ProgressReporter? = nil) throws -> ShardSummary {
        let start = Date()
        let fm = FileManager.default
        try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let names = (0..<plan.worldSize).map { ShardManifest.rankFileName($0, of: plan.worldSize) }
        let isRankFile = { (n: String) in n.hasPrefix("rank-") && n.contains("-of-") && n.hasSuffix(".lmpk") }
        let foreign = try fm.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".lmpk") && !isRankFile($0) }.sorted()
        guard foreign.isEmpty else {
            throw ShardError("\(dir): holds other .lmpk files (\(foreign.joined(separator: ", "))); shard into an empty folder or one made by `lmconvert shard`")
        }
        // The old manifest goes first: from here until the new one is written the folder does not load.
        let manifestPath = dir + "/" + ShardManifest.fileName
        if fm.fileExists(atPath: manifestPath) { try fm.removeItem(atPath: manifestPath) }

        let sourceSHA = f.sha256()
        let sharding = ShardInfo.shardingDigest(sourceSHA256: sourceSHA, ranges: plan.ranges)
        let tok = try f.tokenizerBytes()
        var meta: [(String, JSON)] = []
        for k in ["recipe", "provenance", "pruning"] { if let v = f.header[k] { meta.append((k, v)) } }
        var done = 0
        for (r, rg) in plan.ranges.enumerated() {
            let info = ShardInfo(worldSize: plan.worldSize, rank: r, sharding: sharding, sourceSHA256: sourceSHA, ranges: rg)
            let layout = ShardLayout(config: f.config, ranges: rg)
            let specs = try layout.tensors.map { p -> LMPKTensorSpec in
                guard let t = f[p.name] else { throw ShardError("\(f.path): tensor '\(p.name)' is missing") }
                return LMPKTensorSpec(name: p.name, shape: p.shape, scheme: t.scheme, split: p.split)
            }
            let w = try LMPKWriter(path: dir + "/" + names[r], config: f.config, tokenizerJSON: tok,
                                   meta: meta + [("tensor_parallel", info.json)], tensors: specs)
            do {
                for p in layout.tensors {
                    let t = f[p.name]!
                    try w.write(sections: try part(t, p.split))
                    f.release(t)
                    done += 1
                    progress?.update(done, extra: "rank \(r) \(p.name)")
                }
                try w.commit()
            } catch {
                w.abort()
                throw error
            }
        }
        // Stale rank files of an earlier sharding into this folder.
        for n in try fm.contentsOfDirectory(atPath: dir) where isRankFile(n) && !names.contains(n) { try fm.removeItem(atPath: dir + "/" + n) }
        var ranks: [ShardManifest.Rank] = []
        var sizes: [Int] = []
        for (r, rg) in plan.ranges.enumerated() {
            let file = try LMPKFile(path: dir + "/" + names[r])
            ranks.append(ShardManifest.Rank(rank: r, file: names[r], bytes: file.fileBytes, sha256: file.sha256(), ranges: rg))
            sizes.append(file.fileBytes)
        }
        let manifest = ShardManifest(worldSize: plan.worldSize, config: f.config, sharding: sharding,
                                     source: sourceName ?? (f.path as NSString).lastPathComponent, sourceSHA256: sourceSHA, ranks: ranks)
        let out = try AtomicFileWriter(path: manifestPath)
        do {
            try out.write(manifest.json.serialized(pretty: true) + "\n")
            try out.commit()
        } catch {
            out.abort()
            throw error
        }
        return ShardSummary(manifest: manifest, fileBytes: sizes, seconds: Date().timeIntervalSince(start), peakRSSBytes: peakResidentBytes())
    }

    /// A rank's part of `t`: rows (axis 0 of a matrix), columns (axis 1), or elements of a vector.
    static func part(_ t: LMPKTensor, _ split: TensorSplit?) throws -> [[UInt8]] {
        guard let s = split else { return t.sections.map { Array($0) } }
        do {
            if s.axis == 0 && t.shape.count == 2 {
                return try t.scheme.sliceRows(t.sections, rows: t.rows, cols: t.cols, lo: s.range.lowerBound, hi: s.range.upperBound)
            }
            return try t.scheme.sliceColumns(t.sections, rows: t.rows, cols: t.cols, lo: s.range.lowerBound, hi: s.range.upperBound)
        } catch {
            throw ShardError("tensor '\(t.name)': \(error)")
        }
    }
}
