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
        let model = try LlamaModel.load(path: modelOptions.model)
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
        if let json { try writeJSON(r.json(model: modelOptions.model), to: json) }
    }
}
