import Foundation
import LMCore
import LMFixtures
import LMFormats
import LMQuant
import LMTestSupport
import LMTokenizer
import Testing

@Suite("lmconvert export --format gguf", .serialized)
struct ExportGGUFTests {
    /// Checks every tensor of `gguf` against the reference decoding of `lmpk`: the ggml type
    /// `types` gives for its scheme, values equal (q/k rows un-permuted), and the same config.
    static func checkExact(_ gguf: String, _ lmpk: String, types: [String: String], requantized: Set<String> = []) throws {
        let g = try GGUFFile(path: gguf), src = try LMPKFile(path: lmpk)
        #expect(g.tensors.count == src.tensors.count)
        let imported = try GGUFImporter.load(g)
        #expect(imported.config.hiddenSize == src.config.hiddenSize && imported.config.numKVHeads == src.config.numKVHeads
                && imported.config.headDim == src.config.headDim && imported.config.ropeTheta == src.config.ropeTheta
                && imported.config.tieWordEmbeddings == src.config.tieWordEmbeddings && imported.config.vocabSize == src.config.vocabSize)
        for p in imported.tensors {
            let t = try #require(src[p.name])
            let ref = RoundToNearest.dequantize(scheme: t.scheme, rows: t.rows, cols: t.cols, sections: t.sections)
            let got = try p.produce()
            #expect(got == ref, "\(p.name) (\(t.scheme)): the GGUF's values differ from the .lmpk's reference decoding")
        }
        for gt in g.tensors {
            let hf = imported.tensors.map(\.name).first { GGUFExport.ggufName($0) == gt.name }
            let scheme = try #require(hf.flatMap { src[$0] }).scheme
            let want = requantized.contains(hf!) ? "F32" : (types[scheme.description] ?? "?")
            #expect(gt.type.name == want, "\(gt.name) (\(scheme)): \(gt.type.name), expected \(want)")
        }
        #expect(g.metadata["lmkit.provenance"]?.string?.contains("\"build\"") == true)
    }

    @Test("every scheme with a ggml twin exports exactly: int4s-gG → Q4_0, int4-gG → Q4_1, int8-gG → Q8_0 (G = 32, 64, 128), floats as themselves, compressed 2:4 int4s/int8/f16 scattered; the same bytes twice; the tokenizer re-imports to the same ids")
    func exact() throws {
        let (dir, text) = try PruneCLITests.fixture("gguf")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let types = ["int4s-g32": "Q4_0", "int4s-g64": "Q4_0", "int4-g32": "Q4_1", "int4-g64": "Q4_1", "int8-g32": "Q8_0", "int8-g128": "Q8_0",
                     "f32": "F32", "f16": "F16", "bf16": "BF16", "int4s-g32+2:4": "Q4_0", "int8-g32+2:4": "Q8_0", "f16+2:4": "F16", "int4s-g128+4:8": "Q4_0"]
        let builds: [(String, [String])] = [
            ("a", ["quantize", "--scheme", "int4s-g32", "--override", "embed_tokens|lm_head=int8-g32", "--override", "down_proj=int4-g32"]),
            ("b", ["quantize", "--scheme", "int4-g64", "--override", "embed_tokens|lm_head=f16", "--override", "v_proj=int4s-g64"]),
            ("c", ["quantize", "--scheme", "int8-g128", "--override", "embed_tokens|lm_head=bf16", "--override", "o_proj=f32"]),
            ("d", ["prune", "--method", "magnitude", "--pattern", "2:4", "--scheme", "int4s-g32", "--override", "embed_tokens|lm_head=int8-g32"]),
            ("e", ["prune", "--method", "magnitude", "--pattern", "2:4", "--scheme", "int8-g32", "--override", "embed_tokens|lm_head=f16"]),
            ("f", ["prune", "--method", "magnitude", "--pattern", "2:4", "--scheme", "f16", "--override", "embed_tokens|lm_head=f32"]),
            ("g", ["prune", "--method", "magnitude", "--pattern", "4:8", "--scheme", "int4s-g128", "--override", "embed_tokens|lm_head=int8-g32"]),
        ]
        let original = try Tokenizer(json: JSON.parse(file: dir + "/m/tokenizer.json"), source: "fixture")
        let sample = try String(contentsOfFile: text, encoding: .utf8)
        for (name, args) in builds {
            let lmpk = dir + "/\(name).lmpk", out = dir + "/\(name).gguf"
            let b = try run("lmconvert", [args[0], "-i", dir + "/m", "-o", lmpk] + args.dropFirst())
            #expect(b.status == 0, "\(name): \(b.stderr)")
            let r = try run("lmconvert", ["export", "-i", lmpk, "-o", out, "--format", "gguf", "--json"])
            #expect(r.status == 0, "\(name): \(r.stderr)")
            let j = try JSON.parse(Array(r.stdout.utf8), source: "export")
            #expect(j["tensors"]?.array?.allSatisfy { $0["exact"]?.bool == true } == true)
            try Self.checkExact(out, lmpk, types: types)
            // Deterministic bytes.
            #expect(try run("lmconvert", ["export", "-i", lmpk, "-o", dir + "/again.gguf", "--format", "gguf", "--force"]).status == 0)
            #expect(FileManager.default.contents(atPath: out) == FileManager.default.contents(atPath: dir + "/again.gguf"), "\(name): two exports differ")
            let tok = try Tokenizer(json: #require(GGUFImporter.load(GGUFFile(path: out)).tokenizer), source: out)
            #expect(tok.encode(sample) == original.encode(sample), "\(name): the re-imported tokenizer encodes differently")
        }
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp-") }
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    @Test("qwen2 (q/k/v biases, tied embeddings): written unpermuted with its biases, read back exactly")
    func qwen2() throws {
        let dir = scratch("gguf-qwen2")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var spec = SyntheticModelSpec(); spec.hidden = 64; spec.intermediate = 96; spec.heads = 4; spec.kvHeads = 2; spec.headDim = 16
        spec.biases = true; spec.tied = true
        try SyntheticModel.write(spec, to: dir + "/m")
        #expect(try run("lmconvert", ["quantize", "-i", dir + "/m", "-o", dir + "/q.lmpk", "--scheme", "int8-g32", "--override", "embed_tokens=f16"]).status == 0)
        let r = try run("lmconvert", ["export", "-i", dir + "/q.lmpk", "-o", dir + "/q.gguf", "--format", "gguf"])
        #expect(r.status == 0, "\(r.stderr)")
        try Self.checkExact(dir + "/q.gguf", dir + "/q.lmpk", types: ["int8-g32": "Q8_0", "f16": "F16", "f32": "F32"])
        let g = try GGUFFile(path: dir + "/q.gguf")
        #expect(g.metadata["general.architecture"]?.string == "qwen2" && g["blk.1.attn_k.bias"] != nil && g["output.weight"] == nil)
    }

    @Test("no exact twin: refused by name before anything is written; --requantize-to converts (f32 exactly, q8_0 / q4_0 within their rounding, pruned zeros kept), refuses q4_1 for pruned tensors and unaligned columns; a rank file, an existing output and an unsupported tokenizer are refused")
    func errors() throws {
        let (dir, _) = try PruneCLITests.fixture("gguf-err")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try run("lmconvert", ["quantize", "-i", dir + "/m", "-o", dir + "/q.lmpk", "--scheme", "int4-g32"]).status == 0)
        let e = try run("lmconvert", ["export", "-i", dir + "/q.lmpk", "-o", dir + "/q.gguf", "--format", "gguf"])
        #expect(e.status != 0 && e.stderr.contains("model.embed_tokens.weight") && e.stderr.contains("int8") && e.stderr.contains("--requantize-to"), "\(e.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/q.gguf"))
        // f32: exact values.
        let f = try run("lmconvert", ["export", "-i", dir + "/q.lmpk", "-o", dir + "/q.gguf", "--format", "gguf", "--requantize-to", "f32"])
        #expect(f.status == 0, "\(f.stderr)")
        try Self.checkExact(dir + "/q.gguf", dir + "/q.lmpk", types: ["int4-g32": "Q4_1", "f32": "F32"], requantized: ["model.embed_tokens.weight", "lm_head.weight"])
        #expect(try GGUFFile(path: dir + "/q.gguf").metadata["lmkit.requantized"]?.array?.first?.string?.contains("model.embed_tokens.weight") == true)
        // q8_0: within Q8_0's rounding of the decoded values.
        let q = try run("lmconvert", ["export", "-i", dir + "/q.lmpk", "-o", dir + "/q8.gguf", "--format", "gguf", "--requantize-to", "q8_0"])
        #expect(q.status == 0, "\(q.stderr)")
        let g8 = try GGUFFile(path: dir + "/q8.gguf"), src = try LMPKFile(path: dir + "/q.lmpk")
        let emb = try #require(g8["token_embd.weight"]), t = try #require(src["model.embed_tokens.weight"])
        #expect(emb.type == .q8_0)
        let ref = RoundToNearest.dequantize(scheme: t.scheme, rows: t.rows, cols: t.cols, sections: t.sections), got = emb.dequantize()
        for b in 0..<(ref.count / 32) {
            let blk = ref[(32 * b)..<(32 * b + 32)], amax = blk.map(abs).max()!
            let err = zip(blk, got[(32 * b)..<(32 * b + 32)]).map { abs($0 - $1) }.max()!
            #expect(err <= amax / 127 * 0.5 * 1.01 + 1e-7, "block \(b): error \(err) beyond Q8_0's half step \(amax / 254)")
        }
        // Pruned: int4-g32+2:4 has no Q4_1 twin (pruned weights would not be 0); q4_1 is refused, q4_0 keeps the zeros.
        #expect(try run("lmconvert", ["prune", "-i", dir + "/m", "-o", dir + "/p.lmpk", "--method", "magnitude", "--pattern", "2:4", "--scheme", "int4-g32"]).status == 0)
        let p = try run("lmconvert", ["export", "-i", dir + "/p.lmpk", "-o", dir + "/p.gguf", "--format", "gguf"])
        #expect(p.status != 0 && p.stderr.contains("Q4_1") && p.stderr.contains("int4-g32+2:4"), "\(p.stderr)")
        let p1 = try run("lmconvert", ["export", "-i", dir + "/p.lmpk", "-o", dir + "/p.gguf", "--format", "gguf", "--requantize-to", "q4_1"])
        #expect(p1.status != 0 && p1.stderr.contains("pruned"), "\(p1.stderr)")
        let p0 = try run("lmconvert", ["export", "-i", dir + "/p.lmpk", "-o", dir + "/p.gguf", "--format", "gguf", "--requantize-to", "q4_0"])
        #expect(p0.status == 0, "\(p0.stderr)")
        let gp = try GGUFFile(path: dir + "/p.gguf"), ps = try LMPKFile(path: dir + "/p.lmpk")
        let down = try #require(gp["blk.0.ffn_down.weight"]), sd = try #require(ps["model.layers.0.mlp.down_proj.weight"])
        let pref = RoundToNearest.dequantize(scheme: sd.scheme, rows: sd.rows, cols: sd.cols, sections: sd.sections)
        #expect(down.type == .q4_0 && zip(pref, down.dequantize()).allSatisfy { $0 != 0 || $1 == 0 }, "a pruned weight is non-zero after --requantize-to q4_0")
        // An existing output without --force is untouched; --requantize-to is for gguf only.
        let x = try run("lmconvert", ["export", "-i", dir + "/q.lmpk", "-o", dir + "/q.gguf", "--format", "gguf", "--requantize-to", "f16"])
        #expect(x.status != 0 && x.stderr.contains("--force"), "\(x.stderr)")
        let st = try run("lmconvert", ["export", "-i", dir + "/q.lmpk", "-o", dir + "/hf", "--format", "safetensors", "--requantize-to", "f16"])
        #expect(st.status != 0 && st.stderr.contains("gguf"), "\(st.stderr)")
        // A rank file names its source.
        #expect(try run("lmconvert", ["shard", "--tp", "2", "-i", dir + "/q.lmpk", "-o", dir + "/tp2"]).status == 0)
        let s = try run("lmconvert", ["export", "-i", dir + "/tp2/rank-0-of-2.lmpk", "-o", dir + "/r.gguf", "--format", "gguf", "--requantize-to", "f32"])
        #expect(s.status != 0 && s.stderr.contains("rank file") && s.stderr.contains("q.lmpk"), "\(s.stderr)")
        // A tokenizer lmkit runs but llama.cpp would not run the same way (ByteLevel add_prefix_space).
        var tj = try JSON.parse(file: dir + "/m/tokenizer.json").serialized()
        tj = tj.replacingOccurrences(of: "\"add_prefix_space\":false", with: "\"add_prefix_space\":true")
        #expect(tj.contains("\"add_prefix_space\":true"))
        try tj.write(toFile: dir + "/m/tokenizer.json", atomically: true, encoding: .utf8)
        #expect(try run("lmconvert", ["quantize", "-i", dir + "/m", "-o", dir + "/t.lmpk", "--scheme", "f16"]).status == 0)
        let k = try run("lmconvert", ["export", "-i", dir + "/t.lmpk", "-o", dir + "/t.gguf", "--format", "gguf"])
        #expect(k.status != 0 && k.stderr.contains("tokenizer") && k.stderr.contains("add_prefix_space"), "\(k.stderr)")
        for out in ["r.gguf", "t.gguf"] { #expect(!FileManager.default.fileExists(atPath: dir + "/" + out)) }
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp-") }
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    @Test("SmolLM2: the shipped Q4_1 GGUF → .lmpk int4-g32 (embedding int8-g32) → GGUF has the shipped file's tensors byte for byte and its tokenizer")
    func smolLM2SameBytes() throws {
        guard let root = sharedRoot("GGUF export of SmolLM2") else { return }
        let shipped = root + "/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
        let dir = scratch("gguf-smol")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let q = try run("lmconvert", ["quantize", "-i", shipped, "-o", dir + "/s.lmpk", "--scheme", "int4-g32", "--override", "embed_tokens|lm_head=int8-g32"])
        #expect(q.status == 0, "\(q.stderr)")
        let r = try run("lmconvert", ["export", "-i", dir + "/s.lmpk", "-o", dir + "/s.gguf", "--format", "gguf"])
        #expect(r.status == 0, "\(r.stderr)")
        let a = try GGUFFile(path: shipped), b = try GGUFFile(path: dir + "/s.gguf")
        #expect(a.tensors.count == b.tensors.count)
        for t in a.tensors {
            let u = try #require(b[t.name], "\(t.name) missing")
            #expect(u.type == t.type && u.dims == t.dims, "\(t.name): \(u.type.name) \(u.dims) vs shipped \(t.type.name) \(t.dims)")
            #expect(u.bytes.elementsEqual(t.bytes), "\(t.name): bytes differ from the shipped GGUF")
        }
        for key in ["tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.model", "tokenizer.ggml.pre",
                    "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "llama.rope.freq_base", "llama.context_length"] {
            #expect("\(a.metadata[key].map { "\($0)" } ?? "nil")" == "\(b.metadata[key].map { "\($0)" } ?? "nil")", "\(key) differs")
        }
    }

    @Test("stories260K: int4s-g32 → GGUF (--requantize-to f32 for the 172-column down_proj and the int8 embedding) → lmconvert import gives the .lmpk's perplexity")
    func storiesReimport() throws {
        guard let root = sharedRoot("GGUF export of stories260K") else { return }
        let dir = scratch("gguf-stories")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try run("lmconvert", ["quantize", "-i", root + "/models/stories260k", "-o", dir + "/s.lmpk", "--scheme", "int4s-g32"]).status == 0)
        let e = try run("lmconvert", ["export", "-i", dir + "/s.lmpk", "-o", dir + "/s.gguf", "--format", "gguf"])
        #expect(e.status != 0 && e.stderr.contains("6 tensors have") && e.stderr.contains("embed_tokens") && e.stderr.contains("down_proj.weight' and 4 more"), "\(e.stderr)")
        let r = try run("lmconvert", ["export", "-i", dir + "/s.lmpk", "-o", dir + "/s.gguf", "--format", "gguf", "--requantize-to", "f32"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try run("lmconvert", ["import", "-i", dir + "/s.gguf", "-o", dir + "/back", "--dtype", "f32"]).status == 0)
        let text = root + "/text/tinystories_v2_valid_first100.txt"
        var ppl: [Double] = []
        for m in [dir + "/s.lmpk", dir + "/back"] {
            let p = try run("lmeval", ["perplexity", "-m", m, "--text", text, "--protocol", "documents", "--ctx", "128", "--json", dir + "/p.json"])
            #expect(p.status == 0, "\(p.stderr)")
            ppl.append(try JSON.parse(file: dir + "/p.json")["perplexity"]?.double ?? .nan)
        }
        #expect(abs(ppl[0] - ppl[1]) <= 5e-5 * ppl[0], "perplexity .lmpk \(ppl[0]) vs re-imported GGUF \(ppl[1])")
    }
}
