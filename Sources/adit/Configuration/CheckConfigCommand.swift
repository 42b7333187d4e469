import AditConfiguration
import AditGateway
import ArgumentParser
import Foundation

/// `adit check-config`: what `adit server` / `adit client` would run with, and where each value came from,
/// checked the same way they check it at start-up, without starting anything.
struct CheckConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate the configuration (--config file, ADIT_* variables) and print the effective options with the source of each; secrets masked.",
        discussion: """
            Checks the file's sections (or the commands named) exactly as the command would at start-up, and exits 0 when every one is valid, 64 otherwise; errors name the file's line or the variable.

            Examples:
              adit check-config --config /etc/adit/adit.yaml
              ADIT_LISTEN=0.0.0.0:8080 ADIT_ALLOW='db:5432' adit check-config server
            """)

    @Option(name: .long, help: ArgumentHelp("The YAML file to check (default: ADIT_CONFIG). Example: --config /etc/adit/adit.yaml", valueName: "file"))
    var config: String?

    @Argument(help: ArgumentHelp("Which commands to check: server, client (default: the file's sections).", valueName: "command"))
    var commands: [String] = []

    func validate() throws {
        for name in commands where ConfigLayering.catalog(named: name) == nil {
            throw ValidationError("'\(name)' is not a command with options to check: use server or client")
        }
    }

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        let path = config ?? environment["ADIT_CONFIG"].flatMap { $0.isEmpty ? nil : $0 }
        var file: ConfigFile?
        if let path {
            file = try await ConfigFile.load(path: path, catalogs: ConfigLayering.catalogs)
        }
        var names = commands
        if names.isEmpty {
            names = ConfigLayering.catalogs.map(\.command).filter { file?.sections[$0] != nil }
        }
        guard !names.isEmpty else {
            throw ValidationError(path.map { "\($0) has no `server:` or `client:` section: name the command to check, e.g. adit check-config server" }
                                  ?? "nothing to check: give --config FILE (or ADIT_CONFIG), or name the command, e.g. adit check-config server")
        }
        var failures = 0
        for name in names {
            guard let catalog = ConfigLayering.catalog(named: name),
                  let type = ConfigLayering.commands.first(where: { $0.name == name })?.type else { continue }
            let layered = try LayeredArguments(catalog: catalog, commandLine: [], environment: environment, file: file)
            ConfigLayering.current.withLockedValue {
                $0 = ConfigLayering.Layered(command: name, commandLine: [], environment: environment, result: layered)
            }
            var problem: String?
            do {
                _ = try type.parse(layered.arguments)
            } catch {
                let message = Adit.message(for: error)
                problem = message.split(separator: "\n").first.map(String.init).map { $0 + ConfigLayering.attribution(of: message) }
            }
            print("adit \(name): \(problem == nil ? "valid" : "NOT valid")")
            if let problem {
                failures += 1
                print("  error: \(problem)")
            }
            print(Self.table(layered.settings))
        }
        let secrets = Self.secretVariables.filter { environment[$0] != nil }
        if !secrets.isEmpty {
            print("secrets from the environment: " + secrets.map { "\($0)=****" }.joined(separator: ", "))
        }
        for warning in Self.unknownVariables(in: environment) { print("warning: \(warning)") }
        if failures > 0 { throw ExitCode.validationFailure }
    }

    /// Read by the commands themselves, never printed.
    static let secretVariables = ["ADIT_TOKEN", "ADIT_PASSWORD", "ADIT_LOCAL_PASSWORD", "ADIT_PROXY_PASSWORD"]

    static func table(_ settings: [LayeredArguments.Setting]) -> String {
        let shown = settings.filter { $0.source != .unset && !($0.option.isFlag && $0.source == .defaultValue) }
        let keyWidth = (shown.map(\.option.key.count).max() ?? 0) + 2
        let rows = shown.map { setting -> (String, [String], String) in
            let values = setting.values.map { ValueMasking.masked($0, key: setting.option.key) }
            return (setting.option.key, values.isEmpty ? ["(command line)"] : values, "\(setting.source)")
        }
        let valueWidth = min(48, (rows.flatMap(\.1).map(\.count).max() ?? 0) + 2)
        var lines: [String] = []
        for (key, values, source) in rows {
            for (index, value) in values.enumerated() {
                let keyColumn = (index == 0 ? key : "").padding(toLength: keyWidth, withPad: " ", startingAt: 0)
                let valueColumn = value.count >= valueWidth ? value + "  " : value.padding(toLength: valueWidth, withPad: " ", startingAt: 0)
                lines.append("  " + keyColumn + valueColumn + (index == 0 ? source : ""))
            }
        }
        return lines.joined(separator: "\n")
    }

    /// ADIT_* variables that set nothing (a typo such as ADIT_LISTN), with the nearest setting.
    static func unknownVariables(in environment: [String: String]) -> [String] {
        let known = Set(ConfigLayering.catalogs.flatMap { $0.options.map(\.environmentVariable) } + secretVariables + ["ADIT_CONFIG"])
        return environment.keys.filter { $0.uppercased().hasPrefix("ADIT_") && !known.contains($0.uppercased()) }.sorted().compactMap { name in
            // Near misses only: other programs' ADIT_* names (ADIT_BIN in our own tests) are not typos of ours.
            let suffix = name.count - "ADIT_".count
            let nearest = known.map { ($0, ConfigFile.editDistance($0, name.uppercased())) }.min { $0.1 < $1.1 }
            guard suffix >= 4, let (best, distance) = nearest, distance <= max(1, suffix / 4) else { return nil }
            return "\(name) is not an adit setting (did you mean \(best)?); it is ignored"
        }
    }
}

extension Adit {
    /// The message ArgumentParser would print for `error`.
    static func message(for error: any Error) -> String { fullMessage(for: error) }
}
