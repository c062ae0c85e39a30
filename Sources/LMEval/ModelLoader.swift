import Foundation
import LMCore
import LMFormats
import LMRuntime
import LMTokenizer

/// Opens a model and its tokenizer from an HF folder or an `.lmpk` file.
public enum ModelLoader {
    public static func load(_ path: String) throws -> (LlamaModel, Tokenizer) {
        let lower = path.lowercased()
        if lower.hasSuffix(".gguf") || lower.hasSuffix(".bin") {
            throw EvalError("\(path): convert it first: `lmconvert import -i \(path) -o FOLDER` or `lmconvert quantize -i \(path) -o FILE.lmpk`")
        }
        let model: LlamaModel, tok: Tokenizer
        if lower.hasSuffix(".lmpk") {
            let f = try LMPKFile(path: path)
            model = try LlamaModel.load(lmpk: f)
            tok = try Tokenizer(json: f.tokenizerJSON(), source: path + " (tokenizer)")
        } else {
            model = try LlamaModel.load(folder: path)
            tok = try Tokenizer(path: path)
        }
        guard tok.vocabSize <= model.config.vocabSize else {
            throw EvalError("\(path): tokenizer has \(tok.vocabSize) tokens but the model's vocabulary is \(model.config.vocabSize)")
        }
        return (model, tok)
    }
}
