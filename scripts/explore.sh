#!/usr/bin/env bash
# Explore random fault schedules in sim mode (issue: deterministic simulation).
# Builds the scenario binary in release (a debug build runs about a third as fast) and runs
# `scenario explore`; exits non-zero when a schedule fails, after writing each shrunk
# failure (scenario file + timeline) under target/explore/.
#
# Usage: scripts/explore.sh [extra scenario explore args...]
# Env:   EXPLORE_SCHEDULES   how many (default 10000: about two minutes on 2 cores)
#        EXPLORE_SEED        the seed (default 21: fixed, so CI explores the same schedules
#                            on every commit and a red run is the commit's doing; soak with
#                            other seeds, e.g. EXPLORE_SEED=$RANDOM EXPLORE_SCHEDULES=100000)
set -euo pipefail
cd "$(dirname "$0")/.."

schedules="${EXPLORE_SCHEDULES:-10000}"
seed="${EXPLORE_SEED:-21}"
cargo build --release -p scenarios --bin scenario
echo "[explore.sh] scenario explore --schedules $schedules --seed $seed" >&2
exec target/release/scenario explore --schedules "$schedules" --seed "$seed" \
    --known scenarios/known-findings.txt "$@"
