import Crypto
import CryptoExtras
import Foundation

/// How a token is kept in the users file: `sha256:<hex>` of the token, so the file never holds a secret a
/// reader could replay. Tokens are long and random, so a fast hash is enough for them (unlike passwords).
public struct TokenDigest: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init(of token: String) {
        self.bytes = Array(SHA256.hash(data: Data(token.utf8)))
    }

    private init(bytes: [UInt8]) {
        self.bytes = bytes
    }

    public static func parse(_ text: String) -> TokenDigest? {
        guard text.hasPrefix("sha256:") else { return nil }
        let hex = Array(text.dropFirst(7).utf8)
        guard hex.count == 64 else { return nil }
        var bytes: [UInt8] = []
        for i in stride(from: 0, to: 64, by: 2) {
            guard let b = UInt8(String(decoding: hex[i..<i + 2], as: UTF8.self), radix: 16) else { return nil }
            bytes.append(b)
        }
        return TokenDigest(bytes: bytes)
    }

    /// A new token: 32 random bytes, base64url without padding (a valid subprotocol token for browsers).
    public static func makeToken() -> String {
        var rng = SystemRandomNumberGenerator()
        let bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
        return Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    public var description: String { "sha256:" + bytes.map { String(format: "%02x", $0) }.joined() }
}

/// A password as the users file keeps it: salted scrypt (`scrypt:N=16384,r=8,p=1:<salt>:<hash>`, base64), slow
/// on purpose so a stolen file does not give the passwords away. Checking one costs ~50 ms and 16 MiB, so it
/// runs off the event loop, and failures are throttled.
public struct PasswordHash: Sendable, Equatable, CustomStringConvertible {
    public let rounds: Int
    public let blockSize: Int
    public let parallelism: Int
    public let salt: [UInt8]
    public let hash: [UInt8]

    public static func make(password: String, rounds: Int = 1 << 14) throws -> PasswordHash {
        var rng = SystemRandomNumberGenerator()
        let salt = (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let hash = try derive(password, salt: salt, rounds: rounds, blockSize: 8, parallelism: 1)
        return PasswordHash(rounds: rounds, blockSize: 8, parallelism: 1, salt: salt, hash: hash)
    }

    public static func parse(_ text: String) -> PasswordHash? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0] == "scrypt" else { return nil }
        var params: [String: Int] = [:]
        for item in parts[1].split(separator: ",") {
            let kv = item.split(separator: "=")
            guard kv.count == 2, let value = Int(kv[1]) else { return nil }
            params[String(kv[0])] = value
        }
        guard let n = params["N"], let r = params["r"], let p = params["p"], n >= 1024, n <= 1 << 20, n & (n - 1) == 0,
            (1...32).contains(r), (1...16).contains(p),
            let salt = Data(base64Encoded: String(parts[2])), salt.count >= 8,
            let hash = Data(base64Encoded: String(parts[3])), hash.count >= 16
        else { return nil }
        return PasswordHash(rounds: n, blockSize: r, parallelism: p, salt: Array(salt), hash: Array(hash))
    }

    /// Slow: call off the event loop.
    public func verify(_ password: String) -> Bool {
        guard let candidate = try? Self.derive(password, salt: salt, rounds: rounds, blockSize: blockSize,
                                               parallelism: parallelism, length: hash.count)
        else { return false }
        return constantTimeEquals(candidate, hash)
    }

    private static func derive(_ password: String, salt: [UInt8], rounds: Int, blockSize: Int, parallelism: Int,
                               length: Int = 32) throws -> [UInt8] {
        let key = try KDF.Scrypt.deriveKey(from: Array(password.utf8), salt: salt, outputByteCount: length,
                                           rounds: rounds, blockSize: blockSize, parallelism: parallelism)
        return key.withUnsafeBytes { Array($0) }
    }

    public var description: String {
        "scrypt:N=\(rounds),r=\(blockSize),p=\(parallelism):\(Data(salt).base64EncodedString()):\(Data(hash).base64EncodedString())"
    }
}
