import AditGateway
import ArgumentParser
import Foundation
import NIOCore

struct ClientCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "client",
        abstract: "Forward local ports through one tunnel to an adit server.",
        discussion: """
            Each -L binds a local port at once; every connection to it becomes one stream of the tunnel, which the server connects to HOST:HOSTPORT (if its --allow rules permit). The client keeps the tunnel up, reconnecting with backoff; connections made while it is down wait up to 15 s.

            Examples:
              adit client ws://gateway.example.com:8080/ -L 2222:localhost:22
              adit client ws://127.0.0.1:8080/tunnel -L 0.0.0.0:5432:db.internal:5432
              adit client ws://[::1]:8080/ -L [::1]:8080:10.0.0.7:80 -H 'X-Team: ops'

            With --raw, each local connection gets its own WebSocket to the URL, unmultiplexed, and the server picks the target (an adit server's --raw route, or websockify):
              adit client --raw ws://gateway.example.com:8080/vnc -L 5901
            """)

    @Argument(help: ArgumentHelp("The server: ws://HOST[:PORT][/path], or wss:// for TLS (default port 443). Example: wss://gateway.example.com/tunnel",
                                 valueName: "url"))
    var url: String

    @Option(name: .customShort("L"), help: ArgumentHelp(
        "Local forward [BIND:]PORT:HOST:HOSTPORT (repeatable), as in ssh. BIND defaults to 127.0.0.1; IPv6 in brackets. With --raw: [BIND:]PORT. Example: -L 8080:intranet.example:80",
        valueName: "forward"))
    var forwards: [String] = []

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

    func validate() throws {
        do {
            _ = try TunnelURL.parse(url)
            guard !forwards.isEmpty else {
                throw ValidationError("no -L forward given; add one, e.g. -L 8080:example.com:80")
            }
            if raw {
                for f in forwards { _ = try parseRawListener(f) }
            } else {
                for f in forwards { _ = try ForwardSpec.parse(f) }
            }
            _ = try parsedHeaders()
            _ = try parsedHeaders(proxyHeader, flag: "--proxy-header")
            _ = try proxyRoute()
            if try tls.isSet && !TunnelURL.parse(url).secure && proxyRoute().0?.url.kind != .https {
                throw ConfigurationError("TLS options (--ca-file, --pin, --tls-cert, --insecure, …) need a wss:// URL; \(url) is plain ws://")
            }
        } catch let error as ConfigurationError {
            throw ValidationError(error.message)
        }
        guard connectTimeout >= 1 else { throw ValidationError("--connect-timeout must be at least 1 second") }
    }

    /// `-L [BIND:]PORT` with --raw: the target is the server's business.
    func parseRawListener(_ text: String) throws -> HostPort {
        let fields = try HostPort.splitFields(text, what: "-L")
        switch fields.count {
        case 1:
            return HostPort(host: "127.0.0.1", port: try HostPort.parsePort(fields[0], what: "-L '\(text)' local port", allowZero: true))
        case 2:
            let bind = fields[0].isEmpty || fields[0] == "*" ? "0.0.0.0" : fields[0]
            return HostPort(host: bind, port: try HostPort.parsePort(fields[1], what: "-L '\(text)' local port", allowZero: true))
        default:
            throw ConfigurationError("with --raw, -L '\(text)' must be [BIND:]PORT (the server decides the target), e.g. -L 5901")
        }
    }

    func proxyRoute() throws -> (ProxyRoute?, String) {
        try ProxyRoute.resolve(proxy: proxy, noProxy: noProxy, user: proxyUser, passwordFile: proxyPasswordFile,
                               connectHeaders: try parsedHeaders(proxyHeader, flag: "--proxy-header"),
                               server: try TunnelURL.parse(url), environment: ProcessInfo.processInfo.environment)
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
        let logger = logging.makeLogger(label: "adit.client")
        var config = AditClient.Configuration(url: try TunnelURL.parse(url),
                                              forwards: raw ? [] : try forwards.map(ForwardSpec.parse))
        if raw { config.rawListeners = try forwards.map(parseRawListener) }
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
        config.hostHeader = hostHeader
        config.origin = origin
        config.mux = tunnel.muxConfiguration
        config.channelOptions.tunnelSocketBuffer = tunnel.tunnelSocketBuffer
        config.connectTimeout = .seconds(Int64(connectTimeout))
        let exported = try metricsOptions.makeMetrics(logger: logger)
        config.metrics = exported?.0
        try await runService(AditClient(configuration: config, logger: logger), extra: exported.map { [$0.1] } ?? [],
                             logger: logger)
    }
}
