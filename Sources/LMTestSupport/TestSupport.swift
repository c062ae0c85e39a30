import Foundation
import LMCore
import LMFormats
import Testing

/// The shared data folder for golden tests. In CI a missing folder is a test
/// failure; elsewhere the test is skipped with a visible message.
public func sharedRoot(_ what: String, sourceLocation: SourceLocation = #_sourceLocation) -> String? {
    if let r = SharedData.locate() { return r }
    if SharedData.isCI {
        Issue.record("shared data folder not found (set \(SharedData.environmentKey)); real-model test '\(what)' must run in CI", sourceLocation: sourceLocation)
    } else {
        print("SKIPPED \(what): shared data folder not found (set \(SharedData.environmentKey) or place it at ../shared)")
    }
    return nil
}

/// SmolLM2 imported once per test process from the shared GGUF into a temporary
/// f32 HF folder, removed at exit.
public enum ImportedSmolLM2 {
    public static let folder: String? = {
        guard let root = SharedData.locate() else { return nil }
        let dir = NSTemporaryDirectory() + "lmkit-test-smol-\(getpid())"
        do {
            let m = try GGUFImporter.load(GGUFFile(path: root + "/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"))
            try HFFolderWriter.write(folder: dir, config: m.config, tokenizer: m.tokenizer, tensors: m.tensors, dtype: .f32)
            atexit { try? FileManager.default.removeItem(atPath: NSTemporaryDirectory() + "lmkit-test-smol-\(getpid())") }
            return dir
        } catch {
            Issue.record("SmolLM2 import failed: \(error)")
            return nil
        }
    }()
}

extension Array where Element == [UInt8] {
    /// Calls `body` with raw views of every element (e.g. a tensor's sections).
    public func withRawPointers<R>(_ body: ([UnsafeRawBufferPointer]) -> R) -> R {
        var views: [UnsafeRawBufferPointer] = []
        func go(_ i: Int) -> R {
            if i == count { return body(views) }
            return self[i].withUnsafeBytes { views.append($0); return go(i + 1) }
        }
        return go(0)
    }
}
