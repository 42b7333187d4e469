import AditGateway
import AditMux
import AditProxy
import Crypto
import NIOSSL
import Testing

@Suite struct ArgumentParsingTests {
    @Test func forwardSpecsInSshSyntax() throws {
        let plain = try ForwardSpec.parse("8080:example.com:80")
        #expect(plain.bind == HostPort(host: "127.0.0.1", port: 8080))
        #expect(plain.target == MuxTarget(hostText: "example.com", port: 80))

        let bound = try ForwardSpec.parse("0.0.0.0:2222:10.0.0.5:22")
        #expect(bound.bind == HostPort(host: "0.0.0.0", port: 2222))
        #expect(bound.target.host == .ipv4(0x0A00_0005))

        let v6 = try ForwardSpec.parse("[::1]:8080:[2001:db8::1]:443")
        #expect(v6.bind == HostPort(host: "::1", port: 8080))
        #expect(v6.target.description == "[2001:db8::1]:443")

        let any = try ForwardSpec.parse("*:8080:h:1")
        #expect(any.bind.host == "0.0.0.0")
    }

    @Test(arguments: ["nonsense", "8080", "8080:host", "x:host:80", "8080:host:0", "8080::80", "1:2:3:4:5",
                      "[::1:8080:h:1", "8080:ho st:80", "[zz]:1:h:1"])
    func badForwardSpecsAreRejected(_ text: String) {
        #expect(throws: ConfigurationError.self) { _ = try ForwardSpec.parse(text) }
    }

    @Test func rawBridgeRoutes() throws {
        let vnc = try RawBridgeRoute.parse("/vnc=127.0.0.1:5900")
        #expect(vnc.path == "/vnc")
        #expect(vnc.target == MuxTarget(hostText: "127.0.0.1", port: 5900))
        let v6 = try RawBridgeRoute.parse("/a/b=[::1]:22")
        #expect(v6.path == "/a/b" && v6.target.description == "[::1]:22")
        let named = try RawBridgeRoute.parse("/db=db.internal:5432")
        #expect(named.target == MuxTarget(hostText: "db.internal", port: 5432))
        for bad in ["vnc=127.0.0.1:5900", "/vnc", "/vnc=127.0.0.1", "/vnc=127.0.0.1:0", "/v?x=1=h:1", "/vnc=h:99999"] {
            #expect(throws: ConfigurationError.self, "\(bad)") { _ = try RawBridgeRoute.parse(bad) }
        }
    }

    @Test func tunnelURLs() throws {
        let a = try TunnelURL.parse("ws://gw.example:8080/tunnel")
        #expect(a.host == "gw.example" && a.port == 8080 && a.path == "/tunnel")
        #expect(a.hostHeader == "gw.example:8080")
        let b = try TunnelURL.parse("ws://gw.example")
        #expect(b.port == 80 && b.path == "/" && b.hostHeader == "gw.example")
        let c = try TunnelURL.parse("ws://[::1]:9000/")
        #expect(c.host == "::1" && c.port == 9000 && c.hostHeader == "[::1]:9000")
        let d = try TunnelURL.parse("ws://[::1]/x?y=1")
        #expect(d.host == "::1" && d.port == 80 && d.path == "/x?y=1")
        #expect(throws: ConfigurationError.self) { _ = try TunnelURL.parse("http://x/") }
        #expect(throws: ConfigurationError.self) { _ = try TunnelURL.parse("ws://:80/") }
        #expect(throws: ConfigurationError.self) { _ = try TunnelURL.parse("ws://host:99999/") }
        #expect(throws: ConfigurationError.self) { _ = try TunnelURL.parse("ws://user:pw@host/") }
    }

    @Test func listenAddresses() throws {
        #expect(try HostPort.parse("0.0.0.0:8080", what: "--listen") == HostPort(host: "0.0.0.0", port: 8080))
        #expect(try HostPort.parse("[::]:0", what: "--listen", allowZeroPort: true) == HostPort(host: "::", port: 0))
        #expect(throws: ConfigurationError.self) { _ = try HostPort.parse("8080", what: "--listen") }
        #expect(throws: ConfigurationError.self) { _ = try HostPort.parse(":8080", what: "--listen") }
    }

    @Test func ipAddressText() {
        #expect(IPAddressText.parseIPv4("192.168.1.1") == 0xC0A8_0101)
        #expect(IPAddressText.parseIPv4("256.1.1.1") == nil)
        #expect(IPAddressText.parseIPv4("1.2.3") == nil)
        #expect(IPAddressText.parseIPv4("01.2.3.4444") == nil)
        #expect(IPAddressText.parseIPv6("::") == [UInt8](repeating: 0, count: 16))
        #expect(IPAddressText.parseIPv6("1::2::3") == nil)
        #expect(IPAddressText.parseIPv6("::ffff:1.2.3.4").map { Array($0[12...]) } == [1, 2, 3, 4])
        #expect(IPAddressText.formatIPv6(IPAddressText.parseIPv6("2001:db8:0:0:1:0:0:1")!) == "2001:db8::1:0:0:1")
        #expect(IPAddressText.formatIPv6(IPAddressText.parseIPv6("::1")!) == "::1")
    }
}

@Suite struct TLSTests {
    @Test func certificateNamesMatchAsRFC6125Says() {
        #expect(CertificateName.matches(pattern: "gw.example.com", host: "GW.Example.com."))
        #expect(CertificateName.matches(pattern: "*.example.com", host: "gw.example.com"))
        #expect(!CertificateName.matches(pattern: "*.example.com", host: "example.com"))
        #expect(!CertificateName.matches(pattern: "*.example.com", host: "a.gw.example.com"))
        #expect(!CertificateName.matches(pattern: "gw.example.com", host: "gw.example.com.evil"))
        #expect(!CertificateName.matches(pattern: "*.com", host: "example.org"))
    }

    @Test func pinsParseAndPrint() throws {
        let pin = try PublicKeyPin.parse("sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=")
        #expect(pin.description == "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=")
        for bad in ["47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", "sha256/abc", "sha1/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="] {
            #expect(throws: ConfigurationError.self) { _ = try PublicKeyPin.parse(bad) }
        }
    }

    @Test func keygenMakesACertificateWhosePinMatchesItsKey() throws {
        let made = try SelfSignedCertificate.make(names: ["localhost"], addresses: ["127.0.0.1", "::1"], days: 1)
        #expect(made.certificatePEM.hasPrefix("-----BEGIN CERTIFICATE-----"))
        #expect(made.privateKeyPEM.contains("PRIVATE KEY"))
        // The pin is the SHA-256 of the key's SubjectPublicKeyInfo: derived here from the private key itself…
        let key = try P256.Signing.PrivateKey(pemRepresentation: made.privateKeyPEM)
        #expect(made.pin.digest == Array(SHA256.hash(data: key.publicKey.derRepresentation)))
        // …and it is the pin a client computes from the certificate the server presents.
        let certificate = try NIOSSLCertificate(bytes: Array(made.certificatePEM.utf8), format: .pem)
        #expect(try PublicKeyPin.of(certificate) == made.pin)
        let again = try SelfSignedCertificate.make(names: ["localhost"], addresses: [], days: 1)
        #expect(again.pin != made.pin)  // a fresh key each time
        #expect(throws: ConfigurationError.self) { _ = try SelfSignedCertificate.make(names: [], addresses: ["nope"], days: 1) }
    }
}

@Suite struct ProxyRouteTests {
    let server = try! TunnelURL.parse("ws://gw.example:8080/")

    @Test func chainsTakeEachHopsUserAndSharePasswords() throws {
        let (route, why) = try ProxyRoute.resolve(
            proxy: ["http://near:3128", "http://bob@far:8080"], noProxy: false, user: "alice", passwordFile: nil,
            connectHeaders: [], server: server, environment: ["ADIT_PROXY_PASSWORD": "pw"])
        let r = try #require(route)
        #expect(why == "--proxy")
        #expect(r.url.host == "near" && r.credentials == ProxyCredentials(user: "alice", password: "pw"))
        #expect(r.next.map(\.url.host) == ["far"])
        #expect(r.next[0].credentials == ProxyCredentials(user: "bob", password: "pw"))
    }

    @Test func badRoutesAreOneSentence() {
        #expect(throws: ConfigurationError.self) {
            _ = try ProxyRoute.resolve(proxy: ["http://near:3128", "socks5://s:1080"], noProxy: false, user: nil,
                                       passwordFile: nil, connectHeaders: [], server: server, environment: [:])
        }
        #expect(throws: ConfigurationError.self) {   // a user without a password
            _ = try ProxyRoute.resolve(proxy: ["http://p:3128"], noProxy: false, user: "alice", passwordFile: nil,
                                       connectHeaders: [], server: server, environment: [:])
        }
        #expect(throws: ConfigurationError.self) {
            _ = try ProxyRoute.resolve(proxy: ["http://p:3128"], noProxy: false, user: "alice",
                                       passwordFile: "/nonexistent/adit-pass", connectHeaders: [], server: server,
                                       environment: [:])
        }
    }

    @Test func noProxyAndTheEnvironment() throws {
        let (none, why) = try ProxyRoute.resolve(proxy: [], noProxy: false, user: nil, passwordFile: nil,
                                                 connectHeaders: [], server: server,
                                                 environment: ["http_proxy": "http://p:1", "no_proxy": ".example"])
        #expect(none == nil && why == "gw.example matches no_proxy entry '.example'")
        let (env, _) = try ProxyRoute.resolve(proxy: [], noProxy: false, user: nil, passwordFile: nil, connectHeaders: [],
                                              server: server, environment: ["http_proxy": "http://u:p@p:1"])
        #expect(env?.credentials == ProxyCredentials(user: "u", password: "p"))
    }
}
