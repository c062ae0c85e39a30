import Foundation
import LMCore

/// `lmconvert export --format safetensors`: a whole-model `.lmpk` as a Hugging Face folder
/// (`model.safetensors`, `config.json`, `tokenizer.json`, `generation_config.json`) holding
/// each tensor's reference decoding in f32, f16 or bf16, under transformers' names and
/// layout (the `.lmpk` already stores HF names and the rotate-half q/k order). Pruned
/// weights decode to exactly 0 and stay 0 in every dtype.
///
/// One tensor in memory at a time (its float32 values and its converted bytes). The folder
/// is written as `OUT.tmp-PID` and renamed into place when complete, so an interrupted
/// export leaves no folder under the output name (an existing output is replaced only
/// with `force`, after the new one is complete).
public enum HFExport {
    public struct Summary: Sendable {
        /// Tensor names and shapes, in file order, and the SHA-256 of each one's bytes as written.
        public var tensors: [(name: String, shape: [Int], sha256: String)]
        public var bytes: Int
        public var seconds: Double
    }

    /// - Throws: `LMPKError` for a rank file (naming the manifest's source when its folder
    ///   has one), an output that exists without `force`, or a corrupt input.
    /// `maxShardBytes`: split `model.safetensors` into files of at most this many tensor bytes
    /// with an index (`HFFolderWriter`); nil writes one file.
    public static func export(lmpk path: String, to folder: String, dtype: DType, force: Bool = false, maxShardBytes: Int? = nil,
                              progress: ((Int) -> ProgressReporter)? = nil) throws -> Summary {
        let start = Date()
        let fm = FileManager.default
        let f = try LMPKFile(path: path)
        if let sh = f.shard {
            let dir = (path as NSString).deletingLastPathComponent
            let source = (try? ShardManifest.load(folder: dir.isEmpty ? "." : dir)).map { " ('\($0.source)' per its manifest)" } ?? ""
            throw LMPKError(file: path, reason: "a tensor-parallel rank file (rank \(sh.rank) of \(sh.worldSize)): export the whole model it was cut from\(source)")
        }
        if fm.fileExists(atPath: folder) && !force {
            throw LMPKError(file: folder, reason: "the output exists: choose another path or pass --force to replace it")
        }
        let model = try LMPKImporter.load(f)
        var meta: [(String, String)] = [("lmkit_source", (path as NSString).lastPathComponent)]
        if let p = f.header["provenance"] { meta.append(("lmkit_provenance", p.serialized())) }
        if let p = f.header["pruning"] { meta.append(("lmkit_pruning", p.serialized())) }
        let tmp = folder + ".tmp-\(getpid())"
        if fm.fileExists(atPath: tmp) { try fm.removeItem(atPath: tmp) }
        let digests: [String]
        do {
            digests = try HFFolderWriter.write(folder: tmp, config: f.config, tokenizer: model.tokenizer, tensors: model.tensors, dtype: dtype,
                                               metadata: meta, generationConfig: true, maxShardBytes: maxShardBytes,
                                               progress: progress?(model.tensors.count))
            if fm.fileExists(atPath: folder) {
                let aside = folder + ".old-\(getpid())"
                try fm.moveItem(atPath: folder, toPath: aside)
                try fm.moveItem(atPath: tmp, toPath: folder)
                try fm.removeItem(atPath: aside)
            } else {
                try fm.moveItem(atPath: tmp, toPath: folder)
            }
        } catch {
            try? fm.removeItem(atPath: tmp)
            throw error
        }
        let files = (try? fm.contentsOfDirectory(atPath: folder).filter { $0.hasSuffix(".safetensors") }) ?? []
        let bytes = files.reduce(0) { $0 + (((try? fm.attributesOfItem(atPath: folder + "/" + $1)[.size] as? Int) ?? 0) ?? 0) }
        return Summary(tensors: zip(model.tensors, digests).map { ($0.name, $0.shape, $1) }, bytes: bytes, seconds: Date().timeIntervalSince(start))
    }
}
