import Foundation

/// The reference twins' `U = chol((H + λI)⁻¹)ᵀ` for `H = 2/n·XᵀX` of the samples `x`
/// (`[samples, cols]`), λ = damp · mean(diag H): Double, Gauss–Jordan inverse (SPD, so no
/// pivoting), then the upper Cholesky factor of the inverse (`inv = Uᵀ·U`), row-major.
func referenceInverseFactor(_ x: [Float], cols n: Int, damp: Double) -> [Double] {
    let samples = x.count / n
    var H = [Double](repeating: 0, count: n * n)
    for s in 0..<samples { for i in 0..<n { for j in 0..<n { H[i * n + j] += 2 / Double(samples) * Double(x[s * n + i]) * Double(x[s * n + j]) } } }
    var mean = 0.0
    for i in 0..<n { mean += H[i * n + i] }
    for i in 0..<n { H[i * n + i] += damp * mean / Double(n) }
    var a = H, inv = [Double](repeating: 0, count: n * n)
    for i in 0..<n { inv[i * n + i] = 1 }
    for p in 0..<n {
        let d = a[p * n + p]
        for j in 0..<n { a[p * n + j] /= d; inv[p * n + j] /= d }
        for r in 0..<n where r != p {
            let f = a[r * n + p]
            if f != 0 { for j in 0..<n { a[r * n + j] -= f * a[p * n + j]; inv[r * n + j] -= f * inv[p * n + j] } }
        }
    }
    var U = [Double](repeating: 0, count: n * n)
    for i in 0..<n {
        var s = inv[i * n + i]
        for k in 0..<i { s -= U[k * n + i] * U[k * n + i] }
        U[i * n + i] = s.squareRoot()
        for j in (i + 1)..<n {
            var t = inv[i * n + j]
            for k in 0..<i { t -= U[k * n + i] * U[k * n + j] }
            U[i * n + j] = t / U[i * n + i]
        }
    }
    return U
}
