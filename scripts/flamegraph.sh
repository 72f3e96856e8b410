#!/usr/bin/env bash
# Flame graphs of where the CPU time goes, from perf's cpu-clock samples with DWARF call stacks
# (inlined frames included), folded and drawn by inferno. docs/benchmarks.md says what they showed.
#
# Usage:
#   scripts/flamegraph.sh replay [RECORDS]          gateway-example replay (dist build) of RECORDS
#                                                   records tiled from the corpora (default 1,000,000),
#                                                   the audit hook writing its events file
#   scripts/flamegraph.sh dispatch KIND MODE N [EVENTS]
#                                                   one loop of hooks-core's dispatch_ops (release
#                                                   build): KIND sync|async, MODE direct|walk|off|
#                                                   contained, N handlers (default 20,000,000 events)
#
# Writes target/flamegraphs/NAME.svg (open it in a browser: click a frame to zoom, Ctrl-F to search)
# and NAME.folded, the folded stacks, for comparing two builds:
#   target/tools/bin/inferno-diff-folded before.folded after.folded | target/tools/bin/inferno-flamegraph > diff.svg
#
# Needs perf (Debian: linux-perf; installed with apt-get when missing and run as root) and inferno
# (installed once into target/tools with cargo). Sampling other users' processes or the kernel needs
# root or kernel.perf_event_paranoid <= 1. perf samples the cpu-clock software event (the only one
# on this project's VM, which has no hardware counters), FREQ times a second (default 2000).
# Frames narrower than MINWIDTH percent of the whole are left out of the drawing (default 0.1; the
# folded file keeps them all).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac # cargo runs from the root, below
tools="$target/tools"
out="$target/flamegraphs"
freq="${FREQ:-2000}"
minwidth="${MINWIDTH:-0.1}"
inferno_version="0.12.8"

usage() {
    sed -n '4,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

case "${1:-}" in
replay) [ $# -le 2 ] || usage ;;
dispatch) [ $# -ge 4 ] && [ $# -le 5 ] || usage ;;
*) usage ;;
esac

if ! command -v perf > /dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
        echo "flamegraph: installing perf (linux-perf)" >&2
        apt-get install -y -q linux-perf >&2
    else
        echo "flamegraph: perf is missing; install it (Debian: apt-get install linux-perf)" >&2
        exit 1
    fi
fi
cd "$root"
if [ ! -x "$tools/bin/inferno-flamegraph" ]; then
    echo "flamegraph: installing inferno $inferno_version into $tools (once)" >&2
    cargo install --quiet --locked --version "$inferno_version" --root "$tools" inferno
fi

mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

case "${1:-}" in
replay)
    records="${2:-1000000}"
    cargo build --quiet --profile dist -p gateway-example --bin gateway-example --example tile_corpus
    "$target/dist/examples/tile_corpus" "$records" > "$work/tiled.jsonl"
    name="replay-$records"
    cmd=("$target/dist/gateway-example" replay "$work/tiled.jsonl" --events-out "$work/events.jsonl" --no-progress)
    ;;
dispatch)
    cargo build --quiet --release -p hooks-core --example dispatch_ops
    name="dispatch-$2-$3-$4"
    cmd=("$target/release/examples/dispatch_ops" "$2" "$3" "$4" "${5:-20000000}")
    ;;
esac

echo "flamegraph: sampling ${cmd[*]} at $freq Hz" >&2
perf record --quiet -e cpu-clock -F "$freq" --call-graph dwarf,16384 -o "$work/perf.data" -- "${cmd[@]}" > /dev/null
perf script -i "$work/perf.data" 2> /dev/null | "$tools/bin/inferno-collapse-perf" > "$out/$name.folded"
# perf weighs each cpu-clock sample by its period, in nanoseconds: the counts are CPU time.
"$tools/bin/inferno-flamegraph" --title "$name" --subtitle "perf cpu-clock samples at $freq Hz" \
    --countname ns --minwidth "$minwidth" < "$out/$name.folded" > "$out/$name.svg"
seconds="$(awk '{ n += $NF } END { printf "%.2f", n / 1e9 }' "$out/$name.folded")"
echo "flamegraph: $seconds s of CPU time sampled; wrote $out/$name.svg and $out/$name.folded" >&2
