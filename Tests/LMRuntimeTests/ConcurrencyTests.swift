import Foundation
import LMCore
import LMFixtures
import LMRuntime
import Synchronization
import Testing

/// Per-item run counters for one parallel region.
final class Counters: @unchecked Sendable {
    let n: Int
    let p: UnsafeMutablePointer<Int>
    init(_ n: Int) { self.n = n; p = .allocate(capacity: max(n, 1)); p.initialize(repeating: 0, count: max(n, 1)) }
    deinit { p.deallocate() }
    var all1: Bool { (0..<n).allSatisfy { p[$0] == 1 } }
}

@Suite("Concurrency: the worker pool and compute contexts", .serialized)
struct ConcurrencyTests {
    @Test("pool stress: many regions of varying size, workers delayed after items (the old race window): every item runs exactly once")
    func poolStress() {
        // Workers sleep after some items, so the caller often finishes a region and starts the
        // next while a worker still holds the previous region's state.
        let tick = Atomic<Int>(0), byWorkers = Atomic<Int>(0)
        let ctx = ComputeContext(threads: 3, afterItemForTesting: { w in
            let k = tick.add(1, ordering: .relaxed).newValue
            guard w >= 0 else { return }
            byWorkers.add(1, ordering: .relaxed)
            if k % 7 == 0 { usleep(UInt32(200 + (k % 5) * 400)) }
        })
        var regions: [Counters] = []
        let caller = pthread_self()
        let offCaller = Atomic<Int>(0)
        var rng = SplitMix64(seed: 5)
        for _ in 0..<3000 {
            let n = 1 + Int(rng.next() % 17)
            let c = Counters(n)
            let box = UncheckedBox(c)
            ctx.parallelFor(n) { i in
                let until = DispatchTime.now().uptimeNanoseconds + UInt64(500 + 2000 * (i % 4))  // items of uneven length
                while DispatchTime.now().uptimeNanoseconds < until {}
                box.value.p[i] += 1  // each index is owned by one runner
                if pthread_self() != caller { offCaller.add(1, ordering: .relaxed) }
            }
            #expect(c.all1, "a region returned before every item ran exactly once")
            regions.append(c)
        }
        usleep(50_000)  // late runners of old regions would show up now
        let allOnce = regions.allSatisfy { $0.all1 }
        #expect(byWorkers.load(ordering: .relaxed) > 300, "the workers took part (\(byWorkers.load(ordering: .relaxed)) items, \(offCaller.load(ordering: .relaxed)) off the caller, ticks \(tick.load(ordering: .relaxed)))")
        #expect(allOnce, "an item ran twice or late")
    }

    @Test("two models on two contexts, run concurrently, give bit-identical logits to running alone")
    func twoContexts() throws {
        let dirs = (0..<2).map { tempDir("ctx\($0)") }
        defer { for d in dirs { try? FileManager.default.removeItem(atPath: d) } }
        var models: [LlamaModel] = []
        for (i, d) in dirs.enumerated() {
            var spec = SyntheticModelSpec(); spec.seed = UInt64(20 + i)
            try SyntheticModel.write(spec, to: d)
            models.append(try LlamaModel.load(folder: d))
        }
        let ids = Array(0..<45).map { ($0 * 31 + 7) % 300 }
        @Sendable func run(_ m: LlamaModel, _ ctx: ComputeContext) throws -> [Float] {
            var out = try m.forward(ids, cache: m.makeCache(capacity: 64), context: ctx)
            let cache = try m.makeCache(capacity: 64)
            _ = try m.forward(Array(ids[0..<30]), cache: cache, logits: .none, context: ctx)
            for t in 30..<45 { out += try m.forward([ids[t]], cache: cache, logits: .last, context: ctx) }
            return out
        }
        let alone = try models.map { try run($0, ComputeContext(threads: 2)) }
        let results = Mutex<[[Float]]>([[], []])
        let failures = Atomic<Int>(0)
        let ms = UncheckedBox(models)
        DispatchQueue.concurrentPerform(iterations: 2) { i in
            let ctx = ComputeContext(threads: 2)
            for _ in 0..<5 {
                guard let r = try? run(ms.value[i], ctx) else { failures.add(1, ordering: .relaxed); return }
                results.withLock { $0[i] = r }
                if r != alone[i] { failures.add(1, ordering: .relaxed) }
            }
        }
        #expect(failures.load(ordering: .relaxed) == 0)
        let got = results.withLock { $0 }
        #expect(got == alone)
        // One model shared by two contexts at once: still identical.
        let shared = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 2) { _ in
            let ctx = ComputeContext(threads: 2)
            for _ in 0..<3 { if (try? run(ms.value[0], ctx)) != alone[0] { shared.add(1, ordering: .relaxed) } }
        }
        #expect(shared.load(ordering: .relaxed) == 0)
    }

    @Test("memory-protecting checks are errors in every build: token id outside the vocabulary, cache overflow")
    func checks() throws {
        let dir = tempDir("checks")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try SyntheticModel.write(SyntheticModelSpec(), to: dir)
        let m = try LlamaModel.load(folder: dir)
        let ctx = ComputeContext(threads: 2)
        #expect(throws: RuntimeError.self) { try m.forward([m.config.vocabSize], cache: m.makeCache(capacity: 8), context: ctx) }
        #expect(throws: RuntimeError.self) { try m.forward([-1], cache: m.makeCache(capacity: 8), context: ctx) }
        #expect(throws: RuntimeError.self) { try m.forward([], cache: m.makeCache(capacity: 8), context: ctx) }
        let cache = try m.makeCache(capacity: 4)
        _ = try m.forward([1, 2, 3], cache: cache, context: ctx)
        #expect(throws: RuntimeError.self) { try m.forward([4, 5], cache: cache, context: ctx) }
        #expect(cache.count == 3)
        let v = [Float](repeating: 0, count: 64 * m.config.numKVHeads * m.config.headDim)
        #expect(throws: RuntimeError.self) { try v.withUnsafeBufferPointer { try cache.store(layer: 0, keys: $0.baseAddress!, values: $0.baseAddress!, tokens: 2) } }
        #expect(throws: RuntimeError.self) { try v.withUnsafeBufferPointer { try cache.store(layer: 99, keys: $0.baseAddress!, values: $0.baseAddress!, tokens: 1) } }
    }
}

