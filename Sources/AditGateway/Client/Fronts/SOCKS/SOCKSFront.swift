import AditMux
import Logging
import NIOCore
import NIOPosix
import NIOSOCKS

/// `-D`: a SOCKS proxy for the applications on this machine. The version byte picks the handshake: SOCKS5
/// (RFC 1928, with RFC 1929 username/password when `--local-user` is set) on NIOSOCKS' server side, or
/// SOCKS4/4a, which NIOSOCKS does not speak. Names are resolved by the server, so its policy sees them. The
/// reply follows the stream's outcome: not allowed 0x02, refused 0x05, unreachable 0x04, timed out 0x06.
package enum SOCKSFront {
    static let handshakeTimeout: TimeAmount = .seconds(10)
    /// The bound address of a CONNECT reply: the server's outgoing address is not ours to know, and clients
    /// ignore it.
    static let unspecifiedAddress = SOCKSAddress.address(try! SocketAddress(ipAddress: "0.0.0.0", port: 0))

    package static func serve(_ channel: any Channel, opener: any StreamOpener, credentials: LocalCredentials?,
                      udpIdleTimeout: TimeAmount, logger: Logger) {
        let context = SOCKSFrontContext(opener: opener, credentials: credentials, udpIdleTimeout: udpIdleTimeout,
                                        logger: logger)
        do {
            try channel.pipeline.syncOperations.addHandler(SOCKSVersionSniffer(context: context))
        } catch {
            channel.close(promise: nil)
        }
    }
}

/// What every SOCKS handshake handler needs.
struct SOCKSFrontContext {
    let opener: any StreamOpener
    let credentials: LocalCredentials?
    let udpIdleTimeout: TimeAmount
    let logger: Logger
}

/// Reads the first byte and installs the handshake for that version; closes a connection that says nothing
/// within the handshake timeout.
final class SOCKSVersionSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let front: SOCKSFrontContext
    private var timeout: Scheduled<Void>?

    init(context: SOCKSFrontContext) {
        self.front = context
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        timeout = context.eventLoop.assumeIsolated().scheduleTask(in: SOCKSFront.handshakeTimeout) { [front] in
            front.logger.debug("SOCKS client sent no complete request in time; closing")
            channel.close(promise: nil)
        }
        context.read()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timeout?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        guard let version = bytes.getInteger(at: bytes.readerIndex, as: UInt8.self) else {
            context.read()
            return
        }
        let sync = context.pipeline.syncOperations
        do {
            switch version {
            case 5:
                let socks5 = SOCKS5FrontHandler(context: front, timeout: timeout)
                timeout = nil
                try sync.addHandlers([SOCKSServerHandshakeHandler(), socks5], position: .after(self))
            case 4:
                let socks4 = SOCKS4FrontHandler(context: front, timeout: timeout)
                timeout = nil
                try sync.addHandler(socks4, position: .after(self))
            default:
                front.logger.notice("a connection to the SOCKS port did not speak SOCKS (first byte \(version)); closing")
                context.close(promise: nil)
                return
            }
        } catch {
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(data)
        sync.removeHandler(context: context, promise: nil)
    }
}

/// Fails the handshake with a log line and a close, after the reply (if any) was written.
private func closeAfter(_ context: ChannelHandlerContext, _ future: EventLoopFuture<Void>?) {
    let channel = context.channel
    if let future {
        future.assumeIsolated().whenComplete { _ in channel.close(promise: nil) }
    } else {
        channel.close(promise: nil)
    }
}

/// SOCKS5 on top of NIOSOCKS' `SOCKSServerHandshakeHandler`: picks the method, checks RFC 1929 credentials,
/// opens the stream (or the UDP association) and answers with its outcome.
final class SOCKS5FrontHandler: ChannelDuplexHandler, RemovableChannelHandler {
    /// `ClientMessage`s from NIOSOCKS; but when NIOSOCKS leaves the pipeline (at close) it hands on its raw
    /// buffer, which must not crash us: anything else is dropped.
    typealias InboundIn = Any
    typealias OutboundIn = Never
    typealias OutboundOut = ServerMessage

    private let front: SOCKSFrontContext
    private var timeout: Scheduled<Void>?
    private var authentication = ByteBuffer()

    init(context: SOCKSFrontContext, timeout: Scheduled<Void>?) {
        self.front = context
        self.timeout = timeout
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timeout?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let message = unwrapInboundIn(data) as? ClientMessage else { return }
        switch message {
        case .greeting(let greeting):
            let method = SOCKSFrontProtocol.selectMethod(offered: greeting.methods,
                                                         credentialsRequired: front.credentials != nil)
            let written = context.writeAndFlush(wrapOutboundOut(.selectedAuthenticationMethod(.init(method: method))))
            if method == .noneAcceptable {
                front.logger.notice("SOCKS client offered no method we accept (\(front.credentials == nil ? "no authentication" : "username/password") is required); closing")
                closeAfter(context, written)
                return
            }
            // NIOSOCKS parses what was buffered only on the next read: a request sent right behind the greeting
            // would wait forever without this nudge.
            context.pipeline.fireChannelRead(ByteBuffer())
            context.read()
        case .authenticationData(var bytes):
            authentication.writeBuffer(&bytes)
            do {
                guard let (user, password) = try SOCKSFrontProtocol.parseUsernamePassword(&authentication) else {
                    context.read()
                    return
                }
                let ok = front.credentials?.matches(user: user, password: password) ?? false
                let reply = ByteBuffer(bytes: SOCKSFrontProtocol.usernamePasswordReply(success: ok))
                let written = context.writeAndFlush(wrapOutboundOut(.authenticationData(reply, complete: ok)))
                guard ok else {
                    front.logger.notice("SOCKS client gave a wrong username or password; closing")
                    closeAfter(context, written)
                    return
                }
                context.pipeline.fireChannelRead(ByteBuffer())
                context.read()
            } catch {
                front.logger.notice("SOCKS client broke RFC 1929: \(error); closing")
                context.close(promise: nil)
            }
        case .request(let request):
            timeout?.cancel()
            timeout = nil
            switch request.command {
            case .connect:
                guard let target = SOCKSFrontProtocol.target(of: request.addressType) else {
                    refuse(context, .addressUnsupported, why: "a CONNECT to an address the tunnel cannot carry (port 0?)")
                    return
                }
                connect(context, to: target)
            case .udpAssociate:
                // The address is where the client will send from, often 0.0.0.0:0: its datagrams are matched by
                // the address of this connection instead.
                associate(context)
            default:
                refuse(context, .commandUnsupported, why: "SOCKS command \(request.command.value) (only CONNECT and UDP ASSOCIATE)")
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.fireChannelReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        front.logger.notice("SOCKS handshake failed: \(error); closing")
        context.close(promise: nil)
    }

    private func refuse(_ context: ChannelHandlerContext, _ reply: SOCKSServerReply, why: String) {
        front.logger.notice("SOCKS request refused: \(why)")
        let written = context.writeAndFlush(wrapOutboundOut(.response(SOCKSResponse(
            reply: reply, boundAddress: SOCKSFront.unspecifiedAddress))))
        closeAfter(context, written)
    }

    private func connect(_ context: ChannelHandlerContext, to target: MuxTarget) {
        let channel = context.channel
        let endpoint = ChannelStreamEndpoint(channel, holdingReads: true)
        let promise = context.eventLoop.makePromise(of: Void.self)
        let handler = self
        let logger = front.logger
        promise.futureResult.assumeIsolated().whenComplete { result in
            switch result {
            case .success:
                let response = SOCKSResponse(reply: .succeeded,
                                             boundAddress: SOCKSFront.unspecifiedAddress)
                context.writeAndFlush(handler.wrapOutboundOut(.response(response)), promise: nil)
                // Both handshake handlers leave; NIOSOCKS hands on what it buffered, the stream takes over.
                let sync = context.pipeline.syncOperations
                if let socks = try? sync.handler(type: SOCKSServerHandshakeHandler.self) {
                    sync.removeHandler(handler, promise: nil)
                    sync.removeHandler(socks, promise: nil)
                }
                endpoint.releaseReads()
            case .failure(let error):
                logger.notice("SOCKS connection to \(target) failed: \(error)")
                let reply = SOCKSFrontProtocol.reply(for: StreamOpenFailure(error))
                let written = context.writeAndFlush(handler.wrapOutboundOut(.response(SOCKSResponse(
                    reply: reply, boundAddress: SOCKSFront.unspecifiedAddress))))
                closeAfter(context, written)
            }
        }
        front.opener.openStream(MuxOpenRequest(target: target), endpoint: endpoint, promise: promise)
    }

    /// UDP ASSOCIATE: a UDP socket on the address the client reached us on; every destination it sends to is a
    /// datagram stream; the association lives as long as this TCP connection.
    private func associate(_ context: ChannelHandlerContext) {
        guard let local = context.channel.localAddress, let localIP = local.ipAddress,
            let peerIP = context.channel.remoteAddress?.ipAddress
        else {
            refuse(context, .serverFailure, why: "the connection has no address to bind a UDP socket on")
            return
        }
        let handler = self
        SOCKSUDPAssociation.bind(host: localIP, clientIP: peerIP, opener: front.opener, idleTimeout: front.udpIdleTimeout,
                                 eventLoop: context.eventLoop, logger: front.logger).assumeIsolated().whenComplete { result in
            switch result {
            case .success(let association):
                guard context.channel.isActive else {
                    association.close()
                    return
                }
                let response = SOCKSResponse(reply: .succeeded, boundAddress: .address(association.address))
                context.writeAndFlush(handler.wrapOutboundOut(.response(response)), promise: nil)
                // The TCP connection now only marks the association's life (RFC 1928 §7).
                let sync = context.pipeline.syncOperations
                if let socks = try? sync.handler(type: SOCKSServerHandshakeHandler.self) {
                    try? sync.addHandler(SOCKSAssociationKeeper(association), position: .after(handler))
                    sync.removeHandler(handler, promise: nil)
                    sync.removeHandler(socks, promise: nil)
                }
            case .failure(let error):
                handler.refuse(context, .serverFailure, why: "cannot bind a UDP socket for UDP ASSOCIATE: \(error)")
            }
        }
    }
}

/// SOCKS4 and SOCKS4a CONNECT, parsed by hand (NIOSOCKS speaks only version 5). SOCKS4 has no passwords, so
/// with `--local-user` it is refused.
final class SOCKS4FrontHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let front: SOCKSFrontContext
    private var timeout: Scheduled<Void>?
    private var buffer = ByteBuffer()
    private var requested = false

    init(context: SOCKSFrontContext, timeout: Scheduled<Void>?) {
        self.front = context
        self.timeout = timeout
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timeout?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        buffer.writeBuffer(&bytes)
        guard !requested else { return }  // early data after the request waits in the buffer
        let request: SOCKSFrontProtocol.SOCKS4Request
        do {
            guard let parsed = try SOCKSFrontProtocol.parseSOCKS4(&buffer) else {
                context.read()
                return
            }
            request = parsed
        } catch {
            front.logger.notice("SOCKS4 client broke the protocol: \(error); closing")
            context.close(promise: nil)
            return
        }
        requested = true
        timeout?.cancel()
        timeout = nil
        guard request.command == 1 else {
            reject(context, why: "SOCKS4 command \(request.command) (only CONNECT)")
            return
        }
        guard front.credentials == nil else {
            reject(context, why: "SOCKS4 cannot carry a password and this proxy requires one (use SOCKS5)")
            return
        }
        let endpoint = ChannelStreamEndpoint(context.channel, holdingReads: true)
        let promise = context.eventLoop.makePromise(of: Void.self)
        let handler = self
        let target = request.target
        let logger = front.logger
        promise.futureResult.assumeIsolated().whenComplete { result in
            switch result {
            case .success:
                context.writeAndFlush(handler.wrapOutboundOut(ByteBuffer(bytes: SOCKSFrontProtocol.socks4Reply(granted: true))),
                                      promise: nil)
                let rest = handler.buffer
                handler.buffer = ByteBuffer()
                if rest.readableBytes > 0 { context.fireChannelRead(handler.wrapInboundOut(rest)) }
                context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
                endpoint.releaseReads()
            case .failure(let error):
                logger.notice("SOCKS4 connection to \(target) failed: \(error)")
                handler.reject(context, why: nil)
            }
        }
        front.opener.openStream(MuxOpenRequest(target: target), endpoint: endpoint, promise: promise)
    }

    private func reject(_ context: ChannelHandlerContext, why: String?) {
        if let why { front.logger.notice("SOCKS4 request refused: \(why)") }
        let written = context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: SOCKSFrontProtocol.socks4Reply(granted: false))))
        closeAfter(context, written)
    }
}

/// Keeps a UDP association alive while its TCP connection is: reads and drops what comes on it, and ends the
/// association when the client closes the connection.
final class SOCKSAssociationKeeper: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let association: SOCKSUDPAssociation

    init(_ association: SOCKSUDPAssociation) {
        self.association = association
    }

    func handlerAdded(context: ChannelHandlerContext) { context.read() }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
    func channelReadComplete(context: ChannelHandlerContext) { context.read() }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event { context.close(promise: nil) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        association.close()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
