import AditGateway
import ArgumentParser
import NIOCore

struct ServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "server",
        abstract: "Accept tunnels over WebSocket and connect their streams to allowed targets.",
        discussion: """
            Every target is denied unless an --allow pattern matches it; the policy is checked on every stream. Loopback, link-local and cloud-metadata addresses need a rule that names them (`*:*` does not open them). Plain HTTP requests get a short text answer; upgrades without the adit.v1 subprotocol get HTTP 400.

            Without --users anyone who can reach the port may use the tunnel; with a users file (`adit token NAME` makes entries) every tunnel needs a token, a password or a client certificate, checked before the upgrade is answered, and each user has targets of their own:
              adit server --listen 0.0.0.0:8443 --tls-cert cert.pem --tls-key key.pem --users users.yaml

            Examples:
              adit server --listen 0.0.0.0:8080 --allow 'localhost:22'
              adit server --listen [::]:8080 --allow '10.0.0.0/8:22' --allow '*.corp.example:443'
              adit server --listen 127.0.0.1:8080 --path /tunnel --allow '*:*'   # behind nginx, anything

            Raw WebSocket bridges (websockify-compatible, for browsers and other WebSocket clients; one TCP connection per WebSocket, binary messages, subprotocol 'binary' or none, same --allow policy):
              adit server --listen 0.0.0.0:8080 --raw /vnc=127.0.0.1:5900 --allow 127.0.0.1:5900

            SIGTERM or SIGINT drains: open streams finish (up to --drain-timeout), new ones are refused; a second signal exits at once.
            """)

    @Option(name: .long, help: ArgumentHelp("Address and port to accept tunnels on (IPv6 in brackets). Example: --listen 0.0.0.0:8080",
                                            valueName: "host:port"))
    var listen: String = "127.0.0.1:8080"

    @Option(name: .long, help: ArgumentHelp(
        "Allow streams to targets matching PATTERN (repeatable): host:port, host:*, *.example.com:443, 10.0.0.0/8:22, [::1]:*, [fd00::/8]:*, *:*; ports may be ranges (8000-8999).",
        valueName: "pattern"))
    var allow: [String] = []

    @Option(name: .long, help: ArgumentHelp(
        "Let clients ask the server to listen (-R) on binds matching PATTERN (repeatable; same syntax as --allow, /udp for UDP). Denied unless a pattern allows it. Example: --allow-reverse '127.0.0.1:8000-8999'",
        valueName: "pattern"))
    var allowReverse: [String] = []

    @Option(name: .long, help: ArgumentHelp(
        "Users file (YAML): with it, every tunnel needs a credential (token, password or client certificate) checked before the upgrade is answered, and each user may have targets, reverse binds and limits of its own. The file is watched and reloaded (also on SIGHUP). `adit token NAME` makes entries. Example: --users /etc/adit/users.yaml",
        valueName: "file"))
    var users: String?

    @Option(name: .long, help: ArgumentHelp(
        "Web page origin allowed to connect from a browser (repeatable), e.g. for a raw bridge's page. With --users, requests carrying any other Origin are refused. Example: --allow-origin https://portal.example.com",
        valueName: "origin"))
    var allowOrigin: [String] = []

    @Option(name: .long, help: ArgumentHelp(
        "A reverse proxy (address or CIDR, repeatable) whose X-Forwarded-For names the client: behind nginx or haproxy, the access log, the per-address limit and the password throttle then see the client, not the proxy. Only connections from these addresses are believed. Example: --trusted-proxy 10.0.0.0/8",
        valueName: "cidr"))
    var trustedProxy: [String] = []

    @Option(name: .long, help: ArgumentHelp("Most tunnels open at once; more are answered 429. Example: --max-sessions 5000",
                                            valueName: "n"))
    var maxSessions: Int = 10_000

    @Option(name: .long, help: ArgumentHelp("Most tunnels open at once from one client address. Example: --max-sessions-per-address 20",
                                            valueName: "n"))
    var maxSessionsPerAddress: Int = 100

    @Option(name: .long, help: ArgumentHelp("Most tunnels open at once for one user (a user's `limits.sessions` in the users file wins). Example: --max-sessions-per-user 10",
                                            valueName: "n"))
    var maxSessionsPerUser: Int = 100

    @Option(name: .long, help: ArgumentHelp("Close a tunnel that has carried no stream and no -R listener for this many seconds (off by default: a client with nothing open keeps its tunnel). Example: --idle-timeout 600",
                                            valueName: "seconds"))
    var idleTimeout: Int?

    @Option(name: .long, help: ArgumentHelp("Seconds a new connection has to send its whole upgrade request. Example: --handshake-timeout 5",
                                            valueName: "seconds"))
    var handshakeTimeout: Int = 10

    @Option(name: .long, help: ArgumentHelp("Seconds of silence after which a UDP flow is closed. Example: --udp-timeout 120",
                                            valueName: "seconds"))
    var udpTimeout: Int = 60

    @Option(name: .long, help: ArgumentHelp("URL path the WebSocket is served on. Example: --path /tunnel", valueName: "path"))
    var path: String = "/"

    @Option(name: .long, help: ArgumentHelp("Seconds to wait for a target to accept a connection; then the stream is reset with 'timed out'. Example: --connect-timeout 5", valueName: "seconds"))
    var connectTimeout: Int = 10

    @Option(name: .long, help: ArgumentHelp("Seconds open streams may take to finish after SIGTERM/SIGINT before the tunnels are closed. Example: --drain-timeout 60", valueName: "seconds"))
    var drainTimeout: Int = 30

    @Option(name: .long, help: ArgumentHelp("Event-loop threads; each tunnel and its streams stay on one. Defaults to the number of cores. Example: --threads 4", valueName: "n"))
    var threads: Int = System.coreCount

    @Option(name: .long, help: ArgumentHelp(
        "Bridge WebSockets on PATH, one TCP connection each, to HOST:PORT (repeatable; the target must be allowed by --allow). Example: --raw /vnc=127.0.0.1:5900",
        valueName: "path=host:port"))
    var raw: [String] = []

    @OptionGroup(title: "TLS") var tls: ServerTLSOptions
    @OptionGroup var tunnel: TunnelOptions
    @OptionGroup var compression: CompressionOptions
    @OptionGroup var metricsOptions: MetricsOptions
    @OptionGroup var logging: LoggingOptions
    @OptionGroup var configFile: ConfigFileOption

    func validate() throws {
        do {
            _ = try HostPort.parse(listen, what: "--listen", allowZeroPort: true)
            guard !allow.isEmpty || !allowReverse.isEmpty || users != nil else {
                throw ValidationError(
                    "no --allow pattern given: the server would refuse every target. Add one, e.g. --allow 'localhost:22' (or --allow '*:*' to allow all)")
            }
            _ = try TargetPolicy.parse(allow)
            _ = try TargetPolicy.parse(allowReverse, flag: "--allow-reverse")
            _ = try TrustedProxies.parse(trustedProxy)
            if let users {
                do {
                    _ = try UsersFile.load(path: users)
                } catch {
                    throw ValidationError("--users \(error)")
                }
            }
            var paths: Set<String> = [path]
            for text in raw {
                let route = try RawBridgeRoute.parse(text)
                guard paths.insert(route.path).inserted else {
                    throw ConfigurationError("--raw '\(text)': the path \(route.path) is already used (the tunnel is on --path \(path))")
                }
            }
        } catch let error as ConfigurationError {
            throw ValidationError(error.message)
        }
        guard path.hasPrefix("/") else { throw ValidationError("--path '\(path)' must start with '/'") }
        guard connectTimeout >= 1 else { throw ValidationError("--connect-timeout must be at least 1 second") }
        guard drainTimeout >= 0 else { throw ValidationError("--drain-timeout cannot be negative") }
        guard threads >= 1 && threads <= 256 else { throw ValidationError("--threads must be between 1 and 256") }
        guard udpTimeout >= 1 && udpTimeout <= 86_400 else { throw ValidationError("--udp-timeout must be between 1 and 86400 seconds") }
        guard maxSessions >= 1, maxSessionsPerAddress >= 1, maxSessionsPerUser >= 1 else {
            throw ValidationError("--max-sessions, --max-sessions-per-address and --max-sessions-per-user must be at least 1")
        }
        if let idleTimeout, idleTimeout < 1 { throw ValidationError("--idle-timeout must be at least 1 second") }
        guard handshakeTimeout >= 1 && handshakeTimeout <= 300 else { throw ValidationError("--handshake-timeout must be between 1 and 300 seconds") }
    }

    func run() async throws {
        raiseFileDescriptorLimit()
        tuneAllocator()
        let logger = logging.makeLogger(label: "adit.server")
        var config = AditServer.Configuration(listen: try HostPort.parse(listen, what: "--listen", allowZeroPort: true),
                                              policy: try TargetPolicy.parse(allow))
        config.path = path
        config.reversePolicy = try TargetPolicy.parse(allowReverse, flag: "--allow-reverse")
        if let users {
            config.users = try UsersFile.load(path: users)
            config.usersFile = users
            logger.notice("\(config.users?.count ?? 0) user(s) from \(users): every tunnel needs a credential")
        } else {
            logger.warning("no --users file: anyone who can reach this port may open streams to the --allow targets; add users before exposing it")
        }
        config.allowedOrigins = allowOrigin.isEmpty ? nil : allowOrigin
        config.trustedProxies = try TrustedProxies.parse(trustedProxy)
        config.sessionLimits = SessionLimits(total: maxSessions, perAddress: maxSessionsPerAddress, perUser: maxSessionsPerUser)
        config.handshakeTimeout = .seconds(Int64(handshakeTimeout))
        config.udpIdleTimeout = .seconds(Int64(udpTimeout))
        config.mux = tunnel.muxConfiguration
        config.mux.idleTimeout = idleTimeout.map { .seconds(Int64($0)) }
        config.channelOptions.tunnelSocketBuffer = tunnel.tunnelSocketBuffer
        config.connectTimeout = .seconds(Int64(connectTimeout))
        config.drainTimeout = .seconds(Int64(drainTimeout))
        config.threads = threads
        config.compression = compression.settings
        config.tls = tls.settings
        config.rawRoutes = try raw.map(RawBridgeRoute.parse)
        config.rawMaxMessageSize = compression.rawMaxMessageSize
        let exported = try metricsOptions.makeMetrics(logger: logger)
        config.metrics = exported.metrics
        let server = AditServer(configuration: config, logger: logger)
        exported.admin?.report(on: server)
        let reloader = ConfigReloader(command: "server", reloadable: ["allow", "allow-reverse", "allow-origin", "log-level"],
                                      logger: logger) { parsed, changed in
            guard let fresh = parsed as? ServerCommand else { return }
            if changed.contains("log-level") { SwitchableLogLevel.level = fresh.logging.level() }
            if !changed.isDisjoint(with: ["allow", "allow-reverse", "allow-origin"]) {
                server.reload(policy: try TargetPolicy.parse(fresh.allow),
                              reversePolicy: try TargetPolicy.parse(fresh.allowReverse, flag: "--allow-reverse"),
                              allowedOrigins: fresh.allowOrigin.isEmpty ? nil : fresh.allowOrigin)
            }
        }
        reloader.start()
        defer { reloader.stop() }
        try await runService(server, extra: exported.listeners, logger: logger)
    }
}
