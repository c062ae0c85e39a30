/// Storage for attention keys and values, per layer and KV head.
///
/// Attention always reads K/V back through this interface (prefill included), so a
/// quantized or paged cache changes every measurement the runtime makes. Readers
/// ask for a contiguous `[positions, headDim]` float view; a quantized cache
/// dequantizes into the scratch buffer it is given and returns that.
public protocol KVCache: AnyObject {
    var layers: Int { get }
    var kvHeads: Int { get }
    var headDim: Int { get }
    /// Maximum positions.
    var capacity: Int { get }
    /// Positions already stored (and visible to attention).
    var count: Int { get }
    /// Stores K and V (`[tokens, kvHeads*headDim]` each) for `layer` at positions
    /// `count ..< count+tokens`. Visible after `advance(by:)`, except to the same
    /// forward call, which reads up to `count+tokens`.
    /// - Throws: `RuntimeError` when the positions would pass `capacity` (every build).
    func store(layer: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, tokens: Int) throws
    /// Keys of positions `0..<upTo` for (`layer`, `head`) as `[upTo, headDim]`.
    func keys(layer: Int, head: Int, upTo: Int, scratch: UnsafeMutablePointer<Float>) -> UnsafePointer<Float>
    /// Values, as `keys`.
    func values(layer: Int, head: Int, upTo: Int, scratch: UnsafeMutablePointer<Float>) -> UnsafePointer<Float>
    /// Makes `tokens` more positions visible.
    func advance(by tokens: Int)
    /// Forgets everything.
    func reset()
}

/// Plain float32 cache: `[layer][kvHead][position][headDim]`, contiguous per head
/// so reads are zero-copy.
public final class FloatKVCache: KVCache {
    public let layers: Int, kvHeads: Int, headDim: Int, capacity: Int
    public private(set) var count = 0
    let k: UnsafeMutablePointer<Float>
    let v: UnsafeMutablePointer<Float>

    public init(layers: Int, kvHeads: Int, headDim: Int, capacity: Int) {
        self.layers = layers; self.kvHeads = kvHeads; self.headDim = headDim; self.capacity = capacity
        let n = layers * kvHeads * capacity * headDim
        k = .allocate(capacity: n); v = .allocate(capacity: n)
    }
    deinit { k.deallocate(); v.deallocate() }

    @inline(__always) func base(_ layer: Int, _ head: Int) -> Int { (layer * kvHeads + head) * capacity * headDim }

    public func store(layer: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, tokens: Int) throws {
        guard layer >= 0 && layer < layers && tokens >= 0 && count + tokens <= capacity else {
            throw RuntimeError("KV cache overflow: layer \(layer) of \(layers), \(count) + \(tokens) positions > capacity \(capacity)")
        }
        let stride = kvHeads * headDim
        for h in 0..<kvHeads {
            let b = base(layer, h)
            for t in 0..<tokens {
                (k + b + (count + t) * headDim).update(from: keys + t * stride + h * headDim, count: headDim)
                (v + b + (count + t) * headDim).update(from: values + t * stride + h * headDim, count: headDim)
            }
        }
    }
    public func keys(layer: Int, head: Int, upTo: Int, scratch: UnsafeMutablePointer<Float>) -> UnsafePointer<Float> { UnsafePointer(k + base(layer, head)) }
    public func values(layer: Int, head: Int, upTo: Int, scratch: UnsafeMutablePointer<Float>) -> UnsafePointer<Float> { UnsafePointer(v + base(layer, head)) }
    public func advance(by tokens: Int) { count += tokens }
    public func reset() { count = 0 }
}
