import Foundation
import LMCore
import LMFormats
import LMQuant
import LMRuntime

/// A malformed gate file or missing/changed data (exit code 2). `key` is the JSON
/// path of the offending entry, e.g. `suites[0].candidates[1].limits.top1_min`.
public struct GateFileError: Error, CustomStringConvertible {
    public let file: String
    public let key: String
    public let reason: String
    public var description: String { "\(file): \(key): \(reason)" }
}

/// Limits a candidate must meet; nil = not checked.
public struct GateLimits: Sendable, Equatable {
    public var pplRatioMax: Double?
    public var pplIncreaseMax: Double?
    public var bpbMax: Double?
    public var meanKLMax: Double?
    public var top1Min: Double?
    public var prefillSpeedRatioMin: Double?
    public var decodeSpeedRatioMin: Double?
    public var needsSpeed: Bool { prefillSpeedRatioMin != nil || decodeSpeedRatioMin != nil }
    public init() {}
}

/// How a candidate model is obtained.
public enum GateCandidateSource: Sendable {
    case artifact(String)
    /// Built by the gate through the same `BuildSpec` as `lmconvert quantize`.
    case recipe(BuildSpec)
}

public struct GateCandidate: Sendable {
    public var name: String
    public var source: GateCandidateSource
    /// The KV cache the candidate is measured with (recipe key `kv_cache`; default f32).
    public var kvCache: KVCacheOptions = KVCacheOptions()
    public var limits: GateLimits
    public var justification: String?
}

public struct GateData: Sendable {
    public var text: String
    public var sha256: String
    public var options: PerplexityOptions
}

public struct GateSuite: Sendable {
    public var name: String
    public var data: GateData
    public var baseline: GateCandidateSource
    public var candidates: [GateCandidate]
}

/// A parsed, validated gate file (formats/gates.md).
public struct GateFile: Sendable {
    public var path: String
    public var threads: Int
    public var cacheDir: String
    public var suites: [GateSuite]

    public static func load(_ path: String) throws -> GateFile {
        let json: JSON
        do { json = try JSON.parse(file: path) } catch { throw GateFileError(file: path, key: "(file)", reason: "\(error)") }
        let dir = (path as NSString).deletingLastPathComponent
        func fail(_ key: String, _ r: String) -> GateFileError { GateFileError(file: path, key: key, reason: r) }
        func expand(_ s: String, _ key: String) throws -> String {
            var out = s
            while let r = out.range(of: #"\$\{[A-Za-z_][A-Za-z0-9_]*\}"#, options: .regularExpression) {
                let name = String(out[r].dropFirst(2).dropLast())
                var value = ProcessInfo.processInfo.environment[name]
                if value == nil && name == SharedData.environmentKey { value = SharedData.locate() }
                guard let v = value else { throw fail(key, "environment variable \(name) is not set") }
                out.replaceSubrange(r, with: v)
            }
            if !out.hasPrefix("/") { out = (dir.isEmpty ? "." : dir) + "/" + out }
            return out
        }
        func object(_ j: JSON?, _ key: String, allowed: [String]) throws -> [(String, JSON)] {
            guard let o = j?.object else { throw fail(key, j == nil ? "missing" : "must be an object") }
            for (k, _) in o where !allowed.contains(k) { throw fail("\(key).\(k)", "unknown key (allowed: \(allowed.joined(separator: ", ")))") }
            return o
        }
        func str(_ j: JSON?, _ key: String) throws -> String {
            guard let s = j?.string else { throw fail(key, j == nil ? "missing" : "must be a string") }
            return s
        }
        func optInt(_ j: JSON?, _ key: String) throws -> Int? {
            guard let j, !j.isNull else { return nil }
            guard let i = j.int, i > 0 else { throw fail(key, "must be a positive integer") }
            return i
        }
        func source(_ cj: JSON, _ ck: String) throws -> GateCandidateSource {
            switch (cj["model"], cj["recipe"]) {
            case let (m?, nil): return .artifact(try expand(try str(m, ck + ".model"), ck + ".model"))
            case let (nil, r?):
                let rk = ck + ".recipe"
                let ro = try object(r, rk, allowed: ["source", "scheme", "group_size", "clip", "overrides", "method", "calib", "gptq", "allocation", "prune", "shard", "kv_cache", "tokenizer"])
                _ = ro
                let source = try expand(try str(r["source"], rk + ".source"), rk + ".source")
                var clip = ClipMethod.minmax
                if let c = r["clip"] {
                    guard let m = ClipMethod(rawValue: try str(c, rk + ".clip")) else { throw fail(rk + ".clip", "must be minmax or mse") }
                    clip = m
                }
                var ov: [String] = []
                if let o = r["overrides"] {
                    guard let a = o.array else { throw fail(rk + ".overrides", "must be an array of 'REGEX=SCHEME' strings") }
                    for (k, x) in a.enumerated() {
                        ov.append(try str(x, rk + ".overrides[\(k)]"))
                    }
                }
                let tokenizer = try r["tokenizer"].map { try expand(try str($0, rk + ".tokenizer"), rk + ".tokenizer") }
                var spec = BuildSpec(source: source, scheme: try str(r["scheme"], rk + ".scheme"), groupSize: try optInt(r["group_size"], rk + ".group_size"),
                                     clip: clip, overrides: ov, tokenizer: tokenizer)
                if let sj = r["shard"] {
                    _ = try object(sj, rk + ".shard", allowed: ["tp", "vocab_parallel"])
                    guard let tp = try optInt(sj["tp"], rk + ".shard.tp") else { throw fail(rk + ".shard.tp", "missing (the world size, ≥ 1)") }
                    var vp = false
                    if let v = sj["vocab_parallel"] {
                        guard let b = v.bool else { throw fail(rk + ".shard.vocab_parallel", "must be true or false") }
                        vp = b
                    }
                    spec.shard = ShardOptions(tp: tp, vocabParallel: vp)
                }
                if let mj = r["method"] {
                    guard let m = QuantMethod(rawValue: try str(mj, rk + ".method")) else {
                        throw fail(rk + ".method", "must be one of \(QuantMethod.allCases.map(\.rawValue).joined(separator: ", "))")
                    }
                    spec.method = m
                }
                if let cj = r["calib"] {
                    _ = try object(cj, rk + ".calib", allowed: ["text", "samples", "ctx", "seed"])
                    var cal = CalibrationOptions(file: try expand(try str(cj["text"], rk + ".calib.text"), rk + ".calib.text"))
                    if let n = try optInt(cj["samples"], rk + ".calib.samples") { cal.samples = n }
                    if let n = try optInt(cj["ctx"], rk + ".calib.ctx") { cal.ctx = n }
                    if let sd = cj["seed"] {
                        guard let v = sd.int, v >= 0 else { throw fail(rk + ".calib.seed", "must be an integer ≥ 0") }
                        cal.seed = UInt64(v)
                    }
                    spec.calibration = cal
                }
                if let gj = r["gptq"] {
                    _ = try object(gj, rk + ".gptq", allowed: ["damp", "act_order", "block_size", "true_sequential"])
                    if let d = gj["damp"] {
                        guard let v = d.double else { throw fail(rk + ".gptq.damp", "must be a number") }
                        spec.gptq.damp = v
                    }
                    if let a = gj["act_order"] {
                        guard let b = a.bool else { throw fail(rk + ".gptq.act_order", "must be true or false") }
                        spec.gptq.actOrder = b
                    }
                    if let b = try optInt(gj["block_size"], rk + ".gptq.block_size") { spec.gptq.blockSize = b }
                    if let a = gj["true_sequential"] {
                        guard let b = a.bool else { throw fail(rk + ".gptq.true_sequential", "must be true or false") }
                        spec.gptq.trueSequential = b
                    }
                }
                if let aj = r["allocation"] {
                    _ = try object(aj, rk + ".allocation", allowed: ["target_bpw", "candidates", "samples", "kl_samples"])
                    guard let t = aj["target_bpw"]?.double else { throw fail(rk + ".allocation.target_bpw", "missing or not a number (bits per weight)") }
                    var a = AllocationOptions(targetBPW: t)
                    if let cj = aj["candidates"] {
                        guard let arr = cj.array else { throw fail(rk + ".allocation.candidates", "must be an array of scheme names") }
                        a.candidates = try arr.enumerated().map { try str($1, rk + ".allocation.candidates[\($0)]") }
                    }
                    if let n = try optInt(aj["samples"], rk + ".allocation.samples") { a.samples = n }
                    if let n = try optInt(aj["kl_samples"], rk + ".allocation.kl_samples") { a.klSamples = n }
                    spec.allocation = a
                }
                if let pj = r["prune"] {
                    _ = try object(pj, rk + ".prune", allowed: ["method", "sparsity", "pattern", "storage"])
                    guard let m = PruneMethod(rawValue: try str(pj["method"], rk + ".prune.method")) else {
                        throw fail(rk + ".prune.method", "must be one of \(PruneMethod.allCases.map(\.rawValue).joined(separator: ", "))")
                    }
                    var po = PruneOptions(method: m)
                    if let sj = pj["sparsity"] {
                        guard let v = sj.double else { throw fail(rk + ".prune.sparsity", "must be a number in [0, 1)") }
                        po.sparsity = v
                    }
                    if let pt = pj["pattern"] {
                        do { po.pattern = try SparsityPattern(parsing: try str(pt, rk + ".prune.pattern")) } catch let e as BuildSpecError {
                            throw fail(rk + ".prune.pattern", e.reason)
                        }
                    }
                    if let st = pj["storage"] {
                        guard let v = PruneStorage(rawValue: try str(st, rk + ".prune.storage")) else { throw fail(rk + ".prune.storage", "must be compressed or dense") }
                        po.storage = v
                    }
                    spec.prune = po
                }
                do { _ = try spec.recipe() } catch let e as BuildSpecError {
                    let key = ["calib_samples": "calib.samples", "calib_ctx": "calib.ctx", "damp": "gptq.damp", "block_size": "gptq.block_size",
                               "target_bpw": "allocation.target_bpw", "candidates": "allocation.candidates", "alloc_samples": "allocation.samples", "alloc_kl_samples": "allocation.kl_samples",
                               "sparsity": "prune.sparsity", "pattern": "prune.pattern", "storage": "prune.storage", "act_order": "gptq.act_order",
                               "true_sequential": "gptq.true_sequential"][e.option] ?? e.option
                    throw fail(rk + "." + key, e.reason)
                }
                return .recipe(spec)
            case (_?, _?): throw fail(ck, "give either 'model' or 'recipe', not both")
            case (nil, nil): throw fail(ck, "needs 'model' (an artifact) or 'recipe' (built by the gate)")
            }
        }
        let top = try object(json, "(top level)", allowed: ["version", "threads", "cache_dir", "suites", "description"])
        _ = top
        guard json["version"]?.int == 1 else { throw fail("version", "must be 1 (this tool reads gate files of version 1)") }
        let threads = try optInt(json["threads"], "threads") ?? 2
        var cacheDir = ProcessInfo.processInfo.environment["LMKIT_CACHE"] ?? (NSHomeDirectory() + "/.cache/lmkit")
        if let c = json["cache_dir"] { cacheDir = try expand(try str(c, "cache_dir"), "cache_dir") }
        guard let suitesJ = json["suites"]?.array, !suitesJ.isEmpty else { throw fail("suites", "must be a non-empty array") }
        var suites: [GateSuite] = []
        for (si, sj) in suitesJ.enumerated() {
            let sk = "suites[\(si)]"
            _ = try object(sj, sk, allowed: ["name", "data", "baseline", "candidates", "description"])
            let name = try str(sj["name"], sk + ".name")
            let dk = sk + ".data"
            _ = try object(sj["data"], dk, allowed: ["text", "sha256", "protocol", "ctx", "chunks", "stride", "separator"])
            let d = sj["data"]!
            let text = try expand(try str(d["text"], dk + ".text"), dk + ".text")
            let sha = try str(d["sha256"], dk + ".sha256").lowercased()
            guard let proto = PerplexityProtocol(rawValue: try str(d["protocol"], dk + ".protocol")) else {
                throw fail(dk + ".protocol", "must be one of \(PerplexityProtocol.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            guard let ctx = try optInt(d["ctx"], dk + ".ctx") else { throw fail(dk + ".ctx", "missing") }
            var opts = PerplexityOptions(proto: proto, ctx: ctx, stride: try optInt(d["stride"], dk + ".stride"), limit: try optInt(d["chunks"], dk + ".chunks"))
            if let sep = d["separator"] { opts.separator = try str(sep, dk + ".separator") }
            _ = try object(sj["baseline"], sk + ".baseline", allowed: ["model", "recipe"])
            let baseline = try source(sj["baseline"]!, sk + ".baseline")
            if sj["baseline"]?["recipe"]?["kv_cache"] != nil {
                throw fail(sk + ".baseline.recipe.kv_cache", "the baseline is measured with the f32 cache; give kv_cache to candidates")
            }
            guard let candJ = sj["candidates"]?.array, !candJ.isEmpty else { throw fail(sk + ".candidates", "must be a non-empty array") }
            var cands: [GateCandidate] = []
            for (ci, cj) in candJ.enumerated() {
                let ck = sk + ".candidates[\(ci)]"
                _ = try object(cj, ck, allowed: ["name", "model", "recipe", "limits", "justification"])
                let cname = try str(cj["name"], ck + ".name")
                let src = try source(cj, ck)
                let lk = ck + ".limits"
                let names = ["ppl_ratio_max", "ppl_increase_max", "bpb_max", "mean_kl_max", "top1_min", "prefill_speed_ratio_min", "decode_speed_ratio_min"]
                let lo = try object(cj["limits"], lk, allowed: names)
                guard !lo.isEmpty else { throw fail(lk, "at least one limit is required") }
                var values: [String: Double] = [:]
                for (k, v) in lo {
                    guard let x = v.double, x.isFinite, x >= 0 else { throw fail(lk + "." + k, "must be a non-negative number") }
                    values[k] = x
                }
                if values["bpb_max"] != nil && proto != .documents { throw fail(lk + ".bpb_max", "bits per byte needs the documents protocol") }
                if let t = values["top1_min"], t > 1 { throw fail(lk + ".top1_min", "is a fraction (0…1)") }
                var limits = GateLimits()
                limits.pplRatioMax = values["ppl_ratio_max"]; limits.pplIncreaseMax = values["ppl_increase_max"]; limits.bpbMax = values["bpb_max"]
                limits.meanKLMax = values["mean_kl_max"]; limits.top1Min = values["top1_min"]
                limits.prefillSpeedRatioMin = values["prefill_speed_ratio_min"]; limits.decodeSpeedRatioMin = values["decode_speed_ratio_min"]
                var cand = GateCandidate(name: cname, source: src, limits: limits, justification: cj["justification"]?.string)
                if let kv = cj["recipe"]?["kv_cache"] {
                    let kk = ck + ".recipe.kv_cache"
                    do {
                        cand.kvCache = try KVCacheOptions.parse(try str(kv, kk), option: "kv_cache")
                    } catch let e as RuntimeError { throw fail(kk, e.reason) }
                }
                cands.append(cand)
            }
            suites.append(GateSuite(name: name, data: GateData(text: text, sha256: sha, options: opts), baseline: baseline, candidates: cands))
        }
        return GateFile(path: path, threads: threads, cacheDir: cacheDir, suites: suites)
    }
}
