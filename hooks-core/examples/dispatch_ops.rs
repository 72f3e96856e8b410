//! The loops of the dispatch benchmark (`benches/support/dispatch_bench.rs`), one at a time, for
//! counting instructions per event under callgrind: instruction counts do not move with the machine's
//! load, so they show what a change to the dispatcher did when the wall clock is too noisy to tell.
//!
//! ```sh
//! cargo build --release -p hooks-core --example dispatch_ops
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*::measured_*' \
//!     target/release/examples/dispatch_ops sync off 1 1000000
//! ```
//!
//! Arguments: `sync` or `async` handlers; `direct` (the limit: the functions called or awaited in
//! sequence), `walk` (the hook list walked by hand, the setup's `walk`), `off` (no isolation) or
//! `contained`; N, the number of handlers; the number of events.
//! Divide the callgrind total (`Ir`) by the last. Without valgrind it prints the wall-clock time per
//! event (one run, for a quick look; criterion's figures are the ones to quote).

#[path = "../benches/support/dispatch_setup.rs"]
mod setup;

use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

use hooks_core::dispatch::{Dispatcher, Isolation};
use hooks_core::event::MessageReceived;
use setup::{dispatcher, event, noop, noop_async, walk};
use tokio::runtime::Runtime;

/// Plain functions around `block_on`, so that callgrind's toggle finds them (a future's `poll` may be
/// inlined into the runtime); entering the runtime once is noise over a million events.
#[inline(never)]
fn measured_dispatch(rt: &Runtime, dispatcher: &Dispatcher, ev: &MessageReceived, events: usize) {
    rt.block_on(async {
        for _ in 0..events {
            black_box(dispatcher.deliver(black_box(ev)).await);
        }
    });
}

#[inline(never)]
fn measured_walk(rt: &Runtime, dispatcher: &Dispatcher, ev: &MessageReceived, events: usize) {
    rt.block_on(async {
        for _ in 0..events {
            black_box(walk(dispatcher, black_box(ev)).await);
        }
    });
}

#[inline(never)]
fn measured_direct(rt: &Runtime, is_async: bool, n: usize, ev: &MessageReceived, events: usize) {
    rt.block_on(async {
        for _ in 0..events {
            for _ in 0..n {
                if is_async {
                    noop_async(black_box(ev)).await;
                } else {
                    noop(black_box(ev));
                }
            }
        }
    });
}

pub(crate) fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, mode, n, events] = args.as_slice() else {
        eprintln!("usage: dispatch_ops sync|async direct|walk|off|contained N EVENTS");
        return ExitCode::from(2);
    };
    let is_async = match kind.as_str() {
        "sync" => false,
        "async" => true,
        other => {
            eprintln!("unknown handler kind {other:?}: expected sync or async");
            return ExitCode::from(2);
        }
    };
    let (Ok(n), Ok(events)) = (n.parse::<usize>(), events.parse::<usize>()) else {
        eprintln!("N and EVENTS must be whole numbers, got {n:?} and {events:?}");
        return ExitCode::from(2);
    };
    /// What is measured: the functions themselves, the list walked by hand (reading the hook list of a
    /// dispatcher without isolation), or the dispatcher. Dispatchers are made here, before the count
    /// starts: the first one in a process calibrates the clock that times isolated handlers (~0.6 ms,
    /// once), which is no cost per event.
    enum Measured {
        Direct,
        Walk(Dispatcher),
        Dispatch(Dispatcher),
    }
    let measured = match mode.as_str() {
        "direct" => Measured::Direct,
        "walk" => Measured::Walk(dispatcher(n, is_async, Isolation::Off)),
        "off" => Measured::Dispatch(dispatcher(n, is_async, Isolation::Off)),
        "contained" => Measured::Dispatch(dispatcher(n, is_async, Isolation::Contained)),
        other => {
            eprintln!("unknown mode {other:?}: expected direct, walk, off or contained");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let ev = event();
    let started = Instant::now();
    match &measured {
        Measured::Direct => measured_direct(&rt, is_async, n, &ev, events),
        Measured::Walk(dispatcher) => measured_walk(&rt, dispatcher, &ev, events),
        Measured::Dispatch(dispatcher) => measured_dispatch(&rt, dispatcher, &ev, events),
    }
    let per_event = started.elapsed().as_nanos() as f64 / events.max(1) as f64;
    println!("{kind} {mode} N={n}: {per_event:.2} ns per event ({events} events)");
    ExitCode::SUCCESS
}
