import AditGateway
import Configuration
import Foundation
import SystemPackage
import Yams

/// `--config FILE`: YAML with one section per command, each key an option of that command.
///
///     server:
///       listen: 0.0.0.0:8080
///       allow: [db.internal:5432, "*.corp.example:443"]
///     client:
///       server: wss://gateway.example.com/
///       forward: [5432:db.internal:5432]
///
/// The values are read through swift-configuration (`FileProvider<YAMLSnapshot>`); the file is also walked with
/// Yams first, because swift-configuration keeps no line numbers and quietly ignores keys nobody asks for: a
/// misspelt `alow:` must be an error that names its line, not a rule that silently never applies.
package struct ConfigFile: Sendable {
    package struct Entry: Sendable {
        package var line: Int
        /// Written as a YAML sequence (`allow: [a, b]`), not one scalar.
        package var isList: Bool
    }

    package let path: String
    /// Section name → key → where it is.
    package let sections: [String: [String: Entry]]
    private let provider: FileProvider<YAMLSnapshot>?

    /// A reader of one section's values, keyed by option (`listen`, not `server.listen`).
    package func reader(section: String) -> ConfigReader? {
        guard let provider, sections[section] != nil else { return nil }
        return ConfigReader(provider: provider.prefixKeys(with: ConfigKey(section)))
    }

    /// Loads and checks `path` against the commands' catalogs: every section a command, every key an option,
    /// every value of the right shape. Errors name the file and line.
    package static func load(path: String, catalogs: [OptionCatalog]) async throws -> ConfigFile {
        guard let data = FileManager.default.contents(atPath: path) else {
            let why = access(path, F_OK) != 0 ? "does not exist" : "cannot be read (check its permissions)"
            throw ConfigFileError(path: path, line: nil, detail: why)
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigFileError(path: path, line: nil, detail: "is not UTF-8 text")
        }
        let sections = try Self.sections(ofYAML: text, path: path, catalogs: catalogs)
        guard !sections.isEmpty else { return ConfigFile(path: path, sections: [:], provider: nil) }
        let provider = try await FileProvider<YAMLSnapshot>(filePath: FilePath(path))
        return ConfigFile(path: path, sections: sections, provider: provider)
    }

    /// The sections and keys of a configuration text, with their lines, checked against the commands'
    /// catalogs. Pure: the `config-file` fuzz target drives it.
    package static func sections(ofYAML text: String, path: String, catalogs: [OptionCatalog]) throws -> [String: [String: Entry]] {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw ConfigFileError(path: path, line: error.line, detail: "is not valid YAML: \(error.problem)")
        }
        guard let root else { return [:] }
        let commands = catalogs.map(\.command)
        let sectionList = commands.map { "`\($0):`" }.joined(separator: " and ")
        guard let mapping = root.mapping else {
            throw ConfigFileError(path: path, line: root.mark?.line,
                                  detail: "must be a mapping with a section per command (\(sectionList)), each holding that command's options")
        }
        var sections: [String: [String: Entry]] = [:]
        for (keyNode, value) in mapping {
            let name = keyNode.string ?? "\(keyNode)"
            guard let catalog = catalogs.first(where: { $0.command == name }) else {
                let hint = catalogs.contains { $0.option(forKey: name) != nil }
                    ? " (options go inside a command's section: \(sectionList))" : ""
                throw ConfigFileError(path: path, line: keyNode.mark?.line,
                                      detail: "`\(name)` is not a section; the file has \(sectionList)\(hint)")
            }
            sections[name] = try entries(of: value, catalog: catalog, path: path)
        }
        return sections
    }

    private static func entries(of section: Node, catalog: OptionCatalog, path: String) throws -> [String: Entry] {
        if case .scalar(let scalar) = section, scalar.tag == .implicit, scalar.string.isEmpty || scalar.string == "~" || scalar.string == "null" {
            return [:]  // `server:` with nothing under it yet
        }
        guard let mapping = section.mapping else {
            throw ConfigFileError(path: path, line: section.mark?.line,
                                  detail: "the `\(catalog.command):` section must hold `option: value` lines")
        }
        var entries: [String: Entry] = [:]
        for (keyNode, value) in mapping {
            let key = keyNode.string ?? "\(keyNode)"
            let line = keyNode.mark?.line ?? 0
            func fail(_ detail: String) -> ConfigFileError {
                ConfigFileError(path: path, line: line, detail: "\(catalog.command).\(key): \(detail)")
            }
            guard let option = catalog.option(forKey: key) else {
                throw fail("not an option of `adit \(catalog.command)`\(suggestion(for: key, in: catalog))")
            }
            switch value {
            case .scalar(let scalar):
                if scalar.tag == .implicit && (scalar.string.isEmpty || scalar.string == "~" || scalar.string == "null") {
                    throw fail("has no value (remove the line, or give one)")
                }
                if option.isFlag && Bool.construct(from: scalar) == nil {
                    throw fail("is a switch: write true or false, not '\(scalar.string)'")
                }
                entries[key] = Entry(line: line, isList: false)
            case .sequence(let items):
                guard option.isRepeating else {
                    throw fail("takes one value, not a list")
                }
                for item in items where item.scalar == nil {
                    throw ConfigFileError(path: path, line: item.mark?.line ?? line,
                                          detail: "\(catalog.command).\(key): list entries must be plain values")
                }
                entries[key] = Entry(line: line, isList: true)
            case .mapping, .alias:
                throw fail("must be \(option.isRepeating ? "a value or a list of values" : "one value"), not a mapping")
            }
        }
        return entries
    }

    /// " (did you mean `keepalive`?)" for a near miss, or the flag spelled as a key (`--listen:`, `L:`).
    package static func suggestion(for key: String, in catalog: OptionCatalog) -> String {
        let bare = key.hasPrefix("-") ? String(key.drop(while: { $0 == "-" })) : key
        if let option = catalog.option(forKey: bare) { return " (write `\(option.key):`, without dashes)" }
        if let option = catalog.option(spelledAs: "-\(bare)") ?? catalog.option(spelledAs: "--\(bare)") {
            return " (its key is `\(option.key):`)"
        }
        let scored = catalog.options.map { ($0.key, editDistance($0.key, bare)) }.min { $0.1 < $1.1 }
        if let (best, distance) = scored, distance <= max(2, bare.count / 4) { return " (did you mean `\(best)`?)" }
        return "; `adit \(catalog.command) --help` lists them"
    }

    package static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        guard !a.isEmpty else { return b.count }
        guard !b.isEmpty else { return a.count }
        var previous = Array(0...b.count)
        for i in 1...a.count {
            var current = [i] + Array(repeating: 0, count: b.count)
            for j in 1...b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return previous[b.count]
    }
}

/// A configuration file that cannot be used: which file, which line, what is wrong.
package struct ConfigFileError: Error, CustomStringConvertible {
    package var path: String
    package var line: Int?
    package var detail: String
    package var description: String { "\(path)\(line.map { " line \($0)" } ?? ""): \(detail)" }
}
