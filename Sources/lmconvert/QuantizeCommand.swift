import ArgumentParser
import Foundation
import LMCore
import LMFormats
import LMQuant

extension ClipMethod: ExpressibleByArgument {}
extension QuantMethod: ExpressibleByArgument {}

struct QuantizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quantize",
        abstract: "Quantize a model (HF folder, GGUF, llama2.c, or a whole-model .lmpk read back as floats) into an .lmpk file.",
        discussion: """
        Schemes: \(QuantScheme.allNames.joined(separator: ", ")). int4 is asymmetric (a scale and a minimum per group), \
        int4s symmetric (a scale per group); -gN is the group size along the input dimension; int8 without a group \
        has one scale per output channel.

        Default recipe: norms and biases stay f32; the embedding and an untied head are int8 (per channel) when the \
        scheme is quantized; every other matrix gets the scheme. --override 'REGEX=SCHEME' (repeatable, last match \
        wins) changes the scheme of the tensors whose names match.

        Layouts and formulas: formats/lmpk.md.
        """)

    @Option(name: .shortAndLong, help: "Input: HF folder, .gguf, or llama2.c .bin.")
    var input: String
    @Option(name: .shortAndLong, help: "Output .lmpk file.")
    var output: String
    @OptionGroup var build: BuildOptions
    @Flag(help: "Print a JSON summary instead of text.")
    var json = false

    /// The build these options describe (the same type the gate's recipes use).
    var spec: BuildSpec { build.spec(source: input) }

    /// Checks the options before anything is read, so errors show this command's usage.
    func validate() throws {
        try build.check(source: input)
        guard output.hasSuffix(".lmpk") else { throw ValidationError("--output must end in .lmpk") }
    }

    func run() throws {
        let calibrated = spec.calibration != nil
        // Calibrated builds run OpenBLAS: pin its kernels so the bytes match on every host.
        if calibrated { BLASKernels.pinForReproducibility() }
        InterruptCleanup.install()
        let s = try spec.build(output: output) {
            ProgressReporter(label: calibrated ? spec.method.rawValue : "quantize", total: $0, unit: calibrated ? " layers" : " tensors")
        }
        if json {
            var fields: [(String, JSON)] = [("output", .string(output)), ("tensors", .int(Int64(s.tensors))), ("parameters", .int(Int64(s.parameters))),
                                            ("file_bytes", .int(Int64(s.fileBytes))), ("bits_per_weight", .double(s.bitsPerWeight)),
                                            ("seconds", .double(s.seconds)), ("peak_rss_bytes", .int(Int64(s.peakRSSBytes)))]
            if let r = s.calibration {
                fields.append(("calibration", .object([
                    ("method", .string(spec.method.rawValue)), ("samples", .int(Int64(r.samples))), ("tokens", .int(Int64(r.tokens))),
                    ("activation_bytes", .int(Int64(r.activationBytes))), ("forward_seconds", .double(r.forwardSeconds)),
                    ("hessian_seconds", .double(r.hessianSeconds)), ("solve_seconds", .double(r.solveSeconds)),
                    ("mean_error_ratio", .double(r.meanErrorRatio)),
                    ("matrices", .array(r.matrices.map { .object([("name", .string($0.name)), ("scheme", .string($0.scheme)),
                                                                   ("rtn_error", .double($0.rtnError)), ("error", .double($0.methodError))]) })),
                    ("awq_scalings", .array(r.scalings.map { .object([("layer", .int(Int64($0.layer))), ("input", .string($0.input.rawValue)),
                                                                      ("alpha", .double(Double($0.alpha)))]) })),
                ])))
            }
            if let a = s.allocation {
                fields.append(("allocation", .object([
                    ("target_bpw", .double(spec.allocation?.targetBPW ?? 0)), ("bits_per_weight", .double(a.bitsPerWeight)),
                    ("fixed_bytes", .int(Int64(a.fixedBytes))), ("seconds", .double(a.seconds)), ("total_damage", .double(a.totalDamage)),
                    ("candidates", .array(a.candidates.map { .string($0) })),
                    ("layers", .array(a.layers.map { .object([("layer", .int(Int64($0.layer))), ("kl", .double($0.kl)),
                                                              ("relative_change", .double($0.relativeChange)), ("joint_change", .double($0.jointChange)),
                                                              ("rate", .double($0.rate))]) })),
                    ("choices", .array(a.choices.map { .object([("tensor", .string($0.tensor)), ("scheme", .string($0.scheme)),
                                                                ("bytes", .int(Int64($0.bytes))), ("damage", .double($0.damage)),
                                                                ("damages", .array($0.damages.map { .double($0) }))]) })),
                ])))
            }
            print(JSON.object(fields).serialized(pretty: true))
        } else {
            print(String(format: "wrote %@: %d tensors, %.1f M parameters, %.2f MiB, %.3f bits/weight, %.1f s, peak RSS %.0f MiB",
                         output, s.tensors, Double(s.parameters) / 1e6, Double(s.fileBytes) / 1_048_576, s.bitsPerWeight, s.seconds,
                         Double(s.peakRSSBytes) / 1_048_576))
            if let a = s.allocation { printAllocation(a) }
            if let r = s.calibration {
                print(String(format: "%@: %d windows, %d tokens (activations %.1f MiB); forward %.1f s, Hessians %.1f s, solver %.1f s",
                             spec.method.rawValue, r.samples, r.tokens, Double(r.activationBytes) / 1_048_576, r.forwardSeconds, r.hessianSeconds, r.solveSeconds))
                print(String(format: "Hessian-weighted output error vs round-to-nearest (geometric mean over %d matrices): %.3f", r.matrices.count, r.meanErrorRatio))
                if !r.scalings.isEmpty {
                    let mean = r.scalings.reduce(0) { $0 + Double($1.alpha) } / Double(r.scalings.count)
                    print(String(format: "AWQ exponents: mean α %.3f over %d inputs, %d unscaled (α = 0)", mean, r.scalings.count, r.scalings.filter { $0.alpha == 0 }.count))
                }
            }
        }
    }
}

/// The recipe options of a build (`quantize`; `shard` for a non-.lmpk input).
struct BuildOptions: ParsableArguments {
    @Option(help: "Default scheme for matrices.")
    var scheme: String = "int4-g32"
    @Option(help: "Group size for int4/int4s/int8 when the scheme name has none (32, 64, 128).")
    var groupSize: Int?
    @Option(help: "Range selection: minmax, or mse (per-group search minimizing reconstruction error; weighted by the inputs' mean squares with --calib).")
    var clip: ClipMethod = .minmax
    @Option(name: .customLong("override"), help: "Per-tensor scheme by name pattern, e.g. 'mlp\\.down_proj=int8'.")
    var overrides: [String] = []
    @Option(help: "Tokenizer for llama2.c input (.bin or .model).")
    var tokenizer: String?
    @Option(help: "How codes are chosen: rtn (round to nearest; with --calib and --clip mse, importance-weighted ranges), gptq or awq (calibrated, layer by layer; need --calib).")
    var method: QuantMethod = .rtn
    @OptionGroup var calibration: CalibrationArgs
    @Option(help: "GPTQ dampening: this fraction of the Hessian's mean diagonal is added to it.")
    var damp: Double = 0.01
    @Flag(help: "GPTQ: process columns by descending Hessian diagonal (groups stay in storage order).")
    var actOrder = false
    @Option(help: "GPTQ: columns per lazy block.")
    var blockSize: Int = 128
    @Flag(inversion: .prefixedNo, help: "GPTQ: quantize q/k/v, o, gate/up, down in turn, each from the inputs of the matrices already quantized (one pass per layer); --no-true-sequential takes every matrix's inputs from the float layer (two passes).")
    var trueSequential = true
    @Option(help: "Bit allocation: choose each decoder matrix's scheme from --candidates so the file averages at most this many bits per weight (all tensors counted), at the least measured damage; needs --calib.")
    var targetBpw: Double?
    @Option(help: "Schemes the bit allocator may give a matrix (comma-separated).")
    var candidates: String = AllocationOptions.defaultCandidates.joined(separator: ",")
    @Option(help: "Calibration windows the allocator's sensitivity pass runs on.")
    var allocSamples: Int = 4
    @Option(help: "Of those, the windows each layer's end-to-end KL (the allocator's exchange rate) is measured on.")
    var allocKlSamples: Int = 1

    /// The build of `source` these options describe.
    func spec(source: String) -> BuildSpec {
        var s = BuildSpec(source: source, scheme: scheme, groupSize: groupSize, clip: clip, overrides: overrides, tokenizer: tokenizer)
        s.method = method
        calibration.apply(to: &s)
        s.gptq = GPTQOptions(damp: damp, actOrder: actOrder, blockSize: blockSize, trueSequential: trueSequential)
        if let b = targetBpw {
            s.allocation = AllocationOptions(targetBPW: b, candidates: candidates.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) },
                                             samples: allocSamples, klSamples: allocKlSamples)
        }
        return s
    }

    /// A bad scheme, group size, override or calibration option as a usage error naming the flag.
    func check(source: String) throws {
        try calibration.check()
        try checkRecipe(spec(source: source))
    }
}

/// Calibration text, windows and threads (`quantize`, `shard`, `prune`).
struct CalibrationArgs: ParsableArguments {
    @Option(help: "Calibration text (UTF-8): for --method gptq/awq, importance-weighted --clip mse, --target-bpw, and Wanda/SparseGPT pruning.")
    var calib: String?
    @Option(help: "Calibration windows drawn from the text.")
    var calibSamples: Int = CalibrationOptions.defaultSamples
    @Option(help: "Tokens per calibration window.")
    var calibCtx: Int = CalibrationOptions.defaultCtx
    @Option(help: "Seed of the calibration windows' draw.")
    var seed: UInt64 = 0
    @Option(help: "Threads of a calibrated build (default: every core); the bytes do not depend on it.")
    var threads: Int?

    func apply(to s: inout BuildSpec) {
        s.calibration = calib.map { CalibrationOptions(file: $0, samples: calibSamples, ctx: calibCtx, seed: seed) }
        if let t = threads { s.threads = max(1, t) }
    }

    func check() throws {
        if let t = threads, t < 1 || t > 256 { throw ValidationError("--threads must be in 1...256, got \(t)") }
        if let f = calib, !FileManager.default.isReadableFile(atPath: f) { throw ValidationError("--calib: \(f): no such readable file") }
    }
}

/// The build's recipe checks as a usage error naming the flag.
func checkRecipe(_ spec: BuildSpec) throws {
    do { _ = try spec.recipe() } catch let e as BuildSpecError { throw usageError(e) }
}

/// A build option error as the usage error of its flag (`overrides[i]` → `--override`, `calib_ctx` → `--calib-ctx`).
func usageError(_ e: BuildSpecError) -> ValidationError {
    let flag = e.option.hasPrefix("overrides") ? "override" : e.option.replacingOccurrences(of: "_", with: "-")
    return ValidationError("--\(flag): \(e.reason)")
}

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "inspect", abstract: "Show an .lmpk file's metadata, recipe and tensors.")
    @Argument(help: "An .lmpk file.") var file: String
    @Flag(help: "Machine-readable output.") var json = false

    func run() throws {
        let f = try LMPKFile(path: file)
        var rows: [JSON] = []
        var total = 0, params = 0
        // A pruned file: each tensor's stored zeros, counted on its decoded values.
        let pruned = f.header["pruning"] != nil
        var zeros: [String: Double] = [:]
        for t in f.tensors {
            let n = t.shape.reduce(1, *)
            total += t.byteCount; params += n
            var fields: [(String, JSON)] = [("name", .string(t.name)), ("shape", .array(t.shape.map { .int(Int64($0)) })), ("scheme", .string(t.scheme.name)),
                                            ("bytes", .int(Int64(t.byteCount))), ("bits_per_weight", .double(Double(t.byteCount * 8) / Double(n)))]
            if pruned {
                let rows = t.shape.count == 2 ? t.shape[0] : 1, cols = t.shape.last ?? 0
                let v = RoundToNearest.dequantize(scheme: t.scheme, rows: rows, cols: cols, sections: t.sections)
                zeros[t.name] = Double(v.reduce(0) { $0 + ($1 == 0 ? 1 : 0) }) / Double(max(n, 1))
                fields.append(("sparsity", .double(zeros[t.name]!)))
            }
            rows.append(.object(fields))
        }
        if json {
            print(JSON.object([("file", .string(file)), ("file_bytes", .int(Int64(f.fileBytes))), ("config", f.config.toJSON()),
                               ("recipe", f.header["recipe"] ?? .null), ("provenance", f.header["provenance"] ?? .null),
                               ("tensor_parallel", f.header["tensor_parallel"] ?? .null), ("pruning", f.header["pruning"] ?? .null),
                               ("tensors", .array(rows)), ("parameters", .int(Int64(params))), ("tensor_bytes", .int(Int64(total))),
                               ("bits_per_weight", .double(Double(total * 8) / Double(params)))]).serialized(pretty: true))
            return
        }
        let c = f.config
        print("file        \(file) (\(f.fileBytes) bytes, .lmpk v\(f.version))")
        if let s = f.shard {
            let r = s.ranges, q = r.qHeads(f.config)
            print("shard       rank \(s.rank) of \(s.worldSize): KV heads \(r.kvHeads.lowerBound)..<\(r.kvHeads.upperBound), query heads \(q.lowerBound)..<\(q.upperBound), FFN \(r.ffn.lowerBound)..<\(r.ffn.upperBound), vocab \(r.vocab.lowerBound)..<\(r.vocab.upperBound)\(r.vocabParallel ? " (vocab-parallel embedding)" : ""); run with --shards")
        }
        print("model       \(c.architecture): \(c.numLayers) layers, hidden \(c.hiddenSize), heads \(c.numHeads)/\(c.numKVHeads), vocab \(c.vocabSize)")
        print("recipe      \(f.header["recipe"]?.serialized() ?? "-")")
        print("provenance  \(f.header["provenance"]?.serialized() ?? "-")")
        if let p = f.header["pruning"] {
            print("pruning     \(p["method"]?.string ?? "?") at \(p["pattern"]?.string ?? p["sparsity"]?.double.map { String(format: "%.3f", $0) } ?? "?") (stored \(f.tensors.contains { $0.scheme.sparsity != nil } ? "compressed: +N:M schemes hold the kept values and a mask" : "dense"); zeros counted per tensor)")
        }
        print("")
        let w = max(40, f.tensors.map { $0.name.count }.max() ?? 0)
        print("name".padding(toLength: w, withPad: " ", startingAt: 0) + "  shape          scheme       bytes      bits/w" + (pruned ? "  zeros" : ""))
        for t in f.tensors {
            let n = t.shape.reduce(1, *)
            print(t.name.padding(toLength: w, withPad: " ", startingAt: 0) + "  " +
                  "\(t.shape)".padding(toLength: 13, withPad: " ", startingAt: 0) + "  " +
                  t.scheme.name.padding(toLength: 11, withPad: " ", startingAt: 0) + String(format: "  %10d  %6.3f", t.byteCount, Double(t.byteCount * 8) / Double(n))
                  + (zeros[t.name].map { String(format: "  %5.1f %%", 100 * $0) } ?? ""))
        }
        print(String(format: "\ntotal       %d tensors, %.1f M parameters, %.2f MiB of tensors, %.3f bits/weight", f.tensors.count,
                     Double(params) / 1e6, Double(total) / 1_048_576, Double(total * 8) / Double(params)))
    }
}

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "verify", abstract: "Check every CRC and structural invariant of .lmpk files; exit 1 naming the first bad tensor.")
    @Argument(help: "An .lmpk file, a folder of them, or a shard folder (its manifest is checked too).") var path: String

    func files() throws -> [String] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { throw ValidationError("\(path): no such file or folder") }
        let files = isDir.boolValue ? try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.hasSuffix(".lmpk") }.sorted().map { path + "/" + $0 } : [path]
        guard !files.isEmpty else { throw ValidationError("\(path): no .lmpk files") }
        return files
    }

    func validate() throws { _ = try files() }

    func run() throws {
        let files = try files()
        if FileManager.default.fileExists(atPath: path + "/" + ShardManifest.fileName) {
            let m = try ShardManifest.load(folder: path)
            for r in 0..<m.worldSize { _ = try m.open(rank: r, folder: path, verifyDigest: true) }
            print("ok  \(path)/\(ShardManifest.fileName): \(m.worldSize) rank(s), sizes, digests and ranges match")
        }
        for file in files {
            let f = try LMPKFile(path: file)
            if let bad = f.firstCorruptTensor() {
                throw LMPKError(file: file, reason: "CRC mismatch in tensor '\(bad)' (corrupt file)")
            }
            for t in f.tensors where t.shape.count == 2 {
                do { try t.scheme.codec.validate(t.packed, name: t.name) } catch { throw LMPKError(file: file, reason: "\(error)") }
            }
            _ = try f.tokenizerJSON()
            print("ok  \(file): \(f.tensors.count) tensors, structure and CRCs valid")
        }
    }
}

/// The allocation as a table: per matrix role, how many layers got each scheme.
func printAllocation(_ a: Allocation) {
    var schemes: [String] = []
    var table: [String: [String: Int]] = [:]
    var roles: [String] = []
    for ch in a.choices {
        let parts = ch.tensor.split(separator: ".")
        let role = parts.count >= 2 ? parts[parts.count - 2] : Substring(ch.tensor)
        if table[String(role)] == nil { roles.append(String(role)); table[String(role)] = [:] }
        table[String(role), default: [:]][ch.scheme, default: 0] += 1
        if !schemes.contains(ch.scheme) { schemes.append(ch.scheme) }
    }
    schemes.sort { (try? QuantScheme(parsing: $0).sections(rows: 1, cols: 128).reduce(0) { $0 + $1.bytes }) ?? 0 < (try? QuantScheme(parsing: $1).sections(rows: 1, cols: 128).reduce(0) { $0 + $1.bytes }) ?? 0 }
    print(String(format: "bit allocation: %.4f bits/weight (%d matrices; other tensors %.2f MiB), estimated mean KL %.4g, %.1f s",
                 a.bitsPerWeight, a.choices.count, Double(a.fixedBytes) / 1_048_576, a.totalDamage, a.seconds))
    print("  " + "matrix".padding(toLength: 10, withPad: " ", startingAt: 0) + schemes.map { $0.padding(toLength: 11, withPad: " ", startingAt: 0) }.joined())
    for r in roles {
        print("  " + r.padding(toLength: 10, withPad: " ", startingAt: 0) + schemes.map { String(table[r]![$0] ?? 0).padding(toLength: 11, withPad: " ", startingAt: 0) }.joined())
    }
}
