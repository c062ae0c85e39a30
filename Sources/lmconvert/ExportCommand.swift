import ArgumentParser
import Foundation
import LMCore
import LMFormats

/// Export targets (`--format`).
enum ExportFormat: String, ExpressibleByArgument, CaseIterable {
    /// A Hugging Face folder of dequantized weights.
    case safetensors
}

struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Export a whole-model .lmpk for other runtimes: a Hugging Face safetensors folder.",
        discussion: """
        --format safetensors writes OUT/ with model.safetensors (each tensor's reference decoding in --dtype: \
        f16 default, bf16 or f32; HF names and layout, loadable by transformers), config.json (torch_dtype set), \
        tokenizer.json and generation_config.json; the .lmpk's provenance and pruning record go into the \
        safetensors metadata (lmkit_provenance, lmkit_pruning). Pruned weights stay exactly 0. The folder is \
        written beside OUT and renamed into place when complete; an existing OUT is replaced only with --force. \
        A tensor-parallel rank file is refused: export the whole model (the shard folder's manifest names it).
        """)

    @Option(name: .shortAndLong, help: "Input: a whole-model .lmpk file.")
    var input: String
    @Option(name: .shortAndLong, help: "Output folder.")
    var output: String
    @Option(help: "Output format: safetensors.")
    var format: ExportFormat
    @Option(help: "Storage dtype of the written tensors: f16, bf16 or f32 (exact for every stored value).")
    var dtype: OutputDType = .f16
    @Option(help: "Split model.safetensors into files of at most this size, with model.safetensors.index.json (bytes, or KB/MB/GB = 10³/10⁶/10⁹, KiB/MiB/GiB); transformers' default.")
    var maxShardSize: String = "5GB"
    @Flag(help: "Replace an existing output.")
    var force = false
    @Flag(help: "Print a JSON summary (with each tensor's SHA-256 as written) instead of text.")
    var json = false

    func validate() throws {
        guard input.lowercased().hasSuffix(".lmpk") else { throw ValidationError("--input must be an .lmpk file (convert other formats with lmconvert quantize or import)") }
        _ = try shardBytes()
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
}
