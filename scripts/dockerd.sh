#!/usr/bin/env bash
# A real dockerd (Debian docker.io 20.10, API 1.41) on a private socket, with
# no network plumbing, for the real-daemon tests.
#
#   scripts/dockerd.sh start    start it (or reuse a running one), build the local images
#   scripts/dockerd.sh stop     stop dockerd and the containerd it spawned; wait for both
#   scripts/dockerd.sh status   exit 0 if it answers on its socket
#   scripts/dockerd.sh env      print: export TEST_DOCKER_HOST=unix://$DIR/docker.sock
#
# Env: SPACELIFT_TEST_DOCKER_DIR (default /run/spacelift-test-docker)
#      SPACELIFT_TEST_CACHE      (default /var/cache/spacelift-test, see install-deps.sh)
#
# The daemon runs with --bridge=none --iptables=false --ip6tables=false: it has
# no "bridge" network, only "host" and "none". Containers must use network
# "none" (or "host"); there is no registry, so the images are built locally:
#   busybox:latest        amd64, `docker import` of a rootfs with Debian's
#                         busybox-static as /bin/busybox + applet symlinks,
#                         /tmp and /mnt/workspace.
#   busybox-arm64:latest  same layout with the aarch64 busybox. On this amd64
#                         host every command fails: "exec format error", exit 1.
#                         dockerd 20.10 accepts `docker import --platform linux/arm64`
#                         but IGNORES the architecture (the image reports amd64),
#                         so when that happens the image is rebuilt with
#                         `docker load` from a hand-written image tarball whose
#                         config says architecture arm64 / variant v8.
set -euo pipefail

DIR="${SPACELIFT_TEST_DOCKER_DIR:-/run/spacelift-test-docker}"
CACHE="${SPACELIFT_TEST_CACHE:-/var/cache/spacelift-test}"
SOCK="$DIR/docker.sock"
PIDFILE="$DIR/dockerd.pid"
LOG="$DIR/dockerd.log"
ARM_BB="$CACHE/busybox-arm64/bin/busybox"
AMD_BB=/bin/busybox
START_TIMEOUT=60
STOP_TIMEOUT=30
IMG_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# dockerd, containerd and runc live in /usr/sbin or /usr/bin; a non-root PATH may lack sbin.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

log() { printf '[dockerd.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
d() { docker -H "unix://$SOCK" "$@"; }

need_root() {
    [ "$(id -u)" -eq 0 ] && return 0
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        exec sudo -n env "SPACELIFT_TEST_DOCKER_DIR=$DIR" "SPACELIFT_TEST_CACHE=$CACHE" \
            "PATH=$PATH" bash "$0" "$@"
    fi
    die "dockerd must run as root (or with passwordless sudo)"
}

answering() { [ -S "$SOCK" ] && d version >/dev/null 2>&1; }

daemon_pid() {
    local pid
    [ -s "$PIDFILE" ] || return 1
    pid="$(cat "$PIDFILE")"
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

# Build a rootfs: /bin/busybox from $1, an applet symlink per applet of the
# (native, runnable) amd64 busybox of the same Debian version, /tmp, /mnt/workspace.
make_rootfs() {
    local bb="$1" root="$2" applet
    mkdir -p "$root/bin" "$root/tmp" "$root/mnt/workspace" "$root/etc"
    chmod 1777 "$root/tmp"
    cp "$bb" "$root/bin/busybox"
    chmod 755 "$root/bin/busybox"
    for applet in $("$AMD_BB" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
    echo 'root:x:0:' >"$root/etc/group"
}

# Deterministic tar of a rootfs (same bytes every time -> same image/layer ids).
tar_rootfs() {
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$1" -c .
}

arch_of() { d image inspect --format '{{.Architecture}}' "$1" 2>/dev/null; }

build_amd64_image() {
    local work="$1"
    if [ "$(arch_of busybox:latest)" = amd64 ]; then
        log "image busybox:latest present"
        return
    fi
    log "building busybox:latest (amd64) with docker import"
    make_rootfs "$AMD_BB" "$work/amd64"
    tar_rootfs "$work/amd64" | d import \
        --change "ENV PATH=$IMG_PATH" --change 'CMD ["/bin/sh"]' \
        --message 'scripts/dockerd.sh: busybox-static (amd64)' - busybox:latest >/dev/null
}

# `docker load` an image whose config says linux/arm64/v8 (what a pulled arm64 image says).
load_arm64_image() {
    local root="$1" t="$2" layer cfg
    mkdir -p "$t"
    tar_rootfs "$root" >"$t/layer.tar"
    layer="$(sha256sum "$t/layer.tar" | cut -d' ' -f1)"
    mkdir -p "$t/$layer"
    mv "$t/layer.tar" "$t/$layer/layer.tar"
    cat >"$t/config.json" <<EOF
{"architecture":"arm64","variant":"v8","os":"linux","created":"2025-01-01T00:00:00Z",
 "config":{"Env":["PATH=$IMG_PATH"],"Cmd":["/bin/sh"]},
 "rootfs":{"type":"layers","diff_ids":["sha256:$layer"]},
 "history":[{"created":"2025-01-01T00:00:00Z","created_by":"scripts/dockerd.sh: busybox-static:arm64"}]}
EOF
    cfg="$(sha256sum "$t/config.json" | cut -d' ' -f1)"
    mv "$t/config.json" "$t/$cfg.json"
    printf '[{"Config":"%s.json","RepoTags":["busybox-arm64:latest"],"Layers":["%s/layer.tar"]}]\n' \
        "$cfg" "$layer" >"$t/manifest.json"
    tar -C "$t" -c . | d load >/dev/null
}

build_arm64_image() {
    local work="$1" arch old
    if [ "$(arch_of busybox-arm64:latest)" = arm64 ]; then
        log "image busybox-arm64:latest present"
        return
    fi
    [ -f "$ARM_BB" ] || die "$ARM_BB missing: run scripts/install-deps.sh first"
    log "building busybox-arm64:latest with docker import --platform linux/arm64"
    make_rootfs "$ARM_BB" "$work/arm64"
    tar_rootfs "$work/arm64" | d import --platform linux/arm64 \
        --change "ENV PATH=$IMG_PATH" --change 'CMD ["/bin/sh"]' \
        --message 'scripts/dockerd.sh: busybox-static:arm64' - busybox-arm64:latest >/dev/null
    arch="$(arch_of busybox-arm64:latest)"
    if [ "$arch" != arm64 ]; then
        log "docker import --platform linux/arm64 gave Architecture=$arch (dockerd 20.10 ignores it);" \
            "rebuilding with docker load"
        old="$(d image inspect --format '{{.Id}}' busybox-arm64:latest)"
        load_arm64_image "$work/arm64" "$work/arm64-image"
        d image rm "$old" >/dev/null 2>&1 || true
        arch="$(arch_of busybox-arm64:latest)"
    fi
    [ "$arch" = arm64 ] || die "busybox-arm64:latest reports Architecture=$arch, want arm64"
}

verify_images() {
    local out
    out="$(d run --rm --network none busybox:latest /bin/echo hi 2>&1)" \
        || die "busybox:latest does not run: $out"
    [ "$out" = hi ] || die "busybox:latest printed '$out', want 'hi'"
    if out="$(d run --rm --network none busybox-arm64:latest /bin/echo hi 2>&1)"; then
        die "busybox-arm64:latest ran on this host (output '$out'); want exec format error"
    fi
    grep -q 'exec format error' <<<"$out" \
        || die "busybox-arm64:latest failed without 'exec format error': $out"
    log "verified: busybox:latest echoes; busybox-arm64:latest fails with exec format error"
}

start() {
    need_root start
    command -v dockerd >/dev/null || die "dockerd not found: run scripts/install-deps.sh"
    command -v docker >/dev/null || die "docker CLI not found on PATH"
    mkdir -p "$DIR"
    if answering; then
        log "dockerd already answering on $SOCK"
    else
        if pid="$(daemon_pid)"; then
            die "dockerd (pid $pid) runs but does not answer on $SOCK; try: $0 stop"
        fi
        rm -f "$SOCK" "$PIDFILE"
        log "starting dockerd on $SOCK (log: $LOG)"
        setsid dockerd \
            --host "unix://$SOCK" \
            --data-root "$DIR/data" \
            --exec-root "$DIR/exec" \
            --pidfile "$PIDFILE" \
            --bridge=none --iptables=false --ip6tables=false \
            </dev/null >"$LOG" 2>&1 &
        local launched=$! waited=0
        until answering; do
            if ! kill -0 "$launched" 2>/dev/null; then
                log "dockerd exited during startup; last lines of $LOG:"
                tail -n 40 "$LOG" >&2 || true
                exit 1
            fi
            if [ "$waited" -ge $((START_TIMEOUT * 2)) ]; then
                log "dockerd did not answer within ${START_TIMEOUT}s; last lines of $LOG:"
                tail -n 40 "$LOG" >&2 || true
                stop
                exit 1
            fi
            sleep 0.5
            waited=$((waited + 1))
        done
        log "dockerd up (pid $(cat "$PIDFILE")) after ~$((waited / 2))s"
    fi
    # The socket is root:docker 0660; a developer who started us via sudo gets to use it.
    if [ -n "${SUDO_UID:-}" ] && [ "$SUDO_UID" != 0 ]; then
        chown "$SUDO_UID" "$SOCK"
    fi

    local work
    work="$(mktemp -d)"
    # shellcheck disable=SC2064 # expand $work now
    trap "rm -rf '$work'" EXIT
    build_amd64_image "$work"
    build_arm64_image "$work"
    verify_images
    log "ready: export TEST_DOCKER_HOST=unix://$SOCK"
}

wait_gone() {
    local pid="$1" what="$2" i
    for ((i = 0; i < STOP_TIMEOUT * 2; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    log "$what (pid $pid) still alive after ${STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
}

stop() {
    need_root stop
    local pid cpid=""
    # containerd spawned by this dockerd keeps its pid under our exec root
    if [ -s "$DIR/exec/containerd/containerd.pid" ]; then
        cpid="$(cat "$DIR/exec/containerd/containerd.pid")"
    fi
    if pid="$(daemon_pid)"; then
        log "stopping dockerd (pid $pid)"
        kill -TERM "$pid"
        wait_gone "$pid" dockerd
    else
        log "dockerd not running (no live pid in $PIDFILE)"
    fi
    if [ -n "$cpid" ] && kill -0 "$cpid" 2>/dev/null \
        && grep -qF "$DIR/exec/containerd" "/proc/$cpid/cmdline" 2>/dev/null; then
        log "stopping containerd (pid $cpid)"
        kill -TERM "$cpid" 2>/dev/null || true
        wait_gone "$cpid" containerd
    fi
    rm -f "$PIDFILE" "$SOCK"
    log "stopped"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status)
    # the socket is root-only: ask as root when we can
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        need_root status
    fi
    if answering; then
        echo "running: unix://$SOCK"
    else
        echo "not running"
        exit 1
    fi
    ;;
env) echo "export TEST_DOCKER_HOST=unix://$SOCK" ;;
*)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
