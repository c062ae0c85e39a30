// swift-tools-version:6.0
import PackageDescription
import Foundation

// One portable binary: Swift code is compiled for the x86-64-v3 baseline (LLVM's
// `haswell`: AVX2, FMA, F16C, BMI2); the C kernels are compiled for plain x86-64 with per-function target
// attributes, and the best level the CPU has (AVX-512 VNNI where present) is chosen at
// run time. A CPU below the baseline gets a clear error at start (CKernels' constructor).
// LMKIT_NATIVE=1 builds a tuned binary for this machine only (-march=native).
let native = ProcessInfo.processInfo.environment["LMKIT_NATIVE"] == "1"
let kernelFlags: [SwiftSetting] = [.unsafeFlags(native ? ["-target-cpu", "native", "-Xcc", "-march=native"] : ["-target-cpu", "haswell", "-Xcc", "-march=haswell"])]
// -Ounchecked where a benchmark showed it matters (the runtime's and quantizers' inner
// loops); every memory-protecting check there is an explicit error, not a precondition.
let fastFlags: [SwiftSetting] = kernelFlags + (ProcessInfo.processInfo.environment["LMKIT_CHECKED"] == "1" ? [] : [.unsafeFlags(["-Ounchecked"])])
// LMKIT_FUZZ=1 adds the libFuzzer driver `lmfuzz` (Fuzz/Driver; libFuzzer supplies main, so it
// only links under --sanitize=fuzzer). scripts/fuzz.sh sets it; a normal `swift build` never sees it.
let fuzz = ProcessInfo.processInfo.environment["LMKIT_FUZZ"] == "1"

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
        // Open MPI, linked only by LMMPI (and so only by lmeval), for one rank per process.
        .systemLibrary(name: "CMPI", pkgConfig: "ompi-c", providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]),
        .target(name: "CKernels", cSettings: [.unsafeFlags(native ? ["-O3", "-march=native"] : ["-O3"])]),
        // LMCore links CKernels so every binary carries its CPU-baseline check (a constructor).
        .target(name: "LMCore", dependencies: ["CZlib", "CJSONC", "CKernels"], swiftSettings: kernelFlags),
        // One file per storage scheme: name grammar, sections, reference codec, kernels;
        // plus the compute context they run on (worker pool, kernel set).
        .target(name: "LMSchemes", dependencies: ["LMCore", "COpenBLAS", "CKernels"], swiftSettings: fastFlags),
        .target(name: "LMFormats", dependencies: ["LMCore", "LMSchemes"], swiftSettings: kernelFlags),
        .target(name: "LMTokenizer", dependencies: ["LMCore"]),
        .target(name: "LMQuant", dependencies: ["LMCore", "LMFormats", "LMTokenizer", "LMRuntime", "COpenBLAS"], swiftSettings: fastFlags),
        .target(name: "LMRuntime", dependencies: ["LMCore", "LMSchemes", "LMFormats", "COpenBLAS", "CKernels"], swiftSettings: fastFlags),
        // Tensor-parallel sharding: the plan and the rank files (`lmconvert shard`).
        .target(name: "LMShard", dependencies: ["LMCore", "LMFormats"], swiftSettings: kernelFlags),
        // The MPI communicator (`mpirun -np N lmeval … --shards DIR`).
        .target(name: "LMMPI", dependencies: ["CMPI", "LMRuntime"]),
        .target(name: "LMFixtures", dependencies: ["LMCore", "LMFormats"]),
        .target(name: "LMTestSupport", dependencies: ["LMCore", "LMFormats"]),
        .target(name: "LMEval", dependencies: ["LMCore", "LMFormats", "LMTokenizer", "LMRuntime", "LMQuant", "LMShard"], swiftSettings: kernelFlags),
        .executableTarget(name: "lmconvert", dependencies: [
            "LMCore", "LMFormats", "LMTokenizer", "LMQuant", "LMShard",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "lmeval", dependencies: [
            "LMCore", "LMFormats", "LMTokenizer", "LMRuntime", "LMEval", "LMMPI",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // The per-target fuzz entry points (one function per reader of untrusted bytes) and the
        // seed-corpus generator: called by the libFuzzer driver and replayed by FuzzRegressionTests.
        .target(name: "LMFuzzTargets", dependencies: ["LMCore", "LMFormats", "LMTokenizer", "LMQuant", "LMEval", "LMFixtures", "LMShard"], path: "Fuzz/Targets"),
        .testTarget(name: "LMCoreTests", dependencies: ["LMCore"]),
        .testTarget(name: "LMQuantTests", dependencies: ["LMTestSupport", "LMCore", "LMFormats", "LMQuant", "LMFixtures", "LMRuntime", "LMTokenizer"]),
        .testTarget(name: "LMFormatsTests", dependencies: ["LMTestSupport", "LMCore", "LMFormats", "LMTokenizer", "LMFixtures", "LMFuzzTargets"]),
        .testTarget(name: "LMTokenizerTests", dependencies: ["LMTestSupport", "LMCore", "LMFormats", "LMTokenizer"]),
        .testTarget(name: "LMRuntimeTests", dependencies: ["LMTestSupport", "LMCore", "LMFormats", "LMRuntime", "LMTokenizer", "LMFixtures", "LMQuant"]),
        .testTarget(name: "LMShardTests", dependencies: ["LMTestSupport", "LMCore", "LMFormats", "LMShard", "LMRuntime", "LMQuant", "LMFixtures", "LMTokenizer", "LMEval"]),
        .testTarget(name: "LMEvalTests", dependencies: ["LMTestSupport", "LMCore", "LMFormats", "LMRuntime", "LMTokenizer", "LMEval", "LMFixtures", "LMQuant"]),
        .testTarget(name: "CLITests", dependencies: ["LMTestSupport", "LMCore", "LMFormats", "LMFixtures", "LMQuant", "LMEval"]),
    ] + (fuzz ? [.executableTarget(name: "lmfuzz", dependencies: ["LMFuzzTargets"], path: "Fuzz/Driver")] : [])
)
