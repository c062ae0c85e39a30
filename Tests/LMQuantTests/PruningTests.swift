import Foundation
import LMCore
import LMFixtures
import LMFormats
import LMQuant
import LMRuntime
import LMTokenizer
import Testing

/// A synthetic shape whose every matrix's inputs are a multiple of 8.
private var divisible: SyntheticModelSpec {
    var s = SyntheticModelSpec(); s.hidden = 64; s.intermediate = 96; s.heads = 4; s.kvHeads = 2; s.headDim = 16
    return s
}

/// Uniform values in [-1, 1).
private func randoms(_ n: Int, seed: UInt64) -> [Float] {
    var rng = SplitMix64(seed: seed)
    return (0..<n).map { _ in Float(Double(rng.next() >> 11) / Double(1 << 53)) * 2 - 1 }
}

/// ‖(W − Ŵ)·Xᵀ‖² over the samples `x` (`[samples, cols]`).
private func outputError(_ w: [Float], _ q: [Float], rows: Int, cols: Int, x: [Float]) -> Double {
    let samples = x.count / cols
    var e = 0.0
    for s in 0..<samples {
        for r in 0..<rows {
            var d = 0.0
            for c in 0..<cols { d += Double(w[r * cols + c] - q[r * cols + c]) * Double(x[s * cols + c]) }
            e += d * d
        }
    }
    return e
}

/// Correlated inputs: each sample mixes a few shared factors, plus noise and per-column scales.
private func correlatedInputs(samples: Int, cols: Int, seed: UInt64) -> [Float] {
    let factors = randoms(4 * cols, seed: seed), z = randoms(samples * 4, seed: seed + 1), noise = randoms(samples * cols, seed: seed + 2)
    var x = [Float](repeating: 0, count: samples * cols)
    for s in 0..<samples {
        for c in 0..<cols {
            var v: Float = 0
            for k in 0..<4 { v += z[s * 4 + k] * factors[k * cols + c] }
            x[s * cols + c] = (v + 0.3 * noise[s * cols + c]) * (1 + Float(c % 5))
        }
    }
    return x
}

/// Reference twin of SparseGPT with an N:M pattern: Double, no lazy blocks, its own
/// `U = chol((H + λI)⁻¹)ᵀ` (Gauss–Jordan inverse, Cholesky), each column fixed in turn and
/// its error spread over every later column at once.
private func referenceSparseGPT(_ w: [Float], rows: Int, cols n: Int, x: [Float], damp: Double, n keepN: Int = 0, m: Int = 0,
                                sparsity: Double = 0, block: Int = 0) -> [Float] {
    let U = referenceInverseFactor(x, cols: n, damp: damp)
    var W = w.map(Double.init)
    var keep = [Bool](repeating: true, count: rows * n)
    func score(_ r: Int, _ c: Int) -> Double { W[r * n + c] * W[r * n + c] / (U[c * n + c] * U[c * n + c]) }
    for i in 0..<n {
        if m == 0 && i % block == 0 {   // unstructured: each row's share of this block, ⌊s·end⌋ − ⌊s·start⌋
            let end = min(i + block, n), count = Int((Double(end) * sparsity).rounded(.down)) - Int((Double(i) * sparsity).rounded(.down))
            for r in 0..<rows {
                let order = (i..<end).sorted { a, b in score(r, a) < score(r, b) || (score(r, a) == score(r, b) && a < b) }
                for c in order.prefix(count) { keep[r * n + c] = false }
            }
        }
        if m > 0 && i % m == 0 {
            for r in 0..<rows {
                let order = (i..<(i + m)).sorted { a, b in
                    let sa = W[r * n + a] * W[r * n + a] / (U[a * n + a] * U[a * n + a]), sb = W[r * n + b] * W[r * n + b] / (U[b * n + b] * U[b * n + b])
                    return sa < sb || (sa == sb && a < b)
                }
                for c in order.prefix(m - keepN) { keep[r * n + c] = false }
            }
        }
        for r in 0..<rows {
            let q = keep[r * n + i] ? W[r * n + i] : 0
            let e = (W[r * n + i] - q) / U[i * n + i]
            W[r * n + i] = q
            for j in (i + 1)..<n { W[r * n + j] -= e * U[i * n + j] }
        }
    }
    return W.map { Float($0) }
}

@Suite("Pruning: masks, Wanda, SparseGPT, builds", .serialized)
struct PruningTests {
    @Test("masks: exactly ⌊s·cols⌋ per row or m − n per aligned run of m, the lowest scores, ties to the lower column")
    func masks() throws {
        let rows = 7, cols = 40
        let scores = randoms(rows * cols, seed: 3).map { abs($0) }
        let u = try Pruner.mask(scores: scores, rows: rows, cols: cols, options: PruneOptions(method: .magnitude, sparsity: 0.55), tensor: "t")
        for r in 0..<rows {
            let pruned = (0..<cols).filter { !u[r * cols + $0] }
            #expect(pruned.count == 22)
            let maxPruned = pruned.map { scores[r * cols + $0] }.max()!
            let minKept = (0..<cols).filter { u[r * cols + $0] }.map { scores[r * cols + $0] }.min()!
            #expect(maxPruned <= minKept)
        }
        let p = try Pruner.mask(scores: scores, rows: rows, cols: cols, options: PruneOptions(method: .magnitude, pattern: SparsityPattern(n: 2, m: 8)), tensor: "t")
        for r in 0..<rows {
            for c0 in stride(from: 0, to: cols, by: 8) {
                let run = (c0..<(c0 + 8))
                #expect(run.filter { p[r * cols + $0] }.count == 2)
                let kept = run.filter { p[r * cols + $0] }.map { scores[r * cols + $0] }.min()!
                #expect(run.filter { !p[r * cols + $0] }.allSatisfy { scores[r * cols + $0] <= kept })
            }
        }
        // Ties: equal scores prune the lower columns first.
        let tie = try Pruner.mask(scores: [Float](repeating: 1, count: 8), rows: 1, cols: 8, options: PruneOptions(method: .magnitude, sparsity: 0.5), tensor: "t")
        #expect(tie.map { $0 ? 1 : 0 } == [0, 0, 0, 0, 1, 1, 1, 1])
        #expect(throws: RecipeError.self) { _ = try Pruner.mask(scores: scores, rows: rows, cols: cols, options: PruneOptions(method: .magnitude, pattern: SparsityPattern(n: 2, m: 3)), tensor: "t") }
    }

    @Test("Wanda weighs |W| by the inputs' norms; magnitude does not")
    func wanda() throws {
        let w: [Float] = [1, 2, -3, 0.5]   // one row, 4 inputs
        let o = PruneOptions(method: .wanda, sparsity: 0.5)
        let mag = try Pruner.prune(weights: w, rows: 1, cols: 4, options: o, tensor: "t")
        #expect(mag.weights == [0, 2, -3, 0])
        let wa = try Pruner.prune(weights: w, rows: 1, cols: 4, options: o, columnNorms: [10, 0.1, 1, 1], tensor: "t")
        // scores 10, 0.2, 3, 0.5 → inputs 1 and 3 pruned.
        #expect(wa.weights == [1, 0, -3, 0] && wa.keep == [true, false, true, false])
    }

    @Test("SparseGPT: with H ∝ I it is magnitude pruning; 2:4 matches a Double reference twin for every block size and beats Wanda's output error")
    func sparseGPT() throws {
        let rows = 12, cols = 48
        let w = randoms(rows * cols, seed: 5)
        // H ∝ I: identity samples.
        var eye = HessianAccumulator(cols: cols)
        var id = [Float](repeating: 0, count: cols * cols)
        for i in 0..<cols { id[i * cols + i] = 1 }
        eye.add(id, rows: cols)
        let fi = try GPTQ.factor(hessian: eye, damp: 0.01, tensor: "t")
        for o in [PruneOptions(method: .sparsegpt, sparsity: 0.5), PruneOptions(method: .sparsegpt, pattern: try SparsityPattern(n: 2, m: 4))] {
            let s = try Pruner.sparseGPT(weights: w, rows: rows, cols: cols, factorization: fi, options: o, blockSize: 128, tensor: "t")
            let m = try Pruner.prune(weights: w, rows: rows, cols: cols, options: o, tensor: "t")
            #expect(s.keep == m.keep)
            #expect(zip(s.weights, m.weights).allSatisfy { $0 == $1 })
        }
        // Correlated inputs: against the reference twin, and against Wanda.
        let x = correlatedInputs(samples: 200, cols: cols, seed: 9)
        var h = HessianAccumulator(cols: cols)
        h.add(x, rows: 200)
        let f = try GPTQ.factor(hessian: h, damp: 0.01, tensor: "t")
        let o = PruneOptions(method: .sparsegpt, pattern: try SparsityPattern(n: 2, m: 4))
        let ref = referenceSparseGPT(w, rows: rows, cols: cols, x: x, damp: 0.01, n: 2, m: 4)
        var worst: Float = 0
        for b in [1, 4, 7, 16, 128] {
            let s = try Pruner.sparseGPT(weights: w, rows: rows, cols: cols, factorization: f, options: o, blockSize: b, tensor: "t")
            #expect(zip(s.weights, ref).allSatisfy { ($0 == 0) == ($1 == 0) }, "block \(b): the mask differs from the reference's")
            for (a, r) in zip(s.weights, ref) { worst = max(worst, abs(a - r)) }
        }
        print("SparseGPT 2:4 vs reference twin: max |Δw| \(worst)")
        #expect(worst < 2e-6)
        // Unstructured, per row per block: the block boundaries decide each row's share.
        for b in [7, 16] {
            let u = PruneOptions(method: .sparsegpt, sparsity: 0.55)
            let s = try Pruner.sparseGPT(weights: w, rows: rows, cols: cols, factorization: f, options: u, blockSize: b, tensor: "t")
            let r = referenceSparseGPT(w, rows: rows, cols: cols, x: x, damp: 0.01, sparsity: 0.55, block: b)
            #expect(zip(s.weights, r).allSatisfy { ($0 == 0) == ($1 == 0) }, "unstructured block \(b): the mask differs from the reference's")
            let d = zip(s.weights, r).map { abs($0 - $1) }.max()!
            #expect(d < 2e-6, "unstructured block \(b): max |Δw| \(d)")
            for row in 0..<rows { #expect((0..<cols).filter { s.weights[row * cols + $0] == 0 }.count == u.prunedPerRow(cols: cols)) }
        }
        // A dead input (always 0): its weights are zeroed and pruned first; nothing else changes in kind.
        var xd = x
        for t in 0..<200 { xd[t * cols + 5] = 0 }
        var hd = HessianAccumulator(cols: cols)
        hd.add(xd, rows: 200)
        let dead = try Pruner.sparseGPT(weights: w, rows: rows, cols: cols, factorization: try GPTQ.factor(hessian: hd, damp: 0.01, tensor: "t"), options: o, tensor: "t")
        for row in 0..<rows {
            #expect(dead.weights[row * cols + 5] == 0 && !dead.keep[row * cols + 5])
            #expect((0..<cols).filter { dead.weights[row * cols + $0] == 0 }.count == 24 && dead.weights.allSatisfy { $0.isFinite })
        }
        let wa = try Pruner.prune(weights: w, rows: rows, cols: cols, options: PruneOptions(method: .wanda, pattern: try SparsityPattern(n: 2, m: 4)),
                                  columnNorms: h.meanSquares.map { $0.squareRoot() }, tensor: "t")
        let mg = try Pruner.prune(weights: w, rows: rows, cols: cols, options: PruneOptions(method: .magnitude, pattern: try SparsityPattern(n: 2, m: 4)), tensor: "t")
        let sg = try Pruner.sparseGPT(weights: w, rows: rows, cols: cols, factorization: f, options: o, tensor: "t")
        let (eS, eW, eM) = (outputError(w, sg.weights, rows: rows, cols: cols, x: x), outputError(w, wa.weights, rows: rows, cols: cols, x: x),
                            outputError(w, mg.weights, rows: rows, cols: cols, x: x))
        print(String(format: "2:4 output error: SparseGPT %.4g, Wanda %.4g, magnitude %.4g", eS, eW, eM))
        #expect(eS < 0.25 * eW && eW < 0.7 * eM)
    }

    @Test("builds: every decoder matrix has the pattern's zeros, the rest is untouched, the header records it, same bytes at any thread count; int4s decodes pruned weights to exactly 0")
    func builds() throws {
        let f = try fixture("prune-build", spec: divisible)
        defer { try? FileManager.default.removeItem(atPath: f.dir) }
        let dense = try LMPKFile(path: { _ = try BuildSpec(source: f.dir + "/m", scheme: "f32").build(output: f.dir + "/d.lmpk"); return f.dir + "/d.lmpk" }())
        let cal = CalibrationOptions(file: f.text, samples: 6, ctx: 48, seed: 3)
        for (method, o, scheme) in [(PruneMethod.magnitude, PruneOptions(method: .magnitude, sparsity: 0.5), "f32"),
                                    (.wanda, PruneOptions(method: .wanda, pattern: try SparsityPattern(n: 2, m: 4)), "f16"),
                                    (.sparsegpt, PruneOptions(method: .sparsegpt, pattern: try SparsityPattern(n: 4, m: 8)), "f32"),
                                    (.sparsegpt, PruneOptions(method: .sparsegpt, sparsity: 0.6), "int4s-g32")] {
            var s = BuildSpec(source: f.dir + "/m", scheme: scheme)
            s.prune = o
            if method != .magnitude { s.calibration = cal }
            s.threads = 2
            let out = f.dir + "/\(method.rawValue)-\(scheme).lmpk"
            _ = try s.build(output: out)
            s.threads = 1
            _ = try s.build(output: out + ".1")
            #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == Data(contentsOf: URL(fileURLWithPath: out + ".1")), "\(method) \(scheme): bytes depend on threads")
            let file = try LMPKFile(path: out)
            let model = try LlamaModel.load(lmpk: file)
            #expect(file.header["pruning"]?["method"]?.string == method.rawValue)
            for t in file.tensors {
                let rows = t.shape.count == 2 ? t.shape[0] : 1, cols = t.shape.last!
                let v = RoundToNearest.dequantize(scheme: t.scheme, rows: rows, cols: cols, sections: t.sections)
                if t.name.hasPrefix("model.layers."), t.shape.count == 2 {
                    #expect(file.header["pruning"]?["tensors"]?[t.name]?.double == o.maskFraction(cols: cols))
                    // Float schemes keep every kept weight nonzero (the synthetic weights have no zeros),
                    // so the counts are exact; int4s may round a small kept weight to 0 too.
                    let exact = !t.scheme.isQuantized
                    func ok(_ zeros: Int, _ want: Int) -> Bool { exact ? zeros == want : zeros >= want }
                    for r in 0..<rows {
                        if let p = o.pattern {
                            for c0 in stride(from: 0, to: cols, by: p.m) {
                                #expect(ok((c0..<(c0 + p.m)).filter { v[r * cols + $0] == 0 }.count, p.m - p.n), "\(t.name) row \(r)")
                            }
                        } else {
                            #expect(ok((0..<cols).filter { v[r * cols + $0] == 0 }.count, o.prunedPerRow(cols: cols)), "\(t.name) row \(r)")
                        }
                    }
                    // The methods differ from plain magnitude pruning of the source: Wanda in its
                    // mask, SparseGPT in its updated kept weights.
                    let d = dense[t.name]!
                    let src = RoundToNearest.dequantize(scheme: d.scheme, rows: rows, cols: cols, sections: d.sections)
                    let mag = try Pruner.prune(weights: src, rows: rows, cols: cols, options: o, tensor: t.name)
                    if method == .wanda { #expect(zip(mag.keep, v).contains { $0 != ($1 != 0) }, "\(t.name): Wanda's mask is magnitude's") }
                    if method == .sparsegpt && exact {
                        #expect(zip(src, v).contains { $1 != 0 && $0 != $1 }, "\(t.name): SparseGPT left the kept weights unchanged")
                    }
                } else if t.scheme.kind == .f32, let d = dense[t.name] {
                    let same = RoundToNearest.dequantize(scheme: d.scheme, rows: rows, cols: cols, sections: d.sections) == v
                    #expect(same, "\(t.name) changed")
                }
            }
            _ = model
        }
    }

    @Test("re-pruning an already-pruned model: allowed when the new mask can hold every weight pruned before, refused otherwise and without options")
    func repruning() throws {
        func record(_ p: String?, _ s: Double? = nil) -> JSON {
            .object([("method", .string("wanda"))] + (p.map { [("pattern", JSON.string($0))] } ?? []) + (s.map { [("sparsity", JSON.double($0))] } ?? []))
        }
        func new(_ p: String?, _ s: Double? = nil) throws -> PruneOptions {
            PruneOptions(method: .magnitude, sparsity: s, pattern: try p.map { try SparsityPattern(parsing: $0) })
        }
        func allowed(_ old: JSON, _ n: PruneOptions) -> Bool { (try? Pruner.checkRepruning(existing: old, with: n, file: "x.lmpk")) != nil }
        // (old, new, allowed)
        let cases: [(JSON, PruneOptions, Bool)] = [
            (record("2:4"), try new("2:4"), true), (record("2:4"), try new("4:8"), true), (record("2:4"), try new("1:4"), true),
            (record("2:4"), try new(nil, 0.5), true), (record("2:4"), try new(nil, 0.6), true), (record("2:4"), try new(nil, 0.4), false),
            (record("4:8"), try new("2:4"), false), (record("4:8"), try new("1:2"), false), (record("2:4"), try new("3:8"), true),
            (record("2:4"), try new("2:8"), true), (record("1:2"), try new("2:4"), true), (record("2:4"), try new("1:3"), false),
            (record(nil, 0.5), try new(nil, 0.5), true), (record(nil, 0.5), try new(nil, 0.7), true), (record(nil, 0.5), try new(nil, 0.3), false),
            (record(nil, 0.5), try new("2:4"), false), (record(nil, 0), try new("2:4"), true),
        ]
        for (o, n, ok) in cases { #expect(allowed(o, n) == ok, "\(o.serialized()) → \(n.json.serialized())") }
        do { try Pruner.checkRepruning(existing: record("4:8"), with: try new("2:4"), file: "p.lmpk"); Issue.record("accepted") } catch {
            #expect("\(error)".contains("'p.lmpk' is already pruned (4:8 by wanda)") && "\(error)".contains("2:4"), "\(error)")
        }
        do { try Pruner.checkRepruning(existing: record("2:4"), with: nil, file: "p.lmpk"); Issue.record("accepted") } catch {
            #expect("\(error)".contains("--method magnitude --pattern 2:4"), "\(error)")
        }
        // SparseGPT's updates would revive pruned weights; a record that does not parse is refused.
        let sg = PruneOptions(method: .sparsegpt, pattern: try SparsityPattern(n: 2, m: 4))
        let wa = PruneOptions(method: .wanda, pattern: try SparsityPattern(n: 2, m: 4))
        #expect(!allowed(record("2:4"), sg) && allowed(record("2:4"), wa))
        #expect(!allowed(.object([("method", .string("wanda")), ("pattern", .string("2-4"))]), try new("2:4")))
        #expect(!allowed(.object([("method", .string("wanda"))]), try new(nil, 0.5)))
    }

    @Test("bad input: sparsity outside [0, 1), both or neither, a pattern that does not divide, an asymmetric scheme, no calibration, AWQ: clear errors before any work, no file")
    func errors() throws {
        let f = try fixture("prune-err")   // intermediate 37: 2:4 does not divide down_proj
        defer { try? FileManager.default.removeItem(atPath: f.dir) }
        func option(_ s: BuildSpec) -> String? { do { _ = try s.recipe(); return nil } catch let e as BuildSpecError { return e.option } catch { return "?" } }
        var s = BuildSpec(source: f.dir + "/m", scheme: "f16")
        s.prune = PruneOptions(method: .magnitude, sparsity: 1)
        #expect(option(s) == "sparsity")
        s.prune = PruneOptions(method: .magnitude, sparsity: -0.1)
        #expect(option(s) == "sparsity")
        s.prune = PruneOptions(method: .magnitude)
        #expect(option(s) == "sparsity")
        s.prune = PruneOptions(method: .magnitude, sparsity: 0.5, pattern: try SparsityPattern(n: 2, m: 4))
        #expect(option(s) == "pattern")
        #expect(throws: BuildSpecError.self) { _ = try SparsityPattern(parsing: "4:4") }
        #expect(throws: BuildSpecError.self) { _ = try SparsityPattern(parsing: "2-4") }
        s.prune = PruneOptions(method: .wanda, sparsity: 0.5)
        #expect(option(s) == "calib")
        s.calibration = CalibrationOptions(file: f.text, samples: 4, ctx: 32, seed: 0)
        #expect(option(s) == nil)
        s.clip = .mse
        #expect(option(s) == "clip")
        s.clip = .minmax
        s.gptq.actOrder = true
        #expect(option(s) == "act_order")
        s.gptq.actOrder = false
        s.method = .gptq; s.scheme = "int4s-g32"
        #expect(option(s) == nil)   // GPTQ in the same pass (PruneGPTQTests)
        s.method = .awq
        #expect(option(s) == "method")
        s.method = .gptq; s.gptq.trueSequential = true
        #expect(option(s) == nil)
        #expect(try s.canonical()["gptq"]?["true_sequential"]?.bool == true)
        s.gptq.trueSequential = nil
        #expect(try s.canonical()["gptq"]?["true_sequential"]?.bool == false)   // with pruning: two passes unless asked
        s.method = .rtn; s.gptq.trueSequential = false
        #expect(option(s) == nil)   // what round to nearest does anyway
        s.gptq.trueSequential = true
        #expect(option(s) == "true_sequential")
        s.gptq.trueSequential = nil; s.scheme = "f16"
        let out = f.dir + "/x.lmpk"
        // Compressed N:M is not an allocation candidate (its round-trip error is not measured).
        var alloc = BuildSpec(source: f.dir + "/m", scheme: "int4-g32")
        alloc.calibration = CalibrationOptions(file: f.text, samples: 4, ctx: 32, seed: 0)
        alloc.allocation = AllocationOptions(targetBPW: 5, candidates: ["int4-g32+2:4", "int8-g32"])
        #expect(option(alloc) == "candidates")
        // 1:4 stored as +2:4 stores pruned weights as values: refused for asymmetric int4 (no exact 0).
        for (scheme, pattern, expected) in [("f16", "2:4", "mlp.down_proj.weight' has 37 inputs"), ("int4-g32", "1:2", "asymmetric grid"), ("int3-g32", "4:8", "asymmetric grid"),
                                            ("int4-g32+2:4", "1:4", "has no exact 0")] {
            s.scheme = scheme
            // Dense storage of asymmetric int4 has no exact 0 (compressed storage would not store the pruned weights at all).
            s.prune = PruneOptions(method: .wanda, pattern: try SparsityPattern(parsing: pattern), storage: scheme == "int4-g32" ? .dense : nil)
            do { _ = try s.build(output: out); Issue.record("\(scheme) \(pattern) was accepted") } catch {
                #expect("\(error)".contains(expected), "\(error)")
            }
            #expect(!FileManager.default.fileExists(atPath: out))
        }
    }
}
