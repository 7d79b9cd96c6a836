#!/usr/bin/env bash
# Run a scenario file (a case, or a shrunk failing schedule) and open its timeline: one
# self-contained HTML page (scenarios/README.md, "Seeing an execution: the timeline").
#
# Usage: scripts/timeline.sh FILE [ARGS...]    ARGS go to `scenario run` (--seed S, ...)
# Writes target/timelines/<file stem>.html (TIMELINE_DIR overrides the directory), prints
# its path and file:// URL, and opens it in a browser when a display is there
# (TIMELINE_OPEN=0: never). Exits with the scenario's verdict; a failing scenario's
# timeline is written too (that is what it is for).
set -uo pipefail

cd "$(dirname "$0")/.."
if [ "$#" -lt 1 ] || [ ! -f "$1" ]; then
    echo "usage: scripts/timeline.sh FILE [--seed S ...]" >&2
    exit 2
fi
file=$1
shift
dir="${TIMELINE_DIR:-target/timelines}"
mkdir -p "$dir"
out="$dir/$(basename "${file%.*}").html"

cargo run -q -p scenarios --bin scenario -- run "$file" --timeline "$out" "$@"
verdict=$?

if [ -f "$out" ]; then
    abs="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
    echo "timeline: $abs"
    echo "open:     file://$abs"
    if [ "${TIMELINE_OPEN:-1}" != 0 ]; then
        if [ "$(uname)" = Darwin ]; then
            open "$abs" || true
        elif [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && command -v xdg-open >/dev/null; then
            xdg-open "$abs" >/dev/null 2>&1 || true
        fi
    fi
fi
exit "$verdict"
