import Foundation

/// Vectorized transcendental functions for the runtime's hot loops. Each has a
/// scalar reference (`Foundation.exp`) and a test bounding the relative error.
public enum FastMath {
    /// e^x for 16 lanes (Cephes-style: range reduction by ln 2, degree-6 polynomial,
    /// exponent by bit construction). Relative error ≤ 2e-7 for x in [-87, 88];
    /// inputs below −87.3 give ~1e-38 (not 0), above 88.7 are clamped.
    @inline(__always)
    public static func exp(_ x: SIMD16<Float>) -> SIMD16<Float> {
        let xc = pointwiseMin(pointwiseMax(x, SIMD16(repeating: -87.3)), SIMD16(repeating: 88.7))
        let magic = SIMD16<Float>(repeating: 12582912) // 1.5·2²³: adding it rounds to an integer
        let t = xc * 1.44269504088896341 + magic
        let n = t - magic
        var r = xc - n * 0.693359375
        r = r - n * -2.12194440e-4
        var p = SIMD16<Float>(repeating: 1.9875691500e-4)
        p = p * r + 1.3981999507e-3
        p = p * r + 8.3334519073e-3
        p = p * r + 4.1665795894e-2
        p = p * r + 1.6666665459e-1
        p = p * r + 5.0000001201e-1
        let y = p * (r * r) + r + 1
        let bits = unsafeBitCast(t, to: SIMD16<Int32>.self) &- unsafeBitCast(magic, to: SIMD16<Int32>.self)
        let scale = unsafeBitCast((bits &+ 127) &<< 23, to: SIMD16<Float>.self)
        return y * scale
    }

    /// Scalar e^x through the same formula (for tails).
    @inline(__always)
    public static func exp(_ x: Float) -> Float { exp(SIMD16<Float>(repeating: x))[0] }

    /// `x[i] = exp(x[i] - shift)` for `n` elements; returns their sum (Float lanes, Double total).
    @inline(__always)
    public static func expShiftSum(_ x: UnsafeMutablePointer<Float>, _ n: Int, shift: Float) -> Double {
        let raw = UnsafeMutableRawPointer(x)
        var acc = SIMD16<Float>()
        var i = 0
        let s = SIMD16<Float>(repeating: shift)
        while i + 16 <= n {
            let e = exp(raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self) - s)
            raw.storeBytes(of: e, toByteOffset: 4 * i, as: SIMD16<Float>.self)
            acc += e
            i += 16
        }
        var total = Double(acc.sum())
        while i < n { let e = exp(x[i] - shift); x[i] = e; total += Double(e); i += 1 }
        return total
    }

    /// Maximum of `n` elements (−∞ for n = 0).
    @inline(__always)
    public static func max(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
        let raw = UnsafeRawPointer(x)
        var m = SIMD16<Float>(repeating: -.infinity)
        var i = 0
        while i + 16 <= n { m = pointwiseMax(m, raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)); i += 16 }
        var r = m.max()
        while i < n { r = Swift.max(r, x[i]); i += 1 }
        return r
    }
}
