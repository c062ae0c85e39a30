import Foundation

/// Progress lines on a terminal's standard error, with rate and ETA.
/// Quiet when standard error is not a terminal (pipes, logs) or under CI (`CI` set and
/// not `false`/`0`), unless forced.
public final class ProgressReporter: @unchecked Sendable {
    let label: String
    let total: Int
    let enabled: Bool
    let start = Date()
    var last = Date.distantPast
    let unit: String

    public init(label: String, total: Int, unit: String = "", enabled: Bool? = nil) {
        self.label = label; self.total = total; self.unit = unit
        self.enabled = enabled ?? ProgressReporter.interactive
    }

    /// True when standard error is a terminal and `CI` is not set: progress is shown by default.
    public static var interactive: Bool {
        let ci = ProcessInfo.processInfo.environment["CI"] ?? ""
        return isatty(2) != 0 && (ci.isEmpty || ci == "false" || ci == "0")
    }

    /// Reports `done` of `total`; rate-limited to ~5 updates per second.
    public func update(_ done: Int, extra: String = "") {
        guard enabled else { return }
        let now = Date()
        if done < total && now.timeIntervalSince(last) < 0.2 { return }
        last = now
        let el = now.timeIntervalSince(start)
        let rate = el > 0 ? Double(done) / el : 0
        let eta = rate > 0 ? Double(total - done) / rate : 0
        let line = String(format: "\r%@ %d/%d %@ %.1f%@/s ETA %@ %@", label, done, total, unit, rate, unit, formatDuration(eta), extra)
        FileHandle.standardError.write(line.data(using: .utf8)!)
        if done >= total { FileHandle.standardError.write("\n".data(using: .utf8)!) }
    }

    public func finish() {
        guard enabled else { return }
        FileHandle.standardError.write("\n".data(using: .utf8)!)
    }
}

public func formatDuration(_ s: Double) -> String {
    if !s.isFinite { return "?" }
    if s < 60 { return String(format: "%.0fs", s) }
    if s < 3600 { return String(format: "%dm%02ds", Int(s) / 60, Int(s) % 60) }
    return String(format: "%dh%02dm", Int(s) / 3600, (Int(s) % 3600) / 60)
}

/// Peak resident set size of this process in bytes (Linux: VmHWM).
public func peakResidentBytes() -> Int {
    guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in s.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        let parts = line.split(separator: " ", omittingEmptySubsequences: true)
        if parts.count >= 2, let kb = Int(parts[1]) { return kb * 1024 }
    }
    return 0
}

/// SHA-256 of a file, hex. Reads in 4 MiB chunks, so memory stays small and the
/// file's pages are not kept resident.
public func sha256Hex(file path: String) throws -> String {
    var h = SHA256()
    try sha256Update(&h, file: path)
    return h.finalizeHex()
}

/// Feeds a file into `h` in 4 MiB chunks.
public func sha256Update(_ h: inout SHA256, file path: String) throws {
    guard let f = fopen(path, "rb") else { throw IOError(path: path, reason: "cannot open: \(String(cString: strerror(errno)))") }
    defer { fclose(f) }
    let n = 4 << 20
    let buf = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 64)
    defer { buf.deallocate() }
    while true {
        let got = fread(buf, 1, n, f)
        if got > 0 { h.update(UnsafeRawBufferPointer(start: buf, count: got)) }
        if got < n {
            if ferror(f) != 0 { throw IOError(path: path, reason: "read error") }
            break
        }
    }
}
