import Foundation
import LMCore
import LMFormats
import LMTokenizer
import LMTestSupport
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

@Suite("Tokenizer golden tests, imported tokenizers (shared data)")
struct ImportedTokenizerTests {
    @Test("SmolLM2 (tokenizer from GGUF): all 303,415 wiki_test_ids exactly; round-trip; speed")
    func smolWiki() throws {
        guard let root = sharedRoot("SmolLM2 wiki tokenization") else { return }
        let g = try GGUFFile(path: root + "/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
        let imported = try GGUFImporter.load(g)
        let tok = try Tokenizer(json: imported.tokenizer!, source: "gguf")
        #expect(tok.bosId == nil, "SmolLM2 adds no BOS")
        let want = try SafetensorsFile(path: root + "/reference/smollm2-135m/reference.safetensors")["wiki_test_ids"]!.toInts()
        let text = try String(contentsOfFile: root + "/text/wiki.test.raw", encoding: .utf8)
        let t0 = Date()
        let got = tok.encode(text)
        let secs = Date().timeIntervalSince(t0)
        print("wiki.test.raw tokenized in \(String(format: "%.2f", secs)) s (\(got.count) tokens)")
        #expect(got.count == want.count)
        let firstDiff = (0..<min(got.count, want.count)).first { got[$0] != want[$0] }
        #expect(firstDiff == nil, "first difference at token \(firstDiff ?? -1)")
        #expect(tok.decode(got) == text)
        #expect(secs < 2.0, "tokenizing wiki.test.raw took \(secs) s")
    }

    @Test("llama2.c tok512.bin → tokenizer.json reproduces valid100_ids")
    func llama2cTokenizer() throws {
        guard let root = sharedRoot("llama2.c tokenizer import") else { return }
        let json = try Llama2cImporter.loadTokenizer(root + "/models/stories260k/original/tok512.bin", vocabSize: 512)
        let tok = try Tokenizer(json: json, source: "tok512.bin")
        let ref = try SafetensorsFile(path: root + "/reference/stories260k/reference.safetensors")
        let ids = try ref["valid100_ids"]!.toInts(), offs = try ref["valid100_doc_offsets"]!.toInts()
        let text = try String(contentsOfFile: root + "/text/tinystories_v2_valid_first100.txt", encoding: .utf8)
        for (k, d) in TextDocuments.split(text, separator: "<|endoftext|>").enumerated() {
            #expect(tok.encode(d) == Array(ids[offs[k]..<offs[k + 1]]), "story \(k)")
        }
    }
}

@Suite("sentencepiece .model import (shared data)")
struct SentencePieceModelTests {
    @Test("tok512.model → tokenizer.json equals tok512.bin's and reproduces valid100_ids")
    func model() throws {
        guard let root = sharedRoot("sentencepiece .model import") else { return }
        let fromModel = try SentencePieceModel.tokenizerJSON(path: root + "/models/stories260k/original/tok512.model")
        let fromBin = try Llama2cImporter.loadTokenizer(root + "/models/stories260k/original/tok512.bin", vocabSize: 512)
        #expect(fromModel["model"]?["vocab"] == fromBin["model"]?["vocab"])
        #expect(fromModel["model"]?["merges"] == fromBin["model"]?["merges"])
        let tok = try Tokenizer(json: fromModel, source: "tok512.model")
        let ref = try SafetensorsFile(path: root + "/reference/stories260k/reference.safetensors")
        let ids = try ref["valid100_ids"]!.toInts(), offs = try ref["valid100_doc_offsets"]!.toInts()
        let text = try String(contentsOfFile: root + "/text/tinystories_v2_valid_first100.txt", encoding: .utf8)
        for (k, d) in TextDocuments.split(text, separator: "<|endoftext|>").enumerated() {
            #expect(tok.encode(d) == Array(ids[offs[k]..<offs[k + 1]]), "story \(k)")
        }
        #expect(throws: (any Error).self) { try SentencePieceModel.load(path: root + "/text/wiki.test.raw") }
    }
}

@Suite("tokenizer.json errors")
struct TokenizerErrorTests {
    @Test("unsupported model type / pre-tokenizer / missing vocab are errors naming the file")
    func errors() throws {
        let cases: [(String, String)] = [
            (#"{"model": {"type": "Unigram", "vocab": []}}"#, "Unigram"),
            (#"{"pre_tokenizer": {"type": "Whitespace"}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}"#, "Whitespace"),
            (#"{"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE", "merges": []}}"#, "vocab"),
            (#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}"#, "family"),
        ]
        for (text, word) in cases {
            do {
                _ = try Tokenizer(json: JSON.parse(Array(text.utf8), source: "t.json"), source: "t.json")
                Issue.record("accepted: \(text)")
            } catch {
                #expect("\(error)".contains("t.json") && "\(error)".contains(word), "\(error)")
            }
        }
    }
}

