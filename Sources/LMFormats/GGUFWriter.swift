import Foundation
import LMCore

/// A metadata value as written to a GGUF file: each case is one GGUF value type, so the
/// bytes are fixed by the caller's choice (GGUF readers such as llama.cpp check the type of
/// some keys, e.g. `tokenizer.ggml.token_type` must be an INT32 array).
public enum GGUFMetaValue: Sendable, Equatable {
    case u32(UInt32), i32(Int32), u64(UInt64), f32(Float), bool(Bool), string(String)
    case strings([String]), i32s([Int32]), f32s([Float])
}

/// A tensor declared to a `GGUFWriter`: its GGUF name, its dims in ggml order (innermost
/// first) and its type.
public struct GGUFTensorSpec: Sendable {
    public let name: String
    public let dims: [Int]
    public let type: GGMLType
    public init(name: String, dims: [Int], type: GGMLType) { self.name = name; self.dims = dims; self.type = type }
    /// Bytes of the tensor's data (`dims[0]` must be a multiple of the type's block).
    public var byteCount: Int { dims.reduce(1, *) / type.block.elements * type.block.bytes }
}

/// Streams a GGUF v3 file (ggml's `gguf.cpp` layout): magic, version, counts, the metadata
/// key/value pairs, the tensor infos (offsets relative to the data section, each aligned to
/// `alignment`), padding, then each tensor's bytes in declaration order. The header is laid
/// out from the declarations, so tensors are written one at a time and never held together.
/// The file is written beside `path` and renamed into place on `commit` (`AtomicFileWriter`).
public final class GGUFWriter {
    public static let alignment = 32
    let out: AtomicFileWriter
    let specs: [GGUFTensorSpec]
    let offsets: [Int]
    let dataStart: Int
    private var next = 0

    /// - Throws: `GGUFError` for a dimension that does not divide into the type's blocks, or
    ///   an I/O error creating the temporary file.
    public init(path: String, metadata: [(String, GGUFMetaValue)], tensors: [GGUFTensorSpec]) throws {
        var h = [UInt8]()
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { h.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { h.append(contentsOf: $0) } }
        func str(_ s: String) { let b = Array(s.utf8); u64(UInt64(b.count)); h.append(contentsOf: b) }
        u32(0x4655_4747); u32(3); u64(UInt64(tensors.count)); u64(UInt64(metadata.count + 1))
        // Alignment first, so readers that stop early still know it.
        str("general.alignment"); u32(4); u32(UInt32(Self.alignment))
        for (k, v) in metadata {
            str(k)
            switch v {
            case let .u32(x): u32(4); u32(x)
            case let .i32(x): u32(5); u32(UInt32(bitPattern: x))
            case let .u64(x): u32(10); u64(x)
            case let .f32(x): u32(6); u32(x.bitPattern)
            case let .bool(x): u32(7); h.append(x ? 1 : 0)
            case let .string(s): u32(8); str(s)
            case let .strings(a): u32(9); u32(8); u64(UInt64(a.count)); for s in a { str(s) }
            case let .i32s(a): u32(9); u32(5); u64(UInt64(a.count)); for x in a { u32(UInt32(bitPattern: x)) }
            case let .f32s(a): u32(9); u32(6); u64(UInt64(a.count)); for x in a { u32(x.bitPattern) }
            }
        }
        var offs: [Int] = [], off = 0
        for t in tensors {
            guard let first = t.dims.first, t.dims.allSatisfy({ $0 > 0 }), t.dims.count <= 4, first % t.type.block.elements == 0 else {
                throw GGUFError(file: path, reason: "tensor '\(t.name)': dims \(t.dims) cannot be stored as \(t.type.name) (the innermost dimension must be a multiple of \(t.type.block.elements))")
            }
            str(t.name); u32(UInt32(t.dims.count))
            for d in t.dims { u64(UInt64(d)) }
            u32(t.type.rawValue); u64(UInt64(off))
            offs.append(off)
            off += (t.byteCount + Self.alignment - 1) / Self.alignment * Self.alignment
        }
        let pad = (Self.alignment - h.count % Self.alignment) % Self.alignment
        h.append(contentsOf: [UInt8](repeating: 0, count: pad))
        specs = tensors; offsets = offs; dataStart = h.count
        out = try AtomicFileWriter(path: path)
        try out.write(h)
    }

    /// Appends the next declared tensor's bytes (exactly its `byteCount`).
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard next < specs.count else { throw GGUFError(file: out.path, reason: "more tensors written than declared") }
        let s = specs[next]
        guard bytes.count == s.byteCount else { throw GGUFError(file: out.path, reason: "tensor '\(s.name)': \(bytes.count) bytes written, \(s.byteCount) declared") }
        try out.writeZeros(dataStart + offsets[next] - out.offset)
        try out.write(bytes)
        next += 1
    }

    /// Pads the last tensor, checks every declared tensor was written, and renames the file into place.
    public func commit() throws {
        guard next == specs.count else { throw GGUFError(file: out.path, reason: "\(specs.count - next) declared tensors were not written") }
        try out.writeZeros((Self.alignment - out.offset % Self.alignment) % Self.alignment)
        try out.commit()
    }

    /// Abandons the file (no output is left).
    public func abort() { out.abort() }
}
