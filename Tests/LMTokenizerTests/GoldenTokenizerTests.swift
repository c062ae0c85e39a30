import Foundation
import LMCore
import LMFormats
import LMTokenizer
import Testing

@Suite("Tokenizer golden tests (shared data)")
struct GoldenTokenizerTests {
    @Test("stories260K: valid100_ids reproduced exactly, and decoding round-trips")
    func stories260kValid100() throws {
        guard let root = sharedRoot("stories260K tokenizer") else { return }
        let tok = try Tokenizer(path: root + "/models/stories260k")
        let ref = try SafetensorsFile(path: root + "/reference/stories260k/reference.safetensors")
        let ids = try ref["valid100_ids"]!.toInts()
        let offs = try ref["valid100_doc_offsets"]!.toInts()
        let text = try String(contentsOfFile: root + "/text/tinystories_v2_valid_first100.txt", encoding: .utf8)
        let docs = TextDocuments.split(text, separator: "<|endoftext|>")
        #expect(docs.count == 100)
        var mismatches = 0
        for (k, d) in docs.enumerated() {
            let got = tok.encode(d)
            let want = Array(ids[offs[k]..<offs[k + 1]])
            if got != want {
                mismatches += 1
                if mismatches <= 3 { Issue.record("story \(k): \(got.count) vs \(want.count) tokens; first diff at \((0..<min(got.count, want.count)).first { got[$0] != want[$0] } ?? -1)") }
            }
            #expect(tok.decode(got) == d, "story \(k) does not round-trip")
        }
        #expect(mismatches == 0)
    }
}
