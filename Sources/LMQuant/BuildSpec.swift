import Foundation
import LMCore
import LMFormats

/// Everything that decides an `.lmpk`'s bytes: the source and the recipe options.
///
/// `lmconvert quantize` and the gate's recipes both build through this one type, so
/// the same options give the same bytes either way, and its canonical form
/// (`canonical()`: resolved scheme names, defaults filled in) keys the gate's caches
/// and is recorded as the file's provenance. Later capabilities (method, calibration,
/// pruning, sharding, KV cache) add fields here.
public struct BuildSpec: Sendable, Equatable {
    /// HF folder, `.gguf` or llama2.c `.bin`.
    public var source: String
    /// Default scheme as written (`int4`, `int4-g64`, `int8`, …).
    public var scheme: String
    /// Group size for schemes written without one (`--group-size`): int4/int4s and int8.
    public var groupSize: Int?
    public var clip: ClipMethod
    /// `REGEX=SCHEME`, in order; int4/int4s overrides without a group take `groupSize`.
    public var overrides: [String]
    /// Tokenizer for llama2.c input.
    public var tokenizer: String?
    /// Tensor-parallel sharding of the result (`lmconvert shard`; gate recipes' `shard`).
    public var shard: ShardOptions?

    public init(source: String, scheme: String = "int4-g32", groupSize: Int? = nil, clip: ClipMethod = .minmax,
                overrides: [String] = [], tokenizer: String? = nil) {
        self.source = source; self.scheme = scheme; self.groupSize = groupSize; self.clip = clip
        self.overrides = overrides; self.tokenizer = tokenizer
    }

    /// The recipe these options describe. The only place options become a recipe.
    /// - Throws: `BuildSpecError` naming the option (`scheme`, `group_size`, `overrides[i]`).
    public func recipe() throws -> Recipe {
        let s: QuantScheme
        do { s = try QuantScheme(parsing: scheme, defaultGroup: groupSize) } catch { throw BuildSpecError(option: "scheme", reason: "\(error)") }
        if let g = groupSize, scheme.contains("-g") {
            throw BuildSpecError(option: "group_size", reason: "group size \(g) conflicts with the group in scheme \(scheme)")
        }
        var r = Recipe(defaultScheme: s, clip: clip)
        for (i, o) in overrides.enumerated() {
            do { r.overrides.append(try Recipe.parseOverride(o, defaultGroup: groupSize)) } catch { throw BuildSpecError(option: "overrides[\(i)]", reason: "\(error)") }
        }
        return r
    }

    /// Canonical JSON of the recipe (not the source path): resolved scheme names, so
    /// `int4` + group 64 and `int4-g64` are the same build. Keys in a fixed order.
    public func canonical() throws -> JSON {
        let r = try recipe()
        return .object([
            ("scheme", .string(r.defaultScheme.name)),
            ("clip", .string(r.clip.rawValue)),
            ("overrides", .array(r.overrides.map { .string($0.pattern + "=" + $0.scheme.name) })),
            ("spec_version", .int(1)),
        ] + (shard.map { [("shard", .object([("tp", .int(Int64($0.tp))), ("vocab_parallel", .bool($0.vocabParallel))]))] } ?? []))
    }

    /// The canonical form as one string (for cache keys).
    public func canonicalString() throws -> String { try canonical().serialized() }

    /// Builds the `.lmpk` at `output`, atomically (no file is left on failure).
    /// Provenance: the tool, the canonical build, the source's file name and digest.
    /// `progress` makes a reporter given the tensor count.
    public func build(output: String, tool: String = "lmkit 0.1.0", progress: ((Int) -> ProgressReporter)? = nil) throws -> QuantizeSummary {
        let r = try recipe()
        let model = try ModelSource.open(source, llama2cTokenizer: tokenizer)
        let provenance = JSON.object([
            ("tool", .string(tool)),
            ("build", try canonical()),
            ("source", .string((source as NSString).lastPathComponent)),
            ("source_sha256", .string(try ModelSource.digest(source))),
        ])
        return try Quantizer.run(model: model, recipe: r, overrideStrings: r.overrides.map { $0.pattern + "=" + $0.scheme.name },
                                 output: output, provenance: provenance, progress: progress?(model.tensors.count))
    }
}

/// How a build is split for tensor parallelism (formats/lmpk.md, "Tensor-parallel shards").
public struct ShardOptions: Sendable, Equatable {
    /// World size (`--tp`).
    public var tp: Int
    /// Split the embedding by vocabulary rows (`--vocab-parallel`).
    public var vocabParallel: Bool
    public init(tp: Int, vocabParallel: Bool = false) { self.tp = tp; self.vocabParallel = vocabParallel }
}

/// An invalid build option; `option` names it as the gate file and the CLI know it.
public struct BuildSpecError: Error, CustomStringConvertible {
    public let option: String
    public let reason: String
    public var description: String { reason }
}
