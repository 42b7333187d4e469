import Foundation
import NIOCore
import NIOSSL
import NIOTLS
import X509

/// Waits for the client's TLS handshake (NIOSSL has verified the chain), checks the certificate's names against
/// the URL's host — DNS names with RFC 6125 wildcards, IP addresses exactly; not against the socket's peer as
/// NIOSSL would, which behind a proxy is the proxy — and the `--pin`s, and only then installs the WebSocket
/// upgrade, so that no header is sent to a server that failed them.
final class TLSReadyHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let identity: Identity?
    private let hostForMessages: String
    private let pins: [PublicKeyPin]
    private let install: (any Channel) throws -> Void
    private let failed: (any Error) -> Void
    private var done = false

    /// What the certificate must name.
    enum Identity {
        case name(String)
        case address([UInt8])
    }

    init(identity: Identity?, host: String, pins: [PublicKeyPin], install: @escaping (any Channel) throws -> Void,
         failed: @escaping (any Error) -> Void) {
        self.identity = identity
        self.hostForMessages = host
        self.pins = pins
        self.install = install
        self.failed = failed
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case TLSUserEvent.handshakeCompleted = event, !done else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        done = true
        do {
            let handler = try context.pipeline.syncOperations.handler(type: NIOSSLClientHandler.self)
            guard let leaf = handler.peerCertificate else { throw TLSCheckError("the server sent no certificate") }
            if let identity { try check(identity, in: leaf) }
            if !pins.isEmpty {
                let pin = try PublicKeyPin.of(leaf)
                guard pins.contains(pin) else {
                    throw TLSCheckError("the server's public key \(pin) matches none of the --pin values")
                }
            }
            try install(context.channel)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        } catch {
            failed(error)
            context.close(promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !done {
            done = true
            failed(error)
        }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !done {
            done = true
            failed(TLSCheckError("the server closed the connection during the TLS handshake"))
        }
        context.fireChannelInactive()
    }

    private func check(_ identity: Identity, in leaf: NIOSSLCertificate) throws {
        let certificate = try Certificate(derEncoded: leaf.toDERBytes())
        let names = try certificate.extensions.subjectAlternativeNames.map(Array.init) ?? []
        var shown: [String] = []
        for name in names {
            switch (name, identity) {
            case (.ipAddress(let octets), .address(let address)):
                if Array(octets.bytes) == address { return }
                shown.append(Self.format(Array(octets.bytes)))
            case (.ipAddress(let octets), .name):
                shown.append(Self.format(Array(octets.bytes)))
            case (.dnsName(let dns), .name(let host)):
                if CertificateName.matches(pattern: dns, host: host) { return }
                shown.append(dns)
            case (.dnsName(let dns), .address):
                shown.append(dns)
            default:
                break
            }
        }
        throw TLSCheckError("the server's certificate is not valid for \(hostForMessages) (it names \(shown.isEmpty ? "nothing" : shown.joined(separator: ", "))); connect by one of those names or set --tls-server-name")
    }

    private static func format(_ bytes: [UInt8]) -> String {
        if bytes.count == 4 { return bytes.map(String.init).joined(separator: ".") }
        return stride(from: 0, to: bytes.count, by: 2).map { String(format: "%x", Int(bytes[$0]) << 8 | Int(bytes[$0 + 1])) }
            .joined(separator: ":")
    }
}

/// A check of the server's certificate that failed, in words.
struct TLSCheckError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Matching a certificate's DNS names against a host.
public enum CertificateName {
    /// RFC 6125 §6.4: case-insensitive; a wildcard only as the whole leftmost label, matching one label.
    public static func matches(pattern: String, host: String) -> Bool {
        let p = pattern.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: "."))
        let h = host.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: "."))
        if !p.hasPrefix("*.") { return p == h }
        let suffix = p.dropFirst(1)  // ".example.com"
        guard h.hasSuffix(suffix) else { return false }
        let label = h.dropLast(suffix.count)
        return !label.isEmpty && !label.contains(".")
    }
}
