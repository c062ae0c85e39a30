/// Character classes used by the GPT-2 regex and the Digits pre-tokenizer.
enum CharClass: UInt8 { case letter, number, space, other }

@inline(__always) func classify(_ u: Unicode.Scalar) -> CharClass {
    let v = u.value
    if v < 128 {
        let c = UInt8(v)
        if (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) { return .letter }
        if c >= 0x30 && c <= 0x39 { return .number }
        if c == 0x20 || (c >= 0x09 && c <= 0x0D) { return .space }
        return .other
    }
    let p = u.properties
    if p.isWhitespace { return .space }
    switch p.generalCategory {
    case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
    case .decimalNumber, .letterNumber, .otherNumber: return .number
    default: return .other
    }
}

/// Splits scalars into GPT-2 regex pieces:
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
/// Calls `emit(start, end)` with scalar index ranges.
func gpt2Split(_ s: [Unicode.Scalar], _ cls: [CharClass], _ lo: Int, _ hi: Int, _ emit: (Int, Int) -> Void) {
    var i = lo
    while i < hi {
        let c = s[i]
        // Contractions.
        if c == "'" && i + 1 < hi {
            let a = s[i + 1]
            if a == "s" || a == "t" || a == "m" || a == "d" { emit(i, i + 2); i += 2; continue }
            if i + 2 < hi {
                let b = s[i + 2]
                if (a == "r" && b == "e") || (a == "v" && b == "e") || (a == "l" && b == "l") { emit(i, i + 3); i += 3; continue }
            }
        }
        // Optional single space before a letter / number / other run.
        var j = i
        if c == " " && i + 1 < hi && cls[i + 1] != .space { j = i + 1 }
        let k = cls[j]
        if k != .space {
            var e = j + 1
            switch k {
            case .letter: while e < hi && cls[e] == .letter { e += 1 }
            case .number: while e < hi && cls[e] == .number { e += 1 }
            default: while e < hi && cls[e] == .other { e += 1 }
            }
            emit(i, e); i = e; continue
        }
        // Whitespace run: \s+(?!\S) then \s+.
        var e = i + 1
        while e < hi && cls[e] == .space { e += 1 }
        if e < hi && e - i > 1 { e -= 1 } // leave the last space to attach to the next word
        emit(i, e); i = e
    }
}
