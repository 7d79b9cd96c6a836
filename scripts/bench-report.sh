#!/usr/bin/env bash
# Runs the benchmarks (release: the bench profile) and prints the report of
# docs/performance.md: the targets as ratios to the floor, spawn latency (batch medians
# from criterion, per-run p50/p99 from target/spawn-runs.json, each as a ratio to the
# floor), throughput at capacity 64 (against its floor), the fakes' own capacity and the
# launcher's memory.
#
#   scripts/bench-report.sh              # run both benches, then print the report
#   scripts/bench-report.sh --no-run     # print the report of the last run only
#   scripts/bench-report.sh --write      # run, then replace the generated part of
#                                        # docs/performance.md with the report
#   scripts/bench-report.sh --no-run --write
#
# MEMORY_SOAK_RUNS=N adds a soak to the memory bench (N quick runs, RSS after each batch).
#
# Env: SPAWN_BENCH_CONCURRENCY (default 1,64); SPAWN_BENCH_FILTER, criterion's filter for
# the spawn bench (default: every variant at c=1, floor and warm only at higher c, where
# 64 downloads of 50 MiB per iteration would take most of an hour). Needs jq.
set -euo pipefail
cd "$(dirname "$0")/.."

run=1 write=0
for arg in "$@"; do
    case "$arg" in
        --no-run) run=0 ;;
        --write) write=1 ;;
        *) echo "unknown argument: $arg (expected --no-run and/or --write)" >&2; exit 2 ;;
    esac
done
command -v jq >/dev/null || { echo "bench-report.sh needs jq (apt-get install jq)" >&2; exit 1; }

export SPAWN_BENCH_CONCURRENCY="${SPAWN_BENCH_CONCURRENCY:-1,64}"
SPAWN_BENCH_FILTER="${SPAWN_BENCH_FILTER:-^(spawn/(floor|warm)/|spawn/(download_every_run|cold)/1\$|throughput/)}"
if [ "$run" = 1 ]; then
    export CARGO_INCREMENTAL=0
    nice -n 5 cargo bench --bench spawn -- "$SPAWN_BENCH_FILTER" >&2
    nice -n 5 cargo bench --bench fakes >&2
    nice -n 5 cargo bench --bench memory >&2
fi

crit=target/criterion
runs=target/spawn-runs.json
median() { # criterion bench dir -> median point estimate (ns or bytes), or empty
    local f="$crit/$1/new/estimates.json"
    [ -f "$f" ] && jq -r '.median.point_estimate' "$f" || true
}
quantile() { # key q -> per-run latency quantile in ms (nearest rank), or empty
    [ -f "$runs" ] || return 0
    jq -r --arg k "$1" --argjson q "$2" \
        '.[$k] // [] | sort | if length == 0 then empty
         else .[((length * $q) | ceil) - 1] end' "$runs"
}
fmt() { awk -v a="$1" -v d="$2" -v u="$3" 'BEGIN { printf "%.1f %s", a / d, u }'; }
ratio() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fx", a / b }' || echo "-"; }

mib() { awk -v a="$1" 'BEGIN { printf "%.1f MiB", a / 1048576 }'; }
pass() { awk -v a="$1" -v op="$2" -v b="$3" 'BEGIN { ok = (op == "<=") ? a <= b : a >= b; print (ok ? "met" : "missed") }'; }

# The issue's table: the targets as ratios to the floor of the same run.
targets() {
    local f1 w1 f64 w64 tf tl r1 r64 rt
    f1="$(quantile floor/1 0.5)"; w1="$(quantile warm/1 0.5)"
    f64="$(quantile floor/64 0.99)"; w64="$(quantile warm/64 0.99)"
    tf="$(median throughput/floor)"; tl="$(median throughput/launcher)"
    echo "### Targets"
    echo
    echo "Ratios to the floor measured in the same run (latency: per-run p50 at c=1, p99 at c=64;" \
        "throughput: floor time / launcher time for 128 runs at capacity 64)."
    echo
    echo "| | floor | warm | ratio | target | |"
    echo "|---|---:|---:|---:|---:|---|"
    if [ -n "$f1" ] && [ -n "$w1" ]; then
        r1="$(awk -v a="$w1" -v b="$f1" 'BEGIN { printf "%.2f", a / b }')"
        echo "| c=1, p50 | $(fmt "$f1" 1 ms) | $(fmt "$w1" 1 ms) | ${r1}x | <= 1.5x | $(pass "$r1" "<=" 1.5) |"
    fi
    if [ -n "$f64" ] && [ -n "$w64" ]; then
        r64="$(awk -v a="$w64" -v b="$f64" 'BEGIN { printf "%.2f", a / b }')"
        echo "| c=64, p99 | $(fmt "$f64" 1 ms) | $(fmt "$w64" 1 ms) | ${r64}x | <= 2x | $(pass "$r64" "<=" 2) |"
    fi
    if [ -n "$tf" ] && [ -n "$tl" ]; then
        rt="$(awk -v a="$tf" -v b="$tl" 'BEGIN { printf "%.2f", a / b }')"
        echo "| throughput, 128 runs at capacity 64 | $(fmt "$tf" 1e6 ms) | $(fmt "$tl" 1e6 ms) | ${rt}x | >= 0.7x | $(pass "$rt" ">=" 0.7) |"
    fi
    local notes=target/memory-notes.json idle at64 added size static
    idle="$(median memory/idle)"
    if [ -n "$idle" ] && [ -f "$notes" ]; then
        at64="$(jq -r '.rss_at_64 | sort | if length == 0 then empty else .[length / 2 | floor] end' "$notes")"
        added="$(jq -r '.download_growth | sort | if length == 0 then empty else .[length / 2 | floor] end' "$notes")"
        echo "| idle RSS | | $(mib "$idle") | | <= 10 MiB | $(pass "$idle" "<=" 10485760) |"
        [ -n "$at64" ] && echo "| RSS with 64 runs in flight | | $(mib "$at64") | | <= 24 MiB | $(pass "$at64" "<=" 25165824) |"
        [ -n "$added" ] && echo "| RSS added by a 200 MiB download | | $(mib "$added") | | <= 2 MiB | $(pass "$added" "<=" 2097152) |"
        size="$(jq -r '.binary_bytes // empty' "$notes")"
        [ -n "$size" ] && echo "| dist binary (the memory bench's), stripped | | $(mib "$size") | | | |"
    fi
    static=target/static/x86_64-unknown-linux-gnu/dist/spacelift-launcher
    [ -f "$static" ] && echo "| static binary (scripts/build-static.sh), stripped | | $(mib "$(stat -c %s "$static")") | | | |"
    return 0
}

# The fakes' own capacity (benches/fakes.rs): items per second with a direct client.
fakes() {
    echo "### The fakes' own capacity"
    echo
    echo "A direct client, 256 items per iteration, 64 in flight (criterion median)."
    echo
    echo "| what | per second | launcher's need at c=64 |"
    echo "|---|---:|---|"
    local m
    m="$(median fakes/offers)"
    [ -n "$m" ] && echo "| fake backend: run.scheduled over MQTT, scheduled to delivered | $(awk -v m="$m" 'BEGIN { printf "%.0f", 256 / (m / 1e9) }') | one per run |"
    m="$(median fakes/claims)"
    [ -n "$m" ] && echo "| fake backend: claims over HTTPS | $(awk -v m="$m" 'BEGIN { printf "%.0f", 256 / (m / 1e9) }') | one per run |"
    m="$(median fakes/create_start)"
    [ -n "$m" ] && echo "| fake-docker: inspect + create + start | $(awk -v m="$m" 'BEGIN { printf "%.0f", 256 / (m / 1e9) }') | one per run |"
    return 0
}

report() {
    local model
    model="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "Machine: $(nproc) CPUs (${model:-unknown model}), $(free -g | awk '/^Mem:/ { print $2 }') GiB;" \
        "$(uname -sr); $(rustc --version)"
    echo
    echo "Commands (release, the bench profile): \`SPAWN_BENCH_CONCURRENCY=$SPAWN_BENCH_CONCURRENCY cargo bench --bench spawn\`," \
        "\`cargo bench --bench fakes\`, \`cargo bench --bench memory\`; report: \`scripts/bench-report.sh --no-run\`."
    echo
    targets
    echo
    echo "### Spawn latency"
    echo
    echo "Batch: median time for all *c* containers to start (criterion, 10 samples)." \
        "Per run: each run's time from the batch's start to its container's start, over every" \
        "batch of the run (warm-up included). Ratios are to the floor's figure in the same column."
    echo
    echo "| c | variant | batch median | batch / floor | per-run p50 | per-run p99 | p99 / floor p99 |"
    echo "|---:|---|---:|---:|---:|---:|---:|"
    local c v m fm p50 p99 fp99
    IFS=, read -ra levels <<<"$SPAWN_BENCH_CONCURRENCY"
    for c in "${levels[@]}"; do
        fm="$(median "spawn/floor/$c")"
        fp99="$(quantile "floor/$c" 0.99)"
        for v in floor download_every_run warm cold; do
            m="$(median "spawn/$v/$c")"
            [ -n "$m" ] || continue
            p50="$(quantile "$v/$c" 0.5)"
            p99="$(quantile "$v/$c" 0.99)"
            echo "| $c | $v | $(fmt "$m" 1e6 ms) | $(ratio "$m" "$fm")" \
                "| ${p50:+$(fmt "$p50" 1 ms)} | ${p99:+$(fmt "$p99" 1 ms)} | $(ratio "$p99" "$fp99") |"
        done
    done
    echo
    echo "### Throughput"
    echo
    local tf tl
    tf="$(median throughput/floor)"
    tl="$(median throughput/launcher)"
    echo "128 runs (containers exit at once) through capacity 64, until every run has ended."
    echo
    echo "| | median for 128 runs | runs per second | vs floor |"
    echo "|---|---:|---:|---:|"
    for v in floor launcher; do
        m="$(median "throughput/$v")"
        [ -n "$m" ] || continue
        echo "| $v | $(fmt "$m" 1e6 ms) | $(awk -v m="$m" 'BEGIN { printf "%.1f", 128 / (m / 1e9) }')" \
            "| $(ratio "$tf" "$m") |"
    done
    echo
    fakes
    echo
    echo "### Memory (the launcher process, RSS)"
    echo
    local idle peak64 peak200
    idle="$(median memory/idle)"
    peak64="$(median memory/runs64)"
    peak200="$(median memory/download200)"
    if [ -z "$idle" ]; then
        echo "No memory results: run \`cargo bench --bench memory\`."
        return
    fi
    echo "| phase | median | vs idle |"
    echo "|---|---:|---:|"
    echo "| idle (connected, binary cached) | $(fmt "$idle" 1048576 MiB) | 1.0x |"
    [ -n "$peak64" ] && echo "| peak with 64 runs in flight | $(fmt "$peak64" 1048576 MiB) | $(ratio "$peak64" "$idle") |"
    [ -n "$peak200" ] && echo "| peak while downloading a 200 MiB binary | $(fmt "$peak200" 1048576 MiB) | $(ratio "$peak200" "$idle") |"
    local notes=target/memory-notes.json added at64
    if [ -f "$notes" ]; then
        at64="$(jq -r '.rss_at_64 | sort | if length == 0 then empty else .[length / 2 | floor] end' "$notes")"
        added="$(jq -r '.download_growth | sort | if length == 0 then empty else .[length / 2 | floor] end' "$notes")"
        echo
        [ -n "$at64" ] && echo "RSS at the moment all 64 containers were running (median): $(fmt "$at64" 1048576 MiB)."
        if [ -n "$added" ]; then
            echo -n "Downloading the 200 MiB binary raised the peak by $(fmt "$added" 1048576 MiB) over the RSS at the"
            echo -n " start of each iteration (median): "
            if awk -v a="$added" 'BEGIN { exit !(a < 50 * 1048576) }'; then
                echo "it is streamed to disk, not held in memory."
            else
                echo "a large part of it is held in memory (expected: streamed)."
            fi
        fi
        local soak
        soak="$(jq -r '.soak // [] | if length == 0 then empty else
            [.[] | select(.[0] == 64 or (.[0] % 2048) < 64)] + [last] | unique
            | map("| \(.[0]) | \((.[1] / 1048576 * 10 | round) / 10) MiB |") | .[] end' "$notes")"
        if [ -n "$soak" ]; then
            echo
            echo "Soak (\`MEMORY_SOAK_RUNS\`): VmRSS after that many more quick runs, 64 at a time."
            echo
            echo "| runs | VmRSS |"
            echo "|---:|---:|"
            echo "$soak"
        fi
    fi
}

if [ "$write" = 1 ]; then
    doc=docs/performance.md
    out="$(report)"
    begin='<!-- BEGIN GENERATED by scripts/bench-report.sh: do not edit by hand -->'
    end='<!-- END GENERATED -->'
    grep -qF "$begin" "$doc" && grep -qF "$end" "$doc" \
        || { echo "$doc lacks the generated-section markers" >&2; exit 1; }
    {
        sed -n "1,/^$(printf '%s' "$begin" | sed 's/[][\/.*^$]/\\&/g')\$/p" "$doc"
        echo
        echo "Generated on $(date -u +%Y-%m-%d)."
        echo
        echo "$out"
        echo
        sed -n "/^$(printf '%s' "$end" | sed 's/[][\/.*^$]/\\&/g')\$/,\$p" "$doc"
    } >"$doc.tmp"
    mv "$doc.tmp" "$doc"
    echo "updated $doc" >&2
else
    report
fi
