//! The `outpost` binary: parses arguments and maps outcomes to exit statuses.
//!
//! Exit statuses: 0 success or accepted; 1 refused (verification failed, bad input, any error,
//! with the reason on stderr); 2 usage error.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let args = outpost_control::cli::Cli::parse();
    match outpost_control::cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}
