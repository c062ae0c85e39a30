import CKernels
import Foundation
import LMCore
import LMQuant
import LMRuntime
import LMTestSupport
import Testing

// int3 / int2 kernels (CKernels matvec_q3 / matvec_q2 / dequant_q3 / dequant_q2 at every
// level) against their reference twins: a Double evaluation of the integer-activation
// formula on the stored codes, and the codec's scalar decoder (`LowBitCodec.decodeRow`).

/// Bytes placed so that they end exactly at a PROT_NONE page: a kernel reading one byte
/// past the end faults instead of passing by luck.
private final class Guarded {
    let base: UnsafeMutableRawPointer, total: Int, start: UnsafeMutableRawPointer
    init(_ bytes: [UInt8]) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let span = (bytes.count + page - 1) / page * page
        total = span + page
        base = mmap(nil, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        mprotect(base + span, page, PROT_NONE)
        start = base + (span - bytes.count)
        bytes.withUnsafeBytes { if let b = $0.baseAddress { start.copyMemory(from: b, byteCount: bytes.count) } }
    }
    deinit { munmap(base, total) }
}

/// One quantized matrix, its codes and parameters read back through the codec.
private struct LowBitMatrix {
    let scheme: QuantScheme, rows: Int, cols: Int
    let sections: [[UInt8]]
    let codes: [Int32], scales: [Float], mins: [Float]
    let reference: [Float]

    init(_ name: String, rows: Int, cols: Int, seed: UInt64) throws {
        let scheme = try QuantScheme(parsing: name)
        self.scheme = scheme; self.rows = rows; self.cols = cols
        var rng = SplitMix64(seed: seed)
        // Rows with their own offset and spread (asymmetric groups), a few outliers.
        var w = [Float](repeating: 0, count: rows * cols)
        for r in 0..<rows {
            let off = rng.nextSigned() * 0.3, amp = 0.05 + abs(rng.nextSigned())
            for c in 0..<cols { let u = rng.nextSigned(); w[r * cols + c] = off + amp * (u + 2 * u * u * u) }
        }
        let sections = RoundToNearest.quantize(w, rows: rows, cols: cols, scheme: scheme).sections.map(\.bytes)
        self.sections = sections
        let codec = scheme.codec as! LowBitCodec
        let ng = scheme.groups(cols: cols), rowBytes = QuantScheme.paddedCols(cols) / 32 * codec.blockBytes
        var codes = [Int32](repeating: 0, count: rows * cols), s = [Float](), m = [Float]()
        sections.withRawPointers { p in
            for r in 0..<rows { for c in 0..<cols { codes[r * cols + c] = Int32(codec.code(p[0], rowStart: r * rowBytes, column: c)) } }
            for i in 0..<(rows * ng) {
                s.append(Float(Float16(bitPattern: p[1].loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))))
                m.append(Float(Float16(bitPattern: p[2].loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))))
            }
        }
        self.codes = codes; scales = s; mins = m
        reference = sections.withRawPointers { RoundToNearest.dequantize(scheme: scheme, rows: rows, cols: cols, sections: $0) }
    }
}

@Suite("int3 / int2 kernels vs their reference twins", .serialized)
struct LowBitKernelTests {
    static let schemes = ["int3-g32", "int3-g64", "int3-g128", "int2-g32", "int2-g64", "int2-g128"]
    /// Odd shapes: rows not a multiple of 4 or 8, columns not a multiple of the group (or of 32).
    static let shapes: [(Int, Int)] = [(37, 200), (5, 96), (1, 1000), (9, 33), (13, 300), (64, 576), (3, 7)]
    /// Integer-activation matvec vs the Double twin on the same codes and int8 activations,
    /// relative to Σ|terms|: the block sums are exact, only float accumulation differs.
    /// Measured worst (2026-12-03, these shapes): generic 1.0e-7, avx2 1.6e-7.
    static let matvecTolerance = 4e-7

    /// Runs every check of one scheme at kernel level `level`; returns the worst relative error.
    static func check(_ name: String, level: Int) throws -> Double {
        let k = try #require(lmk_kernels_at(Int32(level)))
        let generic = lmk_kernels_at(0)!
        let bits = name.hasPrefix("int3") ? 3 : 2
        var worst = 0.0
        for (rows, cols) in shapes {
            let m = try LowBitMatrix(name, rows: rows, cols: cols, seed: UInt64(rows * 131 + cols))
            let G = m.scheme.groupSize, ng = m.scheme.groups(cols: cols), cols32 = QuantScheme.paddedCols(cols), nb = cols32 / 32
            var rng = SplitMix64(seed: UInt64(cols))
            var x = [Float](repeating: 0, count: cols32)
            for c in 0..<cols { x[c] = rng.nextSigned() * (1 + Float(c % 5)) }
            var qx = [Int8](repeating: 0, count: cols32), dx = [Float](repeating: 0, count: nb)
            generic.pointee.quantize_q8(x, Int32(nb), &qx, &dx)
            var xsum = [Float](repeating: 0, count: ng)
            for g in 0..<ng { for c in (g * G)..<min(cols, (g + 1) * G) { xsum[g] += x[c] } }
            let q = Guarded(m.sections[0]), s = Guarded(m.sections[1]), mn = Guarded(m.sections[2]), gx = Guarded(qx.map { UInt8(bitPattern: $0) })
            let qp = UnsafePointer(q.start.assumingMemoryBound(to: UInt8.self)), sp = UnsafePointer(s.start.assumingMemoryBound(to: UInt16.self))
            let mp = UnsafePointer(mn.start.assumingMemoryBound(to: UInt16.self)), xp = UnsafePointer(gx.start.assumingMemoryBound(to: Int8.self))
            let matvec = bits == 3 ? k.pointee.matvec_q3! : k.pointee.matvec_q2!
            let dequant = bits == 3 ? k.pointee.dequant_q3! : k.pointee.dequant_q2!
            for (r0, r1) in [(0, rows), (rows / 3, rows - rows / 4)] where r0 < r1 {
                var out = [Float](repeating: .nan, count: rows)
                matvec(qp, sp, mp, Int32(r0), Int32(r1), Int32(cols32), Int32(ng), Int32(G), xp, dx, xsum, &out)
                var untouched = true
                for r in 0..<rows {
                    guard r >= r0 && r < r1 else { if !out[r].isNaN { untouched = false }; continue }
                    var want = 0.0, mag = 0.0
                    for b in 0..<nb {
                        var isum = 0
                        for c in (32 * b)..<min(cols, 32 * b + 32) { isum += Int(m.codes[r * cols + c]) * Int(qx[c]) }
                        let sd = Double(m.scales[r * ng + 32 * b / G]) * Double(dx[b])
                        want += sd * Double(isum); mag += abs(sd * Double(isum))
                    }
                    for g in 0..<ng { let t = Double(m.mins[r * ng + g]) * Double(xsum[g]); want += t; mag += abs(t) }
                    worst = max(worst, abs(Double(out[r]) - want) / max(mag, 1e-30))
                }
                #expect(untouched, "\(name) level \(level) \(rows)x\(cols): rows outside \(r0)..<\(r1) written")
                // Prefill tiles: bit-identical to the reference decoder.
                var tile = [Float](repeating: .nan, count: (r1 - r0) * cols)
                dequant(qp, sp, mp, Int32(r0), Int32(r1), Int32(cols), Int32(ng), Int32(G), &tile)
                let same = tile.indices.allSatisfy { tile[$0].bitPattern == m.reference[r0 * cols + $0].bitPattern }
                #expect(same, "\(name) level \(level) \(rows)x\(cols) rows \(r0)..<\(r1): dequantized tile differs from the reference decoder")
            }
        }
        #expect(worst <= matvecTolerance, "\(name) level \(level): relative error \(worst)")
        return worst
    }

    @Test("generic and AVX2 matvec_q3/q2 within float rounding of the Double twin; dequant tiles bit-identical to the reference decoder", arguments: schemes)
    func levels(_ name: String) throws {
        for k in KernelSet.available where k.level < 2 {
            let worst = try Self.check(name, level: k.level)
            print("lowbit \(name) \(k): worst relative error \(worst)")
        }
    }

    @Test("AVX-512 VNNI matvec_q3/q2 and dequant_q3/q2 against the same twins", .enabled(if: KernelSet(level: 2) != nil, "this CPU lacks AVX-512 VNNI: the avx512vnni level is compiled but not run"), arguments: schemes)
    func avx512(_ name: String) throws {
        let worst = try Self.check(name, level: 2)
        print("lowbit \(name) avx512vnni: worst relative error \(worst)")
    }

    @Test("end to end through PackedLinear: decode (int8 activations, and float) and prefill tiles vs W_ref·x at every level", arguments: ["int3-g32", "int2-g64", "int3-g128", "int2-g32"])
    func applied(_ name: String) throws {
        for k in KernelSet.available {
            let ctx = ComputeContext(threads: 2, kernels: k)
            for (rows, cols) in Self.shapes {
                let m = try LowBitMatrix(name, rows: rows, cols: cols, seed: UInt64(rows * 7 + cols))
                let lin = try PackedLinear.make(rows: rows, cols: cols, scheme: m.scheme, sections: m.sections)
                var rng = SplitMix64(seed: UInt64(rows + cols))
                for integer in [true, false] {
                    (lin as! PackedLinear).integerDecode = integer
                    for tokens in [1, 9] {
                        let x = (0..<(tokens * cols)).map { _ in rng.nextSigned() }
                        var out = [Float](repeating: .nan, count: tokens * rows)
                        x.withUnsafeBufferPointer { xp in out.withUnsafeMutableBufferPointer { lin.apply(xp.baseAddress!, tokens: tokens, out: $0.baseAddress!, ldOut: rows, context: ctx) } }
                        var worst = 0.0
                        for t in 0..<tokens { for r in 0..<rows {
                            var want = 0.0, mag = 0.0, bound = 0.0
                            for c in 0..<cols { let p = Double(m.reference[r * cols + c]) * Double(x[t * cols + c]); want += p; mag += abs(p) }
                            if integer && tokens == 1 {
                                // int8 activations: |Δx| ≤ max|x_b|/254, times the code part s·q of each weight.
                                for b in 0..<((cols + 31) / 32) {
                                    let lo = 32 * b, hi = min(cols, lo + 32)
                                    let dx = Double((lo..<hi).map { abs(x[t * cols + $0]) }.max()!) / 127
                                    for c in lo..<hi { bound += abs(Double(m.scales[r * m.scheme.groups(cols: cols) + c / m.scheme.groupSize]) * Double(m.codes[r * cols + c])) * dx / 2 }
                                }
                            }
                            worst = max(worst, (abs(Double(out[t * rows + r]) - want) - bound) / max(mag, 1e-30))
                        } }
                        #expect(worst <= 1e-5, "\(name) \(k) \(rows)x\(cols) tokens \(tokens) integer \(integer): excess relative error \(worst)")
                    }
                }
            }
        }
    }
}
