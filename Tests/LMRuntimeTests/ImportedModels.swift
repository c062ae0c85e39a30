import Foundation
import LMCore
import LMFormats

/// SmolLM2 imported once per test process from the shared GGUF into a temporary
/// HF folder (f32), shared by the tests that need it.
enum ImportedModels {
    static let smolFolder: String? = {
        guard let root = SharedData.locate() else { return nil }
        let dir = NSTemporaryDirectory() + "lmkit-test-smol-\(getpid())"
        do {
            let g = try GGUFFile(path: root + "/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
            let m = try GGUFImporter.load(g)
            try HFFolderWriter.write(folder: dir, config: m.config, tokenizer: m.tokenizer, tensors: m.tensors, dtype: .f32)
            atexit { if let d = ImportedModels.dirToRemove { try? FileManager.default.removeItem(atPath: d) } }
            return dir
        } catch {
            print("SmolLM2 import failed: \(error)")
            return nil
        }
    }()
    nonisolated(unsafe) static var dirToRemove: String? = NSTemporaryDirectory() + "lmkit-test-smol-\(getpid())"
}
