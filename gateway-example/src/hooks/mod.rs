//! The hooks linked into the binary itself: the audit hook (writes the events file) and the metrics
//! hook (counts what `/metrics` and the replay summary show). Hooks from other crates are linked in
//! `main.rs` with `use … as _;`.

pub mod audit;
pub mod metrics;
