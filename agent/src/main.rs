//! The `outpost-agent` binary.
//!
//! ```text
//! outpost-agent run --config /etc/outpost/agent.toml
//! outpost-agent print-default-config > agent.toml
//! outpost-agent provision --config agent.toml --trust root.json [--bundle first.bundle]
//! outpost-agent check-model model.onnx [--input request.json]
//! ```
//!
//! Exit codes:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (for `run`: stopped by SIGTERM or SIGINT after flushing the last window) |
//! | 1 | failure that is not the caller's doing: IO, the API address cannot be bound |
//! | 2 | usage: bad command line, invalid config (the message names the key), unreadable or invalid input file |
//! | 3 | refused: trust root or bundle verification failed, device not provisioned, no slot holds a verified model |
//! | 4 | the model cannot be run: tract cannot load it (the message names the operator or reason), or it fails its golden self-test |
//!
//! Logs go to stderr (journald under systemd); `RUST_LOG` overrides `log.filter`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outpost_agent::AgentConfig;
use outpost_agent::app::{self, Failure, exit};

/// Outpost device agent: serves a verified ONNX model locally and reports statistics over MQTT.
#[derive(Debug, Parser)]
#[command(name = "outpost-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: serve the committed model and report statistics until SIGTERM/SIGINT.
    Run {
        /// The config file (keys left out keep their defaults; see print-default-config).
        #[arg(long, short, value_name = "FILE", default_value = "/etc/outpost/agent.toml")]
        config: PathBuf,
    },
    /// Print the default configuration, with every key documented.
    PrintDefaultConfig,
    /// Enroll this device: install a trust root and, optionally, its first model.
    ///
    /// Both are verified first (signatures, expiry, digests, and the model's golden set on this
    /// machine); nothing is installed when anything is refused.
    Provision {
        #[arg(long, short, value_name = "FILE", default_value = "/etc/outpost/agent.toml")]
        config: PathBuf,
        /// The trust root envelope (`outpost trust init` writes it).
        #[arg(long, value_name = "ROOT.json")]
        trust: PathBuf,
        /// A signed bundle to install into slot a as the committed model.
        #[arg(long, value_name = "FILE.bundle")]
        bundle: Option<PathBuf>,
    },
    /// Check that tract can run an ONNX model: prints its inputs and outputs (stderr) and the
    /// OIP v2 response to one request (stdout).
    CheckModel {
        /// The ONNX model file.
        model: PathBuf,
        /// An OIP v2 inference request body; generated inputs are used when absent.
        #[arg(long, value_name = "FILE.json")]
        input: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // clap prints help and version to stdout with success, usage errors with code 2.
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {:#}", failure.error);
            ExitCode::from(failure.exit_code)
        }
    }
}

fn load_config(path: &std::path::Path) -> Result<AgentConfig, Failure> {
    AgentConfig::load(Some(path), std::env::vars()).map_err(|error| Failure {
        exit_code: exit::USAGE,
        error: anyhow::Error::new(error).context(format!("config {}", path.display())),
    })
}

fn execute(command: Command) -> Result<(), Failure> {
    match command {
        Command::PrintDefaultConfig => {
            print!("{}", outpost_agent::config::DEFAULT_CONFIG);
            Ok(())
        }
        Command::Run { config } => {
            let config = load_config(&config)?;
            app::init_logging(&config.log.filter);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("outpost-agent")
                .build()
                .map_err(|error| Failure {
                    exit_code: exit::FAILURE,
                    error: anyhow::Error::new(error).context("cannot start the async runtime"),
                })?;
            runtime.block_on(app::run(config))
        }
        Command::Provision { config, trust, bundle } => {
            let config = load_config(&config)?;
            app::init_logging(&config.log.filter);
            let done = app::provision(&config, &trust, bundle.as_deref())?;
            println!(
                "provisioned {} in {}: trust root version {}",
                config.device.id,
                config.data_dir.display(),
                done.trust_root_version
            );
            if let Some((slot, model)) = done.model {
                let slot = outpost_agent::store::SlotDisplay(slot);
                println!("  model {model} installed in slot {slot}, committed");
            }
            Ok(())
        }
        Command::CheckModel { model, input } => {
            app::init_logging("warn");
            let checked = app::check_model(&model, input.as_deref())?;
            for (title, specs) in [("input", &checked.inputs), ("output", &checked.outputs)] {
                for spec in specs {
                    eprintln!("{title:<6} {} {} {:?}", spec.name, spec.datatype, spec.shape);
                }
            }
            if checked.generated_input {
                eprintln!("ran one inference on generated inputs (variable dimensions set to 1)");
            }
            let json =
                serde_json::to_string_pretty(&checked.response).map_err(|error| Failure {
                    exit_code: exit::FAILURE,
                    error: anyhow::Error::new(error).context("cannot print the response"),
                })?;
            println!("{json}");
            Ok(())
        }
    }
}
