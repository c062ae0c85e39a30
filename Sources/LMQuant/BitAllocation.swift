import Foundation
import LMCore
import LMFormats
import LMRuntime
import COpenBLAS

/// Bit allocation (`lmconvert quantize --target-bpw B`): per-matrix schemes chosen from
/// `candidates` so the whole file averages at most `targetBPW` bits per weight (every
/// tensor's bytes counted, embeddings and norms included) at the least total measured damage.
public struct AllocationOptions: Sendable, Equatable {
    public var targetBPW: Double
    /// Schemes a decoder matrix may get (integer schemes; names as `--scheme` takes them).
    public var candidates: [String]
    /// Calibration windows (the first ones, in text order) the sensitivity pass runs on.
    public var samples: Int
    /// Of those, the windows the per-layer exchange rate to end-to-end KL is measured on.
    public var klSamples: Int
    public static let defaultCandidates = ["int3-g64", "int3-g32", "int4-g128", "int4-g64", "int4-g32", "int8"]
    public init(targetBPW: Double, candidates: [String] = defaultCandidates, samples: Int = 4, klSamples: Int = 1) {
        self.targetBPW = targetBPW; self.candidates = candidates; self.samples = samples; self.klSamples = klSamples
    }
}

/// What the allocator chose and measured.
public struct Allocation: Sendable {
    public struct Choice: Sendable {
        public let tensor: String
        public let scheme: String
        public let bytes: Int
        /// Estimated damage at the chosen scheme (its share of the end-to-end mean KL, nats).
        public let damage: Double
        /// Estimated damage at each of `Allocation.candidates`.
        public let damages: [Double]
    }
    /// One decoder layer's exchange rate: with all its allocatable matrices at their cheapest
    /// candidate (the rest float), the measured end-to-end mean KL (on the `klSamples`
    /// windows), against the sum of those matrices' measured relative output changes alone
    /// (`relativeChange`) and the layer's relative output change with all of them at once
    /// (`jointChange`; near `relativeChange` when their perturbations add), both on the
    /// sensitivity pass's windows.
    public struct LayerRate: Sendable {
        public let layer: Int
        public let kl: Double, relativeChange: Double, jointChange: Double
        /// Nats of KL per unit of relative output change: `kl / relativeChange`.
        public var rate: Double { relativeChange > 0 ? kl / relativeChange : 0 }
    }
    /// The candidates' resolved names, in the order of `Choice.damages`.
    public var candidates: [String] = []
    public var layers: [LayerRate] = []
    public var choices: [Choice] = []
    /// Bytes of the tensors the allocator does not choose for (embeddings, norms, overridden
    /// tensors), and of all tensors.
    public var fixedBytes = 0, totalBytes = 0
    public var parameters = 0
    public var seconds = 0.0
    public var bitsPerWeight: Double { Double(totalBytes * 8) / Double(max(parameters, 1)) }
    public var totalDamage: Double { choices.reduce(0) { $0 + $1.damage } }
    /// `REGEX=SCHEME` overrides that reproduce the allocation (one exact name each).
    public var overrides: [String] { choices.map { "^" + NSRegularExpression.escapedPattern(for: $0.tensor) + "$=" + $0.scheme } }
}

/// The allocator.
///
/// **Sensitivity.** A float pass over the first `samples` calibration windows, one decoder
/// layer at a time (memory: one layer, the windows' activations, and one residual stream of
/// the first `klSamples` windows per layer). In layer l, for each of its seven matrices t:
/// - `d(t, s₀)`: the layer is run with only t round-to-nearest quantized to its cheapest
///   candidate s₀, and the change of the layer's output (the residual stream) is measured,
///   `Σ‖Δh‖² / Σ‖h‖²` over the windows' tokens;
/// - for the other candidates s, `d(t, s) = d(t, s₀) · E(t, s) / E(t, s₀)` with
///   `E = tr(ΔW·H·ΔWᵀ)`, the Hessian-weighted output error of that matrix alone.
///
/// **Currency.** A relative change of the residual stream does not cost the same KL in every
/// layer (later layers' streams carry large outlier channels that dominate `‖h‖` but not the
/// logits), and a selective allocation exploits exactly that error. So each layer gets an
/// exchange rate, measured end to end: the layer is run once more with all its allocatable
/// matrices at s₀, the first `klSamples` windows of that stream are carried through the float
/// layers after it, the final norm and the head, and their mean KL(P_float ‖ P_perturbed)
/// over every position, `KL_l`, divided by the sum of those matrices' `d(t, s₀)` is the rate
/// `r_l`. A matrix's damage is `D(t, s) = r_l · d(t, s)`, in nats of KL: at s₀ the layer's
/// matrices' damages add up to the KL measured. Cost: on top of the sensitivity pass's `8L`
/// layer runs, `L` more and `L(L−1)/2` runs of `klSamples` windows, and `L + 1` head passes
/// (the float stream's too). Memory: the `L` streams, `L·klSamples·ctx·hidden` floats (35 MiB
/// on SmolLM2), and the head in float32 during the KL (`vocab·hidden`). A layer without
/// allocatable matrices has no stream and no rate.
///
/// **Choice.** Total damage is taken as additive over matrices (KL is quadratic in small
/// independent perturbations). Each matrix's candidates
/// are reduced to their lower convex hull (bytes vs damage); all start at the cheapest, then
/// the upgrade with the largest damage decrease per byte that still fits the budget is
/// applied until none fits (the greedy solution of the Lagrangian relaxation).
enum BitAllocator {
    static func allocate(model: ImportedModel, recipe: Recipe, calibration: CalibrationSet, options o: AllocationOptions,
                         threads: Int, progress: ProgressReporter?) throws -> Allocation {
        let start = Date()
        let c = model.config
        let candidates = try parseCandidates(o.candidates)
        let schemes = try recipe.assign(model.tensors.map { ($0.name, $0.shape) })
        func bytes(_ s: QuantScheme, _ shape: [Int]) -> Int {
            let rows = shape.count == 2 ? shape[0] : 1, cols = shape.count == 2 ? shape[1] : shape.reduce(1, *)
            return s.sections(rows: rows, cols: cols).reduce(0) { $0 + $1.bytes }
        }
        // Allocatable: decoder-layer matrices left at the default scheme.
        var allocatable: [Int] = []
        var alloc = Allocation()
        for (i, t) in model.tensors.enumerated() {
            alloc.parameters += t.shape.reduce(1, *)
            if let l = LayerwiseQuantizer.layerIndex(t.name), l < c.numLayers,
               LayerMatrix(rawValue: String(t.name.dropFirst("model.layers.\(l).".count))) != nil, schemes[i] == recipe.defaultScheme {
                allocatable.append(i)
            } else {
                alloc.fixedBytes += bytes(schemes[i], t.shape)
            }
        }
        let budget = Int((o.targetBPW * Double(alloc.parameters) / 8).rounded(.down))
        let cheapest = alloc.fixedBytes + allocatable.reduce(0) { s, i in s + candidates.map { bytes($0, model.tensors[i].shape) }.min()! }
        let cheapestBPW = Double(cheapest * 8) / Double(max(alloc.parameters, 1))
        guard budget >= cheapest else {
            throw RecipeError(String(format: "--target-bpw %.4g is below the cheapest allocation: %.4f bits/weight (every decoder matrix at its cheapest candidate of %@, the other tensors %.2f MiB as the recipe stores them); raise --target-bpw, add cheaper --candidates, or store the embedding smaller (--override)",
                                     o.targetBPW, cheapestBPW, o.candidates.joined(separator: ","), Double(alloc.fixedBytes) / 1_048_576))
        }
        guard !allocatable.isEmpty else { throw RecipeError("--target-bpw: no decoder matrix is left at the default scheme to allocate") }

        // Sensitivity pass.
        let windows = Array(calibration.samples.prefix(max(1, o.samples)))
        let D = c.hiddenSize
        let context = ComputeContext(threads: threads)
        guard let embT = model.tensors.first(where: { $0.name == "model.embed_tokens.weight" }) else {
            throw RecipeError("tensor 'model.embed_tokens.weight' is missing; the sensitivity pass needs the token embedding")
        }
        var hidden = [Float](repeating: 0, count: windows.reduce(0) { $0 + $1.count } * D)
        do {   // the float embedding lives only for the lookup
            let emb = try LayerwiseQuantizer.finite(embT)
            embT.release()
            for (k, id) in windows.flatMap({ $0 }).enumerated() where id < embT.shape[0] {
                for j in 0..<D { hidden[k * D + j] = emb[id * D + j] }
            }
        }
        var damage: [Int: [Double]] = [:]   // tensor index → per candidate
        // Exchange-rate streams: the first klSamples windows, one stream per layer.
        let klWindows = Array(windows.prefix(max(1, min(o.klSamples, windows.count))))
        let klFloats = klWindows.reduce(0) { $0 + $1.count } * D
        var streams: [(layer: Int, hidden: [Float], relative: Double, joint: Double)] = []
        let byLayer = Dictionary(grouping: allocatable) { LayerwiseQuantizer.layerIndex(model.tensors[$0].name)! }
        for l in 0..<c.numLayers {
            let p = "model.layers.\(l)."
            var values: [String: [Float]] = [:]
            for t in model.tensors where LayerwiseQuantizer.layerIndex(t.name) == l { values[t.name] = try LayerwiseQuantizer.finite(t); t.release() }
            var H = LayerwiseQuantizer.hessianAccumulators(c)
            var hf: [TapPoint: [Float]] = [:]   // q/k/v and gate/up share theirs
            let layer = try LayerwiseQuantizer.makeLayer(prefix: p, c, values)
            var out = hidden
            try LayerwiseQuantizer.propagate(layer: layer, c, windows, hidden: &out, update: true, context: context) { _, point, x, rows, _ in
                H[point]!.add(x, rows: rows, context: context)
            }
            var norm = 0.0
            for v in out { norm += Double(v) * Double(v) }
            for j in streams.indices {
                try LayerwiseQuantizer.propagate(layer: layer, c, klWindows, hidden: &streams[j].hidden, update: true, context: context, tap: nil)
            }
            var cheapestLayer = values   // every allocatable matrix of the layer at its cheapest candidate
            var relative = 0.0           // Σ d(t, s₀)
            for i in byLayer[l] ?? [] {
                let t = model.tensors[i]
                guard let role = LayerMatrix(rawValue: String(t.name.dropFirst(p.count))), let w = values[t.name] else { continue }
                let rows = t.shape[0], cols = t.shape[1]
                if hf[role.tap] == nil { hf[role.tap] = H[role.tap]!.hessian().map { Float($0) } }
                let hm = hf[role.tap]!
                let ones = [Float](repeating: 1, count: cols)
                let E = candidates.map { s in
                    LayerwiseQuantizer.weightedSquare(AWQFold.roundTripError(w, rows: rows, cols: cols, scales: ones, scheme: s), hm, rows: rows, cols: cols)
                }
                let ref = candidates.indices.min { bytes(candidates[$0], t.shape) < bytes(candidates[$1], t.shape) }!
                var changed = values
                let d = AWQFold.roundTripError(w, rows: rows, cols: cols, scales: ones, scheme: candidates[ref])
                changed[t.name] = zip(w, d).map { $0 + $1 }
                var moved = hidden
                try LayerwiseQuantizer.propagate(layer: try LayerwiseQuantizer.makeLayer(prefix: p, c, changed), c, windows, hidden: &moved,
                                                 update: true, context: context, tap: nil)
                cheapestLayer[t.name] = changed[t.name]
                var diff = 0.0
                for k in moved.indices { let e = Double(moved[k] - out[k]); diff += e * e }
                let dRef = norm > 0 ? diff / norm : 0
                relative += E[ref] > 0 ? dRef : 0   // a matrix whose damages are 0 adds none to the rate's base
                damage[i] = E.map { E[ref] > 0 ? dRef * $0 / E[ref] : 0 }
            }
            if byLayer[l] != nil {
                var moved = hidden
                try LayerwiseQuantizer.propagate(layer: try LayerwiseQuantizer.makeLayer(prefix: p, c, cheapestLayer), c, windows, hidden: &moved,
                                                 update: true, context: context, tap: nil)
                var joint = 0.0
                for k in moved.indices { let e = Double(moved[k] - out[k]); joint += e * e }
                streams.append((l, Array(moved.prefix(klFloats)), relative, norm > 0 ? joint / norm : 0))
            }
            hidden = out
            progress?.update(l + 1, extra: "sensitivity of layer \(l)")
        }

        // Exchange rates: each stream's end-to-end KL against the float model's.
        let kl = try endToEndKL(model: model, reference: Array(hidden.prefix(klFloats)), streams: streams.map(\.hidden), context: context)
        for (j, st) in streams.enumerated() {
            let r = Allocation.LayerRate(layer: st.layer, kl: kl[j], relativeChange: st.relative, jointChange: st.joint)
            alloc.layers.append(r)
            // A layer whose matrices change nothing measurable keeps its (zero) damages.
            guard r.relativeChange > 0 else { continue }
            for i in byLayer[st.layer] ?? [] { damage[i] = damage[i]!.map { $0 * r.rate } }
        }
        progress?.update(c.numLayers, extra: "end-to-end KL of \(streams.count) layers")

        // Choice: lower convex hull per tensor, then greedy upgrades by damage saved per byte.
        struct Option { let scheme: Int; let bytes: Int; let damage: Double }
        var hulls: [Int: [Option]] = [:]
        for i in allocatable {
            let shape = model.tensors[i].shape, dmg = damage[i]!
            var opts: [Option] = []
            for k in candidates.indices { opts.append(Option(scheme: k, bytes: bytes(candidates[k], shape), damage: dmg[k])) }
            opts.sort { (a: Option, b: Option) -> Bool in a.bytes < b.bytes || (a.bytes == b.bytes && a.damage < b.damage) }
            var hull: [Option] = []
            for op in opts {
                if let last = hull.last, op.damage >= last.damage { continue }     // dominated
                while hull.count >= 2 {
                    let a = hull[hull.count - 2], b = hull[hull.count - 1]
                    // b is above the segment a–op: remove it.
                    let lhs = (b.damage - a.damage) * Double(op.bytes - a.bytes), rhs = (op.damage - a.damage) * Double(b.bytes - a.bytes)
                    if lhs >= rhs { hull.removeLast() } else { break }
                }
                hull.append(op)
            }
            hulls[i] = hull
        }
        var level = [Int: Int](uniqueKeysWithValues: allocatable.map { ($0, 0) })
        var used = alloc.fixedBytes + allocatable.reduce(0) { $0 + hulls[$1]![0].bytes }
        while true {
            var best: (i: Int, gain: Double)? = nil
            for i in allocatable {
                let h = hulls[i]!, k = level[i]!
                guard k + 1 < h.count else { continue }
                let extra = h[k + 1].bytes - h[k].bytes
                guard used + extra <= budget else { continue }
                let gain = (h[k].damage - h[k + 1].damage) / Double(max(extra, 1))
                if best == nil || gain > best!.gain || (gain == best!.gain && i < best!.i) { best = (i, gain) }
            }
            guard let b = best else { break }
            let h = hulls[b.i]!, k = level[b.i]!
            used += h[k + 1].bytes - h[k].bytes
            level[b.i] = k + 1
        }
        alloc.choices = allocatable.map { i in
            let op = hulls[i]![level[i]!]
            return Allocation.Choice(tensor: model.tensors[i].name, scheme: candidates[op.scheme].name, bytes: op.bytes, damage: op.damage,
                                     damages: damage[i]!)
        }
        alloc.candidates = candidates.map(\.name)
        alloc.totalBytes = used
        alloc.seconds = Date().timeIntervalSince(start)
        return alloc
    }

    /// Mean KL(P_ref ‖ P_stream) over every position, per stream: the final RMSNorm
    /// (`model.norm.weight`) and the head (`lm_head.weight`, or the token embedding when tied,
    /// as the runtime reads it) on the float values, 128 positions at a time.
    static func endToEndKL(model: ImportedModel, reference: [Float], streams: [[Float]], context: ComputeContext) throws -> [Double] {
        let c = model.config, D = c.hiddenSize
        guard !streams.isEmpty else { return [] }
        func tensor(_ n: String) -> PendingTensor? { model.tensors.first { $0.name == n } }
        guard let normT = tensor("model.norm.weight") else { throw RecipeError("tensor 'model.norm.weight' is missing; the allocator's end-to-end KL needs the final norm") }
        let headName = c.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight"   // as the runtime reads it
        guard let headT = tensor(headName), headT.shape.count == 2, headT.shape[1] == D else {
            throw RecipeError("tensor '\(headName)' is missing or not [vocab, \(D)]; the allocator's end-to-end KL needs the head")
        }
        let finalNorm = try LayerwiseQuantizer.finite(normT), head = try LayerwiseQuantizer.finite(headT)
        normT.release(); headT.release()
        guard finalNorm.count == D else { throw RecipeError("tensor 'model.norm.weight' has \(finalNorm.count) values, not \(D)") }
        let V = headT.shape[0], tokens = reference.count / D, chunk = 128
        var sums = [Double](repeating: 0, count: streams.count)
        var xn = [Float](repeating: 0, count: chunk * D)
        var base = [Float](repeating: 0, count: chunk * V), logits = [Float](repeating: 0, count: chunk * V)
        func project(_ h: [Float], from t0: Int, _ n: Int, into out: inout [Float]) {
            h.withUnsafeBufferPointer { hp in
                finalNorm.withUnsafeBufferPointer { w in
                    xn.withUnsafeMutableBufferPointer { x in
                        for t in 0..<n { Ops.rmsNorm(hp.baseAddress! + (t0 + t) * D, w.baseAddress!, x.baseAddress! + t * D, D, eps: c.rmsNormEps) }
                    }
                }
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(V), Int32(D), 1, xn, Int32(D), head, Int32(D), 0, &out, Int32(V))
        }
        var t0 = 0
        while t0 < tokens {
            let n = min(chunk, tokens - t0)
            project(reference, from: t0, n, into: &base)
            for (j, s) in streams.enumerated() {
                project(s, from: t0, n, into: &logits)
                sums[j] += Divergence.klAndTop1(base: base, model: logits, vocab: V, rows: Array(0..<n), context: context).kl.reduce(0, +)
            }
            t0 += n
        }
        return sums.map { $0 / Double(max(tokens, 1)) }
    }

    /// Candidate names → schemes (integer schemes only).
    static func parseCandidates(_ names: [String]) throws -> [QuantScheme] {
        guard !names.isEmpty else { throw BuildSpecError(option: "candidates", reason: "--candidates is empty") }
        return try names.map { n in
            let s: QuantScheme
            do { s = try QuantScheme(parsing: n) } catch { throw BuildSpecError(option: "candidates", reason: "--candidates: \(error)") }
            guard s.isQuantized else { throw BuildSpecError(option: "candidates", reason: "--candidates: \(n) stores floats; candidates are integer schemes") }
            guard s.sparsity == nil else { throw BuildSpecError(option: "candidates", reason: "--candidates: \(n) is a compressed N:M scheme; bit allocation among them is not built yet") }
            return s
        }
    }
}
