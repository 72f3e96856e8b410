#!/usr/bin/env python3
"""Dispatch benchmark, repeated: runs `cargo bench -p hooks-core --bench dispatch` (and `--bench
dispatch_mimalloc`, the async cases with mimalloc as the allocator) RUNS times and prints,
for every case, the median over the runs of criterion's median time per event, with the lowest and
highest run, and the figures the goals are stated in (docs/benchmarks.md):

- sync: dispatch time / direct calls (goal: at most 2x), and both against the hook list walked by
  hand (`walk` in benches/support/dispatch_setup.rs: what any future-returning delivery through a
  registry costs at least, without the dispatcher's statistics, per-handler context and reports);
- async: (dispatch - direct awaits) / N, ns per handler above the limit (goal: at most 40 ns);
- isolation: (isolated - no isolation) / N, ns per handler (goal: at most 500 ns);

The ratio to a Python gateway's emit is measured side by side by scripts/bench_python_peer.py.

Usage: python3 scripts/bench_dispatch.py [RUNS]   (default 5; each run takes about a minute)
Repeating matters on a shared VM, where one criterion run can be 2x off the next.
"""
import json, os, statistics, subprocess, sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
# cargo runs from the root, so a relative CARGO_TARGET_DIR is relative to it.
target = os.path.join(root, os.environ.get("CARGO_TARGET_DIR", "target"))
NS = [1, 10, 100]
LABELS = ["direct", "walk", "no_isolation", "isolated"]
KINDS = ["sync", "async", "async_mimalloc"]

samples = {}
for run in range(runs):
    for bench in ["dispatch", "dispatch_mimalloc"]:
        subprocess.run(
            ["cargo", "bench", "-q", "-p", "hooks-core", "--bench", bench, "--",
             "--warm-up-time", "1", "--measurement-time", "2", "--noplot"],
            cwd=root, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    for kind in KINDS:
        for label in LABELS:
            for n in NS:
                path = os.path.join(target, "criterion", f"dispatch_{kind}", label, str(n), "new", "estimates.json")
                with open(path) as f:
                    samples.setdefault((kind, label, n), []).append(json.load(f)["median"]["point_estimate"])
    print(f"run {run + 1}/{runs} done", file=sys.stderr)

med = {k: statistics.median(v) for k, v in samples.items()}
print(f"median of {runs} runs of criterion's median, ns per event (lowest-highest run)\n")
print("| handlers | N | direct | walk | no isolation | isolated |")
print("|---|---:|---:|---:|---:|---:|")
for kind in KINDS:
    for n in NS:
        def ns(x):  # one decimal below 100 ns, where it matters
            return f"{x:,.1f}" if x < 100 else f"{x:,.0f}"
        cells = [f"{ns(med[(kind, l, n)])} ({ns(min(samples[(kind, l, n)]))}-{ns(max(samples[(kind, l, n)]))})" for l in LABELS]
        print(f"| {kind} | {n} | " + " | ".join(cells) + " |")
print()
for n in NS:
    d, walk, off, iso = (med[("sync", l, n)] for l in LABELS)
    print(f"sync N={n}: {off / d:.2f}x direct (the walk {walk / d:.2f}x; ours / walk {off / walk:.2f}x); "
          f"isolation {(iso - off) / n:.0f} ns/handler")
for kind, n in [(kind, n) for kind in KINDS[1:] for n in NS]:
    d, walk, off, iso = (med[(kind, l, n)] for l in LABELS)
    print(f"{kind} N={n}: {(off - d) / n:.1f} ns/handler above direct awaits (the walk {(walk - d) / n:.1f}); "
          f"isolation {(iso - off) / n:.0f} ns/handler")
