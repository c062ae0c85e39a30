/// Storage for attention keys and values, per sequence, layer and KV head.
///
/// Attention always reads K/V back through this interface (prefill included), so a
/// quantized or paged cache changes every measurement the runtime makes. Readers ask
/// for a contiguous `[positions, headDim]` float view of one (sequence, layer, KV
/// head); a quantized cache dequantizes into the scratch buffer it is given and
/// returns that, once per KV head (the query heads of a group share the read).
///
/// A cache holds `sequences` independent sequences (slots), each up to `capacity`
/// positions; a `Batch` names the slot of each token.
public protocol KVCache: AnyObject {
    var layers: Int { get }
    var kvHeads: Int { get }
    var headDim: Int { get }
    /// Sequence slots.
    var sequences: Int { get }
    /// Maximum positions per sequence.
    var capacity: Int { get }
    /// Positions stored in `sequence` and visible to attention.
    func count(_ sequence: Int) -> Int
    /// Stores K and V of `tokens` consecutive positions `start..<start+tokens` of
    /// `sequence` for `layer`; `keys`/`values` rows are `kvHeads*headDim` floats,
    /// `stride` apart. Visible after `advance`, except to the same forward call.
    /// - Throws: `RuntimeError` for a slot, layer or position out of range (every build).
    func store(layer: Int, sequence: Int, start: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, tokens: Int, stride: Int) throws
    /// Keys of positions `0..<upTo` for (`sequence`, `layer`, `head`) as `[upTo, headDim]`.
    func keys(layer: Int, sequence: Int, head: Int, upTo: Int, scratch: UnsafeMutablePointer<Float>) -> UnsafePointer<Float>
    /// Values, as `keys`.
    func values(layer: Int, sequence: Int, head: Int, upTo: Int, scratch: UnsafeMutablePointer<Float>) -> UnsafePointer<Float>
    /// Makes `tokens` more positions of `sequence` visible.
    func advance(_ sequence: Int, by tokens: Int)
    /// Forgets `sequence`.
    func reset(_ sequence: Int)
}

extension KVCache {
    /// Positions of sequence 0 (single-sequence callers).
    public var count: Int { count(0) }
    /// Forgets every sequence.
    public func reset() { for s in 0..<sequences { reset(s) } }
    /// Single-sequence store at the end of sequence 0 (rows `kvHeads*headDim` apart).
    public func store(layer: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, tokens: Int) throws {
        try store(layer: layer, sequence: 0, start: count(0), keys: keys, values: values, tokens: tokens, stride: kvHeads * headDim)
    }
}

/// Plain float32 cache: `[sequence][layer][kvHead][position][headDim]`, contiguous per
/// head so reads are zero-copy.
public final class FloatKVCache: KVCache {
    public let layers: Int, kvHeads: Int, headDim: Int, capacity: Int, sequences: Int
    private var counts: [Int]
    let k: UnsafeMutablePointer<Float>
    let v: UnsafeMutablePointer<Float>

    public init(layers: Int, kvHeads: Int, headDim: Int, capacity: Int, sequences: Int = 1) {
        self.layers = layers; self.kvHeads = kvHeads; self.headDim = headDim; self.capacity = capacity
        self.sequences = max(1, sequences)
        counts = [Int](repeating: 0, count: self.sequences)
        let n = self.sequences * layers * kvHeads * capacity * headDim
        k = .allocate(capacity: max(n, 1)); v = .allocate(capacity: max(n, 1))
    }
    deinit { k.deallocate(); v.deallocate() }

    @inline(__always) func base(_ s: Int, _ layer: Int, _ head: Int) -> Int { ((s * layers + layer) * kvHeads + head) * capacity * headDim }

    public func count(_ sequence: Int) -> Int { counts[sequence] }

    public func store(layer: Int, sequence s: Int, start: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, tokens: Int, stride: Int) throws {
        guard s >= 0 && s < sequences, layer >= 0 && layer < layers, tokens >= 0, start >= 0, start + tokens <= capacity else {
            throw RuntimeError("KV cache overflow: sequence \(s) of \(sequences), layer \(layer) of \(layers), positions \(start)..<\(start + tokens) > capacity \(capacity)")
        }
        for h in 0..<kvHeads {
            let b = base(s, layer, h)
            for t in 0..<tokens {
                (k + b + (start + t) * headDim).update(from: keys + t * stride + h * headDim, count: headDim)
                (v + b + (start + t) * headDim).update(from: values + t * stride + h * headDim, count: headDim)
            }
        }
    }
    public func keys(layer: Int, sequence: Int, head: Int, upTo: Int, scratch: UnsafeMutablePointer<Float>) -> UnsafePointer<Float> { UnsafePointer(k + base(sequence, layer, head)) }
    public func values(layer: Int, sequence: Int, head: Int, upTo: Int, scratch: UnsafeMutablePointer<Float>) -> UnsafePointer<Float> { UnsafePointer(v + base(sequence, layer, head)) }
    public func advance(_ sequence: Int, by tokens: Int) { counts[sequence] += tokens }
    public func reset(_ sequence: Int) { counts[sequence] = 0 }
}
