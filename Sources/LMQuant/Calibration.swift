import COpenBLAS
import Foundation
import LMCore
import LMFormats
import LMRuntime
import LMTokenizer

/// How a matrix's codes are chosen (`lmconvert quantize --method`).
public enum QuantMethod: String, Sendable, CaseIterable {
    /// Round to nearest under each group's range (`--clip` picks the range).
    case rtn
    /// GPTQ with Hessians from calibration inputs captured layer by layer (`--calib`).
    case gptq
    /// AWQ: per-input-channel scales searched on the calibration activations, folded into
    /// the preceding RMSNorm or projection, then importance-weighted clipping (`--calib`).
    case awq
}

/// AWQ's options.
public struct AWQOptions: Sendable, Equatable {
    /// Exponents α searched: `0, 1/grid, …, (grid − 1)/grid` (scales `mean|x|^α`).
    public var grid: Int
    /// Use this α for every input instead of searching (experiments and tests).
    public var fixedAlpha: Float?
    public init(grid: Int = 20, fixedAlpha: Float? = nil) { self.grid = grid; self.fixedAlpha = fixedAlpha }
}

/// Calibration text and how it is cut into samples (`--calib`, `--calib-samples`,
/// `--calib-ctx`, `--seed`).
public struct CalibrationOptions: Sendable, Equatable {
    /// A UTF-8 text file.
    public var file: String
    /// Windows drawn from the text.
    public var samples: Int
    /// Tokens per window (the tokenizer's BOS first, when it adds one).
    public var ctx: Int
    /// Seeds which windows are drawn.
    public var seed: UInt64
    public static let defaultSamples = 64, defaultCtx = 512
    public init(file: String, samples: Int = defaultSamples, ctx: Int = defaultCtx, seed: UInt64 = 0) {
        self.file = file; self.samples = samples; self.ctx = ctx; self.seed = seed
    }
}

/// GPTQ's options (`--damp`, `--act-order`, `--block-size`, `--[no-]true-sequential`).
public struct GPTQOptions: Sendable, Equatable {
    public var damp: Double
    public var actOrder: Bool
    public var blockSize: Int
    /// Within a layer, quantize q/k/v, then o, then gate/up, then down, each from the
    /// inputs the already-quantized matrices before it produce (AutoGPTQ's default; the
    /// layer runs once). Off: every matrix from the float layer's inputs, then a second
    /// pass through the quantized layer (the GPTQ paper's code without `--true-sequential`).
    /// Nil: on without pruning, off with it (SparseGPT's code prunes every matrix of a layer
    /// from the same inputs; measured better on stories260K at 2:4 and 50 %, README "Pruning").
    public var trueSequential: Bool?
    public init(damp: Double = 0.01, actOrder: Bool = false, blockSize: Int = 128, trueSequential: Bool? = nil) {
        self.damp = damp; self.actOrder = actOrder; self.blockSize = blockSize; self.trueSequential = trueSequential
    }
}

/// A bad calibration file or option; names the file or the flag and what to do.
public struct CalibrationError: Error, CustomStringConvertible {
    public let description: String
    public init(_ s: String) { description = s }
}

/// The token windows calibration runs on.
///
/// The whole file is tokenized once (no BOS), cut into consecutive windows of
/// `ctx − 1` tokens (`ctx` without a BOS), and `samples` of them are drawn without
/// replacement by a SplitMix64 shuffle seeded with `seed`, then kept in text order; each
/// gets the tokenizer's BOS first when it adds one (as the `chunks` perplexity
/// protocol's windows do). Windows never overlap, so no token is counted twice; a text
/// too short for `samples × ctx` tokens is refused rather than reused.
public struct CalibrationSet: Sendable {
    public let samples: [[Int]]
    /// SHA-256 of the file's bytes (recorded in the `.lmpk` provenance).
    public let sha256: String
    /// Tokens in the whole file and windows it holds.
    public let fileTokens: Int, windows: Int

    public var tokens: Int { samples.reduce(0) { $0 + $1.count } }

    /// - Throws: `CalibrationError` for a missing, empty or non-UTF-8 file, a bad option,
    ///   or a text with fewer windows than `samples`.
    public static func load(_ o: CalibrationOptions, tokenizer: Tokenizer) throws -> CalibrationSet {
        guard o.samples >= 1 else { throw CalibrationError("--calib-samples must be at least 1, got \(o.samples)") }
        guard o.ctx >= 2 && o.ctx <= 1 << 16 else { throw CalibrationError("--calib-ctx must be in 2...65536, got \(o.ctx)") }
        guard let data = FileManager.default.contents(atPath: o.file) else {
            throw CalibrationError("\(o.file): cannot read the calibration file (--calib)")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw CalibrationError("\(o.file): the calibration text is not UTF-8") }
        let ids = tokenizer.encode(text, addBOS: false)
        let bos = tokenizer.bosId
        let body = o.ctx - (bos == nil ? 0 : 1)
        let windows = ids.count / body
        guard windows >= o.samples else {
            throw CalibrationError("\(o.file): \(ids.count) tokens make \(windows) windows of \(o.ctx) tokens, fewer than --calib-samples \(o.samples); give a longer text, or lower --calib-samples or --calib-ctx")
        }
        var order = Array(0..<windows)
        var rng = SplitMix64(seed: o.seed)
        for i in stride(from: windows - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
        let chosen = order.prefix(o.samples).sorted()
        let samples = chosen.map { w in (bos.map { [$0] } ?? []) + Array(ids[(w * body)..<((w + 1) * body)]) }
        return CalibrationSet(samples: samples, sha256: data.withUnsafeBytes { SHA256.hex($0) }, fileTokens: ids.count, windows: windows)
    }
}

/// What a calibrated build measured, per matrix and in all.
public struct CalibrationReport: Sendable {
    /// Per quantized matrix: the Hessian-weighted output error `tr(ΔW·H·ΔWᵀ) / tr(W·H·Wᵀ)` of
    /// round-to-nearest and of the method, on the same calibration inputs (`H = XᵀX/n`).
    public struct Matrix: Sendable {
        public let name: String
        public let scheme: String
        public let rtnError: Double
        public let methodError: Double
    }
    public var matrices: [Matrix] = []
    /// AWQ: the exponent α chosen for each layer's inputs (`attentionInput`, `oProjInput`,
    /// `mlpInput`, `downProjInput`); 0 means no scaling.
    public struct Scaling: Sendable {
        public let layer: Int
        public let input: TapPoint
        public let alpha: Float
    }
    public var scalings: [Scaling] = []
    public var samples = 0, tokens = 0
    /// Seconds in the forward passes (capture and propagation), in accumulating Hessians,
    /// and in the method's solver.
    public var forwardSeconds = 0.0, hessianSeconds = 0.0, solveSeconds = 0.0
    /// Bytes of the calibration activations held (the bound's data term).
    public var activationBytes = 0

    /// Geometric mean of method / RTN error over the matrices (1 when there are none).
    public var meanErrorRatio: Double {
        let r = matrices.filter { $0.rtnError > 0 && $0.methodError > 0 }
        guard !r.isEmpty else { return 1 }
        return exp(r.reduce(0) { $0 + log($1.methodError / $1.rtnError) } / Double(r.count))
    }
}

/// Which tap point's inputs each decoder-layer matrix reads.
enum LayerMatrix: String, CaseIterable {
    case q = "self_attn.q_proj.weight", k = "self_attn.k_proj.weight", v = "self_attn.v_proj.weight"
    case o = "self_attn.o_proj.weight", gate = "mlp.gate_proj.weight", up = "mlp.up_proj.weight", down = "mlp.down_proj.weight"
    var tap: TapPoint {
        switch self {
        case .q, .k, .v: return .attentionInput
        case .o: return .oProjInput
        case .gate, .up: return .mlpInput
        case .down: return .downProjInput
        }
    }
}

/// Calibrated quantization, one decoder layer at a time (GPTQ's sequential scheme).
///
/// 1. The calibration windows' embeddings (from the *stored*, quantized embedding) are the
///    inputs of layer 0: `samples × ctx × hidden` floats, held for the whole run.
/// 2. For layer k, its float weights are read, and one Hessian is accumulated per distinct
///    input (q/k/v share one, gate/up share one, o and down one each) from every window,
///    run through the project's runtime (`LlamaModel` on a one-layer stack):
///    - GPTQ (true-sequential, the default): the layer's parts run in turn
///      (`sequentialParts`): q/k/v are quantized from their inputs, o from the outputs of the
///      quantized q/k/v, gate/up after the quantized o, down after the quantized gate/up;
///      the last part's outputs are layer k+1's inputs. One pass through the layer.
///    - AWQ, importance-weighted RTN and `--no-true-sequential` GPTQ: every matrix from the
///      float layer's inputs (`forwardLayers` with taps), then a second pass through the
///      layer as stored (its dequantized weights) gives layer k+1's inputs.
///    Either way later layers calibrate on what the quantized model actually feeds them.
/// 3. Its tensors are written in file order (tensors outside the four groups, and matrices
///    in float schemes, by round to nearest).
///
/// Memory: the activations (`samples·ctx·hidden·4` bytes; true-sequential GPTQ also holds
/// o_proj's inputs, then down_proj's: `samples·ctx·max(q, intermediate)·4` more), one layer
/// in float32 twice (read and dequantized), its Hessians (`Σ cols²·8` bytes), and one
/// window's workspace: independent of the number of layers. Tensors outside the layers
/// (embedding, final norm, untied head) are written first.
enum LayerwiseQuantizer {
    static func run(model: ImportedModel, recipe: Recipe, method: QuantMethod, calibration: CalibrationSet, gptq: GPTQOptions,
                    awq: AWQOptions = AWQOptions(), prune: PruneOptions? = nil, overrideStrings: [String], output: String, provenance: JSON, threads: Int,
                    progress: ProgressReporter?) throws -> (QuantizeSummary, CalibrationReport) {
        let start = Date()
        let c = model.config
        guard let tok = model.tokenizer else {
            throw RecipeError("the input has no tokenizer (tokenizer.json); an .lmpk embeds it to be self-contained")
        }
        let schemes = try recipe.assign(model.tensors.map { ($0.name, $0.shape) })
        // Tensors grouped: outside the layers first (source order), then layer by layer.
        var outside: [Int] = []
        var perLayer = [[Int]](repeating: [], count: c.numLayers)
        for (i, t) in model.tensors.enumerated() {
            if let l = layerIndex(t.name), l < c.numLayers { perLayer[l].append(i) } else { outside.append(i) }
        }
        for (l, idx) in perLayer.enumerated() {
            let names = Set(idx.map { model.tensors[$0].name })
            for m in LayerMatrix.allCases where !names.contains("model.layers.\(l).\(m.rawValue)") {
                throw RecipeError("tensor 'model.layers.\(l).\(m.rawValue)' is missing; calibrated methods need every decoder layer's seven matrices")
            }
        }
        if prune != nil && method == .awq { throw RecipeError("AWQ of pruned weights is not built yet; prune with --quant-method rtn or gptq") }
        let order = outside + perLayer.flatMap { $0 }
        // Wanda with round to nearest reads only the inputs' mean squares (its norms).
        let diagonalOnly = prune?.method == .wanda && method == .rtn && recipe.clip != .mse
        let specs = order.map { LMPKTensorSpec(name: model.tensors[$0].name, shape: model.tensors[$0].shape, scheme: schemes[$0]) }
        let w = try LMPKWriter(path: output, config: c, tokenizerJSON: Array(tok.serialized().utf8),
                               meta: [("recipe", recipe.json(overrideStrings: overrideStrings)), ("provenance", provenance),
                                      ("tensor_parallel", .object([("world_size", .int(1)), ("rank", .int(0))]))]
                                   + (prune.map { [Pruner.meta($0, tensors: model.tensors.map { ($0.name, $0.shape) }, layers: c.numLayers)] } ?? []),
                               tensors: specs)
        var report = CalibrationReport()
        report.samples = calibration.samples.count
        report.tokens = calibration.tokens
        var params = 0, tbytes = 0
        let D = c.hiddenSize
        let context = ComputeContext(threads: threads)
        do {
            // Outside tensors (RTN); the embedding's stored values give layer 0's inputs.
            var hidden: [Float] = []
            for i in outside {
                let t = model.tensors[i]
                let (q, n) = try rtn(t, schemes[i], recipe.clip)
                if t.name == "model.embed_tokens.weight" {
                    hidden = embeddings(q, calibration.samples, hidden: D)
                }
                try w.write(sections: q.sections.map { $0.bytes })
                t.release()
                params += n; tbytes += q.sections.reduce(0) { $0 + $1.bytes.count }
            }
            guard hidden.count == calibration.tokens * D else {
                throw RecipeError("tensor 'model.embed_tokens.weight' is missing; calibration needs the token embedding")
            }
            report.activationBytes = hidden.count * 4
            if method == .gptq && gptq.trueSequential == true {
                report.activationBytes += calibration.tokens * max(c.numHeads * c.headDim, c.intermediateSize) * 4
            }
            progress?.update(0, extra: "\(calibration.samples.count) windows × \(calibration.samples.first?.count ?? 0) tokens")
            for l in 0..<c.numLayers {
                let idx = perLayer[l]
                var values: [String: [Float]] = [:]
                for i in idx { values[model.tensors[i].name] = try finite(model.tensors[i]) }
                let p = "model.layers.\(l)."
                var H = hessianAccumulators(c, diagonalOnly: diagonalOnly)
                var hf: [TapPoint: [Float]] = [:]
                func hessian(_ tp: TapPoint) -> [Float] {
                    if hf[tp] == nil { hf[tp] = H[tp]!.hessian().map { Float($0) } }
                    return hf[tp]!
                }
                var factors: [TapPoint: GPTQ.Factorization] = [:]
                var pruneFactors: [TapPoint: GPTQ.Factorization] = [:]
                var awqFold = AWQFold()
                /// The role of tensor `i` when the method chooses its codes from a tap's inputs.
                /// With pruning and GPTQ, a float-stored matrix has one too (its pruning reads the tap).
                func calibratedRole(_ i: Int) -> LayerMatrix? {
                    schemes[i].isQuantized || (prune != nil && method == .gptq) ? LayerMatrix(rawValue: String(model.tensors[i].name.dropFirst(p.count))) : nil
                }
                /// Quantizes tensor `i` of this layer (its tap's Hessian complete when it has a
                /// calibrated role); returns the codes and the values the stored model holds.
                func quantizeOne(_ i: Int) throws -> (QuantizedTensor, [Float]) {
                    let t = model.tensors[i], s = schemes[i]
                    let rows = t.shape.count == 2 ? t.shape[0] : 1, cols = t.shape.count == 2 ? t.shape[1] : t.shape[0]
                    // Pruning and GPTQ in one pass (mask-aware GPTQ; SparseGPT's joint mode).
                    if let pr = prune, method == .gptq, s.isQuantized, t.shape.count == 2,
                       let pm = LayerMatrix(rawValue: String(t.name.dropFirst(p.count))), let h = H[pm.tap] {
                        return try pruneAndQuantize(t, s, rows: rows, cols: cols, options: pr, role: pm, hessian: h)
                    }
                    // Pruning first (its mask from this layer's inputs), then the scheme.
                    var keep: [Bool]? = nil
                    if let pr = prune, t.shape.count == 2, let pm = LayerMatrix(rawValue: String(t.name.dropFirst(p.count))), let h = H[pm.tap] {
                        let s0 = Date()
                        let pruned: (weights: [Float], keep: [Bool])
                        switch pr.method {
                        case .magnitude:
                            pruned = try Pruner.prune(weights: values[t.name]!, rows: rows, cols: cols, options: pr, tensor: t.name)
                        case .wanda:
                            pruned = try Pruner.prune(weights: values[t.name]!, rows: rows, cols: cols, options: pr,
                                                      columnNorms: h.meanSquares.map { $0.squareRoot() }, tensor: t.name)
                        case .sparsegpt:
                            if pruneFactors[pm.tap] == nil { pruneFactors[pm.tap] = try GPTQ.factor(hessian: h, damp: gptq.damp, actOrder: false, tensor: t.name) }
                            pruned = try Pruner.sparseGPT(weights: values[t.name]!, rows: rows, cols: cols, factorization: pruneFactors[pm.tap]!,
                                                          options: pr, blockSize: gptq.blockSize, tensor: t.name)
                        }
                        values[t.name] = pruned.weights
                        keep = pruned.keep
                        report.solveSeconds += Date().timeIntervalSince(s0)
                    }
                    let v = values[t.name]!
                    try Pruner.checkSparse(v, rows: rows, cols: cols, scheme: s, tensor: t.name)
                    let role = calibratedRole(i)
                    // Plain RTN of `v` (the report's reference, and what other tensors store); not
                    // needed for an AWQ-folded matrix, whose reference is RTN of its original weights.
                    let folded = awqFold.original[t.name] != nil && role != nil
                    let rtnV = folded ? nil : RoundToNearest.quantize(v, rows: rows, cols: cols, scheme: s, clip: recipe.clip, keep: keep)
                    var q: QuantizedTensor, storedValues: [Float]
                    if let role, method == .awq || recipe.clip == .mse, method != .gptq, let h = H[role.tap] {
                        // Importance-weighted clipping (RTN with --clip mse, and AWQ's clip search):
                        // the inputs' mean squares, in the scaled domain for AWQ (x / s).
                        let s0 = Date()
                        let colScale = awqFold.columnScale(role)
                        var importance = h.meanSquares.map { Float($0) }
                        if let cs = colScale { for j in 0..<cols { importance[j] /= cs[j] * cs[j] } }
                        let m = RoundToNearest.quantize(v, rows: rows, cols: cols, scheme: s, importance: importance, keep: keep)
                        report.solveSeconds += Date().timeIntervalSince(s0)
                        // Errors of the equivalent unscaled matrix, on the same H as plain RTN's.
                        let original = awqFold.original[t.name] ?? v
                        let hm = hessian(role.tap), base = weightedSquare(original, hm, rows: rows, cols: cols)
                        let plain = dequantize(rtnV ?? RoundToNearest.quantize(original, rows: rows, cols: cols, scheme: s, clip: recipe.clip))
                        let mBack = dequantize(m)
                        let effective = awqFold.unscale(role, mBack, rows: rows, cols: cols)
                        func error(_ q: [Float]) -> Double { base > 0 ? weightedSquare(zip(original, q).map { $0 - $1 }, hm, rows: rows, cols: cols) / base : 0 }
                        report.matrices.append(.init(name: t.name, scheme: s.name, rtnError: error(plain), methodError: error(effective)))
                        q = m
                        storedValues = mBack
                    } else if let role, method == .gptq, s.isQuantized, let h = H[role.tap] {
                        let s0 = Date()
                        if factors[role.tap] == nil {
                            factors[role.tap] = try GPTQ.factor(hessian: h, damp: gptq.damp, actOrder: gptq.actOrder, tensor: t.name)
                        }
                        // With --clip mse, group ranges weighted by the inputs' mean squares.
                        let importance = recipe.clip == .mse ? h.meanSquares.map { Float($0) } : nil
                        let g = try GPTQ.quantize(weights: v, rows: rows, cols: cols, factorization: factors[role.tap]!, scheme: s,
                                                  blockSize: gptq.blockSize, clip: recipe.clip, importance: importance, tensor: t.name)
                        report.solveSeconds += Date().timeIntervalSince(s0)
                        let rtnBack = dequantize(rtnV!), gBack = dequantize(g)
                        let hm = hessian(role.tap), base = weightedSquare(v, hm, rows: rows, cols: cols)
                        func error(_ q: [Float]) -> Double { base > 0 ? weightedSquare(zip(v, q).map { $0 - $1 }, hm, rows: rows, cols: cols) / base : 0 }
                        report.matrices.append(.init(name: t.name, scheme: s.name, rtnError: error(rtnBack), methodError: error(gBack)))
                        q = g
                        storedValues = gBack
                    } else {
                        q = rtnV!
                        storedValues = s.isQuantized || s.kind != .f32 ? dequantize(q) : v
                    }
                    try RoundToNearest.checkRepresentable(q, values: v, tensor: t.name)
                    if let keep { try Pruner.checkZeros(storedValues, keep: keep, scheme: s, tensor: t.name) }
                    return (q, storedValues)
                }
                /// GPTQ with the pruning in the same pass: Wanda's or magnitude's mask fixed up
                /// front (mask-aware GPTQ), or SparseGPT's selected as GPTQ goes (joint mode).
                func pruneAndQuantize(_ t: PendingTensor, _ s: QuantScheme, rows: Int, cols: Int, options pr: PruneOptions,
                                      role: LayerMatrix, hessian h: HessianAccumulator) throws -> (QuantizedTensor, [Float]) {
                    let s0 = Date()
                    let v = values[t.name]!
                    let mask: GPTQ.Pruning
                    switch pr.method {
                    case .magnitude: mask = .fixed(try Pruner.prune(weights: v, rows: rows, cols: cols, options: pr, tensor: t.name).keep)
                    case .wanda: mask = .fixed(try Pruner.prune(weights: v, rows: rows, cols: cols, options: pr,
                                                                columnNorms: h.meanSquares.map { $0.squareRoot() }, tensor: t.name).keep)
                    case .sparsegpt: mask = .select(pr)
                    }
                    if factors[role.tap] == nil { factors[role.tap] = try GPTQ.factor(hessian: h, damp: gptq.damp, actOrder: false, tensor: t.name) }
                    let importance = recipe.clip == .mse ? h.meanSquares.map { Float($0) } : nil
                    let (g, kept) = try GPTQ.quantize(weights: v, rows: rows, cols: cols, factorization: factors[role.tap]!, scheme: s, pruning: mask,
                                                      blockSize: gptq.blockSize, clip: recipe.clip, importance: importance, tensor: t.name)
                    let keep = kept!
                    report.solveSeconds += Date().timeIntervalSince(s0)
                    // The reference: round to nearest of the same mask's kept weights.
                    var zeroed = v
                    for j in zeroed.indices where !keep[j] { zeroed[j] = 0 }
                    let rtnBack = dequantize(RoundToNearest.quantize(zeroed, rows: rows, cols: cols, scheme: s, clip: recipe.clip, keep: keep))
                    let gBack = dequantize(g)
                    let hm = hessian(role.tap), base = weightedSquare(v, hm, rows: rows, cols: cols)
                    func error(_ q: [Float]) -> Double { base > 0 ? weightedSquare(zip(v, q).map { $0 - $1 }, hm, rows: rows, cols: cols) / base : 0 }
                    report.matrices.append(.init(name: t.name, scheme: s.name, rtnError: error(rtnBack), methodError: error(gBack)))
                    try RoundToNearest.checkRepresentable(g, values: v, tensor: t.name)
                    try Pruner.checkZeros(gBack, keep: keep, scheme: s, tensor: t.name)
                    return (g, gBack)
                }
                var codes: [Int: QuantizedTensor] = [:]
                var stored: [String: [Float]] = [:]
                if method == .gptq && gptq.trueSequential == true {
                    // One pass, part by part (GPTQ's true-sequential mode): each group of
                    // matrices is quantized from the inputs the already-quantized parts before
                    // it produce, and the last part's outputs are the next layer's inputs.
                    for i in idx where calibratedRole(i) == nil { (codes[i], stored[model.tensors[i].name]) = try quantizeOne(i) }
                    try sequentialParts(prefix: p, c, calibration.samples, hidden: &hidden, last: l + 1 == c.numLayers, context: context,
                                        current: { values.merging(stored) { _, new in new } },
                                        tap: { tp, x, rows in
                                            let h0 = Date()
                                            H[tp]!.add(x, rows: rows, context: context)
                                            report.hessianSeconds += Date().timeIntervalSince(h0)
                                        },
                                        timing: { report.forwardSeconds += $0 },
                                        quantize: { tp in
                                            for i in idx where calibratedRole(i)?.tap == tp { (codes[i], stored[model.tensors[i].name]) = try quantizeOne(i) }
                                        })
                } else {
                    // Pass 1: the float layer's inputs → one Hessian per tap point.
                    let floatLayer = try makeLayer(prefix: p, c, values)
                    var meanAbs: [TapPoint: [Double]] = [:]
                    if method == .awq { for (tp, h) in H { meanAbs[tp] = [Double](repeating: 0, count: h.cols) } }
                    var hessianSeconds = 0.0
                    let t0 = Date()
                    try propagate(layer: floatLayer, c, calibration.samples, hidden: &hidden, update: false, context: context) { _, point, x, rows, cols in
                        let h0 = Date()
                        H[point]!.add(x, rows: rows, context: context)
                        if method == .awq {
                            meanAbs[point]!.withUnsafeMutableBufferPointer { a in
                                for r in 0..<rows { for j in 0..<cols { a[j] += Double(abs(x[r * cols + j])) } }
                            }
                        }
                        hessianSeconds += Date().timeIntervalSince(h0)
                    }
                    report.hessianSeconds += hessianSeconds
                    report.forwardSeconds += Date().timeIntervalSince(t0) - hessianSeconds
                    // AWQ: scales searched on the float weights, then folded into them (and into
                    // the norms / projections before), so `values` is what gets quantized.
                    if method == .awq {
                        let s0 = Date()
                        let tokens = Double(calibration.tokens)
                        let stats = meanAbs.mapValues { $0.map { $0 / tokens } }
                        awqFold = try AWQFold.search(prefix: p, config: c, values: values, schemes: Dictionary(uniqueKeysWithValues: idx.map { (model.tensors[$0].name, schemes[$0]) }),
                                                     meanAbs: stats, hessian: hessian, grid: awq.grid, fixedAlpha: awq.fixedAlpha)
                        awqFold.apply(prefix: p, config: c, to: &values)
                        for (tap, _) in AWQFold.groups { if let a = awqFold.alphas[tap] { report.scalings.append(.init(layer: l, input: tap, alpha: a)) } }
                        report.solveSeconds += Date().timeIntervalSince(s0)
                    }
                    for i in idx { (codes[i], stored[model.tensors[i].name]) = try quantizeOne(i) }
                    // Pass 2: the stored layer's outputs are the next layer's inputs.
                    if l + 1 < c.numLayers {
                        let t1 = Date()
                        try propagate(layer: try makeLayer(prefix: p, c, stored), c, calibration.samples, hidden: &hidden, update: true, context: context, tap: nil)
                        report.forwardSeconds += Date().timeIntervalSince(t1)
                    }
                }
                // Written in file order.
                for i in idx {
                    let q = codes[i]!
                    try w.write(sections: q.sections.map { $0.bytes })
                    model.tensors[i].release()
                    params += q.rows * q.cols; tbytes += q.sections.reduce(0) { $0 + $1.bytes.count }
                }
                values = [:]
                let ratio = report.meanErrorRatio
                progress?.update(l + 1, extra: prune.map { String(format: "layer %d: pruned by %@", l, $0.method.rawValue) + (method == .gptq ? String(format: ", GPTQ error / RTN %.3f", ratio) : "") } ?? String(format: "layer %d: %@ error / RTN %.3f", l, method.rawValue, ratio))
            }
            try w.commit()
        } catch {
            w.abort()
            throw error
        }
        let size = (try? FileManager.default.attributesOfItem(atPath: output)[.size] as? Int) ?? 0
        let summary = QuantizeSummary(tensors: specs.count, parameters: params, fileBytes: size, tensorBytes: tbytes,
                                      seconds: Date().timeIntervalSince(start), peakRSSBytes: peakResidentBytes())
        return (summary, report)
    }

    /// An empty Hessian accumulator per tap point, at its input's width.
    static func hessianAccumulators(_ c: ModelConfig, diagonalOnly: Bool = false) -> [TapPoint: HessianAccumulator] {
        let widths: [TapPoint: Int] = [.attentionInput: c.hiddenSize, .oProjInput: c.numHeads * c.headDim, .mlpInput: c.hiddenSize,
                                       .downProjInput: c.intermediateSize]
        return widths.mapValues { HessianAccumulator(cols: $0, diagonalOnly: diagonalOnly) }
    }

    /// `model.layers.K.…` → K.
    static func layerIndex(_ name: String) -> Int? {
        guard name.hasPrefix("model.layers.") else { return nil }
        return Int(name.dropFirst("model.layers.".count).prefix { $0.isNumber })
    }

    /// A tensor's float values, refused by name when one is not finite.
    static func finite(_ t: PendingTensor) throws -> [Float] {
        let v = try t.produce()
        if let bad = v.firstIndex(where: { !$0.isFinite }) { throw ModelError.nonFinite(tensor: t.name, index: bad, value: v[bad]) }
        return v
    }

    static func rtn(_ t: PendingTensor, _ s: QuantScheme, _ clip: ClipMethod) throws -> (QuantizedTensor, Int) {
        let v = try finite(t)
        let rows = t.shape.count == 2 ? t.shape[0] : 1, cols = t.shape.count == 2 ? t.shape[1] : t.shape[0]
        try Pruner.checkSparse(v, rows: rows, cols: cols, scheme: s, tensor: t.name)
        let q = RoundToNearest.quantize(v, rows: rows, cols: cols, scheme: s, clip: clip)
        try RoundToNearest.checkRepresentable(q, values: v, tensor: t.name)
        return (q, v.count)
    }

    static func dequantize(_ q: QuantizedTensor) -> [Float] { q.dequantized() }

    /// The windows' rows of the stored embedding, `[tokens, hidden]`.
    static func embeddings(_ q: QuantizedTensor, _ samples: [[Int]], hidden D: Int) -> [Float] {
        let ids = samples.flatMap { $0 }
        var out = [Float](repeating: 0, count: ids.count * D)
        q.sections.map { $0.bytes }.withUnsafeBufferPointers { s in
            out.withUnsafeMutableBufferPointer { o in
                for (t, id) in ids.enumerated() where id < q.rows {
                    RoundToNearest.dequantizeRow(scheme: q.scheme, row: id, cols: q.cols, sections: s, into: o.baseAddress! + t * D)
                }
            }
        }
        return out
    }

    /// One decoder layer from float values by name.
    static func makeLayer(prefix p: String, _ c: ModelConfig, _ v: [String: [Float]]) throws -> LlamaLayer {
        func vec(_ n: String) throws -> [Float] {
            guard let x = v[p + n] else { throw RecipeError("tensor '\(p + n)' is missing") }
            return x
        }
        func mat(_ m: LayerMatrix) throws -> LinearWeight {
            let x = try vec(m.rawValue)
            let rows: Int
            switch m {
            case .q: rows = c.numHeads * c.headDim
            case .k, .v: rows = c.numKVHeads * c.headDim
            case .o, .down: rows = c.hiddenSize
            case .gate, .up: rows = c.intermediateSize
            }
            guard rows > 0, x.count % rows == 0 else { throw RecipeError("tensor '\(p + m.rawValue)' has \(x.count) values, not a multiple of \(rows) rows") }
            return DenseLinear(rows: rows, cols: x.count / rows, values: x)
        }
        let bias = v[p + "self_attn.q_proj.bias"] != nil
        return LlamaLayer(attnNorm: try vec("input_layernorm.weight"), q: try mat(.q), k: try mat(.k), v: try mat(.v), o: try mat(.o),
                          qBias: bias ? try vec("self_attn.q_proj.bias") : nil, kBias: bias ? try vec("self_attn.k_proj.bias") : nil,
                          vBias: bias ? try vec("self_attn.v_proj.bias") : nil,
                          mlpNorm: try vec("post_attention_layernorm.weight"), gate: try mat(.gate), up: try mat(.up), down: try mat(.down))
    }

    /// Runs every window through `layer` (a fresh float cache per window). `update`:
    /// the outputs replace the inputs in `hidden`; otherwise `hidden` is left as it was.
    static func propagate(layer: LlamaLayer, _ c: ModelConfig, _ samples: [[Int]], hidden: inout [Float], update: Bool,
                          context: ComputeContext, tap: ((Int, TapPoint, UnsafePointer<Float>, Int, Int) throws -> Void)?) throws {
        let stack = LlamaModel.decoderStack(config: c, layers: [layer])
        let maxLen = samples.map(\.count).max() ?? 0
        let cache = try stack.makeCache(capacity: maxLen, sequences: 1)
        let D = c.hiddenSize
        var scratch = [Float](repeating: 0, count: maxLen * D)
        let hooks = ForwardHooks(tap: tap)
        var offset = 0
        try hidden.withUnsafeMutableBufferPointer { h in
            try scratch.withUnsafeMutableBufferPointer { sc in
                for s in samples {
                    cache.reset()
                    let x = h.baseAddress! + offset * D
                    let target = update ? x : sc.baseAddress!
                    if !update { target.update(from: x, count: s.count * D) }
                    try stack.forwardLayers(Batch(s, sequence: 0, start: 0), hidden: target, cache: cache, context: context, hooks: hooks)
                    offset += s.count
                }
            }
        }
    }

    /// One decoder layer, part by part over every window (GPTQ's true-sequential mode):
    /// for each tap point in order, the parts before it run with the matrices quantized so
    /// far (`current()`, rebuilt after each `quantize`), `tap` sees every window's input of
    /// that point, then `quantize(point)` quantizes the matrices that read it. The layer
    /// runs once in all: o_proj's inputs (`T·q` floats) and down_proj's inputs (`T·F`)
    /// are held between the parts that make and use them, and `hidden` ends as the layer's
    /// outputs (not updated past o_proj when `last`). `timing` gets the seconds spent in
    /// the parts, taps excluded.
    static func sequentialParts(prefix p: String, _ c: ModelConfig, _ samples: [[Int]], hidden: inout [Float], last: Bool, context: ComputeContext,
                                current: () -> [String: [Float]], tap: (TapPoint, UnsafePointer<Float>, Int) throws -> Void,
                                timing: (Double) -> Void, quantize: (TapPoint) throws -> Void) throws {
        let D = c.hiddenSize, qDim = c.numHeads * c.headDim, F = c.intermediateSize
        let maxLen = samples.map(\.count).max() ?? 0, T = samples.reduce(0) { $0 + $1.count }
        guard maxLen > 0 else { throw CalibrationError("calibration has no tokens to run layer \(p)'s parts on") }
        let xn = UnsafeMutablePointer<Float>.allocate(capacity: maxLen * D)
        defer { xn.deallocate() }
        var tapSeconds = 0.0
        func timedTap(_ tp: TapPoint, _ x: UnsafePointer<Float>, _ n: Int) throws {
            let t0 = Date(); try tap(tp, x, n); tapSeconds += Date().timeIntervalSince(t0)
        }
        try hidden.withUnsafeMutableBufferPointer { hb in
            let h = hb.baseAddress!
            /// Runs `body(model, cache, batch, window's hidden, token offset)` for every window
            /// on the layer as it stands now.
            func pass(_ body: (LlamaModel, KVCache, Batch, UnsafeMutablePointer<Float>, Int) throws -> Void) throws {
                let t0 = Date(), tap0 = tapSeconds
                let stack = LlamaModel.decoderStack(config: c, layers: [try makeLayer(prefix: p, c, current())])
                let cache = try stack.makeCache(capacity: maxLen, sequences: 1)
                var offset = 0
                for s in samples {
                    cache.reset()
                    try body(stack, cache, Batch(s, sequence: 0, start: 0), h + offset * D, offset)
                    offset += s.count
                }
                timing(Date().timeIntervalSince(t0) - (tapSeconds - tap0))
            }
            // q/k/v's input.
            try pass { m, cache, b, x, _ in
                try m.forwardPart(.attentionNorm, batch: b, hidden: x, input: nil, output: xn, cache: cache, context: context)
                try timedTap(.attentionInput, xn, b.count)
            }
            try quantize(.attentionInput)
            // o_proj's input, from the quantized q/k/v.
            var attBuffer: FloatBuffer? = FloatBuffer(T * qDim)
            let att = attBuffer!.p
            try pass { m, cache, b, x, off in
                try m.forwardPart(.attentionNorm, batch: b, hidden: x, input: nil, output: xn, cache: cache, context: context)
                try m.forwardPart(.attention, batch: b, hidden: x, input: xn, output: att + off * qDim, cache: cache, context: context)
                try timedTap(.oProjInput, att + off * qDim, b.count)
            }
            try quantize(.oProjInput)
            // The residual after the quantized o_proj; gate/up's input.
            try pass { m, cache, b, x, off in
                try m.forwardPart(.oProj, batch: b, hidden: x, input: att + off * qDim, output: nil, cache: cache, context: context)
                try m.forwardPart(.mlpNorm, batch: b, hidden: x, input: nil, output: xn, cache: cache, context: context)
                try timedTap(.mlpInput, xn, b.count)
            }
            withExtendedLifetime(attBuffer) {}
            attBuffer = nil
            try quantize(.mlpInput)
            // down_proj's input, from the quantized gate/up.
            let gBuffer = FloatBuffer(T * F), g = gBuffer.p
            try pass { m, cache, b, x, off in
                try m.forwardPart(.mlpNorm, batch: b, hidden: x, input: nil, output: xn, cache: cache, context: context)
                try m.forwardPart(.mlpUp, batch: b, hidden: x, input: xn, output: g + off * F, cache: cache, context: context)
                try timedTap(.downProjInput, g + off * F, b.count)
            }
            try quantize(.downProjInput)
            // The layer's outputs through the quantized down_proj.
            if !last {
                try pass { m, cache, b, x, off in
                    try m.forwardPart(.down, batch: b, hidden: x, input: g + off * F, output: nil, cache: cache, context: context)
                }
            }
            withExtendedLifetime(gBuffer) {}
        }
    }

    /// A float array freed when the last reference goes (held across closures).
    final class FloatBuffer {
        let p: UnsafeMutablePointer<Float>
        init(_ n: Int) { p = .allocate(capacity: max(n, 1)) }
        deinit { p.deallocate() }
    }

    /// `tr(A·H·Aᵀ)` for `A` `[rows, cols]` and symmetric `H` `cols × cols` (the error
    /// reported is `tr(ΔW·H·ΔWᵀ) / tr(W·H·Wᵀ)` with `ΔW = W − Q`).
    static func weightedSquare(_ a: [Float], _ H: [Float], rows: Int, cols: Int) -> Double {
        var ah = [Float](repeating: 0, count: rows * cols)
        a.withUnsafeBufferPointer { ap in
            H.withUnsafeBufferPointer { hp in
                ah.withUnsafeMutableBufferPointer { o in
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(cols), Int32(cols), 1,
                                ap.baseAddress!, Int32(cols), hp.baseAddress!, Int32(cols), 0, o.baseAddress!, Int32(cols))
                }
            }
        }
        var s = 0.0
        for i in 0..<(rows * cols) { s += Double(ah[i]) * Double(a[i]) }
        return s
    }
}

/// AWQ's scales for one decoder layer, and how they fold into its float weights so the
/// stored model needs no extra operation.
///
/// For each input the layer's matrices read, channel `j`'s scale is `s_j = mean|x_j|^α`
/// (normalized so `√(max·min) = 1`), with α on a grid chosen to minimize the output error
/// of round-to-nearest on the scaled weights, `Σ tr(ΔW·H·ΔWᵀ)` over the matrices reading
/// that input (`ΔW = Q(W·diag(s))·diag(s)⁻¹ − W`, `H = XᵀX`: the squared error of their
/// outputs over the calibration tokens); α = 0 is plain round-to-nearest, so the search
/// never does worse on that measure. The matrices' columns are multiplied by `s`, and the
/// producer of the input divided by it:
/// - q/k/v: `input_layernorm`; gate/up: `post_attention_layernorm`;
/// - down: `up_proj`'s rows (down reads `silu(gate·x) ⊙ up·x`, linear in up's rows);
/// - o: `v_proj`'s rows (attention output is linear in V). With grouped-query attention a
///   V channel feeds every query head of its group, so o's scales are tied across them:
///   the statistic of a V channel is the mean over the o columns it feeds.
struct AWQFold {
    /// Column scales per input, and α chosen.
    var scales: [TapPoint: [Float]] = [:]
    var alphas: [TapPoint: Float] = [:]
    /// o's scales per V channel (v_proj's row divisors).
    var kvScales: [Float]?
    /// Float matrices before folding, by name.
    var original: [String: [Float]] = [:]

    static let groups: [(TapPoint, [LayerMatrix])] = [(.attentionInput, [.q, .k, .v]), (.oProjInput, [.o]), (.mlpInput, [.gate, .up]), (.downProjInput, [.down])]

    func columnScale(_ m: LayerMatrix) -> [Float]? { scales[m.tap] }

    /// Divisors of the matrix's rows (v by o's V-channel scales, up by down's scales).
    func rowScale(_ m: LayerMatrix) -> [Float]? {
        switch m {
        case .v: return kvScales
        case .up: return scales[.downProjInput]
        default: return nil
        }
    }

    /// The stored (scaled) matrix's equivalent in the original weights' terms.
    func unscale(_ m: LayerMatrix, _ x: [Float], rows: Int, cols: Int) -> [Float] {
        let cs = columnScale(m), rs = rowScale(m)
        guard cs != nil || rs != nil else { return x }
        var out = x
        for r in 0..<rows {
            let f = rs?[r] ?? 1
            for j in 0..<cols { out[r * cols + j] = x[r * cols + j] * f / (cs?[j] ?? 1) }
        }
        return out
    }

    /// The V channel whose values o's input column `j` carries.
    static func kvChannel(_ j: Int, _ c: ModelConfig) -> Int {
        let rep = c.numHeads / max(c.numKVHeads, 1)
        return (j / c.headDim / max(rep, 1)) * c.headDim + j % c.headDim
    }

    /// Searches every input's α. `meanAbs`: per tap point, the mean |x| of each input channel.
    static func search(prefix p: String, config c: ModelConfig, values: [String: [Float]], schemes: [String: QuantScheme],
                       meanAbs: [TapPoint: [Double]], hessian: (TapPoint) -> [Float], grid: Int, fixedAlpha: Float? = nil) throws -> AWQFold {
        var fold = AWQFold()
        for (tap, matrices) in groups {
            let quantized = matrices.filter { schemes[p + $0.rawValue]?.isQuantized == true }
            guard !quantized.isEmpty, var stat = meanAbs[tap] else { continue }
            let cols = stat.count
            if tap == .oProjInput, c.numKVHeads != c.numHeads {
                var sum = [Double](repeating: 0, count: c.numKVHeads * c.headDim), n = sum
                for j in 0..<cols { sum[kvChannel(j, c)] += stat[j]; n[kvChannel(j, c)] += 1 }
                stat = (0..<cols).map { sum[kvChannel($0, c)] / max(n[kvChannel($0, c)], 1) }
            }
            let H = hessian(tap)
            func scales(_ alpha: Float) -> [Float] {
                var s = stat.map { Swift.max(Float(pow(Swift.max($0, 1e-12), Double(alpha))), 1e-4) }
                let hi = s.max() ?? 1, lo = s.min() ?? 1
                let norm = (hi * lo).squareRoot()
                if norm > 0 && norm.isFinite { for j in s.indices { s[j] /= norm } }
                return s
            }
            var bestLoss = Double.infinity, bestAlpha: Float = fixedAlpha ?? 0
            for k in 0..<(fixedAlpha == nil ? max(grid, 1) : 0) {
                let alpha = Float(k) / Float(max(grid, 1))
                let s = scales(alpha)
                var loss = 0.0
                for m in quantized {
                    let name = p + m.rawValue
                    guard let w = values[name], w.count % cols == 0 else { throw RecipeError("tensor '\(name)' does not have \(cols) columns") }
                    let rows = w.count / cols
                    let d = roundTripError(w, rows: rows, cols: cols, scales: s, scheme: schemes[name]!)
                    loss += LayerwiseQuantizer.weightedSquare(d, H, rows: rows, cols: cols)
                }
                if loss < bestLoss { bestLoss = loss; bestAlpha = alpha }
            }
            fold.alphas[tap] = bestAlpha
            let s = scales(bestAlpha)
            fold.scales[tap] = s
            if tap == .oProjInput {
                var kv = [Float](repeating: 1, count: c.numKVHeads * c.headDim)
                for j in 0..<cols { kv[kvChannel(j, c)] = s[j] }
                fold.kvScales = kv
            }
        }
        return fold
    }

    /// `Q(W·diag(s))·diag(s)⁻¹ − W` by min/max round to nearest, rows in parallel.
    static func roundTripError(_ w: [Float], rows: Int, cols: Int, scales s: [Float], scheme: QuantScheme) -> [Float] {
        guard let codec = scheme.codec as? any IntegerSchemeCodec else { return [Float](repeating: 0, count: w.count) }
        var d = [Float](repeating: 0, count: w.count)
        let workers = ProcessInfo.processInfo.activeProcessorCount
        let chunk = max(1, (rows + workers * 4 - 1) / (workers * 4))
        w.withUnsafeBufferPointer { wp in
            s.withUnsafeBufferPointer { sp in
                d.withUnsafeMutableBufferPointer { dp in
                    let W = UnsafeSendableFloat(wp.baseAddress!), S = UnsafeSendableFloat(sp.baseAddress!)
                    let D = UnsafeSendableRaw(UnsafeMutableRawPointer(dp.baseAddress!))
                    DispatchQueue.concurrentPerform(iterations: (rows + chunk - 1) / chunk) { c in
                        let ws = UnsafeMutablePointer<Float>.allocate(capacity: 2 * cols)
                        let codes = UnsafeMutablePointer<Int32>.allocate(capacity: cols)
                        defer { ws.deallocate(); codes.deallocate() }
                        let out = D.p.assumingMemoryBound(to: Float.self)
                        for r in (c * chunk)..<Swift.min(rows, (c + 1) * chunk) {
                            let x = W.p + r * cols
                            for j in 0..<cols { ws[j] = x[j] * S.p[j] }
                            codec.roundTripRow(ws, cols: cols, scheme: scheme, codes: codes, into: ws + cols)
                            for j in 0..<cols { out[r * cols + j] = ws[cols + j] / S.p[j] - x[j] }
                        }
                    }
                }
            }
        }
        return d
    }

    /// Folds the scales into `values` (matrix columns ×s, producers ÷s), keeping the
    /// matrices' original values in `original`.
    mutating func apply(prefix p: String, config c: ModelConfig, to values: inout [String: [Float]]) {
        func scaleColumns(_ m: LayerMatrix, _ s: [Float]) {
            let name = p + m.rawValue
            guard var w = values[name] else { return }
            if original[name] == nil { original[name] = w }
            let cols = s.count, rows = w.count / cols
            for r in 0..<rows { for j in 0..<cols { w[r * cols + j] *= s[j] } }
            values[name] = w
        }
        func divideRows(_ name: String, _ s: [Float], isMatrix: Bool) {
            guard var w = values[name], w.count % s.count == 0 else { return }
            if isMatrix, original[name] == nil { original[name] = w }
            let cols = w.count / s.count
            for r in 0..<s.count { for j in 0..<cols { w[r * cols + j] /= s[r] } }
            values[name] = w
        }
        for (tap, matrices) in AWQFold.groups {
            guard let s = scales[tap] else { continue }
            for m in matrices { scaleColumns(m, s) }
            switch tap {
            case .attentionInput: divideRows(p + "input_layernorm.weight", s, isMatrix: false)
            case .mlpInput: divideRows(p + "post_attention_layernorm.weight", s, isMatrix: false)
            case .downProjInput: divideRows(p + LayerMatrix.up.rawValue, s, isMatrix: true)
            case .oProjInput:
                if let kv = kvScales {
                    divideRows(p + LayerMatrix.v.rawValue, kv, isMatrix: true)
                    divideRows(p + "self_attn.v_proj.bias", kv, isMatrix: false)
                }
            }
        }
    }
}
