#!/usr/bin/env python3
"""Compile-time cost of `#[hook]`: a generated crate with 0, 1, 100 and 500 hooks (a mix of sync and
async, observer and decision hooks), timed with `cargo check` and `cargo build` (dev profile) after its
dependencies are built, so only the crate itself is measured. The 0-hook crate is the baseline; the
per-hook cost is (t(500) - t(0)) / 500.

Usage: python3 scripts/bench_compile.py [RUNS]   (default 3; prints medians in seconds)
"""
import os, statistics, subprocess, sys, tempfile, time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
KINDS = [
    ("session_end", "fn h{i}(ev: &SessionEnd) {{ let _ = ev.message_count; }}"),
    ("session_start", "async fn h{i}(ev: &SessionStart, ctx: &HookContext) {{ let _ = (ev.cause, ctx.event_id()); }}"),
    ("message_received", "fn h{i}(ev: &MessageReceived) -> Result<(), HookError> {{ if ev.text.is_empty() {{ Err(\"empty\".into()) }} else {{ Ok(()) }} }}"),
    ("command", "fn h{i}(_ev: &Command) -> CommandDecision {{ CommandDecision::Allow }}"),
]

def source(n):
    lines = ["#![allow(unused_imports)]", "use hooks_core::prelude::*;", ""]
    for i in range(n):
        event, body = KINDS[i % len(KINDS)]
        lines += [f"#[hook({event}, priority = {i % 7})]", "pub " + body.format(i=i), ""]
    return "\n".join(lines) + "\n"

def timed(cmd, cwd, env):
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start

with tempfile.TemporaryDirectory() as tmp:
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(tmp, "target"))
    crate = os.path.join(tmp, "hookbench")
    os.makedirs(os.path.join(crate, "src"))
    core = os.path.join(root, "hooks-core")
    with open(os.path.join(crate, "Cargo.toml"), "w") as f:
        f.write(f'[package]\nname = "hookbench"\nversion = "0.0.0"\nedition = "2024"\n\n[dependencies]\nhooks-core = {{ path = "{core}" }}\n\n[workspace]\n')
    lib = os.path.join(crate, "src", "lib.rs")
    results = {}
    for n in [0, 1, 100, 500]:
        with open(lib, "w") as f:
            f.write(source(n))
        for mode in ["check", "build"]:
            subprocess.run(["cargo", mode, "-q"], cwd=crate, env=env, check=True)  # warm: dependencies built
            times = []
            for _ in range(runs):
                os.utime(lib)
                times.append(timed(["cargo", mode, "-q"], crate, env))
            results[(n, mode)] = statistics.median(times)
            print(f"{n:>3} hooks, cargo {mode}: {results[(n, mode)]:.3f} s (median of {runs})", flush=True)
    for mode in ["check", "build"]:
        per = (results[(500, mode)] - results[(0, mode)]) / 500
        print(f"cargo {mode}: {per * 1000:.2f} ms per hook")
