import Dispatch
import Foundation
import LMCore
import LMFormats
import Synchronization

/// The collectives one rank of a tensor-parallel group calls. Results are the same bits
/// on every rank and in every implementation: sums are taken in rank order
/// `((r0 + r1) + r2) + …`, element by element.
public protocol Communicator: AnyObject, Sendable {
    var rank: Int { get }
    var worldSize: Int { get }
    /// In place: `buffer[i] = Σ_r buffer_r[i]`, summed in rank order.
    func allReduceSum(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws
    /// Every rank's `counts[r]` floats, rank after rank, into `out` (`Σ counts` floats);
    /// `out == nil`: this rank contributes but needs no copy.
    func allGather(_ local: UnsafePointer<Float>, counts: [Int], into out: UnsafeMutablePointer<Float>?) throws
    /// The smallest of every rank's `value` (ranks agree on sizes chosen from local facts).
    func minimum(_ value: Int) throws -> Int
    /// This rank failed: ranks waiting in a collective throw `CommunicatorError` instead of waiting forever.
    func abort()
}

/// A collective could not complete (another rank failed).
public struct CommunicatorError: Error, CustomStringConvertible {
    public let description: String
    public init(_ s: String) { description = s }
}

/// The in-process group: one rank per thread, collectives through shared memory and a
/// barrier (spinning briefly, then yielding, so more ranks than cores still progress).
public final class InProcessGroup: @unchecked Sendable {
    public let worldSize: Int
    private let arrived = Atomic<Int>(0)
    private let phase = Atomic<Int>(0)
    private let failed = Atomic<Bool>(false)
    private let minimumSlot = Atomic<Int>(Int.max)
    /// Per-rank published pointers (written before a barrier, read after it).
    let slots: UnsafeMutablePointer<UnsafeMutableRawPointer?>

    public init(worldSize: Int) {
        self.worldSize = worldSize
        slots = .allocate(capacity: worldSize)
        slots.initialize(repeating: nil, count: worldSize)
    }
    deinit { slots.deallocate() }

    /// Communicators for ranks `0..<worldSize`.
    public func communicators() -> [InProcessCommunicator] { (0..<worldSize).map { InProcessCommunicator(group: self, rank: $0) } }

    var isFailed: Bool { failed.load(ordering: .acquiring) }
    func fail() { failed.store(true, ordering: .releasing) }

    /// Returns once every rank has arrived (acquire/release: writes before it are visible after it).
    func barrier() throws {
        if worldSize == 1 { return }
        let p = phase.load(ordering: .acquiring)
        if arrived.add(1, ordering: .acquiringAndReleasing).newValue == worldSize {
            arrived.store(0, ordering: .relaxed)
            phase.store(p + 1, ordering: .releasing)
            return
        }
        var spins = 0
        while phase.load(ordering: .acquiring) == p {
            if failed.load(ordering: .relaxed) { throw CommunicatorError("another tensor-parallel rank failed") }
            spins += 1
            if spins > 256 { sched_yield() }
        }
    }

    func minimum(_ v: Int, rank: Int) throws -> Int {
        if rank == 0 { minimumSlot.store(Int.max, ordering: .relaxed) }
        try barrier()
        var cur = minimumSlot.load(ordering: .relaxed)
        while v < cur {
            let (ok, seen) = minimumSlot.compareExchange(expected: cur, desired: v, ordering: .relaxed)
            if ok { break }
            cur = seen
        }
        try barrier()
        let m = minimumSlot.load(ordering: .relaxed)
        try barrier()
        return m
    }
}

/// One rank's view of an `InProcessGroup`.
public final class InProcessCommunicator: Communicator, @unchecked Sendable {
    public let rank: Int
    let group: InProcessGroup
    public var worldSize: Int { group.worldSize }
    init(group: InProcessGroup, rank: Int) { self.group = group; self.rank = rank }

    public func allReduceSum(_ buffer: UnsafeMutablePointer<Float>, count n: Int) throws {
        let W = group.worldSize
        if W == 1 { return }
        group.slots[rank] = UnsafeMutableRawPointer(buffer)
        try group.barrier()
        // Rank r sums its share of the elements over every rank's buffer, in rank
        // order, and writes the sum into all of them (the shares are disjoint).
        let lo = n * rank / W, hi = n * (rank + 1) / W
        let bufs = (0..<W).map { group.slots[$0]!.assumingMemoryBound(to: Float.self) }
        for i in lo..<hi {
            var s = bufs[0][i]
            for r in 1..<W { s += bufs[r][i] }
            for r in 0..<W { bufs[r][i] = s }
        }
        try group.barrier()
    }

    public func allGather(_ local: UnsafePointer<Float>, counts: [Int], into out: UnsafeMutablePointer<Float>?) throws {
        let W = group.worldSize
        group.slots[rank] = UnsafeMutableRawPointer(mutating: local)
        try group.barrier()
        if let out {
            var off = 0
            for r in 0..<W {
                (out + off).update(from: group.slots[r]!.assumingMemoryBound(to: Float.self), count: counts[r])
                off += counts[r]
            }
        }
        try group.barrier()
    }

    public func minimum(_ value: Int) throws -> Int { try group.minimum(value, rank: rank) }
    public func abort() { group.fail() }
}

/// Persistent threads that run one closure per rank concurrently (rank 0 on the caller).
final class RankThreads: @unchecked Sendable {
    let count: Int
    private var body: ((Int) -> Void)?
    private let start: [DispatchSemaphore]
    private let done = DispatchSemaphore(value: 0)
    private let stopping = Atomic<Bool>(false)

    init(count: Int) {
        self.count = count
        start = (0..<count).map { _ in DispatchSemaphore(value: 0) }
        for r in 1..<max(count, 1) {
            let t = Thread { [self] in
                while true {
                    start[r].wait()
                    if stopping.load(ordering: .acquiring) { return }
                    body!(r)
                    done.signal()
                }
            }
            t.stackSize = 8 << 20
            t.start()
        }
    }

    /// Runs `body(r)` for every rank at once; returns when all returned.
    func run(_ body: @escaping (Int) -> Void) {
        self.body = body
        for r in 1..<count { start[r].signal() }
        body(0)
        for _ in 1..<count { done.wait() }
        self.body = nil
    }

    func shutdown() {
        stopping.store(true, ordering: .releasing)
        for r in 1..<count { start[r].signal() }
    }
}

/// A tensor-parallel model: the ranks of a shard folder (`lmconvert shard`) that live
/// in this process, each with its own compute context, joined by a `Communicator`.
///
/// In-process (`load(folder:threads:)`), every rank runs on its own thread and the
/// threads are split between them. Under MPI, each process holds one rank
/// (`load(folder:communicator:threads:)`) and maps only its own file. Either way the
/// model computes what the unsharded one does: the row-parallel projections' partial
/// sums are all-reduced in rank order, and the head's vocabulary rows are gathered.
public final class ShardedModel: CausalLM, @unchecked Sendable {
    /// The full model's config.
    public let config: ModelConfig
    public let worldSize: Int
    /// The ranks held here and their ids.
    public let ranks: [LlamaModel]
    public let rankIDs: [Int]
    /// The local ranks' files (mapped; the weights are used in place).
    public let files: [LMPKFile]
    /// Every rank's ranges (from the manifest).
    public let allRanges: [ShardRanges]
    /// Per local rank: its compute context.
    public let contexts: [ComputeContext]
    private var communicators: [any Communicator]
    private let renew: (() -> [any Communicator])?
    private let runner: RankThreads
    /// Per local rank: nanoseconds inside collectives and their count (each slot written
    /// only by its rank's thread; read between forward calls).
    private let collectiveNanos: UnsafeMutableBufferPointer<UInt64>
    private let collectiveCalls: UnsafeMutableBufferPointer<Int>

    init(manifest: ShardManifest, files: [LMPKFile], rankIDs: [Int], communicators: [any Communicator],
         renew: (() -> [any Communicator])?, threadsPerRank: Int, kernels: KernelSet) throws {
        config = manifest.config
        worldSize = manifest.worldSize
        ranks = try files.map { try LlamaModel.load(rank: $0) }
        self.files = files
        self.rankIDs = rankIDs
        allRanges = manifest.ranks.map(\.ranges)
        contexts = rankIDs.map { _ in ComputeContext(threads: threadsPerRank, kernels: kernels) }
        self.communicators = communicators
        self.renew = renew
        runner = RankThreads(count: rankIDs.count)
        collectiveNanos = .allocate(capacity: rankIDs.count); collectiveNanos.initialize(repeating: 0)
        collectiveCalls = .allocate(capacity: rankIDs.count); collectiveCalls.initialize(repeating: 0)
    }
    deinit { runner.shutdown(); collectiveNanos.deallocate(); collectiveCalls.deallocate() }

    /// Per local rank: seconds spent in collectives (transfer plus waiting for the
    /// slower ranks) and how many were called, since the last reset.
    public var collectiveTime: [(seconds: Double, calls: Int)] { (0..<ranks.count).map { (Double(collectiveNanos[$0]) / 1e9, collectiveCalls[$0]) } }
    public func resetCollectiveTime() {
        for i in 0..<ranks.count { collectiveNanos[i] = 0; collectiveCalls[i] = 0 }
    }

    /// One number per rank of the world, rank order: local values, gathered from the
    /// other processes when each holds one rank (MPI). Collective: every rank calls it.
    public func perRank(_ local: [Double]) throws -> [Double] {
        if ranks.count == worldSize { return local }
        var all = [Float](repeating: 0, count: worldSize)
        let mine = local.map { Float($0) }
        try mine.withUnsafeBufferPointer { m in
            try all.withUnsafeMutableBufferPointer { try communicators[0].allGather(m.baseAddress!, counts: [Int](repeating: 1, count: worldSize), into: $0.baseAddress) }
        }
        return all.map { Double($0) }
    }

    /// Every rank of `folder` in this process, one thread each; `threads` are split
    /// between the ranks (at least one each). Each rank file is checked against the
    /// manifest (digest included) before anything runs.
    public static func load(folder: String, threads: Int, kernels: KernelSet = .best, verifyDigests: Bool = true) throws -> ShardedModel {
        let m = try ShardManifest.load(folder: folder)
        let files = try (0..<m.worldSize).map { try m.open(rank: $0, folder: folder, verifyDigest: verifyDigests) }
        let make = { () -> [any Communicator] in InProcessGroup(worldSize: m.worldSize).communicators() }
        return try ShardedModel(manifest: m, files: files, rankIDs: Array(0..<m.worldSize), communicators: make(), renew: make,
                                threadsPerRank: max(1, threads / m.worldSize), kernels: kernels)
    }

    /// Rank `communicator.rank` of `folder` only (one process per rank, e.g. under MPI).
    /// - Throws: `ShardError` when the communicator's world differs from the manifest's.
    public static func load(folder: String, communicator: any Communicator, threads: Int, kernels: KernelSet = .best,
                            verifyDigests: Bool = true) throws -> ShardedModel {
        let m = try ShardManifest.load(folder: folder)
        guard communicator.worldSize == m.worldSize else {
            throw ShardError("\(folder): the sharding has \(m.worldSize) ranks but \(communicator.worldSize) processes were started; run `mpirun -np \(m.worldSize)`")
        }
        let f = try m.open(rank: communicator.rank, folder: folder, verifyDigest: verifyDigests)
        return try ShardedModel(manifest: m, files: [f], rankIDs: [communicator.rank], communicators: [communicator], renew: nil,
                                threadsPerRank: max(1, threads), kernels: kernels)
    }

    /// Bytes of the matrices held in this process.
    public var weightBytes: Int { ranks.reduce(0) { $0 + $1.weightBytes } }
    /// Bytes one decode step streams in this process (every local rank's).
    public var decodeStreamBytes: Int { ranks.reduce(0) { $0 + $1.decodeStreamBytes } }

    /// One cache per local rank (its KV heads only), all with the block count the full
    /// model's bytes per block give under `options.budget`, agreed by every rank.
    public func makeCache(capacity: Int, sequences: Int, options: KVCacheOptions) throws -> KVCache {
        if let budget = options.budget {
            let full = KVCache.blockBytes(layers: config.numLayers, kvHeads: config.numKVHeads, headDim: config.headDim, options: options)
            let fullTail = KVCache.tailBytes(sequences: sequences, layers: config.numLayers, kvHeads: config.numKVHeads, headDim: config.headDim, options: options)
            let bytes = try budget.resolve() - fullTail
            guard bytes >= full else {
                throw RuntimeError("KV cache budget \(bytes + fullTail) bytes (\(budget)) is smaller than one block (\(full) bytes); raise --kv-cache-size or --cache-max-entry-count")
            }
            var blocks = min(bytes / full, Int(Int32.max))
            blocks = try communicators[0].minimum(blocks)   // MPI: ranks on other machines may see less memory
            return try KVCache(ranks: ranks.map { m in
                let c = m.config
                let b = KVCache.blockBytes(layers: c.numLayers, kvHeads: c.numKVHeads, headDim: c.headDim, options: options)
                let t = KVCache.tailBytes(sequences: sequences, layers: c.numLayers, kvHeads: c.numKVHeads, headDim: c.headDim, options: options)
                var o = options
                o.budget = .bytes(blocks * max(64, b) + t)
                return try m.makeCache(capacity: capacity, sequences: sequences, options: o)
            })
        }
        return try KVCache(ranks: ranks.map { try $0.makeCache(capacity: capacity, sequences: sequences, options: options) })
    }

    /// Runs `batch` on every local rank at once (each on its own context; `context` is
    /// not used) and returns the full vocabulary's logits.
    /// - Throws: `RuntimeError` as `LlamaModel.forward`; hooks are refused (the
    ///   communicator uses them). On a failure the batch's sequences are reset.
    public func forward(_ batch: Batch, cache: KVCache, logits: Logits, context: ComputeContext, hooks: ForwardHooks?) throws -> [Float] {
        guard hooks == nil else { throw RuntimeError("a tensor-parallel model takes no taps or hooks (its communicator uses the reduce points)") }
        guard cache.ranks.count == ranks.count,
              zip(cache.ranks, ranks).allSatisfy({ $0.layers == $1.config.numLayers && $0.kvHeads == $1.config.numKVHeads && $0.headDim == $1.config.headDim }) else {
            throw RuntimeError("this KV cache was not made by this tensor-parallel model: use its makeCache")
        }
        if case let .rows(r) = logits, r.count > batch.count || !r.allSatisfy({ $0 >= 0 && $0 < batch.count }) {
            throw RuntimeError("logits rows: at most \(batch.count) rows, each inside the batch's \(batch.count) tokens")
        }
        try batch.admit(vocabSize: config.vocabSize, cache: cache)
        let rows: [Int]?
        switch logits {
        case .none: rows = nil
        case .last: rows = batch.spans.map { $0.first + $0.count - 1 }
        case .all: rows = Array(0..<batch.count)
        case let .rows(r): rows = r
        }
        let R = rows?.count ?? 0, V = config.vocabSize
        let widths = allRanges.map { $0.vocab.count }
        let local: Logits = rows.map { .rows($0) } ?? .none
        var out = [Float](repeating: 0, count: R * V)
        let n = ranks.count
        let errors = UncheckedBox(UnsafeMutableBufferPointer<(any Error)?>.allocate(capacity: n))
        errors.value.initialize(repeating: nil)
        defer { errors.value.deallocate() }
        let comms = communicators
        try out.withUnsafeMutableBufferPointer { ob in
            let outP = R > 0 ? ob.baseAddress.map(SendablePointer.init) : nil   // nil: no logits asked for
            runner.run { [self] i in
                let comm = comms[i]
                let nanos = collectiveNanos, calls = collectiveCalls
                func timed(_ body: () throws -> Void) throws {
                    let t0 = DispatchTime.now().uptimeNanoseconds
                    defer { nanos[i] &+= DispatchTime.now().uptimeNanoseconds &- t0; calls[i] += 1 }
                    try body()
                }
                do {
                    let h = ForwardHooks(reduce: { _, point, buf, T, W in
                        if point != .head { try timed { try comm.allReduceSum(buf, count: T * W) } }
                    })
                    let part = try ranks[i].forward(batch, cache: cache.ranks[i], logits: local, context: contexts[i], hooks: h)
                    guard let outP else { return }
                    // Gather rank-major [rank][row][its vocabulary] (only local rank 0's result is
                    // returned: every process's, under MPI), then place each row's parts.
                    let wantsCopy = i == 0
                    var gathered = wantsCopy ? [Float](repeating: 0, count: R * V) : []
                    try part.withUnsafeBufferPointer { p in
                        try gathered.withUnsafeMutableBufferPointer { g in
                            try timed { try comm.allGather(p.baseAddress!, counts: widths.map { $0 * R }, into: wantsCopy ? g.baseAddress : nil) }
                        }
                    }
                    if i == 0 {
                        var off = 0
                        for (r, rg) in allRanges.enumerated() {
                            for t in 0..<R {
                                gathered.withUnsafeBufferPointer { g in
                                    (outP.p + t * V + rg.vocab.lowerBound).update(from: g.baseAddress! + off + t * widths[r], count: widths[r])
                                }
                            }
                            off += R * widths[r]
                        }
                    }
                } catch {
                    errors.value[i] = error
                    comm.abort()
                }
            }
            let errs = errors.value.compactMap { $0 }
            if let e = errs.first(where: { !($0 is CommunicatorError) }) ?? errs.first {
                for sp in batch.spans { cache.reset(sp.sequence) }
                if let renew { communicators = renew() }
                throw e
            }
        }
        for sp in batch.spans { cache.advance(sp.sequence, by: sp.count) }
        return out
    }
}
