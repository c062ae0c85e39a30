import Foundation
import LMCore
import LMEval
import LMFixtures
import LMFormats
import LMShard
import LMTokenizer

/// One entry point per reader of untrusted bytes. The libFuzzer driver (Fuzz/Driver)
/// calls `run` with each input; `FuzzRegressionTests` replays Fuzz/regressions/<target>/*
/// through the same function. Every input must end in a thrown error or a valid object:
/// a trap, a hang or unbounded memory is a bug.
public enum FuzzTargets {
    /// Target names (the `LMFUZZ_TARGET` values and the folder names under Fuzz/regressions).
    public static let names = ["safetensors", "st-index", "config", "tokenizer", "gguf", "llama2c", "llama2c-tok", "sentencepiece", "lmpk", "shard-manifest", "gate"]

    /// Runs `target` on `data`. Errors thrown by the readers are the expected outcome
    /// for malformed input and are swallowed; the return value says whether the input
    /// was accepted (for seed checks).
    /// Print each rejection's error (LMFUZZ_VERBOSE=1; for checking seeds).
    nonisolated(unsafe) public static var verbose = false

    @discardableResult
    public static func run(_ target: String, _ data: UnsafeRawBufferPointer) -> Bool {
        do {
            switch target {
            case "safetensors": try safetensors(data)
            case "st-index": try shardIndex(data)
            case "config": try config(data)
            case "tokenizer": try tokenizer(data)
            case "gguf": try gguf(data)
            case "llama2c": try llama2c(data)
            case "llama2c-tok": try llama2cTokenizer(data)
            case "sentencepiece": try sentencepiece(data)
            case "lmpk": try lmpk(data)
            case "shard-manifest": try shardManifest(data)
            case "gate": try gate(data)
            default: preconditionFailure("unknown fuzz target '\(target)' (known: \(names.joined(separator: ", ")))")
            }
            if verbose { print("\(target): accepted") }
            return true
        } catch {
            if verbose { print("\(target): rejected: \(error)") }
            return false
        }
    }

    public static func run(_ target: String, _ data: [UInt8]) -> Bool { data.withUnsafeBytes { run(target, $0) } }

    // MARK: scratch files

    /// A per-process folder in /dev/shm (tmpfs; falls back to the temp dir), or $LMFUZZ_SCRATCH.
    public static let scratch: String = {
        let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        let d = ProcessInfo.processInfo.environment["LMFUZZ_SCRATCH"] ?? base + "/lmfuzz-\(getpid())"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }()

    /// Writes `data` to `scratch/name` and returns the path.
    static func file(_ name: String, _ data: UnsafeRawBufferPointer) -> String {
        let p = scratch + "/" + name
        let fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        precondition(fd >= 0, "cannot write \(p)")
        var off = 0
        while off < data.count {
            let n = write(fd, data.baseAddress! + off, data.count - off)
            precondition(n > 0, "cannot write \(p)")
            off += n
        }
        close(fd)
        return p
    }

    /// Texts encoded with every tokenizer a target builds (besides fuzzed text).
    static let sampleText = "Once upon a time, there was a little girl named Lily. 123 + 4567 = ? It's  \n\t<s> héllo 日本語 🙂\u{0}"

    /// Encodes and decodes `text` (the round trip must not trap).
    static func exercise(_ t: Tokenizer, _ text: String) {
        let ids = t.encode(text)
        _ = t.encode(text, addBOS: false)
        _ = t.decode(ids)
        _ = t.decode(ids + [-1, t.vocabSize, Int.max], skipSpecial: false)
        for id in ids.prefix(16) { _ = t.tokenText(id) }
    }

    // MARK: targets

    /// A safetensors file: header, then every tensor's values (small ones).
    static func safetensors(_ data: UnsafeRawBufferPointer) throws {
        let f = try SafetensorsFile(path: file("model.safetensors", data))
        for t in f.tensors {
            _ = f[t.name]
            guard t.count <= 1 << 16 else { continue }
            switch t.dtype {
            case .f32, .f16, .bf16: _ = try t.toFloat()
            default: _ = try? t.toInts()
            }
        }
        _ = f["(not a tensor)"]
    }

    /// The shard index of a sharded HF folder, over two fixed valid shards.
    static func shardIndex(_ data: UnsafeRawBufferPointer) throws {
        let dir = shardFolder
        _ = file("shards/model.safetensors.index.json", data)
        let s = try TensorStore(path: dir)
        for n in s.names { _ = try s.require(n) }
        _ = s["(not a tensor)"]
    }

    /// The tiny two-shard model the index target points into (written once per process).
    static let shardFolder: String = {
        let d = scratch + "/shards"
        var spec = Corpus.tinySpec
        spec.shards = 2
        do { try SyntheticModel.write(spec, to: d) } catch { preconditionFailure("cannot write the shard fixture: \(error)") }
        return d
    }()

    static func config(_ data: UnsafeRawBufferPointer) throws {
        let c = try ModelConfig.parse(JSON.parse(data, source: "config.json"), source: "config.json")
        _ = c.expectedTensors()
        _ = try ModelConfig.parse(JSON.parse(Array(c.toJSON().serialized().utf8), source: "re-serialized"), source: "re-serialized")
    }

    /// `tokenizer.json`, a NUL byte, then text to encode with it.
    static func tokenizer(_ data: UnsafeRawBufferPointer) throws {
        let cut = data.firstIndex(of: 0) ?? data.count
        let json = UnsafeRawBufferPointer(rebasing: data[0..<cut])
        let text = cut < data.count ? String(decoding: data[(cut + 1)...], as: UTF8.self) : sampleText
        let t = try Tokenizer(json: JSON.parse(json, source: "tokenizer.json"), source: "tokenizer.json")
        exercise(t, text)
    }

    /// GGUF: the reader, then the importer (config, tokenizer, tensor plan) and the
    /// values of small tensors; the tokenizer it makes is loaded and used.
    static func gguf(_ data: UnsafeRawBufferPointer) throws {
        let g = try GGUFFile(path: file("model.gguf", data))
        var budget = 1 << 18
        for t in g.tensors {
            _ = g[t.name]
            if t.count <= budget { budget -= t.count; _ = t.dequantize() }
        }
        let m = try GGUFImporter.load(g)
        try imported(m)
    }

    /// A llama2.c checkpoint (`run.c` format).
    static func llama2c(_ data: UnsafeRawBufferPointer) throws {
        let m = try Llama2cImporter.load(checkpoint: file("model.bin", data), tokenizer: nil)
        try imported(m)
    }

    /// llama2.c's `tokenizer.bin`: two bytes of vocabulary size (little endian), then the file.
    static func llama2cTokenizer(_ data: UnsafeRawBufferPointer) throws {
        guard data.count >= 2 else { return }
        let vocab = Int(data[0]) | Int(data[1]) << 8
        let j = try Llama2cImporter.loadTokenizer(file("tokenizer.bin", UnsafeRawBufferPointer(rebasing: data[2...])), vocabSize: vocab)
        exercise(try Tokenizer(json: j, source: "tokenizer.bin"), sampleText)
    }

    /// A sentencepiece `.model`: pieces, the derived tokenizer.json, encoding with it.
    static func sentencepiece(_ data: UnsafeRawBufferPointer) throws {
        let p = file("tokenizer.model", data)
        _ = try SentencePieceModel.load(path: p)
        let j = try SentencePieceModel.tokenizerJSON(path: p)
        exercise(try Tokenizer(json: j, source: "tokenizer.model"), sampleText)
    }

    static func imported(_ m: ImportedModel) throws {
        _ = m.config.expectedTensors()
        var budget = 1 << 18
        for t in m.tensors {
            let n = t.shape.reduce(1) { $0.multipliedReportingOverflow(by: $1).overflow ? Int.max : $0 * $1 }
            guard n <= budget else { continue }
            budget -= n
            _ = try t.produce()
            t.release()
        }
        if let j = m.tokenizer { exercise(try Tokenizer(json: j, source: "imported tokenizer"), sampleText) }
    }

    /// `.lmpk`: header (its CRC is patched so that mutations reach the JSON), sections,
    /// tensor lookup, CRC scan, the embedded tokenizer.
    static func lmpk(_ data: UnsafeRawBufferPointer) throws {
        var b = [UInt8](data)
        if b.count >= LMPK.fixedHeaderBytes {
            let hlen = b[8..<16].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            if hlen <= UInt64(b.count - LMPK.fixedHeaderBytes) {
                let crc = b.withUnsafeBytes { crc32(UnsafeRawBufferPointer(rebasing: $0[LMPK.fixedHeaderBytes..<(LMPK.fixedHeaderBytes + Int(hlen))])) }
                withUnsafeBytes(of: crc.littleEndian) { for i in 0..<4 { b[16 + i] = $0[i] } }
            }
        }
        let f = try b.withUnsafeBytes { try LMPKFile(path: file("model.lmpk", $0)) }
        _ = f.firstCorruptTensor()
        for t in f.tensors {
            guard let u = f[t.name] else { preconditionFailure("tensor '\(t.name)' listed but not found") }
            _ = u.packed
            _ = u.byteCount
        }
        _ = f["(not a tensor)"]
        _ = f.fileBytes
        let j = try f.tokenizerJSON()
        exercise(try Tokenizer(json: j, source: "lmpk tokenizer"), sampleText)
    }

    /// A shard folder's `manifest.json` (formats/lmpk.md, "Tensor-parallel shards"): ranks,
    /// ranges against the config, the sharding digest, the folder listing (the rank files
    /// themselves are the `lmpk` target's).
    static func shardManifest(_ data: UnsafeRawBufferPointer) throws {
        let dir = scratch + "/shards"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        _ = file("shards/" + ShardManifest.fileName, data)
        let m = try ShardManifest.load(folder: dir)
        for r in m.ranks { _ = ShardLayout(config: m.config, ranges: r.ranges).tensors }
    }

    /// A gate file (formats/gates.md).
    static func gate(_ data: UnsafeRawBufferPointer) throws {
        _ = try GateFile.load(file("gate.json", data))
    }
}
