import AditConfiguration
import ArgumentParser
import AditGateway
import Foundation

@main
struct Adit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "adit",
        abstract: "Carry TCP connections through one WebSocket, past proxies and firewalls that only pass web traffic.",
        discussion: """
            Run `adit server` next to the services you want to reach, and `adit client` where the applications are. Each local connection becomes one stream of a single multiplexed WebSocket.

              adit server --listen 0.0.0.0:8080 --allow 'db.internal:5432'
              adit client ws://gateway.example.com:8080/ -L 5432:db.internal:5432

            Every option of `server` and `client` can also come from the environment (ADIT_LISTEN, ADIT_ALLOW=a,b, …) or a YAML file (--config FILE or ADIT_CONFIG, with a `server:` and a `client:` section); the command line wins over the environment, which wins over the file. `adit check-config` shows the result and where each value came from.

            Exit codes: 0 clean shutdown, 1 runtime failure (for example a port already in use), 64 bad usage (a wrong flag or value; the message says which).
            """,
        version: AditVersion.current,
        subcommands: [ServerCommand.self, ClientCommand.self, CheckConfigCommand.self, KeygenCommand.self, TokenCommand.self, DemoCommand.self]
    )

    /// ArgumentParser's own `main()`, with the environment and the `--config` file layered under the command line
    /// first, and errors that say which variable or line a bad value came from.
    static func main() async {
        do {
            let arguments = try await ConfigLayering.layer(Array(CommandLine.arguments.dropFirst()),
                                                           environment: ProcessInfo.processInfo.environment)
            var command = try parseAsRoot(arguments)
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error as ConfigFileError {
            FileHandle.standardError.write(Data("Error: \(error)\n".utf8))
            Foundation.exit(ExitCode.validationFailure.rawValue)
        } catch let error as LayeringError {
            FileHandle.standardError.write(Data("Error: \(error)\n".utf8))
            Foundation.exit(ExitCode.validationFailure.rawValue)
        } catch {
            let code = exitCode(for: error)
            let message = fullMessage(for: error)
            let attribution = code == .success ? "" : ConfigLayering.attribution(of: message)
            guard !attribution.isEmpty else { exit(withError: error) }
            // After the message's first line: usage lines may follow it.
            var lines = message.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            lines[0] += attribution
            FileHandle.standardError.write(Data((lines.joined(separator: "\n") + "\n").utf8))
            Foundation.exit(code.rawValue)
        }
    }
}
