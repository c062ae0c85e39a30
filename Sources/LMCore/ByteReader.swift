/// A bounds-checked little-endian cursor over untrusted bytes.
public struct ByteReader {
    public let bytes: UnsafeRawBufferPointer
    public var offset: Int
    /// Used in error messages.
    public let source: String

    public init(_ bytes: UnsafeRawBufferPointer, source: String, offset: Int = 0) {
        self.bytes = bytes; self.source = source; self.offset = offset
    }

    public var remaining: Int { bytes.count - offset }

    /// Ensures `n` more bytes exist.
    public func need(_ n: Int, _ what: @autoclosure () -> String) throws {
        guard n >= 0, n <= remaining else {
            throw IOError(path: source, reason: "truncated: \(what()) needs \(n) bytes at offset \(offset), only \(remaining) left")
        }
    }

    public mutating func read<T: FixedWidthInteger>(_: T.Type, _ what: @autoclosure () -> String = "value") throws -> T {
        try need(MemoryLayout<T>.size, what())
        let v = T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        offset += MemoryLayout<T>.size
        return v
    }
    public mutating func readFloat(_ what: @autoclosure () -> String = "float") throws -> Float {
        Float(bitPattern: try read(UInt32.self, what()))
    }
    public mutating func readDouble(_ what: @autoclosure () -> String = "double") throws -> Double {
        Double(bitPattern: try read(UInt64.self, what()))
    }
    /// Reads `n` raw bytes.
    public mutating func readBytes(_ n: Int, _ what: @autoclosure () -> String = "bytes") throws -> UnsafeRawBufferPointer {
        try need(n, what())
        let r = UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + n)])
        offset += n
        return r
    }
    public mutating func skip(_ n: Int, _ what: @autoclosure () -> String = "bytes") throws {
        try need(n, what()); offset += n
    }
}
