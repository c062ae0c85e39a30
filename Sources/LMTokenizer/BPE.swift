/// Byte-pair-encoding merge engine shared by both tokenizer families.
///
/// Semantics follow Hugging Face `tokenizers`' `BPE::merge_word`: repeatedly merge
/// the adjacent pair with the lowest merge rank, leftmost first among equal ranks.
/// A binary heap with lazy invalidation keeps a long word (a whole document under
/// Metaspace with `split: false`) at O(n log n).
struct BPEMerger {
    /// (left id, right id) → (rank, merged id).
    var merges: [UInt64: (rank: Int32, id: Int32)] = [:]

    @inline(__always) static func key(_ a: Int32, _ b: Int32) -> UInt64 { UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b)) }

    func rank(_ a: Int32, _ b: Int32) -> (rank: Int32, id: Int32)? { merges[BPEMerger.key(a, b)] }

    /// Merges `symbols` in place and returns the final ids.
    func merge(_ symbols: [Int32]) -> [Int32] {
        let n = symbols.count
        if n < 2 { return symbols }
        if n <= 8 { return mergeSmall(symbols) }
        var ids = symbols
        var prev = [Int](0..<n).map { $0 - 1 }
        var next = [Int](0..<n).map { $0 + 1 }
        var alive = [Bool](repeating: true, count: n)
        // Heap entries: (rank, position, left id, right id); ordered by rank then position.
        var heap = MinHeap()
        for i in 0..<(n - 1) {
            if let r = rank(ids[i], ids[i + 1]) { heap.push(.init(rank: r.rank, pos: Int32(i), left: ids[i], right: ids[i + 1])) }
        }
        while let top = heap.pop() {
            let i = Int(top.pos)
            guard alive[i], ids[i] == top.left else { continue }
            let j = next[i]
            guard j < n, ids[j] == top.right, let r = rank(ids[i], ids[j]), r.rank == top.rank else { continue }
            ids[i] = r.id
            alive[j] = false
            next[i] = next[j]
            if next[j] < n { prev[next[j]] = i }
            let p = prev[i]
            if p >= 0, let pr = rank(ids[p], ids[i]) { heap.push(.init(rank: pr.rank, pos: Int32(p), left: ids[p], right: ids[i])) }
            let q = next[i]
            if q < n, let nr = rank(ids[i], ids[q]) { heap.push(.init(rank: nr.rank, pos: Int32(i), left: ids[i], right: ids[q])) }
        }
        var out: [Int32] = []
        var i = 0
        while i < n { out.append(ids[i]); i = next[i] }
        return out
    }

    /// Quadratic scan for short words (faster than the heap for typical pre-tokens).
    private func mergeSmall(_ symbols: [Int32]) -> [Int32] {
        var s = symbols
        while s.count > 1 {
            var best: Int32 = .max, at = -1, id: Int32 = 0
            for i in 0..<(s.count - 1) {
                if let r = rank(s[i], s[i + 1]), r.rank < best { best = r.rank; at = i; id = r.id }
            }
            if at < 0 { break }
            s[at] = id
            s.remove(at: at + 1)
        }
        return s
    }
}

struct HeapEntry { var rank: Int32; var pos: Int32; var left: Int32; var right: Int32
    @inline(__always) func less(_ o: HeapEntry) -> Bool { rank != o.rank ? rank < o.rank : pos < o.pos }
}

struct MinHeap {
    var a: [HeapEntry] = []
    mutating func push(_ e: HeapEntry) {
        a.append(e)
        var i = a.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if a[i].less(a[p]) { a.swapAt(i, p); i = p } else { break }
        }
    }
    mutating func pop() -> HeapEntry? {
        guard let first = a.first else { return nil }
        let last = a.removeLast()
        if !a.isEmpty {
            a[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < a.count && a[l].less(a[m]) { m = l }
                if r < a.count && a[r].less(a[m]) { m = r }
                if m == i { break }
                a.swapAt(i, m); i = m
            }
        }
        return first
    }
}
