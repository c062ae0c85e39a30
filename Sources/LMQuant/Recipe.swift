import Foundation
import LMCore
import LMFormats
import LMTokenizer

/// Which scheme each tensor gets.
///
/// Rules, in order: vectors (norms, biases) stay `f32`; the token embedding and an
/// untied output head get `int8` (per channel) when the default scheme is quantized,
/// else the default; a tied embedding is one tensor serving both roles, so it follows
/// the embedding rule; everything else gets the default. Then `--override
/// REGEX=SCHEME` rules apply in order (last match wins); each must match a tensor.
public struct Recipe: Sendable {
    public var defaultScheme: QuantScheme
    public var clip: ClipMethod
    public var overrides: [(pattern: String, scheme: QuantScheme)]
    public var embeddingScheme: QuantScheme?
    /// Compressed N:M storage of the seven decoder matrices (`lmconvert prune --pattern`,
    /// `--storage compressed`): their schemes, after the overrides, get `+N:M` (value
    /// families `NMCodec.valueFamilies`; others stay dense).
    public var compressed: QuantScheme.Sparsity?

    public init(defaultScheme: QuantScheme, clip: ClipMethod = .minmax, overrides: [(pattern: String, scheme: QuantScheme)] = []) {
        self.defaultScheme = defaultScheme; self.clip = clip; self.overrides = overrides
    }

    /// Parses `REGEX=SCHEME`.
    public static func parseOverride(_ s: String, defaultGroup: Int?) throws -> (pattern: String, scheme: QuantScheme) {
        guard let eq = s.lastIndex(of: "=") else { throw RecipeError("override '\(s)' is not REGEX=SCHEME") }
        let pattern = String(s[..<eq])
        do { _ = try NSRegularExpression(pattern: pattern) } catch { throw RecipeError("override '\(s)': '\(pattern)' is not a valid regular expression") }
        // --group-size fills in group-wise overrides (int4, int4s, int3, int2) that name no group; `int8` stays per channel.
        let name = String(s[s.index(after: eq)...])
        let plain = try QuantScheme(parsing: name)
        let scheme = plain.kind != .int8 && plain.groupSize > 0 && !name.contains("-g") ? try QuantScheme(parsing: name, defaultGroup: defaultGroup) : plain
        return (pattern, scheme)
    }

    /// The scheme per tensor, or an error naming the tensor / pattern.
    public func assign(_ tensors: [(name: String, shape: [Int])]) throws -> [QuantScheme] {
        // The embedding (and an untied head) is never pruned: a compressed default stays dense there.
        let emb = embeddingScheme ?? (defaultScheme.isQuantized ? QuantScheme(kind: .int8) : defaultScheme.dense)
        var out: [QuantScheme] = tensors.map { t in
            if t.shape.count == 1 { return QuantScheme(kind: .f32) }
            if t.name == "model.embed_tokens.weight" || t.name == "lm_head.weight" { return emb }
            return defaultScheme
        }
        for (pattern, scheme) in overrides {
            let re = try NSRegularExpression(pattern: pattern)
            var matched = false
            for (i, t) in tensors.enumerated() where re.firstMatch(in: t.name, range: NSRange(t.name.startIndex..., in: t.name)) != nil {
                matched = true
                if t.shape.count == 1 && scheme.isQuantized {
                    throw RecipeError("override '\(pattern)=\(scheme.name)': tensor '\(t.name)' is a vector (norm or bias); vectors stay f32, f16 or bf16")
                }
                out[i] = scheme
            }
            if !matched { throw RecipeError("override '\(pattern)=\(scheme.name)' matches no tensor (names look like 'model.layers.0.mlp.down_proj.weight')") }
        }
        if let c = compressed {
            for (i, t) in tensors.enumerated() where t.shape.count == 2 && Recipe.isDecoderMatrix(t.name)
                && out[i].sparsity == nil && NMCodec.valueFamilies.contains(out[i].kind.rawValue) {
                out[i] = out[i].compressed(c)
            }
        }
        for (i, t) in tensors.enumerated() where out[i].sparsity != nil && t.shape.count != 2 {
            throw RecipeError("tensor '\(t.name)' is a vector; it cannot be stored compressed (\(out[i].name))")
        }
        return out
    }

    /// True for the seven matrices of a decoder layer (`model.layers.L.self_attn.{q,k,v,o}_proj.weight`,
    /// `model.layers.L.mlp.{gate,up,down}_proj.weight`), the ones pruning touches.
    public static func isDecoderMatrix(_ name: String) -> Bool {
        guard let l = LayerwiseQuantizer.layerIndex(name) else { return false }
        return LayerMatrix(rawValue: String(name.dropFirst("model.layers.\(l).".count))) != nil
    }

    public func json(overrideStrings: [String]) -> JSON {
        .object([("default", .string(defaultScheme.name)), ("clip", .string(clip.rawValue)),
                 ("overrides", .array(overrideStrings.map { .string($0) }))])
    }
}

public struct RecipeError: Error, CustomStringConvertible {
    public let description: String
    public init(_ s: String) { description = s }
}

/// Summary of a quantization run.
public struct QuantizeSummary: Sendable {
    public var tensors: Int
    public var parameters: Int
    public var fileBytes: Int
    public var tensorBytes: Int
    public var seconds: Double
    public var peakRSSBytes: Int
    /// What a calibrated method measured (nil for round-to-nearest).
    public var calibration: CalibrationReport? = nil
    /// What the bit allocator chose (nil without `--target-bpw`).
    public var allocation: Allocation? = nil
    public var bitsPerWeight: Double { Double(tensorBytes * 8) / Double(max(parameters, 1)) }
}

/// Model → `.lmpk`, one tensor at a time.
public enum Quantizer {
    /// Quantizes `model` into `output` with `recipe`. Checks (schemes, overrides,
    /// NaN/Inf) fail with the tensor's name; on any failure no output file is left.
    /// `prune` (magnitude only: no calibration here) zeroes each decoder matrix's smallest
    /// weights before it is quantized.
    public static func run(model: ImportedModel, recipe: Recipe, overrideStrings: [String], output: String,
                           provenance: JSON, prune: PruneOptions? = nil, progress: ProgressReporter? = nil) throws -> QuantizeSummary {
        let start = Date()
        guard let tok = model.tokenizer else {
            throw RecipeError("the input has no tokenizer (tokenizer.json); an .lmpk embeds it to be self-contained")
        }
        // Whatever the runtime would refuse is refused here, before a byte is written.
        do { _ = try Tokenizer(json: tok, source: "tokenizer.json") } catch {
            throw RecipeError("the input's tokenizer cannot be used: \(error)")
        }
        let schemes = try recipe.assign(model.tensors.map { ($0.name, $0.shape) })
        let specs = zip(model.tensors, schemes).map { LMPKTensorSpec(name: $0.name, shape: $0.shape, scheme: $1) }
        if let pr = prune, pr.method != .magnitude { throw RecipeError("pruning by \(pr.method.rawValue) needs calibration (--calib)") }
        let layers = model.config.numLayers
        let w = try LMPKWriter(path: output, config: model.config, tokenizerJSON: Array(tok.serialized().utf8),
                               meta: [("recipe", recipe.json(overrideStrings: overrideStrings)), ("provenance", provenance),
                                      ("tensor_parallel", .object([("world_size", .int(1)), ("rank", .int(0))]))]
                                   + (prune.map { [Pruner.meta($0, tensors: model.tensors.map { ($0.name, $0.shape) }, layers: layers)] } ?? []),
                               tensors: specs)
        var params = 0, tbytes = 0
        do {
            for (i, (t, s)) in zip(model.tensors, schemes).enumerated() {
                let q: QuantizedTensor, n: Int
                if let pr = prune, t.shape.count == 2, Pruner.role(t.name, layers: layers) != nil {
                    let v = try LayerwiseQuantizer.finite(t)
                    let (pruned, keep) = try Pruner.prune(weights: v, rows: t.shape[0], cols: t.shape[1], options: pr, tensor: t.name)
                    try Pruner.checkSparse(pruned, rows: t.shape[0], cols: t.shape[1], scheme: s, tensor: t.name)
                    q = RoundToNearest.quantize(pruned, rows: t.shape[0], cols: t.shape[1], scheme: s, clip: recipe.clip, keep: keep)
                    try RoundToNearest.checkRepresentable(q, values: pruned, tensor: t.name)
                    try Pruner.checkZeros(s.isQuantized || s.kind != .f32 ? q.dequantized() : pruned, keep: keep, scheme: s, tensor: t.name)
                    n = v.count
                } else {
                    (q, n) = try LayerwiseQuantizer.rtn(t, s, recipe.clip)
                }
                try w.write(sections: q.sections.map { $0.bytes })
                t.release()
                params += n
                tbytes += q.sections.reduce(0) { $0 + $1.bytes.count }
                let mbps = Double(params * 4) / 1_048_576 / max(Date().timeIntervalSince(start), 1e-9)
                progress?.update(i + 1, extra: String(format: "%.0f MB/s (f32 in) %@", mbps, t.name))
            }
            try w.commit()
        } catch {
            w.abort()
            throw error
        }
        let size = (try? FileManager.default.attributesOfItem(atPath: output)[.size] as? Int) ?? 0
        return QuantizeSummary(tensors: specs.count, parameters: params, fileBytes: size, tensorBytes: tbytes,
                               seconds: Date().timeIntervalSince(start), peakRSSBytes: peakResidentBytes())
    }
}
