import Foundation
import LMCore
import LMFixtures
import LMFormats
import LMRuntime
import Testing

func tempDir(_ name: String) -> String {
    let d = NSTemporaryDirectory() + "lmkit-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

@Suite("Runtime vs naive reference forward, synthetic models", .serialized)
struct RuntimeTwinTests {
    /// Tolerance on |Δlogit| between the runtime (Float, sgemm, SIMD exp) and the
    /// Double reference, for logits of magnitude ~1–5.
    static let logitTolerance: Float = 2e-4

    static let specs: [(String, SyntheticModelSpec)] = {
        var out: [(String, SyntheticModelSpec)] = []
        var a = SyntheticModelSpec(); out.append(("GQA 6/2, head 10, untied, f32", a))
        a.tied = true; a.biases = true; a.seed = 2; out.append(("tied, q/k/v biases (Qwen2)", a))
        var b = SyntheticModelSpec(); b.dtype = .f16; b.shards = 3; b.seed = 3; out.append(("f16, 3 shards", b))
        var c = SyntheticModelSpec(); c.dtype = .bf16; c.heads = 3; c.kvHeads = 3; c.headDim = 22; c.hidden = 66; c.intermediate = 41; c.seed = 4
        out.append(("bf16, MHA, head 22", c))
        return out
    }()

    @Test("prefill and token-by-token decode match the reference", arguments: 0..<4)
    func twin(_ k: Int) throws {
        let (label, spec) = Self.specs[k]
        let dir = tempDir("twin\(k)")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try SyntheticModel.write(spec, to: dir)
        let ctx = ComputeContext(threads: 2)
        let model = try LlamaModel.load(folder: dir)
        let ref = try ReferenceForward(folder: dir)
        // 77 tokens: crosses the 64-row attention block and odd SIMD tails.
        var rng = SplitMix64(seed: 9)
        let ids = (0..<77).map { _ in Int(rng.next() % UInt64(spec.vocab)) }
        let want = ref.logits(ids)
        let got = try model.forward(ids, cache: model.makeCache(capacity: 128), logits: .all, context: ctx)
        var maxd: Float = 0
        for t in ids.indices { for v in 0..<spec.vocab { maxd = max(maxd, abs(got[t * spec.vocab + v] - Float(want[t][v]))) } }
        #expect(maxd <= Self.logitTolerance, "\(label): prefill max |Δ| \(maxd)")
        // Mixed: a 40-token prefill then one token at a time.
        let cache = try model.makeCache(capacity: 128)
        _ = try model.forward(Array(ids[0..<40]), cache: cache, logits: .none, context: ctx)
        var maxd2: Float = 0
        for t in 40..<ids.count {
            let l = try model.forward([ids[t]], cache: cache, logits: .last, context: ctx)
            for v in 0..<spec.vocab { maxd2 = max(maxd2, abs(l[v] - Float(want[t][v]))) }
        }
        #expect(maxd2 <= Self.logitTolerance, "\(label): decode max |Δ| \(maxd2)")
    }

    @Test("one, two and three threads give bit-identical logits (prefill and decode) at shapes above the parallel thresholds")
    func threadInvariance() throws {
        let dir = tempDir("threads")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var spec = SyntheticModelSpec(); spec.hidden = 256; spec.intermediate = 704; spec.heads = 8; spec.kvHeads = 2; spec.headDim = 32; spec.vocab = 1000
        try SyntheticModel.write(spec, to: dir)
        let model = try LlamaModel.load(folder: dir)
        let ids = Array(0..<70).map { ($0 * 37) % 1000 }
        func run(_ threads: Int) throws -> [Float] {
            let ctx = ComputeContext(threads: threads)
            // 70 tokens × 256 × 704 is far above the 2^18 serial threshold of every matmul here.
            var out = try model.forward(ids, cache: model.makeCache(capacity: 80), context: ctx)
            let cache = try model.makeCache(capacity: 80)
            _ = try model.forward(Array(ids[0..<60]), cache: cache, logits: .none, context: ctx)
            for t in 60..<70 { out += try model.forward([ids[t]], cache: cache, logits: .last, context: ctx) }
            return out
        }
        let one = try run(1)
        // Prefill's sgemm calls have fixed 64-row slices whatever the thread count (OpenBLAS's
        // sums depend on the width it is given: halves of every matmul used to differ by up to
        // 4.3e-6 on its Zen/Haswell kernels), and decode is per row, so every count agrees.
        for threads in [2, 3] {
            let other = try run(threads)
            let same = other.elementsEqual(one, by: { $0.bitPattern == $1.bitPattern })
            #expect(same, "\(threads) threads differ from 1 by up to \(zip(one, other).map { abs($0 - $1) }.max()!)")
        }
    }
}

@Suite("Kernels vs reference twins")
struct KernelTwinTests {
    @Test("FastMath.exp relative error ≤ 3e-7 on [-87, 88]")
    func expAccuracy() {
        var worst: Double = 0
        var x: Float = -87
        while x < 88 {
            let v = SIMD16<Float>((0..<16).map { x + Float($0) * 0.0007 })
            let e = FastMath.exp(v)
            for i in 0..<16 { let r = Double(Foundation.exp(v[i])); worst = max(worst, abs(Double(e[i]) - r) / r) }
            x += 0.0131
        }
        #expect(worst <= 3e-7, "worst relative error \(worst)")
    }

    @Test("softmax and SiLU·up match their scalar twins on odd lengths", arguments: [1, 3, 7, 15, 16, 17, 33, 127, 1000])
    func softmaxSilu(_ n: Int) {
        var rng = SplitMix64(seed: UInt64(n))
        let x = (0..<n).map { _ in rng.nextSigned() * 20 }
        let y = (0..<n).map { _ in rng.nextSigned() * 3 }
        var a = x, b = x
        a.withUnsafeMutableBufferPointer { Ops.softmax($0.baseAddress!, n) }
        b.withUnsafeMutableBufferPointer { Ops.softmaxReference($0.baseAddress!, n) }
        #expect(zip(a, b).allSatisfy { abs($0 - $1) <= 1e-6 + 2e-6 * abs($1) })
        var s1 = x, s2 = x
        s1.withUnsafeMutableBufferPointer { Ops.siluMul($0.baseAddress!, y, n) }
        s2.withUnsafeMutableBufferPointer { Ops.siluMulReference($0.baseAddress!, y, n) }
        #expect(zip(s1, s2).allSatisfy { abs($0 - $1) <= 1e-5 * max(1, abs($1)) })
    }

    @Test("DenseLinear (split sgemm/sgemv) matches a scalar matmul on odd shapes", arguments: [(1, 33, 7), (3, 127, 65), (5, 1000, 17), (64, 129, 300)])
    func linear(_ shape: (Int, Int, Int)) {
        let (T, rows, cols) = shape
        let ctx = ComputeContext(threads: 2)
        var rng = SplitMix64(seed: 5)
        let w = (0..<(rows * cols)).map { _ in rng.nextSigned() }
        let x = (0..<(T * cols)).map { _ in rng.nextSigned() }
        let lin = DenseLinear(rows: rows, cols: cols, values: w)
        var out = [Float](repeating: 0, count: T * rows)
        x.withUnsafeBufferPointer { xp in out.withUnsafeMutableBufferPointer { lin.apply(xp.baseAddress!, tokens: T, out: $0.baseAddress!, ldOut: rows, context: ctx) } }
        for t in 0..<T { for r in 0..<rows {
            var s = 0.0
            for c in 0..<cols { s += Double(w[r * cols + c]) * Double(x[t * cols + c]) }
            #expect(abs(Double(out[t * rows + r]) - s) <= 1e-4, "t \(t) r \(r)")
        } }
    }
}
