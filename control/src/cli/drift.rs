//! `outpost drift`: exact drift metrics between two CSV files (a reference and a current
//! sample), per feature and for the dataset, as a table or JSON; and `outpost drift fleet`:
//! the server's drift of a model version per device or cohort, from ingested windows.
//!
//! Reading CSV and choosing columns lives here; every metric and verdict comes from
//! [`outpost_shared::drift`], the same code the server uses on windows.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail, ensure};
use clap::ValueEnum;
use outpost_shared::drift::{self, DatasetDrift, FeatureKind, FeatureMetrics, Thresholds, Verdict};

/// Compare a current sample with a reference sample, feature by feature; or (`fleet`) ask
/// the server for a model version's drift across the fleet.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct DriftArgs {
    #[command(subcommand)]
    pub command: Option<DriftCommand>,
    /// Reference CSV (training or baseline data) with a header row.
    #[arg(long, required = true)]
    pub reference: Option<PathBuf>,
    /// Current CSV with the same columns (extra columns are ignored).
    #[arg(long, required = true)]
    pub current: Option<PathBuf>,
    /// Columns to compare, comma separated (default: every column of the reference).
    #[arg(long, value_delimiter = ',')]
    pub features: Vec<String>,
    /// Columns to compare as categories even when every value is a number.
    #[arg(long, value_delimiter = ',')]
    pub categorical: Vec<String>,
    /// Reference-quantile bins for numeric columns (PSI and Jensen–Shannon).
    #[arg(long, default_value_t = drift::DEFAULT_BINS)]
    pub bins: usize,
    /// Thresholds file (TOML): defaults at the top level, `[features.NAME]` overrides.
    #[arg(long)]
    pub thresholds: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Exit with status 1 when the dataset verdict is at least this level.
    #[arg(long, value_enum)]
    pub fail_on: Option<FailOn>,
}

#[derive(Debug, clap::Subcommand)]
pub enum DriftCommand {
    /// Drift of a model version from the windows the fleet reported: every device (or cohort)
    /// with its verdict, or one device or cohort feature by feature.
    Fleet(FleetArgs),
    /// Drift alerts the server opened (open ones by default).
    Alerts {
        #[command(flatten)]
        server: crate::cli::remote::ServerArgs,
        /// `open`, `closed` or `all`.
        #[arg(long, default_value = "open", value_parser = ["open", "closed", "all"])]
        state: String,
        /// Only alerts of this model version (`NAME@VERSION` or `sha256:…`).
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge a drift alert (recorded with your user in the audit log).
    Ack(ReviewArgs),
    /// Mark a drift alert as expected: the shift is known and accepted.
    Expected(ReviewArgs),
    /// Write a drift report (JSON and a self-contained HTML page) for a model version and
    /// period; optionally request retraining.
    Report(crate::cli::drift_report::ReportArgs),
    /// On-device samples of raw inputs (personal-data-bearing): request, list, get as CSV.
    #[command(subcommand)]
    Samples(crate::cli::drift_samples::SamplesCommand),
    /// Add a note to a drift alert.
    Annotate {
        #[command(flatten)]
        server: crate::cli::remote::ServerArgs,
        id: i64,
        #[arg(long)]
        note: String,
    },
}

/// Arguments of `outpost drift ack|expected`.
#[derive(Debug, clap::Args)]
pub struct ReviewArgs {
    #[command(flatten)]
    pub server: crate::cli::remote::ServerArgs,
    pub id: i64,
    #[arg(long)]
    pub note: Option<String>,
}

/// Arguments of `outpost drift fleet`.
#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    #[command(flatten)]
    pub server: crate::cli::remote::ServerArgs,
    /// The model version: `NAME@VERSION` or its bundle digest `sha256:…`.
    #[arg(long)]
    pub model: String,
    /// One device, feature by feature.
    #[arg(long, conflicts_with_all = ["cohort", "by"])]
    pub device: Option<String>,
    /// One cohort (`*` or `key=value`), feature by feature.
    #[arg(long, conflicts_with = "by")]
    pub cohort: Option<String>,
    /// Without --device or --cohort: list every device (default) or every cohort.
    #[arg(long, value_parser = ["device", "cohort"])]
    pub by: Option<String>,
    /// How far back to look, in hours.
    #[arg(long, default_value_t = 24)]
    pub hours: u32,
    #[arg(long)]
    pub json: bool,
    /// Exit with status 1 when any listed device or cohort (or the one asked for) is at least
    /// this level.
    #[arg(long, value_enum)]
    pub fail_on: Option<FailOn>,
}

/// Dataset verdict levels `--fail-on` accepts.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FailOn {
    Warn,
    Alert,
}

impl FailOn {
    fn level(self) -> Verdict {
        match self {
            FailOn::Warn => Verdict::Warn,
            FailOn::Alert => Verdict::Alert,
        }
    }
}

/// One CSV file, column by column, cells kept as text.
struct Table {
    path: PathBuf,
    header: Vec<String>,
    columns: Vec<Vec<String>>,
}

impl Table {
    fn read(path: &Path) -> Result<Self> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .trim(csv::Trim::All)
            .from_path(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let header: Vec<String> = reader
            .headers()
            .with_context(|| format!("reading the header row of {}", path.display()))?
            .iter()
            .map(str::to_string)
            .collect();
        ensure!(!header.is_empty(), "{} has no header row", path.display());
        let mut seen = BTreeSet::new();
        for name in &header {
            ensure!(seen.insert(name), "{} has the column {name:?} twice", path.display());
        }
        let mut columns = vec![Vec::new(); header.len()];
        for (index, record) in reader.records().enumerate() {
            // Line numbers count the header as line 1.
            let record = record
                .with_context(|| format!("reading {} at data row {}", path.display(), index + 1))?;
            for (column, cell) in columns.iter_mut().zip(record.iter()) {
                column.push(cell.to_string());
            }
        }
        Ok(Self { path: path.to_path_buf(), header, columns })
    }

    fn column(&self, name: &str) -> Result<&[String]> {
        match self.header.iter().position(|h| h == name) {
            Some(index) => Ok(&self.columns[index]),
            None => bail!(
                "{} has no column {name:?} (its columns: {})",
                self.path.display(),
                self.header.join(", ")
            ),
        }
    }
}

/// Cells that mean "no value".
fn is_missing(cell: &str) -> bool {
    cell.is_empty() || matches!(cell.to_ascii_lowercase().as_str(), "na" | "n/a" | "null" | "none")
}

/// The cell as a number, `None` for a missing cell, `Err` for text.
fn parse_number(cell: &str) -> Result<Option<f64>, ()> {
    if is_missing(cell) {
        return Ok(None);
    }
    cell.parse::<f64>().map(Some).map_err(|_| ())
}

fn numbers(cells: &[String]) -> Option<Vec<f64>> {
    cells
        .iter()
        .map(|cell| parse_number(cell).map(|v| v.unwrap_or(f64::NAN)))
        .collect::<Result<Vec<f64>, ()>>()
        .ok()
}

fn categories(cells: &[String]) -> Vec<Option<&str>> {
    cells.iter().map(|cell| (!is_missing(cell)).then_some(cell.as_str())).collect()
}

/// Computes the metrics of every requested feature.
pub fn compare_files(args: &DriftArgs) -> Result<Vec<FeatureMetrics>> {
    ensure!(args.bins >= 2, "--bins must be at least 2 (got {})", args.bins);
    let (Some(reference), Some(current)) = (&args.reference, &args.current) else {
        bail!("give --reference and --current CSV files");
    };
    let reference = Table::read(reference)?;
    let current = Table::read(current)?;
    let features: Vec<String> =
        if args.features.is_empty() { reference.header.clone() } else { args.features.clone() };
    for name in &args.categorical {
        ensure!(
            features.contains(name),
            "--categorical names {name:?}, which is not among the compared features"
        );
    }
    let mut out = Vec::with_capacity(features.len());
    for name in &features {
        let (reference_cells, current_cells) = (reference.column(name)?, current.column(name)?);
        let forced = args.categorical.contains(name);
        let metrics = match (forced, numbers(reference_cells), numbers(current_cells)) {
            (false, Some(reference_values), Some(current_values)) => {
                drift::compare_numeric(name, &reference_values, &current_values, args.bins)
            }
            _ => drift::compare_categorical(
                name,
                &categories(reference_cells),
                &categories(current_cells),
            ),
        };
        out.push(metrics);
    }
    Ok(out)
}

fn read_thresholds(path: Option<&Path>) -> Result<Thresholds> {
    let thresholds = match path {
        None => Thresholds::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
    };
    thresholds.validate().context("the drift thresholds are not usable")?;
    Ok(thresholds)
}

pub fn run(args: DriftArgs) -> Result<()> {
    match args.command {
        Some(DriftCommand::Fleet(fleet)) => return run_fleet(fleet),
        Some(DriftCommand::Report(report)) => return crate::cli::drift_report::run(report),
        Some(DriftCommand::Alerts { server, state, model, json }) => {
            return run_alerts(&server, &state, model.as_deref(), json);
        }
        Some(DriftCommand::Ack(review)) => {
            return run_review(&review.server, review.id, "acknowledge", review.note.as_deref());
        }
        Some(DriftCommand::Expected(review)) => {
            return run_review(&review.server, review.id, "expected", review.note.as_deref());
        }
        Some(DriftCommand::Annotate { server, id, note }) => {
            return run_review(&server, id, "annotate", Some(&note));
        }
        Some(DriftCommand::Samples(command)) => return crate::cli::drift_samples::run(command),
        None => {}
    }
    let thresholds = read_thresholds(args.thresholds.as_deref())?;
    let dataset = DatasetDrift::judge(compare_files(&args)?, &thresholds);
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &dataset)?;
        writeln!(stdout)?;
    } else {
        write!(stdout, "{}", render_table(&dataset))?;
    }
    stdout.flush()?;
    if let Some(level) = args.fail_on {
        let limit = level.level();
        if dataset.verdict >= limit {
            bail!("the dataset's drift verdict is {} (--fail-on {})", dataset.verdict, limit);
        }
    }
    Ok(())
}

/// The bundle digest of `NAME@VERSION` (asked from the registry), or the digest as given.
pub(crate) fn model_digest(client: &crate::api::client::ApiClient, model: &str) -> Result<String> {
    if model.starts_with("sha256:") {
        return Ok(model.to_string());
    }
    let Some((name, version)) = model.split_once('@') else {
        bail!("--model must be NAME@VERSION or a bundle digest sha256:…, not {model:?}");
    };
    let path = format!(
        "/v1/models/{}/versions/{}",
        crate::cli::remote::path_segment(name),
        crate::cli::remote::path_segment(version)
    );
    let answer = client.get_json(&path, &[])?;
    let bundle = answer.get("bundle").unwrap_or(&answer);
    bundle["digest"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("the registry's answer for {model} has no digest"))
}

fn verdict_of(value: &serde_json::Value) -> Verdict {
    serde_json::from_value(value.clone()).unwrap_or(Verdict::Insufficient)
}

fn run_fleet(args: FleetArgs) -> Result<()> {
    let client = args.server.client()?;
    let digest = model_digest(&client, &args.model)?;
    let to_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000 + 1;
    let from_ms = to_ms - i64::from(args.hours) * 3_600_000;
    let mut query = vec![
        ("model", digest.clone()),
        ("from_ms", from_ms.to_string()),
        ("to_ms", to_ms.to_string()),
    ];
    let scoped = args.device.is_some() || args.cohort.is_some();
    let answer = if scoped {
        if let Some(device) = &args.device {
            query.push(("device", device.clone()));
        }
        if let Some(cohort) = &args.cohort {
            query.push(("cohort", cohort.clone()));
        }
        client.get_json("/v1/drift", &query)?
    } else {
        query.push(("by", args.by.clone().unwrap_or_else(|| "device".into())));
        client.get_json("/v1/drift/overview", &query)?
    };
    let worst = if scoped {
        verdict_of(&answer["verdict"])
    } else {
        answer["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|entry| verdict_of(&entry["verdict"]))
            .max()
            .unwrap_or(Verdict::Insufficient)
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else if scoped {
        let what = args.device.as_deref().or(args.cohort.as_deref()).unwrap_or("*");
        println!("{} {what}: {} over the last {} h", args.model, worst, args.hours);
        match serde_json::from_value::<crate::fleet_drift::WindowDrift>(answer["total"].clone()) {
            Ok(total) => {
                println!("{} windows, {} requests\n", total.windows, total.requests);
                println!("inputs");
                print!("{}", render_table(&total.inputs));
                println!("\noutputs");
                print!("{}", render_table(&total.outputs));
                if !total.not_comparable.is_empty() {
                    println!(
                        "\nnot comparable with the profile: {}",
                        total.not_comparable.join(", ")
                    );
                }
            }
            Err(_) => println!("no windows in this range"),
        }
    } else {
        let rows: Vec<Vec<String>> = answer["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|entry| {
                let list = |key: &str| {
                    let names: Vec<&str> = entry[key]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str())
                        .collect();
                    if names.is_empty() { "-".to_string() } else { names.join(",") }
                };
                vec![
                    crate::cli::remote::text(entry, "key"),
                    entry["windows"].to_string(),
                    entry["requests"].to_string(),
                    crate::cli::remote::text(entry, "verdict"),
                    list("alerting_inputs"),
                    list("alerting_outputs"),
                ]
            })
            .collect();
        let by = args.by.as_deref().unwrap_or("device");
        crate::cli::remote::print_table(
            &[by, "windows", "requests", "verdict", "alerting inputs", "alerting outputs"],
            &rows,
        );
    }
    if let Some(level) = args.fail_on
        && worst >= level.level()
    {
        bail!("drift verdict {worst} (--fail-on {})", level.level());
    }
    Ok(())
}

fn number(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"))
}

/// The human-readable report: one row per feature, then the dataset verdict and the reasons.
pub fn render_table(dataset: &DatasetDrift) -> String {
    let mut rows = vec![
        [
            "feature", "kind", "n_ref", "n_cur", "psi", "js", "ks", "ks_p", "wass_n", "chi2_p",
            "verdict",
        ]
        .map(str::to_string),
    ];
    for feature in &dataset.features {
        let m = &feature.metrics;
        rows.push([
            m.feature.clone(),
            match m.kind {
                FeatureKind::Numeric => "numeric".into(),
                FeatureKind::Categorical => "categorical".into(),
            },
            m.reference_count.to_string(),
            m.current_count.to_string(),
            number(m.psi),
            number(m.js_distance),
            number(m.ks.map(|ks| ks.statistic)),
            m.ks.map_or_else(|| "-".into(), |ks| format!("{:.3e}", ks.p_value)),
            number(m.normed_wasserstein),
            m.chi_square.map_or_else(|| "-".into(), |chi| format!("{:.3e}", chi.p_value)),
            feature.verdict.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> =
            row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&format!(
        "\ndataset: {} ({} of {} judged features alert, share {:.2})\n",
        dataset.verdict, dataset.alerting, dataset.judged, dataset.drift_share
    ));
    for feature in dataset.features.iter().filter(|f| !f.reasons.is_empty()) {
        out.push_str(&format!("  {}: {}\n", feature.metrics.feature, feature.reasons.join("; ")));
    }
    out
}

fn run_alerts(
    server: &crate::cli::remote::ServerArgs,
    state: &str,
    model: Option<&str>,
    json: bool,
) -> Result<()> {
    let client = server.client()?;
    let mut query = vec![("state", state.to_string())];
    if let Some(model) = model {
        query.push(("model", model_digest(&client, model)?));
    }
    let answer = client.get_json("/v1/drift/alerts", &query)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = answer["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|alert| {
            let opened = crate::cli::remote::time_text(alert["opened_ms"].as_i64());
            let closed = crate::cli::remote::time_text(alert["closed_ms"].as_i64());
            vec![
                alert["id"].to_string(),
                format!(
                    "{} {}",
                    crate::cli::remote::text(alert, "scope_kind"),
                    crate::cli::remote::text(alert, "scope_key")
                ),
                crate::cli::remote::text(alert, "feature"),
                opened,
                closed,
                crate::cli::remote::text(alert, "review"),
                short_digest(&crate::cli::remote::text(alert, "model_digest")),
            ]
        })
        .collect();
    crate::cli::remote::print_table(
        &["id", "scope", "feature", "opened", "closed", "review", "model"],
        &rows,
    );
    Ok(())
}

fn short_digest(digest: &str) -> String {
    digest.chars().take("sha256:".len() + 12).collect()
}

fn run_review(
    server: &crate::cli::remote::ServerArgs,
    id: i64,
    action: &str,
    note: Option<&str>,
) -> Result<()> {
    let mut body = serde_json::json!({ "action": action });
    if let Some(note) = note {
        body["note"] = serde_json::Value::from(note);
    }
    let answer = server.client()?.post_json(&format!("/v1/drift/alerts/{id}"), &body)?;
    let alert = &answer["alert"];
    println!(
        "drift alert {id} ({} {} {}): {}",
        crate::cli::remote::text(alert, "scope_kind"),
        crate::cli::remote::text(alert, "scope_key"),
        crate::cli::remote::text(alert, "feature"),
        crate::cli::remote::text(alert, "review"),
    );
    Ok(())
}
