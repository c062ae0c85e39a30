import ArgumentParser
import Foundation
import LMCore
import LMFormats
import LMQuant

extension PruneMethod: ExpressibleByArgument {}
extension PruneStorage: ExpressibleByArgument {}

struct PruneCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract: "Prune a model's decoder matrices (magnitude, Wanda, SparseGPT; unstructured or N:M) into an .lmpk file.",
        discussion: """
        The seven matrices of every decoder layer are pruned; embeddings, the head and the norms are not. \
        --sparsity F zeroes ⌊F·inputs⌋ weights of each output row (unstructured, as Wanda compares); --pattern N:M \
        keeps at most N of every M consecutive inputs. magnitude needs no calibration; wanda (|W|·‖X‖) and \
        sparsegpt (OBS selection with weight updates, --damp and --block-size as GPTQ's) prune layer by layer \
        on --calib text, each layer fed by the pruned layers before it.

        --pattern 1:2, 2:4 and 4:8 are stored compressed (--storage compressed, the default for them): each pruned \
        matrix keeps only its kept values, in --scheme (f16 default, bf16, f32, int8, int8-gG, int4-gG, int4s-gG), \
        plus one mask bit per weight (scheme name +N:M, e.g. f16+2:4): 2:4 at f16 is 1.78x smaller than dense, \
        and the runtime's kernels read it directly. Other patterns, unstructured sparsity and --storage dense store \
        exact zeros in place, in a scheme that decodes 0 exactly: f16, bf16, f32 or a symmetric integer scheme \
        (int8, int8-gG, int4s-gG). Integer schemes by round-to-nearest (--clip mse with --calib: importance-weighted \
        ranges), or with --quant-method gptq by GPTQ in the same pass as the pruning: pruned weights are fixed to 0 \
        and kept ones to the grid column by column, both errors compensated by the weights not yet fixed (magnitude \
        and wanda: their mask, chosen first; sparsegpt: its mask selected as it goes, the paper's joint mode). \
        The header records the method and each tensor's sparsity (formats/lmpk.md, "Pruning").
        """)

    @Option(name: .shortAndLong, help: "Input: HF folder, .gguf, llama2.c .bin, or a whole-model .lmpk (e.g. already pruned: the new pattern must keep its pruned weights pruned).")
    var input: String
    @Option(name: .shortAndLong, help: "Output .lmpk file.")
    var output: String
    @Option(help: "How the pruned weights are chosen: magnitude, wanda or sparsegpt.")
    var method: PruneMethod
    @Option(help: "Unstructured sparsity: the fraction of each output row's weights set to zero, in [0, 1).")
    var sparsity: Double?
    @Option(help: "N:M structured sparsity, e.g. 2:4 or 4:8 (M must divide every matrix's inputs).")
    var pattern: String?
    @Option(help: "Scheme of the stored matrices' values: f16, bf16, f32, int8, int8-gG, int4s-gG (int4-gG compressed only).")
    var scheme: String = "f16"
    @Option(help: "compressed (kept values + mask; the default for --pattern 1:2, 2:4, 4:8) or dense (exact zeros in place).")
    var storage: PruneStorage?
    @Option(help: "How an integer --scheme's codes are chosen: rtn (round to nearest, default) or gptq (in the same pass as the pruning: mask-aware GPTQ, SparseGPT's joint mode; needs --calib).")
    var quantMethod: QuantMethod = .rtn
    @Option(help: "Range selection of an integer --scheme: minmax, or mse (weighted by the inputs' mean squares with --calib).")
    var clip: ClipMethod = .minmax
    @Option(name: .customLong("override"), help: "Per-tensor scheme by name pattern, e.g. 'embed_tokens=f16'.")
    var overrides: [String] = []
    @Option(help: "Tokenizer for llama2.c input (.bin or .model).")
    var tokenizer: String?
    @OptionGroup var calibration: CalibrationArgs
    @Option(help: "SparseGPT and GPTQ dampening: this fraction of the Hessian's mean diagonal is added to it.")
    var damp: Double = 0.01
    @Option(help: "SparseGPT and GPTQ: columns per lazy block (SparseGPT's rounded down to a multiple of the pattern's M; GPTQ's also cut at group starts).")
    var blockSize: Int = 128
    @Flag(help: "With --quant-method gptq: quantize q/k/v, o, gate/up, down in turn, each from the inputs the already-pruned parts before it produce (default: every matrix from the float layer's inputs, then a second pass, as SparseGPT's code; measured better).")
    var trueSequential = false
    @Flag(help: "Print a JSON summary instead of text.")
    var json = false

    /// The build these options describe (the same type the gate's recipes use).
    func spec() throws -> BuildSpec {
        var s = BuildSpec(source: input, scheme: scheme, clip: clip, overrides: overrides, tokenizer: tokenizer)
        calibration.apply(to: &s)
        s.gptq = GPTQOptions(damp: damp, blockSize: blockSize, trueSequential: trueSequential ? true : nil)
        s.method = quantMethod
        s.prune = PruneOptions(method: method, sparsity: sparsity, pattern: try pattern.map { try SparsityPattern(parsing: $0) }, storage: storage)
        return s
    }

    /// Checks the options before anything is read, so errors show this command's usage.
    func validate() throws {
        guard output.hasSuffix(".lmpk") else { throw ValidationError("--output must end in .lmpk") }
        try calibration.check()
        do { _ = try spec().recipe() } catch let e as BuildSpecError {
            // The recipe's `method` is this command's --quant-method (--method is the pruning's).
            var reason = e.reason
            for m in QuantMethod.allCases { reason = reason.replacingOccurrences(of: "--method \(m.rawValue)", with: "--quant-method \(m.rawValue)") }
            throw usageError(BuildSpecError(option: e.option == "method" ? "quant_method" : e.option, reason: reason))
        }
    }

    func run() throws {
        let spec = try spec()
        let calibrated = spec.calibration != nil
        if calibrated { BLASKernels.pinForReproducibility() }
        InterruptCleanup.install()
        let s = try spec.build(output: output) {
            ProgressReporter(label: "prune (\(method.rawValue))", total: $0, unit: calibrated ? " layers" : " tensors")
        }
        let sparsityText = spec.prune?.pattern?.description ?? String(format: "%.3f", spec.prune?.sparsity ?? 0)
        if json {
            var fields: [(String, JSON)] = [("output", .string(output)), ("method", .string(method.rawValue)), ("quant_method", .string(quantMethod.rawValue)),
                                            ("tensors", .int(Int64(s.tensors))),
                                            ("parameters", .int(Int64(s.parameters))), ("file_bytes", .int(Int64(s.fileBytes))),
                                            ("bits_per_weight", .double(s.bitsPerWeight)), ("seconds", .double(s.seconds)),
                                            ("peak_rss_bytes", .int(Int64(s.peakRSSBytes)))]
            if let p = spec.prune?.pattern { fields.append(("pattern", .string(p.description))) } else { fields.append(("sparsity", .double(spec.prune?.sparsity ?? 0))) }
            if let r = s.calibration {
                fields.append(("calibration", .object([("samples", .int(Int64(r.samples))), ("tokens", .int(Int64(r.tokens))),
                                                       ("forward_seconds", .double(r.forwardSeconds)), ("hessian_seconds", .double(r.hessianSeconds)),
                                                       ("solve_seconds", .double(r.solveSeconds))])))
            }
            print(JSON.object(fields).serialized(pretty: true))
        } else {
            print(String(format: "wrote %@: %@ pruning at %@, %d tensors, %.1f M parameters, %.2f MiB, %.3f bits/weight, %.1f s, peak RSS %.0f MiB",
                         output, method.rawValue, sparsityText, s.tensors, Double(s.parameters) / 1e6, Double(s.fileBytes) / 1_048_576,
                         s.bitsPerWeight, s.seconds, Double(s.peakRSSBytes) / 1_048_576))
        }
    }
}
