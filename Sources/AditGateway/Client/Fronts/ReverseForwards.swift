import AditMux
import Logging
import NIOCore
import NIOPosix

/// `-R`: asks every new tunnel's server to listen for each reverse forward, and connects the streams the server
/// opens back to the local targets. Only a listener this client asked for can bring a connection here, and only
/// to the target its `-R` names: the server cannot make the client connect anywhere else.
final class ReverseForwards {
    private let specs: [ReverseForwardSpec]
    private let connector: TargetConnector
    private let udpIdleTimeout: TimeAmount
    private let eventLoop: any EventLoop
    private let logger: Logger
    /// The session whose listeners are current, and which `-R` each of its listeners serves.
    private weak var session: MuxHandler?
    private var listeners: [StreamID: Int] = [:]
    /// How the last request of each spec went, so a refusal is logged once, not at every reconnect.
    private var lastOutcome: [Int: String] = [:]
    /// The next wait before asking again for a port that is in use, per spec.
    private var retryDelays: [Int: TimeAmount] = [:]

    init(specs: [ReverseForwardSpec], configuration: AditClient.Configuration, eventLoop: any EventLoop, logger: Logger) {
        self.specs = specs
        // The targets come from our own command line, so any address is allowed; connecting and classifying
        // failures is what the server's connector does too.
        self.connector = TargetConnector(policy: .allowingEverything, connectTimeout: configuration.connectTimeout,
                                         channelOptions: configuration.channelOptions)
        self.udpIdleTimeout = configuration.udpIdleTimeout
        self.eventLoop = eventLoop
        self.logger = logger
    }

    /// A new tunnel is up: ask its server for every listener.
    func sessionReady(_ session: MuxHandler) {
        self.session = session
        listeners = [:]
        for index in specs.indices { requestListener(index, on: session) }
    }

    private func requestListener(_ index: Int, on session: MuxHandler) {
        guard self.session === session, session.isReady else { return }
        let spec = specs[index]
        let promise = eventLoop.makePromise(of: MuxTarget?.self)
        guard let id = session.listen(spec.listenRequest, promise: promise) else {
            promise.futureResult.whenFailure { [logger] error in logger.error("-R \(spec): \(error)") }
            return
        }
        listeners[id] = index
        promise.futureResult.assumeIsolated().whenComplete { [self] result in
            let forwards = self
            switch result {
            case .success(let address):
                let shown = address.map { "\($0)" } ?? "\(spec.bind)"
                forwards.logger.notice("the server listens on \(shown)\(spec.kind == .datagram ? "/udp" : "") for -R: connections come back to \(spec.target)")
                forwards.lastOutcome[index] = nil
                forwards.retryDelays[index] = nil
            case .failure(let error):
                forwards.listeners[id] = nil
                forwards.refused(index, on: session, error: error)
            }
        }
    }

    private func refused(_ index: Int, on session: MuxHandler, error: any Error) {
        let spec = specs[index]
        let text = "\(error)"
        if lastOutcome[index] != text {
            logger.error("-R \(spec): the server refused to listen: \(text)")
            lastOutcome[index] = text
        }
        // A port still held (by our own previous tunnel, not yet noticed gone) frees itself: ask again, less and
        // less often (2 s doubling to a minute). A policy refusal does not change until the server's rules do; the
        // next tunnel asks again.
        if case .reset(let code, _) = error as? MuxStreamOpenError, code == .resourceLimit {
            let delay = retryDelays[index, default: .seconds(2)]
            retryDelays[index] = min(delay * 2, .seconds(60))
            retry(index, on: session, after: delay)
        }
    }

    private func retry(_ index: Int, on session: MuxHandler, after delay: TimeAmount) {
        let weakSession = WeakSession(session)
        eventLoop.assumeIsolated().scheduleTask(in: delay) { [self] in
            guard let session = weakSession.session else { return }
            self.requestListener(index, on: session)
        }
    }

    /// A listener ended while its tunnel lives on (the server closed it): ask again shortly.
    func listenerClosed(_ session: MuxHandler, listener: StreamID, code: ResetCode, reason: String) {
        guard self.session === session, let index = listeners.removeValue(forKey: listener) else { return }
        guard session.isReady else { return }
        logger.warning("-R \(specs[index]): the server closed its listener (\(reason.isEmpty ? code.summary : reason)); asking again")
        retry(index, on: session, after: .seconds(1))
    }

    /// The server opened a stream for a connection on one of our listeners.
    func accept(_ session: MuxHandler, stream: StreamID, request: MuxOpenRequest) {
        guard self.session === session, let listener = request.listener, let index = listeners[listener] else {
            session.reject(stream, code: .closed, reason: "that listener is closed")
            return
        }
        let spec = specs[index]
        guard spec.kind == request.kind else {
            session.reject(stream, code: .protocolError, reason: "a \(request.kind) stream on a \(spec.kind) listener")
            return
        }
        let logger = self.logger
        let idle = udpIdleTimeout
        logger.debug("reverse connection", metadata: ["from": "\(request.target)", "to": "\(spec.target)"])
        connector.connect(spec.target, kind: spec.kind, on: eventLoop).assumeIsolated().whenComplete { result in
            switch result {
            case .success(let channel):
                session.accept(stream, endpoint: spec.kind == .datagram
                    ? DatagramChannelEndpoint(channel, idleTimeout: idle) : ChannelStreamEndpoint(channel))
            case .failure(let error):
                let failure = (error as? TargetConnector.Failure) ?? TargetConnector.Failure(code: .internalError, reason: "\(error)")
                logger.notice("-R \(spec): connection from \(request.target) could not reach \(spec.target): \(failure.reason)")
                session.reject(stream, code: failure.code, reason: failure.reason)
            }
        }
    }
}

private final class WeakSession {
    weak var session: MuxHandler?
    init(_ session: MuxHandler) { self.session = session }
}
