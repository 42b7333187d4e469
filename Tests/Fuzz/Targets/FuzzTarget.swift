import AditConfiguration
import AditGateway
import AditMux
import AditProxy
import AditTransport
import AditWebSocket
import NIOCore
import NIOHTTP1

/// Every parser and state machine a peer (or an operator's file) can feed, as a fuzz target: libFuzzer drives them through the
/// `adit-fuzz` driver (`make fuzz`), and `FuzzCorpusTests` replays the corpus in every `make test`.
///
/// A target returns normally for any input, rejected or not; a crash, a trap (overflow, out of bounds), a hang or
/// a broken invariant (`check`) is a finding.
public enum FuzzTarget: String, CaseIterable, Sendable {
    case muxFrames = "mux-frames"
    case muxSession = "mux-session"
    case webSocketFrames = "websocket-frames"
    case deflate
    case extensionOffers = "extension-offers"
    case httpRequestHead = "http-request-head"
    case httpResponse = "http-response"
    case proxyChallenges = "proxy-challenges"
    case socks5Client = "socks5-client"
    case socksFront = "socks-front"
    case httpProxyFront = "http-proxy-front"
    case usersFile = "users-file"
    case configFile = "config-file"

    public func run(_ data: [UInt8]) {
        switch self {
        case .muxFrames: Self.muxFrames(data)
        case .muxSession: MuxSessionFuzzer.run(data)
        case .webSocketFrames: Self.webSocketFrames(data)
        case .deflate: Self.deflate(data)
        case .extensionOffers: Self.extensionOffers(data)
        case .httpRequestHead: Self.httpRequestHead(data)
        case .httpResponse: Self.httpResponse(data)
        case .proxyChallenges: Self.proxyChallenges(data)
        case .socks5Client: Self.socks5Client(data)
        case .socksFront: Self.socksFront(data)
        case .httpProxyFront: Self.httpProxyFront(data)
        case .usersFile: Self.usersFile(data)
        case .configFile: Self.configFile(data)
        }
    }

    /// An invariant of the code under test; a finding when false (traps, so libFuzzer keeps the input).
    static func check(_ condition: @autoclosure () -> Bool, _ what: @autoclosure () -> String) {
        if !condition() { fatalError("fuzz invariant broken: \(what())") }
    }

    private static let allocator = ByteBufferAllocator()

    private static func buffer(_ bytes: [UInt8]) -> ByteBuffer { allocator.buffer(bytes: bytes) }

    /// Decoding never traps, and what decodes re-encodes to bytes that decode to the same frame.
    static func muxFrames(_ data: [UInt8]) {
        var input = buffer(data)
        while true {
            let frame: MuxFrame?
            do { frame = try MuxFrameCodec.decode(from: &input) } catch { return }
            guard let frame else { return }
            var encoded = allocator.buffer(capacity: 64)
            MuxFrameCodec.encode(frame, into: &encoded)
            let again = try? MuxFrameCodec.decode(from: &encoded)
            check(again.map(withoutPeerText) == withoutPeerText(frame), "\(frame) does not survive encode/decode")
            check(encoded.readableBytes == 0, "re-decoding \(frame) left \(encoded.readableBytes) B")
        }
    }

    /// Reasons are escaped and bounded where they are decoded (they end up in logs), so they are not expected to
    /// come back byte for byte; everything else is.
    private static func withoutPeerText(_ frame: MuxFrame) -> MuxFrame {
        switch frame {
        case .reset(let id, let code, _): return .reset(id, code, reason: "")
        case .goAway(let last, let code, _): return .goAway(lastStreamID: last, code: code, reason: "")
        default: return frame
        }
    }

    /// Frames split anywhere: the parser never traps, never returns more payload than its bound.
    static func webSocketFrames(_ data: [UInt8]) {
        var input = FuzzInput(data)
        let role: WebSocketFrameParser.Role = input.byte() & 1 == 0 ? .server : .client
        let bound = 1 << 16
        var parser = WebSocketFrameParser(role: role, maxFramePayload: bound)
        for chunk in FuzzInput.chunks(input.remaining) {
            parser.append(buffer(chunk))
            while true {
                let frame: WebSocketFrame?
                do { frame = try parser.next(allocator: allocator) } catch { return }
                guard let frame else { break }
                check(frame.payload.readableBytes <= bound, "a frame of \(frame.payload.readableBytes) B past the \(bound) B bound")
            }
        }
    }

    /// A hostile deflate stream: inflating never traps and never writes past the limit (a bomb is cut there).
    static func deflate(_ data: [UInt8]) {
        var input = FuzzInput(data)
        let windowBits = 9 + Int(input.byte() % 7)
        let limit = 1 << 16
        guard let inflater = try? DeflateDecompressor(windowBits: windowBits) else { return }
        var output = allocator.buffer(capacity: 1024)
        for chunk in FuzzInput.chunks(input.remaining) {
            do {
                try inflater.inflate(buffer(chunk), into: &output, limit: limit)
                check(output.readableBytes <= limit, "inflated \(output.readableBytes) B past the \(limit) B limit")
                if chunk.first.map({ $0 & 0x80 != 0 }) ?? false {
                    try inflater.finishMessage(into: &output, limit: limit)
                    check(output.readableBytes <= limit, "finished at \(output.readableBytes) B past the limit")
                    output.clear()
                }
            } catch {
                return
            }
        }
    }

    /// Sec-WebSocket-Extensions as a client or browser may send it, then the server's negotiation of it.
    static func extensionOffers(_ data: [UInt8]) {
        let text = String(decoding: data, as: UTF8.self)
        guard let offers = try? WebSocketExtensionOffer.parse(text.split(separator: "\n").map(String.init)) else { return }
        _ = PerMessageDeflateNegotiation.accept(offers: offers, policy: PerMessageDeflatePolicy())
    }

    /// The server's upgrade request head, split anywhere; what follows the head is kept byte for byte.
    static func httpRequestHead(_ data: [UInt8]) {
        var parser = HTTPRequestHeadParser()
        var fed = 0
        for chunk in FuzzInput.chunks(data) {
            fed += chunk.count
            let result: HTTPRequestHeadParser.Result
            do { result = try parser.append(buffer(chunk)) } catch { return }
            if case .head(let head, let rest) = result {
                check(rest.readableBytes <= fed, "more bytes after the head than were fed")
                _ = try? HTTPBodyFramer.framing(of: head)
                return
            }
        }
    }

    /// A proxy's or server's answer: the head, its body framing, and the CONNECT state machine's reading of it.
    static func httpResponse(_ data: [UInt8]) {
        var parser = HTTPResponseHeadParser()
        var chunks = FuzzInput.chunks(data)[...]
        while let chunk = chunks.popFirst() {
            let result: HTTPResponseHeadParser.Result
            do { result = try parser.append(buffer(chunk)) } catch { return }
            guard case .head(let head, let rest) = result else { continue }
            var machine = ProxyConnectStateMachine(target: "example.com:443",
                                                   credentials: ProxyCredentials(user: "alice", password: "pw"))
            _ = machine.connectionOpened()
            _ = machine.receivedResponse(head, bodyStart: String(decoding: rest.readableBytesView.prefix(512), as: UTF8.self),
                                         willClose: false)
            var body = HTTPBodyReader(head: head, noBody: false)
            var pending = rest
            while true {
                do { _ = try body.consume(pending) } catch { return }
                guard let next = chunks.popFirst() else { return }
                pending = buffer(next)
            }
        }
    }

    /// Proxy-Authenticate challenges (Basic, Digest, NTLM, Negotiate) and the answers built from them.
    static func proxyChallenges(_ data: [UInt8]) {
        var input = FuzzInput(data)
        let selector = input.byte()
        if selector & 1 == 0 {
            let text = String(decoding: input.remaining, as: UTF8.self)
            for challenge in AuthenticationChallenge.parse(text.split(separator: "\n").map(String.init)) {
                if var digest = DigestAuthentication(challenge: challenge) {
                    _ = digest.authorization(user: "alice", password: "pw", authority: "example.com:443")
                }
            }
        } else if let challenge = try? NTLM.parseChallenge(input.remaining) {
            _ = NTLM.authenticateMessage(challenge: challenge, user: "DOMAIN\\alice", password: "pw")
        }
    }

    /// The SOCKS5 upstream proxy's answers, split anywhere.
    static func socks5Client(_ data: [UInt8]) {
        var input = FuzzInput(data)
        let selector = input.byte()
        let destination: SOCKS5StateMachine.Destination = selector & 1 == 0 ? .name("example.com", port: 443)
            : .ipv4([192, 0, 2, 1], port: 443)
        var machine = SOCKS5StateMachine(destination: destination,
                                         credentials: selector & 2 == 0 ? nil : ProxyCredentials(user: "u", password: "p"))
        _ = machine.start()
        for chunk in FuzzInput.chunks(input.remaining) {
            switch machine.receive(chunk) {
            case .fail, .established: return
            default: continue
            }
        }
    }

    /// What an application sends the client's SOCKS front: SOCKS4/4a requests, RFC 1929 credentials, UDP
    /// ASSOCIATE datagrams.
    static func socksFront(_ data: [UInt8]) {
        var input = FuzzInput(data)
        let selector = input.byte() % 3
        var bytes = buffer(input.remaining)
        switch selector {
        case 0: _ = try? SOCKSFrontProtocol.parseSOCKS4(&bytes)
        case 1: _ = try? SOCKSFrontProtocol.parseUsernamePassword(&bytes)
        default:
            if let (target, payload) = SOCKSFrontProtocol.parseUDPRequest(bytes) {
                let header = SOCKSFrontProtocol.udpReplyHeader(from: target, allocator: allocator, payload: payload)
                check(SOCKSFrontProtocol.parseUDPRequest(header) != nil, "a reply header we write does not parse")
            }
        }
    }

    /// What an application sends the client's HTTP proxy front: the request head and the proxy's decision.
    static func httpProxyFront(_ data: [UInt8]) {
        var parser = HTTPRequestHeadParser()
        for chunk in FuzzInput.chunks(data) {
            guard case .head(let head, _)? = try? parser.append(buffer(chunk)) else { continue }
            _ = HTTPProxyRequest.decide(head, credentials: nil)
            _ = HTTPProxyRequest.decide(head, credentials: LocalCredentials(user: "app", password: "pw"))
            _ = HTTPProxyRequest.keepAlive(head)
            return
        }
    }

    /// A users file as an operator may write it (or a broken copy of one): parsed or refused, never a trap.
    static func usersFile(_ data: [UInt8]) {
        _ = try? UsersFile.parse(String(decoding: data, as: UTF8.self), path: "fuzz.yaml")
    }

    /// Commands shaped like adit's (a scalar, a list, a switch, a short-only flag), for the `--config` reader.
    private static let configCatalogs = [
        OptionCatalog(command: "server", options: [
            .init(key: "listen", spellings: ["--listen"], defaultValue: "127.0.0.1:8080"),
            .init(key: "allow", spellings: ["--allow"], isRepeating: true),
            .init(key: "keepalive-timeout", spellings: ["--keepalive-timeout"]),
        ], positionalKey: nil),
        OptionCatalog(command: "client", options: [
            .init(key: "server", spellings: ["--server"], isRepeating: true),
            .init(key: "forward", spellings: ["-L"], isRepeating: true),
            .init(key: "insecure", spellings: ["--insecure"], isFlag: true),
        ], positionalKey: "server"),
    ]

    /// A `--config` file as an operator may write it, or break it: its sections and keys, or an error with a line.
    static func configFile(_ data: [UInt8]) {
        let text = String(decoding: data, as: UTF8.self)
        guard let sections = try? ConfigFile.sections(ofYAML: text, path: "fuzz.yaml", catalogs: configCatalogs) else { return }
        for (name, entries) in sections {
            let catalog = configCatalogs.first { $0.command == name }
            check(catalog != nil, "a section `\(name)` that is not a command was accepted")
            for (key, entry) in entries {
                check(catalog?.option(forKey: key) != nil, "an unknown key `\(name).\(key)` was accepted")
                check(entry.line >= 1, "`\(name).\(key)` has no line")
            }
        }
    }
}
