import Foundation
import LMCore
import LMFixtures
import LMFormats
import LMRuntime
import Testing

@Suite("Staged forward: batches of sequences, taps and reduce hooks", .serialized)
struct StagedForwardTests {
    func model(_ name: String, seed: UInt64 = 31) throws -> (LlamaModel, String) {
        let dir = tempDir(name)
        var spec = SyntheticModelSpec(); spec.seed = seed
        try SyntheticModel.write(spec, to: dir)
        return (try LlamaModel.load(folder: dir), dir)
    }

    /// |Δ| between a batched prefill and separate prefills: the matmuls run with more rows
    /// (sgemm blocks differently), and batched decode uses sgemm where one token uses sgemv;
    /// measured ≤ 3.1e-6 on logits of magnitude ~1–5.
    static let batchTolerance: Float = 1e-5

    @Test("sequences of different lengths in one forward (prefill, and one decode token each) give the logits of separate forwards")
    func multiSequence() throws {
        let (m, dir) = try model("batch")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ctx = ComputeContext(threads: 2)
        let a = Array(0..<37).map { ($0 * 13 + 5) % 300 }, b = Array(0..<70).map { ($0 * 29 + 1) % 300 }
        let alone = try [a, b].map { try m.forward($0, cache: m.makeCache(capacity: 80), logits: .all, context: ctx) }
        let cache = try m.makeCache(capacity: 80, sequences: 3)
        var batch = Batch(a, sequence: 2, start: 0)
        batch.append(b, sequence: 0, start: 0)
        let both = try m.forward(batch, cache: cache, logits: .all, context: ctx, hooks: nil)
        let V = m.config.vocabSize
        let da = zip(both[0..<(a.count * V)], alone[0]).map { abs($0 - $1) }.max()!
        let db = zip(both[(a.count * V)...], alone[1]).map { abs($0 - $1) }.max()!
        #expect(da <= Self.batchTolerance && db <= Self.batchTolerance, "batched vs alone: \(da), \(db)")
        #expect(cache.count(2) == a.count && cache.count(0) == b.count && cache.count(1) == 0)
        // Batched decode: one token per sequence, both in one call; same kernels per token.
        let cacheA = try m.makeCache(capacity: 80), cacheB = try m.makeCache(capacity: 80)
        _ = try m.forward(a, cache: cacheA, logits: .none, context: ctx)
        _ = try m.forward(b, cache: cacheB, logits: .none, context: ctx)
        let la = try m.forward([7], cache: cacheA, logits: .last, context: ctx), lb = try m.forward([9], cache: cacheB, logits: .last, context: ctx)
        var step = Batch([7], sequence: 2, start: a.count)
        step.append([9], sequence: 0, start: b.count)
        let last = try m.forward(step, cache: cache, logits: .last, context: ctx, hooks: nil)
        let dd = max(zip(last[0..<V], la).map { abs($0 - $1) }.max()!, zip(last[V...], lb).map { abs($0 - $1) }.max()!)
        #expect(dd <= Self.batchTolerance, "batched decode vs alone: \(dd)")
        print("measured: batched prefill |Δ| \(da), \(db); batched decode |Δ| \(dd)")
        // Bad batches are errors.
        #expect(throws: RuntimeError.self) { try m.forward(Batch([1], sequence: 0, start: 5), cache: cache, logits: .none, context: ctx, hooks: nil) }
        #expect(throws: RuntimeError.self) { try m.forward(Batch([1], sequence: 3, start: 0), cache: cache, logits: .none, context: ctx, hooks: nil) }
        var twice = Batch([1], sequence: 1, start: 0); twice.append([2], sequence: 1, start: 1)
        #expect(throws: RuntimeError.self) { try m.forward(twice, cache: cache, logits: .none, context: ctx, hooks: nil) }
    }

    @Test("taps see each linear group's input; reduce hooks run after o_proj, down_proj and the head, and can rewrite them")
    func hooks() throws {
        let (m, dir) = try model("hooks")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ctx = ComputeContext(threads: 2)
        let ids = Array(0..<12).map { ($0 * 17 + 3) % 300 }
        let plain = try m.forward(ids, cache: m.makeCache(capacity: 16), logits: .all, context: ctx)
        var taps: [String] = [], reduces: [String] = []
        var widths: [TapPoint: Int] = [:]
        var firstInput: [Float] = []
        let hooks = ForwardHooks(tap: { layer, point, x, tokens, width in
            taps.append("\(layer).\(point.rawValue)")
            widths[point] = width
            #expect(tokens == ids.count)
            if layer == 0 && point == .attentionInput { firstInput = Array(UnsafeBufferPointer(start: x, count: tokens * width)) }
        }, reduce: { layer, point, _, tokens, width in
            reduces.append("\(layer).\(point.rawValue)")
            #expect(tokens == (point == .head ? ids.count : ids.count) && width > 0)
        })
        let observed = try m.forward(Batch(ids, start: 0), cache: m.makeCache(capacity: 16), logits: .all, context: ctx, hooks: hooks)
        #expect(observed == plain, "no-op hooks change nothing")
        let L = m.config.numLayers
        #expect(taps.count == 4 * L && reduces.count == 2 * L + 1)
        #expect(Array(taps.prefix(4)) == ["0.attentionInput", "0.oProjInput", "0.mlpInput", "0.downProjInput"])
        #expect(reduces.last == "-1.head")
        let c = m.config
        #expect(widths[.attentionInput] == c.hiddenSize && widths[.oProjInput] == c.numHeads * c.headDim && widths[.downProjInput] == c.intermediateSize)
        // The tap's view is RMSNorm(embedding) · weight for layer 0.
        var row = [Float](repeating: 0, count: c.hiddenSize), want = row
        row.withUnsafeMutableBufferPointer { m.embedding.row(ids[0], into: $0.baseAddress!) }
        row.withUnsafeBufferPointer { r in want.withUnsafeMutableBufferPointer { Ops.rmsNorm(r.baseAddress!, m.layers[0].attnNorm, $0.baseAddress!, c.hiddenSize, eps: c.rmsNormEps) } }
        #expect(Array(firstInput.prefix(c.hiddenSize)) == want)
        // A reduce hook that doubles the head's output doubles the logits (a communicator's seam).
        let doubled = try m.forward(Batch(ids, start: 0), cache: m.makeCache(capacity: 16), logits: .all, context: ctx,
                                    hooks: ForwardHooks(reduce: { _, point, out, tokens, width in
                                        if point == .head { for i in 0..<(tokens * width) { out[i] *= 2 } }
                                    }))
        #expect(zip(doubled, plain).allSatisfy { $0 == 2 * $1 })
    }
}
