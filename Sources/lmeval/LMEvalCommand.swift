import ArgumentParser
import Foundation
import LMCore
import LMEval
import LMFormats
import LMMPI
import LMRuntime
import LMTokenizer

@main
struct LMEvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lmeval",
        abstract: "Measure language models: perplexity under named protocols, and generation.",
        version: "0.1.0",
        subcommands: [PerplexityCommand.self, GenerateCommand.self, BenchCommand.self, GateCommand.self, LogitsCommand.self])
}

/// Options shared by every command that runs a model.
struct ModelOptions: ParsableArguments {
    @Option(name: [.customShort("m"), .customLong("model")], help: "Model: a Hugging Face folder (config.json, *.safetensors, tokenizer.json) or an .lmpk file.")
    var modelPath: String?
    @Option(help: "A tensor-parallel shard folder (`lmconvert shard`): every rank in this process, one thread group each; under `mpirun -np N`, one rank per process.")
    var shards: String?
    @Option(help: "Worker threads (our loops and OpenBLAS).")
    var threads: Int = 2
    @Option(help: "Decode kernel set: generic, avx2, avx512vnni or avx512vbmi2 (default: the best this CPU has, or LMKIT_KERNELS).")
    var kernels: String?

    func validate() throws {
        guard threads >= 1 && threads <= 256 else { throw ValidationError("--threads must be between 1 and 256") }
        guard (modelPath == nil) != (shards == nil) else { throw ValidationError("give a model (-m PATH) or a shard folder (--shards DIR), one of them") }
    }

    /// The model's path or shard folder, as given (for reports).
    var model: String { modelPath ?? shards ?? "" }

    /// The compute context these options describe (threads, kernel set).
    func context() throws -> ComputeContext {
        let k = try kernels.map { try KernelSet.named($0) } ?? KernelSet.fromEnvironment()
        return ComputeContext(threads: threads, kernels: k)
    }

    /// Loads model and tokenizer (HF folder, .lmpk, or a shard folder).
    func load() throws -> (any CausalLM, Tokenizer) {
        if let shards {
            let k = try kernels.map { try KernelSet.named($0) } ?? KernelSet.fromEnvironment()
            if MPIEnvironment.isLaunched {
                // One rank per process: this one maps only its own rank file; rank 0 reports.
                let comm = try MPICommunicator()
                if comm.rank != 0 { let null = open("/dev/null", O_WRONLY); if null >= 0 { dup2(null, STDOUT_FILENO); close(null) } }
                return try ModelLoader.load(shards: shards, communicator: comm, threads: threads, kernels: k)
            }
            return try ModelLoader.load(shards: shards, threads: threads, kernels: k)
        }
        return try ModelLoader.load(model)
    }
}

func writeJSON(_ j: JSON, to path: String) throws {
    if MPIEnvironment.rank != 0 { return }   // under mpirun, rank 0 writes
    let w = try AtomicFileWriter(path: path)
    try w.write(j.serialized(pretty: true) + "\n")
    try w.commit()
}

func printErr(_ s: String) { FileHandle.standardError.write((s + "\n").data(using: .utf8)!) }

/// KV cache options shared by perplexity, generate and bench (formats/kv-cache.md).
struct KVOptions: ParsableArguments {
    @Option(name: .customLong("kv-cache"),
            help: "KV cache schemes: k=SCHEME,v=SCHEME, or one scheme for both. f32 (default), f16, bf16, int8, int4, int2 (asymmetric per token and KV head); for K also int8c, int4c, int2c (per channel within each block, newest block in float32).")
    var kvCache: String?
    @Option(name: .customLong("quant-policy"), help: "LMDeploy's KV quantization: 0 (float), 8 (int8 K and V) or 4 (int4 K and V).")
    var quantPolicy: Int?
    @Option(name: .customLong("cache-block-seq-len"), help: "Tokens per KV cache block.")
    var blockSize: Int = KVCacheOptions.defaultBlockSize
    @Option(name: .customLong("cache-max-entry-count"),
            help: "KV pool as a share in (0, 1] of the memory available at start (MemAvailable, or the cgroup limit when smaller).")
    var maxEntryCount: Double?
    @Option(name: .customLong("kv-cache-size"), help: "KV pool size: bytes, or with a unit (64MiB, 512M, 2G).")
    var kvCacheSize: String?
    @Flag(name: .customLong("kv-rotate"),
          help: "Hadamard-rotate each head before quantizing: Q and K under a per-token integer K scheme, V under an integer V scheme (llama.cpp's -khad).")
    var kvRotate = false

    func validate() throws {
        if kvCache != nil && quantPolicy != nil { throw ValidationError("give --kv-cache or --quant-policy, not both") }
        if maxEntryCount != nil && kvCacheSize != nil { throw ValidationError("give --cache-max-entry-count or --kv-cache-size, not both") }
        if let f = maxEntryCount, !(f > 0 && f <= 1) { throw ValidationError("--cache-max-entry-count must be in (0, 1], got \(f)") }
        guard blockSize >= 1 && blockSize <= 1024 else { throw ValidationError("--cache-block-seq-len must be in 1...1024, got \(blockSize)") }
        do { _ = try options() } catch let e as RuntimeError { throw ValidationError(e.description) }
    }

    /// The cache options these flags describe.
    func options() throws -> KVCacheOptions {
        let (k, v) = try quantPolicy.map { try KVCacheOptions.quantPolicy($0) } ?? kvCache.map { try KVCacheOptions.parseSchemes($0) } ?? (.f32, .f32)
        var budget: KVBudget? = nil
        if let f = maxEntryCount { budget = .fraction(f) }
        if let s = kvCacheSize { budget = .bytes(try KVBudget.parseBytes(s)) }
        let o = KVCacheOptions(keys: k, values: v, blockSize: blockSize, budget: budget, rotate: kvRotate)
        try o.validate()
        return o
    }
}
