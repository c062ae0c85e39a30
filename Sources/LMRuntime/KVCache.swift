import CKernels
import Foundation

/// What a KV cache stores and how much memory it may take.
///
/// K and V each have a `KVScheme`; integer schemes are asymmetric per (token, KV head)
/// with float16 scale and min, quantized on write (LMDeploy's `--quant-policy 8 | 4`).
/// K is stored after RoPE (attention reads it as it is, nothing is rotated per read).
/// Layout: formats/kv-cache.md.
public struct KVCacheOptions: Sendable, Equatable, CustomStringConvertible {
    public var keys: KVScheme
    public var values: KVScheme
    /// Tokens per block (LMDeploy's `cache_block_seq_len`).
    public var blockSize: Int
    /// The pool's size; nil: exactly what `sequences × capacity` positions need.
    public var budget: KVBudget?
    /// `--kv-rotate`: a normalized Hadamard rotation per head before quantization (the
    /// llama.cpp / ik_llama.cpp `-khad` comparison). Q and K are rotated when K has a
    /// per-token integer scheme (q·k unchanged); V is rotated when V has an integer
    /// scheme, and the attention output is rotated back.
    public var rotate: Bool = false
    /// Whether `rotate` applies to K / V under these schemes.
    public var rotatesKeys: Bool { rotate && keys.isInteger && !keys.isPerChannel }
    public var rotatesValues: Bool { rotate && values.isInteger }

    public static let defaultBlockSize = 32

    public init(keys: KVScheme = .f32, values: KVScheme = .f32, blockSize: Int = KVCacheOptions.defaultBlockSize, budget: KVBudget? = nil,
                rotate: Bool = false) {
        self.keys = keys; self.values = values; self.blockSize = blockSize; self.budget = budget; self.rotate = rotate
    }

    /// "k=int8,v=int4" (either key may be omitted: it stays f32), or one scheme for both ("int8").
    /// - Throws: `RuntimeError` naming the option and the known schemes.
    public static func parseSchemes(_ s: String, option: String = "--kv-cache") throws -> (keys: KVScheme, values: KVScheme) {
        func scheme(_ name: String) throws -> KVScheme {
            guard let k = KVScheme(name: name.trimmingCharacters(in: .whitespaces)) else {
                throw RuntimeError("\(option): unknown KV cache scheme '\(name)' (known: \(KVScheme.allCases.map(\.description).joined(separator: ", ")))")
            }
            return k
        }
        if !s.contains("=") { let k = try scheme(s); return (k, k) }
        var k = KVScheme.f32, v = KVScheme.f32, seen = Set<String>()
        for part in s.split(separator: ",", omittingEmptySubsequences: false) {
            let kv = part.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
            guard kv.count == 2, ["k", "v"].contains(kv[0]), seen.insert(kv[0]).inserted else {
                throw RuntimeError("\(option): expected 'k=SCHEME,v=SCHEME' or one scheme, got '\(s)'")
            }
            if kv[0] == "k" { k = try scheme(kv[1]) } else { v = try scheme(kv[1]) }
        }
        return (k, v)
    }

    /// Checks what does not depend on the model's shape: block size, per-channel V,
    /// rotation with nothing to rotate, per-channel K blocks under 8 tokens.
    /// - Throws: `RuntimeError` naming the option (`option` is the flag or gate key).
    public func validate(option: String = "--kv-cache") throws {
        guard blockSize >= 1 && blockSize <= 1024 else {
            throw RuntimeError("\(option): block size (--cache-block-seq-len) must be in 1...1024, got \(blockSize)")
        }
        if values.isPerChannel {
            throw RuntimeError("\(option): \(values) quantizes per channel, which is for K only; give V a per-token scheme, e.g. k=\(values),v=int4")
        }
        if keys.isPerChannel && blockSize < 8 {
            throw RuntimeError("\(option): block size \(blockSize) is too small for \(keys) (a float16 scale and min per channel per block cost more than the codes below 8 tokens a block); use at least 8 (32 is the default)")
        }
        if rotate && !rotatesKeys && !rotatesValues {
            throw RuntimeError("\(option): rotation has nothing to rotate under \(schemeDescription) (it rotates K under a per-token integer scheme and V under an integer scheme)")
        }
    }

    /// The gate's `kv_cache` string: schemes as `parseSchemes`, plus optional parts
    /// "rotate" and "block=N" ("k=int4c,v=int4,rotate").
    public static func parse(_ s: String, option: String) throws -> KVCacheOptions {
        var o = KVCacheOptions()
        var rest: [String] = []
        for part in s.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
            if part == "rotate" { o.rotate = true }
            else if part.hasPrefix("block=") {
                guard let b = Int(part.dropFirst(6)), b >= 1 && b <= 1024 else { throw RuntimeError("\(option): block size must be in 1...1024, got '\(part)'") }
                o.blockSize = b
            } else { rest.append(part) }
        }
        (o.keys, o.values) = try parseSchemes(rest.joined(separator: ","), option: option)
        try o.validate(option: option)
        return o
    }

    /// LMDeploy's `quant_policy`: 0 (float cache), 8 (int8 K and V), 4 (int4 K and V).
    /// The float cache of policy 0 is f32 here (the runtime computes in f32).
    public static func quantPolicy(_ p: Int) throws -> (keys: KVScheme, values: KVScheme) {
        switch p {
        case 0: return (.f32, .f32)
        case 8: return (.int8, .int8)
        case 4: return (.int4, .int4)
        default: throw RuntimeError("--quant-policy: expected 0, 4 or 8 (LMDeploy's meaning), got \(p)")
        }
    }

    /// "k=int8,v=int8" (",rotated" with `rotate`; the block size is added when it is
    /// not the default).
    public var schemeDescription: String { "k=\(keys),v=\(values)" + (rotate ? ",rotated" : "") }
    public var description: String {
        schemeDescription + (blockSize == Self.defaultBlockSize ? "" : ",block=\(blockSize)")
    }
    /// True for the plain f32 cache at the default block size (the configuration every
    /// number measured before the paged cache used).
    public var isDefault: Bool { keys == .f32 && values == .f32 && blockSize == Self.defaultBlockSize && !rotate }
}

extension KVScheme {
    /// int8, int4, int2 and the per-channel schemes (codes with scale and min).
    public var isInteger: Bool { rawValue >= KVScheme.int8.rawValue }
}

/// A KV pool size: bytes, or LMDeploy's `cache_max_entry_count` (a share of the memory
/// available when the cache is made).
public enum KVBudget: Sendable, Equatable, CustomStringConvertible {
    case bytes(Int)
    case fraction(Double)

    public var description: String {
        switch self {
        case let .bytes(b): return "\(b) bytes"
        case let .fraction(f): return "\(f) of available memory"
        }
    }

    /// Bytes this budget stands for now.
    /// - Throws: `RuntimeError` for a fraction outside (0, 1] or a non-positive size.
    public func resolve() throws -> Int {
        switch self {
        case let .bytes(b):
            guard b > 0 else { throw RuntimeError("--kv-cache-size: must be positive, got \(b)") }
            return b
        case let .fraction(f):
            guard f > 0 && f <= 1 else { throw RuntimeError("--cache-max-entry-count: must be in (0, 1], got \(f)") }
            return Int(Double(SystemMemory.availableBytes()) * f)
        }
    }

    /// Parses "64MiB", "512M", "2G", "1048576" (K/M/G and KiB/MiB/GiB are powers of 1024).
    public static func parseBytes(_ s: String) throws -> Int {
        let t = s.trimmingCharacters(in: .whitespaces)
        let units: [(String, Int)] = [("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("KB", 1 << 10), ("MB", 1 << 20), ("GB", 1 << 30),
                                      ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("B", 1)]
        var number = t, mul = 1
        for (u, m) in units where t.uppercased().hasSuffix(u.uppercased()) { number = String(t.dropLast(u.count)); mul = m; break }
        guard let v = Double(number.trimmingCharacters(in: .whitespaces)), v > 0, v * Double(mul) < 9e18 else {
            throw RuntimeError("--kv-cache-size: expected a positive size such as 64MiB, 512M or 1073741824, got '\(s)'")
        }
        return Int(v * Double(mul))
    }
}

/// Memory the process may still take: MemAvailable, or the cgroup limit minus usage
/// when that is smaller.
public enum SystemMemory {
    /// `LMKIT_AVAILABLE_MEMORY` (bytes) overrides the measurement (tests of the
    /// "does not fit" paths use it).
    public static func availableBytes() -> Int {
        if let s = ProcessInfo.processInfo.environment["LMKIT_AVAILABLE_MEMORY"], let v = Int(s), v > 0 { return v }
        var avail = Int.max
        if let s = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8),
           let line = s.split(separator: "\n").first(where: { $0.hasPrefix("MemAvailable:") }),
           let kb = Int(line.split(separator: " ").dropFirst().first ?? "") {
            avail = kb * 1024
        }
        func read(_ p: String) -> Int? { (try? String(contentsOfFile: p, encoding: .utf8)).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } }
        if let limit = read("/sys/fs/cgroup/memory.max"), let used = read("/sys/fs/cgroup/memory.current") {
            avail = min(avail, max(0, limit - used))
        } else if let limit = read("/sys/fs/cgroup/memory/memory.limit_in_bytes"), limit < (1 << 60),
                  let used = read("/sys/fs/cgroup/memory/memory.usage_in_bytes") {
            avail = min(avail, max(0, limit - used))
        }
        return avail == Int.max ? 0 : avail
    }
}

/// Paged storage for attention keys and values (formats/kv-cache.md).
///
/// One pool of fixed-size blocks of `blockSize` tokens serves every sequence (slot) of
/// a run; a block holds, for every layer and KV head, a K page and a V page in their
/// schemes. Each sequence has a block table; blocks are taken as its positions are
/// stored and returned by `reset`. The pool is mapped once and its pages are touched
/// only when a block is first written, so resident memory follows the tokens stored.
///
/// Attention reads the pages directly (`view`): the decode kernels compute on the
/// codes, prefill dequantizes one page at a time into a tile. Nothing makes a
/// full-precision copy of a sequence's history.
public final class KVCache {
    public let layers: Int, kvHeads: Int, headDim: Int
    /// Sequence slots.
    public let sequences: Int
    /// Maximum positions per sequence.
    public let capacity: Int
    public let options: KVCacheOptions
    /// Blocks in the pool.
    public let blocks: Int
    /// Bytes of one K page and one V page (each padded to 64 bytes).
    public let keyPageBytes: Int, valuePageBytes: Int
    /// Bytes of one block: every layer's and KV head's K and V pages.
    public let blockBytes: Int
    public var blockSize: Int { options.blockSize }
    public var keyScheme: KVScheme { options.keys }
    public var valueScheme: KVScheme { options.values }
    /// Pool bytes.
    public var poolBytes: Int { blocks * blockBytes }
    /// Bytes one cached token costs (its share of a block, all layers, K and V).
    public var bytesPerToken: Double { Double(blockBytes) / Double(blockSize) }
    /// Tokens the pool holds in all.
    public var tokenCapacity: Int { blocks * blockSize }
    /// Blocks not held by any sequence.
    public var freeBlocks: Int { free.count }
    /// A tensor-parallel model's cache: one cache per local rank, each holding only
    /// that rank's KV heads (empty for an ordinary cache). This cache then keeps the
    /// sequences' bookkeeping, which its ranks mirror block for block; it has no pages.
    public let ranks: [KVCache]

    let pool: UnsafeMutableRawPointer
    let mappedBytes: Int
    /// Per-channel K only: the newest, incomplete block of each (sequence, layer, KV
    /// head) in float32, `[sequence][layer][kvHead][blockSize][headDim]`; a block is
    /// quantized from here once its last row is stored.
    let tails: UnsafeMutablePointer<Float>?
    /// Bytes of `tails` (outside the pool, counted against a budget).
    public let tailBytes: Int
    /// Positions stored per sequence (visible or not).
    private var stored: [Int]
    let maxBlocksPerSequence: Int
    /// `[sequence][maxBlocksPerSequence]` block ids.
    let tables: UnsafeMutablePointer<Int32>
    private var counts: [Int]
    private var held: [Int]
    private var free: [Int32]

    /// Bytes one block of these options takes for a model of this shape.
    public static func blockBytes(layers: Int, kvHeads: Int, headDim: Int, options: KVCacheOptions) -> Int {
        let k = pad64(options.keys.pageBytes(blockSize: options.blockSize, headDim: headDim))
        let v = pad64(options.values.pageBytes(blockSize: options.blockSize, headDim: headDim))
        return layers * kvHeads * (k + v)
    }
    static func pad64(_ n: Int) -> Int { (n + 63) / 64 * 64 }

    /// Bytes of the float32 tail blocks a per-channel K scheme keeps outside the pool
    /// (one block per sequence, layer and KV head); 0 for other schemes.
    public static func tailBytes(sequences: Int, layers: Int, kvHeads: Int, headDim: Int, options: KVCacheOptions) -> Int {
        options.keys.isPerChannel ? sequences * layers * kvHeads * options.blockSize * headDim * 4 : 0
    }

    /// - Throws: `RuntimeError` for a block size outside 1...1024, an int4 scheme with an
    ///   odd head size, a budget that does not hold one block, or a pool that cannot be mapped.
    public init(layers: Int, kvHeads: Int, headDim: Int, capacity: Int, sequences: Int = 1, options: KVCacheOptions = KVCacheOptions()) throws {
        try options.validate()
        for (side, s) in [("K", options.keys), ("V", options.values)] where s.pageBytes(blockSize: options.blockSize, headDim: headDim) < 0 {
            throw RuntimeError("--kv-cache: \(side) scheme \(s) cannot store head size \(headDim) (int4 packs two channels a byte: the head size must be even)")
        }
        guard capacity >= 1, sequences >= 1 else { throw RuntimeError("KV cache: capacity (\(capacity)) and sequences (\(sequences)) must be at least 1") }
        self.layers = layers; self.kvHeads = kvHeads; self.headDim = headDim
        self.capacity = capacity; self.sequences = sequences; self.options = options
        ranks = []
        tailBytes = Self.tailBytes(sequences: sequences, layers: layers, kvHeads: kvHeads, headDim: headDim, options: options)
        let tailFloats = tailBytes / 4
        keyPageBytes = Self.pad64(options.keys.pageBytes(blockSize: options.blockSize, headDim: headDim))
        valuePageBytes = Self.pad64(options.values.pageBytes(blockSize: options.blockSize, headDim: headDim))
        blockBytes = max(64, layers * kvHeads * (keyPageBytes + valuePageBytes))
        maxBlocksPerSequence = (capacity + options.blockSize - 1) / options.blockSize
        if let budget = options.budget {
            let bytes = try budget.resolve() - tailBytes
            let n = max(0, bytes) / blockBytes
            guard n >= 1 else {
                throw RuntimeError("KV cache budget \(bytes + tailBytes) bytes\(budget == .bytes(bytes) ? "" : " (\(budget))") is smaller than one block (\(blockBytes) bytes: \(options.blockSize) tokens × \(layers) layers × \(kvHeads) KV heads, \(options.schemeDescription)); raise --kv-cache-size or --cache-max-entry-count, or lower --cache-block-seq-len")
            }
            blocks = min(n, Int(Int32.max))
        } else {
            blocks = sequences * maxBlocksPerSequence
        }
        let (bytes, o1) = blocks.multipliedReportingOverflow(by: blockBytes)
        guard !o1, let p = mmap(nil, max(bytes, 64), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else {
            throw RuntimeError("KV cache: cannot map a pool of \(blocks) blocks × \(blockBytes) bytes; lower --kv-cache-size, --ctx or the sequence count")
        }
        pool = p; mappedBytes = max(bytes, 64)
        tables = .allocate(capacity: max(1, sequences * maxBlocksPerSequence))
        tables.initialize(repeating: -1, count: max(1, sequences * maxBlocksPerSequence))
        counts = [Int](repeating: 0, count: sequences)
        stored = [Int](repeating: 0, count: sequences)
        held = [Int](repeating: 0, count: sequences)
        if tailFloats > 0 {
            let t = UnsafeMutablePointer<Float>.allocate(capacity: tailFloats)
            t.initialize(repeating: 0, count: tailFloats)
            tails = t
        } else { tails = nil }
        free = (0..<Int32(blocks)).reversed()
    }
    deinit { munmap(pool, mappedBytes); tables.deallocate(); tails?.deallocate() }

    /// The cache of a tensor-parallel model over its ranks' caches (same layers, head
    /// size, slots, capacity, options and block count; `kvHeads` is the ranks' total).
    /// Reserving and resetting go to every rank; attention reads the ranks' own pages.
    /// - Throws: `RuntimeError` when the ranks' caches disagree.
    public init(ranks: [KVCache]) throws {
        guard let r0 = ranks.first, ranks.allSatisfy({ $0.ranks.isEmpty && $0.layers == r0.layers && $0.headDim == r0.headDim && $0.sequences == r0.sequences
                && $0.capacity == r0.capacity && $0.options.keys == r0.options.keys && $0.options.values == r0.options.values
                && $0.options.blockSize == r0.options.blockSize && $0.options.rotate == r0.options.rotate && $0.blocks == r0.blocks }) else {
            throw RuntimeError("KV cache: the ranks' caches must agree in layers, head size, slots, capacity, options and blocks")
        }
        self.ranks = ranks
        layers = r0.layers; kvHeads = ranks.reduce(0) { $0 + $1.kvHeads }; headDim = r0.headDim
        sequences = r0.sequences; capacity = r0.capacity; options = r0.options; blocks = r0.blocks
        keyPageBytes = r0.keyPageBytes; valuePageBytes = r0.valuePageBytes
        blockBytes = ranks.reduce(0) { $0 + $1.blockBytes }
        tailBytes = ranks.reduce(0) { $0 + $1.tailBytes }
        maxBlocksPerSequence = r0.maxBlocksPerSequence
        guard let p = mmap(nil, 64, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else { throw RuntimeError("KV cache: mmap failed") }
        pool = p; mappedBytes = 64; tails = nil
        tables = .allocate(capacity: max(1, sequences * maxBlocksPerSequence))
        tables.initialize(repeating: -1, count: max(1, sequences * maxBlocksPerSequence))
        counts = [Int](repeating: 0, count: sequences)
        stored = [Int](repeating: 0, count: sequences)
        held = [Int](repeating: 0, count: sequences)
        free = (0..<Int32(blocks)).reversed()
    }

    /// The float32 tail block of (`sequence`, `layer`, `head`) (per-channel K only).
    public func tailRows(layer: Int, sequence: Int, head: Int) -> UnsafeMutablePointer<Float>? {
        tails.map { $0 + ((sequence * layers + layer) * kvHeads + head) * blockSize * headDim }
    }
    /// Complete (quantized) K blocks of `sequence` under a per-channel K scheme.
    public func completeBlocks(_ sequence: Int) -> Int { stored[sequence] / blockSize }

    /// Positions stored in `sequence` and visible to attention.
    public func count(_ sequence: Int) -> Int { counts[sequence] }
    /// Positions of sequence 0 (single-sequence callers).
    public var count: Int { counts[0] }

    /// Blocks `positions` positions of one sequence need.
    public func blocksNeeded(positions: Int) -> Int { (positions + blockSize - 1) / blockSize }

    /// Stores K and V of positions `start..<start+tokens` of `sequence` for `layer`;
    /// `keys`/`values` rows are `kvHeads*headDim` floats, `stride` apart. Quantizes on
    /// write. Visible after `advance`, except to the same forward call.
    /// - Throws: `RuntimeError` for a slot, layer or position out of range, or a pool
    ///   with no free block (naming the pool's size and what to raise).
    public func store(layer: Int, sequence s: Int, start: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, tokens: Int, stride: Int) throws {
        guard ranks.isEmpty else { throw RuntimeError("KV cache: a tensor-parallel cache stores through its ranks' caches") }
        guard s >= 0 && s < sequences, layer >= 0 && layer < layers, tokens >= 0, start >= 0, start + tokens <= capacity else {
            throw RuntimeError("KV cache overflow: sequence \(s) of \(sequences), layer \(layer) of \(layers), positions \(start)..<\(start + tokens) > capacity \(capacity)")
        }
        guard start <= stored[s] else {
            throw RuntimeError("KV cache: sequence \(s) stores positions from \(start) but holds \(stored[s]); positions must arrive in order, without gaps")
        }
        try reserve(sequence: s, positions: start + tokens)
        let bs = blockSize, hd = headDim
        let table = tables + s * maxBlocksPerSequence
        let perChannel = keyScheme.isPerChannel
        for h in 0..<kvHeads {
            let headOffset = (layer * kvHeads + h) * (keyPageBytes + valuePageBytes)
            let tail = tailRows(layer: layer, sequence: s, head: h)
            for t in 0..<tokens {
                let pos = start + t
                let page = pool + Int(table[pos / bs]) * blockBytes + headOffset
                if let tail, perChannel {
                    (tail + (pos % bs) * hd).update(from: keys + t * stride + h * hd, count: hd)
                    if pos % bs == bs - 1 { keyScheme.storeBlock(tail, page: page, blockSize: bs, headDim: hd) }
                } else {
                    keyScheme.storeRow(keys + t * stride + h * hd, page: page, blockSize: bs, row: pos % bs, headDim: hd)
                }
                valueScheme.storeRow(values + t * stride + h * hd, page: page + keyPageBytes, blockSize: bs, row: pos % bs, headDim: hd)
            }
        }
        stored[s] = max(stored[s], start + tokens)
    }

    /// Single-sequence store at the end of sequence 0 (rows `kvHeads*headDim` apart).
    public func store(layer: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, tokens: Int) throws {
        try store(layer: layer, sequence: 0, start: count(0), keys: keys, values: values, tokens: tokens, stride: kvHeads * headDim)
    }

    /// Takes blocks from the pool until `sequence` can hold `positions` positions.
    /// - Throws: `RuntimeError` when the pool runs out.
    public func reserve(sequence s: Int, positions: Int) throws {
        guard s >= 0 && s < sequences, positions >= 0 && positions <= capacity else {
            throw RuntimeError("KV cache: cannot reserve \(positions) positions for sequence \(s) (\(sequences) slots, capacity \(capacity))")
        }
        let need = blocksNeeded(positions: positions)
        guard need > held[s] else { return }
        guard need - held[s] <= free.count else {
            throw RuntimeError("KV cache full: sequence \(s) needs \(need) blocks for \(positions) positions but \(free.count) of the pool's \(blocks) blocks are free (\(blocks * blockSize) tokens at \(Int(bytesPerToken)) bytes/token, \(options.schemeDescription)); raise --kv-cache-size or --cache-max-entry-count, or run fewer sequences")
        }
        for r in ranks where r.blocksMissing([(s, positions)]) > r.freeBlocks {
            throw RuntimeError("KV cache: a rank's pool (\(r.freeBlocks) free blocks) is out of step with the model's cache")
        }
        let table = tables + s * maxBlocksPerSequence
        while held[s] < need { table[held[s]] = free.removeLast(); held[s] += 1 }
        for r in ranks { try r.reserve(sequence: s, positions: positions) }
    }

    /// Blocks beyond those already held that `positions[i]` positions of `sequences[i]` need.
    public func blocksMissing(_ spans: [(sequence: Int, positions: Int)]) -> Int {
        spans.reduce(0) { $0 + max(0, blocksNeeded(positions: $1.positions) - held[$1.sequence]) }
    }

    /// Makes `tokens` more positions of `sequence` visible.
    public func advance(_ sequence: Int, by tokens: Int) { counts[sequence] += tokens }

    /// Forgets `sequence` and returns its blocks to the pool.
    public func reset(_ sequence: Int) {
        for r in ranks { r.reset(sequence) }
        let table = tables + sequence * maxBlocksPerSequence
        while held[sequence] > 0 { held[sequence] -= 1; free.append(table[held[sequence]]); table[held[sequence]] = -1 }
        counts[sequence] = 0
        stored[sequence] = 0
    }
    /// Forgets every sequence.
    public func reset() { for s in 0..<sequences { reset(s) } }

    /// The pages of (`sequence`, `layer`, KV `head`) for the attention kernels; valid
    /// until the sequence is reset or the cache freed.
    public func view(layer: Int, sequence: Int, head: Int) -> lmk_kv_view {
        if !ranks.isEmpty { fatalError("KVCache.view: a tensor-parallel cache has no pages of its own; view its ranks' caches") }
        let kbase = UnsafePointer((pool + (layer * kvHeads + head) * (keyPageBytes + valuePageBytes)).assumingMemoryBound(to: UInt8.self))
        let tail = tailRows(layer: layer, sequence: sequence, head: head)
        return lmk_kv_view(kbase: kbase, vbase: kbase + keyPageBytes, table: UnsafePointer(tables + sequence * maxBlocksPerSequence),
                           stride: Int64(blockBytes), bs: Int32(blockSize), kscheme: keyScheme.cID, vscheme: valueScheme.cID,
                           ktail: tail.map { UnsafePointer($0) }, kfull: tail == nil ? Int32.max : Int32(completeBlocks(sequence)))
    }

    /// Rows `0..<n` of (`sequence`, `layer`, `head`) dequantized into `out` (`[n, headDim]`):
    /// the reference twin's input; the runtime never calls it.
    public func dequantize(layer: Int, sequence: Int, head: Int, keys: Bool, count n: Int, into out: UnsafeMutablePointer<Float>, kernels: KernelSet) {
        let v = view(layer: layer, sequence: sequence, head: head)
        for i in 0..<blocksNeeded(positions: n) {
            let rows = min(blockSize, n - i * blockSize)
            if keys, let tail = v.ktail, i >= Int(v.kfull) {
                (out + i * blockSize * headDim).update(from: tail, count: rows * headDim)
                continue
            }
            let page = UnsafeRawPointer((keys ? v.kbase : v.vbase)!) + Int(v.table[i]) * blockBytes
            kernels.kvDequant(keys ? keyScheme : valueScheme, page: page, blockSize: blockSize, count: rows, headDim: headDim, out: out + i * blockSize * headDim)
        }
    }

    /// A one-line summary: schemes, block size, pool size, bytes per token, tokens held.
    public var summary: String {
        let mib = Double(poolBytes) / 1048576
        let tail = tailBytes > 0 ? String(format: " + %.2f MiB float32 tail blocks", Double(tailBytes) / 1048576) : ""
        return "KV cache: \(options.schemeDescription), blocks of \(blockSize) tokens, pool \(String(format: "%.1f", mib)) MiB = \(blocks) blocks = \(tokenCapacity) tokens, \(String(format: "%.1f", bytesPerToken)) bytes/token" + tail
    }
}
