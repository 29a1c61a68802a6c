//! `outpost-console`: the desktop entry point. It only starts the app built in the library
//! (`outpost_console_lib::run`) and turns a startup failure into a message and exit code 1.

// No console window next to the app on Windows release builds.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

use std::process::ExitCode;

fn main() -> ExitCode {
    match outpost_console_lib::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("outpost-console: {err}");
            ExitCode::FAILURE
        }
    }
}
