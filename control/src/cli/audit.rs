//! `outpost audit list|export|verify`: the audit trail. `list` and `export` go through the API
//! (roles admin and auditor); `verify` works offline on an export directory and exits 0 only
//! when nothing in it was altered, removed, reordered, inserted or forged (the format:
//! `docs/audit.md`, the checks: [`crate::audit::export::verify_directory`]).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Value, json};

use super::remote::{ServerArgs, print_table, text, time_text};
use crate::audit::export::{self, ExportAnswer};

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Audit records, newest first, optionally filtered.
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// Only this action, e.g. `auth.denied`.
        #[arg(long)]
        action: Option<String>,
        /// Only this actor (user name or device id).
        #[arg(long)]
        actor: Option<String>,
        /// Only records concerning this device.
        #[arg(long)]
        device: Option<String>,
        /// Only records concerning this model (`name@version`).
        #[arg(long)]
        model: Option<String>,
        /// From this time: RFC 3339 (`2026-05-01T08:00:00Z`), a date (`2026-05-01`, UTC) or
        /// unix milliseconds.
        #[arg(long)]
        from: Option<String>,
        /// Before this time (same forms as --from).
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Export records with their inclusion proofs, a signed checkpoint, a signed manifest and
    /// the log key into a new directory, for `outpost audit verify`.
    Export {
        #[command(flatten)]
        server: ServerArgs,
        /// From this time: RFC 3339, a date (UTC) or unix milliseconds.
        #[arg(long)]
        from: Option<String>,
        /// Before this time.
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        device: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        /// The `checkpoint` file of an earlier export: the export then proves the log still
        /// extends it (nothing was removed or rewritten since).
        #[arg(long)]
        previous: Option<PathBuf>,
        /// A new (or empty) directory for the export.
        #[arg(long)]
        out: PathBuf,
    },
    /// A fresh signed checkpoint of the whole log (keep it to pass as `--previous` later) and
    /// the log's verifier key.
    Checkpoint {
        #[command(flatten)]
        server: ServerArgs,
        /// Write the checkpoint to this file (default: print it).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write the log's verifier key to this file (for `verify --key`).
        #[arg(long)]
        key_out: Option<PathBuf>,
    },
    /// Verify an export directory offline: exit 0 when intact, 1 with the first problem.
    Verify {
        directory: PathBuf,
        /// A checkpoint seen before (e.g. an earlier export's `checkpoint`): the export's
        /// checkpoint must extend it.
        #[arg(long)]
        previous: Option<PathBuf>,
        /// The log's verifier key (`log.vkey` from a trusted source): the export must be
        /// signed with it. Without it the key in the directory is used.
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

pub fn run(command: AuditCommand) -> Result<()> {
    match command {
        AuditCommand::List { server, action, actor, device, model, from, to, limit, json } => {
            let mut query = vec![("limit", limit.to_string())];
            for (name, value) in
                [("action", action), ("actor", actor), ("device", device), ("model", model)]
            {
                if let Some(value) = value {
                    query.push((name, value));
                }
            }
            if let Some(from) = from {
                query.push(("from_ms", parse_time(&from, "--from")?.to_string()));
            }
            if let Some(to) = to {
                query.push(("to_ms", parse_time(&to, "--to")?.to_string()));
            }
            let answer = server.client()?.get_json("/v1/audit/events", &query)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(());
            }
            let events = answer["events"].as_array().cloned().unwrap_or_default();
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|event| {
                    vec![
                        event["leaf_index"].as_i64().map_or("-".into(), |i| i.to_string()),
                        time_text(event["ts_ms"].as_i64()),
                        text(event, "actor"),
                        text(event, "action"),
                        text(event, "outcome"),
                        text(event, "subject"),
                    ]
                })
                .collect();
            print_table(&["LEAF", "TIME", "ACTOR", "ACTION", "OUTCOME", "SUBJECT"], &rows);
            Ok(())
        }
        AuditCommand::Export { server, from, to, model, device, actor, previous, out } => {
            let previous_text = previous
                .as_deref()
                .map(|path| read_small(path, "the previous checkpoint"))
                .transpose()?;
            let mut body = json!({ "model": model, "device": device, "actor": actor });
            if let Some(from) = from {
                body["from_ms"] = Value::from(parse_time(&from, "--from")?);
            }
            if let Some(to) = to {
                body["to_ms"] = Value::from(parse_time(&to, "--to")?);
            }
            if let Some(previous) = &previous_text {
                body["previous"] = Value::from(previous.clone());
            }
            let answer = server.client()?.post_json("/v1/audit/exports", &body)?;
            let answer: ExportAnswer = serde_json::from_value(answer)
                .context("the server's export answer is not an audit export")?;
            export::write_directory(&out, &answer)?;
            let verified = export::verify_directory(&out, None, None).map_err(|failure| {
                anyhow!("the export the server sent does not verify: {failure}")
            })?;
            println!(
                "exported {} records to {} (checkpoint: tree size {}, key {})",
                verified.records,
                out.display(),
                verified.tree_size,
                verified.vkey
            );
            Ok(())
        }
        AuditCommand::Checkpoint { server, out, key_out } => {
            let answer = server.client()?.get_json("/v1/audit/checkpoint", &[])?;
            let note = answer["checkpoint"].as_str().context("the answer has no checkpoint")?;
            let vkey = answer["vkey"].as_str().context("the answer has no key")?;
            let checkpoint = crate::audit::note::Checkpoint::open(
                note,
                &crate::audit::note::NoteVerifier::parse(vkey)?,
            )
            .context("the server's checkpoint does not verify with its key")?;
            if let Some(path) = &key_out {
                crate::files::write_atomic(path, format!("{vkey}\n").as_bytes(), false)?;
            }
            match &out {
                Some(path) => {
                    crate::files::write_atomic(path, note.as_bytes(), false)?;
                    println!(
                        "checkpoint of tree size {} written to {} (log key {vkey})",
                        checkpoint.size,
                        path.display()
                    );
                }
                None => print!("{note}"),
            }
            Ok(())
        }
        AuditCommand::Verify { directory, previous, key } => {
            if !directory.is_dir() {
                bail!("{} is not an export directory", directory.display());
            }
            let previous = previous
                .as_deref()
                .map(|path| read_small(path, "the previous checkpoint"))
                .transpose()?;
            let key = key.as_deref().map(|path| read_small(path, "the key")).transpose()?;
            let verified =
                export::verify_directory(&directory, key.as_deref(), previous.as_deref()).map_err(
                    |failure| {
                        anyhow!("audit export {} does NOT verify: {failure}", directory.display())
                    },
                )?;
            println!(
                "verified: {} records, each included in the log at its leaf index; checkpoint \
                 of tree size {} signed by {}{}",
                verified.records,
                verified.tree_size,
                verified.vkey,
                match verified.consistent_with {
                    Some(size) =>
                        format!("; consistent with the previous checkpoint of size {size}"),
                    None => String::new(),
                }
            );
            if key.is_none() {
                println!(
                    "note: the key was taken from the export itself; pass --key with the log key \
                     from a trusted source to rule out a re-signed export"
                );
            }
            Ok(())
        }
    }
}

fn read_small(path: &Path, what: &str) -> Result<String> {
    let bytes = crate::files::read_limited(path, 1 << 20, what)?;
    String::from_utf8(bytes).with_context(|| format!("{what} {} is not text", path.display()))
}

/// Unix milliseconds from RFC 3339, a date (midnight UTC) or digits.
pub fn parse_time(text: &str, option: &str) -> Result<i64> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().with_context(|| format!("{option} {text}: too large"));
    }
    use time::format_description::well_known::Rfc3339;
    if let Ok(moment) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(i64::try_from(moment.unix_timestamp_nanos() / 1_000_000)?);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(date) = time::Date::parse(text, &format) {
        return Ok(date.midnight().assume_utc().unix_timestamp() * 1000);
    }
    bail!(
        "{option} `{text}`: expected RFC 3339 (2026-05-01T08:00:00Z), a date (2026-05-01) or unix milliseconds"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_in_three_forms() {
        assert_eq!(parse_time("1700000000000", "--from").expect("ms"), 1_700_000_000_000);
        assert_eq!(parse_time("2023-11-14", "--from").expect("date"), 1_699_920_000_000);
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z", "--from").expect("rfc3339"),
            1_700_000_000_000
        );
        assert!(parse_time("yesterday", "--from").is_err());
    }
}
