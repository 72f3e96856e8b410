#!/usr/bin/env python3
"""The replay guard, measured in pairs: an old and a new `gateway-example` replay the same tiled input
alternately (old, new, new, old, ...), and the ratio new/old records per second is taken within each
pair, so that a change in the VM's speed between pairs does not move it. Prints every pair, the median
ratio and each side's median (goal of issue 21: new at least 0.70 of old).

Both binaries are built here with the same profile (default `release`; BENCH_PROFILE=dist for fat LTO):
the new one from this checkout, the old one from git revision OLD_REV in a worktree under
target/bench-old/ (made once, reused). The input is `tile_corpus RECORDS` (the real corpora of data/
tiled, as scripts/bench_replay.py uses). Both must write the same events file: it is compared after
every pair, and a difference stops the run.

Usage: python3 scripts/bench_replay_paired.py OLD_REV [RECORDS] [PAIRS]   (defaults 300000 and 7)
"""
import filecmp
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if len(sys.argv) < 2:
    sys.exit(__doc__)
OLD_REV = sys.argv[1]
RECORDS = int(sys.argv[2]) if len(sys.argv) > 2 else 300_000
PAIRS = int(sys.argv[3]) if len(sys.argv) > 3 else 7
if RECORDS < 1 or PAIRS < 1:
    sys.exit("RECORDS and PAIRS must be at least 1")
PROFILE = os.environ.get("BENCH_PROFILE", "release")
OUT_DIR = {"dev": "debug", "test": "debug", "bench": "release"}.get(PROFILE, PROFILE)


def build(checkout, target, *extra):
    subprocess.run(["cargo", "build", "-q", "--profile", PROFILE, "-p", "gateway-example", "--bin", "gateway-example",
                    *extra], cwd=checkout, check=True, env={**os.environ, "CARGO_TARGET_DIR": target})
    return os.path.join(target, OUT_DIR)


def main():
    new_target = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR", "target"))
    new_dir = build(ROOT, new_target, "--example", "tile_corpus")
    rev = subprocess.run(["git", "rev-parse", "--short", OLD_REV], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout.strip()
    old_tree = os.path.join(new_target, "bench-old", rev)
    if not os.path.isdir(old_tree):
        subprocess.run(["git", "worktree", "add", "--detach", old_tree, rev], cwd=ROOT, check=True)
    # The old checkout finds the corpora in its own data/ (tracked, so present in the worktree).
    old_dir = build(old_tree, os.path.join(old_tree, "target"))
    binaries = {"old": os.path.join(old_dir, "gateway-example"), "new": os.path.join(new_dir, "gateway-example")}
    with tempfile.TemporaryDirectory() as tmp:
        tiled = os.path.join(tmp, "tiled.jsonl")
        with open(tiled, "w") as f:
            subprocess.run([os.path.join(new_dir, "examples", "tile_corpus"), str(RECORDS)], stdout=f, check=True,
                           cwd=ROOT)

        def run(which):
            events = os.path.join(tmp, f"events-{which}.jsonl")
            started = time.perf_counter()
            subprocess.run([binaries[which], "replay", tiled, "--events-out", events, "--no-progress"], check=True,
                           stdout=subprocess.DEVNULL)
            return RECORDS / (time.perf_counter() - started)

        rates = {"old": [], "new": []}
        ratios = []
        for pair in range(PAIRS):
            order = ["old", "new"] if pair % 2 == 0 else ["new", "old"]
            got = {which: run(which) for which in order}
            if not filecmp.cmp(os.path.join(tmp, "events-old.jsonl"), os.path.join(tmp, "events-new.jsonl"),
                               shallow=False):
                sys.exit(f"pair {pair + 1}: the old and the new binary wrote different events")
            for which in got:
                rates[which].append(got[which])
            ratios.append(got["new"] / got["old"])
            print(f"pair {pair + 1} ({order[0]} first): old {got['old']:,.0f}, new {got['new']:,.0f} records/s, "
                  f"new/old {ratios[-1]:.3f}")
    print(f"{RECORDS:,} records, {PAIRS} pairs, profile {PROFILE}, old = {rev}")
    print(f"median new/old {statistics.median(ratios):.3f} (lowest {min(ratios):.3f}, highest {max(ratios):.3f}); "
          f"median old {statistics.median(rates['old']):,.0f}, new {statistics.median(rates['new']):,.0f} records/s")


if __name__ == "__main__":
    main()
