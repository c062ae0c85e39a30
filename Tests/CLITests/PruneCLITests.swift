import Foundation
import LMCore
import LMFixtures
import LMFormats
import LMQuant
import Testing

@Suite("lmconvert prune → inspect, shard, lmeval", .serialized)
struct PruneCLITests {
    /// A scratch folder with a synthetic model (`/m`: 4 heads, 2 KV heads, 128 FFN columns) and a calibration text.
    static func fixture(_ name: String) throws -> (dir: String, text: String) {
        let dir = scratch(name)
        var spec = SyntheticModelSpec(); spec.hidden = 96; spec.intermediate = 128; spec.heads = 4; spec.kvHeads = 2; spec.headDim = 32
        try SyntheticModel.write(spec, to: dir + "/m")
        let text = dir + "/t.txt"
        try String(repeating: "the cat and the dog ran far away. ", count: 200).write(toFile: text, atomically: true, encoding: .utf8)
        return (dir, text)
    }

    @Test("wanda 2:4 and magnitude 50 %: inspect counts the zeros, the shards compute the same perplexity; bad options fail before any work")
    func pruneAndEvaluate() throws {
        let (dir, text) = try Self.fixture("prune")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let w = try run("lmconvert", ["prune", "-i", dir + "/m", "-o", dir + "/w.lmpk", "--method", "wanda", "--pattern", "2:4",
                                      "--calib", text, "--calib-samples", "4", "--calib-ctx", "64"])
        #expect(w.status == 0 && w.stdout.contains("wanda pruning at 2:4"), "\(w.stderr)")
        let j = try JSON.parse(Array(try run("lmconvert", ["inspect", "--json", dir + "/w.lmpk"]).stdout.utf8), source: "inspect")
        #expect(j["pruning"]?["pattern"]?.string == "2:4")
        for t in j["tensors"]!.array! {
            let name = t["name"]!.string!, zeros = t["sparsity"]?.double ?? -1
            if name.hasPrefix("model.layers.") && t["shape"]!.array!.count == 2 { #expect(zeros == 0.5, "\(name): \(zeros)") } else { #expect(zeros < 0.5, "\(name): \(zeros)") }
        }
        let m = try run("lmconvert", ["prune", "-i", dir + "/m", "-o", dir + "/g.lmpk", "--method", "magnitude", "--sparsity", "0.5", "--scheme", "int8"])
        #expect(m.status == 0, "\(m.stderr)")
        #expect(try run("lmconvert", ["verify", dir + "/g.lmpk"]).status == 0)
        let g = try JSON.parse(Array(try run("lmconvert", ["inspect", "--json", dir + "/g.lmpk"]).stdout.utf8), source: "inspect")
        for t in g["tensors"]!.array! where t["name"]!.string!.hasPrefix("model.layers.") && t["shape"]!.array!.count == 2 {
            #expect((t["sparsity"]?.double ?? 0) >= 0.5 && t["scheme"]?.string == "int8", "\(t["name"]!.string!)")
        }
        let p = try run("lmeval", ["perplexity", "-m", dir + "/w.lmpk", "--text", text, "--ctx", "64", "--baseline", dir + "/m", "--json", dir + "/p.json"])
        #expect(p.status == 0, "\(p.stderr)")
        let ppl = try JSON.parse(file: dir + "/p.json")["perplexity"]?.double ?? .nan
        let s = try run("lmconvert", ["shard", "--tp", "2", "-i", dir + "/w.lmpk", "-o", dir + "/tp2"])
        #expect(s.status == 0, "\(s.stderr)")
        let r0 = try JSON.parse(Array(try run("lmconvert", ["inspect", "--json", dir + "/tp2/rank-0-of-2.lmpk"]).stdout.utf8), source: "inspect")
        #expect(r0["pruning"]?["pattern"]?.string == "2:4", "a rank file lost the pruning record")
        let ps = try run("lmeval", ["perplexity", "--shards", dir + "/tp2", "--text", text, "--ctx", "64", "--json", dir + "/ps.json"])
        #expect(ps.status == 0, "\(ps.stderr)")
        let sharded = try JSON.parse(file: dir + "/ps.json")["perplexity"]?.double ?? .nan
        #expect(abs(sharded - ppl) <= 1e-4 * ppl, "sharded PPL \(sharded) vs \(ppl)")
        for (args, flag) in [(["--method", "magnitude", "--sparsity", "1.5"], "--sparsity"), (["--method", "wanda", "--sparsity", "0.5"], "--calib"),
                             (["--method", "magnitude", "--pattern", "2:4", "--scheme", "int4-g32", "--storage", "dense"], "asymmetric"),
                             (["--method", "magnitude", "--sparsity", "0.5", "--storage", "compressed"], "--storage"),
                             (["--method", "magnitude", "--pattern", "2:4", "--scheme", "int3-g32"], "asymmetric"),
                             (["--method", "magnitude", "--pattern", "3:4:5"], "--pattern")] {
            let r = try run("lmconvert", ["prune", "-i", dir + "/m", "-o", dir + "/bad.lmpk"] + args)
            #expect(r.status != 0 && r.stderr.contains(flag), "\(args): \(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: dir + "/bad.lmpk"))
        }
    }

    @Test("--quant-method gptq: SparseGPT's joint mode and Wanda's mask with GPTQ give exact zeros (asymmetric int4 compressed too) and the GPTQ provenance; AWQ, float schemes and no calibration are refused")
    func gptq() throws {
        let (dir, text) = try Self.fixture("prune-gptq")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cal = ["--calib", text, "--calib-samples", "4", "--calib-ctx", "64"]
        for (name, args, pruned) in [("sg", ["--method", "sparsegpt", "--pattern", "2:4", "--scheme", "int4-g32"], 0.5),
                                     ("wa", ["--method", "wanda", "--sparsity", "0.5", "--scheme", "int4s-g32", "--clip", "mse"], 0.5),
                                     ("mg", ["--method", "magnitude", "--pattern", "4:8", "--scheme", "int8-g32"], 0.5)] {
            let f = dir + "/\(name).lmpk"
            let r = try run("lmconvert", ["prune", "-i", dir + "/m", "-o", f, "--quant-method", "gptq", "--json"] + args + cal)
            #expect(r.status == 0, "\(name): \(r.stderr)")
            #expect(try run("lmconvert", ["verify", f]).status == 0)
            let j = try JSON.parse(Array(try run("lmconvert", ["inspect", "--json", f]).stdout.utf8), source: "inspect")
            #expect(j["provenance"]?["build"]?["method"]?.string == "gptq")
            for t in j["tensors"]!.array! where t["name"]!.string!.hasPrefix("model.layers.") && t["shape"]!.array!.count == 2 {
                // Every pruned weight decodes to 0; a few kept ones round to 0 as well.
                let zeros = t["sparsity"]?.double ?? -1
                #expect(zeros >= pruned && zeros < pruned + 0.02, "\(name) \(t["name"]!.string!): \(zeros)")
            }
            let p = try run("lmeval", ["perplexity", "-m", f, "--text", text, "--ctx", "64", "--json", dir + "/p.json"])
            #expect(p.status == 0, "\(p.stderr)")
        }
        for (args, message) in [(["--method", "wanda", "--sparsity", "0.5", "--scheme", "int4s-g32", "--quant-method", "awq"], "--quant-method"),
                                (["--method", "wanda", "--sparsity", "0.5", "--scheme", "f16", "--quant-method", "gptq"], "--quant-method"),
                                (["--method", "magnitude", "--sparsity", "0.5", "--scheme", "int4s-g32", "--quant-method", "gptq"], "--calib")] {
            let r = try run("lmconvert", ["prune", "-i", dir + "/m", "-o", dir + "/bad.lmpk"] + args + (message == "--calib" ? [] : cal))
            #expect(r.status != 0 && r.stderr.contains(message), "\(args): \(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: dir + "/bad.lmpk"))
        }
    }

    @Test("an .lmpk as input: a float or quantized build re-quantizes like its source; a pruned one is re-pruned only to a pattern that keeps its zeros (magnitude + GPTQ keeps them exactly), quantizing it directly and rank files are refused")
    func lmpkInput() throws {
        let (dir, text) = try Self.fixture("prune-lmpk")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func ok(_ args: [String]) throws { let r = try run("lmconvert", args); #expect(r.status == 0, "\(args): \(r.stderr)") }
        func ppl(_ f: String) throws -> Double {
            let p = try run("lmeval", ["perplexity", "-m", f, "--text", text, "--ctx", "64", "--json", dir + "/p.json"])
            #expect(p.status == 0, "\(p.stderr)")
            return try JSON.parse(file: dir + "/p.json")["perplexity"]?.double ?? .nan
        }
        func inspect(_ f: String) throws -> JSON { try JSON.parse(Array(try run("lmconvert", ["inspect", "--json", f]).stdout.utf8), source: "inspect") }
        // f32 .lmpk → int8-g32: the same tensors as quantizing the source directly.
        try ok(["quantize", "-i", dir + "/m", "-o", dir + "/f32.lmpk", "--scheme", "f32"])
        try ok(["quantize", "-i", dir + "/m", "-o", dir + "/direct.lmpk", "--scheme", "int8-g32"])
        try ok(["quantize", "-i", dir + "/f32.lmpk", "-o", dir + "/again.lmpk", "--scheme", "int8-g32"])
        let crcs = { (f: String) in try inspect(f)["tensors"]!.array!.map { $0["crc32"]?.string ?? "\($0["bytes"]!.int!)" } }
        #expect(try crcs(dir + "/direct.lmpk") == crcs(dir + "/again.lmpk"))
        #expect(try ppl(dir + "/direct.lmpk") == ppl(dir + "/again.lmpk"))
        // Pruned 2:4 (Wanda, f16): quantizing it directly is refused; magnitude 2:4 + GPTQ keeps exactly its zeros.
        try ok(["prune", "-i", dir + "/m", "-o", dir + "/w.lmpk", "--method", "wanda", "--pattern", "2:4", "--calib", text, "--calib-samples", "4", "--calib-ctx", "64"])
        let q = try run("lmconvert", ["quantize", "-i", dir + "/w.lmpk", "-o", dir + "/bad.lmpk", "--scheme", "int4s-g32"])
        #expect(q.status != 0 && q.stderr.contains("is pruned (2:4 by wanda)") && q.stderr.contains("--method magnitude --pattern 2:4"), "\(q.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/bad.lmpk"))
        try ok(["prune", "-i", dir + "/w.lmpk", "-o", dir + "/wg.lmpk", "--method", "magnitude", "--pattern", "2:4", "--scheme", "int4-g32",
                "--quant-method", "gptq", "--calib", text, "--calib-samples", "4", "--calib-ctx", "64"])
        let src = try LMPKFile(path: dir + "/w.lmpk"), out = try LMPKFile(path: dir + "/wg.lmpk")
        for t in src.tensors where t.name.hasPrefix("model.layers.") && t.shape.count == 2 {
            let a = RoundToNearest.dequantize(scheme: t.scheme, rows: t.rows, cols: t.cols, sections: t.sections)
            let o = out[t.name]!
            #expect(o.scheme.name == "int4-g32+2:4")
            let b = RoundToNearest.dequantize(scheme: o.scheme, rows: o.rows, cols: o.cols, sections: o.sections)
            #expect(zip(a, b).allSatisfy { $0 != 0 || $1 == 0 }, "\(t.name): a weight pruned in the input is not 0 in the output")
        }
        // Compatible re-pruning (2:4 → unstructured 60 %) works; 4:8 → 2:4 and a rank file are refused before any work.
        try ok(["prune", "-i", dir + "/w.lmpk", "-o", dir + "/w14.lmpk", "--method", "magnitude", "--sparsity", "0.6"])
        try ok(["prune", "-i", dir + "/m", "-o", dir + "/w48.lmpk", "--method", "magnitude", "--pattern", "4:8"])
        let r = try run("lmconvert", ["prune", "-i", dir + "/w48.lmpk", "-o", dir + "/bad.lmpk", "--method", "magnitude", "--pattern", "2:4"])
        #expect(r.status != 0 && r.stderr.contains("already pruned (4:8 by magnitude)"), "\(r.stderr)")
        try ok(["shard", "--tp", "2", "-i", dir + "/w.lmpk", "-o", dir + "/tp2"])
        let rk = try run("lmconvert", ["prune", "-i", dir + "/tp2/rank-0-of-2.lmpk", "-o", dir + "/bad.lmpk", "--method", "magnitude", "--pattern", "2:4"])
        #expect(rk.status != 0 && rk.stderr.contains("rank file"), "\(rk.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/bad.lmpk"))
    }

    @Test("2:4 stored compressed: +2:4 schemes at half the value bytes, the same perplexity as dense zeros, asymmetric int4 exact zeros, shards; a dense model is refused by +2:4")
    func compressed() throws {
        let (dir, text) = try Self.fixture("prune-nm")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func ppl(_ args: [String]) throws -> Double {
            let p = try run("lmeval", ["perplexity", "--text", text, "--ctx", "64", "--json", dir + "/p.json"] + args)
            #expect(p.status == 0, "\(p.stderr)")
            return try JSON.parse(file: dir + "/p.json")["perplexity"]?.double ?? .nan
        }
        func inspect(_ f: String) throws -> JSON { try JSON.parse(Array(try run("lmconvert", ["inspect", "--json", f]).stdout.utf8), source: "inspect") }
        var ppls: [String: Double] = [:], bytes: [String: Int] = [:]
        for (name, args) in [("dense", ["--storage", "dense"]), ("nm", []), ("nm8", ["--scheme", "int8-g32"]), ("nm4", ["--scheme", "int4-g32"])] {
            let r = try run("lmconvert", ["prune", "-i", dir + "/m", "-o", dir + "/\(name).lmpk", "--method", "magnitude", "--pattern", "2:4"] + args)
            #expect(r.status == 0, "\(name): \(r.stderr)")
            #expect(try run("lmconvert", ["verify", dir + "/\(name).lmpk"]).status == 0)
            let j = try inspect(dir + "/\(name).lmpk")
            var matrixBytes = 0
            for t in j["tensors"]!.array! where t["name"]!.string!.hasPrefix("model.layers.") && t["shape"]!.array!.count == 2 {
                let scheme = t["scheme"]!.string!
                #expect(scheme.hasSuffix("+2:4") == (name != "dense"), "\(name): \(t["name"]!.string!) is \(scheme)")
                #expect(t["sparsity"]?.double == 0.5, "\(name) \(t["name"]!.string!): pruned weights must decode to exactly 0")
                matrixBytes += t["bytes"]!.int!
            }
            bytes[name] = matrixBytes
            #expect(j["provenance"]?["build"]?["prune"]?["storage"]?.string == (name == "dense" ? "dense" : "compressed"))
            ppls[name] = try ppl(["-m", dir + "/\(name).lmpk"])
        }
        // f16 values, dense zeros or compressed: the same weights, so the same perplexity up to summation order.
        #expect(abs(ppls["nm"]! - ppls["dense"]!) <= 1e-5 * ppls["dense"]!, "\(ppls)")
        #expect(Double(bytes["dense"]!) / Double(bytes["nm"]!) > 1.75, "f16 2:4 is \(bytes)")
        // Tensor-parallel ranks slice the compressed tensors (no expansion) and compute the same perplexity.
        let s = try run("lmconvert", ["shard", "--tp", "2", "-i", dir + "/nm8.lmpk", "-o", dir + "/tp2"])
        #expect(s.status == 0, "\(s.stderr)")
        let r0 = try inspect(dir + "/tp2/rank-0-of-2.lmpk")
        #expect(r0["tensors"]!.array!.contains { $0["scheme"]?.string == "int8-g32+2:4" })
        let sharded = try ppl(["--shards", dir + "/tp2"])
        #expect(abs(sharded - ppls["nm8"]!) <= 1e-4 * ppls["nm8"]!, "sharded \(sharded) vs \(ppls["nm8"]!)")
        // +2:4 on a model that is not 2:4 sparse: refused, naming the tensor; no file left.
        let q = try run("lmconvert", ["quantize", "-i", dir + "/m", "-o", dir + "/bad.lmpk", "--scheme", "int8-g32+2:4"])
        #expect(q.status != 0 && q.stderr.contains("is not 2:4 sparse") && q.stderr.contains("model.layers.0."), "\(q.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/bad.lmpk"))
    }
}
