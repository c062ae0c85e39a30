import Foundation
import LMCore

/// A tensor to be written by `HFFolderWriter`: its HF name, shape and a producer
/// that materialises its float values only when it is written (streaming).
public struct PendingTensor {
    public let name: String
    public let shape: [Int]
    public let produce: () throws -> [Float]
    /// Releases the source pages this tensor was read from (after `produce`).
    public let release: () -> Void
    public init(name: String, shape: [Int], release: @escaping () -> Void = {}, produce: @escaping () throws -> [Float]) {
        self.name = name; self.shape = shape; self.produce = produce; self.release = release
    }
}

/// Writes a Hugging Face model folder (`model.safetensors`, `config.json`,
/// `tokenizer.json`), one tensor in memory at a time. Each file is atomic.
public enum HFFolderWriter {
    /// Returns each tensor's SHA-256 of the bytes written (lowercase hex), in `tensors` order.
    /// `config.json` records `torch_dtype` as `dtype`; with `generationConfig`, a
    /// `generation_config.json` holds the config's BOS/EOS ids.
    /// `maxShardBytes`: when the tensors' bytes exceed it, they are split in file order into
    /// `model-0000i-of-0000n.safetensors` files of at most that many tensor bytes (a larger
    /// tensor gets a file of its own) plus `model.safetensors.index.json` (`total_size`,
    /// `weight_map`), as transformers' `save_pretrained(max_shard_size:)` does; otherwise one
    /// `model.safetensors`.
    @discardableResult
    public static func write(folder: String, config: ModelConfig, tokenizer: JSON?, tensors: [PendingTensor],
                             dtype: DType, metadata: [(String, String)] = [], generationConfig: Bool = false,
                             maxShardBytes: Int? = nil, progress: ProgressReporter? = nil) throws -> [String] {
        guard [.f32, .f16, .bf16].contains(dtype) else { throw ModelError.unsupportedDType(tensor: "*", dtype: dtype.rawValue, expected: "f32, f16 or bf16") }
        let raw = tensors.map { t in
            RawTensor(name: t.name, dtype: dtype, shape: t.shape, release: t.release) {
                let v = try t.produce()
                guard v.count == t.shape.reduce(1, *) else { throw ModelError.shapeMismatch(tensor: t.name, expected: t.shape, found: [v.count]) }
                if let bad = v.firstIndex(where: { !$0.isFinite }) {
                    throw ModelError.nonFinite(tensor: t.name, index: bad, value: v[bad])
                }
                return floatBytes(v, as: dtype)
            }
        }
        let torchDType = dtype == .f16 ? "float16" : dtype == .bf16 ? "bfloat16" : "float32"
        return try writeRaw(folder: folder, config: config, configJSON: config.toJSON(torchDType: torchDType), tokenizer: tokenizer, tensors: raw,
                            metadata: metadata, generationConfig: generationConfig, maxShardBytes: maxShardBytes, progress: progress)
    }

    /// A tensor of any dtype for `writeRaw`, produced as its little-endian bytes when written.
    public struct RawTensor {
        public let name: String
        public let dtype: DType
        public let shape: [Int]
        public let release: () -> Void
        public let produce: () throws -> [UInt8]
        public init(name: String, dtype: DType, shape: [Int], release: @escaping () -> Void = {}, produce: @escaping () throws -> [UInt8]) {
            self.name = name; self.dtype = dtype; self.shape = shape; self.release = release; self.produce = produce
        }
    }

    /// `values` as `dtype` (f32, f16 or bf16; round to nearest even) bytes.
    public static func floatBytes(_ values: [Float], as dtype: DType) -> [UInt8] {
        switch dtype {
        case .f16: return values.map { floatToHalf($0) }.withUnsafeBytes { Array($0) }
        case .bf16: return values.map { floatToBF16($0) }.withUnsafeBytes { Array($0) }
        default: return values.withUnsafeBytes { Array($0) }
        }
    }

    /// The folder from tensors of any dtypes: the same files, sharding and index as `write`,
    /// with `configJSON` as `config.json` (the model's config plus whatever the format adds).
    @discardableResult
    public static func writeRaw(folder: String, config: ModelConfig, configJSON: JSON, tokenizer: JSON?, tensors: [RawTensor],
                                metadata: [(String, String)] = [], generationConfig: Bool = false,
                                maxShardBytes: Int? = nil, progress: ProgressReporter? = nil) throws -> [String] {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let sizes = tensors.map { $0.shape.reduce(1, *) * $0.dtype.size }
        let total = sizes.reduce(0, +)
        // Consecutive runs of tensors, each within the shard size.
        var shards: [Range<Int>] = []
        if let cap = maxShardBytes, total > cap {
            var lo = 0, bytes = 0
            for (i, b) in sizes.enumerated() {
                if i > lo && bytes + b > cap { shards.append(lo..<i); lo = i; bytes = 0 }
                bytes += b
            }
            shards.append(lo..<tensors.count)
        } else {
            shards = [0..<tensors.count]
        }
        func fileName(_ k: Int) -> String {
            shards.count == 1 ? "model.safetensors" : String(format: "model-%05d-of-%05d.safetensors", k + 1, shards.count)
        }
        var digests: [String] = []
        for (k, range) in shards.enumerated() {
            let entries = range.map { SafetensorsWriter.Entry(name: tensors[$0].name, dtype: tensors[$0].dtype, shape: tensors[$0].shape) }
            let w = try SafetensorsWriter(path: folder + "/" + fileName(k), entries: entries, metadata: [("format", "pt")] + metadata)
            for i in range {
                let t = tensors[i]
                let bytes = try t.produce()
                guard bytes.count == sizes[i] else { throw ModelError.shapeMismatch(tensor: t.name, expected: t.shape, found: [bytes.count / max(1, t.dtype.size)]) }
                try bytes.withUnsafeBytes { try w.write($0) }
                digests.append(SHA256.hex(bytes))
                t.release()
                progress?.update(i + 1)
            }
            try w.commit()
        }
        if shards.count > 1 {
            var map: [(String, JSON)] = []
            for (k, range) in shards.enumerated() { for i in range { map.append((tensors[i].name, .string(fileName(k)))) } }
            let index = JSON.object([("metadata", .object([("total_size", .int(Int64(total)))])), ("weight_map", .object(map))])
            try writeText(index.serialized(pretty: true) + "\n", to: folder + "/model.safetensors.index.json")
        }
        try writeText(configJSON.serialized(pretty: true) + "\n", to: folder + "/config.json")
        if let tokenizer { try writeText(tokenizer.serialized(pretty: true) + "\n", to: folder + "/tokenizer.json") }
        if generationConfig {
            var g: [(String, JSON)] = [("_from_model_config", .bool(true))]
            if let b = config.bosTokenId { g.append(("bos_token_id", .int(Int64(b)))) }
            if !config.eosTokenIds.isEmpty {
                g.append(("eos_token_id", config.eosTokenIds.count == 1 ? .int(Int64(config.eosTokenIds[0])) : .array(config.eosTokenIds.map { .int(Int64($0)) })))
            }
            try writeText(JSON.object(g).serialized(pretty: true) + "\n", to: folder + "/generation_config.json")
        }
        return digests
    }

    static func writeText(_ s: String, to path: String) throws {
        let w = try AtomicFileWriter(path: path)
        try w.write(s)
        try w.commit()
    }
}
