import Foundation
import LMCore
import LMFixtures
import LMTestSupport
import Testing

/// Finds a built executable of this package (same build folder as the tests).
func binary(_ name: String) -> String? {
    var candidates: [String] = []
    if let d = ProcessInfo.processInfo.environment["LMKIT_BIN_DIR"] { candidates.append(d + "/" + name) }
    let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
    var dir = exe.deletingLastPathComponent()
    for _ in 0..<4 { candidates.append(dir.path + "/" + name); dir = dir.deletingLastPathComponent() }
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    candidates += [root + "/.build/release/" + name, root + "/.build/debug/" + name]
    return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
}

struct RunResult { let status: Int32; let stdout: String; let stderr: String }

func run(_ name: String, _ args: [String]) throws -> RunResult {
    guard let path = binary(name) else { throw CLIError("executable '\(name)' not built (run `swift build -c release` first)") }
    return try runProcess(path, args)
}

/// Runs `path` with `args` (and extra environment), no standard input; collects both outputs.
func runProcess(_ path: String, _ args: [String], env: [String: String] = [:]) throws -> RunResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    if !env.isEmpty { p.environment = ProcessInfo.processInfo.environment.merging(env) { _, new in new } }
    p.standardInput = FileHandle.nullDevice
    let out = Pipe(), err = Pipe()
    p.standardOutput = out; p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return RunResult(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
}

struct CLIError: Error, CustomStringConvertible { let description: String; init(_ s: String) { description = s } }

func scratch(_ n: String) -> String {
    let d = NSTemporaryDirectory() + "lmkit-cli-\(n)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

@Suite("CLI end to end", .serialized)
struct CLITests {
    @Test("help and version exit 0")
    func help() throws {
        for b in ["lmconvert", "lmeval"] {
            let r = try run(b, ["--help"])
            #expect(r.status == 0 && r.stdout.contains("USAGE"))
        }
        #expect(try run("lmeval", ["perplexity", "--help"]).stdout.contains("--protocol"))
    }

    @Test("llama2.c import → lmeval perplexity reproduces the published stories260K figure; JSON written")
    func importAndEvaluate() throws {
        guard let root = sharedRoot("CLI import + perplexity") else { return }
        let dir = scratch("st")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let imp = try run("lmconvert", ["import", "-i", root + "/models/stories260k/original/stories260K.bin", "-o", dir + "/model"])
        #expect(imp.status == 0, "\(imp.stderr)")
        let r = try run("lmeval", ["perplexity", "-m", dir + "/model", "--text", root + "/text/tinystories_v2_valid_first100.txt",
                                   "--protocol", "documents", "--ctx", "128", "--json", dir + "/ppl.json"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("bits/byte  0.8132"), "\(r.stdout)")
        #expect(r.stdout.contains("12685 tokens") && r.stdout.contains("27821 bytes"))
        let j = try JSON.parse(file: dir + "/ppl.json")
        #expect(j["tokens_scored"]?.int == 12685 && j["protocol"]?["name"]?.string == "documents")
        let g = try run("lmeval", ["generate", "-m", dir + "/model", "--max-tokens", "20"])
        #expect(g.status == 0 && g.stdout.hasPrefix("Once upon a time, there was a little girl named Lily."), "\(g.stdout)")
    }

    @Test("generate with a seed is reproducible; greedy on a synthetic model")
    func generateSynthetic() throws {
        let dir = scratch("gen")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try SyntheticModel.write(SyntheticModelSpec(), to: dir)
        let a = try run("lmeval", ["generate", "-m", dir, "--prompt", "the cat", "--max-tokens", "12", "--temperature", "0.8", "--seed", "7", "--ids", "--ignore-eos"])
        let b = try run("lmeval", ["generate", "-m", dir, "--prompt", "the cat", "--max-tokens", "12", "--temperature", "0.8", "--seed", "7", "--ids", "--ignore-eos"])
        #expect(a.status == 0 && a.stdout == b.stdout && a.stdout.split(separator: " ").count >= 12, "\(a.stderr)")
        #expect(a.stderr.contains("tokens/s"))
    }

    @Test("bad inputs: clear message naming the file/tensor, exit code 1, no crash")
    func badInputs() throws {
        let dir = scratch("bad")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try SyntheticModel.write(SyntheticModelSpec(), to: dir + "/ok")
        let text = dir + "/t.txt"
        try String(repeating: "hello world. ", count: 100).write(toFile: text, atomically: true, encoding: .utf8)
        func ppl(_ model: String) throws -> RunResult { try run("lmeval", ["perplexity", "-m", model, "--text", text, "--ctx", "32"]) }
        #expect(try ppl(dir + "/ok").status == 0)

        func variant(_ name: String, _ mutate: (String) throws -> Void) throws -> String {
            let d = dir + "/" + name
            try FileManager.default.copyItem(atPath: dir + "/ok", toPath: d)
            try mutate(d)
            return d
        }
        let st = "/model.safetensors"
        // Truncated weights.
        let trunc = try variant("trunc") { d in
            let data = try Data(contentsOf: URL(fileURLWithPath: d + st))
            try data.prefix(data.count - 1000).write(to: URL(fileURLWithPath: d + st))
        }
        var r = try ppl(trunc)
        #expect(r.status == 1 && r.stderr.contains("model.safetensors") && r.stderr.contains("truncated"), "\(r.stderr)")
        // Corrupt header JSON.
        let corrupt = try variant("corrupt") { d in
            var data = try Data(contentsOf: URL(fileURLWithPath: d + st))
            data[9] = UInt8(ascii: "#")
            try data.write(to: URL(fileURLWithPath: d + st))
        }
        r = try ppl(corrupt)
        #expect(r.status == 1 && r.stderr.contains("malformed JSON"), "\(r.stderr)")
        // Overlapping offsets: rewrite the second tensor's begin offset to 0.
        let overlap = try variant("overlap") { d in
            var data = try Data(contentsOf: URL(fileURLWithPath: d + st))
            let n = Int(data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
            var header = String(decoding: data[8..<(8 + n)], as: UTF8.self)
            let range = header.range(of: #"\[[0-9]+,([0-9]+)\]"#, options: .regularExpression, range: header.range(of: "model.layers.0.input_layernorm")!.upperBound..<header.endIndex)!
            let old = String(header[range])
            let end = old.split(separator: ",")[1]
            let begin = Int(old.dropFirst().split(separator: ",")[0])!
            let newText = "[\(max(begin - 8, 0)),\(Int(end.dropLast())! - 8)]"
            header.replaceSubrange(range, with: newText.padding(toLength: old.count, withPad: " ", startingAt: 0))
            data.replaceSubrange(8..<(8 + n), with: Array(header.utf8))
            try data.write(to: URL(fileURLWithPath: d + st))
        }
        r = try ppl(overlap)
        #expect(r.status == 1 && (r.stderr.contains("overlaps") || r.stderr.contains("contiguous")), "\(r.stderr)")
        // Unknown architecture.
        let arch = try variant("arch") { d in
            let c = try String(contentsOfFile: d + "/config.json", encoding: .utf8).replacingOccurrences(of: "LlamaForCausalLM", with: "FalconForCausalLM")
            try c.write(toFile: d + "/config.json", atomically: true, encoding: .utf8)
        }
        r = try ppl(arch)
        #expect(r.status == 1 && r.stderr.contains("FalconForCausalLM") && r.stderr.contains("supported"), "\(r.stderr)")
        // Missing tokenizer.
        let notok = try variant("notok") { d in try FileManager.default.removeItem(atPath: d + "/tokenizer.json") }
        r = try ppl(notok)
        #expect(r.status == 1 && r.stderr.contains("tokenizer.json"), "\(r.stderr)")
        // Missing tensor.
        let missing = try variant("missing") { d in
            var spec = SyntheticModelSpec(); spec.layers = 1
            try SyntheticModel.write(spec, to: d + "/one")
            try FileManager.default.removeItem(atPath: d + st)
            try FileManager.default.moveItem(atPath: d + "/one" + st, toPath: d + st)
        }
        r = try ppl(missing)
        #expect(r.status == 1 && r.stderr.contains("model.layers.1."), "\(r.stderr)")
        // Nonexistent paths and bad flags.
        r = try ppl(dir + "/nope")
        #expect(r.status == 1 && r.stderr.contains("nope"))
        r = try run("lmeval", ["perplexity", "-m", dir + "/ok", "--text", dir + "/missing.txt"])
        #expect(r.status != 0 && r.stderr.contains("missing.txt"))
        r = try run("lmeval", ["perplexity", "-m", dir + "/ok", "--text", text, "--protocol", "bogus"])
        #expect(r.status != 0 && r.stderr.contains("bogus"))
    }

    @Test("import of a truncated GGUF fails naming the tensor and leaves no model file")
    func truncatedGGUF() throws {
        guard let root = sharedRoot("CLI truncated GGUF") else { return }
        let dir = scratch("gguf")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let src = root + "/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
        let h = try FileHandle(forReadingFrom: URL(fileURLWithPath: src))
        let part = h.readData(ofLength: 20_000_000)
        try part.write(to: URL(fileURLWithPath: dir + "/t.gguf"))
        let r = try run("lmconvert", ["import", "-i", dir + "/t.gguf", "-o", dir + "/out"])
        #expect(r.status == 1 && r.stderr.contains("t.gguf") && r.stderr.contains("tensor '"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/out/model.safetensors"))
        let r2 = try run("lmconvert", ["import", "-i", dir + "/t.txt", "-o", dir + "/out"])
        #expect(r2.status != 0 && r2.stderr.contains("unknown format"))
    }
}
