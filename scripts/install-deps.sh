#!/usr/bin/env bash
# Install the Debian packages the test suite needs (see docs / DESIGN.md
# "Real components used in tests"):
#   docker.io          dockerd 20.10 (API 1.41) + containerd + runc, started by scripts/dockerd.sh
#   busybox-static     amd64 /bin/busybox, the rootfs of the local image busybox:latest
#   mosquitto(-clients) a broker nobody here wrote; tests start their own instances
#   busybox-static:arm64  downloaded (not installed) and unpacked into the cache dir,
#                      the rootfs of busybox-arm64:latest (fails with "exec format error")
#   cargo-fuzz         cargo install'ed when missing (scripts/fuzz.sh)
#
# Idempotent: a re-run on a machine where everything is present does no apt work.
# Runs as root, or re-executes itself with passwordless sudo.
#
# Env:
#   SPACELIFT_TEST_CACHE  cache dir (default /var/cache/spacelift-test)
# Result: $SPACELIFT_TEST_CACHE/busybox-arm64/bin/busybox is an aarch64 static busybox.
set -euo pipefail

CACHE="${SPACELIFT_TEST_CACHE:-/var/cache/spacelift-test}"
# jq: scripts/bench-report.sh reads criterion's JSON with it.
PACKAGES=(docker.io busybox-static mosquitto mosquitto-clients jq)

log() { printf '[install-deps] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        log "not root: re-running with sudo"
        exec sudo -n env "SPACELIFT_TEST_CACHE=$CACHE" "PATH=$PATH" bash "$0" "$@"
    fi
    log "ERROR: this script installs Debian packages and must run as root"
    log "       (or as a user with passwordless sudo). Run: sudo bash $0"
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-q -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

updated=0
apt_update() {
    if [ "$updated" -eq 0 ]; then
        log "apt-get update"
        apt-get -q update >/dev/null
        updated=1
    fi
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# --- 1. native packages -----------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    installed "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt_update
    log "installing: ${missing[*]}"
    # Keep maintainer scripts from starting services (a system dockerd with a
    # bridge and iptables rules, or a system mosquitto on :1883): tests start
    # their own daemons. policy-rc.d exit 101 = "action forbidden".
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    # With Recommends (apparmor, cgroupfs-mount, xz-utils, ...), as verified on the CI image.
    rc=0
    apt-get install "${APT_OPTS[@]}" "${missing[@]}" >/dev/null || rc=$?
    if [ "$own_policy" -eq 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ "$rc" -ne 0 ]; then
        log "ERROR: apt-get install failed ($rc)"
        exit "$rc"
    fi
else
    log "packages already installed: ${PACKAGES[*]}"
fi

# --- 2. no system services --------------------------------------------------
# Tests run their own mosquitto (loopback, own config) and their own dockerd
# (private socket). Stop and disable the packaged services if they run anyway.
# Only the *system* instances are touched (found via their pid files), never
# mosquitto processes that tests started.
stop_service() {
    local svc="$1" pidfile="$2"
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        if systemctl is-active --quiet "$svc" 2>/dev/null; then
            log "stopping system service $svc"
            systemctl stop "$svc" || true
        fi
        if systemctl is-enabled --quiet "$svc" 2>/dev/null; then
            log "disabling system service $svc"
            systemctl disable --quiet "$svc" 2>/dev/null || true
        fi
    else
        if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            log "stopping system service $svc (pid $(cat "$pidfile"))"
            service "$svc" stop >/dev/null 2>&1 || kill "$(cat "$pidfile")" || true
        fi
        if command -v update-rc.d >/dev/null 2>&1 && [ -e "/etc/init.d/$svc" ] \
            && ls /etc/rc[2-5].d/S*"$svc" >/dev/null 2>&1; then
            log "disabling system service $svc"
            update-rc.d "$svc" disable >/dev/null 2>&1 || true
        fi
    fi
}
stop_service mosquitto /run/mosquitto/mosquitto.pid
stop_service docker /var/run/docker.pid
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    # socket activation would start the system dockerd on first use of /run/docker.sock
    systemctl stop docker.socket 2>/dev/null || true
    systemctl disable --quiet docker.socket 2>/dev/null || true
fi

# --- 3. aarch64 busybox (downloaded, unpacked, never installed) -------------
ARM_ROOT="$CACHE/busybox-arm64"
ARM_BB="$ARM_ROOT/bin/busybox"
is_aarch64_elf() {
    # ELF magic and e_machine (offset 18, little-endian u16) == 183 (EM_AARCH64)
    [ -f "$1" ] || return 1
    [ "$(head -c 4 "$1" | od -An -tx1 | tr -d ' \n')" = "7f454c46" ] || return 1
    [ "$(od -An -j18 -N2 -tu2 "$1" | tr -d ' \n')" = "183" ]
}
if is_aarch64_elf "$ARM_BB"; then
    log "aarch64 busybox already at $ARM_BB"
else
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        log "dpkg --add-architecture arm64"
        dpkg --add-architecture arm64
        updated=0 # the arm64 package lists are not fetched yet
    fi
    apt_update
    # apt-get download writes into the current directory; let the sandbox
    # user _apt write there (otherwise apt warns and downloads as root).
    mkdir -p "$CACHE/deb"
    rm -f "$CACHE"/deb/busybox-static_*_arm64.deb
    if id _apt >/dev/null 2>&1; then chown _apt "$CACHE/deb"; fi
    log "apt-get download busybox-static:arm64"
    (cd "$CACHE/deb" && apt-get -q download busybox-static:arm64 >/dev/null)
    debs=("$CACHE"/deb/busybox-static_*_arm64.deb)
    deb="${debs[0]}"
    rm -rf "$ARM_ROOT"
    dpkg-deb -x "$deb" "$ARM_ROOT"
    if ! is_aarch64_elf "$ARM_BB"; then
        log "ERROR: $deb did not yield an aarch64 ELF at $ARM_BB"
        exit 1
    fi
    log "aarch64 busybox unpacked at $ARM_BB"
fi

# --- 3b. cargo-fuzz (scripts/fuzz.sh, the CI fuzz step; runs on the nightly toolchain) --
if cargo fuzz --version >/dev/null 2>&1; then
    log "cargo-fuzz already installed"
else
    log "cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked
fi

# --- 4. sanity checks -------------------------------------------------------
fail=0
for tool in docker dockerd containerd runc mosquitto mosquitto_pub; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "ERROR: '$tool' not found on PATH ($PATH)"
        fail=1
    fi
done
if [ ! -x /bin/busybox ]; then
    log "ERROR: /bin/busybox (busybox-static) missing"
    fail=1
fi
[ "$fail" -eq 0 ] || exit 1
log "ok"
