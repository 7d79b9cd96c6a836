#!/usr/bin/env bash
# Run the whole test suite: `cargo test --workspace` (every member crate AND the
# root package launcher-suite, which hosts tests/ and benches/; a plain
# `cargo test` would only test the root package, the workspace's default member).
#
# When it can (root or passwordless sudo, and Debian's docker.io installed, see
# scripts/install-deps.sh), it starts the real dockerd from scripts/dockerd.sh,
# exports TEST_DOCKER_HOST for the real-daemon tests, and stops the daemon on exit.
# Otherwise those tests print "skipped: ..." and pass, except under CI=true: there
# this script fails at once when it cannot start dockerd, and every test that misses
# a component (dockerd, mosquitto, openssl, the docker CLI) fails instead of skipping.
#
# The scenario cases run in both modes (scenarios/tests/cases.rs: `<case>_sim` and
# `<case>_wire`, verdicts must agree); SCENARIO_MODE=sim|wire narrows them to one.
#
# Then, unless arguments narrow the run, scripts/explore.sh explores 10,000 random fault
# schedules in sim mode (release build).
#
# Usage: scripts/test.sh [extra cargo test args...]   e.g. scripts/test.sh -- --nocapture
# Env:   TEST_DOCKER_HOST       already set: use that daemon, start nothing
#        SPACELIFT_TEST_NO_DOCKERD=1   do not start a real dockerd
set -euo pipefail

cd "$(dirname "$0")/.."
log() { printf '[test.sh] %s\n' "$*" >&2; }

# mosquitto and dockerd live in /usr/sbin, which a non-root PATH may lack.
case ":$PATH:" in *:/usr/sbin:*) ;; *) export PATH="$PATH:/usr/sbin" ;; esac

started=0
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    if [ "$started" -eq 1 ]; then
        bash scripts/dockerd.sh stop || log "WARNING: stopping dockerd failed"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

can_root() {
    [ "$(id -u)" -eq 0 ] || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; }
}

# Under CI a missing daemon is an error, not a skip (see protocol::test_support).
in_ci() {
    case "${CI:-}" in "" | 0 | false | FALSE | False) return 1 ;; *) return 0 ;; esac
}
no_dockerd() {
    if in_ci; then
        log "ERROR: $1; CI=${CI} forbids skipping the real-dockerd tests ($2)"
        exit 1
    fi
    log "$1 ($2):"
    log "  real-dockerd tests (TEST_DOCKER_HOST) will be SKIPPED"
}

if [ -n "${TEST_DOCKER_HOST:-}" ]; then
    log "using the daemon already given in TEST_DOCKER_HOST=$TEST_DOCKER_HOST"
elif [ -n "${SPACELIFT_TEST_NO_DOCKERD:-}" ]; then
    no_dockerd "SPACELIFT_TEST_NO_DOCKERD is set" "unset it"
elif ! command -v dockerd >/dev/null 2>&1; then
    no_dockerd "dockerd not installed" "run: sudo scripts/install-deps.sh"
elif ! can_root; then
    no_dockerd "not root and no passwordless sudo: cannot start dockerd" \
        "run as root, or set TEST_DOCKER_HOST to a running dockerd"
else
    if bash scripts/dockerd.sh status >/dev/null 2>&1; then
        log "a test dockerd is already running; using it (left running afterwards)"
    else
        started=1
    fi
    bash scripts/dockerd.sh start
    eval "$(bash scripts/dockerd.sh env)"
    export TEST_DOCKER_HOST
    log "TEST_DOCKER_HOST=$TEST_DOCKER_HOST"
fi

rc=0
cargo test --workspace "$@" || rc=$?
log "cargo test exited with $rc"
# Thousands of random fault schedules in sim mode (scripts/explore.sh); skipped when
# arguments narrow the run, or with SPACELIFT_TEST_NO_EXPLORE=1.
if [ "$#" -eq 0 ] && [ -z "${SPACELIFT_TEST_NO_EXPLORE:-}" ]; then
    erc=0
    bash scripts/explore.sh || erc=$?
    log "scenario explore exited with $erc"
    [ "$rc" -ne 0 ] || rc=$erc
fi
exit "$rc"
