import COpenBLAS
import Foundation
import LMCore
import LMRuntime
import LMFormats

/// A speed measurement of one model: load, batched prefill, token-by-token decode,
/// against bounds measured in the same process (sgemm throughput on the model's
/// own matrix shapes, memory read bandwidth).
public struct BenchmarkResult: Sendable {
    public var loadSeconds: Double
    public var prefillTokens: Int
    public var prefillTokensPerSecond: [Double]
    public var decodeTokens: Int
    public var decodeTokensPerSecond: [Double]
    /// Tokens/s if prefill were only the model's matmuls at this process's sgemm speed.
    public var sgemmBoundTokensPerSecond: Double
    public var sgemmGFLOPS: Double
    /// Tokens/s if decode only streamed the weights (as stored) once per token at the measured bandwidth.
    public var bandwidthBoundTokensPerSecond: Double
    public var bandwidthGBps: Double
    public var weightBytes: Int
    public var peakRSSBytes: Int
    public var threads: Int
    /// The decode kernel set in use.
    public var kernels: String = ""
    /// Parallel regions per decoded token (worker wake-ups; fewer is cheaper).
    public var regionsPerDecodedToken: Double = 0
    /// The KV cache: schemes, bytes per cached token, pool size in bytes and tokens.
    public var kvCache: String = ""
    public var kvBytesPerToken: Double = 0
    public var kvPoolBytes: Int = 0
    public var kvPoolTokens: Int = 0
    /// Tokens in each sequence's cache before decode is timed, and sequences decoding together.
    public var depth: Int = 0
    public var concurrency: Int = 1
    /// Sequences of `depth + decodeTokens` positions the pool holds at once.
    public var maxConcurrentSequences: Int = 0

    static func median(_ x: [Double]) -> Double { let s = x.sorted(); return s.isEmpty ? 0 : s[s.count / 2] }
    public var prefillMedian: Double { Self.median(prefillTokensPerSecond) }
    public var decodeMedian: Double { Self.median(decodeTokensPerSecond) }

    public func json(model: String) -> JSON {
        func arr(_ a: [Double]) -> JSON { .array(a.map { .double($0) }) }
        return .object([
            ("model", .string(model)), ("threads", .int(Int64(threads))), ("kernels", .string(kernels)),
            ("parallel_regions_per_decoded_token", .double(regionsPerDecodedToken)), ("load_seconds", .double(loadSeconds)),
            ("prefill_tokens", .int(Int64(prefillTokens))), ("prefill_tokens_per_second", arr(prefillTokensPerSecond)),
            ("prefill_median", .double(prefillMedian)), ("decode_tokens", .int(Int64(decodeTokens))),
            ("decode_tokens_per_second", arr(decodeTokensPerSecond)), ("decode_median", .double(decodeMedian)),
            ("sgemm_gflops", .double(sgemmGFLOPS)), ("sgemm_bound_tokens_per_second", .double(sgemmBoundTokensPerSecond)),
            ("prefill_ratio_to_sgemm_bound", .double(prefillMedian / sgemmBoundTokensPerSecond)),
            ("bandwidth_gbps", .double(bandwidthGBps)), ("weight_bytes", .int(Int64(weightBytes))),
            ("bandwidth_bound_tokens_per_second", .double(bandwidthBoundTokensPerSecond)),
            ("decode_ratio_to_bandwidth_bound", .double(decodeMedian / bandwidthBoundTokensPerSecond)),
            ("peak_rss_bytes", .int(Int64(peakRSSBytes))),
            ("kv_cache", .string(kvCache)), ("kv_bytes_per_token", .double(kvBytesPerToken)), ("kv_pool_bytes", .int(Int64(kvPoolBytes))),
            ("kv_pool_tokens", .int(Int64(kvPoolTokens))), ("depth", .int(Int64(depth))), ("concurrency", .int(Int64(concurrency))),
            ("max_concurrent_sequences", .int(Int64(maxConcurrentSequences))),
        ])
    }

    public func table(model: String) -> String {
        var s = "model        \(model) (\(threads) threads, \(kernels) kernels)\n"
        s += String(format: "load         %.1f ms\n", loadSeconds * 1000)
        s += String(format: "prefill      %.1f tokens/s (pp%d, median of %d)   bound %.1f (sgemm %.1f GFLOP/s)   ratio %.2f\n",
                    prefillMedian, prefillTokens, prefillTokensPerSecond.count, sgemmBoundTokensPerSecond, sgemmGFLOPS, prefillMedian / sgemmBoundTokensPerSecond)
        let at = (depth > 0 ? " at depth \(depth)" : "") + (concurrency > 1 ? ", \(concurrency) sequences, aggregate" : "")
        s += String(format: "decode       %.1f tokens/s (tg%d%@, median of %d)   bound %.1f (%.1f GB/s over %.0f MiB weights + KV)   ratio %.2f\n",
                    decodeMedian, decodeTokens, at, decodeTokensPerSecond.count, bandwidthBoundTokensPerSecond, bandwidthGBps,
                    Double(weightBytes) / 1_048_576, decodeMedian / bandwidthBoundTokensPerSecond)
        s += String(format: "kv cache     %@, %.1f bytes/token, pool %.1f MiB = %d tokens, holds %d sequences of %d tokens\n",
                    kvCache, kvBytesPerToken, Double(kvPoolBytes) / 1_048_576, kvPoolTokens, maxConcurrentSequences, depth + decodeTokens)
        s += String(format: "regions      %.0f parallel regions per decoded token\n", regionsPerDecodedToken)
        s += String(format: "peak RSS     %.0f MiB\n", Double(peakRSSBytes) / 1_048_576)
        return s
    }
}

public enum Benchmark {
    /// Measures `model` (already loaded in `loadSeconds`). Prompt tokens are a fixed
    /// pseudo-random sequence, so runs are comparable.
    /// - Throws: `RuntimeError` from the forward pass (e.g. more positions than the model has).
    public static func run(model: any CausalLM, loadSeconds: Double, prefill: Int = 512, decode: Int = 128, repetitions: Int = 3,
                           context: ComputeContext, bounds: Bool = true, kvCache: KVCacheOptions = KVCacheOptions(),
                           depth: Int = 0, concurrency: Int = 1) throws -> BenchmarkResult {
        let c = model.config
        let ids = (0..<prefill).map { ($0 &* 7919 &+ 13) % c.vocabSize }
        guard concurrency >= 1, depth >= 0 else { throw EvalError("--concurrency must be ≥ 1 and --depth ≥ 0") }
        // One cache for the run: prefill in sequence 0, then `concurrency` sequences each
        // filled to `depth` (untimed) and decoding together.
        let perSequence = depth + decode
        let cache = try model.makeCache(capacity: max(prefill, perSequence), sequences: concurrency, options: kvCache)
        let need = concurrency * cache.blocksNeeded(positions: perSequence)
        guard cache.blocksNeeded(positions: prefill) <= cache.blocks, need <= cache.blocks else {
            throw EvalError("KV cache too small: \(concurrency) sequence(s) × \(perSequence) tokens (--depth + --decode) need \(need) blocks, --prefill \(prefill) needs \(cache.blocksNeeded(positions: prefill)); the pool holds \(cache.blocks) blocks (\(cache.tokenCapacity) tokens, \(kvCache.schemeDescription)); raise --kv-cache-size or --cache-max-entry-count, or lower --concurrency, --depth or --decode")
        }
        var pp: [Double] = [], tg: [Double] = []
        var regions = 0.0
        let fill = (0..<depth).map { ($0 &* 104729 &+ 7) % c.vocabSize }
        for _ in 0..<repetitions {
            cache.reset()
            let t0 = Date()
            _ = try model.forward(ids, cache: cache, logits: .last, context: context)
            pp.append(Double(prefill) / Date().timeIntervalSince(t0))
            cache.reset()
            if depth > 0 {
                for s in 0..<concurrency { _ = try model.forward(Batch(fill, sequence: s, start: 0), cache: cache, logits: .none, context: context, hooks: nil) }
            }
            var toks = [Int](repeating: 1 % c.vocabSize, count: concurrency)
            let r0 = context.parallelRegions
            let t1 = Date()
            for step in 0..<decode {
                var batch = Batch()
                for s in 0..<concurrency { batch.append([toks[s]], sequence: s, start: depth + step) }
                let l = try model.forward(batch, cache: cache, logits: .last, context: context, hooks: nil)
                for s in 0..<concurrency {
                    let row = l[(s * c.vocabSize)..<((s + 1) * c.vocabSize)]
                    toks[s] = (row.indices.max { row[$0] < row[$1] } ?? s * c.vocabSize) - s * c.vocabSize
                }
            }
            tg.append(Double(decode * concurrency) / Date().timeIntervalSince(t1))
            regions = Double(context.parallelRegions - r0) / Double(decode)
        }
        // Bounds measured now, with the same worker split the runtime uses.
        let shapes = modelShapes(c)
        let flopsPerToken = shapes.reduce(0.0) { $0 + 2.0 * Double($1.0 * $1.1) }
        let gflops = bounds ? measureSgemm(shapes: shapes, tokens: prefill, context: context) : 0
        // Decode streams every matrix once per token (the tied head is the embedding;
        // only the looked-up embedding rows are read, which is negligible).
        let weightBytes = model.decodeStreamBytes
        let bw = bounds ? measureBandwidth(bytes: max(weightBytes, 256 << 20), context: context) : 0
        // Each decode step also streams every sequence's cached K/V (on average
        // depth + decode/2 positions each).
        let kvBytesPerStep = Double(concurrency) * (Double(depth) + Double(decode) / 2) * cache.bytesPerToken
        var r = BenchmarkResult(
            loadSeconds: loadSeconds, prefillTokens: prefill, prefillTokensPerSecond: pp, decodeTokens: decode, decodeTokensPerSecond: tg,
            sgemmBoundTokensPerSecond: gflops * 1e9 / flopsPerToken, sgemmGFLOPS: gflops,
            bandwidthBoundTokensPerSecond: Double(concurrency) * bw * 1e9 / (Double(weightBytes) + kvBytesPerStep), bandwidthGBps: bw, weightBytes: weightBytes,
            peakRSSBytes: peakResidentBytes(), threads: context.threads)
        r.kernels = context.kernels.name
        r.regionsPerDecodedToken = regions
        r.kvCache = kvCache.description
        r.kvBytesPerToken = cache.bytesPerToken
        r.kvPoolBytes = cache.poolBytes
        r.kvPoolTokens = cache.tokenCapacity
        r.depth = depth
        r.concurrency = concurrency
        r.maxConcurrentSequences = cache.blocks / max(1, cache.blocksNeeded(positions: perSequence))
        return r
    }

    /// (rows, cols) of every matmul per token, output head included.
    static func modelShapes(_ c: ModelConfig) -> [(Int, Int)] {
        let q = c.numHeads * c.headDim, kv = c.numKVHeads * c.headDim
        var s: [(Int, Int)] = []
        for _ in 0..<c.numLayers {
            s += [(q, c.hiddenSize), (kv, c.hiddenSize), (kv, c.hiddenSize), (c.hiddenSize, q),
                  (c.intermediateSize, c.hiddenSize), (c.intermediateSize, c.hiddenSize), (c.hiddenSize, c.intermediateSize)]
        }
        s.append((c.vocabSize, c.hiddenSize))
        return s
    }

    /// GFLOP/s of `DenseLinear.apply` on one layer's distinct shapes plus the head (best of 3).
    static func measureSgemm(shapes: [(Int, Int)], tokens: Int, context: ComputeContext) -> Double {
        var distinct: [(Int, Int)] = []
        for sh in shapes where !distinct.contains(where: { $0 == sh }) { distinct.append(sh) }
        var best = 0.0
        for _ in 0..<3 {
            var flops = 0.0, secs = 0.0
            for (r, c) in distinct {
                let w = DenseLinear(rows: r, cols: c, values: [Float](repeating: 0.001, count: r * c))
                let x = [Float](repeating: 0.01, count: tokens * c)
                var o = [Float](repeating: 0, count: tokens * r)
                let t0 = Date()
                x.withUnsafeBufferPointer { xp in o.withUnsafeMutableBufferPointer { w.apply(xp.baseAddress!, tokens: tokens, out: $0.baseAddress!, ldOut: r, context: context) } }
                secs += Date().timeIntervalSince(t0)
                flops += 2.0 * Double(tokens * r * c)
            }
            best = max(best, flops / secs / 1e9)
        }
        return best
    }

    /// GB/s of a parallel SIMD sum over `bytes` (best of 3).
    static func measureBandwidth(bytes: Int, context: ComputeContext) -> Double {
        let n = bytes / 4
        let buf = UnsafeMutablePointer<Float>.allocate(capacity: n)
        defer { buf.deallocate() }
        buf.update(repeating: 1, count: n)
        let p = SendablePointer(buf)
        var best = 0.0
        for _ in 0..<3 {
            let parts = ComputeContext.ranges(n, parts: context.threads, align: 64)
            let sums = UnsafeMutablePointer<Float>.allocate(capacity: parts.count)
            let sp = SendablePointer(sums)
            let t0 = Date()
            context.parallelFor(parts.count) { i in
                let raw = UnsafeRawPointer(p.p)
                var acc = SIMD16<Float>()
                var j = parts[i].lowerBound
                while j + 16 <= parts[i].upperBound { acc += raw.loadUnaligned(fromByteOffset: 4 * j, as: SIMD16<Float>.self); j += 16 }
                sp.p[i] = acc.sum()
            }
            let secs = Date().timeIntervalSince(t0)
            sums.deallocate()
            best = max(best, Double(bytes) / secs / 1e9)
        }
        return best
    }
}
