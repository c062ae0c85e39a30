import Foundation

/// Elementwise and per-row kernels of the Llama forward pass. Each has a simple
/// scalar definition in its doc comment; the SIMD bodies implement exactly that.
public enum Ops {
    /// Size of the Walsh–Hadamard blocks `hadamard` uses for vectors of `n`: the largest
    /// power of two dividing `n` (n itself when it is one; 2 for n = 6, 32 for n = 96).
    public static func hadamardBlock(_ n: Int) -> Int { n & -n }

    /// In-place normalized Walsh–Hadamard transform of `x[0..<n]` in blocks of
    /// `hadamardBlock(n)` (block-diagonal for head sizes that are not a power of two):
    /// fast butterflies, then × 1/√block. Orthogonal and its own inverse, so
    /// (Hq)·(Hk) = q·k and H(Σ p·Hv) = Σ p·v.
    public static func hadamard(_ x: UnsafeMutablePointer<Float>, _ n: Int) {
        let b = hadamardBlock(n)
        guard b > 1 else { return }
        let scale = 1 / Float(b).squareRoot()
        var base = 0
        while base < n {
            let v = x + base
            var h = 1
            while h < b {
                var i = 0
                while i < b {
                    for j in i..<(i + h) { let a = v[j], c = v[j + h]; v[j] = a + c; v[j + h] = a - c }
                    i += 2 * h
                }
                h *= 2
            }
            for j in 0..<b { v[j] *= scale }
            base += b
        }
    }

    /// `out[i] = x[i] / sqrt(mean(x²) + eps) * w[i]` for one row of `n`
    /// (sum of squares accumulated in Float, SIMD16 lanes).
    @inline(__always)
    public static func rmsNorm(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, _ n: Int, eps: Float) {
        var acc = SIMD16<Float>()
        var i = 0
        let raw = UnsafeRawPointer(x)
        while i + 16 <= n { let v = raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self); acc += v * v; i += 16 }
        var ss = acc.sum()
        while i < n { ss += x[i] * x[i]; i += 1 }
        let scale = 1 / (ss / Float(n) + eps).squareRoot()
        for j in 0..<n { out[j] = (x[j] * scale) * w[j] }
    }

    /// `a[i] = silu(a[i]) * b[i]`, `silu(z) = z / (1 + e^-z)`.
    @inline(__always)
    public static func siluMul(_ a: UnsafeMutablePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) {
        let ra = UnsafeMutableRawPointer(a), rb = UnsafeRawPointer(b)
        var i = 0
        while i + 16 <= n {
            let z = ra.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
            let y = z / (1 + FastMath.exp(-z)) * rb.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
            ra.storeBytes(of: y, toByteOffset: 4 * i, as: SIMD16<Float>.self)
            i += 16
        }
        while i < n { let z = a[i]; a[i] = z / (1 + FastMath.exp(-z)) * b[i]; i += 1 }
    }

    /// Reference twin of `siluMul` (Foundation `exp`).
    public static func siluMulReference(_ a: UnsafeMutablePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) {
        for i in 0..<n { let z = a[i]; a[i] = z / (1 + Foundation.exp(-z)) * b[i] }
    }

    /// `Σ a[i]·b[i]` (SIMD16 lanes, Float).
    @inline(__always)
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        let ra = UnsafeRawPointer(a), rb = UnsafeRawPointer(b)
        var acc = SIMD16<Float>()
        var i = 0
        while i + 16 <= n {
            acc = acc.addingProduct(ra.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self), rb.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self))
            i += 16
        }
        var s = acc.sum()
        while i < n { s += a[i] * b[i]; i += 1 }
        return s
    }

    /// `y[i] += alpha · x[i]`.
    @inline(__always)
    public static func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        let rx = UnsafeRawPointer(x), ry = UnsafeMutableRawPointer(y)
        let av = SIMD16<Float>(repeating: alpha)
        var i = 0
        while i + 16 <= n {
            let r = ry.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self).addingProduct(av, rx.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self))
            ry.storeBytes(of: r, toByteOffset: 4 * i, as: SIMD16<Float>.self)
            i += 16
        }
        while i < n { y[i] += alpha * x[i]; i += 1 }
    }

    /// `x[i] += y[i]`.
    @inline(__always)
    public static func add(_ x: UnsafeMutablePointer<Float>, _ y: UnsafePointer<Float>, _ n: Int) {
        var i = 0
        let rx = UnsafeMutableRawPointer(x), ry = UnsafeRawPointer(y)
        while i + 16 <= n {
            let s = rx.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self) + ry.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
            rx.storeBytes(of: s, toByteOffset: 4 * i, as: SIMD16<Float>.self)
            i += 16
        }
        while i < n { x[i] += y[i]; i += 1 }
    }

    /// In-place softmax over `x[0..<n]` (max-subtracted; sum in Float).
    @inline(__always)
    public static func softmax(_ x: UnsafeMutablePointer<Float>, _ n: Int) {
        let m = FastMath.max(x, n)
        let inv = Float(1 / FastMath.expShiftSum(x, n, shift: m))
        for i in 0..<n { x[i] *= inv }
    }

    /// Reference twin of `softmax` (scalar, Foundation `exp`, Double sum).
    public static func softmaxReference(_ x: UnsafeMutablePointer<Float>, _ n: Int) {
        var m = -Float.infinity
        for i in 0..<n { m = max(m, x[i]) }
        var s = 0.0
        for i in 0..<n { let e = Foundation.exp(x[i] - m); x[i] = e; s += Double(e) }
        for i in 0..<n { x[i] = Float(Double(x[i]) / s) }
    }
}

/// Rotary position embedding tables (HF rotate-half layout), float32 as HF computes them:
/// `inv_freq[i] = 1 / theta^(2i/d)`, `angle = pos · inv_freq[i]`.
///
/// Thread-safe: `upTo(_:)` grows the tables under a lock and hands out an immutable
/// snapshot, so concurrent forward calls (two contexts on one model) never see a
/// table being rebuilt.
public final class RotaryTable: @unchecked Sendable {
    public let headDim: Int
    let invFreq: [Float]
    private let lock = NSLock()
    private var current: Snapshot

    /// Immutable cos/sin tables for positions `0..<positions`.
    public struct Snapshot: Sendable {
        public let headDim: Int
        public let positions: Int
        let cos: [Float]
        let sin: [Float]

        /// Rotates `heads` heads of one token at position `pos` (< `positions`), in place:
        /// `x1' = x1·cos − x2·sin`, `x2' = x2·cos + x1·sin` with `x1 = x[i]`, `x2 = x[i+d/2]`.
        @inline(__always)
        public func apply(_ x: UnsafeMutablePointer<Float>, heads: Int, pos: Int) {
            let half = headDim / 2
            precondition(pos < positions)
            cos.withUnsafeBufferPointer { c in
                sin.withUnsafeBufferPointer { s in
                    let cb = c.baseAddress! + pos * half, sb = s.baseAddress! + pos * half
                    for h in 0..<heads {
                        let p = x + h * headDim
                        for i in 0..<half {
                            let x1 = p[i], x2 = p[i + half]
                            p[i] = x1 * cb[i] - x2 * sb[i]
                            p[i + half] = x2 * cb[i] + x1 * sb[i]
                        }
                    }
                }
            }
        }
    }

    public init(headDim: Int, theta: Float) {
        self.headDim = headDim
        invFreq = (0..<(headDim / 2)).map { i in 1 / Foundation.pow(theta, Float(2 * i) / Float(headDim)) }
        current = Snapshot(headDim: headDim, positions: 0, cos: [], sin: [])
    }

    /// Tables covering at least positions `0..<n`.
    public func upTo(_ n: Int) -> Snapshot {
        lock.lock(); defer { lock.unlock() }
        if current.positions >= n { return current }
        let count = max(n, current.positions * 2, 256), half = headDim / 2
        var cos = [Float](repeating: 0, count: count * half), sin = cos
        for p in 0..<count {
            for i in 0..<half {
                let a = Float(p) * invFreq[i]
                cos[p * half + i] = Foundation.cos(a); sin[p * half + i] = Foundation.sin(a)
            }
        }
        current = Snapshot(headDim: headDim, positions: count, cos: cos, sin: sin)
        return current
    }
}
