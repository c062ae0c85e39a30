import Dispatch
import Foundation
import Synchronization

final class JobBox { let body: (Int) -> Void; init(_ b: @escaping (Int) -> Void) { body = b } }

/// A persistent pool of worker threads for the runtime's many short parallel
/// regions (~300 per decoded token). The caller thread takes part; workers spin
/// briefly on a generation counter before sleeping on a semaphore, so back-to-back
/// regions start without a kernel wake-up. `run` calls must not nest.
final class WorkerPool: @unchecked Sendable {
    let workers: Int
    private let generation = Atomic<Int>(0)
    private let nextIndex = Atomic<Int>(0)
    private let done = Atomic<Int>(0)
    private let sleepers = Atomic<Int>(0)
    private let wake = DispatchSemaphore(value: 0)
    private var count = 0
    /// Unretained pointer to the current job's `JobBox` (valid while `run` waits).
    private var job: UnsafeMutableRawPointer?
    /// Spin iterations before a worker sleeps (~50–100 µs).
    static let spinLimit = 20_000

    init(extraThreads: Int) {
        workers = extraThreads
        for _ in 0..<extraThreads {
            let t = Thread { [unowned self] in self.workerLoop() }
            t.stackSize = 1 << 20
            t.start()
        }
    }

    private func workerLoop() {
        var seen = 0
        while true {
            var spins = 0
            while generation.load(ordering: .acquiring) == seen {
                spins += 1
                if spins > WorkerPool.spinLimit {
                    sleepers.add(1, ordering: .sequentiallyConsistent)
                    if generation.load(ordering: .sequentiallyConsistent) == seen { wake.wait() }
                    spins = 0
                }
            }
            seen = generation.load(ordering: .acquiring)
            drain()
        }
    }

    private func drain() {
        guard let job else { return }
        let n = count
        while true {
            let i = nextIndex.add(1, ordering: .relaxed).oldValue
            if i >= n { break }
            WorkerPool.invoke(job, i)
            done.add(1, ordering: .releasing)
        }
    }

    /// Calls the job without keeping a reference past its return (so `run`'s
    /// non-escaping closure really is released before `done` counts the item).
    @inline(never)
    private static func invoke(_ job: UnsafeMutableRawPointer, _ i: Int) {
        Unmanaged<JobBox>.fromOpaque(job).takeUnretainedValue().body(i)
    }

    /// Runs `body(0..<n)` across the pool and the calling thread; returns when all are done.
    func run(_ n: Int, _ body: (Int) -> Void) {
        withoutActuallyEscaping(body) { b in
            let box = JobBox(b)
            job = Unmanaged.passUnretained(box).toOpaque()
            count = n
            done.store(0, ordering: .relaxed)
            nextIndex.store(0, ordering: .relaxed)
            generation.add(1, ordering: .sequentiallyConsistent)
            let s = sleepers.exchange(0, ordering: .sequentiallyConsistent)
            for _ in 0..<s { wake.signal() }
            drain()
            while done.load(ordering: .acquiring) < n {}
            job = nil
            withExtendedLifetime(box) {}
        }
    }
}
