//! `outpost plan`: create rollout plans, approve them with approver keys, verify them.

use anyhow::{Context as _, Result, bail};
use outpost_shared::dsse::{Envelope, MAX_ENVELOPE_BYTES};
use outpost_shared::plan::{self, BundleRef, HealthPolicy, Plan, ShadowPolicy};
use outpost_shared::selector::{Selector, parse_tags};
use outpost_shared::verify::Role;
use time::Duration;

use super::bundle::read_bundle;
use super::trust::load_trust;
use super::{PlanCommand, now, rfc3339};
use crate::files::{load_secret_key, read_limited, write_atomic};

fn bundle_ref(path: &std::path::Path) -> Result<BundleRef> {
    let (bytes, raw) = read_bundle(path)?;
    let manifest = raw.manifest_unverified()?;
    if raw.manifest.signatures.is_empty() {
        bail!("bundle {} is not signed by a publisher yet", path.display());
    }
    Ok(BundleRef {
        name: manifest.name,
        version: manifest.version,
        digest: outpost_shared::sha256_digest(&bytes),
        size: bytes.len() as u64,
    })
}

fn read_plan(path: &std::path::Path) -> Result<(Vec<u8>, Envelope)> {
    let bytes = read_limited(path, MAX_ENVELOPE_BYTES as u64, "plan")?;
    let envelope =
        Envelope::from_slice(&bytes).with_context(|| format!("plan {}", path.display()))?;
    Ok((bytes, envelope))
}

pub fn run(command: PlanCommand) -> Result<()> {
    match command {
        PlanCommand::Create {
            bundle,
            cohort,
            seq,
            expires_in,
            fallback,
            rollout,
            watch_seconds,
            min_requests,
            max_error_rate,
            max_p95_latency_ratio,
            max_output_psi,
            shadow_requests,
            shadow_seconds,
            shadow_tolerance,
            out,
        } => {
            Selector::parse(&cohort)?;
            let target = bundle_ref(&bundle)?;
            let fallback = fallback.as_deref().map(bundle_ref).transpose()?;
            let created = now();
            let plan = Plan {
                v: 1,
                rollout: rollout
                    .unwrap_or_else(|| format!("{}@{}-{seq}", target.name, target.version)),
                seq,
                bundle: target,
                fallback,
                cohort,
                health: HealthPolicy {
                    watch_seconds,
                    min_requests,
                    max_error_rate,
                    max_p95_latency_ratio,
                    max_output_psi,
                    shadow: shadow_requests.map(|requests| ShadowPolicy {
                        requests,
                        seconds: shadow_seconds,
                        tolerance: shadow_tolerance,
                    }),
                },
                created,
                expires: created + Duration::hours(i64::from(expires_in)),
            };
            plan.validate()?;
            write_atomic(&out, &plan.to_envelope().to_vec(), false)?;
            println!(
                "created plan {} seq {} for {}@{} on cohort `{}`, expires {}",
                plan.rollout,
                plan.seq,
                plan.bundle.name,
                plan.bundle.version,
                plan.cohort,
                rfc3339(plan.expires)
            );
            println!(
                "  unsigned: approvers run `outpost plan sign --key APPROVER.key.json {}`",
                out.display()
            );
            Ok(())
        }
        PlanCommand::Sign { key, plan: path } => {
            let (_, mut envelope) = read_plan(&path)?;
            plan::parse_unverified(&envelope)?;
            let key = load_secret_key(&key)?;
            if key.role() != Role::Approver {
                eprintln!(
                    "warning: {} is {} key; only approver keys count towards a plan's approvals",
                    key.public.name,
                    key.role().with_article()
                );
            }
            envelope.sign(&key)?;
            write_atomic(&path, &envelope.to_vec(), false)?;
            println!(
                "signed {} as {} ({}); {} signature(s) now",
                path.display(),
                key.public.name,
                key.keyid(),
                envelope.signatures.len()
            );
            Ok(())
        }
        PlanCommand::Verify { trust, plan: path, device_tags, device_id, last_seq } => {
            let trust = load_trust(&trust)?;
            let (bytes, _) = read_plan(&path)?;
            let verified = plan::verify(&bytes, &trust, now())
                .map_err(|e| anyhow::anyhow!("rejected: {e} [{}]", e.code()))?;
            if device_tags.is_some() || last_seq.is_some() {
                let tags = parse_tags(device_tags.as_deref().unwrap_or(""))?;
                verified
                    .admit(&device_id, &tags, last_seq)
                    .map_err(|e| anyhow::anyhow!("rejected: {e} [{}]", e.code()))?;
            }
            println!(
                "accepted: plan {} seq {} for {}@{} ({}), approved by {} ({} required)",
                verified.rollout,
                verified.seq,
                verified.bundle.name,
                verified.bundle.version,
                verified.bundle.digest,
                verified.signers().join(", "),
                trust.approvers.threshold
            );
            Ok(())
        }
        PlanCommand::Show { plan: path, json } => {
            let (_, envelope) = read_plan(&path)?;
            let plan = plan::parse_unverified(&envelope)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                println!(
                    "plan {} seq {}  [signatures not checked: use `outpost plan verify`]",
                    plan.rollout, plan.seq
                );
                println!(
                    "  bundle   {}@{} {} ({} bytes)",
                    plan.bundle.name, plan.bundle.version, plan.bundle.digest, plan.bundle.size
                );
                if let Some(f) = &plan.fallback {
                    println!("  fallback {}@{} {}", f.name, f.version, f.digest);
                }
                println!("  cohort   {}", plan.cohort);
                println!("  health   {}", serde_json::to_string(&plan.health)?);
                println!("  expires  {}", rfc3339(plan.expires));
            }
            for s in &envelope.signatures {
                println!("  signature {}", s.keyid);
            }
            Ok(())
        }
    }
}
