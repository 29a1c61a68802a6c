//! `outpost devices list`: the fleet inventory, through the API.

use anyhow::Result;

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
}

pub fn run(command: DevicesCommand) -> Result<()> {
    match command {
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
