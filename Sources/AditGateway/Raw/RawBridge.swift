import AditMux
import AditWebSocket
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// The raw WebSocket ⇄ TCP bridge, both ends: the server's `--raw` routes and the client's `--raw` mode.
enum RawBridge {
    /// Server: a WebSocket arrived on a raw route. Reading pauses until the target is connected (through the
    /// same policy as tunnel streams); a refused target closes the WebSocket with 1011 and the reason.
    static func installServerSide(on channel: any Channel, route: RawBridgeRoute, upgrade: WebSocketUpgrade,
                                  head: HTTPRequestHead, configuration: AditServer.Configuration,
                                  connector: TargetConnector, logger: Logger) throws {
        var logger = logger
        logger[metadataKey: "raw"] = "\(route.path)"
        var wsConfig = WebSocketConnectionHandler.Configuration()
        wsConfig.maxMessageSize = configuration.rawMaxMessageSize
        wsConfig.deflate = upgrade.deflate
        wsConfig.compression = configuration.compression
        wsConfig.acceptsText = true
        let webSocket = WebSocketConnectionHandler(role: .server, configuration: wsConfig, logger: logger)
        let (webSocketSide, tcpSide) = RawSpliceHandler.pair(logger: logger)
        try channel.syncOptions?.setOption(.autoRead, value: false)
        try channel.pipeline.syncOperations.addHandler(webSocket)
        try channel.pipeline.syncOperations.addHandler(webSocketSide)
        logger.info("raw bridge opened", metadata: [
            "target": "\(route.target)",
            "subprotocol": "\(upgrade.subprotocol ?? "none")",
            "compression": "\(upgrade.deflate?.summary ?? "none")",
            "user_agent": "\(head.headers["User-Agent"].first ?? "")",
        ])
        channel.closeFuture.assumeIsolated().whenComplete { _ in
            if let statistics = webSocket.compressionStatistics {
                logger.info("raw bridge closed; compression: \(statistics.summary)")
            } else {
                logger.info("raw bridge closed")
            }
        }
        connector.connect(route.target, on: channel.eventLoop).assumeIsolated().whenComplete { result in
            switch result {
            case .success(let target):
                do {
                    try target.pipeline.syncOperations.addHandler(tcpSide)
                    try target.syncOptions?.setOption(.autoRead, value: true)
                    // The WebSocket may already have ended (a client that sent its message and close at once):
                    // then tcpSide writes what it got and closes the target itself, once that is written.
                    if channel.isActive { try channel.syncOptions?.setOption(.autoRead, value: true) }
                } catch {
                    target.close(promise: nil)
                    channel.close(promise: nil)
                }
            case .failure(let error):
                let failure = connector.classify(error, target: route.target)
                logger.warning("raw bridge \(route.path): connection to \(route.target) failed: \(failure.reason)")
                channel.triggerUserOutboundEvent(
                    WebSocketCloseRequest(code: .internalError, reason: "cannot reach the target: \(failure.reason)"),
                    promise: nil)
            }
        }
    }

    /// Client: one local connection, carried over its own WebSocket to `dialer`'s URL.
    static func bridgeLocalConnection(_ local: any Channel, dialer: WebSocketDialer, maxMessageSize: Int,
                                      compression: CompressionSettings, logger: Logger) {
        let (webSocketSide, tcpSide) = RawSpliceHandler.pair(logger: logger)
        do {
            try local.pipeline.syncOperations.addHandler(tcpSide)
        } catch {
            local.close(promise: nil)
            return
        }
        let dial = dialer.dial(on: local.eventLoop) { channel, agreement in
            var wsConfig = WebSocketConnectionHandler.Configuration()
            wsConfig.maxMessageSize = maxMessageSize
            wsConfig.deflate = agreement
            wsConfig.compression = compression
            wsConfig.acceptsText = true
            try channel.pipeline.syncOperations.addHandler(
                WebSocketConnectionHandler(role: .client, configuration: wsConfig, logger: logger))
            try channel.pipeline.syncOperations.addHandler(webSocketSide)
            logger.debug("raw WebSocket open", metadata: ["compression": "\(agreement?.summary ?? "none")"])
        }
        dial.assumeIsolated().whenComplete { result in
            switch result {
            case .success:
                // The WebSocket may already have gone (a server that closes at once); then so does the local side.
                _ = try? local.syncOptions?.setOption(.autoRead, value: true)
            case .failure(let error):
                logger.warning("cannot open a WebSocket to \(dialer.url) for a local connection: \(dialer.describe(error))")
                local.close(promise: nil)
            }
        }
        local.closeFuture.whenComplete { _ in
            dial.whenSuccess { $0.close(promise: nil) }
        }
    }
}
