// swift-tools-version:6.0
import PackageDescription
import Foundation

// Kernel targets are compiled for the build machine's CPU (AVX-512 / FMA on the
// project machines). Set LMKIT_PORTABLE=1 for a build that runs on any x86-64.
let portable = ProcessInfo.processInfo.environment["LMKIT_PORTABLE"] == "1"
let kernelFlags: [SwiftSetting] = portable ? [] : [.unsafeFlags(["-target-cpu", "native", "-Xcc", "-march=native"])]
let fastFlags: [SwiftSetting] = kernelFlags + [.unsafeFlags(["-Ounchecked"])]

let package = Package(
    name: "lmkit",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "lmconvert", targets: ["lmconvert"]),
        .executable(name: "lmeval", targets: ["lmeval"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["libz-dev"])]),
        .systemLibrary(name: "CJSONC", pkgConfig: "json-c", providers: [.apt(["libjson-c-dev"])]),
        .target(name: "CKernels", cSettings: portable ? [.unsafeFlags(["-O3"])] : [.unsafeFlags(["-O3", "-march=native"])]),
        .target(name: "LMCore", dependencies: ["CZlib", "CJSONC"], swiftSettings: kernelFlags),
        .target(name: "LMFormats", dependencies: ["LMCore"], swiftSettings: kernelFlags),
        .target(name: "LMTokenizer", dependencies: ["LMCore"]),
        .target(name: "LMQuant", dependencies: ["LMCore", "LMFormats"], swiftSettings: fastFlags),
        .target(name: "LMRuntime", dependencies: ["LMCore", "LMFormats", "COpenBLAS", "CKernels"], swiftSettings: fastFlags),
        .target(name: "LMFixtures", dependencies: ["LMCore", "LMFormats"]),
        .target(name: "LMTestSupport", dependencies: ["LMCore", "LMFormats"]),
        .target(name: "LMEval", dependencies: ["LMCore", "LMFormats", "LMTokenizer", "LMRuntime", "LMQuant"], swiftSettings: kernelFlags),
        .executableTarget(name: "lmconvert", dependencies: [
            "LMCore", "LMFormats", "LMTokenizer", "LMQuant",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "lmeval", dependencies: [
            "LMCore", "LMFormats", "LMTokenizer", "LMRuntime", "LMEval",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .testTarget(name: "LMCoreTests", dependencies: ["LMCore"]),
        .testTarget(name: "LMQuantTests", dependencies: ["LMCore", "LMFormats", "LMQuant"]),
        .testTarget(name: "LMFormatsTests", dependencies: ["LMTestSupport", "LMCore", "LMFormats", "LMTokenizer", "LMFixtures"]),
        .testTarget(name: "LMTokenizerTests", dependencies: ["LMTestSupport", "LMCore", "LMFormats", "LMTokenizer"]),
        .testTarget(name: "LMRuntimeTests", dependencies: ["LMTestSupport", "LMCore", "LMFormats", "LMRuntime", "LMTokenizer", "LMFixtures", "LMQuant"]),
        .testTarget(name: "LMEvalTests", dependencies: ["LMTestSupport", "LMCore", "LMFormats", "LMRuntime", "LMTokenizer", "LMEval", "LMFixtures", "LMQuant"]),
        .testTarget(name: "CLITests", dependencies: ["LMTestSupport", "LMCore", "LMFormats", "LMFixtures"]),
    ]
)
