//! `outpost users add|list|set-role|remove` and `outpost tokens list|issue|revoke|rotate`: API
//! users and their tokens. Commands that make a token print it once, on stdout, alone (for
//! scripts). `users add` and `tokens issue` also work with `--config`, straight into the
//! server's database: to make the first admin, or a new token for an admin whose tokens all
//! expired (whoever can read the configuration and the database is already in charge). Every
//! other change goes through the API with an admin's token.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::remote::{ServerArgs, path_segment, print_table, text, time_text};
use crate::store::users::{ChangedBy, NewToken, UserRole};
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

/// The server, either through its API or straight through its database (`--config`).
#[derive(Debug, Clone, clap::Args)]
pub struct ServerOrDatabase {
    /// Write straight into the database of the server with this configuration; without it
    /// the change goes through the API.
    #[arg(long, conflicts_with_all = ["server", "token"])]
    pub config: Option<PathBuf>,
    #[arg(long, env = "OUTPOST_SERVER")]
    pub server: Option<String>,
    #[arg(long, env = "OUTPOST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, env = "OUTPOST_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

impl ServerOrDatabase {
    fn server(self) -> Result<ServerArgs> {
        Ok(ServerArgs {
            server: self.server.context(
                "give --server (or OUTPOST_SERVER) and an admin --token, or --config to write \
                 straight into the server's database",
            )?,
            token: self.token,
            ca_cert: self.ca_cert,
        })
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum UsersCommand {
    /// Create a user and print its first token (shown only this once).
    Add {
        name: String,
        #[arg(long, value_enum)]
        role: UserRoleArg,
        /// Days the token is valid (default: the server's `api.token_lifetime_days`).
        #[arg(long)]
        expires_in_days: Option<u32>,
        #[command(flatten)]
        target: ServerOrDatabase,
    },
    /// Every user (not removed), role and number of valid tokens.
    List {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        json: bool,
    },
    /// Change a user's role (refused when it would leave no admin).
    SetRole {
        name: String,
        #[arg(value_enum)]
        role: UserRoleArg,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove a user; every token of it stops working at once.
    Remove {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum TokensCommand {
    /// A user's tokens: id, created, expires, revoked, last used, state.
    List {
        user: String,
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        json: bool,
    },
    /// Issue another token for a user and print it (shown only this once).
    Issue {
        user: String,
        /// Days the token is valid (default: the server's `api.token_lifetime_days`).
        #[arg(long)]
        expires_in_days: Option<u32>,
        #[command(flatten)]
        target: ServerOrDatabase,
    },
    /// Revoke a token by its id (from `outpost tokens list`).
    Revoke {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Replace your own token (`--token`) with a new one and print it; the old one stops
    /// working at once, or after `--grace-seconds`.
    Rotate {
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// Seconds the old token keeps working beside the new one (at most a day).
        #[arg(long, default_value_t = 0)]
        grace_seconds: u32,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// Runs `f` on the database of the server configured in `config_path`.
fn with_database<T>(
    config_path: &Path,
    f: impl AsyncFnOnce(&Store, &crate::config::ServerConfig) -> Result<T>,
) -> Result<T> {
    let config =
        crate::config::load(Some(config_path)).context("loading the server configuration")?;
    super::serve::runtime()?.block_on(async {
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
        let result = f(&store, &config).await;
        store.close().await;
        result
    })
}

/// The lifetime asked for, checked against the configuration's limit.
fn lifetime_ms(config: &crate::config::ServerConfig, days: Option<u32>) -> Result<i64> {
    let days = days.unwrap_or(config.api.tokens.default_days);
    if days > config.api.tokens.max_days {
        bail!(
            "--expires-in-days {days} is over the server's limit of {} \
             (api.max_token_lifetime_days)",
            config.api.tokens.max_days
        );
    }
    crate::store::users::lifetime_ms(days).map_err(anyhow::Error::msg)
}

fn print_new_token(what: &str, token: &str, id: &str, expires_ms: Option<i64>) {
    eprintln!("{what}; token {id}, valid until {} (shown only once):", time_text(expires_ms));
    println!("{token}");
}

fn print_token_answer(what: &str, answer: &Value) {
    print_new_token(
        what,
        &text(answer, "token"),
        &text(answer, "token_id"),
        answer["expires_ms"].as_i64(),
    );
}

pub fn run(command: UsersCommand) -> Result<()> {
    match command {
        UsersCommand::Add { name, role, expires_in_days, target } => {
            let role = UserRole::from(role);
            if let Some(config) = target.config.clone() {
                let token: NewToken = with_database(&config, async |store, config| {
                    let lifetime = lifetime_ms(config, expires_in_days)?;
                    let by = ChangedBy { actor: "cli:database", source: "cli" };
                    Ok(store.create_user_with(&name, role, by, lifetime).await?)
                })
                .with_context(|| format!("creating user {name}"))?;
                print_new_token(
                    &format!("created user {name} with role {role}"),
                    &token.token,
                    &token.id,
                    Some(token.expires_ms),
                );
                return Ok(());
            }
            let mut body = json!({ "name": name, "role": role });
            if let Some(days) = expires_in_days {
                body["expires_in_days"] = json!(days);
            }
            let answer = target
                .server()?
                .client()?
                .post_json("/v1/users", &body)
                .with_context(|| format!("creating user {name}"))?;
            print_token_answer(
                &format!("created user {name} with role {}", text(&answer, "role")),
                &answer,
            );
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
                        text(user, "active_tokens"),
                        time_text(user["created_ms"].as_i64()),
                        text(user, "created_by"),
                    ]
                })
                .collect();
            print_table(&["NAME", "ROLE", "TOKENS", "CREATED", "BY"], &rows);
            Ok(())
        }
        UsersCommand::SetRole { name, role, server } => {
            let role = UserRole::from(role);
            let answer = server
                .client()?
                .post_json(
                    &format!("/v1/users/{}/role", path_segment(&name)),
                    &json!({ "role": role }),
                )
                .with_context(|| format!("changing the role of {name}"))?;
            println!("{name}: role {} → {role}", text(&answer, "previous_role"));
            Ok(())
        }
        UsersCommand::Remove { name, server } => {
            let answer = server
                .client()?
                .post_json(&format!("/v1/users/{}/remove", path_segment(&name)), &json!({}))
                .with_context(|| format!("removing user {name}"))?;
            println!(
                "removed user {name}; {} valid token(s) revoked",
                text(&answer, "tokens_revoked")
            );
            Ok(())
        }
    }
}

pub fn run_tokens(command: TokensCommand) -> Result<()> {
    match command {
        TokensCommand::List { user, server, json } => {
            let answer = server
                .client()?
                .get_json(&format!("/v1/users/{}/tokens", path_segment(&user)), &[])?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = answer["tokens"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|token| {
                    vec![
                        text(token, "id"),
                        text(token, "state"),
                        time_text(token["created_ms"].as_i64()),
                        time_text(token["expires_ms"].as_i64()),
                        time_text(token["revoked_ms"].as_i64()),
                        text(token, "revoked_by"),
                        time_text(token["last_used_ms"].as_i64()),
                    ]
                })
                .collect();
            print_table(
                &["ID", "STATE", "CREATED", "EXPIRES", "REVOKED", "BY", "LAST USED"],
                &rows,
            );
            Ok(())
        }
        TokensCommand::Issue { user, expires_in_days, target } => {
            if let Some(config) = target.config.clone() {
                let token = with_database(&config, async |store, config| {
                    let lifetime = lifetime_ms(config, expires_in_days)?;
                    let by = ChangedBy { actor: "cli:database", source: "cli" };
                    store
                        .issue_token(&user, by, lifetime)
                        .await?
                        .with_context(|| format!("no user {user}"))
                })
                .with_context(|| format!("issuing a token for {user}"))?;
                print_new_token(
                    &format!("issued a token for {user}"),
                    &token.token,
                    &token.id,
                    Some(token.expires_ms),
                );
                return Ok(());
            }
            let mut body = json!({});
            if let Some(days) = expires_in_days {
                body["expires_in_days"] = json!(days);
            }
            let answer = target
                .server()?
                .client()?
                .post_json(&format!("/v1/users/{}/tokens", path_segment(&user)), &body)
                .with_context(|| format!("issuing a token for {user}"))?;
            print_token_answer(&format!("issued a token for {user}"), &answer);
            Ok(())
        }
        TokensCommand::Revoke { id, server } => {
            let answer = server
                .client()?
                .post_json(&format!("/v1/tokens/{}/revoke", path_segment(&id)), &json!({}))
                .with_context(|| format!("revoking token {id}"))?;
            let token = &answer["token"];
            if answer["revoked_now"].as_bool() == Some(true) {
                println!("revoked token {id} of user {}", text(token, "user"));
            } else {
                println!("token {id} of user {} was revoked already", text(token, "user"));
            }
            Ok(())
        }
        TokensCommand::Rotate { expires_in_days, grace_seconds, server } => {
            let mut body = json!({ "grace_seconds": grace_seconds });
            if let Some(days) = expires_in_days {
                body["expires_in_days"] = json!(days);
            }
            let answer = server
                .client()?
                .post_json("/v1/tokens/rotate", &body)
                .context("rotating the token")?;
            let old = text(&answer, "previous_token_id");
            let when = if grace_seconds == 0 {
                "now".to_string()
            } else {
                format!("in {grace_seconds} s")
            };
            print_token_answer(&format!("token {old} replaced; it stops working {when}"), &answer);
            Ok(())
        }
    }
}
