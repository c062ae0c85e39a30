import Dispatch
import Foundation
import Synchronization

final class JobBox { let body: (Int, Int) -> Void; init(_ b: @escaping (Int, Int) -> Void) { body = b } }

/// A persistent pool of worker threads for the runtime's many short parallel
/// regions (~300 per decoded token). The caller thread takes part; workers spin
/// briefly before sleeping on a semaphore, so back-to-back regions start without a
/// kernel wake-up. One caller at a time (`ComputeContext` enforces it); `run` calls
/// must not nest.
///
/// **Why it is race-free.** Work is claimed from one double-word atomic, the
/// *ticket*: (`region`, `count << 32 | next`). A worker claims item `i` of region
/// `g` only by a compare-and-swap that still sees region `g` with `next == i`, so:
/// - an item of a region is run only by a claim made while that region is current,
///   and every index of every region is claimed exactly once;
/// - a worker that was preempted while holding an old ticket fails its CAS once the
///   caller has published the next region (the region number differs), and never
///   runs the old (freed) job or steals an index of the new one;
/// - the job pointer is read only after a successful claim: the claimed item is not
///   yet done, so the caller is still waiting in that region and the pointer is
///   that region's. The caller publishes the next job before the release-store of
///   the next ticket, and rewrites it only after every item's `done` increment
///   (release) is seen (acquire).
final class WorkerPool: @unchecked Sendable {
    let workers: Int
    /// (region, count << 32 | next index).
    private let ticket = Atomic<WordPair>(WordPair(first: 0, second: 0))
    /// The current region number, for cheap spinning (a double-word load is a locked
    /// `cmpxchg16b` on x86-64, which would bounce the ticket's cache line).
    private let published = Atomic<UInt>(0)
    private let done = Atomic<Int>(0)
    private let sleepers = Atomic<Int>(0)
    private let stopping = Atomic<Bool>(false)
    private let exited = Atomic<Int>(0)
    private let wake = DispatchSemaphore(value: 0)
    /// Unretained pointer to the current region's `JobBox`; written by the caller
    /// only between regions (see the type's comment).
    private var job: UnsafeMutableRawPointer?
    private var region: UInt = 0
    /// Spin iterations before a worker sleeps (~50–100 µs).
    static let spinLimit = 20_000
    /// Test-only: called by a worker after each item it ran, inside the window where a
    /// preempted worker used to break the old pool (after `done`, before the next claim).
    private let afterItem: (@Sendable (Int) -> Void)?

    /// Starts `extraThreads` workers (the caller is the extra one). `afterItem` is a test hook.
    init(extraThreads: Int, afterItem: (@Sendable (Int) -> Void)? = nil) {
        workers = extraThreads
        self.afterItem = afterItem
        for w in 0..<extraThreads {
            let t = Thread { [self] in self.workerLoop(w) }
            t.stackSize = 1 << 20
            t.start()
        }
    }

    /// Ends the worker threads (they hold the pool; call once, when its owner goes away).
    func shutdown() {
        stopping.store(true, ordering: .sequentiallyConsistent)
        published.add(1, ordering: .sequentiallyConsistent)
        for _ in 0..<workers { wake.signal() }
    }

    private func workerLoop(_ w: Int) {
        var seen: UInt = 0
        while !stopping.load(ordering: .acquiring) {
            var spins = 0
            while published.load(ordering: .acquiring) == seen && !stopping.load(ordering: .relaxed) {
                spins += 1
                if spins > WorkerPool.spinLimit {
                    sleepers.add(1, ordering: .sequentiallyConsistent)
                    if published.load(ordering: .sequentiallyConsistent) == seen && !stopping.load(ordering: .sequentiallyConsistent) { wake.wait() }
                    spins = 0
                }
            }
            seen = published.load(ordering: .acquiring)
            drain(region: seen, worker: w)
        }
        exited.add(1, ordering: .releasing)
    }

    /// Claims and runs items of `region` until it has none left (or is no longer current).
    private func drain(region g: UInt, worker: Int) {
        var t = ticket.load(ordering: .acquiring)
        while true {
            guard t.first == g else { return }
            let count = t.second >> 32, next = t.second & 0xFFFF_FFFF
            guard next < count else { return }
            let claimed = WordPair(first: g, second: (count << 32) | (next + 1))
            let (won, seen) = ticket.compareExchange(expected: t, desired: claimed, ordering: .acquiringAndReleasing)
            guard won else { t = seen; continue }
            WorkerPool.invoke(job!, Int(next), worker + 1)
            done.add(1, ordering: .releasing)
            afterItem?(worker)
            t = claimed  // the likely state; a failed CAS returns the real one
        }
    }

    /// Calls the job without keeping a reference past its return (so `run`'s
    /// non-escaping closure really is released before `done` counts the item).
    @inline(never)
    private static func invoke(_ job: UnsafeMutableRawPointer, _ i: Int, _ slot: Int) {
        Unmanaged<JobBox>.fromOpaque(job).takeUnretainedValue().body(i, slot)
    }

    /// Runs `body(i, slot)` for `i in 0..<n` across the pool and the calling thread;
    /// `slot` is 0 on the caller and 1…workers on the workers (for per-thread scratch).
    /// Returns when all are done.
    func run(_ n: Int, _ body: (Int, Int) -> Void) {
        precondition(n >= 0 && n < 1 << 32)
        withoutActuallyEscaping(body) { b in
            let box = JobBox(b)
            job = Unmanaged.passUnretained(box).toOpaque()
            done.store(0, ordering: .relaxed)
            region &+= 1
            if region == 0 { region = 1 }  // 0 is the workers' initial "seen"
            ticket.store(WordPair(first: region, second: UInt(n) << 32), ordering: .sequentiallyConsistent)
            published.store(region, ordering: .sequentiallyConsistent)
            let s = sleepers.exchange(0, ordering: .sequentiallyConsistent)
            for _ in 0..<s { wake.signal() }
            drain(region: region, worker: -1)
            while done.load(ordering: .acquiring) < n {}
            job = nil
            withExtendedLifetime(box) {}
        }
    }
}
