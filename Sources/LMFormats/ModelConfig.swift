import Foundation
import LMCore

/// The hyper-parameters of a Llama-family decoder, read from `config.json`.
public struct ModelConfig: Equatable, Sendable {
    public static let supportedArchitectures = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"]

    public var architecture: String
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var numLayers: Int
    public var numHeads: Int
    public var numKVHeads: Int
    public var headDim: Int
    public var vocabSize: Int
    public var rmsNormEps: Float
    public var ropeTheta: Float
    public var tieWordEmbeddings: Bool
    /// q/k/v projections carry biases (Qwen2, or `attention_bias: true`).
    public var attentionBias: Bool
    public var maxPositionEmbeddings: Int
    public var bosTokenId: Int?
    public var eosTokenIds: [Int]

    public init(architecture: String = "LlamaForCausalLM", hiddenSize: Int, intermediateSize: Int, numLayers: Int, numHeads: Int,
                numKVHeads: Int, headDim: Int? = nil, vocabSize: Int, rmsNormEps: Float = 1e-5, ropeTheta: Float = 10000,
                tieWordEmbeddings: Bool = false, attentionBias: Bool = false, maxPositionEmbeddings: Int = 2048,
                bosTokenId: Int? = 1, eosTokenIds: [Int] = [2]) {
        self.architecture = architecture; self.hiddenSize = hiddenSize; self.intermediateSize = intermediateSize
        self.numLayers = numLayers; self.numHeads = numHeads; self.numKVHeads = numKVHeads
        self.headDim = headDim ?? hiddenSize / numHeads; self.vocabSize = vocabSize; self.rmsNormEps = rmsNormEps
        self.ropeTheta = ropeTheta; self.tieWordEmbeddings = tieWordEmbeddings; self.attentionBias = attentionBias
        self.maxPositionEmbeddings = maxPositionEmbeddings; self.bosTokenId = bosTokenId; self.eosTokenIds = eosTokenIds
    }

    /// Upper bounds on the sizes `parse` accepts (each well above any released model:
    /// products of two stay far from overflow, the tensor table stays small).
    public static let limits: [String: Int] = [
        "hidden_size": 1 << 20, "intermediate_size": 1 << 22, "num_hidden_layers": 1 << 12, "num_attention_heads": 1 << 14,
        "num_key_value_heads": 1 << 14, "head_dim": 1 << 16, "vocab_size": 1 << 24, "max_position_embeddings": 1 << 32,
    ]

    /// Reads and validates `config.json` (a file or the folder holding it).
    /// - Throws: `ModelError.unsupportedArchitecture` / `.badConfig` saying what is supported.
    public static func load(path: String) throws -> ModelConfig {
        var isDir: ObjCBool = false
        let file = FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && isDir.boolValue ? path + "/config.json" : path
        guard FileManager.default.fileExists(atPath: file) else {
            throw ModelError.missingFile(file, hint: "a Hugging Face model folder needs config.json")
        }
        return try parse(JSON.parse(file: file), source: file)
    }

    /// Builds a config from parsed `config.json`.
    public static func parse(_ j: JSON, source: String) throws -> ModelConfig {
        func bad(_ k: String, _ r: String) -> ModelError { .badConfig(key: k, reason: r, source: source) }
        let arch = j["architectures"]?.array?.first?.string ?? ""
        guard supportedArchitectures.contains(arch) else {
            throw ModelError.unsupportedArchitecture(arch.isEmpty ? "(none; 'architectures' missing)" : arch, source: source)
        }
        func int(_ k: String) throws -> Int {
            guard let v = j[k], let i = v.int, i > 0 else { throw bad(k, j[k] == nil ? "missing" : "must be a positive integer") }
            return try capped(k, i)
        }
        func optInt(_ k: String) throws -> Int? {
            guard let v = j[k], !v.isNull else { return nil }
            guard let i = v.int, i > 0 else { throw bad(k, "must be a positive integer") }
            return try capped(k, i)
        }
        // Sizes drive allocations and tensor-table loops: bounded before anything uses them.
        func capped(_ k: String, _ i: Int) throws -> Int {
            if let cap = ModelConfig.limits[k], i > cap { throw bad(k, "\(i) exceeds the supported maximum \(cap)") }
            return i
        }
        let hidden = try int("hidden_size")
        let heads = try int("num_attention_heads")
        let kv = try optInt("num_key_value_heads") ?? heads
        guard heads % kv == 0 else { throw bad("num_key_value_heads", "\(kv) does not divide num_attention_heads \(heads)") }
        let headDim = try optInt("head_dim") ?? (hidden / heads)
        guard headDim % 2 == 0 else { throw bad("head_dim", "must be even for rotary embeddings") }
        if j["head_dim"] == nil && hidden % heads != 0 { throw bad("hidden_size", "not divisible by num_attention_heads and no head_dim given") }
        if let act = j["hidden_act"]?.string, act != "silu" {
            throw bad("hidden_act", "'\(act)' is not supported (only 'silu')")
        }
        // Rope: theta at top level or under rope_parameters; only the default (unscaled) rope is implemented.
        var theta = j["rope_theta"]?.double
        for key in ["rope_scaling", "rope_parameters"] {
            guard let rs = j[key], !rs.isNull else { continue }
            guard rs.object != nil else { throw bad(key, "must be an object") }
            let type = rs["rope_type"]?.string ?? rs["type"]?.string ?? "default"
            if type != "default" { throw bad(key, "rope type '\(type)' is not supported (only unscaled 'default' rotary embeddings)") }
            if let t = rs["rope_theta"]?.double { theta = t }
        }
        if let sw = j["sliding_window"], !sw.isNull, arch == "MistralForCausalLM" || (j["use_sliding_window"]?.bool ?? false) {
            // A window at least as long as the model's positions behaves as full attention.
            let maxPos = try optInt("max_position_embeddings") ?? 0
            if let w = sw.int, w < maxPos, j["use_sliding_window"]?.bool != false {
                throw bad("sliding_window", "sliding-window attention (\(w)) is not supported")
            }
        }
        var eos: [Int] = []
        if let e = j["eos_token_id"] {
            if let i = e.int { eos = [i] } else if let a = e.array { eos = a.compactMap { $0.int } }
        }
        let attnBias = (j["attention_bias"]?.bool ?? false) || arch == "Qwen2ForCausalLM"
        if j["mlp_bias"]?.bool == true { throw bad("mlp_bias", "MLP biases are not supported") }
        let eps = j["rms_norm_eps"]?.double ?? 1e-6
        return ModelConfig(
            architecture: arch, hiddenSize: hidden, intermediateSize: try int("intermediate_size"),
            numLayers: try int("num_hidden_layers"), numHeads: heads, numKVHeads: kv, headDim: headDim,
            vocabSize: try int("vocab_size"), rmsNormEps: Float(eps), ropeTheta: Float(theta ?? 10000),
            tieWordEmbeddings: j["tie_word_embeddings"]?.bool ?? false, attentionBias: attnBias,
            maxPositionEmbeddings: try optInt("max_position_embeddings") ?? 2048,
            bosTokenId: j["bos_token_id"]?.int, eosTokenIds: eos)
    }

    /// `config.json` for this model (HF field names).
    /// config.json as Hugging Face writes it; `torchDType` names the weights' dtype.
    public func toJSON(torchDType: String = "float32") -> JSON {
        var o: [(String, JSON)] = [
            ("architectures", .array([.string(architecture)])),
            ("model_type", .string(architecture == "Qwen2ForCausalLM" ? "qwen2" : architecture == "MistralForCausalLM" ? "mistral" : "llama")),
            ("hidden_size", .int(Int64(hiddenSize))), ("intermediate_size", .int(Int64(intermediateSize))),
            ("num_hidden_layers", .int(Int64(numLayers))), ("num_attention_heads", .int(Int64(numHeads))),
            ("num_key_value_heads", .int(Int64(numKVHeads))), ("head_dim", .int(Int64(headDim))),
            ("vocab_size", .int(Int64(vocabSize))), ("max_position_embeddings", .int(Int64(maxPositionEmbeddings))),
            ("rms_norm_eps", .double(Double(rmsNormEps))), ("rope_theta", .double(Double(ropeTheta))),
            ("hidden_act", .string("silu")), ("tie_word_embeddings", .bool(tieWordEmbeddings)),
            ("attention_bias", .bool(attentionBias)), ("mlp_bias", .bool(false)),
        ]
        o.append(("bos_token_id", bosTokenId.map { .int(Int64($0)) } ?? .null))
        o.append(("eos_token_id", eosTokenIds.count == 1 ? .int(Int64(eosTokenIds[0])) : .array(eosTokenIds.map { .int(Int64($0)) })))
        o.append(("torch_dtype", .string(torchDType)))
        return .object(o)
    }

    /// The HF tensor names and shapes this config implies, in a canonical order.
    public func expectedTensors() -> [(String, [Int])] {
        var out: [(String, [Int])] = [("model.embed_tokens.weight", [vocabSize, hiddenSize])]
        // Saturating: a config built from unvalidated sizes (an importer's metadata) gets shapes
        // that match no tensor (a shape error) instead of an overflow trap.
        func product(_ a: Int, _ b: Int) -> Int { let (p, o) = a.multipliedReportingOverflow(by: b); return o ? .max : p }
        let q = product(numHeads, headDim), kv = product(numKVHeads, headDim)
        for l in 0..<numLayers {
            let p = "model.layers.\(l)."
            out.append((p + "input_layernorm.weight", [hiddenSize]))
            out.append((p + "self_attn.q_proj.weight", [q, hiddenSize]))
            out.append((p + "self_attn.k_proj.weight", [kv, hiddenSize]))
            out.append((p + "self_attn.v_proj.weight", [kv, hiddenSize]))
            if attentionBias {
                out.append((p + "self_attn.q_proj.bias", [q])); out.append((p + "self_attn.k_proj.bias", [kv])); out.append((p + "self_attn.v_proj.bias", [kv]))
            }
            out.append((p + "self_attn.o_proj.weight", [hiddenSize, q]))
            out.append((p + "post_attention_layernorm.weight", [hiddenSize]))
            out.append((p + "mlp.gate_proj.weight", [intermediateSize, hiddenSize]))
            out.append((p + "mlp.up_proj.weight", [intermediateSize, hiddenSize]))
            out.append((p + "mlp.down_proj.weight", [hiddenSize, intermediateSize]))
        }
        out.append(("model.norm.weight", [hiddenSize]))
        if !tieWordEmbeddings { out.append(("lm_head.weight", [vocabSize, hiddenSize])) }
        return out
    }
}
