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

    /// Sets the worker count for both our loops and OpenBLAS.
    public static func set(_ n: Int) {
        count = max(1, n)
        openblas_set_num_threads(Int32(count))
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
