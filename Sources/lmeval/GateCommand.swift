import ArgumentParser
import Foundation
import LMCore
import LMEval
import LMRuntime

struct GateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gate",
        abstract: "Run accuracy gates from a gate file (formats/gates.md). Exit 0: all pass; 1: a limit failed; 2: bad gate file or data.")

    @Argument(help: "Gate file (JSON).") var file: String
    @Option(help: "Write all numbers and verdicts as JSON.") var json: String?
    @Option(help: "Write JUnit XML (one test case per candidate).") var junit: String?
    @Option(help: "Write a Markdown table (for a CI job summary).") var markdown: String?

    func run() throws {
        // Calibrated candidates run OpenBLAS: pin its kernels so every host measures the same builds.
        BLASKernels.pinForReproducibility()
        let report: GateReport
        do {
            let g = try GateFile.load(file)
            report = try Gate.run(g, kernels: try KernelSet.fromEnvironment()) { printErr($0) }
        } catch let e as GateFileError {
            printErr("Error: \(e)")
            throw ExitCode(2)
        }
        print(report.table(), terminator: "")
        if let json { try writeJSON(report.json(), to: json) }
        for (path, text) in [(junit, report.junit()), (markdown, report.markdown())] {
            guard let path else { continue }
            let w = try AtomicFileWriter(path: path)
            try w.write(text)
            try w.commit()
        }
        if !report.passed { throw ExitCode(1) }
    }
}
