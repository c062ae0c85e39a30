import LMFormats

/// Tokens of one forward call, each with its (sequence slot, position), so sequences
/// of different lengths run in one call (their matmuls batched together).
///
/// Each sequence's tokens form one contiguous run at consecutive positions, starting
/// where that sequence's cache ends (`KVCache.count(sequence)`).
public struct Batch: Sendable, Equatable {
    public private(set) var tokens: [Int] = []
    public private(set) var sequences: [Int] = []
    public private(set) var positions: [Int] = []
    /// The runs: sequence slot, first token index, token count, first position.
    public private(set) var spans: [Span] = []

    public struct Span: Sendable, Equatable {
        public let sequence: Int, first: Int, count: Int, start: Int
    }

    public init() {}

    /// One sequence's tokens at positions `start..<start+tokens.count`.
    public init(_ tokens: [Int], sequence: Int = 0, start: Int) { append(tokens, sequence: sequence, start: start) }

    /// Appends a run of `sequence` (each sequence at most once per batch).
    public mutating func append(_ t: [Int], sequence: Int, start: Int) {
        spans.append(Span(sequence: sequence, first: tokens.count, count: t.count, start: start))
        tokens += t
        sequences += [Int](repeating: sequence, count: t.count)
        positions += (0..<t.count).map { start + $0 }
    }

    public var count: Int { tokens.count }
}

/// Which logits rows a forward call returns.
public enum Logits: Sendable {
    /// Every token: `[T, vocab]`.
    case all
    /// The last token of each span: `[spans, vocab]`.
    case last
    /// These token indices of the batch, in this order: `[rows.count, vocab]`.
    case rows([Int])
    case none
}

/// Points inside a decoder layer whose input a tap sees: the input of each group of
/// linears (calibration and pruning capture these).
public enum TapPoint: String, Sendable, CaseIterable {
    /// Normalized input of q/k/v.
    case attentionInput
    /// Attention output, the input of `o_proj`.
    case oProjInput
    /// Normalized input of gate/up.
    case mlpInput
    /// `silu(gate)·up`, the input of `down_proj`.
    case downProjInput
}

/// The parts of one decoder layer, cut at its tap points; the forward runs them in this
/// order (`LlamaModel.forwardPart` runs one). Widths: T tokens, `hidden`, `heads·headDim`
/// (q), `intermediate` (F).
public enum LayerPart: String, Sendable, CaseIterable {
    /// `output` `[T, hidden]` = input_layernorm(`hidden`): q/k/v's input.
    case attentionNorm
    /// `output` `[T, q]` = causal attention of q/k/v(`input`), RoPE applied and K/V stored
    /// in the cache: o_proj's input.
    case attention
    /// `hidden` += o_proj(`input`).
    case oProj
    /// `output` `[T, hidden]` = post_attention_layernorm(`hidden`): gate/up's input.
    case mlpNorm
    /// `output` `[T, F]` = silu(gate(`input`)) ⊙ up(`input`): down_proj's input.
    case mlpUp
    /// `hidden` += down_proj(`input`).
    case down
}

/// Outputs of row-parallel projections, where a tensor-parallel communicator
/// all-reduces (`oProj`, `downProj`, and `embed` for a vocab-parallel embedding) or
/// all-gathers (`head`). With one rank: no-op (`embed` is not called).
public enum ReducePoint: String, Sendable, CaseIterable { case embed, oProj, downProj, head }

/// Observers and communicator hooks of a forward pass. Matrices are `[tokens, width]`
/// row-major.
public struct ForwardHooks {
    /// `tap(layer, point, x, tokens, width)`: read-only view of a linear group's input.
    public var tap: ((Int, TapPoint, UnsafePointer<Float>, Int, Int) throws -> Void)?
    /// `reduce(layer, point, out, tokens, width)`: may rewrite a projection's output in
    /// place (layer is -1 for the head).
    public var reduce: ((Int, ReducePoint, UnsafeMutablePointer<Float>, Int, Int) throws -> Void)?
    public init(tap: ((Int, TapPoint, UnsafePointer<Float>, Int, Int) throws -> Void)? = nil,
                reduce: ((Int, ReducePoint, UnsafeMutablePointer<Float>, Int, Int) throws -> Void)? = nil) {
        self.tap = tap; self.reduce = reduce
    }
}

/// A causal language model as the evaluators (perplexity, generation, benchmarks,
/// gates) see it.
public protocol CausalLM: AnyObject, Sendable {
    var config: ModelConfig { get }
    /// Bytes of all matrices (the tied embedding counted once).
    var weightBytes: Int { get }
    /// Bytes one decode step streams (every matrix but an embedding used only for lookups).
    var decodeStreamBytes: Int { get }
    /// A cache for `sequences` sequences of up to `capacity` positions each, in the
    /// schemes and pool size of `options`.
    /// - Throws: `RuntimeError` for options this model's shape cannot use or a budget
    ///   that does not hold one block.
    func makeCache(capacity: Int, sequences: Int, options: KVCacheOptions) throws -> KVCache
    /// Runs `batch`, stores its K/V in `cache` and advances each sequence.
    /// - Throws: `RuntimeError` for bad token ids, positions or cache slots.
    func forward(_ batch: Batch, cache: KVCache, logits: Logits, context: ComputeContext, hooks: ForwardHooks?) throws -> [Float]
}

extension CausalLM {
    /// An f32 cache sized for exactly `sequences × capacity` positions.
    public func makeCache(capacity: Int, sequences: Int = 1) throws -> KVCache {
        try makeCache(capacity: capacity, sequences: sequences, options: KVCacheOptions())
    }

    /// One sequence (slot 0) continuing at `cache.count`.
    public func forward(_ tokens: [Int], cache: KVCache, logits: Logits = .all, context: ComputeContext) throws -> [Float] {
        try forward(Batch(tokens, sequence: 0, start: cache.count(0)), cache: cache, logits: logits, context: context, hooks: nil)
    }
}
