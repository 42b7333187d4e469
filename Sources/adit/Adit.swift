import ArgumentParser
import AditGateway

@main
struct Adit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "adit",
        abstract: "Carry TCP connections through one WebSocket, past proxies and firewalls that only pass web traffic.",
        discussion: """
            Run `adit server` next to the services you want to reach, and `adit client` where the applications are. Each local connection becomes one stream of a single multiplexed WebSocket.

              adit server --listen 0.0.0.0:8080 --allow 'db.internal:5432'
              adit client ws://gateway.example.com:8080/ -L 5432:db.internal:5432

            Exit codes: 0 clean shutdown, 1 runtime failure (for example a port already in use), 64 bad usage (a wrong flag or value; the message says which).
            """,
        version: AditVersion.current,
        subcommands: [ServerCommand.self, ClientCommand.self, KeygenCommand.self, TokenCommand.self, DemoCommand.self]
    )
}

