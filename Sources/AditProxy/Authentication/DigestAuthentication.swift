import Crypto
import Foundation

/// HTTP Digest (RFC 7616) for a CONNECT request: MD5 and SHA-256, with or without `-sess`, qop=auth (or the
/// RFC 2069 form when the proxy offers no qop). The `uri` is the CONNECT target in authority form, as squid
/// expects.
public struct DigestAuthentication: Sendable, Equatable {
    public enum Algorithm: String, Sendable, CaseIterable {
        case md5 = "MD5"
        case md5Session = "MD5-sess"
        case sha256 = "SHA-256"
        case sha256Session = "SHA-256-sess"

        var strength: Int { self == .sha256 || self == .sha256Session ? 2 : 1 }

        func hash(_ text: String) -> String {
            switch self {
            case .md5, .md5Session: return Insecure.MD5.hash(data: Data(text.utf8)).hex
            case .sha256, .sha256Session: return SHA256.hash(data: Data(text.utf8)).hex
            }
        }

        var isSession: Bool { self == .md5Session || self == .sha256Session }
    }

    public var realm: String
    public var nonce: String
    public var opaque: String?
    public var algorithm: Algorithm
    public var qopAuth: Bool
    public var stale: Bool
    public var userhash: Bool
    private var nonceCount = 0

    /// Nil when the challenge lacks a realm or nonce, asks for an algorithm we do not know, or offers only
    /// qop=auth-int (which would need the body of a request that has none).
    public init?(challenge: AuthenticationChallenge) {
        guard challenge.scheme == "digest", let realm = challenge.parameters["realm"],
            let nonce = challenge.parameters["nonce"]
        else { return nil }
        let name = challenge.parameters["algorithm"] ?? "MD5"
        guard let algorithm = Algorithm.allCases.first(where: { $0.rawValue.lowercased() == name.lowercased() }) else {
            return nil
        }
        let qops = (challenge.parameters["qop"] ?? "").split(separator: ",").map { $0.trimmingSpaces.lowercased() }
        if !qops.isEmpty && !qops.contains("auth") { return nil }
        self.realm = realm
        self.nonce = nonce
        self.opaque = challenge.parameters["opaque"]
        self.algorithm = algorithm
        self.qopAuth = qops.contains("auth")
        self.stale = challenge.parameters["stale"]?.lowercased() == "true"
        self.userhash = challenge.parameters["userhash"]?.lowercased() == "true"
    }

    /// The `Proxy-Authorization` value for CONNECT to `authority`; each call uses the next nonce count.
    public mutating func authorization(user: String, password: String, authority: String, method: String = "CONNECT",
                                       cnonce: String = DigestAuthentication.makeCnonce()) -> String {
        nonceCount += 1
        let nc = String(format: "%08x", nonceCount)
        var ha1 = algorithm.hash("\(user):\(realm):\(password)")
        if algorithm.isSession { ha1 = algorithm.hash("\(ha1):\(nonce):\(cnonce)") }
        let ha2 = algorithm.hash("\(method):\(authority)")
        let response = qopAuth
            ? algorithm.hash("\(ha1):\(nonce):\(nc):\(cnonce):auth:\(ha2)")
            : algorithm.hash("\(ha1):\(nonce):\(ha2)")
        let shownUser = userhash ? algorithm.hash("\(user):\(realm)") : user
        var parts = [
            "username=\(quoted(shownUser))", "realm=\(quoted(realm))", "nonce=\(quoted(nonce))",
            "uri=\(quoted(authority))", "algorithm=\(algorithm.rawValue)", "response=\(quoted(response))",
        ]
        if qopAuth { parts += ["qop=auth", "nc=\(nc)", "cnonce=\(quoted(cnonce))"] }
        if let opaque { parts.append("opaque=\(quoted(opaque))") }
        if userhash { parts.append("userhash=true") }
        return "Digest " + parts.joined(separator: ", ")
    }

    public static func makeCnonce() -> String {
        var rng = SystemRandomNumberGenerator()
        return (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &rng)) }.joined()
    }

    private func quoted(_ s: String) -> String {
        "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }
}

extension Sequence where Element == UInt8 {
    var hex: String { map { String(format: "%02x", $0) }.joined() }
}
