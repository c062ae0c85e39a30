import Foundation
import LMCore
import LMFixtures
import LMFormats
import Testing

@Suite("lmconvert prune → inspect, shard, lmeval", .serialized)
struct PruneCLITests {
    @Test("wanda 2:4 and magnitude 50 %: inspect counts the zeros, the shards compute the same perplexity; bad options fail before any work")
    func pruneAndEvaluate() throws {
        let dir = scratch("prune")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var spec = SyntheticModelSpec(); spec.hidden = 96; spec.intermediate = 128; spec.heads = 4; spec.kvHeads = 2; spec.headDim = 32
        try SyntheticModel.write(spec, to: dir + "/m")
        let text = dir + "/t.txt"
        try String(repeating: "the cat and the dog ran far away. ", count: 200).write(toFile: text, atomically: true, encoding: .utf8)
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
                             (["--method", "magnitude", "--pattern", "2:4", "--scheme", "int4-g32"], "asymmetric"), (["--method", "magnitude", "--pattern", "3:4:5"], "--pattern")] {
            let r = try run("lmconvert", ["prune", "-i", dir + "/m", "-o", dir + "/bad.lmpk"] + args)
            #expect(r.status != 0 && r.stderr.contains(flag), "\(args): \(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: dir + "/bad.lmpk"))
        }
    }
}
