import Foundation
import LMCore
import LMFixtures
import LMFormats
import LMQuant
import LMRuntime
import LMTestSupport
import Testing

/// Quantizes one matrix in `scheme` and builds its runtime kernel in memory from the
/// sections (`PackedLinear.make(rows:cols:scheme:sections:)`, no temporary file).
func packedWeight(_ w: [Float], rows: Int, cols: Int, scheme: QuantScheme) throws -> (LinearWeight, [Float], Any) {
    let q = RoundToNearest.quantize(w, rows: rows, cols: cols, scheme: scheme)
    let bytes = q.sections.map { $0.bytes }
    let lin = try PackedLinear.make(rows: rows, cols: cols, scheme: scheme, sections: bytes, name: "test.weight")
    let reference = bytes.withRawPointers { RoundToNearest.dequantize(scheme: scheme, rows: rows, cols: cols, sections: $0) }
    return (lin, reference, bytes)
}


@Suite("Packed kernels vs the reference dequantizer", .serialized)
struct PackedKernelTests {
    static let shapes: [(Int, Int)] = [(1, 32), (3, 7), (17, 33), (33, 172), (64, 576), (130, 200)]

    @Test("matvec (1–3 tokens) at every kernel level this CPU has, tiled prefill (many tokens) and row lookup match W_ref·x", arguments: QuantScheme.allNames)
    func kernels(_ name: String) throws {
        let scheme = try QuantScheme(parsing: name)
        for k in KernelSet.available {
        let ctx = ComputeContext(threads: 2, kernels: k)
        for (rows, cols) in Self.shapes {
            var rng = SplitMix64(seed: UInt64(rows * 7 + cols))
            let w = (0..<(rows * cols)).map { _ in rng.nextSigned() * 0.5 }
            let (lin, ref, _) = try packedWeight(w, rows: rows, cols: cols, scheme: scheme)
            let packed = lin as? PackedLinear
            for integer in [false, true] where !integer || scheme.isQuantized {
                packed?.integerDecode = integer
                for tokens in [1, 3, 9] {
                    let x = (0..<(tokens * cols)).map { _ in rng.nextSigned() }
                    var out = [Float](repeating: .nan, count: tokens * rows)
                    x.withUnsafeBufferPointer { xp in out.withUnsafeMutableBufferPointer { lin.apply(xp.baseAddress!, tokens: tokens, out: $0.baseAddress!, ldOut: rows, context: ctx) } }
                    let G = scheme.groupSize == 0 ? cols : scheme.groupSize
                    for t in 0..<tokens { for r in 0..<rows {
                        var s = 0.0, mag = 0.0, bound = 0.0
                        for c in 0..<cols {
                            let w = Double(ref[r * cols + c]), xv = Double(x[t * cols + c])
                            s += w * xv; mag += abs(w * xv)
                        }
                        if integer && tokens <= 3 {
                            // Activations rounded to int8 per 32 columns: |Δx| ≤ dx/2 = max|x_b|/254.
                            // The kernel multiplies that error by the code part of each weight:
                            // |w| for int8, at most 2·max|w_group| for int4 (s·q with q ≤ 15).
                            for b in 0..<((cols + 31) / 32) {
                                let lo = 32 * b, hi = min(cols, lo + 32)
                                let dx = Double((lo..<hi).map { abs(x[t * cols + $0]) }.max()!) / 127
                                for c in lo..<hi {
                                    let g = c / G
                                    let gmax = Double(((g * G)..<min(cols, (g + 1) * G)).map { abs(ref[r * cols + $0]) }.max()!)
                                    bound += (scheme.kind == .int8 ? abs(Double(ref[r * cols + c])) : 2 * gmax) * dx / 2
                                }
                            }
                        }
                        let err = abs(Double(out[t * rows + r]) - s)
                        #expect(err <= bound * 1.001 + 1e-5 * max(mag, 1e-6), "\(name) \(k) \(rows)x\(cols) tokens \(tokens) integer \(integer): error \(err), bound \(bound)")
                    } }
                }
            }
            var row = [Float](repeating: .nan, count: cols)
            for r in [0, rows - 1] {
                row.withUnsafeMutableBufferPointer { lin.row(r, into: $0.baseAddress!) }
                #expect(row == Array(ref[(r * cols)..<((r + 1) * cols)]), "\(name) row \(r)")
            }
        }
        }
    }

    /// Relative tolerance between kernel levels: the integer dot products are exact at
    /// every level, only the float accumulation of per-block partial sums differs in order
    /// (measured max 1.5e-7 relative to Σ|terms| on these shapes, avx512vnni vs generic).
    static let levelTolerance = 5e-7

    @Test("in-memory packed weights check their sections against the scheme")
    func inMemoryErrors() throws {
        let s = try QuantScheme(parsing: "int4-g32")
        #expect(throws: RuntimeError.self) { try PackedLinear.make(rows: 4, cols: 64, scheme: s, sections: [[UInt8](repeating: 0, count: 128)]) }
        #expect(throws: RuntimeError.self) {
            try PackedLinear.make(rows: 4, cols: 64, scheme: s, sections: [[UInt8](repeating: 0, count: 127), [UInt8](repeating: 0, count: 16), [UInt8](repeating: 0, count: 16)])
        }
    }

    @Test("every SIMD kernel level equals the generic (scalar C) level on odd shapes, within float reordering", arguments: ["int8", "int8-g32", "int8-g128", "int4-g32", "int4-g64", "int4-g128", "int4s-g32", "int4s-g128", "int3-g32", "int3-g64", "int3-g128", "int2-g32", "int2-g64", "int2-g128"])
    func levelsAgree(_ name: String) throws {
        let scheme = try QuantScheme(parsing: name)
        let generic = ComputeContext(threads: 1, kernels: KernelSet(level: 0)!)
        let levels = KernelSet.available.filter { $0.level > 0 }
        if levels.isEmpty { print("SKIPPED levelsAgree: this CPU has only the generic level") }
        for (rows, cols) in Self.shapes + [(577, 1536), (49, 576), (1, 1000)] {
            var rng = SplitMix64(seed: UInt64(rows * 13 + cols))
            let w = (0..<(rows * cols)).map { _ in rng.nextSigned() * 0.5 }
            let (lin, ref, _) = try packedWeight(w, rows: rows, cols: cols, scheme: scheme)
            let x = (0..<cols).map { _ in rng.nextSigned() * (1 + Float(rng.next() % 4)) }
            var mag = [Double](repeating: 0, count: rows)
            for r in 0..<rows { for c in 0..<cols { mag[r] += abs(Double(ref[r * cols + c]) * Double(x[c])) } }
            func out(_ ctx: ComputeContext) -> [Float] {
                var o = [Float](repeating: .nan, count: rows)
                x.withUnsafeBufferPointer { xp in o.withUnsafeMutableBufferPointer { lin.apply(xp.baseAddress!, tokens: 1, out: $0.baseAddress!, ldOut: rows, context: ctx) } }
                return o
            }
            let want = out(generic)
            for k in levels {
                let got = out(ComputeContext(threads: 2, kernels: k))
                var worst = 0.0
                for r in 0..<rows { worst = max(worst, abs(Double(got[r]) - Double(want[r])) / max(mag[r], 1e-30)) }
                #expect(worst <= Self.levelTolerance, "\(name) \(k) \(rows)x\(cols): relative difference \(worst)")
            }
        }
    }
}

@Suite("Quantized models end to end (synthetic)", .serialized)
struct QuantizedModelTests {
    @Test("an .lmpk in f32 reproduces the HF folder's logits exactly; int8/int4 stay close", arguments: ["f32", "f16", "int8", "int8-g32", "int4-g32", "int4s-g64", "int4-g128", "int3-g32", "int2-g64"])
    func model(_ name: String) throws {
        let dir = NSTemporaryDirectory() + "lmkit-qmodel-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var spec = SyntheticModelSpec(); spec.hidden = 96; spec.intermediate = 80; spec.headDim = 16
        try SyntheticModel.write(spec, to: dir)
        let scheme = try QuantScheme(parsing: name)
        var recipe = Recipe(defaultScheme: scheme)
        recipe.embeddingScheme = scheme
        _ = try Quantizer.run(model: ModelSource.open(dir), recipe: recipe, overrideStrings: [], output: dir + "/m.lmpk", provenance: .object([]))
        let ctx = ComputeContext(threads: 2)
        let base = try LlamaModel.load(path: dir), q = try LlamaModel.load(path: dir + "/m.lmpk")
        // The float model of exactly the dequantized weights (reference dequantizer).
        let f = try LMPKFile(path: dir + "/m.lmpk")
        let deq = dir + "/dequantized"
        try FileManager.default.createDirectory(atPath: deq, withIntermediateDirectories: true)
        let w = try SafetensorsWriter(path: deq + "/model.safetensors", entries: f.tensors.map { .init(name: $0.name, dtype: .f32, shape: $0.shape) })
        for t in f.tensors { try w.write(floats: RoundToNearest.dequantize(scheme: t.scheme, rows: t.rows, cols: t.cols, sections: t.sections), as: .f32) }
        try w.commit()
        try FileManager.default.copyItem(atPath: dir + "/config.json", toPath: deq + "/config.json")
        let dq = try LlamaModel.load(path: deq)
        let ids = (0..<40).map { ($0 * 37 + 5) % spec.vocab }
        let a = try base.forward(ids, cache: base.makeCache(capacity: 64), context: ctx)
        let b = try q.forward(ids, cache: q.makeCache(capacity: 64), context: ctx)
        let c = try dq.forward(ids, cache: dq.makeCache(capacity: 64), context: ctx)
        let kernelError = zip(b, c).map { abs($0 - $1) }.max()!
        #expect(kernelError <= 2e-4, "\(name): packed kernels vs dequantized float model: max |Δlogit| \(kernelError)")
        // Quantization error itself (smoke bound; real-model accuracy is measured by perplexity).
        let d = zip(a, b).map { abs($0 - $1) }.max()!
        // int3 / int2: measured 2.78 (int3-g32) and 4.16 (int2-g64) on this model.
        let limit: Float = name == "f32" ? 0 : name == "f16" ? 0.01 : name.hasPrefix("int8") ? 0.1 : name.hasPrefix("int3") ? 4.0 : name.hasPrefix("int2") ? 6.0 : 2.0
        #expect(d <= limit, "\(name): max |Δlogit| vs float \(d)")
        // Decode path (float-activation kernels) agrees with prefill for the quantized model.
        q.setIntegerDecode(false)
        let cache = try q.makeCache(capacity: 64)
        _ = try q.forward(Array(ids[0..<39]), cache: cache, logits: .none, context: ctx)
        let last = try q.forward([ids[39]], cache: cache, logits: .last, context: ctx)
        let d2 = zip(last, b.suffix(spec.vocab)).map { abs($0 - $1) }.max()!
        #expect(d2 <= 2e-4, "\(name): decode vs prefill \(d2)")
        // Integer-activation decode: close to prefill (activation rounding only).
        q.setIntegerDecode(true)
        let cache2 = try q.makeCache(capacity: 64)
        _ = try q.forward(Array(ids[0..<39]), cache: cache2, logits: .none, context: ctx)
        let last2 = try q.forward([ids[39]], cache: cache2, logits: .last, context: ctx)
        let d3 = zip(last2, b.suffix(spec.vocab)).map { abs($0 - $1) }.max()!
        #expect(d3 <= 0.25, "\(name): integer decode vs prefill \(d3)")
    }
}

@Suite("Row kernels (softmax, max, exp-sum) at every level vs the Swift reference")
struct RowKernelTests {
    @Test("bit-identical to Ops.softmax / FastMath on odd lengths, at every kernel level this CPU has")
    func rows() {
        var rng = SplitMix64(seed: 77)
        for n in [1, 2, 15, 16, 17, 63, 100, 513, 49152] {
            for spread in [Float(1), 30, 200] {
                let x = (0..<n).map { _ in rng.nextSigned() * spread }
                var ref = x, refE = x
                ref.withUnsafeMutableBufferPointer { Ops.softmax($0.baseAddress!, n) }
                let refMax = x.withUnsafeBufferPointer { FastMath.max($0.baseAddress!, n) }
                let refSum = refE.withUnsafeMutableBufferPointer { FastMath.expShiftSum($0.baseAddress!, n, shift: refMax) }
                for k in KernelSet.available {
                    var got = x, gotE = x
                    got.withUnsafeMutableBufferPointer { k.softmax($0.baseAddress!, n) }
                    #expect(got == ref, "\(k) softmax n=\(n) spread \(spread)")
                    #expect(x.withUnsafeBufferPointer { k.max($0.baseAddress!, n) } == refMax)
                    let s = gotE.withUnsafeMutableBufferPointer { k.expShiftSum($0.baseAddress!, n, shift: refMax) }
                    #expect(s == refSum && gotE == refE, "\(k) expShiftSum n=\(n)")
                }
            }
        }
    }
}

@Suite("Non-finite activations surface in every decode path")
struct NonFiniteDecodeTests {
    @Test("a NaN or Inf input gives a non-finite output with the integer kernels too (they used to round NaN to 0)", arguments: ["int4-g32", "int4s-g64", "int8", "int8-g32", "int3-g32", "int2-g64"])
    func nanSurfaces(_ name: String) throws {
        let scheme = try QuantScheme(parsing: name)
        var rng = SplitMix64(seed: 3)
        let rows = 40, cols = 96
        let w = (0..<(rows * cols)).map { _ in rng.nextSigned() }
        let (lin, _, _) = try packedWeight(w, rows: rows, cols: cols, scheme: scheme)
        for k in KernelSet.available {
            let ctx = ComputeContext(threads: 2, kernels: k)
            for bad in [Float.nan, .infinity] {
                var x = (0..<cols).map { _ in rng.nextSigned() }
                x[37] = bad
                var out = [Float](repeating: 0, count: rows)
                x.withUnsafeBufferPointer { xp in out.withUnsafeMutableBufferPointer { lin.apply(xp.baseAddress!, tokens: 1, out: $0.baseAddress!, ldOut: rows, context: ctx) } }
                #expect(out.allSatisfy { !$0.isFinite }, "\(name) \(k) input \(bad): \(out.prefix(4))")
            }
        }
    }
}

extension RowKernelTests {
    @Test("decode attention row kernel is bit-identical to Ops.dot → softmax → Ops.axpy at every level")
    func attend() {
        var rng = SplitMix64(seed: 21)
        for (n, hd) in [(1, 64), (5, 10), (37, 64), (200, 22), (513, 128)] {
            let q = (0..<hd).map { _ in rng.nextSigned() }, K = (0..<(n * hd)).map { _ in rng.nextSigned() }, V = (0..<(n * hd)).map { _ in rng.nextSigned() }
            let scale = 1 / Float(hd).squareRoot()
            var sc = [Float](repeating: 0, count: n), want = [Float](repeating: 0, count: hd)
            q.withUnsafeBufferPointer { qp in K.withUnsafeBufferPointer { kp in V.withUnsafeBufferPointer { vp in
                sc.withUnsafeMutableBufferPointer { s in want.withUnsafeMutableBufferPointer { o in
                    for j in 0..<n { s[j] = Ops.dot(qp.baseAddress!, kp.baseAddress! + j * hd, hd) * scale }
                    Ops.softmax(s.baseAddress!, n)
                    for j in 0..<n { Ops.axpy(s[j], vp.baseAddress! + j * hd, o.baseAddress!, hd) }
                } }
            } } }
            for k in KernelSet.available {
                var got = [Float](repeating: .nan, count: hd), gsc = [Float](repeating: 0, count: n)
                q.withUnsafeBufferPointer { qp in K.withUnsafeBufferPointer { kp in V.withUnsafeBufferPointer { vp in
                    gsc.withUnsafeMutableBufferPointer { s in got.withUnsafeMutableBufferPointer { o in
                        k.attend(q: qp.baseAddress!, keys: kp.baseAddress!, values: vp.baseAddress!, count: n, headDim: hd, scale: scale, scores: s.baseAddress!, out: o.baseAddress!)
                    } }
                } } }
                #expect(got == want && gsc == sc, "\(k) n=\(n) hd=\(hd)")
            }
        }
    }
}

@Suite("Multi-threaded quantized decode at real shapes (synthetic SmolLM2-shaped layers)", .serialized)
struct RealShapeDecodeTests {
    @Test("int4-g32 and int8 integer decode with SmolLM2's layer shapes: 1, 2 and 3 threads bit-identical, every kernel level close to the float model of the same weights")
    func realShapes() throws {
        let dir = NSTemporaryDirectory() + "lmkit-realshape-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // SmolLM2-135M's layer: hidden 576, FFN 1536, 9 heads of 64, 3 KV heads (2 layers).
        var spec = SyntheticModelSpec(); spec.hidden = 576; spec.intermediate = 1536; spec.heads = 9; spec.kvHeads = 3; spec.headDim = 64
        spec.layers = 2; spec.vocab = 2048
        try SyntheticModel.write(spec, to: dir)
        for name in ["int4-g32", "int8"] {
            let scheme = try QuantScheme(parsing: name)
            var recipe = Recipe(defaultScheme: scheme)
            recipe.embeddingScheme = scheme
            let out = dir + "/\(name).lmpk"
            _ = try Quantizer.run(model: ModelSource.open(dir), recipe: recipe, overrideStrings: [], output: out, provenance: .object([]))
            let q = try LlamaModel.load(path: out)
            let ids = (0..<24).map { ($0 * 131 + 7) % spec.vocab }
            // The prompt always runs on one thread: prefill's sgemm slices differ with the
            // thread count (float reordering ~1e-6), and one flipped int8 activation code
            // downstream would then move decode logits by ~1e-2 (measured 0.014 with 2
            // threads). Decode itself must not depend on the thread count at all.
            func decode(_ ctx: ComputeContext) throws -> [Float] {
                let cache = try q.makeCache(capacity: 32)
                _ = try q.forward(Array(ids[0..<16]), cache: cache, logits: .none, context: ComputeContext(threads: 1, kernels: ctx.kernels))
                var logits: [Float] = []
                for t in 16..<24 { logits += try q.forward([ids[t]], cache: cache, logits: .last, context: ctx) }
                return logits
            }
            let one = try decode(ComputeContext(threads: 1))
            for threads in [2, 3] {
                let other = try decode(ComputeContext(threads: threads))
                let same = other == one
                print("measured: \(name) decode, \(threads) threads vs 1: max |Δ| \(zip(one, other).map { abs($0 - $1) }.max()!)")
                #expect(same, "\(name): \(threads) threads differ from 1 by up to \(zip(one, other).map { abs($0 - $1) }.max()!)")
            }
            // Prefill (dequantized tiles + sgemm, float activations) as the reference for the
            // integer decode at every level: activation rounding only.
            let pre = try q.forward(ids, cache: q.makeCache(capacity: 32), logits: .all, context: ComputeContext(threads: 2))
            let ref = Array(pre[(16 * spec.vocab)...])
            for k in KernelSet.available {
                let got = try decode(ComputeContext(threads: 2, kernels: k))
                let d = zip(got, ref).map { abs($0 - $1) }.max()!
                let scale = ref.map(abs).max()!
                print("measured: \(name) \(k.name) integer decode vs prefill max |Δ| \(d) (logits up to \(scale))")
                // Measured: int4-g32 ≤ 0.129 (3.1 % of the largest logit), int8 ≤ 0.060, at
                // every level: the int8 rounding of activations over two random layers.
                #expect(d <= 0.06 * scale, "\(name) \(k.name): \(d)")
            }
        }
    }
}
