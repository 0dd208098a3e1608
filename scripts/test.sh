#!/usr/bin/env bash
# Installs what the tests need (idempotently; on Debian, as root), then runs every check:
#   cargo fmt --check, cargo clippy -D warnings, cargo test --workspace, pytest on
#   tests/python/ when it holds tests, the headless-Chromium tests in tests/browser/, and the
#   fuzz targets (scripts/fuzz.sh: the committed corpora replayed, then each target run
#   briefly). Every step runs even if an earlier one failed; the script exits non-zero if any
#   failed. CI runs it through .ci/run.
#
# Environment:
#   RINGMQ_SKIP_INSTALL=1   do not install anything (just run the checks)
#   PYTEST_ARGS="..."       extra arguments for pytest (e.g. "-k retain -x")
#   CHROMIUM=/path          the Chromium the browser tests drive (default /usr/bin/chromium)
#   RINGMQ_FUZZ_SECONDS=N   seconds each fuzz target runs after its corpus replay (default
#                           10; 0 = replay only)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-auto}"
export DEBIAN_FRONTEND=noninteractive

log() { printf '==> %s\n' "$*"; }

# ---- Installing ---------------------------------------------------------------------------

apt_updated=0
apt_missing() { # prints the packages among "$@" that dpkg does not have installed
    local package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' \
            || printf '%s\n' "$package"
    done
}

apt_install() {
    local missing
    missing=$(apt_missing "$@")
    [ -z "$missing" ] && return 0
    if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
        log "WARNING: cannot install $(echo $missing) (needs apt-get as root); tests that need it will fail"
        return 0
    fi
    if [ "$apt_updated" = 0 ]; then
        log "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
    # Debian starts a packaged daemon (mosquitto on port 1883) on install unless
    # policy-rc.d says no; the tests start the brokers they need themselves.
    local own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    log "apt-get install $(echo $missing)"
    # shellcheck disable=SC2086 # one package per word
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
    if [ "$own_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}

python_has() { # python_has MODULE MAJOR: is MODULE importable with that major version?
    python3 - "$1" "$2" <<'PY' 2>/dev/null
import importlib.metadata, sys
sys.exit(0 if importlib.metadata.version(sys.argv[1]).split(".")[0] == sys.argv[2] else 1)
PY
}

pip_install() {
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt_install python3-pip
    fi
    log "pip install $*"
    # A Debian-managed Python refuses plain installs (PEP 668); pyenv's and venvs do not.
    python3 -m pip install --quiet --disable-pip-version-check "$@" 2>/dev/null \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
}

install_dependencies() {
    if ! command -v python3 >/dev/null; then apt_install python3; fi
    if command -v dpkg-query >/dev/null; then
        # openssl: the TLS tests make their certificates with it.
        apt_install mosquitto mosquitto-clients openssl
    elif ! command -v mosquitto_pub >/dev/null; then
        log "WARNING: no dpkg and no mosquitto_pub: install the Mosquitto clients by hand"
    fi
    install_browser
    python_has paho-mqtt 2 || pip_install 'paho-mqtt>=2,<3'
    python_has pytest 9 || python_has pytest 8 || pip_install 'pytest>=8,<10'
    python_has pytest-timeout 2 || pip_install 'pytest-timeout>=2,<3'
    # libfuzzer-sys compiles libFuzzer (C++); cargo-fuzz drives it.
    if ! command -v c++ >/dev/null; then apt_install g++; fi
    if ! cargo fuzz --version >/dev/null 2>&1; then
        log "cargo install cargo-fuzz"
        cargo install cargo-fuzz --version '^0.13' --locked
    fi
    local component
    for component in rustfmt clippy; do
        if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
            log "rustup component add $component"
            rustup component add "$component"
        fi
    done
}

# The browser tests: Debian's Chromium driven by npm's playwright-core (no browser download:
# playwright-core is only the driver; executablePath points at the packaged Chromium).
install_browser() {
    if command -v dpkg-query >/dev/null; then
        apt_install chromium
        # Node often comes from elsewhere (NodeSource's nodejs bundles npm, and Debian's npm
        # package conflicts with it): install Debian's only for what is missing.
        if ! command -v node >/dev/null; then apt_install nodejs; fi
        if ! command -v npm >/dev/null; then apt_install npm; fi
    fi
    if ! command -v npm >/dev/null; then
        log "WARNING: no npm: the browser tests will fail"
        return 0
    fi
    local lock_hash
    lock_hash=$(cat tests/browser/package.json tests/browser/package-lock.json 2>/dev/null | sha256sum)
    if [ -d tests/browser/node_modules ] \
        && [ "$(cat tests/browser/node_modules/.installed-from 2>/dev/null)" = "$lock_hash" ]; then
        return 0
    fi
    log "npm install (tests/browser)"
    (cd tests/browser && npm install --no-audit --no-fund --loglevel=error) || return 1
    printf '%s' "$lock_hash" >tests/browser/node_modules/.installed-from
}

# ---- Checking -----------------------------------------------------------------------------

failed=()
step() { # step NAME COMMAND...: runs it, records a failure, never stops the script
    local name=$1 start=$SECONDS
    shift
    log "$name: $*"
    if "$@"; then
        log "$name: ok ($((SECONDS - start))s)"
    else
        log "$name: FAILED ($((SECONDS - start))s)"
        failed+=("$name")
    fi
}

python_tests_present() {
    [ -d tests/python ] && [ -n "$(find tests/python -name 'test_*.py' -o -name '*_test.py' | head -1)" ]
}

run_pytest() {
    # The Python tests drive the real binary, found through RINGMQ_BIN.
    cargo build --bin ringmq || return 1
    local target_dir
    target_dir=$(cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    export RINGMQ_BIN="$target_dir/debug/ringmq"
    # A per-test backstop, when pytest-timeout is there (RINGMQ_SKIP_INSTALL may leave it out).
    local per_test_timeout=()
    if python_has pytest-timeout 2; then per_test_timeout=(--timeout=300); fi
    local status=0
    # shellcheck disable=SC2086 # PYTEST_ARGS is a list of words
    timeout 900 python3 -m pytest tests/python "${per_test_timeout[@]}" ${PYTEST_ARGS:-} || status=$?
    if [ "$status" = 5 ]; then
        # Exit 5: no test collected although test files exist - a broken test module or
        # a filter that matched nothing; either way nothing was checked.
        log "pytest collected no tests from tests/python"
    fi
    return "$status"
}

debug_binary() { # builds the debug binary and prints its path
    cargo build --bin ringmq >&2 || return 1
    local target_dir
    target_dir=$(cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    printf '%s\n' "$target_dir/debug/ringmq"
}

run_browser_tests() {
    local binary
    binary=$(debug_binary) || return 1
    local status=0 test
    for test in tests/browser/*.test.mjs; do
        log "browser: $test"
        RINGMQ_BIN="$binary" timeout 120 node "$test" || status=1
    done
    return "$status"
}

main() {
    if [ "${RINGMQ_SKIP_INSTALL:-0}" != 1 ]; then install_dependencies; fi
    step fmt cargo fmt --all -- --check
    step clippy cargo clippy --workspace --all-targets -- -D warnings
    # Includes tests/density.rs (issue 6): 50,500 connections through an in-process broker,
    # ~37 s here under load in a debug build (half of it the broker closing them), about a
    # quarter of that on the CI runner.
    step test timeout 1800 cargo test --workspace
    if python_tests_present; then
        step pytest run_pytest
    else
        log "pytest: skipped, tests/python/ holds no tests yet"
    fi
    # Headless Chromium (tests/browser/*.test.mjs): the dashboard test takes ~7 s here (its
    # page needs three one-second samples); installing Chromium once took 52 s of apt here.
    step browser run_browser_tests
    # Without ASan (FUZZ_SANITIZER=none): protocol and broker forbid unsafe, and the build
    # and the runs cost several times less. Cost here (load ~15): 80 s with the fuzz builds
    # warm (replays a few seconds, then 4 x 11 s of fuzzing). A fresh runner also installs
    # cargo-fuzz and builds the fuzz crate twice (debug for cargo test: 5 min here; release
    # with coverage for libFuzzer: 7.5 min here), so roughly 4-5 min on the CI runner.
    step fuzz env FUZZ_SANITIZER=none scripts/fuzz.sh "${RINGMQ_FUZZ_SECONDS:-10}"
    if [ "${#failed[@]}" -ne 0 ]; then
        log "FAILED steps: ${failed[*]}"
        exit 1
    fi
    log "all checks passed"
}

main "$@"
