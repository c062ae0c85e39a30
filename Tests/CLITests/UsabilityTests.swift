import Foundation
import LMFixtures
import Testing

/// The repository root (for scripts/).
let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

func runScript(_ script: String, _ args: [String], env: [String: String]) throws -> RunResult {
    try runProcess("/bin/bash", [repoRoot + "/" + script] + args, env: env)
}

@Suite("What a new user meets: set-up script, usage errors, help text", .serialized)
struct UsabilityTests {
    @Test("scripts/setup.sh --check reports missing packages from a fake package list, touching nothing")
    func setupCheck() throws {
        let dir = scratch("setup")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let list = dir + "/installed.txt"
        try "libopenblas-dev\npkg-config\nzlib1g-dev\n".write(toFile: list, atomically: true, encoding: .utf8)
        var r = try runScript("scripts/setup.sh", ["--check"], env: ["LMKIT_SETUP_INSTALLED": list])
        #expect(r.status == 2, "\(r.stdout)\(r.stderr)")
        #expect(r.stdout.contains("missing: libjson-c-dev"), "\(r.stdout)")
        #expect(!r.stdout.contains("missing: libopenblas-dev"))
        #expect(r.stdout.contains("apt-get install -y --no-install-recommends libjson-c-dev"))
        // Without --check, the fake list still never reaches apt-get.
        r = try runScript("scripts/setup.sh", [], env: ["LMKIT_SETUP_INSTALLED": list])
        #expect(r.status == 2 && r.stdout.contains("not touching the system"), "\(r.stdout)\(r.stderr)")
        // Everything present: exit 0.
        try "libopenblas-dev\npkg-config\nzlib1g-dev\nlibjson-c-dev\nlibopenmpi-dev\nopenmpi-bin\n".write(toFile: list, atomically: true, encoding: .utf8)
        r = try runScript("scripts/setup.sh", ["--check"], env: ["LMKIT_SETUP_INSTALLED": list])
        #expect(r.status == 0 && r.stdout.contains("all present"), "\(r.stdout)\(r.stderr)")
        // The required list can be overridden (later issues add packages).
        r = try runScript("scripts/setup.sh", ["--check"], env: ["LMKIT_SETUP_INSTALLED": list, "LMKIT_SETUP_PACKAGES": "pkg-config libexample-dev"])
        #expect(r.status == 2 && r.stdout.contains("missing: libexample-dev"), "\(r.stdout)")
        r = try runScript("scripts/setup.sh", ["--frobnicate"], env: [:])
        #expect(r.status == 64 && r.stderr.contains("unknown option"))
    }

    @Test("a subcommand's validation error shows that subcommand's usage, not the top level's")
    func subcommandUsage() throws {
        let cases: [(String, [String], String)] = [
            ("lmconvert", ["quantize", "-i", "x", "-o", "y.lmpk", "--scheme", "int5"], "lmconvert quantize"),
            ("lmconvert", ["quantize", "-i", "x", "-o", "y.bin"], "lmconvert quantize"),
            ("lmconvert", ["quantize", "-i", "x", "-o", "y.lmpk", "--override", "(=int8"], "lmconvert quantize"),
            ("lmconvert", ["import", "-i", "x.txt", "-o", "y"], "lmconvert import"),
            ("lmconvert", ["verify", "/nonexistent/file.lmpk"], "lmconvert verify"),
            ("lmeval", ["perplexity", "-m", "x", "--text", "/nonexistent.txt"], "lmeval perplexity"),
            ("lmeval", ["bench", "-m", "x", "--threads", "0"], "lmeval bench"),
        ]
        for (bin, args, usage) in cases {
            let r = try run(bin, args)
            #expect(r.status != 0, "\(args)")
            #expect(r.stderr.contains("Usage: \(usage)"), "\(args): \(r.stderr)")
            #expect(!r.stderr.contains("<subcommand>"), "\(args): \(r.stderr)")
        }
    }

    @Test("an unknown or unavailable kernel set is a clear error naming the known ones")
    func badKernels() throws {
        let dir = scratch("kern")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try SyntheticModel.write(SyntheticModelSpec(), to: dir + "/m")
        let r = try run("lmeval", ["bench", "-m", dir + "/m", "--prefill", "4", "--decode", "2", "--kernels", "neon"])
        #expect(r.status == 1 && r.stderr.contains("unknown kernel set 'neon'") && r.stderr.contains("avx2"), "\(r.stderr)")
        let e = try runProcess(binary("lmeval")!, ["bench", "-m", dir + "/m", "--prefill", "4", "--decode", "2"], env: ["LMKIT_KERNELS": "sse9"])
        #expect(e.status == 1 && e.stderr.contains("unknown kernel set 'sse9'"), "\(e.stderr)")
    }

    @Test("help paragraphs are wrapped by the parser, not broken by hand inside sentences")
    func helpWrapping() throws {
        for (bin, sub) in [("lmconvert", "import"), ("lmconvert", "quantize"), ("lmeval", "perplexity")] {
            let r = try run(bin, [sub, "--help"])
            #expect(r.status == 0)
            let lines = r.stdout.components(separatedBy: "\n")
            guard let end = lines.firstIndex(where: { $0.hasPrefix("USAGE:") }) else { Issue.record("no USAGE in \(sub) help"); continue }
            // Paragraphs of the overview/discussion: every unindented line but a paragraph's last fills the width.
            let text = Array(lines[0..<end])
            for (i, line) in text.enumerated() where i + 1 < text.count {
                let next = text[i + 1]
                if line.isEmpty || line.hasPrefix(" ") || next.isEmpty || next.hasPrefix(" ") { continue }
                #expect(line.count >= 50, "\(bin) \(sub) --help breaks a sentence early: '\(line)' / '\(next)'")
            }
            #expect(text.allSatisfy { $0.count <= 80 }, "\(bin) \(sub) --help has lines past 80 columns")
        }
    }
}
