import Foundation
import LMFuzzTargets

// libFuzzer driver for every target in LMFuzzTargets (one binary; the target is chosen
// by LMFUZZ_TARGET). LMFUZZ_MAKE_CORPUS=DIR writes the seed corpora to DIR and exits
// (LMKIT_SHARED, when set, adds small real files). Built by scripts/fuzz.sh only.

nonisolated(unsafe) var target = ""

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    let env = ProcessInfo.processInfo.environment
    if let dir = env["LMFUZZ_MAKE_CORPUS"] {
        do {
            let counts = try Corpus.write(to: dir, shared: env["LMKIT_SHARED"])
            for n in FuzzTargets.names { print("corpus \(n): \(counts[n] ?? 0) seeds") }
            exit(0)
        } catch {
            FileHandle.standardError.write("lmfuzz: cannot write the corpus: \(error)\n".data(using: .utf8)!)
            exit(2)
        }
    }
    guard let t = env["LMFUZZ_TARGET"], FuzzTargets.names.contains(t) else {
        FileHandle.standardError.write("lmfuzz: set LMFUZZ_TARGET to one of: \(FuzzTargets.names.joined(separator: " "))\n".data(using: .utf8)!)
        exit(2)
    }
    target = t
    FuzzTargets.verbose = env["LMFUZZ_VERBOSE"] == "1"
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FuzzTargets.run(target, UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
