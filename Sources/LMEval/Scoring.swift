import Foundation
import LMRuntime

/// Log-probability helpers. Accumulation is in Double; the exponentials in Float.
public enum Scoring {
    /// `log Σ exp(row)` of one logits row, max-subtracted.
    @inline(__always)
    public static func logSumExp(_ row: UnsafePointer<Float>, _ n: Int) -> Double {
        var m = -Float.infinity
        for i in 0..<n { m = max(m, row[i]) }
        var s: Double = 0
        var acc: Float = 0
        var i = 0
        // Blocks of 256 in Float, then into Double, to keep rounding small and speed high.
        while i < n {
            let e = min(i + 256, n)
            acc = 0
            while i < e { acc += Foundation.exp(row[i] - m); i += 1 }
            s += Double(acc)
        }
        return Double(m) + Foundation.log(s)
    }

    /// Negative log-likelihoods (nats) of `targets[j]` under logits rows `rows[j]`
    /// of a `[T, vocab]` matrix; rows are processed in parallel.
    public static func nll(logits: [Float], vocab: Int, rows: [Int], targets: [Int]) -> [Double] {
        var out = [Double](repeating: 0, count: rows.count)
        logits.withUnsafeBufferPointer { lp in
            out.withUnsafeMutableBufferPointer { op in
                let o = SendablePointer(op.baseAddress!)
                let base = UnsafeMutablePointer(mutating: lp.baseAddress!)
                let b = SendablePointer(base)
                let workers = min(RuntimeThreads.current, max(rows.count, 1))
                RuntimeThreads.parallelFor(workers) { w in
                    var j = w
                    while j < rows.count {
                        let row = UnsafePointer(b.p + rows[j] * vocab)
                        o.p[j] = logSumExp(row, vocab) - Double(row[targets[j]])
                        j += workers
                    }
                }
            }
        }
        return out
    }
}
