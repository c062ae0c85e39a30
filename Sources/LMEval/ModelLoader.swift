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

    /// Opens a tensor-parallel shard folder: every rank in this process (one thread
    /// group each, `threads` split between them). The tokenizer is rank 0's.
    public static func load(shards folder: String, threads: Int, kernels: KernelSet) throws -> (ShardedModel, Tokenizer) {
        try tokenizer(for: ShardedModel.load(folder: folder, threads: threads, kernels: kernels), folder)
    }

    /// Rank `communicator.rank` of a shard folder in this process (one process per rank,
    /// e.g. under MPI); the tokenizer is that rank's copy.
    public static func load(shards folder: String, communicator: any Communicator, threads: Int, kernels: KernelSet) throws -> (ShardedModel, Tokenizer) {
        try tokenizer(for: ShardedModel.load(folder: folder, communicator: communicator, threads: threads, kernels: kernels), folder)
    }

    static func tokenizer(for model: ShardedModel, _ folder: String) throws -> (ShardedModel, Tokenizer) {
        let f = model.files[0]
        let tok = try Tokenizer(json: f.tokenizerJSON(), source: f.path + " (tokenizer)")
        guard tok.vocabSize <= model.config.vocabSize else {
            throw EvalError("\(folder): tokenizer has \(tok.vocabSize) tokens but the model's vocabulary is \(model.config.vocabSize)")
        }
        return (model, tok)
    }
}
