#!/usr/bin/env bash
# Prints the timeline of one warm run (benches/timeline.rs, release) as a Markdown table:
# every event of the fake backend, fake-docker and the in-process launcher from the run's
# scheduling to its end, on one clock. docs/performance.md "Timeline of a warm run" keeps
# one from before and one from after the changes of issue 13.
#
#   scripts/warm-run-timeline.sh > /tmp/timeline.md
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL=0
log="${TMPDIR:-/tmp}/timeline-build.log"
nice -n 5 cargo bench --bench timeline 2>"$log" || { tail -n 30 "$log" >&2; exit 1; }
