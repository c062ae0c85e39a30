import ArgumentParser
import Foundation
import LMCore
import LMEval
import LMFormats

/// `lmeval logits`: one forward pass over a prompt, every position's logits written to a
/// safetensors file, so a conversion can be compared with another runtime (e.g.
/// transformers on an exported folder: `scripts/check-transformers.py`).
struct LogitsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logits",
        abstract: "Write the logits of one forward pass over a prompt to a safetensors file (input_ids int32 [n], logits float32 [n, vocab]).")

    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "Prompt text (the tokenizer's BOS is added when it adds one).")
    var prompt: String?
    @Option(help: "Token ids instead of a prompt, comma-separated.")
    var ids: String?
    @Option(name: .shortAndLong, help: "Output safetensors file.")
    var output: String

    func validate() throws {
        guard (prompt == nil) != (ids == nil) else { throw ValidationError("give exactly one of --prompt and --ids") }
        if let ids, ids.split(separator: ",").contains(where: { Int($0.trimmingCharacters(in: .whitespaces)) == nil }) {
            throw ValidationError("--ids must be comma-separated integers, got '\(ids)'")
        }
    }

    func run() throws {
        let context = try modelOptions.context()
        let (model, tok) = try modelOptions.load()
        let tokens = prompt.map { tok.encode($0) } ?? ids!.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces))! }
        guard !tokens.isEmpty else { throw ValidationError("the prompt gives no tokens") }
        if let bad = tokens.first(where: { $0 < 0 || $0 >= model.config.vocabSize }) {
            throw ValidationError("token id \(bad) is outside the vocabulary (0..<\(model.config.vocabSize))")
        }
        let cache = try model.makeCache(capacity: tokens.count, sequences: 1)
        let logits = try model.forward(tokens, cache: cache, logits: .all, context: context)
        let w = try SafetensorsWriter(path: output, entries: [.init(name: "input_ids", dtype: .i32, shape: [tokens.count]),
                                                              .init(name: "logits", dtype: .f32, shape: [tokens.count, model.config.vocabSize])],
                                      metadata: [("model", modelOptions.model)])
        try tokens.map { Int32($0).littleEndian }.withUnsafeBytes { try w.write($0) }
        try w.write(floats: logits, as: .f32)
        try w.commit()
        print("wrote \(output): \(tokens.count) positions × \(model.config.vocabSize) logits")
    }
}
