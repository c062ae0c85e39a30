import COpenBLAS
import LMCore

/// A weight matrix `[rows (out), cols (in)]` applied as `y = x · Wᵀ`.
///
/// The float runtime uses `DenseLinear`; quantized schemes implement the same
/// protocol so the forward pass does not change.
public protocol LinearWeight: AnyObject, Sendable {
    var rows: Int { get }
    var cols: Int { get }
    /// `out[t, r] = Σ_c x[t, c] · W[r, c]` for `t < tokens`. `x` is `[tokens, cols]`
    /// row-major, `out` is `[tokens, rows]` (leading dimension `ldOut`). Runs on
    /// `context`'s workers with its kernels.
    func apply(_ x: UnsafePointer<Float>, tokens: Int, out: UnsafeMutablePointer<Float>, ldOut: Int, context: ComputeContext)
    /// Row `r` of W as floats (`cols` values): embedding lookups use it.
    func row(_ r: Int, into out: UnsafeMutablePointer<Float>)
    /// Bytes of stored weights (what one decode step streams from memory).
    var storageBytes: Int { get }
}

/// Float32 weights, row-major, either borrowed from a mapping (zero copy) or owned.
public final class DenseLinear: LinearWeight, @unchecked Sendable {
    public let rows: Int
    public let cols: Int
    public let data: UnsafePointer<Float>
    private let owner: AnyObject?
    private var owned: UnsafeMutablePointer<Float>?

    /// Borrows `data` (kept alive by `owner`).
    public init(rows: Int, cols: Int, borrowing data: UnsafePointer<Float>, owner: AnyObject) {
        self.rows = rows; self.cols = cols; self.data = data; self.owner = owner; owned = nil
    }

    /// Takes a copy of `values`.
    public init(rows: Int, cols: Int, values: [Float]) {
        precondition(values.count == rows * cols)
        let p = UnsafeMutablePointer<Float>.allocate(capacity: max(values.count, 1))
        values.withUnsafeBufferPointer { if let b = $0.baseAddress { p.update(from: b, count: values.count) } }
        self.rows = rows; self.cols = cols; data = UnsafePointer(p); owned = p; owner = nil
    }

    deinit { owned?.deallocate() }

    public func row(_ r: Int, into out: UnsafeMutablePointer<Float>) { out.update(from: data + r * cols, count: cols) }
    public var storageBytes: Int { rows * cols * 4 }

    /// Splits the output rows across the context's workers; each calls single-threaded
    /// OpenBLAS (`sgemv` for one token, `sgemm` otherwise) on its slice (`LinearGroup`).
    public func apply(_ x: UnsafePointer<Float>, tokens: Int, out: UnsafeMutablePointer<Float>, ldOut: Int, context: ComputeContext) {
        LinearGroup.apply([self], x, tokens: tokens, outs: [out], ldOuts: [ldOut], context: context)
    }
}
