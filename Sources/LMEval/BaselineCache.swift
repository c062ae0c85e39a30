import Foundation
import LMCore
import LMRuntime

/// Per-position results of a baseline model under one protocol, cached on disk
/// (formats/gates.md, "Baseline cache").
public struct BaselineRecord: Sendable {
    public static let topK = 256
    public var key: String
    public var vocab: Int
    public var k: Int
    /// Per scored position, in scoring order.
    public var nll: [Double] = []
    public var argmax: [Int32] = []
    public var restLogProb: [Float] = []
    public var ids: [Int32] = []
    public var logProbs: [Float] = []
    public var tokensPerSecond: Double = 0

    public var rows: Int { nll.count }
    public var nllSum: Double { var s = 0.0; for x in nll { s += x }; return s }

    public init(key: String, vocab: Int) { self.key = key; self.vocab = vocab; k = min(vocab, BaselineRecord.topK) }

    /// Appends one scored logits row.
    mutating func append(row: UnsafePointer<Float>, target: Int) {
        let m = FastMath.max(row, vocab)
        var s = 0.0
        for i in 0..<vocab { s += exp(Double(row[i] - m)) }
        let lse = Double(m) + log(s)
        nll.append(lse - Double(row[target]))
        // Top-k by a size-k min-heap of (value, id).
        var heap: [(Float, Int32)] = []
        heap.reserveCapacity(k)
        func siftDown(_ i0: Int) {
            var i = i0
            while true {
                let l = 2 * i + 1, r = l + 1
                var mn = i
                if l < heap.count && (heap[l].0, -heap[l].1) < (heap[mn].0, -heap[mn].1) { mn = l }
                if r < heap.count && (heap[r].0, -heap[r].1) < (heap[mn].0, -heap[mn].1) { mn = r }
                if mn == i { return }
                heap.swapAt(i, mn); i = mn
            }
        }
        for i in 0..<vocab {
            let v = row[i]
            if heap.count < k {
                heap.append((v, Int32(i)))
                var c = heap.count - 1
                while c > 0 { let p = (c - 1) / 2; if (heap[c].0, -heap[c].1) < (heap[p].0, -heap[p].1) { heap.swapAt(c, p); c = p } else { break } }
            } else if v > heap[0].0 {
                heap[0] = (v, Int32(i)); siftDown(0)
            }
        }
        heap.sort { $0.0 != $1.0 ? $0.0 > $1.0 : $0.1 < $1.1 }
        var mass = 0.0
        for (v, id) in heap {
            let lp = Double(v) - lse
            ids.append(id); logProbs.append(Float(lp)); mass += exp(lp)
        }
        argmax.append(heap[0].1)
        let rest = 1 - mass
        restLogProb.append(rest > 1e-12 ? Float(log(rest)) : -.infinity)
    }

    /// KL(baseline ‖ candidate) over the top-k plus the rest bucket, and top-1 agreement,
    /// for candidate row `row` against stored position `j`.
    func compare(row: UnsafePointer<Float>, at j: Int) -> (kl: Double, agree: Bool) {
        let m = FastMath.max(row, vocab)
        var s = 0.0
        var am = 0
        for i in 0..<vocab { s += exp(Double(row[i] - m)); if row[i] > row[am] { am = i } }
        let lse = Double(m) + log(s)
        var kl = 0.0, qTop = 0.0
        for t in 0..<k {
            let id = Int(ids[j * k + t]), lp = Double(logProbs[j * k + t])
            let lq = Double(row[id]) - lse
            kl += exp(lp) * (lp - lq)
            qTop += exp(lq)
        }
        let rest = restLogProb[j]
        if rest > -.infinity {
            let qRest = max(1 - qTop, 1e-30)
            kl += exp(Double(rest)) * (Double(rest) - log(qRest))
        }
        return (max(kl, 0), am == Int(argmax[j]))
    }

    // MARK: file

    static let magic: [UInt8] = Array("LMGB".utf8)

    func write(to path: String) throws {
        var b = BaselineRecord.magic
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { b += $0 } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { b += $0 } }
        u32(1); b += Array(key.utf8.prefix(64)) + [UInt8](repeating: 0x20, count: max(0, 64 - key.utf8.count))
        u64(UInt64(rows)); u32(UInt32(k)); u32(UInt32(vocab)); u64(tokensPerSecond.bitPattern)
        for x in nll { u64(x.bitPattern) }
        for x in argmax { u32(UInt32(bitPattern: x)) }
        for x in restLogProb { u32(x.bitPattern) }
        for x in ids { u32(UInt32(bitPattern: x)) }
        for x in logProbs { u32(x.bitPattern) }
        let c = b.withUnsafeBytes { crc32($0) }
        u32(c)
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let w = try AtomicFileWriter(path: path)
        try w.write(b)
        try w.commit()
    }

    /// Reads a cache file; nil when absent, for another key, or corrupt.
    static func read(path: String, key: String) -> BaselineRecord? {
        guard let m = try? MappedFile(path: path), m.bytes.count > 96 else { return nil }
        let body = UnsafeRawBufferPointer(rebasing: m.bytes[0..<(m.bytes.count - 4)])
        guard crc32(body) == UInt32(littleEndian: m.bytes.loadUnaligned(fromByteOffset: m.bytes.count - 4, as: UInt32.self)) else { return nil }
        var r = ByteReader(body, source: path)
        guard let mg = try? r.readBytes(4), Array(mg) == magic, (try? r.read(UInt32.self)) == 1,
              let kb = try? r.readBytes(64), String(decoding: kb, as: UTF8.self).trimmingCharacters(in: .whitespaces) == key,
              let rows = try? r.read(UInt64.self), let k = try? r.read(UInt32.self), let vocab = try? r.read(UInt32.self),
              let tps = try? r.read(UInt64.self) else { return nil }
        var rec = BaselineRecord(key: key, vocab: Int(vocab))
        guard rec.k == Int(k) else { return nil }
        rec.tokensPerSecond = Double(bitPattern: tps)
        let n = Int(rows), kk = Int(k)
        guard r.remaining == n * (8 + 4 + 4) + n * kk * 8 else { return nil }
        do {
            for _ in 0..<n { rec.nll.append(Double(bitPattern: try r.read(UInt64.self))) }
            for _ in 0..<n { rec.argmax.append(Int32(bitPattern: try r.read(UInt32.self))) }
            for _ in 0..<n { rec.restLogProb.append(Float(bitPattern: try r.read(UInt32.self))) }
            for _ in 0..<(n * kk) { rec.ids.append(Int32(bitPattern: try r.read(UInt32.self))) }
            for _ in 0..<(n * kk) { rec.logProbs.append(Float(bitPattern: try r.read(UInt32.self))) }
        } catch { return nil }
        return rec
    }
}
