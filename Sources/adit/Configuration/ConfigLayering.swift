import AditConfiguration
import ArgumentParser
import Foundation
import NIOConcurrencyHelpers

/// Where `adit server` and `adit client` get their options: the command line, then ADIT_* variables, then the
/// `--config` file (or ADIT_CONFIG). The other commands take the command line only.
enum ConfigLayering {
    /// The commands whose options the file and the environment may set, by the name of their section.
    static let commands: [(name: String, type: any ParsableCommand.Type)] = [
        ("server", ServerCommand.self), ("client", ClientCommand.self),
    ]

    static let catalogs: [OptionCatalog] = commands.map { OptionCatalog(of: $0.type, command: $0.name) }

    static func catalog(named name: String) -> OptionCatalog? { catalogs.first { $0.command == name } }

    /// The layering the running command was parsed from: error messages name where a value came from, and SIGHUP
    /// layers again from the same command line.
    static let current = NIOLockedValueBox<Layered?>(nil)

    struct Layered: Sendable {
        var command: String
        var commandLine: [String]
        var environment: [String: String]
        var result: LayeredArguments
    }

    /// `arguments` (without the program name) with what the environment and the file add, for `adit server` and
    /// `adit client`; any other command's arguments unchanged.
    static func layer(_ arguments: [String], environment: [String: String]) async throws -> [String] {
        guard let name = arguments.first, let catalog = catalog(named: name) else { return arguments }
        let commandLine = Array(arguments.dropFirst())
        // --help and --version answer without reading any file.
        if commandLine.contains(where: { ["--help", "-h", "--version", "--experimental-dump-help"].contains($0) }) {
            return arguments
        }
        let layered = try await layer(command: catalog, commandLine: commandLine, environment: environment)
        current.withLockedValue { $0 = Layered(command: name, commandLine: commandLine, environment: environment, result: layered) }
        return [name] + layered.arguments
    }

    static func layer(command catalog: OptionCatalog, commandLine: [String], environment: [String: String]) async throws -> LayeredArguments {
        var file: ConfigFile?
        if let path = LayeredArguments.configPath(in: commandLine, environment: environment) {
            file = try await ConfigFile.load(path: path, catalogs: catalogs)
        }
        return try LayeredArguments(catalog: catalog, commandLine: commandLine, environment: environment, file: file)
    }

    /// " (--keepalive came from /etc/adit.yaml line 4 (server.keepalive))" for the options a message names whose
    /// values were not typed on the command line; empty when it names none.
    static func attribution(of message: String, in layered: LayeredArguments? = nil) -> String {
        guard let layered = layered ?? current.withLockedValue({ $0 })?.result else { return "" }
        var notes: [String] = []
        var seen: Set<String> = []
        for spelling in spellings(in: message) where seen.insert(spelling).inserted {
            if let origin = layered.origin(ofSpelling: spelling) { notes.append("\(spelling) came from \(origin)") }
        }
        return notes.isEmpty ? "" : " (" + notes.joined(separator: "; ") + ")"
    }

    /// The flags a message mentions: `--name` and the short `-L`, `-R`, `-D`, `-H`.
    static func spellings(in message: String) -> [String] {
        var out: [String] = []
        let scalars = Array(message)
        var index = 0
        while index < scalars.count {
            let atWordStart = index == 0 || !(scalars[index - 1].isLetter || scalars[index - 1].isNumber || scalars[index - 1] == "-")
            if atWordStart, scalars[index] == "-" {
                var end = index + 1
                if end < scalars.count, scalars[end] == "-" { end += 1 }
                let nameStart = end
                while end < scalars.count, scalars[end].isLetter || scalars[end].isNumber || scalars[end] == "-" { end += 1 }
                if end > nameStart {
                    let spelling = String(scalars[index..<end])
                    if spelling.hasPrefix("--") || end - nameStart == 1 { out.append(spelling) }
                }
                index = max(end, index + 1)
            } else {
                index += 1
            }
        }
        return out
    }
}
