import Foundation
import LMCore
import LMEval
import LMFixtures
import LMFormats
import LMRuntime
import LMTokenizer
import LMTestSupport
import Testing

@Suite("Perplexity and generation against published numbers (shared data)", .serialized)
struct EvalGoldenTests {
    let ctx = ComputeContext(threads: 2)
    @Test("stories260K documents ctx 128: 12,685 tokens, 27,821 bytes, 0.8132 bpb, PPL 3.4426")
    func published() throws {
        guard let root = sharedRoot("stories260K published perplexity") else { return }
        let folder = root + "/models/stories260k"
        let r = try Perplexity.run(model: LlamaModel.load(folder: folder), tokenizer: Tokenizer(path: folder),
                                   textPath: root + "/text/tinystories_v2_valid_first100.txt",
                                   options: PerplexityOptions(proto: .documents, ctx: 128), progress: false, context: ctx)
        #expect(r.windows == 100)
        #expect(r.tokensScored == 12685)
        #expect(r.bytes == 27821)
        #expect(abs(r.bitsPerByte! - 0.8132) < 5e-5, "bpb \(r.bitsPerByte!)")
        #expect(abs(r.perplexity - 3.4426) < 5e-4, "ppl \(r.perplexity)")
        #expect(r.textSHA256 == (try sha256Hex(file: root + "/text/tinystories_v2_valid_first100.txt")))
    }

    @Test("stories260K greedy from BOS reproduces the published 199-token sample")
    func greedyStories() throws {
        guard let root = sharedRoot("stories260K greedy") else { return }
        let folder = root + "/models/stories260k"
        let ref = try SafetensorsFile(path: root + "/reference/stories260k/reference.safetensors")
        let want = try ref["greedy_ids"]!.toInts()
        let tok = try Tokenizer(path: folder)
        let r = try Generation.run(model: LlamaModel.load(folder: folder), prompt: tok.encode(""), maxTokens: 199,
                                   sampling: SamplingOptions(), eos: [], stopAtEOS: false, context: ctx)
        #expect([1] + r.generated == want)
        #expect(tok.decode(r.generated) == ref.metadata["greedy_text"])
    }

    @Test("SmolLM2 prompt 0 greedy reproduces greedy_prompt0_ids")
    func greedySmol() throws {
        guard let root = sharedRoot("SmolLM2 greedy"), let folder = ImportedSmolLM2.folder else { return }
        let want = try SafetensorsFile(path: root + "/reference/smollm2-135m/reference.safetensors")["greedy_prompt0_ids"]!.toInts()
        let tok = try Tokenizer(path: folder)
        let prompt = tok.encode("The capital of France is")
        #expect(prompt == Array(want.prefix(5)))
        let r = try Generation.run(model: LlamaModel.load(folder: folder), prompt: prompt, maxTokens: 16, sampling: SamplingOptions(), eos: [], stopAtEOS: false, context: ctx)
        #expect(prompt + r.generated == want)
    }

    @Test("SmolLM2 chunks ctx 512 on wiki.test.raw, 4 chunks: PPL 22.7437 (pinned), 255 scored per chunk")
    func smolChunks() throws {
        guard let root = sharedRoot("SmolLM2 chunks"), let folder = ImportedSmolLM2.folder else { return }
        let r = try Perplexity.run(model: LlamaModel.load(folder: folder), tokenizer: Tokenizer(path: folder),
                                   textPath: root + "/text/wiki.test.raw", options: PerplexityOptions(proto: .chunks, ctx: 512, limit: 4), progress: false, context: ctx)
        #expect(r.windows == 4 && r.tokensScored == 4 * 255)
        #expect(!r.bosPerWindow)
        // Deterministic: this runtime's value since 2026-11-22 (the gate's SmolLM2 baseline,
        // whose logits match the independent reference to 1.4e-4). ±5e-4 catches any change
        // of the numerics beyond float reordering (which moved it by < 1e-6).
        #expect(abs(r.perplexity - 22.7437) < 5e-4, "ppl \(r.perplexity)")
    }
}

@Suite("Perplexity protocol invariants (synthetic model)", .serialized)
struct ProtocolTests {
    let cc = ComputeContext(threads: 2)
    static let text = String(repeating: "The cat sat on the mat and it was 42 times happier than the dog in 1999.\n", count: 12)

    func setup() throws -> (LlamaModel, Tokenizer, String, String) {
        let dir = NSTemporaryDirectory() + "lmkit-proto-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        var spec = SyntheticModelSpec(); spec.maxPositions = 2048
        try SyntheticModel.write(spec, to: dir)
        let textPath = dir + "/text.txt"
        try Self.text.write(toFile: textPath, atomically: true, encoding: .utf8)
        return (try LlamaModel.load(folder: dir), try Tokenizer(path: dir), textPath, dir)
    }

    @Test("sliding: stride < ctx scores every token but the first exactly once (stride = ctx: all but each window's first); one-window NLL equals token-by-token decode")
    func sliding() throws {
        let (model, tok, textPath, dir) = try setup()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ids = tok.encode(Self.text)
        for (ctx, stride) in [(64, 32), (64, 64), (100, 7)] {
            let r = try Perplexity.run(model: model, tokenizer: tok, textPath: textPath, options: PerplexityOptions(proto: .sliding, ctx: ctx, stride: stride), progress: false, context: cc)
            let expected = stride < ctx ? ids.count - 1 : ids.count - r.windows
            #expect(r.tokensScored == expected, "ctx \(ctx) stride \(stride)")
        }
        // One window covering the whole text vs. an independent decode loop.
        let r = try Perplexity.run(model: model, tokenizer: tok, textPath: textPath, options: PerplexityOptions(proto: .sliding, ctx: ids.count), progress: false, context: cc)
        let cache = try model.makeCache(capacity: ids.count)
        var nll = 0.0
        for t in 0..<(ids.count - 1) {
            let l = try model.forward([ids[t]], cache: cache, logits: .last, context: cc)
            nll += l.withUnsafeBufferPointer { Scoring.logSumExpReference($0.baseAddress!, l.count) } - Double(l[ids[t + 1]])
        }
        #expect(abs(r.nllSum - nll) < 1e-3 * Double(ids.count), "batched \(r.nllSum) vs decode \(nll)")
    }

    @Test("chunks: ctx/2−1 tokens scored per chunk, partial chunk dropped, --chunks limits")
    func chunks() throws {
        let (model, tok, textPath, dir) = try setup()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let n = tok.encode(Self.text).count
        let r = try Perplexity.run(model: model, tokenizer: tok, textPath: textPath, options: PerplexityOptions(proto: .chunks, ctx: 64), progress: false, context: cc)
        #expect(r.windows == n / 64 && r.tokensScored == (n / 64) * 31)
        let r2 = try Perplexity.run(model: model, tokenizer: tok, textPath: textPath, options: PerplexityOptions(proto: .chunks, ctx: 64, limit: 2), progress: false, context: cc)
        #expect(r2.windows == 2 && r2.running.count == 2 && r2.running[1] == r2.perplexity)
        #expect(r2.perplexityStderr > 0)
        #expect(throws: EvalError.self) {
            try Perplexity.run(model: model, tokenizer: tok, textPath: textPath, options: PerplexityOptions(proto: .chunks, ctx: 100_000), progress: false, context: cc)
        }
    }

    @Test("baseline comparison: a model against itself has KL 0 and 100 % top-1 agreement; a perturbed one does not")
    func klSelf() throws {
        let (model, tok, textPath, dir) = try setup()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try Perplexity.run(model: model, tokenizer: tok, textPath: textPath, options: PerplexityOptions(proto: .chunks, ctx: 64), baseline: model, progress: false, context: cc)
        #expect(r.meanKL! < 1e-9 && r.top1Agreement == 1 && r.baselinePerplexity == r.perplexity)
        var spec = SyntheticModelSpec(); spec.seed = 99
        let other = dir + "/other"
        try SyntheticModel.write(spec, to: other)
        let r2 = try Perplexity.run(model: LlamaModel.load(folder: other), tokenizer: tok, textPath: textPath, options: PerplexityOptions(proto: .chunks, ctx: 64), baseline: model, progress: false, context: cc)
        #expect(r2.meanKL! > 0.01 && r2.top1Agreement! < 1)
    }

    @Test("runs are bit-for-bit deterministic at a fixed thread count")
    func deterministic() throws {
        let (model, tok, textPath, dir) = try setup()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = try Perplexity.run(model: model, tokenizer: tok, textPath: textPath, options: PerplexityOptions(proto: .chunks, ctx: 64), progress: false, context: cc)
        let b = try Perplexity.run(model: model, tokenizer: tok, textPath: textPath, options: PerplexityOptions(proto: .chunks, ctx: 64), progress: false, context: cc)
        #expect(a.nllSum == b.nllSum && a.tokenNLL == b.tokenNLL)
    }

    @Test("sampling is reproducible for a seed and differs across seeds; top-p 0 < p tiny → greedy")
    func sampling() {
        var rng = SplitMix64(seed: 3)
        let logits = (0..<500).map { _ in rng.nextSigned() * 4 }
        func draw(_ seed: UInt64, _ t: Float, _ p: Float) -> [Int] { var s = Sampler(SamplingOptions(temperature: t, topP: p, seed: seed)); return (0..<50).map { _ in s.sample(logits) } }
        #expect(draw(1, 1, 0.9) == draw(1, 1, 0.9))
        #expect(draw(1, 1, 0.9) != draw(2, 1, 0.9))
        let argmax = logits.indices.max { logits[$0] < logits[$1] }!
        #expect(draw(5, 1, 1e-6).allSatisfy { $0 == argmax })
        #expect(draw(5, 0, 1).allSatisfy { $0 == argmax })
    }
}

@Suite("Perplexity through the paged KV cache (shared data)", .serialized)
struct KVPerplexityTests {
    let ctx = ComputeContext(threads: 2)

    @Test("stories260K documents: --parallel 8 gives the numbers of --parallel 1; the int8 cache stays within +0.5 % PPL")
    func parallelAndInt8() throws {
        guard let root = sharedRoot("stories260K KV cache perplexity") else { return }
        let folder = root + "/models/stories260k"
        let m = try LlamaModel.load(folder: folder), tok = try Tokenizer(path: folder)
        let text = root + "/text/tinystories_v2_valid_first100.txt"
        func ppl(_ parallel: Int, _ kv: KVCacheOptions = KVCacheOptions()) throws -> PerplexityResult {
            try Perplexity.run(model: m, tokenizer: tok, textPath: text, options: PerplexityOptions(proto: .documents, ctx: 128, kvCache: kv, parallel: parallel),
                               progress: false, context: ctx)
        }
        let one = try ppl(1), eight = try ppl(8)
        #expect(one.tokensScored == 12685 && eight.tokensScored == 12685 && eight.windows == 100)
        // Eight documents in one batch (8× the matmul rows, one shared pool): the same
        // per-token NLL up to sgemm's blocking of the row count. Measured: bit for bit with
        // OpenBLAS's SkylakeX kernels (AVX-512 hosts); max |Δ| 2.1e-5 nats, PPL Δ 1e-8
        // relative with its Zen/Haswell kernels (AVX2 hosts), whose sums depend on M.
        let worst = zip(one.tokenNLL, eight.tokenNLL).map { abs($0 - $1) }.max()!
        let sameCount = one.tokenNLL.count == eight.tokenNLL.count
        #expect(sameCount && worst <= 5e-5, "per-token NLL differs by up to \(worst)")
        #expect(abs(one.perplexity / eight.perplexity - 1) <= 1e-7, "\(one.perplexity) vs \(eight.perplexity)")
        let int8 = try ppl(4, KVCacheOptions(keys: .int8, values: .int8))
        #expect(int8.perplexity / one.perplexity - 1 <= 0.005, "int8 cache: PPL \(int8.perplexity) vs \(one.perplexity)")
        print("measured: --parallel 1 PPL \(one.perplexity), --parallel 8 \(eight.perplexity) (max |Δ NLL| \(worst)); int8 cache \(int8.perplexity)")
    }
}

@Suite("chunks protocol matches llama-perplexity for BOS tokenizers (shared data)", .serialized)
struct ChunksBOSTests {
    @Test("the text is tokenized with BOS, then each chunk's first token is overwritten by BOS")
    func chunksBOS() throws {
        guard let root = sharedRoot("chunks protocol with BOS") else { return }
        let folder = root + "/models/stories260k"
        let m = try LlamaModel.load(folder: folder), tok = try Tokenizer(path: folder)
        let text = root + "/text/tinystories_v2_valid_first100.txt"
        let ctx = ComputeContext(threads: 2)
        let r = try Perplexity.run(model: m, tokenizer: tok, textPath: text, options: PerplexityOptions(proto: .chunks, ctx: 64, limit: 3),
                                   progress: false, context: ctx)
        let bos = try #require(tok.bosId)
        let ids = tok.encode(try String(contentsOfFile: text, encoding: .utf8), addBOS: true)
        #expect(ids[0] == bos)
        let V = m.config.vocabSize
        var want: [Double] = []
        for c in 0..<3 {
            var w = Array(ids[(c * 64)..<((c + 1) * 64)])
            w[0] = bos
            let l = try m.forward(w, cache: m.makeCache(capacity: 64), logits: .all, context: ctx)
            for row in 32..<63 {
                let x = l[(row * V)..<((row + 1) * V)]
                let mx = x.max()!
                want.append(Double(mx) + log(x.reduce(0.0) { $0 + exp(Double($1 - mx)) }) - Double(l[row * V + w[row + 1]]))
            }
        }
        #expect(r.tokenNLL.count == want.count)
        let worst = zip(r.tokenNLL, want).map { abs($0 - $1) }.max() ?? 1
        #expect(worst < 1e-5, "per-token NLL vs the llama-perplexity construction: \(worst)")
    }
}

@Suite("decodeBytes: the bytes, not U+FFFD")
struct DecodeBytesTests {
    @Test("a multi-byte character cut in two decodes to its real bytes (bits per byte counts them); decode is decodeBytes as UTF-8")
    func cutCharacter() throws {
        let tok = try Tokenizer(json: SyntheticModel.byteLevelTokenizer(vocab: 300), source: "synthetic")
        let ids = tok.encode("aé€", addBOS: false)
        #expect(tok.decodeBytes(ids) == Array("aé€".utf8))
        // Every prefix: decodeBytes gives a prefix of the text's bytes; decode may add U+FFFD.
        for n in 0...ids.count {
            let b = tok.decodeBytes(Array(ids.prefix(n)))
            #expect(Array("aé€".utf8).starts(with: b), "prefix \(n)")
            #expect(tok.decode(Array(ids.prefix(n))) == String(decoding: b, as: UTF8.self))
        }
        let cut = (0...ids.count).first { n in String(decoding: tok.decodeBytes(Array(ids.prefix(n))), as: UTF8.self).utf8.count != tok.decodeBytes(Array(ids.prefix(n))).count }
        #expect(cut != nil, "the fixture should cut a character somewhere")
    }
}
