import Foundation
import LMCore
import LMFixtures
import LMTestSupport
import Testing

@Suite("KV cache flags (perplexity, generate, bench)", .serialized)
struct KVCacheCLITests {
    @Test("bad KV options are errors naming the option, before any work; a fitting int8 cache runs and prints its pool")
    func errors() throws {
        let dir = scratch("kvflags")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try SyntheticModel.write(SyntheticModelSpec(), to: dir + "/m")
        let text = dir + "/t.txt"
        try String(repeating: "one two three four five six seven eight nine ten. ", count: 30).write(toFile: text, atomically: true, encoding: .utf8)
        let ppl = ["perplexity", "-m", dir + "/m", "--text", text, "--ctx", "64"]
        let cases: [([String], String)] = [
            (ppl + ["--kv-cache", "int3"], "unknown KV cache scheme 'int3'"),
            (ppl + ["--kv-cache", "k=int8,x=int4"], "expected 'k=SCHEME,v=SCHEME'"),
            (ppl + ["--quant-policy", "2"], "--quant-policy"),
            (ppl + ["--kv-cache", "int8", "--quant-policy", "8"], "not both"),
            (ppl + ["--cache-max-entry-count", "0"], "--cache-max-entry-count must be in (0, 1]"),
            (ppl + ["--cache-max-entry-count", "1.5"], "--cache-max-entry-count must be in (0, 1]"),
            (ppl + ["--kv-cache-size", "lots"], "--kv-cache-size"),
            (ppl + ["--kv-cache-size", "1000"], "smaller than one block"),
            (ppl + ["--parallel", "99"], "--parallel 99 is larger than the number of chunks"),
            (ppl + ["--parallel", "4", "--kv-cache-size", "8KiB", "--kv-cache", "int8"], "KV cache too small"),
            (["generate", "-m", dir + "/m", "--prompt", "one two", "--max-tokens", "200", "--kv-cache-size", "64KiB"], "KV cache too small"),
            (["bench", "-m", dir + "/m", "--prefill", "8", "--decode", "8", "--depth", "100", "--concurrency", "8", "--kv-cache-size", "64KiB"], "KV cache too small"),
            (ppl + ["--cache-block-seq-len", "0"], "--cache-block-seq-len"),
        ]
        for (args, want) in cases {
            let r = try run("lmeval", args)
            #expect(r.status != 0 && r.stderr.contains(want), "\(args.dropFirst(6)): status \(r.status), stderr: \(r.stderr.prefix(400))")
            #expect(!r.stdout.contains("PPL"), "nothing ran: \(args.dropFirst(6))")
        }
        let ok = try run("lmeval", ppl + ["--kv-cache", "k=int8,v=int4", "--parallel", "2"])
        #expect(ok.status == 0, "\(ok.stderr)")
        #expect(ok.stderr.contains("KV cache: k=int8,v=int4") && ok.stdout.contains("kv cache   k=int8,v=int4, 2 windows at once"), "\(ok.stdout)\(ok.stderr)")
    }
}

@Suite("Runs that would not fit in memory are refused before allocating", .serialized)
struct MemoryRefusalTests {
    @Test("perplexity --parallel beyond available memory: a clear error naming the flags (memory pinned by LMKIT_AVAILABLE_MEMORY)")
    func perplexityMemory() throws {
        let dir = scratch("memlimit")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try SyntheticModel.write(SyntheticModelSpec(), to: dir + "/m")
        let text = dir + "/t.txt"
        try String(repeating: "one two three four five six seven eight nine ten. ", count: 30).write(toFile: text, atomically: true, encoding: .utf8)
        guard let bin = binary("lmeval") else { throw CLIError("lmeval not built") }
        let args = ["perplexity", "-m", dir + "/m", "--text", text, "--ctx", "64", "--parallel", "4"]
        let r = try runProcess(bin, args, env: ["LMKIT_AVAILABLE_MEMORY": "100000"])
        #expect(r.status == 1 && r.stderr.contains("GiB is available") && r.stderr.contains("--parallel"), "\(r.status): \(r.stderr)")
        #expect(!r.stdout.contains("PPL"))
        let ok = try runProcess(bin, args, env: ["LMKIT_AVAILABLE_MEMORY": "1000000000"])
        #expect(ok.status == 0, "\(ok.stderr)")
    }
}
