import Foundation
import LMCore
import LMFormats
import LMFuzzTargets
import LMTokenizer
import Testing

/// Replays the minimized fuzz crashers (Fuzz/regressions/<target>/*) through the same
/// per-target functions the libFuzzer driver calls (scripts/fuzz.sh). Each must end in a
/// thrown error or a valid object; a regression traps or hangs this test.
/// A file named in `<target>/PENDING` (one name per line, then a note) is a known crash
/// in code whose fix is pending; it is skipped, and fuzzing still reports it.
@Suite("fuzz regressions and allocation caps")
struct FuzzRegressionTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fuzz/regressions").path

    @Test("every minimized crasher under Fuzz/regressions ends in an error or a valid object")
    func replay() throws {
        let fm = FileManager.default
        let folders = try fm.contentsOfDirectory(atPath: FuzzRegressionTests.root).filter { !$0.hasPrefix(".") && $0 != "README.md" }
        for f in folders { #expect(FuzzTargets.names.contains(f), "Fuzz/regressions/\(f) is not a fuzz target (\(FuzzTargets.names))") }
        var replayed = 0
        for t in FuzzTargets.names where folders.contains(t) {
            let dir = FuzzRegressionTests.root + "/" + t
            let pendingText = (try? String(contentsOfFile: dir + "/PENDING", encoding: .utf8)) ?? ""
            let pending = Set(pendingText.split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) })
            for f in try fm.contentsOfDirectory(atPath: dir).sorted() where !f.hasPrefix(".") && f != "PENDING" && f != "README.md" {
                if pending.contains(f) { print("skipped \(t)/\(f): listed in PENDING"); continue }
                let data = try #require(fm.contents(atPath: dir + "/" + f), "cannot read \(dir)/\(f)")
                _ = FuzzTargets.run(t, Array(data))
                replayed += 1
            }
        }
        #expect(replayed > 0, "no regression inputs found under \(FuzzRegressionTests.root)")
    }

    @Test("the fuzz seeds generate and every target accepts its own fixture")
    func seeds() throws {
        let dir = NSTemporaryDirectory() + "lmkit-fuzz-seeds-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let counts = try Corpus.write(to: dir, shared: nil)
        for t in FuzzTargets.names {
            let files = try FileManager.default.contentsOfDirectory(atPath: dir + "/" + t)
            #expect(counts[t, default: 0] > 0 && files.count == counts[t])
            let accepted = try files.filter { FuzzTargets.run(t, Array(try #require(FileManager.default.contents(atPath: dir + "/" + t + "/" + $0)))) }
            #expect(!accepted.isEmpty, "no seed of \(t) is accepted: the fuzzer would only see the first check fail")
        }
    }

    @Test("the sentencepiece type and GGUF byte-size crashers are errors naming the file and what is wrong")
    func readerErrors() throws {
        let sp = FuzzRegressionTests.root + "/sentencepiece/huge-piece-type"
        do { _ = try SentencePieceModel.load(path: sp); Issue.record("accepted") } catch {
            #expect("\(error)".contains(sp) && "\(error)".contains("piece 0 has type 18446744073709551615"), "\(error)")
        }
        let gg = FuzzRegressionTests.root + "/gguf/byte-size-overflow"
        do { _ = try GGUFFile(path: gg); Issue.record("accepted") } catch {
            #expect("\(error)".contains(gg) && "\(error)".contains("byte size overflows"), "\(error)")
        }
    }

    // MARK: caps on header fields that size allocations

    @Test("a token id beyond the vocabulary cap is an error naming the file and key, not a huge table")
    func tokenizerIdCap() throws {
        let j = try JSON.parse(Array(#"{"model":{"type":"BPE","vocab":{"a":4000000000000}},"pre_tokenizer":{"type":"ByteLevel"}}"#.utf8), source: "t.json")
        do { _ = try Tokenizer(json: j, source: "t.json"); Issue.record("accepted") } catch {
            #expect("\(error)".contains("t.json") && "\(error)".contains("model.vocab") && "\(error)".contains("4000000000000"), "\(error)")
        }
        let added = try JSON.parse(Array(#"{"model":{"type":"BPE","vocab":{"a":0}},"added_tokens":[{"id":9000000,"content":"x"}],"pre_tokenizer":{"type":"ByteLevel"}}"#.utf8), source: "t.json")
        #expect(throws: TokenizerError.self) { try Tokenizer(json: added, source: "t.json") }
    }

    @Test("an empty merge string and an empty added token are handled (error / ignored), not a trap or a hang")
    func tokenizerEmptyStrings() throws {
        let m = try JSON.parse(Array(#"{"model":{"type":"BPE","vocab":{"a":0},"merges":[""]},"pre_tokenizer":{"type":"ByteLevel"}}"#.utf8), source: "t.json")
        do { _ = try Tokenizer(json: m, source: "t.json"); Issue.record("accepted") } catch { #expect("\(error)".contains("merge ''"), "\(error)") }
        let a = try JSON.parse(Array(#"{"model":{"type":"BPE","vocab":{"a":0,"b":1}},"added_tokens":[{"id":2,"content":"bx"},{"id":3,"content":""}],"pre_tokenizer":{"type":"ByteLevel"}}"#.utf8), source: "t.json")
        let t = try Tokenizer(json: a, source: "t.json")
        #expect(t.encode("abab") == [0, 1, 0, 1])
    }

    @Test("config sizes beyond the supported maximum are errors naming the key")
    func configCaps() throws {
        for (key, value) in [("num_hidden_layers", "1000000000000"), ("num_attention_heads", "4000000000000"), ("vocab_size", "100000000000"), ("hidden_size", "9007199254740992")] {
            var o: [String: String] = ["hidden_size": "64", "intermediate_size": "128", "num_hidden_layers": "1", "num_attention_heads": "4", "vocab_size": "100"]
            o[key] = value
            let s = "{\"architectures\":[\"LlamaForCausalLM\"]," + o.map { "\"\($0.key)\":\($0.value)" }.joined(separator: ",") + "}"
            do { _ = try ModelConfig.parse(JSON.parse(Array(s.utf8), source: "config.json"), source: "config.json"); Issue.record("\(key) \(value) accepted") } catch {
                #expect("\(error)".contains("config.json") && "\(error)".contains(key) && "\(error)".contains("maximum"), "\(error)")
            }
        }
    }

    /// A structurally valid `.lmpk` prefix (header + empty tokenizer) with `tensors` as the table.
    func lmpk(tensors: String, path: String) throws {
        let config = ModelConfig(hiddenSize: 8, intermediateSize: 8, numLayers: 1, numHeads: 2, numKVHeads: 1, vocabSize: 4).toJSON().serialized()
        var h = Array("{\"format\":\"lmpk\",\"config\":\(config),\"tokenizer\":{\"offset\":4096,\"bytes\":0,\"crc32\":\"0\"},\"tensors\":\(tensors)}".utf8)
        let crc = h.withUnsafeBytes { crc32($0) }
        var b = Array("LMPK".utf8)
        withUnsafeBytes(of: UInt32(1).littleEndian) { b += $0 }
        withUnsafeBytes(of: UInt64(h.count).littleEndian) { b += $0 }
        withUnsafeBytes(of: crc.littleEndian) { b += $0 }
        b += [0, 0, 0, 0]
        b += h
        h = []
        b += [UInt8](repeating: 0, count: 4096 - b.count)
        try Data(b).write(to: URL(fileURLWithPath: path))
    }

    @Test(".lmpk: a shape the file cannot hold and a malformed scheme name are errors naming the tensor")
    func lmpkCaps() throws {
        let p = tempPath("lmpk-caps")
        defer { try? FileManager.default.removeItem(atPath: p) }
        for (table, want) in [(#"[{"name":"w","shape":[9223372036854775807],"scheme":"int4-g32","sections":[]}]"#, "more elements than a file of 4096 bytes"),
                              (#"[{"name":"w","shape":[1099511627776,1048576],"scheme":"f32","sections":[]}]"#, "more elements"),
                              (#"[{"name":"w","shape":[4],"scheme":"-g","sections":[]}]"#, "not a scheme name"),
                              (#"[{"name":"w","shape":[4],"scheme":"","sections":[]}]"#, "not a scheme name")] {
            try lmpk(tensors: table, path: p)
            do { _ = try LMPKFile(path: p); Issue.record("accepted: \(table)") } catch {
                #expect("\(error)".contains(p) && "\(error)".contains("'w'") && "\(error)".contains(want), "\(error)")
            }
        }
    }

    @Test("tokenizer.json builders ignore ids outside the token list instead of trapping")
    func builderIds() throws {
        let sp = TokenizerJSON.sentencePiece(tokens: ["a"], scores: [], types: nil, bos: 1, eos: 2, unk: 7)
        #expect(sp["post_processor"]?.isNull == true && sp["model"]?["unk_token"]?.isNull == true)
        let bl = TokenizerJSON.byteLevel(tokens: ["a"], types: nil, merges: [], bos: 5, addBOS: true, digits: false)
        #expect(bl["post_processor"]?["type"]?.string == "ByteLevel")
    }
}
