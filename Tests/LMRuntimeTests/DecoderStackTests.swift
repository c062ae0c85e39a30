import Foundation
import LMCore
import LMFixtures
import LMFormats
import LMRuntime
import Testing

@Suite("Decoder stacks: stage 2 alone on hidden states (calibration's capture path)")
struct DecoderStackTests {
    /// A synthetic model with q/k/v biases (every branch of a layer), and its folder.
    func biasedModel(_ name: String) throws -> (LlamaModel, String) {
        let dir = tempDir(name)
        var spec = SyntheticModelSpec(); spec.biases = true
        try SyntheticModel.write(spec, to: dir)
        return (try LlamaModel.load(folder: dir), dir)
    }

    @Test("embed → forwardLayers (all layers, or one layer at a time) → final norm → head gives forward's logits bit for bit")
    func matchesForward() throws {
        let (m, dir) = try biasedModel("stack")
        defer { try? FileManager.default.removeItem(atPath: dir) }
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

    @Test("a layer's parts run one at a time (attention norm → attention → o_proj → MLP norm → gate/up → down) give forwardLayers' hidden states bit for bit; a missing input or output is an error")
    func partsMatchLayer() throws {
        let (m, dir) = try biasedModel("stack-parts")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let c = m.config, D = c.hiddenSize, q = c.numHeads * c.headDim, F = c.intermediateSize, ctx = ComputeContext(threads: 2)
        let tokens = (0..<45).map { ($0 * 17 + 3) % c.vocabSize }, T = tokens.count
        let batch = Batch(tokens, sequence: 0, start: 0)
        var h0 = [Float](repeating: 0, count: T * D)
        h0.withUnsafeMutableBufferPointer { p in for (t, id) in tokens.enumerated() { m.embedding.row(id, into: p.baseAddress! + t * D) } }
        for li in 0..<c.numLayers {
            let s = LlamaModel.decoderStack(config: c, layers: [m.layers[li]])
            var want = h0
            try want.withUnsafeMutableBufferPointer { try s.forwardLayers(batch, hidden: $0.baseAddress!, cache: s.makeCache(capacity: 64), context: ctx, hooks: nil) }
            var h = h0, xn = [Float](repeating: 0, count: T * D), att = [Float](repeating: 0, count: T * q), g = [Float](repeating: 0, count: T * F)
            let cache = try s.makeCache(capacity: 64)
            try h.withUnsafeMutableBufferPointer { hp in try xn.withUnsafeMutableBufferPointer { x in try att.withUnsafeMutableBufferPointer { a in try g.withUnsafeMutableBufferPointer { gp in
                let H = hp.baseAddress!
                try s.forwardPart(.attentionNorm, batch: batch, hidden: H, input: nil, output: x.baseAddress!, cache: cache, context: ctx)
                try s.forwardPart(.attention, batch: batch, hidden: H, input: x.baseAddress!, output: a.baseAddress!, cache: cache, context: ctx)
                try s.forwardPart(.oProj, batch: batch, hidden: H, input: a.baseAddress!, output: nil, cache: cache, context: ctx)
                try s.forwardPart(.mlpNorm, batch: batch, hidden: H, input: nil, output: x.baseAddress!, cache: cache, context: ctx)
                try s.forwardPart(.mlpUp, batch: batch, hidden: H, input: x.baseAddress!, output: gp.baseAddress!, cache: cache, context: ctx)
                try s.forwardPart(.down, batch: batch, hidden: H, input: gp.baseAddress!, output: nil, cache: cache, context: ctx)
                #expect(throws: RuntimeError.self) { try s.forwardPart(.attention, batch: batch, hidden: H, input: nil, output: a.baseAddress!, cache: cache, context: ctx) }
                #expect(throws: RuntimeError.self) { try s.forwardPart(.mlpUp, batch: batch, hidden: H, input: x.baseAddress!, output: nil, cache: cache, context: ctx) }
                #expect(throws: RuntimeError.self) { try s.forwardPart(.down, layer: 1, batch: batch, hidden: H, input: gp.baseAddress!, output: nil, cache: cache, context: ctx) }
            } } } }
            #expect(h.elementsEqual(want, by: { $0.bitPattern == $1.bitPattern }), "layer \(li): parts differ from forwardLayers")
            h0 = want
        }
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
