import Configuration
import Foundation

/// One command's options from the three places they can come from, flags over `ADIT_*` variables over the
/// `--config` file, turned back into command-line arguments.
///
/// Why back into arguments: ArgumentParser then parses and validates every value the same way whatever its source
/// (one set of checks and messages), and the flag declarations stay the one place that holds each default.
/// swift-configuration reads the file and the environment; this type only decides, per option, which layer wins.
package struct LayeredArguments: Sendable {
    package enum Source: Sendable, Equatable, CustomStringConvertible {
        case commandLine
        case environment(variable: String)
        case file(path: String, line: Int, key: String)
        case defaultValue
        case unset

        package var description: String {
            switch self {
            case .commandLine: return "command line"
            case .environment(let variable): return "environment \(variable)"
            case .file(let path, let line, let key): return "\(path) line \(line) (\(key))"
            case .defaultValue: return "default"
            case .unset: return "not set"
            }
        }
    }

    package struct Setting: Sendable {
        package var option: OptionCatalog.Option
        /// As given (a flag: "true" or "false"); empty when the default applies.
        package var values: [String]
        package var source: Source
    }

    /// What ArgumentParser parses: the command line, with what the environment and the file add.
    package var arguments: [String]
    /// Every option of the command, in `--help` order, with where its value came from.
    package var settings: [Setting]
    /// The file the values came from, if any (`--config` or ADIT_CONFIG).
    package var configPath: String?

    /// The origin of a value not typed on the command line, for error messages: "from ADIT_KEEPALIVE".
    package func origin(ofSpelling spelling: String) -> Source? {
        guard let setting = settings.first(where: { $0.option.spellings.contains(spelling) }) else { return nil }
        switch setting.source {
        case .environment, .file: return setting.source
        default: return nil
        }
    }

    /// Options whose values may hold commas of their own: one value per variable, not a comma-separated list.
    package static let unsplitKeys: Set<String> = ["header", "proxy-header"]

    /// - Parameters:
    ///   - commandLine: the arguments after the command's name.
    ///   - environment: the process environment (ADIT_* are read from it).
    ///   - file: the loaded `--config` file, if any.
    package init(catalog: OptionCatalog, commandLine: [String], environment: [String: String], file: ConfigFile?) throws {
        let given = Self.optionsOnCommandLine(commandLine, catalog: catalog)
        let environmentReader = ConfigReader(
            provider: EnvironmentVariablesProvider(environmentVariables: environment).prefixKeys(with: ConfigKey("adit")))
        let fileReader = file?.reader(section: catalog.command)
        let fileEntries = file?.sections[catalog.command] ?? [:]
        var added: [String] = []
        var settings: [Setting] = []
        for option in catalog.options {
            if given.contains(option.key) {
                settings.append(Setting(option: option, values: [], source: .commandLine))
                continue
            }
            var values: [String]?
            var source = Source.unset
            let variable = option.environmentVariable
            if environment.keys.contains(where: { $0.caseInsensitiveCompare(variable) == .orderedSame }) {
                source = .environment(variable: variable)
                if option.isFlag {
                    let text = environmentReader.string(forKey: ConfigKey(option.key)) ?? ""
                    guard let on = Self.parseSwitch(text) else {
                        throw LayeringError("\(variable)=\(text): a switch takes true or false (or 1 or 0)")
                    }
                    values = [on ? "true" : "false"]
                } else if option.isRepeating && !Self.unsplitKeys.contains(option.key) {
                    values = (environmentReader.stringArray(forKey: ConfigKey(option.key)) ?? [])
                        .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
                } else {
                    values = environmentReader.string(forKey: ConfigKey(option.key))
                        .flatMap { $0.trimmingCharacters(in: .whitespaces).isEmpty ? nil : [$0] }
                }
                if values?.isEmpty ?? true {
                    throw LayeringError("\(variable) is set but empty: give it a value, or unset it")
                }
            } else if let entry = fileEntries[option.key], let fileReader, let file {
                source = .file(path: file.path, line: entry.line, key: "\(catalog.command).\(option.key)")
                let key = ConfigKey(option.key)
                do {
                    if option.isFlag {
                        values = [try fileReader.requiredBool(forKey: key) ? "true" : "false"]
                    } else if entry.isList {
                        values = try fileReader.requiredStringArray(forKey: key)
                    } else {
                        values = [try fileReader.requiredString(forKey: key)]
                    }
                } catch {
                    throw LayeringError("\(file.path) line \(entry.line): \(catalog.command).\(option.key) cannot be read (\(error))")
                }
            }
            if let values {
                settings.append(Setting(option: option, values: values, source: source))
                if option.isFlag {
                    if values == ["true"] { added.append(option.preferred) }
                } else if option.preferred.hasPrefix("--") {
                    // `--name=value`: a value that starts with '-' (a negative number) stays a value.
                    for value in values { added.append("\(option.preferred)=\(value)") }
                } else {
                    for value in values { added += [option.preferred, value] }
                }
            } else {
                settings.append(Setting(option: option, values: option.defaultValue.map { [$0] } ?? [],
                                        source: option.defaultValue == nil ? .unset : .defaultValue))
            }
        }
        // A positional URL and --server set the same thing: the client's servers. From the command line, the file's
        // and the environment's server lists step aside (handled above through `given`).
        var arguments = commandLine
        let insertion = commandLine.firstIndex(of: "--") ?? commandLine.endIndex
        arguments.insert(contentsOf: added, at: insertion)
        self.arguments = arguments
        self.settings = settings
        self.configPath = file?.path
    }

    package static func parseSwitch(_ text: String) -> Bool? {
        switch text.trimmingCharacters(in: .whitespaces).lowercased() {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off": return false
        default: return nil
        }
    }

    /// The keys the command line sets, found the way ArgumentParser reads it: `--name value`, `--name=value`, `-L
    /// value`, flags without a value, a positional URL; nothing after `--`.
    package static func optionsOnCommandLine(_ arguments: [String], catalog: OptionCatalog) -> Set<String> {
        var keys: Set<String> = []
        var index = arguments.startIndex
        while index < arguments.endIndex {
            let token = arguments[index]
            index += 1
            if token == "--" {
                if index < arguments.endIndex, let key = catalog.positionalKey { keys.insert(key) }
                break
            }
            if token.hasPrefix("-") && token.count > 1 {
                let spelling: String
                var valueAttached = false
                if token.hasPrefix("--") {
                    let parts = token.split(separator: "=", maxSplits: 1)
                    spelling = String(parts[0])
                    valueAttached = parts.count == 2
                } else {
                    spelling = String(token.prefix(2))
                    valueAttached = token.count > 2
                }
                if spelling == "--config" {
                    if !valueAttached { index += 1 }
                    continue
                }
                guard let option = catalog.option(spelledAs: spelling) else { continue }
                keys.insert(option.key)
                if !option.isFlag && !valueAttached { index += 1 }
            } else if let key = catalog.positionalKey {
                keys.insert(key)
            }
        }
        return keys
    }

    /// `--config FILE` (or `--config=FILE`) from the command line, else ADIT_CONFIG.
    package static func configPath(in arguments: [String], environment: [String: String]) -> String? {
        for (index, token) in arguments.enumerated() {
            if token == "--" { break }
            if token == "--config", index + 1 < arguments.count { return arguments[index + 1] }
            if token.hasPrefix("--config=") { return String(token.dropFirst("--config=".count)) }
        }
        if let fromEnvironment = environment["ADIT_CONFIG"], !fromEnvironment.isEmpty { return fromEnvironment }
        return nil
    }
}

/// A value from the environment or the file that cannot be used; the message names the variable or the line.
package struct LayeringError: Error, CustomStringConvertible {
    package var description: String
    package init(_ description: String) { self.description = description }
}
