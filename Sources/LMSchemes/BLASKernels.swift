import COpenBLAS
import Foundation

/// Which OpenBLAS kernels run `sgemm`/`ssyrk`, and pinning them so a calibrated build
/// gives the same bytes on every x86-64 host.
///
/// Debian's OpenBLAS (a DYNAMIC_ARCH build) picks its kernels for the CPU when the library
/// loads, and the kernels of different cores sum in different orders. A calibrated build's
/// forwards, Hessians and AWQ losses then differ in their last bits between an AVX2 and an
/// AVX-512 host — enough to flip AWQ's α choice or a GPTQ code at a rounding tie (measured:
/// stories260K int4-g32 AWQ and GPTQ files differ between `OPENBLAS_CORETYPE=Haswell` and
/// the native Zen 4 kernels; stop 23's CI failed two AWQ gates by this). OpenBLAS reads
/// `OPENBLAS_CORETYPE` once, at load, so a process pins its kernels by re-executing
/// itself with the variable set, before it does any work.
public enum BLASKernels {
    /// The kernels pinned: Haswell's (AVX2 + FMA), which every host of this project has.
    public static let pinnedCore = "Haswell"

    /// The kernels OpenBLAS runs in this process ("Haswell", "Zen", "SkylakeX", …).
    public static var coreName: String {
        guard let p = openblas_get_corename() else { return "unknown" }
        return String(cString: p).trimmingCharacters(in: .whitespaces)
    }

    /// Re-executes this process with `OPENBLAS_CORETYPE=Haswell` when the variable is unset
    /// and the CPU has AVX2 and FMA (what those kernels need); returns when nothing is to
    /// be done, when `/proc/self/exe` is not this program (started through a loader,
    /// valgrind or an emulator), or when the re-execution fails — the build then runs on
    /// the native kernels, and its provenance says which. An explicit `OPENBLAS_CORETYPE`,
    /// any value, is kept. Call it first, before any output.
    public static func pinForReproducibility() {
        guard ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] == nil, (try? KernelSet.named("avx2")) != nil else { return }
        // Only when /proc/self/exe is this program (not a loader, valgrind or an emulator
        // that started it): otherwise exec would run the wrong binary.
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        guard !exe.isEmpty, (exe as NSString).lastPathComponent == (CommandLine.arguments[0] as NSString).lastPathComponent else { return }
        setenv("OPENBLAS_CORETYPE", pinnedCore, 1)
        fflush(nil)  // every output stream, so nothing buffered is printed twice
        execv("/proc/self/exe", CommandLine.unsafeArgv)
        // exec failed: carry on with the kernels already loaded.
        unsetenv("OPENBLAS_CORETYPE")
    }
}
