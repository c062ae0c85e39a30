import Foundation
import LMCore

/// Opens any supported input — HF folder, `.gguf`, llama2.c `.bin`, a whole-model `.lmpk` — as the same
/// in-memory model: config, tokenizer.json and lazily produced float tensors.
public enum ModelSource {
    public static func open(_ path: String, llama2cTokenizer: String? = nil) throws -> ImportedModel {
        let lower = path.lowercased()
        if lower.hasSuffix(".gguf") { return try GGUFImporter.load(GGUFFile(path: path)) }
        if lower.hasSuffix(".lmpk") { return try LMPKImporter.load(LMPKFile(path: path)) }
        if lower.hasSuffix(".bin") {
            var tok = llama2cTokenizer
            if tok == nil {
                let dir = (path as NSString).deletingLastPathComponent
                let probe = try Llama2cImporter.load(checkpoint: path, tokenizer: nil)
                let v = probe.config.vocabSize
                tok = ["tok\(v).bin", "tokenizer.bin", "tok\(v).model", "tokenizer.model"].map { dir + "/" + $0 }.first { FileManager.default.fileExists(atPath: $0) }
            }
            return try Llama2cImporter.load(checkpoint: path, tokenizer: tok)
        }
        let config = try ModelConfig.load(path: path)
        let store = try TensorStore(path: path)
        let tokPath = path + "/tokenizer.json"
        let tok: JSON? = FileManager.default.fileExists(atPath: tokPath) ? try JSON.parse(file: tokPath) : nil
        var plan: [PendingTensor] = []
        for (name, shape) in config.expectedTensors() {
            let t = try store.require(name)
            guard t.shape == shape else { throw ModelError.shapeMismatch(tensor: name, expected: shape, found: t.shape) }
            plan.append(PendingTensor(name: name, shape: shape, release: { t.releasePages() }) { try t.toFloat() })
        }
        return ImportedModel(config: config, tokenizer: tok, tensors: plan, source: store)
    }

    /// SHA-256 over the input's files (config.json and weights in order, or the single file).
    public static func digest(_ path: String) throws -> String {
        var isDir: ObjCBool = false
        FileManager.default.fileExists(atPath: path, isDirectory: &isDir)
        var files = [path]
        if isDir.boolValue {
            let names = try FileManager.default.contentsOfDirectory(atPath: path).filter { $0 == "config.json" || $0.hasSuffix(".safetensors") }.sorted()
            files = names.map { path + "/" + $0 }
        }
        var h = SHA256()
        for f in files { try sha256Update(&h, file: f) }
        return h.finalizeHex()
    }
}

/// A whole-model `.lmpk` (e.g. a pruned or quantized build) read back as float tensors, so
/// it can be pruned, quantized or re-quantized again: each tensor is its scheme's reference
/// decoding (pruned weights of a compressed N:M tensor decode to exactly 0). Rank files of a
/// tensor-parallel sharding are refused (pass the whole model); the CRCs and compressed masks
/// are checked before any tensor is used.
public enum LMPKImporter {
    public static func load(_ f: LMPKFile) throws -> ImportedModel {
        func fail(_ s: String) -> LMPKError { LMPKError(file: f.path, reason: s) }
        if let sh = f.shard {
            throw fail("a tensor-parallel rank file (rank \(sh.rank) of \(sh.worldSize)): pass the whole model's .lmpk it was cut from")
        }
        if let bad = f.firstCorruptTensor() { throw fail("tensor '\(bad)' fails its CRC-32 check: the file is corrupt, re-run lmconvert") }
        var plan: [PendingTensor] = []
        let expected = f.config.expectedTensors()
        let names = Set(expected.map { $0.0 })
        if let extra = f.tensors.first(where: { !names.contains($0.name) }) {
            throw fail("tensor '\(extra.name)' is not part of the model its config describes")
        }
        for (name, shape) in expected {
            guard let t = f[name] else { throw fail("tensor '\(name)' is missing") }
            guard t.shape == shape else { throw ModelError.shapeMismatch(tensor: name, expected: shape, found: t.shape) }
            try t.scheme.codec.validate(t.packed, name: name)
            // The closures hold the file (its mapping backs `t.sections`).
            plan.append(PendingTensor(name: name, shape: shape, release: { [f] in f.release(t) }) { [f] in
                _ = f
                let rows = t.rows, cols = t.cols
                var out = [Float](repeating: 0, count: rows * cols)
                out.withUnsafeMutableBufferPointer { o in
                    for r in 0..<rows { t.scheme.codec.decodeRow(row: r, cols: cols, scheme: t.scheme, sections: t.sections, into: o.baseAddress! + r * cols) }
                }
                return out
            })
        }
        return ImportedModel(config: f.config, tokenizer: try f.tokenizerJSON(), tensors: plan, source: f)
    }
}
