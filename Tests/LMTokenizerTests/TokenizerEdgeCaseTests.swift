import Foundation
import LMCore
import LMTokenizer
import Testing

/// Golden cases for the tokenizer edge cases of issue 12 item 5, against Hugging Face
/// `tokenizers` itself. `fixtures/tokenizers/edge_cases.json` holds small tokenizer.json
/// documents and, for each text, the ids `tokenizers` 0.23.3 encodes it to; it was written by
///
///     python3 -m venv /tmp/tokvenv && /tmp/tokvenv/bin/pip install tokenizers==0.23.3
///     /tmp/tokvenv/bin/python fixtures/tokenizers/make_edge_cases.py
///
/// (`Tokenizer.from_str(json.dumps(doc)).encode(text).ids` for every case).
@Suite("Tokenizer edge cases vs Hugging Face tokenizers (fixtures/tokenizers)")
struct TokenizerEdgeCaseTests {
    static let fixtures: [JSON] = {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
            + "/fixtures/tokenizers/edge_cases.json"
        return (try? JSON.parse(file: path))?["fixtures"]?.array ?? []
    }()

    /// Encodes every case of the fixture whose name starts with `name`; records each difference.
    func check(_ name: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let f = try #require(Self.fixtures.first { $0["name"]?.string?.hasPrefix(name) == true }, "no fixture '\(name)'", sourceLocation: sourceLocation)
        let tok = try Tokenizer(json: try #require(f["tokenizer"]), source: name)
        let cases = f["cases"]?.array ?? []
        #expect(!cases.isEmpty, sourceLocation: sourceLocation)
        for c in cases {
            let text = try #require(c["text"]?.string)
            let want = (c["ids"]?.array ?? []).compactMap(\.int)
            let got = tok.encode(text)
            let scalars = text.unicodeScalars.map { $0.value < 0x80 && $0.value >= 0x20 ? String($0) : String(format: "\\u{%X}", $0.value) }.joined()
            #expect(got == want, "\(name): \"\(scalars)\" → \(got.map(tok.tokenText)), tokenizers gives \(want.map(tok.tokenText))", sourceLocation: sourceLocation)
        }
    }

    @Test("NFC normalizer is applied; raw special tokens match before it, normalized added tokens after")
    func nfc() throws {
        try check("NFC normalizer, byte-level")
        try check("NFC inside a Sequence normalizer")
        try check("NFC normalizer with a Metaspace pre-tokenizer")
    }

    @Test("NFD and NFKC normalizers are applied")
    func otherForms() throws {
        try check("NFKC normalizer")
        try check("NFD normalizer")
    }

    @Test("Llama's Prepend ▁ + Replace normalizer is applied as written (a leading space gives ▁▁)")
    func llamaNormalizer() throws {
        try check("Llama normalizer")
    }

    @Test("ByteLevel add_prefix_space adds a space unless the split starts with U+0020; each Digits split gets one")
    func prefixSpace() throws {
        try check("ByteLevel add_prefix_space tests for U+0020 only")
        try check("ByteLevel add_prefix_space after Digits")
    }

    @Test("added tokens match code points (a special token before a combining mark), leftmost-longest")
    func addedTokenBytes() throws {
        try check("added tokens match bytes")
    }

    @Test("added-token flags lstrip, rstrip and single_word")
    func addedTokenFlags() throws {
        try check("added-token flags")
    }

    @Test("unsupported normalizers and pre-tokenizer orders are refused with an error naming them")
    func refused() throws {
        let vocab = #""model": {"type": "BPE", "vocab": {"a": 0, "\u2581": 1}, "merges": []}"#
        let byteLevel = #""pre_tokenizer": {"type": "ByteLevel"}"#
        let cases: [(String, String)] = [
            (#"{"normalizer": {"type": "Lowercase"}, \#(byteLevel), \#(vocab)}"#, "'Lowercase'"),
            (#"{"normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}]}, \#(byteLevel), \#(vocab)}"#, "'Lowercase'"),
            (#"{"normalizer": {"type": "BertNormalizer"}, "pre_tokenizer": {"type": "Metaspace"}, \#(vocab)}"#, "'BertNormalizer'"),
            (#"{"normalizer": {"type": "StripAccents"}, "pre_tokenizer": {"type": "Metaspace"}, \#(vocab)}"#, "'StripAccents'"),
            (#"{"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"Regex": " +"}, "content": "\u2581"}]}, \#(vocab)}"#, "Regex"),
            (#"{"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "ByteLevel"}, {"type": "Digits", "individual_digits": true}]}, \#(vocab)}"#, "Digits after ByteLevel"),
            (#"{"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, {"type": "Metaspace"}]}, \#(vocab)}"#, "Digits with Metaspace"),
        ]
        for (text, word) in cases {
            do {
                _ = try Tokenizer(json: JSON.parse(Array(text.utf8), source: "t.json"), source: "t.json")
                Issue.record("accepted: \(text)")
            } catch {
                #expect(error is TokenizerError && "\(error)".contains("t.json") && "\(error)".contains(word), "\(error)")
            }
        }
    }
}
