import Foundation
import LMRuntime

/// Log-probability helpers. Accumulation is in Double; the exponentials in Float.
public enum Scoring {
    /// `log Σ exp(row)` of one logits row, max-subtracted. Overwrites `row` with
    /// the shifted exponentials (SIMD exp; lanes summed in Float, total in Double).
    @inline(__always)
    public static func logSumExpInPlace(_ row: UnsafeMutablePointer<Float>, _ n: Int) -> Double {
        let m = FastMath.max(row, n)
        return Double(m) + Foundation.log(FastMath.expShiftSum(row, n, shift: m))
    }

    /// Reference twin of `logSumExpInPlace` (scalar, Foundation `exp`, Double sum; does not modify).
    public static func logSumExpReference(_ row: UnsafePointer<Float>, _ n: Int) -> Double {
        var m = -Float.infinity
        for i in 0..<n { m = max(m, row[i]) }
        var s = 0.0
        for i in 0..<n { s += Foundation.exp(Double(row[i] - m)) }
        return Double(m) + Foundation.log(s)
    }

    /// Negative log-likelihoods (nats) of `targets[j]` under logits rows `rows[j]`
    /// of a `[T, vocab]` matrix; rows are processed in parallel. The scored rows of
    /// `logits` are overwritten.
    public static func nll(logits: inout [Float], vocab: Int, rows: [Int], targets: [Int], context: ComputeContext) -> [Double] {
        var out = [Double](repeating: 0, count: rows.count)
        logits.withUnsafeMutableBufferPointer { lp in
            out.withUnsafeMutableBufferPointer { op in
                let o = SendablePointer(op.baseAddress!)
                let b = SendablePointer(lp.baseAddress!)
                let workers = min(context.threads, max(rows.count, 1))
                let kernels = context.kernels
                context.parallelFor(workers) { w in
                    var j = w
                    while j < rows.count {
                        let row = b.p + rows[j] * vocab
                        let target = Double(row[targets[j]])
                        o.p[j] = kernels.logSumExpInPlace(row, vocab) - target
                        j += workers
                    }
                }
            }
        }
        return out
    }
}
