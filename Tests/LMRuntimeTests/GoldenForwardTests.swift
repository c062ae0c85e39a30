import Foundation
import LMCore
import LMFormats
import LMRuntime
import LMTestSupport
import Testing

/// Compares logits with a reference: argmax at every position, max and mean |Δ|.
func compareLogits(_ got: [Float], _ want: [Float], vocab: Int) -> (argmaxMismatches: Int, maxAbs: Float, meanAbs: Double) {
    var mism = 0, maxAbs: Float = 0, sum = 0.0
    let T = want.count / vocab
    for t in 0..<T {
        let g = got[(t * vocab)..<((t + 1) * vocab)], w = want[(t * vocab)..<((t + 1) * vocab)]
        if g.indices.max(by: { g[$0] < g[$1] }) != w.indices.max(by: { w[$0] < w[$1] }) { mism += 1 }
    }
    for i in 0..<want.count { let d = abs(got[i] - want[i]); maxAbs = max(maxAbs, d); sum += Double(d) }
    return (mism, maxAbs, sum / Double(want.count))
}

@Suite("Float runtime vs reference logits (shared data)", .serialized)
struct GoldenForwardTests {
    // Tolerances ~3–4× the measured error (2026-12-02): stories260K max |Δ| 2.6e-5 prefill;
    // SmolLM2 max |Δ| ≤ 1.4e-4, mean ≤ 1.1e-5 over the 3 prompts.
    @Test("stories260K: same argmax everywhere, max |Δlogit| ≤ 1e-4 (batched prefill and token-by-token)")
    func stories260k() throws {
        guard let root = sharedRoot("stories260K forward") else { return }
        let ctx = ComputeContext(threads: 2)
        let model = try LlamaModel.load(folder: root + "/models/stories260k")
        let ref = try SafetensorsFile(path: root + "/reference/stories260k/reference.safetensors")
        let ids = try ref["input_ids"]!.toInts()
        let want = try ref["logits"]!.toFloat()
        let cache = try model.makeCache(capacity: 256)
        let got = try model.forward(ids, cache: cache, logits: .all, context: ctx)
        let r = compareLogits(got, want, vocab: 512)
        print("stories260K prefill: argmax mismatches \(r.argmaxMismatches), max |Δ| \(r.maxAbs), mean |Δ| \(r.meanAbs)")
        #expect(r.argmaxMismatches == 0)
        #expect(r.maxAbs <= 1e-4)
        // Decode path: one token at a time through the cache.
        let cache2 = try model.makeCache(capacity: 256)
        var stepwise: [Float] = []
        for id in ids { stepwise += try model.forward([id], cache: cache2, logits: .last, context: ctx) }
        let r2 = compareLogits(stepwise, want, vocab: 512)
        print("stories260K decode: argmax mismatches \(r2.argmaxMismatches), max |Δ| \(r2.maxAbs), mean |Δ| \(r2.meanAbs)")
        #expect(r2.argmaxMismatches == 0)
        #expect(r2.maxAbs <= 1e-4)
    }

    @Test("SmolLM2 (imported from GGUF): same argmax, max |Δ| ≤ 4e-4, mean |Δ| ≤ 3e-5 on 3 prompts")
    func smol() throws {
        guard sharedRoot("SmolLM2 forward") != nil, let folder = ImportedSmolLM2.folder else {
            if SharedData.locate() != nil { Issue.record("SmolLM2 import failed") }
            return
        }
        let root = SharedData.locate()!
        let ctx = ComputeContext(threads: 2)
        let model = try LlamaModel.load(folder: folder)
        let ref = try SafetensorsFile(path: root + "/reference/smollm2-135m/reference.safetensors")
        for n in 0..<3 {
            let ids = try ref["prompt\(n).input_ids"]!.toInts()
            let want = try ref["prompt\(n).logits"]!.toFloat()
            let got = try model.forward(ids, cache: model.makeCache(capacity: 64), logits: .all, context: ctx)
            let r = compareLogits(got, want, vocab: 49152)
            print("SmolLM2 prompt \(n): argmax mismatches \(r.argmaxMismatches), max |Δ| \(r.maxAbs), mean |Δ| \(r.meanAbs)")
            #expect(r.argmaxMismatches == 0)
            #expect(r.maxAbs <= 4e-4)
            #expect(r.meanAbs <= 3e-5)
        }
    }
}
