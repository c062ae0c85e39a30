import LMCore

/// How a group's range is chosen before rounding.
public enum ClipMethod: String, Sendable, CaseIterable {
    /// The group's own min/max (absmax for symmetric schemes).
    case minmax
    /// Shrink the range by α ∈ {1, 0.99, …, 0.80}; keep the α with the least squared
    /// reconstruction error of the group.
    case mse
}

/// Everything about one family of storage schemes, in one place: the name grammar,
/// the sections and their sizes, the reference codec, and the runtime kernels.
///
/// Adding a scheme is one file (a type conforming to this protocol, or to
/// `IntegerSchemeCodec`) plus one entry in `SchemeRegistry.codecs`. Its decode kernels
/// per CPU level are the `lmk_kernels` table entries its `makeLinear` type calls
/// through the context's `KernelSet`.
public protocol SchemeCodec: Sendable {
    /// The name before any `-gG` suffix: `int4`, `int8`, `f16`…
    var family: String { get }
    /// True for integer codes with scales.
    var isQuantized: Bool { get }
    /// Every accepted name, for help texts and errors.
    var names: [String] { get }
    /// The group size of a scheme name: `named` is the `G` of a `-gG` suffix (nil when
    /// absent), `defaultGroup` the caller's `--group-size`. 0 means none (floats) or one
    /// scale per output channel. Leaves room for later suffixes (sparsity).
    /// - Throws: `QuantSchemeError` naming the scheme.
    func groupSize(named: Int?, defaultGroup: Int?, name: String) throws -> Int
    /// Section roles and byte sizes of a `[rows, cols]` tensor (in storage order).
    func sections(rows: Int, cols: Int, groupSize: Int) -> [(role: String, bytes: Int)]
    /// Reference encoder: row `row` of `x` (`cols` values) into its slices of the
    /// sections (`out`, zero-initialized, in `sections` order).
    func encodeRow(_ x: UnsafePointer<Float>, row: Int, cols: Int, scheme: QuantScheme, clip: ClipMethod, out: [UnsafeMutableRawPointer])
    /// Reference decoder of one row (scalar, formula by formula): the twin every kernel is tested against.
    func decodeRow(row: Int, cols: Int, scheme: QuantScheme, sections: [UnsafeRawBufferPointer], into out: UnsafeMutablePointer<Float>)
    /// The runtime weight over stored sections (used in place; `owner` keeps them alive).
    func makeLinear(_ t: PackedTensor, owner: AnyObject) -> LinearWeight
    /// Checks stored bytes the kernels rely on beyond their sizes (compressed N:M: the
    /// mask's pattern), before the tensor is used. Default: nothing to check.
    /// - Throws: `RuntimeError` naming the tensor.
    func validate(_ t: PackedTensor, name: String) throws
}

extension SchemeCodec {
    public func validate(_ t: PackedTensor, name: String) throws {}
}

/// Parameters of one group of an integer scheme, at their storage precision:
/// `value = scale · code + min` (symmetric schemes fold their offset into `min`).
public struct GroupParameters: Sendable, Equatable {
    public var scale: Float
    public var min: Float
    public init(scale: Float, min: Float = 0) { self.scale = scale; self.min = min }
}

/// An integer scheme: codes per element, parameters per group along the input
/// dimension. The reference encoder is split into *choose parameters → choose codes →
/// pack*, so a method like GPTQ can choose its own codes (and parameters) and reuse the
/// packer; `value` is the dequantization formula.
public protocol IntegerSchemeCodec: ImportanceWeightedCodec {
    /// Stored codes lie in this range.
    var codeRange: ClosedRange<Int32> { get }
    /// The code stored in padding columns (up to the 32-column unit; any value is
    /// correct since activations there are zero, but it is fixed for byte-identical files).
    var paddingCode: Int32 { get }
    /// Parameters of one group of `count` values (rounded to their storage precision).
    func chooseParameters(_ x: UnsafePointer<Float>, count: Int, clip: ClipMethod, scheme: QuantScheme) -> GroupParameters
    /// Round-to-nearest codes of a group's values under `p`, clamped to `codeRange`.
    func chooseCodes(_ x: UnsafePointer<Float>, count: Int, parameters p: GroupParameters, into codes: UnsafeMutablePointer<Int32>)
    /// Writes one row: `codes` (`cols` values in `codeRange`) and the per-group parameters.
    func pack(codes: UnsafePointer<Int32>, parameters: [GroupParameters], row: Int, cols: Int, scheme: QuantScheme, out: [UnsafeMutableRawPointer])
    /// `value(code)` under the group's parameters.
    func value(code: Int32, _ p: GroupParameters) -> Float
    /// Symmetric schemes: the code that stands for 0 (`value = scale · (code − zeroCode)`);
    /// nil for schemes whose minimum is free (`value = scale · code + min`).
    var zeroCode: Int32? { get }
    /// `p` rounded to its storage precision (float16 fields, or float32 per-channel
    /// scales), with a symmetric scheme's `min` tied to its scale.
    func stored(_ p: GroupParameters, scheme: QuantScheme) -> GroupParameters

    // The hot loops of calibrated methods, implemented once in the extension below. They
    // are requirements (not only extension methods) so that each codec's witness is the
    // implementation specialized for that codec — `value` and `chooseCodes` called
    // directly — rather than generic code run through an existential, which made the
    // importance-weighted search most of an importance-weighted build's time. Same
    // arithmetic, same bytes.
    /// `encodeRow` with per-column importance: each group's parameters by `weightedParameters`.
    func encodeRow(_ x: UnsafePointer<Float>, row: Int, cols: Int, scheme: QuantScheme, importance w: UnsafePointer<Float>,
                   out: [UnsafeMutableRawPointer])
    /// The importance-weighted range search of one group.
    func weightedParameters(_ x: UnsafePointer<Float>, importance w: UnsafePointer<Float>, count n: Int,
                            scheme: QuantScheme, codes: UnsafeMutablePointer<Int32>) -> GroupParameters
    /// Min/max round trip of one row without packing.
    func roundTripRow(_ x: UnsafePointer<Float>, cols: Int, scheme: QuantScheme, codes: UnsafeMutablePointer<Int32>,
                      into out: UnsafeMutablePointer<Float>)
}

extension IntegerSchemeCodec {
    public var isQuantized: Bool { true }

    /// choose parameters → choose codes → pack, group by group.
    public func encodeRow(_ x: UnsafePointer<Float>, row: Int, cols: Int, scheme: QuantScheme, clip: ClipMethod, out: [UnsafeMutableRawPointer]) {
        encodeGroups(x, row: row, cols: cols, scheme: scheme, out: out) { lo, n, _ in chooseParameters(x + lo, count: n, clip: clip, scheme: scheme) }
    }

    /// `encodeRow` with `importance` (`cols` non-negative weights, one per column):
    /// each group's parameters by `weightedParameters`.
    public func encodeRow(_ x: UnsafePointer<Float>, row: Int, cols: Int, scheme: QuantScheme, importance w: UnsafePointer<Float>,
                          out: [UnsafeMutableRawPointer]) {
        encodeGroups(x, row: row, cols: cols, scheme: scheme, out: out) { lo, n, codes in
            weightedParameters(x + lo, importance: w + lo, count: n, scheme: scheme, codes: codes)
        }
    }

    /// The group loop of both encoders: `parameters(lo, count, scratch)` for each group,
    /// its codes, then the row packed.
    func encodeGroups(_ x: UnsafePointer<Float>, row: Int, cols: Int, scheme: QuantScheme, out: [UnsafeMutableRawPointer],
                      parameters: (Int, Int, UnsafeMutablePointer<Int32>) -> GroupParameters) {
        let G = scheme.groupSize == 0 ? cols : scheme.groupSize
        let ng = scheme.groups(cols: cols)
        var params: [GroupParameters] = []
        params.reserveCapacity(ng)
        let codes = UnsafeMutablePointer<Int32>.allocate(capacity: max(cols, 1))
        defer { codes.deallocate() }
        for g in 0..<ng {
            let lo = g * G, n = Swift.min(G, cols - lo)
            let p = parameters(lo, n, codes + lo)
            params.append(p)
            chooseCodes(x + lo, count: n, parameters: p, into: codes + lo)
        }
        pack(codes: codes, parameters: params, row: row, cols: cols, scheme: scheme, out: out)
    }

    /// Round trip of one row without packing: min/max parameters per group, codes, and
    /// back to `value`s at storage precision (what `encodeRow` then `decodeRow` give).
    public func roundTripRow(_ x: UnsafePointer<Float>, cols: Int, scheme: QuantScheme, codes: UnsafeMutablePointer<Int32>,
                             into out: UnsafeMutablePointer<Float>) {
        let G = scheme.groupSize == 0 ? cols : scheme.groupSize
        for g in 0..<scheme.groups(cols: cols) {
            let lo = g * G, n = Swift.min(G, cols - lo)
            let p = chooseParameters(x + lo, count: n, clip: .minmax, scheme: scheme)
            chooseCodes(x + lo, count: n, parameters: p, into: codes + lo)
            for i in 0..<n { out[lo + i] = value(code: codes[lo + i], p) }
        }
    }

    /// Importance-weighted range search (llama.cpp's imatrix idea): the parameters that
    /// minimize `Σ wᵢ·(value(codeᵢ) − xᵢ)²` among candidates. Each candidate starts from
    /// the group's min/max range shrunk by α ∈ `weightedAlphas` (about the middle for a
    /// free minimum, towards 0 for symmetric schemes); its codes are then refitted once —
    /// the weighted least-squares scale (and minimum) for those codes, rounded to storage
    /// precision —, and both the shrunk and the refitted parameters are scored. With all
    /// weights zero the min/max parameters are kept. `codes` is scratch (`count` values).
    public func weightedParameters(_ x: UnsafePointer<Float>, importance w: UnsafePointer<Float>, count n: Int,
                                   scheme: QuantScheme, codes: UnsafeMutablePointer<Int32>) -> GroupParameters {
        let base = chooseParameters(x, count: n, clip: .minmax, scheme: scheme)
        var wsum: Float = 0
        for i in 0..<n { wsum += w[i] }
        guard base.scale != 0, wsum > 0, wsum.isFinite else { return base }
        func error(_ p: GroupParameters) -> Float {
            chooseCodes(x, count: n, parameters: p, into: codes)
            var e: Float = 0
            for i in 0..<n { let d = value(code: codes[i], p) - x[i]; e += w[i] * d * d }
            return e
        }
        /// Weighted least squares for the codes now in `codes`.
        func refit() -> GroupParameters? {
            if let z = zeroCode {
                var num: Float = 0, den: Float = 0
                for i in 0..<n { let t = Float(codes[i] - z); num += w[i] * x[i] * t; den += w[i] * t * t }
                guard den > 0 else { return nil }
                let s = num / den
                return s == 0 || !s.isFinite ? nil : stored(GroupParameters(scale: s, min: -Float(z) * s), scheme: scheme)
            }
            var a: Float = 0, b: Float = 0, c: Float = 0, d: Float = 0, e: Float = 0
            for i in 0..<n { let q = Float(codes[i]); a += w[i] * q * q; b += w[i] * q; c += w[i]; d += w[i] * q * x[i]; e += w[i] * x[i] }
            let det = a * c - b * b
            guard det > 0 else { return nil }
            let s = (d * c - b * e) / det, m = (a * e - b * d) / det
            return s > 0 && s.isFinite && m.isFinite ? stored(GroupParameters(scale: s, min: m), scheme: scheme) : nil
        }
        var best = base, bestErr = error(base)
        let levels = Float(codeRange.upperBound - codeRange.lowerBound)
        for a in weightedAlphas {
            let p: GroupParameters
            if let z = zeroCode {
                p = stored(GroupParameters(scale: base.scale * a, min: -Float(z) * base.scale * a), scheme: scheme)
            } else {
                let lo = base.min, hi = base.min + base.scale * levels, mid = (lo + hi) / 2
                let l = mid - (mid - lo) * a, h = mid + (hi - mid) * a
                p = stored(GroupParameters(scale: (h - l) / levels, min: l), scheme: scheme)
            }
            guard p.scale != 0 else { continue }
            let e0 = error(p)
            if e0 < bestErr { bestErr = e0; best = p }
            if let r = refit() {
                let e1 = error(r)
                if e1 < bestErr { bestErr = e1; best = r }
            }
        }
        return best
    }
}

/// Shrink factors of the importance-weighted search (1, 0.98, …, 0.50): wider than
/// `clipAlphas` because 2- and 3-bit groups gain from clipping harder.
let weightedAlphas: [Float] = (0...25).map { 1 - Float($0) * 0.02 }

/// Shrink factors of the MSE clip search (1, 0.99, …, 0.80).
let clipAlphas: [Float] = (0...20).map { 1 - Float($0) * 0.01 }

/// Scale of a symmetric group (`codes ∈ [−qmax(−1), qmax]`), rounded to its storage
/// precision before use; with `.mse`, the shrink of the absmax with the least error.
func symmetricScale(_ x: UnsafePointer<Float>, _ n: Int, qmax: Float, clip: ClipMethod, storeHalf: Bool) -> Float {
    var amax: Float = 0
    for i in 0..<n { amax = Swift.max(amax, abs(x[i])) }
    if amax == 0 { return 0 }
    func stored(_ s: Float) -> Float { storeHalf ? halfToFloat(floatToHalf(s)) : s }
    guard clip == .mse else { return stored(amax / qmax) }
    var best = stored(amax / qmax), bestErr = Float.infinity
    for a in clipAlphas {
        let s = stored(amax * a / qmax)
        if s == 0 { continue }
        let inv = 1 / s
        var err: Float = 0
        for i in 0..<n {
            let q = Swift.max(-qmax - (qmax == 7 ? 1 : 0), Swift.min(qmax, (x[i] * inv).rounded(.toNearestOrEven)))
            let d = q * s - x[i]; err += d * d
        }
        if err < bestErr { bestErr = err; best = s }
    }
    return best
}

/// Scale of a symmetric 4-bit group as ggml's Q4_0 takes it: `m`, the value of largest
/// magnitude (the first if tied), maps to code −8, so `s = m / −8` (negative when `m > 0`)
/// and the codes `q − 8 ∈ [−8, 7]` cover the whole range; the opposite side reaches
/// `7/8 · |m|`. Rounded to float16 before use; with `.mse`, `m` shrunk by α ∈ clipAlphas,
/// keeping the least squared error.
/// The group of a group-wise family (int4, int4s, int3, int2): the named one, else
/// `defaultGroup`, else 32; only `QuantScheme.supportedGroupSizes`.
func groupWiseSize(named: Int?, defaultGroup: Int?, name: String) throws -> Int {
    let g = named ?? defaultGroup ?? 32
    guard QuantScheme.supportedGroupSizes.contains(g) else {
        throw QuantSchemeError("scheme '\(name)': group size \(g) is not supported (32, 64, 128)")
    }
    return g
}

func signedExtremeScale(_ x: UnsafePointer<Float>, _ n: Int, clip: ClipMethod) -> Float {
    var m: Float = 0
    for i in 0..<n where abs(x[i]) > abs(m) { m = x[i] }
    if m == 0 { return 0 }
    func stored(_ s: Float) -> Float { halfToFloat(floatToHalf(s)) }
    guard clip == .mse else { return stored(m / -8) }
    var best = stored(m / -8), bestErr = Float.infinity
    for a in clipAlphas {
        let s = stored(m * a / -8)
        if s == 0 { continue }
        let inv = 1 / s
        var err: Float = 0
        for i in 0..<n {
            let q = Swift.max(-8, Swift.min(7, (x[i] * inv).rounded(.toNearestOrEven)))
            let d = q * s - x[i]; err += d * d
        }
        if err < bestErr { bestErr = err; best = s }
    }
    return best
}

/// (scale, min) of an asymmetric group with codes 0…`levels`, both float16-rounded
/// before use; with `.mse`, the shrink of [min, max] about its middle with the least error.
func asymmetricRange(_ x: UnsafePointer<Float>, _ n: Int, levels: Float, clip: ClipMethod) -> (Float, Float) {
    var lo = Float.infinity, hi = -Float.infinity
    for i in 0..<n { lo = Swift.min(lo, x[i]); hi = Swift.max(hi, x[i]) }
    func params(_ l: Float, _ h: Float) -> (Float, Float) {
        let m = halfToFloat(floatToHalf(l))
        let s = halfToFloat(floatToHalf(Swift.max(h - m, 0) / levels))
        return (s, m)
    }
    guard clip == .mse, hi > lo else { return params(lo, hi) }
    var best = params(lo, hi), bestErr = Float.infinity
    let mid = (lo + hi) / 2
    for a in clipAlphas {
        let (s, m) = params(mid - (mid - lo) * a, mid + (hi - mid) * a)
        if s == 0 { continue }
        let inv = 1 / s
        var err: Float = 0
        for i in 0..<n {
            let q = Swift.max(0, Swift.min(levels, ((x[i] - m) * inv).rounded(.toNearestOrEven)))
            let d = q * s + m - x[i]; err += d * d
        }
        if err < bestErr { bestErr = err; best = (s, m) }
    }
    return best
}

/// Little-endian float16 at element `i` of a section.
@inline(__always) func f16At(_ b: UnsafeRawBufferPointer, _ i: Int) -> Float {
    halfToFloat(UInt16(littleEndian: b.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
}

/// The scheme families this build knows. Adding one: its file, and an entry here.
public enum SchemeRegistry {
    public static let codecs: [any SchemeCodec] = [
        Float32Codec(), HalfCodec(bf16: false), HalfCodec(bf16: true), Int8Codec(), Int4Codec(symmetric: false), Int4Codec(symmetric: true),
        LowBitCodec(bits: 3), LowBitCodec(bits: 2),
    ]
    static let byFamily: [String: any SchemeCodec] = Dictionary(uniqueKeysWithValues: codecs.map { ($0.family, $0) })

    /// The codec of `family`, or nil.
    public static func codec(_ family: String) -> (any SchemeCodec)? { byFamily[family] }
}

/// Where columns `lo..<hi` of every row sit inside one section: each row of the section
/// is `stride` bytes, and the range is the `count` bytes from `start`.
public struct SectionColumns: Sendable, Equatable {
    public let stride: Int, start: Int, count: Int
    public init(stride: Int, start: Int, count: Int) { self.stride = stride; self.start = start; self.count = count }
}

/// Tensor-parallel slicing of stored tensors (`lmconvert shard`): copies whole groups
/// with their scales, never dequantizes. Each family states the column boundary its
/// layout allows and where a column range lies in each section; row slices are generic
/// (every section is `[rows][…]`).
public protocol SliceableSchemeCodec: SchemeCodec {
    /// Column slices must start and end on multiples of this (or end at `cols`): 1 for
    /// floats, the 32-column storage unit for per-channel int8, the group size (≥ 32) otherwise.
    func columnUnit(groupSize: Int) -> Int
    /// The bytes of columns `lo..<hi` within each row of each section (`lo`, `hi` on the unit).
    func columnLayout(cols: Int, lo: Int, hi: Int, groupSize: Int) -> [SectionColumns]
}

/// A slice that does not fall on the scheme's boundaries.
public struct SliceError: Error, CustomStringConvertible {
    public let description: String
    public init(_ s: String) { description = s }
}

extension QuantScheme {
    /// Column boundary a slice of this scheme must respect (see `SliceableSchemeCodec`).
    public var columnUnit: Int { (codec as? any SliceableSchemeCodec)?.columnUnit(groupSize: groupSize) ?? .max }

    /// True when columns `lo..<hi` of a `cols`-wide tensor can be sliced without re-encoding.
    public func canSliceColumns(cols: Int, lo: Int, hi: Int) -> Bool {
        let u = columnUnit
        guard u != .max, 0 <= lo, lo < hi, hi <= cols else { return false }
        return lo % u == 0 && (hi == cols || hi % u == 0)
    }

    /// Rows `lo..<hi` of a `[rows, cols]` tensor's sections, copied (every section is row-major).
    public func sliceRows(_ sections: [UnsafeRawBufferPointer], rows: Int, cols: Int, lo: Int, hi: Int) throws -> [[UInt8]] {
        guard 0 <= lo, lo < hi, hi <= rows else { throw SliceError("rows \(lo)..<\(hi) are outside 0..<\(rows)") }
        let expected = self.sections(rows: rows, cols: cols)
        guard sections.count == expected.count else { throw SliceError("\(name) has \(expected.count) sections, got \(sections.count)") }
        return try zip(sections, expected).map { s, e in
            guard s.count == e.bytes, e.bytes % rows == 0 else { throw SliceError("\(name) section '\(e.role)': \(s.count) bytes, \(e.bytes) expected for \(rows) rows") }
            let per = e.bytes / rows
            return Array(UnsafeRawBufferPointer(rebasing: s[(lo * per)..<(hi * per)]))
        }
    }

    /// Columns `lo..<hi` of every row of a `[rows, cols]` tensor's sections, copied: the
    /// sections of a `[rows, hi − lo]` tensor of the same scheme holding exactly those values.
    /// - Throws: `SliceError` when the range does not fall on the scheme's column unit.
    public func sliceColumns(_ sections: [UnsafeRawBufferPointer], rows: Int, cols: Int, lo: Int, hi: Int) throws -> [[UInt8]] {
        guard let codec = codec as? any SliceableSchemeCodec else { throw SliceError("scheme \(name) cannot be sliced by columns") }
        guard canSliceColumns(cols: cols, lo: lo, hi: hi) else {
            throw SliceError("columns \(lo)..<\(hi) of \(cols) do not fall on \(name)'s \(columnUnit)-column boundaries")
        }
        let expected = self.sections(rows: rows, cols: cols)
        let layout = codec.columnLayout(cols: cols, lo: lo, hi: hi, groupSize: groupSize)
        guard sections.count == expected.count, layout.count == expected.count else { throw SliceError("\(name): section count mismatch") }
        return try zip(sections, zip(expected, layout)).map { s, el in
            let (e, l) = el
            guard s.count == e.bytes, l.stride * rows == e.bytes, l.start + l.count <= l.stride else {
                throw SliceError("\(name) section '\(e.role)': \(s.count) bytes do not match \(rows) rows of \(l.stride)")
            }
            var out = [UInt8](repeating: 0, count: rows * l.count)
            out.withUnsafeMutableBytes { o in
                for r in 0..<rows { (o.baseAddress! + r * l.count).copyMemory(from: s.baseAddress! + r * l.stride + l.start, byteCount: l.count) }
            }
            return out
        }
    }
}

extension PackedTensor {
    /// Rows `lo..<hi` as a view of the same memory (every section is row-major).
    public func rowSlice(_ lo: Int, _ hi: Int) -> PackedTensor {
        let secs = sections.map { s -> UnsafeRawBufferPointer in
            let per = s.count / rows
            return UnsafeRawBufferPointer(rebasing: s[(lo * per)..<(hi * per)])
        }
        return PackedTensor(rows: hi - lo, cols: cols, scheme: scheme, sections: secs)
    }
}
