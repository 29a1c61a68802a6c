//! `outpost assign --device D --plan P.plan [--revert]`: direct assignment of a signed plan to
//! one device, through the API (`POST /v1/assign`); the server verifies the plan and publishes it
//! retained. `--revert` sends the device back to the plan's fallback bundle.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use outpost_shared::dsse::MAX_ENVELOPE_BYTES;
use serde_json::json;

use super::remote::{ServerArgs, text};
use crate::files::read_limited;

/// Arguments of `outpost assign`.
#[derive(Debug, clap::Args)]
pub struct AssignArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The device id.
    #[arg(long)]
    pub device: String,
    /// The signed plan file (`outpost plan create` + `outpost plan sign`).
    #[arg(long)]
    pub plan: PathBuf,
    /// The wave recorded in the admission.
    #[arg(long, default_value_t = 0)]
    pub wave: u32,
    /// Send the device back to the plan's fallback bundle (an operator's revert).
    #[arg(long)]
    pub revert: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: AssignArgs) -> Result<()> {
    let bytes = read_limited(&args.plan, MAX_ENVELOPE_BYTES as u64, "plan")?;
    let plan = String::from_utf8(bytes)
        .with_context(|| format!("plan {} is not UTF-8 text", args.plan.display()))?;
    let answer = args
        .server
        .client()?
        .post_json(
            "/v1/assign",
            &json!({ "device": args.device, "plan": plan, "wave": args.wave, "revert": args.revert }),
        )
        .with_context(|| format!("assigning {} to {}", args.plan.display(), args.device))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let what = if args.revert { "revert of rollout" } else { "rollout" };
    println!(
        "assigned {what} {} seq {} ({}@{}) to {} on {} (retained)",
        text(&answer, "rollout"),
        text(&answer, "seq"),
        text(&answer["bundle"], "name"),
        text(&answer["bundle"], "version"),
        text(&answer, "device"),
        text(&answer, "topic"),
    );
    if answer["known_device"] == false {
        println!(
            "  note: the device is not in the inventory yet; it gets the plan when it connects"
        );
    }
    Ok(())
}
