import Foundation
import LMCore
import LMFixtures
import LMFormats
import Testing

func tempPath(_ name: String) -> String { NSTemporaryDirectory() + "lmkit-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))" }

/// Builds a raw safetensors file from a header string and a data size.
func rawSafetensors(header: String, dataBytes: Int, path: String) throws {
    var h = Array(header.utf8)
    while h.count % 8 != 0 { h.append(0x20) }
    var d = withUnsafeBytes(of: UInt64(h.count).littleEndian) { Array($0) }
    d += h
    d += [UInt8](repeating: 7, count: dataBytes)
    try Data(d).write(to: URL(fileURLWithPath: path))
}

func expectError(_ path: String, contains parts: [String], sourceLocation: SourceLocation = #_sourceLocation) {
    do {
        _ = try SafetensorsFile(path: path)
        Issue.record("no error for \(path)", sourceLocation: sourceLocation)
    } catch {
        let s = "\(error)"
        for p in parts { #expect(s.contains(p), "'\(s)' should mention '\(p)'", sourceLocation: sourceLocation) }
    }
}

@Suite("safetensors reader and writer")
struct SafetensorsTests {
    @Test("round trip of every dtype, metadata, zero-size tensors")
    func roundTrip() throws {
        let p = tempPath("st")
        defer { try? FileManager.default.removeItem(atPath: p) }
        let entries: [SafetensorsWriter.Entry] = DType.allCases.map { .init(name: "t_\($0.rawValue)", dtype: $0, shape: [3, 5]) } + [.init(name: "empty", dtype: .f32, shape: [0, 4])]
        let w = try SafetensorsWriter(path: p, entries: entries, metadata: [("format", "pt")])
        for e in entries {
            let bytes = (0..<(e.shape.reduce(1, *) * e.dtype.size)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ e.dtype.size) }
            try bytes.withUnsafeBytes { try w.write($0) }
        }
        try w.commit()
        let f = try SafetensorsFile(path: p)
        #expect(f.metadata["format"] == "pt")
        for e in entries {
            let t = try #require(f[e.name])
            #expect(t.dtype == e.dtype && t.shape == e.shape)
            #expect(Array(t.bytes) == (0..<(e.shape.reduce(1, *) * e.dtype.size)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ e.dtype.size) })
        }
        let i32 = try SafetensorsWriter(path: p, entries: [.init(name: "ids", dtype: .i32, shape: [3])])
        try [Int32(5), -1, 7].withUnsafeBytes { try i32.write($0) }
        try i32.commit()
        #expect(try SafetensorsFile(path: p)["ids"]!.toInts() == [5, -1, 7])
    }

    @Test("writer is deterministic")
    func deterministic() throws {
        let a = tempPath("da"), b = tempPath("db")
        defer { try? FileManager.default.removeItem(atPath: a); try? FileManager.default.removeItem(atPath: b) }
        var spec = SyntheticModelSpec(); spec.dtype = .bf16
        try SyntheticModel.write(spec, to: a)
        try SyntheticModel.write(spec, to: b)
        #expect(FileManager.default.contents(atPath: a + "/model.safetensors") == FileManager.default.contents(atPath: b + "/model.safetensors"))
    }

    @Test("bad files give typed errors naming file and tensor")
    func badInputs() throws {
        let p = tempPath("bad")
        defer { try? FileManager.default.removeItem(atPath: p) }
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: p))
        expectError(p, contains: [p, "at least 8"])
        // Header length beyond the file.
        var d = withUnsafeBytes(of: UInt64(1_000_000).littleEndian) { Array($0) }; d += Array("{}".utf8)
        try Data(d).write(to: URL(fileURLWithPath: p))
        expectError(p, contains: [p, "header length"])
        // Header length absurdly large (cap).
        d = withUnsafeBytes(of: UInt64.max.littleEndian) { Array($0) }
        try Data(d).write(to: URL(fileURLWithPath: p))
        expectError(p, contains: ["header length"])
        try rawSafetensors(header: #"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]"#, dataBytes: 8, path: p)
        expectError(p, contains: [p, "malformed JSON"])
        try rawSafetensors(header: #"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}"#, dataBytes: 12, path: p)
        expectError(p, contains: ["'b'", "overlaps", "'a'"])
        try rawSafetensors(header: #"{"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#, dataBytes: 8, path: p)
        expectError(p, contains: ["'a'", "does not match"])
        try rawSafetensors(header: #"{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}"#, dataBytes: 8, path: p)
        expectError(p, contains: ["'a'", "beyond", "truncated"])
        try rawSafetensors(header: #"{"a": {"dtype": "Q9", "shape": [4], "data_offsets": [0, 16]}}"#, dataBytes: 16, path: p)
        expectError(p, contains: ["'a'", "unknown dtype 'Q9'"])
        try rawSafetensors(header: #"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}"#, dataBytes: 16, path: p)
        expectError(p, contains: ["'a'", "contiguous"])
        try rawSafetensors(header: #"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#, dataBytes: 12, path: p)
        expectError(p, contains: ["cover 8 bytes", "12"])
        try rawSafetensors(header: #"{"a": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 16]}}"#, dataBytes: 16, path: p)
        expectError(p, contains: ["'a'"])
        try rawSafetensors(header: #"[1, 2]"#, dataBytes: 0, path: p)
        expectError(p, contains: ["not a JSON object"])
    }

    @Test("sharded folder via model.safetensors.index.json; index mismatches are errors")
    func sharded() throws {
        let dir = tempPath("shard")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var spec = SyntheticModelSpec(); spec.shards = 3
        try SyntheticModel.write(spec, to: dir)
        let store = try TensorStore(path: dir)
        #expect(store.files.count == 3)
        #expect(store.names.count == spec.config.expectedTensors().count)
        // Point one tensor at the wrong shard.
        let idxPath = dir + "/model.safetensors.index.json"
        var text = try String(contentsOfFile: idxPath, encoding: .utf8)
        text = text.replacingOccurrences(of: "\"model.norm.weight\": \"model-00003-of-00003.safetensors\"", with: "\"model.norm.weight\": \"model-00001-of-00003.safetensors\"")
        try text.write(toFile: idxPath, atomically: true, encoding: .utf8)
        #expect(throws: SafetensorsError.self) { try TensorStore(path: dir) }
    }
}
