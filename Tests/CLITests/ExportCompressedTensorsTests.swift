import Foundation
import LMCore
import LMFixtures
import LMFormats
import LMQuant
import Testing

@Suite("lmconvert export --format compressed-tensors", .serialized)
struct ExportCompressedTensorsTests {
    /// Unpacks every quantized linear of `folder` as compressed-tensors defines it (4- or 8-bit
    /// codes in column order, offset by 2^(bits−1), times the group's or channel's scale) and
    /// checks it equals the `.lmpk`'s reference decoding; dense tensors equal it in f32.
    static func check(_ folder: String, _ lmpk: String) throws -> JSON {
        let src = try LMPKFile(path: lmpk), store = try TensorStore(path: folder)
        let config = try JSON.parse(file: folder + "/config.json")
        let qc = try #require(config["quantization_config"])
        #expect(qc["quant_method"]?.string == "compressed-tensors" && qc["format"]?.string == "pack-quantized" && qc["quantization_status"]?.string == "compressed")
        var quantized = Set<String>()
        for (_, g) in qc["config_groups"]?.object ?? [] {
            let bits = try #require(g["weights"]?["num_bits"]?.int), group = g["weights"]?["group_size"]?.int
            #expect(g["weights"]?["symmetric"]?.bool == true && g["weights"]?["strategy"]?.string == (group == nil ? "channel" : "group"))
            for target in g["targets"]?.array ?? [] {
                let m = try #require(target.string), t = try #require(src[m + ".weight"])
                quantized.insert(m + ".weight")
                let packed = try store.require(m + ".weight_packed"), scale = try store.require(m + ".weight_scale")
                let shape = try store.require(m + ".weight_shape")
                #expect(packed.dtype == .i32 && packed.shape == [t.rows, t.cols * bits / 32] && shape.dtype == .i64)
                #expect(Array(shape.bytes) == [Int64(t.rows), Int64(t.cols)].withUnsafeBytes { Array($0) })
                let s = try scale.toFloat(), p = packed.bytes
                let ref = RoundToNearest.dequantize(scheme: t.scheme, rows: t.rows, cols: t.cols, sections: t.sections)
                var bad = 0
                for r in 0..<t.rows {
                    for c in 0..<t.cols {
                        let code = bits == 4 ? Int((p[r * t.cols / 2 + c / 2] >> UInt8(4 * (c % 2))) & 0xF) - 8 : Int(p[r * t.cols + c]) - 128
                        let sc = group.map { s[r * (t.cols / $0) + c / $0] } ?? s[r]
                        if Float(code) * sc != ref[r * t.cols + c] { bad += 1 }
                    }
                }
                #expect(bad == 0, "\(m) (\(t.scheme)): \(bad) values differ from the reference decoding")
            }
        }
        for name in store.names where !name.hasSuffix("_packed") && !name.hasSuffix("_scale") && !name.hasSuffix("_shape") {
            let t = try #require(src[name])
            #expect(try store.require(name).toFloat() == RoundToNearest.dequantize(scheme: t.scheme, rows: t.rows, cols: t.cols, sections: t.sections), "\(name)")
        }
        #expect(quantized.count + store.names.filter { !$0.contains(".weight_") }.count == src.tensors.count)
        return qc
    }

    @Test("int4s-gG → 4-bit and int8-gG / int8 → 8-bit pack-quantized with the stored scales; groups fit to the columns (576 with G = 128 → 64); 2:4-compressed rows scattered with zero codes and sparsity_config; float linears dense in ignore")
    func exact() throws {
        let (dir, _) = try PruneCLITests.fixture("ct")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let builds: [(String, [String], (JSON) -> Bool)] = [
            ("a", ["quantize", "--scheme", "int4s-g32", "--override", "v_proj=int8", "--override", "down_proj=int8-g64", "--override", "o_proj=f16"], { qc in
                qc["config_groups"]?.object?.count == 3 && qc["ignore"]?.array?.contains(where: { $0.string == "model.layers.0.self_attn.o_proj" }) == true && qc["sparsity_config"] == nil }),
            ("b", ["quantize", "--scheme", "int4s-g128"], { qc in
                // 96 columns: groups of 128 become 32 (the largest power-of-two divisor of 96 inside a stored group).
                qc["config_groups"]?.object?.map { $0.1["weights"]?["group_size"]?.int } .contains(32) == true }),
            ("c", ["prune", "--method", "magnitude", "--pattern", "2:4", "--scheme", "int4s-g32", "--override", "up_proj=int8-g32"], { qc in
                qc["sparsity_config"]?["sparsity_structure"]?.string == "2:4" && qc["sparsity_config"]?["format"]?.string == "dense"
                    // A 2:4 group of 32 kept values spans 64 columns; 96-column rows take groups of 32 inside them.
                    && Set(qc["config_groups"]?.object?.map { $0.1["weights"]?["group_size"]?.int ?? 0 } ?? []) == [64, 32, 0] }),
        ]
        for (name, args, expectConfig) in builds {
            let lmpk = dir + "/\(name).lmpk", out = dir + "/\(name)-ct"
            let b = try run("lmconvert", [args[0], "-i", dir + "/m", "-o", lmpk] + args.dropFirst())
            #expect(b.status == 0, "\(name): \(b.stderr)")
            let r = try run("lmconvert", ["export", "-i", lmpk, "-o", out, "--format", "compressed-tensors", "--dtype", "f32", "--json"])
            #expect(r.status == 0, "\(name): \(r.stderr)")
            let qc = try Self.check(out, lmpk)
            #expect(expectConfig(qc), "\(name): \(qc.serialized())")
            #expect(try SafetensorsFile(path: out + "/model.safetensors").metadata["lmkit_provenance"]?.contains("\"build\"") == true)
            #expect(FileManager.default.fileExists(atPath: out + "/tokenizer.json") && FileManager.default.fileExists(atPath: out + "/generation_config.json"))
        }
    }

    @Test("bad input: asymmetric int4 refused by name (dense with --requantize-to f32), a quantized --requantize-to refused, existing output without --force, a rank file")
    func errors() throws {
        let (dir, _) = try PruneCLITests.fixture("ct-err")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try run("lmconvert", ["quantize", "-i", dir + "/m", "-o", dir + "/q.lmpk", "--scheme", "int4-g32", "--override", "q_proj=int4s-g32"]).status == 0)
        let e = try run("lmconvert", ["export", "-i", dir + "/q.lmpk", "-o", dir + "/ct", "--format", "compressed-tensors"])
        #expect(e.status != 0 && e.stderr.contains("model.layers.0.self_attn.k_proj.weight") && e.stderr.contains("zero point") && e.stderr.contains("--requantize-to"), "\(e.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/ct"))
        let d = try run("lmconvert", ["export", "-i", dir + "/q.lmpk", "-o", dir + "/ct", "--format", "compressed-tensors", "--dtype", "f32", "--requantize-to", "f32"])
        #expect(d.status == 0, "\(d.stderr)")
        let qc = try Self.check(dir + "/ct", dir + "/q.lmpk")
        #expect(qc["config_groups"]?.object?.first?.1["targets"]?.array?.allSatisfy { $0.string?.hasSuffix("q_proj") == true } == true)
        #expect(qc["ignore"]?.array?.contains { $0.string == "model.layers.1.mlp.down_proj" } == true)
        let q = try run("lmconvert", ["export", "-i", dir + "/q.lmpk", "-o", dir + "/ct2", "--format", "compressed-tensors", "--requantize-to", "q4_0"])
        #expect(q.status != 0 && q.stderr.contains("gguf"), "\(q.stderr)")
        let x = try run("lmconvert", ["export", "-i", dir + "/q.lmpk", "-o", dir + "/ct", "--format", "compressed-tensors", "--requantize-to", "f16"])
        #expect(x.status != 0 && x.stderr.contains("--force"), "\(x.stderr)")
        #expect(try run("lmconvert", ["shard", "--tp", "2", "-i", dir + "/q.lmpk", "-o", dir + "/tp2"]).status == 0)
        let s = try run("lmconvert", ["export", "-i", dir + "/tp2/rank-0-of-2.lmpk", "-o", dir + "/r", "--format", "compressed-tensors"])
        #expect(s.status != 0 && s.stderr.contains("rank file") && s.stderr.contains("q.lmpk"), "\(s.stderr)")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp-") || $0.contains(".old-") || $0 == "r" || $0 == "ct2" }
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    @Test("lmeval logits: input ids and every position's logits; --ids and --prompt agree; the last row's argmax is generate's first greedy token; bad ids refused")
    func logits() throws {
        let (dir, _) = try PruneCLITests.fixture("logits")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = try run("lmeval", ["logits", "-m", dir + "/m", "--prompt", "the cat and the dog", "-o", dir + "/a.safetensors"])
        #expect(a.status == 0, "\(a.stderr)")
        let fa = try SafetensorsFile(path: dir + "/a.safetensors")
        let ids = try #require(fa["input_ids"]), lg = try #require(fa["logits"])
        let idList = (0..<ids.count).map { Int(ids.bytes.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self)) }
        #expect(ids.dtype == .i32 && lg.dtype == .f32 && lg.shape == [idList.count, 300] && idList.count > 2)
        let b = try run("lmeval", ["logits", "-m", dir + "/m", "--ids", idList.map(String.init).joined(separator: ","), "-o", dir + "/b.safetensors"])
        #expect(b.status == 0, "\(b.stderr)")
        #expect(try SafetensorsFile(path: dir + "/b.safetensors")["logits"]!.toFloat() == lg.toFloat())
        let v = try lg.toFloat(), last = Array(v[(v.count - 300)...])
        let g = try run("lmeval", ["generate", "-m", dir + "/m", "--prompt", "the cat and the dog", "--max-tokens", "1", "--ids", "--ignore-eos"])
        #expect(g.status == 0 && g.stdout.split(whereSeparator: { $0 == " " || $0 == "\n" }).last.flatMap { Int($0) } == last.indices.max { last[$0] < last[$1] }, "\(g.stdout)")
        let bad = try run("lmeval", ["logits", "-m", dir + "/m", "--ids", "1,99999", "-o", dir + "/c.safetensors"])
        #expect(bad.status != 0 && bad.stderr.contains("99999") && !FileManager.default.fileExists(atPath: dir + "/c.safetensors"), "\(bad.stderr)")
        let both = try run("lmeval", ["logits", "-m", dir + "/m", "--ids", "1", "--prompt", "x", "-o", dir + "/c.safetensors"])
        #expect(both.status != 0 && both.stderr.contains("exactly one"))
    }
}
