import Foundation
import LMCore
import LMFormats
import LMQuant
import LMTestSupport
import Testing

/// `body` over read-only views of `parts` (a throwing `withRawPointers`).
private func views<R>(_ parts: [[UInt8]], _ body: ([UnsafeRawBufferPointer]) throws -> R) throws -> R {
    let bufs = parts.map { p -> UnsafeMutableRawBufferPointer in
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: max(p.count, 1), alignment: 64)
        b.copyBytes(from: p)
        return b
    }
    defer { bufs.forEach { $0.deallocate() } }
    return try body(zip(bufs, parts).map { UnsafeRawBufferPointer(start: $0.baseAddress, count: $1.count) })
}

@Suite("int3-gG / int2-gG codecs")
struct LowBitCodecTests {
    static let names = ["int3-g32", "int3-g64", "int3-g128", "int2-g32", "int2-g64", "int2-g128"]

    @Test("names, sections and exact bits per weight")
    func layout() throws {
        #expect(try QuantScheme(parsing: "int3").name == "int3-g32")
        #expect(try QuantScheme(parsing: "int2", defaultGroup: 128).name == "int2-g128")
        #expect(throws: QuantSchemeError.self) { try QuantScheme(parsing: "int3-g48") }
        #expect(try QuantScheme(parsing: "int3-g32").bitsPerWeight(rows: 576, cols: 576) == 4.0)
        #expect(try QuantScheme(parsing: "int3-g128").bitsPerWeight(rows: 576, cols: 576) == 3.0 + 32.0 * 5 / 576)
        #expect(try QuantScheme(parsing: "int2-g32").bitsPerWeight(rows: 576, cols: 576) == 3.0)
        #expect(try QuantScheme(parsing: "int2-g64").bitsPerWeight(rows: 576, cols: 576) == 2.5)
        let s = try QuantScheme(parsing: "int3-g64").sections(rows: 3, cols: 100)   // cols32 = 128, 2 groups
        #expect(s.map(\.role) == ["q", "scales", "mins"] && s.map(\.bytes) == [3 * 48, 12, 12])
        #expect(try QuantScheme(parsing: "int2-g32").sections(rows: 2, cols: 33).map(\.bytes) == [2 * 16, 8, 8])
    }

    @Test("the documented bit layout, byte for byte (formats/lmpk.md)")
    func bitLayout() throws {
        func packed(_ name: String, _ codes: [Int32]) throws -> [UInt8] {
            let scheme = try QuantScheme(parsing: name)
            let codec = scheme.codec as! LowBitCodec
            let layout = scheme.sections(rows: 1, cols: 32)
            let raws = layout.map { l -> UnsafeMutableRawPointer in
                let p = UnsafeMutableRawPointer.allocate(byteCount: l.bytes, alignment: 64)
                p.initializeMemory(as: UInt8.self, repeating: 0, count: l.bytes)
                return p
            }
            defer { raws.forEach { $0.deallocate() } }
            codes.withUnsafeBufferPointer { codec.pack(codes: $0.baseAddress!, parameters: [GroupParameters(scale: 1, min: 0)], row: 0, cols: 32, scheme: scheme, out: raws) }
            return Array(UnsafeRawBufferPointer(start: raws[0], count: layout[0].bytes))
        }
        // int2: byte j holds columns j, j+8, j+16, j+24 in bit pairs 0-1, 2-3, 4-5, 6-7.
        var c = [Int32](repeating: 0, count: 32)
        c[0] = 1; c[8] = 2; c[16] = 3; c[24] = 1; c[7] = 3; c[31] = 2
        #expect(try packed("int2-g32", c) == [0x79, 0, 0, 0, 0, 0, 0, 0x83])
        // int3: low two bits as int2, then a little-endian mask of bit 2 per column.
        c = [Int32](repeating: 0, count: 32)
        c[0] = 5; c[31] = 4; c[9] = 7; c[17] = 2
        #expect(try packed("int3-g32", c) == [0x01, 0x0C | 0x20, 0, 0, 0, 0, 0, 0, 0x01, 0x02, 0x00, 0x80])
    }

    @Test("round trip within half a step; the group's extremes are codes 0 and 2^bits − 1 exactly; a constant group within float16 rounding", arguments: LowBitCodecTests.names)
    func roundTrip(_ name: String) throws {
        let scheme = try QuantScheme(parsing: name)
        let codec = scheme.codec as! LowBitCodec
        let top = Int(codec.codeRange.upperBound)
        for (rows, cols) in [(1, 1), (3, 7), (5, 33), (4, 200), (2, 576)] {
            var x = randomMatrix(rows, cols, seed: UInt64(rows * 31 + cols))
            for c in 0..<min(cols, 40) { x[c] = 0.25 }   // row 0 starts with a constant run
            let q = RoundToNearest.quantize(x, rows: rows, cols: cols, scheme: scheme)
            let y = dequant(q)
            let G = scheme.groupSize, rowBytes = QuantScheme.paddedCols(cols) / 32 * codec.blockBytes
            var worst: Float = 0, extremesOK = true
            q.sections.map(\.bytes).withRawPointers { p in
                for r in 0..<rows {
                    for g in 0..<scheme.groups(cols: cols) {
                        let lo = g * G, hi = min(cols, lo + G)
                        let seg = Array(x[(r * cols + lo)..<(r * cols + hi)])
                        let mn = seg.min()!, mx = seg.max()!
                        let step = (mx - mn) / Float(top)
                        for c in lo..<hi {
                            let e = abs(y[r * cols + c] - x[r * cols + c]) - (step * 0.5 + max(abs(mn), abs(mx)) * 2e-3)
                            worst = max(worst, e)
                            let code = codec.code(p[0], rowStart: r * rowBytes, column: c)
                            if mx > mn && x[r * cols + c] == mn && code != 0 { extremesOK = false }
                            if mx > mn && x[r * cols + c] == mx && code != top { extremesOK = false }
                            // A constant group: m = float16(v), and the step takes up what float16 lost.
                            if mx == mn && abs(y[r * cols + c] - mn) > abs(mn) * 0x1p-11 { extremesOK = false }
                        }
                    }
                    // Padding columns are code 0.
                    for c in cols..<QuantScheme.paddedCols(cols) where codec.code(p[0], rowStart: r * rowBytes, column: c) != 0 { extremesOK = false }
                }
            }
            #expect(worst <= 1e-7, "\(name) \(rows)x\(cols): error beyond half a step by \(worst)")
            #expect(extremesOK, "\(name) \(rows)x\(cols): min/max not at codes 0/\(top), a constant group off by more than float16 rounding, or padding not 0")
        }
    }

    @Test("a column slice on group boundaries and a row slice are byte-identical to quantizing the sliced weights", arguments: LowBitCodecTests.names)
    func slicing(_ name: String) throws {
        let scheme = try QuantScheme(parsing: name)
        let rows = 6, cols = 300   // 300 = 2·128 + 44: short last group and last 32-column unit
        let x = randomMatrix(rows, cols, seed: 3)
        let q = RoundToNearest.quantize(x, rows: rows, cols: cols, scheme: scheme).sections.map(\.bytes)
        let u = scheme.columnUnit
        #expect(u == scheme.groupSize)
        for (lo, hi) in [(0, u), (u, 2 * u), (u, cols), (2 * u, cols), (0, cols)] where hi <= cols && lo < hi {
            let part = try views(q) { try scheme.sliceColumns($0, rows: rows, cols: cols, lo: lo, hi: hi) }
            var sub = [Float]()
            for r in 0..<rows { sub += x[(r * cols + lo)..<(r * cols + hi)] }
            let direct = RoundToNearest.quantize(sub, rows: rows, cols: hi - lo, scheme: scheme).sections.map(\.bytes)
            #expect(part == direct, "\(name) columns \(lo)..<\(hi)")
        }
        let rowPart = try views(q) { try scheme.sliceRows($0, rows: rows, cols: cols, lo: 1, hi: 4) }
        #expect(rowPart == RoundToNearest.quantize(Array(x[cols..<(4 * cols)]), rows: 3, cols: cols, scheme: scheme).sections.map(\.bytes))
        #expect(throws: SliceError.self) { try views(q) { try scheme.sliceColumns($0, rows: rows, cols: cols, lo: 16, hi: cols) } }
    }

    @Test("--clip mse lowers the squared error further at 3 and 2 bits", arguments: ["int3-g32", "int2-g128"])
    func mse(_ name: String) throws {
        let scheme = try QuantScheme(parsing: name)
        let x = randomMatrix(16, 576, seed: 42)
        func err(_ clip: ClipMethod) -> Double {
            let y = dequant(RoundToNearest.quantize(x, rows: 16, cols: 576, scheme: scheme, clip: clip))
            return zip(x, y).reduce(0.0) { $0 + Double(($1.0 - $1.1) * ($1.0 - $1.1)) }
        }
        #expect(err(.mse) < err(.minmax) * 0.9)
    }
}
