//! gateway-example: see the library's docs and `gateway-example --help`.

/// mimalloc instead of the system allocator: a replay allocates about twice per record (a message's
/// text kept in its session's transcript, freed when the session ends), and glibc's `malloc` and
/// `free` were ~7 % of a replay's time (docs/benchmarks-history.md, section 3, session 6).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gateway_example::cli::main()
}
