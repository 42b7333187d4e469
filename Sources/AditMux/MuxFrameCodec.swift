import AditTransport
import NIOCore

/// Encodes and decodes tunnel frames. Stateless: a WebSocket message always holds whole frames, so decoding
/// never has to wait for more bytes — a frame cut short is a protocol error.
public enum MuxFrameCodec {
    // MARK: Encoding

    /// Appends a DATA frame header; the caller appends exactly `length` payload bytes after it. Lets the
    /// scheduler copy payload straight from the stream's queue into the message.
    @inlinable
    public static func writeDataHeader(streamID: StreamID, length: Int, fin: Bool, into buffer: inout ByteBuffer) {
        writeHeader(length: length, type: .data, flags: fin ? MuxFrame.finFlag : 0, streamID: streamID, into: &buffer)
    }

    @inlinable
    static func writeHeader(length: Int, type: MuxFrame.FrameType, flags: UInt8, streamID: StreamID,
                            into buffer: inout ByteBuffer) {
        precondition(length <= MuxFrame.maxPayloadSize)
        // length (24) | type (8) as one word, then flags (8), then stream id (32)
        buffer.writeMultipleIntegers(UInt32(length) << 8 | UInt32(type.rawValue), flags, streamID.rawValue)
    }

    /// Appends one whole frame to `buffer`.
    public static func encode(_ frame: MuxFrame, into buffer: inout ByteBuffer) {
        switch frame {
        case .data(let id, var payload, let fin):
            writeDataHeader(streamID: id, length: payload.readableBytes, fin: fin, into: &buffer)
            buffer.writeBuffer(&payload)
        case .open(let id, let request):
            var flags: UInt8 = request.kind == .datagram ? MuxFrame.datagramFlag : 0
            var body: [UInt8] = []
            if let listener = request.listener {
                flags |= MuxFrame.reverseFlag
                body = [UInt8(listener.rawValue >> 24), UInt8(listener.rawValue >> 16 & 0xFF),
                        UInt8(listener.rawValue >> 8 & 0xFF), UInt8(listener.rawValue & 0xFF)]
            }
            body += targetBytes(request.target)
            writeHeader(length: body.count, type: .open, flags: flags, streamID: id, into: &buffer)
            buffer.writeBytes(body)
        case .openOK(let id, let bound):
            let body = bound.map(targetBytes) ?? []
            writeHeader(length: body.count, type: .openOK, flags: 0, streamID: id, into: &buffer)
            buffer.writeBytes(body)
        case .listen(let id, let request):
            let body = targetBytes(request.bind)
            writeHeader(length: body.count, type: .listen, flags: request.kind == .datagram ? MuxFrame.datagramFlag : 0,
                        streamID: id, into: &buffer)
            buffer.writeBytes(body)
        case .reset(let id, let code, let reason):
            let text = truncated(reason)
            writeHeader(length: 1 + text.count, type: .reset, flags: 0, streamID: id, into: &buffer)
            buffer.writeInteger(code.rawValue)
            buffer.writeBytes(text)
        case .windowUpdate(let id, let increment):
            writeHeader(length: 4, type: .windowUpdate, flags: 0, streamID: id, into: &buffer)
            buffer.writeInteger(increment)
        case .ping(let opaque):
            writeHeader(length: 8, type: .ping, flags: 0, streamID: .session, into: &buffer)
            buffer.writeInteger(opaque)
        case .pong(let opaque):
            writeHeader(length: 8, type: .pong, flags: 0, streamID: .session, into: &buffer)
            buffer.writeInteger(opaque)
        case .goAway(let last, let code, let reason):
            let text = truncated(reason)
            writeHeader(length: 5 + text.count, type: .goAway, flags: 0, streamID: .session, into: &buffer)
            buffer.writeInteger(last.rawValue)
            buffer.writeInteger(code.rawValue)
            buffer.writeBytes(text)
        case .hello(let hello):
            writeHeader(length: 13, type: .hello, flags: 0, streamID: .session, into: &buffer)
            buffer.writeMultipleIntegers(hello.version, hello.initialWindow, hello.maxMessageSize, hello.features.rawValue)
        case .unknown(let type, let id):
            buffer.writeMultipleIntegers(UInt32(type), UInt8(0), id.rawValue)
        }
    }

    /// A RESET or GOAWAY reason as the peer wrote it, made safe once, here, for every log line and message it
    /// reaches: control characters and line feeds escaped, at most 200 characters (invalid UTF-8 replaced).
    static func peerText(_ payload: inout ByteBuffer) -> String {
        let bytes = payload.readBytes(length: payload.readableBytes) ?? []
        return LogText.bounded(String(decoding: bytes, as: UTF8.self))
    }

    static func truncated(_ reason: String) -> ArraySlice<UInt8> {
        var bytes = Array(reason.utf8)[...]
        if bytes.count > MuxFrame.maxReasonBytes {
            bytes = bytes.prefix(MuxFrame.maxReasonBytes)
            // Do not cut a UTF-8 sequence in half.
            while let last = bytes.last, last & 0xC0 == 0x80 { bytes = bytes.dropLast() }
            if let last = bytes.last, last & 0x80 != 0 { bytes = bytes.dropLast() }
        }
        return bytes
    }

    static func targetBytes(_ target: MuxTarget) -> [UInt8] {
        var out: [UInt8] = []
        switch target.host {
        case .ipv4(let a):
            out = [1, UInt8(a >> 24), UInt8(a >> 16 & 0xFF), UInt8(a >> 8 & 0xFF), UInt8(a & 0xFF)]
        case .ipv6(let b):
            out = [4] + b
        case .name(let n):
            let bytes = Array(n.utf8.prefix(255))
            out = [3, UInt8(bytes.count)] + bytes
        }
        out.append(UInt8(target.port >> 8))
        out.append(UInt8(target.port & 0xFF))
        return out
    }

    // MARK: Decoding

    /// Reads the next frame from a message. Returns nil when the message is used up.
    public static func decode(from buffer: inout ByteBuffer) throws(MuxProtocolError) -> MuxFrame? {
        guard buffer.readableBytes > 0 else { return nil }
        guard let (word, flags, rawID) = buffer.readMultipleIntegers(as: (UInt32, UInt8, UInt32).self) else {
            throw MuxProtocolError(.truncatedFrame, "a frame header was cut short (\(buffer.readableBytes) bytes left)")
        }
        let length = Int(word >> 8)
        let typeByte = UInt8(word & 0xFF)
        let id = StreamID(rawID)
        guard var payload = buffer.readSlice(length: length) else {
            throw MuxProtocolError(.truncatedFrame,
                                   "frame of type \(typeByte) announces \(length) bytes but the message has \(buffer.readableBytes)")
        }
        guard let type = MuxFrame.FrameType(rawValue: typeByte) else { return .unknown(type: typeByte, id) }

        func requireStream() throws(MuxProtocolError) {
            if id.isSession { throw MuxProtocolError(.badStreamID, "\(type) frame on stream 0") }
        }
        func requireSession() throws(MuxProtocolError) {
            if !id.isSession { throw MuxProtocolError(.badStreamID, "\(type) frame on stream \(id), expected 0") }
        }
        func requireLength(_ n: Int) throws(MuxProtocolError) {
            if length != n { throw MuxProtocolError(.badLength, "\(type) frame with \(length) bytes, expected \(n)") }
        }

        switch type {
        case .data:
            try requireStream()
            return .data(id, payload, fin: flags & MuxFrame.finFlag != 0)
        case .open:
            try requireStream()
            var listener: StreamID? = nil
            if flags & MuxFrame.reverseFlag != 0 {
                guard let raw = payload.readInteger(as: UInt32.self), raw != 0 else {
                    throw MuxProtocolError(.badTarget, "reverse OPEN without its listener's stream ID")
                }
                listener = StreamID(raw)
            }
            let kind: MuxStreamKind = flags & MuxFrame.datagramFlag != 0 ? .datagram : .stream
            return .open(id, MuxOpenRequest(target: try decodeTarget(&payload), kind: kind, listener: listener))
        case .openOK:
            try requireStream()
            return .openOK(id, bound: length == 0 ? nil : try decodeTarget(&payload))
        case .listen:
            try requireStream()
            let kind: MuxStreamKind = flags & MuxFrame.datagramFlag != 0 ? .datagram : .stream
            return .listen(id, MuxListenRequest(bind: try decodeTarget(&payload, allowingPortZero: true), kind: kind))
        case .reset:
            try requireStream()
            guard let code = payload.readInteger(as: UInt8.self) else {
                throw MuxProtocolError(.badLength, "RESET without a reason code")
            }
            return .reset(id, ResetCode(wireValue: code), reason: Self.peerText(&payload))
        case .windowUpdate:
            try requireStream()
            try requireLength(4)
            let increment = payload.readInteger(as: UInt32.self)!
            guard increment > 0, increment <= 0x7FFF_FFFF else {
                throw MuxProtocolError(.badWindowUpdate, "WINDOW_UPDATE of \(increment) on stream \(id)")
            }
            return .windowUpdate(id, increment: increment)
        case .ping, .pong:
            try requireSession()
            try requireLength(8)
            let opaque = payload.readInteger(as: UInt64.self)!
            return type == .ping ? .ping(opaque) : .pong(opaque)
        case .goAway:
            try requireSession()
            guard let (last, code) = payload.readMultipleIntegers(as: (UInt32, UInt8).self) else {
                throw MuxProtocolError(.badLength, "GOAWAY shorter than 5 bytes")
            }
            return .goAway(lastStreamID: StreamID(last), code: ResetCode(wireValue: code), reason: Self.peerText(&payload))
        case .hello:
            try requireSession()
            guard length >= 9, let (version, window, maxMessage) = payload.readMultipleIntegers(as: (UInt8, UInt32, UInt32).self)
            else { throw MuxProtocolError(.badLength, "HELLO shorter than 9 bytes") }
            // The features word came later: a 9-byte HELLO announces none; bytes after it are for later versions.
            let features = payload.readInteger(as: UInt32.self).map(MuxFeatures.init(rawValue:)) ?? []
            return .hello(MuxHello(version: version, initialWindow: window, maxMessageSize: maxMessage, features: features))
        }
    }

    static func decodeTarget(_ payload: inout ByteBuffer, allowingPortZero: Bool = false) throws(MuxProtocolError) -> MuxTarget {
        guard let kind = payload.readInteger(as: UInt8.self) else {
            throw MuxProtocolError(.badTarget, "OPEN without a target")
        }
        let host: MuxTarget.Host
        switch kind {
        case 1:
            guard let a = payload.readInteger(as: UInt32.self) else { throw MuxProtocolError(.badTarget, "IPv4 target cut short") }
            host = .ipv4(a)
        case 4:
            guard let b = payload.readBytes(length: 16) else { throw MuxProtocolError(.badTarget, "IPv6 target cut short") }
            host = .ipv6(b)
        case 3:
            guard let n = payload.readInteger(as: UInt8.self), n > 0, let name = payload.readBytes(length: Int(n)),
                name.allSatisfy({ $0 > 0x20 && $0 < 0x7F })
            else { throw MuxProtocolError(.badTarget, "host name target is empty, cut short or not printable ASCII") }
            host = .name(String(decoding: name, as: UTF8.self).lowercased())
        default:
            throw MuxProtocolError(.badTarget, "unknown target address type \(kind)")
        }
        guard let port = payload.readInteger(as: UInt16.self), port != 0 || allowingPortZero, payload.readableBytes == 0 else {
            throw MuxProtocolError(.badTarget, "target port missing, zero, or followed by extra bytes")
        }
        return MuxTarget(host: host, port: port)
    }
}
