//! `outpost devices list`: the fleet inventory; `outpost devices enroll`: a device's key and
//! certificate from the fleet CA; `outpost devices enrolled`: the enrolled devices; `outpost
//! devices revoke`: a device's certificates onto the CA's revocation list. All through the API.
//!
//! `enroll` generates the device's private key here, sends only a CSR (`POST /v1/enrollments`)
//! and writes into `--out` what the agent needs: `device.key` (mode 0600), `device.pem`,
//! `ca.pem`, `agent.toml` (device id, tags, broker and `[mqtt.tls]` pointing at the files where
//! they will be on the device, `--device-dir`), and `root.json` when `--trust-root` is given
//! (for `outpost-agent provision --trust root.json`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use outpost_shared::wire::DeviceId;
use serde_json::json;

use super::remote::{ServerArgs, print_table, text, time_text};

#[derive(Debug, clap::Subcommand)]
pub enum DevicesCommand {
    /// Devices with their tags, presence, last contact and models.
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// Tag selector, e.g. `site=berlin,hw=rpi4`.
        #[arg(long)]
        selector: Option<String>,
        /// Only devices that are online.
        #[arg(long)]
        online: bool,
        /// Only devices whose active model is `NAME` or `NAME@VERSION`.
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Enroll a device: generate its key here, have the fleet CA certify it (CN = device id),
    /// record it with its tags, and write the agent's files into --out.
    Enroll(EnrollArgs),
    /// Every enrolled device with its certificate serial, fingerprint and expiry.
    Enrolled {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        json: bool,
    },
    /// Revoke every certificate of a device and remove its enrollment. The broker refuses it
    /// once it has the new revocation list (`outpost broker-config crl`).
    Revoke {
        #[command(flatten)]
        server: ServerArgs,
        /// The device id.
        #[arg(long)]
        id: String,
    },
}

/// Arguments of `outpost devices enroll`.
#[derive(Debug, clap::Args)]
pub struct EnrollArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The device id (1-64 characters of A-Z a-z 0-9 . _ -).
    #[arg(long)]
    pub id: String,
    /// Tags, e.g. `site=berlin,hw=rpi4`.
    #[arg(long, default_value = "")]
    pub tags: String,
    /// Directory to write the device's files into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// The broker the agent connects to, `mqtts://host[:port]`, for agent.toml.
    #[arg(long)]
    pub broker: Option<String>,
    /// Where these files will be on the device; agent.toml names them there.
    #[arg(long, default_value = "/etc/outpost")]
    pub device_dir: PathBuf,
    /// The fleet's trust root, checked and copied as root.json for `outpost-agent provision`.
    #[arg(long)]
    pub trust_root: Option<PathBuf>,
    /// Days the certificate is valid (default: five years).
    #[arg(long)]
    pub valid_days: Option<u32>,
    /// Re-enroll a device that is enrolled already: a new key and certificate, and its earlier
    /// certificates revoked (the broker refuses them once it has the new revocation list).
    #[arg(long)]
    pub replace: bool,
    /// Overwrite files in --out (otherwise an existing device.key is refused).
    #[arg(long)]
    pub force: bool,
}

pub fn run(command: DevicesCommand) -> Result<()> {
    match command {
        DevicesCommand::Enroll(args) => enroll(args),
        DevicesCommand::Revoke { server, id } => {
            let path = format!("/v1/enrollments/{}/revoke", super::remote::path_segment(&id));
            let answer = server
                .client()?
                .post_json(&path, &json!({}))
                .with_context(|| format!("revoking {id}"))?;
            let serials: Vec<&str> = answer["revoked_serials"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_str)
                .collect();
            println!(
                "revoked {id}: {}",
                if serials.is_empty() { "no valid certificate".into() } else { serials.join(", ") }
            );
            println!(
                "  the broker refuses it once it loads the new revocation list: \
                 outpost broker-config crl --out <the broker's crl.pem>, then restart the broker"
            );
            Ok(())
        }
        DevicesCommand::Enrolled { server, json } => {
            let answer = server.client()?.get_json("/v1/enrollments", &[])?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = answer["enrollments"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|enrollment| {
                    let tags = enrollment["tags"]
                        .as_object()
                        .map(|tags| {
                            tags.iter()
                                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    vec![
                        text(enrollment, "device_id"),
                        time_text(enrollment["enrolled_ms"].as_i64()),
                        time_text(enrollment["not_after_ms"].as_i64()),
                        text(enrollment, "serial"),
                        tags,
                    ]
                })
                .collect();
            print_table(&["DEVICE", "ENROLLED", "EXPIRES", "SERIAL", "TAGS"], &rows);
            Ok(())
        }
        DevicesCommand::List { server, selector, online, model, json } => {
            let mut query = Vec::new();
            if let Some(selector) = selector {
                query.push(("selector", selector));
            }
            if online {
                query.push(("online", "true".to_string()));
            }
            if let Some(model) = model {
                query.push(("model", model));
            }
            let answer = server.client()?.get_json("/v1/devices", &query)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = answer["devices"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|device| {
                    let model = &device["active_model"];
                    let model = if model.is_null() {
                        "-".to_string()
                    } else {
                        format!("{}@{}", text(model, "name"), text(model, "version"))
                    };
                    let tags = device["tags"]
                        .as_object()
                        .map(|tags| {
                            tags.iter()
                                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    vec![
                        text(device, "device_id"),
                        text(device, "presence"),
                        time_text(device["last_seen_ms"].as_i64()),
                        text(device, "arch"),
                        text(device, "agent_version"),
                        model,
                        tags,
                    ]
                })
                .collect();
            print_table(
                &["DEVICE", "PRESENCE", "LAST SEEN", "ARCH", "AGENT", "MODEL", "TAGS"],
                &rows,
            );
            Ok(())
        }
    }
}

/// `mqtts://host[:port]` → (host, port); the port defaults to 8883.
pub(super) fn parse_mqtts_url(url: &str) -> Result<(String, u16)> {
    let Some(rest) = url.strip_prefix("mqtts://") else {
        bail!("broker URL `{url}` must start with mqtts:// (devices authenticate with TLS)");
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') => (
            host,
            port.parse::<u16>().with_context(|| format!("`{port}` in `{url}` is not a port"))?,
        ),
        _ => (rest, 8883),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        bail!("broker URL `{url}` must be mqtts://host[:port]");
    }
    Ok((host.to_string(), port))
}

/// A TOML string literal.
pub(super) fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// The agent configuration for an enrolled device.
fn agent_config(
    device: &DeviceId,
    tags: &std::collections::BTreeMap<String, String>,
    broker: Option<&(String, u16)>,
    device_dir: &Path,
) -> String {
    let file = |name: &str| toml_string(&device_dir.join(name).display().to_string());
    let mut text = format!(
        "# outpost-agent configuration for device {device}, written by `outpost devices enroll`.\n\
         # Keys left out keep their defaults (`outpost-agent print-default-config`).\n\n\
         [device]\nid = {}\n\n[device.tags]\n",
        toml_string(device.as_str())
    );
    for (key, value) in tags {
        // Bare keys where TOML allows them; tag keys may also hold `.`, `/` and `:`.
        let bare = key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let key = if bare { key.clone() } else { toml_string(key) };
        text.push_str(&format!("{key} = {}\n", toml_string(value)));
    }
    text.push_str("\n[mqtt]\n");
    match broker {
        Some((host, port)) => {
            text.push_str(&format!("host = {}\nport = {port}\n", toml_string(host)));
        }
        None => text.push_str("# Set the broker: host = \"broker.example\" and port = 8883.\n"),
    }
    text.push_str(&format!(
        "\n# Mutual TLS: the broker is checked against the fleet CA, and the device proves its id\n\
         # with its certificate (CN = device id).\n\
         [mqtt.tls]\nca_file = {}\nclient_cert_file = {}\nclient_key_file = {}\n",
        file("ca.pem"),
        file("device.pem"),
        file("device.key"),
    ));
    text
}

fn enroll(args: EnrollArgs) -> Result<()> {
    let device = DeviceId::new(args.id.clone()).context("--id")?;
    let tags = outpost_shared::selector::parse_tags(&args.tags).context("--tags")?;
    let broker = args.broker.as_deref().map(parse_mqtts_url).transpose().context("--broker")?;
    let trust_root = match &args.trust_root {
        None => None,
        Some(path) => {
            let bytes = crate::files::read_limited(
                path,
                outpost_shared::dsse::MAX_ENVELOPE_BYTES as u64,
                "trust root",
            )?;
            outpost_shared::trust::verify_initial(&bytes, super::now())
                .with_context(|| format!("trust root {} refused", path.display()))?;
            Some(bytes)
        }
    };
    let key_path = args.out.join("device.key");
    if key_path.exists() && !args.force {
        bail!(
            "{} exists: this directory holds a device already (use another --out, or --force)",
            key_path.display()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let (key_pem, csr_pem) = crate::ca::new_key_and_csr(device.as_str())?;
    let mut body = json!({
        "device_id": device.as_str(),
        "tags": tags,
        "csr_pem": csr_pem,
        "replace": args.replace,
    });
    if let Some(days) = args.valid_days {
        body["valid_days"] = json!(days);
    }
    let answer = args
        .server
        .client()?
        .post_json("/v1/enrollments", &body)
        .with_context(|| format!("enrolling {device}"))?;
    let certificate =
        answer["certificate_pem"].as_str().context("the answer has no certificate")?;
    let ca = answer["ca_certificate_pem"].as_str().context("the answer has no CA certificate")?;

    let write = |name: &str, bytes: &[u8], private: bool| {
        crate::files::write_atomic(&args.out.join(name), bytes, private)
    };
    write("device.key", key_pem.as_bytes(), true)?;
    write("device.pem", certificate.as_bytes(), false)?;
    write("ca.pem", ca.as_bytes(), false)?;
    write(
        "agent.toml",
        agent_config(&device, &tags, broker.as_ref(), &args.device_dir).as_bytes(),
        false,
    )?;
    if let Some(bytes) = &trust_root {
        write("root.json", bytes, false)?;
    }
    let enrollment = &answer["enrollment"];
    println!(
        "enrolled {device}: certificate {} ({}), valid until {}",
        text(enrollment, "serial"),
        text(enrollment, "fingerprint"),
        time_text(enrollment["not_after_ms"].as_i64()),
    );
    println!(
        "  wrote {}: device.key (private), device.pem, ca.pem, agent.toml{}",
        args.out.display(),
        if trust_root.is_some() { ", root.json" } else { "" }
    );
    println!(
        "  copy them to {} on the device; agent.toml names them there",
        args.device_dir.display()
    );
    Ok(())
}
