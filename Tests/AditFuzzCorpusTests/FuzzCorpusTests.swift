@testable import AditFuzzing
import Foundation
import Testing

/// Every input in Tests/Fuzz/Corpus (the seeds, and what `make fuzz` found worth keeping) through its target,
/// in every `make test`: what once crashed a parser stays fixed, without libFuzzer.
@Suite struct FuzzCorpusTests {
    static let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fuzz/Corpus")

    @Test(arguments: FuzzTarget.allCases)
    func corpusRunsClean(_ target: FuzzTarget) throws {
        let directory = Self.corpus.appendingPathComponent(target.rawValue)
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted()
        #expect(files.count >= 3, "Tests/Fuzz/Corpus/\(target.rawValue) holds \(files.count) seed(s); every target needs a few")
        for file in files {
            let data = try Data(contentsOf: directory.appendingPathComponent(file))
            target.run([UInt8](data))
        }
    }

    @Test func chunksCoverTheInputAfterTheSizeByteExactlyOnce() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            let bytes = (0..<Int.random(in: 0...300, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let chunks = FuzzInput.chunks(bytes)
            #expect(chunks.flatMap { $0 } == Array(bytes.dropFirst()))
            #expect(chunks.allSatisfy { !$0.isEmpty && (bytes.first == 0 || $0.count <= 64) })
        }
    }
}
