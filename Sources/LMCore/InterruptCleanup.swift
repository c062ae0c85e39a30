import Foundation

/// Temporary files to remove when the process is interrupted (SIGINT, SIGTERM),
/// so an interrupted conversion leaves nothing behind: `AtomicFileWriter` registers
/// its `.tmp-PID` file while it is open.
///
/// This is lmkit's one piece of process-global mutable state, and it has to be: a
/// signal handler can reach nothing else. The table is a fixed array of C strings
/// (written under a lock by writers, only read — then unlinked — by the handler, which
/// calls nothing but `unlink`, `signal` and `raise`).
public enum InterruptCleanup {
    static let slots = 32, pathMax = 4096
    nonisolated(unsafe) static let table: UnsafeMutablePointer<CChar> = {
        let t = UnsafeMutablePointer<CChar>.allocate(capacity: slots * pathMax)
        t.initialize(repeating: 0, count: slots * pathMax)
        return t
    }()
    static let lock = NSLock()

    /// Adds `path`; returns its slot (nil when the table is full or the path too long:
    /// the file then just is not cleaned up on a signal).
    public static func register(_ path: String) -> Int? {
        let bytes = Array(path.utf8)
        guard bytes.count < pathMax, !bytes.contains(0) else { return nil }
        lock.lock(); defer { lock.unlock() }
        for s in 0..<slots where table[s * pathMax] == 0 {
            let p = table + s * pathMax
            for (i, b) in bytes.enumerated().reversed() { p[i] = CChar(bitPattern: b) }   // first byte last: the slot turns live at once
            p[bytes.count] = 0
            return s
        }
        return nil
    }

    /// Removes a slot `register` returned.
    public static func unregister(_ slot: Int?) {
        guard let slot else { return }
        lock.lock(); defer { lock.unlock() }
        table[slot * pathMax] = 0
    }

    /// Installs the handlers (idempotent): on SIGINT or SIGTERM every registered file is
    /// unlinked and the signal re-raised with its default action. A signal the parent set
    /// to be ignored stays ignored (`nohup`, background jobs); both are unblocked in the
    /// calling thread (a spawner's blocked mask is inherited: test runners block them).
    /// SIGXFSZ (a file-size limit) is ignored, so such a write fails with an error and
    /// the writer removes its temporary file.
    public static func install() {
        _ = table
        var unblock = sigset_t()
        sigemptyset(&unblock)
        for sig in [SIGINT, SIGTERM] {
            var old = sigaction()
            sigaction(sig, nil, &old)
            let ignored = old.__sigaction_handler.sa_handler.map { unsafeBitCast($0, to: Int.self) == 1 } ?? false   // SIG_IGN
            if ignored { continue }
            signal(sig, interruptHandler)
            sigaddset(&unblock, sig)
        }
        pthread_sigmask(SIG_UNBLOCK, &unblock, nil)
        signal(SIGXFSZ, SIG_IGN)
    }
}

private func interruptHandler(_ sig: Int32) {
    let t = InterruptCleanup.table
    for s in 0..<InterruptCleanup.slots where t[s * InterruptCleanup.pathMax] != 0 { unlink(t + s * InterruptCleanup.pathMax) }
    signal(sig, SIG_DFL)
    raise(sig)
}
