import Foundation
import LMCore
import LMFixtures
import LMFormats
import Testing

@Suite("lmconvert quantize --scheme int3-gG / int2-gG → lmeval", .serialized)
struct LowBitCLITests {
    @Test("int3-g32 and int2-g64 of the synthetic model: inspect, verify, shard, perplexity against the float model", arguments: ["int3-g32", "int2-g64"])
    func quantizeAndEvaluate(_ scheme: String) throws {
        let dir = scratch("lowbit")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The default synthetic shape (hidden 60, FFN 37) has no 64-column boundary to shard on.
        var spec = SyntheticModelSpec(); spec.hidden = 96; spec.intermediate = 128; spec.heads = 4; spec.kvHeads = 2; spec.headDim = 32
        try SyntheticModel.write(spec, to: dir + "/m")
        let q = try run("lmconvert", ["quantize", "-i", dir + "/m", "-o", dir + "/q.lmpk", "--scheme", scheme, "--clip", "mse"])
        #expect(q.status == 0, "\(q.stderr)")
        let j = try JSON.parse(Array(try run("lmconvert", ["inspect", "--json", dir + "/q.lmpk"]).stdout.utf8), source: "inspect")
        let schemes = Dictionary(uniqueKeysWithValues: j["tensors"]!.array!.map { ($0["name"]!.string!, $0["scheme"]!.string!) })
        #expect(schemes["model.layers.0.mlp.up_proj.weight"] == scheme && schemes["model.embed_tokens.weight"] == "int8")
        #expect(try run("lmconvert", ["verify", dir + "/q.lmpk"]).status == 0)
        let text = dir + "/t.txt"
        try String(repeating: "the cat and the dog. ", count: 50).write(toFile: text, atomically: true, encoding: .utf8)
        let p = try run("lmeval", ["perplexity", "-m", dir + "/q.lmpk", "--text", text, "--ctx", "64", "--baseline", dir + "/m", "--json", dir + "/p.json"])
        #expect(p.status == 0 && p.stdout.contains("PPL"), "\(p.stderr)")
        let r = try JSON.parse(file: dir + "/p.json")
        let ppl = try #require(r["perplexity"]?.double), kl = try #require(r["mean_kl"]?.double)
        #expect(ppl.isFinite && ppl > 1 && kl.isFinite && kl >= 0, "\(scheme): PPL \(ppl), KL \(kl)")
        // Sharding slices the low-bit tensors by whole groups; the shards compute the same perplexity.
        let s = try run("lmconvert", ["shard", "--tp", "2", "-i", dir + "/q.lmpk", "-o", dir + "/tp2"])
        #expect(s.status == 0, "\(s.stderr)")
        if s.status == 0 {
            let ps = try run("lmeval", ["perplexity", "--shards", dir + "/tp2", "--text", text, "--ctx", "64", "--json", dir + "/ps.json"])
            #expect(ps.status == 0, "\(ps.stderr)")
            let sharded = try JSON.parse(file: dir + "/ps.json")["perplexity"]?.double ?? .nan
            #expect(abs(sharded - ppl) <= 1e-3 * ppl, "\(scheme): sharded PPL \(sharded) vs \(ppl)")
        }
    }
}
