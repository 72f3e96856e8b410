//! Unpublished test crate: the trybuild UI suite and end-to-end tests that cross crates.
//!
//! - `tests/ui.rs`: `ui/pass/*.rs` must compile and run, `ui/fail/*.rs` must fail with the reviewed
//!   diagnostics in their `.stderr` files.
//! - `tests/cross_crate.rs`, `tests/unlinked.rs`: hooks of the `plugin-fixture` crate are linked only when
//!   the binary names it, and are ordered with the binary's own hooks.
//! - `tests/isolation.rs`, `tests/decisions.rs`: contained failures and the `Command` decision rule.
//!
//! The examples of `docs/hooks.md` are compiled (and run) as this crate's doctests.

/// `docs/hooks.md`, so that its examples are tested.
#[cfg(doctest)]
#[doc = include_str!("../../docs/hooks.md")]
pub struct HooksGuide;
