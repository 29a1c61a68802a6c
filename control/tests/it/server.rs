//! `outpost serve` itself: the binary with a configuration file, the default configuration,
//! migrations on both backends giving the same schema, `/metrics`. Also the test support the
//! other server tests share: a [`Site`] (a server started in-process on port 0 with a fresh
//! SQLite file or a PostgreSQL started from its binaries), a [`Fleet`] of keys and signed
//! bundles made with the CLI, [`wait_until`], [`free_port`] and [`agent_binary`].

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use outpost_control::config::{self, ServerConfig};
use outpost_control::server::{self, RunningServer};
use outpost_control::store::users::UserRole;
use outpost_control::store::{Store, StoreOptions};
use outpost_tests::broker::Mosquitto;
use outpost_tests::postgres::Postgres;

/// Which database a [`Site`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A control server running in this process, with its own directory and database.
pub struct Site {
    pub runtime: tokio::runtime::Runtime,
    server: Option<RunningServer>,
    pub directory: tempfile::TempDir,
    pub admin_token: String,
    // Dropped after the server: the database and broker outlive their last connection.
    _postgres: Option<Postgres>,
    _mosquitto: Option<Mosquitto>,
}

/// Options for [`Site::start`].
#[derive(Default)]
pub struct SiteOptions {
    pub trust_root: Option<PathBuf>,
    pub max_bundle_bytes: Option<u64>,
    /// Use a real Mosquitto (external broker, shared subscriptions) instead of the embedded one.
    pub mosquitto: bool,
    /// More configuration as `OUTPOST__…` environment pairs, e.g. a short drift interval.
    pub environment: Vec<(String, String)>,
}

impl Site {
    pub fn start(backend: Backend, options: SiteOptions) -> Site {
        // `RUST_LOG=debug` shows the server's log in failing tests.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let directory = tempfile::tempdir().expect("tempdir");
        let postgres = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(Postgres::start().expect("start PostgreSQL")),
        };
        let mut environment = vec![
            ("OUTPOST__DATA_DIR".to_string(), directory.path().join("data").display().to_string()),
            ("OUTPOST__API__LISTEN".to_string(), "127.0.0.1:0".to_string()),
            ("OUTPOST__BROKER__EMBEDDED_LISTEN".to_string(), "127.0.0.1:0".to_string()),
        ];
        if let Some(postgres) = &postgres {
            environment.push(("OUTPOST__DATABASE__URL".into(), postgres.url()));
        }
        let mosquitto = options.mosquitto.then(|| Mosquitto::start().expect("start Mosquitto"));
        if let Some(mosquitto) = &mosquitto {
            environment.push((
                "OUTPOST__BROKER__URL".into(),
                format!("mqtt://{}:{}", mosquitto.host(), mosquitto.port()),
            ));
        }
        if let Some(root) = &options.trust_root {
            environment.push(("OUTPOST__TRUST__ROOT".into(), root.display().to_string()));
        }
        if let Some(limit) = options.max_bundle_bytes {
            environment.push(("OUTPOST__REGISTRY__MAX_BUNDLE_BYTES".into(), limit.to_string()));
        }
        environment.extend(options.environment.iter().cloned());
        let config: ServerConfig = config::load_from(None, &environment).expect("config");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = runtime
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(60), server::start(config)).await
            })
            .expect("server started within 60 s")
            .expect("server starts");
        let admin_token = runtime
            .block_on(server.store().create_user("root-admin", UserRole::Admin, "test"))
            .expect("admin user");
        Site {
            runtime,
            server: Some(server),
            directory,
            admin_token,
            _postgres: postgres,
            _mosquitto: mosquitto,
        }
    }

    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().expect("server running")
    }

    pub fn store(&self) -> &Store {
        self.server().store()
    }

    pub fn url(&self) -> &str {
        &self.server().api_url
    }

    /// A new user with `role`; returns its token.
    pub fn token_for(&self, name: &str, role: UserRole) -> String {
        self.runtime.block_on(self.store().create_user(name, role, "test")).expect("user")
    }

    /// Runs `outpost ARGS` against this server with `token`.
    pub fn outpost_as(&self, token: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(args)
            .current_dir(self.directory.path())
            .env("OUTPOST_SERVER", self.url())
            .env("OUTPOST_TOKEN", token)
            .output()
            .expect("run outpost")
    }

    /// Runs `outpost ARGS` as the admin and asserts success; returns stdout.
    pub fn outpost_ok(&self, args: &[&str]) -> String {
        let output = self.outpost_as(&self.admin_token, args);
        assert!(output.status.success(), "outpost {args:?} failed: {}", show(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `outpost ARGS` as the admin and asserts exit status 1; returns stderr.
    pub fn outpost_refused(&self, args: &[&str]) -> String {
        let output = self.outpost_as(&self.admin_token, args);
        assert_eq!(
            output.status.code(),
            Some(1),
            "outpost {args:?} should fail: {}",
            show(&output)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// `outpost ARGS --json` as the admin, parsed.
    pub fn outpost_json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_str(&self.outpost_ok(&args)).expect("JSON output")
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.runtime.block_on(server.shutdown());
        }
    }
}

pub fn show(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Polls `condition` until it holds or `timeout` passes (the test kit's waiting).
pub fn wait_until(what: &str, timeout: Duration, condition: impl FnMut() -> bool) {
    outpost_tests::wait::until(timeout, what, condition);
}

fn model(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/models")
        .join(name)
        .display()
        .to_string()
}

/// Keys, a trust root (`root.json`) and bundles made with the CLI in a temporary directory:
/// `good.bundle` (fraud@1.0.0, signed by publisher `ci`), `unsigned.bundle`, `mallory.bundle`
/// (signed by a publisher key the trust root does not list), `other.bundle` (a different bundle
/// also named fraud@1.0.0, signed by `ci`), `second.bundle` (fraud@2.0.0).
pub struct Fleet {
    pub directory: tempfile::TempDir,
}

impl Fleet {
    pub fn new() -> Fleet {
        let fleet = Fleet { directory: tempfile::tempdir().expect("tempdir") };
        for (name, role) in [
            ("root1", "root"),
            ("alice", "approver"),
            ("ci", "publisher"),
            ("mallory", "publisher"),
        ] {
            fleet.cli(&["keys", "generate", "--name", name, "--role", role, "--out", "keys"]);
        }
        fleet.cli(&[
            "trust",
            "init",
            "--root",
            "keys/root1.pub.json",
            "--root-threshold",
            "1",
            "--approver",
            "keys/alice.pub.json",
            "--approvals",
            "1",
            "--publisher",
            "keys/ci.pub.json",
            "--expires-in",
            "30",
            "--sign",
            "keys/root1.key.json",
            "--out",
            "root.json",
        ]);
        fleet.create("unsigned.bundle", "1.0.0", &[]);
        fleet.create("good.bundle", "1.0.0", &["--key", "keys/ci.key.json"]);
        fleet.create("other.bundle", "1.0.0", &["--key", "keys/ci.key.json", "--expires-in", "90"]);
        fleet.create("second.bundle", "2.0.0", &["--key", "keys/ci.key.json"]);
        fleet.create("mallory.bundle", "1.0.0", &["--key", "keys/mallory.key.json"]);
        fleet
    }

    fn create(&self, out: &str, version: &str, extra: &[&str]) {
        let mut args = vec![
            "bundle".to_string(),
            "create".into(),
            "--model".into(),
            model("mlp_classifier.onnx"),
            "--name".into(),
            "fraud".into(),
            "--version".into(),
            version.into(),
            "--baseline".into(),
            model("mlp_classifier.baseline.csv"),
            "--golden".into(),
            model("mlp_classifier.golden.json"),
            "--lineage".into(),
            model("mlp_classifier.lineage.json"),
            "--out".into(),
            out.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        self.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    fn cli(&self, args: &[&str]) {
        let output = Command::new(env!("CARGO_BIN_EXE_outpost"))
            .args(args)
            .current_dir(self.directory.path())
            .env("OUTPOST_PASSPHRASE", "test-passphrase")
            .output()
            .expect("run outpost");
        assert!(output.status.success(), "outpost {args:?}: {}", show(&output));
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.directory.path().join(name)
    }

    pub fn path_text(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

/// A free loopback port (bound and released: another process could take it meanwhile).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port()
}

/// `outpost-agent` next to `outpost` in the target directory, built if missing.
pub fn agent_binary() -> PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_outpost")).with_file_name("outpost-agent");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "outpost-agent", "--bin", "outpost-agent"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building outpost-agent");
    }
    path
}

#[test]
fn the_binary_serves_with_a_configuration_file_and_stops_on_kill() {
    let directory = tempfile::tempdir().expect("tempdir");
    let api_port = free_port();
    let config_file = directory.path().join("control.toml");
    std::fs::write(
        &config_file,
        format!(
            "data_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n[broker]\nembedded_listen = \"127.0.0.1:0\"\n",
            directory.path().join("state").display()
        ),
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["serve", "--config"])
        .arg(&config_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn outpost serve");
    let client = outpost_control::api::client::ApiClient::new(
        &format!("http://127.0.0.1:{api_port}"),
        None,
        None,
    )
    .expect("client");
    let mut answer = None;
    wait_until("the API to answer /health", Duration::from_secs(60), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("outpost serve exited early with {status}");
        }
        answer = client.get_json("/health", &[]).ok();
        answer.is_some()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(answer.expect("answer")["status"], "ok");
    assert!(
        directory.path().join("state/outpost.db").exists(),
        "SQLite file in the data directory"
    );
}

#[test]
fn print_default_config_prints_the_documented_defaults() {
    let output = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["serve", "print-default-config"])
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", show(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(text, config::DEFAULT_CONFIG);
    let reloaded = config::load_from(Some(("printed", &text)), &[]).expect("printed config loads");
    assert!(reloaded.database.url.is_none());
}

#[test]
fn a_bad_configuration_is_refused_with_the_key() {
    let directory = tempfile::tempdir().expect("tempdir");
    let file = directory.path().join("bad.toml");
    std::fs::write(&file, "[api]\nlisten = \"everywhere\"\n").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("api.listen"), "{}", show(&output));
}

fn schema(url: &str) -> Vec<(String, String)> {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = Store::connect(&StoreOptions {
            url: url.to_string(),
            max_connections: 2,
            acquire_timeout: Duration::from_secs(30),
        })
        .await
        .expect("connect and migrate");
        let columns = store.schema_columns().await.expect("schema");
        store.close().await;
        columns
    })
}

#[test]
fn both_backends_get_the_same_schema_and_migrations_run_once() {
    let directory = tempfile::tempdir().expect("tempdir");
    let sqlite_url = Store::sqlite_url_in(directory.path()).expect("url");
    let postgres = Postgres::start().expect("start PostgreSQL");
    let sqlite = schema(&sqlite_url);
    let postgres_columns = schema(&postgres.url());
    assert!(sqlite.iter().any(|(table, column)| table == "chunks" && column == "data"));
    assert_eq!(sqlite, postgres_columns, "the two migration sets must define the same schema");
    // A second start finds the migrations applied and changes nothing.
    assert_eq!(schema(&sqlite_url), sqlite);
    assert_eq!(schema(&postgres.url()), postgres_columns);
}

#[test]
fn metrics_are_prometheus_text_with_every_counter() {
    let site = Site::start(Backend::Sqlite, SiteOptions::default());
    let text = site.outpost_ok(&["users", "list"]);
    assert!(text.contains("root-admin"), "{text}");
    let client = outpost_control::api::client::ApiClient::new(
        site.url(),
        Some(site.admin_token.clone()),
        None,
    )
    .expect("client");
    let metrics = client.get_json("/metrics", &[]).expect("metrics");
    let metrics = metrics.as_str().expect("text");
    for name in [
        "outpost_windows_ingested_total 0",
        "outpost_windows_duplicate_total 0",
        "outpost_windows_rejected_total 0",
        "outpost_devices_online 0",
        "outpost_ingest_lag_seconds 0",
        "outpost_mqtt_messages_total{channel=\"hello\"} 0",
    ] {
        assert!(metrics.contains(name), "missing `{name}` in\n{metrics}");
    }
}

#[test]
fn the_api_serves_https_with_the_configured_certificate() {
    let directory = tempfile::tempdir().expect("tempdir");
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
        .expect("self-signed certificate");
    let certificate = directory.path().join("api.crt");
    let key = directory.path().join("api.key");
    std::fs::write(&certificate, certified.cert.pem()).expect("write certificate");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
    let environment = vec![
        ("OUTPOST__DATA_DIR".to_string(), directory.path().join("data").display().to_string()),
        ("OUTPOST__API__LISTEN".to_string(), "127.0.0.1:0".to_string()),
        ("OUTPOST__API__TLS_CERT".to_string(), certificate.display().to_string()),
        ("OUTPOST__API__TLS_KEY".to_string(), key.display().to_string()),
        ("OUTPOST__BROKER__EMBEDDED_LISTEN".to_string(), "127.0.0.1:0".to_string()),
    ];
    let config = config::load_from(None, &environment).expect("config");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let server = runtime.block_on(server::start(config)).expect("server starts");
    assert!(server.api_url.starts_with("https://127.0.0.1:"), "{}", server.api_url);

    let trusted = outpost_control::api::client::ApiClient::new(
        &server.api_url,
        None,
        Some(certificate.as_path()),
    )
    .expect("client");
    assert_eq!(trusted.get_json("/health", &[]).expect("health over TLS")["status"], "ok");
    // Without the CA the certificate is not trusted, and plain HTTP is not spoken.
    let untrusted =
        outpost_control::api::client::ApiClient::new(&server.api_url, None, None).expect("client");
    assert!(untrusted.get_json("/health", &[]).is_err());
    let plain = outpost_control::api::client::ApiClient::new(
        &server.api_url.replace("https://", "http://"),
        None,
        None,
    )
    .expect("client");
    assert!(plain.get_json("/health", &[]).is_err());
    runtime.block_on(server.shutdown());
}

#[test]
fn the_first_admin_is_made_through_the_database_and_later_users_through_the_api() {
    let directory = tempfile::tempdir().expect("tempdir");
    let config_file = directory.path().join("control.toml");
    let data_dir = directory.path().join("state");
    std::fs::write(&config_file, format!("data_dir = \"{}\"\n", data_dir.display()))
        .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["users", "add", "boss", "--role", "admin", "--config"])
        .arg(&config_file)
        .env_remove("OUTPOST_SERVER")
        .env_remove("OUTPOST_TOKEN")
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", show(&output));
    let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(token.starts_with("outpost_"), "only the token on stdout: {token}");
    let url = Store::sqlite_url_in(&data_dir).expect("url");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let user = runtime.block_on(async {
        let store = Store::connect(&StoreOptions {
            url,
            max_connections: 1,
            acquire_timeout: Duration::from_secs(30),
        })
        .await
        .expect("connect");
        let user = store.user_for_token(&token).await.expect("lookup").expect("known");
        store.close().await;
        user
    });
    assert_eq!((user.name.as_str(), user.role), ("boss", UserRole::Admin));
    let again = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["users", "add", "boss", "--role", "auditor", "--config"])
        .arg(&config_file)
        .output()
        .expect("run");
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"), "{}", show(&again));

    // Through the API: an admin makes an operator, who may not list users.
    let site = Site::start(Backend::Sqlite, SiteOptions::default());
    let operator_token = site.outpost_ok(&["users", "add", "olga", "--role", "operator"]);
    let operator_token = operator_token.trim();
    let denied = site.outpost_as(operator_token, &["users", "list"]);
    assert_eq!(denied.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(stderr.contains("(403)") && stderr.contains("role operator may not"), "{stderr}");
    let listed = site.outpost_ok(&["users", "list"]);
    assert!(listed.contains("olga") && listed.contains("operator"), "{listed}");
}
