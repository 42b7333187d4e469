import AditMux
import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// `--stdio HOST:PORT`: one stream on standard input and output, for `ssh -o ProxyCommand='adit client URL
/// --stdio %h:%p'`. End of input travels as FIN, the target's FIN closes standard output; a refusal is one line
/// on standard error and a non-zero exit.
final class StdioFront: Sendable {
    private let target: MuxTarget
    private let channel: any Channel
    private let done: EventLoopPromise<String?>

    private init(target: MuxTarget, channel: any Channel, done: EventLoopPromise<String?>) {
        self.target = target
        self.channel = channel
        self.done = done
    }

    /// `opener` is called on the event loop, where the tunnel manager lives.
    static func start(target: MuxTarget, opener: @escaping @Sendable () -> any StreamOpener, eventLoop: any EventLoop,
                      logger: Logger) async throws -> StdioFront {
        for (fd, name) in [(STDIN_FILENO, "standard input"), (STDOUT_FILENO, "standard output")] {
            // epoll takes pipes, sockets and terminals; a file or /dev/null would fail deep inside NIO.
            var info = stat()
            let kind = fstat(fd, &info) == 0 ? info.st_mode & S_IFMT : 0
            guard kind == S_IFIFO || kind == S_IFSOCK || isatty(fd) == 1 else {
                let what = kind == S_IFREG ? "a regular file" : kind == S_IFCHR ? "a device such as /dev/null" : "neither a pipe nor a socket"
                throw ConfigurationError("--stdio: \(name) is \(what); it must be a pipe, a socket or a terminal (as ssh's ProxyCommand gives), e.g. printf 'request' | adit client URL --stdio host:port | cat")
            }
        }
        // The endpoint joins the pipeline before the pipes are watched: standard input may be at its end already
        // (`printf … | adit … --stdio`), and what NIO reads then must be kept for the stream.
        let endpoint = NIOLoopBoundBox.makeEmptyBox(valueType: StdioEndpoint.self, eventLoop: eventLoop)
        let channel: any Channel
        do {
            channel = try await NIOPipeBootstrap(group: eventLoop)
                .channelOption(.autoRead, value: false)
                .channelOption(.allowRemoteHalfClosure, value: true)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { endpoint.value = StdioEndpoint(channel) }
                }
                .takingOwnershipOfDescriptors(input: STDIN_FILENO, output: STDOUT_FILENO).get()
        } catch {
            throw ConfigurationError("--stdio: cannot use standard input and output: \(error)")
        }
        let front = StdioFront(target: target, channel: channel, done: eventLoop.makePromise())
        try await eventLoop.submit {
            guard let stdio = endpoint.value else { throw ConfigurationError("--stdio: standard input and output closed at once") }
            front.open(stdio, opener: opener(), logger: logger)
        }.get()
        return front
    }

    private func open(_ endpoint: StdioEndpoint, opener: any StreamOpener, logger: Logger) {
        let promise = channel.eventLoop.makePromise(of: Void.self)
        let target = self.target
        let done = self.done
        promise.futureResult.assumeIsolated().whenComplete { result in
            switch result {
            case .success:
                logger.debug("stdio stream to \(target) open")
            case .failure(let error):
                done.succeed("connection to \(target) failed: \(error)")
                endpoint.close(abort: true)
            }
        }
        endpoint.onClose = { aborted in
            done.succeed(aborted ? "the connection to \(target) was cut short (reset, or the tunnel was lost)" : nil)
        }
        opener.openStream(MuxOpenRequest(target: target), endpoint: endpoint, promise: promise)
    }

    /// Waits for the stream's end: nil when it ended cleanly, else the sentence saying why not.
    func finished() async -> String? {
        do {
            return try await done.futureResult.get()
        } catch {
            return "the stdio stream ended abnormally: \(error)"
        }
    }

    /// Shutdown (SIGTERM/SIGINT): the stream is cut.
    func cancel() {
        let channel = self.channel
        let done = self.done
        channel.eventLoop.execute {
            channel.close(promise: nil)
            done.succeed("interrupted")
        }
    }
}

/// Standard input and output as a stream endpoint; remembers whether the stream ended cleanly, which decides
/// the exit status.
final class StdioEndpoint: MuxStreamEndpoint {
    private let inner: ChannelStreamEndpoint
    var onClose: ((Bool) -> Void)?

    init(_ channel: any Channel) {
        self.inner = ChannelStreamEndpoint(channel)
        // Held by the close future until the channel closes: whichever comes first — the mux ending the stream
        // or both pipes closing — decides the outcome.
        channel.closeFuture.assumeIsolated().whenComplete { _ in
            channel.eventLoop.assumeIsolated().execute { self.finish(aborted: false) }
        }
    }

    var eventLoop: any EventLoop { inner.eventLoop }
    func bind(_ events: MuxStreamEvents) { inner.bind(events) }
    func unbind() { inner.unbind() }
    func read() { inner.read() }
    func write(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?) { inner.write(buffer, promise: promise) }
    func flush() { inner.flush() }
    func shutdownOutput() { inner.shutdownOutput() }

    func close(abort: Bool) {
        finish(aborted: abort)
        inner.close(abort: abort)
    }

    private func finish(aborted: Bool) {
        guard let onClose else { return }
        self.onClose = nil
        onClose(aborted)
    }
}
