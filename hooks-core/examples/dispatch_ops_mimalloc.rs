//! `dispatch_ops` with mimalloc as the global allocator, as `gateway-example` runs (see
//! `benches/dispatch_mimalloc.rs`): the same arguments and output.
//!
//! ```sh
//! cargo build --release -p hooks-core --example dispatch_ops_mimalloc
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*::measured_*' \
//!     target/release/examples/dispatch_ops_mimalloc async off 1 1000000
//! ```

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "dispatch_ops.rs"]
mod ops;

fn main() -> std::process::ExitCode {
    ops::main()
}
