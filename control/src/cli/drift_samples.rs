//! `outpost drift samples request|list|get --device D`: on-device samples of raw inputs
//! (`docs/drift.md` "Input samples") through the API — ask a device to upload, see the
//! requests, and write a complete upload to a CSV file (atomically, mode 0600: the rows are
//! personal-data-bearing).

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::cli::remote::{ServerArgs, path_segment, print_table, text, time_text};

#[derive(Debug, clap::Subcommand)]
pub enum SamplesCommand {
    /// Ask a device to upload its input sample (it holds one only while in drift alert and
    /// with `[sampling] enabled = true`); recorded in the audit log.
    Request {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        device: String,
    },
    /// A device's upload requests and their state.
    List {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        device: String,
        #[arg(long)]
        json: bool,
    },
    /// Write a complete upload (the newest unless --request) to a CSV file; the read is
    /// recorded in the audit log.
    Get {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        device: String,
        /// A request id from `outpost drift samples list`.
        #[arg(long)]
        request: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(command: SamplesCommand) -> Result<()> {
    match command {
        SamplesCommand::Request { server, device } => {
            let client = server.client()?;
            let answer = client
                .post_json(&format!("/v1/devices/{}/samples", path_segment(&device)), &Value::Null)
                .with_context(|| format!("requesting {device}'s input sample"))?;
            let id = text(&answer["request"], "request_id");
            let alert = answer["alert"].as_bool().unwrap_or(false);
            println!("requested {id} from {device}");
            if !alert {
                println!(
                    "note: {device} has no open drift alert; it collects rows only while in alert"
                );
            }
            Ok(())
        }
        SamplesCommand::List { server, device, json } => {
            let client = server.client()?;
            let answer =
                client.get_json(&format!("/v1/devices/{}/samples", path_segment(&device)), &[])?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = answer["requests"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    vec![
                        text(r, "request_id"),
                        text(r, "state"),
                        time_text(r["requested_ms"].as_i64()),
                        text(r, "requested_by"),
                        format!("{}/{}", text(r, "received_parts"), text(r, "parts")),
                        text(r, "seen"),
                        text(r, "enabled"),
                    ]
                })
                .collect();
            print_table(
                &["REQUEST", "STATE", "REQUESTED", "BY", "PARTS", "SEEN", "SAMPLING"],
                &rows,
            );
            Ok(())
        }
        SamplesCommand::Get { server, device, request, out } => {
            let client = server.client()?;
            let query: Vec<(&str, String)> =
                request.iter().map(|id| ("request", id.clone())).collect();
            let answer = client
                .get_json(&format!("/v1/devices/{}/samples/csv", path_segment(&device)), &query)
                .with_context(|| format!("reading {device}'s input sample"))?;
            let Value::String(csv) = answer else {
                bail!("the server answered JSON where a CSV file was expected: {answer}");
            };
            crate::files::write_atomic(&out, csv.as_bytes(), true)?;
            let rows = csv.lines().count().saturating_sub(1);
            println!("wrote {rows} rows to {}", out.display());
            Ok(())
        }
    }
}
