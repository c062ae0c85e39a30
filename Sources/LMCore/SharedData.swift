import Foundation

/// Locates the project's shared evaluation data (models, texts, reference outputs).
///
/// Order: `$LMKIT_SHARED`, then `../shared` next to the package root (found by
/// walking up from a starting path), then `../shared` from the current directory.
public enum SharedData {
    /// Environment variable naming the shared data folder.
    public static let environmentKey = "LMKIT_SHARED"

    /// The folder, or nil when not found.
    public static func locate(from start: String = #filePath) -> String? {
        let fm = FileManager.default
        if let e = ProcessInfo.processInfo.environment[environmentKey], !e.isEmpty {
            return fm.fileExists(atPath: e + "/README.md") ? e : nil
        }
        var dir = URL(fileURLWithPath: start)
        for _ in 0..<8 {
            dir = dir.deletingLastPathComponent()
            if fm.fileExists(atPath: dir.path + "/Package.swift") {
                let s = dir.deletingLastPathComponent().path + "/shared"
                if fm.fileExists(atPath: s + "/README.md") { return s }
            }
        }
        let cwd = fm.currentDirectoryPath + "/../shared"
        return fm.fileExists(atPath: cwd + "/README.md") ? (cwd as NSString).standardizingPath : nil
    }

    /// True when running under CI (`CI=true`), where missing data is a failure.
    public static var isCI: Bool {
        let v = ProcessInfo.processInfo.environment["CI"]?.lowercased()
        return v == "true" || v == "1"
    }
}
