import ArgumentParser
import Foundation
import LMCore
import LMEval

struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Generate text from a prompt (greedy by default; --temperature/--top-p/--seed to sample).")

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup(title: "KV cache") var kv: KVOptions
    @Option(help: "Prompt text (the tokenizer's BOS is added when it adds one).")
    var prompt: String = ""
    @Option(help: "Tokens to generate.")
    var maxTokens: Int = 128
    @Option(help: "Sampling temperature; 0 = greedy.")
    var temperature: Float = 0
    @Option(help: "Nucleus sampling mass.")
    var topP: Float = 1
    @Option(help: "Random seed for sampling.")
    var seed: UInt64 = 0
    @Flag(help: "Keep going after an end-of-sequence token.")
    var ignoreEOS = false
    @Flag(help: "Print token ids instead of text.")
    var ids = false
    @Option(help: "Write prompt/generated ids, text and speed as JSON to this file.")
    var json: String?

    func validate() throws {
        guard maxTokens >= 1 else { throw ValidationError("--max-tokens must be at least 1") }
        guard temperature >= 0 else { throw ValidationError("--temperature must be ≥ 0") }
        guard topP > 0 && topP <= 1 else { throw ValidationError("--top-p must be in (0, 1]") }
    }

    func run() throws {
        let context = try modelOptions.context()
        let (model, tok) = try modelOptions.load()
        let kvOptions = try kv.options()
        let promptIds = tok.encode(prompt)
        if !kvOptions.isDefault || kvOptions.budget != nil {
            printErr(try model.makeCache(capacity: max(1, promptIds.count + maxTokens), sequences: 1, options: kvOptions).summary)
        }
        var eos = Set(model.config.eosTokenIds)
        if eos.isEmpty, let e = tok.vocab["</s>"] ?? tok.vocab["<|endoftext|>"] { eos.insert(e) }
        var shown = ""
        let prefix = tok.decode(promptIds)
        if !ids { print(prefix, terminator: "") }
        var all = promptIds
        let r = try Generation.run(model: model, prompt: promptIds, maxTokens: maxTokens,
                                   sampling: SamplingOptions(temperature: temperature, topP: topP, seed: seed),
                                   eos: eos, stopAtEOS: !ignoreEOS, kvCache: kvOptions, context: context) { id in
            all.append(id)
            if ids { print(id, terminator: " ") } else {
                let text = tok.decode(all)
                let full = String(text.dropFirst(prefix.count))
                if full.hasPrefix(shown) { print(full.dropFirst(shown.count), terminator: "") } else { print("", terminator: "") }
                shown = full
            }
            fflush(nil)
        }
        print("")
        printErr(String(format: "prompt %d tokens (%.1f tokens/s), generated %d tokens, decode %.1f tokens/s, %d threads, %@ kernels",
                        r.promptTokens.count, r.prefillTokensPerSecond, r.generated.count, r.decodeTokensPerSecond, modelOptions.threads, context.kernels.name))
        if let json {
            try writeJSON(.object([
                ("model", .string(modelOptions.model)), ("prompt_ids", .array(r.promptTokens.map { .int(Int64($0)) })),
                ("generated_ids", .array(r.generated.map { .int(Int64($0)) })), ("text", .string(tok.decode(r.generated))),
                ("temperature", .double(Double(temperature))), ("top_p", .double(Double(topP))), ("seed", .int(Int64(seed))),
                ("prefill_tokens_per_second", .double(r.prefillTokensPerSecond)), ("decode_tokens_per_second", .double(r.decodeTokensPerSecond)),
            ]), to: json)
        }
    }
}
