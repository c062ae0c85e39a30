import CMPI
import Foundation
import LMRuntime

/// Whether this process was started by `mpirun` (Open MPI's environment), read once.
public enum MPIEnvironment {
    /// The world size `mpirun` announced, or nil outside `mpirun`.
    public static let worldSize: Int? = ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_SIZE"].flatMap { Int($0) }
    /// This process's rank under `mpirun` (0 outside it).
    public static let rank: Int = ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_RANK"].flatMap { Int($0) } ?? 0
    public static var isLaunched: Bool { worldSize != nil }
}

/// One process of an MPI world as a tensor-parallel rank (Open MPI, `MPI_COMM_WORLD`).
///
/// Collectives give the same bits as the in-process group: the all-reduce gathers
/// every rank's buffer (`MPI_Allgather`) and sums in rank order here, instead of
/// `MPI_Allreduce`, whose reduction order MPI leaves open. MPI is called only from
/// the thread that created the communicator (`MPI_THREAD_FUNNELED`).
public final class MPICommunicator: Communicator, @unchecked Sendable {
    public let rank: Int
    public let worldSize: Int
    private let comm: MPI_Comm
    private var scratch: [Float] = []

    /// Initializes MPI (once per process; finalized at exit).
    /// - Throws: `CommunicatorError` when MPI cannot start.
    public init() throws {
        var provided: Int32 = 0
        var initialized: Int32 = 0
        MPI_Initialized(&initialized)
        if initialized == 0 {
            guard MPI_Init_thread(nil, nil, Int32(lmk_mpi_thread_funneled()), &provided) == lmk_mpi_success() else {
                throw CommunicatorError("MPI_Init_thread failed: is this process started by mpirun?")
            }
            atexit { var done: Int32 = 0; MPI_Finalized(&done); if done == 0 { MPI_Finalize() } }
        }
        comm = lmk_mpi_comm_world()
        var r: Int32 = 0, n: Int32 = 0
        MPI_Comm_rank(comm, &r)
        MPI_Comm_size(comm, &n)
        rank = Int(r); worldSize = Int(n)
    }

    private func check(_ rc: Int32, _ what: String) throws {
        guard rc == lmk_mpi_success() else { throw CommunicatorError("\(what) failed on rank \(rank) (MPI error \(rc))") }
    }

    private func count32(_ n: Int) throws -> Int32 {
        guard let c = Int32(exactly: n) else { throw CommunicatorError("a collective of \(n) floats exceeds MPI's 32-bit counts") }
        return c
    }

    public func allReduceSum(_ buffer: UnsafeMutablePointer<Float>, count n: Int) throws {
        if worldSize == 1 { return }
        if scratch.count < n * worldSize { scratch = [Float](repeating: 0, count: n * worldSize) }
        let c = try count32(n)
        try scratch.withUnsafeMutableBufferPointer { s in
            try check(MPI_Allgather(buffer, c, lmk_mpi_float(), s.baseAddress, c, lmk_mpi_float(), comm), "MPI_Allgather")
            for i in 0..<n {
                var sum = s[i]
                for r in 1..<worldSize { sum += s[r * n + i] }
                buffer[i] = sum
            }
        }
    }

    public func allGather(_ local: UnsafePointer<Float>, counts: [Int], into out: UnsafeMutablePointer<Float>?) throws {
        let c = try counts.map { try count32($0) }
        var displs: [Int32] = []
        var off = 0
        for n in counts { displs.append(try count32(off)); off += n }
        _ = try count32(off)
        var tmp: [Float] = out == nil ? [Float](repeating: 0, count: off) : []
        try tmp.withUnsafeMutableBufferPointer { t in
            let dst = out ?? t.baseAddress!
            try check(MPI_Allgatherv(local, c[rank], lmk_mpi_float(), dst, c, displs, lmk_mpi_float(), comm), "MPI_Allgatherv")
        }
    }

    public func minimum(_ value: Int) throws -> Int {
        var v = Int64(value), m: Int64 = 0
        try check(MPI_Allreduce(&v, &m, 1, lmk_mpi_int64(), lmk_mpi_min(), comm), "MPI_Allreduce")
        return Int(m)
    }

    /// A rank failed: ends every process of the world (a collective would otherwise wait forever).
    public func abort() { MPI_Abort(comm, 1) }
}
