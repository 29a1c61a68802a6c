//! `outpost broker-config mosquitto`: a Mosquitto configuration for the fleet, with its
//! certificates from the fleet CA, through the API.
//!
//! The broker's key and each control instance's key are generated here; the server signs only
//! CSRs (`POST /v1/broker/certificates`). Written into `--out`:
//! - `mosquitto.conf`: a TLS listener that requires a client certificate from the fleet CA and
//!   takes its CN as the user name (and client id), no anonymous clients, the ACL file;
//! - `acl`: per-device patterns (a device publishes only its own hello/state/stats/events/fetch/
//!   samples and reads only its own assign/chunk/sampling) and one block per control instance;
//! - `ca.pem`, `broker.pem`, `broker.key` (0600), `crl.pem` (the CA's revocation list, renewed
//!   with `outpost broker-config crl` after `outpost devices revoke`);
//! - per control instance: `control-<name>.pem`, `control-<name>.key` (0600) and
//!   `control-<name>.toml`, the `[broker]` section for that instance's `control.toml`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use outpost_shared::wire::{Channel, Direction, TOPIC_PREFIX};
use serde_json::json;

use super::devices::toml_string;
use super::remote::ServerArgs;
use crate::ca::{CONTROL_CN_PREFIX, Identity};

#[derive(Debug, clap::Subcommand)]
pub enum BrokerConfigCommand {
    /// Mosquitto 2: TLS listener, certificate identity as user name, per-device ACLs.
    Mosquitto(MosquittoArgs),
    /// The fleet CA's current revocation list (PEM), for the broker's `crlfile`.
    Crl {
        #[command(flatten)]
        server: ServerArgs,
        /// The file to write (replaced atomically), e.g. the crl.pem beside mosquitto.conf.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Arguments of `outpost broker-config mosquitto`.
#[derive(Debug, clap::Args)]
pub struct MosquittoArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Directory to write the configuration and certificates into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Host name or IP address devices and the control use to reach the broker; the broker's
    /// certificate names each (repeat).
    #[arg(long = "host", required = true)]
    pub hosts: Vec<String>,
    /// Port of the TLS listener.
    #[arg(long, default_value_t = 8883)]
    pub port: u16,
    /// Address the listener binds to (default: every address).
    #[arg(long)]
    pub bind: Option<String>,
    /// Name of a control instance that connects to the broker (repeat for several `outpost
    /// serve` on one database: each needs its own certificate, as the broker makes the
    /// certificate's name the client id).
    #[arg(long = "control", default_value = "main")]
    pub controls: Vec<String>,
    /// Where these files will be on the hosts that use them; the configurations name them
    /// there (default: --out, made absolute).
    #[arg(long)]
    pub install_dir: Option<PathBuf>,
    /// Days the certificates are valid (default: five years).
    #[arg(long)]
    pub valid_days: Option<u32>,
    /// Overwrite files in --out (otherwise an existing broker.key is refused).
    #[arg(long)]
    pub force: bool,
}

pub fn run(command: BrokerConfigCommand) -> Result<()> {
    match command {
        BrokerConfigCommand::Mosquitto(args) => mosquitto(args),
        BrokerConfigCommand::Crl { server, out } => {
            let (crl, revoked) = revocation_list(&server.client()?)?;
            crate::files::write_atomic(&out, crl.as_bytes(), false)?;
            println!(
                "wrote the revocation list ({revoked} revoked certificate(s)) to {}; restart \
                 the broker to load it",
                out.display()
            );
            Ok(())
        }
    }
}

/// The CA's revocation list (PEM) and how many certificates it names.
fn revocation_list(client: &crate::api::client::ApiClient) -> Result<(String, u64)> {
    let answer = client.get_json("/v1/ca/crl", &[]).context("fetching the revocation list")?;
    let crl = answer["crl_pem"].as_str().context("the answer has no revocation list")?;
    Ok((crl.to_string(), answer["revoked"].as_u64().unwrap_or(0)))
}

/// Where a generated configuration finds its files.
#[derive(Debug, Clone)]
pub struct Layout {
    pub install_dir: PathBuf,
    pub port: u16,
    pub bind: Option<String>,
    pub controls: Vec<String>,
}

impl Layout {
    fn file(&self, name: &str) -> String {
        self.install_dir.join(name).display().to_string()
    }
}

/// `mosquitto.conf`.
pub fn mosquitto_conf(layout: &Layout) -> String {
    let listener = match &layout.bind {
        Some(address) => format!("listener {} {address}", layout.port),
        None => format!("listener {}", layout.port),
    };
    format!(
        "# Mosquitto 2 configuration for an Outpost fleet, written by `outpost broker-config \
         mosquitto`.\n\
         # Every client proves who it is with a certificate from the fleet CA. The certificate's\n\
         # CN becomes the MQTT user name and client id (a device's id, or\n\
         # {CONTROL_CN_PREFIX}<instance> for the control), and the ACL file pins each name to\n\
         # its topics. Key files must be readable by the user mosquitto runs as, and nobody else.\n\
         # Add persistence (persistence true, persistence_location ...) and logging as needed.\n\
         \n\
         per_listener_settings false\n\
         allow_anonymous false\n\
         acl_file {acl}\n\
         # Devices drop connections carrying packets over 2 MiB; never send them one.\n\
         max_packet_size 2097152\n\
         # A control instance that is down (restarting) keeps its share of the statistics in\n\
         # its persistent session until it is back. The default of 1000 queued messages would\n\
         # silently drop windows of a large fleet: size this to the windows the fleet sends\n\
         # while an instance may be away (devices x windows per minute x minutes).\n\
         max_queued_messages 1000000\n\
         max_inflight_messages 1000\n\
         \n\
         {listener}\n\
         protocol mqtt\n\
         cafile {ca}\n\
         # Certificates the fleet CA revoked (`outpost broker-config crl` renews it).\n\
         crlfile {crl}\n\
         certfile {cert}\n\
         keyfile {key}\n\
         require_certificate true\n\
         use_identity_as_username true\n\
         # One session per identity: nobody can take over another device's (or the control's)\n\
         # session by choosing its client id.\n\
         use_username_as_clientid true\n",
        acl = layout.file("acl"),
        ca = layout.file("ca.pem"),
        crl = layout.file("crl.pem"),
        cert = layout.file("broker.pem"),
        key = layout.file("broker.key"),
    )
}

/// The ACL file: device patterns (`%u` is the certificate's CN, the device id), then one block
/// per control instance.
pub fn acl_file(controls: &[String]) -> String {
    let mut text = String::from(
        "# Outpost ACL, written by `outpost broker-config mosquitto`. Clients are named by their\n\
         # certificate's CN. A device publishes only its own device -> control topics and reads\n\
         # only its own control -> device topics; anything else is dropped by the broker.\n",
    );
    for channel in Channel::ALL {
        let access = match channel.direction() {
            Direction::DeviceToControl => "write",
            Direction::ControlToDevice => "read",
        };
        text.push_str(&format!("pattern {access} {TOPIC_PREFIX}/%u/{channel}\n"));
    }
    for control in controls {
        text.push_str(&format!(
            "\n# Control instance `{control}`: reads every device's reports and requests (also\n\
             # through $share/ subscriptions), writes assignments and artifact chunks.\n\
             user {CONTROL_CN_PREFIX}{control}\n"
        ));
        for channel in Channel::ALL {
            let access = match channel.direction() {
                Direction::DeviceToControl => "read",
                Direction::ControlToDevice => "write",
            };
            text.push_str(&format!("topic {access} {TOPIC_PREFIX}/+/{channel}\n"));
        }
        // Drift alerts and retraining requests for other systems (give their consumers `read`).
        for topic in [crate::fleet_drift::ALERT_TOPIC, crate::fleet_drift::RETRAIN_TOPIC] {
            text.push_str(&format!("topic write {topic}\n"));
        }
    }
    text
}

/// The `[broker]` section of one control instance's `control.toml`.
pub fn control_snippet(layout: &Layout, control: &str, host: &str) -> String {
    format!(
        "# The [broker] section of control instance `{control}`'s control.toml, written by\n\
         # `outpost broker-config mosquitto`. The broker names this client by its certificate\n\
         # ({CONTROL_CN_PREFIX}{control}), so client_id is that name: a persistent session.\n\
         [broker]\n\
         url = {url}\n\
         client_id = {client_id}\n\
         ca_file = {ca}\n\
         client_cert = {cert}\n\
         client_key = {key}\n",
        url = toml_string(&format!("mqtts://{}:{}", bracket_ipv6(host), layout.port)),
        client_id = toml_string(&format!("{CONTROL_CN_PREFIX}{control}")),
        ca = toml_string(&layout.file("ca.pem")),
        cert = toml_string(&layout.file(&format!("control-{control}.pem"))),
        key = toml_string(&layout.file(&format!("control-{control}.key"))),
    )
}

fn bracket_ipv6(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_string() }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir().context("reading the current directory")?.join(path))
}

fn mosquitto(args: MosquittoArgs) -> Result<()> {
    // Check every name before anything is generated or sent.
    Identity::broker(&args.hosts).context("--host")?;
    for control in &args.controls {
        Identity::control(control).context("--control")?;
    }
    let mut controls = args.controls.clone();
    controls.sort();
    controls.dedup();
    let broker_key_path = args.out.join("broker.key");
    if broker_key_path.exists() && !args.force {
        bail!(
            "{} exists: this directory holds a broker configuration already (use another \
             --out, or --force)",
            broker_key_path.display()
        );
    }
    let layout = Layout {
        install_dir: match &args.install_dir {
            Some(dir) => dir.clone(),
            None => absolute(&args.out)?,
        },
        port: args.port,
        bind: args.bind.clone(),
        controls: controls.clone(),
    };
    let client = args.server.client()?;
    let issue = |body: serde_json::Value, what: &str| -> Result<(String, String)> {
        let answer = client
            .post_json("/v1/broker/certificates", &body)
            .with_context(|| format!("issuing the {what} certificate"))?;
        let certificate =
            answer["certificate_pem"].as_str().context("the answer has no certificate")?;
        let ca = answer["ca_certificate_pem"].as_str().context("the answer has no CA")?;
        Ok((certificate.to_string(), ca.to_string()))
    };
    let with_validity = |mut body: serde_json::Value| {
        if let Some(days) = args.valid_days {
            body["valid_days"] = json!(days);
        }
        body
    };

    let (broker_key, broker_csr) = crate::ca::new_key_and_csr(&args.hosts[0])?;
    let (broker_certificate, ca) = issue(
        with_validity(json!({ "kind": "broker", "hosts": args.hosts, "csr_pem": broker_csr })),
        "broker",
    )?;
    let mut control_files = Vec::new();
    for control in &controls {
        let (key, csr) = crate::ca::new_key_and_csr(&format!("{CONTROL_CN_PREFIX}{control}"))?;
        let (certificate, _) = issue(
            with_validity(json!({ "kind": "control", "instance": control, "csr_pem": csr })),
            &format!("control {control}"),
        )?;
        control_files.push((control.clone(), key, certificate));
    }

    let (crl, _) = revocation_list(&client)?;

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let write = |name: &str, bytes: &[u8], private: bool| {
        crate::files::write_atomic(&args.out.join(name), bytes, private)
    };
    write("ca.pem", ca.as_bytes(), false)?;
    write("crl.pem", crl.as_bytes(), false)?;
    write("broker.key", broker_key.as_bytes(), true)?;
    write("broker.pem", broker_certificate.as_bytes(), false)?;
    for (control, key, certificate) in &control_files {
        write(&format!("control-{control}.key"), key.as_bytes(), true)?;
        write(&format!("control-{control}.pem"), certificate.as_bytes(), false)?;
        write(
            &format!("control-{control}.toml"),
            control_snippet(&layout, control, &args.hosts[0]).as_bytes(),
            false,
        )?;
    }
    write("acl", acl_file(&controls).as_bytes(), false)?;
    write("mosquitto.conf", mosquitto_conf(&layout).as_bytes(), false)?;

    println!(
        "wrote a Mosquitto configuration for {} (port {}) into {}:",
        args.hosts.join(", "),
        args.port,
        args.out.display()
    );
    println!("  mosquitto.conf, acl, ca.pem, crl.pem, broker.pem, broker.key (private)");
    for control in &controls {
        println!(
            "  control-{control}.pem, control-{control}.key (private), control-{control}.toml \
             ([broker] section of that instance's control.toml)"
        );
    }
    println!(
        "  the configurations name the files under {}; run: mosquitto -c {}",
        layout.install_dir.display(),
        layout.file("mosquitto.conf")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acl_pins_devices_to_their_own_topics() {
        let acl = acl_file(&["main".into()]);
        for line in [
            "pattern write outpost/v1/%u/hello",
            "pattern write outpost/v1/%u/state",
            "pattern write outpost/v1/%u/stats",
            "pattern write outpost/v1/%u/events",
            "pattern write outpost/v1/%u/fetch",
            "pattern read outpost/v1/%u/assign",
            "pattern read outpost/v1/%u/chunk",
            // Sampled inputs: a device uploads only its own, and reads only its own requests.
            "pattern write outpost/v1/%u/samples",
            "pattern read outpost/v1/%u/sampling",
            "topic read outpost/v1/+/samples",
            "topic write outpost/v1/+/sampling",
            "user outpost-control:main",
            "topic read outpost/v1/+/stats",
            "topic write outpost/v1/+/assign",
            "topic write outpost/v1/+/chunk",
            "topic write outpost/v1/alerts/drift",
            "topic write outpost/v1/retrain/requests",
        ] {
            assert!(acl.lines().any(|l| l == line), "{line} missing from\n{acl}");
        }
        assert!(!acl.contains("pattern write outpost/v1/%u/assign"));
        assert!(!acl.contains("pattern write outpost/v1/%u/sampling"));
        assert!(!acl.contains("pattern read outpost/v1/%u/samples"));
        assert!(!acl.contains("readwrite"));
        assert!(
            !acl.lines().any(|line| !line.starts_with('#') && line.contains('#')),
            "no rule grants a multi-level wildcard"
        );
    }

    #[test]
    fn the_listener_requires_certificates_and_names_the_files() {
        let layout = Layout {
            install_dir: "/etc/mosquitto/outpost".into(),
            port: 8883,
            bind: Some("0.0.0.0".into()),
            controls: vec!["main".into()],
        };
        let conf = mosquitto_conf(&layout);
        for line in [
            "allow_anonymous false",
            "listener 8883 0.0.0.0",
            "require_certificate true",
            "use_identity_as_username true",
            "use_username_as_clientid true",
            "cafile /etc/mosquitto/outpost/ca.pem",
            "crlfile /etc/mosquitto/outpost/crl.pem",
            "keyfile /etc/mosquitto/outpost/broker.key",
            "acl_file /etc/mosquitto/outpost/acl",
            "max_queued_messages 1000000",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line} missing from\n{conf}");
        }
        let snippet = control_snippet(&layout, "main", "broker.example");
        let parsed: toml::Table = snippet.parse().expect("TOML");
        assert_eq!(parsed["broker"]["url"].as_str(), Some("mqtts://broker.example:8883"));
        assert_eq!(parsed["broker"]["client_id"].as_str(), Some("outpost-control:main"));
    }
}
