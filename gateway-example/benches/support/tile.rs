//! Tiling the real corpora in `data/` into a replay input of any size: each tile repeats the Gitter room
//! and then the IRC sample, every user id gets a `~TILE` suffix (fresh users per tile), and every block
//! is shifted so that it starts one minute after the previous block ended (time keeps moving forward).
//! Shared by `examples/tile_corpus.rs` and `benches/store.rs`.

use std::io::Write;
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

/// Writes `wanted` records (JSON lines) to `out`; returns how many it wrote.
pub(crate) fn tile(wanted: usize, out: &mut impl Write) -> std::io::Result<usize> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
    let blocks = [load(&data.join("gitter_gitterHQ.jsonl")), load(&data.join("ubuntu_irc_sample.jsonl"))];
    let mut written = 0;
    let mut end: Option<Timestamp> = None;
    for tile in 0.. {
        for block in &blocks {
            let first = block[0].ts;
            let start = end.map_or(first, |e| e + SignedDuration::from_secs(60));
            let shift = start.duration_since(first);
            for r in block {
                if written == wanted {
                    return Ok(written);
                }
                let ts = r.ts + shift;
                let line = json!({"ts": ts.to_string(), "chat_id": r.chat_id, "user_id": format!("{}~{tile}", r.user_id), "text": r.text});
                writeln!(out, "{line}")?;
                end = Some(ts);
                written += 1;
            }
        }
    }
    Ok(written)
}
