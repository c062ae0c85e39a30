import CKernels
import Foundation
import LMCore

/// Compressed N:M storage (`+1:2`, `+2:4`, `+4:8` after a value scheme, e.g.
/// `int4s-g32+2:4`): an N:M-sparse `[rows, cols]` matrix stored as its kept values —
/// dense, in column order, a `[rows, cols·n/m]` tensor of the value scheme with that
/// scheme's own sections — followed by a `mask` section, `rows · cols32/8` bytes (bit i of
/// byte j of a row: column 8j + i is kept; padding bits 0). Groups of a quantized value
/// scheme count *kept* values (`-g32`: one scale per 32 stored values, 64 columns of a
/// 2:4 row). Pruned weights are not stored, so they decode to exactly 0 in every value
/// scheme, asymmetric int4 included (formats/lmpk.md, "Compressed N:M storage").
///
/// Only patterns that keep exactly 4 of every 8 columns are compressed, so kept block k
/// (32 values) always holds the kept values of columns `[64k, 64k + 64)` and the kernels
/// gather a fixed 16 of every 32 activations (`lmk_kernels.matvec_nm`).
public struct NMCodec: SchemeCodec, SliceableSchemeCodec, ImportanceWeightedCodec {
    /// The value families that can be stored compressed.
    public static let valueFamilies = ["f32", "f16", "bf16", "int8", "int4", "int4s"]
    public let value: any SchemeCodec
    public let sparsity: QuantScheme.Sparsity
    public init(value: any SchemeCodec, sparsity: QuantScheme.Sparsity) { self.value = value; self.sparsity = sparsity }

    public var family: String { value.family }
    public var isQuantized: Bool { value.isQuantized }
    public var names: [String] { value.names.map { "\($0)+\(sparsity)" } }
    public func groupSize(named: Int?, defaultGroup: Int?, name: String) throws -> Int {
        try value.groupSize(named: named, defaultGroup: defaultGroup, name: name)
    }

    /// Kept values per row (`cols / m · n`; the loader refuses a `cols` that `m` does not divide).
    public func keptCols(_ cols: Int) -> Int { cols / sparsity.m * sparsity.n }
    /// Mask bytes per row.
    public static func maskRowBytes(cols: Int) -> Int { QuantScheme.paddedCols(cols) / 8 }

    public func sections(rows: Int, cols: Int, groupSize: Int) -> [(role: String, bytes: Int)] {
        value.sections(rows: rows, cols: keptCols(cols), groupSize: groupSize) + [("mask", rows * Self.maskRowBytes(cols: cols))]
    }

    /// The kept columns of row `x` (`cols` values): in each aligned run of `m`, the `n` of
    /// largest magnitude (the first among equals). For an N:M-sparse row these include
    /// every nonzero weight, so the stored row decodes to exactly `x` (up to the value
    /// scheme's rounding). Callers check sparsity first (`firstViolation`).
    /// With `prior` (a pruning mask, `true` = kept), its kept columns come first (at most `n`
    /// of a run), topped up to `n` by magnitude: the stored mask is then the pruner's, so every
    /// weight it pruned decodes to exactly 0 even where a kept weight was itself 0.
    func keptMask(_ x: UnsafePointer<Float>, cols: Int, prior: UnsafePointer<Bool>? = nil, into keep: UnsafeMutablePointer<Bool>) {
        let n = sparsity.n, m = sparsity.m
        var c0 = 0
        while c0 < cols {
            let len = min(m, cols - c0)
            var taken = 0
            for i in 0..<len {
                keep[c0 + i] = false
                if let prior, prior[c0 + i], taken < n { keep[c0 + i] = true; taken += 1 }
            }
            for _ in taken..<min(n, len) {
                var best = -1
                for i in 0..<len where !keep[c0 + i] && (best < 0 || abs(x[c0 + i]) > abs(x[c0 + best])) { best = i }
                keep[c0 + best] = true
            }
            c0 += m
        }
    }

    /// The columns a row stores (`keptMask`), for encoders that choose their own codes (GPTQ).
    public func storedColumns(_ x: UnsafePointer<Float>, cols: Int, prior: UnsafePointer<Bool>?, into keep: UnsafeMutablePointer<Bool>) {
        keptMask(x, cols: cols, prior: prior, into: keep)
    }

    /// Writes row `row` of the mask section from `keep` (`cols` flags).
    public func writeMaskRow(_ keep: UnsafePointer<Bool>, row: Int, cols: Int, into mask: UnsafeMutableRawPointer) {
        let mb = Self.maskRowBytes(cols: cols)
        let m = mask.assumingMemoryBound(to: UInt8.self) + row * mb
        m.update(repeating: 0, count: mb)
        for c in 0..<cols where keep[c] { m[c / 8] |= UInt8(1) << UInt8(c % 8) }
    }

    /// The first aligned run of `m` columns of a `[rows, cols]` matrix holding more than `n`
    /// nonzero values, as (row, first column), or nil when the matrix is N:M sparse.
    public func firstViolation(_ v: UnsafePointer<Float>, rows: Int, cols: Int) -> (row: Int, col: Int)? {
        for r in 0..<rows {
            var c0 = 0
            while c0 < cols {
                var nz = 0
                for c in c0..<min(cols, c0 + sparsity.m) where v[r * cols + c] != 0 { nz += 1 }
                if nz > sparsity.n { return (r, c0) }
                c0 += sparsity.m
            }
        }
        return nil
    }

    /// Gathers the kept values (and, optionally, a per-column companion such as importance)
    /// and writes the mask row.
    func compress(_ x: UnsafePointer<Float>, row: Int, cols: Int, companion: UnsafePointer<Float>?, prior: UnsafePointer<Bool>?,
                  kept: UnsafeMutablePointer<Float>, keptCompanion: UnsafeMutablePointer<Float>?, mask: UnsafeMutableRawPointer) {
        let keep = UnsafeMutablePointer<Bool>.allocate(capacity: max(cols, 1))
        defer { keep.deallocate() }
        keptMask(x, cols: cols, prior: prior, into: keep)
        let mb = Self.maskRowBytes(cols: cols)
        let m = mask.assumingMemoryBound(to: UInt8.self) + row * mb
        m.update(repeating: 0, count: mb)
        // At most `keptCols` values (a `cols` that `m` does not divide is refused by every
        // caller; this keeps the writes in bounds even then).
        let k = keptCols(cols)
        var j = 0
        for c in 0..<cols where keep[c] && j < k {
            kept[j] = x[c]
            if let companion, let keptCompanion { keptCompanion[j] = companion[c] }
            m[c / 8] |= UInt8(1) << UInt8(c % 8)
            j += 1
        }
    }

    public func encodeRow(_ x: UnsafePointer<Float>, row: Int, cols: Int, scheme: QuantScheme, clip: ClipMethod, out: [UnsafeMutableRawPointer]) {
        encodeRow(x, row: row, cols: cols, scheme: scheme, clip: clip, keep: nil, out: out)
    }

    /// `encodeRow` with the pruner's mask of this row (`cols` flags, `true` = kept) deciding
    /// the stored mask (see `keptMask`).
    public func encodeRow(_ x: UnsafePointer<Float>, row: Int, cols: Int, scheme: QuantScheme, clip: ClipMethod, keep: UnsafePointer<Bool>?,
                          out: [UnsafeMutableRawPointer]) {
        let k = keptCols(cols)
        let kept = UnsafeMutablePointer<Float>.allocate(capacity: max(k, 1))
        defer { kept.deallocate() }
        compress(x, row: row, cols: cols, companion: nil, prior: keep, kept: kept, keptCompanion: nil, mask: out[out.count - 1])
        value.encodeRow(kept, row: row, cols: k, scheme: scheme.dense, clip: clip, out: Array(out.dropLast()))
    }

    /// With importance: the kept values' importances go with them to the value scheme's
    /// weighted search (float value schemes ignore it).
    public func encodeRow(_ x: UnsafePointer<Float>, row: Int, cols: Int, scheme: QuantScheme, importance w: UnsafePointer<Float>,
                          out: [UnsafeMutableRawPointer]) {
        encodeRow(x, row: row, cols: cols, scheme: scheme, importance: w, keep: nil, out: out)
    }

    /// The importance-weighted `encodeRow` with the pruner's mask (see `keptMask`).
    public func encodeRow(_ x: UnsafePointer<Float>, row: Int, cols: Int, scheme: QuantScheme, importance w: UnsafePointer<Float>,
                          keep: UnsafePointer<Bool>?, out: [UnsafeMutableRawPointer]) {
        guard let weighted = value as? any ImportanceWeightedCodec else {
            return encodeRow(x, row: row, cols: cols, scheme: scheme, clip: .minmax, keep: keep, out: out)
        }
        let k = keptCols(cols)
        let kept = UnsafeMutablePointer<Float>.allocate(capacity: max(2 * k, 1))
        defer { kept.deallocate() }
        compress(x, row: row, cols: cols, companion: w, prior: keep, kept: kept, keptCompanion: kept + k, mask: out[out.count - 1])
        weighted.encodeRow(kept, row: row, cols: k, scheme: scheme.dense, importance: kept + k, out: Array(out.dropLast()))
    }

    /// Reference decoder: the value scheme's row of kept values, scattered to the mask's
    /// columns in order (at most `keptCols` of them), zeros elsewhere.
    public func decodeRow(row r: Int, cols: Int, scheme: QuantScheme, sections s: [UnsafeRawBufferPointer], into out: UnsafeMutablePointer<Float>) {
        let k = keptCols(cols)
        let kept = UnsafeMutablePointer<Float>.allocate(capacity: max(k, 1))
        defer { kept.deallocate() }
        value.decodeRow(row: r, cols: k, scheme: scheme.dense, sections: Array(s.dropLast()), into: kept)
        let mask = s[s.count - 1], mb = Self.maskRowBytes(cols: cols)
        var j = 0
        for c in 0..<cols {
            let bit = (mask[r * mb + c / 8] >> UInt8(c % 8)) & 1 == 1
            if bit && j < k { out[c] = kept[j]; j += 1 } else { out[c] = 0 }
        }
    }

    /// Checks what the kernels rely on: `m` divides `cols`, every aligned run of `m` columns
    /// keeps exactly `n` (so every 8 columns keep 4), and no padding bit is set.
    /// - Throws: `RuntimeError` naming the tensor, the row and the columns.
    public func validate(_ t: PackedTensor, name: String) throws {
        let n = sparsity.n, m = sparsity.m
        guard t.cols % m == 0 else {
            throw RuntimeError("tensor '\(name)': \(t.scheme.name) needs a column count divisible by \(m), got \(t.cols)")
        }
        let mask = t.sections[t.sections.count - 1], mb = Self.maskRowBytes(cols: t.cols)
        guard mask.count == t.rows * mb else { throw RuntimeError("tensor '\(name)': mask section is \(mask.count) bytes, \(t.rows * mb) expected") }
        let full = t.cols / 8
        for r in 0..<t.rows {
            let row = UnsafeRawBufferPointer(rebasing: mask[(r * mb)..<((r + 1) * mb)])
            for j in 0..<mb {
                let byte = row[j]
                let bad: Bool
                if j < full {
                    bad = runsBad(byte, bits: 8)
                } else {
                    let real = max(0, t.cols - 8 * j)
                    bad = (real < 8 && byte >> UInt8(real) != 0) || runsBad(byte & UInt8(truncatingIfNeeded: (1 << real) - 1), bits: real)
                }
                if bad {
                    throw RuntimeError("tensor '\(name)': row \(r), columns \(8 * j)..<\(8 * j + 8): mask byte \(String(byte, radix: 2)) breaks \(n):\(m) (each aligned run of \(m) columns keeps exactly \(n), padding none); the file is corrupt, re-run lmconvert")
                }
            }
        }
    }

    /// True when some aligned run of `m` among the low `bits` bits (or, for m = 8, the whole
    /// byte) does not hold exactly `n` set bits.
    func runsBad(_ byte: UInt8, bits: Int) -> Bool {
        let m = sparsity.m, n = sparsity.n
        var c = 0
        while c < bits {
            let len = min(m, bits - c)
            let run = (UInt32(byte) >> UInt32(c)) & ((1 << UInt32(len)) - 1)
            if run.nonzeroBitCount != n { return true }
            c += m
        }
        return false
    }

    public func makeLinear(_ t: PackedTensor, owner: AnyObject) -> LinearWeight { NMLinear(t, codec: self, owner: owner) }

    /// Slices start on multiples of 32 columns (whole mask bytes of a padded row) and of twice
    /// the value scheme's unit (whose slices are taken in kept-value columns).
    public func columnUnit(groupSize: Int) -> Int {
        guard let v = value as? any SliceableSchemeCodec else { return .max }
        let u = v.columnUnit(groupSize: groupSize)
        return u == .max ? .max : max(32, u * sparsity.m / sparsity.n)
    }
    public func columnLayout(cols: Int, lo: Int, hi: Int, groupSize: Int) -> [SectionColumns] {
        let v = value as! any SliceableSchemeCodec
        let vl = v.columnLayout(cols: keptCols(cols), lo: keptCols(lo), hi: keptCols(hi), groupSize: groupSize)
        return vl + [SectionColumns(stride: Self.maskRowBytes(cols: cols), start: lo / 8, count: Self.maskRowBytes(cols: hi - lo))]
    }
}

/// A codec whose encoder can weigh columns by importance (`--clip mse` with `--calib`).
public protocol ImportanceWeightedCodec: SchemeCodec {
    /// `encodeRow` with per-column importance (`cols` non-negative weights).
    func encodeRow(_ x: UnsafePointer<Float>, row: Int, cols: Int, scheme: QuantScheme, importance w: UnsafePointer<Float>,
                   out: [UnsafeMutableRawPointer])
}

/// A compressed N:M matrix used in place: decode gathers each row's kept activations
/// (`lmk_kernels.matvec_nm` for int8 / int4 values with int8 activations; the value
/// scheme's float kernel on gathered floats otherwise), prefill scatters the decoded kept
/// values into the float tile.
final class NMLinear: PackedLinear, @unchecked Sendable {
    let inner: LinearWeight
    let mask: UnsafePointer<UInt8>
    let keptCols: Int
    let kind: Int32?
    /// LMK_NMF_* for float values (nil for integer ones).
    let floatKind: Int32?
    let q: UnsafeRawPointer, scales: UnsafeRawPointer, mins: UnsafePointer<UInt16>?
    let innerGroup: Int, innerGroups: Int

    init(_ t: PackedTensor, codec: NMCodec, owner: AnyObject) {
        keptCols = codec.keptCols(t.cols)
        let dense = t.scheme.dense
        let vs = Array(t.sections.dropLast())
        inner = dense.codec.makeLinear(PackedTensor(rows: t.rows, cols: keptCols, scheme: dense, sections: vs), owner: owner)
        mask = t.sections[t.sections.count - 1].baseAddress!.assumingMemoryBound(to: UInt8.self)
        q = vs[0].baseAddress!
        scales = vs.count > 1 ? vs[1].baseAddress! : vs[0].baseAddress!
        mins = vs.count > 2 ? vs[2].baseAddress!.assumingMemoryBound(to: UInt16.self) : nil
        switch dense.kind {
        case .int8: kind = Int32(LMK_NM_INT8)
        case .int4s: kind = Int32(LMK_NM_INT4S)
        case .int4: kind = Int32(LMK_NM_INT4)
        default: kind = nil
        }
        switch dense.kind {
        case .f32: floatKind = Int32(LMK_NMF_F32)
        case .f16: floatKind = Int32(LMK_NMF_F16)
        case .bf16: floatKind = Int32(LMK_NMF_BF16)
        default: floatKind = nil
        }
        innerGroup = dense.groupSize
        innerGroups = dense.groups(cols: keptCols)
        super.init(rows: t.rows, cols: t.cols, scheme: t.scheme, owner: owner)
    }

    /// The kept activations of row `r` (`x` padded to cols32) into `out` (kcols32 floats, zero tail).
    @inline(__always) func gather(_ x: UnsafePointer<Float>, row r: Int, into out: UnsafeMutablePointer<Float>) -> Int {
        let mb = cols32 / 8, m = mask + r * mb
        var j = 0
        for b in 0..<mb {
            var byte = m[b]
            while byte != 0 && j < keptCols {
                let i = byte.trailingZeroBitCount
                out[j] = x[8 * b + i]; j += 1
                byte &= byte - 1
            }
        }
        return j
    }

    override func matvec(_ x: UnsafePointer<Float>, xsum: UnsafePointer<Float>, rows r0: Int, _ r1: Int, out: UnsafeMutablePointer<Float>) {
        let k32 = QuantScheme.paddedCols(keptCols)
        let g = innerGroup == 0 ? keptCols : innerGroup
        let buf = UnsafeMutablePointer<Float>.allocate(capacity: k32 + innerGroups + 1)
        defer { buf.deallocate() }
        let sums = buf + k32
        for r in r0..<r1 {
            buf.update(repeating: 0, count: k32)
            _ = gather(x, row: r, into: buf)
            for j in 0..<innerGroups {
                var a: Float = 0
                for c in (j * g)..<min(keptCols, (j + 1) * g) { a += buf[c] }
                sums[j] = a
            }
            if let p = inner as? PackedLinear {
                p.matvec(buf, xsum: sums, rows: r, r + 1, out: out)
            } else if let d = inner as? DenseLinear {
                var s: Float = 0
                let row = d.data + r * keptCols
                for c in 0..<keptCols { s += row[c] * buf[c] }
                out[r] = s
            }
        }
    }

    /// Float values: the level's `matvec_nm_f`; integer values with float activations
    /// (`LMKIT_FLOAT_DECODE=1`): the gathered activations through the value scheme's kernel.
    override func matvec(_ k: UnsafePointer<lmk_kernels>, _ x: UnsafePointer<Float>, xsum: UnsafePointer<Float>, rows r0: Int, _ r1: Int, out: UnsafeMutablePointer<Float>) {
        guard let floatKind else { return matvec(x, xsum: xsum, rows: r0, r1, out: out) }
        k.pointee.matvec_nm_f(floatKind, q, mask, Int32(r0), Int32(r1), Int32(cols), Int32(cols32), x, out)
    }

    override func matvecQ8(_ k: UnsafePointer<lmk_kernels>, _ qx: UnsafePointer<Int8>, dx: UnsafePointer<Float>, xsum: UnsafePointer<Float>, rows r0: Int, _ r1: Int, out: UnsafeMutablePointer<Float>) -> Bool {
        guard let kind else { return false }
        k.pointee.matvec_nm(kind, q, scales, mins, mask, Int32(r0), Int32(r1), Int32(cols32), Int32(innerGroups), Int32(innerGroup), qx, dx, out)
        return true
    }

    override func decodeRows(_ r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>) {
        let kept = UnsafeMutablePointer<Float>.allocate(capacity: max(keptCols, 1))
        defer { kept.deallocate() }
        let mb = cols32 / 8
        for r in r0..<r1 {
            inner.row(r, into: kept)
            let o = out + (r - r0) * cols, m = mask + r * mb
            o.update(repeating: 0, count: cols)
            var j = 0
            for b in 0..<mb {
                var byte = m[b]
                while byte != 0 && j < keptCols {
                    let c = 8 * b + byte.trailingZeroBitCount
                    if c < cols { o[c] = kept[j] }
                    j += 1
                    byte &= byte - 1
                }
            }
        }
    }
}
