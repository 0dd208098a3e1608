#!/usr/bin/env bash
# Fuzzing: replays the committed corpora (fuzz/corpus/<target>), then runs each fuzz target for
# SECONDS (default 20; 0 = replay only). New inputs go to a scratch directory, never into the
# committed corpora; a crash leaves its input in fuzz/artifacts/<target>/ and fails the script.
#
#   scripts/fuzz.sh [SECONDS]
#
# Environment:
#   FUZZ_TARGETS="decode broker"   the targets to run (default: all four)
#   FUZZ_ARGS="-jobs=2"            extra libFuzzer arguments
#
# cargo-fuzz needs nightly-only compiler flags; on the stable toolchain RUSTC_BOOTSTRAP=1
# unlocks them (for this script's builds only). cargo-fuzz is installed from crates.io if
# missing. The long runs that the corpora come from: see fuzz/README.md.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
seconds=${1:-20}
targets=${FUZZ_TARGETS:-"decode decode_stream broker sim"}
export RUSTC_BOOTSTRAP=1

log() { printf '==> fuzz: %s\n' "$*"; }

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "cargo install cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# The same checks without libFuzzer: the corpora and seeds through `cargo test`.
log "cargo test (corpus replay through the checks, plus the driver's own tests)"
cargo test --release --quiet

log "cargo fuzz build"
cargo fuzz build

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $targets; do
    mkdir -p "corpus/$target" "$scratch/$target"
    log "$target: replaying $(find "corpus/$target" -type f | wc -l) corpus inputs"
    cargo fuzz run "$target" "corpus/$target" -- -runs=0
    if [ "$seconds" -gt 0 ]; then
        log "$target: fuzzing for ${seconds}s"
        # shellcheck disable=SC2086 # FUZZ_ARGS is a list of words
        cargo fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
            -max_total_time="$seconds" -timeout=10 -print_final_stats=1 ${FUZZ_ARGS:-}
    fi
done
log "all targets passed"
