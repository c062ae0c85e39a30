import Foundation
import LMCore

/// Errors loading or using a tokenizer; they name the file and the key.
public struct TokenizerError: Error, CustomStringConvertible {
    public let source: String
    public let reason: String
    public init(source: String, reason: String) { self.source = source; self.reason = reason }
    public var description: String { "\(source): \(reason)" }
}

/// A BPE tokenizer loaded from Hugging Face `tokenizer.json`.
///
/// Two families are supported, as `tokenizers` runs them:
/// - sentencepiece style: Metaspace pre-tokenizer (`▁`), or none with Llama's
///   `Prepend ▁` + `Replace ' '→▁` normalizer; byte fallback, BOS from a
///   `TemplateProcessing` post-processor (Llama 2, stories260K);
/// - byte-level GPT-2 style: optional `Digits` split, `ByteLevel` with the GPT-2
///   regex, bytes mapped to printable characters (GPT-2, SmolLM2, Qwen2).
///
/// Encoding follows `tokenizers`' pipeline: added tokens that are not `normalized` are
/// found in the raw text (on code points, leftmost-longest, with their `lstrip`, `rstrip`
/// and `single_word` flags); each piece between them is normalized (`Normalizer`:
/// NFC/NFD/NFKC/NFKD, Prepend, Replace) and searched for the `normalized` added tokens;
/// what remains is pre-tokenized and merged. Unsupported normalizers, pre-tokenizers and
/// models are refused at load with a `TokenizerError`.
public final class Tokenizer: @unchecked Sendable {
    public enum Family: Sendable { case sentencePiece, byteLevel }

    public let family: Family
    /// Token strings by id.
    public let tokens: [String]
    public let vocab: [String: Int]
    /// Added tokens (longest first), matched in text before pre-tokenization.
    public let addedTokens: [(content: String, id: Int, special: Bool)]
    /// Id prepended by the post-processor, if any.
    public let bosId: Int?
    public let unkId: Int?
    /// Largest accepted id + 1 (16× the largest real vocabularies; ids are stored as Int32).
    public static let maxVocabulary = 1 << 22

    let merger: BPEMerger
    let normalizer: Normalizer
    /// Added tokens matched in the raw text (`normalized: false`) and in the normalized text.
    let rawAdded: AddedTokenMatcher
    let normalizedAdded: AddedTokenMatcher
    let addedIds: Set<Int>
    // Sentencepiece style.
    let replacement: Unicode.Scalar = "▁"
    /// A Metaspace pre-tokenizer is present (else the normalizer wrote the `▁`s).
    let metaspace: Bool
    let prependAlways: Bool
    let prependFirstOnly: Bool
    let metaspaceSplit: Bool
    let byteFallback: Bool
    var byteTokenIds: [Int32] = Array(repeating: -1, count: 256)
    // Byte-level.
    let splitDigits: Bool
    let useRegex: Bool
    let addPrefixSpace: Bool
    var byteLevelIds: [Int32] = Array(repeating: -1, count: 256)
    var charToId: [Unicode.Scalar: Int32] = [:]
    var specialIds: Set<Int> = []
    /// Decoding strip of leading spaces (sentencepiece `Strip` decoder).
    let stripLeading: Int

    /// Loads `tokenizer.json` (or the folder holding it).
    public convenience init(path: String) throws {
        var isDir: ObjCBool = false
        let file = FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && isDir.boolValue ? path + "/tokenizer.json" : path
        guard FileManager.default.fileExists(atPath: file) else {
            throw TokenizerError(source: file, reason: "missing; a model folder needs tokenizer.json (GGUF and llama2.c inputs get one from `lmconvert import`)")
        }
        try self.init(json: JSON.parse(file: file), source: file)
    }

    public init(json j: JSON, source: String) throws {
        func fail(_ r: String) -> TokenizerError { TokenizerError(source: source, reason: r) }
        guard let model = j["model"] else { throw fail("no 'model' section") }
        guard model["type"]?.string == "BPE" || model["type"] == nil && model["merges"] != nil else {
            throw fail("model type '\(model["type"]?.string ?? "?")' is not supported (only BPE)")
        }
        guard let vocabJ = model["vocab"]?.object else { throw fail("model.vocab missing") }
        var vocab: [String: Int] = [:]
        vocab.reserveCapacity(vocabJ.count)
        var maxId = -1
        for (k, v) in vocabJ {
            guard let id = v.int, id >= 0 else { throw fail("model.vocab['\(k)'] is not a non-negative id") }
            vocab[k] = id; maxId = max(maxId, id)
        }
        // A missing flag defaults as in `AddedToken::from(content, special)`.
        var added: [AddedToken] = []
        for a in j["added_tokens"]?.array ?? [] {
            guard let c = a["content"]?.string, let id = a["id"]?.int else { throw fail("added_tokens entry without content/id") }
            let special = a["special"]?.bool ?? false
            added.append(AddedToken(content: c, id: id, special: special, normalized: a["normalized"]?.bool ?? !special,
                                    lstrip: a["lstrip"]?.bool ?? false, rstrip: a["rstrip"]?.bool ?? false,
                                    singleWord: a["single_word"]?.bool ?? false))
            maxId = max(maxId, id)
        }
        // The id table is allocated from the largest id: bound it before trusting it.
        guard maxId < Tokenizer.maxVocabulary else {
            throw fail("token id \(maxId) is beyond the largest supported vocabulary (\(Tokenizer.maxVocabulary) tokens; model.vocab / added_tokens)")
        }
        var toks = [String](repeating: "", count: maxId + 1)
        for (k, id) in vocab { toks[id] = k }
        for a in added { toks[a.id] = a.content; if vocab[a.content] == nil { vocab[a.content] = a.id } }
        tokens = toks
        self.vocab = vocab
        // An empty added token matches nowhere.
        added.removeAll { $0.content.isEmpty }
        addedTokens = added.sorted { $0.content.utf8.count > $1.content.utf8.count }.map { (content: $0.content, id: $0.id, special: $0.special) }
        addedIds = Set(added.map(\.id))
        specialIds = Set(added.filter(\.special).map(\.id))
        byteFallback = model["byte_fallback"]?.bool ?? false
        unkId = model["unk_token"]?.string.flatMap { vocab[$0] }

        // Pre-tokenizer(s).
        var pres: [JSON] = []
        if let p = j["pre_tokenizer"], !p.isNull {
            if p["type"]?.string == "Sequence" { pres = p["pretokenizers"]?.array ?? [] } else { pres = [p] }
        }
        var fam: Family? = nil
        var prependAlways = false, prependFirst = false, split = false, digits = false, regex = true, prefix = false, metaspace = false
        for p in pres {
            switch p["type"]?.string ?? "" {
            case "Metaspace":
                fam = .sentencePiece; metaspace = true
                if let r = p["replacement"]?.string, r != "▁" { throw fail("Metaspace replacement '\(r)' is not supported") }
                let scheme = p["prepend_scheme"]?.string ?? ((p["add_prefix_space"]?.bool ?? true) ? "always" : "never")
                prependAlways = scheme == "always"; prependFirst = scheme == "first"
                split = p["split"]?.bool ?? true
            case "ByteLevel":
                fam = .byteLevel
                regex = p["use_regex"]?.bool ?? true
                prefix = p["add_prefix_space"]?.bool ?? false
            case "Digits":
                // After ByteLevel it would split the byte symbols (`²` stands for byte 0xB2).
                if fam == .byteLevel { throw fail("pre_tokenizer Digits after ByteLevel is not supported (only before it)") }
                digits = p["individual_digits"]?.bool ?? false
                if !digits { throw fail("pre_tokenizer Digits with individual_digits=false is not supported") }
            case let t: throw fail("pre_tokenizer '\(t)' is not supported (Metaspace, ByteLevel, Digits are)")
            }
        }
        let normalizer = try Normalizer(json: j["normalizer"], fail: fail)
        if fam == nil {
            // Llama-style files use a normalizer (Prepend ▁ + Replace ' '→'▁') instead of a
            // pre-tokenizer: the model then sees each normalized piece whole.
            if normalizer.inserts("▁") { fam = .sentencePiece; split = false }
            else if j["decoder"]?["type"]?.string == "ByteLevel" { fam = .byteLevel }
        }
        guard let family = fam else { throw fail("cannot tell the tokenizer family: need a Metaspace or ByteLevel pre-tokenizer") }
        if family == .sentencePiece && digits { throw fail("pre_tokenizer Digits with Metaspace is not supported (only with ByteLevel)") }
        self.family = family
        self.normalizer = normalizer
        // As `tokenizers`: special tokens first, then the others; normalized ones match their normalized content.
        let ordered = added.filter(\.special) + added.filter { !$0.special }
        let raw = ordered.filter { !$0.normalized }, norm = ordered.filter(\.normalized)
        rawAdded = AddedTokenMatcher(tokens: raw, patterns: raw.map(\.content))
        normalizedAdded = AddedTokenMatcher(tokens: norm, patterns: norm.map { normalizer.apply($0.content) })
        self.metaspace = metaspace
        self.prependAlways = prependAlways; self.prependFirstOnly = prependFirst; self.metaspaceSplit = split
        splitDigits = digits; useRegex = regex; addPrefixSpace = prefix
        var strip = 0
        for d in j["decoder"]?["decoders"]?.array ?? [] where d["type"]?.string == "Strip" { strip = d["start"]?.int ?? 0 }
        stripLeading = strip

        // Post-processor: BOS when the template starts with a special token.
        var bos: Int? = nil
        if let pp = j["post_processor"], !pp.isNull {
            var templates: [JSON] = []
            if pp["type"]?.string == "TemplateProcessing" { templates = [pp] }
            else if pp["type"]?.string == "Sequence" { templates = (pp["processors"]?.array ?? []).filter { $0["type"]?.string == "TemplateProcessing" } }
            if let t = templates.first, let first = t["single"]?.array?.first, let sp = first["SpecialToken"], let name = sp["id"]?.string {
                bos = t["special_tokens"]?[name]?["ids"]?.array?.first?.int ?? vocab[name]
            }
        }
        bosId = bos

        // Merges: "a b" strings or [a, b] pairs.
        var merger = BPEMerger()
        let mergesJ = model["merges"]?.array ?? []
        merger.merges.reserveCapacity(mergesJ.count)
        for (rank, m) in mergesJ.enumerated() {
            var a: String, b: String
            if let s = m.string {
                guard !s.isEmpty, let sp = s.firstIndex(of: " ", from: s.index(after: s.startIndex)) else { throw fail("merge '\(s)' is not 'a b'") }
                a = String(s[..<sp]); b = String(s[s.index(after: sp)...])
            } else if let p = m.array, p.count == 2, let x = p[0].string, let y = p[1].string { a = x; b = y }
            else { throw fail("merge #\(rank) is neither 'a b' nor [a, b]") }
            guard let ia = vocab[a], let ib = vocab[b], let im = vocab[a + b] else { continue }
            let k = BPEMerger.key(Int32(ia), Int32(ib))
            if merger.merges[k] == nil { merger.merges[k] = (Int32(rank), Int32(im)) }
        }
        self.merger = merger
        for (k, id) in vocab where k.unicodeScalars.count == 1 { charToId[k.unicodeScalars.first!] = Int32(id) }
        for b in 0..<256 {
            byteTokenIds[b] = Int32(vocab[Tokenizer.byteTokenNames[b]] ?? -1)
            byteLevelIds[b] = Int32(vocab[String(ByteLevelAlphabet.scalar(for: UInt8(b)))] ?? -1)
        }
    }

    /// `<0x00>` … `<0xFF>`, the byte-fallback token names (built once: `String(format:)` is slow).
    static let byteTokenNames: [String] = (0..<256).map { b in
        let hex = Array("0123456789ABCDEF")
        return "<0x" + String(hex[b >> 4]) + String(hex[b & 15]) + ">"
    }

    // MARK: encoding

    /// Token ids of `text`. `addBOS` defaults to what the post-processor says.
    public func encode(_ text: String, addBOS: Bool? = nil) -> [Int] {
        var out: [Int] = []
        if addBOS ?? (bosId != nil), let b = bosId { out.append(b) }
        let scalars = Array(text.unicodeScalars)
        for piece in rawAdded.split(scalars[...]) {
            switch piece {
            case let .token(id): out.append(id)
            case let .text(r): encodeNormalized(scalars[r], atStart: r.lowerBound == 0, into: &out)
            }
        }
        return out
    }

    /// A piece between raw added tokens: normalized, split on the normalized added tokens,
    /// the rest pre-tokenized and merged. `atStart`: the piece starts the text.
    private func encodeNormalized(_ s: ArraySlice<Unicode.Scalar>, atStart: Bool, into out: inout [Int]) {
        var text = s
        if !normalizer.isIdentity {
            var v = String.UnicodeScalarView()
            v.append(contentsOf: s)
            text = Array(normalizer.apply(String(v)).unicodeScalars)[...]
        }
        for piece in normalizedAdded.split(text) {
            switch piece {
            case let .token(id): out.append(id)
            case let .text(r): encodeSegment(text[r], first: atStart && r.lowerBound == text.startIndex, into: &out)
            }
        }
    }

    func encodeSegment(_ s: ArraySlice<Unicode.Scalar>, first: Bool, into out: inout [Int]) {
        switch family {
        case .sentencePiece: encodeMetaspace(s, first: first, into: &out)
        case .byteLevel: encodeByteLevel(s, into: &out)
        }
    }

    private func encodeMetaspace(_ s: ArraySlice<Unicode.Scalar>, first: Bool, into out: inout [Int]) {
        if s.isEmpty { return }
        var scalars: [Unicode.Scalar] = []
        scalars.reserveCapacity(s.count + 1)
        if metaspace {
            for u in s { scalars.append(u == " " ? replacement : u) }
            if (prependAlways || (prependFirstOnly && first)) && scalars.first != replacement { scalars.insert(replacement, at: 0) }
        } else {
            scalars.append(contentsOf: s)
        }
        if !metaspaceSplit {
            out.append(contentsOf: bpeScalars(scalars[...]).map(Int.init))
            return
        }
        // Split before each ▁ (MergedWithNext).
        var start = 0
        for i in 1..<max(scalars.count, 1) where scalars[i] == replacement {
            out.append(contentsOf: bpeScalars(scalars[start..<i]).map(Int.init)); start = i
        }
        if start < scalars.count { out.append(contentsOf: bpeScalars(scalars[start...]).map(Int.init)) }
    }

    /// Sentencepiece-style symbols: one per character, byte fallback for unknown ones.
    private func bpeScalars(_ scalars: ArraySlice<Unicode.Scalar>) -> [Int32] {
        var syms: [Int32] = []
        syms.reserveCapacity(scalars.count)
        for u in scalars {
            if let id = charToId[u] { syms.append(id); continue }
            if byteFallback {
                var ok = true
                var bytes: [Int32] = []
                for b in String(u).utf8 { let t = byteTokenIds[Int(b)]; if t < 0 { ok = false }; bytes.append(t) }
                if ok { syms.append(contentsOf: bytes); continue }
            }
            if let unk = unkId {
                // fuse_unk: consecutive unknowns become one.
                if syms.last != Int32(unk) { syms.append(Int32(unk)) }
            }
        }
        return merger.merge(syms)
    }

    private var cache: [Substring: [Int32]] = [:]
    private let cacheLock = NSLock()

    /// Byte-level: the `Digits` splits (each digit alone) first, then on each split what
    /// `ByteLevel` does: a space in front unless it starts with U+0020 (`add_prefix_space`),
    /// the GPT-2 regex, the bytes as symbols, the merges.
    private func encodeByteLevel(_ s: ArraySlice<Unicode.Scalar>, into out: inout [Int]) {
        if s.isEmpty { return }
        let scalars = Array(s)
        let cls = scalars.map(classify)
        var pieces: [Substring] = []
        func piece(_ sc: [Unicode.Scalar], _ lo: Int, _ hi: Int) {
            var str = String.UnicodeScalarView()
            str.append(contentsOf: sc[lo..<hi])
            pieces.append(Substring(String(str)))
        }
        func byteLevelSplit(_ lo: Int, _ hi: Int) {
            guard lo < hi else { return }
            var sc = scalars, cl = cls, lo = lo, hi = hi
            if addPrefixSpace && scalars[lo] != " " {
                sc = [" "] + scalars[lo..<hi]; cl = sc.map(classify); lo = 0; hi = sc.count
            }
            if useRegex { gpt2Split(sc, cl, lo, hi) { piece(sc, $0, $1) } } else { piece(sc, lo, hi) }
        }
        if splitDigits {
            var start = 0
            for i in 0..<scalars.count where cls[i] == .number {
                byteLevelSplit(start, i); byteLevelSplit(i, i + 1); start = i + 1
            }
            byteLevelSplit(start, scalars.count)
        } else {
            byteLevelSplit(0, scalars.count)
        }
        cacheLock.lock(); defer { cacheLock.unlock() }
        for key in pieces {
            if let hit = cache[key] { for t in hit { out.append(Int(t)) }; continue }
            var syms: [Int32] = []
            // A byte whose symbol is missing from the vocabulary is dropped, as `tokenizers`
            // does for an unknown character when the model has no unk token.
            for b in key.utf8 { let t = byteLevelIds[Int(b)]; if t >= 0 { syms.append(t) } else if let u = unkId { syms.append(Int32(u)) } }
            let ids = merger.merge(syms)
            if cache.count < 200_000 { cache[key] = ids }
            for t in ids { out.append(Int(t)) }
        }
    }

    // MARK: decoding

    /// Text of `ids`. Special tokens (BOS/EOS, added special tokens) are skipped
    /// unless `skipSpecial` is false. Bytes that are not valid UTF-8 (a multi-byte
    /// character cut by a truncation) become U+FFFD; `decodeBytes` gives the bytes.
    public func decode(_ ids: [Int], skipSpecial: Bool = true) -> String {
        String(decoding: decodeBytes(ids, skipSpecial: skipSpecial), as: UTF8.self)
    }

    /// The UTF-8 bytes `ids` stand for (as `decode`, without replacing invalid sequences).
    public func decodeBytes(_ ids: [Int], skipSpecial: Bool = true) -> [UInt8] {
        var bytes: [UInt8] = []
        for id in ids {
            guard id >= 0 && id < tokens.count else { continue }
            if skipSpecial && (specialIds.contains(id) || id == bosId) { continue }
            let t = tokens[id]
            switch family {
            case .sentencePiece:
                if byteFallback, t.utf8.count == 6, t.hasPrefix("<0x"), t.hasSuffix(">"), let b = UInt8(t.dropFirst(3).prefix(2), radix: 16) {
                    bytes.append(b)
                } else {
                    for u in t.unicodeScalars {
                        if u == replacement { bytes.append(0x20) } else { bytes.append(contentsOf: String(u).utf8) }
                    }
                }
            case .byteLevel:
                if addedIds.contains(id) { bytes.append(contentsOf: t.utf8); continue }
                for u in t.unicodeScalars {
                    if let b = ByteLevelAlphabet.byte(for: u) { bytes.append(b) } else { bytes.append(contentsOf: String(u).utf8) }
                }
            }
        }
        if family == .sentencePiece {
            var n = stripLeading, k = 0
            while n > 0 && k < bytes.count && bytes[k] == 0x20 { k += 1; n -= 1 }
            if k > 0 { bytes.removeFirst(k) }
        }
        return bytes
    }

    /// The text of one token for display.
    public func tokenText(_ id: Int) -> String { id >= 0 && id < tokens.count ? tokens[id] : "<\(id)>" }
    public var vocabSize: Int { tokens.count }
}

extension String {
    func firstIndex(of c: Character, from: Index) -> Index? { self[from...].firstIndex(of: c) }
}

/// GPT-2's reversible byte → printable character map.
public enum ByteLevelAlphabet {
    static let forward: [Unicode.Scalar] = {
        var bs: [Int] = Array(33...126) + Array(161...172) + Array(174...255)
        var cs = bs
        var n = 0
        for b in 0..<256 where !bs.contains(b) { bs.append(b); cs.append(256 + n); n += 1 }
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        for (b, c) in zip(bs, cs) { table[b] = Unicode.Scalar(UInt32(c))! }
        return table
    }()
    static let backward: [UInt32: UInt8] = {
        var d: [UInt32: UInt8] = [:]
        for b in 0..<256 { d[forward[b].value] = UInt8(b) }
        return d
    }()
    public static func scalar(for byte: UInt8) -> Unicode.Scalar { forward[Int(byte)] }
    public static func byte(for s: Unicode.Scalar) -> UInt8? { backward[s.value] }
}
