import ArgumentParser
import Foundation
import LMCore
import LMFormats

/// Export targets (`--format`).
enum ExportFormat: String, ExpressibleByArgument, CaseIterable {
    /// A Hugging Face folder of dequantized weights.
    case safetensors
    /// A GGUF v3 file for llama.cpp, its codes mapped onto ggml types exactly.
    case gguf
    /// A Hugging Face folder in llm-compressor's pack-quantized format (vLLM, transformers).
    case compressedTensors = "compressed-tensors"
}

extension GGUFExport.Target: ExpressibleByArgument {}

struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Export a whole-model .lmpk for other runtimes: a GGUF file (llama.cpp), a compressed-tensors folder (vLLM, transformers) or a Hugging Face safetensors folder.",
        discussion: """
        --format gguf writes OUT (a GGUF v3 file llama.cpp, Ollama and LM Studio load): the codes, scales and \
        minimums unchanged — int4s-gG → Q4_0, int4-gG → Q4_1, int8-gG → Q8_0 (G = 32, 64 or 128; 32-column \
        rows), f32/f16/bf16 as themselves, compressed N:M with int4s/int8/float values scattered with exact zeros \
        — each row checked to decode to the .lmpk's values; the tokenizer (gpt2 or llama), architecture \
        metadata and the q/k row permutation llama.cpp expects; provenance in lmkit.provenance. A tensor with no \
        exact ggml type (int8 per channel, int3, int2, int4 with pruning, columns not a multiple of 32) is \
        refused by name unless --requantize-to gives its type (f32 keeps its values exactly).

        --format compressed-tensors writes OUT/ as llm-compressor's pack-quantized format (vLLM, transformers): \
        each linear with symmetric codes keeps them — int4s-gG → 4-bit, int8-gG → 8-bit groups, int8 → 8-bit \
        per channel, compressed N:M scattered with zero codes — with its float16 scales unchanged; config.json \
        carries quantization_config (and sparsity_config for pruned models); the embedding, norms and float \
        linears are dense in --dtype. A linear without a twin (asymmetric int4, int3, int2) is refused by name \
        unless --requantize-to f16|bf16|f32 writes it dense (listed in quantization_config.ignore).

        --format safetensors writes OUT/ with model.safetensors (each tensor's reference decoding in --dtype: \
        f16 default, bf16 or f32; HF names and layout, loadable by transformers), config.json (torch_dtype set), \
        tokenizer.json and generation_config.json; the .lmpk's provenance and pruning record go into the \
        safetensors metadata (lmkit_provenance, lmkit_pruning). Pruned weights stay exactly 0. The folder is \
        written beside OUT and renamed into place when complete; an existing OUT is replaced only with --force. \
        A tensor-parallel rank file is refused: export the whole model (the shard folder's manifest names it).
        """)

    @Option(name: .shortAndLong, help: "Input: a whole-model .lmpk file.")
    var input: String
    @Option(name: .shortAndLong, help: "Output: a .gguf file (--format gguf) or a folder (--format safetensors, compressed-tensors).")
    var output: String
    @Option(help: "Output format: gguf, compressed-tensors or safetensors.")
    var format: ExportFormat
    @Option(help: "safetensors, compressed-tensors: storage dtype of the dense tensors: f16, bf16 or f32 (exact for every stored value).")
    var dtype: OutputDType = .f16
    @Option(help: "gguf: convert tensors whose scheme has no exact ggml type to this one: f32 (exact values), f16, bf16, q8_0, q4_0, q4_1. compressed-tensors: f16, bf16 or f32 writes linears without a pack-quantized twin dense in --dtype.")
    var requantizeTo: GGUFExport.Target?
    @Option(help: "safetensors, compressed-tensors: split model.safetensors into files of at most this size, with model.safetensors.index.json (bytes, or KB/MB/GB = 10³/10⁶/10⁹, KiB/MiB/GiB); transformers' default.")
    var maxShardSize: String = "5GB"
    @Flag(help: "Replace an existing output.")
    var force = false
    @Flag(help: "Print a JSON summary (with each tensor's SHA-256 as written) instead of text.")
    var json = false

    func validate() throws {
        guard input.lowercased().hasSuffix(".lmpk") else { throw ValidationError("--input must be an .lmpk file (convert other formats with lmconvert quantize or import)") }
        _ = try shardBytes()
        if format == .safetensors && requantizeTo != nil { throw ValidationError("--requantize-to applies to --format gguf and compressed-tensors only") }
        if format == .compressedTensors, let r = requantizeTo, r.scheme != nil {
            throw ValidationError("--format compressed-tensors: --requantize-to takes f16, bf16 or f32 (linears without a twin are written dense in --dtype); \(r.rawValue) is for gguf")
        }
    }

    /// `--max-shard-size` in bytes.
    func shardBytes() throws -> Int {
        let units: [(String, Double)] = [("GiB", 1_073_741_824), ("MiB", 1_048_576), ("KiB", 1024), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("B", 1)]
        var text = maxShardSize.trimmingCharacters(in: .whitespaces), scale = 1.0
        if let u = units.first(where: { text.uppercased().hasSuffix($0.0.uppercased()) }) { text = String(text.dropLast(u.0.count)); scale = u.1 }
        guard let v = Double(text.trimmingCharacters(in: .whitespaces)), v.isFinite, v * scale >= 1, v * scale < 1e15 else {
            throw ValidationError("--max-shard-size must be a positive size such as 5GB, 500MB or 2GiB, got '\(maxShardSize)'")
        }
        return Int(v * scale)
    }

    func run() throws {
        InterruptCleanup.install()
        if format == .gguf { return try runGGUF() }
        if format == .compressedTensors { return try runCompressedTensors() }
        let s = try HFExport.export(lmpk: input, to: output, dtype: dtype.dtype, force: force, maxShardBytes: try shardBytes()) {
            ProgressReporter(label: "export", total: $0, unit: " tensors")
        }
        if json {
            let fields: [(String, JSON)] = [("output", .string(output)), ("format", .string(format.rawValue)), ("dtype", .string(dtype.rawValue)),
                                            ("bytes", .int(Int64(s.bytes))), ("seconds", .double(s.seconds)),
                                            ("tensors", .array(s.tensors.map { .object([("name", .string($0.name)), ("shape", .array($0.shape.map { .int(Int64($0)) })), ("sha256", .string($0.sha256))]) }))]
            print(JSON.object(fields).serialized(pretty: true))
        } else {
            print(String(format: "exported %@ → %@ (%@ safetensors, %d tensors, %.2f MiB) in %.1f s", input, output, dtype.rawValue, s.tensors.count,
                         Double(s.bytes) / 1_048_576, s.seconds))
        }
    }

    func runGGUF() throws {
        let s = try GGUFExport.export(lmpk: input, to: output, requantizeTo: requantizeTo, force: force) {
            ProgressReporter(label: "export", total: $0, unit: " tensors")
        }
        if json {
            let fields: [(String, JSON)] = [("output", .string(output)), ("format", .string("gguf")), ("bytes", .int(Int64(s.bytes))), ("seconds", .double(s.seconds)),
                                            ("tensors", .array(s.tensors.map {
                                                .object([("name", .string($0.plan.hfName)), ("gguf_name", .string($0.plan.ggufName)), ("scheme", .string($0.plan.scheme.description)),
                                                         ("type", .string($0.plan.type.name)), ("exact", .bool($0.plan.exact)), ("sha256", .string($0.sha256))])
                                            }))]
            print(JSON.object(fields).serialized(pretty: true))
        } else {
            var counts: [String: Int] = [:]
            for t in s.tensors { counts["\(t.plan.scheme) → \(t.plan.type.name)\(t.plan.exact ? "" : " (requantized)")", default: 0] += 1 }
            print(String(format: "exported %@ → %@ (GGUF, %d tensors, %.2f MiB) in %.1f s", input, output, s.tensors.count, Double(s.bytes) / 1_048_576, s.seconds))
            for (k, v) in counts.sorted(by: { $0.key < $1.key }) { print("  \(v) × \(k)") }
        }
    }

    func runCompressedTensors() throws {
        let s = try CompressedTensorsExport.export(lmpk: input, to: output, dtype: dtype.dtype, denseFallback: requantizeTo != nil, force: force,
                                                   maxShardBytes: try shardBytes()) {
            ProgressReporter(label: "export", total: $0, unit: " tensors")
        }
        if json {
            let fields: [(String, JSON)] = [("output", .string(output)), ("format", .string(format.rawValue)), ("dtype", .string(dtype.rawValue)),
                                            ("bytes", .int(Int64(s.bytes))), ("seconds", .double(s.seconds)),
                                            ("quantized_linears", .int(Int64(s.quantized))), ("dense_linears", .int(Int64(s.dense))),
                                            ("tensors", .array(s.tensors.map { .object([("name", .string($0.name)), ("dtype", .string($0.dtype)),
                                                                                        ("shape", .array($0.shape.map { .int(Int64($0)) })), ("sha256", .string($0.sha256))]) }))]
            print(JSON.object(fields).serialized(pretty: true))
        } else {
            print(String(format: "exported %@ → %@ (compressed-tensors pack-quantized, %d linears quantized, %d dense, %.2f MiB) in %.1f s", input, output,
                         s.quantized, s.dense, Double(s.bytes) / 1_048_576, s.seconds))
        }
    }
}
