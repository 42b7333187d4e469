import Crypto
import Foundation
import NIOSSL

/// `sha256/BASE64`: the SHA-256 of a certificate's SubjectPublicKeyInfo (as in HPKP and curl's
/// `--pinnedpubkey`). A pin survives certificate renewals that keep the key.
public struct PublicKeyPin: Sendable, Hashable, CustomStringConvertible {
    public let digest: [UInt8]

    public init(digest: [UInt8]) {
        self.digest = digest
    }

    public static func parse(_ text: String) throws(ConfigurationError) -> PublicKeyPin {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard trimmed.lowercased().hasPrefix("sha256/"), let data = Data(base64Encoded: String(trimmed.dropFirst(7))),
            data.count == 32
        else {
            throw ConfigurationError(
                "--pin '\(text)' must be sha256/ and the base64 SHA-256 of the server's public key (44 characters), as `adit keygen` prints it")
        }
        return PublicKeyPin(digest: Array(data))
    }

    public static func of(_ certificate: NIOSSLCertificate) throws -> PublicKeyPin {
        let spki = try certificate.extractPublicKey().toSPKIBytes()
        return PublicKeyPin(digest: Array(SHA256.hash(data: spki)))
    }

    public var description: String { "sha256/" + Data(digest).base64EncodedString() }
}
