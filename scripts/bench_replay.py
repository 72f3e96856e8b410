#!/usr/bin/env python3
"""Whole-process replay benchmark: records/s and peak RSS of `gateway-example replay` on a tiled
input of real chat traffic, with the audit hook writing the events file.

Usage: python3 scripts/bench_replay.py [RECORDS] [RUNS] [-- extra replay flags]
Defaults: 1,000,000 records, 5 runs. Prints each run and the median; see docs/benchmarks.md.
The binary is built with the `dist` profile (release with fat LTO, see Cargo.toml); set
BENCH_PROFILE=release to measure the plain release build instead.
"""
import os, statistics, subprocess, sys, tempfile, time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
args = sys.argv[1:]
extra = args[args.index("--") + 1:] if "--" in args else []
args = args[: args.index("--")] if "--" in args else args
records = int(args[0]) if args else 1_000_000
runs = int(args[1]) if len(args) > 1 else 5

profile = os.environ.get("BENCH_PROFILE", "dist")
subprocess.run(["cargo", "build", "--profile", profile, "-q", "-p", "gateway-example", "--bin", "gateway-example", "--example", "tile_corpus"], cwd=root, check=True)
# cargo runs from the root, so a relative CARGO_TARGET_DIR is relative to it.
target = os.path.join(root, os.environ.get("CARGO_TARGET_DIR", "target"))
out_dir = {"dev": "debug", "test": "debug", "bench": "release"}.get(profile, profile)  # cargo's folder
binary = os.path.join(target, out_dir, "gateway-example")
with tempfile.TemporaryDirectory() as tmp:
    tiled = os.path.join(tmp, "tiled.jsonl")
    with open(tiled, "w") as f:
        subprocess.run([os.path.join(target, out_dir, "examples", "tile_corpus"), str(records)], stdout=f, check=True)
    rates, rss = [], []
    for i in range(runs):
        summary = os.path.join(tmp, "summary.txt")
        with open(summary, "w") as so:
            start = time.perf_counter()
            proc = subprocess.Popen([binary, "replay", tiled, "--events-out", os.path.join(tmp, "events.jsonl"), "--no-progress", *extra], stdout=so)
            _, status, usage = os.wait4(proc.pid, 0)  # this process's own peak RSS, in KiB
            wall = time.perf_counter() - start
        if status != 0:
            sys.exit(f"replay failed with status {status}")
        peak = usage.ru_maxrss
        rates.append(records / wall)
        rss.append(peak)
        print(f"run {i + 1}: {wall:.3f} s, {records / wall:,.0f} records/s (process wall time, start-up included)")
    print(open(summary).read().strip())
    print(f"median {statistics.median(rates):,.0f} records/s (min {min(rates):,.0f}, max {max(rates):,.0f}); "
          f"peak RSS {max(rss) / 1024:.1f} MiB")
