//! Builds a large replay input by tiling the real corpora in `data/`: each tile repeats the Gitter room
//! and then the IRC sample, every user id gets a `~TILE` suffix (fresh users per tile), and every
//! block is shifted so that it starts one minute after the previous block ended (time keeps moving
//! forward). Used by the replay benchmark (scripts/bench_replay.py, docs/benchmarks.md); the store
//! benchmark tiles the same way.
//!
//! ```sh
//! cargo run --release -p gateway-example --example tile_corpus -- 1000000 > tiled.jsonl
//! ```

use std::io::{BufWriter, Write};

#[path = "../benches/support/tile.rs"]
mod tile;

fn main() {
    let wanted: usize = std::env::args().nth(1).map_or(1_000_000, |n| n.parse().expect("a record count"));
    let mut out = BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    let written = tile::tile(wanted, &mut out).expect("writing stdout");
    out.flush().expect("writing stdout");
    eprintln!("{written} records");
}
