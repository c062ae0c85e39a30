import ArgumentParser
import Foundation
import LMCore
import LMEval

extension PerplexityProtocol: ExpressibleByArgument {}

struct PerplexityCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "perplexity",
        abstract: "Perplexity (and bits per byte) of a text under a named protocol.",
        discussion: """
        Protocols (formats/perplexity-protocols.md):

          chunks     llama.cpp's llama-perplexity: non-overlapping --ctx chunks,
                     the second half of each scored
          sliding    the Hugging Face guide: --ctx windows every --stride tokens,
                     the new tokens of each scored
          documents  split on --separator; BOS + each document, truncated to
                     --ctx, every token scored (also bits per byte)

        The protocol, the context and the text's SHA-256 are printed with every result.
        """)

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup(title: "KV cache") var kv: KVOptions
    @Option(help: "UTF-8 text file to evaluate.")
    var text: String
    @Option(name: .customLong("protocol"), help: "chunks | sliding | documents.")
    var proto: PerplexityProtocol = .chunks
    @Option(help: "Context length in tokens.")
    var ctx: Int = 512
    @Option(help: "Stride for --protocol sliding (default ctx/2).")
    var stride: Int?
    @Option(help: "Evaluate at most this many chunks / windows / documents.")
    var chunks: Int?
    @Option(help: "Document separator for --protocol documents.")
    var separator: String = "<|endoftext|>"
    @Option(help: "Baseline model (HF folder or .lmpk): adds its PPL, mean KL(baseline ‖ model) and top-1 agreement.")
    var baseline: String?
    @Option(help: "Evaluate this many windows at once, as concurrent sequences sharing the KV pool (same numbers as 1).")
    var parallel: Int = 1
    @Option(help: "Write every number as JSON to this file.")
    var json: String?

    func validate() throws {
        guard parallel >= 1 else { throw ValidationError("--parallel must be at least 1") }
        guard ctx >= 2 else { throw ValidationError("--ctx must be at least 2") }
        if let c = chunks, c < 1 { throw ValidationError("--chunks must be at least 1") }
        if stride != nil && proto != .sliding { throw ValidationError("--stride applies to --protocol sliding only") }
        guard FileManager.default.fileExists(atPath: text) else { throw ValidationError("--text \(text): no such file") }
    }

    func run() throws {
        let context = try modelOptions.context()
        let kvOptions = try kv.options()
        let (model, tok) = try modelOptions.load()
        if !kvOptions.isDefault || kvOptions.budget != nil || parallel > 1 {
            printErr(try model.makeCache(capacity: ctx, sequences: parallel, options: kvOptions).summary)
        }
        guard ctx <= model.config.maxPositionEmbeddings else {
            throw EvalError("--ctx \(ctx) exceeds the model's max_position_embeddings (\(model.config.maxPositionEmbeddings))")
        }
        let base = try baseline.map { try ModelLoader.load($0).0 }
        let r = try Perplexity.run(model: model, tokenizer: tok, textPath: text,
                                   options: PerplexityOptions(proto: proto, ctx: ctx, stride: stride, limit: chunks, separator: separator,
                                                              kvCache: kvOptions, parallel: parallel),
                                   baseline: base, context: context)
        print(r.summary(model: modelOptions.model), terminator: "")
        if let json { try writeJSON(r.json(model: modelOptions.model), to: json) }
    }
}
