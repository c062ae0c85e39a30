import Foundation
import LMCore
import LMFormats

/// Small deterministic Llama-family models for tests and examples, written as
/// Hugging Face folders. Same spec + seed → same bytes.
public struct SyntheticModelSpec: Sendable {
    public var hidden = 60
    public var intermediate = 37
    public var layers = 2
    public var heads = 6
    public var kvHeads = 2
    public var headDim = 10
    public var vocab = 300
    public var tied = false
    public var biases = false
    public var dtype: DType = .f32
    /// Split the weights over this many `model-0000k-of-0000n.safetensors` files.
    public var shards = 1
    public var ropeTheta: Float = 10000
    public var maxPositions = 512
    public var seed: UInt64 = 1
    public init() {}

    public var config: ModelConfig {
        ModelConfig(architecture: biases ? "Qwen2ForCausalLM" : "LlamaForCausalLM", hiddenSize: hidden, intermediateSize: intermediate,
                    numLayers: layers, numHeads: heads, numKVHeads: kvHeads, headDim: headDim, vocabSize: vocab,
                    rmsNormEps: 1e-5, ropeTheta: ropeTheta, tieWordEmbeddings: tied, attentionBias: biases,
                    maxPositionEmbeddings: maxPositions, bosTokenId: nil, eosTokenIds: [0])
    }
}

public enum SyntheticModel {
    /// Writes config.json, weights (sharded if asked) and a byte-level tokenizer.json.
    public static func write(_ spec: SyntheticModelSpec, to folder: String) throws {
        let config = spec.config
        var rng = SplitMix64(seed: spec.seed)
        var tensors: [(String, [Int], [Float])] = []
        for (name, shape) in config.expectedTensors() {
            let n = shape.reduce(1, *)
            var v = [Float](repeating: 0, count: n)
            if name.hasSuffix("norm.weight") {
                for i in 0..<n { v[i] = 1 + 0.2 * rng.nextSigned() }
            } else {
                let scale: Float = name.hasSuffix(".bias") ? 0.1 : 1 / Float(shape.last!).squareRoot()
                for i in 0..<n { v[i] = scale * rng.nextSigned() * 1.7 }
            }
            tensors.append((name, shape, v))
        }
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let groups = stride(from: 0, to: tensors.count, by: (tensors.count + spec.shards - 1) / spec.shards).map {
            Array(tensors[$0..<min($0 + (tensors.count + spec.shards - 1) / spec.shards, tensors.count)])
        }
        var weightMap: [(String, JSON)] = []
        for (k, g) in groups.enumerated() {
            let file = spec.shards == 1 ? "model.safetensors" : String(format: "model-%05d-of-%05d.safetensors", k + 1, groups.count)
            let w = try SafetensorsWriter(path: folder + "/" + file, entries: g.map { .init(name: $0.0, dtype: spec.dtype, shape: $0.1) },
                                          metadata: [("format", "pt")])
            for t in g { try w.write(floats: t.2, as: spec.dtype); weightMap.append((t.0, .string(file))) }
            try w.commit()
        }
        if spec.shards > 1 {
            let idx = JSON.object([("metadata", .object([("total_size", .int(0))])), ("weight_map", .object(weightMap))])
            try idx.serialized(pretty: true).write(toFile: folder + "/model.safetensors.index.json", atomically: true, encoding: .utf8)
        }
        try config.toJSON().serialized(pretty: true).write(toFile: folder + "/config.json", atomically: true, encoding: .utf8)
        try byteLevelTokenizer(vocab: spec.vocab).serialized().write(toFile: folder + "/tokenizer.json", atomically: true, encoding: .utf8)
    }

    /// A byte-level BPE with the 256 byte symbols, then merges of frequent English
    /// pairs until `vocab` tokens (id 0 is also `<|endoftext|>`, special).
    public static func byteLevelTokenizer(vocab: Int) -> JSON {
        var tokens: [String] = (0..<256).map { String(ByteLevelSymbols.scalar(UInt8($0))) }
        var merges: [String] = []
        let pairs = ["Ġ t", "h e", "Ġ a", "i n", "Ġt he", "e r", "o n", "Ġ s", "Ġ w", "r e", "a n", "Ġ o", "o u", "e n", "Ġ b", "Ġ c",
                     "i s", "Ġ the", "Ġ f", "a t", "o r", "e s", "Ġ m", "Ġ d", "e d", "i t", "Ġ p", "a r", "a l", "Ġ h", "l l", "Ġ l",
                     "Ġ in", "Ġ to", "in g", "Ġ n", "Ġ an", "Ġw as", "Ġ is", "Ġ g", "Ġ y", "o m", "l e", "Ġa nd", "Ġ e"]
        var known = Set(tokens)
        for m in pairs where tokens.count < vocab {
            let parts = m.split(separator: " ").map(String.init)
            guard parts.count == 2, known.contains(parts[0]), known.contains(parts[1]) else { continue }
            let t = parts[0] + parts[1]
            if known.insert(t).inserted { tokens.append(t); merges.append(m) }
        }
        var filler = 0
        while tokens.count < vocab { tokens.append("<extra_\(filler)>"); filler += 1 }
        return TokenizerJSON.byteLevel(tokens: tokens, types: nil, merges: merges, bos: nil, addBOS: false, digits: true)
    }
}

/// GPT-2's byte → printable-character table (duplicated from the tokenizer so this
/// module does not depend on it).
enum ByteLevelSymbols {
    static func scalar(_ b: UInt8) -> Unicode.Scalar {
        let bs: [Int] = Array(33...126) + Array(161...172) + Array(174...255)
        if bs.contains(Int(b)) { return Unicode.Scalar(UInt32(b))! }
        var n = 0
        for x in 0..<256 where !bs.contains(x) { if x == Int(b) { return Unicode.Scalar(UInt32(256 + n))! }; n += 1 }
        fatalError("unreachable")
    }
}

extension SyntheticModel {
    /// Writes a large model one tensor at a time (memory: one tensor), for
    /// streaming/peak-memory checks. Values are cheap deterministic noise.
    public static func writeStreaming(_ spec: SyntheticModelSpec, to folder: String) throws {
        let config = spec.config
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let tensors = config.expectedTensors()
        let w = try SafetensorsWriter(path: folder + "/model.safetensors", entries: tensors.map { .init(name: $0.0, dtype: .f32, shape: $0.1) })
        var rng = SplitMix64(seed: spec.seed)
        for (name, shape) in tensors {
            let n = shape.reduce(1, *)
            var v = [Float](repeating: 0, count: n)
            let isNorm = name.hasSuffix("norm.weight")
            let scale: Float = 1 / Float(shape.last!).squareRoot()
            var i = 0
            while i < n {
                let r = rng.next()
                for k in 0..<4 where i + k < n {
                    let u = Float(Int16(truncatingIfNeeded: r >> (16 * UInt64(k)))) / 32768
                    v[i + k] = isNorm ? 1 + 0.1 * u : scale * u
                }
                i += 4
            }
            try w.write(floats: v, as: .f32)
        }
        try w.commit()
        try config.toJSON().serialized(pretty: true).write(toFile: folder + "/config.json", atomically: true, encoding: .utf8)
        try byteLevelTokenizer(vocab: spec.vocab).serialized().write(toFile: folder + "/tokenizer.json", atomically: true, encoding: .utf8)
    }
}
