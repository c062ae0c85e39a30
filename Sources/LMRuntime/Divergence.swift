import Foundation
import LMSchemes

/// Divergence of one model's next-token distribution from another's (the evaluation's KL
/// and top-1, and the bit allocator's end-to-end sensitivity).
public enum Divergence {
    /// Per scored row: KL(P_base ‖ P_model) in nats, and whether both argmaxes agree.
    /// `KL = Σ p_b (log p_b − log p_m)`, log-softmax in Double from max-shifted logits.
    public static func klAndTop1(base: [Float], model: [Float], vocab: Int, rows: [Int], context: ComputeContext) -> (kl: [Double], top1: [Bool]) {
        var kl = [Double](repeating: 0, count: rows.count)
        var agree = [Bool](repeating: false, count: rows.count)
        base.withUnsafeBufferPointer { bp in
            model.withUnsafeBufferPointer { mp in
                kl.withUnsafeMutableBufferPointer { kp in
                    agree.withUnsafeMutableBufferPointer { ap in
                        let b = SendablePointer(UnsafeMutablePointer(mutating: bp.baseAddress!)), m = SendablePointer(UnsafeMutablePointer(mutating: mp.baseAddress!))
                        let k = SendablePointer(kp.baseAddress!), a = SendablePointer(ap.baseAddress!)
                        let workers = min(context.threads, max(rows.count, 1))
                        let kernels = context.kernels
                        context.parallelFor(workers) { w in
                            let tmp = UnsafeMutablePointer<Float>.allocate(capacity: vocab)
                            defer { tmp.deallocate() }
                            var j = w
                            while j < rows.count {
                                let pb = b.p + rows[j] * vocab, pm = m.p + rows[j] * vocab
                                let mb = kernels.max(pb, vocab), mm = kernels.max(pm, vocab)
                                tmp.update(from: pb, count: vocab)
                                let lseB = Double(mb) + log(kernels.expShiftSum(tmp, vocab, shift: mb))  // tmp = exp(b − mb)
                                tmp.update(from: pm, count: vocab)
                                let lseM = Double(mm) + log(kernels.expShiftSum(tmp, vocab, shift: mm))
                                var s = 0.0
                                var argB = 0, argM = 0
                                for i in 0..<vocab {
                                    let lb = Double(pb[i]) - lseB, lm = Double(pm[i]) - lseM
                                    s += exp(lb) * (lb - lm)
                                    if pb[i] > pb[argB] { argB = i }
                                    if pm[i] > pm[argM] { argM = i }
                                }
                                k.p[j] = max(s, 0)
                                a.p[j] = argB == argM
                                j += workers
                            }
                        }
                    }
                }
            }
        }
        return (kl, agree)
    }
}
