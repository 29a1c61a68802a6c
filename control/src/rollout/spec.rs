//! A rollout's specification, as `POST /v1/rollouts` takes it and the database keeps it:
//! which bundle, on which cohort, in which waves with which gates, the holdout share, the
//! fallback, the devices' health policy, expiry and how waves advance.

use outpost_shared::plan::HealthPolicy;
use outpost_shared::selector::Selector;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How many devices a wave brings the rollout to, cumulatively: a count (`"2"`) or a share of
/// the cohort outside the holdout (`"50%"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WaveSize {
    Count(u64),
    Percent(f64),
}

impl WaveSize {
    /// Parses `N` or `P%`.
    pub fn parse(text: &str) -> Result<WaveSize, String> {
        let text = text.trim();
        if let Some(percent) = text.strip_suffix('%') {
            let value: f64 = percent
                .trim()
                .parse()
                .map_err(|_| format!("wave size {text:?} is not a percentage like `50%`"))?;
            if !(value > 0.0 && value <= 100.0) {
                return Err(format!("wave size {text:?} must be above 0% and at most 100%"));
            }
            return Ok(WaveSize::Percent(value));
        }
        let count: u64 = text
            .parse()
            .map_err(|_| format!("wave size {text:?} is neither a device count nor a `P%`"))?;
        if count == 0 {
            return Err("a wave of 0 devices admits nobody".into());
        }
        Ok(WaveSize::Count(count))
    }

    /// Devices admitted once this wave is in, out of `eligible` (the cohort outside the
    /// holdout): never more than `eligible`, at least one when any is eligible.
    pub fn target(self, eligible: u64) -> u64 {
        let wanted = match self {
            WaveSize::Count(count) => count,
            WaveSize::Percent(percent) => {
                let exact = eligible as f64 * percent / 100.0;
                // Rounded up; a hair over an integer from float error does not add a device.
                let rounded = (exact - 1e-9).ceil();
                if rounded <= 0.0 { 1 } else { rounded as u64 }
            }
        };
        wanted.min(eligible)
    }
}

impl std::fmt::Display for WaveSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaveSize::Count(count) => write!(f, "{count}"),
            WaveSize::Percent(percent) => write!(f, "{percent}%"),
        }
    }
}

impl Serialize for WaveSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for WaveSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(count) => WaveSize::parse(&count.to_string()),
            Raw::Text(text) => WaveSize::parse(&text),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// Thresholds a wave is judged by. `None`: that gate is not judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GateThresholds {
    /// Devices of the rollout so far that must run the new model and have sent statistics.
    pub min_devices_reporting: u64,
    /// Largest share of admitted devices whose install failed (refused, golden test failed,
    /// rolled back by the device's health watch, error).
    pub max_install_failure_rate: Option<f64>,
    /// Largest share of failed inferences on the new model.
    pub max_error_rate: Option<f64>,
    /// Largest p95 latency of the new model relative to the previous model's on the same
    /// devices.
    pub max_p95_latency_ratio: Option<f64>,
    /// Largest PSI of the predicted classes between the new model's devices and the holdout.
    pub max_output_psi: Option<f64>,
    /// Largest input drift (PSI of any input feature against the bundle's baseline).
    pub max_drift_psi: Option<f64>,
    /// Largest prediction drift (PSI of any output or the predicted classes against the
    /// bundle's baseline).
    pub max_prediction_drift_psi: Option<f64>,
    /// Smallest shadow agreement reported by any device.
    pub min_shadow_agreement: Option<f64>,
    /// Requests on the new model needed before the error rate, latency and distribution gates
    /// judge; fewer: those gates report "no data".
    pub min_requests: u64,
}

impl Default for GateThresholds {
    fn default() -> Self {
        GateThresholds {
            min_devices_reporting: 1,
            max_install_failure_rate: Some(0.0),
            max_error_rate: Some(0.05),
            max_p95_latency_ratio: Some(2.0),
            max_output_psi: None,
            max_drift_psi: None,
            max_prediction_drift_psi: None,
            min_shadow_agreement: None,
            min_requests: 20,
        }
    }
}

/// The bounds of every number a rollout specification holds. Generous for any real rollout,
/// and far from where date or counter arithmetic could overflow.
pub mod bounds {
    /// Longest a plan stays valid: ten years.
    pub const MAX_EXPIRES_IN_HOURS: u32 = 87_600;
    /// Longest soak of a wave, device timeout and health watch: a year, in seconds.
    pub const MAX_SECONDS: u64 = 366 * 86_400;
    /// Largest device count or request count a rollout names.
    pub const MAX_COUNT: u64 = 1_000_000_000;
    /// Largest latency ratio or PSI threshold.
    pub const MAX_RATIO: f64 = 1_000_000.0;
}

/// Checks `value` is at most `max`.
fn at_most(name: &str, value: u64, max: u64) -> Result<(), String> {
    if value > max { Err(format!("{name} {value} must be at most {max}")) } else { Ok(()) }
}

impl GateThresholds {
    fn validate(&self, wave: usize) -> Result<(), String> {
        let share = |name: &str, value: Option<f64>| match value {
            Some(v) if !(0.0..=1.0).contains(&v) => {
                Err(format!("wave {wave}: {name} {v} must be between 0 and 1"))
            }
            _ => Ok(()),
        };
        let positive = |name: &str, value: Option<f64>| match value {
            Some(v) if !(v.is_finite() && v > 0.0 && v <= bounds::MAX_RATIO) => Err(format!(
                "wave {wave}: {name} {v} must be a positive number up to {}",
                bounds::MAX_RATIO
            )),
            _ => Ok(()),
        };
        at_most(
            &format!("wave {wave}: min_devices_reporting"),
            self.min_devices_reporting,
            bounds::MAX_COUNT,
        )?;
        at_most(&format!("wave {wave}: min_requests"), self.min_requests, bounds::MAX_COUNT)?;
        share("max_install_failure_rate", self.max_install_failure_rate)?;
        share("max_error_rate", self.max_error_rate)?;
        share("min_shadow_agreement", self.min_shadow_agreement)?;
        positive("max_p95_latency_ratio", self.max_p95_latency_ratio)?;
        positive("max_output_psi", self.max_output_psi)?;
        positive("max_drift_psi", self.max_drift_psi)?;
        positive("max_prediction_drift_psi", self.max_prediction_drift_psi)?;
        Ok(())
    }
}

/// One wave: how far it takes the rollout, how long it soaks before it is judged, and by what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaveSpec {
    pub size: WaveSize,
    /// Seconds between the wave's admission and its judgement.
    #[serde(default = "default_soak")]
    pub soak_seconds: u64,
    #[serde(default)]
    pub gates: GateThresholds,
}

fn default_soak() -> u64 {
    600
}

/// Whether a wave that passed its gates starts the next by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Advance {
    Auto,
    Manual,
}

/// What a failed gate does besides pausing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnGateFail {
    /// Pause; admitted devices keep the new model until an operator decides.
    Pause,
    /// Pause and send every admitted device back to the fallback bundle.
    Rollback,
}

/// A rollout as created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// Rollout id (letters, digits, `.`, `_`, `-`); made from the bundle when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The bundle to roll out: `name@version` or its `sha256:` digest (in the registry).
    pub bundle: String,
    /// The bundle a revert goes back to; required when `on_gate_fail` is `rollback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Device tag selector of the cohort.
    #[serde(default = "every_device")]
    pub cohort: String,
    pub waves: Vec<WaveSpec>,
    /// Share of the cohort (percent) kept on the previous model until completion.
    #[serde(default)]
    pub holdout_percent: f64,
    /// The devices' own health watch, written into the signed plan.
    #[serde(default)]
    pub health: HealthPolicy,
    /// Hours the plan stays valid.
    #[serde(default = "default_expiry")]
    pub expires_in_hours: u32,
    #[serde(default = "default_advance")]
    pub advance: Advance,
    #[serde(default = "default_on_fail")]
    pub on_gate_fail: OnGateFail,
    /// Seconds after a wave's soak an admitted device that has not reported is counted as
    /// timed out instead of holding the wave.
    #[serde(default = "default_device_timeout")]
    pub device_timeout_seconds: u64,
}

fn every_device() -> String {
    "*".into()
}
fn default_expiry() -> u32 {
    72
}
fn default_advance() -> Advance {
    Advance::Auto
}
fn default_on_fail() -> OnGateFail {
    OnGateFail::Pause
}
fn default_device_timeout() -> u64 {
    900
}

/// Checks a rollout id: 1 to 64 letters, digits, `.`, `_`, `-`.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > 64
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(format!("rollout id {id:?} must be 1 to 64 letters, digits, `.`, `_` or `-`"));
    }
    Ok(())
}

impl RolloutSpec {
    /// Everything that can be checked without the database.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(id) = &self.id {
            check_id(id)?;
        }
        Selector::parse(&self.cohort).map_err(|error| format!("cohort: {error}"))?;
        if self.waves.is_empty() {
            return Err("a rollout needs at least one wave".into());
        }
        if self.waves.len() > 32 {
            return Err(format!("{} waves is more than the 32 allowed", self.waves.len()));
        }
        for (index, wave) in self.waves.iter().enumerate() {
            if let WaveSize::Count(count) = wave.size {
                at_most(&format!("wave {index}: size"), count, bounds::MAX_COUNT)?;
            }
            at_most(
                &format!("wave {index}: soak_seconds"),
                wave.soak_seconds,
                bounds::MAX_SECONDS,
            )?;
            wave.gates.validate(index)?;
        }
        if !matches!(self.waves.last().map(|w| w.size), Some(WaveSize::Percent(p)) if p >= 100.0) {
            return Err("the last wave must be `100%` so the whole cohort is reached".into());
        }
        if !(0.0..=50.0).contains(&self.holdout_percent) {
            return Err(format!(
                "holdout_percent {} must be between 0 and 50",
                self.holdout_percent
            ));
        }
        if self.expires_in_hours == 0 || self.expires_in_hours > bounds::MAX_EXPIRES_IN_HOURS {
            return Err(format!(
                "expires_in_hours {} must be between 1 and {} (ten years)",
                self.expires_in_hours,
                bounds::MAX_EXPIRES_IN_HOURS
            ));
        }
        at_most("device_timeout_seconds", self.device_timeout_seconds, bounds::MAX_SECONDS)?;
        let health = &self.health;
        at_most("health.watch_seconds", health.watch_seconds, bounds::MAX_SECONDS)?;
        at_most("health.min_requests", health.min_requests, bounds::MAX_COUNT)?;
        if !(0.0..=1.0).contains(&health.max_error_rate) {
            return Err(format!(
                "health.max_error_rate {} must be between 0 and 1",
                health.max_error_rate
            ));
        }
        for (name, value) in [
            ("health.max_p95_latency_ratio", Some(health.max_p95_latency_ratio)),
            ("health.max_output_psi", health.max_output_psi),
        ] {
            if let Some(value) = value
                && !(value.is_finite() && value > 0.0 && value <= bounds::MAX_RATIO)
            {
                return Err(format!(
                    "{name} {value} must be a positive number up to {}",
                    bounds::MAX_RATIO
                ));
            }
        }
        if let Some(shadow) = &health.shadow {
            at_most("health.shadow.requests", shadow.requests, bounds::MAX_COUNT)?;
            at_most("health.shadow.seconds", shadow.seconds, bounds::MAX_SECONDS)?;
            if !(shadow.tolerance.is_finite()
                && (0.0..=bounds::MAX_RATIO).contains(&shadow.tolerance))
            {
                return Err(format!(
                    "health.shadow.tolerance {} must be between 0 and {}",
                    shadow.tolerance,
                    bounds::MAX_RATIO
                ));
            }
        }
        if self.on_gate_fail == OnGateFail::Rollback && self.fallback.is_none() {
            return Err("on_gate_fail `rollback` needs a fallback bundle to go back to".into());
        }
        Ok(())
    }

    /// The holdout share as a fraction.
    pub fn holdout_share(&self) -> f64 {
        self.holdout_percent / 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wave_sizes_parse_and_round_up() {
        assert_eq!(WaveSize::parse("2"), Ok(WaveSize::Count(2)));
        assert_eq!(WaveSize::parse("50%"), Ok(WaveSize::Percent(50.0)));
        assert!(WaveSize::parse("0").is_err());
        assert!(WaveSize::parse("150%").is_err());
        assert!(WaveSize::parse("half").is_err());
        assert_eq!(WaveSize::Percent(50.0).target(11), 6);
        assert_eq!(WaveSize::Percent(1.0).target(11), 1);
        assert_eq!(WaveSize::Percent(100.0).target(11), 11);
        assert_eq!(WaveSize::Count(2).target(11), 2);
        assert_eq!(WaveSize::Count(20).target(11), 11);
        assert_eq!(WaveSize::Count(2).target(0), 0);
    }

    #[test]
    fn specs_are_checked() {
        let json = serde_json::json!({
            "bundle": "fraud@2.0.0",
            "waves": [{"size": 2}, {"size": "50%"}, {"size": "100%"}],
            "holdout_percent": 10,
        });
        let spec: RolloutSpec = serde_json::from_value(json).expect("spec");
        spec.validate().expect("valid");
        assert_eq!(spec.waves[0].gates, GateThresholds::default());
        let mut bad = spec.clone();
        bad.waves.pop();
        assert!(bad.validate().expect_err("last wave").contains("100%"));
        let mut bad = spec.clone();
        bad.on_gate_fail = OnGateFail::Rollback;
        assert!(bad.validate().expect_err("fallback").contains("fallback"));
        let mut bad = spec.clone();
        bad.waves[0].gates.max_error_rate = Some(2.0);
        assert!(bad.validate().expect_err("rate").contains("max_error_rate"));
        // Every number at its type's extreme is refused by name, never used in arithmetic.
        type Change = fn(&mut RolloutSpec);
        let extremes: [(&str, Change); 9] = [
            ("expires_in_hours", |s| s.expires_in_hours = u32::MAX),
            ("device_timeout_seconds", |s| s.device_timeout_seconds = u64::MAX),
            ("soak_seconds", |s| s.waves[0].soak_seconds = u64::MAX),
            ("size", |s| s.waves[0].size = WaveSize::Count(u64::MAX)),
            ("min_requests", |s| s.waves[0].gates.min_requests = u64::MAX),
            ("min_devices_reporting", |s| s.waves[0].gates.min_devices_reporting = u64::MAX),
            ("max_drift_psi", |s| s.waves[0].gates.max_drift_psi = Some(f64::MAX)),
            ("watch_seconds", |s| s.health.watch_seconds = u64::MAX),
            ("max_p95_latency_ratio", |s| s.health.max_p95_latency_ratio = f64::INFINITY),
        ];
        for (name, change) in extremes {
            let mut bad = spec.clone();
            change(&mut bad);
            assert!(bad.validate().expect_err(name).contains(name), "{name}");
        }
    }
}
