import Logging
import NIOCore

/// Pauses a listener for a while when accepting fails (EMFILE, ENFILE: no descriptors; ENOBUFS, ENOMEM), so it
/// does not spin on an accept that keeps failing, and resumes by itself.
///
/// NIO's `AcceptBackoffHandler` only delays the *next* read request; the read already pending keeps the listening
/// socket registered for readability, so the loop still woke for every queued connection: measured here with
/// `prlimit --nofile=64` and a flood, 2,700 failing `accept4` calls a second and 100 % of a core, and nothing else
/// served. Turning `autoRead` off takes the socket out of the poll set until the pause ends.
final class AcceptPauseHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = Any

    private let logger: Logger?
    private var resume: Scheduled<Void>?
    private var pause: TimeAmount = .milliseconds(250)
    private var lastLogged: NIODeadline?

    init(logger: Logger? = nil) {
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        pause = .milliseconds(250)  // an accept worked: the next pause starts short again
        context.fireChannelRead(data)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let io = error as? IOError, resume == nil else {
            context.fireErrorCaught(error)
            return
        }
        let now = NIODeadline.now()
        if lastLogged.map({ now - $0 > .seconds(10) }) ?? true {
            lastLogged = now
            let address = context.channel.localAddress.map { " on \($0.ipAddress ?? "?"):\($0.port ?? 0)" } ?? ""
            logger?.warning("cannot accept connections\(address): \(io.description.contains("Too many open files") ? "out of file descriptors (raise the limit with ulimit -n, or lower the load)" : "\(io)"); pausing accepts for \(pause.nanoseconds / 1_000_000) ms")
        }
        _ = try? context.channel.syncOptions?.setOption(ChannelOptions.autoRead, value: false)
        let channel = context.channel
        resume = context.eventLoop.assumeIsolated().scheduleTask(in: pause) { [self] in
            self.resume = nil
            _ = try? channel.syncOptions?.setOption(ChannelOptions.autoRead, value: true)
        }
        pause = min(pause * 2, .seconds(2))
    }

    func channelInactive(context: ChannelHandlerContext) {
        resume?.cancel()
        resume = nil
        context.fireChannelInactive()
    }
}
