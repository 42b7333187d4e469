import AditGateway
import ArgumentParser
import Foundation

struct KeygenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen",
        abstract: "Make a key and a self-signed certificate for `adit server --tls-cert`, and print the pin clients use.",
        discussion: """
            Writes CERT and KEY (PEM; the key readable by its owner only) and prints the certificate's public-key pin. Clients then connect with wss:// and --pin (plus --pin-only, as no CA vouches for a self-signed certificate), or trust the certificate itself with --ca-file.

            Examples:
              adit keygen --name gateway.example.com
              adit keygen --name localhost --ip 127.0.0.1 --cert /etc/adit/cert.pem --key /etc/adit/key.pem
            """)

    @Option(name: .long, help: ArgumentHelp("DNS name the certificate is for (repeatable). Example: --name gateway.example.com", valueName: "name"))
    var name: [String] = []

    @Option(name: .long, help: ArgumentHelp("IP address the certificate is for (repeatable). Example: --ip 192.0.2.10", valueName: "address"))
    var ip: [String] = []

    @Option(name: .long, help: ArgumentHelp("Where to write the certificate. Example: --cert cert.pem", valueName: "file"))
    var cert = "adit-cert.pem"

    @Option(name: .long, help: ArgumentHelp("Where to write the private key. Example: --key key.pem", valueName: "file"))
    var key = "adit-key.pem"

    @Option(name: .long, help: ArgumentHelp("Validity in days. Example: --days 365", valueName: "days"))
    var days = 825

    @Flag(name: .long, help: ArgumentHelp("Replace CERT and KEY if they exist."))
    var force = false

    func validate() throws {
        guard days >= 1 && days <= 36_500 else { throw ValidationError("--days must be between 1 and 36500") }
        if !force {
            for path in [cert, key] where FileManager.default.fileExists(atPath: path) {
                throw ValidationError("\(path) exists; pass --force to replace it, or choose another file with --cert/--key")
            }
        }
    }

    func run() throws {
        let names = name.isEmpty && ip.isEmpty ? ["localhost"] : name
        let addresses = name.isEmpty && ip.isEmpty ? ["127.0.0.1", "::1"] : ip
        let made: SelfSignedCertificate
        do {
            made = try SelfSignedCertificate.make(names: names, addresses: addresses, days: days)
        } catch let error as ConfigurationError {
            throw ValidationError(error.message)
        }
        do {
            try Data(made.certificatePEM.utf8).write(to: URL(fileURLWithPath: cert))
            _ = FileManager.default.createFile(atPath: key, contents: nil, attributes: [.posixPermissions: 0o600])
            try Data(made.privateKeyPEM.utf8).write(to: URL(fileURLWithPath: key))
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: key)
        } catch {
            throw ConfigurationError("cannot write \(cert) or \(key): \(error.localizedDescription)")
        }
        let host = names.first ?? addresses[0]
        print("""
            wrote \(cert) (for \((names + addresses).joined(separator: ", ")), valid \(days) days) and \(key)
            pin: \(made.pin)

            server:  adit server --listen 0.0.0.0:8443 --tls-cert \(cert) --tls-key \(key) --allow 'localhost:22'
            client:  adit client wss://\(host.contains(":") ? "[\(host)]" : host):8443/ --pin \(made.pin) --pin-only -L 2222:localhost:22
            """)
    }
}
