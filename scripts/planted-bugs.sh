#!/usr/bin/env bash
# Proof of power (issue 12, section 6): plants each bug of scenarios/planted/*.patch, one at
# a time, in a scratch worktree of HEAD, and checks that `scenario explore` catches it.
#
# Usage: scripts/planted-bugs.sh [NAME...]     (NAME: a patch's stem; default: all)
#   PLANTED_SCHEDULES  schedules per bug (default 2000, the CI budget)
#   PLANTED_SEED       exploration seed (default 1)
#   PLANTED_FIRST=1    stop each exploration once its first failure is shrunk and written
#                      (quicker; the table then says "first" instead of explore's summary)
#   PLANTED_TARGET     cargo target dir shared by every bug (default target/planted/target).
#                      Never the repo's own target/: cargo names a workspace crate's
#                      artifacts by its path relative to the workspace, and judges them
#                      fresh by mtime, so the tree would pick up a planted launcher.
#                      Created by hard-linking the repo's third-party artifacts (never
#                      rewritten), so only the workspace's crates build.
# For each bug: target/planted/<name>/explore.log (explore's output), the shrunk scenario
# file of the first failure, and build.log. Ends with a table; exits non-zero when a patch
# does not apply, does not build, or a bug is not caught.
set -uo pipefail

# The flags every exploration gets, besides --schedules, --seed and --out. Known open
# findings are set apart, so "caught" means a failure the clean tree does not have.
EXPLORE_FLAGS=(--known scenarios/known-findings.txt)

cd "$(dirname "$0")/.."
root=$(pwd)
export CARGO_INCREMENTAL=0
schedules=${PLANTED_SCHEDULES:-2000}
seed=${PLANTED_SEED:-1}
planted=$root/target/planted
export CARGO_TARGET_DIR=${PLANTED_TARGET:-$planted/target}
mkdir -p "$planted"

# Seeds an empty target dir with copies of the repo's compiled third-party crates.
seed_target() {
    local src=$root/target/release dst=$CARGO_TARGET_DIR/release d
    local ours='/(lib)?(protocol|launcher|launcher[-_]suite|spacelift[-_]launcher|fake[-_]backend|fake[-_]docker|scenarios?|sandbox)-[^/]*$'
    [ -d "$dst" ] || [ ! -d "$src/deps" ] && return 0
    echo "seeding $CARGO_TARGET_DIR with the repo's third-party artifacts (copies: a hard link would let a rebuild here rewrite the repo's files)"
    for d in deps .fingerprint build; do
        mkdir -p "$dst/$d"
        find "$src/$d" -mindepth 1 -maxdepth 1 | grep -Ev "$ours" |
            xargs -r cp -a -t "$dst/$d/" 2>/dev/null || true
    done
}

if [ "$#" -gt 0 ]; then
    names=("$@")
else
    names=()
    for p in scenarios/planted/*.patch; do
        names+=("$(basename "$p" .patch)")
    done
fi

# Every patch must still apply to HEAD before any time is spent building.
status=0
for name in "${names[@]}"; do
    patch=scenarios/planted/$name.patch
    if [ ! -f "$patch" ]; then
        echo "planted bug $name: no file $patch" >&2
        status=1
    elif ! git apply --check "$patch" 2>"$planted/$name.check"; then
        echo "planted bug $name: $patch NO LONGER APPLIES to HEAD:" >&2
        sed 's/^/    /' "$planted/$name.check" >&2
        status=1
    fi
done
[ "$status" -eq 0 ] || exit 1
seed_target

scratch=$planted/worktree
cleanup() {
    git worktree remove --force "$scratch" >/dev/null 2>&1 || rm -rf "$scratch"
    git worktree prune
}
trap cleanup EXIT
cleanup
git worktree add --detach "$scratch" HEAD >/dev/null || exit 1

rows=()
for name in "${names[@]}"; do
    out=$planted/$name
    rm -rf "$out"
    mkdir -p "$out"
    git -C "$scratch" checkout -q -- .
    git -C "$scratch" apply "$root/scenarios/planted/$name.patch" || {
        rows+=("$name|no (patch failed)|-|-|-")
        status=1
        continue
    }
    echo "== $name: $(head -1 "scenarios/planted/$name.patch" | sed 's/^# planted bug [^:]*: //')"
    if ! (cd "$scratch" && cargo build -q --release -p scenarios --bin scenario) >"$out/build.log" 2>&1; then
        echo "   build failed: $out/build.log"
        rows+=("$name|no (build failed)|-|-|-")
        status=1
        continue
    fi
    started=$(date +%s%N)
    "$CARGO_TARGET_DIR/release/scenario" explore --schedules "$schedules" --seed "$seed" \
        --out "$out/found" ${EXPLORE_FLAGS[@]+"${EXPLORE_FLAGS[@]}"} >"$out/explore.log" 2>&1 &
    pid=$!
    stopped=
    if [ "${PLANTED_FIRST:-0}" = 1 ]; then
        while kill -0 "$pid" 2>/dev/null; do
            if grep -q -E '^  replay: ' "$out/explore.log" 2>/dev/null; then
                kill "$pid" 2>/dev/null
                stopped=1
                break
            fi
            sleep 1
        done
    fi
    wait "$pid"
    rc=$?
    tenths=$((($(date +%s%N) - started) / 100000000))
    seconds=$((tenths / 10)).$((tenths % 10))
    summary=$(grep -E '^explored [0-9]+ schedules: [0-9]+ failed' "$out/explore.log" | tail -1)
    failed=$(echo "$summary" | sed -E 's/.*: ([0-9]+) failed.*/\1/')
    first=$(grep -m1 -E '^schedule [0-9]+ \(seed' "$out/explore.log" | sed -E 's/^schedule ([0-9]+) .*/\1/')
    shrunk=$(grep -m1 -E '^  shrunk to [0-9]+ ops: ' "$out/explore.log" | sed -E 's/^  shrunk to [0-9]+ ops: //')
    copied=-
    if [ -n "$shrunk" ] && [ -f "$shrunk" ]; then
        cp "$shrunk" "$out/"
        copied=target/planted/$name/$(basename "$shrunk")
        # Its timeline, when explore wrote one beside it.
        [ -f "${shrunk%.*}.html" ] && cp "${shrunk%.*}.html" "$out/"
    fi
    if [ -n "$stopped" ]; then
        summary="stopped at the first failure (PLANTED_FIRST=1)"
        caught=yes
    elif [ -z "$summary" ]; then
        caught="no (explore ended rc=$rc without a summary)"
        status=1
    elif [ "${failed:-0}" -gt 0 ]; then
        caught=yes
    else
        caught=no
        status=1
    fi
    echo "   $summary (${seconds}s)"
    [ -n "$first" ] && echo "   first failure at schedule $first; shrunk: $copied"
    rows+=("$name|$caught|${first:--}|$seconds|$copied")
done

echo
printf '%-16s %-8s %-10s %-8s %s\n' bug caught schedules seconds "shrunk file"
for row in "${rows[@]}"; do
    IFS='|' read -r name caught first seconds file <<<"$row"
    printf '%-16s %-8s %-10s %-8s %s\n' "$name" "$caught" "$first" "$seconds" "$file"
done
exit "$status"
