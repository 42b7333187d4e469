import AditConfiguration
import AditGateway
import ArgumentParser
import Foundation
import Logging
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// SIGHUP: read the `--config` file (and the environment) again, layered under the same command line, and apply
/// what can change while running; say which other changes need a restart. A file that does not check out is
/// refused with its line, and the settings in force stay.
final class ConfigReloader: @unchecked Sendable {  // all mutable state behind `state`'s lock
    typealias Apply = @Sendable (_ command: any ParsableCommand, _ changed: Set<String>) throws -> Void

    private let command: String
    private let reloadable: Set<String>
    private let logger: Logger
    private let apply: Apply
    private let state: NIOLockedValueBox<State>
    private let queue = DispatchQueue(label: "adit.config-reload")

    private struct State {
        /// What the running process uses, by key: the values it started with and the changes applied since.
        var running: [String: [String]]
        var source: (any DispatchSourceSignal)?
        var reloading = false
    }

    /// - Parameters:
    ///   - reloadable: the keys `apply` puts into effect; any other change is reported as needing a restart.
    init(command: String, reloadable: Set<String>, logger: Logger, apply: @escaping Apply) {
        self.command = command
        self.reloadable = reloadable
        self.logger = logger
        self.apply = apply
        let running = ConfigLayering.current.withLockedValue { $0 }.map { Self.values($0.result) } ?? [:]
        self.state = NIOLockedValueBox(State(running: running))
    }

    func start() {
        let source = SignalSources.make(signal: SIGHUP, queue: queue)
        source.setEventHandler { [weak self] in
            guard let self else { return }
            Task { await self.reload() }
        }
        source.resume()
        state.withLockedValue { $0.source = source }
    }

    func stop() {
        state.withLockedValue { $0.source?.cancel(); $0.source = nil }
    }

    /// Reload now; returns the keys whose new values took effect.
    @discardableResult
    func reload() async -> Set<String> {
        guard let layered = ConfigLayering.current.withLockedValue({ $0 }), layered.command == command,
              let catalog = ConfigLayering.catalog(named: command),
              let type = ConfigLayering.commands.first(where: { $0.name == command })?.type else { return [] }
        guard state.withLockedValue({ state in
            defer { state.reloading = true }
            return !state.reloading
        }) else { return [] }
        defer { state.withLockedValue { $0.reloading = false } }
        let what = LayeredArguments.configPath(in: layered.commandLine, environment: layered.environment) ?? "the environment"
        logger.notice("SIGHUP: reading the configuration again (\(what))")
        let fresh: LayeredArguments
        let parsed: any ParsableCommand
        do {
            fresh = try await ConfigLayering.layer(command: catalog, commandLine: layered.commandLine, environment: layered.environment)
            do {
                parsed = try type.parse(fresh.arguments)
            } catch {
                let message = Adit.message(for: error)
                let first = message.split(separator: "\n").first.map(String.init) ?? message
                throw LayeringError(first + ConfigLayering.attribution(of: message, in: fresh))
            }
        } catch {
            logger.error("not reloading the configuration: \(error); the settings in force stay")
            return []
        }
        let running = state.withLockedValue { $0.running }
        let next = Self.values(fresh)
        let changed = Set(next.keys.filter { next[$0] != running[$0] })
        guard !changed.isEmpty else {
            logger.notice("configuration unchanged")
            return []
        }
        let applying = changed.intersection(reloadable)
        do {
            try apply(parsed, applying)
        } catch {
            logger.error("not reloading the configuration: \(error); the settings in force stay")
            return []
        }
        state.withLockedValue { state in
            for key in applying { state.running[key] = next[key] }
        }
        for key in applying.sorted() {
            logger.notice("configuration reloaded: \(key) is now \(Self.shown(next[key] ?? [], key: key))")
        }
        let later = changed.subtracting(reloadable).sorted()
        if !later.isEmpty {
            logger.warning("configuration: \(later.joined(separator: ", ")) changed; \(later.count == 1 ? "it takes" : "they take") effect after a restart")
        }
        return applying
    }

    private static func values(_ layered: LayeredArguments) -> [String: [String]] {
        Dictionary(uniqueKeysWithValues: layered.settings.map { ($0.option.key, $0.values) })
    }

    private static func shown(_ values: [String], key: String) -> String {
        values.isEmpty ? "its default" : values.map { ValueMasking.masked($0, key: key) }.joined(separator: ", ")
    }
}
