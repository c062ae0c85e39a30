import Foundation
import LMCore
import LMSchemes

/// `lmconvert export --format gguf`: a whole-model `.lmpk` as a GGUF v3 file llama.cpp loads
/// (formats/export.md). Every stored scheme that has an exact ggml twin is written with its
/// codes, scales and minimums unchanged — int4s-gG → Q4_0, int4-gG → Q4_1, int8-gG → Q8_0
/// (G a multiple of 32: each 32-column block takes its group's parameters), f32/f16/bf16 as
/// themselves, compressed N:M tensors scattered into blocks with the zero code at pruned
/// columns — and each row is checked, as it is written, to dequantize (ggml's block
/// definition, `GGUFDequant`) to the `.lmpk`'s reference decoding. A tensor without a twin
/// is refused by name unless `requantizeTo` names the type to convert it to.
///
/// One tensor in memory at a time (its GGUF bytes and one row of floats); the file is
/// written beside the output and renamed into place when complete.
public enum GGUFExport {
    /// `--requantize-to`: what a tensor without an exact ggml twin is converted to.
    public enum Target: String, Sendable, CaseIterable {
        case f32, f16, bf16, q8_0, q4_0, q4_1
        public var type: GGMLType {
            switch self { case .f32: return .f32; case .f16: return .f16; case .bf16: return .bf16; case .q8_0: return .q8_0; case .q4_0: return .q4_0; case .q4_1: return .q4_1 }
        }
        /// The `.lmpk` scheme whose round-to-nearest codes a quantized target takes (mapped exactly).
        public var scheme: QuantScheme? {
            switch self {
            case .q8_0: return QuantScheme(kind: .int8, groupSize: 32)
            case .q4_0: return QuantScheme(kind: .int4s, groupSize: 32)
            case .q4_1: return QuantScheme(kind: .int4, groupSize: 32)
            default: return nil
            }
        }
    }

    /// One tensor of the export: where it comes from and what it becomes.
    public struct TensorPlan: Sendable {
        public let hfName: String
        public let ggufName: String
        public let scheme: QuantScheme
        public let type: GGMLType
        /// false when the tensor had no exact twin and was converted (`requantizeTo`).
        public let exact: Bool
        /// Rotary row permutation re-applied (llama: q and k), with this many heads.
        public let permuteHeads: Int?
    }

    public struct Summary: Sendable {
        public var tensors: [(plan: TensorPlan, sha256: String)]
        public var bytes: Int
        public var seconds: Double
    }

    /// The ggml type that stores `scheme`'s values of a `cols`-column row exactly, or why none does.
    public static func exactType(_ scheme: QuantScheme, cols: Int, vector: Bool) -> (type: GGMLType?, reason: String) {
        switch scheme.kind {
        case .f32: return (.f32, "")
        case .f16: return (.f16, "")
        case .bf16: return (.bf16, "")
        default: break
        }
        if vector { return (nil, "a quantized vector has no ggml twin") }
        if scheme.groupSize == 0 {
            return (nil, "one float32 scale per row, where Q8_0 has a float16 scale per 32 columns")
        }
        guard cols % 32 == 0 else { return (nil, "its \(cols) columns are not a multiple of the 32-column ggml block") }
        guard scheme.groupSize % 32 == 0 else { return (nil, "groups of \(scheme.groupSize) do not cover whole 32-column blocks") }
        switch scheme.kind {
        case .int4s: return (.q4_0, "")
        case .int8: return (.q8_0, "")
        case .int4:
            if scheme.sparsity != nil { return (nil, "pruned weights of \(scheme) would not decode to 0 as Q4_1 (x = d·q + m)") }
            return (.q4_1, "")
        default: return (nil, "ggml has no type with the codes of \(scheme.kind)")
        }
    }

    /// HF tensor names → GGUF names (llama.cpp's `LLM_TENSOR_NAMES`).
    public static func ggufName(_ hf: String) -> String? {
        if hf == "model.embed_tokens.weight" { return "token_embd.weight" }
        if hf == "model.norm.weight" { return "output_norm.weight" }
        if hf == "lm_head.weight" { return "output.weight" }
        let p = hf.split(separator: ".", maxSplits: 3).map(String.init)
        guard p.count == 4, p[0] == "model", p[1] == "layers", let l = Int(p[2]),
              let src = GGUFImporter.layerMap.first(where: { $0.1 == p[3] })?.0 else { return nil }
        return "blk.\(l).\(src)"
    }

    /// Plans every tensor: its GGUF name, type and permutation.
    /// - Throws: `LMPKError` naming the first tensor without an exact twin (and how many
    ///   more there are) when `requantizeTo` is nil, or one a quantized target cannot hold.
    public static func plan(_ f: LMPKFile, requantizeTo: Target?) throws -> [TensorPlan] {
        func fail(_ s: String) -> LMPKError { LMPKError(file: f.path, reason: s) }
        let c = f.config
        let llama = c.architecture != "Qwen2ForCausalLM"
        if llama && c.attentionBias {
            throw fail("a llama-architecture model with attention biases: llama.cpp's llama graph would also bias o_proj as Hugging Face's attention_bias does, which lmkit does not; not exported")
        }
        let pruned = Set(f.header["pruning"]?["tensors"]?.object?.map { $0.0 } ?? [])
        var plans: [TensorPlan] = [], missing: [(String, String)] = []
        for (name, _) in c.expectedTensors() {
            guard let t = f[name] else { throw fail("tensor '\(name)' is missing") }
            guard let g = ggufName(name) else { throw fail("tensor '\(name)' has no GGUF name") }
            let vector = t.shape.count != 2
            let ph: Int? = !llama || vector ? nil : name.hasSuffix("q_proj.weight") ? c.numHeads : name.hasSuffix("k_proj.weight") ? c.numKVHeads : nil
            let (exact, why) = exactType(t.scheme, cols: t.cols, vector: vector)
            if let exact {
                plans.append(TensorPlan(hfName: name, ggufName: g, scheme: t.scheme, type: exact, exact: true, permuteHeads: ph))
                continue
            }
            guard let target = requantizeTo else { missing.append((name, "\(t.scheme): \(why)")); continue }
            if target.scheme != nil {
                guard t.cols % 32 == 0 && !vector else {
                    throw fail("tensor '\(name)' (\(t.scheme), \(t.cols) columns): --requantize-to \(target.rawValue) needs a multiple of 32 columns; use --requantize-to f16 or f32 (exact)")
                }
                if target == .q4_1 && (pruned.contains(name) || t.scheme.sparsity != nil) {
                    throw fail("tensor '\(name)' is pruned: as Q4_1 (x = d·q + m) its pruned weights would not decode to 0; use --requantize-to q4_0, q8_0 or a float type")
                }
            }
            plans.append(TensorPlan(hfName: name, ggufName: g, scheme: t.scheme, type: target.type, exact: false, permuteHeads: ph))
        }
        if !missing.isEmpty {
            // One line per distinct reason: its first tensor and how many share it.
            var order: [String] = [], byWhy: [String: [String]] = [:]
            for (name, why) in missing { if byWhy[why] == nil { order.append(why) }; byWhy[why, default: []].append(name) }
            let lines = order.map { w -> String in
                let names = byWhy[w]!
                return "'\(names[0])'\(names.count > 1 ? " and \(names.count - 1) more" : "") (\(w))"
            }
            throw fail("\(missing.count) tensor\(missing.count == 1 ? " has" : "s have") no exact ggml type: \(lines.joined(separator: "; ")). Pass --requantize-to f32 (exact values), f16, bf16, q8_0, q4_0 or q4_1 to convert such tensors, or build the .lmpk with int4s-gG / int4-gG / int8-gG (e.g. --override embed_tokens=int8-g32) for an exact export")
        }
        return plans
    }

    /// The GGUF row `gr` of a rotary-permuted projection comes from HF row `hfRow(gr)`:
    /// llama.cpp stores each head's rotary pairs interleaved (Meta's layout), HF rotate-half.
    static func hfRow(_ gr: Int, heads: Int, rows: Int) -> Int {
        let hd = rows / heads, h = gr / hd, w = gr % hd
        return h * hd + (w % 2) * (hd / 2) + w / 2
    }

    /// Writes `f` as a GGUF file at `path` (see the type's documentation).
    /// - Throws: `LMPKError` for a rank file (naming its manifest's source), an existing output
    ///   without `force`, a tensor without an exact twin (unless `requantizeTo`), an unsupported
    ///   tokenizer, or a row whose GGUF bytes would not decode to the reference values.
    public static func export(lmpk path: String, to out: String, requantizeTo: Target? = nil, force: Bool = false,
                              progress: ((Int) -> ProgressReporter)? = nil) throws -> Summary {
        let start = Date()
        let f = try ExportSupport.open(path, output: out, force: force)
        if let bad = f.firstCorruptTensor() { throw LMPKError(file: path, reason: "tensor '\(bad)' fails its CRC-32 check: the file is corrupt, re-run lmconvert") }
        for t in f.tensors { try t.scheme.codec.validate(t.packed, name: t.name) }
        let plans = try plan(f, requantizeTo: requantizeTo)
        var meta = try metadata(f, plans: plans)
        meta += try GGUFTokenizer.metadata(f.tokenizerJSON(), config: f.config, source: path)

        let specs = plans.map { p -> GGUFTensorSpec in
            let t = f[p.hfName]!
            return GGUFTensorSpec(name: p.ggufName, dims: t.shape.count == 2 ? [t.cols, t.rows] : [t.cols], type: p.type)
        }
        let w = try GGUFWriter(path: out, metadata: meta, tensors: specs)
        var done: [(plan: TensorPlan, sha256: String)] = []
        let bar = progress?(plans.count)
        do {
            for (i, p) in plans.enumerated() {
                let t = f[p.hfName]!
                var bytes = [UInt8](repeating: 0, count: specs[i].byteCount)
                try bytes.withUnsafeMutableBytes { try tensorBytes(t, plan: p, source: path, into: $0) }
                try bytes.withUnsafeBytes { try w.write($0) }
                done.append((p, SHA256.hex(bytes)))
                f.release(t)
                bar?.update(i + 1)
            }
            try w.commit()
        } catch {
            w.abort()
            throw error
        }
        let size = (try? FileManager.default.attributesOfItem(atPath: out)[.size] as? Int) ?? 0
        return Summary(tensors: done, bytes: size, seconds: Date().timeIntervalSince(start))
    }

    /// Architecture, provenance and file-type metadata (llama.cpp's `LLM_KV_*` keys).
    static func metadata(_ f: LMPKFile, plans: [TensorPlan]) throws -> [(String, GGUFMetaValue)] {
        let c = f.config
        let arch = c.architecture == "Qwen2ForCausalLM" ? "qwen2" : "llama"
        // general.file_type: the type holding most of the layer matrices' weights.
        var weight: [GGMLType: Int] = [:]
        for p in plans where p.hfName.hasPrefix("model.layers.") { if let t = f[p.hfName], t.shape.count == 2 { weight[p.type, default: 0] += t.rows * t.cols } }
        let main = weight.max { $0.value != $1.value ? $0.value < $1.value : $0.key.rawValue > $1.key.rawValue }?.key ?? .f32
        let fileType: UInt32 = [.f32: 0, .f16: 1, .q4_0: 2, .q4_1: 3, .q8_0: 7, .bf16: 32][main] ?? 0
        let name = ((f.path as NSString).lastPathComponent as NSString).deletingPathExtension
        var m: [(String, GGUFMetaValue)] = [
            ("general.architecture", .string(arch)), ("general.name", .string(name)),
            ("general.file_type", .u32(fileType)), ("general.quantization_version", .u32(2)),
            ("\(arch).context_length", .u32(UInt32(c.maxPositionEmbeddings))), ("\(arch).embedding_length", .u32(UInt32(c.hiddenSize))),
            ("\(arch).block_count", .u32(UInt32(c.numLayers))), ("\(arch).feed_forward_length", .u32(UInt32(c.intermediateSize))),
            ("\(arch).attention.head_count", .u32(UInt32(c.numHeads))), ("\(arch).attention.head_count_kv", .u32(UInt32(c.numKVHeads))),
            ("\(arch).attention.key_length", .u32(UInt32(c.headDim))), ("\(arch).attention.value_length", .u32(UInt32(c.headDim))),
            ("\(arch).rope.dimension_count", .u32(UInt32(c.headDim))), ("\(arch).rope.freq_base", .f32(c.ropeTheta)),
            ("\(arch).attention.layer_norm_rms_epsilon", .f32(c.rmsNormEps)), ("\(arch).vocab_size", .u32(UInt32(c.vocabSize))),
            ("lmkit.source", .string((f.path as NSString).lastPathComponent)),
        ]
        if let p = f.header["provenance"] { m.append(("lmkit.provenance", .string(p.serialized()))) }
        if let p = f.header["pruning"] { m.append(("lmkit.pruning", .string(p.serialized()))) }
        let converted = plans.filter { !$0.exact }
        if !converted.isEmpty {
            m.append(("lmkit.requantized", .strings(converted.map { "\($0.hfName): \($0.scheme) → \($0.type.name)" })))
        }
        return m
    }

    /// Fills `dst` with tensor `t`'s GGUF bytes, row by row (permuted for q/k), checking
    /// every row of an exact mapping against the reference decoding.
    static func tensorBytes(_ t: LMPKTensor, plan p: TensorPlan, source: String, into dst: UnsafeMutableRawBufferPointer) throws {
        let rows = t.rows, cols = t.cols
        let (be, bb) = p.type.block
        let rowBytes = cols / be * bb
        var ref = [Float](repeating: 0, count: cols), back = [Float](repeating: 0, count: cols)
        // A quantized target's codes: the decoded row encoded by the matching .lmpk scheme, one row at a time.
        let rq = p.exact ? nil : Target.allCases.first { $0.type == p.type }?.scheme
        let rqSections: [UnsafeMutableRawBufferPointer] = rq.map { s in
            s.codec.sections(rows: 1, cols: cols, groupSize: s.groupSize).map { UnsafeMutableRawBufferPointer.allocate(byteCount: $0.bytes, alignment: 64) }
        } ?? []
        defer { for b in rqSections { b.deallocate() } }
        for gr in 0..<rows {
            let r = p.permuteHeads.map { hfRow(gr, heads: $0, rows: rows) } ?? gr
            let d = dst.baseAddress! + gr * rowBytes
            ref.withUnsafeMutableBufferPointer { t.scheme.codec.decodeRow(row: r, cols: cols, scheme: t.scheme, sections: t.sections, into: $0.baseAddress!) }
            if p.exact {
                exactRow(scheme: t.scheme, sections: t.sections, row: r, cols: cols, type: p.type, decoded: ref, into: d)
                back.withUnsafeMutableBufferPointer { GGUFDequant.dequantize(type: p.type, src: UnsafeRawBufferPointer(start: d, count: rowBytes), dst: $0) }
                if let c = (0..<cols).first(where: { back[$0] != ref[$0] }) {
                    throw LMPKError(file: source, reason: "tensor '\(p.hfName)' row \(r) column \(c): its \(p.type.name) bytes decode to \(back[c]), the .lmpk to \(ref[c]) (an export bug; please report it)")
                }
            } else if let rq {
                for b in rqSections { b.initializeMemory(as: UInt8.self, repeating: 0) }
                ref.withUnsafeBufferPointer { rq.codec.encodeRow($0.baseAddress!, row: 0, cols: cols, scheme: rq, clip: .minmax, out: rqSections.map { $0.baseAddress! }) }
                exactRow(scheme: rq, sections: rqSections.map { UnsafeRawBufferPointer($0) }, row: 0, cols: cols, type: p.type, decoded: ref, into: d)
            } else {
                writeFloats(ref, type: p.type, into: d)
            }
        }
    }

    static func writeFloats(_ v: [Float], type: GGMLType, into d: UnsafeMutableRawPointer) {
        for (i, x) in v.enumerated() {
            switch type {
            case .f32: d.storeBytes(of: x.bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self)
            case .f16: d.storeBytes(of: floatToHalf(x).littleEndian, toByteOffset: 2 * i, as: UInt16.self)
            default: d.storeBytes(of: floatToBF16(x).littleEndian, toByteOffset: 2 * i, as: UInt16.self)
            }
        }
    }

    /// One row of an exactly mapped scheme as ggml blocks. Float schemes are their values
    /// (`decoded`, exact); block types copy the codes and the group's float16 parameters,
    /// a compressed row's kept codes scattered to their columns (pruned: the zero code).
    static func exactRow(scheme: QuantScheme, sections s: [UnsafeRawBufferPointer], row r: Int, cols: Int, type: GGMLType, decoded: [Float],
                         into d: UnsafeMutableRawPointer) {
        if type == .f32 || type == .f16 || type == .bf16 {
            if scheme.sparsity == nil {
                let es = type == .f32 ? 4 : 2
                d.copyMemory(from: s[0].baseAddress! + r * cols * es, byteCount: cols * es)
            } else {
                writeFloats(decoded, type: type, into: d)
            }
            return
        }
        let codes = StoredCodes.row(scheme, sections: s, row: r, cols: cols)
        let nBlocks = cols / 32, ng = StoredCodes.groupsPerRow(scheme, cols: cols)
        // Each 32-column block lies inside one stored group (exactType checked G).
        let groupOf = (0..<nBlocks).map { StoredCodes.group(ofColumn: 32 * $0, scheme: scheme) }
        let (_, bb) = type.block
        for b in 0..<nBlocks {
            let o = d + b * bb, g = r * ng + groupOf[b]
            o.copyMemory(from: s[1].baseAddress! + 2 * g, byteCount: 2)
            var q = o + 2
            if type == .q4_1 { (o + 2).copyMemory(from: s[2].baseAddress! + 2 * g, byteCount: 2); q = o + 4 }
            if type == .q8_0 {
                for i in 0..<32 { q.storeBytes(of: codes[32 * b + i], toByteOffset: i, as: UInt8.self) }
            } else {
                for i in 0..<16 { q.storeBytes(of: codes[32 * b + i] | (codes[32 * b + 16 + i] << 4), toByteOffset: i, as: UInt8.self) }
            }
        }
    }
}

/// A Hugging Face `tokenizer.json` as llama.cpp's `tokenizer.ggml.*` metadata, for the two
/// families lmkit's tokenizer runs: byte-level BPE (`gpt2`; pre-tokenizer `smollm` when
/// digits are split individually, else `gpt2`) and sentencepiece-style BPE with byte fallback
/// (`llama`). Scores for `llama` come from the merge ranks (the merged piece of the k-th merge
/// scores −k, as sentencepiece's BPE orders its pieces), which is how llama.cpp's SPM
/// tokenizer chooses merges.
public enum GGUFTokenizer {
    /// - Throws: `LMPKError` for a tokenizer llama.cpp could not run the same way (an unknown
    ///   model or pre-tokenizer type, a normalizer, a vocabulary with gaps or larger than the model's).
    public static func metadata(_ j: JSON, config: ModelConfig, source: String) throws -> [(String, GGUFMetaValue)] {
        func fail(_ s: String) -> LMPKError { LMPKError(file: source, reason: "tokenizer: \(s); not exported") }
        guard let model = j["model"], model["type"]?.string ?? "BPE" == "BPE" else {
            throw fail("model type '\(j["model"]?["type"]?.string ?? "?")' is not supported for GGUF (BPE is)")
        }
        var pres: [JSON] = []
        if let p = j["pre_tokenizer"], !p.isNull { pres = p["type"]?.string == "Sequence" ? (p["pretokenizers"]?.array ?? []) : [p] }
        let types = pres.map { $0["type"]?.string ?? "?" }
        let normSteps: [JSON] = { guard let n = j["normalizer"], !n.isNull else { return [] }; return n["type"]?.string == "Sequence" ? (n["normalizers"]?.array ?? []) : [n] }()
        let byteLevel: Bool, digits: Bool
        if types == ["ByteLevel"] || types == ["Digits", "ByteLevel"] {
            byteLevel = true; digits = types.count == 2
            if digits && pres[0]["individual_digits"]?.bool != true { throw fail("a Digits pre-tokenizer without individual_digits has no llama.cpp twin") }
            if pres.last!["add_prefix_space"]?.bool == true { throw fail("ByteLevel with add_prefix_space has no llama.cpp pre-tokenizer") }
            if pres.last!["use_regex"]?.bool == false { throw fail("ByteLevel without its regex has no llama.cpp pre-tokenizer") }
            if !normSteps.isEmpty { throw fail("a normalizer with a byte-level BPE has no llama.cpp twin") }
        } else if types == ["Metaspace"] || (types.isEmpty && normSteps.map({ $0["type"]?.string ?? "" }) == ["Prepend", "Replace"]) {
            byteLevel = false; digits = false
            if let m = pres.first {
                if m["prepend_scheme"]?.string ?? "always" != "always" { throw fail("Metaspace prepend_scheme '\(m["prepend_scheme"]!.string!)' is not supported (always is)") }
                if m["split"]?.bool == true { throw fail("Metaspace with split=true has no llama.cpp SPM twin") }
            }
            if !types.isEmpty && !normSteps.isEmpty { throw fail("a normalizer with a Metaspace pre-tokenizer has no llama.cpp twin") }
            if model["byte_fallback"]?.bool != true { throw fail("a sentencepiece-style BPE without byte fallback is not supported") }
        } else {
            throw fail("pre-tokenizer [\(types.joined(separator: ", "))] is not one llama.cpp runs the same way (ByteLevel, Digits + ByteLevel, Metaspace are)")
        }
        // Tokens by id: the vocabulary and the added tokens, without gaps.
        var byId: [Int: String] = [:]
        for (t, v) in model["vocab"]?.object ?? [] { if let id = v.int { byId[id] = t } }
        var added: [Int: Bool] = [:]
        for a in j["added_tokens"]?.array ?? [] {
            guard let id = a["id"]?.int, let c = a["content"]?.string else { continue }
            byId[id] = c; added[id] = a["special"]?.bool ?? false
        }
        let n = (byId.keys.max() ?? -1) + 1
        guard n > 0 else { throw fail("the vocabulary is empty") }
        guard n <= config.vocabSize else { throw fail("\(n) tokens but the model has \(config.vocabSize) embedding rows") }
        var tokens: [String] = [], ttype: [Int32] = []
        let unk = model["unk_token"]?.string
        for i in 0..<config.vocabSize {
            guard let t = i < n ? byId[i] : "[PAD\(i)]" else { throw fail("token id \(i) is missing (ids must run 0..<\(n))") }
            tokens.append(t)
            if i >= n { ttype.append(5); continue } // unused padding up to the embedding rows
            if let special = added[i] { ttype.append(special ? 3 : 4); continue }
            if !byteLevel && t == unk { ttype.append(2); continue }
            if !byteLevel && t.utf8.count == 6 && t.hasPrefix("<0x") && t.hasSuffix(">") { ttype.append(6); continue }
            ttype.append(1)
        }
        let merges: [String] = (model["merges"]?.array ?? []).compactMap { m in
            if let s = m.string { return s }
            if let a = m.array, a.count == 2, let l = a[0].string, let r = a[1].string { return l + " " + r }
            return nil
        }
        // BOS: the post-processor's leading special token; EOS: the config's.
        var bos: Int? = config.bosTokenId, addBOS = false
        if let pp = j["post_processor"], !pp.isNull {
            let templates = pp["type"]?.string == "TemplateProcessing" ? [pp] : (pp["processors"]?.array ?? []).filter { $0["type"]?.string == "TemplateProcessing" }
            if let t = templates.first, let name = t["single"]?.array?.first?["SpecialToken"]?["id"]?.string {
                addBOS = true
                bos = t["special_tokens"]?[name]?["ids"]?.array?.first?.int ?? tokens.firstIndex(of: name)
            }
        }
        var m: [(String, GGUFMetaValue)] = [("tokenizer.ggml.model", .string(byteLevel ? "gpt2" : "llama"))]
        if byteLevel { m.append(("tokenizer.ggml.pre", .string(digits ? "smollm" : "gpt2"))) }
        m.append(("tokenizer.ggml.tokens", .strings(tokens)))
        if !byteLevel {
            var scores = [Float](repeating: 0, count: tokens.count)
            var seen = Set<Int>()
            var index: [String: Int] = [:]
            for (i, t) in tokens.enumerated() where index[t] == nil { index[t] = i }
            for (k, mg) in merges.enumerated() {
                guard let id = index[mg.replacingOccurrences(of: " ", with: "")], seen.insert(id).inserted else { continue }
                scores[id] = -Float(k)
            }
            // Pieces no merge produces rank after every merged piece.
            for i in tokens.indices where !seen.contains(i) && ttype[i] == 1 && tokens[i].count > 1 { scores[i] = -Float(merges.count + i) }
            m.append(("tokenizer.ggml.scores", .f32s(scores)))
        }
        m.append(("tokenizer.ggml.token_type", .i32s(ttype)))
        if byteLevel { m.append(("tokenizer.ggml.merges", .strings(merges))) }
        if let bos, tokens.indices.contains(bos) { m.append(("tokenizer.ggml.bos_token_id", .u32(UInt32(bos)))) }
        if let e = config.eosTokenIds.first, tokens.indices.contains(e) { m.append(("tokenizer.ggml.eos_token_id", .u32(UInt32(e)))) }
        if let unk, let u = tokens.firstIndex(of: unk) { m.append(("tokenizer.ggml.unknown_token_id", .u32(UInt32(u)))) }
        m.append(("tokenizer.ggml.add_bos_token", .bool(addBOS)))
        m.append(("tokenizer.ggml.add_eos_token", .bool(false)))
        if !byteLevel { m.append(("tokenizer.ggml.add_space_prefix", .bool(true))) }
        return m
    }
}
