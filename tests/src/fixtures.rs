//! Signed fixtures for tests, deterministic from fixed seeds: keys, a trust root (2-of-2 root
//! keys, 2-of-3 approvers, one publisher) written as `root.json`, signed bundles built from the
//! generated models exactly as `outpost bundle create` builds them (load, golden check, baseline
//! profile, manifest, publisher signature), and provisioned agent data directories with a
//! config file to run `outpost-agent` on.
//!
//! Everything is a pure function of the seeds and the committed models: the same bundle has the
//! same bytes and digest on every run, so tests may compare digests. This crate does not depend
//! on the agent or the control crate; the agent's data directory layout and `state.json` are
//! written here in the documented on-disk format, and the agent's own tests check that it opens.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use outpost_shared::Verified;
use outpost_shared::bundle::{self, Bundle, RawBundle};
use outpost_shared::dsse::{Envelope, MANIFEST_TYPE};
use outpost_shared::golden::Golden;
use outpost_shared::keys::SecretKey;
use outpost_shared::manifest::{Lineage, Manifest, Task};
use outpost_shared::model::{Model, build_profile};
use outpost_shared::oip::{Datatype, InferenceRequest, Tensor, TensorData};
use outpost_shared::plan::{BundleRef, HealthPolicy, Plan};
use outpost_shared::profile::DEFAULT_BINS;
use outpost_shared::trust::{self, KeyGroup, TrustRoot};
use outpost_shared::verify::Role;
use time::OffsetDateTime;
use time::macros::datetime;

/// The models of `tests/models/` that make bundles (each has a baseline and a golden set).
pub const BUNDLE_MODELS: [&str; 4] = ["mlp_classifier", "batched_classifier", "regressor", "cnn"];

/// When fixture manifests say they were created.
pub const CREATED: OffsetDateTime = datetime!(2024-01-01 00:00:00 UTC);
/// When the fixture trust root expires: far enough away for any test run.
pub const TRUST_EXPIRES: OffsetDateTime = datetime!(2100-01-01 00:00:00 UTC);

/// Who signs a fixture bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleSigner {
    /// The trust root's publisher: accepted.
    Publisher,
    /// A publisher key the trust root does not list: refused as an unknown key.
    Stranger,
    /// Nobody: refused for too few signatures.
    Nobody,
}

/// Variations of a fixture bundle, for refusal tests.
#[derive(Debug, Clone)]
pub struct BundleOptions {
    pub version: String,
    pub signer: BundleSigner,
    pub expires: Option<OffsetDateTime>,
    /// A golden file (in `tests/models/`) to package instead of `<model>.golden.json`. It is
    /// packaged without checking, so a bundle can carry a golden set its model fails.
    pub golden_file: Option<String>,
}

impl Default for BundleOptions {
    fn default() -> Self {
        Self {
            version: "1.0.0".into(),
            signer: BundleSigner::Publisher,
            expires: None,
            golden_file: None,
        }
    }
}

/// A rollout plan to sign, for [`Fixture::signed_plan`].
#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub rollout: String,
    pub seq: u64,
    /// Tag selector.
    pub cohort: String,
    /// How many of the fixture's approvers sign (the trust root asks for 2).
    pub approvers: usize,
    /// Also sign with an approver key the trust root does not list.
    pub stranger: bool,
    pub expires: OffsetDateTime,
    pub health: HealthPolicy,
    /// The bundle file a revert goes back to.
    pub fallback: Option<PathBuf>,
}

impl PlanOptions {
    /// `rollout` with sequence `seq` for every device, signed by two approvers, valid for a day.
    pub fn new(rollout: &str, seq: u64) -> Self {
        Self {
            rollout: rollout.into(),
            seq,
            cohort: "*".into(),
            approvers: 2,
            stranger: false,
            expires: OffsetDateTime::now_utc() + time::Duration::days(1),
            health: HealthPolicy::default(),
            fallback: None,
        }
    }
}

/// A directory of signed test material.
#[derive(Debug)]
pub struct Fixture {
    dir: PathBuf,
    root_keys: Vec<SecretKey>,
    approver_keys: Vec<SecretKey>,
    publisher_key: SecretKey,
    stranger_key: SecretKey,
    trust_root: Vec<u8>,
}

fn seed(label: &str) -> [u8; 32] {
    // Seeds are labels padded with zeros: readable, fixed, distinct.
    let mut seed = [0u8; 32];
    for (slot, byte) in seed.iter_mut().zip(label.bytes()) {
        *slot = byte;
    }
    seed
}

fn key(label: &str, role: Role) -> SecretKey {
    SecretKey::from_seed(&seed(&format!("outpost-fixture-{label}")), label, role)
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
    }
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

impl Fixture {
    /// Keys and a trust root in `dir` (created if missing); writes `dir/root.json`.
    pub fn new(dir: &Path) -> Self {
        let root_keys = vec![key("root1", Role::Root), key("root2", Role::Root)];
        let approver_keys = vec![
            key("alice", Role::Approver),
            key("bob", Role::Approver),
            key("carol", Role::Approver),
        ];
        let publisher_key = key("ci", Role::Publisher);
        let stranger_key = key("mallory", Role::Publisher);
        let root = TrustRoot {
            v: 1,
            version: 1,
            expires: TRUST_EXPIRES,
            root: KeyGroup {
                threshold: 2,
                keys: root_keys.iter().map(|k| k.public.clone()).collect(),
            },
            approvers: KeyGroup {
                threshold: 2,
                keys: approver_keys.iter().map(|k| k.public.clone()).collect(),
            },
            publishers: KeyGroup { threshold: 1, keys: vec![publisher_key.public.clone()] },
        };
        let trust_root = sign_root(&root, &root_keys);
        let fixture = Self {
            dir: dir.to_path_buf(),
            root_keys,
            approver_keys,
            publisher_key,
            stranger_key,
            trust_root,
        };
        write(&fixture.trust_root_path(), &fixture.trust_root);
        fixture
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `root.json`: the trust root envelope.
    pub fn trust_root_path(&self) -> PathBuf {
        self.dir.join("root.json")
    }

    pub fn trust_root_bytes(&self) -> &[u8] {
        &self.trust_root
    }

    /// The trust root, verified now.
    pub fn trust_root(&self) -> Verified<TrustRoot> {
        trust::verify_initial(&self.trust_root, OffsetDateTime::now_utc())
            .unwrap_or_else(|e| panic!("fixture trust root does not verify: {e}"))
    }

    pub fn root_keys(&self) -> &[SecretKey] {
        &self.root_keys
    }

    pub fn approver_keys(&self) -> &[SecretKey] {
        &self.approver_keys
    }

    pub fn publisher_key(&self) -> &SecretKey {
        &self.publisher_key
    }

    /// A trust root that expired: same keys, properly signed, `expires` in the past.
    pub fn expired_trust_root(&self) -> PathBuf {
        let path = self.dir.join("expired-root.json");
        let mut root = trust::parse_unverified(
            &Envelope::from_slice(&self.trust_root).unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        root.expires = datetime!(2020-01-01 00:00:00 UTC);
        write(&path, &sign_root(&root, &self.root_keys));
        path
    }

    /// A trust root signed by one root key where two must sign.
    pub fn under_signed_trust_root(&self) -> PathBuf {
        let path = self.dir.join("under-signed-root.json");
        let root = trust::parse_unverified(
            &Envelope::from_slice(&self.trust_root).unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        write(&path, &sign_root(&root, &self.root_keys[..1]));
        path
    }

    /// The signed bundle of `model` (one of [`BUNDLE_MODELS`], or `datatypes`, the model with
    /// an input and output of every OIP datatype) at `<dir>/<model>.bundle`, built on first use.
    pub fn bundle(&self, model: &str) -> PathBuf {
        let path = self.dir.join(format!("{model}.bundle"));
        if !path.exists() {
            write(&path, &self.build_bundle(model, &BundleOptions::default()));
        }
        path
    }

    /// A variation of `model`'s bundle, written to `<dir>/<file_name>`.
    pub fn bundle_with(&self, model: &str, options: &BundleOptions, file_name: &str) -> PathBuf {
        let path = self.dir.join(file_name);
        write(&path, &self.build_bundle(model, options));
        path
    }

    /// `model`'s bundle verified against the fixture trust root.
    pub fn verified_bundle(&self, model: &str) -> Verified<Bundle> {
        let bytes = read(&self.bundle(model));
        bundle::verify(&bytes, &self.trust_root(), OffsetDateTime::now_utc())
            .unwrap_or_else(|e| panic!("fixture bundle {model} does not verify: {e}"))
    }

    /// The plan's name for the bundle file at `path`: name and version from its manifest
    /// (read without verifying, so tampered bundles can be named too), digest and size of the
    /// file.
    pub fn bundle_ref(&self, path: &Path) -> BundleRef {
        let bytes = read(path);
        let (name, version) = bundle::read(&bytes)
            .ok()
            .and_then(|raw| raw.manifest_unverified().ok())
            .map_or_else(|| ("unknown".into(), "0".into()), |m| (m.name, m.version));
        BundleRef {
            name,
            version,
            digest: outpost_shared::sha256_digest(&bytes),
            size: bytes.len() as u64,
        }
    }

    /// A rollout plan for the bundle file at `bundle`, signed as `options` say: the envelope
    /// bytes, as `outpost plan sign` writes them.
    pub fn signed_plan(&self, bundle: &Path, options: &PlanOptions) -> Vec<u8> {
        let plan = Plan {
            v: 1,
            rollout: options.rollout.clone(),
            seq: options.seq,
            bundle: self.bundle_ref(bundle),
            fallback: options.fallback.as_deref().map(|path| self.bundle_ref(path)),
            cohort: options.cohort.clone(),
            health: options.health.clone(),
            created: options.expires - time::Duration::days(2),
            expires: options.expires,
        };
        let mut envelope = plan.to_envelope();
        for key in self.approver_keys.iter().take(options.approvers) {
            envelope.sign(key).unwrap_or_else(|e| panic!("signing the plan: {e}"));
        }
        if options.stranger {
            envelope
                .sign(&key("mallory-approver", Role::Approver))
                .unwrap_or_else(|e| panic!("signing the plan: {e}"));
        }
        envelope.to_vec()
    }

    /// A copy of the bundle file at `path` with the byte at `offset` (from the start of the
    /// named entry's data) flipped, written to `<dir>/<file_name>`: a bundle altered after
    /// signing.
    pub fn tampered_bundle(
        &self,
        path: &Path,
        entry: &str,
        offset: usize,
        file_name: &str,
    ) -> PathBuf {
        let mut bytes = read(path);
        let position = entry_data_offset(&bytes, entry) + offset;
        bytes[position] ^= 0x01;
        let out = self.dir.join(file_name);
        write(&out, &bytes);
        out
    }

    /// Builds a bundle the way `outpost bundle create` does.
    fn build_bundle(&self, model_name: &str, options: &BundleOptions) -> Vec<u8> {
        let models = crate::models_dir();
        let model_bytes = read(&models.join(format!("{model_name}.onnx")));
        let model = Model::load(&model_bytes)
            .unwrap_or_else(|e| panic!("model {model_name} does not load: {e}"));
        let golden_file =
            options.golden_file.clone().unwrap_or_else(|| format!("{model_name}.golden.json"));
        let golden_bytes = read(&models.join(&golden_file));
        let golden: Golden = serde_json::from_slice(&golden_bytes)
            .unwrap_or_else(|e| panic!("golden set {golden_file}: {e}"));
        if options.golden_file.is_none() {
            model
                .check_golden(&golden)
                .unwrap_or_else(|e| panic!("model {model_name} fails its golden set: {e}"));
        }
        let (requests, columns) = baseline(model_name, &model);
        let task = task_of(model_name);
        let profile = build_profile(
            &model,
            &requests,
            columns.as_deref(),
            task == Task::Classification,
            DEFAULT_BINS,
        )
        .unwrap_or_else(|e| panic!("profiling {model_name}: {e}"));
        let mut raw = RawBundle {
            manifest: Envelope::new(MANIFEST_TYPE, b""),
            model: model_bytes,
            profile: serde_json::to_vec(&profile).unwrap_or_else(|e| panic!("{e}")),
            golden: golden_bytes,
        };
        let manifest = Manifest {
            v: 1,
            name: model_name.to_string(),
            version: options.version.clone(),
            created: CREATED,
            expires: options.expires,
            files: raw.file_entries(),
            inputs: model.inputs().to_vec(),
            outputs: model.outputs().to_vec(),
            task,
            lineage: Lineage::default(),
        };
        manifest.validate().unwrap_or_else(|e| panic!("fixture manifest: {e}"));
        raw.manifest = Envelope::new(
            MANIFEST_TYPE,
            &serde_json::to_vec(&manifest).unwrap_or_else(|e| panic!("{e}")),
        );
        let signer = match options.signer {
            BundleSigner::Publisher => Some(&self.publisher_key),
            BundleSigner::Stranger => Some(&self.stranger_key),
            BundleSigner::Nobody => None,
        };
        if let Some(key) = signer {
            raw.manifest.sign(key).unwrap_or_else(|e| panic!("signing: {e}"));
        }
        raw.to_bytes()
    }

    /// An agent data directory in `<dir>/<device_id>/data`, laid out as `outpost-agent
    /// provision` leaves it: the trust root, and when `model` is given its bundle in slot a,
    /// active and committed.
    pub fn provisioned_agent_dir(&self, device_id: &str, model: Option<&str>) -> PathBuf {
        let data_dir = self.dir.join(device_id).join("data");
        write(&data_dir.join("trust").join("root.json"), &self.trust_root);
        let mut state = serde_json::json!({
            "v": 1,
            "committed": false,
            "slots": {},
            "next_window_seq": 1,
        });
        if let Some(model) = model {
            let verified = self.verified_bundle(model);
            let bytes = read(&self.bundle(model));
            write(&data_dir.join("slots").join("a").join("bundle"), &bytes);
            state["active"] = "a".into();
            state["committed"] = true.into();
            state["slots"]["a"] = serde_json::json!({
                "name": verified.manifest.name,
                "version": verified.manifest.version,
                "digest": verified.digest,
                "size": verified.size,
            });
        }
        write(
            &data_dir.join("state.json"),
            &serde_json::to_vec_pretty(&state).unwrap_or_else(|e| panic!("{e}")),
        );
        data_dir
    }

    /// An agent config file at `<data_dir>/../agent.toml` for `device_id` with `tags`,
    /// listening on `listen` (`"127.0.0.1:0"` or `"unix:/path"`), with windows every
    /// `period_seconds`. `extra` is appended verbatim (an `[mqtt]` section, for example).
    pub fn agent_config(
        &self,
        data_dir: &Path,
        device_id: &str,
        tags: &BTreeMap<String, String>,
        listen: &str,
        period_seconds: f64,
        extra: &str,
    ) -> PathBuf {
        let mut text = String::new();
        let _ = writeln!(text, "data_dir = {:?}", data_dir.display().to_string());
        let _ = writeln!(text, "[device]\nid = {device_id:?}\n[device.tags]");
        for (key, value) in tags {
            let _ = writeln!(text, "{key:?} = {value:?}");
        }
        let _ = writeln!(text, "[api]\nlisten = {listen:?}\nmax_concurrency = 2");
        let _ = writeln!(text, "[stats]\nperiod_seconds = {period_seconds:?}");
        text.push_str(extra);
        let path = data_dir.parent().unwrap_or(data_dir).join("agent.toml");
        write(&path, text.as_bytes());
        path
    }
}

/// Where the data of the entry `name` starts in a bundle file: the container is canonical
/// ustar, a 512-byte header before each entry and its data padded to 512 bytes.
fn entry_data_offset(bytes: &[u8], name: &str) -> usize {
    let raw = bundle::read(bytes).unwrap_or_else(|e| panic!("bundle: {e}"));
    let manifest = raw.manifest.to_vec();
    let sizes = [manifest.len(), raw.model.len(), raw.profile.len(), raw.golden.len()];
    let mut offset = 0;
    for (file, size) in bundle::FILES.iter().zip(sizes) {
        if *file == name {
            return offset + 512;
        }
        offset += 512 + size.div_ceil(512) * 512;
    }
    panic!("no entry {name} in a bundle")
}

fn sign_root(root: &TrustRoot, keys: &[SecretKey]) -> Vec<u8> {
    let mut envelope = root.to_envelope();
    for key in keys {
        envelope.sign(key).unwrap_or_else(|e| panic!("signing the trust root: {e}"));
    }
    envelope.to_vec()
}

/// What the fixture models are, as `outpost bundle create --task auto` detects them.
fn task_of(model: &str) -> Task {
    match model {
        "regressor" => Task::Regression,
        "datatypes" => Task::Other,
        _ => Task::Classification,
    }
}

/// The model's baseline as requests: CSV rows (tabular models) or JSONL request bodies (cnn),
/// with the CSV header as feature names.
pub fn baseline(model_name: &str, model: &Model) -> (Vec<InferenceRequest>, Option<Vec<String>>) {
    let models = crate::models_dir();
    let jsonl = models.join(format!("{model_name}.baseline.jsonl"));
    if jsonl.exists() {
        let text = String::from_utf8(read(&jsonl)).unwrap_or_else(|e| panic!("{e}"));
        let requests = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{jsonl:?}: {e}")))
            .collect();
        return (requests, None);
    }
    let csv = models.join(format!("{model_name}.baseline.csv"));
    let text = String::from_utf8(read(&csv)).unwrap_or_else(|e| panic!("{e}"));
    let mut lines = text.lines();
    let header: Vec<String> =
        lines.next().unwrap_or_default().split(',').map(|h| h.trim().to_string()).collect();
    let spec = &model.inputs()[0];
    let requests = lines
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let values: Vec<f64> = line
                .split(',')
                .map(|cell| {
                    cell.trim().parse().unwrap_or_else(|e| panic!("{csv:?}: {cell:?}: {e}"))
                })
                .collect();
            let features = values.len() as u64;
            let datatype = Datatype::parse(&spec.datatype).unwrap_or(Datatype::Fp32);
            let data = TensorData::from_f64(datatype, &values)
                .unwrap_or_else(|e| panic!("{csv:?}: {e:?} is not a valid {datatype}"));
            InferenceRequest::new(vec![Tensor {
                name: spec.name.clone(),
                shape: vec![1, features],
                data,
                parameters: None,
            }])
        })
        .collect();
    (requests, Some(header))
}

/// The `index`-th baseline row of `model` as an inference request (tabular models), a handy
/// valid request for tests.
pub fn baseline_request(model_name: &str, index: usize) -> InferenceRequest {
    let models = crate::models_dir();
    let bytes = read(&models.join(format!("{model_name}.onnx")));
    let model = Model::load(&bytes).unwrap_or_else(|e| panic!("{e}"));
    let (requests, _) = baseline(model_name, &model);
    requests.into_iter().nth(index).unwrap_or_else(|| panic!("{model_name} has no row {index}"))
}
