import Foundation
import LMCore
import LMTestSupport
import Testing

/// `mpirun`, or nil (then the MPI cases print SKIPPED; under CI its absence fails).
func mpirun() -> String? {
    for p in ["/usr/bin/mpirun", "/usr/local/bin/mpirun"] where FileManager.default.isExecutableFile(atPath: p) { return p }
    if SharedData.isCI { Issue.record("mpirun not found: .ci/run installs openmpi-bin (scripts/setup.sh)") } else { print("SKIPPED: MPI cases (no mpirun; bash scripts/setup.sh installs openmpi-bin)") }
    return nil
}

/// Runs `lmeval ARGS` as `np` MPI processes on this machine (as root in containers).
func runMPI(_ np: Int, _ args: [String]) throws -> RunResult {
    guard let m = mpirun(), let lmeval = binary("lmeval") else { throw CLIError("no mpirun or lmeval") }
    return try runProcess(m, ["--allow-run-as-root", "--oversubscribe", "-np", "\(np)", lmeval] + args)
}

func jsonFile(_ path: String) throws -> JSON { try JSON.parse(file: path) }

@Suite("lmconvert shard and lmeval --shards, in-process and MPI", .serialized)
struct ShardCLITests {
    @Test("stories260K --tp 2: plan, rank files, perplexity and greedy generation equal in-process, under mpirun -np 2, and to the whole model")
    func storiesEndToEnd() throws {
        guard let root = sharedRoot("stories260K shards") else { return }
        let dir = scratch("shard")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let model = root + "/models/stories260k"
        let text = root + "/text/tinystories_v2_valid_first100.txt"
        // Options that cannot work are refused before anything is written.
        let zero = try run("lmconvert", ["shard", "--tp", "0", "-i", model, "-o", dir + "/zero"])
        #expect(zero.status != 0 && zero.stderr.contains("--tp 0"), "\(zero.stderr)")
        let nine = try run("lmconvert", ["shard", "--tp", "9", "-i", model, "-o", dir + "/nine"])
        #expect(nine.status != 0 && nine.stderr.contains("4 KV heads") && nine.stderr.contains("nearest valid choice: --tp 2"), "\(nine.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/nine/manifest.json"))
        // Dry run: the plan table, nothing written.
        let dry = try run("lmconvert", ["shard", "--tp", "2", "-i", model, "-o", dir + "/dry", "--dry-run"])
        #expect(dry.status == 0 && dry.stdout.contains("rank 1: KV heads 2..<4") && dry.stdout.contains("model.layers.4.mlp.down_proj.weight"), "\(dry.stdout)\(dry.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/dry"))
        // HF folder in: built with the quantize options, then sharded.
        let s = try run("lmconvert", ["shard", "--tp", "2", "-i", model, "-o", dir + "/tp2", "--scheme", "int8", "--json"])
        #expect(s.status == 0, "\(s.stderr)")
        // The same command again: the same bytes (the manifest records the input's name, not a temporary file).
        let again = try run("lmconvert", ["shard", "--tp", "2", "-i", model, "-o", dir + "/tp2-again", "--scheme", "int8"])
        #expect(again.status == 0, "\(again.stderr)")
        for n in ["manifest.json", "rank-0-of-2.lmpk", "rank-1-of-2.lmpk"] {
            let same = FileManager.default.contents(atPath: dir + "/tp2/" + n) == FileManager.default.contents(atPath: dir + "/tp2-again/" + n)
            #expect(same, "\(n) differs between two runs")
        }
        let files = try FileManager.default.contentsOfDirectory(atPath: dir + "/tp2").sorted()
        #expect(files == ["manifest.json", "rank-0-of-2.lmpk", "rank-1-of-2.lmpk"], "\(files)")
        let whole = try run("lmconvert", ["quantize", "-i", model, "-o", dir + "/whole.lmpk", "--scheme", "int8"])
        #expect(whole.status == 0)
        // Perplexity: whole, in-process shards, MPI shards (1 thread per rank in both).
        let common = ["--text", text, "--protocol", "documents", "--chunks", "20"]
        let w = try run("lmeval", ["perplexity", "-m", dir + "/whole.lmpk", "--json", dir + "/w.json"] + common)
        let i = try run("lmeval", ["perplexity", "--shards", dir + "/tp2", "--threads", "2", "--json", dir + "/i.json"] + common)
        #expect(w.status == 0 && i.status == 0, "\(w.stderr)\(i.stderr)")
        let pw = try jsonFile(dir + "/w.json")["perplexity"]?.double ?? 0, pi = try jsonFile(dir + "/i.json")["perplexity"]?.double ?? -1
        #expect(String(format: "%.4g", pw) == String(format: "%.4g", pi), "whole \(pw) vs tp 2 \(pi)")
        // A lone rank file is refused as a model.
        let lone = try run("lmeval", ["perplexity", "-m", dir + "/tp2/rank-0-of-2.lmpk"] + common)
        #expect(lone.status != 0 && lone.stderr.contains("rank 0 of a 2-way") && lone.stderr.contains("--shards"), "\(lone.stderr)")
        let gen = ["generate", "--prompt", "Once upon a time", "--max-tokens", "24", "--json"]
        let gi = try run("lmeval", gen + [dir + "/gi.json", "--shards", dir + "/tp2", "--threads", "2"])
        #expect(gi.status == 0, "\(gi.stderr)")
        guard mpirun() != nil else { return }
        let m = try runMPI(2, ["perplexity", "--shards", dir + "/tp2", "--threads", "1", "--json", dir + "/m.json"] + common)
        #expect(m.status == 0, "\(m.stderr)")
        #expect(m.stdout.components(separatedBy: "PPL ").count == 2, "only rank 0 prints: \(m.stdout)")
        let ni = try jsonFile(dir + "/i.json")["nll_sum"]?.double, nm = try jsonFile(dir + "/m.json")["nll_sum"]?.double
        #expect(ni != nil && ni == nm, "in-process \(ni ?? .nan) vs MPI \(nm ?? .nan): must agree exactly")
        let gm = try runMPI(2, gen + [dir + "/gm.json", "--shards", dir + "/tp2", "--threads", "1"])
        #expect(gm.status == 0, "\(gm.stderr)")
        let ti = try jsonFile(dir + "/gi.json")["generated_ids"]?.serialized(), tm = try jsonFile(dir + "/gm.json")["generated_ids"]?.serialized()
        #expect(ti != nil && ti == tm, "generated ids: in-process \(ti ?? "-") vs MPI \(tm ?? "-")")
        // A world that differs from the sharding's.
        let three = try runMPI(3, ["perplexity", "--shards", dir + "/tp2", "--threads", "1"] + common)
        #expect(three.status != 0 && three.stderr.contains("mpirun -np 2"), "\(three.stderr)")
    }
}
