import Foundation
import LMCore
import LMEval
import LMFixtures
import LMFormats
import LMRuntime
import Testing

/// A deliberately slowed model: every forward call runs `factor` times.
final class SlowedModel: CausalLM, @unchecked Sendable {
    let inner: LlamaModel, factor: Int
    init(_ m: LlamaModel, factor: Int) { inner = m; self.factor = factor }
    var config: ModelConfig { inner.config }
    var weightBytes: Int { inner.weightBytes }
    var decodeStreamBytes: Int { inner.decodeStreamBytes }
    func makeCache(capacity: Int, sequences: Int, options: KVCacheOptions) throws -> KVCache {
        try inner.makeCache(capacity: capacity, sequences: sequences, options: options)
    }
    func forward(_ batch: Batch, cache: KVCache, logits: Logits, context: ComputeContext, hooks: ForwardHooks?) throws -> [Float] {
        for _ in 1..<factor {
            let scratch = try inner.makeCache(capacity: cache.capacity, sequences: cache.sequences, options: cache.options)
            var b = Batch()
            for sp in batch.spans { b.append(Array(batch.tokens[sp.first..<(sp.first + sp.count)]), sequence: sp.sequence, start: 0) }
            _ = try inner.forward(b, cache: scratch, logits: logits, context: context, hooks: hooks)
        }
        return try inner.forward(batch, cache: cache, logits: logits, context: context, hooks: hooks)
    }
}

@Suite("Gate speed floors", .serialized)
struct SpeedFloorTests {
    @Test("interleaved, best-of-3 speed ratios pass a correct candidate and catch a 6× slower one")
    func catchesSlowdown() throws {
        let dir = NSTemporaryDirectory() + "lmkit-speed-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var spec = SyntheticModelSpec(); spec.hidden = 256; spec.intermediate = 512; spec.heads = 8; spec.kvHeads = 4; spec.headDim = 32; spec.layers = 4
        try SyntheticModel.write(spec, to: dir)
        let m = try LlamaModel.load(folder: dir)
        let ctx = ComputeContext(threads: 2)
        // The floor: half of the same model's speed. A correct build measures ~1.
        var limits = GateLimits(); limits.decodeSpeedRatioMin = 0.5; limits.prefillSpeedRatioMin = 0.5
        let same = try Gate.speedRatios(candidate: m, baseline: m, limits: limits, context: ctx, prefill: 64, decode: 32)
        #expect(same.decode >= 0.5 && same.prefill >= 0.5, "correct candidate: \(same)")
        let slow = try Gate.speedRatios(candidate: SlowedModel(m, factor: 6), baseline: m, limits: limits, context: ctx, prefill: 64, decode: 32)
        #expect(slow.decode < 0.5 && slow.prefill < 0.5, "6× slower candidate: \(slow)")
        print("measured: same-model ratios \(same), 6×-slowed ratios \(slow)")
    }
}
