import LMCore

/// Builds Hugging Face `tokenizer.json` documents from other formats' tokenizer data.
public enum TokenizerJSON {
    /// A sentencepiece-style BPE (Llama 2): Metaspace, byte fallback, BOS template.
    /// `merges` are derived from the vocabulary as `transformers`' SentencePieceExtractor
    /// does: every split of a piece into two vocabulary pieces, ordered by the piece's
    /// score (descending), ties by the ids of the two halves.
    /// Ids outside `tokens` (from an untrusted file) are ignored; a missing score is 0.
    public static func sentencePiece(tokens: [String], scores: [Float], types: [Int]?, bos: Int?, eos: Int?, unk: Int?) -> JSON {
        let bos = valid(bos, tokens), eos = valid(eos, tokens), unk = valid(unk, tokens)
        var vocab: [String: Int] = [:]
        for (i, t) in tokens.enumerated() where vocab[t] == nil { vocab[t] = i }
        var merges: [(String, String, Float, Int)] = []
        for (i, piece) in tokens.enumerated() {
            if let types, i < types.count, types[i] != 1 { continue } // normal pieces only
            let chars = Array(piece)
            guard chars.count >= 2 else { continue }
            var local: [(String, String, Float, Int)] = []
            for k in 1..<chars.count {
                let l = String(chars[..<k]), r = String(chars[k...])
                if vocab[l] != nil && vocab[r] != nil { local.append((l, r, i < scores.count ? scores[i] : 0, i)) }
            }
            local.sort { (vocab[$0.0]!, vocab[$0.1]!) < (vocab[$1.0]!, vocab[$1.1]!) }
            merges.append(contentsOf: local)
        }
        // Stable sort by score, descending.
        merges = merges.enumerated().sorted { a, b in a.element.2 != b.element.2 ? a.element.2 > b.element.2 : a.offset < b.offset }.map { $0.element }
        var added: [JSON] = []
        for (i, t) in tokens.enumerated() {
            let isSpecial = types.map { i < $0.count && ($0[i] == 2 || $0[i] == 3) } ?? (i == bos || i == eos || i == unk)
            if isSpecial { added.append(addedToken(i, t)) }
        }
        let bosName = bos.map { tokens[$0] }
        return .object([
            ("version", .string("1.0")), ("truncation", .null), ("padding", .null),
            ("added_tokens", .array(added)),
            ("normalizer", .null),
            ("pre_tokenizer", .object([("type", .string("Metaspace")), ("replacement", .string("▁")), ("prepend_scheme", .string("always")), ("split", .bool(false))])),
            ("post_processor", template(bosName, bos)),
            ("decoder", .object([("type", .string("Sequence")), ("decoders", .array([
                .object([("type", .string("Replace")), ("pattern", .object([("String", .string("▁"))])), ("content", .string(" "))]),
                .object([("type", .string("ByteFallback"))]),
                .object([("type", .string("Fuse"))]),
                .object([("type", .string("Strip")), ("content", .string(" ")), ("start", .int(1)), ("stop", .int(0))]),
            ]))])),
            ("model", .object([
                ("type", .string("BPE")), ("dropout", .null), ("unk_token", unk.map { .string(tokens[$0]) } ?? .null),
                ("continuing_subword_prefix", .null), ("end_of_word_suffix", .null), ("fuse_unk", .bool(true)),
                ("byte_fallback", .bool(true)), ("ignore_merges", .bool(false)),
                ("vocab", .object(vocabPairs(tokens))),
                ("merges", .array(merges.map { .array([.string($0.0), .string($0.1)]) })),
            ])),
        ])
    }

    /// A byte-level (GPT-2 style) BPE. `digits` adds the individual-digits split
    /// that SmolLM2's pre-tokenizer ("smollm" in llama.cpp) applies first.
    /// A `bos` outside `tokens` is ignored.
    public static func byteLevel(tokens: [String], types: [Int]?, merges: [String], bos: Int?, addBOS: Bool, digits: Bool) -> JSON {
        let bos = valid(bos, tokens)
        var added: [JSON] = []
        if let types {
            for (i, t) in tokens.enumerated() where i < types.count && (types[i] == 3 || types[i] == 4) { added.append(addedToken(i, t, special: types[i] == 3)) }
        }
        var pres: [JSON] = []
        if digits { pres.append(.object([("type", .string("Digits")), ("individual_digits", .bool(true))])) }
        pres.append(.object([("type", .string("ByteLevel")), ("add_prefix_space", .bool(false)), ("trim_offsets", .bool(true)), ("use_regex", .bool(true))]))
        let post: JSON = addBOS && bos != nil ? template(tokens[bos!], bos) :
            .object([("type", .string("ByteLevel")), ("add_prefix_space", .bool(true)), ("trim_offsets", .bool(false)), ("use_regex", .bool(true))])
        return .object([
            ("version", .string("1.0")), ("truncation", .null), ("padding", .null),
            ("added_tokens", .array(added)),
            ("normalizer", .null),
            ("pre_tokenizer", .object([("type", .string("Sequence")), ("pretokenizers", .array(pres))])),
            ("post_processor", post),
            ("decoder", .object([("type", .string("ByteLevel")), ("add_prefix_space", .bool(true)), ("trim_offsets", .bool(true)), ("use_regex", .bool(true))])),
            ("model", .object([
                ("type", .string("BPE")), ("dropout", .null), ("unk_token", .null), ("continuing_subword_prefix", .string("")),
                ("end_of_word_suffix", .string("")), ("fuse_unk", .bool(false)), ("byte_fallback", .bool(false)), ("ignore_merges", .bool(false)),
                ("vocab", .object(vocabPairs(tokens))),
                ("merges", .array(merges.map { .string($0) })),
            ])),
        ])
    }

    /// `id` when it names one of `tokens`, else nil.
    static func valid(_ id: Int?, _ tokens: [String]) -> Int? { id.flatMap { tokens.indices.contains($0) ? $0 : nil } }

    static func vocabPairs(_ tokens: [String]) -> [(String, JSON)] {
        var seen = Set<String>()
        var out: [(String, JSON)] = []
        for (i, t) in tokens.enumerated() where seen.insert(t).inserted { out.append((t, .int(Int64(i)))) }
        return out
    }

    static func addedToken(_ id: Int, _ content: String, special: Bool = true) -> JSON {
        .object([("id", .int(Int64(id))), ("content", .string(content)), ("single_word", .bool(false)), ("lstrip", .bool(false)),
                 ("rstrip", .bool(false)), ("normalized", .bool(!special)), ("special", .bool(special))])
    }

    static func template(_ name: String?, _ id: Int?) -> JSON {
        guard let name, let id else { return .null }
        return .object([
            ("type", .string("TemplateProcessing")),
            ("single", .array([.object([("SpecialToken", .object([("id", .string(name)), ("type_id", .int(0))]))]),
                               .object([("Sequence", .object([("id", .string("A")), ("type_id", .int(0))]))])])),
            ("pair", .array([.object([("SpecialToken", .object([("id", .string(name)), ("type_id", .int(0))]))]),
                             .object([("Sequence", .object([("id", .string("A")), ("type_id", .int(0))]))]),
                             .object([("SpecialToken", .object([("id", .string(name)), ("type_id", .int(1))]))]),
                             .object([("Sequence", .object([("id", .string("B")), ("type_id", .int(1))]))])])),
            ("special_tokens", .object([(name, .object([("id", .string(name)), ("ids", .array([.int(Int64(id))])), ("tokens", .array([.string(name)]))]))])),
        ])
    }
}
