//! `outpost bundle`: package a model into a signed bundle, sign, verify and inspect bundles.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use outpost_shared::bundle::{self, RawBundle};
use outpost_shared::golden::Golden;
use outpost_shared::manifest::{Lineage, Manifest, Task, validate_name, validate_version};
use outpost_shared::model::{Model, build_profile_with_sketches};
use outpost_shared::oip::{Datatype, InferenceRequest, Tensor, TensorData};
use outpost_shared::profile::SketchSelection;
use outpost_shared::verify::Role;
use time::Duration;

use super::trust::load_trust;
use super::{BundleCommand, TaskArg, now, rfc3339};
use crate::files::{load_secret_key, read_limited, write_atomic};

const MAX_MODEL_BYTES: u64 = 256 * 1024 * 1024;
const MAX_INPUT_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// Reads a bundle file into its parts (signatures not checked).
pub fn read_bundle(path: &Path) -> Result<(Vec<u8>, RawBundle)> {
    let bytes = read_limited(path, bundle::MAX_BUNDLE_BYTES, "bundle")?;
    let raw = bundle::read(&bytes).with_context(|| format!("bundle {}", path.display()))?;
    Ok((bytes, raw))
}

/// Baseline samples as inference requests: CSV rows for a tabular first input, or JSONL lines of
/// OIP v2 request bodies. Also returns the CSV header as feature names.
fn read_baseline(
    path: &Path,
    model: &Model,
) -> Result<(Vec<InferenceRequest>, Option<Vec<String>>)> {
    let bytes = read_limited(path, MAX_INPUT_FILE_BYTES, "baseline")?;
    let is_jsonl = path.extension().is_some_and(|e| e == "jsonl" || e == "json");
    if is_jsonl {
        let text = std::str::from_utf8(&bytes).context("baseline JSONL is not UTF-8")?;
        let requests = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str::<InferenceRequest>(line).with_context(|| {
                    format!("baseline {} line {}: not an OIP v2 request", path.display(), i + 1)
                })
            })
            .collect::<Result<Vec<_>>>()?;
        return Ok((requests, None));
    }
    let [spec] = model.inputs() else {
        bail!(
            "a CSV baseline needs a model with one input; this one has {} (use JSONL)",
            model.inputs().len()
        );
    };
    if spec.shape.len() != 2 || spec.shape[1] <= 0 {
        bail!(
            "a CSV baseline needs a tabular input [batch, features]; input `{}` has shape {:?} (use JSONL)",
            spec.name,
            spec.shape
        );
    }
    let features = spec.shape[1] as usize;
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(bytes.as_slice());
    let header: Vec<String> = reader
        .headers()
        .with_context(|| format!("baseline {}: reading the header", path.display()))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    if header.len() != features {
        bail!(
            "baseline {} has {} columns but input `{}` takes {features} features",
            path.display(),
            header.len(),
            spec.name
        );
    }
    let mut requests = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let line = row + 2;
        let record = record.with_context(|| format!("baseline {} line {line}", path.display()))?;
        let values = record
            .iter()
            .zip(&header)
            .map(|(cell, column)| {
                cell.trim().parse::<f64>().with_context(|| {
                    format!(
                        "baseline {} line {line}, column `{column}`: {cell:?} is not a number",
                        path.display()
                    )
                })
            })
            .collect::<Result<Vec<f64>>>()?;
        let datatype = Datatype::parse(&spec.datatype).unwrap_or(Datatype::Fp32);
        let data = TensorData::from_f64(datatype, &values).map_err(|(index, value)| {
            anyhow!(
                "baseline {} line {line}, column `{}`: {value} is not a valid {datatype}",
                path.display(),
                header.get(index).map_or("?", String::as_str)
            )
        })?;
        requests.push(InferenceRequest::new(vec![Tensor {
            name: spec.name.clone(),
            shape: vec![1, features as u64],
            data,
            parameters: None,
        }]));
    }
    if requests.is_empty() {
        bail!("baseline {} has no rows", path.display());
    }
    Ok((requests, Some(header)))
}

/// Decides the task: classification when the first output is `[batch, k > 1]` of probabilities
/// summing to one on every baseline sample, regression when it is a single value.
fn detect_task(model: &Model, requests: &[InferenceRequest]) -> Result<Task> {
    let Some(first) = model.outputs().first() else { return Ok(Task::Other) };
    let classes = first.shape.last().copied().unwrap_or(0);
    if first.shape.len() != 2 {
        return Ok(Task::Other);
    }
    if classes == 1 {
        return Ok(Task::Regression);
    }
    for request in requests.iter().take(200) {
        let outputs = model.infer(request)?;
        let Some(output) = outputs.first() else { return Ok(Task::Other) };
        let view = output.view();
        for i in 0..view.samples() {
            let sample = view.sample(i);
            let sum: f32 = sample.iter().sum();
            if (sum - 1.0).abs() > 1e-3 || sample.iter().any(|p| !(0.0..=1.0).contains(p)) {
                return Ok(Task::Other);
            }
        }
    }
    Ok(Task::Classification)
}

fn sign_bundle(raw: &mut RawBundle, key_path: &Path) -> Result<String> {
    let key = load_secret_key(key_path)?;
    if key.role() != Role::Publisher {
        bail!(
            "{} is {} key; bundles are signed by publisher keys",
            key_path.display(),
            key.role().with_article()
        );
    }
    raw.manifest_unverified()?;
    raw.manifest.sign(&key)?;
    Ok(key.keyid().to_string())
}

pub fn run(command: BundleCommand) -> Result<()> {
    match command {
        BundleCommand::Create {
            model: model_path,
            name,
            version,
            baseline,
            golden: golden_path,
            lineage,
            task,
            bins,
            kll,
            expires_in,
            key,
            out,
        } => {
            validate_name(&name).map_err(anyhow::Error::msg)?;
            validate_version(&version).map_err(anyhow::Error::msg)?;
            if !(2..=1000).contains(&bins) {
                bail!("--bins must be between 2 and 1000");
            }
            let model_bytes = read_limited(&model_path, MAX_MODEL_BYTES, "model")?;
            let model = Model::load(&model_bytes).with_context(|| {
                format!("refusing {}: the runtime cannot load it", model_path.display())
            })?;
            let golden_bytes = read_limited(&golden_path, MAX_INPUT_FILE_BYTES, "golden set")?;
            let golden: Golden = serde_json::from_slice(&golden_bytes)
                .with_context(|| format!("golden set {}", golden_path.display()))?;
            golden
                .validate()
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("golden set {}", golden_path.display()))?;
            model.check_golden(&golden).with_context(|| {
                format!(
                    "refusing {}: its outputs do not match the golden set",
                    model_path.display()
                )
            })?;
            let (requests, columns) = read_baseline(&baseline, &model)?;
            let task = match task {
                TaskArg::Auto => detect_task(&model, &requests)?,
                TaskArg::Classification => Task::Classification,
                TaskArg::Regression => Task::Regression,
                TaskArg::Other => Task::Other,
            };
            let profile = build_profile_with_sketches(
                &model,
                &requests,
                columns.as_deref(),
                task == Task::Classification,
                bins,
                kll.as_deref().map(SketchSelection::parse).unwrap_or_default(),
            )
            .with_context(|| format!("profiling baseline {}", baseline.display()))?;
            let lineage: Lineage = match &lineage {
                Some(path) => serde_json::from_slice(&read_limited(path, 1024 * 1024, "lineage")?)
                    .with_context(|| format!("lineage {}", path.display()))?,
                None => Lineage::default(),
            };
            let created = now();
            let mut raw = RawBundle {
                manifest: outpost_shared::dsse::Envelope::new(
                    outpost_shared::dsse::MANIFEST_TYPE,
                    b"",
                ),
                model: model_bytes,
                profile: serde_json::to_vec(&profile)?,
                golden: golden_bytes,
            };
            let manifest = Manifest {
                v: 1,
                name,
                version,
                created,
                expires: expires_in.map(|days| created + Duration::days(i64::from(days))),
                files: raw.file_entries(),
                inputs: model.inputs().to_vec(),
                outputs: model.outputs().to_vec(),
                task,
                lineage,
            };
            manifest.validate()?;
            raw.manifest = outpost_shared::dsse::Envelope::new(
                outpost_shared::dsse::MANIFEST_TYPE,
                &serde_json::to_vec(&manifest)?,
            );
            let signed_by = match &key {
                Some(key) => Some(sign_bundle(&mut raw, key)?),
                None => None,
            };
            let bytes = raw.to_bytes();
            write_atomic(&out, &bytes, false)?;
            println!(
                "created {} ({:?}, {} golden cases passed, profile of {} samples, {} input and {} output features)",
                manifest.id(),
                task,
                golden.cases.len(),
                profile.reference_count,
                profile.inputs.len(),
                profile.outputs.len()
            );
            println!(
                "  {} {} bytes {}",
                out.display(),
                bytes.len(),
                outpost_shared::sha256_digest(&bytes)
            );
            match signed_by {
                Some(keyid) => println!("  signed by {keyid}"),
                None => println!(
                    "  unsigned: run `outpost bundle sign --key PUBLISHER.key.json {}`",
                    out.display()
                ),
            }
            Ok(())
        }
        BundleCommand::Sign { key, bundle: path } => {
            let (_, mut raw) = read_bundle(&path)?;
            let keyid = sign_bundle(&mut raw, &key)?;
            let bytes = raw.to_bytes();
            write_atomic(&path, &bytes, false)?;
            println!(
                "signed {} with {keyid}; digest now {}",
                path.display(),
                outpost_shared::sha256_digest(&bytes)
            );
            Ok(())
        }
        BundleCommand::Verify { trust, bundle: path } => {
            let trust = load_trust(&trust)?;
            let bytes = read_limited(&path, bundle::MAX_BUNDLE_BYTES, "bundle")?;
            match bundle::verify(&bytes, &trust, now()) {
                Ok(verified) => {
                    println!(
                        "accepted: {} {} ({} bytes), signed by a publisher of trust root version {}",
                        verified.manifest.id(),
                        verified.digest,
                        verified.size,
                        trust.version
                    );
                    Ok(())
                }
                Err(e) => bail!("rejected: {} [{}]", e, e.code()),
            }
        }
        BundleCommand::Inspect { bundle: path, json } => {
            let (bytes, raw) = read_bundle(&path)?;
            let manifest = raw.manifest_unverified()?;
            if json {
                let value = serde_json::json!({
                    "digest": outpost_shared::sha256_digest(&bytes),
                    "size": bytes.len(),
                    "manifest": manifest,
                    "signatures": raw.manifest.signatures.iter().map(|s| &s.keyid).collect::<Vec<_>>(),
                    "profile": serde_json::from_slice::<serde_json::Value>(&raw.profile).ok(),
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
                return Ok(());
            }
            println!(
                "{} ({:?})  [signatures not checked: use `outpost bundle verify`]",
                manifest.id(),
                manifest.task
            );
            println!("  digest   {}  {} bytes", outpost_shared::sha256_digest(&bytes), bytes.len());
            println!("  created  {}", rfc3339(manifest.created));
            if let Some(expires) = manifest.expires {
                println!("  expires  {}", rfc3339(expires));
            }
            for f in &manifest.files {
                println!("  file     {:<14} {:>9} bytes  {}", f.path, f.size, f.sha256);
            }
            for t in &manifest.inputs {
                println!("  input    {} {} {:?}", t.name, t.datatype, t.shape);
            }
            for t in &manifest.outputs {
                println!("  output   {} {} {:?}", t.name, t.datatype, t.shape);
            }
            println!("  lineage  {}", serde_json::to_string(&manifest.lineage)?);
            if let Ok(profile) =
                serde_json::from_slice::<outpost_shared::profile::Profile>(&raw.profile)
            {
                println!(
                    "  profile  {} samples; inputs: {}",
                    profile.reference_count,
                    profile
                        .inputs
                        .iter()
                        .map(|f| format!(
                            "{} (mean {:.3}, sd {:.3})",
                            f.name,
                            f.moments.mean,
                            f.moments.std_dev()
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if let Some(c) = &profile.classifier {
                    println!("  classes  baseline counts {:?}", c.class_counts);
                }
            }
            if raw.manifest.signatures.is_empty() {
                println!("  signatures: none");
            }
            for s in &raw.manifest.signatures {
                println!("  signature {}", s.keyid);
            }
            Ok(())
        }
    }
}
