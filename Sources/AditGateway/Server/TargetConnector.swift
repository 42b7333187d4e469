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

    /// Connects a TCP stream, or a connected UDP socket for a datagram stream. A name is resolved here, every
    /// address it has is checked (loopback, link-local and metadata addresses need a rule that names them), and
    /// the stream connects to exactly an address that passed — a second lookup cannot be steered elsewhere (DNS
    /// rebinding). IPv4-mapped IPv6 addresses are their IPv4 hosts.
    func connect(_ requested: MuxTarget, kind: MuxStreamKind = .stream, on eventLoop: any EventLoop) -> EventLoopFuture<any Channel> {
        let target = MuxTarget(host: requested.host.normalized, port: requested.port)
        let policy = self.policy
        switch target.host {
        case .ipv4, .ipv6:
            if let refusal = policy.refusal(connecting: target.host, port: target.port, kind: kind, name: nil) {
                return eventLoop.makeFailedFuture(Failure(code: .notAllowed, reason: refusal))
            }
            return connect(to: [target.host], target: target, kind: kind, on: eventLoop)
        case .name(let name):
            let byName = policy.patterns.contains { $0.kind == kind && $0.matches(host: target.host, port: target.port) }
            guard byName || policy.mayAllowAfterResolving(kind: kind) else {
                return eventLoop.makeFailedFuture(Failure(
                    code: .notAllowed, reason: policy.refusal(connecting: .name(name), port: target.port, kind: kind, name: nil)
                        ?? "\(target) is not allowed by the server's --allow rules"))
            }
            return NIOThreadPool.singleton.runIfActive(eventLoop: eventLoop) { () throws -> [MuxTarget.Host] in
                try TargetConnector.resolveAll(name)
            }.flatMapErrorThrowing { error -> [MuxTarget.Host] in
                throw Failure(code: .unreachable, reason: "\(name) did not resolve (\(error))")
            }.flatMap { addresses -> EventLoopFuture<any Channel> in
                var allowed: [MuxTarget.Host] = []
                var firstRefusal: String?
                for address in addresses {
                    if let refusal = policy.refusal(connecting: address, port: target.port, kind: kind, name: name) {
                        firstRefusal = firstRefusal ?? refusal
                    } else if !allowed.contains(address) {
                        allowed.append(address)
                    }
                }
                guard !allowed.isEmpty else {
                    return eventLoop.makeFailedFuture(Failure(code: .notAllowed, reason: firstRefusal ?? "\(name) has no address"))
                }
                return self.connect(to: allowed, target: target, kind: kind, on: eventLoop)
            }
        }
    }

    /// Tries the checked addresses in turn (the resolver's order), reporting the most telling failure.
    private func connect(to addresses: [MuxTarget.Host], target: MuxTarget, kind: MuxStreamKind,
                         on eventLoop: any EventLoop) -> EventLoopFuture<any Channel> {
        let address = addresses[0]
        let attempt: EventLoopFuture<any Channel>
        do {
            let socketAddress = try self.socketAddress(address, of: target)
            if kind == .datagram {
                attempt = DatagramBootstrap(group: eventLoop)
                    .channelOption(.autoRead, value: false)
                    .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 65_536))
                    .connect(to: socketAddress)
                    .map { $0 as any Channel }
            } else {
                attempt = bootstrap(on: eventLoop).connect(to: socketAddress)
            }
        } catch {
            attempt = eventLoop.makeFailedFuture(error)
        }
        let rest = Array(addresses.dropFirst())
        return attempt.flatMapError { error -> EventLoopFuture<any Channel> in
            let failure = self.classify(error, target: target)
            guard !rest.isEmpty, failure.code != .resourceLimit else { return eventLoop.makeFailedFuture(failure) }
            return self.connect(to: rest, target: target, kind: kind, on: eventLoop)
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

    private func bootstrap(on eventLoop: any EventLoop) -> ClientBootstrap {
        channelOptions.apply(toEndpoint: ClientBootstrap(group: eventLoop))
            .connectTimeout(connectTimeout)
    }

    /// Every address of `name`, IPv4 and IPv6, in the resolver's order (blocking: run it on a thread pool).
    static func resolveAll(_ name: String) throws -> [MuxTarget.Host] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(name, nil, &hints, &list)
        guard status == 0, let first = list else {
            throw Failure(code: .unreachable, reason: String(cString: gai_strerror(status)))
        }
        defer { freeaddrinfo(list) }
        var addresses: [MuxTarget.Host] = []
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let info = entry {
            if let raw = info.pointee.ai_addr {
                switch Int32(info.pointee.ai_family) {
                case AF_INET:
                    raw.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                        addresses.append(.ipv4(UInt32(bigEndian: $0.pointee.sin_addr.s_addr)))
                    }
                case AF_INET6:
                    raw.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) {
                        var address = $0.pointee.sin6_addr
                        let bytes = withUnsafeBytes(of: &address) { Array($0) }
                        addresses.append(MuxTarget.Host.ipv6(bytes).normalized)
                    }
                default:
                    break
                }
            }
            entry = info.pointee.ai_next
        }
        guard !addresses.isEmpty else { throw Failure(code: .unreachable, reason: "\(name) has no IP address") }
        return addresses
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
