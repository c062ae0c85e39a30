import COpenBLAS
import Foundation
import LMCore
import LMFormats

/// Errors from building a runnable model.
public struct RuntimeError: Error, CustomStringConvertible {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// One decoder layer's weights.
public struct LlamaLayer: @unchecked Sendable {
    public let attnNorm: [Float]
    public let q: LinearWeight, k: LinearWeight, v: LinearWeight, o: LinearWeight
    public let qBias: [Float]?, kBias: [Float]?, vBias: [Float]?
    public let mlpNorm: [Float]
    public let gate: LinearWeight, up: LinearWeight, down: LinearWeight
}

/// A Llama-family decoder ready to run: embeddings, RMSNorm, rotary embeddings
/// (rotate-half), grouped-query attention through a `KVCache`, SwiGLU MLP, tied or
/// untied output head. Batched prefill uses OpenBLAS `sgemm`.
public final class LlamaModel: @unchecked Sendable {
    public let config: ModelConfig
    public let layers: [LlamaLayer]
    /// `[vocab, hidden]`, also the output head when tied.
    public let embedding: LinearWeight
    public let lmHead: LinearWeight
    public let finalNorm: [Float]
    let rope: RotaryTable
    /// Keeps the source mappings alive.
    let sources: [AnyObject]

    public init(config: ModelConfig, layers: [LlamaLayer], embedding: LinearWeight, lmHead: LinearWeight?, finalNorm: [Float], sources: [AnyObject] = []) {
        self.config = config; self.layers = layers; self.embedding = embedding
        self.lmHead = lmHead ?? embedding; self.finalNorm = finalNorm; self.sources = sources
        rope = RotaryTable(headDim: config.headDim, theta: config.ropeTheta)
    }

    /// Loads an HF folder (config.json + safetensors). F32 tensors are used in
    /// place from the mapping; F16/BF16 are widened to F32 once at load.
    /// - Throws: missing/mis-shaped tensors, unsupported dtypes, bad config — naming the tensor.
    public static func load(folder: String) throws -> LlamaModel {
        let config = try ModelConfig.load(path: folder)
        let store = try TensorStore(path: folder)
        let expected = Dictionary(config.expectedTensors(), uniquingKeysWith: { a, _ in a })
        func tensor(_ name: String) throws -> TensorView {
            let t = try store.require(name)
            if let e = expected[name], e != t.shape { throw ModelError.shapeMismatch(tensor: name, expected: e, found: t.shape) }
            guard t.dtype == .f32 || t.dtype == .f16 || t.dtype == .bf16 else {
                throw ModelError.unsupportedDType(tensor: name, dtype: t.dtype.rawValue, expected: "F32, F16 or BF16")
            }
            return t
        }
        func matrix(_ name: String) throws -> LinearWeight {
            let t = try tensor(name)
            guard t.shape.count == 2 else { throw ModelError.shapeMismatch(tensor: name, expected: expected[name] ?? [], found: t.shape) }
            if t.dtype == .f32, let base = t.bytes.baseAddress, Int(bitPattern: base) % 4 == 0 {
                return DenseLinear(rows: t.shape[0], cols: t.shape[1], borrowing: base.assumingMemoryBound(to: Float.self), owner: t.owner)
            }
            return DenseLinear(rows: t.shape[0], cols: t.shape[1], values: try t.toFloat())
        }
        func vector(_ name: String) throws -> [Float] { try tensor(name).toFloat() }
        return try assemble(config: config, has: { store[$0] != nil }, matrix: matrix, vector: vector, source: store)
    }

    /// Loads an HF folder or an `.lmpk` file (by extension).
    public static func load(path: String) throws -> LlamaModel {
        path.hasSuffix(".lmpk") ? try load(lmpk: LMPKFile(path: path)) : try load(folder: path)
    }

    /// Builds the model over an `.lmpk` mapping: matrices are used in place in their
    /// stored scheme (no copies, no transforms); vectors (norms, biases) are widened
    /// to float (a few KiB).
    public static func load(lmpk f: LMPKFile) throws -> LlamaModel {
        let c = f.config
        func t(_ n: String) throws -> LMPKTensor {
            guard let t = f[n] else { throw LMPKError(file: f.path, reason: "tensor '\(n)' is missing") }
            return t
        }
        func matrix(_ n: String) throws -> LinearWeight {
            let x = try t(n)
            guard x.shape.count == 2 else { throw LMPKError(file: f.path, reason: "tensor '\(n)' must be a matrix") }
            return PackedLinear.make(x, owner: f)
        }
        func vector(_ n: String) throws -> [Float] {
            let x = try t(n)
            guard !x.scheme.isQuantized else { throw LMPKError(file: f.path, reason: "tensor '\(n)' is a vector and must be f32/f16/bf16, not \(x.scheme.name)") }
            let dt: DType = x.scheme.kind == .f32 ? .f32 : x.scheme.kind == .f16 ? .f16 : .bf16
            var v = [Float](repeating: 0, count: x.cols)
            v.withUnsafeMutableBufferPointer { convertToFloat(x.sections[0], dtype: dt, into: $0) }
            return v
        }
        return try assemble(config: c, has: { f[$0] != nil }, matrix: matrix, vector: vector, source: f)
    }

    /// Chooses integer-activation (default) or float-activation decode kernels for
    /// every packed matrix of this model.
    public func setIntegerDecode(_ on: Bool) {
        var all: [LinearWeight] = [embedding, lmHead]
        for l in layers { all += [l.q, l.k, l.v, l.o, l.gate, l.up, l.down] }
        for w in all { (w as? PackedLinear)?.integerDecode = on }
    }

    /// Bytes of all matrices (embedding counted once when tied).
    public var weightBytes: Int {
        var n = embedding.storageBytes + (lmHead === embedding ? 0 : lmHead.storageBytes)
        for l in layers { n += [l.q, l.k, l.v, l.o, l.gate, l.up, l.down].reduce(0) { $0 + $1.storageBytes } }
        return n
    }

    /// Builds the model from per-tensor loaders (shared by every input format).
    static func assemble(config c: ModelConfig, has: (String) -> Bool, matrix: (String) throws -> LinearWeight,
                         vector: (String) throws -> [Float], source: AnyObject) throws -> LlamaModel {
        var layers: [LlamaLayer] = []
        for l in 0..<c.numLayers {
            let p = "model.layers.\(l)."
            let bias = has(p + "self_attn.q_proj.bias")
            layers.append(LlamaLayer(
                attnNorm: try vector(p + "input_layernorm.weight"),
                q: try matrix(p + "self_attn.q_proj.weight"), k: try matrix(p + "self_attn.k_proj.weight"),
                v: try matrix(p + "self_attn.v_proj.weight"), o: try matrix(p + "self_attn.o_proj.weight"),
                qBias: bias ? try vector(p + "self_attn.q_proj.bias") : nil,
                kBias: bias ? try vector(p + "self_attn.k_proj.bias") : nil,
                vBias: bias ? try vector(p + "self_attn.v_proj.bias") : nil,
                mlpNorm: try vector(p + "post_attention_layernorm.weight"),
                gate: try matrix(p + "mlp.gate_proj.weight"), up: try matrix(p + "mlp.up_proj.weight"),
                down: try matrix(p + "mlp.down_proj.weight")))
        }
        return LlamaModel(config: c, layers: layers, embedding: try matrix("model.embed_tokens.weight"),
                          lmHead: c.tieWordEmbeddings ? nil : try matrix("lm_head.weight"), finalNorm: try vector("model.norm.weight"), sources: [source])
    }

    /// A float KV cache sized for `capacity` positions.
    public func makeCache(capacity: Int) -> KVCache {
        FloatKVCache(layers: config.numLayers, kvHeads: config.numKVHeads, headDim: config.headDim, capacity: capacity)
    }

    /// Which logits a forward call returns.
    public enum Logits { case all, last, none }

    /// Runs `tokens` at positions `cache.count ..< cache.count+tokens.count` on
    /// `context`, stores their K/V in `cache` and advances it. Returns `[T, vocab]`
    /// (`.all`), `[vocab]` (`.last`) or nothing.
    /// - Throws: `RuntimeError` for an empty batch, a token id outside the vocabulary,
    ///   or positions beyond the cache's capacity (checked in every build).
    public func forward(_ tokens: [Int], cache: KVCache, logits: Logits = .all, context: ComputeContext) throws -> [Float] {
        let T = tokens.count
        guard T > 0 else { throw RuntimeError("forward: no tokens") }
        guard cache.count + T <= cache.capacity else {
            throw RuntimeError("context overflow: \(cache.count) cached + \(T) new positions > the cache's capacity \(cache.capacity)")
        }
        for t in tokens where t < 0 || t >= config.vocabSize {
            throw RuntimeError("token id \(t) is outside the vocabulary (0..<\(config.vocabSize))")
        }
        let c = config
        let D = c.hiddenSize, H = c.numHeads, KVH = c.numKVHeads, hd = c.headDim, F = c.intermediateSize
        let qDim = H * hd, kvDim = KVH * hd
        let p0 = cache.count, S = p0 + T
        let rope = self.rope.upTo(S)
        let threads = context.threads
        let ws = context.workspace
        ws.lock.lock()
        defer { ws.lock.unlock() }
        let x = ws.buffer(0, T * D), xn = ws.buffer(1, T * max(D, qDim)), q = ws.buffer(2, T * qDim)
        let k = ws.buffer(3, T * kvDim), v = ws.buffer(4, T * kvDim), att = ws.buffer(5, T * qDim)
        let g = ws.buffer(6, T * F), u = ws.buffer(7, T * F)
        let scores = ws.buffer(8, threads * min(T, Self.queryBlock) * S)
        let kvScratch = ws.buffer(9, threads * 2 * S * hd)
        for (t, id) in tokens.enumerated() { embedding.row(id, into: x + t * D) }
        let scale = 1 / Float(hd).squareRoot()
        let xp = SendablePointer(x), xnp = SendablePointer(xn), qp = SendablePointer(q), kp = SendablePointer(k)
        let tokenSlices = ComputeContext.ranges(T, parts: T >= 8 ? threads : 1)
        for (li, L) in layers.enumerated() {
            context.parallelFor(tokenSlices.count) { i in
                for t in tokenSlices[i] { Ops.rmsNorm(xp.p + t * D, L.attnNorm, xnp.p + t * D, D, eps: c.rmsNormEps) }
            }
            L.q.apply(xn, tokens: T, out: q, ldOut: qDim, context: context)
            L.k.apply(xn, tokens: T, out: k, ldOut: kvDim, context: context)
            L.v.apply(xn, tokens: T, out: v, ldOut: kvDim, context: context)
            if let qb = L.qBias, let kb = L.kBias, let vb = L.vBias {
                for t in 0..<T { Ops.add(q + t * qDim, qb, qDim); Ops.add(k + t * kvDim, kb, kvDim); Ops.add(v + t * kvDim, vb, kvDim) }
            }
            context.parallelFor(tokenSlices.count) { i in
                for t in tokenSlices[i] {
                    rope.apply(qp.p + t * qDim, heads: H, pos: p0 + t)
                    rope.apply(kp.p + t * kvDim, heads: KVH, pos: p0 + t)
                }
            }
            try cache.store(layer: li, keys: k, values: v, tokens: T)
            attention(layer: li, q: q, out: att, T: T, p0: p0, cache: cache, scores: scores, kvScratch: kvScratch, scale: scale, context: context)
            L.o.apply(att, tokens: T, out: xn, ldOut: D, context: context)
            Ops.add(x, xn, T * D)
            context.parallelFor(tokenSlices.count) { i in
                for t in tokenSlices[i] { Ops.rmsNorm(xp.p + t * D, L.mlpNorm, xnp.p + t * D, D, eps: c.rmsNormEps) }
            }
            L.gate.apply(xn, tokens: T, out: g, ldOut: F, context: context)
            L.up.apply(xn, tokens: T, out: u, ldOut: F, context: context)
            let gp = SendablePointer(g), up = SendablePointer(u)
            context.parallelFor(tokenSlices.count) { i in
                let r = tokenSlices[i]
                Ops.siluMul(gp.p + r.lowerBound * F, up.p + r.lowerBound * F, r.count * F)
            }
            L.down.apply(g, tokens: T, out: xn, ldOut: D, context: context)
            Ops.add(x, xn, T * D)
        }
        cache.advance(by: T)
        switch logits {
        case .none: return []
        case .last:
            Ops.rmsNorm(x + (T - 1) * D, finalNorm, xn, D, eps: c.rmsNormEps)
            var out = [Float](repeating: 0, count: c.vocabSize)
            out.withUnsafeMutableBufferPointer { lmHead.apply(xn, tokens: 1, out: $0.baseAddress!, ldOut: c.vocabSize, context: context) }
            return out
        case .all:
            for t in 0..<T { Ops.rmsNorm(x + t * D, finalNorm, xn + t * D, D, eps: c.rmsNormEps) }
            var out = [Float](repeating: 0, count: T * c.vocabSize)
            out.withUnsafeMutableBufferPointer { lmHead.apply(xn, tokens: T, out: $0.baseAddress!, ldOut: c.vocabSize, context: context) }
            return out
        }
    }

    /// Query rows per attention block: keys beyond the block's last position are
    /// skipped (causal), which halves prefill attention work.
    static let queryBlock = 64

    /// Causal grouped-query attention for `T` queries at positions `p0..<p0+T`,
    /// reading K/V through `cache`. Heads run in parallel; within a head, query
    /// blocks of `queryBlock` rows use `sgemm` for QKᵀ and PV.
    func attention(layer li: Int, q: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, T: Int, p0: Int,
                   cache: KVCache, scores: UnsafeMutablePointer<Float>, kvScratch: UnsafeMutablePointer<Float>, scale: Float, context: ComputeContext) {
        let c = config
        let H = c.numHeads, hd = c.headDim, qDim = H * hd, group = H / c.numKVHeads
        let S = p0 + T
        let B = min(T, Self.queryBlock)
        let workers = min(context.threads, H)
        let sp = SendablePointer(scores), ks = SendablePointer(kvScratch), ap = SendablePointer(out), qp = SendablePointer(q)
        let cacheBox = UncheckedBox(cache)
        context.parallelFor(workers) { w in
            let sc = sp.p + w * B * S
            let scratchK = ks.p + w * 2 * S * hd, scratchV = scratchK + S * hd
            var h = w
            while h < H {
                let kvh = h / group
                let K = cacheBox.value.keys(layer: li, head: kvh, upTo: S, scratch: scratchK)
                let V = cacheBox.value.values(layer: li, head: kvh, upTo: S, scratch: scratchV)
                if T <= 3 {
                    // Decode: dot products and a weighted sum, no sgemm (its packing costs
                    // more than the arithmetic for one query row).
                    for t in 0..<T {
                        let qv = qp.p + t * qDim + h * hd
                        let valid = p0 + t + 1
                        for j in 0..<valid { sc[j] = Ops.dot(qv, K + j * hd, hd) * scale }
                        Ops.softmax(sc, valid)
                        let o = ap.p + t * qDim + h * hd
                        o.update(repeating: 0, count: hd)
                        for j in 0..<valid { Ops.axpy(sc[j], V + j * hd, o, hd) }
                    }
                } else {
                    var t0 = 0
                    while t0 < T {
                        let rows = min(B, T - t0)
                        let keys = p0 + t0 + rows // causal: later keys are masked for every row of this block
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(keys), Int32(hd),
                                    scale, qp.p + t0 * qDim + h * hd, Int32(qDim), K, Int32(hd), 0, sc, Int32(keys))
                        for r in 0..<rows {
                            let row = sc + r * keys
                            let valid = p0 + t0 + r + 1
                            Ops.softmax(row, valid)
                            if valid < keys { (row + valid).update(repeating: 0, count: keys - valid) }
                        }
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(hd), Int32(keys),
                                    1, sc, Int32(keys), V, Int32(hd), 0, ap.p + t0 * qDim + h * hd, Int32(qDim))
                        t0 += rows
                    }
                }
                h += workers
            }
        }
    }
}

/// Grow-only scratch buffers, one per slot.
final class Workspace: @unchecked Sendable {
    let lock = NSLock()
    private var buffers: [UnsafeMutablePointer<Float>?] = Array(repeating: nil, count: 16)
    private var sizes = [Int](repeating: 0, count: 16)

    func buffer(_ slot: Int, _ count: Int) -> UnsafeMutablePointer<Float> {
        if sizes[slot] < count {
            buffers[slot]?.deallocate()
            let n = max(count, sizes[slot] * 2)
            buffers[slot] = .allocate(capacity: n)
            sizes[slot] = n
        }
        return buffers[slot]!
    }

    deinit { for b in buffers { b?.deallocate() } }
}
