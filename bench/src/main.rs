//! `hako-bench`: see the library for everything.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    hako_bench::cli::main()
}
