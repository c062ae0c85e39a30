import Foundation
import LMCore
import Testing

/// The shared data folder for golden tests. In CI a missing folder is a test
/// failure; elsewhere the test is skipped with a visible message.
func sharedRoot(_ what: String, sourceLocation: SourceLocation = #_sourceLocation) -> String? {
    if let r = SharedData.locate() { return r }
    if SharedData.isCI {
        Issue.record("shared data folder not found (set \(SharedData.environmentKey)); real-model test '\(what)' must run in CI", sourceLocation: sourceLocation)
    } else {
        print("SKIPPED \(what): shared data folder not found (set \(SharedData.environmentKey) or place it at ../shared)")
    }
    return nil
}
