//! The `outpost` command line: argument definitions and dispatch to one module per family.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use outpost_shared::verify::Role;

pub mod assign;
pub mod audit;
pub mod broker_config;
mod bundle;
pub mod devices;
pub mod drift;
pub mod drift_report;
pub mod drift_samples;
mod keys;
pub mod model;
mod plan;
pub mod remote;
pub mod rollout;
pub mod serve;
mod trust;
pub mod users;

/// Outpost: govern ML models on fleets of edge devices.
#[derive(Debug, Parser)]
#[command(name = "outpost", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Signing keys: generate passphrase-protected ed25519 keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Trust roots: which keys may publish models and approve rollouts.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Model bundles: package, sign, verify and inspect.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Rollout plans: create, approve (sign) and verify.
    #[command(subcommand)]
    Plan(PlanCommand),
    /// The control server: run it, or print its documented default configuration.
    Serve(serve::ServeArgs),
    /// The server's model registry: push, list, show.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// The server's fleet inventory.
    #[command(subcommand)]
    Devices(devices::DevicesCommand),
    /// API users: add, list, change a role, remove.
    #[command(subcommand)]
    Users(users::UsersCommand),
    /// API tokens: list a user's, issue another, revoke one, rotate your own.
    #[command(subcommand)]
    Tokens(users::TokensCommand),
    /// Publish a signed rollout plan to one device (verified by the server first).
    Assign(assign::AssignArgs),
    /// Staged rollouts: create, approve (sign the plan with your key), start, pause, resume,
    /// abort, roll back, advance, show.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Broker configurations with certificates from the fleet CA (`mosquitto`).
    #[command(subcommand)]
    BrokerConfig(broker_config::BrokerConfigCommand),
    /// Drift between a reference and a current CSV: PSI, Jensen–Shannon, KS, Wasserstein and
    /// chi-square per feature, with verdicts.
    Drift(drift::DriftArgs),
    /// The audit trail: list records, export them with proofs, verify an export offline.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
}

/// A key's role, as given on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Root,
    Approver,
    Publisher,
}

impl From<RoleArg> for Role {
    fn from(value: RoleArg) -> Self {
        match value {
            RoleArg::Root => Role::Root,
            RoleArg::Approver => Role::Approver,
            RoleArg::Publisher => Role::Publisher,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate a key: DIR/NAME.key.json (encrypted with the passphrase from OUTPOST_PASSPHRASE
    /// or a prompt) and DIR/NAME.pub.json.
    Generate {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        #[arg(long)]
        out: PathBuf,
        /// Overwrite existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Show a public or private key file's id, name and role.
    Show { key: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Create a first trust root, signed by a threshold of its own root keys.
    Init {
        /// Root public key file (repeat for each).
        #[arg(long = "root", required = true)]
        roots: Vec<PathBuf>,
        #[arg(long)]
        root_threshold: usize,
        /// Approver public key file (repeat for each).
        #[arg(long = "approver", required = true)]
        approvers: Vec<PathBuf>,
        /// Distinct approver signatures a plan needs (k of n).
        #[arg(long)]
        approvals: usize,
        /// Publisher public key file (repeat for each).
        #[arg(long = "publisher", required = true)]
        publishers: Vec<PathBuf>,
        /// Publisher signatures a bundle needs.
        #[arg(long, default_value_t = 1)]
        publisher_threshold: usize,
        #[arg(long, default_value_t = 365)]
        expires_in: u32,
        /// Root private key to sign with (repeat for each).
        #[arg(long = "sign", required = true)]
        sign: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a trust root.
    Show {
        trust: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// A successor root with one more key (its role comes from the key file).
    AddKey {
        #[arg(long)]
        trust: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        successor: SuccessorArgs,
    },
    /// A successor root without a key.
    RemoveKey {
        #[arg(long)]
        trust: PathBuf,
        #[arg(long)]
        keyid: String,
        #[command(flatten)]
        successor: SuccessorArgs,
    },
    /// A successor root with any set of changes: keys added and removed, thresholds, expiry.
    Rotate {
        #[arg(long)]
        trust: PathBuf,
        /// Public key file to add (repeat).
        #[arg(long = "add")]
        add: Vec<PathBuf>,
        /// Key id to remove (repeat).
        #[arg(long = "remove")]
        remove: Vec<String>,
        #[arg(long)]
        root_threshold: Option<usize>,
        #[arg(long)]
        approvals: Option<usize>,
        #[arg(long)]
        publisher_threshold: Option<usize>,
        #[command(flatten)]
        successor: SuccessorArgs,
    },
    /// Check that NEW is an acceptable successor of the current root.
    Verify {
        #[arg(long)]
        trust: PathBuf,
        new: PathBuf,
    },
}

/// Options shared by every command that writes a successor root.
#[derive(Debug, clap::Args)]
pub struct SuccessorArgs {
    /// New expiry, in days from now (default: keep the current expiry).
    #[arg(long)]
    pub expires_in: Option<u32>,
    /// Root private key to sign with: a threshold of the current and of the new root keys.
    #[arg(long = "sign", required = true)]
    pub sign: Vec<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TaskArg {
    /// Classification when the first output holds probabilities, regression for one output value.
    Auto,
    Classification,
    Regression,
    Other,
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Package a model with its baseline profile and golden set; refuses models the runtime
    /// cannot load or whose outputs do not match the golden set.
    Create {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        /// CSV with one column per input feature (tabular models), or JSONL of OIP v2 requests.
        #[arg(long)]
        baseline: PathBuf,
        /// golden.json: {"atol", "rtol", "cases": [{"inputs": [...], "outputs": [...]}]}.
        #[arg(long)]
        golden: PathBuf,
        #[arg(long)]
        lineage: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = TaskArg::Auto)]
        task: TaskArg,
        /// Quantile bins per feature in the profile.
        #[arg(long, default_value_t = outpost_shared::profile::DEFAULT_BINS)]
        bins: usize,
        /// Features that also get a KLL quantile sketch (DataSketches format, k = 200) in the
        /// profile and in every device window: `all`, or names separated by commas.
        #[arg(long, value_name = "FEATURES")]
        kll: Option<String>,
        /// Days until the manifest expires (default: never).
        #[arg(long)]
        expires_in: Option<u32>,
        /// Publisher key to sign with right away.
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Add a publisher signature to a bundle.
    Sign {
        #[arg(long)]
        key: PathBuf,
        bundle: PathBuf,
    },
    /// Verify a bundle against a trust root: exit 0 accepted, 1 rejected with the reason.
    Verify {
        #[arg(long)]
        trust: PathBuf,
        bundle: PathBuf,
    },
    /// Show a bundle's manifest, signatures, profile and golden set (signatures not checked).
    Inspect {
        bundle: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Create an unsigned rollout plan for a bundle.
    Create {
        #[arg(long)]
        bundle: PathBuf,
        /// Device tag selector, e.g. `site=berlin,hw=rpi4` (`*` for all).
        #[arg(long)]
        cohort: String,
        /// Fleet-wide sequence number; devices accept only increasing numbers.
        #[arg(long)]
        seq: u64,
        #[arg(long)]
        expires_in: u32,
        #[arg(long)]
        fallback: Option<PathBuf>,
        /// Rollout id (default: `<name>@<version>-<seq>`).
        #[arg(long)]
        rollout: Option<String>,
        #[arg(long, default_value_t = 300)]
        watch_seconds: u64,
        #[arg(long, default_value_t = 20)]
        min_requests: u64,
        #[arg(long, default_value_t = 0.05)]
        max_error_rate: f64,
        #[arg(long, default_value_t = 2.0)]
        max_p95_latency_ratio: f64,
        #[arg(long)]
        max_output_psi: Option<f64>,
        /// Shadow phase: requests to mirror (enables shadowing).
        #[arg(long)]
        shadow_requests: Option<u64>,
        #[arg(long, default_value_t = 600)]
        shadow_seconds: u64,
        #[arg(long, default_value_t = 1e-3)]
        shadow_tolerance: f64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Approve a plan: add an approver signature.
    Sign {
        #[arg(long)]
        key: PathBuf,
        plan: PathBuf,
    },
    /// Verify a plan: exit 0 accepted, 1 rejected with the reason.
    Verify {
        #[arg(long)]
        trust: PathBuf,
        plan: PathBuf,
        /// Also check that a device with these tags is in the cohort.
        #[arg(long)]
        device_tags: Option<String>,
        #[arg(long, default_value = "cli")]
        device_id: String,
        /// Also check the plan is newer than this last accepted sequence number.
        #[arg(long)]
        last_seq: Option<u64>,
    },
    /// Show a plan and its signatures (not checked).
    Show {
        plan: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keys(command) => keys::run(command),
        Command::Trust(command) => trust::run(command),
        Command::Bundle(command) => bundle::run(command),
        Command::Plan(command) => plan::run(command),
        Command::Serve(args) => serve::run(args),
        Command::Model(command) => model::run(command),
        Command::Devices(command) => devices::run(command),
        Command::Users(command) => users::run(command),
        Command::Tokens(command) => users::run_tokens(command),
        Command::Assign(args) => assign::run(args),
        Command::Rollout(command) => rollout::run(command),
        Command::BrokerConfig(command) => broker_config::run(command),
        Command::Drift(args) => drift::run(args),
        Command::Audit(command) => audit::run(command),
    }
}

/// Current time; documents are checked against it.
fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_definition_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
