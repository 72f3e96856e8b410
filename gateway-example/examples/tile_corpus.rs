//! Builds a large replay input by tiling the real corpora in `data/`: each tile repeats the Gitter room
//! and then the IRC sample, every user id gets a `~TILE` suffix (fresh users per tile), and every
//! block is shifted so that it starts one minute after the previous block ended (time keeps moving
//! forward). Used by the replay benchmark (scripts/bench_replay.py, docs/benchmarks.md).
//!
//! ```sh
//! cargo run --release -p gateway-example --example tile_corpus -- 1000000 > tiled.jsonl
//! ```

use std::io::{BufWriter, Write};
use std::path::Path;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

struct Record {
    ts: Timestamp,
    chat_id: String,
    user_id: String,
    text: String,
}

fn load(path: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("corpus lines are JSON");
            let s = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("{k} in {line}")).to_owned();
            Record {
                ts: s("ts").parse().expect("RFC 3339 ts"),
                chat_id: s("chat_id"),
                user_id: s("user_id"),
                text: s("text"),
            }
        })
        .collect()
}

fn main() {
    let wanted: usize = std::env::args().nth(1).map_or(1_000_000, |n| n.parse().expect("a record count"));
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
    let blocks = [load(&data.join("gitter_gitterHQ.jsonl")), load(&data.join("ubuntu_irc_sample.jsonl"))];
    let mut out = BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    let mut written = 0;
    let mut end: Option<Timestamp> = None;
    'tiles: for tile in 0.. {
        for block in &blocks {
            let first = block[0].ts;
            let start = end.map_or(first, |e| e + SignedDuration::from_secs(60));
            let shift = start.duration_since(first);
            for r in block {
                let ts = r.ts + shift;
                let line = json!({"ts": ts.to_string(), "chat_id": r.chat_id, "user_id": format!("{}~{tile}", r.user_id), "text": r.text});
                writeln!(out, "{line}").expect("writing stdout");
                end = Some(ts);
                written += 1;
                if written == wanted {
                    break 'tiles;
                }
            }
        }
    }
    out.flush().expect("writing stdout");
    eprintln!("{written} records");
}
