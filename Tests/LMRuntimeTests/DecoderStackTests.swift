import Foundation
import LMCore
import LMFixtures
import LMFormats
import LMRuntime
import Testing

@Suite("Decoder stacks: stage 2 alone on hidden states (calibration's capture path)")
struct DecoderStackTests {
    @Test("embed → forwardLayers (all layers, or one layer at a time) → final norm → head gives forward's logits bit for bit")
    func matchesForward() throws {
        let dir = tempDir("stack")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var spec = SyntheticModelSpec(); spec.biases = true
        try SyntheticModel.write(spec, to: dir)
        let m = try LlamaModel.load(folder: dir)
        let c = m.config, D = c.hiddenSize, ctx = ComputeContext(threads: 2)
        let tokens = (0..<45).map { ($0 * 17 + 3) % c.vocabSize }
        let want = try m.forward(tokens, cache: m.makeCache(capacity: 64), logits: .all, context: ctx)
        func logits(_ stacks: [LlamaModel]) throws -> [Float] {
            var h = [Float](repeating: 0, count: tokens.count * D)
            h.withUnsafeMutableBufferPointer { p in for (t, id) in tokens.enumerated() { m.embedding.row(id, into: p.baseAddress! + t * D) } }
            for s in stacks {
                try h.withUnsafeMutableBufferPointer {
                    try s.forwardLayers(Batch(tokens, sequence: 0, start: 0), hidden: $0.baseAddress!, cache: s.makeCache(capacity: 64), context: ctx, hooks: nil)
                }
            }
            var xn = [Float](repeating: 0, count: tokens.count * D), out = [Float](repeating: 0, count: tokens.count * c.vocabSize)
            h.withUnsafeBufferPointer { hp in m.finalNorm.withUnsafeBufferPointer { w in xn.withUnsafeMutableBufferPointer { o in
                for t in 0..<tokens.count { Ops.rmsNorm(hp.baseAddress! + t * D, w.baseAddress!, o.baseAddress! + t * D, D, eps: c.rmsNormEps) }
            } } }
            xn.withUnsafeBufferPointer { x in out.withUnsafeMutableBufferPointer { o in
                m.lmHead.apply(x.baseAddress!, tokens: tokens.count, out: o.baseAddress!, ldOut: c.vocabSize, context: ctx)
            } }
            return out
        }
        let whole = try logits([LlamaModel.decoderStack(config: c, layers: m.layers)])
        let layered = try logits(m.layers.map { LlamaModel.decoderStack(config: c, layers: [$0]) })
        let same = whole.elementsEqual(want, by: { $0.bitPattern == $1.bitPattern })
        let sameLayered = layered.elementsEqual(want, by: { $0.bitPattern == $1.bitPattern })
        #expect(same, "all layers in one stack differ from forward")
        #expect(sameLayered, "one layer at a time differs from forward")
    }

    @Test("a decoder stack refuses forward (it has no embedding or head)")
    func refusesForward() throws {
        let dir = tempDir("stack-refuse")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try SyntheticModel.write(SyntheticModelSpec(), to: dir)
        let m = try LlamaModel.load(folder: dir)
        let s = LlamaModel.decoderStack(config: m.config, layers: [m.layers[0]])
        #expect(s.config.numLayers == 1)
        #expect(throws: RuntimeError.self) { try s.forward([1, 2, 3], cache: s.makeCache(capacity: 8), context: ComputeContext(threads: 1)) }
    }
}
