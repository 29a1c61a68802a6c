//! The `outpost` binary: parses arguments and maps outcomes to exit statuses.
//!
//! Exit statuses: 0 success or accepted; 1 refused (verification failed, bad input, any error,
//! with the reason on stderr); 2 usage error.

use std::process::ExitCode;

use clap::Parser as _;

/// mimalloc: the ingest path's many short-lived vectors cost far less than with glibc's malloc
/// (see docs/benchmarks.md, ingest).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    exit_quietly_on_closed_stdout();
    let args = outpost_control::cli::Cli::parse();
    match outpost_control::cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// `outpost … | head` closes stdout early; `println!` then panics with "failed printing to
/// stdout". Like other Unix tools, end quietly instead of printing a panic.
fn exit_quietly_on_closed_stdout() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default_hook(info);
    }));
}
