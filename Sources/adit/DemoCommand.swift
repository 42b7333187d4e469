import AditGateway
import ArgumentParser

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run a server, a client and a target in this process on loopback and push data through them.",
        discussion: """
            Everything binds 127.0.0.1 on free ports and stops when the demo ends. Example:
              adit demo --streams 8 --megabytes 512
            """)

    @Option(name: .long, help: ArgumentHelp("Parallel streams (connections) to push data over.", valueName: "n"))
    var streams: Int = 4

    @Option(name: .long, help: ArgumentHelp("MiB sent in total, each way, spread over the streams.", valueName: "mib"))
    var megabytes: Int = 256

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        guard (1...1000).contains(streams) else { throw ValidationError("--streams must be between 1 and 1000") }
        guard (1...100_000).contains(megabytes) else { throw ValidationError("--megabytes must be between 1 and 100000") }
    }

    func run() async throws {
        tuneAllocator()
        var options = logging
        if options.logLevel == nil { options.logLevel = "warning" }  // keep the demo's screen for the progress line
        let logger = options.makeLogger(label: "adit.demo")
        do {
            try await DemoRunner(streams: streams, totalBytes: megabytes << 20, logger: logger).run()
        } catch {
            logger.error("demo failed: \(error)")
            throw ExitCode(1)
        }
    }
}
