import Foundation

/// Splitting an evaluation text into documents.
public enum TextDocuments {
    /// Splits `text` on `separator`. The line break that directly follows a
    /// separator belongs to the separator line and is dropped; everything else in a
    /// document (including its trailing newline) is kept. Whitespace-only pieces
    /// are dropped. This is the split behind the published stories260K figures.
    public static func split(_ text: String, separator: String) -> [String] {
        var docs: [String] = []
        for (i, piece) in text.components(separatedBy: separator).enumerated() {
            var p = Substring(piece)
            if i > 0 {
                if p.hasPrefix("\r\n") { p = p.dropFirst(2) } else if p.hasPrefix("\n") { p = p.dropFirst() }
            }
            if p.allSatisfy({ $0.isWhitespace }) { continue }
            docs.append(String(p))
        }
        return docs
    }
}
