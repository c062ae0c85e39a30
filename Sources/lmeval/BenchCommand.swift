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
    @Option(help: "Prompt tokens for the prefill measurement.")
    var prefill: Int = 512
    @Option(help: "Tokens for the decode measurement.")
    var decode: Int = 128
    @Option(help: "Repetitions (medians are reported).")
    var repetitions: Int = 3
    @Option(help: "Write the numbers as JSON to this file.")
    var json: String?

    func validate() throws {
        guard prefill >= 1, decode >= 1, repetitions >= 1 else { throw ValidationError("--prefill, --decode and --repetitions must be ≥ 1") }
    }

    func run() throws {
        let context = try modelOptions.context()
        let t0 = Date()
        let model = try LlamaModel.load(path: modelOptions.model)
        let load = Date().timeIntervalSince(t0)
        guard prefill + decode <= model.config.maxPositionEmbeddings else {
            throw EvalError("--prefill + --decode exceeds the model's \(model.config.maxPositionEmbeddings) positions")
        }
        let r = try Benchmark.run(model: model, loadSeconds: load, prefill: prefill, decode: decode, repetitions: repetitions, context: context)
        print(r.table(model: modelOptions.model), terminator: "")
        if let json { try writeJSON(r.json(model: modelOptions.model), to: json) }
    }
}
