/// One entry of `tokenizer.json`'s `added_tokens`, with the flags that change matching.
struct AddedToken: Sendable, Equatable {
    var content: String
    var id: Int
    var special: Bool
    /// Matched in the normalized text (its own content normalized too) instead of the raw text.
    var normalized: Bool
    /// The match takes the whitespace on its left (`lstrip`) / right (`rstrip`) with it.
    var lstrip: Bool
    var rstrip: Bool
    /// Matched only where neither neighbour is a word character.
    var singleWord: Bool
}

/// A piece of text after added-token matching: text (a range of scalar indices) or a token id.
enum AddedPiece: Equatable { case text(Range<Int>), token(Int) }

/// Finds added tokens in text as Hugging Face `tokenizers`' `AddedVocabulary::find_matches`
/// does: an Aho-Corasick automaton with `MatchKind::LeftmostLongest` over the exact code
/// points (no canonical equivalence: `<|endoftext|>` followed by U+0301 is a match), matches
/// never overlapping, then per token:
/// - `single_word`: the match is dropped (the search still goes on after it) when the text
///   just before or after it is a word character (`\w`: Alphabetic, marks, Nd, Pc, Join_Control);
/// - `lstrip`: the match extends left over whitespace (`\s`: White_Space), but not into the
///   previous match;
/// - `rstrip`: the match extends right over whitespace.
///
/// Matching on code points is matching on UTF-8 bytes: a valid pattern only matches valid
/// text at scalar boundaries, and of two patterns matching at one place the longer in bytes
/// is the longer in scalars.
struct AddedTokenMatcher: Sendable {
    let tokens: [AddedToken]
    /// A trie over the patterns' scalars: children by scalar value, and the token ending at each node.
    private var children: [[UInt32: Int32]] = [[:]]
    private var terminal: [Int32] = [-1]
    private var asciiFirst = [Bool](repeating: false, count: 128)
    private var otherFirst = Set<UInt32>()

    /// `patterns[k]` is what `tokens[k]` matches (its content, normalized for normalized tokens).
    /// Of two equal patterns the first is kept; empty patterns match nowhere.
    init(tokens: [AddedToken], patterns: [String]) {
        self.tokens = tokens
        for (k, p) in patterns.enumerated() where !p.isEmpty {
            var node = 0
            for u in p.unicodeScalars {
                if let c = children[node][u.value] { node = Int(c); continue }
                children.append([:]); terminal.append(-1)
                children[node][u.value] = Int32(children.count - 1)
                node = children.count - 1
            }
            if terminal[node] < 0 { terminal[node] = Int32(k) }
            let f = p.unicodeScalars.first!.value
            if f < 128 { asciiFirst[Int(f)] = true } else { otherFirst.insert(f) }
        }
    }

    var isEmpty: Bool { children.count == 1 }

    /// The longest pattern starting at `s[i]`: its end and token index.
    @inline(__always) private func longest(_ s: ArraySlice<Unicode.Scalar>, at i: Int) -> (end: Int, token: Int)? {
        let f = s[i].value
        guard f < 128 ? asciiFirst[Int(f)] : otherFirst.contains(f) else { return nil }
        var node = 0, j = i
        var best: (Int, Int)? = nil
        while j < s.endIndex, let c = children[node][s[j].value] {
            node = Int(c); j += 1
            if terminal[node] >= 0 { best = (j, Int(terminal[node])) }
        }
        return best
    }

    /// `s` split into text and added tokens (`find_matches`). Empty text pieces are left out.
    func split(_ s: ArraySlice<Unicode.Scalar>) -> [AddedPiece] {
        if s.isEmpty { return [] }
        if isEmpty { return [.text(s.indices)] }
        var out: [AddedPiece] = []
        var startOffset = s.startIndex
        var i = s.startIndex
        while i < s.endIndex {
            guard let (end, k) = longest(s, at: i) else { i += 1; continue }
            let token = tokens[k]
            var start = i, stop = end
            i = end
            if token.singleWord {
                let startSpace = start == s.startIndex || !isWordCharacter(s[start - 1])
                let stopSpace = stop == s.endIndex || !isWordCharacter(s[stop])
                if !startSpace || !stopSpace { continue }
            }
            if token.lstrip {
                var b = start
                while b > s.startIndex && s[b - 1].properties.isWhitespace { b -= 1 }
                start = max(b, startOffset)
            }
            if token.rstrip {
                while stop < s.endIndex && s[stop].properties.isWhitespace { stop += 1 }
            }
            if startOffset < start { out.append(.text(startOffset..<start)) }
            out.append(.token(token.id))
            startOffset = stop
        }
        if startOffset < s.endIndex { out.append(.text(startOffset..<s.endIndex)) }
        return out
    }
}

/// Rust regex's Unicode `\w`: Alphabetic, Mark, Decimal_Number, Connector_Punctuation, Join_Control.
func isWordCharacter(_ u: Unicode.Scalar) -> Bool {
    let v = u.value
    if v < 128 {
        let c = UInt8(v)
        return (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F
    }
    let p = u.properties
    if p.isAlphabetic || p.isJoinControl { return true }
    switch p.generalCategory {
    case .nonspacingMark, .spacingMark, .enclosingMark, .decimalNumber, .connectorPunctuation: return true
    default: return false
    }
}
