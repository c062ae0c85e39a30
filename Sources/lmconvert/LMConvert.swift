import ArgumentParser

@main
struct LMConvert: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lmconvert",
        abstract: "Convert, quantize and inspect language-model weights.",
        version: "0.1.0",
        subcommands: [ImportCommand.self, QuantizeCommand.self, PruneCommand.self, ShardCommand.self, ExportCommand.self, InspectCommand.self, VerifyCommand.self])
}
