import Foundation
import LMCore

/// The `normalizer` of a `tokenizer.json`, applied as Hugging Face `tokenizers` does:
/// to each piece of text between non-normalized added tokens, and to the content of
/// added tokens marked `normalized` (which are then matched in the normalized text).
///
/// Supported: `NFC`, `NFD`, `NFKC`, `NFKD`, `Prepend`, `Replace` with a string pattern,
/// and `Sequence`s of these. Anything else is refused at load with a `TokenizerError`
/// naming the normalizer, never silently skipped.
struct Normalizer: Sendable {
    enum Step: Sendable, Equatable {
        case nfc, nfd, nfkc, nfkd
        /// Prepends the string to non-empty text.
        case prepend(String)
        /// Replaces every occurrence of a (non-empty) string, left to right, non-overlapping.
        case replace(String, String)
    }

    let steps: [Step]

    static let supported = "NFC, NFD, NFKC, NFKD, Prepend, Replace with a string pattern, and a Sequence of these are"

    /// Parses `json` (null or absent: no normalization).
    init(json: JSON?, fail: (String) -> TokenizerError) throws {
        var steps: [Step] = []
        func add(_ n: JSON, depth: Int) throws {
            guard !n.isNull else { return }
            guard depth < 16 else { throw fail("normalizer Sequence nested too deeply") }
            let type = n["type"]?.string ?? "?"
            switch type {
            case "Sequence":
                guard let list = n["normalizers"]?.array else { throw fail("normalizer Sequence without a 'normalizers' list") }
                for m in list { try add(m, depth: depth + 1) }
            case "NFC": steps.append(.nfc)
            case "NFD": steps.append(.nfd)
            case "NFKC": steps.append(.nfkc)
            case "NFKD": steps.append(.nfkd)
            case "Prepend":
                guard let p = n["prepend"]?.string else { throw fail("normalizer Prepend without a 'prepend' string") }
                if !p.isEmpty { steps.append(.prepend(p)) }
            case "Replace":
                guard let pattern = n["pattern"]?["String"]?.string else {
                    throw fail("normalizer Replace with a \(n["pattern"]?["Regex"] != nil ? "Regex" : "missing") pattern is not supported (only a String pattern)")
                }
                guard !pattern.isEmpty else { throw fail("normalizer Replace with an empty pattern is not supported") }
                guard let content = n["content"]?.string else { throw fail("normalizer Replace without a 'content' string") }
                steps.append(.replace(pattern, content))
            default:
                throw fail("normalizer '\(type)' is not supported (\(Normalizer.supported))")
            }
        }
        if let json { try add(json, depth: 0) }
        self.steps = steps
    }

    var isIdentity: Bool { steps.isEmpty }

    /// Whether a `Prepend` or `Replace` step writes `s` (the sentencepiece `▁` of Llama files).
    func inserts(_ s: String) -> Bool {
        steps.contains {
            switch $0 {
            case let .prepend(p): return p.contains(s)
            case let .replace(_, c): return c.contains(s)
            default: return false
            }
        }
    }

    /// The normalized form of `text`.
    func apply(_ text: String) -> String {
        var s = text
        for step in steps {
            switch step {
            case .nfc: if !isASCII(s) { s = s.precomposedStringWithCanonicalMapping }
            case .nfd: if !isASCII(s) { s = s.decomposedStringWithCanonicalMapping }
            case .nfkc: if !isASCII(s) { s = s.precomposedStringWithCompatibilityMapping }
            case .nfkd: if !isASCII(s) { s = s.decomposedStringWithCompatibilityMapping }
            case let .prepend(p): if !s.isEmpty { s = p + s }
            case let .replace(pattern, content): s = Normalizer.replace(s, pattern, content)
            }
        }
        return s
    }

    /// ASCII text is unchanged by all four Unicode normalization forms.
    private func isASCII(_ s: String) -> Bool { s.utf8.allSatisfy { $0 < 0x80 } }

    /// Every occurrence of `pattern` in `s` replaced by `content`, compared as UTF-8 bytes
    /// (not by canonical equivalence, as `String` comparison would).
    static func replace(_ s: String, _ pattern: String, _ content: String) -> String {
        let text = Array(s.utf8), p = Array(pattern.utf8), c = Array(content.utf8)
        guard text.count >= p.count else { return s }
        var out: [UInt8] = []
        out.reserveCapacity(text.count)
        var i = 0, changed = false
        while i < text.count {
            if text[i] == p[0] && i + p.count <= text.count && text[i..<(i + p.count)].elementsEqual(p) {
                out.append(contentsOf: c); i += p.count; changed = true
            } else {
                out.append(text[i]); i += 1
            }
        }
        return changed ? String(decoding: out, as: UTF8.self) : s
    }
}
