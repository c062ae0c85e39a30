import CKernels
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

/// The integer-activation decode kernels of one CPU feature level (`CKernels`),
/// chosen at run time. Every level computes the same function; the tests compare
/// each level the CPU has with the generic (scalar C) one.
public struct KernelSet: @unchecked Sendable, Equatable, CustomStringConvertible {
    /// The kernel table (immutable static storage in `CKernels`, hence sendable).
    let table: UnsafePointer<lmk_kernels>
    public var name: String { String(cString: table.pointee.name) }
    public var level: Int { Int(table.pointee.level) }
    public var description: String { name }

    public static func == (a: KernelSet, b: KernelSet) -> Bool { a.table == b.table }

    /// Level names, lowest first.
    public static let levelNames = ["generic", "avx2", "avx512vnni"]

    /// The set of `level`, or nil when unknown or this CPU lacks it.
    public init?(level: Int) {
        guard let t = lmk_kernels_at(Int32(level)) else { return nil }
        table = t
    }

    /// The best set this CPU supports.
    public static var best: KernelSet { KernelSet(level: Int(lmk_best_level()))! }

    /// Every set this CPU supports, lowest first.
    public static var available: [KernelSet] { (0..<Int(LMK_LEVEL_COUNT)).compactMap { KernelSet(level: $0) } }

    /// The default: `LMKIT_KERNELS` (a level name) when set, else `best`.
    /// - Throws: an unknown name, or a level this CPU lacks.
    public static func fromEnvironment() throws -> KernelSet {
        guard let s = ProcessInfo.processInfo.environment["LMKIT_KERNELS"], !s.isEmpty else { return best }
        return try named(s)
    }

    /// The set called `name` ("generic", "avx2", "avx512vnni").
    public static func named(_ name: String) throws -> KernelSet {
        guard let level = levelNames.firstIndex(of: name.lowercased()) else {
            throw RuntimeError("unknown kernel set '\(name)' (known: \(levelNames.joined(separator: ", ")))")
        }
        guard let k = KernelSet(level: level) else {
            throw RuntimeError("kernel set '\(name)' needs CPU features this machine lacks (available: \(available.map(\.name).joined(separator: ", ")))")
        }
        return k
    }
}

/// What a model runs on: worker threads, the kernel set and scratch memory.
///
/// Whoever runs a model owns a context and passes it down (`forward`, `apply`,
/// perplexity, generation, benchmarks); there is no process-global runtime state.
/// Two contexts run concurrently without touching each other, and give bit-identical
/// results to running alone. One context serves one caller at a time: a second,
/// concurrent caller of the same context runs its parallel regions serially on its
/// own thread (correct, only slower).
public final class ComputeContext: @unchecked Sendable {
    /// Worker threads, the caller included.
    public let threads: Int
    /// Decode kernels.
    public let kernels: KernelSet
    let pool: WorkerPool?
    private let busy = Atomic<Bool>(false)
    private let regions = Atomic<Int>(0)
    /// Parallel regions run so far on this context (each costs a wake-up of the workers).
    public var parallelRegions: Int { regions.load(ordering: .relaxed) }
    /// Forward-pass scratch (reused across calls; guarded by its lock).
    let workspace = Workspace()

    /// - Parameters:
    ///   - threads: worker threads including the caller (1…256).
    ///   - kernels: the decode kernels; default `KernelSet.best`.
    public convenience init(threads: Int = 2, kernels: KernelSet = .best) {
        self.init(threads: threads, kernels: kernels, afterItemForTesting: nil)
    }

    /// For the pool's stress test only: `hook(worker)` runs on a worker after each item it
    /// finished (the window a preempted worker used to break the pool in).
    public init(threads: Int, kernels: KernelSet = .best, afterItemForTesting hook: (@Sendable (Int) -> Void)?) {
        self.threads = max(1, min(threads, 256))
        self.kernels = kernels
        pool = self.threads > 1 ? WorkerPool(extraThreads: self.threads - 1, afterItem: hook) : nil
        // All parallelism is ours: OpenBLAS runs single-threaded inside our workers.
        // (Its own pool spinning beside ours cost 40 % of prefill.) Idempotent.
        openblas_set_num_threads(1)
    }

    /// A context with the same kernels and a different thread count.
    public func with(threads n: Int) -> ComputeContext { ComputeContext(threads: n, kernels: kernels) }

    deinit { pool?.shutdown() }

    /// Runs `body(i)` for `i in 0..<n` on up to `threads` threads; returns when all ran.
    @inline(__always)
    public func parallelFor(_ n: Int, _ body: (Int) -> Void) {
        if n <= 1 || threads <= 1 { for i in 0..<n { body(i) }; return }
        if let pool, busy.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged {
            regions.add(1, ordering: .relaxed)
            pool.run(n, body)
            busy.store(false, ordering: .releasing)
            return
        }
        for i in 0..<n { body(i) }
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
}

final class UncheckedBox<T>: @unchecked Sendable { let value: T; init(_ v: T) { value = v } }
