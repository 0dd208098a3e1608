#!/usr/bin/env bash
# Fuzzing: replays the committed corpora (fuzz/corpus/<target>) through `cargo test` (the
# targets' checks without libFuzzer) and through the fuzz binaries, then runs each fuzz target
# for SECONDS (default 20; 0 = replay only) and prints one summary line per run. New inputs go
# to a scratch directory, never into the committed corpora; a crash leaves its input in
# fuzz/artifacts/<target>/ and fails the script.
#
#   scripts/fuzz.sh [SECONDS]
#
# Environment:
#   FUZZ_TARGETS="decode broker"   the targets to run (default: all four)
#   FUZZ_SANITIZER=none            cargo fuzz's --sanitizer (default: address). scripts/test.sh
#                                  uses none: the code under test forbids unsafe, and the build
#                                  and the runs are several times cheaper without ASan.
#   FUZZ_ARGS="-jobs=2"            extra libFuzzer arguments
#
# cargo-fuzz needs nightly-only compiler flags; on the stable toolchain RUSTC_BOOTSTRAP=1
# unlocks them (for this script's builds only). cargo-fuzz is installed from crates.io if
# missing. The long runs that the corpora come from: see fuzz/README.md.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
seconds=${1:-20}
targets=${FUZZ_TARGETS:-"decode decode_stream broker sim"}
sanitizer=${FUZZ_SANITIZER:-address}
export RUSTC_BOOTSTRAP=1

log() { printf '==> fuzz: %s\n' "$*"; }

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "cargo install cargo-fuzz"
    cargo install cargo-fuzz --version '^0.13' --locked
fi

# The same checks without libFuzzer: the corpora and seeds through `cargo test`.
log "cargo test (corpus replay through the checks, plus the driver's own tests)"
cargo test --quiet

# Each target on its own: `cargo fuzz build` of every binary would include seed_corpora, which
# has no libFuzzer main (and, without ASan, nothing defines the coverage symbols it needs).
for target in $targets; do
    log "cargo fuzz build --sanitizer $sanitizer $target"
    cargo fuzz build --sanitizer "$sanitizer" "$target"
done

# One line from a libFuzzer log: executions, seconds, coverage, corpus size, peak RSS.
summary() { # summary TARGET LOG
    local runs secs cov corpus rss
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$2" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$2" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$2" | tail -1 | cut -d' ' -f2)
    corpus=$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$2" | tail -1 | cut -d' ' -f2)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$2" | tail -1)
    log "$1: ${runs:-?} executions in ${secs:-?} s, coverage ${cov:-?}, corpus ${corpus:-?}, peak RSS ${rss:-?} MB, no crash"
}

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $targets; do
    mkdir -p "corpus/$target" "$scratch/$target"
    log "$target: replaying $(find "corpus/$target" -type f | wc -l) corpus inputs"
    cargo fuzz run --sanitizer "$sanitizer" "$target" "corpus/$target" -- -runs=0 \
        >"$scratch/$target.replay.log" 2>&1 || { tail -40 "$scratch/$target.replay.log"; exit 1; }
    grep -E '^(INFO: seed corpus|#[0-9]+ *(INITED|DONE))' "$scratch/$target.replay.log" | tail -2
    if [ "$seconds" -gt 0 ]; then
        log "$target: fuzzing for ${seconds}s"
        # shellcheck disable=SC2086 # FUZZ_ARGS is a list of words
        cargo fuzz run --sanitizer "$sanitizer" "$target" "$scratch/$target" "corpus/$target" -- \
            -max_total_time="$seconds" -timeout=10 -print_final_stats=1 ${FUZZ_ARGS:-} \
            >"$scratch/$target.log" 2>&1 || { tail -60 "$scratch/$target.log"; exit 1; }
        summary "$target" "$scratch/$target.log"
    fi
done
log "all targets passed"
