import AditFuzzing
import CAditFuzzer
import Foundation

/// The libFuzzer driver: one binary for every target, ADIT_FUZZ_TARGET names the one to run; the rest of the
/// command line is libFuzzer's (`make fuzz`, Tests/Fuzz/run.sh). It has a `main` of its own and hands over to
/// `LLVMFuzzerRunDriver`, so it builds as an ordinary executable in debug and release alike.
@main
enum FuzzDriver {
    nonisolated(unsafe) static var target = FuzzTarget.muxFrames

    static func main() {
        let name = ProcessInfo.processInfo.environment["ADIT_FUZZ_TARGET"] ?? ""
        guard let chosen = FuzzTarget(rawValue: name) else {
            let names = FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")
            FileHandle.standardError.write(Data("set ADIT_FUZZ_TARGET to one of: \(names)\n".utf8))
            exit(2)
        }
        target = chosen
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzOneInput(data, size) })
    }
}

/// The callback libFuzzer runs on each input; libFuzzer's own code also names it, so it is exported under the
/// standard name.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FuzzDriver.target.run(data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? [])
    return 0
}
