import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A read-only memory mapping of a whole file.
///
/// The mapping lives as long as the object; `bytes` must not be used after the
/// last reference is dropped. Tensor views borrow from it (zero copy).
public final class MappedFile: @unchecked Sendable {
    /// Path the file was opened from (used in error messages).
    public let path: String
    /// The mapped bytes (empty for an empty file).
    public let bytes: UnsafeRawBufferPointer
    private let base: UnsafeMutableRawPointer?

    /// Maps `path` read-only.
    /// - Throws: `IOError` naming the file when it cannot be opened or mapped.
    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw IOError(path: path, reason: "cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw IOError(path: path, reason: "cannot stat: \(String(cString: strerror(errno)))") }
        if (st.st_mode & S_IFMT) == S_IFDIR { throw IOError(path: path, reason: "is a directory, expected a file") }
        let size = Int(st.st_size)
        if size == 0 {
            base = nil
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw IOError(path: path, reason: "cannot mmap: \(String(cString: strerror(errno)))")
        }
        base = p
        bytes = UnsafeRawBufferPointer(start: p, count: size)
    }

    deinit {
        if let base { munmap(base, bytes.count) }
    }

    /// Bytes of the mapping resident in memory now (`mincore`): what of the file this
    /// process has touched and the kernel still holds.
    public func residentBytes() -> Int {
        guard let base, bytes.count > 0 else { return 0 }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let pages = (bytes.count + page - 1) / page
        var vec = [UInt8](repeating: 0, count: pages)
        guard mincore(base, bytes.count, &vec) == 0 else { return 0 }
        return vec.reduce(0) { $0 + Int($1 & 1) } * page
    }

    /// Drops the resident pages of `range` (a read-only private mapping re-reads them
    /// from the file if touched again). Streaming conversions call this after each
    /// tensor so that resident memory stays bounded by one tensor, not the file.
    public func release(_ range: UnsafeRawBufferPointer) {
        guard let base, let start = range.baseAddress, range.count > 0 else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let lo = (Int(bitPattern: start) - Int(bitPattern: base)) / page * page
        let hi = min(bytes.count, (Int(bitPattern: start) - Int(bitPattern: base) + range.count + page - 1) / page * page)
        if hi > lo { madvise(base + lo, hi - lo, Int32(MADV_DONTNEED)) }
    }
}

/// A file-system level failure, naming the file.
public struct IOError: Error, CustomStringConvertible {
    public let path: String
    public let reason: String
    public init(path: String, reason: String) { self.path = path; self.reason = reason }
    public var description: String { "\(path): \(reason)" }
}

/// Writes a file atomically: the bytes go to `path.tmp-PID`, are fsync'ed, then
/// renamed over `path`. An interrupted write leaves no file at `path`.
public final class AtomicFileWriter {
    public let path: String
    let tmpPath: String
    private var handle: UnsafeMutablePointer<FILE>?
    /// Its slot in `InterruptCleanup` while the temporary file exists.
    private var cleanupSlot: Int?
    /// Bytes written so far.
    public private(set) var offset: Int = 0

    public init(path: String) throws {
        self.path = path
        self.tmpPath = path + ".tmp-\(getpid())"
        cleanupSlot = InterruptCleanup.register(tmpPath)
        guard let h = fopen(tmpPath, "wb") else {
            InterruptCleanup.unregister(cleanupSlot)
            throw IOError(path: path, reason: "cannot create temporary file \(tmpPath): \(String(cString: strerror(errno)))")
        }
        handle = h
    }

    /// Appends raw bytes.
    public func write(_ buffer: UnsafeRawBufferPointer) throws {
        guard let handle else { throw IOError(path: path, reason: "write after close") }
        if buffer.isEmpty { return }
        let n = fwrite(buffer.baseAddress, 1, buffer.count, handle)
        guard n == buffer.count else {
            throw IOError(path: path, reason: "write failed: \(String(cString: strerror(errno)))")
        }
        offset += n
    }

    public func write(_ data: [UInt8]) throws { try data.withUnsafeBytes { try write($0) } }
    public func write(_ string: String) throws { try write(Array(string.utf8)) }
    public func writeZeros(_ count: Int) throws { if count > 0 { try write([UInt8](repeating: 0, count: count)) } }

    /// Overwrites bytes already written at `offset` (same length; the position is restored).
    public func overwrite(at offset: Int, _ bytes: [UInt8]) throws {
        guard let handle else { throw IOError(path: path, reason: "write after close") }
        precondition(offset + bytes.count <= self.offset)
        guard fseeko(handle, off_t(offset), SEEK_SET) == 0 else { throw IOError(path: path, reason: "seek failed") }
        let n = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, bytes.count, handle) }
        guard n == bytes.count, fseeko(handle, off_t(self.offset), SEEK_SET) == 0 else { throw IOError(path: path, reason: "rewrite failed") }
    }

    /// Flushes, fsyncs and renames the temporary file into place.
    public func commit() throws {
        guard let h = handle else { return }
        handle = nil
        defer { InterruptCleanup.unregister(cleanupSlot); cleanupSlot = nil }
        guard fflush(h) == 0, fsync(fileno(h)) == 0 else {
            let e = String(cString: strerror(errno))
            fclose(h); unlink(tmpPath)
            throw IOError(path: path, reason: "flush failed: \(e)")
        }
        guard fclose(h) == 0 else {
            let e = String(cString: strerror(errno))
            unlink(tmpPath)
            throw IOError(path: path, reason: "close failed: \(e)")
        }
        guard rename(tmpPath, path) == 0 else {
            let e = String(cString: strerror(errno))
            unlink(tmpPath)
            throw IOError(path: path, reason: "rename failed: \(e)")
        }
    }

    /// Abandons the write and removes the temporary file.
    public func abort() {
        if let h = handle { fclose(h); handle = nil; unlink(tmpPath) }
        InterruptCleanup.unregister(cleanupSlot); cleanupSlot = nil
    }

    deinit { abort() }
}
