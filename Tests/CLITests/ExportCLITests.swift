import Foundation
import LMCore
import LMFixtures
import LMFormats
import LMQuant
import Testing

@Suite("lmconvert export --format safetensors", .serialized)
struct ExportCLITests {
    @Test("a pruned int4-g32+2:4 model exports its reference decoding exactly (f32), rounded once (f16, bf16); pruned weights stay 0; config, tokenizer, generation config and provenance are written")
    func safetensors() throws {
        let (dir, _) = try PruneCLITests.fixture("export")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let p = try run("lmconvert", ["prune", "-i", dir + "/m", "-o", dir + "/p.lmpk", "--method", "magnitude", "--pattern", "2:4", "--scheme", "int4-g32"])
        #expect(p.status == 0, "\(p.stderr)")
        let src = try LMPKFile(path: dir + "/p.lmpk")
        for dtype in ["f32", "f16", "bf16"] {
            let out = dir + "/hf-\(dtype)"
            let r = try run("lmconvert", ["export", "-i", dir + "/p.lmpk", "-o", out, "--format", "safetensors", "--dtype", dtype, "--json"])
            #expect(r.status == 0, "\(r.stderr)")
            let summary = try JSON.parse(Array(r.stdout.utf8), source: "export")
            let store = try TensorStore(path: out)
            #expect(Set(store.names) == Set(src.tensors.map(\.name)))
            for t in src.tensors {
                let ref = RoundToNearest.dequantize(scheme: t.scheme, rows: t.rows, cols: t.cols, sections: t.sections)
                let got = try store.require(t.name).toFloat()
                let want: [Float] = dtype == "f32" ? ref : dtype == "f16" ? ref.map { halfToFloat(floatToHalf($0)) } : ref.map { bf16ToFloat(floatToBF16($0)) }
                #expect(got == want, "\(dtype) \(t.name): the exported values differ from the reference decoding")
                if t.scheme.sparsity != nil { #expect(zip(ref, got).allSatisfy { $0 != 0 || $1 == 0 }) }
            }
            #expect(summary["tensors"]?.array?.count == src.tensors.count && summary["tensors"]?.array?.first?["sha256"]?.string?.count == 64)
            let config = try JSON.parse(file: out + "/config.json")
            #expect(config["torch_dtype"]?.string == ["f32": "float32", "f16": "float16", "bf16": "bfloat16"][dtype])
            #expect(try ModelConfig.load(path: out) == src.config)
            #expect(FileManager.default.fileExists(atPath: out + "/tokenizer.json") && FileManager.default.fileExists(atPath: out + "/generation_config.json"))
            let meta = try SafetensorsFile(path: out + "/model.safetensors").metadata
            #expect(meta["lmkit_source"] == "p.lmpk" && meta["lmkit_pruning"]?.contains("2:4") == true && meta["lmkit_provenance"]?.contains("int4-g32") == true)
            let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp-") || $0.contains(".old-") }
            #expect(leftovers.isEmpty, "\(leftovers)")
        }
    }

    @Test("--max-shard-size: files of at most that many tensor bytes in order, an index our reader follows to the same values; a bad size is refused")
    func sharded() throws {
        let (dir, _) = try PruneCLITests.fixture("export-shards")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try run("lmconvert", ["quantize", "-i", dir + "/m", "-o", dir + "/q.lmpk", "--scheme", "int8-g32"]).status == 0)
        #expect(try run("lmconvert", ["export", "-i", dir + "/q.lmpk", "-o", dir + "/one", "--format", "safetensors"]).status == 0)
        let r = try run("lmconvert", ["export", "-i", dir + "/q.lmpk", "-o", dir + "/many", "--format", "safetensors", "--max-shard-size", "100KiB"])
        #expect(r.status == 0, "\(r.stderr)")
        let index = try JSON.parse(file: dir + "/many/model.safetensors.index.json")
        let files = Set(index["weight_map"]!.object!.map { $0.1.string! })
        #expect(files.count > 2 && !FileManager.default.fileExists(atPath: dir + "/many/model.safetensors"))
        var total = 0
        for f in files {
            let sf = try SafetensorsFile(path: dir + "/many/" + f)
            let bytes = sf.tensors.reduce(0) { $0 + $1.bytes.count }
            total += bytes
            #expect(bytes <= 100 * 1024 || sf.tensors.count == 1, "\(f): \(bytes) bytes in \(sf.tensors.count) tensors")
        }
        #expect(index["metadata"]?["total_size"]?.int == total)
        let one = try TensorStore(path: dir + "/one"), many = try TensorStore(path: dir + "/many")
        #expect(one.names == many.names)
        for n in one.names { #expect(try one.require(n).toFloat() == many.require(n).toFloat(), "\(n)") }
        let bad = try run("lmconvert", ["export", "-i", dir + "/q.lmpk", "-o", dir + "/bad", "--format", "safetensors", "--max-shard-size", "lots"])
        #expect(bad.status != 0 && bad.stderr.contains("--max-shard-size"), "\(bad.stderr)")
    }

    @Test("bad input: an existing output without --force (untouched), a rank file (the manifest's source named), a non-.lmpk input; --force replaces")
    func errors() throws {
        let (dir, _) = try PruneCLITests.fixture("export-err")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try run("lmconvert", ["quantize", "-i", dir + "/m", "-o", dir + "/q.lmpk", "--scheme", "int8"]).status == 0)
        try FileManager.default.createDirectory(atPath: dir + "/out", withIntermediateDirectories: true)
        try "keep".write(toFile: dir + "/out/x", atomically: true, encoding: .utf8)
        let e = try run("lmconvert", ["export", "-i", dir + "/q.lmpk", "-o", dir + "/out", "--format", "safetensors"])
        #expect(e.status != 0 && e.stderr.contains("--force"), "\(e.stderr)")
        #expect(FileManager.default.fileExists(atPath: dir + "/out/x"))
        let f = try run("lmconvert", ["export", "-i", dir + "/q.lmpk", "-o", dir + "/out", "--format", "safetensors", "--force"])
        #expect(f.status == 0, "\(f.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/out/x") && FileManager.default.fileExists(atPath: dir + "/out/model.safetensors"))
        #expect(try run("lmconvert", ["shard", "--tp", "2", "-i", dir + "/q.lmpk", "-o", dir + "/tp2"]).status == 0)
        let s = try run("lmconvert", ["export", "-i", dir + "/tp2/rank-1-of-2.lmpk", "-o", dir + "/bad", "--format", "safetensors"])
        #expect(s.status != 0 && s.stderr.contains("rank file") && s.stderr.contains("q.lmpk"), "\(s.stderr)")
        let g = try run("lmconvert", ["export", "-i", dir + "/m", "-o", dir + "/bad", "--format", "safetensors"])
        #expect(g.status != 0 && g.stderr.contains(".lmpk"), "\(g.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/bad"))
    }
}
