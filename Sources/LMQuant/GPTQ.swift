import COpenBLAS
import Foundation
import LMCore
import LMFormats

// GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative
// Pre-trained Transformers", 2022): quantize a linear layer's weight column by column and
// push each column's rounding error onto the columns not yet quantized, weighted by the
// inverse Hessian of the layer's squared output error, H = 2/n · XᵀX over calibration inputs X.
//
// This file is the algorithm core only: the Hessian accumulator and the quantizer of one
// matrix. Capturing X layer by layer through the runtime, CLI flags and provenance come later.
//
// Measured (release build, 2 cores shared with another CI job, blockSize 128, int4-g32,
// minmax, GPTQTests "timing", Hessian given): 1536×576 0.06–0.18 s, 576×1536 0.28–0.32 s
// (0.22 s of it the three LAPACK calls on the 1536×1536 Hessian: potrf 0.05, potri 0.10,
// potrf 0.07), 576×576 0.02–0.03 s, 192×576 0.015 s. SmolLM2-135M's 210 matrices (30 × q, k,
// v, o, gate, up, down) come to ≈ 15–25 s, inside the 2-minute target. Matrices sharing a
// Hessian (q/k/v, gate/up) could share its factorization too; not done yet.

/// Σ xᵀx over calibration inputs of one width `cols` (the input dimension of a linear layer),
/// and the sample count: GPTQ's Hessian `H = 2/n · XᵀX`.
///
/// Rows of `x` passed to `add` are samples (tokens), columns are the `cols` input features.
/// One accumulator serves every matrix that reads the same input: in a Llama block, q/k/v
/// share one (the attention norm's output), gate/up share one (the MLP norm's output), o and
/// down each have their own. It is a value type; `GPTQ.quantize` only reads it.
///
/// Accumulation is in Double (`cblas_dsyrk` on a Double copy of each chunk of rows), not
/// `cblas_ssyrk`: a calibration set has 10⁵–10⁶ tokens, and a float32 running sum of that
/// many products loses the low bits of the small entries (relative error ~ n·2⁻²⁴) just where
/// the Cholesky factor is most sensitive; the copy costs less than the syrk itself.
public struct HessianAccumulator: Sendable {
    /// The input width.
    public let cols: Int
    /// Samples (rows of `x`) added so far.
    public private(set) var samples: Int = 0
    /// Only diag(XᵀX) is kept (`meanSquares`: what Wanda and importance weights read), at a
    /// cost of O(cols) per sample instead of O(cols²); `hessian()` is then unavailable.
    public let diagonalOnly: Bool
    /// Σ xᵀx, `cols × cols` row-major; only the upper triangle (j ≥ i) is maintained. With
    /// `diagonalOnly`, its `cols` diagonal entries (Σ x_j², summed in Double).
    var sum: [Double]

    /// An empty accumulator for inputs of `cols` features.
    public init(cols: Int, diagonalOnly: Bool = false) {
        self.cols = max(cols, 0)
        self.diagonalOnly = diagonalOnly
        sum = [Double](repeating: 0, count: diagonalOnly ? self.cols : self.cols * self.cols)
    }

    /// Σ x_j² of `rows` samples into `out` (`cols` Doubles), in row order.
    static func addSquares(_ x: UnsafePointer<Float>, rows: Int, cols n: Int, into out: UnsafeMutablePointer<Double>) {
        for r in 0..<rows {
            let row = x + r * n
            for j in 0..<n { let v = Double(row[j]); out[j] += v * v }
        }
    }

    /// Rows of `x` converted to Double per syrk call (bounds the temporary to 256·cols doubles).
    static let chunkRows = 256

    /// Adds `rows` samples: `x` is `[rows, cols]` row-major. Non-finite inputs are not
    /// rejected here; `GPTQ.quantize` reports a Hessian that contains them.
    public mutating func add(_ x: UnsafePointer<Float>, rows: Int) {
        guard rows > 0, cols > 0 else { return }
        let n = cols
        if diagonalOnly {
            sum.withUnsafeMutableBufferPointer { Self.addSquares(x, rows: rows, cols: n, into: $0.baseAddress!) }
            samples += rows
            return
        }
        let buf = UnsafeMutablePointer<Double>.allocate(capacity: Self.chunkRows * n)
        defer { buf.deallocate() }
        sum.withUnsafeMutableBufferPointer { s in
            var r0 = 0
            while r0 < rows {
                let k = min(Self.chunkRows, rows - r0)
                for i in 0..<(k * n) { buf[i] = Double(x[r0 * n + i]) }
                // C (upper) += Aᵀ·A with A = the chunk, k × n row-major.
                cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, Int32(n), Int32(k), 1, buf, Int32(n), 1, s.baseAddress!, Int32(n))
                r0 += k
            }
        }
        samples += rows
    }

    /// Adds `rows` samples on `context`'s threads, the way calibration does. The rows are cut
    /// into chunks of `chunkRows`; each chunk's `XᵀX` is one `cblas_ssyrk` (float32 over at
    /// most 256 products per entry, relative error ~2⁻¹⁶ of the largest term), computed in
    /// parallel, `threads` chunks at a time, and the chunks are added into the Double sum in
    /// chunk order, so the result is the same for every thread count. Twice the speed of the
    /// Double path per thread, on every thread.
    public mutating func add(_ x: UnsafePointer<Float>, rows: Int, context: ComputeContext) {
        guard rows > 0, cols > 0 else { return }
        let n = cols
        let chunks = (rows + Self.chunkRows - 1) / Self.chunkRows
        if diagonalOnly {
            // Each chunk's squares in Double on its thread, added in chunk order: the same
            // sums for every thread count.
            let part = UnsafeMutablePointer<Double>.allocate(capacity: chunks * n)
            defer { part.deallocate() }
            part.initialize(repeating: 0, count: chunks * n)
            let pp = SendablePointer(part), xp = SendablePointer(UnsafeMutablePointer(mutating: x))
            context.parallelFor(chunks) { i in
                let r0 = i * Self.chunkRows
                Self.addSquares(xp.p + r0 * n, rows: min(Self.chunkRows, rows - r0), cols: n, into: pp.p + i * n)
            }
            sum.withUnsafeMutableBufferPointer { s in
                for i in 0..<chunks { for j in 0..<n { s[j] += part[i * n + j] } }
            }
            samples += rows
            return
        }
        let wave = max(1, min(context.threads, chunks))
        let tmp = UnsafeMutablePointer<Float>.allocate(capacity: wave * n * n)
        defer { tmp.deallocate() }
        let tp = SendablePointer(tmp), xp = SendablePointer(UnsafeMutablePointer(mutating: x))
        sum.withUnsafeMutableBufferPointer { s in
            var c0 = 0
            while c0 < chunks {
                let k = min(wave, chunks - c0)
                context.parallelFor(k) { i in
                    let r0 = (c0 + i) * Self.chunkRows, m = min(Self.chunkRows, rows - r0)
                    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, Int32(n), Int32(m), 1, xp.p + r0 * n, Int32(n), 0, tp.p + i * n * n, Int32(n))
                }
                for i in 0..<k {
                    let t = tmp + i * n * n
                    for a in 0..<n { for b in a..<n { s[a * n + b] += Double(t[a * n + b]) } }
                }
                c0 += k
            }
        }
        samples += rows
    }

    /// The mean square of each input feature over the samples (`diag(XᵀX)/n`): the
    /// per-column importance of importance-weighted clipping and AWQ's activation statistic.
    public var meanSquares: [Double] {
        guard samples > 0 else { return [Double](repeating: 0, count: cols) }
        if diagonalOnly { return sum.map { $0 / Double(samples) } }
        return (0..<cols).map { sum[$0 * cols + $0] / Double(samples) }
    }

    /// Adds `rows` samples from an array (`x.count` must be `rows · cols`; otherwise nothing is added).
    public mutating func add(_ x: [Float], rows: Int) {
        guard x.count == rows * cols else { return }
        x.withUnsafeBufferPointer { if let b = $0.baseAddress { add(b, rows: rows) } }
    }

    /// Adds another accumulator's samples (e.g. one filled on another thread).
    /// - Throws: `GPTQError` when the widths differ.
    public mutating func merge(_ other: HessianAccumulator) throws {
        guard other.cols == cols, other.diagonalOnly == diagonalOnly else {
            throw GPTQError(tensor: "", kind: .shapeMismatch, reason: "cannot merge a Hessian of \(other.cols) inputs\(other.diagonalOnly ? " (diagonal)" : "") into one of \(cols)\(diagonalOnly ? " (diagonal)" : "")")
        }
        for i in sum.indices { sum[i] += other.sum[i] }
        samples += other.samples
    }

    /// `H = 2/n · XᵀX`, `cols × cols` row-major and symmetric (all zeros before any sample).
    public func hessian() -> [Double] {
        precondition(!diagonalOnly, "a diagonal-only accumulator has no full Hessian")
        let n = cols
        var h = [Double](repeating: 0, count: n * n)
        guard samples > 0 else { return h }
        let f = 2 / Double(samples)
        for i in 0..<n {
            for j in i..<n { let v = f * sum[i * n + j]; h[i * n + j] = v; h[j * n + i] = v }
        }
        return h
    }
}

/// Why GPTQ could not quantize a tensor; `description` names the tensor and what to change.
public struct GPTQError: Error, CustomStringConvertible, Equatable {
    public enum Kind: String, Sendable, Equatable {
        /// The scheme has no integer codes (f32, f16, bf16).
        case notIntegerScheme
        /// H + λI is not (numerically) positive definite: too few or degenerate samples, or damp too small.
        case notPositiveDefinite
        /// The accumulator has no samples.
        case noSamples
        /// Weights, rows/cols and the Hessian's width disagree.
        case shapeMismatch
        /// damp or blockSize out of range.
        case invalidArgument
        /// Weights or the Hessian contain NaN or infinity.
        case nonFinite
    }
    /// The tensor's name as given to `GPTQ.quantize`.
    public let tensor: String
    public let kind: Kind
    public let reason: String
    public init(tensor: String, kind: Kind, reason: String) { self.tensor = tensor; self.kind = kind; self.reason = reason }
    public var description: String { tensor.isEmpty ? "GPTQ: \(reason)" : "GPTQ, tensor '\(tensor)': \(reason)" }
}

/// GPTQ quantization of one weight matrix into an integer scheme's `.lmpk` layout.
public enum GPTQ {
    /// Quantizes `weights` (`[rows, cols]` row-major: `rows` outputs, `cols` inputs) with the
    /// Hessian of its inputs, into `scheme`'s exact stored layout (the bytes
    /// `RoundToNearest.dequantize` decodes; no permutation is stored).
    ///
    /// - Dead inputs (`H_ii = 0`, a feature that was always zero) get `H_ii = 1` and their
    ///   weight column is zeroed before quantization, as GPTQ does (the column then holds the
    ///   code nearest 0: exactly 0 for the symmetric schemes, within half a step for `int4`).
    /// - `damp`: λ = damp · mean(diag H) is added to the diagonal before the Cholesky
    ///   factorizations (`Hinv = upper Cholesky factor of (H + λI)⁻¹`, via LAPACK in Double).
    /// - Columns are processed in lazy blocks of `blockSize` (error propagation inside the
    ///   block, one GEMM for the later columns). A block is cut short where a group would
    ///   otherwise start inside it and end beyond it, so every group's parameters are chosen on
    ///   fully updated weights; this changes rounding only, not the algorithm.
    /// - Group parameters (the scheme's group G along columns; per-channel int8 has one group
    ///   per row): without `actOrder`, chosen by the codec's `chooseParameters` (with `clip`)
    ///   when the loop reaches the group's first column, on the error-updated weights. With
    ///   `actOrder`, columns are processed in descending diag(H) order (ties by index) with
    ///   *static groups*: every group's parameters are chosen up front from the original
    ///   weights in storage order, so the layout is the ordinary one.
    /// - Codes are the codec's round-to-nearest `chooseCodes` of each updated weight under its
    ///   group's parameters; the error propagated is against `codec.value(code:_:)`.
    ///
    /// Deterministic (same inputs, same bytes). Memory: O(cols² + rows·cols). The result's
    /// float16 fields are not range-checked; pass it to `RoundToNearest.checkRepresentable`.
    /// - Throws: `GPTQError` for a float scheme, mismatched shapes, an empty accumulator,
    ///   non-finite inputs, or a Hessian that is not positive definite after dampening.
    public static func quantize(weights: [Float], rows: Int, cols: Int, hessian: HessianAccumulator, scheme: QuantScheme,
                                damp: Double = 0.01, blockSize: Int = 128, actOrder: Bool = false,
                                clip: ClipMethod = .minmax, tensor: String) throws -> QuantizedTensor {
        _ = try validate(weights: weights, rows: rows, cols: cols, inputs: hessian.cols, scheme: scheme, blockSize: blockSize, tensor: tensor)
        let f = try factor(hessian: hessian, damp: damp, actOrder: actOrder, tensor: tensor)
        return try quantize(weights: weights, rows: rows, cols: cols, factorization: f, scheme: scheme, blockSize: blockSize, clip: clip, tensor: tensor)
    }

    /// The Hessian's part of GPTQ, shared by every matrix that reads the same input (q/k/v,
    /// gate/up): dead inputs, the processing order and the inverse Cholesky factor.
    public final class Factorization: @unchecked Sendable {
        public let cols: Int
        public let actOrder: Bool
        public let damp: Double
        let dead: [Bool]
        let perm: [Int]
        /// Upper Cholesky factor of (P·H·Pᵀ + λI)⁻¹, row-major (only j ≥ i used).
        let hinv: UnsafeMutablePointer<Float>
        init(cols: Int, actOrder: Bool, damp: Double, dead: [Bool], perm: [Int], hinv: UnsafeMutablePointer<Float>) {
            self.cols = cols; self.actOrder = actOrder; self.damp = damp; self.dead = dead; self.perm = perm; self.hinv = hinv
        }
        deinit { hinv.deallocate() }
    }

    /// Factors `hessian` for `quantize(weights:…factorization:…)`.
    /// - Throws: `GPTQError` for an empty accumulator, a bad damp, non-finite entries, or a
    ///   Hessian that is not positive definite after dampening (naming `tensor`).
    public static func factor(hessian: HessianAccumulator, damp: Double = 0.01, actOrder: Bool = false, tensor: String) throws -> Factorization {
        func fail(_ kind: GPTQError.Kind, _ reason: String) -> GPTQError { GPTQError(tensor: tensor, kind: kind, reason: reason) }
        guard hessian.samples > 0 else { throw fail(.noSamples, "the Hessian has no calibration samples") }
        guard damp >= 0, damp.isFinite else { throw fail(.invalidArgument, "damp must be a finite number ≥ 0, got \(damp)") }
        let n = hessian.cols
        var H = hessian.hessian()
        if H.contains(where: { !$0.isFinite }) { throw fail(.nonFinite, "the Hessian contains NaN or infinity (non-finite calibration inputs)") }
        // Dead inputs.
        var dead = [Bool](repeating: false, count: n)
        for i in 0..<n where H[i * n + i] == 0 { H[i * n + i] = 1; dead[i] = true }
        // Processing order: storage order, or descending diag(H) (stable, so deterministic).
        let perm: [Int] = actOrder ? (0..<n).sorted { H[$0 * n + $0] > H[$1 * n + $1] || (H[$0 * n + $0] == H[$1 * n + $1] && $0 < $1) } : Array(0..<n)
        let hinv = try inverseFactor(H, n: n, perm: perm, damp: damp, fail: fail)
        return Factorization(cols: n, actOrder: actOrder, damp: damp, dead: dead, perm: perm, hinv: hinv)
    }

    /// `quantize` with a factorization made by `factor` (its damp and act-order apply).
    /// `importance` (`cols` weights in storage order, e.g. the inputs' mean squares): group
    /// parameters by the importance-weighted range search (`weightedParameters`) instead of `clip`.
    /// A compressed N:M scheme (`+2:4`…) stores the kept weights its mask selects from
    /// `weights` (which must be N:M sparse: `Pruner.checkSparse`); GPTQ then leaves the
    /// pruned weights at 0 and compensates the kept ones.
    public static func quantize(weights: [Float], rows: Int, cols: Int, factorization f: Factorization, scheme: QuantScheme,
                                blockSize: Int = 128, clip: ClipMethod = .minmax, importance: [Float]? = nil, tensor: String) throws -> QuantizedTensor {
        try quantize(weights: weights, rows: rows, cols: cols, factorization: f, scheme: scheme, pruning: nil,
                     blockSize: blockSize, clip: clip, importance: importance, tensor: tensor).tensor
    }

    /// How GPTQ quantizes a matrix that is being pruned.
    public enum Pruning: Sendable {
        /// Mask-aware GPTQ: the mask (`[rows, cols]`, `true` = kept; e.g. Wanda's) is given.
        /// Pruned weights are fixed to exactly 0 and kept ones to the grid, in column order,
        /// and both errors are propagated into the columns not yet fixed, so the kept weights
        /// compensate the pruning as well as the rounding (SparseGPT's update with a given mask).
        case fixed([Bool])
        /// SparseGPT's joint mode (Frantar & Alistarh 2023, §3.5): the mask is selected as
        /// `Pruner.sparseGPT` selects it (`w²/[H⁻¹]²_jj` on the error-updated weights; N:M at
        /// each run's first column, unstructured per lazy block, per row), the kept weights
        /// quantized, in the same pass.
        case select(PruneOptions)
    }

    /// GPTQ with pruning in the same pass (`Pruning`): returns the tensor and the final mask.
    ///
    /// Group parameters are chosen at the group's first column, as plain GPTQ does, from
    /// the group's current weights that are not already known to be pruned (a fixed mask's
    /// pruned weights are left out; in the joint N:M mode the runs of the group not reached
    /// yet are still undecided and count). In a compressed scheme (`+N:M`, groups of G kept
    /// values) a group spans `G·m/n` columns. Pruned weights are stored as nothing
    /// (compressed) or as the code of 0 (dense storage, which needs a symmetric scheme);
    /// without `pruning` this is plain GPTQ, byte for byte (a compressed scheme then takes its
    /// mask from `weights`, which must be N:M sparse).
    /// - Throws: `GPTQError` as `quantize`, and `.invalidArgument` for a mask of the wrong
    ///   size, dense storage of pruned weights in a scheme without an exact 0, a fixed mask
    ///   that keeps more than a compressed scheme's `n` of `m`, unstructured selection into a
    ///   compressed scheme, act-order with pruning, or a pattern `Pruner` refuses.
    public static func quantize(weights: [Float], rows: Int, cols: Int, factorization f: Factorization, scheme: QuantScheme,
                                pruning: Pruning?, blockSize: Int = 128, clip: ClipMethod = .minmax, importance: [Float]? = nil,
                                tensor: String) throws -> (tensor: QuantizedTensor, keep: [Bool]?) {
        let codec = try validate(weights: weights, rows: rows, cols: cols, inputs: f.cols, scheme: scheme, blockSize: blockSize, tensor: tensor)
        if let imp = importance, imp.count != cols {
            throw GPTQError(tensor: tensor, kind: .shapeMismatch, reason: "\(imp.count) importance weights for \(cols) columns")
        }
        func fail(_ reason: String) -> GPTQError { GPTQError(tensor: tensor, kind: .invalidArgument, reason: reason) }
        var pruning = pruning
        if pruning == nil, let nm = scheme.codec as? NMCodec {
            // An already N:M-sparse matrix: its nonzeros are the mask.
            try Pruner.checkSparse(weights, rows: rows, cols: cols, scheme: scheme, tensor: tensor)
            var keep = [Bool](repeating: false, count: rows * cols)
            weights.withUnsafeBufferPointer { w in
                keep.withUnsafeMutableBufferPointer { k in
                    for r in 0..<rows { nm.storedColumns(w.baseAddress! + r * cols, cols: cols, prior: nil, into: k.baseAddress! + r * cols) }
                }
            }
            pruning = .fixed(keep)
        }
        if let pruning {
            guard !f.actOrder else { throw fail("pruning runs in storage order; factor the Hessian without act-order") }
            let storage = scheme.sparsity
            switch pruning {
            case let .fixed(keep):
                guard keep.count == rows * cols else { throw fail("a mask of \(keep.count) flags for a [\(rows), \(cols)] weight") }
                if let st = storage {
                    for r in 0..<rows {
                        for c0 in stride(from: 0, to: cols, by: st.m) {
                            var kept = 0
                            for c in c0..<min(cols, c0 + st.m) where keep[r * cols + c] { kept += 1 }
                            if kept > st.n { throw fail("the mask keeps more than \(st.n) of columns \(c0)..<\(c0 + st.m) in row \(r); \(scheme.name) stores \(st)") }
                            if kept < st.n && codec.zeroCode == nil {
                                throw fail("the mask keeps fewer than \(st.n) of columns \(c0)..<\(c0 + st.m) in row \(r), and \(scheme.dense.name) has no exact 0 to store the rest as: keep \(st) exactly, or choose a symmetric scheme (int8, int4s)")
                            }
                        }
                    }
                }
            case let .select(o):
                try o.validate()
                try Pruner.checkShape(cols: cols, options: o, tensor: tensor)
                if let st = storage {
                    guard let p = o.pattern, st.m % p.m == 0, p.n * (st.m / p.m) <= st.n else {
                        throw fail("pruning \(o.pattern.map { "to \($0)" } ?? "unstructured") does not guarantee the \(st) sparsity \(scheme.name) stores")
                    }
                    if p.n * (st.m / p.m) < st.n && codec.zeroCode == nil {
                        throw fail("pruning to \(p) stored as \(scheme.name) stores some pruned weights as values, and \(scheme.dense.name) has no exact 0: store it as +\(p) or in a symmetric scheme (int8, int4s)")
                    }
                }
                // Each run is selected on weights the lazy blocks have fully updated: blocks are cut
                // at group starts, so the pattern's M must divide the group (in columns).
                if let p = o.pattern {
                    let g = Self.groupColumns(scheme, cols: cols)
                    guard g >= cols || g % p.m == 0 else {
                        throw fail("--pattern \(p) with \(scheme.name): GPTQ's groups span \(g) columns, not a multiple of \(p.m); choose a pattern whose M divides \(g)")
                    }
                }
            }
            // Dense storage keeps pruned weights as the code of 0 (compressed storage checks
            // the runs it tops up when packing).
            let prunes: Bool
            switch pruning {
            case let .fixed(k): prunes = k.contains(false)
            case let .select(o): prunes = o.prunedPerRow(cols: cols) > 0
            }
            if codec.zeroCode == nil && storage == nil && prunes {
                throw fail("\(scheme.name) has no exact 0 (asymmetric grid): store pruned weights compressed (+2:4…) or in a symmetric scheme (int8, int4s)")
            }
        }
        return try run(codec, weights: weights, rows: rows, cols: cols, factorization: f, scheme: scheme, blockSize: blockSize, clip: clip,
                       importance: importance, pruning: pruning, tensor: tensor)
    }

    /// The checks both entry points make, in this order; returns the integer codec of the
    /// scheme's values (a compressed scheme's value scheme).
    static func validate(weights: [Float], rows: Int, cols: Int, inputs: Int, scheme: QuantScheme, blockSize: Int,
                         tensor: String) throws -> any IntegerSchemeCodec {
        func fail(_ kind: GPTQError.Kind, _ reason: String) -> GPTQError { GPTQError(tensor: tensor, kind: kind, reason: reason) }
        guard let codec = scheme.dense.codec as? any IntegerSchemeCodec else {
            throw fail(.notIntegerScheme, "GPTQ needs an integer scheme (int8, int8-gG, int4-gG, int4s-gG, int3-gG, int2-gG), not \(scheme.name)")
        }
        guard rows > 0, cols > 0, weights.count == rows * cols else {
            throw fail(.shapeMismatch, "\(weights.count) weights do not form a [\(rows), \(cols)] matrix")
        }
        guard inputs == cols else { throw fail(.shapeMismatch, "the Hessian is for \(inputs) inputs, the weight has \(cols)") }
        guard blockSize >= 1 else { throw fail(.invalidArgument, "blockSize must be ≥ 1, got \(blockSize)") }
        if let i = weights.firstIndex(where: { !$0.isFinite }) {
            throw fail(.nonFinite, "weight [\(i / cols), \(i % cols)] is \(weights[i])")
        }
        if let st = scheme.sparsity, cols % st.m != 0 {
            throw fail(.shapeMismatch, "\(scheme.name) needs a column count divisible by \(st.m), got \(cols)")
        }
        return codec
    }

    /// The columns one group of `scheme` spans (a compressed scheme's groups count kept values).
    public static func groupColumns(_ scheme: QuantScheme, cols: Int) -> Int {
        let v = scheme.dense, st = scheme.sparsity
        let kCols = st.map { cols / $0.m * $0.n } ?? cols
        let Gv = v.groupSize == 0 ? kCols : v.groupSize
        return st.map { Gv * $0.m / $0.n } ?? Gv
    }

    /// The algorithm, with the codec's type opened.
    static func run<C: IntegerSchemeCodec>(_ codec: C, weights: [Float], rows: Int, cols n: Int, factorization f: Factorization,
                                          scheme: QuantScheme, blockSize: Int, clip: ClipMethod, importance: [Float]? = nil,
                                          pruning: Pruning? = nil, tensor: String) throws -> (tensor: QuantizedTensor, keep: [Bool]?) {
        // A compressed scheme stores `kCols` kept values per row in its value scheme, whose
        // groups of Gv values span G = Gv·m/n columns (every aligned m columns keep n).
        let valueScheme = scheme.dense, storage = scheme.sparsity
        let kCols = storage.map { n / $0.m * $0.n } ?? n
        let G = groupColumns(scheme, cols: n)
        let ng = valueScheme.groups(cols: kCols)
        let dead = f.dead, perm = f.perm, actOrder = f.actOrder

        // The mask (`true` = kept), when pruning; a selected one is filled as the loop goes.
        var keep: [Bool] = []
        var select: PruneOptions? = nil
        switch pruning {
        case let .fixed(k)?: keep = k
        case let .select(o)?: keep = [Bool](repeating: true, count: rows * n); select = o
        case nil: break
        }
        let masked = pruning != nil

        // Wt: the weights transposed and permuted, position i (column perm[i]) is row i of
        // `rows` floats, so a column is contiguous and the updates are BLAS calls.
        let Wt = UnsafeMutablePointer<Float>.allocate(capacity: n * rows)
        defer { Wt.deallocate() }
        weights.withUnsafeBufferPointer { w in
            for i in 0..<n {
                let c = perm[i], dst = Wt + i * rows
                if dead[c] { dst.initialize(repeating: 0, count: rows) } else { for r in 0..<rows { dst[r] = w[r * n + c] } }
            }
        }

        var params = [GroupParameters](repeating: GroupParameters(scale: 0), count: rows * ng)
        let tmp = UnsafeMutablePointer<Float>.allocate(capacity: rows * G)
        defer { tmp.deallocate() }
        let tmpImp = UnsafeMutablePointer<Float>.allocate(capacity: masked && importance != nil ? G : 1)
        defer { tmpImp.deallocate() }
        /// Parameters of group g for every row, from `source(k, r)`: row r's k-th value of the group.
        func chooseGroup(_ g: Int, _ source: (Int, Int) -> Float) {
            let lo = g * G, count = min(G, n - lo)
            if masked {
                // Per row, the weights not known to be pruned (at least one value).
                let scratch = UnsafeMutablePointer<Int32>.allocate(capacity: count)
                defer { scratch.deallocate() }
                for r in 0..<rows {
                    let t = tmp + r * count
                    var k = 0
                    for j in 0..<count where keep[r * n + lo + j] {
                        t[k] = source(lo + j, r)
                        if let importance { tmpImp[k] = importance[lo + j] }
                        k += 1
                    }
                    if k == 0 { t[0] = 0; tmpImp[0] = 1; k = 1 }
                    params[r * ng + g] = importance != nil
                        ? codec.weightedParameters(t, importance: tmpImp, count: k, scheme: valueScheme, codes: scratch)
                        : codec.chooseParameters(t, count: k, clip: clip, scheme: valueScheme)
                }
                return
            }
            for k in 0..<count { for r in 0..<rows { tmp[r * count + k] = source(lo + k, r) } }
            if let importance {
                importance.withUnsafeBufferPointer { w in
                    let scratch = UnsafeMutablePointer<Int32>.allocate(capacity: count)
                    defer { scratch.deallocate() }
                    for r in 0..<rows {
                        params[r * ng + g] = codec.weightedParameters(tmp + r * count, importance: w.baseAddress! + lo, count: count, scheme: scheme, codes: scratch)
                    }
                }
            } else {
                for r in 0..<rows { params[r * ng + g] = codec.chooseParameters(tmp + r * count, count: count, clip: clip, scheme: scheme) }
            }
        }
        if actOrder {
            // Static groups: original (dead-zeroed) weights, storage order.
            weights.withUnsafeBufferPointer { w in
                for g in 0..<ng { chooseGroup(g) { c, r in dead[c] ? 0 : w[r * n + c] } }
            }
        }

        let Hinv = f.hinv
        /// SparseGPT's selection score of column position i, row r.
        func score(_ i: Int, _ r: Int) -> Float { let w = Wt[i * rows + r], d = Hinv[i * n + i]; return w * w / (d * d) }
        /// Prunes, per row, the `count` lowest scores among columns `range` (ties: lower column).
        func selectLowest(_ range: Range<Int>, _ count: Int) {
            guard count > 0 else { return }
            for r in 0..<rows {
                let order = range.sorted { a, b in let sa = score(a, r), sb = score(b, r); return sa < sb || (sa == sb && a < b) }
                for c in order.prefix(count) { keep[r * n + c] = false }
            }
        }

        let codes = UnsafeMutablePointer<Int32>.allocate(capacity: rows * n)
        defer { codes.deallocate() }
        var B = min(blockSize, n)
        if let p = select?.pattern { B = max(p.m, B - B % p.m) }
        let err = UnsafeMutablePointer<Float>.allocate(capacity: B * rows)
        defer { err.deallocate() }
        let zero = codec.zeroCode ?? codec.paddingCode

        var i1 = 0
        while i1 < n {
            var i2 = min(i1 + B, n)
            if !actOrder && G < n {
                // Cut the block where a group would start inside it and end beyond it.
                var gs = (i1 / G + 1) * G
                while gs < i2 { if min(gs + G, n) > i2 { i2 = gs; break }; gs += G }
            }
            if let s = select, s.pattern == nil, let sp = s.sparsity {
                // Unstructured: each row's share of this block, ⌊s·i2⌋ − ⌊s·i1⌋.
                selectLowest(i1..<i2, Int((Double(i2) * sp).rounded(.down)) - Int((Double(i1) * sp).rounded(.down)))
            }
            for i in i1..<i2 {
                let c = perm[i], g = c / G
                if let p = select?.pattern, i % p.m == 0 { selectLowest(i..<min(n, i + p.m), p.m - p.n) }
                if !actOrder && c % G == 0 {
                    chooseGroup(g) { cc, r in Wt[cc * rows + r] }  // without act-order perm[i] == i
                }
                let d = Hinv[i * n + i]
                let w = Wt + i * rows, e = err + (i - i1) * rows
                for r in 0..<rows {
                    if masked && !keep[r * n + c] {
                        codes[r * n + c] = zero
                        e[r] = w[r] / d
                        w[r] = 0
                        continue
                    }
                    let p = params[r * ng + g]
                    var q: Int32 = 0
                    codec.chooseCodes(w + r, count: 1, parameters: p, into: &q)
                    codes[r * n + c] = q
                    e[r] = (w[r] - codec.value(code: q, p)) / d
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

        // Pack every row in the scheme's layout.
        let layout = scheme.sections(rows: rows, cols: n)
        let raws = layout.map { UnsafeMutableRawPointer.allocate(byteCount: max($0.bytes, 1), alignment: 64) }
        defer { raws.forEach { $0.deallocate() } }
        for (p, l) in zip(raws, layout) { p.initializeMemory(as: UInt8.self, repeating: 0, count: l.bytes) }
        if let nm = scheme.codec as? NMCodec {
            // The stored mask: the kept columns, topped up (a sparser mask) with pruned ones,
            // which are then stored as the code of 0.
            let stored = UnsafeMutablePointer<Bool>.allocate(capacity: n)
            defer { stored.deallocate() }
            let values = UnsafeMutablePointer<Float>.allocate(capacity: n)
            defer { values.deallocate() }
            let kc = UnsafeMutablePointer<Int32>.allocate(capacity: max(kCols, 1))
            defer { kc.deallocate() }
            let valueOut = Array(raws.dropLast())
            for r in 0..<rows {
                for c in 0..<n { values[c] = keep[r * n + c] ? codec.value(code: codes[r * n + c], params[r * ng + c / G]) : 0 }
                keep.withUnsafeBufferPointer { nm.storedColumns(values, cols: n, prior: $0.baseAddress! + r * n, into: stored) }
                var j = 0
                for c in 0..<n where stored[c] {
                    if !keep[r * n + c] {
                        guard let z = codec.zeroCode else {
                            throw GPTQError(tensor: tensor, kind: .invalidArgument, reason: "row \(r) keeps fewer than \(storage!.n) of an aligned run of \(storage!.m), and \(valueScheme.name) has no exact 0 to store the rest as: keep \(storage!) exactly, or choose a symmetric scheme (int8, int4s)")
                        }
                        kc[j] = z
                    } else {
                        kc[j] = codes[r * n + c]
                    }
                    j += 1
                }
                codec.pack(codes: kc, parameters: Array(params[(r * ng)..<((r + 1) * ng)]), row: r, cols: kCols, scheme: valueScheme, out: valueOut)
                nm.writeMaskRow(stored, row: r, cols: n, into: raws[raws.count - 1])
            }
        } else {
            for r in 0..<rows {
                codec.pack(codes: codes + r * n, parameters: Array(params[(r * ng)..<((r + 1) * ng)]), row: r, cols: n, scheme: scheme, out: raws)
            }
        }
        let bufs = layout.indices.map { Array(UnsafeRawBufferPointer(start: raws[$0], count: layout[$0].bytes)) }
        return (QuantizedTensor(scheme: scheme, rows: rows, cols: n, sections: zip(layout, bufs).map { ($0.role, $1) }), masked ? keep : nil)
    }

    /// GPTQ's `cholesky(cholesky_inverse(cholesky(H + λI)), upper=True)` of the permuted
    /// Hessian, in Double with LAPACK (`dpotrf`, `dpotri`, `dpotrf`), returned as row-major
    /// Float (upper triangle; the caller deallocates).
    ///
    /// LAPACK only stops at a pivot ≤ 0; a rank-deficient H usually leaves rounding-level
    /// pivots instead, whose inverse is garbage. So a pivot² below 16·n·ε·max(diag) also
    /// counts as not positive definite (with the default damp every pivot² is ≥ λ, far above).
    static func inverseFactor(_ H: [Double], n: Int, perm: [Int], damp: Double, fail: (GPTQError.Kind, String) -> GPTQError) throws -> UnsafeMutablePointer<Float> {
        // a: column-major n×n (symmetric, so the layout of P·H·Pᵀ is the same either way).
        var a = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in 0..<n { a[j * n + i] = H[perm[i] * n + perm[j]] } }
        var meanDiag = 0.0, maxDiag = 0.0
        for i in 0..<n { meanDiag += a[i * n + i]; maxDiag = max(maxDiag, a[i * n + i]) }
        meanDiag /= Double(n)
        let lambda = damp * meanDiag
        for i in 0..<n { a[i * n + i] += lambda }
        maxDiag += lambda
        let tol = 16 * Double(n) * Double.ulpOfOne * maxDiag
        var N = Int32(n), LDA = Int32(n), info: Int32 = 0
        func notPD(_ at: Int) -> GPTQError {
            fail(.notPositiveDefinite, "the Hessian (\(n)×\(n)) is not positive definite after dampening with damp \(damp) (λ = \(lambda), pivot \(at) of \(n)); use more or more varied calibration samples, or a larger --damp (e.g. \(damp > 0 ? min(1, damp * 10) : 0.01))")
        }
        var uplo = CChar(UInt8(ascii: "L"))
        dpotrf_(&uplo, &N, &a, &LDA, &info, 1)
        if info > 0 { throw notPD(Int(info)) }
        if info < 0 { throw fail(.invalidArgument, "dpotrf argument \(-info) is invalid") }
        for i in 0..<n where a[i * n + i] * a[i * n + i] <= tol { throw notPD(i + 1) }
        dpotri_(&uplo, &N, &a, &LDA, &info, 1)
        if info != 0 { throw notPD(Int(max(info, 0))) }
        // Lower triangle (i ≥ j: a[j·n + i]) holds H⁻¹; mirror it into the upper one.
        for j in 0..<n { for i in (j + 1)..<n { a[i * n + j] = a[j * n + i] } }
        uplo = CChar(UInt8(ascii: "U"))
        dpotrf_(&uplo, &N, &a, &LDA, &info, 1)
        if info != 0 { throw notPD(Int(max(info, 0))) }
        let out = UnsafeMutablePointer<Float>.allocate(capacity: n * n)
        for i in 0..<n {
            for j in 0..<n { out[i * n + j] = j >= i ? Float(a[j * n + i]) : 0 }  // U(i, j) = a[i + j·n]
        }
        return out
    }
}
