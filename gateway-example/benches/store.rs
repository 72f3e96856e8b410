//! Replay throughput on SQLite with group commit against the in-memory store, on the same input.
//!
//! `cargo bench -p gateway-example --bench store` replays two inputs with the release binary, as
//! `replay --store memory` and as `replay --store sqlite:PATH`:
//!
//! - **real**: the Gitter and IRC corpora of `data/` tiled to `STORE_BENCH_REAL` records (default
//!   200,000; fresh users per tile, time moving forward, as `examples/tile_corpus.rs` builds them);
//! - **synthetic**: a stress log of `STORE_BENCH_SYNTHETIC` records (default 100,000) over 2,000
//!   chats with `/new` in one message of 25 and idle gaps that close sessions, about 0.44 closes per
//!   record where real traffic has 0.2, and sessions that stay open across many commits.
//!
//! Machine load moves every wall-clock figure, so the default durable run (`synchronous` FULL, batch
//! 512) is paired with an in-memory run right before it, five times; the table shows each column's
//! median and the median of the five ratios. Other settings (batch 64, `synchronous` NORMAL) get one
//! pair of three runs each, best of three. Every durable run commits each batch before it delivers the
//! batch's events, exactly as `serve` answers a message only after its commit.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

#[path = "support/tile.rs"]
mod tile;

/// A small xorshift PRNG: the same input on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn input(path: &Path, records: u64) {
    let mut rng = Rng(0x5eed);
    let mut out = String::with_capacity(records as usize * 90);
    let mut t: i64 = 1_700_000_000;
    for i in 0..records {
        // About one record per second over 2,000 chats: most chats go quiet for longer than the
        // 30-minute idle timeout between messages now and then, so sessions close by expiry too.
        t += rng.below(3) as i64;
        let chat = rng.below(2000);
        let text = if rng.below(25) == 0 { "/new".to_owned() } else { format!("message {i} with some words") };
        let ts = jiff::Timestamp::from_second(t).unwrap();
        let _ = writeln!(out, r#"{{"ts":"{ts}","chat_id":"c{chat}","user_id":"u{}","text":"{text}"}}"#, rng.below(50));
    }
    std::fs::write(path, out).unwrap();
}

/// CPU seconds (user + system) used so far by this process's waited-for children, from
/// `/proc/self/stat` (Linux; 0 elsewhere). The wall time of a durable run depends on the disk's flush
/// latency, which other work on the machine skews; CPU time per record does not.
fn children_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    // After the command name: state is field 3, cutime 16 and cstime 17 (1-based in proc(5)).
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(16) + ticks(17)) / 100.0
}

struct Run {
    records_per_second: f64,
    cpu: f64,
    messages: u64,
    closes: u64,
    wall: f64,
}

/// One replay of `input`, in memory (`store` `None`) or on a new SQLite database.
fn replay(dir: &Path, input: &Path, store: Option<(&str, usize)>) -> Run {
    let summary = dir.join("summary.json");
    let events = dir.join("events.jsonl");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway-example"));
    cmd.arg("replay").arg(input).arg("--events-out").arg(&events).arg("--no-progress").arg("--summary-json");
    cmd.arg(&summary);
    let db: PathBuf = dir.join("bench.sqlite3");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    if let Some((sync, batch)) = store {
        cmd.arg("--store").arg(format!("sqlite:{}", db.display()));
        cmd.args(["--synchronous", sync, "--batch", &batch.to_string()]);
    }
    let cpu_before = children_cpu();
    let out = cmd.output().unwrap();
    let cpu = children_cpu() - cpu_before;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    let m = &s["metrics"];
    let closes = m["closed"].as_array().unwrap().iter().map(|p| p[1].as_u64().unwrap()).sum();
    Run {
        records_per_second: s["records_per_second"].as_f64().unwrap(),
        cpu,
        messages: m["messages"].as_u64().unwrap(),
        closes,
        wall: s["wall_seconds"].as_f64().unwrap(),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The median run of `runs` by records per second, with every other column of that same run.
fn median_run(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.records_per_second.total_cmp(&b.records_per_second));
    runs.swap_remove(runs.len() / 2)
}

fn row(name: &str, r: &Run, ratio: f64, cpu_ratio: f64) {
    println!(
        "{:<34} {:>10.0} {:>11.0} {:>9.0} {:>7.2} {:>6.1}% {:>7.2} {:>7.1}x",
        name,
        r.records_per_second,
        r.messages as f64 / r.wall,
        r.closes as f64 / r.wall,
        r.wall,
        100.0 * ratio,
        r.cpu,
        cpu_ratio
    );
}

fn bench(dir: &Path, name: &str, input: &Path, records: usize) {
    println!("\n{name}: {records} records");
    println!(
        "{:<34} {:>10} {:>11} {:>9} {:>7} {:>7} {:>7} {:>8}",
        "store", "records/s", "messages/s", "closes/s", "wall s", "vs mem", "cpu s", "cpu/mem"
    );
    let (mut memory, mut durable, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let m = replay(dir, input, None);
        let d = replay(dir, input, Some(("full", 512)));
        assert_eq!(d.messages, m.messages, "the durable replay routed a different number of messages");
        assert_eq!(d.closes, m.closes, "the durable replay closed a different number of sessions");
        ratios.push((d.records_per_second / m.records_per_second, d.cpu / m.cpu.max(0.01)));
        memory.push(m);
        durable.push(d);
    }
    let ratio = median(ratios.iter().map(|r| r.0).collect());
    let cpu_ratio = median(ratios.iter().map(|r| r.1).collect());
    let memory = median_run(memory);
    row("memory (median of 5)", &memory, 1.0, 1.0);
    row("sqlite full, batch 512 (5)", &median_run(durable), ratio, cpu_ratio);
    for (sync, batch) in [("full", 64), ("normal", 512)] {
        let best = |store| {
            (0..3)
                .map(|_| replay(dir, input, store))
                .max_by(|a: &Run, b: &Run| a.records_per_second.total_cmp(&b.records_per_second))
                .unwrap()
        };
        let m = best(None);
        let d = best(Some((sync, batch)));
        let name = format!("sqlite {sync}, batch {batch} (best 3)");
        row(&name, &d, d.records_per_second / m.records_per_second, d.cpu / m.cpu.max(0.01));
    }
    println!(
        "(vs mem: the median of the paired ratios for the 5-run row; against the best in-memory run of its own 3 otherwise)"
    );
}

fn main() {
    // `cargo test --benches` runs this with `--bench`-less arguments; do the work only for `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let size = |var: &str, default: usize| std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.jsonl");
    let records = size("STORE_BENCH_REAL", 200_000);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&real).unwrap());
    let written = tile::tile(records, &mut out).unwrap();
    std::io::Write::flush(&mut out).unwrap();
    drop(out);
    bench(dir.path(), "real (data/ corpora tiled)", &real, written);
    let synthetic = dir.path().join("synthetic.jsonl");
    let records = size("STORE_BENCH_SYNTHETIC", 100_000);
    input(&synthetic, records as u64);
    bench(dir.path(), "synthetic (2,000 chats, /new in 1 of 25 messages)", &synthetic, records);
}
