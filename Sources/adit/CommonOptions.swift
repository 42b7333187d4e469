import AditGateway
import AditMux
import AditWebSocket
import ArgumentParser
import Foundation
import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

struct LoggingOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Log detail: trace, debug, info, notice, warning, error (default info; warning with --stdio). Debug shows every stream and the tunnel's round-trip times. Example: --log-level debug",
        valueName: "level"))
    var logLevel: String?

    @Option(name: .long, help: ArgumentHelp(
        "Log lines as text (for people) or json (one JSON object per line: time, level, logger, message and the line's fields, for log collectors). Example: --log-format json",
        valueName: "text|json"))
    var logFormat: String = "text"

    func validate() throws {
        if let logLevel, Logger.Level(rawValue: logLevel.lowercased()) == nil {
            throw ValidationError("--log-level '\(logLevel)' is not one of trace, debug, info, notice, warning, error")
        }
        if !["text", "json"].contains(logFormat.lowercased()) {
            throw ValidationError("--log-format '\(logFormat)' is not one of text, json")
        }
    }

    /// `quietDefault`: the level when none is asked for (warning under `--stdio`, whose standard error is the
    /// user's ssh terminal).
    func makeLogger(label: String, quietDefault: Bool = false) -> Logger {
        SwitchableLogLevel.level = level(quietDefault: quietDefault)
        LoggingBootstrapOnce.run(json: logFormat.lowercased() == "json")
        return Logger(label: label)
    }

    func level(quietDefault: Bool = false) -> Logger.Level {
        logLevel.flatMap { Logger.Level(rawValue: $0.lowercased()) } ?? (quietDefault ? .warning : .info)
    }
}

enum LoggingBootstrapOnce {
    nonisolated(unsafe) static var done = false
    static func run(json: Bool = false) {
        guard !done else { return }
        done = true
        LoggingSystem.bootstrap { label in
            json ? SwitchableLevelLogHandler(JSONLogHandler(label: label))
                : SwitchableLevelLogHandler(StreamLogHandler.standardError(label: label))
        }
    }
}

struct TunnelOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Largest flow-control window per stream and direction (bytes, or with K/M suffix). Windows start at 256K and grow with the path's bandwidth × round trip up to this; one stream moves at most window ÷ round-trip time, and a stalled stream holds at most this much. Example: --window 64M for a long fat path.",
        valueName: "size"))
    var window: String = "16M"

    @Option(name: .long, help: ArgumentHelp(
        "Send a keepalive PING every this many seconds (it keeps NAT and proxy state alive and measures the round trip). Example: --keepalive 10",
        valueName: "seconds"))
    var keepalive: Int = 15

    @Option(name: .long, help: ArgumentHelp(
        "Seconds the peer has to send anything after a keepalive PING before the tunnel is declared dead (and the client redials): a dead tunnel is found within --keepalive + this. Example: --keepalive-timeout 5",
        valueName: "seconds"))
    var keepaliveTimeout: Int = 10

    @Option(name: .long, help: ArgumentHelp("Most streams one tunnel carries at once; more are refused with 'resource limit'. Defaults to 3/4 of the open-file limit (at most 65536), so one tunnel cannot take every descriptor. Example: --max-streams 1000",
                                            valueName: "n"))
    var maxStreams: Int?

    @Option(name: .long, help: ArgumentHelp(
        "Kernel socket buffer of the tunnel connection (SO_RCVBUF/SO_SNDBUF), or 'auto' for the kernel's autotuning. A fixed size caps what the kernel queues on the shared connection, and also the tunnel's throughput on long paths (at most size ÷ round-trip time). Example: --tunnel-buffer 1M",
        valueName: "size|auto"))
    var tunnelBuffer: String = "auto"

    var tunnelSocketBuffer: Int? {
        tunnelBuffer.lowercased() == "auto" ? nil : parseSize(tunnelBuffer)
    }

    func validate() throws {
        if tunnelBuffer.lowercased() != "auto" {
            guard let b = parseSize(tunnelBuffer), b >= 16 << 10, b <= 1 << 30 else {
                throw ValidationError("--tunnel-buffer '\(tunnelBuffer)' must be 'auto' or a size between 16K and 1G, e.g. --tunnel-buffer 1M")
            }
        }
        guard let w = parseSize(window), w >= 64 << 10, w <= Int(Int32.max) else {
            throw ValidationError("--window '\(window)' must be a size between 64K and 2047M, e.g. --window 4M")
        }
        guard keepalive >= 1 && keepalive <= 3600 else {
            throw ValidationError("--keepalive must be between 1 and 3600 seconds")
        }
        guard keepaliveTimeout >= 1 && keepaliveTimeout <= 3600 else {
            throw ValidationError("--keepalive-timeout must be between 1 and 3600 seconds")
        }
        if let maxStreams, maxStreams < 1 { throw ValidationError("--max-streams must be at least 1") }
    }

    var muxConfiguration: MuxConfiguration {
        var config = MuxConfiguration()
        config.maxWindow = parseSize(window) ?? config.maxWindow
        config.initialWindow = UInt32(min(Int(config.initialWindow), config.maxWindow))
        config.keepaliveInterval = .seconds(Int64(keepalive))
        config.keepaliveTimeout = .seconds(Int64(keepaliveTimeout))
        config.maxConcurrentStreams = maxStreams ?? defaultMaxStreams()
        return config
    }
}

/// "4M" → 4194304; plain numbers are bytes.
func parseSize(_ text: String) -> Int? {
    let t = text.trimmingCharacters(in: .whitespaces).uppercased()
    let multipliers: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
    if let last = t.last, let m = multipliers[last] {
        let digits = t.dropLast().hasSuffix("I") ? t.dropLast(2) : t.dropLast()
        return Int(digits).map { $0 * m }
    }
    if t.hasSuffix("IB"), let last = t.dropLast(2).last, let m = multipliers[last] {
        return Int(t.dropLast(3)).map { $0 * m }
    }
    return Int(t)
}

/// Relay buffers of 64–256 KiB sit above glibc's default mmap threshold: each one would be mmapped and
/// unmapped again, and every page faulted in afresh (measured: ~15% of the relay's CPU in page faults).
/// Keep them in the heap instead.
func tuneAllocator() {
    #if canImport(Glibc)
    _ = glibcMallopt(-3 /* M_MMAP_THRESHOLD */, 8 << 20)
    _ = glibcMallopt(-1 /* M_TRIM_THRESHOLD */, 32 << 20)
    #endif
}

#if canImport(Glibc)
/// `mallopt(3)` from <malloc.h>, which Swift's Glibc module does not import.
@_silgen_name("mallopt")
func glibcMallopt(_ parameter: Int32, _ value: Int32) -> Int32
#endif

/// Streams per tunnel by default: three quarters of the open-file limit (each stream holds a descriptor), at
/// most 65,536. One session once held 17,930 descriptors under the old fixed default.
func defaultMaxStreams() -> Int {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 65_536 }
    return max(64, min(65_536, Int(limit.rlim_cur) * 3 / 4))
}

/// Many idle streams need many descriptors: lift the soft limit to the hard one, as Go programs do.
func raiseFileDescriptorLimit() {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
    limit.rlim_cur = limit.rlim_max
    _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}

struct MetricsOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Serve Prometheus metrics (tunnels, streams, bytes, resets by reason) at http://HOST:PORT/metrics. Off by default. Example: --metrics 127.0.0.1:9100",
        valueName: "host:port"))
    var metrics: String?

    @Option(name: .long, help: ArgumentHelp(
        "Serve the admin listener on HOST:PORT: /healthz, /readyz (server: listening and not draining; client: tunnel up), /metrics and /status (a live page of the tunnel sessions). Off by default; keep it on loopback or a private network. Example: --admin 127.0.0.1:9090",
        valueName: "host:port"))
    var admin: String?

    func validate() throws {
        for (flag, value) in [("--metrics", metrics), ("--admin", admin)] {
            guard let value else { continue }
            do { _ = try HostPort.parse(value, what: flag, allowZeroPort: true) } catch {
                throw ValidationError(error.message)
            }
        }
    }

    /// Bootstraps swift-metrics with a Prometheus registry when `--metrics` or `--admin` is given, and makes
    /// their listeners. The admin listener still needs `report(on:)` with the program it describes.
    func makeMetrics(logger: Logger) throws -> (metrics: TunnelMetrics?, listeners: [any BindingService], admin: AdminEndpoint?) {
        guard metrics != nil || admin != nil else { return (nil, [], nil) }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        var listeners: [any BindingService] = []
        if let metrics {
            listeners.append(MetricsEndpoint(address: try HostPort.parse(metrics, what: "--metrics", allowZeroPort: true),
                                             registry: registry, logger: logger))
        }
        var adminEndpoint: AdminEndpoint?
        if let admin {
            let endpoint = AdminEndpoint(address: try HostPort.parse(admin, what: "--admin", allowZeroPort: true),
                                         registry: registry, logger: logger)
            listeners.append(endpoint)
            adminEndpoint = endpoint
        }
        return (TunnelMetrics(), listeners, adminEndpoint)
    }
}

/// Runs services until SIGTERM or SIGINT, turning failures into one line and exit code 1.
func runService(_ service: some Service & Sendable, extra: [any Service] = [], logger: Logger) async throws {
    let group = ServiceGroup(configuration: .init(
        // The main service returns on its own only when its work is done (--stdio): that ends the process.
        // A side listener that fails later must still let the tunnel drain and the process end. The group shuts
        // services down in reverse order: the main one (last) drains first while the admin listener still
        // answers /readyz with 503 and serves /status.
        services: extra.map { .init(service: $0, failureTerminationBehavior: .gracefullyShutdownGroup) }
            + [.init(service: AfterListeners(listeners: extra.compactMap { $0 as? any BindingService }, main: service),
                     successTerminationBehavior: .gracefullyShutdownGroup)],
        gracefulShutdownSignals: [.sigterm, .sigint],
        logger: Logger(label: "adit.lifecycle", factory: { _ in SwiftLogNoOpLogHandler() })))
    let impatience = SecondSignalExit(logger: logger)
    defer { impatience.cancel() }
    do {
        for case let listener as any BindingService in extra { try await listener.bind() }
        try await group.run()
    } catch let error as ConfigurationError {
        logger.error("\(error.message)")
        throw ExitCode(1)
    } catch is ReportedFailure {
        throw ExitCode(1)
    } catch {
        logger.error("\(error)")
        throw ExitCode(1)
    }
}

/// Runs the program's main service once its side listeners serve, so that its "listening on …" line (which
/// scripts and tests wait for) means the admin and metrics listeners answer too.
struct AfterListeners<Main: Service>: Service {
    let listeners: [any BindingService]
    let main: Main

    func run() async throws {
        for listener in listeners { await listener.serving() }
        if Task.isShuttingDownGracefully || Task.isCancelled { return }
        try await main.run()
    }
}

/// The first SIGTERM/SIGINT drains (the service group handles it); a second one means "now": the user pressed
/// Ctrl-C again, or a supervisor gave up waiting. The service group only counts the first, so this counts too
/// (a signal source of our own alongside the group's; both see every signal).
final class SecondSignalExit: @unchecked Sendable {
    private let sources: [any DispatchSourceSignal]
    private let queue = DispatchQueue(label: "adit.second-signal")
    private var seen = 0

    init(logger: Logger) {
        var sources: [any DispatchSourceSignal] = []
        for number in [SIGINT, SIGTERM] {
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            sources.append(source)
        }
        self.sources = sources
        for source in sources {
            source.setEventHandler { [unowned self] in
                self.seen += Int(source.data)
                if self.seen >= 2 {
                    logger.warning("second signal: exiting now without waiting for open streams")
                    exit(1)
                }
            }
            source.resume()
        }
    }

    func cancel() { sources.forEach { $0.cancel() } }
}

import Metrics
import Prometheus
import ServiceLifecycle

extension CompressionMode: ExpressibleByArgument {}

/// permessage-deflate options, the same on both commands.
struct CompressionOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "permessage-deflate (RFC 7692): off (never offered or accepted), auto (negotiated; small messages and streams that prove incompressible are sent as they are, and bulk data is compressed only as hard as pays on this link, measured: on loopback or a fast LAN usually not at all) or always (every message compressed). Example: --compression off",
        valueName: "off|auto|always"))
    var compression: CompressionMode = .auto

    @Option(name: .long, help: ArgumentHelp(
        "zlib compression level, 1 (fastest) to 9 (smallest). Example: --compression-level 1", valueName: "1-9"))
    var compressionLevel: Int = 5

    @Option(name: .long, help: ArgumentHelp(
        "Largest LZ77 window, as a power of two (9-15), for both directions: our compressor uses at most this and asks the peer to. Smaller saves memory per connection (2^(bits+2) bytes for compressing). Example: --window-bits 12",
        valueName: "9-15"))
    var windowBits: Int = 15

    @Flag(name: .long, help: ArgumentHelp(
        "Ask both sides to compress every message on its own (no context takeover): less memory held per connection, a worse ratio."))
    var noContextTakeover = false

    @Option(name: .long, help: ArgumentHelp(
        "Largest WebSocket message accepted, after inflating; a bigger one (a decompression bomb, say) closes the connection with code 1009. Applies to raw WebSockets; the tunnel's bound is 1M, what its peers send being at most 64K. Example: --max-message-size 32M",
        valueName: "size"))
    var maxMessageSize: String = "16M"

    func validate() throws {
        guard (1...9).contains(compressionLevel) else {
            throw ValidationError("--compression-level must be between 1 (fastest) and 9 (smallest), e.g. --compression-level 6")
        }
        guard (9...15).contains(windowBits) else {
            throw ValidationError("--window-bits must be between 9 and 15 (zlib cannot compress with 8), e.g. --window-bits 12")
        }
        guard let size = parseSize(maxMessageSize), size >= 1 << 10, size <= 1 << 30 else {
            throw ValidationError("--max-message-size '\(maxMessageSize)' must be a size between 1K and 1G, e.g. --max-message-size 16M")
        }
    }

    var settings: CompressionSettings {
        var settings = CompressionSettings()
        settings.mode = compression
        settings.level = compressionLevel
        settings.windowBits = windowBits
        settings.noContextTakeover = noContextTakeover
        return settings
    }

    var rawMaxMessageSize: Int { parseSize(maxMessageSize) ?? 16 << 20 }
}

/// wss:// options of the client.
struct ClientTLSOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Trust this CA (PEM) besides the system's: a corporate TLS-inspection root, or a self-signed server certificate. Example: --ca-file corp-root.pem",
        valueName: "file"))
    var caFile: String?

    @Option(name: .long, help: ArgumentHelp(
        "Require the server's public key to be this one, besides normal verification (repeatable; `adit keygen` prints it). Example: --pin sha256/Qd3f…=",
        valueName: "sha256/base64"))
    var pin: [String] = []

    @Flag(name: .long, help: ArgumentHelp("Let --pin replace certificate verification (a self-signed server certificate without --ca-file)."))
    var pinOnly = false

    @Option(name: [.customLong("tls-server-name"), .customLong("sni")], help: ArgumentHelp(
        "Name to send in SNI and to verify the certificate against, instead of the URL's host (which is used by default, also through a proxy). Example: --tls-server-name gateway.example.com",
        valueName: "name"))
    var tlsServerName: String?

    @Option(name: .long, help: ArgumentHelp("Client certificate (PEM, with its chain) for servers that require one (mTLS). Example: --tls-cert client.pem",
                                            valueName: "file"))
    var tlsCert: String?

    @Option(name: .long, help: ArgumentHelp("Private key (PEM) of --tls-cert. Example: --tls-key client-key.pem", valueName: "file"))
    var tlsKey: String?

    @Flag(name: .long, help: ArgumentHelp("Do not verify the server's certificate at all. Anyone on the path can read and change the tunnel: for tests only."))
    var insecure = false

    var isSet: Bool { caFile != nil || !pin.isEmpty || pinOnly || tlsServerName != nil || tlsCert != nil || tlsKey != nil || insecure }

    func validate() throws {
        for p in pin {
            if case .failure(let error) = Result(catching: { () throws(ConfigurationError) in try PublicKeyPin.parse(p) }) {
                throw ValidationError(error.message)
            }
        }
        if pinOnly && pin.isEmpty { throw ValidationError("--pin-only needs at least one --pin sha256/…") }
        if (tlsCert == nil) != (tlsKey == nil) { throw ValidationError("--tls-cert and --tls-key go together") }
        if insecure && (!pin.isEmpty || caFile != nil) {
            throw ValidationError("--insecure turns verification off; it cannot be combined with --pin or --ca-file")
        }
    }

    var settings: ClientTLSSettings {
        var s = ClientTLSSettings()
        s.caFile = caFile
        s.pins = pin.compactMap { try? PublicKeyPin.parse($0) }
        s.pinOnly = pinOnly
        s.insecure = insecure
        s.serverName = tlsServerName
        s.certificateFile = tlsCert
        s.keyFile = tlsKey
        return s
    }
}

/// wss:// options of the server.
struct ServerTLSOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Serve wss://: the certificate (PEM, leaf first, then its chain). `adit keygen` makes a self-signed one. Example: --tls-cert /etc/adit/cert.pem",
        valueName: "file"))
    var tlsCert: String?

    @Option(name: .long, help: ArgumentHelp("Private key (PEM) of --tls-cert. Example: --tls-key /etc/adit/key.pem", valueName: "file"))
    var tlsKey: String?

    @Option(name: .long, help: ArgumentHelp("Require client certificates issued by this CA (PEM): mutual TLS. Example: --tls-ca clients-ca.pem",
                                            valueName: "file"))
    var tlsCa: String?

    func validate() throws {
        if (tlsCert == nil) != (tlsKey == nil) { throw ValidationError("--tls-cert and --tls-key go together") }
        if tlsCa != nil && tlsCert == nil { throw ValidationError("--tls-ca needs --tls-cert and --tls-key (mTLS is part of wss://)") }
    }

    var settings: ServerTLSSettings? {
        guard let tlsCert, let tlsKey else { return nil }
        return ServerTLSSettings(certificateFile: tlsCert, keyFile: tlsKey, clientCAFile: tlsCa)
    }
}

/// `--config FILE`: read before parsing (ConfigLayering); declared so that `--help` lists it and the parser accepts it.
struct ConfigFileOption: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "YAML file with this command's options under a `server:` or `client:` section (keys are the long option names; lists for repeatable ones). The command line wins over ADIT_* variables, which win over the file. Or set ADIT_CONFIG. Example: --config /etc/adit/adit.yaml",
        valueName: "file"))
    var config: String?
}
