#!/bin/sh
# Runs each libFuzzer target for FUZZ_SECONDS (default 60) from its corpus in Tests/Fuzz/Corpus/<target>/.
# New inputs that reach new code go to .build-fuzz/corpus/<target>/ (not into the repository); a crash stops the
# run and leaves its input in .build-fuzz/artifacts/ with the command that reproduces it.
#   FUZZ_TARGETS="mux-frames deflate" FUZZ_SECONDS=300 Tests/Fuzz/run.sh
set -eu
cd "$(dirname "$0")/../.."
BIN=${FUZZ_BIN:-.build-fuzz/release/adit-fuzz}
SECONDS_EACH=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-$(ls Tests/Fuzz/Corpus)}
mkdir -p .build-fuzz/artifacts
status=0
for target in $TARGETS; do
    mkdir -p ".build-fuzz/corpus/$target"
    log=".build-fuzz/$target.log"
    # SWIFT_BACKTRACE=enable=no: libFuzzer, not the Swift runtime, handles a trap, and keeps its input.
    if SWIFT_BACKTRACE=enable=no ADIT_FUZZ_TARGET="$target" "$BIN" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 -print_final_stats=1 -artifact_prefix=".build-fuzz/artifacts/$target-" \
        ".build-fuzz/corpus/$target" "Tests/Fuzz/Corpus/$target" >"$log" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
        cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
        printf '%-18s ok   %10s runs in %ss, coverage %s edges\n' "$target" "$runs" "$SECONDS_EACH" "$cov"
    else
        status=1
        printf '%-18s FAILED (log: %s)\n' "$target" "$log"
        grep -E 'ERROR|Fatal error|fuzz invariant|SUMMARY|Test unit written' "$log" | head -8 | sed 's/^/    /'
        artifact=$(ls -t .build-fuzz/artifacts/"$target"-* 2>/dev/null | head -1 || true)
        [ -n "$artifact" ] && echo "    reproduce: ADIT_FUZZ_TARGET=$target $BIN $artifact"
    fi
done
exit $status
