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
        let f = try ExportSupport.open(path, output: folder, force: force)
        let model = try LMPKImporter.load(f)
        let digests = try ExportSupport.writeFolder(folder) { tmp in
            try HFFolderWriter.write(folder: tmp, config: f.config, tokenizer: model.tokenizer, tensors: model.tensors, dtype: dtype,
                                     metadata: ExportSupport.safetensorsMetadata(f), generationConfig: true, maxShardBytes: maxShardBytes,
                                     progress: progress?(model.tensors.count))
        }
        let bytes = ExportSupport.safetensorsBytes(folder)
        return Summary(tensors: zip(model.tensors, digests).map { ($0.name, $0.shape, $1) }, bytes: bytes, seconds: Date().timeIntervalSince(start))
    }
}

/// What every exporter does first and last: open a whole-model `.lmpk`, record its provenance,
/// and write its output complete-or-absent.
enum ExportSupport {
    /// Opens the `.lmpk` to export.
    /// - Throws: `LMPKError` for a tensor-parallel rank file (naming the source its shard
    ///   folder's manifest records) or an existing `output` without `force`.
    static func open(_ path: String, output: String, force: Bool) throws -> LMPKFile {
        let f = try LMPKFile(path: path)
        if let sh = f.shard {
            let dir = (path as NSString).deletingLastPathComponent
            let source = (try? ShardManifest.load(folder: dir.isEmpty ? "." : dir)).map { " ('\($0.source)' per its manifest)" } ?? ""
            throw LMPKError(file: path, reason: "a tensor-parallel rank file (rank \(sh.rank) of \(sh.worldSize)): export the whole model it was cut from\(source)")
        }
        if FileManager.default.fileExists(atPath: output) && !force {
            throw LMPKError(file: output, reason: "the output exists: choose another path or pass --force to replace it")
        }
        return f
    }

    /// `__metadata__` entries: the source file name, its provenance and pruning records as JSON.
    static func safetensorsMetadata(_ f: LMPKFile) -> [(String, String)] {
        var meta: [(String, String)] = [("lmkit_source", (f.path as NSString).lastPathComponent)]
        if let p = f.header["provenance"] { meta.append(("lmkit_provenance", p.serialized())) }
        if let p = f.header["pruning"] { meta.append(("lmkit_pruning", p.serialized())) }
        return meta
    }

    /// Runs `body` on `folder.tmp-PID` and renames it into place; an existing `folder` is
    /// moved aside and removed only after the new one is complete. On error nothing is left.
    static func writeFolder<T>(_ folder: String, _ body: (String) throws -> T) throws -> T {
        let fm = FileManager.default
        let tmp = folder + ".tmp-\(getpid())"
        if fm.fileExists(atPath: tmp) { try fm.removeItem(atPath: tmp) }
        do {
            let result = try body(tmp)
            if fm.fileExists(atPath: folder) {
                let aside = folder + ".old-\(getpid())"
                try fm.moveItem(atPath: folder, toPath: aside)
                try fm.moveItem(atPath: tmp, toPath: folder)
                try fm.removeItem(atPath: aside)
            } else {
                try fm.moveItem(atPath: tmp, toPath: folder)
            }
            return result
        } catch {
            try? fm.removeItem(atPath: tmp)
            throw error
        }
    }

    /// Bytes of the `.safetensors` files in `folder`.
    static func safetensorsBytes(_ folder: String) -> Int {
        let fm = FileManager.default
        let files = (try? fm.contentsOfDirectory(atPath: folder).filter { $0.hasSuffix(".safetensors") }) ?? []
        return files.reduce(0) { $0 + ((try? fm.attributesOfItem(atPath: folder + "/" + $1)[.size] as? Int) ?? 0) }
    }
}
