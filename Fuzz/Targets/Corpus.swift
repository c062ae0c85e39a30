import Foundation
import LMCore
import LMFixtures
import LMFormats
import LMQuant
import LMShard

/// Seed corpora for every fuzz target, generated from the repo's fixtures (synthetic
/// models, the writers) and, when present, small real files from the shared data folder.
/// Run by scripts/fuzz.sh (`LMFUZZ_MAKE_CORPUS=DIR lmfuzz`); nothing generated is committed.
public enum Corpus {
    /// A tiny Llama model (hidden 8, one layer): seeds stay a few KB.
    public static var tinySpec: SyntheticModelSpec {
        var s = SyntheticModelSpec()
        s.hidden = 8; s.intermediate = 8; s.layers = 1; s.heads = 2; s.kvHeads = 1; s.headDim = 4; s.vocab = 260; s.maxPositions = 64
        s.dtype = .f16
        return s
    }

    /// Writes `dir/<target>/<seed>` for every target; `shared` is the shared data folder (optional).
    /// Returns the number of seeds per target.
    @discardableResult
    public static func write(to dir: String, shared: String?) throws -> [String: Int] {
        var counts: [String: Int] = [:]
        let fm = FileManager.default
        func put(_ target: String, _ name: String, _ bytes: [UInt8]) throws {
            try fm.createDirectory(atPath: dir + "/" + target, withIntermediateDirectories: true)
            try Data(bytes).write(to: URL(fileURLWithPath: dir + "/" + target + "/" + name))
            counts[target, default: 0] += 1
        }
        func read(_ p: String, max: Int = 1 << 16) -> [UInt8]? {
            guard let d = fm.contents(atPath: p) else { return nil }
            return Array(d.prefix(max))
        }
        let work = dir + "/.work"
        try? fm.removeItem(atPath: work)
        try fm.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? fm.removeItem(atPath: work) }

        // Synthetic HF folders: plain (f16), tied + biases (Qwen2, bf16), sharded (f32).
        var variants: [(String, SyntheticModelSpec)] = [("llama", tinySpec)]
        var q = tinySpec; q.tied = true; q.biases = true; q.dtype = .bf16; variants.append(("qwen2", q))
        var sh = tinySpec; sh.shards = 2; sh.dtype = .f32; variants.append(("sharded", sh))
        for (name, spec) in variants {
            let d = work + "/" + name
            try SyntheticModel.write(spec, to: d)
            try put("config", name + ".json", read(d + "/config.json")!)
            if spec.shards == 1 {
                try put("safetensors", name + ".safetensors", read(d + "/model.safetensors")!)
            } else {
                try put("st-index", name + ".index.json", read(d + "/model.safetensors.index.json")!)
            }
            try put("tokenizer", name + ".json", read(d + "/tokenizer.json")! + [0] + Array("Hello world, 1234 it's the end".utf8))
        }
        // The index target's own fixture (two shards): its exact index is a seed.
        var two = tinySpec; two.shards = 2
        try SyntheticModel.write(two, to: work + "/two")
        try put("st-index", "two.index.json", read(work + "/two/model.safetensors.index.json")!)
        // Integer and empty tensors, metadata.
        let ints = work + "/ints.safetensors"
        let w = try SafetensorsWriter(path: ints, entries: [.init(name: "i32", dtype: .i32, shape: [3]), .init(name: "u8", dtype: .u8, shape: [2, 2]),
                                                             .init(name: "i64", dtype: .i64, shape: [1]), .init(name: "empty", dtype: .f32, shape: [0, 4])],
                                      metadata: [("format", "pt"), ("note", "fuzz seed")])
        try [UInt8](repeating: 1, count: 12).withUnsafeBytes { try w.write($0) }
        try [UInt8](repeating: 2, count: 4).withUnsafeBytes { try w.write($0) }
        try [UInt8](repeating: 3, count: 8).withUnsafeBytes { try w.write($0) }
        try [UInt8]().withUnsafeBytes { try w.write($0) }
        try w.commit()
        try put("safetensors", "ints.safetensors", read(ints)!)

        // Configs: the variants the parser branches on.
        let extraConfigs = [
            #"{"architectures":["MistralForCausalLM"],"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,"sliding_window":4096,"max_position_embeddings":2048,"rope_theta":1e6,"eos_token_id":[1,2],"hidden_act":"silu"}"#,
            #"{"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"head_dim":32,"vocab_size":100,"rope_scaling":{"rope_type":"default","rope_theta":500000},"tie_word_embeddings":true,"attention_bias":true,"mlp_bias":false,"bos_token_id":1,"eos_token_id":2,"rms_norm_eps":1e-5}"#,
            #"{"architectures":["Qwen2ForCausalLM"],"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":null,"vocab_size":100,"use_sliding_window":false,"sliding_window":32,"rope_parameters":{"type":"default"}}"#,
        ]
        for (i, c) in extraConfigs.enumerated() { try put("config", "extra\(i).json", Array(c.utf8)) }

        // A minimal sentencepiece-style tokenizer.json with added tokens and string merges.
        let sp = TokenizerJSON.sentencePiece(tokens: ["<unk>", "<s>", "</s>", "▁", "a", "b", "ab", "▁ab", "<0x41>", "<0xC3>", "<0xA9>"],
                                             scores: [0, 0, 0, -1, -2, -3, -1.5, -0.5, 0, 0, 0], types: [2, 3, 3, 1, 1, 1, 1, 1, 6, 6, 6],
                                             bos: 1, eos: 2, unk: 0)
        try put("tokenizer", "sp-small.json", Array(sp.serialized().utf8) + [0] + Array("ab abba Aé <s>x".utf8))

        // GGUF: a complete tiny llama (F32), plus quantized tensors and both tokenizer models.
        try put("gguf", "llama-f32.gguf", GGUFSeed.llama(tokenizer: nil))
        try put("gguf", "llama-spm.gguf", GGUFSeed.llama(tokenizer: "llama"))
        try put("gguf", "qwen2-bpe.gguf", GGUFSeed.llama(tokenizer: "gpt2", arch: "qwen2"))
        try put("gguf", "blocks.gguf", GGUFSeed.blocks())

        // llama2.c: a tiny complete checkpoint (shared and separate classifier) and the tokenizer.bin.
        try put("llama2c", "tiny-shared.bin", llama2cCheckpoint(vocab: 8, shared: true))
        try put("llama2c", "tiny-cls.bin", llama2cCheckpoint(vocab: -8, shared: false))
        try put("llama2c-tok", "tiny.bin", [8, 0] + llama2cTokenizer(count: 8))

        // sentencepiece: a handmade ModelProto (pieces with all three fields, plus skipped fields).
        try put("sentencepiece", "small.model", sentencePieceModel())

        // .lmpk: the tiny model in five schemes.
        for scheme in ["f16", "int8", "int4-g32", "int3-g32", "int2-g64"] {
            let out = work + "/m-\(scheme).lmpk"
            var r = Recipe(defaultScheme: try QuantScheme(parsing: scheme))
            r.embeddingScheme = try QuantScheme(parsing: scheme)
            _ = try Quantizer.run(model: ModelSource.open(work + "/llama"), recipe: r, overrideStrings: [], output: out, provenance: .object([]))
            try put("lmpk", scheme + ".lmpk", read(out, max: 1 << 20)!)
        }
        // A tensor-parallel rank file (.lmpk version 2: split ranges, tensor_parallel) and its
        // manifest: the int4 model as a one-rank sharding (it has a single KV head), vocab-parallel.
        let src = try LMPKFile(path: work + "/m-int4-g32.lmpk")
        _ = try Sharder.write(plan: try ShardPlan(source: src, tp: 1, vocabParallel: true), source: src, output: work + "/tp1")
        try put("lmpk", "rank-0-of-1.lmpk", read(work + "/tp1/" + ShardManifest.rankFileName(0, of: 1), max: 1 << 20)!)
        try put("shard-manifest", "tp1.json", read(work + "/tp1/" + ShardManifest.fileName)!)

        // Gate files: the project's own, and one exercising recipes and every limit.
        let repoGates = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path + "/gates"
        for f in (try? fm.contentsOfDirectory(atPath: repoGates)) ?? [] where f.hasSuffix(".json") {
            if let b = read(repoGates + "/" + f) { try put("gate", f, b) }
        }
        let gate = #"{"version":1,"threads":1,"cache_dir":"cache","suites":[{"name":"s","data":{"text":"t.txt","sha256":"AB","protocol":"documents","ctx":16,"chunks":2,"stride":8,"separator":"\n\n"},"baseline":{"model":"m"},"candidates":[{"name":"a","recipe":{"source":"m","scheme":"int4","group_size":64,"clip":"mse","overrides":["lm_head=int8"],"kv_cache":"k=int8,v=int4,block=16"},"limits":{"ppl_ratio_max":1.1,"ppl_increase_max":0.5,"bpb_max":1,"mean_kl_max":0.1,"top1_min":0.9,"prefill_speed_ratio_min":0.5,"decode_speed_ratio_min":0.5},"justification":"x"},{"name":"b","model":"${HOME}/x.lmpk","limits":{"top1_min":0.5}}]}]}"#
        try put("gate", "full.json", Array(gate.utf8))

        // Small real files from the shared data folder, when present.
        if let shared {
            let s = shared + "/models/stories260k"
            if let b = read(s + "/config.json") { try put("config", "stories260k.json", b) }
            if let b = read(s + "/tokenizer.json") { try put("tokenizer", "stories260k.json", b + [0] + Array("Once upon a time, there was a little dog.".utf8)) }
            if let b = read(s + "/tokenizer.model") { try put("sentencepiece", "stories260k.model", b) }
            if let b = read(s + "/original/tok512.bin") { try put("llama2c-tok", "tok512.bin", [0, 2] + b) }
            if let b = read(s + "/original/stories260K.bin", max: 4096) { try put("llama2c", "stories260k-truncated.bin", b) }
            // The real safetensors header (weights cut to a few KB).
            if let b = read(s + "/model.safetensors", max: 8192) { try put("safetensors", "stories260k-truncated.safetensors", b) }
            if let b = read(shared + "/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf", max: 8192) {
                try put("gguf", "smollm2-truncated.gguf", b)
            }
        }
        return counts
    }

    static func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

    /// A llama2.c checkpoint: dim 8, hidden 16, 1 layer, 2 heads, 2 KV heads, `vocab` (negative = separate classifier), seq 4.
    static func llama2cCheckpoint(vocab: Int32, shared: Bool) -> [UInt8] {
        let (dim, hidden, L, seq) = (8, 16, 1, 4)
        let V = Int(abs(vocab)), hd = dim / 2
        var b: [UInt8] = [Int32(dim), Int32(hidden), Int32(L), 2, 2, vocab, Int32(seq)].flatMap { le($0) }
        var n = V * dim + L * dim + 4 * L * dim * dim + L * dim + 3 * L * hidden * dim + dim + seq * hd
        if !shared { n += V * dim }
        for i in 0..<n { b += le(Float(sin(Double(i))).bitPattern) }
        return b
    }

    /// llama2.c `tokenizer.bin` with `count` tokens.
    static func llama2cTokenizer(count: Int) -> [UInt8] {
        let words = ["<unk>", "\n<s>\n", "\n</s>\n", "<0x41>", " a", "b", " ab", "ba"]
        var b = le(Int32(8))
        for i in 0..<count {
            let w = Array(words[i % words.count].utf8)
            b += le(Float(-Double(i)).bitPattern) + le(Int32(w.count)) + w
        }
        return b
    }

    /// A sentencepiece ModelProto: pieces (text, score, type) and a skipped trainer spec.
    static func sentencePieceModel() -> [UInt8] {
        func varint(_ v: UInt64) -> [UInt8] { var v = v, o: [UInt8] = []; while v >= 0x80 { o.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }; return o + [UInt8(v)] }
        func piece(_ t: String, _ s: Float, _ type: UInt64) -> [UInt8] {
            let text = Array(t.utf8)
            let body = [0x0A] + varint(UInt64(text.count)) + text + [0x15] + le(s.bitPattern) + [0x18] + varint(type)
            return [0x0A] + varint(UInt64(body.count)) + body
        }
        var b: [UInt8] = []
        for (i, (t, ty)) in [("<unk>", 2), ("<s>", 3), ("</s>", 3), ("<0x41>", 6), ("▁", 1), ("a", 1), ("b", 1), ("▁a", 1), ("ab", 1)].enumerated() {
            b += piece(t, -Float(i), UInt64(ty))
        }
        b += [0x12, 0x04, 0x08, 0x01, 0x10, 0x02] // field 2 (trainer spec), skipped
        b += [0x19] + le(UInt64(7))             // fixed64, skipped
        return b
    }
}

/// GGUF seed files (the layout of ggml's gguf.c, v3).
enum GGUFSeed {
    static func u32(_ v: UInt32) -> [UInt8] { Corpus.le(v) }
    static func u64(_ v: UInt64) -> [UInt8] { Corpus.le(v) }
    static func str(_ s: String) -> [UInt8] { u64(UInt64(s.utf8.count)) + Array(s.utf8) }

    static func file(metadata: [(String, UInt32, [UInt8])], tensors: [(String, [Int], UInt32, [UInt8])]) -> [UInt8] {
        var b: [UInt8] = Array("GGUF".utf8) + u32(3) + u64(UInt64(tensors.count)) + u64(UInt64(metadata.count))
        for (k, t, v) in metadata { b += str(k) + u32(t) + v }
        var off = 0
        for (n, dims, type, data) in tensors {
            b += str(n) + u32(UInt32(dims.count))
            for d in dims { b += u64(UInt64(d)) }
            b += u32(type) + u64(UInt64(off))
            off += (data.count + 31) / 32 * 32
        }
        while b.count % 32 != 0 { b.append(0) }
        for (_, _, _, data) in tensors {
            b += data
            while b.count % 32 != 0 { b.append(0) }
        }
        return b
    }

    static func strings(_ a: [String]) -> [UInt8] { u32(8) + u64(UInt64(a.count)) + a.flatMap { str($0) } }

    /// hidden 8, 2 heads, 1 layer, FFN 16, vocab 4 (F32).
    static func llama(tokenizer: String?, arch: String = "llama") -> [UInt8] {
        var meta: [(String, UInt32, [UInt8])] = [
            ("general.architecture", 8, str(arch)), ("\(arch).embedding_length", 4, u32(8)), ("\(arch).attention.head_count", 4, u32(2)),
            ("\(arch).attention.head_count_kv", 4, u32(2)), ("\(arch).block_count", 4, u32(1)), ("\(arch).feed_forward_length", 4, u32(16)),
            ("\(arch).context_length", 4, u32(64)), ("\(arch).rope.freq_base", 6, u32(Float(10000).bitPattern)),
            ("\(arch).attention.layer_norm_rms_epsilon", 6, u32(Float(1e-5).bitPattern)), ("general.alignment", 4, u32(32)),
        ]
        let toks = ["<unk>", "<s>", "</s>", "▁a"]
        switch tokenizer {
        case "llama":
            meta += [("tokenizer.ggml.model", 8, str("llama")), ("tokenizer.ggml.tokens", 9, strings(toks)),
                     ("tokenizer.ggml.scores", 9, u32(6) + u64(4) + [0, -1, -2, -3].flatMap { u32(Float($0).bitPattern) }),
                     ("tokenizer.ggml.token_type", 9, u32(5) + u64(4) + [2, 3, 3, 1].flatMap { u32(UInt32($0)) }),
                     ("tokenizer.ggml.bos_token_id", 4, u32(1)), ("tokenizer.ggml.eos_token_id", 4, u32(2)), ("tokenizer.ggml.unknown_token_id", 4, u32(0)),
                     ("tokenizer.ggml.add_bos_token", 7, [1])]
        case "gpt2":
            meta += [("tokenizer.ggml.model", 8, str("gpt2")), ("tokenizer.ggml.pre", 8, str("smollm")), ("tokenizer.ggml.tokens", 9, strings(["a", "b", "ab", "<|endoftext|>"])),
                     ("tokenizer.ggml.merges", 9, strings(["a b"])), ("tokenizer.ggml.token_type", 9, u32(5) + u64(4) + [1, 1, 1, 3].flatMap { u32(UInt32($0)) }),
                     ("tokenizer.ggml.bos_token_id", 4, u32(3)), ("tokenizer.ggml.add_bos_token", 7, [0])]
        default: break
        }
        func f32(_ dims: [Int]) -> [UInt8] { (0..<dims.reduce(1, *)).flatMap { u32(Float(sin(Double($0))).bitPattern) } }
        var ts: [(String, [Int])] = [("token_embd.weight", [8, 4]), ("blk.0.attn_norm.weight", [8]), ("blk.0.attn_q.weight", [8, 8]),
                                     ("blk.0.attn_k.weight", [8, 8]), ("blk.0.attn_v.weight", [8, 8]), ("blk.0.attn_output.weight", [8, 8]),
                                     ("blk.0.ffn_norm.weight", [8]), ("blk.0.ffn_gate.weight", [8, 16]), ("blk.0.ffn_up.weight", [8, 16]),
                                     ("blk.0.ffn_down.weight", [16, 8]), ("output_norm.weight", [8])]
        if arch == "qwen2" { ts += [("blk.0.attn_q.bias", [8]), ("blk.0.attn_k.bias", [8]), ("blk.0.attn_v.bias", [8]), ("output.weight", [8, 4])] }
        return file(metadata: meta, tensors: ts.map { ($0.0, $0.1, 0, f32($0.1)) })
    }

    /// One tensor of each block type, plus nested-array and every scalar metadata type.
    static func blocks() -> [UInt8] {
        let meta: [(String, UInt32, [UInt8])] = [
            ("u8", 0, [1]), ("i8", 1, [0xFF]), ("u16", 2, [1, 0]), ("i16", 3, [0xFF, 0xFF]), ("u32", 4, u32(7)), ("i32", 5, u32(0xFFFF_FFFF)),
            ("f32", 6, u32(Float(0.5).bitPattern)), ("bool", 7, [1]), ("str", 8, str("x")), ("u64", 10, u64(9)), ("i64", 11, u64(UInt64.max)),
            ("f64", 12, u64(Double(0.25).bitPattern)), ("nested", 9, u32(9) + u64(1) + u32(4) + u64(2) + u32(1) + u32(2)),
        ]
        func bytes(_ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) } }
        let ts: [(String, [Int], UInt32, [UInt8])] = [
            ("f16", [4], 1, bytes(8)), ("bf16", [4], 30, bytes(8)), ("q4_0", [32], 2, bytes(18)), ("q4_1", [32], 3, bytes(20)),
            ("q8_0", [32, 2], 8, bytes(68)), ("q4_K", [256], 12, bytes(144)), ("q6_K", [256], 14, bytes(210)),
        ]
        return file(metadata: meta, tensors: ts)
    }
}
