import ArgumentParser
import Foundation
import LMCore
import LMFormats
import LMQuant
import LMShard

struct ShardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shard",
        abstract: "Pre-shard a model for tensor parallelism: one .lmpk per rank plus manifest.json.",
        discussion: """
        q/k/v are split by whole KV-head groups (a query head stays with its KV head), gate/up by FFN rows, \
        o_proj and down_proj by input columns (row-parallel, all-reduced), the head by vocabulary rows (logits \
        gathered); norms and the embedding are replicated (--vocab-parallel splits the embedding too). Uneven \
        splits are allowed: SmolLM2 (3 KV heads) at --tp 2 puts 2 KV heads on rank 0 and 1 on rank 1. \
        Quantized tensors are sliced by whole groups with their scales, never re-encoded.

        An HF folder, GGUF or llama2.c input is first built with the quantize options below (default int4-g32).

        Run the result with `lmeval perplexity|generate|bench --shards DIR`, or one process per rank with \
        `mpirun -np N lmeval … --shards DIR`. Layout: formats/lmpk.md, "Tensor-parallel shards".
        """)

    @Option(name: .long, help: "Number of ranks (the tensor-parallel world size).")
    var tp: Int
    @Option(name: .shortAndLong, help: "Input: an .lmpk file, an HF folder, .gguf or llama2.c .bin.")
    var input: String
    @Option(name: .shortAndLong, help: "Output folder (created; rank files and manifest.json).")
    var output: String
    @Flag(help: "Split the embedding by vocabulary rows too (default: replicated on every rank).")
    var vocabParallel = false
    @Flag(help: "Print the plan (tensor, split axis, ranges and bytes per rank) and write nothing.")
    var dryRun = false
    @Flag(help: "JSON output.")
    var json = false
    @OptionGroup(title: "Build options (for a non-.lmpk input, as `lmconvert quantize`)") var build: BuildOptions

    var spec: BuildSpec { build.spec(source: input) }

    func validate() throws {
        guard tp >= 1 else { throw ValidationError("--tp \(tp): the world size must be at least 1") }
        if !input.hasSuffix(".lmpk") { try build.check(source: input) }
    }

    func run() throws {
        // A calibrated build of the source runs OpenBLAS: pin its kernels, as `quantize` does.
        if !input.hasSuffix(".lmpk") && spec.calibration != nil { BLASKernels.pinForReproducibility() }
        InterruptCleanup.install()
        var sourcePath = input
        var temp: String? = nil
        var slot: Int? = nil
        defer { if let temp { try? FileManager.default.removeItem(atPath: temp); InterruptCleanup.unregister(slot) } }
        if !input.hasSuffix(".lmpk") {
            // Built next to the output and removed afterwards (its digest is deterministic).
            let base = dryRun ? NSTemporaryDirectory() : output
            try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
            let t = base + "/.source-\(getpid()).lmpk.partial"
            temp = t
            slot = InterruptCleanup.register(t)
            _ = try spec.build(output: t) { ProgressReporter(label: "quantize", total: $0, unit: " tensors") }
            sourcePath = t
        }
        let f = try LMPKFile(path: sourcePath)
        let plan = try ShardPlan(source: f, tp: tp, vocabParallel: vocabParallel)
        if dryRun {
            print(json ? plan.json.serialized(pretty: true) : plan.table())
            return
        }
        let total = plan.ranges.reduce(0) { $0 + ShardLayout(config: f.config, ranges: $1).tensors.count }
        let s = try Sharder.write(plan: plan, source: f, sourceName: (input as NSString).lastPathComponent, output: output, progress: ProgressReporter(label: "shard", total: total, unit: " tensors"))
        if json {
            print(JSON.object([("output", .string(output)), ("world_size", .int(Int64(tp))), ("manifest", s.manifest.json),
                               ("file_bytes", .array(s.fileBytes.map { .int(Int64($0)) })), ("seconds", .double(s.seconds)),
                               ("peak_rss_bytes", .int(Int64(s.peakRSSBytes)))]).serialized(pretty: true))
        } else {
            print(String(format: "wrote %@: %d rank(s), %@ bytes, %.1f s, peak RSS %.0f MiB", output, tp,
                         s.fileBytes.map(String.init).joined(separator: " + "), s.seconds, Double(s.peakRSSBytes) / 1_048_576))
        }
    }
}
