import ArgumentParser
import Foundation

/// Every option of one command, as configuration keys: what `--config FILE` and `ADIT_*` variables may set.
///
/// Read from ArgumentParser's own description of the command (`_dumpHelp()`, the data behind
/// `--experimental-dump-help`), so the flags stay the one place where an option, its type and its default are
/// declared: a new flag is configurable from the file and the environment without a second list to keep in step.
package struct OptionCatalog: Sendable {
    package struct Option: Sendable, Equatable {
        /// The configuration key: the long name (`keepalive-timeout`), or a word for a short-only flag (`forward` for -L).
        package var key: String
        /// Every spelling on the command line (`--tls-server-name`, `--sni`; `-L`).
        package var spellings: [String]
        /// The spelling we write when a value comes from the file or the environment.
        package var preferred: String
        /// A flag takes no value (true or false in the file, 1/0/true/false in the environment).
        package var isFlag: Bool
        /// Repeatable: a list in the file, comma-separated in the environment.
        package var isRepeating: Bool
        /// The default ArgumentParser applies, as shown by `--help` (nil: none, or computed at run time).
        package var defaultValue: String?
        package var valueName: String?

        package init(key: String, spellings: [String], preferred: String? = nil, isFlag: Bool = false,
                     isRepeating: Bool = false, defaultValue: String? = nil, valueName: String? = nil) {
            self.key = key
            self.spellings = spellings
            self.preferred = preferred ?? spellings[0]
            self.isFlag = isFlag
            self.isRepeating = isRepeating
            self.defaultValue = defaultValue
            self.valueName = valueName
        }

        /// ADIT_KEEPALIVE_TIMEOUT for `keepalive-timeout`: what EnvironmentVariablesProvider looks up for `adit.<key>`.
        package var environmentVariable: String {
            "ADIT_" + key.uppercased().map { $0.isLetter || $0.isNumber ? String($0) : "_" }.joined()
        }
    }

    /// The command's name in the file's sections (`server:`, `client:`).
    package let command: String
    package let options: [Option]
    /// The command has a positional server URL (the client): it sets the same key as `--server`.
    package let positionalKey: String?

    /// Short-only flags get a word as their key: `ADIT_L` would say nothing to a reader.
    package static let shortNameKeys = ["L": "forward", "R": "reverse", "D": "socks"]
    /// Not configuration: they act and exit, or name the file itself.
    package static let excludedKeys: Set<String> = ["help", "version", "config", "experimental-dump-help"]

    package func option(forKey key: String) -> Option? { options.first { $0.key == key } }

    package func option(spelledAs spelling: String) -> Option? { options.first { $0.spellings.contains(spelling) } }

    package init(command: String, options: [Option], positionalKey: String?) {
        self.command = command
        self.options = options
        self.positionalKey = positionalKey
    }

    /// The catalog of `type`, from the JSON ArgumentParser describes it with.
    package init(of type: any ParsableCommand.Type, command: String) {
        self.init(command: command, dumpedHelp: Data(type._dumpHelp().utf8))
    }

    package init(command: String, dumpedHelp: Data) {
        let info = (try? JSONDecoder().decode(DumpedHelp.self, from: dumpedHelp))?.command.arguments ?? []
        var options: [Option] = []
        var positionalKey: String?
        for argument in info {
            let names = argument.names ?? []
            if argument.kind == "positional" {
                positionalKey = "server"
                continue
            }
            let long = names.first { $0.kind == "long" }?.name
            let short = names.first { $0.kind == "short" }?.name
            guard let key = long ?? short.flatMap({ Self.shortNameKeys[$0] }), !Self.excludedKeys.contains(key) else { continue }
            let spellings = names.map { $0.kind == "long" ? "--\($0.name)" : "-\($0.name)" }
            let preferred = argument.preferredName.map { $0.kind == "long" ? "--\($0.name)" : "-\($0.name)" } ?? spellings[0]
            options.append(Option(key: key, spellings: spellings, preferred: preferred, isFlag: argument.kind == "flag",
                                  isRepeating: argument.isRepeating ?? false, defaultValue: argument.defaultValue,
                                  valueName: argument.valueName))
        }
        self.init(command: command, options: options, positionalKey: positionalKey)
    }

    /// The part of ArgumentParser's ToolInfoV0 we read (its module is not a product of the package).
    private struct DumpedHelp: Decodable {
        struct Command: Decodable { var arguments: [Argument]? }
        struct Name: Decodable { var kind: String; var name: String }
        struct Argument: Decodable {
            var kind: String
            var names: [Name]?
            var preferredName: Name?
            var isRepeating: Bool?
            var defaultValue: String?
            var valueName: String?
        }
        var command: Command
    }
}
