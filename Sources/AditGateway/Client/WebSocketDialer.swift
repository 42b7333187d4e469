import AditWebSocket
import NIOCore
import NIOHTTP1
import NIOPosix

/// Opens one WebSocket to the server: TCP, then the HTTP upgrade, then `install` puts the data-phase handlers
/// in place. The tunnel and the raw client share it; a proxy and TLS go in between TCP and the upgrade.
struct WebSocketDialer {
    var url: TunnelURL
    var webSocket: WebSocketClientConfiguration
    var channelOptions: TunnelChannelOptions
    var connectTimeout: TimeAmount

    init(url: TunnelURL, hostHeader: String?, origin: String?, extraHeaders: [(String, String)],
         compression: CompressionSettings, channelOptions: TunnelChannelOptions, connectTimeout: TimeAmount) {
        self.url = url
        var webSocket = WebSocketClientConfiguration(hostHeader: hostHeader ?? url.hostHeader)
        webSocket.path = url.path
        webSocket.origin = origin
        webSocket.extraHeaders = extraHeaders
        webSocket.compression = compression
        self.webSocket = webSocket
        self.channelOptions = channelOptions
        self.connectTimeout = connectTimeout
    }

    /// Succeeds once the handshake is done and `install` ran; fails with a sentence-ready error otherwise.
    func dial(on eventLoop: any EventLoop,
              install: @escaping (any Channel, PerMessageDeflateAgreement?) throws -> Void) -> EventLoopFuture<any Channel> {
        let upgraded = eventLoop.makePromise(of: Void.self)
        let webSocket = self.webSocket
        let bootstrap = channelOptions.apply(toTunnel: ClientBootstrap(group: eventLoop))
            .connectTimeout(connectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        WebSocketClientHandshakeHandler(configuration: webSocket, upgraded: upgraded, onUpgrade: install))
                }
            }
        return bootstrap.connect(host: url.host, port: url.port).flatMap { channel in
            upgraded.futureResult.map { channel }
        }.flatMapErrorThrowing { error in
            upgraded.fail(error)  // no-op when already completed
            throw error
        }
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
