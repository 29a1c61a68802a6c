//! `outpost model push|list|show`: the server's model registry, through the API.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::remote::{ServerArgs, path_segment, print_table, text, time_text};
use crate::files::read_limited;

#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {
    /// Push a signed bundle; the server verifies it against its trust root and stores it.
    /// Pushing the same bundle again changes nothing.
    Push {
        #[command(flatten)]
        server: ServerArgs,
        bundle: PathBuf,
    },
    /// Every model with its versions and digests.
    List {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        json: bool,
    },
    /// One model (every version) or one version: digest, lineage, signers, profile summary.
    Show {
        #[command(flatten)]
        server: ServerArgs,
        /// `NAME` or `NAME@VERSION`.
        model: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: ModelCommand) -> Result<()> {
    match command {
        ModelCommand::Push { server, bundle } => {
            let bytes = read_limited(&bundle, outpost_shared::bundle::MAX_BUNDLE_BYTES, "bundle")?;
            let answer = server
                .client()?
                .post_bytes("/v1/models", "application/octet-stream", &bytes)
                .with_context(|| format!("pushing {}", bundle.display()))?;
            let record = &answer["bundle"];
            let id = format!("{}@{}", text(record, "name"), text(record, "version"));
            if answer["stored"] == Value::Bool(true) {
                println!("stored {id} {} ({} bytes)", text(record, "digest"), text(record, "size"));
            } else {
                println!("already stored: {id} {} (nothing changed)", text(record, "digest"));
            }
            Ok(())
        }
        ModelCommand::List { server, json } => {
            let answer = server.client()?.get_json("/v1/models", &[])?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(());
            }
            let mut rows = Vec::new();
            for model in answer["models"].as_array().into_iter().flatten() {
                for version in model["versions"].as_array().into_iter().flatten() {
                    rows.push(vec![
                        text(model, "name"),
                        text(version, "version"),
                        text(version, "digest"),
                        text(version, "size"),
                        time_text(version["pushed_ms"].as_i64()),
                    ]);
                }
            }
            print_table(&["NAME", "VERSION", "DIGEST", "SIZE", "PUSHED"], &rows);
            Ok(())
        }
        ModelCommand::Show { server, model, json } => {
            let client = server.client()?;
            let (name, version) = match model.split_once('@') {
                Some((name, version)) => (name, Some(version)),
                None => (model.as_str(), None),
            };
            if name.is_empty() || version.is_some_and(str::is_empty) {
                bail!("expected NAME or NAME@VERSION, got `{model}`");
            }
            let answer = match version {
                Some(version) => client.get_json(
                    &format!(
                        "/v1/models/{}/versions/{}",
                        path_segment(name),
                        path_segment(version)
                    ),
                    &[],
                )?,
                None => client.get_json(&format!("/v1/models/{}", path_segment(name)), &[])?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(());
            }
            match answer.get("bundle") {
                Some(bundle) => print_version(bundle, true),
                None => {
                    println!("model {name}");
                    for version in answer["versions"].as_array().into_iter().flatten() {
                        print_version(version, false);
                    }
                }
            }
            Ok(())
        }
    }
}

fn print_version(version: &Value, full: bool) {
    let name = version.get("name").map(|_| format!("{}@", text(version, "name")));
    println!("{}{}", name.unwrap_or_else(|| "  ".into()), text(version, "version"));
    println!("    digest:   {}", text(version, "digest"));
    println!("    size:     {} bytes", text(version, "size"));
    if full {
        println!("    task:     {}", text(version, "task"));
        println!("    signers:  {}", version["signers"]);
    }
    println!(
        "    pushed:   {} by {}",
        time_text(version["pushed_ms"].as_i64()),
        text(version, "pushed_by")
    );
    let lineage = if full { &version["manifest"]["lineage"] } else { &version["lineage"] };
    println!("    lineage:  {lineage}");
    let summary = &version["profile_summary"];
    println!("    profile:  {} reference samples", text(summary, "reference_count"));
    for (kind, features) in [("input", &summary["inputs"]), ("output", &summary["outputs"])] {
        for feature in features.as_array().into_iter().flatten() {
            println!(
                "      {kind} {}: mean {} std {} min {} max {} ({} bins)",
                text(feature, "name"),
                text(feature, "mean"),
                text(feature, "std"),
                text(feature, "min"),
                text(feature, "max"),
                text(feature, "bins"),
            );
        }
    }
}
