import ArgumentParser
import Foundation
import LMCore
import LMFormats

enum OutputDType: String, ExpressibleByArgument, CaseIterable {
    case f32, f16, bf16
    var dtype: DType { self == .f32 ? .f32 : self == .f16 ? .f16 : .bf16 }
}

struct ImportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Import a GGUF file or a llama2.c checkpoint as a Hugging Face folder.",
        discussion: """
        GGUF files (v2/v3; F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K tensors) and llama2.c .bin checkpoints \
        become model.safetensors, config.json and tokenizer.json. Quantized tensors are dequantized, and \
        llama.cpp's interleaved q/k row order is undone (the HF rotate-half layout).
        """)

    @Option(name: .shortAndLong, help: "Input: a .gguf file, or a llama2.c .bin checkpoint.")
    var input: String
    @Option(name: .shortAndLong, help: "Output folder (created).")
    var output: String
    @Option(help: "Tokenizer for llama2.c input: its tokenizer .bin or sentencepiece .model (default: tok<vocab>.bin, tokenizer.bin, tok<vocab>.model or tokenizer.model beside the checkpoint).")
    var tokenizer: String?
    @Option(help: "Storage dtype of the written tensors.")
    var dtype: OutputDType = .f32

    func validate() throws {
        let lower = input.lowercased()
        guard lower.hasSuffix(".gguf") || lower.hasSuffix(".bin") else {
            throw ValidationError("input '\(input)': unknown format (expected a .gguf file or a llama2.c .bin checkpoint)")
        }
    }

    func run() throws {
        InterruptCleanup.install()
        let started = Date()
        let model = try ModelSource.open(input, llama2cTokenizer: tokenizer)
        if model.tokenizer == nil {
            FileHandle.standardError.write("warning: no tokenizer found for \(input); writing no tokenizer.json (pass --tokenizer)\n".data(using: .utf8)!)
        }
        let progress = ProgressReporter(label: "import", total: model.tensors.count, unit: "tensors")
        try HFFolderWriter.write(folder: output, config: model.config, tokenizer: model.tokenizer, tensors: model.tensors,
                                 dtype: dtype.dtype, metadata: [("source", (input as NSString).lastPathComponent)], progress: progress)
        let c = model.config
        print("imported \(input) → \(output): \(c.architecture), \(c.numLayers) layers, hidden \(c.hiddenSize), vocab \(c.vocabSize), \(model.tensors.count) tensors as \(dtype.rawValue) in \(String(format: "%.1f", Date().timeIntervalSince(started))) s")
    }
}
