//! API users and their bearer tokens. A token is shown once, when it is made; the database
//! keeps only its SHA-256, so a copy of the database does not let anyone call the API.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use sqlx::Row as _;

use super::audit::{NewAuditEvent, insert_in};
use super::{Store, StoreError, now_ms};

/// What a user may do; the API's route table says which roles may call each route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserRole {
    /// Everything, including managing users.
    Admin,
    /// Publishes models and runs the fleet.
    Operator,
    /// Reviews and signs rollouts; reads the fleet.
    Approver,
    /// Reads everything, changes nothing.
    Auditor,
}

impl UserRole {
    pub const ALL: [UserRole; 4] =
        [UserRole::Admin, UserRole::Operator, UserRole::Approver, UserRole::Auditor];

    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::Admin => "admin",
            UserRole::Operator => "operator",
            UserRole::Approver => "approver",
            UserRole::Auditor => "auditor",
        }
    }
}

impl fmt::Display for UserRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for UserRole {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        UserRole::ALL.into_iter().find(|role| role.as_str() == text).ok_or_else(|| {
            format!("unknown role `{text}`: expected one of admin, operator, approver, auditor")
        })
    }
}

/// A user, as listed (never with a token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub name: String,
    pub role: UserRole,
    pub created_ms: i64,
    pub created_by: String,
}

/// The prefix of every token, so a leaked one is recognisable in logs and scanners.
pub const TOKEN_PREFIX: &str = "outpost_";

/// Checks a user name: 1-64 characters of `a-z A-Z 0-9 . _ - @`.
pub fn validate_user_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!("user name {name:?} must be 1-64 characters of a-z A-Z 0-9 . _ - @"))
    }
}

/// `sha256:<hex>` of a token, the form stored and looked up.
pub fn token_hash(token: &str) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(token.as_bytes())))
}

/// A new random token: the prefix and 256 bits from the operating system, in hex.
fn new_token() -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| StoreError::Corrupt {
        what: "random token".into(),
        reason: format!("the operating system gave no random bytes: {error}"),
    })?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

impl Store {
    /// Creates a user with a fresh token and returns the token (the only time it exists in
    /// clear). Refuses a name that is taken.
    pub async fn create_user(
        &self,
        name: &str,
        role: UserRole,
        created_by: &str,
    ) -> Result<String, StoreError> {
        validate_user_name(name).map_err(StoreError::Invalid)?;
        let token = new_token()?;
        let now = now_ms();
        let mut transaction = self.pool().begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO users (name, role, created_ms, created_by) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name.to_string())
        .bind(role.as_str().to_string())
        .bind(now)
        .bind(created_by.to_string())
        .execute(&mut *transaction)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("user {name} already exists")));
        }
        sqlx::query(
            "INSERT INTO api_tokens (token_sha256, user_name, created_ms) VALUES ($1, $2, $3)",
        )
        .bind(token_hash(&token))
        .bind(name.to_string())
        .bind(now)
        .execute(&mut *transaction)
        .await?;
        insert_in(
            &mut transaction,
            &NewAuditEvent {
                actor: created_by.into(),
                action: "user.create".into(),
                subject: format!("user {name}"),
                outcome: "ok".into(),
                reason: format!("role {role}"),
                source: "api".into(),
                ..Default::default()
            },
        )
        .await?;
        transaction.commit().await?;
        Ok(token)
    }

    /// The user a token belongs to, unless it is unknown or revoked.
    pub async fn user_for_token(&self, token: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(
            "SELECT u.name, u.role, u.created_ms, u.created_by FROM api_tokens t \
             JOIN users u ON u.name = t.user_name \
             WHERE t.token_sha256 = $1 AND t.revoked_ms IS NULL",
        )
        .bind(token_hash(token))
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// Every user, by name.
    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let rows =
            sqlx::query("SELECT name, role, created_ms, created_by FROM users ORDER BY name")
                .fetch_all(self.pool())
                .await?;
        rows.iter().map(user_from_row).collect()
    }
}

fn user_from_row(row: &sqlx::any::AnyRow) -> Result<User, StoreError> {
    let name: String = row.try_get("name")?;
    let role: String = row.try_get("role")?;
    let role = role
        .parse()
        .map_err(|reason| StoreError::Corrupt { what: format!("role of user {name}"), reason })?;
    Ok(User {
        role,
        created_ms: row.try_get("created_ms")?,
        created_by: row.try_get("created_by")?,
        name,
    })
}
