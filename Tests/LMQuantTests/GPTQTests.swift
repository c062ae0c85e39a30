import Foundation
import LMCore
import LMFormats
import LMQuant
import Testing

/// Calibration inputs X = Z·A (`samples × cols`): Z uniform in [−1, 1), A a random mixing
/// matrix (I + dense noise), so the features are correlated; then feature j is scaled by a
/// log-uniform factor in [1/spread, spread] (spread-out diag(H) for act-order).
func mixedInputs(samples: Int, cols: Int, seed: UInt64, spread: Float = 1) -> [Float] {
    var rng = SplitMix64(seed: seed)
    let z = (0..<(samples * cols)).map { _ in rng.nextSigned() }
    var a = (0..<(cols * cols)).map { _ in rng.nextSigned() * 0.6 }
    for j in 0..<cols { a[j * cols + j] += 1 }
    let scale = (0..<cols).map { _ in Float(exp(Double(rng.nextSigned()) * log(Double(spread)))) }
    var x = [Float](repeating: 0, count: samples * cols)
    for s in 0..<samples {
        for k in 0..<cols {
            let zk = z[s * cols + k]
            for j in 0..<cols { x[s * cols + j] += zk * a[k * cols + j] }
        }
        for j in 0..<cols { x[s * cols + j] *= scale[j] }
    }
    return x
}

/// Cheaper correlated inputs for large widths: independent noise plus 8 shared factors.
func factorInputs(samples: Int, cols: Int, seed: UInt64) -> [Float] {
    var rng = SplitMix64(seed: seed)
    let k = 8
    let u = (0..<(k * cols)).map { _ in rng.nextSigned() }
    var x = [Float](repeating: 0, count: samples * cols)
    for s in 0..<samples {
        let f = (0..<k).map { _ in rng.nextSigned() * 2 }
        for j in 0..<cols {
            var v = rng.nextSigned() * 0.3
            for t in 0..<k { v += f[t] * u[t * cols + j] }
            x[s * cols + j] = v
        }
    }
    return x
}

func accumulate(_ x: [Float], samples: Int, cols: Int) -> HessianAccumulator {
    var h = HessianAccumulator(cols: cols)
    h.add(x, rows: samples)
    return h
}

/// ‖(W − Ŵ)·Xᵀ‖², the output error GPTQ minimizes.
func outputError(_ w: [Float], _ wq: [Float], rows: Int, cols: Int, x: [Float], samples: Int) -> Double {
    let d = zip(w, wq).map { Double($0 - $1) }
    var total = 0.0
    for s in 0..<samples {
        for r in 0..<rows {
            var y = 0.0
            for c in 0..<cols { y += d[r * cols + c] * Double(x[s * cols + c]) }
            total += y * y
        }
    }
    return total
}

@Suite("GPTQ")
struct GPTQTests {
    static let integerSchemes = ["int4-g32", "int4s-g32", "int8-g32", "int8", "int4-g128", "int4s-g64"]

    /// A Hessian c·I (or a diagonal with distinct entries) built through `add`: one sample per feature.
    func diagonalHessian(_ diag: [Float]) -> HessianAccumulator {
        let n = diag.count
        var x = [Float](repeating: 0, count: n * n)
        for i in 0..<n { x[i * n + i] = diag[i].squareRoot() }
        return accumulate(x, samples: n, cols: n)
    }

    @Test("diagonal H: no error is propagated, so the codes are RTN's, byte for byte (act-order too)", arguments: integerSchemes)
    func diagonalMatchesRTN(_ name: String) throws {
        let scheme = try QuantScheme(parsing: name)
        for (rows, cols) in [(37, 200), (5, 300), (3, 33)] {
            let w = randomMatrix(rows, cols, seed: UInt64(rows * 7 + cols))
            var rng = SplitMix64(seed: 5)
            let equal = diagonalHessian([Float](repeating: 3, count: cols))
            let distinct = diagonalHessian((0..<cols).map { _ in 0.5 + rng.nextSigned() + 1 })
            for clip in [ClipMethod.minmax, .mse] {
                let rtn = RoundToNearest.quantize(w, rows: rows, cols: cols, scheme: scheme, clip: clip).sections.map(\.bytes)
                for (h, actOrder) in [(equal, false), (equal, true), (distinct, false), (distinct, true)] {
                    let q = try GPTQ.quantize(weights: w, rows: rows, cols: cols, hessian: h, scheme: scheme, actOrder: actOrder, clip: clip, tensor: "t")
                    let same = q.sections.map(\.bytes) == rtn  // a Bool, so a failure does not print the bytes
                    #expect(same, "\(name) \(rows)×\(cols) actOrder \(actOrder) clip \(clip)")
                }
            }
        }
    }

    /// (scheme, actOrder, cols, bound): bound on GPTQ/RTN output error, set just above the
    /// measured ratio (printed by the test).
    static let ratioCases: [(String, Bool, Int, Double)] = [
        ("int4-g32", false, 200, 0.46), ("int4-g32", true, 200, 0.49),      // measured 0.4404, 0.4650
        ("int4-g128", false, 300, 0.41), ("int4-g128", true, 300, 0.40),    // 0.3933, 0.3777
        ("int4s-g32", false, 300, 0.46), ("int4s-g32", true, 200, 0.54),    // 0.4328, 0.5146 (Q4_0-style int4s scale, 2026-12-02)
        ("int8-g32", false, 200, 0.45), ("int8-g32", true, 300, 0.42),      // 0.4284, 0.3982
        ("int8", false, 300, 0.43), ("int4-g128", false, 200, 0.45),        // 0.4111, 0.4256
    ]

    @Test("correlated inputs: GPTQ's output error ‖(W − Ŵ)Xᵀ‖² is well below RTN's", arguments: ratioCases)
    func beatsRTN(_ c: (String, Bool, Int, Double)) throws {
        let (name, actOrder, cols, bound) = c
        let scheme = try QuantScheme(parsing: name)
        let rows = 37, samples = 512
        let x = mixedInputs(samples: samples, cols: cols, seed: UInt64(cols))
        let h = accumulate(x, samples: samples, cols: cols)
        let w = randomMatrix(rows, cols, seed: 11)
        let rtn = dequant(RoundToNearest.quantize(w, rows: rows, cols: cols, scheme: scheme))
        let q = try GPTQ.quantize(weights: w, rows: rows, cols: cols, hessian: h, scheme: scheme, actOrder: actOrder, tensor: "t")
        #expect(q.sections.map { $0.bytes.count } == scheme.sections(rows: rows, cols: cols).map(\.bytes))
        let eR = outputError(w, rtn, rows: rows, cols: cols, x: x, samples: samples)
        let eG = outputError(w, dequant(q), rows: rows, cols: cols, x: x, samples: samples)
        let ratio = eG / eR
        print("GPTQ/RTN output error \(name) actOrder \(actOrder) 37×\(cols): \(String(format: "%.4f", ratio)) (RTN \(eR), GPTQ \(eG))")
        #expect(ratio <= bound, "\(name) actOrder \(actOrder) cols \(cols): ratio \(ratio) > \(bound)")
    }

    /// (scheme, bound on act-order/plain output error): measured 0.6013, 0.5464, 0.5627 (int4s with the Q4_0-style scale).
    @Test("act-order with static groups: ordinary layout, and better than storage order when diag(H) is spread out", arguments: [("int4-g32", 0.63), ("int4-g128", 0.58), ("int4s-g64", 0.59)])
    func actOrder(_ c: (String, Double)) throws {
        let (name, bound) = c
        let scheme = try QuantScheme(parsing: name)
        let rows = 37, cols = 300, samples = 512
        let x = mixedInputs(samples: samples, cols: cols, seed: 99, spread: 8)
        let h = accumulate(x, samples: samples, cols: cols)
        let w = randomMatrix(rows, cols, seed: 12)
        let plain = try GPTQ.quantize(weights: w, rows: rows, cols: cols, hessian: h, scheme: scheme, tensor: "t")
        let ordered = try GPTQ.quantize(weights: w, rows: rows, cols: cols, hessian: h, scheme: scheme, actOrder: true, tensor: "t")
        #expect(ordered.sections.map(\.role) == scheme.sections(rows: rows, cols: cols).map(\.role))
        #expect(ordered.sections.map { $0.bytes.count } == scheme.sections(rows: rows, cols: cols).map(\.bytes))
        let eR = outputError(w, dequant(RoundToNearest.quantize(w, rows: rows, cols: cols, scheme: scheme)), rows: rows, cols: cols, x: x, samples: samples)
        let eP = outputError(w, dequant(plain), rows: rows, cols: cols, x: x, samples: samples)
        let eA = outputError(w, dequant(ordered), rows: rows, cols: cols, x: x, samples: samples)
        print("act-order \(name) 37×300 spread diag: GPTQ/RTN \(String(format: "%.4f", eP / eR)), act-order/RTN \(String(format: "%.4f", eA / eR)), act-order/plain \(String(format: "%.4f", eA / eP))")
        #expect(eA <= eP * bound, "\(name): act-order \(eA) vs plain \(eP): ratio \(eA / eP) > \(bound)")
    }

    @Test("a rank-deficient H with damp 0 is an error naming the tensor and --damp; damp 0.01 succeeds")
    func rankDeficient() throws {
        let cols = 64, samples = 20
        let x = mixedInputs(samples: samples, cols: cols, seed: 3)
        let h = accumulate(x, samples: samples, cols: cols)
        let w = randomMatrix(8, cols, seed: 4)
        let scheme = try QuantScheme(parsing: "int4-g32")
        do {
            _ = try GPTQ.quantize(weights: w, rows: 8, cols: cols, hessian: h, scheme: scheme, damp: 0, tensor: "model.layers.3.mlp.up_proj.weight")
            Issue.record("damp 0 on a rank-20 Hessian of 64 inputs did not throw")
        } catch let e as GPTQError {
            #expect(e.kind == .notPositiveDefinite)
            #expect(e.description.contains("model.layers.3.mlp.up_proj.weight"))
            #expect(e.description.contains("--damp"))
        }
        let q = try GPTQ.quantize(weights: w, rows: 8, cols: cols, hessian: h, scheme: scheme, damp: 0.01, tensor: "t")
        #expect(dequant(q).allSatisfy { $0.isFinite })
    }

    @Test("an exactly duplicated input (H singular, rounding-level pivot) with damp 0 is not positive definite", arguments: [1, 2, 3, 4, 5, 6, 7, 8] as [UInt64])
    func duplicatedInput(_ seed: UInt64) throws {
        let cols = 48, samples = 200
        var x = mixedInputs(samples: samples, cols: cols, seed: 60 + seed)
        let j = Int(seed) % cols, k = (Int(seed) * 7 + 5) % cols
        for s in 0..<samples { x[s * cols + k] = x[s * cols + j] }
        let h = accumulate(x, samples: samples, cols: cols)
        let w = randomMatrix(6, cols, seed: 61)
        let scheme = try QuantScheme(parsing: "int8-g32")
        #expect(throws: GPTQError.self) { try GPTQ.quantize(weights: w, rows: 6, cols: cols, hessian: h, scheme: scheme, damp: 0, tensor: "dup") }
        _ = try GPTQ.quantize(weights: w, rows: 6, cols: cols, hessian: h, scheme: scheme, tensor: "dup")
    }

    @Test("dead inputs (always zero) get zero weights: exactly for symmetric schemes, the code nearest 0 for int4", arguments: integerSchemes)
    func deadInputs(_ name: String) throws {
        let scheme = try QuantScheme(parsing: name)
        let rows = 9, cols = 200, samples = 300
        let deadCols: Set<Int> = [0, 3, 17, 40, 127, 199]
        var x = mixedInputs(samples: samples, cols: cols, seed: 21)
        for s in 0..<samples { for c in deadCols { x[s * cols + c] = 0 } }
        let h = accumulate(x, samples: samples, cols: cols)
        let w = randomMatrix(rows, cols, seed: 22)
        for actOrder in [false, true] {
            let q = try GPTQ.quantize(weights: w, rows: rows, cols: cols, hessian: h, scheme: scheme, actOrder: actOrder, tensor: "t")
            let y = dequant(q)
            let G = scheme.groupSize, ng = scheme.groups(cols: cols)
            for r in 0..<rows { for c in deadCols {
                let v = y[r * cols + c]
                if scheme.kind == .int4 {
                    let sBytes = q.sections[1].bytes, i = 2 * (r * ng + c / G)
                    let s = halfToFloat(UInt16(sBytes[i]) | UInt16(sBytes[i + 1]) << 8)
                    #expect(abs(v) <= s / 2 * 1.001, "\(name) r\(r) c\(c): \(v), step \(s)")
                } else {
                    #expect(v == 0, "\(name) r\(r) c\(c): \(v)")
                }
            } }
            // The live columns still carry the weights.
            #expect(y.enumerated().contains { !deadCols.contains($0.offset % cols) && $0.element != 0 })
        }
    }

    @Test("deterministic: two runs give identical bytes")
    func deterministic() throws {
        let rows = 37, cols = 300, samples = 400
        let x = mixedInputs(samples: samples, cols: cols, seed: 8, spread: 4)
        let w = randomMatrix(rows, cols, seed: 9)
        for name in ["int4-g128", "int8"] {
            let scheme = try QuantScheme(parsing: name)
            for actOrder in [false, true] {
                let a = try GPTQ.quantize(weights: w, rows: rows, cols: cols, hessian: accumulate(x, samples: samples, cols: cols), scheme: scheme, actOrder: actOrder, clip: .mse, tensor: "t")
                let b = try GPTQ.quantize(weights: w, rows: rows, cols: cols, hessian: accumulate(x, samples: samples, cols: cols), scheme: scheme, actOrder: actOrder, clip: .mse, tensor: "t")
                let same = a.sections.map(\.bytes) == b.sections.map(\.bytes)
                #expect(same, "\(name) actOrder \(actOrder)")
            }
        }
    }

    @Test("lazy blocks are exact: block sizes 1, 16, 128, 1000 give the same error; a block cut at group starts equals aligned blocks")
    func blockSizes() throws {
        let rows = 37, cols = 300, samples = 512
        let x = mixedInputs(samples: samples, cols: cols, seed: 31)
        let h = accumulate(x, samples: samples, cols: cols)
        let w = randomMatrix(rows, cols, seed: 32)
        let scheme = try QuantScheme(parsing: "int4-g32")
        func run(_ b: Int) throws -> QuantizedTensor { try GPTQ.quantize(weights: w, rows: rows, cols: cols, hessian: h, scheme: scheme, blockSize: b, tensor: "t") }
        let errs = try [1, 16, 128, 1000].map { outputError(w, dequant(try run($0)), rows: rows, cols: cols, x: x, samples: samples) }
        print("GPTQ output error by block size 1/16/128/1000: \(errs)")
        for e in errs { #expect(abs(e / errs[0] - 1) < 0.01, "\(errs)") }
        // blockSize 48 with G = 32 is cut to 32-column blocks at every group start.
        let cut = try run(48).sections.map(\.bytes), aligned = try run(32).sections.map(\.bytes)
        let same = cut == aligned
        #expect(same)
    }

    @Test("errors: float schemes, shape mismatches, empty Hessians, bad arguments, non-finite weights")
    func errors() throws {
        let w = randomMatrix(4, 32, seed: 1)
        let h = accumulate(mixedInputs(samples: 64, cols: 32, seed: 2), samples: 64, cols: 32)
        func kind(_ body: () throws -> QuantizedTensor) -> GPTQError.Kind? {
            do { _ = try body(); return nil } catch let e as GPTQError { return e.kind } catch { return nil }
        }
        for f in ["f16", "bf16", "f32"] {
            let s = try QuantScheme(parsing: f)
            #expect(kind { try GPTQ.quantize(weights: w, rows: 4, cols: 32, hessian: h, scheme: s, tensor: "t") } == .notIntegerScheme)
        }
        let s = try QuantScheme(parsing: "int4-g32")
        #expect(kind { try GPTQ.quantize(weights: w, rows: 4, cols: 31, hessian: h, scheme: s, tensor: "t") } == .shapeMismatch)
        #expect(kind { try GPTQ.quantize(weights: w, rows: 2, cols: 64, hessian: h, scheme: s, tensor: "t") } == .shapeMismatch)
        #expect(kind { try GPTQ.quantize(weights: w, rows: 4, cols: 32, hessian: HessianAccumulator(cols: 32), scheme: s, tensor: "t") } == .noSamples)
        #expect(kind { try GPTQ.quantize(weights: w, rows: 4, cols: 32, hessian: h, scheme: s, damp: -1, tensor: "t") } == .invalidArgument)
        #expect(kind { try GPTQ.quantize(weights: w, rows: 4, cols: 32, hessian: h, scheme: s, blockSize: 0, tensor: "t") } == .invalidArgument)
        var bad = w; bad[5] = .nan
        #expect(kind { try GPTQ.quantize(weights: bad, rows: 4, cols: 32, hessian: h, scheme: s, tensor: "t") } == .nonFinite)
        var hn = HessianAccumulator(cols: 32)
        hn.add([Float](repeating: .infinity, count: 32), rows: 1)
        #expect(kind { try GPTQ.quantize(weights: w, rows: 4, cols: 32, hessian: hn, scheme: s, tensor: "t") } == .nonFinite)
    }

    @Test("the accumulator: H = 2/n·XᵀX, chunked adds and merges equal one add")
    func accumulator() throws {
        let cols = 40, samples = 600
        let x = mixedInputs(samples: samples, cols: cols, seed: 41)
        let one = accumulate(x, samples: samples, cols: cols)
        var split = HessianAccumulator(cols: cols), other = HessianAccumulator(cols: cols)
        split.add(Array(x[0..<(100 * cols)]), rows: 100)
        other.add(Array(x[(100 * cols)...]), rows: samples - 100)
        try split.merge(other)
        #expect(split.samples == samples && one.samples == samples)
        let a = one.hessian(), b = split.hessian()
        for i in 0..<cols { for j in 0..<cols {
            var ref = 0.0
            for s in 0..<samples { ref += Double(x[s * cols + i]) * Double(x[s * cols + j]) }
            ref *= 2 / Double(samples)
            #expect(abs(a[i * cols + j] - ref) <= 1e-9 * max(1, abs(ref)))
            #expect(abs(b[i * cols + j] - ref) <= 1e-9 * max(1, abs(ref)))
        } }
        #expect(throws: GPTQError.self) { try split.merge(HessianAccumulator(cols: 41)) }
    }

    @Test("a diagonal-only accumulator (Wanda's norms) has the full one's mean squares, the same at any thread count")
    func diagonalAccumulator() throws {
        let cols = 37, samples = 700   // 3 chunks of 256 rows, the last partial
        let x = mixedInputs(samples: samples, cols: cols, seed: 43)
        let full = accumulate(x, samples: samples, cols: cols).meanSquares
        var worst = 0.0
        var byThreads: [[Double]] = []
        for threads in [1, 2] {
            var d = HessianAccumulator(cols: cols, diagonalOnly: true)
            x.withUnsafeBufferPointer { d.add($0.baseAddress!, rows: samples, context: ComputeContext(threads: threads)) }
            #expect(d.samples == samples)
            byThreads.append(d.meanSquares)
        }
        var serial = HessianAccumulator(cols: cols, diagonalOnly: true)
        serial.add(Array(x[0..<(300 * cols)]), rows: 300)
        var rest = HessianAccumulator(cols: cols, diagonalOnly: true)
        rest.add(Array(x[(300 * cols)...]), rows: samples - 300)
        try serial.merge(rest)
        for j in 0..<cols {
            var ref = 0.0
            for s in 0..<samples { ref += Double(x[s * cols + j]) * Double(x[s * cols + j]) }
            ref /= Double(samples)
            worst = max(worst, abs(byThreads[0][j] - ref) / ref)
            #expect(abs(serial.meanSquares[j] - ref) <= 1e-12 * ref)
            #expect(abs(full[j] - ref) <= 1e-6 * ref)   // the full accumulator's float32 chunks
        }
        #expect(byThreads[0] == byThreads[1])
        #expect(worst <= 1e-12, "diagonal vs Double reference: \(worst)")
        #expect(throws: GPTQError.self) { try serial.merge(HessianAccumulator(cols: cols)) }
    }

    /// Prints the time per SmolLM2-135M shape (MLP 1536×576 and 576×1536, attention 576×576
    /// and 192×576) and checks GPTQ beats RTN on them; no time bound (the machine is shared).
    @Test("timing: SmolLM2's shapes 1536×576, 576×1536, 576×576, 192×576 (blockSize 128)")
    func timing() throws {
        let scheme = try QuantScheme(parsing: "int4-g32")
        for (rows, cols) in [(1536, 576), (576, 1536), (576, 576), (192, 576)] {
            let samples = 1024
            let x = factorInputs(samples: samples, cols: cols, seed: UInt64(cols))
            let h = accumulate(x, samples: samples, cols: cols)
            let w = randomMatrix(rows, cols, seed: 51)
            let t0 = Date()
            let q = try GPTQ.quantize(weights: w, rows: rows, cols: cols, hessian: h, scheme: scheme, tensor: "t")
            let dt = Date().timeIntervalSince(t0)
            let t1 = Date()
            let rtn = RoundToNearest.quantize(w, rows: rows, cols: cols, scheme: scheme)
            let dtR = Date().timeIntervalSince(t1)
            // Output error over the first 16 rows and 256 samples.
            let sub = 16, ns = 256
            let eG = outputError(Array(w[0..<(sub * cols)]), Array(dequant(q)[0..<(sub * cols)]), rows: sub, cols: cols, x: x, samples: ns)
            let eR = outputError(Array(w[0..<(sub * cols)]), Array(dequant(rtn)[0..<(sub * cols)]), rows: sub, cols: cols, x: x, samples: ns)
            print("GPTQ \(rows)×\(cols) int4-g32: \(String(format: "%.3f", dt)) s (RTN \(String(format: "%.3f", dtR)) s); output error GPTQ/RTN \(String(format: "%.4f", eG / eR))")
            #expect(eG < eR)
        }
    }
}
