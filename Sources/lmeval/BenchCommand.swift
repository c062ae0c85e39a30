import ArgumentParser
import Foundation
import LMCore
import LMEval
import LMRuntime

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Speed benchmark: load time, prefill and decode tokens/s, peak memory, and ratios to bounds measured in the same run.")

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup(title: "KV cache") var kv: KVOptions
    @Option(help: "Prompt tokens for the prefill measurement.")
    var prefill: Int = 512
    @Option(help: "Tokens for the decode measurement.")
    var decode: Int = 128
    @Option(help: "Tokens already in each sequence's cache when decode is timed (llama-bench's --n-depth).")
    var depth: Int = 0
    @Option(help: "Sequences decoding together (one token each per step, sharing the KV pool); decode tokens/s is their sum.")
    var concurrency: Int = 1
    @Option(help: "Repetitions (medians are reported).")
    var repetitions: Int = 3
    @Option(help: "Write the numbers as JSON to this file.")
    var json: String?

    func validate() throws {
        guard prefill >= 1, decode >= 1, repetitions >= 1 else { throw ValidationError("--prefill, --decode and --repetitions must be ≥ 1") }
        guard depth >= 0, concurrency >= 1 else { throw ValidationError("--depth must be ≥ 0 and --concurrency ≥ 1") }
    }

    func run() throws {
        let context = try modelOptions.context()
        let t0 = Date()
        let model = try modelOptions.load().0
        let load = Date().timeIntervalSince(t0)
        guard prefill <= model.config.maxPositionEmbeddings, depth + decode <= model.config.maxPositionEmbeddings else {
            throw EvalError("--prefill, or --depth + --decode, exceeds the model's \(model.config.maxPositionEmbeddings) positions")
        }
        let kvOptions = try kv.options()
        let r = try Benchmark.run(model: model, loadSeconds: load, prefill: prefill, decode: decode, repetitions: repetitions, context: context,
                                  kvCache: kvOptions, depth: depth, concurrency: concurrency)
        print(r.table(model: modelOptions.model), terminator: "")
        // What the same pool holds under each scheme (computed from the page sizes).
        let c = model.config
        let pool = r.kvPoolBytes
        print("KV pool \(String(format: "%.1f", Double(pool) / 1_048_576)) MiB, blocks of \(kvOptions.blockSize) tokens: what it holds per scheme")
        print("  scheme              bytes/token   vs f16   tokens     sequences of \(depth + decode)")
        let rows: [(KVScheme, KVScheme)] = [(.f32, .f32), (.f16, .f16), (.bf16, .bf16), (.int8, .int8), (.int8, .int4), (.int4, .int4)]
        let f16 = Double(KVCache.blockBytes(layers: c.numLayers, kvHeads: c.numKVHeads, headDim: c.headDim,
                                            options: KVCacheOptions(keys: .f16, values: .f16, blockSize: kvOptions.blockSize)))
        for (k, v) in rows {
            let o = KVCacheOptions(keys: k, values: v, blockSize: kvOptions.blockSize)
            let bb = KVCache.blockBytes(layers: c.numLayers, kvHeads: c.numKVHeads, headDim: c.headDim, options: o)
            let blocks = pool / bb
            let perSeq = (depth + decode + kvOptions.blockSize - 1) / kvOptions.blockSize
            let name = o.schemeDescription.padding(toLength: 18, withPad: " ", startingAt: 0)
            print("  " + name + String(format: "  %11.1f   %6.3f   %-9d  %d", Double(bb) / Double(kvOptions.blockSize), Double(bb) / f16,
                                       blocks * kvOptions.blockSize, blocks / perSeq))
        }
        var out = r.json(model: modelOptions.model)
        if let sh = model as? ShardedModel {
            let tp = try tensorParallel(sh, context: context)
            if case var .object(o) = out { o.append(("tensor_parallel", tp)); out = .object(o) }
        }
        if let json { try writeJSON(out, to: json) }
    }

    /// Per rank: file and resident bytes, and the cost of the collectives per decoded
    /// token (32 decode steps, timed inside the all-reduce and gather calls: transfer plus
    /// waiting for the slower rank). Under MPI the numbers are gathered to rank 0.
    func tensorParallel(_ sh: ShardedModel, context: ComputeContext) throws -> JSON {
        let steps = 32
        let cache = try sh.makeCache(capacity: steps + 1, sequences: 1, options: KVCacheOptions())
        _ = try sh.forward([sh.config.bosTokenId ?? 1], cache: cache, logits: .last, context: context)
        sh.resetCollectiveTime()
        let t0 = Date()
        for i in 0..<steps {
            _ = try sh.forward(Batch([(i * 7919 + 3) % sh.config.vocabSize], sequence: 0, start: cache.count(0)), cache: cache, logits: .last, context: context, hooks: nil)
        }
        let step = Date().timeIntervalSince(t0) / Double(steps)
        let ct = sh.collectiveTime
        let micros = try sh.perRank(ct.map { $0.seconds / Double(steps) * 1e6 })
        let calls = Double(ct.first?.calls ?? 0) / Double(steps)
        let files = try sh.perRank(sh.files.map { Double($0.fileBytes) })
        let resident = try sh.perRank(sh.files.map { Double($0.residentBytes) })
        let processes = sh.ranks.count < sh.worldSize
        let rss = processes ? try sh.perRank([Double(peakResidentBytes())]) : []
        print("tensor parallel: \(sh.worldSize) rank(s), " + (processes ? "one process each (MPI)" : "in one process, \(sh.contexts[0].threads) thread(s) each"))
        print("  rank   file MiB   weights resident MiB" + (processes ? "   peak RSS MiB" : "") + "   collectives µs/token")
        for k in 0..<sh.worldSize {
            print(String(format: "  %4d   %8.1f   %20.1f", k, files[k] / 1_048_576, resident[k] / 1_048_576)
                  + (processes ? String(format: "   %12.1f", rss[k] / 1_048_576) : "") + String(format: "   %20.0f", micros[k]))
        }
        print(String(format: "  %.0f collectives per decoded token; rank 0 spends %.0f µs of a %.2f ms step in them (%.1f %%)",
                     calls, micros[0], step * 1e3, micros[0] / (step * 1e6) * 100))
        return .object([
            ("world_size", .int(Int64(sh.worldSize))), ("processes", .bool(processes)),
            ("collectives_per_token", .double(calls)), ("decode_step_seconds", .double(step)),
            ("ranks", .array((0..<sh.worldSize).map { k in
                .object([("rank", .int(Int64(k))), ("file_bytes", .int(Int64(files[k]))), ("resident_weight_bytes", .int(Int64(resident[k]))),
                         ("peak_rss_bytes", processes ? .int(Int64(rss[k])) : .null), ("collective_us_per_token", .double(micros[k]))])
            })),
        ])
    }
}
