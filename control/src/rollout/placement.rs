//! Which devices of a rollout's cohort are held out and in which order the rest are admitted:
//! deterministic and random-looking, from SHA-256 of the rollout id and the device id, so every
//! control instance and every restart places each device the same way.

use sha2::{Digest as _, Sha256};

/// A number in `[0, 1)` for `device` in `rollout`, with a `purpose` salt so holdout and wave
/// order are independent.
pub fn fraction(rollout: &str, device: &str, purpose: &str) -> f64 {
    let mut hasher = Sha256::new();
    hasher.update(purpose.as_bytes());
    hasher.update([0]);
    hasher.update(rollout.as_bytes());
    hasher.update([0]);
    hasher.update(device.as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// The holdout of a cohort seen at the rollout's start: the `round(share × n)` devices with
/// the lowest holdout fraction (at least one when the share is above 0 and the cohort has two
/// devices or more). Returns the held-out device ids.
pub fn initial_holdout(rollout: &str, cohort: &[String], share: f64) -> Vec<String> {
    if share <= 0.0 || cohort.len() < 2 {
        return Vec::new();
    }
    let wanted = ((cohort.len() as f64 * share).round() as usize).clamp(1, cohort.len() - 1);
    let mut ranked: Vec<(f64, &String)> =
        cohort.iter().map(|device| (fraction(rollout, device, "holdout"), device)).collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    ranked.into_iter().take(wanted).map(|(_, device)| device.clone()).collect()
}

/// Whether a device that joined the cohort after the start is held out.
pub fn joiner_held_out(rollout: &str, device: &str, share: f64) -> bool {
    fraction(rollout, device, "holdout") < share
}

/// `devices` in admission order.
pub fn admission_order(rollout: &str, devices: &mut [String]) {
    devices.sort_by(|a, b| {
        fraction(rollout, a, "wave").total_cmp(&fraction(rollout, b, "wave")).then_with(|| a.cmp(b))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_deterministic_and_sized() {
        let cohort: Vec<String> = (0..12).map(|i| format!("dev-{i:02}")).collect();
        let first = initial_holdout("r1", &cohort, 0.1);
        assert_eq!(first.len(), 1);
        assert_eq!(first, initial_holdout("r1", &cohort, 0.1));
        assert_eq!(initial_holdout("r1", &cohort, 0.25).len(), 3);
        assert!(initial_holdout("r1", &cohort, 0.0).is_empty());
        let mut order = cohort.clone();
        admission_order("r1", &mut order);
        let mut again = cohort.clone();
        again.reverse();
        admission_order("r1", &mut again);
        assert_eq!(order, again);
        let spread: Vec<f64> = cohort.iter().map(|d| fraction("r1", d, "wave")).collect();
        assert!(spread.iter().all(|f| (0.0..1.0).contains(f)));
        assert!(spread.iter().any(|f| *f < 0.5) && spread.iter().any(|f| *f >= 0.5));
    }
}
