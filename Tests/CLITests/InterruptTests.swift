import Foundation
import LMCore
import LMFixtures
import LMTestSupport
import Testing

@Suite("Interrupted and failed writes leave nothing that looks valid", .serialized)
struct InterruptTests {
    func leftovers(_ dir: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasPrefix("out.lmpk") }
    }

    @Test("SIGINT and SIGTERM during `lmconvert quantize` remove the temporary file; no output")
    func signals() throws {
        let dir = scratch("interrupt")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // ~330 MB of float32 (6 layers): quantizing takes seconds, long enough to interrupt mid-write.
        var spec = SyntheticModelSpec(); spec.hidden = 1024; spec.intermediate = 2816; spec.layers = 6; spec.vocab = 8000
        spec.heads = 8; spec.kvHeads = 4; spec.headDim = 128
        try SyntheticModel.write(spec, to: dir + "/m")
        guard let bin = binary("lmconvert") else { throw CLIError("lmconvert not built") }
        for sig in [SIGINT, SIGTERM] {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: bin)
            p.arguments = ["quantize", "-i", dir + "/m", "-o", dir + "/out.lmpk", "--scheme", "int4-g32"]
            p.standardOutput = FileHandle.nullDevice; p.standardError = FileHandle.nullDevice; p.standardInput = FileHandle.nullDevice
            try p.run()
            let tmp = dir + "/out.lmpk.tmp-\(p.processIdentifier)"
            var waited = 0
            while !FileManager.default.fileExists(atPath: tmp) && waited < 20000 { usleep(1000); waited += 1 }
            #expect(FileManager.default.fileExists(atPath: tmp), "the temporary file should exist while quantizing")
            kill(p.processIdentifier, sig)
            p.waitUntilExit()
            #expect(p.terminationReason == .uncaughtSignal && p.terminationStatus == sig, "signal \(sig): \(p.terminationReason) \(p.terminationStatus)")
            #expect(leftovers(dir).isEmpty, "signal \(sig) left \(leftovers(dir))")
        }
    }

    @Test("a file-size limit (full disk) fails the write with an error naming the file; nothing is left")
    func fullDisk() throws {
        let dir = scratch("fsize")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try SyntheticModel.write(SyntheticModelSpec(), to: dir + "/m")
        guard let bin = binary("lmconvert") else { throw CLIError("lmconvert not built") }
        // 64 KiB limit; the f32 .lmpk needs ~1 MB. Without SIGXFSZ ignored the kernel would
        // kill the process mid-write and leave the temporary file.
        let r = try runProcess("/bin/bash", ["-c", "ulimit -f 64; exec \"$0\" quantize -i \"$1\" -o \"$2\" --scheme f32", bin, dir + "/m", dir + "/out.lmpk"])
        #expect(r.status == 1, "status \(r.status): \(r.stderr)")
        #expect(r.stderr.contains("out.lmpk") && (r.stderr.contains("File too large") || r.stderr.contains("failed")), "\(r.stderr)")
        #expect(leftovers(dir).isEmpty, "left \(leftovers(dir))")
    }
}


@Suite("Conversion refuses what the runtime would refuse", .serialized)
struct ConversionRefusalTests {
    @Test("a tokenizer.json with an unknown model type fails `lmconvert quantize` before any byte is written")
    func unknownTokenizerModel() throws {
        let dir = scratch("tokmodel")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try SyntheticModel.write(SyntheticModelSpec(), to: dir + "/m")
        let tj = dir + "/m/tokenizer.json"
        let text = try String(contentsOfFile: tj, encoding: .utf8)
        guard let r = text.range(of: "\"type\":\"BPE\"") ?? text.range(of: "\"type\": \"BPE\"") else { throw CLIError("fixture tokenizer has no BPE model type") }
        try text.replacingCharacters(in: r, with: "\"type\":\"WordPiece\"").write(toFile: tj, atomically: true, encoding: .utf8)
        let res = try run("lmconvert", ["quantize", "-i", dir + "/m", "-o", dir + "/out.lmpk", "--scheme", "int8"])
        #expect(res.status == 1 && res.stderr.contains("tokenizer") && res.stderr.contains("WordPiece"), "\(res.status): \(res.stderr)")
        let left = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasPrefix("out.lmpk") }
        #expect(left.isEmpty, "left \(left)")
    }
}
