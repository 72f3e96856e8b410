//! Unpublished test crate: the trybuild UI suite and end-to-end tests that cross crates.
