import LMCore

/// Reads the vocabulary of a sentencepiece `.model` file (protobuf `ModelProto`):
/// field 1 `pieces` = repeated `SentencePiece { string piece = 1; float score = 2;
/// Type type = 3; }`. Other fields (trainer / normalizer specs) are skipped.
public enum SentencePieceModel {
    public struct Piece: Equatable { public let text: String; public let score: Float; public let type: Int }

    public static func load(path: String) throws -> [Piece] {
        let m = try MappedFile(path: path)
        var r = ByteReader(m.bytes, source: path)
        func fail(_ s: String) -> IOError { IOError(path: path, reason: "not a sentencepiece model: \(s)") }
        func varint(_ r: inout ByteReader) throws -> UInt64 {
            var v: UInt64 = 0, shift: UInt64 = 0
            while true {
                let b = try r.read(UInt8.self, "varint")
                v |= UInt64(b & 0x7F) << shift
                if b & 0x80 == 0 { return v }
                shift += 7
                if shift > 63 { throw fail("varint too long at offset \(r.offset)") }
            }
        }
        func skip(_ wire: UInt64, _ r: inout ByteReader) throws {
            switch wire {
            case 0: _ = try varint(&r)
            case 1: try r.skip(8)
            case 2: let n = try varint(&r); guard n <= UInt64(r.remaining) else { throw fail("length beyond the file") }; try r.skip(Int(n))
            case 5: try r.skip(4)
            default: throw fail("wire type \(wire) at offset \(r.offset)")
            }
        }
        var pieces: [Piece] = []
        while r.remaining > 0 {
            let key = try varint(&r)
            let field = key >> 3, wire = key & 7
            guard field == 1 && wire == 2 else { try skip(wire, &r); continue }
            let n = try varint(&r)
            guard n <= UInt64(r.remaining) else { throw fail("piece length beyond the file") }
            var sub = ByteReader(try r.readBytes(Int(n)), source: path)
            var text = "", score: Float = 0, type = 1
            while sub.remaining > 0 {
                let k = try varint(&sub)
                switch (k >> 3, k & 7) {
                case (1, 2):
                    let len = try varint(&sub)
                    guard len <= UInt64(sub.remaining) else { throw fail("piece text beyond its message") }
                    text = String(decoding: try sub.readBytes(Int(len)), as: UTF8.self)
                case (2, 5): score = try sub.readFloat()
                case (3, 0):
                    // sentencepiece's Type enum: 1 normal … 6 byte. Anything else (a corrupt
                    // varint can be any 64-bit value) is an error, not a trap in Int(_:).
                    let t = try varint(&sub)
                    guard (1...6).contains(t) else { throw fail("piece \(pieces.count) has type \(t) (expected 1 normal … 6 byte)") }
                    type = Int(t)
                default: try skip(k & 7, &sub)
                }
            }
            pieces.append(Piece(text: text, score: score, type: type))
        }
        guard !pieces.isEmpty else { throw fail("no pieces") }
        return pieces
    }

    /// A sentencepiece-style `tokenizer.json` from the model's pieces (BOS = the
    /// `<s>` control piece; unk = the unknown piece).
    public static func tokenizerJSON(path: String) throws -> JSON {
        let p = try load(path: path)
        let tokens = p.map(\.text)
        // sentencepiece types: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte.
        return TokenizerJSON.sentencePiece(tokens: tokens, scores: p.map(\.score), types: p.map(\.type),
                                           bos: tokens.firstIndex(of: "<s>"), eos: tokens.firstIndex(of: "</s>"),
                                           unk: p.firstIndex { $0.type == 2 })
    }
}
