import Foundation
import LMCore

/// Undoes llama.cpp's / Meta's interleaved rotary row order for a q or k weight
/// (`[heads*headDim, cols]`), giving HF's rotate-half order. Row `h*hd + 2i + j`
/// of the interleaved layout becomes row `h*hd + j*hd/2 + i`.
public func unpermuteRotaryRows(_ w: [Float], heads: Int, rows: Int, cols: Int) -> [Float] {
    let hd = rows / heads
    var out = [Float](repeating: 0, count: w.count)
    for h in 0..<heads {
        for i in 0..<(hd / 2) {
            for j in 0..<2 {
                let src = (h * hd + 2 * i + j) * cols, dst = (h * hd + j * (hd / 2) + i) * cols
                for c in 0..<cols { out[dst + c] = w[src + c] }
            }
        }
    }
    return out
}

/// A model read from a non-HF format, ready to be written as an HF folder.
public struct ImportedModel {
    public let config: ModelConfig
    public let tokenizer: JSON?
    public let tensors: [PendingTensor]
    /// Keeps the source mapping alive while tensors are produced.
    public let source: AnyObject
}

/// GGUF (llama.cpp) → HF names, shapes and float values.
public enum GGUFImporter {
    static let layerMap: [(String, String)] = [
        ("attn_norm.weight", "input_layernorm.weight"), ("attn_q.weight", "self_attn.q_proj.weight"),
        ("attn_k.weight", "self_attn.k_proj.weight"), ("attn_v.weight", "self_attn.v_proj.weight"),
        ("attn_q.bias", "self_attn.q_proj.bias"), ("attn_k.bias", "self_attn.k_proj.bias"), ("attn_v.bias", "self_attn.v_proj.bias"),
        ("attn_output.weight", "self_attn.o_proj.weight"), ("ffn_norm.weight", "post_attention_layernorm.weight"),
        ("ffn_gate.weight", "mlp.gate_proj.weight"), ("ffn_up.weight", "mlp.up_proj.weight"), ("ffn_down.weight", "mlp.down_proj.weight"),
    ]

    /// Reads config, tokenizer and tensor plan from `file`.
    public static func load(_ g: GGUFFile) throws -> ImportedModel {
        func fail(_ s: String) -> GGUFError { GGUFError(file: g.path, reason: s) }
        let arch = g.metadata["general.architecture"]?.string ?? "?"
        guard arch == "llama" || arch == "qwen2" else {
            throw fail("architecture '\(arch)' is not supported (llama and qwen2 are)")
        }
        // Sizes are bounded as config.json's are (ModelConfig.limits) before anything uses them.
        func bounded(_ k: String, _ v: Int, _ hf: String) throws -> Int {
            guard v > 0 else { throw fail("metadata '\(arch).\(k)' must be a positive integer, got \(v)") }
            if let cap = ModelConfig.limits[hf], v > cap { throw fail("metadata '\(arch).\(k)' = \(v) exceeds the supported maximum \(cap)") }
            return v
        }
        let hfName = ["embedding_length": "hidden_size", "attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
                      "attention.key_length": "head_dim", "vocab_size": "vocab_size", "feed_forward_length": "intermediate_size",
                      "block_count": "num_hidden_layers", "context_length": "max_position_embeddings"]
        func int(_ k: String) throws -> Int {
            guard let v = g.metadata["\(arch).\(k)"]?.int else { throw fail("metadata '\(arch).\(k)' missing or not a positive integer") }
            return try bounded(k, v, hfName[k] ?? k)
        }
        func optInt(_ k: String) throws -> Int? { try g.metadata["\(arch).\(k)"]?.int.map { try bounded(k, $0, hfName[k] ?? k) } }
        if let st = g.metadata["\(arch).rope.scaling.type"]?.string, st != "none" {
            throw fail("rope scaling '\(st)' is not supported")
        }
        let hidden = try int("embedding_length"), heads = try int("attention.head_count")
        let kvHeads = try optInt("attention.head_count_kv") ?? heads
        let headDim = try optInt("attention.key_length") ?? hidden / heads
        guard headDim > 0, kvHeads <= heads, heads % kvHeads == 0 else {
            throw fail("attention shape: \(heads) heads, \(kvHeads) KV heads, head size \(headDim) (KV heads must divide heads)")
        }
        if let rd = g.metadata["\(arch).rope.dimension_count"]?.int, rd != headDim {
            throw fail("partial rotary embeddings (rope.dimension_count \(rd) ≠ head dim \(headDim)) are not supported")
        }
        let tokens = g.metadata["tokenizer.ggml.tokens"]?.array?.compactMap { $0.string }
        guard let emb = g["token_embd.weight"] else { throw fail("tensor 'token_embd.weight' is missing") }
        guard emb.dims.count == 2 else { throw fail("tensor 'token_embd.weight' must be 2-D [hidden, vocab], has dims \(emb.dims)") }
        let vocab = try optInt("vocab_size") ?? bounded("token_embd.weight rows", emb.dims[1], "vocab_size")
        let tied = g["output.weight"] == nil
        let bos = g.metadata["tokenizer.ggml.bos_token_id"]?.int
        let eos = g.metadata["tokenizer.ggml.eos_token_id"]?.int
        let config = ModelConfig(
            architecture: arch == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM",
            hiddenSize: hidden, intermediateSize: try int("feed_forward_length"), numLayers: try int("block_count"),
            numHeads: heads, numKVHeads: kvHeads, headDim: headDim, vocabSize: vocab,
            rmsNormEps: Float(g.metadata["\(arch).attention.layer_norm_rms_epsilon"]?.double ?? 1e-5),
            ropeTheta: Float(g.metadata["\(arch).rope.freq_base"]?.double ?? 10000),
            tieWordEmbeddings: tied, attentionBias: arch == "qwen2",
            maxPositionEmbeddings: try optInt("context_length") ?? 2048,
            bosTokenId: bos, eosTokenIds: eos.map { [$0] } ?? [])

        // Every tensor of the file must be one this importer maps: an unexpected one means
        // a feature the runtime would silently ignore.
        if let rf = g["rope_freqs.weight"] {
            throw fail("tensor '\(rf.name)' carries Llama 3.1-style RoPE frequency factors (rope scaling), which are not supported; importing without them would give wrong positions")
        }
        if arch == "llama", let b = g.tensors.first(where: { $0.name.hasPrefix("blk.") && $0.name.hasSuffix(".bias") }) {
            throw fail("tensor '\(b.name)': llama-architecture GGUFs with attention or MLP biases are not supported (Hugging Face's LlamaConfig.attention_bias would also bias o_proj); convert from the original model")
        }
        var plan: [PendingTensor] = []
        var used = Set<String>()
        func add(_ ggufName: String, _ hfName: String, permuteHeads: Int? = nil) throws {
            guard let t = g[ggufName] else { throw fail("tensor '\(ggufName)' is missing") }
            used.insert(ggufName)
            let shape = t.shape
            plan.append(PendingTensor(name: hfName, shape: shape, release: { g.mapping.release(t.bytes) }) {
                let v = t.dequantize()
                if let h = permuteHeads, shape.count == 2 { return unpermuteRotaryRows(v, heads: h, rows: shape[0], cols: shape[1]) }
                return v
            })
        }
        try add("token_embd.weight", "model.embed_tokens.weight")
        let permute = arch == "llama"
        for l in 0..<config.numLayers {
            for (src, dst) in layerMap {
                let name = "blk.\(l).\(src)"
                if src.hasSuffix(".bias") && g[name] == nil { continue }
                let ph: Int? = !permute ? nil : src.hasPrefix("attn_q.") ? heads : src.hasPrefix("attn_k.") ? kvHeads : nil
                try add(name, "model.layers.\(l).\(dst)", permuteHeads: ph)
            }
        }
        try add("output_norm.weight", "model.norm.weight")
        if !tied { try add("output.weight", "lm_head.weight") }
        if let extra = g.tensors.first(where: { !used.contains($0.name) }) {
            throw fail("tensor '\(extra.name)' is not one this importer knows for '\(arch)' (\(g.tensors.count - used.count) unexpected in all); refusing to import a model it would run without it")
        }
        // Check shapes against the config before anything is written.
        let expected = Dictionary(config.expectedTensors(), uniquingKeysWith: { a, _ in a })
        for p in plan { if let e = expected[p.name], e != p.shape { throw ModelError.shapeMismatch(tensor: p.name, expected: e, found: p.shape) } }

        var tokJSON: JSON? = nil
        if let tokens {
            let types = g.metadata["tokenizer.ggml.token_type"]?.array?.compactMap { $0.int }
            let model = g.metadata["tokenizer.ggml.model"]?.string ?? ""
            let addBOS = g.metadata["tokenizer.ggml.add_bos_token"]?.bool ?? (model == "llama")
            switch model {
            case "gpt2":
                let pre = g.metadata["tokenizer.ggml.pre"]?.string ?? "default"
                guard ["default", "gpt2", "smollm"].contains(pre) else {
                    throw fail("byte-level pre-tokenizer '\(pre)' is not supported (default, gpt2, smollm are)")
                }
                let merges = g.metadata["tokenizer.ggml.merges"]?.array?.compactMap { $0.string } ?? []
                tokJSON = TokenizerJSON.byteLevel(tokens: tokens, types: types, merges: merges, bos: bos, addBOS: addBOS, digits: pre == "smollm")
            case "llama":
                let scores = g.metadata["tokenizer.ggml.scores"]?.array?.compactMap { $0.double.map(Float.init) } ?? []
                guard scores.count == tokens.count else { throw fail("tokenizer.ggml.scores must have one score per token") }
                tokJSON = TokenizerJSON.sentencePiece(tokens: tokens, scores: scores, types: types, bos: addBOS ? bos : nil, eos: eos,
                                                      unk: g.metadata["tokenizer.ggml.unknown_token_id"]?.int)
            default:
                throw fail("tokenizer model '\(model)' is not supported (gpt2 and llama are)")
            }
        }
        return ImportedModel(config: config, tokenizer: tokJSON, tensors: plan, source: g)
    }
}

/// llama2.c checkpoints (`run.c` format: 7 int32 header, float32 weights) → HF.
public enum Llama2cImporter {
    /// Reads `bin` and, optionally, its tokenizer: llama2.c's `tokenizer.bin` format
    /// (max length, then per token a float score, an int32 length and the bytes) or a
    /// sentencepiece `.model`.
    public static func load(checkpoint path: String, tokenizer tokPath: String?) throws -> ImportedModel {
        let m = try MappedFile(path: path)
        var r = ByteReader(m.bytes, source: path)
        func fail(_ s: String) -> IOError { IOError(path: path, reason: s) }
        var h: [Int] = []
        for name in ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"] {
            h.append(Int(try r.read(Int32.self, name)))
        }
        let (dim, hidden, L, nh, nkv, vraw, seq) = (h[0], h[1], h[2], h[3], h[4], h[5], h[6])
        let shared = vraw > 0
        let V = abs(vraw)
        guard dim > 0, hidden > 0, L > 0, nh > 0, nkv > 0, V > 0, seq > 0, dim % nh == 0, nh % nkv == 0, dim < 1 << 16, hidden < 1 << 18, L < 1024, V < 1 << 22, seq < 1 << 22 else {
            throw fail("implausible llama2.c header \(h) (not a llama2.c checkpoint?)")
        }
        let hd = dim / nh, kv = nkv * hd
        var off = 28
        var plan: [PendingTensor] = []
        func slab(_ count: Int) -> Int { defer { off += count * 4 }; return off }
        let emb = slab(V * dim), rmsAtt = slab(L * dim), wq = slab(L * dim * dim), wk = slab(L * kv * dim), wv = slab(L * kv * dim)
        let wo = slab(L * dim * dim), rmsFfn = slab(L * dim), w1 = slab(L * hidden * dim), w2 = slab(L * dim * hidden)
        let w3 = slab(L * hidden * dim), rmsFinal = slab(dim)
        off += seq * hd * 4 // freq_cis_real + freq_cis_imag (unused: rope is recomputed)
        let wcls = shared ? -1 : slab(V * dim)
        guard off == m.bytes.count else {
            throw fail("file has \(m.bytes.count) bytes but the header implies \(off) (truncated or not llama2.c)")
        }
        func floats(_ at: Int, _ n: Int) -> [Float] {
            var v = [Float](repeating: 0, count: n)
            v.withUnsafeMutableBufferPointer { convertToFloat(UnsafeRawBufferPointer(rebasing: m.bytes[at..<(at + 4 * n)]), dtype: .f32, into: $0) }
            return v
        }
        func add(_ name: String, _ shape: [Int], _ at: Int, permute heads: Int? = nil) {
            let n = shape.reduce(1, *)
            plan.append(PendingTensor(name: name, shape: shape, release: { m.release(UnsafeRawBufferPointer(rebasing: m.bytes[at..<(at + 4 * n)])) }) {
                let v = floats(at, n)
                return heads.map { unpermuteRotaryRows(v, heads: $0, rows: shape[0], cols: shape[1]) } ?? v
            })
        }
        add("model.embed_tokens.weight", [V, dim], emb)
        for l in 0..<L {
            let p = "model.layers.\(l)."
            add(p + "input_layernorm.weight", [dim], rmsAtt + 4 * l * dim)
            add(p + "self_attn.q_proj.weight", [dim, dim], wq + 4 * l * dim * dim, permute: nh)
            add(p + "self_attn.k_proj.weight", [kv, dim], wk + 4 * l * kv * dim, permute: nkv)
            add(p + "self_attn.v_proj.weight", [kv, dim], wv + 4 * l * kv * dim)
            add(p + "self_attn.o_proj.weight", [dim, dim], wo + 4 * l * dim * dim)
            add(p + "post_attention_layernorm.weight", [dim], rmsFfn + 4 * l * dim)
            add(p + "mlp.gate_proj.weight", [hidden, dim], w1 + 4 * l * hidden * dim)
            add(p + "mlp.up_proj.weight", [hidden, dim], w3 + 4 * l * hidden * dim)
            add(p + "mlp.down_proj.weight", [dim, hidden], w2 + 4 * l * dim * hidden)
        }
        add("model.norm.weight", [dim], rmsFinal)
        if !shared { add("lm_head.weight", [V, dim], wcls) }
        let config = ModelConfig(hiddenSize: dim, intermediateSize: hidden, numLayers: L, numHeads: nh, numKVHeads: nkv, headDim: hd,
                                 vocabSize: V, rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: shared,
                                 maxPositionEmbeddings: seq, bosTokenId: 1, eosTokenIds: [2])
        var tok: JSON? = nil
        if let tokPath {
            tok = tokPath.hasSuffix(".model") ? try SentencePieceModel.tokenizerJSON(path: tokPath) : try loadTokenizer(tokPath, vocabSize: V)
        }
        return ImportedModel(config: config, tokenizer: tok, tensors: plan, source: m)
    }

    /// Reads llama2.c's `tokenizer.bin` and converts it to a sentencepiece-style
    /// `tokenizer.json` (ids 0/1/2 = unk/BOS/EOS; `<0xXX>` byte tokens).
    public static func loadTokenizer(_ path: String, vocabSize: Int) throws -> JSON {
        let m = try MappedFile(path: path)
        var r = ByteReader(m.bytes, source: path)
        _ = try r.read(Int32.self, "max_token_length")
        var tokens: [String] = [], scores: [Float] = []
        for i in 0..<vocabSize {
            scores.append(try r.readFloat("score of token \(i)"))
            let n = Int(try r.read(Int32.self, "length of token \(i)"))
            guard n >= 0 && n < 4096 else { throw IOError(path: path, reason: "token \(i) has implausible length \(n)") }
            tokens.append(String(decoding: try r.readBytes(n, "token \(i)"), as: UTF8.self))
        }
        guard r.remaining == 0 else { throw IOError(path: path, reason: "\(r.remaining) unexpected trailing bytes (vocabulary size mismatch with the checkpoint?)") }
        // llama2.c stores "\n<s>\n" / "\n</s>\n" for the specials and spaces for ▁.
        var types = [Int](repeating: 1, count: tokens.count)
        for i in tokens.indices {
            if i <= 2 { types[i] = i == 0 ? 2 : 3; tokens[i] = ["<unk>", "<s>", "</s>"][i]; continue }
            let t = tokens[i]
            if t.utf8.count == 6 && t.hasPrefix("<0x") && t.hasSuffix(">") { types[i] = 6; continue }
            tokens[i] = t.replacingOccurrences(of: " ", with: "▁")
        }
        return TokenizerJSON.sentencePiece(tokens: tokens, scores: scores, types: types, bos: 1, eos: 2, unk: 0)
    }
}
