import Foundation
import LMCore
import LMFixtures
import LMFormats
import Testing

/// Multiplies one float16 scale of `tensor` in an .lmpk by `factor` and re-seals the
/// file (tensor CRC and header CRC), so it is structurally valid but numerically wrong.
func damageScale(_ path: String, tensor: String, factor: Float) throws {
    let f = try LMPKFile(path: path)
    let t = f[tensor]!
    var data = try Data(contentsOf: URL(fileURLWithPath: path))
    let base = t.sections[0].baseAddress! - UnsafeRawPointer(f.tensors[0].sections[0].baseAddress! - f.tensors[0].range.lowerBound)
    let scaleOffset = t.sections[1].baseAddress! - t.sections[0].baseAddress! + base
    let h = data[scaleOffset..<(scaleOffset + 2)].withUnsafeBytes { $0.loadUnaligned(as: UInt16.self) }
    let bumped = floatToHalf(halfToFloat(h) * factor)
    withUnsafeBytes(of: bumped) { data[scaleOffset] = $0[0]; data[scaleOffset + 1] = $0[1] }
    var crc: UInt32 = 0
    for s in t.sections {
        let off = s.baseAddress! - t.sections[0].baseAddress! + base
        crc = data[off..<(off + s.count)].withUnsafeBytes { crc32($0, seed: crc) }
    }
    let hlen = Int(data[8..<16].withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
    var header = String(decoding: data[24..<(24 + hlen)], as: UTF8.self)
    let oldHex = String(t.crc32, radix: 16), newHex = String(crc, radix: 16)
    let pad = { (s: String) in String(repeating: "0", count: 8 - s.count) + s }
    let marker = "\"name\":\"\(tensor)\""
    let at = header.range(of: marker)!
    let crcRange = header.range(of: "\"crc32\":\"\(pad(oldHex))\"", range: at.upperBound..<header.endIndex)!
    header.replaceSubrange(crcRange, with: "\"crc32\":\"\(pad(newHex))\"")
    let hb = Array(header.utf8)
    data.replaceSubrange(24..<(24 + hlen), with: hb)
    withUnsafeBytes(of: hb.withUnsafeBytes { crc32($0) }.littleEndian) { for k in 0..<4 { data[16 + k] = $0[k] } }
    try data.write(to: URL(fileURLWithPath: path))
}

@Suite("lmeval gate", .serialized)
struct GateCLITests {
    func setup() throws -> (dir: String, text: String, sha: String) {
        let dir = scratch("gate")
        try SyntheticModel.write(SyntheticModelSpec(), to: dir + "/base")
        let text = dir + "/text.txt"
        try String(repeating: "The cat sat on the mat. It was 42 times happier than the dog in 1999.\n", count: 20).write(toFile: text, atomically: true, encoding: .utf8)
        return (dir, text, try sha256Hex(file: text))
    }

    func gate(_ dir: String, _ sha: String, candidates: String, extra: String = "") -> String {
        #"{"version": 1, "threads": 2, "cache_dir": "cache", "suites": [{"name": "syn", "data": {"text": "text.txt", "sha256": "\#(sha)", "protocol": "chunks", "ctx": 64}\#(extra),"#
            + #" "baseline": {"model": "base"}, "candidates": [\#(candidates)]}]}"#
    }

    @Test("pass, cache reuse, identical numbers across runs, JUnit and Markdown reports")
    func passAndDeterminism() throws {
        let (dir, _, sha) = try setup()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try gate(dir, sha, candidates: #"{"name": "int8", "recipe": {"source": "base", "scheme": "int8"}, "limits": {"ppl_ratio_max": 1.05, "mean_kl_max": 0.05, "top1_min": 0.8}}"#)
            .write(toFile: dir + "/g.json", atomically: true, encoding: .utf8)
        let a = try run("lmeval", ["gate", dir + "/g.json", "--json", dir + "/a.json", "--junit", dir + "/a.xml", "--markdown", dir + "/a.md"])
        #expect(a.status == 0, "\(a.stdout)\(a.stderr)")
        #expect(a.stdout.contains("1 passed, 0 failed") && a.stdout.contains("cache hits: 0"))
        let b = try run("lmeval", ["gate", dir + "/g.json", "--json", dir + "/b.json"])
        #expect(b.status == 0 && b.stdout.contains("cache hits: 1"))
        let ja = try JSON.parse(file: dir + "/a.json"), jb = try JSON.parse(file: dir + "/b.json")
        #expect(ja["candidates"] == jb["candidates"] || {
            // "seconds" differs; every metric must be identical.
            let ca = ja["candidates"]!.array![0], cb = jb["candidates"]!.array![0]
            return ca["checks"] == cb["checks"] && ca["perplexity"] == cb["perplexity"] && ca["mean_kl"] == cb["mean_kl"]
        }())
        let xml = try String(contentsOfFile: dir + "/a.xml", encoding: .utf8)
        #expect(xml.contains("<testsuites") && xml.contains("<testcase classname=\"syn\" name=\"int8\"") && !xml.contains("<failure"))
        #expect(try String(contentsOfFile: dir + "/a.md", encoding: .utf8).contains("| syn | int8 | mean_kl |"))
    }

    @Test("a damaged candidate (one wrong scale) fails its gate with a readable message, exit 1")
    func damaged() throws {
        let (dir, _, sha) = try setup()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try run("lmconvert", ["quantize", "-i", dir + "/base", "-o", dir + "/good.lmpk", "--scheme", "int4-g32"]).status == 0)
        try FileManager.default.copyItem(atPath: dir + "/good.lmpk", toPath: dir + "/bad.lmpk")
        try damageScale(dir + "/bad.lmpk", tensor: "model.layers.0.mlp.down_proj.weight", factor: 40)
        #expect(try run("lmconvert", ["verify", dir + "/bad.lmpk"]).status == 0, "the damage must be numerically wrong but structurally valid")
        let limits = #""limits": {"ppl_ratio_max": 1.2, "mean_kl_max": 0.1, "top1_min": 0.6}"#
        try gate(dir, sha, candidates: #"{"name": "good", "model": "good.lmpk", \#(limits)}, {"name": "damaged", "model": "bad.lmpk", \#(limits)}"#)
            .write(toFile: dir + "/g.json", atomically: true, encoding: .utf8)
        let r = try run("lmeval", ["gate", dir + "/g.json", "--junit", dir + "/r.xml"])
        #expect(r.status == 1, "\(r.stdout)\(r.stderr)")
        #expect(r.stdout.contains("1 passed, 1 failed"))
        #expect(r.stdout.contains("FAILED syn/damaged: mean_kl"), "\(r.stdout)")
        #expect(!r.stdout.contains("FAILED syn/good"))
        #expect(try String(contentsOfFile: dir + "/r.xml", encoding: .utf8).contains("<failure message=\"mean_kl"))
    }

    @Test("malformed gate files and changed data exit 2 naming the key")
    func malformed() throws {
        let (dir, _, sha) = try setup()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ok = #"{"name": "c", "recipe": {"source": "base", "scheme": "int8"}, "limits": {"top1_min": 0.5}}"#
        let cases: [(String, String)] = [
            (gate(dir, sha, candidates: #"{"name": "c", "recipe": {"source": "base", "scheme": "int8"}, "limits": {"top1_minimum": 0.5}}"#), "suites[0].candidates[0].limits.top1_minimum"),
            (gate(dir, sha, candidates: #"{"name": "c", "recipe": {"source": "base", "scheme": "int9"}, "limits": {"top1_min": 0.5}}"#), "suites[0].candidates[0].recipe.scheme"),
            (gate(dir, sha, candidates: #"{"name": "c", "recipe": {"source": "base", "scheme": "int8", "prune": {"method": "wanda"}}, "limits": {"top1_min": 0.5}}"#), "recipe.prune"),
            (gate(dir, sha, candidates: #"{"name": "c", "recipe": {"source": "base", "scheme": "int8"}, "limits": {}}"#), "limits"),
            (gate(dir, sha, candidates: #"{"name": "c", "recipe": {"source": "base", "scheme": "int8", "shard": {"tp": 0}}, "limits": {"top1_min": 0.5}}"#), "recipe.shard.tp"),
            (gate(dir, sha, candidates: #"{"name": "c", "recipe": {"source": "base", "scheme": "int8", "shard": {"tp": 2, "ranks": 2}}, "limits": {"top1_min": 0.5}}"#), "recipe.shard.ranks"),
            (gate(dir, sha, candidates: #"{"name": "c", "recipe": {"source": "base", "scheme": "int8", "shard": {"tp": 2, "vocab_parallel": "yes"}}, "limits": {"top1_min": 0.5}}"#), "recipe.shard.vocab_parallel"),
            (gate(dir, String(repeating: "0", count: 64), candidates: ok), "suites[0].data.sha256"),
            (gate(dir, sha, candidates: ok).replacingOccurrences(of: "\"version\": 1", with: "\"version\": 7"), "version"),
            (gate(dir, sha, candidates: ok).replacingOccurrences(of: "text.txt", with: "missing.txt"), "suites[0].data.text"),
            ("{not json", "(file)"),
        ]
        for (k, (text, key)) in cases.enumerated() {
            try text.write(toFile: dir + "/g\(k).json", atomically: true, encoding: .utf8)
            let r = try run("lmeval", ["gate", dir + "/g\(k).json"])
            #expect(r.status == 2 && r.stderr.contains(key), "case \(k): status \(r.status): \(r.stderr)")
        }
    }
}
