import Foundation
import LMCore
import LMEval
import LMFixtures
import LMFormats
import LMQuant
import Testing

@Suite("One build spec for lmconvert and the gate", .serialized)
struct BuildSpecTests {
    @Test("the same recipe gives the same bytes through `lmconvert quantize` and a gate recipe (group size applies to int4 overrides in both)")
    func sameBytes() throws {
        let dir = scratch("spec")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try SyntheticModel.write(SyntheticModelSpec(), to: dir + "/m")
        let cli = try run("lmconvert", ["quantize", "-i", dir + "/m", "-o", dir + "/cli.lmpk", "--scheme", "int4", "--group-size", "64",
                                        "--override", "down_proj=int4", "--override", "up_proj=int8", "--clip", "mse"])
        #expect(cli.status == 0, "\(cli.stderr)")
        let gateJSON = #"{"version": 1, "suites": [{"name": "s", "data": {"text": "t.txt", "sha256": "00", "protocol": "chunks", "ctx": 64},"#
            + #" "baseline": {"model": "m"}, "candidates": [{"name": "c", "recipe": {"source": "m", "scheme": "int4", "group_size": 64,"#
            + #" "clip": "mse", "overrides": ["down_proj=int4", "up_proj=int8"]}, "limits": {"mean_kl_max": 1}}]}]}"#
        try gateJSON.write(toFile: dir + "/g.json", atomically: true, encoding: .utf8)
        let g = try GateFile.load(dir + "/g.json")
        guard case let .recipe(spec) = g.suites[0].candidates[0].source else { Issue.record("not a recipe"); return }
        #expect(spec == BuildSpec(source: dir + "/m", scheme: "int4", groupSize: 64, clip: .mse, overrides: ["down_proj=int4", "up_proj=int8"]))
        _ = try spec.build(output: dir + "/gate.lmpk")  // what the gate runs for a recipe
        let a = try Data(contentsOf: URL(fileURLWithPath: dir + "/cli.lmpk")), b = try Data(contentsOf: URL(fileURLWithPath: dir + "/gate.lmpk"))
        #expect(a == b, "CLI and gate builds differ")
        let f = try LMPKFile(path: dir + "/gate.lmpk")
        #expect(f["model.layers.0.mlp.down_proj.weight"]?.scheme.name == "int4-g64")
        #expect(f["model.layers.0.mlp.up_proj.weight"]?.scheme.name == "int8")
        #expect(f["model.layers.0.self_attn.q_proj.weight"]?.scheme.name == "int4-g64")
    }

    @Test("a gate recipe's gptq.true_sequential: false is read, is part of the canonical build, and a non-boolean is an error naming the key")
    func trueSequentialKey() throws {
        let dir = scratch("spec-ts")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "story".write(toFile: dir + "/c.txt", atomically: true, encoding: .utf8)
        func gate(_ v: String) throws -> GateFile {
            try oneRecipeGate(dir, #""scheme": "int4-g32", "method": "gptq", "calib": {"text": "c.txt", "samples": 4, "ctx": 32}, "gptq": {"true_sequential": "# + v + "}")
        }
        guard case let .recipe(spec) = try gate("false").suites[0].candidates[0].source else { Issue.record("not a recipe"); return }
        #expect(spec.gptq.trueSequential == false)
        var on = spec; on.gptq.trueSequential = true
        #expect(try spec.canonicalString() != on.canonicalString())
        do { _ = try gate(#""yes""#); Issue.record("a string was accepted") } catch {
            #expect("\(error)".contains("gptq.true_sequential") && "\(error)".contains("true or false"), "\(error)")
        }
    }

    @Test("a gate recipe's allocation.kl_samples is read, is part of the canonical build, and one above allocation.samples is an error naming the key")
    func allocationKLSamplesKey() throws {
        let dir = scratch("spec-klalloc")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "story".write(toFile: dir + "/c.txt", atomically: true, encoding: .utf8)
        func gate(_ n: Int) throws -> GateFile {
            try oneRecipeGate(dir, #""scheme": "int4-g64", "clip": "mse", "calib": {"text": "c.txt", "samples": 8, "ctx": 32}, "allocation": {"target_bpw": 5.2, "samples": 4, "kl_samples": "# + "\(n)}")
        }
        guard case let .recipe(spec) = try gate(2).suites[0].candidates[0].source else { Issue.record("not a recipe"); return }
        #expect(spec.allocation?.klSamples == 2 && spec.allocation?.samples == 4)
        var one = spec; one.allocation?.klSamples = 1
        #expect(try spec.canonicalString() != one.canonicalString())
        do { _ = try gate(5); Issue.record("kl_samples above samples was accepted") } catch {
            #expect("\(error)".contains("allocation.kl_samples"), "\(error)")
        }
    }

    @Test("a gate recipe's prune is read into the build and its canonical form; a bad pattern or sparsity is an error naming the key")
    func pruneKey() throws {
        let dir = scratch("spec-prune")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "story".write(toFile: dir + "/c.txt", atomically: true, encoding: .utf8)
        func gate(_ prune: String) throws -> GateFile {
            try oneRecipeGate(dir, #""scheme": "f16", "calib": {"text": "c.txt", "samples": 4, "ctx": 32}, "prune": "# + prune)
        }
        guard case let .recipe(spec) = try gate(#"{"method": "sparsegpt", "pattern": "2:4"}"#).suites[0].candidates[0].source else { Issue.record("not a recipe"); return }
        #expect(spec.prune == PruneOptions(method: .sparsegpt, pattern: try SparsityPattern(n: 2, m: 4)))
        let canonical = try spec.canonicalString()
        #expect(canonical.contains(#""prune":{"method":"sparsegpt","pattern":"2:4","storage":"compressed","damp":0.01,"block_size":128}"#), "\(canonical)")
        var other = spec; other.prune?.pattern = try SparsityPattern(n: 4, m: 8)
        #expect(try spec.canonicalString() != other.canonicalString())
        // Explicit "storage": "compressed" is the default's build; "dense" is another one.
        guard case let .recipe(explicit) = try gate(#"{"method": "sparsegpt", "pattern": "2:4", "storage": "compressed"}"#).suites[0].candidates[0].source,
              case let .recipe(dense) = try gate(#"{"method": "sparsegpt", "pattern": "2:4", "storage": "dense"}"#).suites[0].candidates[0].source else { Issue.record("not a recipe"); return }
        #expect(try explicit.canonicalString() == canonical)
        #expect(try dense.canonicalString().contains(#""storage":"dense""#))
        for (p, key) in [(#"{"method": "wanda", "pattern": "2:2"}"#, "recipe.prune.pattern"), (#"{"method": "wanda", "sparsity": 1.0}"#, "recipe.prune.sparsity"),
                         (#"{"method": "pruney", "sparsity": 0.5}"#, "recipe.prune.method"),
                         (#"{"method": "wanda", "pattern": "2:4", "storage": "sparse"}"#, "recipe.prune.storage"), (#"{"method": "wanda", "sparsity": 0.5, "storage": "compressed"}"#, "recipe.prune.storage"), (#"{"method": "wanda", "sparsity": 0.5, "n": 2}"#, "recipe.prune")] {
            do { _ = try gate(p); Issue.record("\(p) was accepted") } catch { #expect("\(error)".contains(key), "\(p): \(error)") }
        }
    }

    @Test("canonical form: equivalent spellings are one build; different options are not")
    func canonical() throws {
        let a = try BuildSpec(source: "x", scheme: "int4", groupSize: 64).canonicalString()
        let b = try BuildSpec(source: "y", scheme: "int4-g64").canonicalString()
        #expect(a == b)
        #expect(try BuildSpec(source: "x", scheme: "int4-g64", clip: .mse).canonicalString() != b)
        #expect(try BuildSpec(source: "x", scheme: "int4", overrides: ["q_proj=int4"], ).canonicalString()
                == BuildSpec(source: "x", scheme: "int4-g32", overrides: ["q_proj=int4-g32"]).canonicalString())
        #expect(throws: BuildSpecError.self) { try BuildSpec(source: "x", scheme: "int4-g64", groupSize: 32).recipe() }
        #expect(throws: BuildSpecError.self) { try BuildSpec(source: "x", scheme: "int4", overrides: ["(=int8"]).recipe() }
    }
}

/// Loads a one-suite, one-candidate gate file written to `dir`, whose recipe is
/// `{"source": "m", <fields>}`.
private func oneRecipeGate(_ dir: String, _ fields: String) throws -> GateFile {
    let j = #"{"version": 1, "suites": [{"name": "s", "data": {"text": "t.txt", "sha256": "00", "protocol": "chunks", "ctx": 64},"#
        + #" "baseline": {"model": "m"}, "candidates": [{"name": "c", "recipe": {"source": "m", "# + fields + #"}, "limits": {"mean_kl_max": 1}}]}]}"#
    try j.write(toFile: dir + "/g.json", atomically: true, encoding: .utf8)
    return try GateFile.load(dir + "/g.json")
}
