import AditGateway
import AditMux
import ArgumentParser
import Foundation
import NIOCore

struct ClientCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "client",
        abstract: "Carry local connections through one tunnel to an adit server: -L, -R, -D, --http-proxy, --stdio, UDP.",
        discussion: """
            Every way in goes over the same tunnel, all repeatable in one process:
              -L [BIND:]PORT:HOST:HOSTPORT[/udp]   local port to a fixed target (as ssh -L), TCP or UDP
              -R [BIND:]PORT:HOST:HOSTPORT[/udp]   the server listens on BIND:PORT (its --allow-reverse must permit it); connections come back to HOST:HOSTPORT here
              -D [BIND:]PORT                       SOCKS5 (and SOCKS4a) proxy for browsers and other SOCKS clients, with UDP ASSOCIATE
              --http-proxy [BIND:]PORT             HTTP proxy (CONNECT and http:// requests) for curl, package managers, browsers
              --stdio HOST:PORT                    one connection on standard input and output, for ssh's ProxyCommand
            The server decides what each stream may reach (its --allow rules); names are resolved there. The client keeps the tunnel up, reconnecting with backoff (and failing over between --server URLs); connections made while it is down wait up to --wait-for-tunnel seconds, then are refused in their protocol's terms.

            Examples:
              adit client ws://gateway.example.com:8080/ -L 2222:localhost:22
              adit client wss://gateway.example.com/ -D 1080 --http-proxy 3128
              adit client wss://gateway.example.com/ -R 8080:localhost:3000
              adit client ws://127.0.0.1:8080/ -L 5353:10.0.0.53:53/udp
              ssh -o ProxyCommand='adit client wss://gateway.example.com/ --stdio %h:%p' user@internal-host
              adit client --server wss://gw1.example.com/ --server wss://gw2.example.com/ -L 5432:db.internal:5432

            With --raw, each local connection gets its own WebSocket to the URL, unmultiplexed, and the server picks the target (an adit server's --raw route, or websockify):
              adit client --raw ws://gateway.example.com:8080/vnc -L 5901
            """)

    @Argument(help: ArgumentHelp("The server: ws://HOST[:PORT][/path], or wss:// for TLS (default port 443). More with --server. Example: wss://gateway.example.com/tunnel",
                                 valueName: "url"))
    var url: String?

    @Option(name: .long, help: ArgumentHelp(
        "A server URL (repeatable, or a comma-separated list): the client uses the first it can reach and fails over to the next, in order. Example: --server wss://gw1.example.com/,wss://gw2.example.com/",
        valueName: "url"))
    var server: [String] = []

    @Option(name: .customShort("L"), help: ArgumentHelp(
        "Local forward [BIND:]PORT:HOST:HOSTPORT[/udp] (repeatable), as in ssh. BIND defaults to 127.0.0.1; IPv6 in brackets. With --raw: [BIND:]PORT. Example: -L 8080:intranet.example:80",
        valueName: "forward"))
    var forwards: [String] = []

    @Option(name: .customShort("R"), help: ArgumentHelp(
        "Reverse forward [BIND:]PORT:HOST:HOSTPORT[/udp] (repeatable): the server listens on BIND:PORT (its loopback unless BIND says otherwise; port 0 picks one) and carries each connection back to HOST:HOSTPORT reached from here. Example: -R 8080:localhost:3000",
        valueName: "forward"))
    var reverse: [String] = []

    @Option(name: .customShort("D"), help: ArgumentHelp(
        "SOCKS5/SOCKS4a proxy on [BIND:]PORT (repeatable): applications name their targets, the server resolves and connects them. Example: -D 1080",
        valueName: "port"))
    var dynamic: [String] = []

    @Option(name: .long, help: ArgumentHelp(
        "HTTP proxy on [BIND:]PORT (repeatable): CONNECT and absolute-form requests (http://…), for curl, browsers and package managers. Example: --http-proxy 3128",
        valueName: "port"))
    var httpProxy: [String] = []

    @Option(name: .long, help: ArgumentHelp(
        "Carry standard input and output as one stream to HOST:PORT, then exit (0 when it ended cleanly, 1 when refused or cut short, with the reason on standard error). For ssh: -o ProxyCommand='adit client URL --stdio %h:%p'",
        valueName: "host:port"))
    var stdio: String?

    @Option(name: .long, help: ArgumentHelp(
        "User that -D and --http-proxy require (SOCKS5 username/password, HTTP Basic); the password comes from --local-password-file or ADIT_LOCAL_PASSWORD. Example: --local-user app",
        valueName: "user"))
    var localUser: String?

    @Option(name: .long, help: ArgumentHelp("File whose first line is the password of --local-user. Example: --local-password-file ~/.config/adit/local-pass",
                                            valueName: "file"))
    var localPasswordFile: String?

    @Option(name: .long, help: ArgumentHelp(
        "File whose first line is the token the server knows us by (`adit token NAME` makes one); sent as Authorization: Bearer on the upgrade. Or set ADIT_TOKEN. Example: --token-file ~/.config/adit/token",
        valueName: "file"))
    var tokenFile: String?

    @Option(name: .long, help: ArgumentHelp(
        "User for the server's Basic authentication; the password comes from --password-file or ADIT_PASSWORD. Example: --user alice",
        valueName: "name"))
    var user: String?

    @Option(name: .long, help: ArgumentHelp("File whose first line is the password of --user. Example: --password-file ~/.config/adit/password",
                                            valueName: "file"))
    var passwordFile: String?

    @Option(name: .long, help: ArgumentHelp(
        "Seconds a new local connection waits for the tunnel when it is down before it is refused (SOCKS general failure, HTTP 503, exit 1 for --stdio). Example: --wait-for-tunnel 30",
        valueName: "seconds"))
    var waitForTunnel: Int = 10

    @Option(name: .long, help: ArgumentHelp("Seconds open streams may take to finish after SIGTERM/SIGINT (a second signal exits at once). Example: --drain-timeout 5",
                                            valueName: "seconds"))
    var drainTimeout: Int = 30

    @Option(name: .long, help: ArgumentHelp("Seconds of silence after which a UDP flow (one local sender) is closed. Example: --udp-timeout 120",
                                            valueName: "seconds"))
    var udpTimeout: Int = 60

    @Flag(name: .long, help: ArgumentHelp(
        "Carry each local connection over its own plain WebSocket (binary messages, no multiplexing) to the URL, whose server decides the target: an adit server's --raw route or websockify. Example: adit client --raw ws://host:8080/vnc -L 5901"))
    var raw = false

    @Option(name: [.customShort("H"), .long], help: ArgumentHelp(
        "Extra header for the WebSocket upgrade request, 'Name: value' (repeatable). Example: -H 'Authorization: Bearer abc'",
        valueName: "header"))
    var header: [String] = []

    @Option(name: .long, help: ArgumentHelp("Host header to send instead of the URL's host (for a server behind a virtual host). Example: --host-header tunnel.example.com", valueName: "host"))
    var hostHeader: String?

    @Option(name: .long, help: ArgumentHelp("Origin header to send. Example: --origin https://portal.example.com",
                                            valueName: "origin"))
    var origin: String?

    @Option(name: .long, help: ArgumentHelp("Seconds to wait for the server's TCP connection and for the WebSocket upgrade. Example: --connect-timeout 20", valueName: "seconds"))
    var connectTimeout: Int = 10

    @Option(name: .long, help: ArgumentHelp(
        "Reach the server through this proxy: http://[USER@]HOST:PORT (CONNECT, with Basic, Digest, NTLM or Negotiate as the proxy asks), https://… (TLS to the proxy), socks5://HOST:PORT (names resolved here) or socks5h://HOST:PORT (resolved by the proxy). Repeat it for a chain of HTTP proxies, nearest first. Without it, http_proxy/HTTP_PROXY (ws://), https_proxy/HTTPS_PROXY (wss://), all_proxy/ALL_PROXY and no_proxy/NO_PROXY are honoured as curl does. Example: --proxy http://proxy.corp:3128",
        valueName: "url"))
    var proxy: [String] = []

    @Option(name: .long, help: ArgumentHelp(
        "User for the proxy (DOMAIN\\user for NTLM). The password comes from --proxy-password-file or ADIT_PROXY_PASSWORD, so that it is not visible in ps. Example: --proxy-user alice",
        valueName: "user"))
    var proxyUser: String?

    @Option(name: .long, help: ArgumentHelp("File whose first line is the proxy password. Example: --proxy-password-file ~/.config/adit/proxy-pass",
                                            valueName: "file"))
    var proxyPasswordFile: String?

    @Flag(name: .long, help: ArgumentHelp("Connect directly, ignoring --proxy and the proxy environment variables."))
    var noProxy = false

    @Option(name: .long, help: ArgumentHelp("Extra header for the proxy's CONNECT request, 'Name: value' (repeatable). Example: --proxy-header 'X-Client: adit'",
                                            valueName: "header"))
    var proxyHeader: [String] = []

    @Option(name: .long, help: ArgumentHelp("User-Agent for the CONNECT request and the WebSocket upgrade (some proxies pass only browser-like agents). Example: --user-agent 'Mozilla/5.0'",
                                            valueName: "agent"))
    var userAgent: String?

    @OptionGroup(title: "TLS") var tls: ClientTLSOptions
    @OptionGroup var tunnel: TunnelOptions
    @OptionGroup var compression: CompressionOptions
    @OptionGroup var metricsOptions: MetricsOptions
    @OptionGroup var logging: LoggingOptions
    @OptionGroup var configFile: ConfigFileOption

    /// The positional URL, then every --server (comma lists split), in order.
    func serverURLs() throws -> [TunnelURL] {
        let texts = (url.map { [$0] } ?? []) + server.flatMap { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
        guard !texts.isEmpty else {
            throw ConfigurationError("no server given: name it, e.g. adit client wss://gateway.example.com/ -L 8080:intranet:80 (or --server URL)")
        }
        return try texts.map { text throws(ConfigurationError) in try TunnelURL.parse(text) }
    }

    func validate() throws {
        do {
            let servers = try serverURLs()
            if raw {
                guard !forwards.isEmpty else { throw ValidationError("--raw needs a -L [BIND:]PORT to listen on, e.g. --raw ws://host:8080/vnc -L 5901") }
                guard reverse.isEmpty, dynamic.isEmpty, httpProxy.isEmpty, stdio == nil else {
                    throw ValidationError("--raw carries -L listeners only (each connection its own WebSocket); -R, -D, --http-proxy and --stdio need the tunnel")
                }
                guard servers.count == 1 else { throw ValidationError("--raw takes one URL, not a --server list") }
                for f in forwards { _ = try HostPort.parseListener(f, what: "-L") }
            } else {
                guard !forwards.isEmpty || !reverse.isEmpty || !dynamic.isEmpty || !httpProxy.isEmpty || stdio != nil else {
                    throw ValidationError("nothing to forward: add -L 8080:example.com:80, -R 8080:localhost:3000, -D 1080, --http-proxy 3128 or --stdio host:22")
                }
                for f in forwards { _ = try ForwardSpec.parse(f) }
                for r in reverse { _ = try ReverseForwardSpec.parse(r) }
                for d in dynamic { _ = try HostPort.parseListener(d, what: "-D") }
                for h in httpProxy { _ = try HostPort.parseListener(h, what: "--http-proxy") }
                if let stdio { _ = try stdioTarget(stdio) }
            }
            if localUser == nil && localPasswordFile != nil {
                throw ValidationError("--local-password-file needs --local-user")
            }
            if localUser != nil && dynamic.isEmpty && httpProxy.isEmpty {
                throw ValidationError("--local-user protects -D and --http-proxy listeners; there are none")
            }
            _ = try localCredentials()
            _ = try serverAuthorization()
            _ = try parsedHeaders()
            _ = try parsedHeaders(proxyHeader, flag: "--proxy-header")
            _ = try proxyRoute()
            if try tls.isSet && !servers.contains(where: \.secure) && proxyRoute().0?.url.kind != .https {
                throw ConfigurationError("TLS options (--ca-file, --pin, --tls-cert, --insecure, …) need a wss:// URL; \(servers[0]) is plain ws://")
            }
        } catch let error as ConfigurationError {
            throw ValidationError(error.message)
        }
        guard connectTimeout >= 1 else { throw ValidationError("--connect-timeout must be at least 1 second") }
        guard waitForTunnel >= 0 && waitForTunnel <= 3600 else {
            throw ValidationError("--wait-for-tunnel must be between 0 and 3600 seconds")
        }
        guard udpTimeout >= 1 && udpTimeout <= 86_400 else { throw ValidationError("--udp-timeout must be between 1 and 86400 seconds") }
        guard drainTimeout >= 0 else { throw ValidationError("--drain-timeout cannot be negative") }
    }

    func stdioTarget(_ text: String) throws(ConfigurationError) -> MuxTarget {
        let hostPort = try HostPort.parse(text, what: "--stdio")
        guard hostPort.host.utf8.count <= 255, hostPort.host.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw ConfigurationError("--stdio '\(text)': '\(hostPort.host)' is not a valid host name")
        }
        return MuxTarget(hostText: hostPort.host, port: UInt16(hostPort.port))
    }

    func localCredentials() throws(ConfigurationError) -> LocalCredentials? {
        guard let localUser else { return nil }
        if let file = localPasswordFile {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw ConfigurationError("--local-password-file '\(file)' cannot be read")
            }
            return LocalCredentials(user: localUser, password: String(text.split(separator: "\n", omittingEmptySubsequences: false).first ?? ""))
        }
        guard let password = ProcessInfo.processInfo.environment["ADIT_LOCAL_PASSWORD"] else {
            throw ConfigurationError("--local-user \(localUser) needs a password: set ADIT_LOCAL_PASSWORD or give --local-password-file")
        }
        return LocalCredentials(user: localUser, password: password)
    }

    /// The Authorization header for the server: a token (--token-file, ADIT_TOKEN) or a user and password.
    func serverAuthorization() throws(ConfigurationError) -> String? {
        let environment = ProcessInfo.processInfo.environment
        func firstLine(_ path: String, _ flag: String) throws(ConfigurationError) -> String {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw ConfigurationError("\(flag) '\(path)' cannot be read")
            }
            let line = String(text.split(separator: "\n", omittingEmptySubsequences: false).first ?? "")
                .trimmingCharacters(in: .whitespacesAndNewlines)
            guard !line.isEmpty else { throw ConfigurationError("\(flag) '\(path)' is empty") }
            return line
        }
        if header.contains(where: { $0.lowercased().hasPrefix("authorization:") }) {
            if tokenFile != nil || user != nil { throw ConfigurationError("-H 'Authorization: …' and --token-file/--user cannot be combined") }
            return nil
        }
        if let user {
            guard tokenFile == nil else { throw ConfigurationError("--user and --token-file cannot be combined: the server takes one credential") }
            guard !user.contains(":") else { throw ConfigurationError("--user '\(user)' cannot contain ':'") }
            let password: String
            if let passwordFile {
                password = try firstLine(passwordFile, "--password-file")
            } else if let fromEnvironment = environment["ADIT_PASSWORD"] {
                password = fromEnvironment
            } else {
                throw ConfigurationError("--user \(user) needs a password: set ADIT_PASSWORD or give --password-file")
            }
            return "Basic " + Data("\(user):\(password)".utf8).base64EncodedString()
        }
        if passwordFile != nil { throw ConfigurationError("--password-file needs --user") }
        if let tokenFile { return "Bearer " + (try firstLine(tokenFile, "--token-file")) }
        if let token = environment["ADIT_TOKEN"]?.trimmingCharacters(in: .whitespacesAndNewlines), !token.isEmpty {
            return "Bearer " + token
        }
        return nil
    }

    func proxyRoute() throws -> (ProxyRoute?, String) {
        try ProxyRoute.resolve(proxy: proxy, noProxy: noProxy, user: proxyUser, passwordFile: proxyPasswordFile,
                               connectHeaders: try parsedHeaders(proxyHeader, flag: "--proxy-header"),
                               server: try serverURLs()[0], environment: ProcessInfo.processInfo.environment)
    }

    func parsedHeaders() throws -> [(String, String)] {
        try parsedHeaders(header, flag: "-H")
    }

    func parsedHeaders(_ lines: [String], flag: String) throws -> [(String, String)] {
        try lines.map { line in
            guard let colon = line.firstIndex(of: ":"), colon != line.startIndex else {
                throw ConfigurationError("\(flag) '\(line)' must be 'Name: value'")
            }
            let name = String(line[..<colon]).trimmingCharacters(in: .whitespaces)
            let value = String(line[line.index(after: colon)...]).trimmingCharacters(in: .whitespaces)
            guard name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: ":") }),
                !value.utf8.contains(where: { $0 == 0x0D || $0 == 0x0A })
            else { throw ConfigurationError("\(flag) '\(line)' has characters not allowed in an HTTP header") }
            return (name, value)
        }
    }

    func run() async throws {
        raiseFileDescriptorLimit()
        tuneAllocator()
        let logger = logging.makeLogger(label: "adit.client", quietDefault: stdio != nil)
        let servers = try serverURLs()
        var config = AditClient.Configuration(url: servers[0], forwards: raw ? [] : try forwards.map(ForwardSpec.parse))
        config.servers = servers
        if raw { config.rawListeners = try forwards.map { text throws(ConfigurationError) in try HostPort.parseListener(text, what: "-L") } }
        config.reverseForwards = try reverse.map(ReverseForwardSpec.parse)
        config.socksListeners = try dynamic.map { text throws(ConfigurationError) in try HostPort.parseListener(text, what: "-D") }
        config.httpProxyListeners = try httpProxy.map { text throws(ConfigurationError) in
            try HostPort.parseListener(text, what: "--http-proxy")
        }
        config.stdioTarget = try stdio.map(stdioTarget)
        config.localCredentials = try localCredentials()
        config.waitForTunnel = .seconds(Int64(waitForTunnel))
        config.udpIdleTimeout = .seconds(Int64(udpTimeout))
        config.drainTimeout = .seconds(Int64(drainTimeout))
        config.compression = compression.settings
        config.tls = tls.settings
        let (route, why) = try proxyRoute()
        config.proxy = route
        try config.prepareTLS()
        if tls.insecure {
            logger.warning("--insecure: the server's certificate is NOT verified; anyone on the path can read and change this tunnel")
        }
        config.userAgent = userAgent
        if let route {
            let chain = route.next.map { ", then \($0.url)" }.joined()
            logger.notice("reaching \(config.url) through the proxy \(route.url)\(chain) (\(why))")
        } else if why != "no proxy configured" {
            logger.notice("connecting to \(config.url) directly (\(why))")
        }
        if route == nil && (proxyUser != nil || proxyPasswordFile != nil || !proxyHeader.isEmpty) {
            logger.warning("--proxy-user, --proxy-password-file and --proxy-header are ignored: no proxy is in use (\(why))")
        }
        config.rawMaxMessageSize = compression.rawMaxMessageSize
        config.extraHeaders = try parsedHeaders()
        if let authorization = try serverAuthorization() { config.extraHeaders.append(("Authorization", authorization)) }
        config.hostHeader = hostHeader
        config.origin = origin
        config.mux = tunnel.muxConfiguration
        config.channelOptions.tunnelSocketBuffer = tunnel.tunnelSocketBuffer
        config.connectTimeout = .seconds(Int64(connectTimeout))
        let exported = try metricsOptions.makeMetrics(logger: logger)
        config.metrics = exported.metrics
        let client = try AditClient(configuration: config, logger: logger)
        exported.admin?.report(on: client)
        // Under --stdio a hang-up means the terminal (ssh) is gone: keep SIGHUP's default there.
        let reloader = stdio != nil ? nil : ConfigReloader(command: "client", reloadable: ["log-level"], logger: logger) { parsed, changed in
            guard let fresh = parsed as? ClientCommand else { return }
            if changed.contains("log-level") { SwitchableLogLevel.level = fresh.logging.level() }
        }
        reloader?.start()
        defer { reloader?.stop() }
        try await runService(client, extra: exported.listeners, logger: logger)
        if config.stdioTarget != nil, let failure = client.stdioFailure {
            logger.error("\(failure)")
            throw ExitCode(1)
        }
    }
}
