import CKernels
import COpenBLAS

/// Applies matrices that read the same input (q/k/v; gate/up) in one parallel
/// region: the input is prepared once (padded, its group sums taken, and quantized to
/// int8 once for the integer kernels), and the row slices of all the members are the
/// work items of one region. `apply` of a single matrix is the same code with one
/// member, and a member is sliced as it would be alone, so every kernel call, and hence
/// every number, is the same fused or not.
public enum LinearGroup {
    /// `outs[m][t, r] = Σ_c x[t, c] · W_m[r, c]`; all members have `cols` columns.
    public static func apply(_ ms: [LinearWeight], _ x: UnsafePointer<Float>, tokens: Int,
                      outs: [UnsafeMutablePointer<Float>], ldOuts: [Int], context: ComputeContext) {
        let cols = ms[0].cols
        let members: [Member] = ms.map { w in
            if let p = w as? PackedLinear { return .packed(p) }
            if let d = w as? DenseLinear { return .dense(d) }
            return .other(w)
        }
        if members.contains(where: { if case .other = $0 { return true }; return false }) {
            for (i, w) in ms.enumerated() { w.apply(x, tokens: tokens, out: outs[i], ldOut: ldOuts[i], context: context) }
            return
        }
        let decode = tokens <= 3
        // Work items: each member's rows split exactly as a lone `apply` of it splits them
        // (so every sgemm/sgemv call, and hence every number, is the same fused or not),
        // all run in one parallel region. Small problems stay on one thread.
        var items: [(member: Int, rows: Range<Int>)] = []
        for (m, w) in ms.enumerated() {
            let isPacked: Bool = { if case .packed = members[m] { return true }; return false }()
            if decode {
                let parts = isPacked && w.rows * cols < 1 << 16 || !isPacked && tokens * w.rows * cols < 1 << 18 ? 1 : context.threads
                for r in ComputeContext.ranges(w.rows, parts: parts, align: 16) { items.append((m, r)) }
            } else {
                // Prefill: sgemm calls of fixed `tileRows`-row slices whatever the thread
                // count, because OpenBLAS's sums depend on the width it is given (its kernels
                // tile N differently; measured on Zen/Haswell kernels: a 704-column sgemm and
                // its two halves differ in 9 % of the outputs). So every thread count gives
                // the same bits. (Decode's sgemv and our own kernels are per row: any split.)
                let serial = !isPacked && tokens * w.rows * cols < 1 << 18
                let step = serial ? max(w.rows, 1) : PackedLinear.tileRows
                var r0 = 0
                while r0 < w.rows { items.append((m, r0..<min(w.rows, r0 + step))); r0 += step }
            }
        }
        let o = outs.map { SendablePointer($0) }
        if decode {
            // Shared, prepared input: padded to 32 columns, sums per distinct group size,
            // int8 codes + scales per 32 columns when a member decodes with integer kernels.
            let packed = members.compactMap { if case let .packed(p) = $0 { return p }; return nil }
            let cols32 = QuantScheme.paddedCols(cols)
            var groups: [Int] = []  // distinct group sizes (1–2), without a Set or Dictionary per call
            for p in packed where !groups.contains(p.group) { groups.append(p.group) }
            let stride = cols32 / 32 + 1
            func sumOffset(_ g: Int) -> Int { groups.firstIndex(of: g)! * stride }
            let useQ8 = packed.contains { $0.integerDecode && $0.scheme.isQuantized }
            let floats = cols32 + groups.count * stride + cols32 / 32
            context.withScratch(floats + cols32 / 4) { xp in
            let qx = UnsafeMutableRawPointer(xp + floats).assumingMemoryBound(to: Int8.self)
            let sums = xp + cols32, dx = sums + groups.count * stride
            let kernels = context.kernels.table
            for t in 0..<tokens {
                let xt = x + t * cols
                // The int8 activation quantizer cannot represent NaN/Inf (it would round them
                // away); a token with a non-finite input takes the float kernels, which
                // propagate it. The group sums already say so: Σ is finite iff every term is
                // (barring an overflow of finite values, which then also takes the float path).
                var q8 = useQ8
                if !packed.isEmpty {
                    xp.update(from: xt, count: cols)
                    (xp + cols).update(repeating: 0, count: cols32 - cols)
                    for g in groups {
                        let s = sums + sumOffset(g)
                        for j in 0..<((cols + g - 1) / g) {
                            var a: Float = 0
                            for c in (j * g)..<min(cols, (j + 1) * g) { a += xp[c] }
                            s[j] = a
                        }
                    }
                    if q8, let g = groups.first {
                        let s = sums + sumOffset(g)
                        for j in 0..<((cols + g - 1) / g) where !s[j].isFinite { q8 = false; break }
                    }
                    if q8 { kernels.pointee.quantize_q8(xp, Int32(cols32 / 32), qx, dx) }
                }
                let xv = SendablePointer(xp), qv = SendablePointer(qx), xr = SendablePointer(UnsafeMutablePointer(mutating: xt))
                let sp = SendablePointer(sums), dp = SendablePointer(dx)
                let useQ8 = q8
                context.parallelFor(items.count) { i in
                    do {
                        let (m, r) = items[i]
                        let out = o[m].p + t * ldOuts[m]
                        switch members[m] {
                        case let .packed(p):
                            let xsum = UnsafePointer(sp.p + sumOffset(p.group))
                            if useQ8 && p.integerDecode && p.scheme.isQuantized,
                               p.matvecQ8(kernels, qv.p, dx: dp.p, xsum: xsum, rows: r.lowerBound, r.upperBound, out: out) { return }
                            p.matvec(kernels, UnsafePointer(xv.p), xsum: xsum, rows: r.lowerBound, r.upperBound, out: out)
                        case let .dense(d):
                            if tokens == 1 {
                                cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(r.count), Int32(cols), 1, d.data + r.lowerBound * cols, Int32(cols),
                                            xr.p, 1, 0, out + r.lowerBound, 1)
                            } else if t == 0 {  // 2–3 tokens: one sgemm for all of them, as the dense path always did
                                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(tokens), Int32(r.count), Int32(cols),
                                            1, x, Int32(cols), d.data + r.lowerBound * cols, Int32(cols), 0, o[m].p + r.lowerBound, Int32(ldOuts[m]))
                            }
                        case .other: break
                        }
                    }
                }
            }
            }
            return
        }
        // Prefill: packed rows are dequantized a tile at a time into per-slice scratch,
        // then sgemm; dense rows go to sgemm directly.
        let tile = PackedLinear.tileRows
        let anyPacked = members.contains(where: { if case .packed = $0 { return true }; return false })
        let kernels = context.kernels.table
        context.withScratch(anyPacked ? context.threads * tile * cols : 1) { scratch in
        let sc = SendablePointer(scratch), xv = SendablePointer(UnsafeMutablePointer(mutating: x))
        context.parallelFor(items.count) { i, slot in
            do {
                let (m, r) = items[i]
                let out = o[m].p
                switch members[m] {
                case let .packed(p):
                    let buf = sc.p + slot * tile * cols
                    var row = r.lowerBound
                    while row < r.upperBound {
                        let n = min(tile, r.upperBound - row)
                        p.decodeTile(kernels, row, row + n, into: buf)
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(tokens), Int32(n), Int32(cols),
                                    1, xv.p, Int32(cols), buf, Int32(cols), 0, out + row, Int32(ldOuts[m]))
                        row += n
                    }
                case let .dense(d):
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(tokens), Int32(r.count), Int32(cols),
                                1, xv.p, Int32(cols), d.data + r.lowerBound * cols, Int32(cols), 0, out + r.lowerBound, Int32(ldOuts[m]))
                case .other: break
                }
            }
        }
        }
    }

    enum Member: @unchecked Sendable {
        case packed(PackedLinear)
        case dense(DenseLinear)
        case other(LinearWeight)
    }
}
