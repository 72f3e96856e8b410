#!/usr/bin/env python3
"""The dispatch goals measured in pairs: the dispatcher and its references run back to back, so that
every ratio compares runs made at the same machine speed.

`bench_dispatch.py` takes criterion's medians, and criterion measures the direct calls, the walk and
the dispatcher one after the other, seconds apart. This VM changes speed by up to ~1.8x within
minutes (docs/benchmarks.md), so a ratio of two such medians can be off by as much: sync N = 1 gave
2.05x in one five-run bench and 2.73x in the next, on the same code. Here each round runs
`dispatch_ops` (hooks-core/examples) once per mode, in turn, each run a fresh process of ~0.1-0.3 s,
and takes the ratio within the round; the figures are the median over the rounds, with the lowest and
highest round. The goal figures, as in bench_dispatch.py:

- sync, no isolation: dispatcher / direct calls (goal: at most 2x), and the walk / direct;
- async, no isolation: (dispatcher - direct awaits) / N, ns per handler (goal: at most 40 ns), with
  the system allocator (`dispatch_ops`) and with mimalloc (`dispatch_ops_mimalloc`, as the gateway
  runs), and the same for the walk.

Usage: python3 scripts/bench_dispatch_paired.py [ROUNDS]   (default 9; about a minute)
"""
import os, re, statistics, subprocess, sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 9
if rounds < 1:
    sys.exit("ROUNDS must be 1 or more")
# cargo runs from the root, so a relative CARGO_TARGET_DIR is relative to it.
target = os.path.join(root, os.environ.get("CARGO_TARGET_DIR", "target"))
subprocess.run(["cargo", "build", "-q", "--release", "-p", "hooks-core",
                "--example", "dispatch_ops", "--example", "dispatch_ops_mimalloc"], cwd=root, check=True)
examples = os.path.join(target, "release", "examples")
MODES = ["direct", "walk", "off"]
# Events per run, so that each run takes ~0.1-0.3 s here.
EVENTS = {("sync", 1): 20_000_000, ("sync", 10): 4_000_000, ("sync", 100): 400_000,
          ("async", 1): 5_000_000, ("async", 10): 800_000, ("async", 100): 80_000}


def time_per_event(binary, kind, mode, n):
    """One run of dispatch_ops: its wall-clock time per event, ns."""
    args = [os.path.join(examples, binary), kind, mode, str(n), str(EVENTS[(kind, n)])]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"([\d.]+) ns per event", out).group(1))


def spread(values, fmt):
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"


cases = [("sync", "dispatch_ops"), ("async", "dispatch_ops"), ("async", "dispatch_ops_mimalloc")]
print(f"{rounds} rounds; each round runs direct, walk and the dispatcher (no isolation), in rotating order")
for kind, binary in cases:
    allocator = "mimalloc" if binary.endswith("mimalloc") else "system allocator"
    for n in [1, 10, 100]:
        times = {m: [] for m in MODES}
        for r in range(rounds):
            for mode in MODES[r % 3:] + MODES[:r % 3]:
                times[mode].append(time_per_event(binary, kind, mode, n))
        pairs = list(zip(times["direct"], times["walk"], times["off"]))
        if kind == "sync":
            ours = [o / d for d, w, o in pairs]
            walk = [w / d for d, w, o in pairs]
            fmt = lambda x: f"{x:.2f}x"
            what = "dispatcher / direct (goal <= 2x)"
        else:
            ours = [(o - d) / n for d, w, o in pairs]
            walk = [(w - d) / n for d, w, o in pairs]
            fmt = lambda x: f"{x:.1f} ns"
            what = "(dispatcher - direct) / N (goal <= 40 ns)"
        print(f"{kind:5} {allocator:16} N={n:<3} direct {spread(times['direct'], lambda x: f'{x:.1f}')} ns | "
              f"{what}: {spread(ours, fmt)} | the walk: {spread(walk, fmt)}", flush=True)
