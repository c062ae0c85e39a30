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
/// - sentencepiece style: Metaspace pre-tokenizer (`▁`), byte fallback, BOS from a
///   `TemplateProcessing` post-processor (Llama 2, stories260K);
/// - byte-level GPT-2 style: optional `Digits` split, `ByteLevel` with the GPT-2
///   regex, bytes mapped to printable characters (GPT-2, SmolLM2, Qwen2).
public final class Tokenizer: @unchecked Sendable {
    public enum Family: Sendable { case sentencePiece, byteLevel }

    public let family: Family
    /// Token strings by id.
    public let tokens: [String]
    public let vocab: [String: Int]
    /// Added tokens matched verbatim in text before pre-tokenization.
    public let addedTokens: [(content: String, id: Int, special: Bool)]
    /// Id prepended by the post-processor, if any.
    public let bosId: Int?
    public let unkId: Int?
    /// Largest accepted id + 1 (16× the largest real vocabularies; ids are stored as Int32).
    public static let maxVocabulary = 1 << 22

    let merger: BPEMerger
    // Sentencepiece style.
    let replacement: Unicode.Scalar = "▁"
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
        var added: [(String, Int, Bool)] = []
        for a in j["added_tokens"]?.array ?? [] {
            guard let c = a["content"]?.string, let id = a["id"]?.int else { throw fail("added_tokens entry without content/id") }
            added.append((c, id, a["special"]?.bool ?? false))
            maxId = max(maxId, id)
        }
        // The id table is allocated from the largest id: bound it before trusting it.
        guard maxId < Tokenizer.maxVocabulary else {
            throw fail("token id \(maxId) is beyond the largest supported vocabulary (\(Tokenizer.maxVocabulary) tokens; model.vocab / added_tokens)")
        }
        var toks = [String](repeating: "", count: maxId + 1)
        for (k, id) in vocab { toks[id] = k }
        for (c, id, _) in added { toks[id] = c; if vocab[c] == nil { vocab[c] = id } }
        tokens = toks
        self.vocab = vocab
        // Longest first so that overlapping added tokens match greedily.
        // An empty added token matches nowhere (and would stall the matcher).
        addedTokens = added.filter { !$0.0.isEmpty }.sorted { $0.0.utf8.count > $1.0.utf8.count }.map { (content: $0.0, id: $0.1, special: $0.2) }
        specialIds = Set(added.filter { $0.2 }.map { $0.1 })
        byteFallback = model["byte_fallback"]?.bool ?? false
        unkId = model["unk_token"]?.string.flatMap { vocab[$0] }

        // Pre-tokenizer(s).
        var pres: [JSON] = []
        if let p = j["pre_tokenizer"], !p.isNull {
            if p["type"]?.string == "Sequence" { pres = p["pretokenizers"]?.array ?? [] } else { pres = [p] }
        }
        var fam: Family? = nil
        var prependAlways = false, prependFirst = false, split = false, digits = false, regex = true, prefix = false
        for p in pres {
            switch p["type"]?.string ?? "" {
            case "Metaspace":
                fam = .sentencePiece
                if let r = p["replacement"]?.string, r != "▁" { throw fail("Metaspace replacement '\(r)' is not supported") }
                let scheme = p["prepend_scheme"]?.string ?? ((p["add_prefix_space"]?.bool ?? true) ? "always" : "never")
                prependAlways = scheme == "always"; prependFirst = scheme == "first"
                split = p["split"]?.bool ?? true
            case "ByteLevel":
                fam = .byteLevel
                regex = p["use_regex"]?.bool ?? true
                prefix = p["add_prefix_space"]?.bool ?? false
            case "Digits":
                digits = p["individual_digits"]?.bool ?? false
                if !digits { throw fail("pre_tokenizer Digits with individual_digits=false is not supported") }
            case let t: throw fail("pre_tokenizer '\(t)' is not supported (Metaspace, ByteLevel, Digits are)")
            }
        }
        if fam == nil {
            // Llama-style files may use a normalizer (Prepend ▁ + Replace ' '→'▁') instead of a pre-tokenizer.
            if let n = j["normalizer"], !n.isNull, n.serialized().contains("▁") { fam = .sentencePiece; prependAlways = true; split = false }
            else if j["decoder"]?["type"]?.string == "ByteLevel" { fam = .byteLevel }
        }
        guard let family = fam else { throw fail("cannot tell the tokenizer family: need a Metaspace or ByteLevel pre-tokenizer") }
        if family == .byteLevel, let n = j["normalizer"], !n.isNull, n["type"]?.string != "NFC" {
            throw fail("normalizer '\(n["type"]?.string ?? "?")' is not supported for byte-level tokenizers")
        }
        self.family = family
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
            byteTokenIds[b] = Int32(vocab[String(format: "<0x%02X>", b)] ?? -1)
            byteLevelIds[b] = Int32(vocab[String(ByteLevelAlphabet.scalar(for: UInt8(b)))] ?? -1)
        }
    }

    // MARK: encoding

    /// Token ids of `text`. `addBOS` defaults to what the post-processor says.
    public func encode(_ text: String, addBOS: Bool? = nil) -> [Int] {
        var out: [Int] = []
        if addBOS ?? (bosId != nil), let b = bosId { out.append(b) }
        var first = true
        for seg in splitAdded(text) {
            switch seg {
            case let .added(id): out.append(id)
            case let .text(s):
                encodeSegment(s, first: first, into: &out)
            }
            first = false
        }
        return out
    }

    enum Segment { case text(Substring), added(Int) }

    /// Splits on added tokens (matched verbatim, longest first).
    func splitAdded(_ text: String) -> [Segment] {
        if addedTokens.isEmpty { return [.text(Substring(text))] }
        var segs: [Segment] = []
        var start = text.startIndex
        var i = text.startIndex
        let firstBytes = Set(addedTokens.compactMap { $0.content.utf8.first })
        let utf8 = text.utf8
        while i < text.endIndex {
            if firstBytes.contains(utf8[i]) {
                var matched: (String, Int)? = nil
                for a in addedTokens where text[i...].hasPrefix(a.content) { matched = (a.content, a.id); break }
                if let (c, id) = matched {
                    if start < i { segs.append(.text(text[start..<i])) }
                    segs.append(.added(id))
                    i = text.index(i, offsetBy: c.count, limitedBy: text.endIndex) ?? text.endIndex
                    start = i
                    continue
                }
            }
            i = text.index(after: i)
        }
        if start < text.endIndex { segs.append(.text(text[start...])) }
        return segs
    }

    func encodeSegment(_ s: Substring, first: Bool, into out: inout [Int]) {
        switch family {
        case .sentencePiece: encodeMetaspace(s, first: first, into: &out)
        case .byteLevel: encodeByteLevel(s, into: &out)
        }
    }

    private func encodeMetaspace(_ s: Substring, first: Bool, into out: inout [Int]) {
        if s.isEmpty { return }
        var scalars: [Unicode.Scalar] = []
        scalars.reserveCapacity(s.unicodeScalars.count + 1)
        for u in s.unicodeScalars { scalars.append(u == " " ? replacement : u) }
        if (prependAlways || (prependFirstOnly && first)) && scalars.first != replacement { scalars.insert(replacement, at: 0) }
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

    private func encodeByteLevel(_ s: Substring, into out: inout [Int]) {
        var text = s
        var prefixed = ""
        if addPrefixSpace && !(s.first?.isWhitespace ?? true) { prefixed = " " + s; text = prefixed[...] }
        let scalars = Array(text.unicodeScalars)
        let cls = scalars.map(classify)
        var pieces: [(Int, Int)] = []
        func regexSplit(_ lo: Int, _ hi: Int) {
            if useRegex { gpt2Split(scalars, cls, lo, hi) { pieces.append(($0, $1)) } } else if lo < hi { pieces.append((lo, hi)) }
        }
        if splitDigits {
            var start = 0
            for i in 0..<scalars.count where cls[i] == .number {
                regexSplit(start, i); pieces.append((i, i + 1)); start = i + 1
            }
            regexSplit(start, scalars.count)
        } else {
            regexSplit(0, scalars.count)
        }
        cacheLock.lock(); defer { cacheLock.unlock() }
        for (lo, hi) in pieces {
            var str = String.UnicodeScalarView()
            str.append(contentsOf: scalars[lo..<hi])
            let key = Substring(String(str))
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
                if specialIds.contains(id) || addedTokens.contains(where: { $0.id == id }) { bytes.append(contentsOf: t.utf8); continue }
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
