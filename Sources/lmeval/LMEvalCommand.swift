import ArgumentParser
import Foundation
import LMCore
import LMEval
import LMFormats
import LMRuntime
import LMTokenizer

@main
struct LMEvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lmeval",
        abstract: "Measure language models: perplexity under named protocols, and generation.",
        version: "0.1.0",
        subcommands: [PerplexityCommand.self, GenerateCommand.self, BenchCommand.self, GateCommand.self])
}

/// Options shared by every command that runs a model.
struct ModelOptions: ParsableArguments {
    @Option(name: .shortAndLong, help: "Model: a Hugging Face folder (config.json, *.safetensors, tokenizer.json) or an .lmpk file.")
    var model: String
    @Option(help: "Worker threads (our loops and OpenBLAS).")
    var threads: Int = 2
    @Option(help: "Decode kernel set: generic, avx2 or avx512vnni (default: the best this CPU has, or LMKIT_KERNELS).")
    var kernels: String?

    func validate() throws {
        guard threads >= 1 && threads <= 256 else { throw ValidationError("--threads must be between 1 and 256") }
    }

    /// The compute context these options describe (threads, kernel set).
    func context() throws -> ComputeContext {
        let k = try kernels.map { try KernelSet.named($0) } ?? KernelSet.fromEnvironment()
        return ComputeContext(threads: threads, kernels: k)
    }

    /// Loads model and tokenizer (HF folder or .lmpk).
    func load() throws -> (LlamaModel, Tokenizer) { try ModelLoader.load(model) }
}

func writeJSON(_ j: JSON, to path: String) throws {
    let w = try AtomicFileWriter(path: path)
    try w.write(j.serialized(pretty: true) + "\n")
    try w.commit()
}

func printErr(_ s: String) { FileHandle.standardError.write((s + "\n").data(using: .utf8)!) }
