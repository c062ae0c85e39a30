import Foundation
import LMCore
import LMRuntime
import LMTokenizer

/// A named, pinned perplexity protocol. Numbers are only comparable under the same one.
public enum PerplexityProtocol: String, Sendable, CaseIterable {
    /// llama.cpp `llama-perplexity`: the whole text tokenized once (with a leading BOS
    /// when the tokenizer adds one), cut into non-overlapping `ctx`-token chunks
    /// (partial last chunk dropped); when the tokenizer adds a BOS, each chunk's first
    /// token is then overwritten by BOS; only the
    /// second half of each chunk is scored (positions ctx/2 … ctx−2 predict the next).
    case chunks
    /// Hugging Face's perplexity guide: windows of `ctx` tokens every `stride`
    /// tokens; each window scores only the tokens not scored before (the first
    /// token of the whole text is never scored; with stride = ctx a window's first
    /// token has no context and is not scored either); NLL averaged over scored tokens.
    case sliding
    /// Per document (split on a separator): BOS + tokens truncated to `ctx`, every
    /// token after the first scored; bits per byte over the UTF-8 bytes of the
    /// scored tokens' decoded text.
    case documents
}

/// Settings of one perplexity run.
public struct PerplexityOptions: Sendable {
    public var proto: PerplexityProtocol
    public var ctx: Int
    /// `sliding` only; default `ctx/2`.
    public var stride: Int?
    /// Stop after this many chunks / windows / documents.
    public var limit: Int?
    /// `documents` only.
    public var separator: String
    /// The model's KV cache (the baseline's is always f32).
    public var kvCache: KVCacheOptions
    /// Windows evaluated at once as concurrent sequences sharing the KV pool. Memory:
    /// the scored logits of `parallel` windows (`parallel × rows × vocab × 4` bytes).
    public var parallel: Int
    public init(proto: PerplexityProtocol, ctx: Int, stride: Int? = nil, limit: Int? = nil, separator: String = "<|endoftext|>",
                kvCache: KVCacheOptions = KVCacheOptions(), parallel: Int = 1) {
        self.proto = proto; self.ctx = ctx; self.stride = stride; self.limit = limit; self.separator = separator
        self.kvCache = kvCache; self.parallel = parallel
    }
}

/// The result of a perplexity run: every number, and the protocol that produced it.
public struct PerplexityResult: Sendable {
    public var proto: PerplexityProtocol
    public var ctx: Int
    public var stride: Int?
    public var textPath: String
    public var textSHA256: String
    public var bosPerWindow: Bool
    /// Windows (chunks / sliding windows / documents) evaluated.
    public var windows: Int
    public var tokensScored: Int
    /// Tokens run through the model (scored or context).
    public var tokensEvaluated: Int
    public var nllSum: Double
    public var nllSqSum: Double
    /// UTF-8 bytes of the scored text (`documents` only).
    public var bytes: Int?
    public var seconds: Double
    public var peakRSSBytes: Int
    /// Running perplexity after each window (as llama.cpp prints).
    public var running: [Double]
    /// Per-token NLL in nats, in scoring order (kept for KL/gates; may be large).
    public var tokenNLL: [Double]
    /// With a baseline model: the baseline's NLL sum, KL(base ‖ model) per scored token,
    /// and the number of positions whose argmax agrees.
    public var baselineNLLSum: Double? = nil
    public var tokenKL: [Double] = []
    public var top1Agreements: Int = 0
    /// Worker threads and kernel set the run used.
    public var threads: Int = 1
    public var kernels: String = ""
    /// KV cache schemes ("k=f32,v=f32") and windows run at once.
    public var kvCache: String = ""
    public var parallel: Int = 1

    public var meanKL: Double? { tokenKL.isEmpty ? nil : tokenKL.reduce(0, +) / Double(tokenKL.count) }
    public var top1Agreement: Double? { tokenKL.isEmpty ? nil : Double(top1Agreements) / Double(tokenKL.count) }
    public var baselinePerplexity: Double? { baselineNLLSum.map { exp($0 / Double(max(tokensScored, 1))) } }
    /// 99th percentile of the per-token KL.
    public var kl99: Double? {
        guard !tokenKL.isEmpty else { return nil }
        let s = tokenKL.sorted(); return s[min(s.count - 1, Int(Double(s.count) * 0.99))]
    }

    public var meanNLL: Double { nllSum / Double(max(tokensScored, 1)) }
    public var perplexity: Double { exp(meanNLL) }
    /// Standard error of the perplexity (llama.cpp's estimate: ppl · stderr(mean NLL)).
    public var perplexityStderr: Double {
        let n = Double(tokensScored)
        guard n > 1 else { return 0 }
        let mean = meanNLL
        let variance = max(nllSqSum / n - mean * mean, 0)
        return perplexity * (variance / (n - 1)).squareRoot()
    }
    public var bitsPerByte: Double? { bytes.map { nllSum / log(2) / Double($0) } }
    public var tokensPerSecond: Double { Double(tokensEvaluated) / max(seconds, 1e-9) }

    /// Machine-readable form (every number and the protocol).
    public func json(model: String) -> JSON {
        var o: [(String, JSON)] = [
            ("model", .string(model)),
            ("protocol", .object([
                ("name", .string(proto.rawValue)), ("ctx", .int(Int64(ctx))),
                ("stride", stride.map { .int(Int64($0)) } ?? .null), ("bos_per_window", .bool(bosPerWindow)),
                ("text", .string(textPath)), ("text_sha256", .string(textSHA256)),
            ])),
            ("windows", .int(Int64(windows))), ("tokens_scored", .int(Int64(tokensScored))),
            ("tokens_evaluated", .int(Int64(tokensEvaluated))),
            ("nll_sum", .double(nllSum)), ("mean_nll", .double(meanNLL)),
            ("perplexity", .double(perplexity)), ("perplexity_stderr", .double(perplexityStderr)),
        ]
        if let b = bytes { o.append(("bytes", .int(Int64(b)))) }
        if let bpb = bitsPerByte { o.append(("bits_per_byte", .double(bpb))) }
        if let kl = meanKL, let t = top1Agreement, let bp = baselinePerplexity {
            o += [("baseline_perplexity", .double(bp)), ("ppl_ratio", .double(perplexity / bp)),
                  ("mean_kl", .double(kl)), ("kl_p99", .double(kl99 ?? 0)), ("top1_agreement", .double(t))]
        }
        o += [("seconds", .double(seconds)), ("tokens_per_second", .double(tokensPerSecond)),
              ("peak_rss_bytes", .int(Int64(peakRSSBytes))), ("threads", .int(Int64(threads))), ("kernels", .string(kernels)),
              ("kv_cache", .string(kvCache)), ("parallel", .int(Int64(parallel)))]
        return .object(o)
    }

    /// A readable summary block.
    public func summary(model: String) -> String {
        var s = "model      \(model)\n"
        s += "protocol   \(proto.rawValue), ctx \(ctx)\(stride.map { ", stride \($0)" } ?? "")\(bosPerWindow ? ", BOS per window" : ", no BOS inserted")\n"
        s += "text       \(textPath) (sha256 \(textSHA256.prefix(16))…)\n"
        s += "scored     \(tokensScored) tokens in \(windows) \(proto == .documents ? "documents" : proto == .chunks ? "chunks" : "windows")"
        if let b = bytes { s += ", \(b) bytes" }
        s += "\n"
        s += String(format: "PPL        %.4f ± %.4f\n", perplexity, perplexityStderr)
        if let bpb = bitsPerByte { s += String(format: "bits/byte  %.4f\n", bpb) }
        if let kl = meanKL, let t = top1Agreement, let bp = baselinePerplexity {
            s += String(format: "baseline   PPL %.4f (ratio %.4f), mean KL %.6f nats (p99 %.5f), top-1 agreement %.2f %%\n", bp, perplexity / bp, kl, kl99 ?? 0, 100 * t)
        }
        s += "kv cache   \(kvCache)\(parallel > 1 ? ", \(parallel) windows at once" : "")\n"
        s += String(format: "speed      %.1f tokens/s (%d evaluated in %.2f s, %d threads, %@ kernels), peak RSS %.0f MiB\n",
                    tokensPerSecond, tokensEvaluated, seconds, threads, kernels, Double(peakRSSBytes) / 1_048_576)
        return s
    }
}

public struct EvalError: Error, CustomStringConvertible {
    public let reason: String
    public init(_ r: String) { reason = r }
    public var description: String { reason }
}

/// Runs perplexity protocols over a model.
public enum Perplexity {
    /// One window of a protocol: its tokens, the rows whose logits are scored, and the
    /// token each of those rows predicts.
    struct Window { var tokens: [Int]; var rows: [Int]; var targets: [Int] }

    /// Evaluates `textPath` under `options`: the protocol's windows, `options.parallel`
    /// at a time as concurrent sequences of one batch sharing the KV pool (the numbers
    /// do not depend on `parallel`).
    /// - Throws: `EvalError` when the text yields nothing to score under the protocol,
    ///   for `parallel` above the window count, or when the KV pool cannot hold
    ///   `parallel` windows (before any work); `RuntimeError` for bad KV options.
    ///   `observer` sees each window's scored logits (`rows` index the `vocab`-wide rows
    ///   at `logits`) in window order, before scoring rewrites them.
    public static func run(model: any CausalLM, tokenizer: Tokenizer, textPath: String, options: PerplexityOptions,
                           baseline: (any CausalLM)? = nil, progress: Bool? = nil, context: ComputeContext,
                           observer: ((_ logits: UnsafeMutablePointer<Float>, _ vocab: Int, _ rows: [Int], _ targets: [Int]) -> Void)? = nil) throws -> PerplexityResult {
        if let b = baseline, b.config.vocabSize != model.config.vocabSize {
            throw EvalError("baseline vocabulary (\(b.config.vocabSize)) differs from the model's (\(model.config.vocabSize))")
        }
        guard options.ctx >= 2 else { throw EvalError("--ctx must be at least 2") }
        guard options.ctx <= model.config.maxPositionEmbeddings else {
            throw EvalError("--ctx \(options.ctx) exceeds the model's max_position_embeddings (\(model.config.maxPositionEmbeddings))")
        }
        guard options.parallel >= 1 else { throw EvalError("--parallel must be at least 1, got \(options.parallel)") }
        let text: String
        do { text = try String(contentsOfFile: textPath, encoding: .utf8) } catch {
            throw EvalError("\(textPath): cannot read as UTF-8 text (\(error.localizedDescription))")
        }
        let sha = try sha256Hex(file: textPath)
        let start = Date()
        let bos = tokenizer.bosId
        let V = model.config.vocabSize
        var r = PerplexityResult(proto: options.proto, ctx: options.ctx, stride: nil, textPath: textPath, textSHA256: sha,
                                 bosPerWindow: bos != nil, windows: 0, tokensScored: 0, tokensEvaluated: 0, nllSum: 0, nllSqSum: 0,
                                 bytes: nil, seconds: 0, peakRSSBytes: 0, running: [], tokenNLL: [])
        if baseline != nil { r.baselineNLLSum = 0 }
        r.threads = context.threads
        r.kernels = context.kernels.name
        r.kvCache = options.kvCache.description
        r.parallel = options.parallel

        // The protocol's windows.
        var windows: [Window] = []
        let unit: String
        switch options.proto {
        case .chunks:
            unit = "chunks"
            // As llama-perplexity: the whole text tokenized with the tokenizer's BOS (when
            // it adds one), then each chunk's first token overwritten by BOS.
            let ids = tokenizer.encode(text, addBOS: bos != nil)
            let n = options.ctx
            var count = ids.count / n
            guard count > 0 else { throw EvalError("\(textPath): \(ids.count) tokens, fewer than one chunk of --ctx \(n)") }
            if let l = options.limit { count = min(count, l) }
            let rows = Array((n / 2)..<(n - 1))
            for c in 0..<count {
                var w = Array(ids[(c * n)..<((c + 1) * n)])
                if let b = bos { w[0] = b }
                windows.append(Window(tokens: w, rows: rows, targets: rows.map { w[$0 + 1] }))
            }
        case .sliding:
            unit = "windows"
            let ids = tokenizer.encode(text)
            let stride = options.stride ?? options.ctx / 2
            guard stride >= 1 && stride <= options.ctx else { throw EvalError("--stride must be between 1 and --ctx") }
            r.stride = stride
            r.bosPerWindow = false
            guard ids.count >= 2 else { throw EvalError("\(textPath): fewer than 2 tokens") }
            var begins: [Int] = []
            var b = 0
            while true { begins.append(b); if b + options.ctx >= ids.count { break }; b += stride }
            if let l = options.limit { begins = Array(begins.prefix(l)) }
            var prevEnd = 0
            for b in begins {
                let end = min(b + options.ctx, ids.count)
                let targetsPos = Array(max(prevEnd, b + 1)..<end)
                windows.append(Window(tokens: Array(ids[b..<end]), rows: targetsPos.map { $0 - b - 1 }, targets: targetsPos.map { ids[$0] }))
                prevEnd = end
            }
        case .documents:
            unit = "docs"
            var docs = TextDocuments.split(text, separator: options.separator)
            guard !docs.isEmpty else { throw EvalError("\(textPath): no documents (separator '\(options.separator)')") }
            if let l = options.limit { docs = Array(docs.prefix(l)) }
            var bytes = 0
            for d in docs {
                var ids = tokenizer.encode(d, addBOS: false)
                if let b = bos { ids.insert(b, at: 0) }
                ids = Array(ids.prefix(options.ctx))
                guard ids.count >= 2 else { continue }
                let scored = Array(ids[1...])
                // The bytes the scored tokens stand for (a character cut by the truncation
                // counts its real bytes, not the 3 of U+FFFD).
                bytes += tokenizer.decodeBytes(scored).count
                windows.append(Window(tokens: ids, rows: Array(0..<(ids.count - 1)), targets: scored))
            }
            r.bytes = bytes
            guard !windows.isEmpty else { throw EvalError("\(textPath): no document has 2 or more tokens") }
        }
        let P = options.parallel
        guard P <= windows.count else {
            throw EvalError("--parallel \(P) is larger than the number of \(unit) (\(windows.count)); use at most \(windows.count)")
        }

        // The pool must hold `P` windows at once: say so before running.
        let longest = windows.map(\.tokens.count).max()!
        // So must memory: the scored logits of P windows (twice with a baseline) and the
        // forward's activations for P × longest tokens.
        let c = model.config
        let rowsPerGroup = P * windows.map(\.rows.count).max()!
        let tokensPerGroup = P * longest
        let activationFloats = tokensPerGroup * (3 * c.hiddenSize + 3 * c.numHeads * c.headDim + 2 * c.numKVHeads * c.headDim + 2 * c.intermediateSize)
        let needBytes = 4 * (rowsPerGroup * V * (baseline == nil ? 1 : 2) + activationFloats)
        let available = SystemMemory.availableBytes()
        if available > 0 && needBytes > available {
            throw EvalError(String(format: "--parallel %d × %d tokens needs about %.2f GiB for logits and activations, %.2f GiB is available; lower --parallel or --ctx",
                                   P, longest, Double(needBytes) / 1073741824, Double(available) / 1073741824))
        }
        let cache = try model.makeCache(capacity: options.ctx, sequences: P, options: options.kvCache)
        let need = P * cache.blocksNeeded(positions: longest)
        guard need <= cache.blocks else {
            throw EvalError("KV cache too small: --parallel \(P) × \(longest) tokens need \(need) blocks (\(need * cache.blockSize) tokens), the pool holds \(cache.blocks) blocks (\(cache.tokenCapacity) tokens, \(cache.options.schemeDescription)); raise --kv-cache-size or --cache-max-entry-count, or lower --parallel or --ctx")
        }
        let baseCache = try baseline?.makeCache(capacity: options.ctx, sequences: P)

        let pr = ProgressReporter(label: "perplexity", total: windows.count, unit: " " + unit, enabled: progress)
        var g = 0
        while g < windows.count {
            let group = windows[g..<min(g + P, windows.count)]
            var batch = Batch()
            var logitRows: [Int] = []
            for (j, w) in group.enumerated() {
                logitRows += w.rows.map { batch.count + $0 }
                batch.append(w.tokens, sequence: j, start: 0)
            }
            cache.reset()
            var logits = try model.forward(batch, cache: cache, logits: .rows(logitRows), context: context, hooks: nil)
            var bl: [Float] = []
            if let b = baseline, let bc = baseCache {
                bc.reset()
                bl = try b.forward(batch, cache: bc, logits: .rows(logitRows), context: context, hooks: nil)
            }
            var off = 0
            for w in group {
                let rows = Array(off..<(off + w.rows.count))
                if let observer { logits.withUnsafeMutableBufferPointer { observer($0.baseAddress!, V, rows, w.targets) } }
                if baseline != nil {
                    let (kl, top1) = Divergence.klAndTop1(base: bl, model: logits, vocab: V, rows: rows, context: context)
                    r.tokenKL += kl
                    r.top1Agreements += top1.filter { $0 }.count
                    for x in Scoring.nll(logits: &bl, vocab: V, rows: rows, targets: w.targets, context: context) { r.baselineNLLSum! += x }
                }
                let nll = Scoring.nll(logits: &logits, vocab: V, rows: rows, targets: w.targets, context: context)
                for x in nll { r.nllSum += x; r.nllSqSum += x * x }
                r.tokenNLL += nll
                r.tokensScored += nll.count
                r.tokensEvaluated += w.tokens.count
                r.windows += 1
                r.running.append(exp(r.nllSum / Double(max(r.tokensScored, 1))))
                off += w.rows.count
            }
            g += group.count
            pr.update(g, extra: String(format: "PPL %.4f", r.running.last!))
        }
        r.seconds = Date().timeIntervalSince(start)
        r.peakRSSBytes = peakResidentBytes()
        return r
    }
}
