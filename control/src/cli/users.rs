//! `outpost users add|list`: API users. `add` prints the new user's token once (on stdout,
//! alone, for scripts). The first admin is made with `--config` (straight into the server's
//! database: whoever can read the configuration and the database is already in charge);
//! every later user through the API with an admin's token.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use serde_json::json;

use super::remote::{ServerArgs, print_table, text, time_text};
use crate::store::users::UserRole;
use crate::store::{Store, StoreOptions};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum UserRoleArg {
    Admin,
    Operator,
    Approver,
    Auditor,
}

impl From<UserRoleArg> for UserRole {
    fn from(value: UserRoleArg) -> Self {
        match value {
            UserRoleArg::Admin => UserRole::Admin,
            UserRoleArg::Operator => UserRole::Operator,
            UserRoleArg::Approver => UserRole::Approver,
            UserRoleArg::Auditor => UserRole::Auditor,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum UsersCommand {
    /// Create a user and print its token (shown only this once).
    Add {
        name: String,
        #[arg(long, value_enum)]
        role: UserRoleArg,
        /// Write straight into the database of the server with this configuration (to make
        /// the first admin); without it the user is created through the API.
        #[arg(long, conflicts_with_all = ["server", "token"])]
        config: Option<PathBuf>,
        #[arg(long, env = "OUTPOST_SERVER")]
        server: Option<String>,
        #[arg(long, env = "OUTPOST_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[arg(long, env = "OUTPOST_CA_CERT")]
        ca_cert: Option<PathBuf>,
    },
    /// Every user and role.
    List {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: UsersCommand) -> Result<()> {
    match command {
        UsersCommand::Add { name, role, config: Some(config_path), .. } => {
            let config = crate::config::load(Some(&config_path))
                .context("loading the server configuration")?;
            let token = super::serve::runtime()?.block_on(async {
                let url = match &config.database.url {
                    Some(url) => url.clone(),
                    None => Store::sqlite_url_in(&config.data_dir)?,
                };
                let store = Store::connect(&StoreOptions {
                    url,
                    max_connections: 1,
                    acquire_timeout: config.database.acquire_timeout,
                })
                .await?;
                let token = store.create_user(&name, role.into(), "cli:database").await;
                store.close().await;
                token
            });
            let token = token.with_context(|| format!("creating user {name}"))?;
            eprintln!(
                "created user {name} with role {}; its token (shown only once):",
                UserRole::from(role)
            );
            println!("{token}");
            Ok(())
        }
        UsersCommand::Add { name, role, config: None, server, token, ca_cert } => {
            let server = ServerArgs {
                server: server.context(
                    "give --server (or OUTPOST_SERVER) and an admin --token, or --config to \
                     write straight into the server's database",
                )?,
                token,
                ca_cert,
            };
            let answer = server
                .client()?
                .post_json("/v1/users", &json!({ "name": name, "role": UserRole::from(role) }))
                .with_context(|| format!("creating user {name}"))?;
            eprintln!(
                "created user {name} with role {}; its token (shown only once):",
                text(&answer, "role")
            );
            println!("{}", text(&answer, "token"));
            Ok(())
        }
        UsersCommand::List { server, json } => {
            let answer = server.client()?.get_json("/v1/users", &[])?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = answer["users"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|user| {
                    vec![
                        text(user, "name"),
                        text(user, "role"),
                        time_text(user["created_ms"].as_i64()),
                        text(user, "created_by"),
                    ]
                })
                .collect();
            print_table(&["NAME", "ROLE", "CREATED", "BY"], &rows);
            Ok(())
        }
    }
}
