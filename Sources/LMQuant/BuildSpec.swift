import Foundation
import LMCore
import LMFormats
import LMTokenizer

/// Everything that decides an `.lmpk`'s bytes: the source and the recipe options.
///
/// `lmconvert quantize` and the gate's recipes both build through this one type, so
/// the same options give the same bytes either way, and its canonical form
/// (`canonical()`: resolved scheme names, defaults filled in) keys the gate's caches
/// and is recorded as the file's provenance. Later capabilities (method, calibration,
/// pruning, sharding, KV cache) add fields here.
public struct BuildSpec: Sendable, Equatable {
    /// HF folder, `.gguf` or llama2.c `.bin`.
    public var source: String
    /// Default scheme as written (`int4`, `int4-g64`, `int8`, …).
    public var scheme: String
    /// Group size for schemes written without one (`--group-size`): int4/int4s and int8.
    public var groupSize: Int?
    public var clip: ClipMethod
    /// `REGEX=SCHEME`, in order; int4/int4s overrides without a group take `groupSize`.
    public var overrides: [String]
    /// Tokenizer for llama2.c input.
    public var tokenizer: String?
    /// Tensor-parallel sharding of the result (`lmconvert shard`; gate recipes' `shard`).
    public var shard: ShardOptions?
    /// How codes are chosen; calibrated methods need `calibration`.
    public var method: QuantMethod = .rtn
    /// Calibration text and windows (`--calib …`); required by `gptq`.
    public var calibration: CalibrationOptions?
    /// GPTQ's options (used by `gptq` only).
    public var gptq = GPTQOptions()
    /// AWQ's options (used by `awq` only).
    public var awq = AWQOptions()
    /// Bit allocation (`--target-bpw`): per-matrix schemes from measured sensitivity; needs `calibration`.
    public var allocation: AllocationOptions?
    /// Pruning of the decoder matrices before they are stored (`lmconvert prune`); Wanda and
    /// SparseGPT need `calibration`; SparseGPT uses `gptq.damp` and `gptq.blockSize`.
    public var prune: PruneOptions?
    /// Threads of a calibrated build (its forward passes and Hessians); not part of the
    /// build's identity: any count gives the same bytes.
    public var threads = ProcessInfo.processInfo.activeProcessorCount

    public init(source: String, scheme: String = "int4-g32", groupSize: Int? = nil, clip: ClipMethod = .minmax,
                overrides: [String] = [], tokenizer: String? = nil) {
        self.source = source; self.scheme = scheme; self.groupSize = groupSize; self.clip = clip
        self.overrides = overrides; self.tokenizer = tokenizer
    }

    /// The recipe these options describe. The only place options become a recipe.
    /// - Throws: `BuildSpecError` naming the option (`scheme`, `group_size`, `overrides[i]`).
    public func recipe() throws -> Recipe {
        let s: QuantScheme
        do { s = try QuantScheme(parsing: scheme, defaultGroup: groupSize) } catch { throw BuildSpecError(option: "scheme", reason: "\(error)") }
        if let g = groupSize, scheme.contains("-g") {
            throw BuildSpecError(option: "group_size", reason: "group size \(g) conflicts with the group in scheme \(scheme)")
        }
        // Wanda and SparseGPT read the calibration inputs for the pruning itself.
        let calibratedPruning = prune.map { $0.method != .magnitude } ?? false
        if let pr = prune {
            try pr.validate()
            guard method != .awq else {
                throw BuildSpecError(option: "method", reason: "a pruned build quantizes by round-to-nearest (optionally --clip mse --calib) or GPTQ (in the same pass as the pruning); AWQ of pruned weights is not built yet")
            }
            guard allocation == nil else { throw BuildSpecError(option: "target_bpw", reason: "bit allocation of a pruned model is not built yet; prune at one scheme") }
            if pr.method == .magnitude && calibration != nil && clip != .mse && method == .rtn {
                throw BuildSpecError(option: "calib", reason: "pruning by magnitude reads no calibration; --calib is only used with --clip mse and an integer --scheme (importance-weighted ranges)")
            }
            if calibratedPruning && calibration == nil {
                throw BuildSpecError(option: "calib", reason: "pruning by \(pr.method.rawValue) reads the inputs' statistics: add --calib FILE (text like the model's use)")
            }
            guard !gptq.actOrder else {
                throw BuildSpecError(option: "act_order", reason: "pruning (SparseGPT too, and GPTQ with it) runs in storage order: drop --act-order")
            }
            guard gptq.trueSequential != true || method == .gptq else {
                throw BuildSpecError(option: "true_sequential", reason: "true-sequential is a GPTQ option; pruning with round-to-nearest runs layer by layer in two passes")
            }
            if clip == .mse && !s.isQuantized {
                throw BuildSpecError(option: "clip", reason: "--clip mse chooses an integer scheme's ranges; \(s.name) stores floats (use --scheme int8 or int4s-gG, or drop --clip)")
            }
            if pr.method == .sparsegpt {
                guard gptq.damp >= 0 && gptq.damp <= 1 && gptq.damp.isFinite else { throw BuildSpecError(option: "damp", reason: "--damp must be in 0...1 (a fraction of the Hessian's mean diagonal), got \(gptq.damp)") }
                guard gptq.blockSize >= 1 && gptq.blockSize <= 4096 else { throw BuildSpecError(option: "block_size", reason: "--block-size must be in 1...4096, got \(gptq.blockSize)") }
            }
        }
        switch method {
        case .rtn:
            if calibration != nil && !calibratedPruning && clip != .mse && allocation == nil {
                throw BuildSpecError(option: "calib", reason: "--calib with --method rtn weights the range search by the inputs' importance: add --clip mse, or choose --method gptq or awq")
            }
            if calibration != nil && clip == .mse && !s.isQuantized {
                throw BuildSpecError(option: "calib", reason: "importance-weighted clipping (--calib with --clip mse) quantizes to an integer scheme; \(s.name) stores floats")
            }
        case .gptq, .awq:
            guard calibration != nil else { throw BuildSpecError(option: "calib", reason: "--method \(method.rawValue) needs calibration text: --calib FILE (e.g. a few hundred KB of text like the model's use)") }
            guard s.isQuantized else { throw BuildSpecError(option: "method", reason: "--method \(method.rawValue) quantizes to an integer scheme; \(s.name) stores floats") }
            if method == .awq {
                guard awq.grid >= 1 && awq.grid <= 1000 else { throw BuildSpecError(option: "awq_grid", reason: "the AWQ grid must be in 1...1000, got \(awq.grid)") }
                break
            }
            guard gptq.damp >= 0 && gptq.damp <= 1 && gptq.damp.isFinite else { throw BuildSpecError(option: "damp", reason: "--damp must be in 0...1 (a fraction of the Hessian's mean diagonal), got \(gptq.damp)") }
            guard gptq.blockSize >= 1 && gptq.blockSize <= 4096 else { throw BuildSpecError(option: "block_size", reason: "--block-size must be in 1...4096, got \(gptq.blockSize)") }
        }
        if let a = allocation {
            guard calibration != nil else { throw BuildSpecError(option: "calib", reason: "--target-bpw measures each matrix's sensitivity on calibration text: add --calib FILE") }
            guard a.targetBPW > 0 && a.targetBPW.isFinite else { throw BuildSpecError(option: "target_bpw", reason: "--target-bpw must be a positive number of bits per weight, got \(a.targetBPW)") }
            guard a.samples >= 1 else { throw BuildSpecError(option: "alloc_samples", reason: "--alloc-samples must be at least 1, got \(a.samples)") }
            guard a.klSamples >= 1 && a.klSamples <= a.samples else {
                throw BuildSpecError(option: "alloc_kl_samples", reason: "--alloc-kl-samples must be in 1...--alloc-samples (\(a.samples)), got \(a.klSamples)")
            }
            _ = try BitAllocator.parseCandidates(a.candidates)
            guard s.isQuantized else { throw BuildSpecError(option: "target_bpw", reason: "--target-bpw chooses among integer schemes; the default scheme \(s.name) stores floats") }
        }
        if let cal = calibration {
            guard cal.samples >= 1 else { throw BuildSpecError(option: "calib_samples", reason: "--calib-samples must be at least 1, got \(cal.samples)") }
            guard cal.ctx >= 2 && cal.ctx <= 1 << 16 else { throw BuildSpecError(option: "calib_ctx", reason: "--calib-ctx must be in 2...65536, got \(cal.ctx)") }
        }
        var r = Recipe(defaultScheme: s, clip: clip)
        for (i, o) in overrides.enumerated() {
            do { r.overrides.append(try Recipe.parseOverride(o, defaultGroup: groupSize)) } catch { throw BuildSpecError(option: "overrides[\(i)]", reason: "\(error)") }
        }
        r.compressed = prune?.compressedPattern
        if s.sparsity != nil || r.overrides.contains(where: { $0.scheme.sparsity != nil }) {
            guard method != .awq else {
                throw BuildSpecError(option: "method", reason: "AWQ of compressed N:M schemes (+N:M) is not built yet; quantize those by round-to-nearest or GPTQ")
            }
            guard allocation == nil else { throw BuildSpecError(option: "target_bpw", reason: "bit allocation among compressed N:M schemes is not built yet") }
        }
        return r
    }

    /// Canonical JSON of the recipe (not the source path): resolved scheme names, so
    /// `int4` + group 64 and `int4-g64` are the same build. Keys in a fixed order.
    /// Round-to-nearest builds have exactly the keys they had before methods existed (so
    /// their provenance bytes and cache keys are unchanged); a calibrated build adds
    /// `method`, `calibration` (the file's SHA-256, not its path, and the windows) and its
    /// method's options.
    public func canonical() throws -> JSON {
        let r = try recipe()
        var fields: [(String, JSON)] = [
            ("scheme", .string(r.defaultScheme.name)),
            ("clip", .string(r.clip.rawValue)),
            ("overrides", .array(r.overrides.map { .string($0.pattern + "=" + $0.scheme.name) })),
            ("spec_version", .int(1)),
        ]
        if let cal = calibration {
            fields.append(("method", .string(method.rawValue)))
            fields.append(("calibration", .object([("sha256", .string(try sha256Hex(file: cal.file))), ("samples", .int(Int64(cal.samples))),
                                                   ("ctx", .int(Int64(cal.ctx))), ("seed", .int(Int64(bitPattern: cal.seed)))])))
            if method == .gptq {
                fields.append(("gptq", .object([("damp", .double(gptq.damp)), ("act_order", .bool(gptq.actOrder)), ("block_size", .int(Int64(gptq.blockSize))),
                                                ("true_sequential", .bool(gptq.trueSequential ?? (prune == nil)))])))
            }
            if let al = allocation {
                fields.append(("allocation", .object([("target_bpw", .double(al.targetBPW)), ("candidates", .array(al.candidates.map { .string($0) })),
                                                      ("samples", .int(Int64(al.samples))), ("kl_samples", .int(Int64(al.klSamples)))])))
            }
            if method == .awq {
                var a: [(String, JSON)] = [("grid", .int(Int64(awq.grid)))]
                if let f = awq.fixedAlpha { a.append(("alpha", .double(Double(f)))) }
                fields.append(("awq", .object(a)))
            }
        }
        if let pr = prune {
            var p: [(String, JSON)] = []
            if case let .object(o) = pr.json { p = o }
            if pr.method == .sparsegpt { p += [("damp", .double(gptq.damp)), ("block_size", .int(Int64(gptq.blockSize)))] }
            fields.append(("prune", .object(p)))
        }
        if let s = shard { fields.append(("shard", .object([("tp", .int(Int64(s.tp))), ("vocab_parallel", .bool(s.vocabParallel))]))) }
        return .object(fields)
    }

    /// The canonical form as one string (for cache keys).
    public func canonicalString() throws -> String { try canonical().serialized() }

    /// Builds the `.lmpk` at `output`, atomically (no file is left on failure).
    /// Provenance: the tool, the canonical build, the source's file name and digest.
    /// `progress` makes a reporter given the tensor count.
    public func build(output: String, tool: String = "lmkit 0.1.0", progress: ((Int) -> ProgressReporter)? = nil) throws -> QuantizeSummary {
        var r = try recipe()
        let model = try ModelSource.open(source, llama2cTokenizer: tokenizer)
        let provenance = JSON.object([
            ("tool", .string(tool)),
            ("build", try canonical()),
            ("source", .string((source as NSString).lastPathComponent)),
            ("source_sha256", .string(try ModelSource.digest(source))),
        ] + (calibration == nil ? [] : [("blas_kernels", .string("OpenBLAS " + BLASKernels.coreName))]))
        var overrideStrings = r.overrides.map { $0.pattern + "=" + $0.scheme.name }
        if let lmpk = model.source as? LMPKFile, let existing = lmpk.header["pruning"] {
            try Pruner.checkRepruning(existing: existing, with: prune, file: source)
        }
        if let pr = prune {
            let shapes = model.tensors.map { ($0.name, $0.shape) }
            try Pruner.checkPlan(pr, tensors: shapes, schemes: try r.assign(shapes), layers: model.config.numLayers, gptq: method == .gptq)
        }
        guard let cal = calibration else {
            return try Quantizer.run(model: model, recipe: r, overrideStrings: overrideStrings,
                                     output: output, provenance: provenance, prune: prune, progress: progress?(model.tensors.count))
        }
        guard let tj = model.tokenizer else { throw RecipeError("the input has no tokenizer (tokenizer.json); calibration tokenizes its text with it") }
        let set = try CalibrationSet.load(cal, tokenizer: try Tokenizer(json: tj, source: "tokenizer.json"))
        var chosen: Allocation?
        if let a = allocation {
            let al = try BitAllocator.allocate(model: model, recipe: r, calibration: set, options: a, threads: threads,
                                               progress: progress?(model.config.numLayers))
            for o in al.overrides { r.overrides.append(try Recipe.parseOverride(o, defaultGroup: nil)) }
            overrideStrings += al.overrides
            chosen = al
            if method == .rtn && clip != .mse {
                var summary = try Quantizer.run(model: model, recipe: r, overrideStrings: overrideStrings,
                                                output: output, provenance: provenance, progress: progress?(model.tensors.count))
                summary.allocation = al
                summary.seconds += al.seconds
                return summary
            }
        }
        var g = gptq
        g.trueSequential = g.trueSequential ?? (prune == nil)
        var (summary, report) = try LayerwiseQuantizer.run(model: model, recipe: r, method: method, calibration: set, gptq: g, awq: awq,
                                                           prune: prune, overrideStrings: overrideStrings, output: output, provenance: provenance,
                                                           threads: threads, progress: progress?(model.config.numLayers))
        summary.calibration = report
        summary.allocation = chosen
        summary.seconds += chosen?.seconds ?? 0
        return summary
    }
}

/// How a build is split for tensor parallelism (formats/lmpk.md, "Tensor-parallel shards").
public struct ShardOptions: Sendable, Equatable {
    /// World size (`--tp`).
    public var tp: Int
    /// Split the embedding by vocabulary rows (`--vocab-parallel`).
    public var vocabParallel: Bool
    public init(tp: Int, vocabParallel: Bool = false) { self.tp = tp; self.vocabParallel = vocabParallel }
}

/// An invalid build option; `option` names it as the gate file and the CLI know it.
public struct BuildSpecError: Error, CustomStringConvertible {
    public let option: String
    public let reason: String
    public init(option: String, reason: String) { self.option = option; self.reason = reason }
    public var description: String { reason }
}
