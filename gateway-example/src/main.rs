//! gateway-example: see the library's docs and `gateway-example --help`.

fn main() -> std::process::ExitCode {
    gateway_example::cli::main()
}
