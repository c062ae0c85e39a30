import COpenBLAS
import Dispatch
import Foundation
import Synchronization

/// A raw pointer that may cross into worker closures. Each worker must touch a
/// disjoint range (that is the caller's contract).
public struct SendablePointer<T>: @unchecked Sendable {
    public let p: UnsafeMutablePointer<T>
    public init(_ p: UnsafeMutablePointer<T>) { self.p = p }
}

/// Thread settings for the runtime: our own loops and OpenBLAS.
public enum RuntimeThreads {
    nonisolated(unsafe) static var count = 2
    nonisolated(unsafe) static var pool: WorkerPool? = nil
    static let poolLock = NSLock()

    /// Sets the worker count. All parallelism is ours: OpenBLAS is pinned to one
    /// thread and each of our workers calls it on its own slice. (Mixing OpenBLAS's
    /// pool with ours made its idle threads spin against our workers: −40 % prefill.)
    public static func set(_ n: Int) {
        count = max(1, n)
        openblas_set_num_threads(1)
        poolLock.lock(); defer { poolLock.unlock() }
        if count > 1 && (pool?.workers ?? 0) < count - 1 { pool = WorkerPool(extraThreads: count - 1) }
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
    /// The worker count in effect: a scoped override (`withThreads`) or the global setting.
    public static var current: Int { override ?? count }

    @TaskLocal static var override: Int?

    /// Runs `body` with `n` workers for this task only (the global setting is untouched,
    /// so concurrent callers are not affected).
    public static func withThreads<R>(_ n: Int, _ body: () throws -> R) rethrows -> R {
        try $override.withValue(max(1, n), operation: body)
    }

    /// Runs `body(chunkIndex)` for `n` chunks on up to `count` threads.
    @inline(__always)
    public static func parallelFor(_ n: Int, _ body: (Int) -> Void) {
        if n <= 1 || current <= 1 { for i in 0..<n { body(i) }; return }
        if let pool, poolBusy.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged {
            pool.run(n, body)
            poolBusy.store(false, ordering: .releasing)
            return
        }
        withoutActuallyEscaping(body) { b in
            let box = UncheckedBox(b)
            DispatchQueue.concurrentPerform(iterations: n) { box.value($0) }
        }
    }
}

final class UncheckedBox<T>: @unchecked Sendable { let value: T; init(_ v: T) { value = v } }

/// True while a caller owns the pool (it is single-caller; a concurrent or nested
/// caller falls back to Dispatch).
let poolBusy = Atomic<Bool>(false)
