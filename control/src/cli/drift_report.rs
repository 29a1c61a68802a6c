//! `outpost drift report`: a model version's fleet drift over a period, written as
//! `drift-report.json` (everything the server computed) and `drift-report.html`, one
//! self-contained page (inline SVG, no scripts, no external files) with, per feature and
//! output, the reference and current distributions side by side and the PSI over time.
//! With `--request-retrain`, also files a retraining request a training pipeline consumes.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

/// Arguments of `outpost drift report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub server: crate::cli::remote::ServerArgs,
    /// The model version: `NAME@VERSION` or its bundle digest `sha256:…`.
    #[arg(long)]
    pub model: String,
    /// Start of the period (RFC 3339, e.g. 2026-11-01T00:00:00Z); default: 7 days before --to.
    #[arg(long)]
    pub from: Option<String>,
    /// End of the period (RFC 3339); default: now.
    #[arg(long)]
    pub to: Option<String>,
    /// One cohort (`*`, the whole fleet, by default) or --device.
    #[arg(long, conflicts_with = "device")]
    pub cohort: Option<String>,
    #[arg(long)]
    pub device: Option<String>,
    /// Directory to write the report into (created if missing).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Also file a retraining request for this model and period (audited, announced on MQTT).
    #[arg(long)]
    pub request_retrain: bool,
    /// Why retraining is requested (with --request-retrain).
    #[arg(long)]
    pub note: Option<String>,
}

fn parse_time(text: &str, flag: &str) -> Result<i64> {
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .with_context(|| {
            format!("{flag} {text:?} is not an RFC 3339 time like 2026-11-01T00:00:00Z")
        })?;
    Ok(i64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
}

pub fn run(args: ReportArgs) -> Result<()> {
    let client = args.server.client()?;
    let digest = super::drift::model_digest(&client, &args.model)?;
    let to_ms = match &args.to {
        Some(text) => parse_time(text, "--to")?,
        None => time::OffsetDateTime::now_utc().unix_timestamp() * 1000 + 1,
    };
    let from_ms = match &args.from {
        Some(text) => parse_time(text, "--from")?,
        None => to_ms - 7 * 86_400_000,
    };
    ensure!(from_ms < to_ms, "--from must be before --to");
    let mut query = vec![
        ("model", digest.clone()),
        ("from_ms", from_ms.to_string()),
        ("to_ms", to_ms.to_string()),
    ];
    match (&args.device, &args.cohort) {
        (Some(device), _) => query.push(("device", device.clone())),
        (None, Some(cohort)) => query.push(("cohort", cohort.clone())),
        (None, None) => query.push(("cohort", "*".into())),
    }
    let drift = client.get_json("/v1/drift", &query)?;
    let report = serde_json::json!({
        "v": 1,
        "model": args.model,
        "digest": digest,
        "generated_ms": time::OffsetDateTime::now_utc().unix_timestamp() * 1000,
        "drift": drift,
    });
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    write(&args.out.join("drift-report.json"), &serde_json::to_vec_pretty(&report)?)?;
    write(&args.out.join("drift-report.html"), render_html(&report).as_bytes())?;
    println!(
        "drift report of {} ({}): verdict {} → {}",
        args.model,
        drift["key"].as_str().unwrap_or("*"),
        drift["verdict"].as_str().unwrap_or("insufficient"),
        args.out.display()
    );
    if args.request_retrain {
        let body = serde_json::json!({
            "model": digest,
            "from_ms": from_ms,
            "to_ms": to_ms,
            "note": args.note.clone().unwrap_or_default(),
        });
        let answer = client.post_json("/v1/drift/retrain-requests", &body)?;
        println!(
            "retraining requested (request {}); announced on {}",
            answer["request"]["id"].as_str().unwrap_or("?"),
            answer["topic"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::files::write_atomic(path, bytes, false)
        .with_context(|| format!("writing {}", path.display()))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn proportions(counts: &[Value]) -> Vec<f64> {
    let counts: Vec<f64> = counts.iter().map(|c| c.as_f64().unwrap_or(0.0)).collect();
    let total: f64 = counts.iter().sum();
    counts.iter().map(|c| if total > 0.0 { c / total } else { 0.0 }).collect()
}

/// Labels of a feature's bins: numeric `[a, b)` ranges with the outer `< min` and `> max`
/// bins, or the categories.
fn bin_labels(feature: &Value, bins: usize) -> Vec<String> {
    if let Some(edges) = feature["bins"]["edges"].as_array() {
        let edges: Vec<f64> = edges.iter().filter_map(Value::as_f64).collect();
        let mut labels = vec![format!("< {}", short(edges.first().copied().unwrap_or(0.0)))];
        for pair in edges.windows(2) {
            labels.push(format!("{}…{}", short(pair[0]), short(pair[1])));
        }
        labels.push(format!("> {}", short(edges.last().copied().unwrap_or(0.0))));
        labels
    } else if let Some(categories) = feature["bins"]["categories"].as_array() {
        categories.iter().map(|c| c.as_str().unwrap_or("?").to_string()).collect()
    } else {
        (0..bins).map(|i| i.to_string()).collect()
    }
}

fn short(value: f64) -> String {
    if value.abs() >= 1000.0 || (value != 0.0 && value.abs() < 0.01) {
        format!("{value:.2e}")
    } else {
        format!("{value:.2}")
    }
}

/// Reference vs current proportions as paired bars.
fn histogram_svg(feature: &Value) -> String {
    let reference = proportions(feature["reference_counts"].as_array().map_or(&[][..], |v| v));
    let current = proportions(feature["current_counts"].as_array().map_or(&[][..], |v| v));
    let bins = reference.len().max(current.len()).max(1);
    let labels = bin_labels(feature, bins);
    let (width, height, bottom) = (560.0, 200.0, 40.0);
    let top = 10.0;
    let plot = height - bottom - top;
    let max = reference.iter().chain(&current).copied().fold(0.0_f64, f64::max).max(1e-9);
    let slot = width / bins as f64;
    let bar = slot * 0.38;
    let mut svg = format!(
        "<svg viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"reference and current \
         distribution\">"
    );
    for (i, label) in labels.iter().enumerate().take(bins) {
        let x = slot * i as f64;
        for (j, (values, class)) in [(&reference, "ref"), (&current, "cur")].iter().enumerate() {
            let value = values.get(i).copied().unwrap_or(0.0);
            let h = plot * value / max;
            let _ = write!(
                svg,
                "<rect class=\"{class}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" \
                 height=\"{h:.1}\"><title>{}: {:.1} %</title></rect>",
                x + slot * 0.1 + bar * j as f64,
                top + plot - h,
                escape(label),
                value * 100.0
            );
        }
        if bins <= 16 {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"middle\">{}</text>",
                x + slot / 2.0,
                height - bottom + 14.0 + 12.0 * (i % 2) as f64,
                escape(label)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// PSI per time bucket as a line, with the alert threshold.
fn trend_svg(name: &str, buckets: &[Value], side: &str) -> String {
    let points: Vec<(i64, f64)> = buckets
        .iter()
        .filter_map(|bucket| {
            let start = bucket["bucket_start_ms"].as_i64()?;
            let psi = bucket["drift"][side]["features"]
                .as_array()?
                .iter()
                .find(|f| f["feature"] == name)?["psi"]
                .as_f64()?;
            Some((start, psi))
        })
        .collect();
    if points.is_empty() {
        return "<p class=\"note\">No bucket with enough data for a trend.</p>".into();
    }
    let (width, height, pad) = (560.0, 140.0, 24.0);
    let first = points[0].0 as f64;
    let last = points[points.len() - 1].0 as f64;
    let span = (last - first).max(1.0);
    let max = points.iter().map(|p| p.1).fold(0.3_f64, f64::max);
    let x = |t: i64| pad + (width - 2.0 * pad) * (t as f64 - first) / span;
    let y = |v: f64| height - pad - (height - 2.0 * pad) * v / max;
    let path: Vec<String> =
        points.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect();
    let mut svg = format!(
        "<svg viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"PSI over time\">\
         <line class=\"threshold\" x1=\"{pad}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/>\
         <polyline class=\"trend\" points=\"{}\"/>",
        width - pad,
        y(0.25),
        y(0.25),
        path.join(" ")
    );
    for (t, v) in &points {
        let _ = write!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\"><title>{}: PSI {v:.3}</title></circle>",
            x(*t),
            y(*v),
            crate::cli::remote::time_text(Some(*t))
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{pad}\" y=\"{:.1}\" class=\"tick\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" \
         class=\"tick\" text-anchor=\"end\">{}</text></svg>",
        height - 4.0,
        crate::cli::remote::time_text(Some(points[0].0)),
        width - pad,
        height - 4.0,
        crate::cli::remote::time_text(Some(points[points.len() - 1].0))
    );
    svg
}

fn metric(value: &Value) -> String {
    value.as_f64().map_or_else(|| "–".into(), |v| format!("{v:.4}"))
}

/// The HTML page of a report (the JSON `drift-report.json` holds).
pub fn render_html(report: &Value) -> String {
    let drift = &report["drift"];
    let total = &drift["total"];
    let buckets = drift["buckets"].as_array().map_or(&[][..], |v| v);
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Drift report: {model}</title><style>{STYLE}</style></head><body>\
         <h1>Drift report: {model}</h1>\
         <p class=\"meta\">{digest}<br>{kind} <b>{key}</b> · {from} – {to} · {windows} windows, \
         {requests} requests · verdict <span class=\"v {verdict}\">{verdict}</span></p>",
        model = escape(report["model"].as_str().unwrap_or("?")),
        digest = escape(report["digest"].as_str().unwrap_or("?")),
        kind = escape(drift["kind"].as_str().unwrap_or("cohort")),
        key = escape(drift["key"].as_str().unwrap_or("*")),
        from = crate::cli::remote::time_text(drift["from_ms"].as_i64()),
        to = crate::cli::remote::time_text(drift["to_ms"].as_i64()),
        windows = total["windows"].as_u64().unwrap_or(0),
        requests = total["requests"].as_u64().unwrap_or(0),
        verdict = escape(drift["verdict"].as_str().unwrap_or("insufficient")),
    );
    if total.is_null() {
        html.push_str("<p>No statistics in this period.</p></body></html>");
        return html;
    }
    html.push_str(
        "<p class=\"legend\"><span class=\"sw ref\"></span> reference (training baseline) \
         <span class=\"sw cur\"></span> current</p>",
    );
    for (title, side) in [("Inputs", "inputs"), ("Outputs and predictions", "outputs")] {
        let features = total[side]["features"].as_array().map_or(&[][..], |v| v);
        if features.is_empty() {
            continue;
        }
        let _ = write!(
            html,
            "<h2>{title}</h2><table><tr><th>feature</th><th>verdict</th><th>PSI</th><th>JS</th><th>chi² p</th><th>mean shift (σ)</th><th>KS bounds</th></tr>"
        );
        for feature in features {
            let ks = &feature["ks_bounds"];
            let _ = write!(
                html,
                "<tr><td><a href=\"#{side}-{id}\">{name}</a></td><td class=\"v {verdict}\">{verdict}</td><td>{psi}</td><td>{js}</td><td>{p}</td><td>{shift}</td><td>{ks}</td></tr>",
                id = escape(feature["feature"].as_str().unwrap_or("?")),
                name = escape(feature["feature"].as_str().unwrap_or("?")),
                verdict = escape(feature["verdict"].as_str().unwrap_or("?")),
                psi = metric(&feature["psi"]),
                js = metric(&feature["js_distance"]),
                p = feature["chi_square"]["p_value"]
                    .as_f64()
                    .map_or_else(|| "–".into(), |p| format!("{p:.2e}")),
                shift = metric(&feature["normed_mean_shift"]),
                ks = if ks.is_null() {
                    "–".to_string()
                } else {
                    format!("{} – {}", metric(&ks["lower"]), metric(&ks["upper"]))
                },
            );
        }
        html.push_str("</table>");
        for feature in features {
            let name = feature["feature"].as_str().unwrap_or("?");
            let reasons: Vec<String> = feature["reasons"]
                .as_array()
                .map_or(&[][..], |v| v)
                .iter()
                .filter_map(|r| r.as_str().map(escape))
                .collect();
            let _ = write!(
                html,
                "<section id=\"{side}-{id}\"><h3>{id} <span class=\"v {verdict}\">{verdict}</span></h3>\
                 <p class=\"note\">{reasons}</p><div class=\"charts\"><figure>{hist}<figcaption>\
                 distribution over the baseline's bins</figcaption></figure><figure>{trend}\
                 <figcaption>PSI per time bucket (line: alert at 0.25)</figcaption></figure></div>\
                 </section>",
                id = escape(name),
                verdict = escape(feature["verdict"].as_str().unwrap_or("?")),
                reasons = if reasons.is_empty() {
                    "Within thresholds.".into()
                } else {
                    reasons.join("<br>")
                },
                hist = histogram_svg(feature),
                trend = trend_svg(name, buckets, side),
            );
        }
    }
    html.push_str("</body></html>");
    html
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1200px;\
padding:0 1rem;color:#1d2330;background:#fff}h1{font-size:1.5rem}h2{margin-top:2rem}\
.meta{color:#556}table{border-collapse:collapse;margin:.5rem 0}td,th{padding:.25rem .6rem;\
border-bottom:1px solid #dde;text-align:left}.v{font-weight:600}.v.alert{color:#b3261e}\
.v.warn{color:#9a6700}.v.ok{color:#1a7f37}.v.insufficient{color:#667}section{margin:1.5rem 0;\
border-top:1px solid #eef;padding-top:.5rem}.charts{display:flex;flex-wrap:wrap;gap:1rem}\
figure{margin:0;flex:1 1 520px}svg{width:100%;height:auto;background:#fafbfd}\
rect.ref,.sw.ref{fill:#8aa4c8;background:#8aa4c8}rect.cur,.sw.cur{fill:#e07b39;background:#e07b39}\
.sw{display:inline-block;width:.9em;height:.9em;margin:0 .3em 0 1em;vertical-align:-.1em}\
.tick{font-size:10px;fill:#556}.trend{fill:none;stroke:#e07b39;stroke-width:2}\
.threshold{stroke:#b3261e;stroke-dasharray:4 3}circle{fill:#e07b39}.note{color:#556}\
figcaption{font-size:12px;color:#667}@media (prefers-color-scheme:dark){body{background:#12151c;\
color:#e3e6ee}svg{background:#1a1f29}td,th{border-color:#2a3040}.meta,.note,.tick,figcaption\
{color:#9aa3b5;fill:#9aa3b5}}";

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Value {
        let feature = serde_json::json!({
            "feature": "f2<x>",
            "verdict": "alert",
            "psi": 1.2,
            "js_distance": 0.4,
            "chi_square": {"statistic": 90.0, "dof": 11, "p_value": 1e-12},
            "normed_mean_shift": 1.5,
            "ks_bounds": {"lower": 0.5, "upper": 0.6},
            "bins": {"edges": [0.0, 1.0, 2.0]},
            "reference_counts": [0, 50, 50, 0],
            "current_counts": [0, 10, 60, 30],
            "reasons": ["PSI 1.2000 >= 0.25"],
        });
        let bucket = |t: i64, psi: f64| {
            let mut f = feature.clone();
            f["psi"] = Value::from(psi);
            serde_json::json!({"bucket_start_ms": t, "drift": {"inputs": {"features": [f]}}})
        };
        serde_json::json!({
            "model": "fraud@1.0.0",
            "digest": "sha256:ab",
            "drift": {
                "kind": "cohort", "key": "*", "from_ms": 0, "to_ms": 7_200_000, "verdict": "alert",
                "total": {"windows": 4, "requests": 100, "inputs": {"features": [feature]},
                          "outputs": {"features": []}},
                "buckets": [bucket(0, 0.1), bucket(3_600_000, 1.2)],
            }
        })
    }

    #[test]
    fn the_page_is_self_contained_with_charts_per_feature() {
        let html = render_html(&report());
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert_eq!(html.matches("<svg").count(), 2, "a histogram and a trend");
        assert_eq!(html.matches("<rect").count(), 8, "two bars for each of four bins");
        assert!(html.contains("<polyline class=\"trend\""));
        // Names from the data are escaped; nothing is loaded from elsewhere.
        assert!(html.contains("f2&lt;x&gt;") && !html.contains("f2<x>"));
        for external in ["<script", "src=", "http://", "https://", "<link"] {
            assert!(!html.contains(external), "{external}");
        }
    }

    #[test]
    fn a_period_without_statistics_says_so() {
        let mut report = report();
        report["drift"]["total"] = Value::Null;
        assert!(render_html(&report).contains("No statistics in this period."));
    }
}
