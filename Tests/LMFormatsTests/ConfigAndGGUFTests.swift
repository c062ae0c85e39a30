import Foundation
import LMCore
import LMFormats
import LMTestSupport
import Testing

@Suite("config.json")
struct ConfigTests {
    func parse(_ s: String) throws -> ModelConfig { try ModelConfig.parse(JSON.parse(Array(s.utf8), source: "config.json"), source: "config.json") }
    let base = #""hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 512"#

    @Test("Llama, Mistral, Qwen2 parse; rope theta from rope_parameters")
    func ok() throws {
        let c = try parse(#"{"architectures": ["LlamaForCausalLM"], "#+base+#", "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}, "tie_word_embeddings": true}"#)
        #expect(c.headDim == 8 && c.numKVHeads == 4 && c.ropeTheta == 100000 && c.tieWordEmbeddings)
        #expect(try parse(#"{"architectures": ["Qwen2ForCausalLM"], "#+base+#"}"#).attentionBias)
        _ = try parse(#"{"architectures": ["MistralForCausalLM"], "#+base+#", "sliding_window": null}"#)
    }

    @Test("unsupported architecture / rope scaling / bad values name what is supported")
    func errors() throws {
        do { _ = try parse(#"{"architectures": ["GPT2LMHeadModel"], "#+base+#"}"#); Issue.record("accepted GPT-2") } catch {
            #expect("\(error)".contains("GPT2LMHeadModel") && "\(error)".contains("LlamaForCausalLM"))
        }
        do { _ = try parse(#"{"architectures": ["LlamaForCausalLM"], "#+base+#", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}"#); Issue.record("accepted llama3 rope") } catch {
            #expect("\(error)".contains("llama3"))
        }
        #expect(throws: ModelError.self) { try parse(#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 64}"#) }
        #expect(throws: ModelError.self) { try parse(#"{"architectures": ["LlamaForCausalLM"], "#+base.replacingOccurrences(of: "\"num_key_value_heads\": 4", with: "\"num_key_value_heads\": 3")+#"}"#) }
        #expect(throws: ModelError.self) { try parse(#"{"architectures": ["LlamaForCausalLM"], "#+base+#", "hidden_act": "gelu"}"#) }
    }
}

/// Writes a minimal GGUF v3 file with the given tensors (already-encoded blocks).
func writeGGUF(path: String, metadata: [(String, UInt32, [UInt8])], tensors: [(String, [Int], UInt32, [UInt8])]) throws {
    var b: [UInt8] = Array("GGUF".utf8)
    func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { b += $0 } }
    func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { b += $0 } }
    func str(_ s: String) { u64(UInt64(s.utf8.count)); b += Array(s.utf8) }
    u32(3); u64(UInt64(tensors.count)); u64(UInt64(metadata.count))
    for (k, t, v) in metadata { str(k); u32(t); b += v }
    var off = 0
    for (n, dims, type, data) in tensors {
        str(n); u32(UInt32(dims.count)); for d in dims { u64(UInt64(d)) }; u32(type); u64(UInt64(off))
        off += (data.count + 31) / 32 * 32
    }
    while b.count % 32 != 0 { b.append(0) }
    for (_, _, _, data) in tensors { b += data; while b.count % 32 != 0 { b.append(0) } }
    try Data(b).write(to: URL(fileURLWithPath: path))
}

@Suite("GGUF reader and dequantizers")
struct GGUFTests {
    @Test("Q8_0, Q4_0, Q4_1 blocks dequantize by their formulas; F16 too")
    func blocks() throws {
        let p = tempPath("gguf")
        defer { try? FileManager.default.removeItem(atPath: p) }
        func h(_ f: Float) -> [UInt8] { withUnsafeBytes(of: floatToHalf(f).littleEndian) { Array($0) } }
        let q8: [UInt8] = h(0.5) + (0..<32).map { UInt8(bitPattern: Int8($0 - 16)) }
        let q40: [UInt8] = h(0.25) + (0..<16).map { UInt8($0) | UInt8(15 - $0) << 4 }
        let q41: [UInt8] = h(0.125) + h(-1) + (0..<16).map { UInt8($0) | UInt8($0 / 2) << 4 }
        let f16: [UInt8] = [1.5, -2, 0.25].flatMap { h($0) }
        try writeGGUF(path: p, metadata: [("general.alignment", 4, withUnsafeBytes(of: UInt32(32)) { Array($0) })],
                      tensors: [("q8", [32], 8, q8), ("q40", [32], 2, q40), ("q41", [32], 3, q41), ("f16", [3], 1, f16)])
        let g = try GGUFFile(path: p)
        #expect(g["q8"]!.dequantize() == (0..<32).map { Float($0 - 16) * 0.5 })
        let lo40: [Float] = (0..<16).map { Float($0 - 8) * 0.25 }
        let hi40: [Float] = (0..<16).map { Float(15 - $0 - 8) * 0.25 }
        #expect(g["q40"]!.dequantize() == lo40 + hi40)
        let lo41: [Float] = (0..<16).map { Float($0) * 0.125 - 1 }
        let hi41: [Float] = (0..<16).map { Float($0 / 2) * 0.125 - 1 }
        #expect(g["q41"]!.dequantize() == lo41 + hi41)
        #expect(g["f16"]!.dequantize() == [1.5, -2, 0.25])
    }

    @Test("truncated, bad magic, unsupported version or type → errors naming the file")
    func errors() throws {
        let p = tempPath("gguf-bad")
        defer { try? FileManager.default.removeItem(atPath: p) }
        try writeGGUF(path: p, metadata: [], tensors: [("w", [64], 8, [UInt8](repeating: 0, count: 68))])
        let full = try Data(contentsOf: URL(fileURLWithPath: p))
        try full.prefix(full.count - 40).write(to: URL(fileURLWithPath: p))
        do { _ = try GGUFFile(path: p); Issue.record("truncated accepted") } catch { #expect("\(error)".contains("'w'") && "\(error)".contains(p)) }
        try full.prefix(30).write(to: URL(fileURLWithPath: p))
        #expect(throws: (any Error).self) { try GGUFFile(path: p) }
        var bad = full; bad[0] = 0x58
        try bad.write(to: URL(fileURLWithPath: p))
        do { _ = try GGUFFile(path: p); Issue.record("bad magic accepted") } catch { #expect("\(error)".contains("magic")) }
        try writeGGUF(path: p, metadata: [], tensors: [("w", [256], 13, [UInt8](repeating: 0, count: 176))])
        do { _ = try GGUFFile(path: p); Issue.record("Q5_K accepted") } catch { #expect("\(error)".contains("'w'") && "\(error)".contains("type 13")) }
    }

    @Test("import of an unsupported GGUF architecture names it and what is supported")
    func unsupportedArchitecture() throws {
        let p = tempPath("gguf-arch")
        defer { try? FileManager.default.removeItem(atPath: p) }
        var arch = withUnsafeBytes(of: UInt64(4).littleEndian) { Array($0) }
        arch += Array("gpt2".utf8)
        try writeGGUF(path: p, metadata: [("general.architecture", 8, arch)], tensors: [("w", [32], 0, [UInt8](repeating: 0, count: 128))])
        do { _ = try GGUFImporter.load(GGUFFile(path: p)); Issue.record("gpt2 accepted") } catch {
            #expect("\(error)".contains("'gpt2'") && "\(error)".contains("llama") && "\(error)".contains(p))
        }
    }

    @Test("rotary row un-permutation inverts llama.cpp's permutation")
    func unpermute() {
        let heads = 3, hd = 8, cols = 5, rows = heads * hd
        let w = (0..<(rows * cols)).map(Float.init)
        // llama.cpp: reshape(heads, 2, hd/2, cols).swapaxes(1, 2)
        var perm = [Float](repeating: 0, count: w.count)
        for h in 0..<heads { for i in 0..<(hd / 2) { for j in 0..<2 { for c in 0..<cols {
            perm[(h * hd + 2 * i + j) * cols + c] = w[(h * hd + j * hd / 2 + i) * cols + c]
        } } } }
        #expect(unpermuteRotaryRows(perm, heads: heads, rows: rows, cols: cols) == w)
        // Independent fixture, by hand from convert_hf_to_gguf.py's permute
        // (reshape(n_head, 2, rows/n_head/2).swapaxes(1, 2)): 2 heads of 4 rows, 1 column
        // → stored row order 0 2 1 3 | 4 6 5 7.
        let stored: [Float] = [0, 2, 1, 3, 4, 6, 5, 7]
        #expect(unpermuteRotaryRows(stored, heads: 2, rows: 8, cols: 1) == [0, 1, 2, 3, 4, 5, 6, 7])
        // 1 head of 8 rows: 0 4 1 5 2 6 3 7.
        #expect(unpermuteRotaryRows([0, 4, 1, 5, 2, 6, 3, 7], heads: 1, rows: 8, cols: 1) == [0, 1, 2, 3, 4, 5, 6, 7])
    }
}

@Suite("Importers (shared data)")
struct ImporterGoldenTests {
    @Test("llama2.c stories260K.bin → tensors equal to models/stories260k/model.safetensors")
    func llama2c() throws {
        guard let root = sharedRoot("llama2.c import") else { return }
        let m = try Llama2cImporter.load(checkpoint: root + "/models/stories260k/original/stories260K.bin", tokenizer: nil)
        let ref = try TensorStore(path: root + "/models/stories260k")
        #expect(Set(m.tensors.map(\.name)) == Set(ref.names))
        for t in m.tensors { #expect(try t.produce() == ref[t.name]!.toFloat(), "\(t.name)") }
        #expect(m.config == (try ModelConfig.load(path: root + "/models/stories260k")).withMaxPositions(512))
    }

    @Test("truncated llama2.c checkpoint is rejected with the size mismatch")
    func truncatedLlama2c() throws {
        guard let root = sharedRoot("llama2.c truncated") else { return }
        let p = tempPath("l2c") + ".bin"
        defer { try? FileManager.default.removeItem(atPath: p) }
        try Data(contentsOf: URL(fileURLWithPath: root + "/models/stories260k/original/stories260K.bin")).prefix(500_000).write(to: URL(fileURLWithPath: p))
        do { _ = try Llama2cImporter.load(checkpoint: p, tokenizer: nil); Issue.record("accepted") } catch { #expect("\(error)".contains("truncated")) }
    }
}

extension ModelConfig {
    func withMaxPositions(_ n: Int) -> ModelConfig { var c = self; c.maxPositionEmbeddings = n; return c }
}

@Suite("K-quant dequantization vs gguf-py (fixtures/kquants)")
struct KQuantTests {
    @Test("Q4_K and Q6_K blocks equal gguf-py's dequantize")
    func kquants() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path + "/fixtures/kquants/kquants.json"
        let j = try JSON.parse(file: path)
        let cases = try #require(j["cases"]?.array)
        #expect(cases.count == 6)
        for c in cases {
            let type: GGMLType = c["type"]?.string == "Q4_K" ? .q4_K : .q6_K
            let hex = Array(c["hex"]!.string!.utf8)
            let bytes = stride(from: 0, to: hex.count, by: 2).map { UInt8(String(decoding: hex[$0..<($0 + 2)], as: UTF8.self), radix: 16)! }
            let want = c["values"]!.array!.map { Float($0.double!) }
            var got = [Float](repeating: 0, count: 256)
            bytes.withUnsafeBytes { src in got.withUnsafeMutableBufferPointer { GGUFDequant.dequantize(type: type, src: src, dst: $0) } }
            let maxd = zip(got, want).map { abs($0 - $1) / max(1, abs($1)) }.max()!
            #expect(maxd <= 1e-6, "\(type.name): max relative error \(maxd)")
        }
    }
}

@Suite("GGUF import refuses what it would silently ignore")
struct GGUFUnexpectedTensorTests {
    /// A complete tiny llama GGUF (hidden 8, 2 heads, 1 layer, FFN 16, vocab 4), all F32,
    /// plus `extra` tensors.
    func write(_ p: String, extra: [(String, [Int])] = []) throws {
        func u64(_ v: UInt64) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
        func u32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
        func str(_ s: String) -> [UInt8] { u64(UInt64(s.utf8.count)) + Array(s.utf8) }
        let meta: [(String, UInt32, [UInt8])] = [
            ("general.architecture", 8, str("llama")), ("llama.embedding_length", 4, u32(8)), ("llama.attention.head_count", 4, u32(2)),
            ("llama.block_count", 4, u32(1)), ("llama.feed_forward_length", 4, u32(16)), ("llama.context_length", 4, u32(64)),
        ]
        func f32(_ dims: [Int]) -> [UInt8] {
            let n = dims.reduce(1, *)
            return (0..<n).flatMap { i in withUnsafeBytes(of: Float(sin(Double(i))).bitPattern.littleEndian) { Array($0) } }
        }
        var ts: [(String, [Int])] = [("token_embd.weight", [8, 4]), ("blk.0.attn_norm.weight", [8]), ("blk.0.attn_q.weight", [8, 8]),
                                     ("blk.0.attn_k.weight", [8, 8]), ("blk.0.attn_v.weight", [8, 8]), ("blk.0.attn_output.weight", [8, 8]),
                                     ("blk.0.ffn_norm.weight", [8]), ("blk.0.ffn_gate.weight", [8, 16]), ("blk.0.ffn_up.weight", [8, 16]),
                                     ("blk.0.ffn_down.weight", [16, 8]), ("output_norm.weight", [8])]
        ts += extra
        try writeGGUF(path: p, metadata: meta, tensors: ts.map { ($0.0, $0.1, 0, f32($0.1)) })
    }

    @Test("rope_freqs.weight, llama q/k biases and unknown tensors are errors naming the tensor; the plain file imports")
    func unexpected() throws {
        let p = tempPath("gguf-extra")
        defer { try? FileManager.default.removeItem(atPath: p) }
        try write(p)
        let ok = try GGUFImporter.load(GGUFFile(path: p))
        #expect(ok.config.numLayers == 1 && ok.tensors.count == 11)
        for (extra, want) in [([("rope_freqs.weight", [4])], "rope_freqs.weight"), ([("blk.0.attn_q.bias", [8])], "blk.0.attn_q.bias"),
                              ([("blk.0.ffn_gate_exps.weight", [8, 16])], "blk.0.ffn_gate_exps.weight")] {
            try write(p, extra: extra)
            do { _ = try GGUFImporter.load(GGUFFile(path: p)); Issue.record("\(want) accepted") } catch {
                #expect("\(error)".contains("'\(want)'") && "\(error)".contains(p), "\(error)")
            }
        }
    }
}
