import COpenBLAS
import Foundation
import LMCore
import LMFormats


/// One decoder layer's weights.
public struct LlamaLayer: @unchecked Sendable {
    public let attnNorm: [Float]
    public let q: LinearWeight, k: LinearWeight, v: LinearWeight, o: LinearWeight
    public let qBias: [Float]?, kBias: [Float]?, vBias: [Float]?
    public let mlpNorm: [Float]
    public let gate: LinearWeight, up: LinearWeight, down: LinearWeight

    public init(attnNorm: [Float], q: LinearWeight, k: LinearWeight, v: LinearWeight, o: LinearWeight,
                qBias: [Float]? = nil, kBias: [Float]? = nil, vBias: [Float]? = nil,
                mlpNorm: [Float], gate: LinearWeight, up: LinearWeight, down: LinearWeight) {
        self.attnNorm = attnNorm; self.q = q; self.k = k; self.v = v; self.o = o
        self.qBias = qBias; self.kBias = kBias; self.vBias = vBias
        self.mlpNorm = mlpNorm; self.gate = gate; self.up = up; self.down = down
    }
}

/// A Llama-family decoder ready to run: embeddings, RMSNorm, rotary embeddings
/// (rotate-half), grouped-query attention through a `KVCache`, SwiGLU MLP, tied or
/// untied output head. Batched prefill uses OpenBLAS `sgemm`.
public final class LlamaModel: CausalLM, @unchecked Sendable {
    public let config: ModelConfig
    public let layers: [LlamaLayer]
    /// `[vocab, hidden]`, also the output head when tied.
    public let embedding: LinearWeight
    public let lmHead: LinearWeight
    public let finalNorm: [Float]
    /// Token ids whose embedding rows this model holds: all of them, or a tensor-parallel
    /// rank's vocabulary range (the other rows are zero here and summed in by `.embed`).
    public let embeddingRows: Range<Int>
    /// The head is a row range of the embedding's memory (a tied head of a rank whose
    /// embedding is replicated): its bytes are not counted twice.
    let headViewsEmbedding: Bool
    let rope: RotaryTable
    /// Keeps the source mappings alive.
    let sources: [AnyObject]

    public convenience init(config: ModelConfig, layers: [LlamaLayer], embedding: LinearWeight, lmHead: LinearWeight?, finalNorm: [Float], sources: [AnyObject] = []) {
        self.init(config: config, layers: layers, embedding: embedding, embeddingRows: 0..<config.vocabSize, lmHead: lmHead,
                  headViewsEmbedding: false, finalNorm: finalNorm, sources: sources)
    }

    init(config: ModelConfig, layers: [LlamaLayer], embedding: LinearWeight, embeddingRows: Range<Int>, lmHead: LinearWeight?,
         headViewsEmbedding: Bool, finalNorm: [Float], sources: [AnyObject]) {
        self.config = config; self.layers = layers; self.embedding = embedding; self.embeddingRows = embeddingRows
        self.lmHead = lmHead ?? embedding; self.headViewsEmbedding = headViewsEmbedding; self.finalNorm = finalNorm; self.sources = sources
        rope = RotaryTable(headDim: config.headDim, theta: config.ropeTheta)
    }

    /// Logits per token: the vocabulary, or a tensor-parallel rank's rows of it.
    public var headRows: Int { lmHead.rows }

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
        if let s = f.shard {
            throw LMPKError(file: f.path, reason: "this is rank \(s.rank) of a \(s.worldSize)-way tensor-parallel sharding, not a whole model; run the set: --shards \((f.path as NSString).deletingLastPathComponent)")
        }
        return try load(lmpk: f, config: f.config)
    }

    /// Rank `f.shard.rank`'s part of a tensor-parallel model (its local heads, FFN
    /// columns and vocabulary rows; a tied head is a row range of the embedding). Its
    /// `forward` computes partial sums that a communicator completes (`ForwardHooks.reduce`).
    public static func load(rank f: LMPKFile) throws -> LlamaModel {
        guard let s = f.shard else { throw LMPKError(file: f.path, reason: "not a tensor-parallel rank file") }
        let lc = ShardLayout(config: f.config, ranges: s.ranges).localConfig
        let base = try load(lmpk: f, config: lc)
        let vocab = s.ranges.vocab
        var head = base.lmHead, view = false
        if f.config.tieWordEmbeddings && !s.ranges.vocabParallel {
            guard let e = f["model.embed_tokens.weight"] else { throw LMPKError(file: f.path, reason: "tensor 'model.embed_tokens.weight' is missing") }
            head = PackedLinear.make(e.packed.rowSlice(vocab.lowerBound, vocab.upperBound), owner: f)
            view = true
        }
        return LlamaModel(config: lc, layers: base.layers, embedding: base.embedding,
                          embeddingRows: s.ranges.vocabParallel ? vocab : 0..<lc.vocabSize, lmHead: head,
                          headViewsEmbedding: view, finalNorm: base.finalNorm, sources: [f])
    }

    static func load(lmpk f: LMPKFile, config c: ModelConfig) throws -> LlamaModel {
        func t(_ n: String) throws -> LMPKTensor {
            guard let t = f[n] else { throw LMPKError(file: f.path, reason: "tensor '\(n)' is missing") }
            return t
        }
        func matrix(_ n: String) throws -> LinearWeight {
            let x = try t(n)
            guard x.shape.count == 2 else { throw LMPKError(file: f.path, reason: "tensor '\(n)' must be a matrix") }
            do { try x.scheme.codec.validate(x.packed, name: n) } catch { throw LMPKError(file: f.path, reason: "\(error)") }
            return PackedLinear.make(x.packed, owner: f)
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
        var n = embedding.storageBytes + (lmHead === embedding || headViewsEmbedding ? 0 : lmHead.storageBytes)
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

    /// Bytes one decode step streams: every matrix, except an untied embedding (only the
    /// looked-up rows are read, which is negligible).
    public var decodeStreamBytes: Int {
        lmHead === embedding ? weightBytes : weightBytes - embedding.storageBytes + (headViewsEmbedding ? lmHead.storageBytes : 0)
    }

    /// A float KV cache for `sequences` sequences of up to `capacity` positions.
    public func makeCache(capacity: Int, sequences: Int, options: KVCacheOptions) throws -> KVCache {
        try KVCache(layers: config.numLayers, kvHeads: config.numKVHeads, headDim: config.headDim, capacity: capacity, sequences: sequences, options: options)
    }

    /// Buffers of one forward call (from the context's workspace).
    struct Buffers {
        let x, xn, q, k, v, att, g, u, scores, kvScratch, prefix: UnsafeMutablePointer<Float>
    }

    /// Checks `batch` against the vocabulary and `cache` (every build).
    func validate(_ batch: Batch, cache: KVCache) throws {
        guard cache.ranks.isEmpty, cache.layers == config.numLayers, cache.kvHeads == config.numKVHeads, cache.headDim == config.headDim else {
            throw RuntimeError("this KV cache (\(cache.layers) layers × \(cache.kvHeads) KV heads × \(cache.headDim)\(cache.ranks.isEmpty ? "" : ", \(cache.ranks.count) ranks")) was not made by this model (\(config.numLayers) × \(config.numKVHeads) × \(config.headDim)): use its makeCache")
        }
        try batch.admit(vocabSize: config.vocabSize, cache: cache)
    }
}

extension Batch {
    /// Checks the batch against the vocabulary and `cache`, and reserves its blocks
    /// (all or none) — every build, before any work.
    func admit(vocabSize: Int, cache: KVCache) throws {
        let batch = self
        guard batch.count > 0 else { throw RuntimeError("forward: no tokens") }
        for t in batch.tokens where t < 0 || t >= vocabSize {
            throw RuntimeError("token id \(t) is outside the vocabulary (0..<\(vocabSize))")
        }
        var seen = Set<Int>()
        for sp in batch.spans {
            guard sp.sequence >= 0 && sp.sequence < cache.sequences else {
                throw RuntimeError("sequence slot \(sp.sequence) is outside the cache's \(cache.sequences) slots")
            }
            guard sp.count > 0 else { throw RuntimeError("sequence \(sp.sequence): empty span") }
            guard seen.insert(sp.sequence).inserted else { throw RuntimeError("sequence \(sp.sequence) appears twice in one batch") }
            guard sp.start == cache.count(sp.sequence) else {
                throw RuntimeError("sequence \(sp.sequence): batch starts at position \(sp.start) but the cache holds \(cache.count(sp.sequence))")
            }
            guard sp.start + sp.count <= cache.capacity else {
                throw RuntimeError("context overflow: sequence \(sp.sequence) has \(sp.start) cached + \(sp.count) new positions > the cache's capacity \(cache.capacity)")
            }
        }
        // Blocks for every span before any work, all or none, so a full pool fails the
        // call cleanly and leaves the pool as it was.
        let missing = cache.blocksMissing(batch.spans.map { ($0.sequence, $0.start + $0.count) })
        guard missing <= cache.freeBlocks else {
            throw RuntimeError("KV cache full: this batch needs \(missing) more blocks but \(cache.freeBlocks) of the pool's \(cache.blocks) are free (\(cache.tokenCapacity) tokens at \(Int(cache.bytesPerToken)) bytes/token, \(cache.options.schemeDescription)); raise --kv-cache-size or --cache-max-entry-count, or run fewer sequences")
        }
        for sp in batch.spans { try cache.reserve(sequence: sp.sequence, positions: sp.start + sp.count) }
    }
}

extension LlamaModel {

    /// Runs `batch` on `context` through the stages embed → layer 0…n−1 → final norm →
    /// head, storing K/V in `cache` and advancing each sequence.
    /// - Throws: `RuntimeError` for an empty batch, a token id outside the vocabulary, a
    ///   bad sequence slot or start, or positions beyond the cache's capacity.
    public func forward(_ batch: Batch, cache: KVCache, logits: Logits, context: ComputeContext, hooks: ForwardHooks?) throws -> [Float] {
        if case let .rows(r) = logits, r.count > batch.count || !r.allSatisfy({ $0 >= 0 && $0 < batch.count }) {
            throw RuntimeError("logits rows: at most \(batch.count) rows, each inside the batch's \(batch.count) tokens")
        }
        guard embedding.rows > 0 else { throw RuntimeError("this model holds only decoder layers (LlamaModel.decoderStack): run it with forwardLayers") }
        try validate(batch, cache: cache)
        let c = config
        let T = batch.count
        let D = c.hiddenSize
        let ws = context.workspace
        ws.lock.lock()
        defer { ws.lock.unlock() }
        let b = buffers(batch, cache: cache, context: context)
        embed(batch, into: b.x)
        if embeddingRows.count < c.vocabSize { try hooks?.reduce?(-1, .embed, b.x, T, D) }
        try runLayers(batch, buffers: b, cache: cache, context: context, hooks: hooks)
        let rows: [Int]
        switch logits {
        case .none: return []
        case .last: rows = batch.spans.map { $0.first + $0.count - 1 }
        case .all: rows = Array(0..<T)
        case let .rows(r): rows = r
        }
        for (j, t) in rows.enumerated() { Ops.rmsNorm(b.x + t * D, finalNorm, b.xn + j * D, D, eps: c.rmsNormEps) }
        let V = lmHead.rows
        var out = [Float](repeating: 0, count: rows.count * V)
        try out.withUnsafeMutableBufferPointer {
            lmHead.apply(b.xn, tokens: rows.count, out: $0.baseAddress!, ldOut: V, context: context)
            try hooks?.reduce?(-1, .head, $0.baseAddress!, rows.count, V)
        }
        return out
    }

    /// The workspace buffers of one call (the caller holds the workspace lock).
    func buffers(_ batch: Batch, cache: KVCache, context: ComputeContext) -> Buffers {
        let c = config, ws = context.workspace
        let T = batch.count
        let D = c.hiddenSize, qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim, F = c.intermediateSize
        let S = batch.spans.map { $0.start + $0.count }.max()!
        let maxSpan = batch.spans.map(\.count).max()!
        return Buffers(x: ws.buffer(0, T * D), xn: ws.buffer(1, T * max(D, qDim)), q: ws.buffer(2, T * qDim),
                       k: ws.buffer(3, T * kvDim), v: ws.buffer(4, T * kvDim), att: ws.buffer(5, T * qDim),
                       g: ws.buffer(6, T * F), u: ws.buffer(7, T * F),
                       scores: ws.buffer(8, context.threads * Self.scoreRows(min(maxSpan, Self.queryBlock), group: c.numHeads / c.numKVHeads) * S),
                       kvScratch: ws.buffer(9, context.threads * cache.blockSize * c.headDim),
                       prefix: ws.buffer(10, cache.keyScheme.isPerChannel ? batch.spans.count * c.numKVHeads * cache.blockSize * c.headDim : 1))
    }

    /// Stage 2 over every layer on `buffers.x`, then each sequence advanced in `cache`.
    func runLayers(_ batch: Batch, buffers b: Buffers, cache: KVCache, context: ComputeContext, hooks: ForwardHooks?) throws {
        let rope = self.rope.upTo(batch.spans.map { $0.start + $0.count }.max()!)
        do {
            for li in 0..<layers.count {
                try layer(li, batch: batch, buffers: b, rope: rope, cache: cache, context: context, hooks: hooks)
            }
        } catch {
            // A hook threw after some layers stored this batch's K/V. Per-token schemes
            // overwrite those rows on a retry; per-channel K may have quantized a block
            // from them, so its sequences are forgotten (the caller re-runs them).
            if cache.keyScheme.isPerChannel { for sp in batch.spans { cache.reset(sp.sequence) } }
            throw error
        }
        for sp in batch.spans { cache.advance(sp.sequence, by: sp.count) }
    }

    /// A model of only these decoder layers (no embedding, final norm or head), for
    /// running stage 2 on hidden states: calibration feeds one layer at a time this way.
    /// `config.numLayers` becomes `layers.count`; `forward` of such a model is refused.
    public static func decoderStack(config: ModelConfig, layers: [LlamaLayer]) -> LlamaModel {
        var c = config
        c.numLayers = layers.count
        let none = DenseLinear(rows: 0, cols: c.hiddenSize, values: [])
        return LlamaModel(config: c, layers: layers, embedding: none, embeddingRows: 0..<c.vocabSize, lmHead: none,
                          headViewsEmbedding: false, finalNorm: [Float](repeating: 1, count: c.hiddenSize), sources: [])
    }

    /// Stage 2 alone: every decoder layer of this model on the residual stream `hidden`
    /// (`[batch.count, hidden]` row-major, updated in place), storing K/V in `cache` and
    /// advancing each sequence, with `hooks`' taps (and reduce points) as in `forward`.
    /// The token ids are checked as in `forward` but not looked up.
    public func forwardLayers(_ batch: Batch, hidden: UnsafeMutablePointer<Float>, cache: KVCache, context: ComputeContext, hooks: ForwardHooks?) throws {
        try validate(batch, cache: cache)
        let ws = context.workspace
        ws.lock.lock()
        defer { ws.lock.unlock() }
        let b = buffers(batch, cache: cache, context: context)
        let n = batch.count * config.hiddenSize
        b.x.update(from: hidden, count: n)
        try runLayers(batch, buffers: b, cache: cache, context: context, hooks: hooks)
        hidden.update(from: b.x, count: n)
    }

    /// Stage 1: embedding rows of the batch's tokens into `x` (`[T, hidden]`).
    public func embed(_ batch: Batch, into x: UnsafeMutablePointer<Float>) {
        let D = config.hiddenSize, lo = embeddingRows.lowerBound
        for (t, id) in batch.tokens.enumerated() {
            if embeddingRows.contains(id) { embedding.row(id - lo, into: x + t * D) } else { (x + t * D).update(repeating: 0, count: D) }
        }
    }

    /// Stage 2: decoder layer `li` on the residual stream `buffers.x`, in place: its parts
    /// in order, with the taps between them.
    func layer(_ li: Int, batch: Batch, buffers b: Buffers, rope: RotaryTable.Snapshot, cache: KVCache,
               context: ComputeContext, hooks: ForwardHooks?) throws {
        let c = config, T = batch.count
        let D = c.hiddenSize, qDim = c.numHeads * c.headDim, F = c.intermediateSize
        func run(_ p: LayerPart, _ input: UnsafePointer<Float>, _ output: UnsafeMutablePointer<Float>) throws {
            try part(p, li, batch: batch, buffers: b, rope: rope, cache: cache, context: context, hooks: hooks, hidden: b.x, input: input, output: output)
        }
        try run(.attentionNorm, b.x, b.xn)
        try hooks?.tap?(li, .attentionInput, b.xn, T, D)
        try run(.attention, b.xn, b.att)
        try hooks?.tap?(li, .oProjInput, b.att, T, qDim)
        try run(.oProj, b.att, b.xn)
        try run(.mlpNorm, b.x, b.xn)
        try hooks?.tap?(li, .mlpInput, b.xn, T, D)
        try run(.mlpUp, b.xn, b.g)
        try hooks?.tap?(li, .downProjInput, b.g, T, F)
        try run(.down, b.g, b.xn)
    }

    /// One part of decoder layer `li`. `hidden` is the residual stream (`[T, hidden]`);
    /// `output` is the part's result, or its scratch for `.oProj`/`.down` (which add into
    /// `hidden`). Scratch buffers come from `b` and never alias `input`/`output`.
    func part(_ p: LayerPart, _ li: Int, batch: Batch, buffers b: Buffers, rope: RotaryTable.Snapshot, cache: KVCache,
              context: ComputeContext, hooks: ForwardHooks?, hidden x: UnsafeMutablePointer<Float>,
              input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>) throws {
        let c = config, L = layers[li]
        let T = batch.count
        let D = c.hiddenSize, H = c.numHeads, KVH = c.numKVHeads, hd = c.headDim, F = c.intermediateSize
        let qDim = H * hd, kvDim = KVH * hd
        let xp = SendablePointer(x), op = SendablePointer(output)
        let qp = SendablePointer(b.q), kp = SendablePointer(b.k)
        let tokenSlices = ComputeContext.ranges(T, parts: T >= 8 ? context.threads : 1)
        let positions = batch.positions
        switch p {
        case .attentionNorm, .mlpNorm:
            let w = p == .attentionNorm ? L.attnNorm : L.mlpNorm
            context.parallelFor(tokenSlices.count) { i in
                for t in tokenSlices[i] { Ops.rmsNorm(xp.p + t * D, w, op.p + t * D, D, eps: c.rmsNormEps) }
            }
        case .attention:
            LinearGroup.apply([L.q, L.k, L.v], input, tokens: T, outs: [b.q, b.k, b.v], ldOuts: [qDim, kvDim, kvDim], context: context)
            if let qb = L.qBias, let kb = L.kBias, let vb = L.vBias {
                for t in 0..<T { Ops.add(b.q + t * qDim, qb, qDim); Ops.add(b.k + t * kvDim, kb, kvDim); Ops.add(b.v + t * kvDim, vb, kvDim) }
            }
            context.parallelFor(tokenSlices.count) { i in
                for t in tokenSlices[i] {
                    rope.apply(qp.p + t * qDim, heads: H, pos: positions[t])
                    rope.apply(kp.p + t * kvDim, heads: KVH, pos: positions[t])
                }
            }
            let kvo = cache.options
            if kvo.rotatesKeys || kvo.rotatesValues {
                // --kv-rotate: Hadamard per head (q and k together keep q·k; v is rotated back below).
                let vp = SendablePointer(b.v), rk = kvo.rotatesKeys, rv = kvo.rotatesValues
                context.parallelFor(tokenSlices.count) { i in
                    for t in tokenSlices[i] {
                        if rk {
                            for h in 0..<H { Ops.hadamard(qp.p + t * qDim + h * hd, hd) }
                            for h in 0..<KVH { Ops.hadamard(kp.p + t * kvDim + h * hd, hd) }
                        }
                        if rv { for h in 0..<KVH { Ops.hadamard(vp.p + t * kvDim + h * hd, hd) } }
                    }
                }
            }
            if cache.keyScheme.isPerChannel {
                // The float32 rows of each span's first block stored before this call: prefill
                // reads a position's own (incomplete) block in full precision, as decode does.
                let B = cache.blockSize
                for (si, sp) in batch.spans.enumerated() where sp.count > 1 && sp.start % B > 0 {
                    for h in 0..<KVH {
                        (b.prefix + (si * KVH + h) * B * hd).update(from: cache.tailRows(layer: li, sequence: sp.sequence, head: h)!, count: (sp.start % B) * hd)
                    }
                }
            }
            for sp in batch.spans {
                try cache.store(layer: li, sequence: sp.sequence, start: sp.start, keys: b.k + sp.first * kvDim, values: b.v + sp.first * kvDim,
                                tokens: sp.count, stride: kvDim)
            }
            attention(layer: li, batch: batch, q: b.q, k: b.k, prefix: b.prefix, out: output, cache: cache, scores: b.scores, kvScratch: b.kvScratch, context: context)
            if kvo.rotatesValues {
                context.parallelFor(tokenSlices.count) { i in
                    for t in tokenSlices[i] { for h in 0..<H { Ops.hadamard(op.p + t * qDim + h * hd, hd) } }
                }
            }
        case .oProj, .down:
            (p == .oProj ? L.o : L.down).apply(input, tokens: T, out: output, ldOut: D, context: context)
            try hooks?.reduce?(li, p == .oProj ? .oProj : .downProj, output, T, D)
            Ops.add(x, output, T * D)
        case .mlpUp:
            LinearGroup.apply([L.gate, L.up], input, tokens: T, outs: [output, b.u], ldOuts: [F, F], context: context)
            let up = SendablePointer(b.u)
            context.parallelFor(tokenSlices.count) { i in
                let r = tokenSlices[i]
                Ops.siluMul(op.p + r.lowerBound * F, up.p + r.lowerBound * F, r.count * F)
            }
        }
    }

    /// Runs one part of decoder layer `layer` on caller-owned arrays, for calibration that
    /// quantizes a layer's matrices in order (GPTQ's true-sequential mode runs a part over
    /// every window before the next). `hidden` is the residual stream `[T, hidden]`;
    /// `.attentionNorm`/`.mlpNorm` read it into `output`, `.oProj`/`.down` add their
    /// product into it; `.attention` and `.mlpUp` map `input` to `output` (widths in
    /// `LayerPart`). `.attention` stores the batch's K/V in `cache` but does not advance it
    /// (reset the cache, or call `forwardLayers`, before the next batch). Reduce hooks run
    /// as in `forward`; taps do not (the caller holds each part's output).
    /// - Throws: `RuntimeError` for a layer out of range, a missing `input` or `output`,
    ///   or a batch the cache does not admit.
    public func forwardPart(_ p: LayerPart, layer li: Int = 0, batch: Batch, hidden: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>?,
                            output: UnsafeMutablePointer<Float>?, cache: KVCache, context: ComputeContext, hooks: ForwardHooks? = nil) throws {
        guard li >= 0 && li < layers.count else { throw RuntimeError("forwardPart: layer \(li) is outside this model's \(layers.count) layers") }
        try validate(batch, cache: cache)
        let ws = context.workspace
        ws.lock.lock()
        defer { ws.lock.unlock() }
        let b = buffers(batch, cache: cache, context: context)
        let needsInput: Bool, needsOutput: Bool
        switch p {
        case .attentionNorm, .mlpNorm: needsInput = false; needsOutput = true
        case .attention, .mlpUp: needsInput = true; needsOutput = true
        case .oProj, .down: needsInput = true; needsOutput = false
        }
        guard !needsInput || input != nil else { throw RuntimeError("forwardPart(.\(p)): the part reads an input; none was given") }
        guard !needsOutput || output != nil else { throw RuntimeError("forwardPart(.\(p)): the part writes an output; none was given") }
        let rope = p == .attention ? self.rope.upTo(batch.spans.map { $0.start + $0.count }.max()!) : self.rope.upTo(0)
        try part(p, li, batch: batch, buffers: b, rope: rope, cache: cache, context: context, hooks: hooks, hidden: hidden,
                 input: input ?? UnsafePointer(hidden), output: output ?? b.xn)
    }

    /// Score rows a worker needs: a query block, or a decode row's group of heads.
    static func scoreRows(_ block: Int, group: Int) -> Int { max(block, group) }

    /// Query rows per attention block: keys beyond the block's last position are
    /// skipped (causal), which halves prefill attention work.
    static let queryBlock = 64

    /// Causal grouped-query attention of every span of `batch`, reading K/V from the
    /// cache's pages per (span, KV head, query block); jobs run in parallel. Decode rows
    /// use the fused paged kernel (scores and weighted sums on the stored codes);
    /// blocks of `queryBlock` rows use `sgemm` per page for QKᵀ and PV, each page read
    /// in place (f32) or dequantized into a one-page tile.
    func attention(layer li: Int, batch: Batch, q: UnsafeMutablePointer<Float>, k: UnsafePointer<Float>, prefix: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                   cache: KVCache, scores: UnsafeMutablePointer<Float>, kvScratch: UnsafeMutablePointer<Float>, context: ComputeContext) {
        let c = config
        let H = c.numHeads, KVH = c.numKVHeads, hd = c.headDim, qDim = H * hd, group = H / KVH
        let scale = 1 / Float(hd).squareRoot()
        let S = batch.spans.map { $0.start + $0.count }.max()!
        let B = min(batch.spans.map(\.count).max()!, Self.queryBlock)
        // Jobs: (span, KV head, first row of a query block within the span).
        // Claimed dynamically, the costliest (latest query blocks: most keys) first.
        var jobs: [(span: Int, kvh: Int, t0: Int)] = []
        for (si, sp) in batch.spans.enumerated() {
            for kvh in 0..<KVH { var t0 = 0; while t0 < sp.count { jobs.append((si, kvh, t0)); t0 += Self.queryBlock } }
        }
        let spans = batch.spans
        jobs.sort { a, b in
            let ka = spans[a.span].start + a.t0, kb = spans[b.span].start + b.t0
            return ka != kb ? ka > kb : (a.span, a.kvh) < (b.span, b.kvh)
        }
        let sp = SendablePointer(scores), ks = SendablePointer(kvScratch), ap = SendablePointer(out), qp = SendablePointer(q)
        let cacheBox = UncheckedBox(cache)
        let kernels = context.kernels
        let bs = cache.blockSize, kScheme = cache.keyScheme, vScheme = cache.valueScheme
        let perChannelK = kScheme.isPerChannel, kvDim = KVH * hd
        let kb = SendablePointer(UnsafeMutablePointer(mutating: k)), pb = SendablePointer(UnsafeMutablePointer(mutating: prefix))
        let rowsPerWorker = Self.scoreRows(B, group: group)
        context.parallelFor(jobs.count) { j, w in
            let sc = sp.p + w * rowsPerWorker * S
            let tile = ks.p + w * bs * hd
            let job = jobs[j]
            let span = spans[job.span]
            let rows = min(Self.queryBlock, span.count - job.t0)
            let p0 = span.start + job.t0       // position of the block's first query
            let keys = p0 + rows               // causal: later keys are masked for every row of this block
            var view = cacheBox.value.view(layer: li, sequence: span.sequence, head: job.kvh)
            let row0 = span.first + job.t0     // token index of the block's first query
            // A page of block i (K or V) as floats: f32 pages are read in place, the other
            // schemes are dequantized into this worker's tile (one page at a time).
            func page(_ base: UnsafePointer<UInt8>, _ scheme: KVScheme, _ i: Int, _ n: Int) -> UnsafePointer<Float> {
                let p = UnsafeRawPointer(base) + Int(view.table[i]) * Int(view.stride)
                if scheme == .f32 { return p.assumingMemoryBound(to: Float.self) }
                kernels.kvDequant(scheme, page: p, blockSize: bs, count: n, headDim: hd, out: tile)
                return UnsafePointer(tile)
            }
            if span.count <= 3 && (!perChannelK || span.count == 1) {
                // Decode: the fused kernel reads each page (codes) once for the group's
                // query heads. (Per-channel K: one row, whose own block is the tail.)
                for r in 0..<rows {
                    let off = (row0 + r) * qDim + job.kvh * group * hd
                    kernels.attendPagedGroup(q: qp.p + off, qStride: hd, rows: group, view: &view, count: p0 + r + 1, headDim: hd,
                                             scale: scale, scores: sc, out: ap.p + off, outStride: hd)
                }
                return
            }
            for g in 0..<group {
                let h = job.kvh * group + g
                let pages = (keys + bs - 1) / bs
                for i in 0..<pages {
                    let n = min(bs, keys - i * bs)
                    // Per-channel K: block i is complete (quantized) for a query at p only once
                    // p ≥ (i+1)·B − 1; earlier rows read it in float32 (this call's K rows, and
                    // the rows stored before it), exactly what decode reads from the tail.
                    let rStar = perChannelK ? min(rows, max(0, (i + 1) * bs - 1 - p0)) : 0
                    if rStar > 0 {
                        for t in 0..<n {
                            let pos = i * bs + t
                            let src = pos >= span.start ? kb.p + (span.first + pos - span.start) * kvDim + job.kvh * hd
                                                        : pb.p + (job.span * KVH + job.kvh) * bs * hd + (pos % bs) * hd
                            (tile + t * hd).update(from: src, count: hd)
                        }
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rStar), Int32(n), Int32(hd),
                                    scale, qp.p + row0 * qDim + h * hd, Int32(qDim), tile, Int32(hd), 0, sc + i * bs, Int32(keys))
                    }
                    if rStar < rows {
                        let K = page(view.kbase, kScheme, i, n)
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows - rStar), Int32(n), Int32(hd),
                                    scale, qp.p + (row0 + rStar) * qDim + h * hd, Int32(qDim), K, Int32(hd), 0, sc + rStar * keys + i * bs, Int32(keys))
                    }
                }
                for r in 0..<rows {
                    let row = sc + r * keys
                    let valid = p0 + r + 1
                    kernels.softmax(row, valid)
                    if valid < keys { (row + valid).update(repeating: 0, count: keys - valid) }
                }
                for i in 0..<pages {
                    let n = min(bs, keys - i * bs)
                    let V = page(view.vbase, vScheme, i, n)
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(hd), Int32(n),
                                1, sc + i * bs, Int32(keys), V, Int32(hd), i == 0 ? 0 : 1, ap.p + row0 * qDim + h * hd, Int32(qDim))
                }
            }
        }
    }
}

