import Foundation
import LMCore
import LMFormats
import LMQuant
import LMRuntime
import LMTestSupport
import Testing

/// Compressed N:M storage (`+1:2`, `+2:4`, `+4:8`): the reference codec against the dense
/// value scheme, and every kernel (decode at each level, prefill tiles, row lookups)
/// against the reference dequantizer, on odd shapes.
@Suite("Compressed N:M kernels vs the reference dequantizer", .serialized)
struct NMKernelTests {
    static let values = ["f32", "f16", "bf16", "int8", "int8-g32", "int8-g64", "int4-g32", "int4-g64", "int4s-g32", "int4s-g128"]
    static let patterns = ["1:2", "2:4", "4:8"]
    static var names: [String] { values.flatMap { v in patterns.map { "\(v)+\($0)" } } }
    /// Shapes with odd block counts (40, 72, 200 columns: a last kept block of 16 values) and
    /// tails inside a mask byte (36, 44: 2:4 and 1:2 only).
    static func shapes(m: Int) -> [(Int, Int)] {
        [(1, 32), (3, 8), (17, 40), (5, 72), (33, 176), (64, 576), (130, 200)] + (m <= 4 ? [(7, 36), (9, 44)] : [])
    }

    /// A random matrix pruned N:M by magnitude (the smallest |w| of each run set to 0).
    static func sparse(rows: Int, cols: Int, n: Int, m: Int, seed: UInt64) -> [Float] {
        var rng = SplitMix64(seed: seed)
        var w = (0..<(rows * cols)).map { _ in rng.nextSigned() * 0.5 }
        for r in 0..<rows {
            for c0 in stride(from: 0, to: cols, by: m) {
                let idx = (c0..<(c0 + m)).sorted { abs(w[r * cols + $0]) < abs(w[r * cols + $1]) }
                for c in idx.prefix(m - n) { w[r * cols + c] = 0 }
            }
        }
        return w
    }

    @Test("decoded weights: exactly 0 where pruned, and exactly the value scheme's decoding of the kept values elsewhere", arguments: names)
    func reference(_ name: String) throws {
        let scheme = try QuantScheme(parsing: name), sp = scheme.sparsity!
        for (rows, cols) in Self.shapes(m: sp.m) {
            let w = Self.sparse(rows: rows, cols: cols, n: sp.n, m: sp.m, seed: UInt64(rows * 31 + cols))
            let q = RoundToNearest.quantize(w, rows: rows, cols: cols, scheme: scheme)
            let got = q.dequantized()
            // The twin: the kept values of each row as a dense [rows, cols·n/m] tensor of the value scheme.
            let k = cols / sp.m * sp.n
            var kept = [Float](), where_ = [[Int]]()
            for r in 0..<rows {
                var cs: [Int] = []
                for c0 in stride(from: 0, to: cols, by: sp.m) {
                    // The codec's choice: the n largest |w| of the run, the first among equals.
                    let order = (c0..<(c0 + sp.m)).sorted { abs(w[r * cols + $0]) > abs(w[r * cols + $1]) || abs(w[r * cols + $0]) == abs(w[r * cols + $1]) && $0 < $1 }
                    cs += order.prefix(sp.n).sorted()
                }
                where_.append(cs)
                kept += cs.map { w[r * cols + $0] }
            }
            let dense = RoundToNearest.quantize(kept, rows: rows, cols: k, scheme: scheme.dense).dequantized()
            var want = [Float](repeating: 0, count: rows * cols)
            for r in 0..<rows { for (j, c) in where_[r].enumerated() { want[r * cols + c] = dense[r * k + j] } }
            let same = got == want
            #expect(same, "\(name) \(rows)x\(cols)")
            let zeros = zip(w, got).allSatisfy { $0.0 != 0 || $0.1 == 0 || !where_.isEmpty }
            #expect(zeros)
            for i in 0..<(rows * cols) where w[i] == 0 && !where_[i / cols].contains(i % cols) { #expect(got[i] == 0, "\(name): pruned weight \(i) decodes to \(got[i])") }
        }
    }

    @Test("decode at every kernel level this CPU has (float and int8 activations), prefill tiles and rows match W_ref·x", arguments: names)
    func kernels(_ name: String) throws {
        let scheme = try QuantScheme(parsing: name), sp = scheme.sparsity!
        let G = scheme.groupSize
        for k in KernelSet.available {
            let ctx = ComputeContext(threads: 2, kernels: k)
            for (rows, cols) in Self.shapes(m: sp.m) {
                let w = Self.sparse(rows: rows, cols: cols, n: sp.n, m: sp.m, seed: UInt64(rows * 7 + cols))
                let (lin, ref, _) = try packedWeight(w, rows: rows, cols: cols, scheme: scheme)
                let packed = lin as! PackedLinear
                var rng = SplitMix64(seed: UInt64(cols))
                for integer in [false, true] where !integer || scheme.isQuantized {
                    packed.integerDecode = integer
                    for tokens in [1, 3, 9] {
                        let x = (0..<(tokens * cols)).map { _ in rng.nextSigned() }
                        var out = [Float](repeating: .nan, count: tokens * rows)
                        x.withUnsafeBufferPointer { xp in out.withUnsafeMutableBufferPointer { lin.apply(xp.baseAddress!, tokens: tokens, out: $0.baseAddress!, ldOut: rows, context: ctx) } }
                        for t in 0..<tokens { for r in 0..<rows {
                            var s = 0.0, mag = 0.0, bound = 0.0
                            for c in 0..<cols { let p = Double(ref[r * cols + c]) * Double(x[t * cols + c]); s += p; mag += abs(p) }
                            if integer && tokens <= 3 {
                                // int8 activations per 32 columns (|Δx| ≤ max|x_b|/254) times the code part of each
                                // kept weight: |w| for int8, at most 2·max|w| of its kept-value group for int4.
                                let keptCols = (0..<cols).filter { ref[r * cols + $0] != 0 || w[r * cols + $0] != 0 }
                                for (j, c) in keptCols.enumerated() {
                                    let b = c / 32
                                    let dx = Double(((32 * b)..<min(cols, 32 * b + 32)).map { abs(x[t * cols + $0]) }.max()!) / 127
                                    let gl = G == 0 ? 0 : j / G * G, gh = G == 0 ? keptCols.count : min(keptCols.count, gl + G)
                                    let gmax = Double(keptCols[gl..<gh].map { abs(ref[r * cols + $0]) }.max() ?? 0)
                                    bound += (scheme.kind == .int8 ? abs(Double(ref[r * cols + c])) : 2 * gmax) * dx / 2
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
                    let same = row == Array(ref[(r * cols)..<((r + 1) * cols)])
                    #expect(same, "\(name) row \(r)")
                }
            }
        }
    }

    @Test("every SIMD level's matvec_nm and matvec_nm_f equal the generic level within float reordering", arguments: names)
    func levelsAgree(_ name: String) throws {
        let scheme = try QuantScheme(parsing: name), sp = scheme.sparsity!
        let generic = ComputeContext(threads: 1, kernels: KernelSet(level: 0)!)
        let levels = KernelSet.available.filter { $0.level > 0 }
        if levels.isEmpty { print("SKIPPED levelsAgree (N:M): this CPU has only the generic level") }
        var worstAll = 0.0
        for (rows, cols) in Self.shapes(m: sp.m) + [(577, 1536), (49, 576)] {
            let w = Self.sparse(rows: rows, cols: cols, n: sp.n, m: sp.m, seed: UInt64(rows * 13 + cols))
            let (lin, ref, _) = try packedWeight(w, rows: rows, cols: cols, scheme: scheme)
            var rng = SplitMix64(seed: UInt64(rows))
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
                worstAll = max(worstAll, worst)
                #expect(worst <= PackedKernelTests.levelTolerance, "\(name) \(k) \(rows)x\(cols): relative difference \(worst)")
            }
        }
        print("nm \(name): worst level difference \(worstAll)")
    }

    @Test("sizes: 2:4 and 4:8 store half the values plus one mask bit per weight")
    func sizes() throws {
        for (v, ratio) in [("f16", 16.0 / 9), ("int8-g32", 8.5 / 5.25), ("int4s-g32", 4.5 / 3.25)] {
            for p in ["2:4", "4:8"] {
                let d = try QuantScheme(parsing: v), s = try QuantScheme(parsing: "\(v)+\(p)")
                let got = d.bitsPerWeight(rows: 576, cols: 1536) / s.bitsPerWeight(rows: 576, cols: 1536)
                #expect(abs(got - ratio) < 1e-9, "\(v)+\(p): dense/compressed \(got), expected \(ratio)")
            }
        }
    }

    @Test("a pruner's mask decides the stored mask: a kept weight that is 0 does not make a pruned one stored (asymmetric int4 would decode it non-zero)")
    func pruningMaskKept() throws {
        let scheme = try QuantScheme(parsing: "int4-g32+2:4")
        let rows = 3, cols = 64
        var w = Self.sparse(rows: rows, cols: cols, n: 2, m: 4, seed: 9)
        var keep = w.map { $0 != 0 }
        // Row 1, run 2: the pruner keeps columns 9 and 10, and column 10's weight is 0; columns 8 and 11 are pruned.
        for c in 8..<12 { w[cols + c] = 0; keep[cols + c] = false }
        w[cols + 9] = 0.3; keep[cols + 9] = true; keep[cols + 10] = true
        let back = RoundToNearest.quantize(w, rows: rows, cols: cols, scheme: scheme, keep: keep).dequantized()
        for i in 0..<(rows * cols) where !keep[i] { #expect(back[i] == 0, "pruned weight \(i) decodes to \(back[i])") }
        // Without the mask the codec keeps the first zero of the run (column 8), a pruned position.
        let derived = RoundToNearest.quantize(w, rows: rows, cols: cols, scheme: scheme).dequantized()
        #expect(derived[cols + 10] == 0 && derived[cols + 8] != 0, "\(derived[cols + 8]) \(derived[cols + 10])")
    }

    @Test("bad masks and shapes are refused before use")
    func badInput() throws {
        let scheme = try QuantScheme(parsing: "int8-g32+2:4")
        let w = Self.sparse(rows: 4, cols: 64, n: 2, m: 4, seed: 1)
        let q = RoundToNearest.quantize(w, rows: 4, cols: 64, scheme: scheme)
        var bytes = q.sections.map { $0.bytes }
        _ = try PackedLinear.make(rows: 4, cols: 64, scheme: scheme, sections: bytes)
        for (i, corrupt) in [(3, UInt8(0x0F)), (9, UInt8(0x07)), (0, UInt8(0xFF))] {
            var b = bytes
            b[b.count - 1][i] = corrupt
            #expect(throws: RuntimeError.self) { try PackedLinear.make(rows: 4, cols: 64, scheme: scheme, sections: b) }
        }
        // A set padding bit (cols 36 → 64 padded): refused.
        let s2 = try QuantScheme(parsing: "f16+2:4")
        let w2 = Self.sparse(rows: 2, cols: 36, n: 2, m: 4, seed: 2)
        bytes = RoundToNearest.quantize(w2, rows: 2, cols: 36, scheme: s2).sections.map { $0.bytes }
        _ = try PackedLinear.make(rows: 2, cols: 36, scheme: s2, sections: bytes)
        bytes[bytes.count - 1][4] |= 0x40
        #expect(throws: RuntimeError.self) { try PackedLinear.make(rows: 2, cols: 36, scheme: s2, sections: bytes) }
        #expect(throws: QuantSchemeError.self) { try QuantScheme(parsing: "int8+3:4") }
        #expect(throws: QuantSchemeError.self) { try QuantScheme(parsing: "int3-g32+2:4") }
        #expect(throws: RuntimeError.self) { try PackedLinear.make(rows: 1, cols: 6, scheme: try QuantScheme(parsing: "f32+4:8"), sections: [[UInt8](repeating: 0, count: 12), [UInt8](repeating: 0, count: 4)]) }
    }
}
