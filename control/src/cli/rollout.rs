//! `outpost rollout create|list|show|approve|start|pause|resume|abort|rollback|advance`:
//! staged rollouts through the API (`/v1/rollouts`).
//!
//! `approve` fetches the rollout's unsigned plan, shows what it approves, signs it locally with
//! the approver's own passphrase-sealed key and uploads only the signature; the key never
//! leaves the machine.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use outpost_shared::dsse::Envelope;
use outpost_shared::plan;
use outpost_shared::plan::HealthPolicy;
use outpost_shared::verify::Role;
use serde_json::{Value, json};

use super::remote::{ServerArgs, path_segment, print_table, text, time_text};
use crate::files::{load_secret_key, read_limited};
use crate::rollout::spec::{Advance, GateThresholds, OnGateFail, RolloutSpec, WaveSize, WaveSpec};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AdvanceArg {
    Auto,
    Manual,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OnFailArg {
    Pause,
    Rollback,
}

/// Arguments of `outpost rollout create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// A complete specification as JSON (the body of `POST /v1/rollouts`); other options then
    /// only fill what it leaves out.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// The bundle: `name@version` or its `sha256:` digest.
    #[arg(long)]
    pub bundle: Option<String>,
    /// Rollout id (default: made from the bundle).
    #[arg(long)]
    pub id: Option<String>,
    /// The bundle a rollback returns to.
    #[arg(long)]
    pub fallback: Option<String>,
    /// Device tag selector.
    #[arg(long, default_value = "*")]
    pub cohort: String,
    /// A wave, cumulative: a device count (`2`) or a share of the cohort (`50%`); repeat in
    /// order; the last must be `100%`.
    #[arg(long = "wave")]
    pub waves: Vec<String>,
    /// Soak time of every wave in seconds.
    #[arg(long, default_value_t = 600)]
    pub soak: u64,
    /// Share of the cohort (percent) kept on the previous model until completion.
    #[arg(long, default_value_t = 0.0)]
    pub holdout: f64,
    #[arg(long, value_enum, default_value_t = AdvanceArg::Auto)]
    pub advance: AdvanceArg,
    /// What a failed gate does besides pausing.
    #[arg(long, value_enum, default_value_t = OnFailArg::Pause)]
    pub on_fail: OnFailArg,
    /// A gate threshold for every wave, `name=value` (e.g. `max_error_rate=0.02`,
    /// `max_drift_psi=0.25`, `min_devices_reporting=2`; `name=off` turns a gate off).
    #[arg(long = "gate")]
    pub gates: Vec<String>,
    /// Seconds after a wave's soak before silent devices count as timed out.
    #[arg(long, default_value_t = 900)]
    pub device_timeout: u64,
    #[arg(long, default_value_t = 72)]
    pub expires_in: u32,
    /// The devices' health watch, written into the signed plan, as JSON (HealthPolicy).
    #[arg(long)]
    pub health: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Create a rollout (waiting for approvals).
    Create(Box<CreateArgs>),
    /// Every rollout.
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// Only rollouts in this state.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One rollout: waves, gates against their thresholds, approvals, devices, transitions.
    Show {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Sign the rollout's plan with an approver key (locally) and upload the signature.
    Approve {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
        /// The approver's key file (`outpost keys generate --role approver`).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Start a rollout that has its approvals.
    Start(Control),
    /// Pause a running rollout.
    Pause(Control),
    /// Resume a paused rollout.
    Resume(Control),
    /// Abort a rollout (devices keep what they run).
    Abort(Control),
    /// Send every admitted device back to the fallback bundle.
    Rollback(Control),
    /// Start the next wave after a passed wave (manual advance).
    Advance(Control),
}

/// The arguments of a control command.
#[derive(Debug, clap::Args)]
pub struct Control {
    #[command(flatten)]
    pub server: ServerArgs,
    pub id: String,
    #[arg(long)]
    pub json: bool,
}

pub fn run(command: RolloutCommand) -> Result<()> {
    match command {
        RolloutCommand::Create(args) => create(*args),
        RolloutCommand::List { server, state, json } => {
            let query: Vec<(&str, String)> = state.map(|s| vec![("state", s)]).unwrap_or_default();
            let answer = server.client()?.get_json("/v1/rollouts", &query)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = answer["rollouts"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    vec![
                        text(r, "id"),
                        text(r, "state"),
                        format!("{}@{}", text(&r["bundle"], "name"), text(&r["bundle"], "version")),
                        text(r, "plan_seq"),
                        format!("{} {}", text(r, "wave"), text(r, "wave_phase")),
                        text(r, "devices_admitted"),
                        time_text(r["created_ms"].as_i64()),
                    ]
                })
                .collect();
            print_table(&["ID", "STATE", "BUNDLE", "SEQ", "WAVE", "ADMITTED", "CREATED"], &rows);
            Ok(())
        }
        RolloutCommand::Show { server, id, json } => {
            let answer =
                server.client()?.get_json(&format!("/v1/rollouts/{}", path_segment(&id)), &[])?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                print_rollout(&answer, true);
            }
            Ok(())
        }
        RolloutCommand::Approve { server, id, key, json } => approve(&server, &id, &key, json),
        RolloutCommand::Start(c) => control(c, "start"),
        RolloutCommand::Pause(c) => control(c, "pause"),
        RolloutCommand::Resume(c) => control(c, "resume"),
        RolloutCommand::Abort(c) => control(c, "abort"),
        RolloutCommand::Rollback(c) => control(c, "rollback"),
        RolloutCommand::Advance(c) => control(c, "advance"),
    }
}

fn control(args: Control, verb: &str) -> Result<()> {
    let answer = args
        .server
        .client()?
        .post_json(&format!("/v1/rollouts/{}/{verb}", path_segment(&args.id)), &json!({}))
        .with_context(|| format!("{verb} rollout {}", args.id))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!(
            "rollout {}: {} ({})",
            text(&answer, "id"),
            text(&answer, "state"),
            text(&answer, "reason")
        );
    }
    Ok(())
}

fn parse_gate(gates: &mut GateThresholds, text: &str) -> Result<()> {
    let Some((name, value)) = text.split_once('=') else {
        bail!("gate {text:?} must be `name=value`");
    };
    let off = value.trim() == "off";
    let number = || -> Result<f64> {
        value
            .trim()
            .parse::<f64>()
            .with_context(|| format!("gate {name}: {value:?} is not a number"))
    };
    let optional = |slot: &mut Option<f64>| -> Result<()> {
        *slot = if off { None } else { Some(number()?) };
        Ok(())
    };
    match name.trim() {
        "min_devices_reporting" => gates.min_devices_reporting = number()? as u64,
        "min_requests" => gates.min_requests = number()? as u64,
        "max_install_failure_rate" => optional(&mut gates.max_install_failure_rate)?,
        "max_error_rate" => optional(&mut gates.max_error_rate)?,
        "max_p95_latency_ratio" => optional(&mut gates.max_p95_latency_ratio)?,
        "max_output_psi" => optional(&mut gates.max_output_psi)?,
        "max_drift_psi" => optional(&mut gates.max_drift_psi)?,
        "max_prediction_drift_psi" => optional(&mut gates.max_prediction_drift_psi)?,
        "min_shadow_agreement" => optional(&mut gates.min_shadow_agreement)?,
        other => bail!(
            "unknown gate {other:?}: one of min_devices_reporting, min_requests, \
             max_install_failure_rate, max_error_rate, max_p95_latency_ratio, max_output_psi, \
             max_drift_psi, max_prediction_drift_psi, min_shadow_agreement"
        ),
    }
    Ok(())
}

fn create(args: CreateArgs) -> Result<()> {
    let spec: RolloutSpec = match &args.spec {
        Some(path) => {
            let bytes = read_limited(path, 1024 * 1024, "rollout spec")?;
            serde_json::from_slice(&bytes)
                .with_context(|| format!("rollout spec {}", path.display()))?
        }
        None => {
            let Some(bundle) = args.bundle.clone() else {
                bail!("give --bundle (or a whole --spec file)");
            };
            if args.waves.is_empty() {
                bail!("give the waves, e.g. --wave 2 --wave 50% --wave 100%");
            }
            let mut gates = GateThresholds::default();
            for gate in &args.gates {
                parse_gate(&mut gates, gate)?;
            }
            let waves = args
                .waves
                .iter()
                .map(|w| {
                    Ok(WaveSpec {
                        size: WaveSize::parse(w).map_err(anyhow::Error::msg)?,
                        soak_seconds: args.soak,
                        gates: gates.clone(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let health: HealthPolicy = match &args.health {
                Some(text) => serde_json::from_str(text).context("--health")?,
                None => HealthPolicy::default(),
            };
            RolloutSpec {
                id: args.id.clone(),
                bundle,
                fallback: args.fallback.clone(),
                cohort: args.cohort.clone(),
                waves,
                holdout_percent: args.holdout,
                health,
                expires_in_hours: args.expires_in,
                advance: match args.advance {
                    AdvanceArg::Auto => Advance::Auto,
                    AdvanceArg::Manual => Advance::Manual,
                },
                on_gate_fail: match args.on_fail {
                    OnFailArg::Pause => OnGateFail::Pause,
                    OnFailArg::Rollback => OnGateFail::Rollback,
                },
                device_timeout_seconds: args.device_timeout,
            }
        }
    };
    spec.validate().map_err(anyhow::Error::msg)?;
    let body = serde_json::to_value(&spec)?;
    let answer =
        args.server.client()?.post_json("/v1/rollouts", &body).context("creating the rollout")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    println!(
        "created rollout {} (plan seq {}), waiting for approvals: approvers run \
         `outpost rollout approve {} --key APPROVER.key.json`",
        text(&answer, "id"),
        text(&answer, "plan_seq"),
        text(&answer, "id")
    );
    Ok(())
}

fn approve(server: &ServerArgs, id: &str, key: &std::path::Path, json: bool) -> Result<()> {
    let client = server.client()?;
    let path = format!("/v1/rollouts/{}", path_segment(id));
    let rollout = client.get_json(&path, &[])?;
    let Some(text_plan) = rollout["plan"].as_str() else {
        bail!("the server sent no plan for rollout {id}");
    };
    let mut envelope = Envelope::from_slice(text_plan.as_bytes())
        .map_err(|error| anyhow::anyhow!("the rollout's plan is not a valid envelope: {error}"))?;
    let plan = plan::parse_unverified(&envelope)
        .map_err(|error| anyhow::anyhow!("the rollout's plan is not valid: {error}"))?;
    if plan.rollout != id {
        bail!("the server sent the plan of rollout {}, not {id}", plan.rollout);
    }
    let key = load_secret_key(key)?;
    if key.role() != Role::Approver {
        bail!(
            "{} is {} key; only approver keys approve plans",
            key.public.name,
            key.role().with_article()
        );
    }
    eprintln!(
        "approving plan {} seq {}: {}@{} ({}) on cohort `{}`{}, expires {}",
        plan.rollout,
        plan.seq,
        plan.bundle.name,
        plan.bundle.version,
        plan.bundle.digest,
        plan.cohort,
        plan.fallback
            .as_ref()
            .map(|f| format!(", fallback {}@{}", f.name, f.version))
            .unwrap_or_default(),
        super::rfc3339(plan.expires)
    );
    envelope.signatures.clear();
    envelope.sign(&key)?;
    let Some(signature) = envelope.signatures.first() else {
        bail!("signing produced no signature");
    };
    let answer = client
        .post_json(
            &format!("{path}/approve"),
            &json!({ "keyid": signature.keyid, "sig": signature.sig }),
        )
        .with_context(|| format!("approving rollout {id}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let approvals = answer["approvals"]["keys"].as_array().map(Vec::len).unwrap_or(0);
    println!(
        "approved rollout {id} as {} ({}); {approvals} of {} required approvals; state {}",
        key.public.name,
        key.keyid(),
        text(&answer["approvals"], "required"),
        text(&answer, "state")
    );
    Ok(())
}

fn value_text(value: &Value) -> String {
    match value {
        Value::Null => "n/a".into(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 => format!("{f:.0}"),
            Some(f) => format!("{f:.4}"),
            None => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// Prints a rollout for people.
fn print_rollout(r: &Value, detail: bool) {
    println!("rollout {}  {}  ({})", text(r, "id"), text(r, "state"), text(r, "reason"));
    println!(
        "  bundle   {}@{} {}  plan seq {}",
        text(&r["bundle"], "name"),
        text(&r["bundle"], "version"),
        text(&r["bundle"], "digest"),
        text(r, "plan_seq")
    );
    println!(
        "  cohort   {}  holdout {}% ({} devices, {} released)  advance {}  on gate failure {}",
        text(r, "cohort"),
        text(&r["holdout"], "percent"),
        text(&r["holdout"], "devices"),
        text(&r["holdout"], "released"),
        text(r, "advance"),
        text(r, "on_gate_fail")
    );
    println!(
        "  approvals {} of {} required",
        r["approvals"]["keys"].as_array().map(Vec::len).unwrap_or(0),
        text(&r["approvals"], "required")
    );
    let rows: Vec<Vec<String>> = r["waves"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|w| {
            vec![
                text(w, "index"),
                text(w, "size"),
                format!("{}/{}", text(w, "admitted"), text(w, "target")),
                text(w, "soak_seconds"),
                text(w, "status"),
            ]
        })
        .collect();
    print_table(&["WAVE", "SIZE", "ADMITTED", "SOAK_S", "STATUS"], &rows);
    if let Some(gates) = r["gates"]["gates"].as_array() {
        println!(
            "gates of wave {} ({}):",
            text(r, "wave"),
            text(&r["gates"]["judgement"], "verdict")
        );
        let rows: Vec<Vec<String>> = gates
            .iter()
            .map(|g| {
                vec![
                    text(g, "gate"),
                    value_text(&g["value"]),
                    format!("{} {}", text(g, "comparison"), value_text(&g["threshold"])),
                    text(g, "status"),
                    text(g, "detail"),
                ]
            })
            .collect();
        print_table(&["GATE", "VALUE", "THRESHOLD", "STATUS", "DETAIL"], &rows);
    }
    if detail && let Some(transitions) = r["transitions"].as_array() {
        println!("transitions:");
        for t in transitions {
            println!(
                "  {}  {:<22} {} -> {}  wave {}  by {}: {}",
                time_text(t["ts_ms"].as_i64()),
                text(t, "action"),
                text(t, "from_state"),
                text(t, "to_state"),
                text(t, "wave"),
                text(t, "actor"),
                text(t, "reason")
            );
        }
    }
}
