import COpenBLAS
import Dispatch
import Foundation

/// A raw pointer that may cross into worker closures. Each worker must touch a
/// disjoint range (that is the caller's contract).
public struct SendablePointer<T>: @unchecked Sendable {
    public let p: UnsafeMutablePointer<T>
    public init(_ p: UnsafeMutablePointer<T>) { self.p = p }
}

/// Thread settings for the runtime: our own loops and OpenBLAS.
public enum RuntimeThreads {
    nonisolated(unsafe) static var count = 2

    /// Sets the worker count. All parallelism is ours: OpenBLAS is pinned to one
    /// thread and each of our workers calls it on its own slice. (Mixing OpenBLAS's
    /// pool with ours made its idle threads spin against our workers: −40 % prefill.)
    public static func set(_ n: Int) {
        count = max(1, n)
        openblas_set_num_threads(1)
    }

    /// Splits `0..<n` into `parts` near-equal ranges, aligned to `align`.
    public static func ranges(_ n: Int, parts: Int, align: Int = 1) -> [Range<Int>] {
        let p = max(1, min(parts, (n + align - 1) / align))
        var out: [Range<Int>] = []
        var start = 0
        for i in 0..<p {
            var end = (n * (i + 1)) / p
            end = i == p - 1 ? n : min(n, (end + align - 1) / align * align)
            if end > start { out.append(start..<end) }
            start = end
        }
        return out
    }
    public static var current: Int { count }

    /// Runs `body(chunkIndex)` for `n` chunks on up to `count` threads.
    @inline(__always)
    public static func parallelFor(_ n: Int, _ body: (Int) -> Void) {
        if n <= 1 || count <= 1 { for i in 0..<n { body(i) }; return }
        withoutActuallyEscaping(body) { b in
            let box = UncheckedBox(b)
            DispatchQueue.concurrentPerform(iterations: n) { box.value($0) }
        }
    }
}

final class UncheckedBox<T>: @unchecked Sendable { let value: T; init(_ v: T) { value = v } }
