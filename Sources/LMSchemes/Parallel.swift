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
    public static let levelNames = ["generic", "avx2", "avx512vnni", "avx512vbmi2"]

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

    /// The set called `name` ("generic", "avx2", "avx512vnni", "avx512vbmi2").
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

extension KernelSet {
    /// In-place softmax of `x[0..<n]` (bit-identical to `Ops.softmax` at every level).
    @inline(__always) public func softmax(_ x: UnsafeMutablePointer<Float>, _ n: Int) { table.pointee.exp.pointee.softmax(x, Int32(n)) }
    /// `max(x[0..<n])` (as `FastMath.max`).
    @inline(__always) public func max(_ x: UnsafePointer<Float>, _ n: Int) -> Float { table.pointee.exp.pointee.max(x, Int32(n)) }
    /// `x[i] = exp(x[i] − shift)`, returning the sum (as `FastMath.expShiftSum`).
    @inline(__always) public func expShiftSum(_ x: UnsafeMutablePointer<Float>, _ n: Int, shift: Float) -> Double {
        table.pointee.exp.pointee.exp_shift_sum(x, Int32(n), shift)
    }
    /// Decode attention of one query row over `n` positions (as `Ops.dot` → softmax →
    /// `Ops.axpy`, bit for bit): `scores` gets the probabilities, `out` the `hd` outputs.
    @inline(__always) public func attend(q: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, count n: Int, headDim hd: Int,
                                         scale: Float, scores: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>) {
        table.pointee.exp.pointee.attend(q, keys, values, Int32(n), Int32(hd), scale, scores, out)
    }

    /// `log Σ exp(row)`, max-subtracted; overwrites `row` with the shifted exponentials
    /// (as `Scoring.logSumExpInPlace`).
    @inline(__always) public func logSumExpInPlace(_ row: UnsafeMutablePointer<Float>, _ n: Int) -> Double {
        let m = max(row, n)
        return Double(m) + Foundation.log(expShiftSum(row, n, shift: m))
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
    public let workspace = Workspace()

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

    deinit { pool?.shutdown(); scratch?.deallocate() }

    /// Runs `body(i)` for `i in 0..<n` on up to `threads` threads; returns when all ran.
    @inline(__always)
    public func parallelFor(_ n: Int, _ body: (Int) -> Void) {
        parallelFor(n) { i, _ in body(i) }
    }

    /// Runs `body(i, slot)` for `i in 0..<n`, items claimed dynamically by up to
    /// `threads` threads; `slot` (0..<threads) names the running thread, so items can
    /// share per-thread scratch. Returns when all ran.
    public func parallelFor(_ n: Int, _ body: (Int, Int) -> Void) {
        if n <= 1 || threads <= 1 { for i in 0..<n { body(i, 0) }; return }
        if let pool, busy.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged {
            regions.add(1, ordering: .relaxed)
            pool.run(n, body)
            busy.store(false, ordering: .releasing)
            return
        }
        for i in 0..<n { body(i, 0) }
    }

    /// Calls `body` with `count` floats of scratch: this context's grow-only buffer (no
    /// allocation or page faults after the first call), or a fresh one when another
    /// caller is using it.
    public func withScratch<R>(_ count: Int, _ body: (UnsafeMutablePointer<Float>) throws -> R) rethrows -> R {
        if scratchLock.try() {
            defer { scratchLock.unlock() }
            if scratchCount < count {
                scratch?.deallocate()
                scratchCount = max(count, scratchCount * 2)
                scratch = .allocate(capacity: scratchCount)
            }
            return try body(scratch!)
        }
        let p = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
        defer { p.deallocate() }
        return try body(p)
    }
    private let scratchLock = NSLock()
    private var scratch: UnsafeMutablePointer<Float>?
    private var scratchCount = 0

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

/// A reference that may cross into worker closures (the caller guarantees safe use).
public final class UncheckedBox<T>: @unchecked Sendable { public let value: T; public init(_ v: T) { value = v } }

/// Grow-only scratch buffers, one per slot.
public final class Workspace: @unchecked Sendable {
    public let lock = NSLock()
    private var buffers: [UnsafeMutablePointer<Float>?] = Array(repeating: nil, count: 16)
    private var sizes = [Int](repeating: 0, count: 16)

    public func buffer(_ slot: Int, _ count: Int) -> UnsafeMutablePointer<Float> {
        if sizes[slot] < count {
            buffers[slot]?.deallocate()
            let n = max(count, sizes[slot] * 2)
            buffers[slot] = .allocate(capacity: n)
            sizes[slot] = n
        }
        return buffers[slot]!
    }

    deinit { for b in buffers { b?.deallocate() } }
}
