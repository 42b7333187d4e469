import AditMux
import AditTransport
import Logging
import NIOCore
import NIOEmbedded

/// A server-side mux session fed hostile tunnel messages: it answers the HELLO, accepts every OPEN onto an
/// in-memory endpoint, and must end every input alive or closed, never trapped, with its streams accounted for.
final class MuxSessionFuzzer: MuxSessionDelegate {
    private let loop = EmbeddedEventLoop()
    private var endpoints: [EmbeddedChannel] = []
    private var opened = 0
    private var ended = 0

    static func run(_ data: [UInt8]) {
        let fuzzer = MuxSessionFuzzer()
        fuzzer.feed(data)
    }

    private func feed(_ data: [UInt8]) {
        var configuration = MuxConfiguration()
        configuration.features = [.datagrams]
        let mux = MuxHandler(role: .server, configuration: configuration,
                             logger: Logger(label: "fuzz", factory: { _ in SwiftLogNoOpLogHandler() }), delegate: self)
        let channel = EmbeddedChannel(handler: mux, loop: loop)
        defer {
            _ = try? channel.finish()
            for endpoint in endpoints { _ = try? endpoint.finish() }
        }
        guard (try? channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()) != nil else { return }
        // A valid HELLO first, so that the fuzzer's bytes reach the streams rather than stopping at the greeting.
        var hello = ByteBufferAllocator().buffer(capacity: 32)
        MuxFrameCodec.encode(.hello(MuxHello(initialWindow: 4 << 20, maxMessageSize: 1 << 20, features: [.datagrams])), into: &hello)
        guard (try? channel.writeInbound(hello)) != nil else { return }
        for chunk in FuzzInput.chunks(data) {
            guard channel.isActive else { break }
            do {
                try channel.writeInbound(ByteBufferAllocator().buffer(bytes: chunk))
            } catch {
                break
            }
            loop.run()
            while (try? channel.readOutbound(as: TunnelMessage.self)) != nil {}
            for endpoint in endpoints { while (try? endpoint.readOutbound(as: ByteBuffer.self)) != nil {} }
        }
        _ = try? channel.close().wait()
        loop.run()
        FuzzTarget.check(ended <= opened, "\(ended) streams ended but only \(opened) were accepted")
    }

    func muxSessionDidBecomeReady(_ session: MuxHandler) {}

    func muxSession(_ session: MuxHandler, didReceiveOpen stream: StreamID, request: MuxOpenRequest) {
        guard endpoints.count < 64 else {
            session.reject(stream, code: .resourceLimit, reason: "fuzz")
            return
        }
        let endpoint = EmbeddedChannel(loop: loop)
        _ = try? endpoint.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
        endpoints.append(endpoint)
        opened += 1
        session.accept(stream, endpoint: ChannelStreamEndpoint(endpoint))
    }

    func muxSession(_ session: MuxHandler, streamDidEnd record: MuxStreamRecord) { ended += 1 }
    func muxSessionDidReceiveGoAway(_ session: MuxHandler, code: ResetCode, reason: String) {}
    func muxSessionDidClose(_ session: MuxHandler, error: (any Error)?) {}
}
