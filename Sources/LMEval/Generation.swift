import Foundation
import LMCore
import LMRuntime
import LMTokenizer

/// Sampling settings. `temperature == 0` is greedy (argmax, lowest id on ties).
public struct SamplingOptions: Sendable {
    public var temperature: Float
    public var topP: Float
    public var seed: UInt64
    public init(temperature: Float = 0, topP: Float = 1, seed: UInt64 = 0) { self.temperature = temperature; self.topP = topP; self.seed = seed }
}

/// Picks the next token from a logits row.
public struct Sampler {
    let options: SamplingOptions
    var rng: SplitMix64
    public init(_ o: SamplingOptions) { options = o; rng = SplitMix64(seed: o.seed) }

    public mutating func sample(_ logits: [Float]) -> Int {
        if options.temperature <= 0 {
            var best = 0
            for i in 1..<logits.count where logits[i] > logits[best] { best = i }
            return best
        }
        let m = logits.max()!
        var probs = logits.enumerated().map { (i: $0.offset, p: Double(exp(($0.element - m) / options.temperature))) }
        let total = probs.reduce(0) { $0 + $1.p }
        probs.sort { $0.p != $1.p ? $0.p > $1.p : $0.i < $1.i }
        var keep = probs.count
        if options.topP < 1 {
            var acc = 0.0
            for (k, e) in probs.enumerated() { acc += e.p / total; if acc >= Double(options.topP) { keep = k + 1; break } }
        }
        let kept = probs.prefix(keep)
        let mass = kept.reduce(0) { $0 + $1.p }
        let u = Double(rng.next() >> 11) / Double(1 << 53) * mass
        var acc = 0.0
        for e in kept { acc += e.p; if u < acc { return e.i } }
        return kept.last!.i
    }
}

/// The outcome of a generation run.
public struct GenerationResult: Sendable {
    public var promptTokens: [Int]
    public var generated: [Int]
    public var prefillSeconds: Double
    public var decodeSeconds: Double
    public var decodeTokensPerSecond: Double { Double(max(generated.count - 1, 0)) / max(decodeSeconds, 1e-9) }
    public var prefillTokensPerSecond: Double { Double(promptTokens.count) / max(prefillSeconds, 1e-9) }
}

public enum Generation {
    /// Generates up to `maxTokens` tokens after `prompt` (stopping at an EOS id when
    /// `stopAtEOS`). `onToken` is called with each new id (for streaming).
    public static func run(model: any CausalLM, prompt: [Int], maxTokens: Int, sampling: SamplingOptions,
                           eos: Set<Int>, stopAtEOS: Bool = true, kvCache: KVCacheOptions = KVCacheOptions(), context: ComputeContext, onToken: (Int) -> Void = { _ in }) throws -> GenerationResult {
        guard !prompt.isEmpty else { throw EvalError("empty prompt and the tokenizer adds no BOS: give --prompt text") }
        let cap = prompt.count + maxTokens
        guard cap <= model.config.maxPositionEmbeddings else {
            throw EvalError("prompt (\(prompt.count)) + --max-tokens (\(maxTokens)) exceeds the model's \(model.config.maxPositionEmbeddings) positions")
        }
        var sampler = Sampler(sampling)
        let cache = try model.makeCache(capacity: cap, sequences: 1, options: kvCache)
        guard cache.blocksNeeded(positions: cap) <= cache.blocks else {
            throw EvalError("KV cache too small: prompt + --max-tokens = \(cap) tokens, the pool holds \(cache.tokenCapacity) (\(cache.options.schemeDescription)); raise --kv-cache-size or --cache-max-entry-count, or lower --max-tokens")
        }
        let t0 = Date()
        var logits = try model.forward(prompt, cache: cache, logits: .last, context: context)
        let t1 = Date()
        var out: [Int] = []
        while out.count < maxTokens {
            let next = sampler.sample(logits)
            out.append(next)
            onToken(next)
            if stopAtEOS && eos.contains(next) { break }
            if out.count == maxTokens { break }
            logits = try model.forward([next], cache: cache, logits: .last, context: context)
        }
        return GenerationResult(promptTokens: prompt, generated: out, prefillSeconds: t1.timeIntervalSince(t0), decodeSeconds: Date().timeIntervalSince(t1))
    }
}
