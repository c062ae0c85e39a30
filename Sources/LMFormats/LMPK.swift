import Foundation
import LMCore

/// Errors reading a `.lmpk` file; each names the file and, where relevant, the tensor.
public struct LMPKError: Error, CustomStringConvertible {
    public let file: String
    public let reason: String
    public init(file: String, reason: String) { self.file = file; self.reason = reason }
    public var description: String { "\(file): \(reason)" }
}

/// One tensor of a `.lmpk` file: its scheme and section bytes inside the mapping.
public struct LMPKTensor: @unchecked Sendable {
    public let name: String
    public let shape: [Int]
    public let scheme: QuantScheme
    /// Sections in scheme order (`q`, then `scales`, then `mins`).
    public let sections: [UnsafeRawBufferPointer]
    public let crc32: UInt32
    /// For a tensor-parallel rank: the part of the full tensor this one holds (nil: whole).
    public let split: TensorSplit?
    /// The whole byte range (first section start … last section end).
    public let range: Range<Int>
    public var rows: Int { shape.count == 2 ? shape[0] : 1 }
    public var cols: Int { shape.count == 2 ? shape[1] : shape.reduce(1, *) }
    public var byteCount: Int { sections.reduce(0) { $0 + $1.count } }

    /// The tensor's sections as the kernels take them (the mapping must stay alive).
    public var packed: PackedTensor { PackedTensor(rows: rows, cols: cols, scheme: scheme, sections: sections) }

    init(name: String, shape: [Int], scheme: QuantScheme, sections: [UnsafeRawBufferPointer], crc32: UInt32, split: TensorSplit?, range: Range<Int>) {
        self.name = name; self.shape = shape; self.scheme = scheme; self.sections = sections; self.crc32 = crc32; self.split = split; self.range = range
    }
}

/// The `.lmpk` format (formats/lmpk.md): constants and the header layout.
public enum LMPK {
    public static let magic: [UInt8] = Array("LMPK".utf8)
    /// The newest version this tool reads and writes: 2 for tensor-parallel rank files
    /// (`split` ranges, `tensor_parallel` with the rank's ranges); whole-model files
    /// stay version 1, byte for byte.
    public static let version: UInt32 = 2
    /// Version of a whole-model file.
    public static let wholeModelVersion: UInt32 = 1
    public static let alignment = 64
    public static let fixedHeaderBytes = 24
    public static let maxHeaderBytes = 256 << 20
    static func align(_ x: Int) -> Int { (x + alignment - 1) / alignment * alignment }
}

/// Declaration of a tensor to write: name, shape and scheme (sizes follow).
public struct LMPKTensorSpec: Sendable {
    public let name: String
    public let shape: [Int]
    public let scheme: QuantScheme
    /// The part of the full tensor a rank file holds (nil: the whole tensor).
    public let split: TensorSplit?
    public init(name: String, shape: [Int], scheme: QuantScheme, split: TensorSplit? = nil) {
        self.name = name; self.shape = shape; self.scheme = scheme; self.split = split
    }
    var rows: Int { shape.count == 2 ? shape[0] : 1 }
    var cols: Int { shape.count == 2 ? shape[1] : shape.reduce(1, *) }
}

/// Streams a `.lmpk` file: the header is laid out from the declared tensors, each
/// tensor's sections are then written in order, and the CRCs are patched into the
/// fixed-width header fields at the end. Atomic and deterministic.
public final class LMPKWriter {
    let out: AtomicFileWriter
    let specs: [LMPKTensorSpec]
    var headerObject: [(String, JSON)]
    var layout: [[(role: String, offset: Int, bytes: Int)]] = []
    var tokenizerRange: (Int, Int)
    var crcs: [UInt32]
    var tokenizerCRC: UInt32 = 0
    var next = 0
    var headerLength = 0
    let dataStart: Int
    let version: UInt32

    /// - Parameters: `meta` holds `config`, `recipe`, `provenance` objects (written as
    ///   given); files with split tensors are written as version 2, others as version 1.
    public init(path: String, config: ModelConfig, tokenizerJSON: [UInt8], meta: [(String, JSON)], tensors: [LMPKTensorSpec]) throws {
        specs = tensors
        version = tensors.contains { $0.split != nil } || meta.contains { $0.0 == "tensor_parallel" && $0.1["sharding"] != nil }
            ? LMPK.version : LMPK.wholeModelVersion
        crcs = Array(repeating: 0, count: tensors.count)
        headerObject = [("format", .string("lmpk")), ("version", .int(Int64(version))), ("config", config.toJSON())] + meta
        // Lay out until the header length is stable (offsets depend on it).
        var start = LMPK.align(LMPK.fixedHeaderBytes + 4096)
        var tokRange = (0, 0)
        var header: [UInt8] = []
        for _ in 0..<8 {
            var off = start
            tokRange = (off, tokenizerJSON.count)
            off = LMPK.align(off + tokenizerJSON.count)
            var lay: [[(role: String, offset: Int, bytes: Int)]] = []
            for s in tensors {
                var secs: [(role: String, offset: Int, bytes: Int)] = []
                for (role, n) in s.scheme.sections(rows: s.rows, cols: s.cols) { secs.append((role, off, n)); off = LMPK.align(off + n) }
                lay.append(secs)
            }
            layout = lay
            tokenizerRange = tokRange
            header = Array(LMPKWriter.headerJSON(headerObject, tokenizer: tokRange, tokenizerCRC: 0, specs: tensors, layout: lay, crcs: crcs).utf8)
            let needed = LMPK.align(LMPK.fixedHeaderBytes + header.count)
            if needed == start { break }
            start = needed
        }
        dataStart = start
        tokenizerRange = tokRange
        out = try AtomicFileWriter(path: path)
        headerLength = header.count
        try out.write(fixedHeader(header))
        try out.write(header)
        try out.writeZeros(dataStart - out.offset)
        try tokenizerJSON.withUnsafeBytes { tokenizerCRC = crc32($0); try out.write($0) }
    }

    func fixedHeader(_ header: [UInt8]) -> [UInt8] {
        var b = LMPK.magic
        withUnsafeBytes(of: version.littleEndian) { b += $0 }
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { b += $0 }
        withUnsafeBytes(of: header.withUnsafeBytes { crc32($0) }.littleEndian) { b += $0 }
        withUnsafeBytes(of: UInt32(0)) { b += $0 }
        return b
    }

    static func hex(_ c: UInt32) -> String { let s = String(c, radix: 16); return String(repeating: "0", count: 8 - s.count) + s }

    static func headerJSON(_ base: [(String, JSON)], tokenizer: (Int, Int), tokenizerCRC: UInt32, specs: [LMPKTensorSpec],
                           layout: [[(role: String, offset: Int, bytes: Int)]], crcs: [UInt32]) -> String {
        var o = base
        o.append(("tokenizer", .object([("offset", .int(Int64(tokenizer.0))), ("bytes", .int(Int64(tokenizer.1))), ("crc32", .string(hex(tokenizerCRC)))])))
        o.append(("tensors", .array(zip(specs, zip(layout, crcs)).map { s, lc in
            .object([("name", .string(s.name)), ("shape", .array(s.shape.map { .int(Int64($0)) })), ("scheme", .string(s.scheme.name)),
                     ("split", s.split?.json ?? .null),
                     ("sections", .array(lc.0.map { .object([("role", .string($0.role)), ("offset", .int(Int64($0.offset))), ("bytes", .int(Int64($0.bytes)))]) })),
                     ("crc32", .string(hex(lc.1)))])
        })))
        return JSON.object(o).serialized()
    }

    /// Writes the next declared tensor's sections (sizes must match the scheme).
    public func write(sections: [[UInt8]]) throws {
        precondition(next < specs.count, "more tensors than declared")
        let lay = layout[next]
        precondition(sections.count == lay.count, "\(specs[next].name): \(sections.count) sections, scheme has \(lay.count)")
        var crc: UInt32 = 0
        for (bytes, l) in zip(sections, lay) {
            precondition(bytes.count == l.bytes, "\(specs[next].name) \(l.role): \(bytes.count) bytes, expected \(l.bytes)")
            try out.writeZeros(l.offset - out.offset)
            try bytes.withUnsafeBytes { crc = crc32($0, seed: crc); try out.write($0) }
        }
        crcs[next] = crc
        next += 1
    }

    /// Patches CRCs into the header and commits the file.
    public func commit() throws {
        precondition(next == specs.count, "\(specs.count - next) declared tensors not written")
        let header = Array(LMPKWriter.headerJSON(headerObject, tokenizer: tokenizerRange, tokenizerCRC: tokenizerCRC, specs: specs, layout: layout, crcs: crcs).utf8)
        precondition(header.count == headerLength, "header length changed")
        try out.overwrite(at: 0, fixedHeader(header) + header)
        try out.commit()
    }

    public func abort() { out.abort() }
}

/// A `.lmpk` file, memory-mapped and structurally validated (formats/lmpk.md, "Checks").
public final class LMPKFile: @unchecked Sendable {
    public let path: String
    public let config: ModelConfig
    public let header: JSON
    public let tensors: [LMPKTensor]
    /// The format version read from the file.
    public let version: UInt32
    /// For a rank file of a tensor-parallel sharding: its rank, world and ranges (nil for a whole model).
    public let shard: ShardInfo?
    let mapping: MappedFile
    private let byName: [String: Int]
    let tokenizerSlice: UnsafeRawBufferPointer
    let tokenizerCRC: UInt32

    public init(path: String) throws {
        self.path = path
        let m = try MappedFile(path: path)
        mapping = m
        func fail(_ s: String) -> LMPKError { LMPKError(file: path, reason: s) }
        let size = m.bytes.count
        guard size >= LMPK.fixedHeaderBytes, Array(m.bytes[0..<4]) == LMPK.magic else { throw fail("not an .lmpk file (bad magic or too small)") }
        var r = ByteReader(m.bytes, source: path, offset: 4)
        version = try r.read(UInt32.self, "version")
        guard version <= LMPK.version, version >= 1 else {
            throw fail(".lmpk version \(version) is not supported by this tool (it reads version \(LMPK.version)); upgrade lmkit")
        }
        let hlen = try r.read(UInt64.self, "header length")
        let hcrc = try r.read(UInt32.self, "header crc")
        guard hlen <= UInt64(LMPK.maxHeaderBytes), Int(hlen) <= size - LMPK.fixedHeaderBytes else {
            throw fail("header length \(hlen) does not fit the file (\(size) bytes): truncated?")
        }
        let hbytes = UnsafeRawBufferPointer(rebasing: m.bytes[LMPK.fixedHeaderBytes..<(LMPK.fixedHeaderBytes + Int(hlen))])
        guard crc32(hbytes) == hcrc else { throw fail("header CRC mismatch (corrupt header)") }
        let h = try JSON.parse(hbytes, source: path)
        header = h
        guard h["format"]?.string == "lmpk" else { throw fail("header 'format' is not 'lmpk'") }
        guard let cj = h["config"] else { throw fail("header has no 'config'") }
        config = try ModelConfig.parse(cj, source: path + " (config)")
        let shardInfo: ShardInfo?
        do { shardInfo = try ShardInfo.parse(h["tensor_parallel"], config: config) } catch { throw fail("\(error)") }
        if shardInfo != nil && version < 2 { throw fail("a tensor-parallel rank file must be version 2 (this one says \(version))") }
        shard = shardInfo
        let headerEnd = LMPK.fixedHeaderBytes + Int(hlen)
        var ranges: [(Range<Int>, String)] = []
        func section(_ off: Int?, _ n: Int?, _ what: String) throws -> UnsafeRawBufferPointer {
            guard let off, let n, off >= headerEnd, n >= 0, off % LMPK.alignment == 0 else { throw fail("\(what): bad or unaligned offset") }
            guard let end = Checked.add(off, n), end <= size else { throw fail("\(what): data beyond the end of the file (truncated?)") }
            ranges.append((off..<end, what))
            return UnsafeRawBufferPointer(rebasing: m.bytes[off..<end])
        }
        guard let tok = h["tokenizer"] else { throw fail("header has no 'tokenizer'") }
        tokenizerSlice = try section(tok["offset"]?.int, tok["bytes"]?.int, "tokenizer")
        tokenizerCRC = UInt32(tok["crc32"]?.string ?? "", radix: 16) ?? 0
        guard let tj = h["tensors"]?.array else { throw fail("header has no 'tensors' table") }
        var ts: [LMPKTensor] = []
        var idx: [String: Int] = [:]
        for t in tj {
            guard let name = t["name"]?.string else { throw fail("tensor entry without a name") }
            guard idx[name] == nil else { throw fail("tensor '\(name)' appears twice") }
            guard let shapeJ = t["shape"]?.array, !shapeJ.isEmpty, shapeJ.count <= 2 else { throw fail("tensor '\(name)': shape must have 1 or 2 dimensions") }
            let shape = shapeJ.compactMap { $0.int }
            guard shape.count == shapeJ.count, shape.allSatisfy({ $0 > 0 }), let count = Checked.product(shape) else { throw fail("tensor '\(name)': bad shape") }
            // Every scheme stores at least 4 bits per element: a shape the file cannot hold is
            // refused before the section sizes are computed from it (they would overflow).
            guard count <= 8 * size else { throw fail("tensor '\(name)': shape \(shape) has more elements than a file of \(size) bytes can hold") }
            let scheme: QuantScheme
            do { scheme = try QuantScheme(parsing: t["scheme"]?.string ?? "?") } catch { throw fail("tensor '\(name)': \(error)") }
            let rows = shape.count == 2 ? shape[0] : 1, cols = shape.count == 2 ? shape[1] : shape[0]
            if let sp = scheme.sparsity {
                guard shape.count == 2 else { throw fail("tensor '\(name)': a vector cannot be stored compressed (\(scheme.name))") }
                guard cols % sp.m == 0 else { throw fail("tensor '\(name)': \(scheme.name) needs a column count divisible by \(sp.m), got \(cols)") }
            }
            let expected = scheme.sections(rows: rows, cols: cols)
            guard let secJ = t["sections"]?.array, secJ.count == expected.count else {
                throw fail("tensor '\(name)': scheme \(scheme.name) needs \(expected.count) sections")
            }
            var secs: [UnsafeRawBufferPointer] = []
            var lo = Int.max, hi = 0
            for (sj, e) in zip(secJ, expected) {
                guard sj["role"]?.string == e.role else { throw fail("tensor '\(name)': section '\(sj["role"]?.string ?? "?")' where '\(e.role)' is expected") }
                guard sj["bytes"]?.int == e.bytes else {
                    throw fail("tensor '\(name)': section '\(e.role)' has \(sj["bytes"]?.int ?? -1) bytes; \(scheme.name) of \(shape) needs \(e.bytes)")
                }
                let b = try section(sj["offset"]?.int, e.bytes, "tensor '\(name)' section '\(e.role)'")
                let o = sj["offset"]!.int!
                lo = min(lo, o); hi = max(hi, o + e.bytes)
                secs.append(b)
            }
            guard let crcS = t["crc32"]?.string, let crc = UInt32(crcS, radix: 16) else { throw fail("tensor '\(name)': missing crc32") }
            let split: TensorSplit?
            do { split = try TensorSplit.parse(t["split"]) } catch { throw fail("tensor '\(name)': \(error)") }
            idx[name] = ts.count
            ts.append(LMPKTensor(name: name, shape: shape, scheme: scheme, sections: secs, crc32: crc, split: split, range: lo..<hi))
        }
        ranges.sort { $0.0.lowerBound < $1.0.lowerBound }
        for k in ranges.indices.dropFirst() where ranges[k].0.lowerBound < ranges[k - 1].0.upperBound {
            throw fail("\(ranges[k].1) overlaps \(ranges[k - 1].1)")
        }
        tensors = ts
        byName = idx
        // Every tensor the config needs, with its shape (a rank's: its part, as its ranges say).
        let expected = shardInfo.map { ShardLayout(config: config, ranges: $0.ranges).tensors } ?? config.expectedTensors().map { ($0.0, $0.1, nil) }
        for (n, shape, split) in expected {
            guard let t = idx[n].map({ ts[$0] }) else { throw fail("tensor '\(n)' is missing") }
            guard t.shape == shape else { throw fail("tensor '\(n)': shape \(t.shape), the config\(shardInfo == nil ? "" : " and the rank's ranges") imply \(shape)") }
            guard t.split == split else {
                throw fail("tensor '\(n)': split \(t.split?.json.serialized() ?? "null"), the rank's ranges imply \(split?.json.serialized() ?? "null")")
            }
        }
        if shardInfo != nil, ts.count != expected.count {
            let known = Set(expected.map(\.0))
            throw fail("tensor '\(ts.first { !known.contains($0.name) }!.name)' is not part of this rank's plan")
        }
    }

    public subscript(name: String) -> LMPKTensor? { byName[name].map { tensors[$0] } }

    /// The embedded `tokenizer.json` (CRC-checked).
    public func tokenizerJSON() throws -> JSON {
        guard crc32(tokenizerSlice) == tokenizerCRC else { throw LMPKError(file: path, reason: "tokenizer CRC mismatch (corrupt file)") }
        return try JSON.parse(tokenizerSlice, source: path + " (tokenizer)")
    }

    /// The embedded `tokenizer.json` bytes, as stored (CRC-checked).
    public func tokenizerBytes() throws -> [UInt8] {
        guard crc32(tokenizerSlice) == tokenizerCRC else { throw LMPKError(file: path, reason: "tokenizer CRC mismatch (corrupt file)") }
        return Array(tokenizerSlice)
    }

    /// Checks every tensor's CRC; returns the first bad tensor's name, or nil.
    public func firstCorruptTensor() -> String? {
        if crc32(tokenizerSlice) != tokenizerCRC { return "(tokenizer)" }
        for t in tensors {
            var c: UInt32 = 0
            for s in t.sections { c = crc32(s, seed: c) }
            if c != t.crc32 { return t.name }
        }
        return nil
    }

    /// File size in bytes.
    public var fileBytes: Int { mapping.bytes.count }
    /// Bytes of the file resident in memory now.
    public var residentBytes: Int { mapping.residentBytes() }
}
