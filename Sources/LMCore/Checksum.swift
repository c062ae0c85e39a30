import CZlib

/// CRC-32 (zlib polynomial) of a byte range.
public func crc32(_ bytes: UnsafeRawBufferPointer, seed: UInt32 = 0) -> UInt32 {
    var crc = UInt(seed)
    var p = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self)
    var left = bytes.count
    while left > 0, let q = p {
        let n = min(left, 1 << 30)
        crc = CZlib.crc32(crc, q, UInt32(n))
        p = q + n
        left -= n
    }
    return UInt32(truncatingIfNeeded: crc)
}
