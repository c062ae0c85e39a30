import Foundation
import LMCore
import LMFixtures
import LMFormats
import Testing

@Suite("lmconvert quantize / inspect / verify", .serialized)
struct QuantizeCLITests {
    @Test("deterministic bytes, inspect table and JSON, verify ok; a flipped byte fails verify naming the tensor")
    func roundTrip() throws {
        let dir = scratch("q")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try SyntheticModel.write(SyntheticModelSpec(), to: dir + "/m")
        // The same command twice (provenance records the command line, so it must match).
        for k in 0..<2 {
            let r = try run("lmconvert", ["quantize", "-i", dir + "/m", "-o", dir + "/a.lmpk", "--scheme", "int4", "--group-size", "64", "--clip", "mse",
                                          "--override", "mlp\\.down_proj=int8"])
            #expect(r.status == 0, "\(r.stderr)")
            if k == 0 { try FileManager.default.moveItem(atPath: dir + "/a.lmpk", toPath: dir + "/b.lmpk") }
        }
        let a = try Data(contentsOf: URL(fileURLWithPath: dir + "/a.lmpk")), b = try Data(contentsOf: URL(fileURLWithPath: dir + "/b.lmpk"))
        #expect(a == b, "same inputs must give the same bytes")
        let i = try run("lmconvert", ["inspect", dir + "/a.lmpk"])
        #expect(i.status == 0 && i.stdout.contains("int4-g64") && i.stdout.contains("mlp.down_proj.weight") && i.stdout.contains("bits/weight"))
        let j = try JSON.parse(Array(try run("lmconvert", ["inspect", "--json", dir + "/a.lmpk"]).stdout.utf8), source: "inspect")
        let schemes = Dictionary(uniqueKeysWithValues: j["tensors"]!.array!.map { ($0["name"]!.string!, $0["scheme"]!.string!) })
        #expect(schemes["model.layers.0.mlp.down_proj.weight"] == "int8")
        #expect(schemes["model.layers.0.mlp.up_proj.weight"] == "int4-g64")
        #expect(schemes["model.embed_tokens.weight"] == "int8")
        #expect(schemes["model.norm.weight"] == "f32")
        #expect(j["recipe"]?["clip"]?.string == "mse")
        #expect(try run("lmconvert", ["verify", dir + "/a.lmpk"]).status == 0)
        // Flip one byte inside a tensor's data.
        let f = try LMPKFile(path: dir + "/a.lmpk")
        let t = f["model.layers.1.self_attn.v_proj.weight"]!
        var bad = a
        bad[t.range.lowerBound + 3] ^= 0x5A
        try bad.write(to: URL(fileURLWithPath: dir + "/bad.lmpk"))
        let v = try run("lmconvert", ["verify", dir + "/bad.lmpk"])
        #expect(v.status == 1 && v.stderr.contains("model.layers.1.self_attn.v_proj.weight"), "\(v.stderr)")
        // lmeval runs the .lmpk directly.
        let text = dir + "/t.txt"
        try String(repeating: "the cat and the dog. ", count: 50).write(toFile: text, atomically: true, encoding: .utf8)
        let p = try run("lmeval", ["perplexity", "-m", dir + "/a.lmpk", "--text", text, "--ctx", "64"])
        #expect(p.status == 0 && p.stdout.contains("PPL"), "\(p.stderr)")
    }

    @Test("input errors fail before anything is written, naming the tensor or pattern")
    func errors() throws {
        let dir = scratch("qe")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try SyntheticModel.write(SyntheticModelSpec(), to: dir + "/m")
        func q(_ extra: [String], out: String = "o.lmpk") throws -> RunResult { try run("lmconvert", ["quantize", "-i", dir + "/m", "-o", dir + "/" + out] + extra) }
        var r = try q(["--scheme", "int5"])
        #expect(r.status != 0 && r.stderr.contains("int5") && r.stderr.contains("int4-g32"))
        r = try q(["--override", "nothing_like_this=int8"])
        #expect(r.status != 0 && r.stderr.contains("matches no tensor"))
        r = try q(["--override", "input_layernorm=int4"])
        #expect(r.status != 0 && r.stderr.contains("is a vector"))
        r = try q(["--scheme", "int4-g48"])
        #expect(r.status != 0 && r.stderr.contains("48"))
        // NaN in a weight.
        let nan = dir + "/nan"
        var spec = SyntheticModelSpec(); spec.seed = 11
        try SyntheticModel.write(spec, to: nan)
        let st = try SafetensorsFile(path: nan + "/model.safetensors")
        let t = st["model.layers.1.mlp.up_proj.weight"]!
        let offset = t.bytes.baseAddress! - st.tensors[0].bytes.baseAddress! + (8 + Int(try Data(contentsOf: URL(fileURLWithPath: nan + "/model.safetensors")).prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }))
        var data = try Data(contentsOf: URL(fileURLWithPath: nan + "/model.safetensors"))
        withUnsafeBytes(of: Float.nan.bitPattern.littleEndian) { for k in 0..<4 { data[offset + 40 + k] = $0[k] } }
        try data.write(to: URL(fileURLWithPath: nan + "/model.safetensors"))
        r = try run("lmconvert", ["quantize", "-i", nan, "-o", dir + "/nan.lmpk"])
        #expect(r.status != 0 && r.stderr.contains("model.layers.1.mlp.up_proj.weight") && r.stderr.contains("NaN"), "\(r.stderr)")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".lmpk") }
        #expect(leftovers.isEmpty, "no output (or temp file) may remain: \(leftovers)")
    }

    @Test("a truncated or future-version .lmpk is rejected with a clear message")
    func badFiles() throws {
        let dir = scratch("qb")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try SyntheticModel.write(SyntheticModelSpec(), to: dir + "/m")
        #expect(try run("lmconvert", ["quantize", "-i", dir + "/m", "-o", dir + "/a.lmpk"]).status == 0)
        let a = try Data(contentsOf: URL(fileURLWithPath: dir + "/a.lmpk"))
        try a.prefix(a.count - 5000).write(to: URL(fileURLWithPath: dir + "/t.lmpk"))
        var r = try run("lmconvert", ["verify", dir + "/t.lmpk"])
        #expect(r.status == 1 && r.stderr.contains("beyond the end of the file"), "\(r.stderr)")
        var v = a; v[4] = 9
        try v.write(to: URL(fileURLWithPath: dir + "/v.lmpk"))
        r = try run("lmeval", ["generate", "-m", dir + "/v.lmpk"])
        #expect(r.status == 1 && r.stderr.contains("version 9"), "\(r.stderr)")
        // Overlapping and misaligned sections, with the header CRC re-sealed so only the
        // structural check can catch them.
        func rewriteHeader(_ edit: (inout String) -> Void) throws -> Data {
            var d = a
            let hlen = Int(d[8..<16].withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
            var header = String(decoding: d[24..<(24 + hlen)], as: UTF8.self)
            edit(&header)
            var hb = Array(header.utf8)
            precondition(hb.count <= hlen)
            hb += [UInt8](repeating: 0x20, count: hlen - hb.count)
            d.replaceSubrange(24..<(24 + hlen), with: hb)
            withUnsafeBytes(of: hb.withUnsafeBytes { crc32($0) }.littleEndian) { for k in 0..<4 { d[16 + k] = $0[k] } }
            return d
        }
        let f = try LMPKFile(path: dir + "/a.lmpk")
        let t0 = f.tensors[1], t1 = f.tensors[2]
        let off0 = t0.range.lowerBound, off1 = t1.range.lowerBound
        try rewriteHeader { $0 = $0.replacingOccurrences(of: "\"offset\":\(off1),", with: "\"offset\":\(off0),") }.write(to: URL(fileURLWithPath: dir + "/o.lmpk"))
        r = try run("lmconvert", ["verify", dir + "/o.lmpk"])
        #expect(r.status == 1 && r.stderr.contains("overlaps"), "\(r.stderr)")
        try rewriteHeader { $0 = $0.replacingOccurrences(of: "\"offset\":\(off1),", with: "\"offset\":\(off1 + 4),") }.write(to: URL(fileURLWithPath: dir + "/m.lmpk"))
        r = try run("lmconvert", ["verify", dir + "/m.lmpk"])
        #expect(r.status == 1 && r.stderr.contains("unaligned"), "\(r.stderr)")
        var h = a; h[40] ^= 1
        try h.write(to: URL(fileURLWithPath: dir + "/h.lmpk"))
        r = try run("lmconvert", ["inspect", dir + "/h.lmpk"])
        #expect(r.status == 1 && r.stderr.contains("header CRC"), "\(r.stderr)")
    }

    @Test("streaming: quantizing a ~3 GB model keeps peak RSS near one tensor, not the model")
    func streamingMemory() throws {
        let free = (try? FileManager.default.attributesOfFileSystem(forPath: NSTemporaryDirectory())[.systemFreeSize] as? Int) ?? 0
        if free < 8 << 30 {
            print("SKIPPED streaming memory test: \(free >> 20) MiB free in \(NSTemporaryDirectory()), it needs 8 GiB for a 2.6 GB model and its .lmpk")
            return
        }
        let dir = scratch("big")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var spec = SyntheticModelSpec()
        spec.hidden = 1024; spec.intermediate = 4096; spec.layers = 44; spec.heads = 16; spec.kvHeads = 4; spec.headDim = 64; spec.vocab = 4096
        try SyntheticModel.writeStreaming(spec, to: dir + "/m")
        let size = try FileManager.default.attributesOfItem(atPath: dir + "/m/model.safetensors")[.size] as! Int
        #expect(size > 2_500_000_000)
        let r = try run("lmconvert", ["quantize", "-i", dir + "/m", "-o", dir + "/m.lmpk", "--scheme", "int4-g128", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let j = try JSON.parse(Array(r.stdout.utf8), source: "quantize --json")
        let peak = j["peak_rss_bytes"]!.int!
        let largest = 4096 * 1024 * 4 // largest tensor, float32
        print("streaming quantize: model \(size / 1_048_576) MiB, largest tensor \(largest / 1_048_576) MiB, peak RSS \(peak / 1_048_576) MiB")
        #expect(peak < 12 * largest + 64 << 20, "peak RSS \(peak) for a \(size)-byte model")
    }
}
