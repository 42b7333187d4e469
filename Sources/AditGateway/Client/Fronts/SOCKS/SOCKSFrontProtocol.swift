import AditMux
import NIOCore
import NIOSOCKS

/// The parts of the SOCKS server side that NIOSOCKS leaves to its user, as pure functions: which method to pick,
/// RFC 1929 username/password, SOCKS4/4a (NIOSOCKS speaks only version 5), the UDP request header (RFC 1928
/// §7), and the reply code for each way a stream can fail.
package enum SOCKSFrontProtocol {
    package struct Violation: Error, CustomStringConvertible {
        package var description: String
        init(_ text: String) { description = text }
    }

    /// RFC 1928 §3: username/password when we require it, else no authentication; 0xFF when the client offers
    /// neither of what we can do.
    package static func selectMethod(offered: [AuthenticationMethod], credentialsRequired: Bool) -> AuthenticationMethod {
        let wanted: AuthenticationMethod = credentialsRequired ? .usernamePassword : .noneRequired
        return offered.contains(wanted) ? wanted : .noneAcceptable
    }

    /// RFC 1929: VER=1, ULEN, UNAME, PLEN, PASSWD. Nil until the whole request arrived.
    package static func parseUsernamePassword(_ buffer: inout ByteBuffer) throws(Violation) -> (user: String, password: String)? {
        let start = buffer.readerIndex
        guard let version = buffer.getInteger(at: start, as: UInt8.self) else { return nil }
        guard version == 1 else { throw Violation("username/password request of version \(version), expected 1") }
        guard let userLength = buffer.getInteger(at: start + 1, as: UInt8.self) else { return nil }
        guard let passwordLength = buffer.getInteger(at: start + 2 + Int(userLength), as: UInt8.self),
            buffer.readableBytes >= 3 + Int(userLength) + Int(passwordLength)
        else { return nil }
        let user = buffer.getString(at: start + 2, length: Int(userLength)) ?? ""
        let password = buffer.getString(at: start + 3 + Int(userLength), length: Int(passwordLength)) ?? ""
        buffer.moveReaderIndex(forwardBy: 3 + Int(userLength) + Int(passwordLength))
        return (user, password)
    }

    /// RFC 1929 §2: status 0 is success, anything else closes the connection.
    package static func usernamePasswordReply(success: Bool) -> [UInt8] { [1, success ? 0 : 1] }

    /// A SOCKS4 or SOCKS4a CONNECT: VN=4, CD, DSTPORT, DSTIP, USERID\0, and for 4a (DSTIP 0.0.0.x) HOST\0.
    package struct SOCKS4Request: Equatable {
        package var command: UInt8
        package var target: MuxTarget
        package var userID: String

        package init(command: UInt8, target: MuxTarget, userID: String) {
            self.command = command
            self.target = target
            self.userID = userID
        }
    }

    package static func parseSOCKS4(_ buffer: inout ByteBuffer) throws(Violation) -> SOCKS4Request? {
        let view = buffer.readableBytesView
        guard view.count >= 9 else { return nil }
        let start = view.startIndex
        guard view[start] == 4 else { throw Violation("SOCKS version \(view[start]), expected 4") }
        let command = view[start + 1]
        let port = UInt16(view[start + 2]) << 8 | UInt16(view[start + 3])
        let ip = view[(start + 4)..<(start + 8)]
        guard let userEnd = view[(start + 8)...].firstIndex(of: 0) else {
            guard view.count < 8 + 256 else { throw Violation("SOCKS4 user ID longer than 255 bytes") }
            return nil
        }
        let userID = String(decoding: view[(start + 8)..<userEnd], as: UTF8.self)
        var consumed = userEnd + 1 - start
        let host: MuxTarget.Host
        if ip.prefix(3).allSatisfy({ $0 == 0 }) && ip.last != 0 {
            // SOCKS4a: the name follows, to be resolved by the server.
            guard let nameEnd = view[(userEnd + 1)...].firstIndex(of: 0) else {
                guard view.count - consumed < 256 else { throw Violation("SOCKS4a host name longer than 255 bytes") }
                return nil
            }
            let name = view[(userEnd + 1)..<nameEnd]
            guard !name.isEmpty, name.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
                throw Violation("SOCKS4a host name is empty or not printable ASCII")
            }
            host = .name(String(decoding: name, as: UTF8.self).lowercased())
            consumed = nameEnd + 1 - start
        } else {
            host = .ipv4(ip.reduce(0) { $0 << 8 | UInt32($1) })
        }
        guard port != 0 else { throw Violation("SOCKS4 request for port 0") }
        buffer.moveReaderIndex(forwardBy: consumed)
        return SOCKS4Request(command: command, target: MuxTarget(host: host, port: port), userID: userID)
    }

    /// SOCKS4 reply: VN=0, CD 90 (granted) or 91 (rejected), then port and address (ignored by clients).
    package static func socks4Reply(granted: Bool) -> [UInt8] { [0, granted ? 90 : 91, 0, 0, 0, 0, 0, 0] }

    /// The SOCKS5 reply for a failed stream: what the tunnel's outcome means in RFC 1928 §6's terms.
    package static func reply(for failure: StreamOpenFailure) -> SOCKSServerReply {
        switch failure {
        case .notAllowed: return .notAllowed
        case .refused: return .refused
        case .unreachable: return .hostUnreachable
        case .timedOut: return .ttlExpired
        case .unavailable, .other: return .serverFailure
        }
    }

    package static func target(of address: SOCKSAddress) -> MuxTarget? {
        switch address {
        case .domain(let name, let port):
            guard (1...65535).contains(port), !name.isEmpty, name.utf8.count <= 255,
                name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F })
            else { return nil }
            return MuxTarget(host: .name(name.lowercased()), port: UInt16(port))
        case .address(let socketAddress):
            guard let ip = socketAddress.ipAddress, let port = socketAddress.port, (1...65535).contains(port) else { return nil }
            return MuxTarget(hostText: ip, port: UInt16(port))
        }
    }

    // MARK: UDP (RFC 1928 §7): RSV(2) FRAG(1) ATYP DST.ADDR DST.PORT DATA

    /// Nil for a datagram that is not ours to relay (fragmented, malformed); fragments are dropped as RFC 1928
    /// allows for an implementation without reassembly.
    package static func parseUDPRequest(_ datagram: ByteBuffer) -> (target: MuxTarget, payload: ByteBuffer)? {
        var buffer = datagram
        guard let (reserved, fragment, kind) = buffer.readMultipleIntegers(as: (UInt16, UInt8, UInt8).self),
            reserved == 0, fragment == 0
        else { return nil }
        let host: MuxTarget.Host
        switch kind {
        case 1:
            guard let a = buffer.readInteger(as: UInt32.self) else { return nil }
            host = .ipv4(a)
        case 4:
            guard let b = buffer.readBytes(length: 16) else { return nil }
            host = .ipv6(b)
        case 3:
            guard let n = buffer.readInteger(as: UInt8.self), n > 0, let name = buffer.readBytes(length: Int(n)),
                name.allSatisfy({ $0 > 0x20 && $0 < 0x7F })
            else { return nil }
            host = .name(String(decoding: name, as: UTF8.self).lowercased())
        default:
            return nil
        }
        guard let port = buffer.readInteger(as: UInt16.self), port != 0 else { return nil }
        return (MuxTarget(host: host, port: port), buffer)
    }

    /// The header a reply datagram carries back: where it came from.
    package static func udpReplyHeader(from source: MuxTarget, allocator: ByteBufferAllocator, payload: ByteBuffer) -> ByteBuffer {
        var out = allocator.buffer(capacity: 22 + payload.readableBytes)
        out.writeInteger(UInt16(0))
        out.writeInteger(UInt8(0))
        switch source.host {
        case .ipv4(let a):
            out.writeInteger(UInt8(1))
            out.writeInteger(a)
        case .ipv6(let b):
            out.writeInteger(UInt8(4))
            out.writeBytes(b)
        case .name(let n):
            let bytes = Array(n.utf8.prefix(255))
            out.writeInteger(UInt8(3))
            out.writeInteger(UInt8(bytes.count))
            out.writeBytes(bytes)
        }
        out.writeInteger(source.port)
        out.writeImmutableBuffer(payload)
        return out
    }
}
