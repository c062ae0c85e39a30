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
    /// row-major, `out` is `[tokens, rows]` (leading dimension `ldOut`).
    func apply(_ x: UnsafePointer<Float>, tokens: Int, out: UnsafeMutablePointer<Float>, ldOut: Int)
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
        values.withUnsafeBufferPointer { p.update(from: $0.baseAddress!, count: values.count) }
        self.rows = rows; self.cols = cols; data = UnsafePointer(p); owned = p; owner = nil
    }

    deinit { owned?.deallocate() }

    public func apply(_ x: UnsafePointer<Float>, tokens: Int, out: UnsafeMutablePointer<Float>, ldOut: Int) {
        if tokens == 1 {
            cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(rows), Int32(cols), 1, data, Int32(cols), x, 1, 0, out, 1)
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(tokens), Int32(rows), Int32(cols),
                        1, x, Int32(cols), data, Int32(cols), 0, out, Int32(ldOut))
        }
    }
}
