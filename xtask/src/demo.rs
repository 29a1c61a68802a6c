//! `cargo xtask demo`: Outpost end to end, narrated, with the real `outpost` CLI and real
//! agents: first the trust model (keys, trust root, signed bundles, refusals, rollout plans),
//! then a live fleet on the embedded defaults: `outpost serve` with SQLite and its embedded
//! MQTT broker, four `outpost-agent`s serving the signed ONNX model, inference traffic (with
//! shifted data on one device), statistics windows flowing, a device lost to SIGKILL and a
//! clean shutdown. See [`fleet`] for the live part.
//!
//! The demo is data: a list of chapters, each a short story and a list of steps, each step an
//! action (run the CLI, copy or tamper with a file, act on the fleet) and the outcome it must
//! have. The runner
//! prints every command before running it and its output indented, checks every expectation,
//! and ends with a summary table; it fails if any expectation did not hold. To show something
//! new, add a chapter or a step to [`chapters`].
//!
//! Everything happens in a fresh `target/demo/` (wiped at the start), with
//! `OUTPOST_PASSPHRASE=demo-passphrase` encrypting the demo's private keys.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::install::ensure_apt_packages;
use crate::models::MODELS_DIR;
use crate::process::{
    Captured, cargo, repo_root, run, run_captured, shell_quote, step, target_dir,
};
use crate::tamper;

mod fleet;
mod http;

use fleet::{DEVICES, Fleet, FleetAction};

/// Apt packages the demo needs. None yet: the trust walkthrough needs only the CLI and the
/// committed models. The fleet and the console will add theirs here.
const DEMO_APT_PACKAGES: &[&str] = &[];

/// The passphrase that encrypts the demo's private keys, given to the CLI through the
/// environment so nothing prompts.
const PASSPHRASE: (&str, &str) = ("OUTPOST_PASSPHRASE", "demo-passphrase");

/// The committed files the demo uses, copied into `target/demo/models/`.
const MODEL_FILES: &[&str] = &[
    "mlp_classifier.onnx",
    "mlp_classifier.baseline.csv",
    "mlp_classifier.shifted.csv",
    "mlp_classifier.golden.json",
    "mlp_classifier.bad_golden.json",
    "mlp_classifier.lineage.json",
    "invalid.onnx",
];

/// Longest a single step may take before the demo gives up on it (a CLI that prompts for a
/// passphrase on the terminal would otherwise hang the demo).
const STEP_TIME_LIMIT: Duration = Duration::from_secs(300);

/// One part of the story.
struct Chapter {
    title: &'static str,
    /// What this chapter shows and why it matters, in a few sentences.
    story: &'static str,
    steps: Vec<Step>,
}

/// One thing the demo does and what must come of it.
struct Step {
    /// Short name for the summary table.
    label: String,
    action: Action,
    expect: Expect,
}

enum Action {
    /// Runs `outpost` with these arguments in the demo folder.
    Outpost(Vec<String>),
    /// Something the demo itself does with files in the demo folder.
    File(FileAction),
    /// Something the demo does with its live fleet (server and agents).
    Fleet(FleetAction),
}

/// File work of the demo itself; paths are relative to the demo folder.
enum FileAction {
    /// Checks that these files exist.
    Exist(Vec<String>),
    /// Copies a file.
    Copy { from: &'static str, to: &'static str },
    /// Writes `to`, a copy of `from` with exactly one byte changed.
    Tamper { from: &'static str, to: &'static str, how: Tampering },
    /// Copies the files of directory `from` into a new directory `to`, replacing the first
    /// `find` by `replace` in each of `files`.
    RewriteCopy {
        from: &'static str,
        to: &'static str,
        files: &'static [&'static str],
        find: &'static str,
        replace: &'static str,
    },
}

enum Tampering {
    /// Flip a bit in the middle of the bytes of this file (relative to the demo folder)
    /// where they occur inside `from`.
    ByteInsideFile(&'static str),
    /// Replace a base64 character in the middle of the JSON string after this text.
    Base64After(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The CLI exits with this code. 0 is acceptance; 1 is a refusal, which must say why.
    Exit(i32),
    /// The CLI may accept or refuse; what matters is checked by a later step.
    Either,
    /// A file operation of the demo itself succeeds.
    Done,
    /// A fleet action succeeds: this holds (shown in the summary).
    Holds(&'static str),
}

const ACCEPTED: Expect = Expect::Exit(0);
const REFUSED: Expect = Expect::Exit(1);

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exit(0) => f.write_str("exit 0"),
            Self::Exit(1) => f.write_str("exit 1 (refused)"),
            Self::Exit(code) => write!(f, "exit {code}"),
            Self::Either => f.write_str("exit 0 or 1"),
            Self::Done => f.write_str("done"),
            Self::Holds(what) => f.write_str(what),
        }
    }
}

/// What a step actually did.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Exited(i32),
    Killed,
    TimedOut,
    Done,
    /// A fleet action held; what it measured.
    Held(String),
    Error(String),
    /// Not run because input files are missing: an earlier step failed, and a refusal of a
    /// missing file would prove nothing.
    NotRun {
        missing: Vec<String>,
    },
}

/// The exit code of a Rust program that panicked.
const PANIC_EXIT_CODE: i32 = 101;

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(PANIC_EXIT_CODE) => write!(f, "exit {PANIC_EXIT_CODE} (panicked)"),
            Self::Exited(code) => write!(f, "exit {code}"),
            Self::Killed => f.write_str("killed by a signal"),
            Self::TimedOut => write!(f, "timed out after {} s", STEP_TIME_LIMIT.as_secs()),
            Self::Done => f.write_str("done"),
            Self::Held(brief) => f.write_str(brief),
            Self::Error(message) => write!(f, "error: {message}"),
            Self::NotRun { missing } => {
                write!(f, "not run: {} missing (an earlier step failed)", missing.join(", "))
            }
        }
    }
}

impl Outcome {
    /// The outcome for the summary table, without details printed above it already.
    fn brief(&self) -> String {
        match self {
            Self::Error(_) => "error (see above)".to_string(),
            Self::NotRun { .. } => "not run (see above)".to_string(),
            other => other.to_string(),
        }
    }
}

/// The files a command reads: arguments that name a file of the kinds the demo uses, except
/// those that follow `--out`.
fn input_files(args: &[String]) -> Vec<&str> {
    const INPUT_EXTENSIONS: [&str; 5] = ["json", "bundle", "plan", "onnx", "csv"];
    args.iter()
        .enumerate()
        .filter(|(index, _)| *index == 0 || args[index - 1] != "--out")
        .map(|(_, arg)| arg.as_str())
        .filter(|arg| {
            Path::new(arg)
                .extension()
                .is_some_and(|extension| INPUT_EXTENSIONS.iter().any(|known| extension == *known))
        })
        .collect()
}

/// Whether `outcome` meets `expect`; a refusal must also have printed a reason.
fn judge(expect: Expect, outcome: &Outcome, reason: Option<&str>) -> Result<(), String> {
    match (expect, outcome) {
        (Expect::Exit(1), Outcome::Exited(1)) if reason.is_none() => {
            Err("refused without printing a reason".to_string())
        }
        (Expect::Exit(wanted), Outcome::Exited(got)) if wanted == *got => Ok(()),
        (Expect::Either, Outcome::Exited(0 | 1))
        | (Expect::Done, Outcome::Done)
        | (Expect::Holds(_), Outcome::Held(_)) => Ok(()),
        _ => Err(format!("expected {expect}, got {outcome}")),
    }
}

/// The reason a command gave: its last non-empty stderr line, else its last stdout line.
fn reason_of(captured: &Captured) -> Option<String> {
    let last_line = |text: &str| {
        text.lines().rev().map(str::trim).find(|line| !line.is_empty()).map(str::to_string)
    };
    last_line(&captured.stderr).or_else(|| last_line(&captured.stdout))
}

/// `outpost bundle create` for the demo's fraud-scorer model; only the model file, the golden
/// file and the output vary between the demo's bundles.
fn bundle_create(label: &str, model: &str, golden: &str, out: &str, expect: Expect) -> Step {
    let args = format!(
        "bundle create --model models/{model} --name fraud-scorer --version 1.0.0 \
         --baseline models/mlp_classifier.baseline.csv --golden models/{golden} \
         --lineage models/mlp_classifier.lineage.json --out {out}"
    );
    outpost(label, &args, expect)
}

fn outpost(label: &str, args: &str, expect: Expect) -> Step {
    Step {
        label: label.to_string(),
        action: Action::Outpost(args.split_whitespace().map(str::to_string).collect()),
        expect,
    }
}

/// The key holders of the demo: name, role, and who they are.
const KEYS: &[(&str, &str, &str)] = &[
    ("root1", "root", "root key holder 1 (kept offline)"),
    ("root2", "root", "root key holder 2 (kept offline)"),
    ("alice", "approver", "approver"),
    ("bob", "approver", "approver"),
    ("carol", "approver", "approver"),
    ("ci", "publisher", "the CI pipeline that publishes models"),
    ("mallory", "publisher", "an attacker's key, not in the trust root"),
];

/// The demo, in order.
fn chapters() -> Vec<Chapter> {
    let mut key_steps: Vec<Step> = KEYS
        .iter()
        .map(|(name, role, _)| {
            outpost(
                &format!("generate key {name} ({role})"),
                &format!("keys generate --name {name} --role {role} --out keys/"),
                ACCEPTED,
            )
        })
        .collect();
    key_steps.push(Step {
        label: "key files written".into(),
        action: Action::File(FileAction::Exist(
            KEYS.iter()
                .flat_map(|(name, _, _)| {
                    [format!("keys/{name}.key.json"), format!("keys/{name}.pub.json")]
                })
                .collect(),
        )),
        expect: Expect::Done,
    });

    vec![
        Chapter {
            title: "a. Keys",
            story: "Every person and pipeline holds its own ed25519 key: two root key holders, \
                    three approvers (alice, bob, carol), the CI pipeline that publishes models \
                    (ci), and an attacker (mallory) whose key is not in the trust root. Private \
                    keys are stored encrypted (keys/NAME.key.json); public keys \
                    (keys/NAME.pub.json) are shared.",
            steps: key_steps,
        },
        Chapter {
            title: "b. Trust root",
            story: "The trust root says whose signatures count and how many are needed: 2 of the \
                    2 root keys to change it, 2 of the 3 approvers to roll out, ci to publish. It \
                    is installed on every device at enrollment; the device verifies everything \
                    against it itself, so a compromised control server cannot change what devices \
                    install.",
            steps: vec![
                outpost(
                    "create trust root (2 of 2 roots)",
                    "trust init --root keys/root1.pub.json --root keys/root2.pub.json \
                     --root-threshold 2 --approver keys/alice.pub.json \
                     --approver keys/bob.pub.json --approver keys/carol.pub.json --approvals 2 \
                     --publisher keys/ci.pub.json --expires-in 365 \
                     --sign keys/root1.key.json --sign keys/root2.key.json --out root.json",
                    ACCEPTED,
                ),
                outpost("show trust root", "trust show root.json", ACCEPTED),
            ],
        },
        Chapter {
            title: "c. Publishing a model",
            story: "CI packages the model with its baseline profile, golden test set and \
                    lineage. `bundle create` loads the model with tract and runs the golden set \
                    before it writes anything; `bundle sign` adds the publisher's signature over \
                    the manifest, which pins the SHA-256 and size of every file. (An unsigned \
                    copy is kept for mallory.)",
            steps: vec![
                bundle_create(
                    "create bundle",
                    "mlp_classifier.onnx",
                    "mlp_classifier.golden.json",
                    "model.bundle",
                    ACCEPTED,
                ),
                Step {
                    label: "keep an unsigned copy".into(),
                    action: Action::File(FileAction::Copy {
                        from: "model.bundle",
                        to: "mallory.bundle",
                    }),
                    expect: Expect::Done,
                },
                outpost(
                    "sign bundle as ci",
                    "bundle sign --key keys/ci.key.json model.bundle",
                    ACCEPTED,
                ),
                outpost("inspect bundle", "bundle inspect model.bundle", ACCEPTED),
                outpost(
                    "verify signed bundle",
                    "bundle verify --trust root.json model.bundle",
                    ACCEPTED,
                ),
            ],
        },
        Chapter {
            title: "d. Refusals",
            story: "Nothing broken or unauthorised gets through. A model whose outputs do not \
                    match its golden set, or that tract cannot load, is never packaged. A bundle \
                    with one byte changed in the model or in the signed manifest, or signed by a \
                    key the trust root does not name, fails verification: each refusal exits 1 \
                    and says why.",
            steps: vec![
                bundle_create(
                    "create: golden mismatch",
                    "mlp_classifier.onnx",
                    "mlp_classifier.bad_golden.json",
                    "bad-golden.bundle",
                    REFUSED,
                ),
                bundle_create(
                    "create: invalid ONNX",
                    "invalid.onnx",
                    "mlp_classifier.golden.json",
                    "invalid.bundle",
                    REFUSED,
                ),
                Step {
                    label: "flip a bit in model.onnx".into(),
                    action: Action::File(FileAction::Tamper {
                        from: "model.bundle",
                        to: "tampered-model.bundle",
                        how: Tampering::ByteInsideFile("models/mlp_classifier.onnx"),
                    }),
                    expect: Expect::Done,
                },
                outpost(
                    "verify: tampered model",
                    "bundle verify --trust root.json tampered-model.bundle",
                    REFUSED,
                ),
                Step {
                    label: "change a manifest character".into(),
                    action: Action::File(FileAction::Tamper {
                        from: "model.bundle",
                        to: "tampered-manifest.bundle",
                        how: Tampering::Base64After("\"payload\":\""),
                    }),
                    expect: Expect::Done,
                },
                outpost(
                    "verify: tampered manifest",
                    "bundle verify --trust root.json tampered-manifest.bundle",
                    REFUSED,
                ),
                outpost(
                    "sign copy as mallory",
                    "bundle sign --key keys/mallory.key.json mallory.bundle",
                    ACCEPTED,
                ),
                outpost(
                    "verify: signed by mallory",
                    "bundle verify --trust root.json mallory.bundle",
                    REFUSED,
                ),
            ],
        },
        Chapter {
            title: "e. Rollout plan",
            story: "A rollout plan names the bundle's digest, the cohort of devices (by tag), a \
                    fleet-wide sequence number and an expiry. It counts only with 2 distinct \
                    approver signatures, and a device outside the cohort refuses it. A \
                    publisher's signature is no approval.",
            steps: vec![
                outpost(
                    "create plan for site=berlin",
                    "plan create --bundle model.bundle --cohort site=berlin --seq 1 \
                     --expires-in 24 --out rollout.plan",
                    ACCEPTED,
                ),
                outpost(
                    "approve as alice",
                    "plan sign --key keys/alice.key.json rollout.plan",
                    ACCEPTED,
                ),
                outpost(
                    "verify: 1 of 2 approvals",
                    "plan verify --trust root.json rollout.plan",
                    REFUSED,
                ),
                outpost(
                    "approve as bob",
                    "plan sign --key keys/bob.key.json rollout.plan",
                    ACCEPTED,
                ),
                outpost(
                    "verify: 2 of 2 approvals",
                    "plan verify --trust root.json rollout.plan",
                    ACCEPTED,
                ),
                outpost(
                    "verify: device in paris",
                    "plan verify --trust root.json rollout.plan --device-tags site=paris",
                    REFUSED,
                ),
                outpost(
                    "create second plan",
                    "plan create --bundle model.bundle --cohort site=berlin --seq 2 \
                     --expires-in 24 --out publisher.plan",
                    ACCEPTED,
                ),
                outpost(
                    "approve as alice",
                    "plan sign --key keys/alice.key.json publisher.plan",
                    ACCEPTED,
                ),
                // The CLI may refuse to sign with a publisher key at all; either way the
                // verification below must not count it.
                outpost(
                    "sign as ci (publisher)",
                    "plan sign --key keys/ci.key.json publisher.plan",
                    Expect::Either,
                ),
                outpost(
                    "verify: alice + ci",
                    "plan verify --trust root.json publisher.plan",
                    REFUSED,
                ),
            ],
        },
    ]
}

fn fleet(label: &str, action: FleetAction, expect: &'static str) -> Step {
    Step { label: label.to_string(), action: Action::Fleet(action), expect: Expect::Holds(expect) }
}

/// The live part: a control server on the embedded defaults and four real agents, reusing
/// the trust root and the signed bundle of the chapters before.
fn fleet_chapters() -> Vec<Chapter> {
    let devices = 0..DEVICES.len();
    let mut enroll: Vec<Step> = devices
        .clone()
        .map(|index| {
            let (id, site, _) = DEVICES[index];
            fleet(
                &format!("provision {id} (site={site})"),
                FleetAction::Provision(index),
                "verified, installed",
            )
        })
        .collect();
    enroll.extend(devices.map(|index| {
        fleet(
            &format!("start agent {}", DEVICES[index].0),
            FleetAction::StartAgent(index),
            "ready within 30 s",
        )
    }));
    enroll.push(fleet("fleet online", FleetAction::WaitOnline, "4 online within 20 s"));
    enroll.push(outpost("list devices", "devices list", ACCEPTED));
    vec![
        Chapter {
            title: "f. Control server",
            story: "`outpost serve` on its embedded defaults: SQLite in its data folder, an \
                    embedded MQTT broker, the REST API, all on loopback, and the trust root made \
                    above. The first admin is created straight in the database (`users add \
                    --config`); everything after goes through the API with its token. The \
                    registry verifies every pushed bundle against the trust root itself.",
            steps: vec![
                fleet("write control.toml", FleetAction::WriteControlConfig, "written"),
                fleet("start outpost serve", FleetAction::StartServer, "/health 200 within 30 s"),
                fleet("bootstrap the first admin", FleetAction::BootstrapAdmin, "token printed"),
                outpost("push signed bundle", "model push model.bundle", ACCEPTED),
                outpost("push: mallory's bundle", "model push mallory.bundle", REFUSED),
                outpost("list models", "model list", ACCEPTED),
            ],
        },
        Chapter {
            title: "g. A fleet of four agents",
            story: "Four devices in two sites, each a real `outpost-agent` with its own data \
                    folder. Enrollment installs the trust root and the signed bundle, verifying \
                    both on the device (signatures, digests, the golden set) before anything is \
                    installed. Each agent then serves the model over the Open Inference Protocol \
                    v2 on loopback and reports to the control server over MQTT: a hello, its \
                    presence (online, or the broker's Last Will when it vanishes), and a \
                    statistics window every 2 s.",
            steps: enroll,
        },
        Chapter {
            title: "h. Traffic",
            story: "Applications call the agents' local REST API. Rows of the model's baseline \
                    data go to every device; berlin-2 gets rows of a shifted distribution \
                    instead: drifting data on one device. A malformed request gets a 4xx JSON \
                    error that names the problem. Every 2 s each agent reports a statistics \
                    window (input histograms and moments, outputs, latency); the control server \
                    ingests them and merges them per device and cohort. Drift is computed from \
                    those merged windows against the bundle's baseline profile: berlin-2 and \
                    its cohort site=berlin alert on the shifted feature f2, so `--fail-on \
                    alert` exits 1 for it; a report (JSON and one self-contained HTML page) \
                    goes to drift-report/, and the drift monitor opens alerts with hysteresis.",
            steps: vec![
                fleet("infer on berlin-1", FleetAction::InferOnce(0), "200 with probabilities"),
                fleet("infer: wrong shape", FleetAction::BadRequest(2), "4xx JSON error"),
                fleet("10 s of traffic", FleetAction::Traffic, "every request 200"),
                fleet("statistics windows flow", FleetAction::WaitStats, "≥ 8 within 20 s"),
                fleet("per-device statistics", FleetAction::DeviceStats, "berlin-2 stands out"),
                outpost("drift per device", "drift fleet --model fraud-scorer@1.0.0", ACCEPTED),
                outpost(
                    "drift of berlin-2",
                    "drift fleet --model fraud-scorer@1.0.0 --device berlin-2 --fail-on alert",
                    REFUSED,
                ),
                outpost(
                    "drift report",
                    "drift report --model fraud-scorer@1.0.0 --cohort site=berlin \
                     --out drift-report",
                    ACCEPTED,
                ),
                outpost("drift alerts", "drift alerts", ACCEPTED),
            ],
        },
        Chapter {
            title: "i. Assigning a rollout",
            story: "The rollout plan approved by alice and bob above (cohort site=berlin) is \
                    handed to the server, which verifies it against the trust root and the \
                    device's tags before it publishes it to that device (retained on its \
                    `assign` topic). A device outside the cohort, or the plan with only one \
                    approval (alice + ci), is refused with the reason. The agent verifies the \
                    plan again itself; it names the bundle berlin-1 already runs, so there is \
                    nothing to install.",
            steps: vec![
                outpost(
                    "assign: berlin-1",
                    "assign --device berlin-1 --plan rollout.plan",
                    ACCEPTED,
                ),
                outpost(
                    "assign: paris-1 (not in cohort)",
                    "assign --device paris-1 --plan rollout.plan",
                    REFUSED,
                ),
                outpost(
                    "assign: alice + ci plan",
                    "assign --device berlin-2 --plan publisher.plan",
                    REFUSED,
                ),
                fleet(
                    "berlin-1 receives the plan",
                    FleetAction::AssignmentReceived(0),
                    "in its log within 10 s",
                ),
            ],
        },
        Chapter {
            title: "j. Installing an update",
            story: "Version 2.0.0 is published and approved for site=berlin with 1.0.0 as the \
                    fallback. berlin-1 verifies the plan and the bundle itself, downloads it in \
                    resumable chunks into its inactive slot, runs the golden set, switches \
                    atomically, watches its health for 3 s and commits. A plan changed by one \
                    character after approval is refused.",
            steps: vec![
                outpost(
                    "create version 2.0.0",
                    "bundle create --model models/mlp_classifier.onnx --name fraud-scorer \
                     --version 2.0.0 --baseline models/mlp_classifier.baseline.csv \
                     --golden models/mlp_classifier.golden.json \
                     --lineage models/mlp_classifier.lineage.json --out model-2.bundle",
                    ACCEPTED,
                ),
                outpost(
                    "sign as ci",
                    "bundle sign --key keys/ci.key.json model-2.bundle",
                    ACCEPTED,
                ),
                outpost("push 2.0.0", "model push model-2.bundle", ACCEPTED),
                outpost(
                    "plan the update",
                    "plan create --bundle model-2.bundle --fallback model.bundle \
                     --cohort site=berlin --seq 3 --expires-in 24 --watch-seconds 3 \
                     --min-requests 1 --out update.plan",
                    ACCEPTED,
                ),
                outpost(
                    "approve as alice",
                    "plan sign --key keys/alice.key.json update.plan",
                    ACCEPTED,
                ),
                outpost(
                    "approve as bob",
                    "plan sign --key keys/bob.key.json update.plan",
                    ACCEPTED,
                ),
                Step {
                    label: "change one character".into(),
                    action: Action::File(FileAction::Tamper {
                        from: "update.plan",
                        to: "tampered.plan",
                        how: Tampering::Base64After("\"payload\":\""),
                    }),
                    expect: Expect::Done,
                },
                outpost(
                    "assign: tampered plan",
                    "assign --device berlin-1 --plan tampered.plan",
                    REFUSED,
                ),
                outpost(
                    "assign: berlin-1",
                    "assign --device berlin-1 --plan update.plan",
                    ACCEPTED,
                ),
                fleet(
                    "berlin-1 installs 2.0.0",
                    FleetAction::UpdateCommitted(0),
                    "committed within 60 s",
                ),
            ],
        },
        Chapter {
            title: "k. A staged rollout",
            story: "Version 3.0.0 goes to the whole fleet in waves: a canary of one device, then \
                    everyone, with a quarter of the fleet held out on its old model until the end. \
                    The server allocates the plan's sequence number and keeps the unsigned plan; \
                    approvers sign it with their own keys on their own machines and upload only \
                    signatures. One approval is not enough to start. Each wave soaks, then its \
                    gates (devices reporting, install failures, error rate, p95 latency against \
                    the previous model) are judged from the windows the devices send while they \
                    keep serving.",
            steps: vec![
                outpost(
                    "create version 3.0.0",
                    "bundle create --model models/mlp_classifier.onnx --name fraud-scorer \
                     --version 3.0.0 --baseline models/mlp_classifier.baseline.csv \
                     --golden models/mlp_classifier.golden.json \
                     --lineage models/mlp_classifier.lineage.json --out model-3.bundle",
                    ACCEPTED,
                ),
                outpost(
                    "sign as ci",
                    "bundle sign --key keys/ci.key.json model-3.bundle",
                    ACCEPTED,
                ),
                outpost("push 3.0.0", "model push model-3.bundle", ACCEPTED),
                outpost(
                    "create the rollout",
                    "rollout create --id fleet-3 --bundle fraud-scorer@3.0.0 \
                     --fallback fraud-scorer@1.0.0 --cohort * --wave 1 --wave 100% \
                     --holdout 25 --soak 4 --device-timeout 60 --gate min_requests=5 \
                     --health {\"watch_seconds\":3,\"min_requests\":1,\"max_error_rate\":0.05,\"max_p95_latency_ratio\":3.0}",
                    ACCEPTED,
                ),
                outpost(
                    "approve as alice",
                    "rollout approve fleet-3 --key keys/alice.key.json",
                    ACCEPTED,
                ),
                outpost("start with 1 of 2 approvals", "rollout start fleet-3", REFUSED),
                outpost(
                    "approve as bob",
                    "rollout approve fleet-3 --key keys/bob.key.json",
                    ACCEPTED,
                ),
                outpost("start", "rollout start fleet-3", ACCEPTED),
                fleet(
                    "the waves pass their gates",
                    FleetAction::RolloutCompletes("fleet-3"),
                    "completed within 120 s",
                ),
                outpost("show the rollout", "rollout show fleet-3", ACCEPTED),
            ],
        },
        Chapter {
            title: "l. Audit trail",
            story: "Everything above (publishing, refusals, approvals, waves, every device's \
                    install steps) is in an append-only Merkle log whose signed checkpoints \
                    commit to every record. Compliance staff export it with inclusion proofs and \
                    verify it offline; rewriting one record, here turning an approval into an \
                    abort, is caught and named. An export for one device verifies on its own.",
            steps: vec![
                outpost("export the audit trail", "audit export --out audit", ACCEPTED),
                outpost("verify it offline", "audit verify audit", ACCEPTED),
                Step {
                    label: "rewrite one record".into(),
                    action: Action::File(FileAction::RewriteCopy {
                        from: "audit",
                        to: "audit-rewritten",
                        files: &["records.jsonl", "records.csv"],
                        find: "rollout.approve",
                        replace: "rollout.abort",
                    }),
                    expect: Expect::Done,
                },
                outpost("verify: rewritten record", "audit verify audit-rewritten", REFUSED),
                outpost(
                    "export berlin-1's records",
                    "audit export --device berlin-1 --out audit-berlin-1",
                    ACCEPTED,
                ),
                outpost("verify that export", "audit verify audit-berlin-1", ACCEPTED),
            ],
        },
        Chapter {
            title: "m. Users and tokens",
            story: "People reach the control through tokens that expire, can be revoked and \
                    rotated, and users that change role or leave; the last admin always stays. \
                    Tokens are named by a public id, never shown again after they are made, and \
                    every change is in the audit log.",
            steps: vec![
                outpost(
                    "add an auditor (token: 7 days)",
                    "users add dana --role auditor --expires-in-days 7",
                    ACCEPTED,
                ),
                outpost(
                    "issue dana a second token",
                    "tokens issue dana --expires-in-days 1",
                    ACCEPTED,
                ),
                outpost("list dana's tokens", "tokens list dana", ACCEPTED),
                outpost("make dana an approver", "users set-role dana approver", ACCEPTED),
                outpost("remove dana (tokens revoked)", "users remove dana", ACCEPTED),
                outpost("remove the last admin", "users remove admin", REFUSED),
                outpost("the changes, audited", "audit list --action user.remove", ACCEPTED),
            ],
        },
        Chapter {
            title: "n. Losing a device",
            story: "paris-2 loses power: SIGKILL, no goodbye. The broker notices the dead \
                    connection and publishes the agent's Last Will, and the control server marks \
                    the device offline.",
            steps: vec![
                fleet("kill -KILL paris-2", FleetAction::Kill(3), "killed"),
                fleet("paris-2 offline", FleetAction::WaitOffline(3), "offline within 20 s"),
                outpost("list devices", "devices list", ACCEPTED),
            ],
        },
        Chapter {
            title: "o. Shutdown",
            story: "SIGTERM is how systemd stops a service: the agents say goodbye (offline) \
                    and the server stops its API and broker; each must exit 0 within 10 s.",
            steps: vec![
                fleet("stop the agents", FleetAction::StopAgents, "each exits 0"),
                fleet("stop outpost serve", FleetAction::StopServer, "exits 0"),
            ],
        },
    ]
}

/// One row of the summary table.
struct Row {
    step: String,
    expected: String,
    got: String,
    ok: bool,
}

pub fn run_demo() -> Result<()> {
    let started = Instant::now();
    let repo = repo_root();
    ensure_apt_packages(DEMO_APT_PACKAGES)?;
    let (outpost, agent) = build_binaries()?;
    let built = started.elapsed();
    let demo_dir = repo.join("target").join("demo");
    prepare(&repo, &demo_dir)?;

    println!();
    println!("Outpost end to end: the trust model, then a live fleet. Every command below is the");
    println!(
        "real `outpost` CLI ({}) or `outpost-agent`, run in {} with {}={}.",
        outpost.display(),
        demo_dir.display(),
        PASSPHRASE.0,
        PASSPHRASE.1
    );

    // Owns the server and agent processes: whatever still runs when the demo ends, by failure
    // or panic included, is killed when it drops.
    let mut fleet = Fleet::new(&demo_dir, &outpost, &agent)?;
    let mut rows = Vec::new();
    for chapter in chapters().into_iter().chain(fleet_chapters()) {
        println!("\n{}", heading(chapter.title));
        println!("{}", wrap(&squeeze(chapter.story), 90));
        for step in chapter.steps {
            if matches!(step.action, Action::Fleet(FleetAction::StopAgents)) {
                open_console(&repo, &fleet);
            }
            rows.push(perform(&outpost, &demo_dir, &mut fleet, step));
        }
    }
    drop(fleet);

    println!("\n{}", heading("o. Summary"));
    print!("{}", summary_table(&rows));
    let failed = rows.iter().filter(|row| !row.ok).count();
    let took = started.elapsed();
    println!(
        "\nThe demo took {:.0} s ({:.0} s building, {:.0} s running).",
        took.as_secs_f64(),
        built.as_secs_f64(),
        (took - built).as_secs_f64()
    );
    if failed > 0 {
        bail!("{failed} of {} demo expectations failed (see the table above)", rows.len());
    }
    println!(
        "All {} expectations held. The files and logs are in {}.",
        rows.len(),
        demo_dir.display()
    );
    Ok(())
}

/// Opens the Outpost Console on the live demo fleet before it stops, when a display is
/// present (else says it is skipped); waits until its window is closed.
fn open_console(repo: &Path, fleet: &Fleet) {
    let Some([(_, url), (_, token)]) = fleet.cli_env() else {
        step!("the console is not opened: the demo fleet has no server or admin token");
        return;
    };
    match crate::console::open_on(repo, &url, &token) {
        Ok(outcome) => step!("console: {outcome}"),
        Err(error) => eprintln!("==> the console could not be opened: {error:#}"),
    }
}

/// Builds the CLI and the agent; returns their paths.
fn build_binaries() -> Result<(PathBuf, PathBuf)> {
    run(
        "building the outpost CLI and the agent",
        cargo().args(["build", "-p", "outpost-control", "-p", "outpost-agent"]),
    )
    .context(
        "the demo needs the `outpost` CLI (control/) and `outpost-agent` (agent/), and they \
         did not build; see the compiler output above",
    )?;
    let binaries = ["outpost", "outpost-agent"].map(|name| target_dir().join("debug").join(name));
    for binary in &binaries {
        if !binary.is_file() {
            bail!("cargo built the workspace but there is no {}", binary.display());
        }
    }
    let [outpost, agent] = binaries;
    Ok((outpost, agent))
}

/// Wipes and recreates the demo folder and copies the committed model files into it.
fn prepare(repo: &Path, demo_dir: &Path) -> Result<()> {
    step!("preparing a fresh {}", demo_dir.display());
    if demo_dir.exists() {
        std::fs::remove_dir_all(demo_dir)
            .with_context(|| format!("removing {}", demo_dir.display()))?;
    }
    let models = demo_dir.join("models");
    std::fs::create_dir_all(&models).with_context(|| format!("creating {}", models.display()))?;
    for name in MODEL_FILES {
        let source = repo.join(MODELS_DIR).join(name);
        std::fs::copy(&source, models.join(name))
            .with_context(|| format!("copying {}", source.display()))?;
    }
    step!("copied {} committed files from {MODELS_DIR}/ to models/", MODEL_FILES.len());
    Ok(())
}

/// Runs one step, narrating it, and judges the outcome.
fn perform(outpost: &Path, demo_dir: &Path, fleet: &mut Fleet, step: Step) -> Row {
    println!();
    let (outcome, reason) = match &step.action {
        Action::Outpost(args) => run_outpost(outpost, demo_dir, fleet, args),
        Action::Fleet(action) => {
            println!("  # {}", action.describe());
            (fleet.perform(*action), None)
        }
        Action::File(action) => {
            println!("  # {}", describe(action));
            match file_action(demo_dir, action) {
                Ok(note) => {
                    print_indented(&note);
                    (Outcome::Done, None)
                }
                Err(error) => (Outcome::Error(format!("{error:#}")), None),
            }
        }
    };
    let verdict = judge(step.expect, &outcome, reason.as_deref());
    match (&verdict, &outcome) {
        // The reason is the last line of the output printed just above.
        (Ok(()), Outcome::Exited(1)) => println!("  ✓ refused (exit 1), as it must be"),
        (Ok(()), _) => println!("  ✓ {outcome}"),
        (Err(problem), _) => println!("  ✗ {problem}"),
    }
    Row {
        step: step.label,
        expected: step.expect.to_string(),
        got: outcome.brief(),
        ok: verdict.is_ok(),
    }
}

/// Runs the CLI, printing the command line and then its output indented; returns the outcome
/// and the reason it gave.
fn run_outpost(
    outpost: &Path,
    demo_dir: &Path,
    fleet: &Fleet,
    args: &[String],
) -> (Outcome, Option<String>) {
    println!("  $ {}", command_lines(args, 96));
    let mut missing: Vec<String> = input_files(args)
        .into_iter()
        .filter(|file| !demo_dir.join(file).exists())
        .map(str::to_string)
        .collect();
    let env = fleet.cli_env();
    if uses_api(args) && env.is_none() {
        missing.push("the server and its admin token".into());
    }
    if !missing.is_empty() {
        return (Outcome::NotRun { missing }, None);
    }
    let mut command = Command::new(outpost);
    command.args(args).current_dir(demo_dir).env(PASSPHRASE.0, PASSPHRASE.1);
    if uses_api(args)
        && let Some(env) = env
    {
        command.envs(env);
    }
    match run_captured(&mut command, STEP_TIME_LIMIT) {
        Ok(captured) => {
            print_indented(&captured.stdout);
            print_indented(&captured.stderr);
            let outcome = match captured.code {
                _ if captured.timed_out => Outcome::TimedOut,
                Some(code) => Outcome::Exited(code),
                None => Outcome::Killed,
            };
            (outcome, reason_of(&captured))
        }
        Err(error) => (Outcome::Error(format!("{error:#}")), None),
    }
}

/// Whether a CLI command talks to the server (and so needs `OUTPOST_SERVER` and
/// `OUTPOST_TOKEN`).
fn uses_api(args: &[String]) -> bool {
    match args.first().map(String::as_str) {
        Some("model" | "devices" | "users" | "tokens" | "assign" | "broker-config" | "rollout") => {
            true
        }
        // `outpost audit verify` works offline on an export; the rest asks the server.
        Some("audit") => args.get(1).is_some_and(|sub| sub != "verify"),
        // `outpost drift` on CSV files is local; its subcommands ask the server.
        Some("drift") => args.get(1).is_some_and(|sub| !sub.starts_with('-')),
        _ => false,
    }
}

fn describe(action: &FileAction) -> String {
    match action {
        FileAction::Exist(files) => {
            format!("check that {} files exist: {}", files.len(), files.join(" "))
        }
        FileAction::Copy { from, to } => format!("cp {from} {to}"),
        FileAction::Tamper { from, to, how: Tampering::ByteInsideFile(file) } => {
            format!(
                "copy {from} to {to}, flipping one bit in the middle of {file}'s bytes inside it"
            )
        }
        FileAction::Tamper { from, to, how: Tampering::Base64After(text) } => {
            format!(
                "copy {from} to {to}, changing one base64 character of the {text}… string \
                 (a signed payload)"
            )
        }
        FileAction::RewriteCopy { from, to, files, find, replace } => format!(
            "copy {from}/ to {to}/, rewriting the first {find} as {replace} in {}",
            files.join(" and ")
        ),
    }
}

/// Performs a file action of the demo itself; returns a note on what it did.
fn file_action(demo_dir: &Path, action: &FileAction) -> Result<String> {
    match action {
        FileAction::Exist(files) => {
            let missing: Vec<&str> = files
                .iter()
                .filter(|file| !demo_dir.join(file).is_file())
                .map(String::as_str)
                .collect();
            if missing.is_empty() {
                Ok("all present".into())
            } else {
                bail!("missing: {}", missing.join(" "))
            }
        }
        FileAction::Copy { from, to } => {
            std::fs::copy(demo_dir.join(from), demo_dir.join(to))
                .with_context(|| format!("copying {from}"))?;
            Ok(String::new())
        }
        FileAction::Tamper { from, to, how } => {
            let mut bytes =
                std::fs::read(demo_dir.join(from)).with_context(|| format!("reading {from}"))?;
            let offset = match how {
                Tampering::ByteInsideFile(file) => {
                    let needle = std::fs::read(demo_dir.join(file))
                        .with_context(|| format!("reading {file}"))?;
                    tamper::flip_byte_inside(&mut bytes, &needle).with_context(|| {
                        format!("{from} is not an uncompressed tar containing {file}")
                    })?
                }
                Tampering::Base64After(text) => {
                    tamper::flip_base64_char_after(&mut bytes, text.as_bytes()).with_context(
                        || format!("looking for manifest.dsse.json's payload in {from}"),
                    )?
                }
            };
            std::fs::write(demo_dir.join(to), &bytes).with_context(|| format!("writing {to}"))?;
            Ok(format!("changed the byte at offset {offset} of {}", bytes.len()))
        }
        FileAction::RewriteCopy { from, to, files, find, replace } => {
            let (source, target) = (demo_dir.join(from), demo_dir.join(to));
            if target.exists() {
                std::fs::remove_dir_all(&target).with_context(|| format!("removing {to}"))?;
            }
            std::fs::create_dir_all(&target).with_context(|| format!("creating {to}"))?;
            for entry in std::fs::read_dir(&source).with_context(|| format!("reading {from}"))? {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    std::fs::copy(entry.path(), target.join(entry.file_name()))
                        .with_context(|| format!("copying {}", entry.path().display()))?;
                }
            }
            let mut lines = Vec::new();
            for file in *files {
                let path = target.join(file);
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {to}/{file}"))?;
                let Some(offset) = text.find(find) else {
                    bail!("{from}/{file} has no {find}");
                };
                let line = text[..offset].lines().count().max(1);
                std::fs::write(&path, text.replacen(find, replace, 1))
                    .with_context(|| format!("writing {to}/{file}"))?;
                lines.push(format!("{file} line {line}"));
            }
            Ok(format!("rewrote {}", lines.join(", ")))
        }
    }
}

/// `outpost ARGS` as a shell command, broken with ` \` continuations before lines get longer
/// than `width`; an option stays on the same line as its value.
fn command_lines(args: &[String], width: usize) -> String {
    let mut units: Vec<String> = vec!["outpost".to_string()];
    let mut words = args.iter().map(|arg| shell_quote(arg)).peekable();
    while let Some(word) = words.next() {
        let takes_value =
            word.starts_with("--") && words.peek().is_some_and(|next| !next.starts_with("--"));
        match words.next_if(|_| takes_value) {
            Some(value) => units.push(format!("{word} {value}")),
            None => units.push(word),
        }
    }
    let mut lines: Vec<String> = Vec::new();
    for unit in units {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + unit.chars().count() + 2 <= width => {
                line.push(' ');
                line.push_str(&unit);
            }
            _ => lines.push(unit),
        }
    }
    lines.join(" \\\n        ")
}

/// A chapter heading: the title in a rule of fixed width.
fn heading(title: &str) -> String {
    format!("━━ {title} {}", "━".repeat(60usize.saturating_sub(title.chars().count())))
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("      {line}");
    }
}

/// Collapses the whitespace of a multi-line string literal into single spaces.
fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Wraps `text` at word boundaries to lines of at most `width` characters (longer words stay
/// whole).
fn wrap(text: &str, width: usize) -> String {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines.join("\n")
}

/// The summary: step, expected, got, and a mark, in aligned columns.
fn summary_table(rows: &[Row]) -> String {
    let header = ("step", "expected", "got");
    let step_width =
        rows.iter().map(|row| row.step.chars().count()).chain([header.0.len()]).max().unwrap_or(0);
    let expected_width = rows
        .iter()
        .map(|row| row.expected.chars().count())
        .chain([header.1.len()])
        .max()
        .unwrap_or(0);
    let mut table =
        format!("  {:step_width$}  {:expected_width$}  {}\n", header.0, header.1, header.2);
    for row in rows {
        let mark = if row.ok { "✓" } else { "✗ FAILED" };
        table.push_str(&format!(
            "  {:step_width$}  {:expected_width$}  {}  {mark}\n",
            row.step, row.expected, row.got
        ));
    }
    let passed = rows.iter().filter(|row| row.ok).count();
    table.push_str(&format!("  {passed} of {} as expected\n", rows.len()));
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(stdout: &str, stderr: &str) -> Captured {
        Captured { code: Some(1), stdout: stdout.into(), stderr: stderr.into(), timed_out: false }
    }

    #[test]
    fn judging_outcomes() {
        let reason = Some("error: too few approvals: 1 of 2");
        let cases: &[(Expect, Outcome, Option<&str>, bool)] = &[
            (ACCEPTED, Outcome::Exited(0), None, true),
            (ACCEPTED, Outcome::Exited(1), reason, false),
            (REFUSED, Outcome::Exited(1), reason, true),
            (REFUSED, Outcome::Exited(1), None, false),
            (REFUSED, Outcome::Exited(0), None, false),
            // A crash (a panic exits 101) is not a refusal.
            (REFUSED, Outcome::Exited(101), reason, false),
            (REFUSED, Outcome::TimedOut, None, false),
            (REFUSED, Outcome::Killed, None, false),
            (Expect::Either, Outcome::Exited(0), None, true),
            (Expect::Either, Outcome::Exited(1), reason, true),
            (Expect::Either, Outcome::Exited(2), reason, false),
            (Expect::Done, Outcome::Done, None, true),
            (Expect::Done, Outcome::Error("missing: keys/x".into()), None, false),
            (Expect::Holds("4 online"), Outcome::Held("4 online after 1 s".into()), None, true),
            (Expect::Holds("exits 0"), Outcome::Error("exit status: 1".into()), None, false),
            (Expect::Holds("exits 0"), Outcome::NotRun { missing: vec![] }, None, false),
        ];
        for (expect, outcome, reason, ok) in cases {
            assert_eq!(judge(*expect, outcome, *reason).is_ok(), *ok, "{expect} vs {outcome}");
        }
        assert_eq!(
            judge(REFUSED, &Outcome::Exited(0), None),
            Err("expected exit 1 (refused), got exit 0".to_string())
        );
    }

    #[test]
    fn the_reason_is_the_last_line_said() {
        assert_eq!(
            reason_of(&captured("", "warning\nerror: bad signature\n\n")).as_deref(),
            Some("error: bad signature")
        );
        assert_eq!(
            reason_of(&captured("refused: not in cohort\n", "")).as_deref(),
            Some("refused: not in cohort")
        );
        assert_eq!(reason_of(&captured(" \n", "\n")), None);
    }

    #[test]
    fn the_story_is_well_formed() {
        let chapters: Vec<Chapter> = chapters().into_iter().chain(fleet_chapters()).collect();
        let steps: Vec<&Step> = chapters.iter().flat_map(|chapter| &chapter.steps).collect();
        assert!(steps.len() > 40);
        for step in &steps {
            match &step.action {
                Action::Outpost(args) => {
                    assert!(
                        matches!(step.expect, Expect::Exit(_) | Expect::Either),
                        "{}",
                        step.label
                    );
                    assert!(
                        args.iter()
                            .all(|arg| !arg.is_empty() && !arg.contains(char::is_whitespace))
                    );
                }
                Action::File(_) => assert_eq!(step.expect, Expect::Done, "{}", step.label),
                Action::Fleet(_) => {
                    assert!(matches!(step.expect, Expect::Holds(_)), "{}", step.label);
                }
            }
        }
        // Every model file a command names is copied into the demo folder.
        for step in &steps {
            if let Action::Outpost(args) = &step.action {
                for arg in args.iter().filter_map(|arg| arg.strip_prefix("models/")) {
                    assert!(MODEL_FILES.contains(&arg), "{arg} is used but not copied");
                }
            }
        }
        // Each refusal the brief names is in the story, the tampered update plan, the drift
        // check that fails on berlin-2, a rollout started with too few approvals, a
        // rewritten audit record and removing the last admin.
        let refusals = steps.iter().filter(|step| step.expect == REFUSED).count();
        assert_eq!(refusals, 16);
        // The fleet starts before it is used and is stopped at the end.
        let fleet_actions: Vec<FleetAction> = steps
            .iter()
            .filter_map(|step| match step.action {
                Action::Fleet(action) => Some(action),
                _ => None,
            })
            .collect();
        let position = |wanted: FleetAction| {
            fleet_actions.iter().position(|action| *action == wanted).expect("in the story")
        };
        assert!(position(FleetAction::StartServer) < position(FleetAction::BootstrapAdmin));
        assert!(position(FleetAction::WaitOnline) < position(FleetAction::Traffic));
        assert_eq!(fleet_actions.last(), Some(&FleetAction::StopServer));
        for index in 0..DEVICES.len() {
            assert!(
                position(FleetAction::Provision(index)) < position(FleetAction::StartAgent(index))
            );
        }
    }

    #[test]
    fn tampering_a_bundle_like_file_changes_one_byte() -> Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("models"))?;
        std::fs::write(dir.path().join("models/m.onnx"), b"ONNX-MODEL-BYTES")?;
        let bundle: &[u8] = b"manifest.dsse.json\0\0{\"payloadType\":\"x\",\
            \"payload\":\"eyJhIjoxMjM0NX0=\"}\0model.onnx\0ONNX-MODEL-BYTES\0\0";
        std::fs::write(dir.path().join("b.bundle"), bundle)?;
        for how in
            [Tampering::ByteInsideFile("models/m.onnx"), Tampering::Base64After("\"payload\":\"")]
        {
            file_action(dir.path(), &FileAction::Tamper { from: "b.bundle", to: "t.bundle", how })?;
            let tampered = std::fs::read(dir.path().join("t.bundle"))?;
            assert_eq!(tampered.len(), bundle.len());
            assert_eq!(tampered.iter().zip(bundle).filter(|(a, b)| a != b).count(), 1);
        }
        Ok(())
    }

    #[test]
    fn the_summary_lines_up() {
        let rows = vec![
            Row {
                step: "verify signed bundle".into(),
                expected: "exit 0".into(),
                got: "exit 0".into(),
                ok: true,
            },
            Row {
                step: "verify: alice + ci".into(),
                expected: "exit 1 (refused)".into(),
                got: "exit 0".into(),
                ok: false,
            },
        ];
        assert_eq!(
            summary_table(&rows),
            "  step                  expected          got\n\
             \x20 verify signed bundle  exit 0            exit 0  ✓\n\
             \x20 verify: alice + ci    exit 1 (refused)  exit 0  ✗ FAILED\n\
             \x20 1 of 2 as expected\n"
        );
    }

    #[test]
    fn input_files_are_the_files_read_not_the_ones_written() {
        let args: Vec<String> =
            "bundle create --model models/m.onnx --version 1.0.0 --out keys/x.bundle \
             --golden g.json"
                .split_whitespace()
                .map(str::to_string)
                .collect();
        assert_eq!(input_files(&args), ["models/m.onnx", "g.json"]);
        let sign: Vec<String> = ["plan", "sign", "--key", "keys/a.key.json", "rollout.plan"]
            .map(str::to_string)
            .to_vec();
        assert_eq!(input_files(&sign), ["keys/a.key.json", "rollout.plan"]);
    }

    #[test]
    fn long_commands_break_between_options() {
        let args: Vec<String> =
            "plan verify --trust root.json rollout.plan --device-tags site=paris"
                .split_whitespace()
                .map(str::to_string)
                .collect();
        assert_eq!(
            command_lines(&args, 100),
            "outpost plan verify --trust root.json rollout.plan --device-tags site=paris"
        );
        assert_eq!(
            command_lines(&args, 40),
            "outpost plan verify --trust root.json \\\n        \
             rollout.plan --device-tags site=paris"
        );
    }

    #[test]
    fn wrapping_keeps_words_and_width() {
        assert_eq!(wrap(&squeeze("one two\n   three four"), 9), "one two\nthree\nfour");
        assert_eq!(wrap("unbreakablewords", 4), "unbreakablewords");
    }
}
