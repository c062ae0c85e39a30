import Foundation
import LMCore
import LMFixtures
import LMFormats
import Testing

@Suite("lmconvert quantize --method gptq", .serialized)
struct CalibrationCLITests {
    func setUp(_ name: String) throws -> (dir: String, text: String) {
        let dir = scratch(name)
        try SyntheticModel.write(SyntheticModelSpec(), to: dir + "/m")
        let text = dir + "/calib.txt"
        try (0..<400).map { "story \($0 % 7): the cat and the dog ran to the sun." }.joined(separator: "\n").write(toFile: text, atomically: true, encoding: .utf8)
        return (dir, text)
    }

    @Test("a GPTQ build prints its calibration and error ratio, records it in the provenance, and runs in lmeval")
    func build() throws {
        let (dir, text) = try setUp("gptq")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let args = ["quantize", "-i", dir + "/m", "-o", dir + "/g.lmpk", "--scheme", "int4-g32", "--method", "gptq", "--calib", text,
                    "--calib-samples", "4", "--calib-ctx", "32", "--seed", "5", "--act-order"]
        let r = try run("lmconvert", args)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("gptq: 4 windows, 128 tokens") && r.stdout.contains("Hessian-weighted output error vs round-to-nearest"), "\(r.stdout)")
        let j = try JSON.parse(Array(try run("lmconvert", args + ["--json"]).stdout.utf8), source: "quantize --json")
        #expect(j["calibration"]?["matrices"]?.array?.count == 14 && (j["calibration"]?["mean_error_ratio"]?.double ?? 9) < 1)
        let i = try JSON.parse(Array(try run("lmconvert", ["inspect", "--json", dir + "/g.lmpk"]).stdout.utf8), source: "inspect")
        let b = i["provenance"]?["build"]
        #expect(b?["method"]?.string == "gptq" && b?["gptq"]?["act_order"]?.bool == true && b?["calibration"]?["seed"]?.int == 5)
        #expect(try run("lmconvert", ["verify", dir + "/g.lmpk"]).status == 0)
        let p = try run("lmeval", ["perplexity", "-m", dir + "/g.lmpk", "--text", text, "--ctx", "32", "--baseline", dir + "/m"])
        #expect(p.status == 0 && p.stdout.contains("ratio"), "\(p.stderr)")
    }

    @Test("calibrated builds pin OpenBLAS's kernels (Haswell) unless OPENBLAS_CORETYPE is set: the same bytes as an explicit pin, and the provenance names the kernels")
    func blasPin() throws {
        let (dir, text) = try setUp("blas-pin")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        guard let exe = binary("lmconvert") else { throw CLIError("lmconvert not built") }
        func build(_ out: String, core: String?) throws -> (Data, String?) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: exe)
            p.arguments = ["quantize", "-i", dir + "/m", "-o", dir + "/" + out, "--scheme", "int4-g32", "--method", "awq", "--calib", text,
                           "--calib-samples", "4", "--calib-ctx", "32"]
            var env = ProcessInfo.processInfo.environment
            env["OPENBLAS_CORETYPE"] = core
            p.environment = env
            p.standardOutput = FileHandle.nullDevice; p.standardError = FileHandle.nullDevice
            try p.run(); p.waitUntilExit()
            #expect(p.terminationStatus == 0)
            let f = try LMPKFile(path: dir + "/" + out)
            return (try Data(contentsOf: URL(fileURLWithPath: dir + "/" + out)), f.header["provenance"]?["blas_kernels"]?.string)
        }
        let (unset, pu) = try build("a.lmpk", core: nil), (pinned, pp) = try build("b.lmpk", core: "Haswell")
        #expect(pu == "OpenBLAS Haswell" && pp == "OpenBLAS Haswell", "\(pu ?? "nil"), \(pp ?? "nil")")
        #expect(unset == pinned, "an unset OPENBLAS_CORETYPE must build what the Haswell pin builds")
        // An explicit choice is kept (Prescott: SSE3 kernels, which every x86-64 runs).
        let (_, px) = try build("c.lmpk", core: "Prescott")
        #expect(px == "OpenBLAS Prescott", "\(px ?? "nil")")
    }

    @Test("bad calibration options fail before any work and leave no file, naming the flag")
    func errors() throws {
        let (dir, text) = try setUp("gptq-err")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func q(_ extra: [String]) throws -> RunResult { try run("lmconvert", ["quantize", "-i", dir + "/m", "-o", dir + "/o.lmpk"] + extra) }
        var r = try q(["--method", "gptq"])
        #expect(r.status != 0 && r.stderr.contains("--calib"), "\(r.stderr)")
        r = try q(["--calib", text])
        #expect(r.status != 0 && r.stderr.contains("--method gptq"), "\(r.stderr)")
        r = try q(["--method", "gptq", "--calib", dir + "/missing.txt"])
        #expect(r.status != 0 && r.stderr.contains("missing.txt"), "\(r.stderr)")
        r = try q(["--method", "gptq", "--calib", text, "--damp", "2"])
        #expect(r.status != 0 && r.stderr.contains("--damp"), "\(r.stderr)")
        r = try q(["--method", "gptq", "--calib", text, "--scheme", "bf16"])
        #expect(r.status != 0 && r.stderr.contains("--method") && r.stderr.contains("bf16"), "\(r.stderr)")
        r = try q(["--method", "gptq", "--calib", text, "--calib-samples", "100000"])
        #expect(r.status == 1 && r.stderr.contains("fewer than --calib-samples 100000"), "\(r.stderr)")
        r = try q(["--method", "awq", "--calib", text, "--scheme", "f16"])
        #expect(r.status != 0 && r.stderr.contains("--method") && r.stderr.contains("f16"), "\(r.stderr)")
        r = try q(["--method", "rtn", "--clip", "mse", "--calib", text, "--calib-samples", "100000"])
        #expect(r.status == 1 && r.stderr.contains("fewer than --calib-samples 100000"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/o.lmpk"))
    }

    @Test("--method awq and importance-weighted --clip mse build, report their errors in --json, and record the method")
    func awqAndImportance() throws {
        let (dir, text) = try setUp("awq")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for extra in [["--method", "awq"], ["--clip", "mse"]] {
            let r = try run("lmconvert", ["quantize", "-i", dir + "/m", "-o", dir + "/o.lmpk", "--calib", text, "--calib-samples", "4",
                                          "--calib-ctx", "64", "--json"] + extra)
            #expect(r.status == 0, "\(r.stderr)")
            let j = try JSON.parse(Array(r.stdout.utf8), source: "quantize --json")
            let cal = try #require(j["calibration"])
            #expect(cal["samples"]?.int == 4 && cal["matrices"]?.array?.count == 14)
            #expect((cal["mean_error_ratio"]?.double ?? 9) < 1, "\(r.stdout)")
            #expect((cal["awq_scalings"]?.array?.count == 8) == (extra[0] == "--method"))
            let inspect = try run("lmconvert", ["inspect", dir + "/o.lmpk", "--json"])
            let build = try JSON.parse(Array(inspect.stdout.utf8), source: "inspect")["provenance"]?["build"]
            #expect(build?["method"]?.string == (extra[0] == "--method" ? "awq" : "rtn") && build?["calibration"] != nil)
        }
    }
}
