//! Gate judgement of a wave, without IO: from the figures the driver gathered about the devices
//! the rollout has admitted so far ([`WaveFigures`]) and the wave's thresholds, each gate's value
//! against its threshold ([`GateResult`]) and the verdict ([`Judgement`]).
//!
//! Definitions (all over the devices admitted so far, holdout excluded):
//! - *devices reporting*: devices that committed the new model and whose windows of it were
//!   ingested; at least `min_devices_reporting`.
//! - *install failure rate*: devices whose install failed (refused, golden test failed, rolled
//!   back by their own health watch, an error) over the devices that answered (admitted minus
//!   timed out).
//! - *error rate*: failed inferences over all inferences of the new model.
//! - *p95 latency ratio*: the new model's p95 latency over the previous model's, both from the
//!   latency histograms of the same devices (bucket upper bounds).
//! - *output shift*: PSI of the predicted classes of the new model's devices against the holdout
//!   (the previous model on the same days).
//! - *drift* / *prediction drift*: the largest PSI of any input / any output (or the predicted
//!   classes) of the new model's merged windows against its bundle's baseline.
//! - *shadow agreement*: the smallest agreement any device reported from its shadow phase.
//!
//! A gate without enough data (fewer than `min_requests` requests, no holdout traffic, no
//! shadow phase) reports `no_data` and does not fail the wave. Devices still installing hold the
//! judgement (`Wait`) until the device timeout, after which they count as timed out.

use serde::{Deserialize, Serialize};

use super::spec::GateThresholds;

/// What the driver knows about the devices the rollout admitted so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WaveFigures {
    /// Devices admitted so far (holdout excluded).
    pub admitted: u64,
    /// Admitted devices that committed the new model.
    pub installed: u64,
    /// Admitted devices whose install failed.
    pub failed: u64,
    /// Admitted devices that are still installing (neither committed nor failed).
    pub installing: u64,
    /// Committed devices whose windows of the new model were ingested.
    pub reporting: u64,
    /// Inferences of the new model, and how many failed.
    pub requests: u64,
    pub errors: u64,
    /// p95 latency in microseconds of the new model, and of the previous model on the same
    /// devices.
    pub p95_new_us: Option<f64>,
    pub p95_previous_us: Option<f64>,
    /// PSI of the predicted classes against the holdout.
    pub output_psi: Option<f64>,
    /// Largest input PSI against the baseline and the feature.
    pub drift_psi: Option<f64>,
    pub drift_feature: Option<String>,
    /// Largest output PSI against the baseline and the output.
    pub prediction_drift_psi: Option<f64>,
    pub prediction_drift_output: Option<String>,
    /// Smallest shadow agreement reported.
    pub shadow_agreement: Option<f64>,
    /// The device timeout has passed: devices still installing or silent count as timed out.
    pub timeout_passed: bool,
}

/// How a gate compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateStatus {
    Pass,
    Fail,
    NoData,
    /// Not decided yet (devices still installing or not yet reporting).
    Waiting,
}

/// One gate's value against its threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    pub gate: String,
    pub value: Option<f64>,
    /// `<=` (value at most the threshold) or `>=`.
    pub comparison: String,
    pub threshold: f64,
    pub status: GateStatus,
    pub detail: String,
}

/// The verdict on a wave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict", content = "reasons")]
pub enum Judgement {
    Pass,
    /// Not yet: why.
    Wait(String),
    /// Failed gates, each with its value and threshold.
    Fail(Vec<String>),
}

/// A judged wave: every gate and the verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub gates: Vec<GateResult>,
    pub judgement: Judgement,
    pub figures: WaveFigures,
}

fn at_most(gate: &str, value: Option<f64>, threshold: f64, detail: String) -> GateResult {
    let status = match value {
        None => GateStatus::NoData,
        Some(v) if v <= threshold + 1e-12 => GateStatus::Pass,
        Some(_) => GateStatus::Fail,
    };
    GateResult { gate: gate.into(), value, comparison: "<=".into(), threshold, status, detail }
}

fn at_least(gate: &str, value: Option<f64>, threshold: f64, detail: String) -> GateResult {
    let status = match value {
        None => GateStatus::NoData,
        Some(v) if v + 1e-12 >= threshold => GateStatus::Pass,
        Some(_) => GateStatus::Fail,
    };
    GateResult { gate: gate.into(), value, comparison: ">=".into(), threshold, status, detail }
}

/// Judges the wave from `figures` against `thresholds`.
pub fn evaluate(figures: &WaveFigures, thresholds: &GateThresholds) -> Evaluation {
    let mut gates = Vec::new();
    let timed_out = if figures.timeout_passed { figures.installing } else { 0 };
    // Devices reporting.
    let required = thresholds.min_devices_reporting;
    let mut reporting = at_least(
        "min_devices_reporting",
        Some(figures.reporting as f64),
        required as f64,
        format!(
            "{} of {} admitted devices report the new model ({} installed, {} failed, {} \
             installing{})",
            figures.reporting,
            figures.admitted,
            figures.installed,
            figures.failed,
            figures.installing.saturating_sub(timed_out),
            if timed_out > 0 { format!(", {timed_out} timed out") } else { String::new() }
        ),
    );
    if reporting.status == GateStatus::Fail && !figures.timeout_passed {
        reporting.status = GateStatus::Waiting;
    }
    gates.push(reporting);
    // Install failures, over the devices that answered.
    if let Some(max) = thresholds.max_install_failure_rate {
        let answered = figures.admitted.saturating_sub(timed_out);
        let rate = (answered > 0).then(|| figures.failed as f64 / answered as f64);
        gates.push(at_most(
            "max_install_failure_rate",
            rate,
            max,
            format!("{} of {answered} devices failed to install", figures.failed),
        ));
    }
    let enough = figures.requests >= thresholds.min_requests.max(1);
    if let Some(max) = thresholds.max_error_rate {
        let rate = enough.then(|| figures.errors as f64 / figures.requests as f64);
        gates.push(at_most(
            "max_error_rate",
            rate,
            max,
            format!("{} of {} inferences failed", figures.errors, figures.requests),
        ));
    }
    if let Some(max) = thresholds.max_p95_latency_ratio {
        let ratio = match (enough, figures.p95_new_us, figures.p95_previous_us) {
            (true, Some(new), Some(previous)) if previous > 0.0 => Some(new / previous),
            _ => None,
        };
        gates.push(at_most(
            "max_p95_latency_ratio",
            ratio,
            max,
            format!(
                "p95 {} µs against the previous model's {} µs",
                show(figures.p95_new_us),
                show(figures.p95_previous_us)
            ),
        ));
    }
    if let Some(max) = thresholds.max_output_psi {
        gates.push(at_most(
            "max_output_psi",
            figures.output_psi.filter(|_| enough),
            max,
            "PSI of the predicted classes against the holdout".into(),
        ));
    }
    if let Some(max) = thresholds.max_drift_psi {
        gates.push(at_most(
            "max_drift_psi",
            figures.drift_psi.filter(|_| enough),
            max,
            format!(
                "largest input PSI against the baseline{}",
                figures.drift_feature.as_ref().map(|f| format!(" ({f})")).unwrap_or_default()
            ),
        ));
    }
    if let Some(max) = thresholds.max_prediction_drift_psi {
        gates.push(at_most(
            "max_prediction_drift_psi",
            figures.prediction_drift_psi.filter(|_| enough),
            max,
            format!(
                "largest output PSI against the baseline{}",
                figures
                    .prediction_drift_output
                    .as_ref()
                    .map(|f| format!(" ({f})"))
                    .unwrap_or_default()
            ),
        ));
    }
    if let Some(min) = thresholds.min_shadow_agreement {
        gates.push(at_least(
            "min_shadow_agreement",
            figures.shadow_agreement,
            min,
            "smallest shadow agreement any device reported".into(),
        ));
    }
    let failed: Vec<String> = gates
        .iter()
        .filter(|g| g.status == GateStatus::Fail)
        .map(|g| {
            format!(
                "{} {} not {} {} ({})",
                g.gate,
                show(g.value),
                g.comparison,
                g.threshold,
                g.detail
            )
        })
        .collect();
    // A failure already seen is final; otherwise devices still installing hold the verdict.
    let judgement = if !failed.is_empty() {
        Judgement::Fail(failed)
    } else if figures.installing > 0 && !figures.timeout_passed {
        Judgement::Wait(format!("{} admitted devices are still installing", figures.installing))
    } else if let Some(waiting) = gates.iter().find(|g| g.status == GateStatus::Waiting) {
        Judgement::Wait(waiting.detail.clone())
    } else {
        Judgement::Pass
    };
    Evaluation { gates, judgement, figures: figures.clone() }
}

fn show(value: Option<f64>) -> String {
    match value {
        Some(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{v:.0}"),
        Some(v) => format!("{v:.4}"),
        None => "n/a".into(),
    }
}

/// The p95 of a latency histogram over `bounds` (upper bound of the bucket holding it; an
/// overflow answer is twice the last bound). `None` without observations.
pub fn p95_from_buckets(counts: &[u64], overflow: u64, bounds: &[u64]) -> Option<f64> {
    let total: u64 = counts.iter().sum::<u64>().saturating_add(overflow);
    if total == 0 {
        return None;
    }
    let rank = (total as f64 * 0.95).ceil() as u64;
    let mut seen = 0u64;
    for (count, bound) in counts.iter().zip(bounds) {
        seen = seen.saturating_add(*count);
        if seen >= rank {
            return Some(*bound as f64);
        }
    }
    bounds.last().map(|last| *last as f64 * 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> WaveFigures {
        WaveFigures {
            admitted: 2,
            installed: 2,
            reporting: 2,
            requests: 400,
            errors: 1,
            p95_new_us: Some(500.0),
            p95_previous_us: Some(500.0),
            ..WaveFigures::default()
        }
    }

    #[test]
    fn a_healthy_wave_passes_with_every_gate_reported() {
        let evaluation = evaluate(&healthy(), &GateThresholds::default());
        assert_eq!(evaluation.judgement, Judgement::Pass);
        let names: Vec<&str> = evaluation.gates.iter().map(|g| g.gate.as_str()).collect();
        assert_eq!(
            names,
            [
                "min_devices_reporting",
                "max_install_failure_rate",
                "max_error_rate",
                "max_p95_latency_ratio"
            ]
        );
        let error = &evaluation.gates[2];
        assert_eq!((error.value, error.threshold), (Some(1.0 / 400.0), 0.05));
    }

    #[test]
    fn errors_latency_and_failures_fail_with_their_numbers() {
        let thresholds = GateThresholds::default();
        let errors = WaveFigures { errors: 200, ..healthy() };
        let Judgement::Fail(reasons) = evaluate(&errors, &thresholds).judgement else {
            panic!("errors must fail");
        };
        assert!(reasons[0].starts_with("max_error_rate 0.5000 not <= 0.05"), "{reasons:?}");
        let slow = WaveFigures { p95_new_us: Some(5000.0), ..healthy() };
        let Judgement::Fail(reasons) = evaluate(&slow, &thresholds).judgement else {
            panic!("latency must fail");
        };
        assert!(reasons[0].starts_with("max_p95_latency_ratio 10 not <= 2"), "{reasons:?}");
        // A device that rolled back on its own fails the wave even while another installs.
        let rolled =
            WaveFigures { installed: 0, failed: 1, installing: 1, reporting: 0, ..healthy() };
        let Judgement::Fail(reasons) = evaluate(&rolled, &thresholds).judgement else {
            panic!("install failure must fail");
        };
        assert!(reasons.iter().any(|r| r.starts_with("max_install_failure_rate 0.5")));
    }

    #[test]
    fn installing_devices_hold_the_wave_until_the_timeout() {
        let thresholds = GateThresholds { min_devices_reporting: 2, ..GateThresholds::default() };
        let installing = WaveFigures { installed: 1, installing: 1, reporting: 1, ..healthy() };
        assert!(matches!(evaluate(&installing, &thresholds).judgement, Judgement::Wait(_)));
        // After the timeout the silent device is counted as timed out: one reports, two needed.
        let timed_out = WaveFigures { timeout_passed: true, ..installing.clone() };
        let evaluation = evaluate(&timed_out, &thresholds);
        let Judgement::Fail(reasons) = &evaluation.judgement else {
            panic!("too few reporting: {:?}", evaluation.judgement);
        };
        assert!(reasons[0].contains("1 timed out"), "{reasons:?}");
        // With one required, the timed-out device does not block the wave.
        let lenient = GateThresholds::default();
        assert_eq!(evaluate(&timed_out, &lenient).judgement, Judgement::Pass);
    }

    #[test]
    fn too_little_traffic_is_no_data_not_a_failure() {
        let quiet = WaveFigures { requests: 3, errors: 3, ..healthy() };
        let evaluation = evaluate(&quiet, &GateThresholds::default());
        assert_eq!(evaluation.judgement, Judgement::Pass);
        assert_eq!(evaluation.gates[2].status, GateStatus::NoData);
    }

    #[test]
    fn drift_output_shift_and_shadow_gates() {
        let thresholds = GateThresholds {
            max_drift_psi: Some(0.25),
            max_output_psi: Some(0.2),
            min_shadow_agreement: Some(0.9),
            max_prediction_drift_psi: Some(0.25),
            ..GateThresholds::default()
        };
        let drifting = WaveFigures {
            drift_psi: Some(1.7),
            drift_feature: Some("f2".into()),
            output_psi: Some(0.01),
            prediction_drift_psi: Some(0.05),
            shadow_agreement: Some(0.95),
            ..healthy()
        };
        let Judgement::Fail(reasons) = evaluate(&drifting, &thresholds).judgement else {
            panic!("drift must fail");
        };
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].contains("max_drift_psi 1.7000") && reasons[0].contains("f2"));
        let disagreeing =
            WaveFigures { drift_psi: Some(0.01), shadow_agreement: Some(0.5), ..drifting };
        let Judgement::Fail(reasons) = evaluate(&disagreeing, &thresholds).judgement else {
            panic!("shadow must fail");
        };
        assert!(reasons[0].starts_with("min_shadow_agreement 0.5000 not >= 0.9"), "{reasons:?}");
    }

    #[test]
    fn p95_is_read_from_bucket_bounds() {
        let bounds = [100, 200, 400, 800];
        assert_eq!(p95_from_buckets(&[0, 0, 0, 0], 0, &bounds), None);
        assert_eq!(p95_from_buckets(&[90, 5, 5, 0], 0, &bounds), Some(200.0));
        assert_eq!(p95_from_buckets(&[90, 4, 0, 0], 6, &bounds), Some(1600.0));
    }
}
