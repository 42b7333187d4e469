import NIOCore
import NIOSSL

/// The server's certificate (and, for mTLS, the CA its clients' certificates must chain to).
public struct ServerTLSSettings: Sendable {
    public var certificateFile: String
    public var keyFile: String
    public var clientCAFile: String?

    public init(certificateFile: String, keyFile: String, clientCAFile: String? = nil) {
        self.certificateFile = certificateFile
        self.keyFile = keyFile
        self.clientCAFile = clientCAFile
    }

    public func makeContext() throws(ConfigurationError) -> NIOSSLContext {
        try requireFiles([("--tls-cert", certificateFile), ("--tls-key", keyFile), ("--tls-ca", clientCAFile)])
        do {
            let chain = try NIOSSLCertificate.fromPEMFile(certificateFile)
            guard !chain.isEmpty else { throw ConfigurationError("--tls-cert \(certificateFile) holds no certificate") }
            var configuration = TLSConfiguration.makeServerConfiguration(
                certificateChain: chain.map { .certificate($0) },
                privateKey: .privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem)))
            configuration.applicationProtocols = ["http/1.1"]
            if let clientCAFile {
                configuration.trustRoots = .file(clientCAFile)
                configuration.certificateVerification = .noHostnameVerification
            }
            return try NIOSSLContext(configuration: configuration)
        } catch let error as ConfigurationError {
            throw error
        } catch {
            throw ConfigurationError(
                "cannot use --tls-cert \(certificateFile) with --tls-key \(keyFile): \(error) (both must be PEM, the key matching the certificate)")
        }
    }
}
