import Foundation
import LMCore
import LMFormats
import Testing

@Suite("GGUFWriter: what it writes, GGUFFile reads back")
struct GGUFWriterUnitTests {
    @Test("every metadata type and tensor type round-trips; offsets aligned; the data of each tensor exactly as written")
    func roundTrip() throws {
        let path = tempPath("gguf-writer") + ".gguf"
        defer { unlink(path) }
        let meta: [(String, GGUFMetaValue)] = [
            ("a.u32", .u32(7)), ("a.i32", .i32(-3)), ("a.u64", .u64(1 << 40)), ("a.f32", .f32(0.5)), ("a.bool", .bool(true)),
            ("a.string", .string("héllo")), ("a.strings", .strings(["x", "", "▁y"])), ("a.i32s", .i32s([1, -2, 3])), ("a.f32s", .f32s([-1.5, 2])),
        ]
        let specs = [GGUFTensorSpec(name: "t.f32", dims: [3], type: .f32), GGUFTensorSpec(name: "t.q4_0", dims: [64, 3], type: .q4_0),
                     GGUFTensorSpec(name: "t.q8_0", dims: [32, 1], type: .q8_0), GGUFTensorSpec(name: "t.f16", dims: [5, 2], type: .f16)]
        var rng = SystemRandomNumberGenerator()
        let data = specs.map { s in (0..<s.byteCount).map { _ in UInt8.random(in: 0...255, using: &rng) } }
        let w = try GGUFWriter(path: path, metadata: meta, tensors: specs)
        for d in data { try d.withUnsafeBytes { try w.write($0) } }
        try w.commit()
        let g = try GGUFFile(path: path)
        #expect(g.version == 3 && g.metadata["general.alignment"]?.int == 32)
        #expect(g.metadata["a.u32"]?.int == 7 && g.metadata["a.i32"]?.int == -3 && g.metadata["a.u64"]?.int == 1 << 40)
        #expect(g.metadata["a.f32"]?.double == 0.5 && g.metadata["a.bool"]?.bool == true && g.metadata["a.string"]?.string == "héllo")
        #expect(g.metadata["a.strings"]?.array?.compactMap(\.string) == ["x", "", "▁y"])
        #expect(g.metadata["a.i32s"]?.array?.compactMap(\.int) == [1, -2, 3] && g.metadata["a.f32s"]?.array?.compactMap(\.double) == [-1.5, 2])
        for (s, d) in zip(specs, data) {
            let t = try #require(g[s.name])
            #expect(t.type == s.type && t.dims == s.dims && Array(t.bytes) == d, "\(s.name)")
        }
    }

    @Test("bad use is an error and leaves no file: a dimension off the block, a wrong byte count, a missing or an extra tensor")
    func errors() throws {
        let path = tempPath("gguf-writer-bad") + ".gguf"
        #expect(throws: GGUFError.self) { _ = try GGUFWriter(path: path, metadata: [], tensors: [GGUFTensorSpec(name: "x", dims: [48, 2], type: .q4_0)]) }
        let spec = GGUFTensorSpec(name: "x", dims: [32], type: .q8_0)
        let w = try GGUFWriter(path: path, metadata: [], tensors: [spec])
        #expect(throws: GGUFError.self) { try [UInt8](repeating: 0, count: 33).withUnsafeBytes { try w.write($0) } }
        #expect(throws: GGUFError.self) { try w.commit() }
        w.abort()
        let w2 = try GGUFWriter(path: path, metadata: [], tensors: [spec])
        try [UInt8](repeating: 0, count: 34).withUnsafeBytes { try w2.write($0) }
        #expect(throws: GGUFError.self) { try [UInt8](repeating: 0, count: 34).withUnsafeBytes { try w2.write($0) } }
        w2.abort()
        #expect(!FileManager.default.fileExists(atPath: path))
        let dir = (path as NSString).deletingLastPathComponent, base = (path as NSString).lastPathComponent
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix(base) }.isEmpty)
    }
}
