import Foundation
import LMCore

/// Opens any supported input — HF folder, `.gguf`, llama2.c `.bin` — as the same
/// in-memory model: config, tokenizer.json and lazily produced float tensors.
public enum ModelSource {
    public static func open(_ path: String, llama2cTokenizer: String? = nil) throws -> ImportedModel {
        let lower = path.lowercased()
        if lower.hasSuffix(".gguf") { return try GGUFImporter.load(GGUFFile(path: path)) }
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
