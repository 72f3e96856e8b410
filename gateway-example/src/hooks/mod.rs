//! The hooks linked into the binary itself: the audit hook (writes the events file), the metrics
//! hook (counts what `/metrics` and the replay summary show) and the command policy (a decision hook). Hooks from other crates are linked in
//! `main.rs` with `use … as _;`.

pub mod audit;
pub mod metrics;
pub mod policy;
