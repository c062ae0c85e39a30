import Foundation
import LMCore

/// Structural problems in a safetensors file. Every case names the file and,
/// where there is one, the tensor.
public enum SafetensorsError: Error, CustomStringConvertible {
    case tooSmall(file: String, size: Int)
    case headerLength(file: String, length: UInt64, fileSize: Int)
    case headerNotObject(file: String)
    case badEntry(file: String, tensor: String, reason: String)
    case unknownDType(file: String, tensor: String, dtype: String)
    case sizeMismatch(file: String, tensor: String, shape: [Int], dtype: String, bytes: Int)
    case outOfBounds(file: String, tensor: String, end: Int, dataSize: Int)
    case overlap(file: String, tensor: String, other: String)
    case gap(file: String, tensor: String, expected: Int, found: Int)
    case trailingData(file: String, used: Int, dataSize: Int)
    case badIndex(file: String, reason: String)

    public var description: String {
        switch self {
        case let .tooSmall(f, s): return "\(f): not a safetensors file (\(s) bytes; a header needs at least 8)"
        case let .headerLength(f, l, s): return "\(f): header length \(l) does not fit in a file of \(s) bytes (truncated or not safetensors)"
        case let .headerNotObject(f): return "\(f): safetensors header is not a JSON object"
        case let .badEntry(f, t, r): return "\(f): tensor '\(t)': \(r)"
        case let .unknownDType(f, t, d): return "\(f): tensor '\(t)': unknown dtype '\(d)'"
        case let .sizeMismatch(f, t, sh, d, b): return "\(f): tensor '\(t)': shape \(sh) of \(d) does not match its \(b) bytes"
        case let .outOfBounds(f, t, e, s): return "\(f): tensor '\(t)': data ends at \(e), beyond the data region of \(s) bytes (truncated file?)"
        case let .overlap(f, t, o): return "\(f): tensor '\(t)' overlaps tensor '\(o)'"
        case let .gap(f, t, e, found): return "\(f): tensor '\(t)' starts at \(found), expected \(e) (tensors must be contiguous)"
        case let .trailingData(f, u, s): return "\(f): tensors cover \(u) bytes but the data region has \(s)"
        case let .badIndex(f, r): return "\(f): \(r)"
        }
    }
}

/// One safetensors file, memory-mapped and fully validated at open.
public final class SafetensorsFile: @unchecked Sendable {
    /// Largest header accepted (the reference implementation uses 100 MB).
    public static let maxHeaderBytes = 100_000_000

    public let path: String
    public let metadata: [String: String]
    /// Tensors in file order (by offset).
    public let tensors: [TensorView]
    private let byName: [String: Int]
    let mapping: MappedFile

    /// Opens and validates `path`: header length, JSON, dtypes, shapes, offsets
    /// (in bounds, contiguous, no overlap, covering the data region exactly).
    public init(path: String) throws {
        let m = try MappedFile(path: path)
        mapping = m
        self.path = path
        let size = m.bytes.count
        guard size >= 8 else { throw SafetensorsError.tooSmall(file: path, size: size) }
        let n = UInt64(littleEndian: m.bytes.loadUnaligned(as: UInt64.self))
        guard n <= UInt64(SafetensorsFile.maxHeaderBytes), Int(n) <= size - 8 else {
            throw SafetensorsError.headerLength(file: path, length: n, fileSize: size)
        }
        let headerLen = Int(n)
        let json = try JSON.parse(UnsafeRawBufferPointer(rebasing: m.bytes[8..<(8 + headerLen)]), source: path)
        guard let entries = json.object else { throw SafetensorsError.headerNotObject(file: path) }
        let dataStart = 8 + headerLen
        let dataSize = size - dataStart
        var meta: [String: String] = [:]
        struct Raw { let name: String; let dtype: DType; let shape: [Int]; let begin: Int; let end: Int }
        var raws: [Raw] = []
        var seen = Set<String>()
        for (name, v) in entries {
            if name == "__metadata__" {
                guard let o = v.object else { throw SafetensorsError.badEntry(file: path, tensor: name, reason: "__metadata__ must be an object of strings") }
                for (k, s) in o {
                    guard let s = s.string else { throw SafetensorsError.badEntry(file: path, tensor: name, reason: "metadata value for '\(k)' is not a string") }
                    meta[k] = s
                }
                continue
            }
            guard seen.insert(name).inserted else { throw SafetensorsError.badEntry(file: path, tensor: name, reason: "duplicate tensor name") }
            guard let dt = v["dtype"]?.string else { throw SafetensorsError.badEntry(file: path, tensor: name, reason: "missing 'dtype'") }
            guard let dtype = DType(rawValue: dt) else { throw SafetensorsError.unknownDType(file: path, tensor: name, dtype: dt) }
            guard let shapeJ = v["shape"]?.array else { throw SafetensorsError.badEntry(file: path, tensor: name, reason: "missing 'shape'") }
            var shape: [Int] = []
            for d in shapeJ {
                guard let d = d.int, d >= 0 else { throw SafetensorsError.badEntry(file: path, tensor: name, reason: "shape entries must be non-negative integers") }
                shape.append(d)
            }
            guard let offs = v["data_offsets"]?.array, offs.count == 2, let b = offs[0].int, let e = offs[1].int, b >= 0, e >= b else {
                throw SafetensorsError.badEntry(file: path, tensor: name, reason: "'data_offsets' must be [begin, end] with 0 ≤ begin ≤ end")
            }
            guard let count = Checked.product(shape), let nbytes = Checked.mul(count, dtype.size), nbytes == e - b else {
                throw SafetensorsError.sizeMismatch(file: path, tensor: name, shape: shape, dtype: dt, bytes: e - b)
            }
            guard e <= dataSize else { throw SafetensorsError.outOfBounds(file: path, tensor: name, end: e, dataSize: dataSize) }
            raws.append(Raw(name: name, dtype: dtype, shape: shape, begin: b, end: e))
        }
        raws.sort { ($0.begin, $0.end) < ($1.begin, $1.end) }
        var expected = 0
        for (i, r) in raws.enumerated() {
            if r.begin < expected {
                throw SafetensorsError.overlap(file: path, tensor: r.name, other: raws[i - 1].name)
            }
            if r.begin > expected { throw SafetensorsError.gap(file: path, tensor: r.name, expected: expected, found: r.begin) }
            expected = r.end
        }
        guard expected == dataSize else { throw SafetensorsError.trailingData(file: path, used: expected, dataSize: dataSize) }
        metadata = meta
        var views: [TensorView] = []
        var idx: [String: Int] = [:]
        for r in raws {
            let bytes = UnsafeRawBufferPointer(rebasing: m.bytes[(dataStart + r.begin)..<(dataStart + r.end)])
            idx[r.name] = views.count
            views.append(TensorView(name: r.name, dtype: r.dtype, shape: r.shape, bytes: bytes, owner: m))
        }
        tensors = views
        byName = idx
    }

    public subscript(name: String) -> TensorView? { byName[name].map { tensors[$0] } }
}

/// The tensors of a Hugging Face model folder: `model.safetensors`, or the
/// shards listed in `model.safetensors.index.json`.
public final class TensorStore: @unchecked Sendable {
    public let source: String
    public let files: [SafetensorsFile]
    private var byName: [String: TensorView] = [:]
    /// Tensor names in a stable order (file order, then offset).
    public let names: [String]

    /// Opens the weights of `folder` (or a single `.safetensors` file path).
    public init(path: String) throws {
        source = path
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw ModelError.missingFile(path, hint: "give a Hugging Face model folder or a .safetensors file")
        }
        var fileList: [String] = []
        var expectedMap: [String: String]? = nil
        if !isDir.boolValue {
            fileList = [path]
        } else {
            let index = path + "/model.safetensors.index.json"
            let single = path + "/model.safetensors"
            if FileManager.default.fileExists(atPath: index) {
                let j = try JSON.parse(file: index)
                guard let wm = j["weight_map"]?.object else { throw SafetensorsError.badIndex(file: index, reason: "missing 'weight_map' object") }
                var map: [String: String] = [:]
                var order: [String] = []
                for (t, f) in wm {
                    guard let f = f.string, !f.contains("/"), f.hasSuffix(".safetensors") else {
                        throw SafetensorsError.badIndex(file: index, reason: "weight_map entry for '\(t)' must name a .safetensors file in the same folder")
                    }
                    map[t] = f
                    if !order.contains(f) { order.append(f) }
                }
                expectedMap = map
                fileList = order.map { path + "/" + $0 }
            } else if FileManager.default.fileExists(atPath: single) {
                fileList = [single]
            } else {
                throw ModelError.missingFile(single, hint: "the folder has neither model.safetensors nor model.safetensors.index.json")
            }
        }
        var fs: [SafetensorsFile] = []
        var names: [String] = []
        for f in fileList {
            let sf = try SafetensorsFile(path: f)
            for t in sf.tensors {
                if byName[t.name] != nil { throw SafetensorsError.badIndex(file: f, reason: "tensor '\(t.name)' appears in more than one shard") }
                byName[t.name] = t
                names.append(t.name)
                if let m = expectedMap, m[t.name] != (f as NSString).lastPathComponent {
                    throw SafetensorsError.badIndex(file: f, reason: "tensor '\(t.name)' is not listed for this shard in the index")
                }
            }
            fs.append(sf)
        }
        if let m = expectedMap {
            for t in m.keys where byName[t] == nil {
                throw SafetensorsError.badIndex(file: path + "/model.safetensors.index.json", reason: "tensor '\(t)' is listed but not present in \(m[t]!)")
            }
        }
        files = fs
        self.names = names
    }

    public subscript(name: String) -> TensorView? { byName[name] }

    /// The tensor `name`, or a `missingTensor` error naming the model.
    public func require(_ name: String) throws -> TensorView {
        guard let t = byName[name] else { throw ModelError.missingTensor(name, source: source) }
        return t
    }
}

/// Streams tensors into a safetensors file: the header is written from the
/// declared tensor list, then each tensor's bytes in order. Atomic (temp+rename).
public final class SafetensorsWriter {
    public struct Entry { public let name: String; public let dtype: DType; public let shape: [Int]
        public init(name: String, dtype: DType, shape: [Int]) { self.name = name; self.dtype = dtype; self.shape = shape } }
    let entries: [Entry]
    let out: AtomicFileWriter
    var next = 0
    var written = 0

    /// Declares the tensors (in the order their data will be written) and writes the header.
    public init(path: String, entries: [Entry], metadata: [(String, String)] = []) throws {
        self.entries = entries
        out = try AtomicFileWriter(path: path)
        var obj: [(String, JSON)] = []
        if !metadata.isEmpty { obj.append(("__metadata__", .object(metadata.map { ($0.0, .string($0.1)) }))) }
        var off = 0
        for e in entries {
            let n = e.shape.reduce(1, *) * e.dtype.size
            obj.append((e.name, .object([("dtype", .string(e.dtype.rawValue)), ("shape", .array(e.shape.map { .int(Int64($0)) })),
                                          ("data_offsets", .array([.int(Int64(off)), .int(Int64(off + n))]))])))
            off += n
        }
        var header = Array(JSON.object(obj).serialized().utf8)
        while (header.count + 8) % 8 != 0 { header.append(0x20) }
        var len = UInt64(header.count).littleEndian
        try withUnsafeBytes(of: &len) { try out.write($0) }
        try out.write(header)
    }

    /// Appends the next tensor's bytes (must match the declared size).
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        precondition(next < entries.count, "more tensors written than declared")
        let e = entries[next]
        let n = e.shape.reduce(1, *) * e.dtype.size
        precondition(bytes.count == n, "tensor \(e.name): \(bytes.count) bytes written, \(n) declared")
        try out.write(bytes)
        next += 1
    }

    /// Appends the next tensor's values converted to `dtype` (f32, f16 or bf16, round to
    /// nearest even); returns the SHA-256 of the bytes written (lowercase hex).
    @discardableResult
    public func write(floats: [Float], as dtype: DType) throws -> String {
        var h = SHA256()
        func put(_ b: UnsafeRawBufferPointer) throws { h.update(b); try write(b) }
        switch dtype {
        case .f32: try floats.withUnsafeBytes { try put($0) }
        case .f16: let v = floats.map { floatToHalf($0) }; try v.withUnsafeBytes { try put($0) }
        case .bf16: let v = floats.map { floatToBF16($0) }; try v.withUnsafeBytes { try put($0) }
        default: preconditionFailure("write(floats:) supports f32/f16/bf16")
        }
        return h.finalizeHex()
    }

    /// Finishes the file (all declared tensors must have been written).
    public func commit() throws {
        precondition(next == entries.count, "\(entries.count - next) declared tensors not written")
        try out.commit()
    }
}
