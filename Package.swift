// swift-tools-version:6.1
import PackageDescription
import Foundation

/// `make fuzz` and CI's bounded fuzz run set ADIT_FUZZ: then our own modules are compiled with libFuzzer's coverage
/// instrumentation (the dependencies are not, so CI reuses their debug build) and the `adit-fuzz` driver exists.
let fuzzing = ProcessInfo.processInfo.environment["ADIT_FUZZ"] != nil

/// (The shipped binary skips the run-time exclusivity checks: that is the Makefile's RELEASE_FLAGS, not a
/// setting here, because unsafe flags would make these library products unusable as a dependency.)
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
] + (fuzzing ? [.unsafeFlags(["-sanitize=fuzzer"])] : [])

let package = Package(
    name: "adit",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "adit", targets: ["adit"]),
        .library(name: "AditMux", targets: ["AditMux"]),
        .library(name: "AditWebSocket", targets: ["AditWebSocket"]),
        .library(name: "AditProxy", targets: ["AditProxy"]),
        .library(name: "AditGateway", targets: ["AditGateway"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto", "4.5.2"..<"5.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        // --config FILE (YAML) and ADIT_* variables, layered under the command line (the YAML trait needs
        // swift-tools-version 6.1).
        .package(url: "https://github.com/apple/swift-configuration", from: "1.4.0", traits: [.defaults, "YAML"]),
    ],
    targets: [
        // The message type passed between the multiplexer and the transport, without copies.
        .target(
            name: "AditTransport",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // Wire format, stream state machine, flow control and the fair scheduler of the multiplexer.
        .target(
            name: "AditMux",
            dependencies: [
                "AditTransport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // zlib from the system (Debian: zlib1g-dev), for permessage-deflate.
        .target(
            name: "CAditZlib",
            linkerSettings: [.linkedLibrary("z")]
        ),
        // The system GSSAPI (libgssapi_krb5.so.2), loaded at run time for Negotiate/Kerberos proxy
        // authentication: nothing of Kerberos is needed to build, nor to run without Negotiate.
        .target(
            name: "CAditGSSAPI",
            linkerSettings: [.linkedLibrary("dl")]
        ),
        // RFC 6455 frame codec with fast masking, client and server upgrade handshakes, permessage-deflate.
        .target(
            name: "AditWebSocket",
            dependencies: [
                "AditTransport",
                "CAditZlib",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // Reaching the server through proxies: HTTP CONNECT with Basic, Digest, NTLM and Negotiate.
        .target(
            name: "AditProxy",
            dependencies: [
                "AditTransport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // Client and server sessions: dialling, listeners, target policy, the demo.
        .target(
            name: "AditGateway",
            dependencies: [
                "AditMux",
                "AditWebSocket",
                "AditProxy",
                "CAditGSSAPI",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOSOCKS", package: "swift-nio-extras"),
                .product(name: "CryptoExtras", package: "swift-crypto"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ],
            swiftSettings: swiftSettings
        ),
        // Options from flags, ADIT_* variables and the --config file, layered; what `check-config` prints.
        .target(
            name: "AditConfiguration",
            dependencies: [
                "AditGateway",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "adit",
            dependencies: [
                "AditGateway",
                "AditConfiguration",
                "AditWebSocket",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AditMuxTests",
            dependencies: [
                "AditMux",
                "AditTransport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AditWebSocketTests",
            dependencies: [
                "AditWebSocket",
                "AditTransport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AditProxyTests",
            dependencies: [
                "AditProxy",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AditGatewayTests",
            dependencies: [
                "AditGateway",
                "AditMux",
                "AditProxy",
                "AditTransport",
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSOCKS", package: "swift-nio-extras"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // The command line itself: options layered from flags, ADIT_* variables and the --config file.
        .testTarget(
            name: "AditCommandTests",
            dependencies: [
                "adit",
                "AditConfiguration",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        // Fuzz targets: every parser and state machine a peer can feed (Tests/Fuzz); the corpus is replayed by
        // AditFuzzCorpusTests, libFuzzer runs them through `make fuzz`.
        .target(
            name: "AditFuzzing",
            dependencies: [
                "AditMux", "AditTransport", "AditWebSocket", "AditProxy", "AditGateway", "AditConfiguration",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/Fuzz/Targets",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AditFuzzCorpusTests",
            dependencies: ["AditFuzzing"],
            swiftSettings: swiftSettings
        ),
    ] + fuzzDriver
)

/// The libFuzzer driver exists only for `make fuzz` (ADIT_FUZZ=1): it links libFuzzer, which an ordinary build
/// does not have.
var fuzzDriver: [Target] {
    guard fuzzing else { return [] }
    return [
        .target(name: "CAditFuzzer", path: "Tests/Fuzz/CDriver"),
        .executableTarget(
            name: "adit-fuzz",
            dependencies: ["AditFuzzing", "CAditFuzzer"],
            path: "Tests/Fuzz/Driver",
            swiftSettings: swiftSettings,
            linkerSettings: [.unsafeFlags(["-sanitize=fuzzer"])]
        ),
    ]
}
