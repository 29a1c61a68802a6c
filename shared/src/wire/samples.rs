//! On-device sampling of raw inputs: the control's [`SamplingControl`] (retained on
//! `sampling`: is the device in drift alert, which upload is requested) and the device's
//! [`SampleChunk`]s on `samples`, one bounded part of an upload each.
//!
//! Raw inputs are personal-data-bearing: a device collects them only when its own config
//! enables sampling *and* the control says it is in drift alert, and sends them only when an
//! operator asked for an upload (`docs/drift.md`).

use serde::{Deserialize, Serialize};

use super::fields::{MAX_NAME_BYTES, check_id, check_text, invalid};
use super::{Channel, DeviceId, ModelRef, ProtocolVersion, TopicMessage, WireError, WireMessage};

/// Most rows one [`SampleChunk`] carries.
pub const MAX_SAMPLE_ROWS_PER_CHUNK: usize = 1024;
/// Most values one sample row holds.
pub const MAX_SAMPLE_ROW_VALUES: usize = 4096;
/// Most values one [`SampleChunk`] carries in all (so a chunk stays far below the JSON payload
/// limit: a value is at most ~25 bytes of JSON).
pub const MAX_SAMPLE_CHUNK_VALUES: usize = 32 * 1024;
/// Most parts one upload has.
pub const MAX_SAMPLE_PARTS: u32 = 100_000;

/// What the control tells a device about sampling; retained, so a device that connects later
/// learns its state at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingControl {
    pub v: ProtocolVersion,
    /// The device has an open drift alert: an agent with sampling enabled keeps a reservoir
    /// sample of its raw inputs while this is true.
    pub alert: bool,
    /// An upload an operator requested: the device sends what it holds once per request id,
    /// then deletes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_request: Option<String>,
}

impl WireMessage for SamplingControl {
    const NAME: &'static str = "SamplingControl";

    fn validate(&self) -> Result<(), WireError> {
        if let Some(request) = &self.upload_request {
            check_id(Self::NAME, "upload_request", request)?;
        }
        Ok(())
    }
}

impl TopicMessage for SamplingControl {
    const CHANNEL: Channel = Channel::Sampling;
}

/// One part of an upload of sampled input rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleChunk {
    pub v: ProtocolVersion,
    pub device: DeviceId,
    /// The [`SamplingControl::upload_request`] this answers.
    pub request_id: String,
    /// 0-based part number and the number of parts; an empty upload is one part without rows.
    pub part: u32,
    pub parts: u32,
    /// Whether sampling is enabled in the agent's config (when not, the upload is empty).
    pub enabled: bool,
    /// Rows the reservoir saw (its sample is a uniform choice among them).
    pub seen: u64,
    /// The model whose inputs were sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRef>,
    /// Column names, one per value of a row (`<tensor>[<index>]` or the profile's name).
    pub columns: Vec<String>,
    pub rows: Vec<Vec<f64>>,
}

impl WireMessage for SampleChunk {
    const NAME: &'static str = "SampleChunk";

    fn validate(&self) -> Result<(), WireError> {
        let name = Self::NAME;
        check_id(name, "request_id", &self.request_id)?;
        if self.parts == 0 || self.parts > MAX_SAMPLE_PARTS || self.part >= self.parts {
            return Err(invalid(
                name,
                "part",
                format!("part {} of {} (1 to {MAX_SAMPLE_PARTS} parts)", self.part, self.parts),
            ));
        }
        if let Some(model) = &self.model {
            check_text(name, "model", &model.name, MAX_NAME_BYTES, false)?;
            check_text(name, "model", &model.version, MAX_NAME_BYTES, false)?;
        }
        if self.columns.len() > MAX_SAMPLE_ROW_VALUES {
            return Err(invalid(
                name,
                "columns",
                format!("{} columns, the limit is {MAX_SAMPLE_ROW_VALUES}", self.columns.len()),
            ));
        }
        for column in &self.columns {
            check_text(name, "columns", column, MAX_NAME_BYTES, false)?;
        }
        if self.rows.len() > MAX_SAMPLE_ROWS_PER_CHUNK {
            return Err(invalid(
                name,
                "rows",
                format!("{} rows, the limit is {MAX_SAMPLE_ROWS_PER_CHUNK}", self.rows.len()),
            ));
        }
        if self.rows.len() * self.columns.len() > MAX_SAMPLE_CHUNK_VALUES {
            return Err(invalid(
                name,
                "rows",
                format!("more than {MAX_SAMPLE_CHUNK_VALUES} values in one chunk"),
            ));
        }
        if let Some((index, row)) =
            self.rows.iter().enumerate().find(|(_, row)| row.len() != self.columns.len())
        {
            return Err(invalid(
                name,
                "rows",
                format!("row {index} has {} values for {} columns", row.len(), self.columns.len()),
            ));
        }
        if !self.enabled && !self.rows.is_empty() {
            return Err(invalid(name, "rows", "a device with sampling disabled sends no rows"));
        }
        Ok(())
    }
}

impl TopicMessage for SampleChunk {
    const CHANNEL: Channel = Channel::Samples;

    fn device(&self) -> Option<&DeviceId> {
        Some(&self.device)
    }
}

/// How many rows of `columns` values fit in one chunk.
pub fn rows_per_chunk(columns: usize) -> usize {
    (MAX_SAMPLE_CHUNK_VALUES / columns.max(1)).clamp(1, MAX_SAMPLE_ROWS_PER_CHUNK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, encode};

    fn chunk() -> SampleChunk {
        SampleChunk {
            v: ProtocolVersion,
            device: DeviceId::new("dev-1").expect("id"),
            request_id: "req-1".into(),
            part: 0,
            parts: 1,
            enabled: true,
            seen: 10,
            model: None,
            columns: vec!["x[0]".into(), "x[1]".into()],
            rows: vec![vec![1.0, 2.5], vec![-3.0, 0.125]],
        }
    }

    #[test]
    fn chunks_round_trip_and_bad_ones_are_refused() {
        let good = chunk();
        let bytes = encode(&good).expect("encode");
        assert_eq!(decode::<SampleChunk>(&bytes).expect("decode"), good);
        let mut ragged = chunk();
        ragged.rows[1].pop();
        let refused = encode(&ragged).expect_err("ragged row");
        assert!(refused.to_string().contains("row 1 has 1 values"), "{refused}");
        let mut part = chunk();
        part.part = 1;
        assert!(encode(&part).is_err(), "part beyond parts");
        let mut disabled = chunk();
        disabled.enabled = false;
        assert!(encode(&disabled).is_err(), "rows from a disabled sampler");
        let mut many = chunk();
        many.rows = vec![vec![0.0, 0.0]; MAX_SAMPLE_ROWS_PER_CHUNK + 1];
        assert!(encode(&many).is_err());
        assert_eq!(rows_per_chunk(8), MAX_SAMPLE_ROWS_PER_CHUNK);
        assert_eq!(rows_per_chunk(1000), 32);
        assert_eq!(rows_per_chunk(MAX_SAMPLE_CHUNK_VALUES * 2), 1);
    }

    #[test]
    fn sampling_controls_name_a_valid_request() {
        let control = SamplingControl { v: ProtocolVersion, alert: true, upload_request: None };
        let bytes = encode(&control).expect("encode");
        assert_eq!(String::from_utf8_lossy(&bytes), r#"{"v":1,"alert":true}"#);
        let bad = SamplingControl { upload_request: Some("a b".into()), ..control };
        assert!(encode(&bad).is_err());
    }
}
