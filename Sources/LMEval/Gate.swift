import Foundation
import LMCore
import LMFormats
import LMQuant
import LMRuntime
import LMShard
import LMTokenizer

/// One checked metric of one candidate.
public struct GateCheck: Sendable {
    public var metric: String
    public var baseline: Double?
    public var value: Double
    public var limit: Double
    /// "max" (value ≤ limit) or "min" (value ≥ limit).
    public var kind: String
    public var passed: Bool { kind == "max" ? value <= limit : value >= limit }
}

public struct GateCandidateResult: Sendable {
    public var suite: String
    public var name: String
    public var checks: [GateCheck]
    public var perplexity: Double
    public var baselinePerplexity: Double
    public var meanKL: Double
    public var top1: Double
    public var bitsPerByte: Double?
    public var seconds: Double
    public var passed: Bool { checks.allSatisfy(\.passed) }
}

public struct GateReport: Sendable {
    public var file: String
    public var results: [GateCandidateResult]
    public var baselineCacheHits: Int
    public var seconds: Double
    public var passed: Bool { results.allSatisfy(\.passed) }
}

/// Runs a gate file (formats/gates.md).
public enum Gate {
    /// Runs every suite of `g` on its own compute context (`g.threads` workers, the
    /// kernel set of `kernels`, default `KernelSet.best`); sets no process state.
    public static func run(_ g: GateFile, kernels: KernelSet = .best, note: (String) -> Void = { _ in }) throws -> GateReport {
        let start = Date()
        let context = ComputeContext(threads: g.threads, kernels: kernels)
        var results: [GateCandidateResult] = []
        var hits = 0
        for (si, suite) in g.suites.enumerated() {
            let dk = "suites[\(si)].data"
            guard FileManager.default.fileExists(atPath: suite.data.text) else {
                throw GateFileError(file: g.path, key: dk + ".text", reason: "\(suite.data.text) not found")
            }
            let sha = try sha256Hex(file: suite.data.text)
            guard sha == suite.data.sha256 else {
                throw GateFileError(file: g.path, key: dk + ".sha256", reason: "the text's SHA-256 is \(sha), the gate pins \(suite.data.sha256): data changed (update the gate deliberately, with new thresholds)")
            }
            // The baseline model is built only when needed (cache miss, speed limits).
            var baseLoaded: (any CausalLM, Tokenizer, String?)? = nil
            func baseModel() throws -> (any CausalLM, Tokenizer) {
                if let b = baseLoaded { return (b.0, b.1) }
                let b = try model(suite.baseline, name: "baseline", gate: g, key: "suites[\(si)].baseline", kernels: context.kernels)
                baseLoaded = b
                return (b.0, b.1)
            }
            defer { if let t = baseLoaded?.2 { try? FileManager.default.removeItem(atPath: t) } }
            let opts = suite.data.options
            // Baseline: cached per-position results keyed by content digests.
            var keyHash = SHA256()
            let baseDigest: String
            switch suite.baseline {
            case let .artifact(p): baseDigest = try ModelSource.digest(p) + "|tok:" + tokenizerDigest(p, nil)
            case let .recipe(spec): baseDigest = try ModelSource.digest(spec.source) + "|tok:" + tokenizerDigest(spec.source, spec.tokenizer) + "|" + spec.canonicalString()
            }
            let keyText = [baseDigest, sha, opts.proto.rawValue, "\(opts.ctx)", "\(opts.limit ?? 0)", "\(opts.stride ?? 0)",
                           opts.separator, "\(g.threads)", context.kernels.name, "lmgb2"].joined(separator: "|")
            Array(keyText.utf8).withUnsafeBytes { keyHash.update($0) }
            let key = keyHash.finalizeHex()
            let cachePath = g.cacheDir + "/baseline-\(key.prefix(32)).bin"
            var base: BaselineRecord
            if let cached = BaselineRecord.read(path: cachePath, key: key) {
                base = cached; hits += 1
                note("[\(suite.name)] baseline from cache \(cachePath)")
            } else {
                note("[\(suite.name)] computing the baseline")
                let (bm, btok) = try baseModel()
                var rec = BaselineRecord(key: key, vocab: bm.config.vocabSize)
                let r = try Perplexity.run(model: bm, tokenizer: btok, textPath: suite.data.text, options: opts, progress: nil, context: context) { logits, vocab, rows, targets in
                    for (j, row) in rows.enumerated() { rec.append(row: logits + row * vocab, target: targets[j]) }
                }
                // The baseline's NLL from the same arithmetic as every candidate's (the
                // kernel set's log-sum-exp), so a model gated against itself has ratio 1 exactly.
                rec.nll = r.tokenNLL
                rec.tokensPerSecond = r.tokensPerSecond
                try rec.write(to: cachePath)
                base = rec
            }
            let basePPL = exp(base.nllSum / Double(max(base.rows, 1)))
            for c in suite.candidates {
                let t0 = Date()
                let (cand, tok, tmp) = try model(c.source, name: c.name, gate: g, key: "suites[\(si)].candidates '\(c.name)'", kernels: context.kernels)
                defer { if let tmp { try? FileManager.default.removeItem(atPath: tmp) } }
                var j = 0
                var klSum = 0.0, agree = 0
                var mismatch = false
                var candOpts = opts
                candOpts.kvCache = c.kvCache
                let r = try Perplexity.run(model: cand, tokenizer: tok, textPath: suite.data.text, options: candOpts, progress: nil, context: context) { logits, vocab, rows, _ in
                    guard vocab == base.vocab else { mismatch = true; return }
                    for row in rows where j < base.rows {
                        let (kl, a) = base.compare(row: logits + row * vocab, at: j)
                        klSum += kl; if a { agree += 1 }
                        j += 1
                    }
                }
                guard !mismatch, j == base.rows, r.tokensScored == base.rows else {
                    throw GateFileError(file: g.path, key: "suites[\(si)].candidates", reason: "candidate '\(c.name)' scored \(r.tokensScored) positions, the baseline \(base.rows) (different tokenizer or vocabulary?)")
                }
                let meanKL = klSum / Double(max(j, 1)), top1 = Double(agree) / Double(max(j, 1))
                var checks: [GateCheck] = []
                let l = c.limits
                if let x = l.pplRatioMax { checks.append(GateCheck(metric: "ppl_ratio", baseline: 1, value: r.perplexity / basePPL, limit: x, kind: "max")) }
                if let x = l.pplIncreaseMax { checks.append(GateCheck(metric: "ppl_increase", baseline: 0, value: r.perplexity - basePPL, limit: x, kind: "max")) }
                if let x = l.bpbMax, let b = r.bitsPerByte {
                    checks.append(GateCheck(metric: "bits_per_byte", baseline: base.nllSum / log(2) / Double(r.bytes ?? 1), value: b, limit: x, kind: "max"))
                }
                if let x = l.meanKLMax { checks.append(GateCheck(metric: "mean_kl", baseline: 0, value: meanKL, limit: x, kind: "max")) }
                if let x = l.top1Min { checks.append(GateCheck(metric: "top1_agreement", baseline: 1, value: top1, limit: x, kind: "min")) }
                if l.needsSpeed {
                    let s = try speedRatios(candidate: cand, baseline: try baseModel().0, limits: l, context: context, kvCache: c.kvCache)
                    if let x = l.prefillSpeedRatioMin { checks.append(GateCheck(metric: "prefill_speed_ratio", baseline: 1, value: s.prefill, limit: x, kind: "min")) }
                    if let x = l.decodeSpeedRatioMin { checks.append(GateCheck(metric: "decode_speed_ratio", baseline: 1, value: s.decode, limit: x, kind: "min")) }
                }
                let res = GateCandidateResult(suite: suite.name, name: c.name, checks: checks, perplexity: r.perplexity, baselinePerplexity: basePPL,
                                              meanKL: meanKL, top1: top1, bitsPerByte: r.bitsPerByte, seconds: Date().timeIntervalSince(t0))
                note("[\(suite.name)] \(c.name): \(res.passed ? "PASS" : "FAIL") (\(String(format: "%.1f", res.seconds)) s)")
                results.append(res)
            }
        }
        return GateReport(file: g.path, results: results, baselineCacheHits: hits, seconds: Date().timeIntervalSince(start))
    }

    /// Digest of the tokenizer a model source brings: `tokenizer.json` of an HF folder, an
    /// explicit llama2.c tokenizer file; single files (.lmpk, .gguf) embed theirs and their
    /// own digest covers it ("-").
    static func tokenizerDigest(_ source: String, _ explicit: String?) throws -> String {
        if let t = explicit { return try sha256Hex(file: t) }
        let tj = source + "/tokenizer.json"
        return FileManager.default.fileExists(atPath: tj) ? try sha256Hex(file: tj) : "-"
    }

    /// Speed of `candidate` relative to `baseline`, robust to a loaded host: baseline and
    /// candidate runs alternate (B C, C B, …) so both see the same load, each pair gives a
    /// ratio, and the median of `pairs` ratios is taken. A median below its floor is
    /// measured again, up to `attempts` times in all, keeping the best: load only ever
    /// makes a correct build look slower by chance, while a real slowdown stays below the
    /// floor in every attempt.
    public static func speedRatios(candidate: any CausalLM, baseline: any CausalLM, limits l: GateLimits, context: ComputeContext,
                                   pairs: Int = 5, attempts: Int = 3, prefill: Int = 128, decode: Int = 32,
                                   kvCache: KVCacheOptions = KVCacheOptions()) throws -> (prefill: Double, decode: Double) {
        var best = (prefill: 0.0, decode: 0.0)
        for _ in 0..<attempts {
            var pp: [Double] = [], tg: [Double] = []
            for i in 0..<pairs {
                func once(_ m: any CausalLM, _ kv: KVCacheOptions) throws -> BenchmarkResult {
                    try Benchmark.run(model: m, loadSeconds: 0, prefill: prefill, decode: decode, repetitions: 1, context: context, bounds: false, kvCache: kv)
                }
                let b: BenchmarkResult, c: BenchmarkResult
                if i % 2 == 0 { b = try once(baseline, KVCacheOptions()); c = try once(candidate, kvCache) }
                else { c = try once(candidate, kvCache); b = try once(baseline, KVCacheOptions()) }
                pp.append(c.prefillMedian / b.prefillMedian)
                tg.append(c.decodeMedian / b.decodeMedian)
            }
            best = (max(best.prefill, BenchmarkResult.median(pp)), max(best.decode, BenchmarkResult.median(tg)))
            if best.prefill >= (l.prefillSpeedRatioMin ?? 0) && best.decode >= (l.decodeSpeedRatioMin ?? 0) { break }
        }
        return best
    }

    /// Loads an artifact (CRC-verified when .lmpk), or builds a recipe into a temporary
    /// .lmpk — and, with `shard`, a temporary shard folder run in-process on `g.threads`
    /// threads — (returned for removal). The tokenizer is the model's own.
    static func model(_ source: GateCandidateSource, name: String, gate g: GateFile, key: String, kernels: KernelSet) throws -> (any CausalLM, Tokenizer, String?) {
        switch source {
        case let .artifact(path):
            do {
                if path.hasSuffix(".lmpk") {
                    let f = try LMPKFile(path: path)
                    if let bad = f.firstCorruptTensor() { throw LMPKError(file: path, reason: "CRC mismatch in tensor '\(bad)'") }
                }
                let (m, t) = try ModelLoader.load(path)
                return (m, t, nil)
            } catch { throw GateFileError(file: g.path, key: key + ".model", reason: "\(error)") }
        case let .recipe(spec):
            let tmp = g.cacheDir + "/build-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).lmpk"
            do {
                try FileManager.default.createDirectory(atPath: g.cacheDir, withIntermediateDirectories: true)
                _ = try spec.build(output: tmp)
                if let s = spec.shard {
                    let dir = tmp + ".shards"
                    defer { try? FileManager.default.removeItem(atPath: tmp) }
                    do {
                        let f = try LMPKFile(path: tmp)
                        _ = try Sharder.write(plan: try ShardPlan(source: f, tp: s.tp, vocabParallel: s.vocabParallel), source: f, output: dir)
                        let (m, t) = try ModelLoader.load(shards: dir, threads: g.threads, kernels: kernels)
                        return (m, t, dir)
                    } catch {
                        try? FileManager.default.removeItem(atPath: dir)
                        throw error
                    }
                }
                let (m, t) = try ModelLoader.load(tmp)
                return (m, t, tmp)
            } catch {
                try? FileManager.default.removeItem(atPath: tmp)
                throw GateFileError(file: g.path, key: key + ".recipe", reason: "\(error)")
            }
        }
    }
}

// MARK: reports

extension GateReport {
    static func fmt(_ x: Double?) -> String {
        guard let x else { return "–" }
        if x == 0 { return "0" }
        return abs(x) < 0.01 ? String(format: "%.6f", x) : String(format: "%.4f", x)
    }

    /// Readable table.
    public func table() -> String {
        func row(_ cols: [String]) -> String {
            let widths = [14, 22, 20, 12, 12, 14]
            var line = ""
            for (i, c) in cols.enumerated() {
                if i < widths.count {
                    let pad = max(0, widths[i] - c.count)
                    line += i >= 3 ? String(repeating: " ", count: pad) + c + " " : c + String(repeating: " ", count: pad) + " "
                } else { line += " " + c }
            }
            return line + "\n"
        }
        var s = row(["suite", "candidate", "metric", "baseline", "value", "limit", "result"])
        for r in results {
            for c in r.checks {
                s += row([r.suite, r.name, c.metric, Self.fmt(c.baseline), Self.fmt(c.value), (c.kind == "max" ? "≤ " : "≥ ") + Self.fmt(c.limit), c.passed ? "PASS" : "FAIL"])
            }
        }
        let failed = results.filter { !$0.passed }
        s += "\n\(results.count - failed.count) passed, \(failed.count) failed (\(String(format: "%.1f", seconds)) s, baseline cache hits: \(baselineCacheHits))\n"
        for f in failed {
            for c in f.checks where !c.passed {
                s += "FAILED \(f.suite)/\(f.name): \(c.metric) = \(Self.fmt(c.value)), limit \(c.kind == "max" ? "≤" : "≥") \(Self.fmt(c.limit))\n"
            }
        }
        return s
    }

    public func json() -> JSON {
        .object([("file", .string(file)), ("passed", .bool(passed)), ("seconds", .double(seconds)), ("baseline_cache_hits", .int(Int64(baselineCacheHits))),
                 ("candidates", .array(results.map { r in
                     .object([("suite", .string(r.suite)), ("name", .string(r.name)), ("passed", .bool(r.passed)),
                              ("perplexity", .double(r.perplexity)), ("baseline_perplexity", .double(r.baselinePerplexity)),
                              ("mean_kl", .double(r.meanKL)), ("top1_agreement", .double(r.top1)),
                              ("bits_per_byte", r.bitsPerByte.map { .double($0) } ?? .null), ("seconds", .double(r.seconds)),
                              ("checks", .array(r.checks.map { c in
                                  .object([("metric", .string(c.metric)), ("baseline", c.baseline.map { .double($0) } ?? .null), ("value", .double(c.value)),
                                           ("limit", .double(c.limit)), ("kind", .string(c.kind)), ("passed", .bool(c.passed))])
                              }))])
                 }))])
    }

    public func junit() -> String {
        func esc(_ s: String) -> String {
            s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
        }
        let failures = results.filter { !$0.passed }.count
        var x = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        x += "<testsuites name=\"lmeval gate\" tests=\"\(results.count)\" failures=\"\(failures)\" time=\"\(String(format: "%.3f", seconds))\">\n"
        for suite in Array(Set(results.map(\.suite))).sorted() {
            let rs = results.filter { $0.suite == suite }
            x += "  <testsuite name=\"\(esc(suite))\" tests=\"\(rs.count)\" failures=\"\(rs.filter { !$0.passed }.count)\">\n"
            for r in rs {
                x += "    <testcase classname=\"\(esc(suite))\" name=\"\(esc(r.name))\" time=\"\(String(format: "%.3f", r.seconds))\">\n"
                for c in r.checks where !c.passed {
                    let msg = "\(c.metric) = \(Self.fmt(c.value)), limit \(c.kind == "max" ? "≤" : "≥") \(Self.fmt(c.limit))"
                    x += "      <failure message=\"\(esc(msg))\" type=\"threshold\">\(esc(msg))</failure>\n"
                }
                x += "    </testcase>\n"
            }
            x += "  </testsuite>\n"
        }
        return x + "</testsuites>\n"
    }

    public func markdown() -> String {
        var m = "## Accuracy gates: \(passed ? "all passed" : "FAILED")\n\n| suite | candidate | metric | baseline | value | limit | result |\n|---|---|---|---|---|---|---|\n"
        for r in results {
            for c in r.checks {
                m += "| \(r.suite) | \(r.name) | \(c.metric) | \(Self.fmt(c.baseline)) | \(Self.fmt(c.value)) | \(c.kind == "max" ? "≤" : "≥") \(Self.fmt(c.limit)) | \(c.passed ? "✅ pass" : "❌ FAIL") |\n"
            }
        }
        return m
    }
}
