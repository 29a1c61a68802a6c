//! `outpost serve`: run the control server, or print its documented default configuration.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::config;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServeArgs {
    /// Configuration file (TOML); keys it leaves out keep their defaults, and
    /// `OUTPOST__<SECTION>__<KEY>` environment variables override both.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub action: Option<ServeAction>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ServeAction {
    /// Print the default configuration, with every key documented.
    PrintDefaultConfig,
}

pub fn run(args: ServeArgs) -> Result<()> {
    if let Some(ServeAction::PrintDefaultConfig) = args.action {
        print!("{}", config::DEFAULT_CONFIG);
        return Ok(());
    }
    let config = config::load(args.config.as_deref()).context("loading the configuration")?;
    init_logging();
    // A panic is logged (through the log above) and counted, and ends only its task.
    crate::panics::install_hook(false);
    runtime()?.block_on(crate::server::run(config)).context("outpost serve")
}

/// Logs to stderr; `RUST_LOG` sets the filter (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// The async runtime for commands that need one.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
