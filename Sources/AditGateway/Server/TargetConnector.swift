import AditMux
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Connects a stream to its target after the policy allows it, and turns every failure into the RESET code
/// and sentence the client will log.
struct TargetConnector: Sendable {
    let policy: TargetPolicy
    let connectTimeout: TimeAmount
    let channelOptions: TunnelChannelOptions

    /// The same connector checking another policy (each session's identity has its own).
    func with(policy: TargetPolicy) -> TargetConnector {
        TargetConnector(policy: policy, connectTimeout: connectTimeout, channelOptions: channelOptions)
    }

    struct Failure: Error {
        var code: ResetCode
        var reason: String
    }

    /// Connects a TCP stream, or a connected UDP socket for a datagram stream (names resolved first, so the
    /// address checked is the one used).
    func connect(_ target: MuxTarget, kind: MuxStreamKind = .stream, on eventLoop: any EventLoop) -> EventLoopFuture<any Channel> {
        if kind == .datagram { return connectDatagram(target, on: eventLoop) }
        if policy.allows(target) {
            switch target.host {
            case .name(let name):
                return bootstrap(on: eventLoop).connect(host: name, port: Int(target.port))
                    .flatMapErrorThrowing { throw classify($0, target: target) }
            case .ipv4, .ipv6:
                return connect(address: target.host, target: target, on: eventLoop)
            }
        }
        guard case .name(let name) = target.host else {
            return eventLoop.makeFailedFuture(Failure(code: .notAllowed, reason: "\(target) is not allowed by the server's --allow rules"))
        }
        // A name not allowed by name: allowed if it resolves to an allowed address. Connect to exactly the
        // address that was checked, so a second lookup cannot be steered elsewhere.
        let policy = self.policy
        return NIOThreadPool.singleton.runIfActive(eventLoop: eventLoop) { () throws -> MuxTarget.Host in
            try TargetConnector.resolve(name)
        }.flatMapErrorThrowing { error -> MuxTarget.Host in
            throw Failure(code: .unreachable, reason: "\(name) did not resolve (\(error))")
        }.flatMap { address -> EventLoopFuture<any Channel> in
            guard policy.allows(address: address, port: target.port) else {
                let shown = MuxTarget(host: address, port: target.port)
                return eventLoop.makeFailedFuture(Failure(
                    code: .notAllowed, reason: "\(target) (\(shown)) is not allowed by the server's --allow rules"))
            }
            return self.connect(address: address, target: target, on: eventLoop)
        }
    }

    private func connect(address: MuxTarget.Host, target: MuxTarget, on eventLoop: any EventLoop) -> EventLoopFuture<any Channel> {
        do {
            return bootstrap(on: eventLoop).connect(to: try socketAddress(address, of: target))
                .flatMapErrorThrowing { throw classify($0, target: target) }
        } catch {
            return eventLoop.makeFailedFuture(error)
        }
    }

    /// The checked address with the target's port: exactly what is connected.
    private func socketAddress(_ address: MuxTarget.Host, of target: MuxTarget) throws(Failure) -> SocketAddress {
        do {
            return try SocketAddress(ipAddress: MuxTarget(host: address, port: target.port).hostText, port: Int(target.port))
        } catch {
            throw Failure(code: .unreachable, reason: "bad address \(target): \(error)")
        }
    }

    private func connectDatagram(_ target: MuxTarget, on eventLoop: any EventLoop) -> EventLoopFuture<any Channel> {
        let policy = self.policy
        let shownKind = "\(target)/udp"
        let resolved: EventLoopFuture<MuxTarget.Host>
        switch target.host {
        case .ipv4, .ipv6:
            resolved = eventLoop.makeSucceededFuture(target.host)
        case .name(let name):
            resolved = NIOThreadPool.singleton.runIfActive(eventLoop: eventLoop) { () throws -> MuxTarget.Host in
                try TargetConnector.resolve(name)
            }.flatMapErrorThrowing { error -> MuxTarget.Host in
                throw Failure(code: .unreachable, reason: "\(name) did not resolve (\(error))")
            }
        }
        return resolved.flatMap { address -> EventLoopFuture<any Channel> in
            guard policy.allows(target, kind: .datagram) || policy.allows(address: address, port: target.port, kind: .datagram) else {
                return eventLoop.makeFailedFuture(Failure(
                    code: .notAllowed, reason: "\(shownKind) is not allowed by the server's --allow rules (UDP needs a /udp rule)"))
            }
            let socketAddress: SocketAddress
            do {
                socketAddress = try self.socketAddress(address, of: target)
            } catch {
                return eventLoop.makeFailedFuture(error)
            }
            return DatagramBootstrap(group: eventLoop)
                .channelOption(.autoRead, value: false)
                .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 65_536))
                .connect(to: socketAddress)
                .map { $0 as any Channel }
                .flatMapErrorThrowing { throw self.classify($0, target: target) }
        }
    }

    private func bootstrap(on eventLoop: any EventLoop) -> ClientBootstrap {
        channelOptions.apply(toEndpoint: ClientBootstrap(group: eventLoop))
            .connectTimeout(connectTimeout)
    }

    static func resolve(_ name: String) throws -> MuxTarget.Host {
        let address = try SocketAddress.makeAddressResolvingHost(name, port: 0)
        guard let ip = address.ipAddress else { throw Failure(code: .unreachable, reason: "\(name) has no IP address") }
        return MuxTarget(hostText: ip, port: 0).host
    }

    func classify(_ error: any Error, target: MuxTarget) -> Failure {
        if let failure = error as? Failure { return failure }
        if let channelError = error as? ChannelError, case .connectTimeout(let t) = channelError {
            return Failure(code: .timedOut, reason: "no answer from \(target) within \(t.nanoseconds / 1_000_000_000) s")
        }
        if let connection = error as? NIOConnectionError {
            if connection.connectionErrors.isEmpty {
                let dns = connection.dnsAError ?? connection.dnsAAAAError
                return Failure(code: .unreachable, reason: "\(target) did not resolve\(dns.map { " (\($0))" } ?? "")")
            }
            // Report the most telling of the per-address errors.
            let failures = connection.connectionErrors.map { classify($0.error, target: target) }
            return failures.first { $0.code == .refused } ?? failures.first { $0.code == .timedOut } ?? failures[0]
        }
        if let io = error as? IOError {
            switch io.errnoCode {
            case ECONNREFUSED:
                return Failure(code: .refused, reason: "\(target) refused the connection")
            case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                return Failure(code: .resourceLimit, reason: "resource limit: the server is out of \(io.errnoCode == ENOMEM || io.errnoCode == ENOBUFS ? "memory" : "file descriptors") (\(String(cString: strerror(io.errnoCode))))")
            case ENETUNREACH, EHOSTUNREACH, EADDRNOTAVAIL, EAFNOSUPPORT:
                return Failure(code: .unreachable, reason: "\(target): \(String(cString: strerror(io.errnoCode)))")
            case ETIMEDOUT:
                return Failure(code: .timedOut, reason: "\(target) timed out")
            default:
                return Failure(code: .unreachable, reason: "\(target): \(String(cString: strerror(io.errnoCode)))")
            }
        }
        return Failure(code: .unreachable, reason: "\(target): \(error)")
    }
}
