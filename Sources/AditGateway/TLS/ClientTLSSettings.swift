import AditProxy
import Foundation
import NIOCore
import NIOSSL

/// How the client checks the server on `wss://` (and presents itself, for mTLS).
public struct ClientTLSSettings: Sendable {
    /// Extra roots besides the system's (a corporate TLS-inspection CA, or a self-signed server certificate).
    public var caFile: String?
    /// The server's key must match one of these, besides passing verification.
    public var pins: [PublicKeyPin] = []
    /// The pins replace certificate verification (for a self-signed certificate without `caFile`).
    public var pinOnly = false
    /// No verification at all (`--insecure`).
    public var insecure = false
    /// Name for SNI and verification instead of the URL's host.
    public var serverName: String?
    /// Client certificate chain and key (PEM), for servers that ask for one.
    public var certificateFile: String?
    public var keyFile: String?

    public init() {}

    /// `host` is what the certificate must name (checked by `TLSReadyHandler`).
    func makeContext(host: String) throws(ConfigurationError) -> NIOSSLContext {
        try requireFiles([("--ca-file", caFile), ("--tls-cert", certificateFile), ("--tls-key", keyFile)])
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.applicationProtocols = ["http/1.1"]
        if let caFile { configuration.additionalTrustRoots = [.file(caFile)] }
        if insecure || pinOnly {
            configuration.certificateVerification = .none
        } else {
            // The chain is verified here; the name or address after the handshake (TLSReadyHandler), against
            // the URL's host only: NIOSSL also accepts an IP name matching the socket's peer, which behind a
            // proxy is the proxy.
            configuration.certificateVerification = .noHostnameVerification
        }
        do {
            if let certificateFile {
                configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificateFile).map { .certificate($0) }
                guard let keyFile else { throw ConfigurationError("--tls-cert needs --tls-key with the certificate's private key") }
                configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem))
            }
            return try NIOSSLContext(configuration: configuration)
        } catch let error as ConfigurationError {
            throw error
        } catch {
            throw ConfigurationError("the TLS settings cannot be used: \(error) (check --ca-file, --tls-cert and --tls-key: PEM files)")
        }
    }
}

extension ClientTLSSettings {
    /// For an https:// proxy: full verification of the proxy's certificate (its name, or its address, which
    /// here is the socket's peer), with the system roots and `caFile`.
    func makeProxyContext() throws(ConfigurationError) -> NIOSSLContext {
        try requireFiles([("--ca-file", caFile)])
        var configuration = TLSConfiguration.makeClientConfiguration()
        if let caFile { configuration.additionalTrustRoots = [.file(caFile)] }
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw ConfigurationError("the TLS settings for the https:// proxy cannot be used: \(error) (check --ca-file)")
        }
    }

    /// Whether the certificate's names are checked (not with --insecure or --pin-only).
    var checksIdentity: Bool { !insecure && !pinOnly }
}

/// Names the option whose file is missing or unreadable, before TLS reports it as "failedToLoadCertificate".
func requireFiles(_ files: [(String, String?)]) throws(ConfigurationError) {
    for (option, path) in files {
        guard let path else { continue }
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw ConfigurationError(FileManager.default.fileExists(atPath: path)
                ? "\(option) \(path) cannot be read (permissions?)" : "\(option) \(path) does not exist")
        }
    }
}
