import Foundation
import LMFormats

/// A deliberately naive Llama forward (scalar loops, Double accumulation, no cache,
/// no BLAS) written straight from the HF modeling code: the reference twin of
/// `LlamaModel.forward`.
struct ReferenceForward {
    let c: ModelConfig
    let w: [String: [Float]]

    init(folder: String) throws {
        c = try ModelConfig.load(path: folder)
        let store = try TensorStore(path: folder)
        var w: [String: [Float]] = [:]
        for n in store.names { w[n] = try store[n]!.toFloat() }
        self.w = w
    }

    func matvec(_ name: String, _ x: [Double], rows: Int) -> [Double] {
        let m = w[name]!
        let cols = x.count
        return (0..<rows).map { r in var s = 0.0; for j in 0..<cols { s += Double(m[r * cols + j]) * x[j] }; return s }
    }

    func rms(_ x: [Double], _ name: String) -> [Double] {
        let g = w[name]!
        let ms = x.reduce(0) { $0 + $1 * $1 } / Double(x.count)
        let inv = 1 / (ms + Double(c.rmsNormEps)).squareRoot()
        return x.indices.map { x[$0] * inv * Double(g[$0]) }
    }

    func rope(_ v: inout [Double], heads: Int, pos: Int) {
        let hd = c.headDim, half = hd / 2
        for h in 0..<heads {
            for i in 0..<half {
                let invFreq = 1 / pow(Double(c.ropeTheta), Double(2 * i) / Double(hd))
                let a = Double(pos) * invFreq
                let x1 = v[h * hd + i], x2 = v[h * hd + i + half]
                v[h * hd + i] = x1 * cos(a) - x2 * sin(a)
                v[h * hd + i + half] = x2 * cos(a) + x1 * sin(a)
            }
        }
    }

    /// Logits `[T][vocab]` for `ids` at positions 0..<T.
    func logits(_ ids: [Int]) -> [[Double]] {
        let D = c.hiddenSize, H = c.numHeads, KV = c.numKVHeads, hd = c.headDim
        let emb = w["model.embed_tokens.weight"]!
        var x: [[Double]] = ids.map { id in (0..<D).map { Double(emb[id * D + $0]) } }
        for l in 0..<c.numLayers {
            let p = "model.layers.\(l)."
            var qs: [[Double]] = [], ks: [[Double]] = [], vs: [[Double]] = []
            for (t, xt) in x.enumerated() {
                let n = rms(xt, p + "input_layernorm.weight")
                var q = matvec(p + "self_attn.q_proj.weight", n, rows: H * hd)
                var k = matvec(p + "self_attn.k_proj.weight", n, rows: KV * hd)
                var v = matvec(p + "self_attn.v_proj.weight", n, rows: KV * hd)
                if let qb = w[p + "self_attn.q_proj.bias"] {
                    let kb = w[p + "self_attn.k_proj.bias"]!, vb = w[p + "self_attn.v_proj.bias"]!
                    for i in q.indices { q[i] += Double(qb[i]) }
                    for i in k.indices { k[i] += Double(kb[i]); v[i] += Double(vb[i]) }
                }
                rope(&q, heads: H, pos: t); rope(&k, heads: KV, pos: t)
                qs.append(q); ks.append(k); vs.append(v)
            }
            for t in x.indices {
                var att = [Double](repeating: 0, count: H * hd)
                for h in 0..<H {
                    let g = h / (H / KV)
                    var s = (0...t).map { j in (0..<hd).reduce(0.0) { $0 + qs[t][h * hd + $1] * ks[j][g * hd + $1] } / Double(hd).squareRoot() }
                    let m = s.max()!
                    s = s.map { exp($0 - m) }
                    let z = s.reduce(0, +)
                    for j in 0...t { for d in 0..<hd { att[h * hd + d] += s[j] / z * vs[j][g * hd + d] } }
                }
                let o = matvec(p + "self_attn.o_proj.weight", att, rows: D)
                for i in 0..<D { x[t][i] += o[i] }
                let n = rms(x[t], p + "post_attention_layernorm.weight")
                let gt = matvec(p + "mlp.gate_proj.weight", n, rows: c.intermediateSize)
                let up = matvec(p + "mlp.up_proj.weight", n, rows: c.intermediateSize)
                let act = gt.indices.map { gt[$0] / (1 + exp(-gt[$0])) * up[$0] }
                let d = matvec(p + "mlp.down_proj.weight", act, rows: D)
                for i in 0..<D { x[t][i] += d[i] }
            }
        }
        let head = c.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight"
        return x.map { matvec(head, rms($0, "model.norm.weight"), rows: c.vocabSize) }
    }
}
