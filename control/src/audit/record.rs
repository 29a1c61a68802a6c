//! One audit record as it enters the Merkle log: its canonical bytes (the leaf data) and the
//! vocabulary of actions.
//!
//! The canonical bytes are compact JSON with the fields in this fixed order:
//! `{"v":1,"id":…,"ts_ms":…,"actor":…,"action":…,"subject":…,"outcome":…,"reason":…,
//! "source":…,"device":…,"model":…}` (`device` and `model` are `null` when absent; strings use
//! the minimal JSON escaping: `"`, `\` and control characters only). The leaf hash is
//! `SHA-256(0x00 || canonical bytes)`.

use serde::{Deserialize, Serialize};

use super::merkle::{Hash, leaf_hash};

/// The version of the canonical form.
pub const RECORD_VERSION: u32 = 1;

/// The actions recorded, by family. Events record one of these (or, for a mutating API route
/// without its own event, `api.<operationId>`).
pub const ACTIONS: &[(&str, &str)] = &[
    (
        "auth.denied",
        "requests refused for authentication (401), authorization (403) or a source denied too \
         often (429), counted per kind and source",
    ),
    ("user.create", "a user and token were created"),
    ("user.role", "a user's role was changed"),
    ("user.remove", "a user was removed and its tokens revoked"),
    ("token.create", "another token was issued for a user"),
    ("token.revoke", "a token was revoked"),
    ("token.rotate", "a user replaced its token with a new one"),
    ("model.publish", "a signed bundle was pushed to the registry"),
    ("rollout.assign", "a signed plan was published to one device"),
    ("device.enroll", "a device was enrolled (certificate from the fleet CA)"),
    ("device.revoke", "a device's certificates were revoked"),
    ("certificate.issue", "a broker or control certificate was issued"),
    ("drift.alert.open", "the drift monitor opened an alert"),
    ("drift.alert.close", "the drift monitor closed an alert"),
    ("drift.alert.review", "an alert was acknowledged, marked expected or annotated"),
    ("drift.retrain.request", "retraining of a model version was requested"),
    ("drift.samples.request", "a device was asked to upload its sample of raw inputs"),
    ("drift.samples.upload", "a device's sample of raw inputs arrived complete"),
    ("drift.samples.read", "a device's sample of raw inputs was read"),
    ("audit.export", "an audit export was made"),
    ("device.<kind>", "an event a device reported (install, rollback, refusal, …)"),
    ("rollout.<transition>", "a staged rollout changed state (approve, start, wave advance, …)"),
];

/// A recorded audit event with everything its leaf commits to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// The database id (unique, not necessarily in log order).
    pub id: i64,
    pub ts_ms: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub outcome: String,
    pub reason: String,
    pub source: String,
    pub device: Option<String>,
    pub model: Option<String>,
}

#[derive(Serialize)]
struct Canonical<'a> {
    v: u32,
    id: i64,
    ts_ms: i64,
    actor: &'a str,
    action: &'a str,
    subject: &'a str,
    outcome: &'a str,
    reason: &'a str,
    source: &'a str,
    device: Option<&'a str>,
    model: Option<&'a str>,
}

impl AuditRecord {
    /// The leaf data.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let canonical = Canonical {
            v: RECORD_VERSION,
            id: self.id,
            ts_ms: self.ts_ms,
            actor: &self.actor,
            action: &self.action,
            subject: &self.subject,
            outcome: &self.outcome,
            reason: &self.reason,
            source: &self.source,
            device: self.device.as_deref(),
            model: self.model.as_deref(),
        };
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_vec(&canonical).unwrap_or_default()
    }

    pub fn leaf_hash(&self) -> Hash {
        leaf_hash(&self.canonical_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_form_is_fixed_and_covers_every_field() {
        let record = AuditRecord {
            id: 7,
            ts_ms: 1_700_000_000_000,
            actor: "alice".into(),
            action: "model.publish".into(),
            subject: "model m@1 \"quoted\"".into(),
            outcome: "ok".into(),
            reason: "line\nbreak é".into(),
            source: "api".into(),
            device: None,
            model: Some("m@1".into()),
        };
        assert_eq!(
            String::from_utf8(record.canonical_bytes()).expect("utf-8"),
            "{\"v\":1,\"id\":7,\"ts_ms\":1700000000000,\"actor\":\"alice\",\"action\":\
             \"model.publish\",\"subject\":\"model m@1 \\\"quoted\\\"\",\"outcome\":\"ok\",\
             \"reason\":\"line\\nbreak é\",\"source\":\"api\",\"device\":null,\"model\":\"m@1\"}"
        );
        let mut changed = record.clone();
        changed.device = Some(String::new());
        assert_ne!(changed.leaf_hash(), record.leaf_hash(), "null and empty differ");
        for mutate in [
            |r: &mut AuditRecord| r.id += 1,
            |r: &mut AuditRecord| r.ts_ms += 1,
            |r: &mut AuditRecord| r.actor.push('x'),
            |r: &mut AuditRecord| r.action.push('x'),
            |r: &mut AuditRecord| r.subject.push('x'),
            |r: &mut AuditRecord| r.outcome.push('x'),
            |r: &mut AuditRecord| r.reason.push('x'),
            |r: &mut AuditRecord| r.source.push('x'),
            |r: &mut AuditRecord| r.model = None,
        ] {
            let mut changed = record.clone();
            mutate(&mut changed);
            assert_ne!(changed.leaf_hash(), record.leaf_hash());
        }
    }
}
