//! Audit exports: what the server sends, the files of an export directory, and their offline
//! verification (`outpost audit verify`).
//!
//! An export directory holds:
//! - `records.jsonl`: one [`ExportedRecord`] per line, in log order: leaf index, the record,
//!   and its inclusion proof (hex hashes) to the checkpoint;
//! - `checkpoint`: the signed checkpoint (C2SP signed note) the proofs lead to;
//! - `manifest`: a note signed by the log key naming the checkpoint, the filters, the number
//!   of records and every leaf index in order, so a deleted, reordered, inserted or truncated
//!   record of a filtered export is detected;
//! - `log.vkey` (C2SP verifier key) and `log.pub` (the raw 32-byte Ed25519 public key);
//! - `previous-checkpoint` and `consistency.json` when the export was asked for with
//!   `--previous`: the consistency proof from that checkpoint to this one;
//! - `records.csv`: the same records for people (checked to match `records.jsonl`).

use std::fmt::Write as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::merkle::{Hash, verify_consistency, verify_inclusion};
use super::note::{Checkpoint, NoteError, NoteVerifier};
use super::record::AuditRecord;

pub const RECORDS_FILE: &str = "records.jsonl";
pub const CSV_FILE: &str = "records.csv";
pub const CHECKPOINT_FILE: &str = "checkpoint";
pub const MANIFEST_FILE: &str = "manifest";
pub const VKEY_FILE: &str = "log.vkey";
pub const PUBLIC_KEY_FILE: &str = "log.pub";
pub const PREVIOUS_FILE: &str = "previous-checkpoint";
pub const CONSISTENCY_FILE: &str = "consistency.json";

/// The first line of a manifest.
pub const MANIFEST_HEADER: &str = "outpost-audit-export/v1";

/// One line of `records.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedRecord {
    pub leaf_index: u64,
    pub record: AuditRecord,
    /// Hex hashes, RFC 6962 order.
    pub inclusion_proof: Vec<String>,
}

/// `consistency.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProof {
    pub from_size: u64,
    pub to_size: u64,
    /// Hex hashes, RFC 6962 order.
    pub proof: Vec<String>,
}

/// What an export selects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportFilters {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub actor: Option<String>,
    pub device: Option<String>,
    pub model: Option<String>,
}

impl ExportFilters {
    /// Whether `record` is one the filters select.
    pub fn selects(&self, record: &AuditRecord) -> bool {
        self.from_ms.is_none_or(|from| record.ts_ms >= from)
            && self.to_ms.is_none_or(|to| record.ts_ms < to)
            && self.actor.as_ref().is_none_or(|actor| &record.actor == actor)
            && self.device.as_ref().is_none_or(|device| record.device.as_ref() == Some(device))
            && self.model.as_ref().is_none_or(|model| record.model.as_ref() == Some(model))
    }
}

/// The server's answer to an export request: every file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportAnswer {
    pub checkpoint: String,
    pub vkey: String,
    pub manifest: String,
    pub records: Vec<ExportedRecord>,
    pub previous: Option<String>,
    pub consistency: Option<ConsistencyProof>,
}

/// The signed manifest of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub tree_size: u64,
    pub root: Hash,
    pub filters: ExportFilters,
    pub leaves: Vec<u64>,
}

fn optional_json<T: Serialize>(value: &Option<T>) -> String {
    match value {
        None => "-".into(),
        Some(value) => serde_json::to_string(value).unwrap_or_default(),
    }
}

impl Manifest {
    /// The note text: header, checkpoint, filters (JSON values or `-`), count, one `leaf N`
    /// line per record.
    pub fn to_text(&self) -> String {
        let mut text = format!("{MANIFEST_HEADER}\n");
        let _ = writeln!(text, "checkpoint {} {}", self.tree_size, B64.encode(self.root));
        let filters = &self.filters;
        let _ = writeln!(text, "from_ms {}", optional_json(&filters.from_ms));
        let _ = writeln!(text, "to_ms {}", optional_json(&filters.to_ms));
        let _ = writeln!(text, "actor {}", optional_json(&filters.actor));
        let _ = writeln!(text, "device {}", optional_json(&filters.device));
        let _ = writeln!(text, "model {}", optional_json(&filters.model));
        let _ = writeln!(text, "records {}", self.leaves.len());
        for leaf in &self.leaves {
            let _ = writeln!(text, "leaf {leaf}");
        }
        text
    }

    pub fn parse(text: &str) -> Result<Manifest, String> {
        let mut lines = text.split_terminator('\n');
        if lines.next() != Some(MANIFEST_HEADER) {
            return Err(format!("the first line is not `{MANIFEST_HEADER}`"));
        }
        let mut field = |name: &str| -> Result<String, String> {
            let line = lines.next().ok_or_else(|| format!("no `{name}` line"))?;
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(str::to_string)
                .ok_or_else(|| format!("expected `{name} …`, found `{line}`"))
        };
        let checkpoint = field("checkpoint")?;
        let (size, root) =
            checkpoint.split_once(' ').ok_or("the checkpoint line needs a size and a root")?;
        let tree_size = size.parse().map_err(|_| format!("tree size `{size}`"))?;
        let root: Hash = B64
            .decode(root)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or("the checkpoint root is not 32 bytes of base64")?;
        fn value<T: serde::de::DeserializeOwned>(
            name: &str,
            text: &str,
        ) -> Result<Option<T>, String> {
            if text == "-" {
                return Ok(None);
            }
            serde_json::from_str(text).map(Some).map_err(|e| format!("`{name}`: {e}"))
        }
        let filters = ExportFilters {
            from_ms: value("from_ms", &field("from_ms")?)?,
            to_ms: value("to_ms", &field("to_ms")?)?,
            actor: value("actor", &field("actor")?)?,
            device: value("device", &field("device")?)?,
            model: value("model", &field("model")?)?,
        };
        let count: usize = field("records")?.parse().map_err(|_| "the record count".to_string())?;
        let mut leaves = Vec::with_capacity(count.min(1 << 20));
        for _ in 0..count {
            let leaf = field("leaf")?;
            leaves.push(leaf.parse().map_err(|_| format!("leaf index `{leaf}`"))?);
        }
        if let Some(extra) = lines.next() {
            return Err(format!("unexpected line `{extra}` after the leaves"));
        }
        Ok(Manifest { tree_size, root, filters, leaves })
    }
}

/// Hex hashes.
pub fn hex_hashes(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(hex::encode).collect()
}

fn parse_hashes(hashes: &[String]) -> Option<Vec<Hash>> {
    hashes
        .iter()
        .map(|text| hex::decode(text).ok().and_then(|bytes| bytes.try_into().ok()))
        .collect()
}

/// `records.csv` for `records`.
pub fn csv_text(records: &[ExportedRecord]) -> Result<String, String> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let header = [
        "leaf_index",
        "time",
        "actor",
        "action",
        "subject",
        "outcome",
        "reason",
        "source",
        "device",
        "model",
        "id",
        "ts_ms",
    ];
    writer.write_record(header).map_err(|e| e.to_string())?;
    for exported in records {
        let record = &exported.record;
        let time =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(record.ts_ms) * 1_000_000)
                .ok()
                .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                .unwrap_or_default();
        writer
            .write_record([
                exported.leaf_index.to_string(),
                time,
                record.actor.clone(),
                record.action.clone(),
                record.subject.clone(),
                record.outcome.clone(),
                record.reason.clone(),
                record.source.clone(),
                record.device.clone().unwrap_or_default(),
                record.model.clone().unwrap_or_default(),
                record.id.to_string(),
                record.ts_ms.to_string(),
            ])
            .map_err(|e| e.to_string())?;
    }
    let bytes = writer.into_inner().map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

/// `records.jsonl` for `records`.
pub fn jsonl_text(records: &[ExportedRecord]) -> Result<String, String> {
    let mut text = String::new();
    for record in records {
        text.push_str(&serde_json::to_string(record).map_err(|e| e.to_string())?);
        text.push('\n');
    }
    Ok(text)
}

/// Writes the export's files into `directory` (created; it must not hold files already).
pub fn write_directory(directory: &Path, answer: &ExportAnswer) -> anyhow::Result<()> {
    use anyhow::{Context as _, bail};
    if directory.exists() {
        let mut entries = std::fs::read_dir(directory)
            .with_context(|| format!("reading {}", directory.display()))?;
        if entries.next().is_some() {
            bail!("{} already holds files: choose a new directory", directory.display());
        }
    }
    std::fs::create_dir_all(directory)
        .with_context(|| format!("creating {}", directory.display()))?;
    let verifier = NoteVerifier::parse(&answer.vkey).context("the server's log key")?;
    let write = |name: &str, bytes: &[u8]| {
        crate::files::write_atomic(&directory.join(name), bytes, false)
            .with_context(|| format!("writing {name}"))
    };
    write(RECORDS_FILE, jsonl_text(&answer.records).map_err(anyhow::Error::msg)?.as_bytes())?;
    write(CSV_FILE, csv_text(&answer.records).map_err(anyhow::Error::msg)?.as_bytes())?;
    write(CHECKPOINT_FILE, answer.checkpoint.as_bytes())?;
    write(MANIFEST_FILE, answer.manifest.as_bytes())?;
    write(VKEY_FILE, format!("{}\n", verifier.to_vkey()).as_bytes())?;
    write(PUBLIC_KEY_FILE, verifier.public_key().as_bytes())?;
    if let Some(previous) = &answer.previous {
        write(PREVIOUS_FILE, previous.as_bytes())?;
    }
    if let Some(consistency) = &answer.consistency {
        let mut text = serde_json::to_string_pretty(consistency)?;
        text.push('\n');
        write(CONSISTENCY_FILE, text.as_bytes())?;
    }
    Ok(())
}

/// The first problem found in an export; the text names the file, line and leaf index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct VerifyFailure(pub String);

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub vkey: String,
    pub tree_size: u64,
    pub root: Hash,
    pub records: usize,
    /// The tree size of the previous checkpoint this one was proved consistent with.
    pub consistent_with: Option<u64>,
}

fn fail<T>(message: impl Into<String>) -> Result<T, VerifyFailure> {
    Err(VerifyFailure(message.into()))
}

fn read_text(directory: &Path, name: &str) -> Result<String, VerifyFailure> {
    std::fs::read_to_string(directory.join(name))
        .or_else(|error| fail(format!("{name}: cannot read it: {error}")))
}

fn note_failure(what: &str, error: NoteError, note: &str) -> VerifyFailure {
    match error {
        NoteError::NotSigned(key) => VerifyFailure(format!(
            "{what}: not signed by the log key {key} (signed by: {}): wrong key",
            super::note::signer_names(note).join(", ")
        )),
        NoteError::BadSignature(_) => VerifyFailure(format!(
            "{what}: the signature does not verify: it was altered or forged"
        )),
        other => VerifyFailure(format!("{what}: {other}")),
    }
}

/// Verifies the export in `directory` offline. `trusted_vkey`: the log key the verifier knows
/// (else the key in the directory is used, and only the export's internal consistency is
/// proved). `previous`: a checkpoint seen before, which this export's checkpoint must extend.
pub fn verify_directory(
    directory: &Path,
    trusted_vkey: Option<&str>,
    previous: Option<&str>,
) -> Result<Verified, VerifyFailure> {
    // The key.
    let vkey_text = read_text(directory, VKEY_FILE)?;
    let verifier =
        NoteVerifier::parse(&vkey_text).or_else(|error| fail(format!("{VKEY_FILE}: {error}")))?;
    let raw = std::fs::read(directory.join(PUBLIC_KEY_FILE))
        .or_else(|error| fail(format!("{PUBLIC_KEY_FILE}: cannot read it: {error}")))?;
    if raw.as_slice() != verifier.public_key().as_bytes() {
        return fail(format!("{PUBLIC_KEY_FILE} is not the key of {VKEY_FILE}: wrong key"));
    }
    if let Some(trusted) = trusted_vkey {
        let trusted = NoteVerifier::parse(trusted)
            .or_else(|error| fail(format!("the expected key: {error}")))?;
        if trusted != verifier {
            return fail(format!(
                "{VKEY_FILE}: the export is signed with key {}, not the expected key {}: wrong key",
                verifier.to_vkey(),
                trusted.to_vkey()
            ));
        }
    }
    // The checkpoint.
    let checkpoint_note = read_text(directory, CHECKPOINT_FILE)?;
    let checkpoint = Checkpoint::open(&checkpoint_note, &verifier)
        .map_err(|error| note_failure(CHECKPOINT_FILE, error, &checkpoint_note))?;
    if checkpoint.origin != verifier.name() {
        return fail(format!(
            "{CHECKPOINT_FILE}: origin `{}` is not the log `{}`",
            checkpoint.origin,
            verifier.name()
        ));
    }
    // The manifest.
    let manifest_note = read_text(directory, MANIFEST_FILE)?;
    let manifest_text = verifier
        .open(&manifest_note)
        .map_err(|error| note_failure(MANIFEST_FILE, error, &manifest_note))?;
    let manifest = Manifest::parse(manifest_text)
        .or_else(|error| fail(format!("{MANIFEST_FILE}: {error}")))?;
    if manifest.tree_size != checkpoint.size || manifest.root != checkpoint.root {
        return fail(format!(
            "{MANIFEST_FILE}: it names the tree of size {}, but {CHECKPOINT_FILE} is of size {}",
            manifest.tree_size, checkpoint.size
        ));
    }
    // The records, line by line, against the checkpoint and the manifest.
    let records_text = read_text(directory, RECORDS_FILE)?;
    let mut records = Vec::new();
    let present: std::collections::HashSet<u64> = records_text
        .lines()
        .filter_map(|line| serde_json::from_str::<ExportedRecord>(line).ok())
        .map(|record| record.leaf_index)
        .collect();
    let listed: std::collections::HashSet<u64> = manifest.leaves.iter().copied().collect();
    let mut expected = manifest.leaves.iter().enumerate().peekable();
    for (number, line) in records_text.split_terminator('\n').enumerate() {
        let number = number + 1;
        let exported: ExportedRecord = serde_json::from_str(line).or_else(|error| {
            fail(format!("{RECORDS_FILE} line {number}: not a record: {error}"))
        })?;
        let index = exported.leaf_index;
        let at = format!("{RECORDS_FILE} line {number} (leaf index {index})");
        let Some(proof) = parse_hashes(&exported.inclusion_proof) else {
            return fail(format!("{at}: the inclusion proof is not hex SHA-256 hashes"));
        };
        if !verify_inclusion(
            index,
            checkpoint.size,
            &exported.record.leaf_hash(),
            &proof,
            &checkpoint.root,
        ) {
            return fail(format!(
                "{at}: the record is not in the log at this index (its inclusion proof fails \
                 against the checkpoint): the record was altered, forged or moved"
            ));
        }
        match expected.peek() {
            Some(&(_, &wanted)) if wanted == index => {
                expected.next();
            }
            Some(&(entry, &wanted)) if !present.contains(&wanted) => {
                return fail(format!(
                    "leaf index {wanted} (manifest entry {}) is missing from {RECORDS_FILE} \
                     before line {number}: the record was deleted",
                    entry + 1
                ));
            }
            Some(&(_, &wanted)) if listed.contains(&index) => {
                return fail(format!(
                    "{at}: out of order: the manifest lists leaf index {wanted} here: the \
                     records were reordered"
                ));
            }
            _ => {
                return fail(format!(
                    "{at}: the record is not listed in the signed manifest: it was inserted"
                ));
            }
        }
        if !manifest.filters.selects(&exported.record) {
            return fail(format!("{at}: the record does not match the export's filters"));
        }
        records.push(exported);
    }
    if let Some((entry, wanted)) = expected.next() {
        return fail(format!(
            "leaf index {wanted} (manifest entry {}) is missing from {RECORDS_FILE} after line \
             {}: the records were deleted or truncated",
            entry + 1,
            records.len()
        ));
    }
    // The people's copy.
    if let Ok(csv) = std::fs::read_to_string(directory.join(CSV_FILE)) {
        let expected_csv = csv_text(&records).or_else(|e| fail(format!("{CSV_FILE}: {e}")))?;
        if csv != expected_csv {
            let line = csv.lines().zip(expected_csv.lines()).position(|(a, b)| a != b);
            return fail(format!(
                "{CSV_FILE} does not match {RECORDS_FILE} (first difference at line {})",
                line.map_or(csv.lines().count().min(expected_csv.lines().count()) + 1, |l| l + 1)
            ));
        }
    } else {
        return fail(format!("{CSV_FILE}: missing"));
    }
    // Consistency with a previous checkpoint: the one given, else the one the export carries.
    let stored_previous = std::fs::read_to_string(directory.join(PREVIOUS_FILE)).ok();
    let previous_note = previous.map(str::to_string).or(stored_previous);
    let mut consistent_with = None;
    if let Some(previous_note) = previous_note {
        let old = Checkpoint::open(&previous_note, &verifier)
            .map_err(|error| note_failure("the previous checkpoint", error, &previous_note))?;
        if old.origin != checkpoint.origin {
            return fail(format!(
                "the previous checkpoint is of log `{}`, not `{}`",
                old.origin, checkpoint.origin
            ));
        }
        if old.size > checkpoint.size {
            return fail(format!(
                "the log was truncated: the previous checkpoint has {} records, this export's \
                 checkpoint only {}: the records at leaf indices {} to {} are gone",
                old.size,
                checkpoint.size,
                checkpoint.size,
                old.size - 1
            ));
        }
        let proof = if old.size == checkpoint.size || old.size == 0 {
            Vec::new()
        } else {
            let text = read_text(directory, CONSISTENCY_FILE).map_err(|_| {
                VerifyFailure(format!(
                    "{CONSISTENCY_FILE}: missing: the export holds no consistency proof from \
                     tree size {}; export again with --previous",
                    old.size
                ))
            })?;
            let consistency: ConsistencyProof = serde_json::from_str(&text)
                .or_else(|error| fail(format!("{CONSISTENCY_FILE}: {error}")))?;
            if consistency.from_size != old.size || consistency.to_size != checkpoint.size {
                return fail(format!(
                    "{CONSISTENCY_FILE}: it proves {} → {}, not {} → {}; export again with \
                     --previous",
                    consistency.from_size, consistency.to_size, old.size, checkpoint.size
                ));
            }
            parse_hashes(&consistency.proof)
                .ok_or_else(|| VerifyFailure(format!("{CONSISTENCY_FILE}: not hex hashes")))?
        };
        if !verify_consistency(old.size, checkpoint.size, &old.root, &checkpoint.root, &proof) {
            return fail(format!(
                "the log of size {} is not an extension of the previous checkpoint of size {} \
                 (the consistency proof fails): the log was rewritten or truncated after the \
                 previous checkpoint",
                checkpoint.size, old.size
            ));
        }
        consistent_with = Some(old.size);
    }
    Ok(Verified {
        vkey: verifier.to_vkey(),
        tree_size: checkpoint.size,
        root: checkpoint.root,
        records: records.len(),
        consistent_with,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle::MemoryTree;
    use crate::audit::note::NoteSigner;

    fn record(id: i64, device: &str) -> AuditRecord {
        AuditRecord {
            id,
            ts_ms: 1_700_000_000_000 + id,
            actor: device.into(),
            action: "device.install".into(),
            subject: format!("device {device}"),
            outcome: "ok".into(),
            reason: String::new(),
            source: "mqtt".into(),
            device: Some(device.into()),
            model: None,
        }
    }

    /// A log of 10 records (even ids on `a`, odd on `b`) and an export of `device`'s records.
    fn export(device: Option<&str>) -> (ExportAnswer, Vec<ExportedRecord>) {
        let signer = NoteSigner::from_seed("test/audit", &[3u8; 32]).expect("signer");
        let records: Vec<AuditRecord> =
            (0..10).map(|id| record(id, if id % 2 == 0 { "a" } else { "b" })).collect();
        let mut tree = MemoryTree::default();
        for record in &records {
            tree.push(record.leaf_hash());
        }
        let size = tree.size();
        let root = tree.root_at(size).expect("root");
        let exported: Vec<ExportedRecord> = records
            .iter()
            .enumerate()
            .map(|(index, record)| ExportedRecord {
                leaf_index: index as u64,
                record: record.clone(),
                inclusion_proof: hex_hashes(
                    &tree.inclusion_proof(index as u64, size).expect("proof"),
                ),
            })
            .collect();
        let filters = ExportFilters { device: device.map(str::to_string), ..Default::default() };
        let selected: Vec<ExportedRecord> =
            exported.iter().filter(|r| filters.selects(&r.record)).cloned().collect();
        let manifest = Manifest {
            tree_size: size,
            root,
            filters,
            leaves: selected.iter().map(|r| r.leaf_index).collect(),
        };
        let checkpoint = Checkpoint { origin: "test/audit".into(), size, root };
        let answer = ExportAnswer {
            checkpoint: signer.sign(&checkpoint.to_text()).expect("sign"),
            vkey: signer.verifier().to_vkey(),
            manifest: signer.sign(&manifest.to_text()).expect("sign"),
            records: selected,
            previous: None,
            consistency: None,
        };
        (answer, exported)
    }

    #[test]
    fn a_genuine_record_smuggled_into_a_filtered_export_is_refused_by_the_manifest() {
        let directory = tempfile::tempdir().expect("tempdir");
        let (mut answer, all) = export(Some("a"));
        let good = directory.path().join("good");
        write_directory(&good, &answer).expect("write");
        let verified = verify_directory(&good, None, None).expect("verifies");
        assert_eq!(verified.records, 5);
        // Record 3 (device b) has a valid inclusion proof, but the manifest does not list it.
        answer.records.insert(2, all[3].clone());
        let smuggled = directory.path().join("smuggled");
        write_directory(&smuggled, &answer).expect("write");
        let failure = verify_directory(&smuggled, None, None).expect_err("refused");
        assert!(
            failure.0.contains("line 3 (leaf index 3)") && failure.0.contains("inserted"),
            "{failure}"
        );
        // Moved to where its index fits, it is still not in the manifest.
        answer.records.remove(2);
        answer.records.insert(1, all[1].clone());
        let moved = directory.path().join("moved");
        write_directory(&moved, &answer).expect("write");
        let failure = verify_directory(&moved, None, None).expect_err("refused");
        assert!(failure.0.contains("leaf index 1") && failure.0.contains("inserted"), "{failure}");
    }

    #[test]
    fn manifests_round_trip_and_refuse_extra_lines() {
        let manifest = Manifest {
            tree_size: 12,
            root: [1u8; 32],
            filters: ExportFilters {
                from_ms: Some(5),
                actor: Some("name with spaces\nand a newline".into()),
                ..Default::default()
            },
            leaves: vec![1, 5, 11],
        };
        let text = manifest.to_text();
        assert_eq!(Manifest::parse(&text).expect("parse"), manifest);
        assert!(Manifest::parse(&format!("{text}leaf 12\n")).is_err());
        assert!(Manifest::parse(&text.replace("records 3", "records 4")).is_err());
        assert!(Manifest::parse(&text.replacen("outpost", "other", 1)).is_err());
    }
}
