#!/usr/bin/env bash
# Explore random fault schedules in sim mode (issue: deterministic simulation).
# Builds the scenario binary in release (a debug build runs about a third as fast) and runs
# `scenario explore`; exits non-zero when a schedule fails, after writing each shrunk
# failure (scenario file + timeline) under target/explore/.
#
# Usage: scripts/explore.sh [extra scenario explore args...]
# Env:   EXPLORE_SCHEDULES   how many (default 2000: about two minutes on 2 cores)
#        EXPLORE_SEED        the seed (default: derived from HEAD's commit, so every commit
#                            explores new schedules and a failure replays from the log)
set -euo pipefail
cd "$(dirname "$0")/.."

schedules="${EXPLORE_SCHEDULES:-2000}"
if [ -n "${EXPLORE_SEED:-}" ]; then
    seed="$EXPLORE_SEED"
else
    seed=$((16#$(git rev-parse --short=8 HEAD 2>/dev/null || echo 0)))
fi
cargo build --release -p scenarios --bin scenario
echo "[explore.sh] scenario explore --schedules $schedules --seed $seed" >&2
exec target/release/scenario explore --schedules "$schedules" --seed "$seed" \
    --known scenarios/known-findings.txt "$@"
