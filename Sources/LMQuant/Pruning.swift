import COpenBLAS
import Foundation
import LMCore
import LMFormats

/// N:M structured sparsity: in every run of `m` consecutive inputs of a row (aligned to
/// multiples of `m`), at most `n` weights are nonzero; the other `m − n` are pruned.
public struct SparsityPattern: Sendable, Equatable, CustomStringConvertible {
    public let n: Int, m: Int
    /// - Throws: `BuildSpecError` (option `pattern`) unless `1 ≤ n < m ≤ 32`.
    public init(n: Int, m: Int) throws {
        guard n >= 1, n < m, m <= 32 else {
            throw BuildSpecError(option: "pattern", reason: "--pattern N:M needs 1 ≤ N < M ≤ 32 (e.g. 2:4, 4:8), got \(n):\(m)")
        }
        self.n = n; self.m = m
    }
    /// Parses `N:M` (e.g. `2:4`).
    public init(parsing s: String) throws {
        let parts = s.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let n = Int(parts[0]), let m = Int(parts[1]) else {
            throw BuildSpecError(option: "pattern", reason: "--pattern must be N:M (e.g. 2:4, 4:8), got '\(s)'")
        }
        try self.init(n: n, m: m)
    }
    public var description: String { "\(n):\(m)" }
    /// The fraction pruned, `(m − n)/m`.
    public var sparsity: Double { Double(m - n) / Double(m) }
}

/// How pruned matrices are stored (`--storage`).
public enum PruneStorage: String, Sendable, CaseIterable {
    /// Kept values plus a bit mask (`+N:M` schemes): half the value bytes for 2:4.
    case compressed
    /// Exact zeros in place, in a scheme that decodes 0 exactly.
    case dense
}

/// How pruning chooses the weights to zero.
public enum PruneMethod: String, Sendable, CaseIterable {
    /// The smallest `|W|` (no calibration).
    case magnitude
    /// Wanda (Sun et al., 2023): the smallest `|W_ij| · ‖X_j‖₂`, per output row; no weight update.
    case wanda
    /// SparseGPT (Frantar & Alistarh, 2023): OBS-style selection `W²/[H⁻¹]²_jj` in lazy column
    /// blocks, with the remaining weights of each row updated to compensate (Hessian of the
    /// inputs, Cholesky inverse, as GPTQ).
    case sparsegpt
}

/// `lmconvert prune` (and gate recipes' `prune`): which weights of the seven decoder
/// matrices become exactly zero. Embeddings, the head and the norms are not pruned.
public struct PruneOptions: Sendable, Equatable {
    public var method: PruneMethod
    /// Unstructured: this fraction of each output row's weights is zeroed (`⌊sparsity · cols⌋`
    /// of them), in [0, 1). Nil with `pattern`.
    public var sparsity: Double?
    /// N:M structured sparsity. Nil with `sparsity`.
    public var pattern: SparsityPattern?
    /// How the pruned matrices are stored: nil (the default) compresses the N:M patterns that
    /// keep 4 of every 8 inputs (1:2, 2:4, 4:8: `+N:M` schemes, `NMCodec`) and stores
    /// everything else dense; `.dense` stores exact zeros in place.
    public var storage: PruneStorage?
    public init(method: PruneMethod, sparsity: Double? = nil, pattern: SparsityPattern? = nil, storage: PruneStorage? = nil) {
        self.method = method; self.sparsity = sparsity; self.pattern = pattern; self.storage = storage
    }

    /// The `+N:M` storage of the pruned matrices, or nil when they are stored dense.
    public var compressedPattern: QuantScheme.Sparsity? {
        guard storage != .dense, let p = pattern else { return nil }
        let s = QuantScheme.Sparsity(n: p.n, m: p.m)
        return QuantScheme.Sparsity.supported.contains(s) ? s : nil
    }

    /// Checks the options alone (the shapes are checked per tensor).
    /// - Throws: `BuildSpecError` naming `sparsity` or `pattern`.
    public func validate() throws {
        switch (sparsity, pattern) {
        case (nil, nil): throw BuildSpecError(option: "sparsity", reason: "pruning needs --sparsity F (unstructured) or --pattern N:M")
        case (.some, .some): throw BuildSpecError(option: "pattern", reason: "--sparsity and --pattern exclude each other: give one")
        case let (s?, nil):
            guard s >= 0, s < 1, s.isFinite else {
                throw BuildSpecError(option: "sparsity", reason: "--sparsity must be in [0, 1) (the fraction of each row's weights set to zero), got \(s)")
            }
        case (nil, .some): break
        }
        if storage == .compressed && compressedPattern == nil {
            throw BuildSpecError(option: "storage", reason: "compressed storage holds the N:M patterns that keep half of every 8 inputs (--pattern 1:2, 2:4 or 4:8); \(pattern.map { "--pattern \($0)" } ?? "unstructured sparsity") is stored dense (bitmask storage is not built yet): drop --storage compressed")
        }
    }

    /// Weights pruned in a row of `cols` inputs (every row the same).
    public func prunedPerRow(cols: Int) -> Int {
        if let p = pattern { return cols / p.m * (p.m - p.n) }
        return Int((Double(cols) * (sparsity ?? 0)).rounded(.down))
    }

    /// The mask's fraction of a `[rows, cols]` matrix.
    public func maskFraction(cols: Int) -> Double { cols > 0 ? Double(prunedPerRow(cols: cols)) / Double(cols) : 0 }

    /// The options as the build's canonical form and provenance record them.
    public var json: JSON {
        var f: [(String, JSON)] = [("method", .string(method.rawValue))]
        if let s = sparsity { f.append(("sparsity", .double(s))) }
        if let p = pattern { f.append(("pattern", .string(p.description))) }
        if pattern != nil { f.append(("storage", .string(compressedPattern != nil ? "compressed" : "dense"))) }
        return .object(f)
    }
}

/// Pruning of one weight matrix (`[rows, cols]` row-major: rows outputs, cols inputs).
/// Every method zeroes exactly `PruneOptions.prunedPerRow(cols:)` weights of each row
/// (an N:M pattern: `m − n` of each aligned run of `m`), lowest score first, ties to the
/// lower column; the kept mask is returned with the weights (`true` = kept).
public enum Pruner {
    /// The kept mask for `scores` (`[rows, cols]`): per row, the `prunedPerRow` lowest, or
    /// per aligned run of `m` the `m − n` lowest.
    /// - Throws: `RecipeError` when an N:M pattern's `m` does not divide `cols` (naming `tensor`).
    public static func mask(scores: [Float], rows: Int, cols: Int, options o: PruneOptions, tensor: String) throws -> [Bool] {
        try checkShape(cols: cols, options: o, tensor: tensor)
        var keep = [Bool](repeating: true, count: rows * cols)
        if let p = o.pattern {
            for r in 0..<rows {
                var c0 = 0
                while c0 < cols {
                    pruneLowest(scores, row: r, cols: cols, range: c0..<(c0 + p.m), count: p.m - p.n, into: &keep)
                    c0 += p.m
                }
            }
        } else {
            let k = o.prunedPerRow(cols: cols)
            for r in 0..<rows { pruneLowest(scores, row: r, cols: cols, range: 0..<cols, count: k, into: &keep) }
        }
        return keep
    }

    /// An N:M pattern's `m` must divide the input dimension.
    static func checkShape(cols: Int, options o: PruneOptions, tensor: String) throws {
        if let p = o.pattern, cols % p.m != 0 {
            throw RecipeError("--pattern \(p): tensor '\(tensor)' has \(cols) inputs, not a multiple of \(p.m); choose an M that divides it, or unstructured --sparsity")
        }
    }

    /// Marks the `count` lowest scores of `row` within `range` as pruned (ties: lower column first).
    static func pruneLowest(_ scores: [Float], row r: Int, cols: Int, range: Range<Int>, count: Int, into keep: inout [Bool]) {
        guard count > 0 else { return }
        let order = range.sorted { a, b in
            let sa = scores[r * cols + a], sb = scores[r * cols + b]
            return sa < sb || (sa == sb && a < b)
        }
        for c in order.prefix(count) { keep[r * cols + c] = false }
    }

    /// Magnitude or Wanda pruning: the scores are `|W|`, or `|W_ij| · ‖X_j‖` with
    /// `columnNorms` (Wanda's `‖X_j‖₂`; any positive multiple ranks the same), and the pruned
    /// weights become 0; the others are unchanged.
    public static func prune(weights: [Float], rows: Int, cols: Int, options o: PruneOptions, columnNorms: [Double]? = nil,
                             tensor: String) throws -> (weights: [Float], keep: [Bool]) {
        if let cn = columnNorms, cn.count != cols { throw RecipeError("tensor '\(tensor)': \(cn.count) input norms for \(cols) inputs") }
        var scores = [Float](repeating: 0, count: rows * cols)
        for r in 0..<rows {
            for c in 0..<cols { scores[r * cols + c] = abs(weights[r * cols + c]) * Float(columnNorms?[c] ?? 1) }
        }
        let keep = try mask(scores: scores, rows: rows, cols: cols, options: o, tensor: tensor)
        var w = weights
        for i in w.indices where !keep[i] { w[i] = 0 }
        return (w, keep)
    }

    /// SparseGPT: columns in lazy blocks of `blockSize` (rounded down to a multiple of an
    /// N:M pattern's `m`, at least `m`), with `f` the inverse Cholesky factor of the
    /// dampened Hessian (`GPTQ.factor`, storage order). Per block, unstructured: each row's
    /// share of the pruned weights, `⌊s·end⌋ − ⌊s·start⌋`, lowest `w²/[H⁻¹]²_jj` on the
    /// block's weights as its first column is reached (SparseGPT selects over the whole block;
    /// per row here, so every row has the same sparsity, as Wanda's comparison group); N:M:
    /// at each run's first column, the `m − n` lowest of the run's current weights. Each
    /// column is then fixed (pruned → 0) and its error propagated into the later columns, as
    /// GPTQ does with quantization error. Dead inputs (`H_jj = 0`) have their weights zeroed.
    /// Deterministic. Memory: O(rows·cols) plus the factor.
    public static func sparseGPT(weights: [Float], rows: Int, cols n: Int, factorization f: GPTQ.Factorization, options o: PruneOptions,
                                 blockSize: Int = 128, tensor: String) throws -> (weights: [Float], keep: [Bool]) {
        try checkShape(cols: n, options: o, tensor: tensor)
        guard weights.count == rows * n, f.cols == n, !f.actOrder else {
            throw RecipeError("tensor '\(tensor)': SparseGPT needs a [\(rows), \(n)] weight and a storage-order factorization of \(n) inputs")
        }
        if let i = weights.firstIndex(where: { !$0.isFinite }) { throw ModelError.nonFinite(tensor: tensor, index: i, value: weights[i]) }
        var B = max(1, min(blockSize, n))
        if let p = o.pattern { B = max(p.m, B - B % p.m) }
        let Hinv = f.hinv
        // Wt: column i is row i of `rows` floats (contiguous columns for the BLAS updates).
        let Wt = UnsafeMutablePointer<Float>.allocate(capacity: n * rows)
        defer { Wt.deallocate() }
        for i in 0..<n {
            let dst = Wt + i * rows
            if f.dead[i] { dst.initialize(repeating: 0, count: rows) } else { for r in 0..<rows { dst[r] = weights[r * n + i] } }
        }
        var keep = [Bool](repeating: true, count: rows * n)
        let err = UnsafeMutablePointer<Float>.allocate(capacity: B * rows)
        defer { err.deallocate() }
        let s = o.sparsity ?? 0
        func score(_ c: Int, _ r: Int) -> Float { let w = Wt[c * rows + r], d = Hinv[c * n + c]; return w * w / (d * d) }
        var i1 = 0
        while i1 < n {
            let i2 = min(i1 + B, n)
            if o.pattern == nil {
                let count = Int((Double(i2) * s).rounded(.down)) - Int((Double(i1) * s).rounded(.down))
                if count > 0 {
                    for r in 0..<rows {
                        let order = (i1..<i2).sorted { a, b in let sa = score(a, r), sb = score(b, r); return sa < sb || (sa == sb && a < b) }
                        for c in order.prefix(count) { keep[r * n + c] = false }
                    }
                }
            }
            for i in i1..<i2 {
                if let p = o.pattern, i % p.m == 0 {
                    for r in 0..<rows {
                        let order = (i..<(i + p.m)).sorted { a, b in let sa = score(a, r), sb = score(b, r); return sa < sb || (sa == sb && a < b) }
                        for c in order.prefix(p.m - p.n) { keep[r * n + c] = false }
                    }
                }
                let d = Hinv[i * n + i]
                let w = Wt + i * rows, e = err + (i - i1) * rows
                for r in 0..<rows {
                    let q: Float = keep[r * n + i] ? w[r] : 0
                    e[r] = (w[r] - q) / d
                    w[r] = q
                }
                // Inside the block: W[i+1..<i2] -= Hinv[i, i+1..<i2] ⊗ err_i.
                if i + 1 < i2 {
                    cblas_sger(CblasRowMajor, Int32(i2 - i - 1), Int32(rows), -1, Hinv + i * n + i + 1, 1, e, 1, Wt + (i + 1) * rows, Int32(rows))
                }
            }
            // Deferred: W[i2..<n] -= Hinv[i1..<i2, i2..<n]ᵀ · Err.
            if i2 < n {
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(n - i2), Int32(rows), Int32(i2 - i1), -1,
                            Hinv + i1 * n + i2, Int32(n), err, Int32(rows), 1, Wt + i2 * rows, Int32(rows))
            }
            i1 = i2
        }
        var out = [Float](repeating: 0, count: rows * n)
        for r in 0..<rows { for c in 0..<n { out[r * n + c] = Wt[c * rows + r] } }
        // Dead inputs count as pruned only where the mask says so; their weights are 0 either way.
        return (out, keep)
    }

    /// Whether `scheme` stores a zero weight as exactly 0: the float schemes and the
    /// symmetric integer ones (int8, int4s: code `zeroCode` decodes to 0). Asymmetric
    /// grids (int4, int3, int2: `s·q + m`) generally have no exact 0.
    public static func storesExactZero(_ scheme: QuantScheme) -> Bool {
        guard scheme.isQuantized, scheme.sparsity == nil else { return true }
        return (scheme.codec as? any IntegerSchemeCodec)?.zeroCode != nil
    }
}

extension Pruner {
    /// The decoder-matrix role of a tensor name (`model.layers.L.<matrix>`), or nil.
    static func role(_ name: String, layers: Int) -> LayerMatrix? {
        guard let l = LayerwiseQuantizer.layerIndex(name), l < layers else { return nil }
        return LayerMatrix(rawValue: String(name.dropFirst("model.layers.\(l).".count)))
    }

    /// Throws when `scheme` is compressed N:M (`+n:m`) and `v` has more than `n` nonzero
    /// weights in some aligned run of `m` inputs.
    public static func checkSparse(_ v: [Float], rows: Int, cols: Int, scheme: QuantScheme, tensor: String) throws {
        guard let sp = scheme.sparsity, let codec = scheme.codec as? NMCodec else { return }
        guard cols % sp.m == 0 else {
            throw RecipeError("tensor '\(tensor)': \(scheme.name) needs a column count divisible by \(sp.m), got \(cols); store it dense")
        }
        if let (r, c) = v.withUnsafeBufferPointer({ codec.firstViolation($0.baseAddress!, rows: rows, cols: cols) }) {
            throw RecipeError("tensor '\(tensor)' is not \(sp) sparse (row \(r), columns \(c)..<\(c + sp.m) hold more than \(sp.n) nonzero weights): prune it first (lmconvert prune --pattern \(sp)) or choose a dense scheme (\(scheme.dense.name))")
        }
    }

    /// Throws unless the stored values are exactly 0 wherever the mask pruned.
    static func checkZeros(_ stored: [Float], keep: [Bool], scheme: QuantScheme, tensor: String) throws {
        if let j = keep.indices.first(where: { !keep[$0] && stored[$0] != 0 }) {
            throw RecipeError("tensor '\(tensor)': a pruned weight (index \(j)) decodes to \(stored[j]) under \(scheme.name), not 0; store pruned matrices as f32/f16/bf16 or a symmetric scheme (int8, int4s)")
        }
    }

    /// The header's `pruning` record: the options and each pruned tensor's mask fraction
    /// (formats/lmpk.md, "Pruning").
    static func meta(_ o: PruneOptions, tensors: [(name: String, shape: [Int])], layers: Int) -> (String, JSON) {
        var per: [(String, JSON)] = []
        for t in tensors where t.shape.count == 2 && role(t.name, layers: layers) != nil {
            per.append((t.name, .double(o.maskFraction(cols: t.shape[1]))))
        }
        var f: [(String, JSON)]
        if case let .object(fields) = o.json { f = fields } else { f = [] }
        f.append(("tensors", .object(per)))
        return ("pruning", .object(f))
    }

    /// Refuses, before any work, a pruned decoder matrix whose scheme cannot store 0 exactly,
    /// and an N:M pattern that does not divide a matrix's inputs.
    static func checkPlan(_ o: PruneOptions, tensors: [(name: String, shape: [Int])], schemes: [QuantScheme], layers: Int, gptq: Bool = false) throws {
        for (t, s) in zip(tensors, schemes) where t.shape.count == 2 && role(t.name, layers: layers) != nil {
            // GPTQ's joint N:M selection needs runs inside its lazy blocks, which are cut at group starts.
            if gptq, o.method == .sparsegpt, let p = o.pattern, s.isQuantized {
                let g = GPTQ.groupColumns(s, cols: t.shape[1])
                if g < t.shape[1] && g % p.m != 0 {
                    throw RecipeError("tensor '\(t.name)': --pattern \(p) with GPTQ and \(s.name): its groups span \(g) columns, not a multiple of \(p.m); choose a pattern whose M divides \(g)")
                }
            }
            if let c = s.sparsity {
                guard let p = o.pattern, c.m % p.m == 0, p.n * (c.m / p.m) <= c.n else {
                    throw RecipeError("tensor '\(t.name)' is stored as \(s.name), but pruning \(o.pattern.map { "to \($0)" } ?? "unstructured") does not guarantee \(c) sparsity; prune with --pattern \(c) or store it dense")
                }
                // A sparser pattern than the storage's: the mask is topped up with pruned weights,
                // stored as values, so the value scheme must hold 0 exactly.
                if p.n * (c.m / p.m) < c.n && !storesExactZero(s.dense) {
                    throw RecipeError("tensor '\(t.name)': pruning to \(p) stored as \(s.name) stores some pruned weights as values, and \(s.dense.name) has no exact 0; store it as +\(p) or in a symmetric scheme (int8, int4s)")
                }
            }
            guard storesExactZero(s) else {
                throw RecipeError("tensor '\(t.name)' would be pruned and stored as \(s.name), whose asymmetric grid has no exact 0 (pruned weights would decode non-zero); use a float scheme (f16, bf16, f32) or a symmetric one (int8, int8-gG, int4s-gG)")
            }
            try checkShape(cols: t.shape[1], options: o, tensor: t.name)
        }
    }

    /// Refuses to build from an already-pruned `.lmpk` (its header's `pruning` record
    /// `existing`) unless the new pruning's mask can hold every weight already pruned, so the
    /// result is exactly what was asked: per row (unstructured) or per aligned run (N:M), the
    /// weights pruned before are at most the ones the new options prune. Old N:M n₁:m₁ under
    /// new n₂:m₂: m₁ | m₂ needs n₂ ≤ n₁·m₂/m₁ (2:4 → 4:8, 1:4); m₂ | m₁ needs min(m₂, m₁−n₁) ≤
    /// m₂−n₂ (4:8 → 2:4 is refused: a 4:8 run may hold 4 pruned weights in one half). Old N:M under
    /// unstructured s: s ≥ (m₁−n₁)/m₁. Old unstructured s₁: only unstructured s ≥ s₁. Without new
    /// pruning options the input's zeros would not survive quantization (GPTQ moves them,
    /// asymmetric grids have no exact 0), so that is refused too, naming the way that keeps them.
    /// - Throws: `RecipeError` naming the file, both patterns and what to do.
    public static func checkRepruning(existing: JSON, with new: PruneOptions?, file: String) throws {
        let method = existing["method"]?.string ?? "?"
        var oldPattern: SparsityPattern? = nil
        if let p = existing["pattern"] {
            guard let s = p.string, let parsed = try? SparsityPattern(parsing: s) else {
                throw RecipeError("'\(file)': its pruning record's pattern \(p.serialized()) is not N:M; the file is corrupt or from another tool: prune the original model")
            }
            oldPattern = parsed
        } else if existing["sparsity"]?.double == nil {
            throw RecipeError("'\(file)': its pruning record has neither a pattern nor a sparsity; the file is corrupt or from another tool: prune the original model")
        }
        let oldSparsity = existing["sparsity"]?.double ?? oldPattern?.sparsity ?? 0
        let oldText = oldPattern?.description ?? String(format: "%g %% unstructured", oldSparsity * 100)
        let keep = oldPattern.map { "--pattern \($0)" } ?? String(format: "--sparsity %g", oldSparsity)
        guard let new else {
            throw RecipeError("'\(file)' is pruned (\(oldText) by \(method)); lmconvert quantize would drop its pruning record, and GPTQ, AWQ or an asymmetric scheme would move its zeros: use lmconvert prune -i '\(file)' --method magnitude \(keep) --scheme … (pruning a pruned model by magnitude prunes its zeros first; add --quant-method gptq --calib … for GPTQ that keeps them 0), or quantize the original model")
        }
        guard new.method != .sparsegpt else {
            // Its weight updates move the old zeros before each run is selected, and its unstructured
            // quotas are per block: the weights pruned before are not guaranteed to stay pruned.
            throw RecipeError("'\(file)' is already pruned (\(oldText) by \(method)); SparseGPT's weight updates would revive some of its pruned weights: re-prune it by magnitude or wanda (which prune its zeros first), e.g. --method magnitude \(keep), or run sparsegpt on the original model")
        }
        let newText = new.pattern?.description ?? String(format: "%g %% unstructured", (new.sparsity ?? 0) * 100)
        let ok: Bool
        switch (oldPattern, new.pattern) {
        case let (o?, n?):
            if n.m % o.m == 0 { ok = n.n * o.m <= o.n * n.m }
            else if o.m % n.m == 0 { ok = min(n.m, o.m - o.n) <= n.m - n.n }
            else { ok = false }
        case (_, nil): ok = (new.sparsity ?? 0) + 1e-12 >= oldSparsity
        case (nil, .some): ok = oldSparsity == 0
        }
        guard ok else {
            throw RecipeError("'\(file)' is already pruned (\(oldText) by \(method)); pruning it to \(newText) cannot keep those weights pruned and prune only what \(newText) asks (some \(new.pattern.map { "run of \($0.m) inputs" } ?? "row") may already hold more pruned weights than \(newText) prunes): choose a pattern the existing one satisfies (e.g. \(oldPattern.map { "--pattern \($0) or a sparser one" } ?? String(format: "--sparsity ≥ %g", oldSparsity))), or prune the original model")
        }
    }
}
