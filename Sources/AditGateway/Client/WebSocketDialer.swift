import AditMux
import AditProxy
import AditWebSocket
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// Opens one WebSocket to the server: TCP, then the HTTP upgrade, then `install` puts the data-phase handlers
/// in place. The tunnel and the raw client share it; a proxy and TLS go in between TCP and the upgrade.
struct WebSocketDialer {
    var url: TunnelURL
    var webSocket: WebSocketClientConfiguration
    var channelOptions: TunnelChannelOptions
    var connectTimeout: TimeAmount
    /// Nil: straight to the server.
    var proxy: ProxyRoute?
    /// For the CONNECT request too (some proxies pass only browser-like agents).
    var userAgent: String?
    /// For wss://: the TLS context (built once) and what to check beyond it.
    var tls: (context: NIOSSLContext, settings: ClientTLSSettings)?
    /// For an https:// proxy: TLS to the proxy itself.
    var proxyTLS: NIOSSLContext?

    init(url: TunnelURL, hostHeader: String?, origin: String?, extraHeaders: [(String, String)],
         compression: CompressionSettings, channelOptions: TunnelChannelOptions, connectTimeout: TimeAmount) {
        self.url = url
        var webSocket = WebSocketClientConfiguration(hostHeader: hostHeader ?? url.hostHeader)
        webSocket.path = url.path
        webSocket.origin = origin
        webSocket.extraHeaders = extraHeaders
        webSocket.compression = compression
        // --connect-timeout bounds the upgrade as well as the TCP connect.
        webSocket.handshakeTimeoutSeconds = max(1, connectTimeout.nanoseconds / 1_000_000_000)
        self.webSocket = webSocket
        self.channelOptions = channelOptions
        self.connectTimeout = connectTimeout
    }

    /// Succeeds once the handshake is done and `install` ran; fails with a sentence-ready error otherwise
    /// (`describe(_:)` turns it into the sentence).
    func dial(on eventLoop: any EventLoop,
              install: @escaping (any Channel, PerMessageDeflateAgreement?) throws -> Void) -> EventLoopFuture<any Channel> {
        let upgraded = eventLoop.makePromise(of: Void.self)
        var webSocket = self.webSocket
        if let userAgent, !webSocket.extraHeaders.contains(where: { $0.0.lowercased() == "user-agent" }) {
            webSocket.extraHeaders.append(("User-Agent", userAgent))
        }
        let webSocketUpgrade = { [webSocket] (channel: any Channel) throws -> Void in
            try channel.pipeline.syncOperations.addHandler(
                WebSocketClientHandshakeHandler(configuration: webSocket, upgraded: upgraded, onUpgrade: install))
        }
        var next = webSocketUpgrade
        if let tls {
            // TLS to the server (through the proxy's tunnel, if any); the upgrade only once it is checked.
            let host = tls.settings.serverName ?? url.host
            let address = IPAddressBytes.parse(host)
            let pins = tls.settings.pins
            next = { channel in
                let sync = channel.pipeline.syncOperations
                try sync.addHandler(NIOSSLClientHandler(context: tls.context, serverHostname: address == nil ? host : nil))
                let identity: TLSReadyHandler.Identity? = !tls.settings.checksIdentity ? nil
                    : address.map { .address($0) } ?? .name(host)
                try sync.addHandler(TLSReadyHandler(identity: identity, host: host, pins: pins,
                                                    install: webSocketUpgrade, failed: { upgraded.fail($0) }))
            }
        }
        // Every connection of this dial lives on `eventLoop`, where the loop-bound closure may be called.
        let upgrade = NIOLoopBound(next, eventLoop: eventLoop)
        let dialled: EventLoopFuture<any Channel>
        switch proxy?.url.kind {
        case nil:
            dialled = bootstrap(on: eventLoop) { channel in try upgrade.value(channel) }
                .connect(host: url.host, port: url.port)
        case .http, .https:
            // One CONNECT per hop: each asks for the next hop, the last for the server.
            let hops = [ProxyRoute.Hop(url: proxy!.url, credentials: proxy!.credentials)] + proxy!.next
            let machines = hops.indices.map { k in
                ProxyConnectStateMachine(
                    target: k + 1 < hops.count ? Self.authority(hops[k + 1].url.host, hops[k + 1].url.port) : authority,
                    credentials: hops[k].credentials, extraHeaders: connectHeaders,
                    negotiator: GSSAPINegotiator(proxyHost: hops[k].url.host))
            }
            dialled = dialHTTPProxy(machines, attempt: 1, on: eventLoop, upgrade: upgrade)
        case .socks5, .socks5h:
            dialled = dialSOCKS5(on: eventLoop, upgrade: upgrade)
        }
        let proxy = self.proxy
        return dialled.flatMap { channel in
            upgraded.futureResult.map { channel }
        }.flatMapErrorThrowing { error in
            upgraded.fail(error)  // no-op when already completed
            if let proxy, !(error is WebSocketUpgradeError) { throw ProxyDialError(proxy: proxy.url, underlying: error) }
            throw error
        }
    }

    /// host:port of the server, as CONNECT and Digest want it.
    var authority: String { Self.authority(url.host, url.port) }

    static func authority(_ host: String, _ port: Int) -> String {
        (host.contains(":") ? "[\(host)]" : host) + ":\(port)"
    }

    private var connectHeaders: [(String, String)] {
        var headers = proxy?.connectHeaders ?? []
        if let userAgent, !headers.contains(where: { $0.0.lowercased() == "user-agent" }) {
            headers.append(("User-Agent", userAgent))
        }
        return headers
    }

    private func bootstrap(on eventLoop: any EventLoop, initializer: @escaping @Sendable (any Channel) throws -> Void) -> ClientBootstrap {
        channelOptions.apply(toTunnel: ClientBootstrap(group: eventLoop))
            .connectTimeout(connectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try initializer(channel) }
            }
    }

    /// One connection to the first proxy per attempt: proxies that close after a 407 (tinyproxy) get a new one.
    /// With a chain, each hop's CONNECT runs inside the tunnel of the one before (`machines[k]` asks hop k for
    /// hop k+1, the last for the server); a hop that needs a new connection means dialling the chain again,
    /// every hop keeping what it learnt.
    private func dialHTTPProxy(_ machines: [ProxyConnectStateMachine], attempt: Int, on eventLoop: any EventLoop,
                               upgrade: NIOLoopBound<(any Channel) throws -> Void>) -> EventLoopFuture<any Channel> {
        let proxy = self.proxy!
        let hops = [ProxyRoute.Hop(url: proxy.url, credentials: proxy.credentials)] + proxy.next
        let outcomes = machines.map { _ in eventLoop.makePromise(of: ProxyConnectHandler.Outcome.self) }
        let timeout = connectTimeout
        let proxyTLS = self.proxyTLS
        // Hop k's handlers (TLS for an https:// hop, then its CONNECT), installing what comes after it.
        func handlers(_ k: Int, then next: @escaping (any Channel) throws -> Void) -> (any Channel) throws -> Void {
            { channel in
                let sync = channel.pipeline.syncOperations
                if hops[k].url.kind == .https, let proxyTLS {
                    let host = hops[k].url.host
                    try sync.addHandler(NIOSSLClientHandler(context: proxyTLS,
                                                            serverHostname: IPAddressBytes.parse(host) == nil ? host : nil))
                }
                try sync.addHandler(ProxyConnectHandler(machine: machines[k], timeout: timeout, done: outcomes[k],
                                                        install: next))
            }
        }
        var chain = upgrade.value
        for k in hops.indices.reversed() { chain = handlers(k, then: chain) }
        let install = NIOLoopBound(chain, eventLoop: eventLoop)
        let connected = bootstrap(on: eventLoop) { channel in try install.value(channel) }
            .connect(host: proxy.url.host, port: proxy.url.port)
        connected.whenFailure { error in outcomes.forEach { $0.fail(error) } }
        return connected.flatMap { channel in
            self.awaitHops(outcomes, from: 0, hops: hops, machines: machines, channel: channel, attempt: attempt,
                           on: eventLoop, upgrade: upgrade)
        }
    }

    private func awaitHops(_ outcomes: [EventLoopPromise<ProxyConnectHandler.Outcome>], from k: Int, hops: [ProxyRoute.Hop],
                           machines: [ProxyConnectStateMachine], channel: any Channel, attempt: Int,
                           on eventLoop: any EventLoop,
                           upgrade: NIOLoopBound<(any Channel) throws -> Void>) -> EventLoopFuture<any Channel> {
        guard k < outcomes.count else { return eventLoop.makeSucceededFuture(channel) }
        return outcomes[k].futureResult.flatMapErrorThrowing { error in
            channel.close(promise: nil)
            // Before its CONNECT succeeded, a TLS error is about the https:// proxy, not the server.
            let error: any Error = (error as? NIOSSLError).map { ProxyTLSFailure(underlying: $0) } ?? error
            throw k == 0 ? error : ChainHopFailure(proxy: hops[k].url, underlying: error)
        }.flatMap { result in
            switch result {
            case .established:
                return self.awaitHops(outcomes, from: k + 1, hops: hops, machines: machines, channel: channel,
                                      attempt: attempt, on: eventLoop, upgrade: upgrade)
            case .reconnect(let next):
                channel.close(promise: nil)
                guard attempt < 6 else {
                    return eventLoop.makeFailedFuture(ProxyConnectError.tooManyRounds(attempt))
                }
                var machines = machines
                machines[k] = next
                return self.dialHTTPProxy(machines, attempt: attempt + 1, on: eventLoop, upgrade: upgrade)
            }
        }
    }

    private func dialSOCKS5(on eventLoop: any EventLoop,
                            upgrade: NIOLoopBound<(any Channel) throws -> Void>) -> EventLoopFuture<any Channel> {
        let proxy = self.proxy!
        let host = url.host, port = url.port
        let destination: EventLoopFuture<SOCKS5StateMachine.Destination>
        let literal = MuxTarget(hostText: host, port: UInt16(port)).host
        switch literal {
        case .ipv4, .ipv6:
            destination = eventLoop.makeSucceededFuture(Self.destination(literal, port: port))
        case .name(let name):
            if proxy.url.kind == .socks5h {
                destination = eventLoop.makeSucceededFuture(.name(name, port: port))
            } else {
                // socks5://: the name is resolved here and the proxy gets an address.
                destination = NIOThreadPool.singleton.runIfActive(eventLoop: eventLoop) {
                    let address = try SocketAddress.makeAddressResolvingHost(name, port: port)
                    return Self.destination(MuxTarget(hostText: address.ipAddress ?? name, port: UInt16(port)).host,
                                            port: port)
                }
            }
        }
        let timeout = connectTimeout
        let credentials = proxy.credentials
        let options = channelOptions
        let connectTimeout = self.connectTimeout
        return destination.flatMap { destination in
            let done = eventLoop.makePromise(of: Void.self)
            let machine = SOCKS5StateMachine(destination: destination, credentials: credentials)
            let connected = options.apply(toTunnel: ClientBootstrap(group: eventLoop))
                .connectTimeout(connectTimeout)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            SOCKS5Handler(machine: machine, timeout: timeout, done: done, install: upgrade.value))
                    }
                }
                .connect(host: proxy.url.host, port: proxy.url.port)
            connected.whenFailure { done.fail($0) }
            return connected.flatMap { channel in done.futureResult.map { channel } }
        }
    }

    static func describeTLS(_ error: NIOSSLError, host: String) -> String {
        let text = "\(error)"
        if text.contains("CERTIFICATE_VERIFY_FAILED") {
            return "the server's certificate for \(host) is not trusted: give its CA with --ca-file, or pin its key with --pin sha256/… (adit keygen prints it) and --pin-only; --insecure only for a test"
        }
        if text.contains("WRONG_VERSION_NUMBER") || text.contains("HTTP_REQUEST") {
            return "the server answered in plain text, not TLS: for a plain ws:// server use a ws:// URL (wss:// needs --tls-cert and --tls-key on the server)"
        }
        if text.contains("EOF during handshake") {
            return "the server closed the connection during the TLS handshake: it does not speak TLS (is it ws:// rather than wss://?) or it wants a client certificate (--tls-cert, --tls-key)"
        }
        if text.contains("CERTIFICATE_REQUIRED") || text.contains("HANDSHAKE_FAILURE") {
            return "the server refused the TLS handshake (\(text)); does it require a client certificate (--tls-cert, --tls-key)?"
        }
        if case .uncleanShutdown = error { return "the server closed the TLS connection uncleanly" }
        return "the TLS handshake failed: \(text)"
    }

    private static func destination(_ host: MuxTarget.Host, port: Int) -> SOCKS5StateMachine.Destination {
        switch host {
        case .ipv4(let v):
            return .ipv4([UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)], port: port)
        case .ipv6(let bytes):
            return .ipv6(bytes, port: port)
        case .name(let name):
            return .name(name, port: port)
        }
    }

    /// A failure that dialling again cannot fix: the user must change something (credentials, mostly). The
    /// client stops with the error instead of retrying (rejected credentials retried every 15 s can lock an
    /// account).
    func isPermanent(_ error: any Error) -> Bool {
        if case .unexpectedStatus(let code, _, let body) = error as? WebSocketUpgradeError {
            // 401/403: credentials; 404: the URL's path; 400 naming TLS: the URL's scheme. None heals by itself.
            return code == 401 || code == 403 || code == 404 || (code == 400 && body.contains("speaks TLS"))
        }
        if let proxyError = error as? ProxyDialError, let connect = proxyError.underlying as? ProxyConnectError {
            switch connect {
            case .credentialsRequired, .credentialsRejected, .unsupportedSchemes: return true
            default: return false
            }
        }
        if let proxyError = error as? ProxyDialError, let socks = proxyError.underlying as? SOCKS5Error {
            switch socks {
            case .credentialsRequired, .credentialsRejected, .credentialsTooLong, .noAcceptableMethod: return true
            default: return false
            }
        }
        return false
    }

    /// One sentence for a failed dial.
    func describe(_ error: any Error) -> String {
        if let tlsError = error as? TLSCheckError { return "TLS: \(tlsError)" }
        if let sslError = error as? NIOSSLError { return "TLS: " + Self.describeTLS(sslError, host: tls?.settings.serverName ?? url.host) }
        if let extra = error as? NIOSSLExtraError, extra == .failedToValidateHostname {
            return "TLS: the server's certificate is not valid for \(tls?.settings.serverName ?? url.host); connect by a name it holds or set --tls-server-name"
        }
        if let proxyError = error as? ProxyDialError {
            let inner = proxyError.underlying
            if inner is ProxyConnectError || inner is SOCKS5Error || inner is SOCKS5TimeoutError
                || inner is SOCKS5ClosedError
            {
                return "through the proxy \(proxyError.proxy): \(inner)"
            }
            if let proxyTLS = inner as? ProxyTLSFailure {
                let text = "\(proxyTLS.underlying)"
                let why = text.contains("CERTIFICATE_VERIFY_FAILED")
                    ? "its certificate is not trusted (give its CA with --ca-file)"
                    : text.contains("EOF during handshake") || text.contains("WRONG_VERSION_NUMBER")
                        ? "it does not speak TLS (is it http:// rather than https://?)" : "the TLS handshake failed: \(text)"
                return "TLS to the proxy \(proxyError.proxy): \(why)"
            }
            if inner is TLSCheckError || inner is NIOSSLError || inner is NIOSSLExtraError {
                return describe(inner) + " (through the proxy \(proxyError.proxy))"
            }
            let proxyURL = TunnelURL(secure: false, host: proxyError.proxy.host, port: proxyError.proxy.port, path: "/")
            return "cannot reach the proxy \(proxyError.proxy): \(describeConnectError(inner, url: proxyURL, what: "the proxy"))"
        }
        return describeConnectError(error, url: url, what: webSocket.requiresSubprotocol ? "adit server" : "a WebSocket server")
    }
}

extension PerMessageDeflateAgreement {
    /// For the log line that says what was negotiated.
    var summary: String {
        func side(_ bits: Int, _ reset: Bool) -> String {
            "window \(bits == 8 ? "2^8 (Huffman only)" : "2^\(bits)")\(reset ? ", no context takeover" : "")"
        }
        return "permessage-deflate (we send with \(side(compressWindowBits, compressNoContextTakeover)); "
            + "the peer with \(side(decompressWindowBits, decompressNoContextTakeover)))"
    }
}
