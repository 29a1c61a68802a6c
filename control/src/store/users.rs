//! API users and their bearer tokens. A token is shown once, when it is made; the database
//! keeps only its SHA-256, so a copy of the database does not let anyone call the API.
//!
//! Every token expires (`expires_ms`), can be revoked (`revoked_ms`, possibly in the future:
//! a rotated token stays valid for the grace period its owner asked for), and has a public id,
//! the first 16 hex digits of its SHA-256, by which listings, revocations and the audit log
//! name it. A removed user keeps its row (the audit log names it) and loses every token; the
//! name can be given to a new user later. The last admin can be neither removed nor demoted,
//! so the API always has someone who can manage users. Every change is audited in the same
//! transaction: `user.create`, `user.role`, `user.remove`, `token.create`, `token.revoke`,
//! `token.rotate`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use sqlx::Row as _;

use super::audit::{NewAuditEvent, insert_in};
use super::{Backend, Store, StoreError, now_ms};

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

/// A user with the number of tokens that are valid now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserListing {
    #[serde(flatten)]
    pub user: User,
    pub active_tokens: u64,
}

/// A token just made: the only time its text exists outside the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub token: String,
    pub id: String,
    pub user: String,
    pub expires_ms: i64,
}

/// A token as listed: never its text or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub user: String,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    /// When it was or will be revoked (a rotated token's grace period ends then).
    pub revoked_ms: Option<i64>,
    pub revoked_by: Option<String>,
    pub last_used_ms: Option<i64>,
    /// `active`, `expired` or `revoked`, at the time of listing.
    pub state: &'static str,
}

/// What a presented token turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// Valid now.
    Valid { user: User, token_id: String, expires_ms: Option<i64>, revoked_ms: Option<i64> },
    /// No such token.
    Unknown,
    /// It expired at `expired_ms`.
    Expired { user: String, token_id: String, expired_ms: i64 },
    /// It was revoked.
    Revoked { user: String, token_id: String },
    /// Its user was removed.
    UserRemoved { user: String, token_id: String },
}

/// The prefix of every token, so a leaked one is recognisable in logs and scanners.
pub const TOKEN_PREFIX: &str = "outpost_";

/// A token's lifetime when none is asked for: 90 days.
pub const DEFAULT_TOKEN_LIFETIME_MS: i64 = 90 * DAY_MS;

/// The longest lifetime a token can be given: ten years (the server's configuration usually
/// caps it lower).
pub const MAX_TOKEN_LIFETIME_DAYS: u32 = 3650;

/// The longest a rotated token stays valid next to its successor: a day.
pub const MAX_ROTATION_GRACE_SECONDS: u32 = 86_400;

const DAY_MS: i64 = 86_400_000;

/// `last_used_ms` is written at most this often per token, so authentication rarely writes.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

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

/// Checks a token id: 16 lowercase hex digits.
pub fn validate_token_id(id: &str) -> Result<(), String> {
    if id.len() == 16 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(format!("token id {id:?} must be 16 hex digits (as `outpost tokens list` shows)"))
    }
}

/// `sha256:<hex>` of a token, the form stored and looked up.
pub fn token_hash(token: &str) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(token.as_bytes())))
}

/// The public id of a token: the first 16 hex digits of its SHA-256.
pub fn token_id(token: &str) -> String {
    let hash = token_hash(token);
    hash["sha256:".len().."sha256:".len() + 16].to_string()
}

/// Lifetime in milliseconds of `days` (1 to [`MAX_TOKEN_LIFETIME_DAYS`]).
pub fn lifetime_ms(days: u32) -> Result<i64, String> {
    if (1..=MAX_TOKEN_LIFETIME_DAYS).contains(&days) {
        Ok(i64::from(days) * DAY_MS)
    } else {
        Err(format!(
            "a token lifetime of {days} days: it must be between 1 and {MAX_TOKEN_LIFETIME_DAYS}"
        ))
    }
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

/// Who changes users and tokens, and through what (`api`, `cli`), for the audit record.
#[derive(Debug, Clone, Copy)]
pub struct ChangedBy<'a> {
    pub actor: &'a str,
    pub source: &'a str,
}

impl<'a> ChangedBy<'a> {
    pub fn api(actor: &'a str) -> ChangedBy<'a> {
        ChangedBy { actor, source: "api" }
    }
}

fn event(by: ChangedBy<'_>, action: &str, subject: String, reason: String) -> NewAuditEvent {
    NewAuditEvent {
        actor: by.actor.into(),
        action: action.into(),
        subject,
        outcome: "ok".into(),
        reason,
        source: by.source.into(),
        ..Default::default()
    }
}

fn time_text(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|time| time.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}

async fn insert_token(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    user: &str,
    now: i64,
    lifetime_ms: i64,
) -> Result<NewToken, StoreError> {
    let token = new_token()?;
    let id = token_id(&token);
    let expires_ms = now.saturating_add(lifetime_ms);
    sqlx::query(
        "INSERT INTO api_tokens (token_sha256, user_name, created_ms, token_id, expires_ms) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(token_hash(&token))
    .bind(user.to_string())
    .bind(now)
    .bind(id.clone())
    .bind(expires_ms)
    .execute(&mut **transaction)
    .await?;
    Ok(NewToken { token, id, user: user.to_string(), expires_ms })
}

/// On PostgreSQL, locks the rows of the active admins so concurrent demotions and removals
/// are judged one after the other (SQLite serialises writers anyway).
async fn lock_admins(
    store: &Store,
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
) -> Result<(), StoreError> {
    if store.backend() == Backend::Postgres {
        sqlx::query(
            "SELECT name FROM users WHERE role = 'admin' AND removed_ms IS NULL FOR UPDATE",
        )
        .fetch_all(&mut **transaction)
        .await?;
    }
    Ok(())
}

/// Refuses a change that leaves no active admin (checked after the change, in its transaction).
async fn keep_an_admin(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    what: &str,
) -> Result<(), StoreError> {
    let admins: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM users WHERE role = 'admin' AND removed_ms IS NULL",
    )
    .fetch_one(&mut **transaction)
    .await?;
    if admins == 0 {
        return Err(StoreError::Conflict(format!(
            "{what} would leave no admin: make another user admin first"
        )));
    }
    Ok(())
}

impl Store {
    /// Creates a user with a fresh token of the default lifetime and returns the token (the
    /// only time it exists in clear). Refuses a name that is taken.
    pub async fn create_user(
        &self,
        name: &str,
        role: UserRole,
        created_by: &str,
    ) -> Result<String, StoreError> {
        let by = ChangedBy::api(created_by);
        Ok(self.create_user_with(name, role, by, DEFAULT_TOKEN_LIFETIME_MS).await?.token)
    }

    /// Creates a user (or gives a removed user's name to a new one) with a fresh token valid
    /// for `lifetime_ms`. Refuses a name an active user holds.
    pub async fn create_user_with(
        &self,
        name: &str,
        role: UserRole,
        by: ChangedBy<'_>,
        lifetime_ms: i64,
    ) -> Result<NewToken, StoreError> {
        validate_user_name(name).map_err(StoreError::Invalid)?;
        let now = now_ms();
        let mut transaction = self.pool().begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO users (name, role, created_ms, created_by) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET role = excluded.role, \
             created_ms = excluded.created_ms, created_by = excluded.created_by, \
             removed_ms = NULL, removed_by = NULL WHERE users.removed_ms IS NOT NULL",
        )
        .bind(name.to_string())
        .bind(role.as_str().to_string())
        .bind(now)
        .bind(by.actor.to_string())
        .execute(&mut *transaction)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("user {name} already exists")));
        }
        let token = insert_token(&mut transaction, name, now, lifetime_ms).await?;
        insert_in(
            &mut transaction,
            &event(
                by,
                "user.create",
                format!("user {name}"),
                format!("role {role}; token {} expires {}", token.id, time_text(token.expires_ms)),
            ),
        )
        .await?;
        transaction.commit().await?;
        Ok(token)
    }

    /// What `token` is: valid (with its user), unknown, expired, revoked, or of a removed user.
    /// A valid token's `last_used_ms` is brought up to date when it is a minute old.
    pub async fn authenticate(&self, token: &str) -> Result<Authentication, StoreError> {
        let row = sqlx::query(
            "SELECT u.name, u.role, u.created_ms, u.created_by, u.removed_ms, t.token_id, \
             t.expires_ms, t.revoked_ms, t.last_used_ms FROM api_tokens t \
             JOIN users u ON u.name = t.user_name WHERE t.token_sha256 = $1",
        )
        .bind(token_hash(token))
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else {
            return Ok(Authentication::Unknown);
        };
        let now = now_ms();
        let user = user_from_row(&row)?;
        let token_id: Option<String> = row.try_get("token_id")?;
        let token_id = token_id.unwrap_or_else(|| self::token_id(token));
        let removed_ms: Option<i64> = row.try_get("removed_ms")?;
        let expires_ms: Option<i64> = row.try_get("expires_ms")?;
        let revoked_ms: Option<i64> = row.try_get("revoked_ms")?;
        let last_used_ms: Option<i64> = row.try_get("last_used_ms")?;
        if removed_ms.is_some() {
            return Ok(Authentication::UserRemoved { user: user.name, token_id });
        }
        if revoked_ms.is_some_and(|revoked| revoked <= now) {
            return Ok(Authentication::Revoked { user: user.name, token_id });
        }
        if let Some(expires) = expires_ms
            && expires <= now
        {
            return Ok(Authentication::Expired { user: user.name, token_id, expired_ms: expires });
        }
        if last_used_ms.is_none_or(|used| now.saturating_sub(used) >= LAST_USED_RESOLUTION_MS) {
            // Best effort: a busy database must not fail the request over a statistic.
            let written =
                sqlx::query("UPDATE api_tokens SET last_used_ms = $1 WHERE token_id = $2")
                    .bind(now)
                    .bind(token_id.clone())
                    .execute(self.pool())
                    .await;
            if let Err(error) = written {
                tracing::debug!(%error, token = %token_id, "last use of a token not recorded");
            }
        }
        Ok(Authentication::Valid { user, token_id, expires_ms, revoked_ms })
    }

    /// The user a token belongs to, if the token is valid now.
    pub async fn user_for_token(&self, token: &str) -> Result<Option<User>, StoreError> {
        Ok(match self.authenticate(token).await? {
            Authentication::Valid { user, .. } => Some(user),
            _ => None,
        })
    }

    /// Every user that was not removed, by name, with its number of valid tokens.
    pub async fn list_users(&self) -> Result<Vec<UserListing>, StoreError> {
        let rows = sqlx::query(
            "SELECT u.name, u.role, u.created_ms, u.created_by, \
             (SELECT COUNT(*) FROM api_tokens t WHERE t.user_name = u.name \
              AND (t.revoked_ms IS NULL OR t.revoked_ms > $1) \
              AND (t.expires_ms IS NULL OR t.expires_ms > $1)) AS active_tokens \
             FROM users u WHERE u.removed_ms IS NULL ORDER BY u.name",
        )
        .bind(now_ms())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let active: i64 = row.try_get("active_tokens")?;
                Ok(UserListing {
                    user: user_from_row(row)?,
                    active_tokens: u64::try_from(active).unwrap_or(0),
                })
            })
            .collect()
    }

    /// The active user `name`, if there is one.
    pub async fn user(&self, name: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(
            "SELECT name, role, created_ms, created_by FROM users \
             WHERE name = $1 AND removed_ms IS NULL",
        )
        .bind(name.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// Gives the active user `name` the role `role`; returns the role it had (`None`: no such
    /// user). Refuses to demote the last admin.
    pub async fn set_user_role(
        &self,
        name: &str,
        role: UserRole,
        by: ChangedBy<'_>,
    ) -> Result<Option<UserRole>, StoreError> {
        let mut transaction = self.pool().begin().await?;
        lock_admins(self, &mut transaction).await?;
        let current: Option<String> =
            sqlx::query_scalar("SELECT role FROM users WHERE name = $1 AND removed_ms IS NULL")
                .bind(name.to_string())
                .fetch_optional(&mut *transaction)
                .await?;
        let Some(current) = current else {
            return Ok(None);
        };
        let previous: UserRole = current.parse().map_err(|reason| StoreError::Corrupt {
            what: format!("role of user {name}"),
            reason,
        })?;
        sqlx::query("UPDATE users SET role = $1 WHERE name = $2")
            .bind(role.as_str().to_string())
            .bind(name.to_string())
            .execute(&mut *transaction)
            .await?;
        keep_an_admin(&mut transaction, &format!("making {name} {role}")).await?;
        insert_in(
            &mut transaction,
            &event(by, "user.role", format!("user {name}"), format!("role {previous} → {role}")),
        )
        .await?;
        transaction.commit().await?;
        Ok(Some(previous))
    }

    /// Removes the active user `name` and revokes all its tokens; returns how many tokens
    /// were valid (`None`: no such user). Refuses to remove the last admin.
    pub async fn remove_user(
        &self,
        name: &str,
        by: ChangedBy<'_>,
    ) -> Result<Option<u64>, StoreError> {
        let now = now_ms();
        let mut transaction = self.pool().begin().await?;
        lock_admins(self, &mut transaction).await?;
        let removed = sqlx::query(
            "UPDATE users SET removed_ms = $1, removed_by = $2 \
             WHERE name = $3 AND removed_ms IS NULL",
        )
        .bind(now)
        .bind(by.actor.to_string())
        .bind(name.to_string())
        .execute(&mut *transaction)
        .await?;
        if removed.rows_affected() == 0 {
            return Ok(None);
        }
        keep_an_admin(&mut transaction, &format!("removing {name}")).await?;
        let revoked = sqlx::query(
            "UPDATE api_tokens SET revoked_ms = $1, revoked_by = $2 WHERE user_name = $3 \
             AND (revoked_ms IS NULL OR revoked_ms > $1) AND (expires_ms IS NULL OR expires_ms > $1)",
        )
        .bind(now)
        .bind(by.actor.to_string())
        .bind(name.to_string())
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        insert_in(
            &mut transaction,
            &event(
                by,
                "user.remove",
                format!("user {name}"),
                format!("{revoked} valid token(s) revoked"),
            ),
        )
        .await?;
        transaction.commit().await?;
        Ok(Some(revoked))
    }

    /// A new token for the active user `name`, valid for `lifetime_ms` (`None`: no such user).
    pub async fn issue_token(
        &self,
        name: &str,
        by: ChangedBy<'_>,
        lifetime_ms: i64,
    ) -> Result<Option<NewToken>, StoreError> {
        let now = now_ms();
        let mut transaction = self.pool().begin().await?;
        let active: Option<String> =
            sqlx::query_scalar("SELECT name FROM users WHERE name = $1 AND removed_ms IS NULL")
                .bind(name.to_string())
                .fetch_optional(&mut *transaction)
                .await?;
        if active.is_none() {
            return Ok(None);
        }
        let token = insert_token(&mut transaction, name, now, lifetime_ms).await?;
        insert_in(
            &mut transaction,
            &event(
                by,
                "token.create",
                format!("token {} of user {name}", token.id),
                format!("expires {}", time_text(token.expires_ms)),
            ),
        )
        .await?;
        transaction.commit().await?;
        Ok(Some(token))
    }

    /// The tokens of user `name` (also a removed one), newest first (`None`: no such user).
    pub async fn list_tokens(&self, name: &str) -> Result<Option<Vec<TokenInfo>>, StoreError> {
        let known: Option<String> = sqlx::query_scalar("SELECT name FROM users WHERE name = $1")
            .bind(name.to_string())
            .fetch_optional(self.pool())
            .await?;
        if known.is_none() {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT token_id, user_name, created_ms, expires_ms, revoked_ms, revoked_by, \
             last_used_ms FROM api_tokens WHERE user_name = $1 ORDER BY created_ms DESC, token_id",
        )
        .bind(name.to_string())
        .fetch_all(self.pool())
        .await?;
        let now = now_ms();
        rows.iter().map(|row| token_from_row(row, now)).collect::<Result<_, _>>().map(Some)
    }

    /// The token `id`, if there is one.
    pub async fn token(&self, id: &str) -> Result<Option<TokenInfo>, StoreError> {
        let row = sqlx::query(
            "SELECT token_id, user_name, created_ms, expires_ms, revoked_ms, revoked_by, \
             last_used_ms FROM api_tokens WHERE token_id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(|row| token_from_row(row, now_ms())).transpose()
    }

    /// Revokes token `id` now (also one whose rotation grace is running); returns it as it is
    /// afterwards and whether this call revoked it (`None`: no such token).
    pub async fn revoke_token(
        &self,
        id: &str,
        by: ChangedBy<'_>,
    ) -> Result<Option<(TokenInfo, bool)>, StoreError> {
        let now = now_ms();
        let mut transaction = self.pool().begin().await?;
        let revoked = sqlx::query(
            "UPDATE api_tokens SET revoked_ms = $1, revoked_by = $2 \
             WHERE token_id = $3 AND (revoked_ms IS NULL OR revoked_ms > $1)",
        )
        .bind(now)
        .bind(by.actor.to_string())
        .bind(id.to_string())
        .execute(&mut *transaction)
        .await?
        .rows_affected()
            > 0;
        let row = sqlx::query(
            "SELECT token_id, user_name, created_ms, expires_ms, revoked_ms, revoked_by, \
             last_used_ms FROM api_tokens WHERE token_id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&mut *transaction)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let info = token_from_row(&row, now)?;
        if revoked {
            insert_in(
                &mut transaction,
                &event(
                    by,
                    "token.revoke",
                    format!("token {} of user {}", info.id, info.user),
                    "revoked".into(),
                ),
            )
            .await?;
        }
        transaction.commit().await?;
        Ok(Some((info, revoked)))
    }

    /// Replaces the valid token `current_id` of `user` with a new one valid for
    /// `lifetime_ms`; the old one is revoked after `grace_ms` (0: at once). A token rotates
    /// once: rotating it again, or rotating a revoked one, is a conflict.
    pub async fn rotate_token(
        &self,
        current_id: &str,
        user: &str,
        lifetime_ms: i64,
        grace_ms: i64,
    ) -> Result<NewToken, StoreError> {
        let now = now_ms();
        let revoke_at = now.saturating_add(grace_ms.max(0));
        let mut transaction = self.pool().begin().await?;
        let retired = sqlx::query(
            "UPDATE api_tokens SET revoked_ms = $1, revoked_by = $2 \
             WHERE token_id = $3 AND user_name = $4 AND revoked_ms IS NULL \
             AND (expires_ms IS NULL OR expires_ms > $5)",
        )
        .bind(revoke_at)
        .bind(format!("{user} (rotated)"))
        .bind(current_id.to_string())
        .bind(user.to_string())
        .bind(now)
        .execute(&mut *transaction)
        .await?;
        if retired.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "token {current_id} was rotated or revoked already: use its successor"
            )));
        }
        let token = insert_token(&mut transaction, user, now, lifetime_ms).await?;
        insert_in(
            &mut transaction,
            &event(
                ChangedBy::api(user),
                "token.rotate",
                format!("token {current_id} of user {user}"),
                format!(
                    "replaced by token {} (expires {}); the old one is revoked {}",
                    token.id,
                    time_text(token.expires_ms),
                    if grace_ms <= 0 { "now".to_string() } else { time_text(revoke_at) }
                ),
            ),
        )
        .await?;
        transaction.commit().await?;
        Ok(token)
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

fn token_from_row(row: &sqlx::any::AnyRow, now: i64) -> Result<TokenInfo, StoreError> {
    let id: Option<String> = row.try_get("token_id")?;
    let expires_ms: Option<i64> = row.try_get("expires_ms")?;
    let revoked_ms: Option<i64> = row.try_get("revoked_ms")?;
    let state = if revoked_ms.is_some_and(|revoked| revoked <= now) {
        "revoked"
    } else if expires_ms.is_some_and(|expires| expires <= now) {
        "expired"
    } else {
        "active"
    };
    Ok(TokenInfo {
        id: id.unwrap_or_default(),
        user: row.try_get("user_name")?,
        created_ms: row.try_get("created_ms")?,
        expires_ms,
        revoked_ms,
        revoked_by: row.try_get("revoked_by")?,
        last_used_ms: row.try_get("last_used_ms")?,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids_are_public_prefixes_of_the_hash() {
        let token = "outpost_0123";
        let id = token_id(token);
        assert_eq!(id.len(), 16);
        assert!(token_hash(token).starts_with(&format!("sha256:{id}")));
        assert!(validate_token_id(&id).is_ok());
        assert!(validate_token_id("../../etc/passwd").is_err());
        assert!(validate_token_id("0123456789ABCDEF").is_err());
    }

    #[test]
    fn lifetimes_are_bounded() {
        assert_eq!(lifetime_ms(1), Ok(DAY_MS));
        assert!(lifetime_ms(0).is_err());
        assert!(lifetime_ms(u32::MAX).is_err());
    }
}
