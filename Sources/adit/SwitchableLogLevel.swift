import Logging
import Synchronization

/// The process's log level, changeable while it runs (SIGHUP with a new `log-level` in the `--config` file).
/// swift-log fixes a handler's level when the logger is made; every handler here reads this one value instead.
enum SwitchableLogLevel {
    private static let storage = Atomic<UInt8>(UInt8(Logger.Level.allCases.firstIndex(of: .info)!))

    static var level: Logger.Level {
        get { Logger.Level.allCases[Int(storage.load(ordering: .relaxed))] }
        set { storage.store(UInt8(Logger.Level.allCases.firstIndex(of: newValue)!), ordering: .relaxed) }
    }
}

/// A handler whose level follows `SwitchableLogLevel`. Setting a logger's level still works for that logger (and
/// its copies), as a floor: the admin listener quiets its library's chatter to warnings that way.
struct SwitchableLevelLogHandler: LogHandler {
    var inner: any LogHandler
    private var floor: Logger.Level?

    init(_ inner: any LogHandler) { self.inner = inner }

    var logLevel: Logger.Level {
        get { floor.map { max($0, SwitchableLogLevel.level) } ?? SwitchableLogLevel.level }
        set { floor = newValue }
    }

    var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = newValue }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue }
    }

    var metadataProvider: Logger.MetadataProvider? {
        get { inner.metadataProvider }
        set { inner.metadataProvider = newValue }
    }

    func log(event: LogEvent) {
        inner.log(event: event)
    }
}
