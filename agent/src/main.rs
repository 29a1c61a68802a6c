//! The `outpost-agent` binary.

fn main() {
    eprintln!("outpost-agent {}: not yet runnable", env!("CARGO_PKG_VERSION"));
    std::process::exit(2);
}
