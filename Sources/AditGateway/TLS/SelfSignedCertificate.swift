import AditProxy
import Crypto
import Foundation
import NIOSSL
import SwiftASN1
import X509

/// `adit keygen`: a P-256 key and a self-signed certificate for the server, so that a quick start is wss://
/// with the client pinning the key — secure by default without a CA.
public struct SelfSignedCertificate: Sendable {
    public let certificatePEM: String
    public let privateKeyPEM: String
    public let pin: PublicKeyPin

    /// `names`: DNS names; `addresses`: IPv4/IPv6 literals. Both go into subjectAltName.
    public static func make(names: [String], addresses: [String], days: Int) throws -> SelfSignedCertificate {
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName {
            CommonName(names.first ?? addresses.first ?? "adit")
            OrganizationName("adit self-signed")
        }
        var alternatives: [GeneralName] = names.map { .dnsName($0) }
        for address in addresses {
            guard let bytes = IPAddressBytes.parse(address) else {
                throw ConfigurationError("--ip '\(address)' is not an IPv4 or IPv6 address")
            }
            alternatives.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(bytes))))
        }
        let now = Date()
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-300),
            notValidAfter: now.addingTimeInterval(Double(days) * 86_400),
            issuer: subject,
            subject: subject,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                // Its own issuer, so that it can be a trust root (--ca-file, --tls-ca): a CA that signs nothing else.
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(digitalSignature: true, keyCertSign: true))
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                SubjectAlternativeNames(alternatives)
            },
            issuerPrivateKey: .init(key))
        let pem = try certificate.serializeAsPEM().pemString
        let nio = try NIOSSLCertificate(bytes: Array(pem.utf8), format: .pem)
        return SelfSignedCertificate(certificatePEM: pem + "\n", privateKeyPEM: key.pemRepresentation + "\n",
                                     pin: try PublicKeyPin.of(nio))
    }
}
