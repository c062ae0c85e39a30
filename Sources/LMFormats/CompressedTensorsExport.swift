import Foundation
import LMCore
import LMSchemes

/// `lmconvert export --format compressed-tensors`: a whole-model `.lmpk` as a Hugging Face
/// folder in llm-compressor's `pack-quantized` format (formats/export.md), which vLLM and
/// transformers load. Each linear layer stored with symmetric integer codes keeps them:
/// int4s-gG → 4-bit, int8-gG → 8-bit group-wise, int8 → 8-bit per channel, compressed N:M
/// rows scattered with the zero code at pruned columns; `weight_packed` holds the codes in
/// column order, `weight_scale` the stored scales unchanged (float16; float32 per channel).
/// Everything else (embedding, norms, float linears) is written dense in `dtype`, the linears
/// among them listed in `ignore`. A linear without a twin (asymmetric int4/int3/int2, groups
/// that do not fit) is refused by name unless `denseFallback` writes it dense.
public enum CompressedTensorsExport {
    /// How one linear's codes are described in `quantization_config`.
    struct Quant: Hashable {
        let bits: Int
        /// compressed-tensors group size in columns; nil = per channel.
        let group: Int?
    }

    /// The pack-quantized description of `scheme`'s rows of `cols` columns, or why there is none.
    static func twin(_ scheme: QuantScheme, cols: Int) -> (Quant?, String) {
        switch scheme.kind {
        case .int4s, .int8: break
        case .int4: return (nil, "asymmetric int4 stores a float16 minimum, which is not an integer zero point")
        default: return (nil, "compressed-tensors has no codes like \(scheme.kind)'s")
        }
        let bits = scheme.kind == .int8 ? 8 : 4
        guard cols % 32 == 0 else { return (nil, "its \(cols) columns are not a multiple of 32") }
        if scheme.groupSize == 0 { return (Quant(bits: bits, group: nil), "") }
        // Stored groups count kept values: a compressed group spans G·m/n columns.
        let span = scheme.sparsity.map { scheme.groupSize * $0.m / $0.n } ?? scheme.groupSize
        // compressed-tensors' groups must divide the columns; a smaller divisor of the span keeps each inside one stored group.
        var g = span
        while cols % g != 0 { g /= 2 }
        guard g >= 32 && span % g == 0 else { return (nil, "no group of 32 or more columns divides both \(cols) and the \(span)-column stored groups") }
        return (Quant(bits: bits, group: g), "")
    }

    public struct Summary: Sendable {
        public var tensors: [(name: String, dtype: String, shape: [Int], sha256: String)]
        /// Linear modules written quantized, and dense.
        public var quantized: Int, dense: Int
        public var bytes: Int
        public var seconds: Double
    }

    /// - Throws: `LMPKError` for a rank file, an existing output without `force`, a linear
    ///   without a pack-quantized twin (unless `denseFallback`), a corrupt input.
    public static func export(lmpk path: String, to folder: String, dtype: DType, denseFallback: Bool = false, force: Bool = false,
                              maxShardBytes: Int? = nil, progress: ((Int) -> ProgressReporter)? = nil) throws -> Summary {
        let start = Date()
        let f = try ExportSupport.open(path, output: folder, force: force)
        func fail(_ s: String) -> LMPKError { LMPKError(file: path, reason: s) }
        let model = try LMPKImporter.load(f) // CRCs, masks, the tensor set
        func isLinear(_ name: String) -> Bool {
            name == "lm_head.weight" || (name.hasPrefix("model.layers.") && name.hasSuffix("_proj.weight"))
        }
        // Plan: which linears are quantized, and how.
        var quant: [String: Quant] = [:], dense: [String] = [], missing: [(String, String)] = []
        for p in model.tensors where isLinear(p.name) {
            let t = f[p.name]!
            if !t.scheme.codec.isQuantized { dense.append(p.name); continue }
            let (q, why) = twin(t.scheme, cols: t.cols)
            if let q { quant[p.name] = q } else if denseFallback { dense.append(p.name) } else { missing.append((p.name, "\(t.scheme): \(why)")) }
        }
        if !missing.isEmpty {
            var order: [String] = [], byWhy: [String: [String]] = [:]
            for (n, w) in missing { if byWhy[w] == nil { order.append(w) }; byWhy[w, default: []].append(n) }
            let lines = order.map { w in "'\(byWhy[w]![0])'\(byWhy[w]!.count > 1 ? " and \(byWhy[w]!.count - 1) more" : "") (\(w))" }
            throw fail("\(missing.count) linear layer\(missing.count == 1 ? " has" : "s have") no pack-quantized twin: \(lines.joined(separator: "; ")). Pass --requantize-to \(dtype.rawValue.lowercased()) to write them dense (listed in quantization_config.ignore), or build them as int4s-gG / int8-gG")
        }
        // Tensors, in the model's order: a quantized linear becomes weight_packed, weight_scale, weight_shape.
        var raw: [HFFolderWriter.RawTensor] = []
        for p in model.tensors {
            let t = f[p.name]!
            guard let q = quant[p.name] else {
                raw.append(HFFolderWriter.RawTensor(name: p.name, dtype: dtype, shape: p.shape, release: p.release) {
                    HFFolderWriter.floatBytes(try p.produce(), as: dtype)
                })
                continue
            }
            let module = String(p.name.dropLast(".weight".count)), rows = t.rows, cols = t.cols
            raw.append(HFFolderWriter.RawTensor(name: module + ".weight_packed", dtype: .i32, shape: [rows, cols * q.bits / 32]) {
                try packed(t, q: q, source: path)
            })
            let ngroups = q.group.map { cols / $0 } ?? 1
            raw.append(HFFolderWriter.RawTensor(name: module + ".weight_scale", dtype: q.group == nil ? .f32 : .f16, shape: [rows, ngroups], release: { f.release(t) }) {
                scales(t, q: q)
            })
            raw.append(HFFolderWriter.RawTensor(name: module + ".weight_shape", dtype: .i64, shape: [2]) {
                [Int64(rows), Int64(cols)].withUnsafeBytes { Array($0) }
            })
        }
        let config = try configJSON(f, quant: quant, dense: dense, dtype: dtype)
        let digests = try ExportSupport.writeFolder(folder) { tmp in
            try HFFolderWriter.writeRaw(folder: tmp, config: f.config, configJSON: config, tokenizer: model.tokenizer, tensors: raw,
                                        metadata: ExportSupport.safetensorsMetadata(f), generationConfig: true, maxShardBytes: maxShardBytes,
                                        progress: progress?(raw.count))
        }
        let bytes = ExportSupport.safetensorsBytes(folder)
        return Summary(tensors: zip(raw, digests).map { ($0.name, $0.dtype.rawValue, $0.shape, $1) }, quantized: quant.count, dense: dense.count,
                       bytes: bytes, seconds: Date().timeIntervalSince(start))
    }

    /// `weight_packed`: per row, the codes in column order as compressed-tensors' dense
    /// little-endian packing (`pack_to_int32`): element c at bits `bits·c` of the row's
    /// int32 words, offset to unsigned (`q + 2^(bits−1)`). For int4s that is the stored code
    /// itself (q − 8 is the signed value); for int8, the int8 code + 128. Every row is checked:
    /// the packed codes times the scales give the reference decoding.
    static func packed(_ t: LMPKTensor, q: Quant, source: String) throws -> [UInt8] {
        let rows = t.rows, cols = t.cols, rowBytes = cols * q.bits / 8
        var out = [UInt8](repeating: 0, count: rows * rowBytes)
        var ref = [Float](repeating: 0, count: cols)
        let scaleOf = scaleReader(t)
        for r in 0..<rows {
            let codes = StoredCodes.row(t.scheme, sections: t.sections, row: r, cols: cols)
            ref.withUnsafeMutableBufferPointer { t.scheme.codec.decodeRow(row: r, cols: cols, scheme: t.scheme, sections: t.sections, into: $0.baseAddress!) }
            for c in 0..<cols {
                let signed = q.bits == 4 ? Int(codes[c]) - 8 : Int(Int8(bitPattern: codes[c]))
                let v = Float(signed) * scaleOf(r, StoredCodes.group(ofColumn: c, scheme: t.scheme))
                guard v == ref[c] else {
                    throw LMPKError(file: source, reason: "tensor '\(t.name)' row \(r) column \(c): its packed code decodes to \(v), the .lmpk to \(ref[c]) (an export bug; please report it)")
                }
                if q.bits == 4 { out[r * rowBytes + c / 2] |= codes[c] << UInt8(4 * (c % 2)) } else { out[r * rowBytes + c] = codes[c] ^ 0x80 }
            }
        }
        return out
    }

    /// The stored scale of row r, group g, as Float.
    static func scaleReader(_ t: LMPKTensor) -> (Int, Int) -> Float {
        let s = t.sections[1]
        if t.scheme.groupSize == 0 { return { r, _ in s.loadUnaligned(fromByteOffset: 4 * r, as: Float.self) } }
        let ng = StoredCodes.groupsPerRow(t.scheme, cols: t.cols)
        return { r, g in halfToFloat(s.loadUnaligned(fromByteOffset: 2 * (r * ng + g), as: UInt16.self)) }
    }

    /// `weight_scale`: float16 `[rows, cols / group]`, each compressed-tensors group taking
    /// the bits of the stored group holding it; float32 `[rows, 1]` per channel.
    static func scales(_ t: LMPKTensor, q: Quant) -> [UInt8] {
        let s = t.sections[1]
        guard let g = q.group else { return Array(UnsafeRawBufferPointer(rebasing: s[0..<(4 * t.rows)])) }
        let n = t.cols / g, ng = StoredCodes.groupsPerRow(t.scheme, cols: t.cols)
        var out = [UInt8](repeating: 0, count: 2 * t.rows * n)
        for r in 0..<t.rows {
            for k in 0..<n {
                let src = 2 * (r * ng + StoredCodes.group(ofColumn: k * g, scheme: t.scheme))
                out[2 * (r * n + k)] = s[src]; out[2 * (r * n + k) + 1] = s[src + 1]
            }
        }
        return out
    }

    /// config.json: the model's config with `quantization_config` (one config group per
    /// distinct bits/group size, targets by module name) and, for pruned models, its
    /// `sparsity_config` (weights stored dense, structure 2:4 or unstructured).
    static func configJSON(_ f: LMPKFile, quant: [String: Quant], dense: [String], dtype: DType) throws -> JSON {
        let torch = dtype == .f16 ? "float16" : dtype == .bf16 ? "bfloat16" : "float32"
        guard case var .object(fields) = f.config.toJSON(torchDType: torch) else { throw LMPKError(file: f.path, reason: "config is not an object") }
        let order = f.config.expectedTensors().map(\.0)
        var kinds: [Quant] = []
        for n in order { if let q = quant[n], !kinds.contains(q) { kinds.append(q) } }
        var groups: [(String, JSON)] = []
        for (i, k) in kinds.enumerated() {
            let targets = order.filter { quant[$0] == k }.map { JSON.string(String($0.dropLast(".weight".count))) }
            let weights: JSON = .object([
                ("num_bits", .int(Int64(k.bits))), ("type", .string("int")), ("symmetric", .bool(true)),
                ("group_size", k.group.map { .int(Int64($0)) } ?? .null), ("strategy", .string(k.group == nil ? "channel" : "group")),
                ("block_structure", .null), ("dynamic", .bool(false)), ("actorder", .null), ("observer", .string("minmax")), ("observer_kwargs", .object([])),
            ])
            groups.append(("group_\(i)", .object([("targets", .array(targets)), ("weights", weights), ("input_activations", .null),
                                                  ("output_activations", .null), ("format", .string("pack-quantized"))])))
        }
        var qc: [(String, JSON)] = [
            ("quant_method", .string("compressed-tensors")), ("format", .string("pack-quantized")), ("quantization_status", .string("compressed")),
            ("config_groups", .object(groups)),
            ("ignore", .array(dense.map { .string(String($0.dropLast(".weight".count))) } + (f.config.tieWordEmbeddings ? [.string("lm_head")] : []))),
            ("kv_cache_scheme", .null), ("global_compression_ratio", .null),
        ]
        if let pr = f.header["pruning"] {
            let pruned = pr["tensors"]?.object ?? []
            let pattern = pr["pattern"]?.string
            let total = pruned.reduce(0.0) { acc, e in acc + (e.1.double ?? 0) * Double(f[e.0].map { $0.rows * $0.cols } ?? 0) }
            let weights = pruned.reduce(0) { $0 + (f[$1.0].map { $0.rows * $0.cols } ?? 0) }
            qc.append(("sparsity_config", .object([
                ("format", .string("dense")), ("sparsity_structure", .string(pattern == "2:4" ? "2:4" : "unstructured")),
                ("global_sparsity", .double(weights > 0 ? total / Double(weights) : 0)),
                ("targets", .array(pruned.map { .string(String($0.0.dropLast(".weight".count))) })), ("ignore", .array([])),
                ("registry_requires_subclass", .bool(false)),
            ])))
        }
        fields.append(("quantization_config", .object(qc)))
        return .object(fields)
    }
}
