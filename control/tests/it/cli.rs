//! The trust model through the CLI: keys, trust roots and rotation, bundle create / sign /
//! verify / inspect with every tamper case refused by a distinct message, plans with k-of-n
//! approvals.

use std::path::PathBuf;
use std::process::{Command, Output};

struct Workspace {
    dir: tempfile::TempDir,
}

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/models")
}

fn model(name: &str) -> String {
    models().join(name).display().to_string()
}

impl Workspace {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("tempdir") }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run_with(&self, passphrase: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(args)
            .current_dir(self.dir.path())
            .env("OUTPOST_PASSPHRASE", passphrase)
            .output()
            .expect("run outpost")
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with("test-passphrase", args)
    }

    /// Runs and asserts success, returning stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "outpost {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and asserts exit status 1, returning stderr.
    fn refused(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "outpost {args:?} should be refused: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Keys, a 2-of-2 root, 2-of-3 approvers, one publisher; a signed bundle `m.bundle`.
    fn with_fleet() -> Self {
        let w = Self::new();
        for (name, role) in [
            ("root1", "root"),
            ("root2", "root"),
            ("alice", "approver"),
            ("bob", "approver"),
            ("carol", "approver"),
            ("ci", "publisher"),
            ("mallory", "publisher"),
        ] {
            w.ok(&["keys", "generate", "--name", name, "--role", role, "--out", "keys"]);
        }
        w.ok(&[
            "trust",
            "init",
            "--root",
            "keys/root1.pub.json",
            "--root",
            "keys/root2.pub.json",
            "--root-threshold",
            "2",
            "--approver",
            "keys/alice.pub.json",
            "--approver",
            "keys/bob.pub.json",
            "--approver",
            "keys/carol.pub.json",
            "--approvals",
            "2",
            "--publisher",
            "keys/ci.pub.json",
            "--expires-in",
            "30",
            "--sign",
            "keys/root1.key.json",
            "--sign",
            "keys/root2.key.json",
            "--out",
            "root.json",
        ]);
        w.create_bundle("unsigned.bundle", "mlp_classifier.golden.json");
        std::fs::copy(w.path("unsigned.bundle"), w.path("m.bundle")).expect("copy");
        w.ok(&["bundle", "sign", "--key", "keys/ci.key.json", "m.bundle"]);
        w
    }

    fn create_bundle(&self, out: &str, golden: &str) -> Output {
        self.run(&[
            "bundle",
            "create",
            "--model",
            &model("mlp_classifier.onnx"),
            "--name",
            "fraud",
            "--version",
            "1.0.0",
            "--baseline",
            &model("mlp_classifier.baseline.csv"),
            "--golden",
            &model(golden),
            "--lineage",
            &model("mlp_classifier.lineage.json"),
            "--out",
            out,
        ])
    }

    fn tampered(&self, name: &str, change: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut bytes = std::fs::read(self.path("m.bundle")).expect("bundle");
        change(&mut bytes);
        std::fs::write(self.path(name), bytes).expect("write");
        name.to_string()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).position(|w| w == needle).expect("needle in bundle")
}

#[test]
fn bundle_verify_accepts_the_good_bundle_and_names_each_tampering() {
    let w = Workspace::with_fleet();
    let accepted = w.ok(&["bundle", "verify", "--trust", "root.json", "m.bundle"]);
    assert!(accepted.contains("accepted: fraud@1.0.0"), "{accepted}");

    let model_bytes = std::fs::read(models().join("mlp_classifier.onnx")).expect("model");
    let golden_bytes = std::fs::read(models().join("mlp_classifier.golden.json")).expect("golden");
    let cases = [
        (
            w.tampered("model.bundle", |b| {
                let at = find(b, &model_bytes) + model_bytes.len() / 2;
                b[at] ^= 0x01;
            }),
            "digest mismatch for model.onnx",
        ),
        (
            w.tampered("golden.bundle", |b| {
                let at = find(b, &golden_bytes) + 10;
                b[at] ^= 0x01;
            }),
            "digest mismatch for golden.json",
        ),
        (
            w.tampered("manifest.bundle", |b| {
                let at = find(b, b"\"payload\":\"") + 20;
                b[at] = if b[at] == b'A' { b'B' } else { b'A' };
            }),
            "bad signature",
        ),
        (w.tampered("header.bundle", |b| b[0] ^= 0x01), "malformed bundle"),
        (
            w.tampered("padding.bundle", |b| {
                let len = b.len();
                b[len - 1] = 1;
            }),
            "not in canonical form",
        ),
        (w.tampered("truncated.bundle", |b| b.truncate(b.len() / 2)), "malformed bundle"),
        ("unsigned.bundle".to_string(), "too few distinct publisher signatures: 0 valid of 1"),
    ];
    std::fs::copy(w.path("unsigned.bundle"), w.path("mallory.bundle")).expect("copy");
    w.ok(&["bundle", "sign", "--key", "keys/mallory.key.json", "mallory.bundle"]);
    let mut messages = Vec::new();
    for (file, needle) in
        cases.iter().map(|(f, n)| (f.as_str(), *n)).chain([("mallory.bundle", "unknown key")])
    {
        let stderr = w.refused(&["bundle", "verify", "--trust", "root.json", file]);
        assert!(stderr.contains("rejected") || stderr.contains("malformed"), "{file}: {stderr}");
        assert!(stderr.contains(needle), "{file}: `{stderr}` should contain `{needle}`");
        assert!(!stderr.contains("panicked"), "{file}: {stderr}");
        messages.push(stderr);
    }
    let distinct: std::collections::BTreeSet<_> = messages.iter().collect();
    assert_eq!(distinct.len(), messages.len(), "each tampering has its own message: {messages:#?}");
}

#[test]
fn bundle_create_refuses_bad_models_and_golden_mismatches() {
    let w = Workspace::with_fleet();
    let out = w.create_bundle("bad.bundle", "mlp_classifier.bad_golden.json");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("do not match the golden set") && stderr.contains("golden case 0"),
        "{stderr}"
    );
    assert!(!w.path("bad.bundle").exists(), "nothing is written for a refused model");

    for (file, needle) in [
        ("invalid.onnx", "not a readable ONNX model"),
        ("unsupported_op.onnx", "operator Frobnicate"),
    ] {
        let stderr = w.refused(&[
            "bundle",
            "create",
            "--model",
            &model(file),
            "--name",
            "x",
            "--version",
            "1",
            "--baseline",
            &model("mlp_classifier.baseline.csv"),
            "--golden",
            &model("mlp_classifier.golden.json"),
            "--out",
            "bad.bundle",
        ]);
        assert!(stderr.contains(needle), "{file}: {stderr}");
    }
    let stderr = w.refused(&[
        "bundle",
        "create",
        "--model",
        &model("mlp_classifier.onnx"),
        "--name",
        "x",
        "--version",
        "1",
        "--baseline",
        &model("regressor.baseline.csv"),
        "--golden",
        &model("mlp_classifier.golden.json"),
        "--out",
        "bad.bundle",
    ]);
    assert!(stderr.contains("has 6 columns but input `features` takes 8 features"), "{stderr}");

    // The CNN takes a JSONL baseline of OIP v2 requests and is profiled per channel.
    w.ok(&[
        "bundle",
        "create",
        "--model",
        &model("cnn.onnx"),
        "--name",
        "digits",
        "--version",
        "2",
        "--baseline",
        &model("cnn.baseline.jsonl"),
        "--golden",
        &model("cnn.golden.json"),
        "--key",
        "keys/ci.key.json",
        "--out",
        "cnn.bundle",
    ]);
    w.ok(&["bundle", "verify", "--trust", "root.json", "cnn.bundle"]);
    let inspect = w.ok(&["bundle", "inspect", "cnn.bundle"]);
    assert!(inspect.contains("image.mean[0]") && inspect.contains("digits@2"), "{inspect}");
}

#[test]
fn bundle_create_sketches_the_features_asked_for() {
    let w = Workspace::new();
    let create = |kll: &str, out: &str| {
        vec![
            "bundle".to_string(),
            "create".into(),
            "--model".into(),
            model("mlp_classifier.onnx"),
            "--name".into(),
            "fraud".into(),
            "--version".into(),
            "1.0.0".into(),
            "--baseline".into(),
            model("mlp_classifier.baseline.csv"),
            "--golden".into(),
            model("mlp_classifier.golden.json"),
            "--kll".into(),
            kll.into(),
            "--out".into(),
            out.into(),
        ]
    };
    let args = create("f0,f3", "kll.bundle");
    w.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let raw = outpost_shared::bundle::read(&std::fs::read(w.path("kll.bundle")).expect("bundle"))
        .expect("bundle reads");
    let profile: outpost_shared::profile::Profile =
        serde_json::from_slice(&raw.profile).expect("profile");
    profile.validate().expect("valid profile");
    let sketched: Vec<&str> = profile
        .inputs
        .iter()
        .chain(&profile.outputs)
        .filter(|f| f.sketch.is_some())
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(sketched, ["f0", "f3"]);
    let reference = profile.inputs[0].sketch.as_ref().expect("f0").reference().expect("decodes");
    assert_eq!(reference.n(), profile.inputs[0].moments.count);

    let args = create("f0,nope", "bad.bundle");
    let stderr = w.refused(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        stderr.contains("a KLL sketch was asked for `nope`, which is not a feature of this model"),
        "{stderr}"
    );
}

#[test]
fn plans_need_k_distinct_approvers_and_check_the_cohort() {
    let w = Workspace::with_fleet();
    w.ok(&[
        "plan",
        "create",
        "--bundle",
        "m.bundle",
        "--cohort",
        "site=berlin",
        "--seq",
        "3",
        "--expires-in",
        "24",
        "--out",
        "p.plan",
    ]);
    let none = w.refused(&["plan", "verify", "--trust", "root.json", "p.plan"]);
    assert!(none.contains("0 valid of 2 required"), "{none}");
    w.ok(&["plan", "sign", "--key", "keys/alice.key.json", "p.plan"]);
    w.ok(&["plan", "sign", "--key", "keys/alice.key.json", "p.plan"]);
    let one = w.refused(&["plan", "verify", "--trust", "root.json", "p.plan"]);
    assert!(one.contains("1 valid of 2 required"), "the same approver twice counts once: {one}");
    w.ok(&["plan", "sign", "--key", "keys/ci.key.json", "p.plan"]);
    let publisher = w.refused(&["plan", "verify", "--trust", "root.json", "p.plan"]);
    assert!(
        publisher.contains("1 valid of 2 required")
            && publisher.contains("a publisher key, not an approver key"),
        "{publisher}"
    );
    w.ok(&["plan", "sign", "--key", "keys/bob.key.json", "p.plan"]);
    let accepted = w.ok(&["plan", "verify", "--trust", "root.json", "p.plan"]);
    assert!(accepted.contains("accepted: plan fraud@1.0.0-3 seq 3"), "{accepted}");
    w.ok(&[
        "plan",
        "verify",
        "--trust",
        "root.json",
        "p.plan",
        "--device-tags",
        "site=berlin,hw=rpi4",
    ]);
    let outside = w.refused(&[
        "plan",
        "verify",
        "--trust",
        "root.json",
        "p.plan",
        "--device-tags",
        "site=paris",
    ]);
    assert!(outside.contains("not in the plan's cohort `site=berlin`"), "{outside}");
    let replay =
        w.refused(&["plan", "verify", "--trust", "root.json", "p.plan", "--last-seq", "3"]);
    assert!(replay.contains("sequence 3 is not above the last accepted sequence 3"), "{replay}");
    // Changing the plan after approval breaks every signature.
    let mut bytes = std::fs::read(w.path("p.plan")).expect("plan");
    let at = find(&bytes, b"\"payload\":\"") + 30;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(w.path("p.plan"), bytes).expect("write");
    let altered = w.refused(&["plan", "verify", "--trust", "root.json", "p.plan"]);
    assert!(altered.contains("bad signature") || altered.contains("malformed"), "{altered}");
}

#[test]
fn trust_roots_rotate_only_with_old_and_new_root_signatures() {
    let w = Workspace::with_fleet();
    w.ok(&["keys", "generate", "--name", "ci2", "--role", "publisher", "--out", "keys"]);
    w.ok(&["keys", "generate", "--name", "root3", "--role", "root", "--out", "keys"]);
    w.ok(&[
        "trust",
        "add-key",
        "--trust",
        "root.json",
        "--key",
        "keys/ci2.pub.json",
        "--sign",
        "keys/root1.key.json",
        "--sign",
        "keys/root2.key.json",
        "--out",
        "root-v2.json",
    ]);
    let verified = w.ok(&["trust", "verify", "--trust", "root.json", "root-v2.json"]);
    assert!(verified.contains("version 2 succeeds version 1"), "{verified}");
    let show = w.ok(&["trust", "show", "root-v2.json"]);
    assert!(show.contains("ci2") && show.contains("status: valid"), "{show}");

    // Replacing root2 by root3 needs root1+root2 (old threshold) and root1+root3 (new threshold).
    let refused = w.refused(&[
        "trust",
        "rotate",
        "--trust",
        "root-v2.json",
        "--add",
        "keys/root3.pub.json",
        "--remove",
        &key_id(&w, "keys/root2.pub.json"),
        "--sign",
        "keys/root1.key.json",
        "--sign",
        "keys/root3.key.json",
        "--out",
        "root-v3.json",
    ]);
    assert!(refused.contains("not signed by the current root keys"), "{refused}");
    assert!(!w.path("root-v3.json").exists(), "a refused root is not written");
    w.ok(&[
        "trust",
        "rotate",
        "--trust",
        "root-v2.json",
        "--add",
        "keys/root3.pub.json",
        "--remove",
        &key_id(&w, "keys/root2.pub.json"),
        "--sign",
        "keys/root1.key.json",
        "--sign",
        "keys/root2.key.json",
        "--sign",
        "keys/root3.key.json",
        "--out",
        "root-v3.json",
    ]);
    w.ok(&["trust", "verify", "--trust", "root-v2.json", "root-v3.json"]);
    let skipped = w.refused(&["trust", "verify", "--trust", "root-v3.json", "root-v2.json"]);
    assert!(skipped.contains("rejected"), "{skipped}");
}

fn key_id(w: &Workspace, public: &str) -> String {
    let text = std::fs::read_to_string(w.path(public)).expect("key");
    let value: serde_json::Value = serde_json::from_str(&text).expect("json");
    value["keyid"].as_str().expect("keyid").to_string()
}

#[test]
fn private_keys_are_encrypted_and_need_the_passphrase() {
    let w = Workspace::new();
    w.ok(&["keys", "generate", "--name", "alice", "--role", "approver", "--out", "keys"]);
    let private = std::fs::read_to_string(w.path("keys/alice.key.json")).expect("key");
    assert!(private.contains("argon2id") && private.contains("xchacha20poly1305"), "{private}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(w.path("keys/alice.key.json")).expect("meta").permissions().mode();
    assert_eq!(mode & 0o077, 0, "private key readable by others: {mode:o}");
    let again =
        w.refused(&["keys", "generate", "--name", "alice", "--role", "approver", "--out", "keys"]);
    assert!(again.contains("exists"), "{again}");
    std::fs::write(w.path("p.plan"), b"{}").expect("write");
    let out = w.run_with("wrong", &["plan", "sign", "--key", "keys/alice.key.json", "p.plan"]);
    assert_eq!(out.status.code(), Some(1));
    let out = w.run_with(
        "wrong",
        &[
            "trust",
            "init",
            "--root",
            "keys/alice.pub.json",
            "--root-threshold",
            "1",
            "--approver",
            "keys/alice.pub.json",
            "--approvals",
            "1",
            "--publisher",
            "keys/alice.pub.json",
            "--sign",
            "keys/alice.key.json",
            "--out",
            "r.json",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is an approver key, expected a root key"), "{stderr}");
}
