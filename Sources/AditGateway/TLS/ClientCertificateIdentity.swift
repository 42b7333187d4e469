import NIOCore
import NIOSSL
import X509

/// The names a verified client certificate carries, as the users file spells them: `CN=alice` from the subject,
/// and `DNS:…`, `email:…`, `URI:…`, `IP:…` from its subject alternative names.
enum ClientCertificateIdentity {
    static func of(_ channel: any Channel) -> [String] {
        guard let handler = try? channel.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self),
            let peer = handler.peerCertificate, let der = try? peer.toDERBytes(),
            let certificate = try? Certificate(derEncoded: der)
        else { return [] }
        return identities(of: certificate)
    }

    static func identities(of certificate: Certificate) -> [String] {
        var names: [String] = []
        for rdn in certificate.subject {
            for attribute in rdn where attribute.type == .RDNAttributeType.commonName {
                names.append("CN=\(attribute.value)")
            }
        }
        if let alternatives = try? certificate.extensions.subjectAlternativeNames {
            for name in alternatives {
                switch name {
                case .dnsName(let dns): names.append("DNS:\(dns)")
                case .rfc822Name(let email): names.append("email:\(email)")
                case .uniformResourceIdentifier(let uri): names.append("URI:\(uri)")
                case .ipAddress(let bytes):
                    let raw = Array(bytes.bytes)
                    if raw.count == 4 {
                        names.append("IP:" + raw.map(String.init).joined(separator: "."))
                    } else if raw.count == 16, let text = try? SocketAddress(packedIPAddress: ByteBuffer(bytes: raw), port: 0).ipAddress {
                        names.append("IP:\(text)")
                    }
                default: break
                }
            }
        }
        return names
    }
}
