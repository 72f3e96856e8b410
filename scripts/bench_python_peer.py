#!/usr/bin/env python3
"""The dispatch guard of issue 21, measured side by side in one run: our dispatcher without isolation
against the common Python gateway pattern, at N = 1, 10, 100 no-op handlers.

The Python peer is the pattern popular gateways use for hooks: a dict from event name to a list of
handlers; emit calls each handler, awaits the result if it is awaitable, and logs and swallows any
exception; its handlers are no-op `async def`s. Ours is `hooks-core/examples/dispatch_ops.rs` (`sync off
N` and `async off N`: `Dispatcher::deliver` of one `MessageReceived` to N no-op handlers registered as
`#[hook]` registers a plain `fn` or an `async fn`, no isolation), built in release.

The two are run alternately, ROUNDS times per N (Python, then ours, then Python...), so that a change in
the VM's speed hits both; the table gives the median ns per event of each and the median of the
per-round ratios (goal: Python / ours >= 20; a no-op hook in Rust is a plain `fn`, the `async fn` column
is the same work through a boxed future).

Usage: python3 scripts/bench_python_peer.py [ROUNDS] [EVENTS]   (defaults 7 and 200000)
"""
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 7
EVENTS = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
NS = [1, 10, 100]
if ROUNDS < 1 or EVENTS < 1:
    sys.exit("ROUNDS and EVENTS must be at least 1")

log = logging.getLogger("hooks")


class Hooks:
    """The peer: event name -> handlers; emit awaits what is awaitable, logs and swallows errors."""

    def __init__(self):
        self.handlers = {}

    def register(self, event, handler):
        self.handlers.setdefault(event, []).append(handler)

    async def emit(self, event, payload):
        for handler in self.handlers.get(event, ()):
            try:
                result = handler(payload)
                if asyncio.iscoroutine(result) or hasattr(result, "__await__"):
                    await result
            except Exception:  # a hook must not take the gateway down
                log.exception("hook %r failed on %s", handler, event)


async def noop(payload):
    return None


def python_ns_per_event(n, events):
    hooks = Hooks()
    for _ in range(n):
        hooks.register("message_received", noop)
    payload = {"event_id": "1", "session_id": "1", "chat_id": "chat", "user_id": "user", "text": "hello"}
    # Fewer events at N = 100 keep a round near a second; the time is per event either way.
    count = max(1, events // n)

    async def run():
        started = time.perf_counter_ns()
        for _ in range(count):
            await hooks.emit("message_received", payload)
        return (time.perf_counter_ns() - started) / count

    return asyncio.run(run())


def ours_ns_per_event(binary, kind, n, events):
    out = subprocess.run([binary, kind, "off", str(n), str(events)], check=True, capture_output=True, text=True)
    # "async off N=1: 123.45 ns per event (200000 events)"
    return float(out.stdout.split(":")[1].split("ns")[0])


def main():
    target = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR", "target"))
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "hooks-core", "--example", "dispatch_ops"],
                   cwd=ROOT, check=True)
    binary = os.path.join(target, "release", "examples", "dispatch_ops")
    print(f"{ROUNDS} alternating rounds per N; Python {sys.version.split()[0]}; {EVENTS} events a round", file=sys.stderr)
    print("| N | Python emit | ours, `fn` hooks | Python / ours | ours, `async fn` hooks | Python / ours |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in NS:
        py, ours, ratio = [], {"sync": [], "async": []}, {"sync": [], "async": []}
        for r in range(ROUNDS):
            p = python_ns_per_event(n, EVENTS)
            py.append(p)
            for kind in ["sync", "async"]:
                o = ours_ns_per_event(binary, kind, n, EVENTS)
                ours[kind].append(o)
                ratio[kind].append(p / o)
            print(f"N={n} round {r + 1}: python {p:,.0f} ns, ours fn {ours['sync'][-1]:,.1f} ns, "
                  f"async fn {ours['async'][-1]:,.1f} ns", file=sys.stderr)
        cells = [f"{statistics.median(py):,.0f} ns"]
        for kind in ["sync", "async"]:
            r = ratio[kind]
            cells += [f"{statistics.median(ours[kind]):,.1f} ns",
                      f"**{statistics.median(r):.1f}x** ({min(r):.1f}-{max(r):.1f})"]
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
