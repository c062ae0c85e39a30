import Foundation
import LMCore
import Testing

@Suite("LMCore")
struct CoreTests {
    @Test("SHA-256 known vectors (FIPS 180-4)")
    func sha() {
        #expect(SHA256.hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256.hex([UInt8]()) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)) == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        var s = SHA256()
        let chunk = [UInt8](repeating: 0x61, count: 1000)
        for _ in 0..<1000 { chunk.withUnsafeBytes { s.update($0) } }
        #expect(s.finalizeHex() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    @Test("CRC32 matches zlib's check value")
    func crc() { #expect(Array("123456789".utf8).withUnsafeBytes { crc32($0) } == 0xCBF4_3926) }

    @Test("JSON parse, key order, serialisation round trip, and errors with position")
    func json() throws {
        let text = #"{"b":1,"a":[true,null,2.5,"x\"y\n"],"c":{"d":-3}}"#
        let j = try JSON.parse(Array(text.utf8), source: "t")
        #expect(j.object!.map { $0.0 } == ["b", "a", "c"])
        #expect(j["c"]?["d"]?.int == -3)
        #expect(try JSON.parse(Array(j.serialized().utf8), source: "t2") == j)
        #expect(throws: JSONError.self) { try JSON.parse(Array(#"{"a": [1, 2"#.utf8), source: "bad.json") }
        do { _ = try JSON.parse(Array(#"{"a": }"#.utf8), source: "bad.json"); Issue.record("no error") } catch let e as JSONError {
            #expect(e.description.contains("bad.json"))
        }
        #expect(throws: JSONError.self) { try JSON.parse(Array(#"{"a":1} x"#.utf8), source: "trailing") }
    }

    @Test("half and bfloat16 conversions")
    func halves() {
        for f: Float in [0, 1, -2.5, 65504, 1e-4, 3.140625] { #expect(halfToFloat(floatToHalf(f)) == Float(Float16(f))) }
        #expect(bf16ToFloat(floatToBF16(1.0)) == 1.0)
        #expect(bf16ToFloat(floatToBF16(3.0078125)) == 3.0) // ties to even
        #expect(bf16ToFloat(floatToBF16(.nan)).isNaN)
    }

    @Test("atomic writer: nothing at the path until commit; abort leaves nothing")
    func atomic() throws {
        let p = NSTemporaryDirectory() + "lmkit-atomic-\(getpid())"
        let w = try AtomicFileWriter(path: p)
        try w.write("hello")
        #expect(!FileManager.default.fileExists(atPath: p))
        try w.commit()
        #expect(try String(contentsOfFile: p, encoding: .utf8) == "hello")
        try FileManager.default.removeItem(atPath: p)
        let w2 = try AtomicFileWriter(path: p)
        try w2.write("partial")
        w2.abort()
        #expect(!FileManager.default.fileExists(atPath: p))
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: NSTemporaryDirectory()).filter { $0.hasPrefix("lmkit-atomic-\(getpid())") }
        #expect(leftovers.isEmpty)
    }

    @Test("checked arithmetic rejects overflow and negatives")
    func checked() {
        #expect(Checked.product([1 << 40, 1 << 30]) == nil)
        #expect(Checked.product([3, -1]) == nil)
        #expect(Checked.product([3, 5, 7]) == 105)
    }
}
