import Foundation
import LMCore
import LMFormats
import LMQuant
import LMTestSupport
import Testing

func randomMatrix(_ rows: Int, _ cols: Int, seed: UInt64) -> [Float] {
    var rng = SplitMix64(seed: seed)
    // Heavy-ish tails, like real weights: mostly small, a few outliers.
    return (0..<(rows * cols)).map { _ in let u = rng.nextSigned(); return u * u * u * 0.2 + u * 0.02 }
}

func dequant(_ q: QuantizedTensor) -> [Float] {
    let bufs = q.sections.map { $0.bytes }
    return withPointers(bufs) { RoundToNearest.dequantize(scheme: q.scheme, rows: q.rows, cols: q.cols, sections: $0) }
}

func withPointers<R>(_ arrays: [[UInt8]], _ body: ([UnsafeRawBufferPointer]) -> R) -> R {
    var ptrs: [UnsafeRawBufferPointer] = []
    var copies: [UnsafeMutableRawBufferPointer] = []
    for a in arrays {
        let p = UnsafeMutableRawBufferPointer.allocate(byteCount: max(a.count, 1), alignment: 64)
        p.copyBytes(from: a)
        copies.append(p); ptrs.append(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(p)[0..<a.count]))
    }
    defer { copies.forEach { $0.deallocate() } }
    return body(ptrs)
}

@Suite("Quantization schemes (round to nearest)")
struct QuantTests {

    @Test("scheme names parse and print; bad names and groups are clear errors")
    func names() throws {
        for n in QuantScheme.allNames { #expect(try QuantScheme(parsing: n).name == n) }
        #expect(try QuantScheme(parsing: "int4").name == "int4-g32")
        #expect(try QuantScheme(parsing: "int4", defaultGroup: 128).name == "int4-g128")
        #expect(throws: QuantSchemeError.self) { try QuantScheme(parsing: "int5") }
        #expect(throws: QuantSchemeError.self) { try QuantScheme(parsing: "int4-g48") }
        #expect(throws: QuantSchemeError.self) { try QuantScheme(parsing: "f16-g32") }
    }

    @Test("bits per weight are exact, overhead included")
    func bits() throws {
        #expect(try QuantScheme(parsing: "int4-g32").bitsPerWeight(rows: 576, cols: 576) == 5.0)
        #expect(try QuantScheme(parsing: "int4s-g32").bitsPerWeight(rows: 576, cols: 576) == 4.5)
        #expect(try QuantScheme(parsing: "int4-g128").bitsPerWeight(rows: 576, cols: 576) == 4.0 + 32.0 * 5 / 576)
        #expect(try QuantScheme(parsing: "int8").bitsPerWeight(rows: 10, cols: 64) == 8.5)
        #expect(try QuantScheme(parsing: "f16").bitsPerWeight(rows: 3, cols: 7) == 16)
    }

    @Test("round trip error bounded by half a step; odd shapes and short last groups", arguments: QuantScheme.allNames)
    func roundTrip(_ name: String) throws {
        let scheme = try QuantScheme(parsing: name)
        for (rows, cols) in [(1, 1), (3, 7), (5, 33), (7, 127), (4, 576), (2, 172)] {
            let x = randomMatrix(rows, cols, seed: UInt64(rows * 1000 + cols))
            let q = RoundToNearest.quantize(x, rows: rows, cols: cols, scheme: scheme)
            #expect(q.sections.map { $0.bytes.count } == scheme.sections(rows: rows, cols: cols).map { $0.bytes })
            let y = dequant(q)
            let G = scheme.groupSize == 0 ? cols : scheme.groupSize
            for r in 0..<rows {
                for g in 0..<scheme.groups(cols: cols) {
                    let lo = g * G, hi = min(cols, lo + G)
                    let seg = x[(r * cols + lo)..<(r * cols + hi)]
                    let (mn, mx) = (seg.min()!, seg.max()!)
                    let amax = max(abs(mn), abs(mx))
                    let bound: Float
                    switch scheme.kind {
                    case .f32: bound = 0
                    case .f16: bound = amax * 1e-3
                    case .bf16: bound = amax * 8e-3
                    case .int8: bound = amax / 127 * 0.51 + amax * 1e-3
                    // Q4_0's rule: the extreme maps to −8 steps of amax/8; the other side clamps at 7 steps (error ≤ one step).
                    case .int4s: bound = amax / 8 * 1.001 + amax * 1e-3
                    case .int4: bound = (mx - mn) / 15 * 0.51 + amax * 2e-3
                    case .int3: bound = (mx - mn) / 7 * 0.51 + amax * 2e-3
                    case .int2: bound = (mx - mn) / 3 * 0.51 + amax * 2e-3
                    default: Issue.record("no error bound for scheme \(scheme.kind)"); bound = 0
                    }
                    for c in lo..<hi { #expect(abs(y[r * cols + c] - x[r * cols + c]) <= bound + 1e-7, "\(name) \(rows)x\(cols) r\(r) c\(c)") }
                }
            }
        }
    }

    @Test("--clip mse never has larger squared error than min/max", arguments: ["int4-g32", "int4-g128", "int4s-g64", "int8", "int8-g32", "int3-g32", "int3-g128", "int2-g64"])
    func mse(_ name: String) throws {
        let scheme = try QuantScheme(parsing: name)
        let x = randomMatrix(16, 576, seed: 42)
        func err(_ clip: ClipMethod) -> Double {
            let y = dequant(RoundToNearest.quantize(x, rows: 16, cols: 576, scheme: scheme, clip: clip))
            return zip(x, y).reduce(0.0) { $0 + Double(($1.0 - $1.1) * ($1.0 - $1.1)) }
        }
        let a = err(.minmax), b = err(.mse)
        #expect(b <= a)
        if scheme.kind != .int8 { #expect(b < a * 0.97, "mse \(b) vs minmax \(a)") }
    }

    @Test("quantization is deterministic")
    func deterministic() throws {
        let x = randomMatrix(33, 200, seed: 7)
        let s = try QuantScheme(parsing: "int4-g64")
        let a = RoundToNearest.quantize(x, rows: 33, cols: 200, scheme: s, clip: .mse)
        let b = RoundToNearest.quantize(x, rows: 33, cols: 200, scheme: s, clip: .mse)
        #expect(a.sections.map { $0.bytes } == b.sections.map { $0.bytes })
    }
}

@Suite("Scheme codecs: choose parameters → choose codes → pack")
struct CodecTests {
    @Test("codes chosen elsewhere (as GPTQ does) pack through the codec and decode to value(code, parameters) exactly", arguments: ["int4-g32", "int4-g64", "int4s-g32", "int4s-g128", "int8", "int8-g32", "int3-g32", "int3-g128", "int2-g32", "int2-g64"])
    func ownCodes(_ name: String) throws {
        let scheme = try QuantScheme(parsing: name)
        guard let codec = scheme.codec as? any IntegerSchemeCodec else { Issue.record("\(name) is not an integer codec"); return }
        let rows = 3, cols = 100
        let x = randomMatrix(rows, cols, seed: 9)
        let layout = scheme.sections(rows: rows, cols: cols)
        var bufs: [[UInt8]] = []
        let G = scheme.groupSize == 0 ? cols : scheme.groupSize, ng = scheme.groups(cols: cols)
        let span = Int(codec.codeRange.upperBound - codec.codeRange.lowerBound + 1)
        var allParams: [[GroupParameters]] = []
        var allCodes: [[Int32]] = []
        for r in 0..<rows {
            let params = (0..<ng).map { g in
                x.withUnsafeBufferPointer { codec.chooseParameters($0.baseAddress! + r * cols + g * G, count: min(G, cols - g * G), clip: .minmax, scheme: scheme) }
            }
            // Codes no round-to-nearest would pick: a sweep over the whole code range.
            let codes = (0..<cols).map { codec.codeRange.lowerBound + Int32((r * 7 + $0 * 3) % span) }
            allParams.append(params); allCodes.append(codes)
        }
        func withOut(_ body: ([UnsafeMutableRawPointer]) -> Void) {
            let raws = layout.map { l -> UnsafeMutableRawPointer in
                let p = UnsafeMutableRawPointer.allocate(byteCount: max(l.bytes, 1), alignment: 64)
                p.initializeMemory(as: UInt8.self, repeating: 0, count: l.bytes)
                return p
            }
            defer { raws.forEach { $0.deallocate() } }
            body(raws)
            bufs = layout.indices.map { Array(UnsafeRawBufferPointer(start: raws[$0], count: layout[$0].bytes)) }
        }
        withOut { out in
            for r in 0..<rows { allCodes[r].withUnsafeBufferPointer { codec.pack(codes: $0.baseAddress!, parameters: allParams[r], row: r, cols: cols, scheme: scheme, out: out) } }
        }
        let y = bufs.withRawPointers { RoundToNearest.dequantize(scheme: scheme, rows: rows, cols: cols, sections: $0) }
        for r in 0..<rows { for c in 0..<cols {
            #expect(y[r * cols + c] == codec.value(code: allCodes[r][c], allParams[r][c / G]), "\(name) r\(r) c\(c)")
        } }
        // And the reference encoder is exactly choose → choose → pack.
        let q = RoundToNearest.quantize(x, rows: rows, cols: cols, scheme: scheme)
        withOut { out in
            x.withUnsafeBufferPointer { xp in for r in 0..<rows { codec.encodeRow(xp.baseAddress! + r * cols, row: r, cols: cols, scheme: scheme, clip: .minmax, out: out) } }
        }
        #expect(bufs == q.sections.map(\.bytes))
    }

    @Test("the registry knows every scheme name; unknown families and bad groups are errors naming the scheme")
    func registry() throws {
        for n in QuantScheme.allNames { #expect(try QuantScheme(parsing: n).name == n) }
        #expect(Set(SchemeRegistry.codecs.map(\.family)) == ["f32", "f16", "bf16", "int8", "int4", "int4s", "int3", "int2"])
        #expect(throws: QuantSchemeError.self) { try QuantScheme(parsing: "int5-g64") }
        #expect(throws: QuantSchemeError.self) { try QuantScheme(parsing: "f16-g32") }
        #expect(throws: QuantSchemeError.self) { try QuantScheme(parsing: "int4-g48") }
    }
}


@Suite("Float16 fields that would overflow are errors naming the tensor")
struct Float16OverflowTests {
    @Test("int4 / int8-g / f16 of values beyond float16 range fail; int8 per channel, bf16 and ordinary ranges pass")
    func overflow() throws {
        let cols = 64, rows = 2
        func check(_ scheme: String, _ v: [Float]) throws {
            let q = RoundToNearest.quantize(v, rows: rows, cols: cols, scheme: try QuantScheme(parsing: scheme))
            try RoundToNearest.checkRepresentable(q, values: v, tensor: "model.layers.0.mlp.down_proj.weight")
        }
        var big = (0..<(rows * cols)).map { Float(sin(Double($0))) }
        big[5] = 1e7      // int8-g scale 1e7/127 and int4 scale 1e7/15 > 65504; f16 value > 65504
        big[70] = -9e4    // a float16 min below −65504
        for s in ["int4-g32", "int4s-g32", "int8-g32", "f16"] {
            do { try check(s, big); Issue.record("\(s) accepted an overflowing range") } catch let e as QuantizeError {
                #expect(e.description.contains("down_proj") && e.description.contains("--override"), "\(e)")
            }
        }
        try check("int8", big)    // per-channel float32 scales
        try check("bf16", big)
        var ok = big; ok[5] = 3000; ok[70] = -3000
        for s in ["int4-g32", "int8-g32", "f16"] { try check(s, ok) }
    }
}

@Suite("Scheme names from untrusted text")
struct SchemeNameTests {
    @Test("empty and '-g' scheme names are errors, not traps (found by fuzzing)")
    func emptyNames() {
        for s in ["", "-g", "-g32", "G"] { #expect(throws: (any Error).self) { try QuantScheme(parsing: s) } }
    }
}
