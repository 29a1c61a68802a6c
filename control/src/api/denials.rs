//! Denied requests: limited per source and audited as counted, aggregated records.
//!
//! **Rate limit.** Each source (the client's IP address; IPv6 by its /64, which one host
//! usually holds whole) has a bucket of `api.denied_burst` denials, refilled at
//! `api.denied_per_minute`. A denial (401, 403) takes one; a source whose bucket is empty is
//! answered 429 with `Retry-After` for every route that needs a token, before the token is
//! even looked up. Public routes (`/health`, `/openapi.json`) stay open. At most
//! [`MAX_SOURCES`] buckets are kept: full ones are dropped first, and when every kept source is
//! still limited, new sources share one bucket (a flood from many addresses is limited as one).
//!
//! **Audit.** A denial is an `auth.denied` record with who (`actor`: the user, or `anonymous`),
//! what (`subject`: the route, `outcome`: the status, `reason`) and from where (the source, in
//! the reason). The first denial of a kind — same actor, route, status, reason and source — is
//! recorded at once; the ones after it are counted and written as one record per kind every
//! `api.denied_audit_interval_seconds` (and when the server stops), with the count and the
//! first and last time. So a flood of 20,000 requests leaves a handful of records, not 20,000,
//! and those records are ordinary audit records: in the Merkle log, exported and verified
//! offline like any other. A kind quiet for a whole interval is forgotten, so its next denial
//! is again recorded at once. At most [`MAX_KINDS`] kinds are told apart per interval; beyond
//! that, denials are counted together under one record naming how many sources they came from.
//!
//! Rate-limited requests (429) are denials too, aggregated the same way. What a crash loses is
//! the count of the current interval, never the first record of a kind.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::audit::NewAuditEvent;

/// Sources whose buckets are kept.
pub const MAX_SOURCES: usize = 10_000;
/// Kinds of denial told apart per interval.
pub const MAX_KINDS: usize = 1_000;
/// The source name used for the shared bucket and the overflow record.
const MANY_SOURCES: &str = "many sources";

/// How denials are limited and aggregated (`[api]` in the configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct DenialConfig {
    /// Denials a source may have in a burst before it is answered 429.
    pub burst: u32,
    /// Denials a source is allowed per minute, sustained.
    pub per_minute: u32,
    /// How often counted denials are written to the audit log.
    pub audit_interval: Duration,
}

impl Default for DenialConfig {
    fn default() -> Self {
        DenialConfig { burst: 30, per_minute: 30, audit_interval: Duration::from_secs(60) }
    }
}

/// One denied request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Denial {
    /// The user, or `anonymous`.
    pub actor: String,
    /// `METHOD /route/{template}`.
    pub subject: String,
    /// The status: `401`, `403` or `429`.
    pub outcome: String,
    /// Why, as the client was told.
    pub reason: String,
    /// The source address ([`source_of`]).
    pub source: String,
}

/// The source a request is limited and recorded by: the IP address, IPv6 as its /64.
pub fn source_of(address: Option<IpAddr>) -> String {
    match address {
        None => "unknown".into(),
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let segments = v6.segments();
                format!(
                    "{:x}:{:x}:{:x}:{:x}::/64",
                    segments[0], segments[1], segments[2], segments[3]
                )
            }
        },
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug)]
struct Kind {
    /// Denials after the first one recorded, not yet written.
    count: u64,
    first_ms: i64,
    last_ms: i64,
}

#[derive(Debug, Default)]
struct State {
    buckets: HashMap<String, Bucket>,
    kinds: BTreeMap<Denial, Kind>,
    /// Denials beyond [`MAX_KINDS`] this interval, and their sources (a bounded sample).
    overflow: u64,
    overflow_first_ms: i64,
    overflow_last_ms: i64,
    overflow_sources: BTreeSet<String>,
}

/// The limiter and aggregator one API instance shares across requests.
#[derive(Debug)]
pub struct Denials {
    config: DenialConfig,
    state: Mutex<State>,
}

impl Denials {
    pub fn new(config: DenialConfig) -> Denials {
        Denials { config, state: Mutex::new(State::default()) }
    }

    pub fn config(&self) -> &DenialConfig {
        &self.config
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let per_second = f64::from(self.config.per_minute) / 60.0;
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(f64::from(self.config.burst));
        bucket.updated = now;
    }

    /// The bucket key of `source`: its own, or the shared one when no room is left.
    fn bucket_key(&self, state: &mut State, source: &str, now: Instant) -> String {
        if state.buckets.contains_key(source) || state.buckets.len() < MAX_SOURCES {
            return source.to_string();
        }
        // Full: forget the sources whose buckets have refilled (they are as good as new).
        let burst = f64::from(self.config.burst);
        let per_second = f64::from(self.config.per_minute) / 60.0;
        state.buckets.retain(|_, bucket| {
            let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
            bucket.tokens + elapsed * per_second < burst
        });
        if state.buckets.len() < MAX_SOURCES {
            source.to_string()
        } else {
            MANY_SOURCES.to_string()
        }
    }

    /// `Err(seconds)` when `source` has used up its denials: answer 429, retry after that.
    pub fn check(&self, source: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut state = self.state();
        let key = self.bucket_key(&mut state, source, now);
        let Some(bucket) = state.buckets.get_mut(&key) else {
            return Ok(());
        };
        let mut bucket_now = Bucket { tokens: bucket.tokens, updated: bucket.updated };
        self.refill(&mut bucket_now, now);
        *bucket = bucket_now;
        if bucket.tokens >= 1.0 {
            return Ok(());
        }
        let per_second = f64::from(self.config.per_minute.max(1)) / 60.0;
        let wait = ((1.0 - bucket.tokens) / per_second).ceil();
        Err(if wait.is_finite() && wait >= 1.0 { wait as u64 } else { 1 })
    }

    /// Counts `denial` against its source's bucket and in the audit aggregation; returns the
    /// record to write now when it is the first of its kind.
    pub fn record(&self, denial: Denial, now_ms: i64) -> Option<NewAuditEvent> {
        let now = Instant::now();
        let mut state = self.state();
        if denial.outcome != "429" {
            let key = self.bucket_key(&mut state, &denial.source, now);
            let burst = f64::from(self.config.burst);
            let bucket =
                state.buckets.entry(key).or_insert_with(|| Bucket { tokens: burst, updated: now });
            let mut refilled = Bucket { tokens: bucket.tokens, updated: bucket.updated };
            self.refill(&mut refilled, now);
            *bucket = Bucket { tokens: (refilled.tokens - 1.0).max(0.0), updated: now };
        }
        if let Some(kind) = state.kinds.get_mut(&denial) {
            kind.count += 1;
            if kind.count == 1 {
                kind.first_ms = now_ms;
            }
            kind.last_ms = now_ms;
            return None;
        }
        if state.kinds.len() >= MAX_KINDS {
            if state.overflow == 0 {
                state.overflow_first_ms = now_ms;
            }
            state.overflow += 1;
            state.overflow_last_ms = now_ms;
            if state.overflow_sources.len() < MAX_SOURCES {
                state.overflow_sources.insert(denial.source);
            }
            return None;
        }
        let event = event_of(
            &denial,
            &format!("1 request from {} at {}", denial.source, time_text(now_ms)),
        );
        state.kinds.insert(denial, Kind { count: 0, first_ms: now_ms, last_ms: now_ms });
        Some(event)
    }

    /// The aggregated records of the interval that ends now; kinds quiet for the whole
    /// interval are forgotten.
    pub fn take_counted(&self) -> Vec<NewAuditEvent> {
        let mut state = self.state();
        let mut events = Vec::new();
        state.kinds.retain(|denial, kind| {
            if kind.count == 0 {
                return false;
            }
            let plural = if kind.count == 1 { "request" } else { "requests" };
            events.push(event_of(
                denial,
                &format!(
                    "{} more {plural} from {} from {} to {}",
                    kind.count,
                    denial.source,
                    time_text(kind.first_ms),
                    time_text(kind.last_ms)
                ),
            ));
            kind.count = 0;
            true
        });
        if state.overflow > 0 {
            let sources = state.overflow_sources.len();
            events.push(NewAuditEvent {
                actor: "*".into(),
                action: "auth.denied".into(),
                subject: "*".into(),
                outcome: "denied".into(),
                reason: format!(
                    "{} requests from {} from {} to {}: denials beyond {MAX_KINDS} kinds in one \
                     interval, counted together ({sources} distinct sources)",
                    state.overflow,
                    MANY_SOURCES,
                    time_text(state.overflow_first_ms),
                    time_text(state.overflow_last_ms)
                ),
                source: "api".into(),
                ..Default::default()
            });
            state.overflow = 0;
            state.overflow_sources.clear();
        }
        events
    }
}

fn event_of(denial: &Denial, counted: &str) -> NewAuditEvent {
    NewAuditEvent {
        actor: denial.actor.clone(),
        action: "auth.denied".into(),
        subject: denial.subject.clone(),
        outcome: denial.outcome.clone(),
        reason: format!("{counted}: {}", denial.reason),
        source: "api".into(),
        ..Default::default()
    }
}

fn time_text(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|time| {
            time.format(&time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// Writes the counted denials every `interval` until `stop`, then once more.
pub async fn run_writer(
    denials: std::sync::Arc<Denials>,
    store: crate::store::Store,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let write = |events: Vec<NewAuditEvent>| {
        let store = store.clone();
        async move {
            for event in events {
                if let Err(error) = store.record_audit_event(&event).await {
                    tracing::error!(%error, "cannot record counted denied requests in the audit log");
                }
            }
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(denials.config.audit_interval) => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        write(denials.take_counted()).await;
    }
    write(denials.take_counted()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(source: &str, actor: &str) -> Denial {
        Denial {
            actor: actor.into(),
            subject: "POST /v1/users".into(),
            outcome: "401".into(),
            reason: "authentication required".into(),
            source: source.into(),
        }
    }

    #[test]
    fn a_flood_is_one_record_now_and_one_counted_record_later() {
        let denials = Denials::new(DenialConfig::default());
        let first = denials.record(denial("192.0.2.1", "anonymous"), 1_000).expect("first");
        assert!(first.reason.starts_with("1 request from 192.0.2.1 at 1970-01-01T00:00:01.000Z"));
        for ms in 1_001..21_000 {
            assert!(denials.record(denial("192.0.2.1", "anonymous"), ms).is_none());
        }
        let counted = denials.take_counted();
        assert_eq!(counted.len(), 1);
        assert!(
            counted[0].reason.starts_with(
                "19999 more requests from 192.0.2.1 from 1970-01-01T00:00:01.001Z to \
                 1970-01-01T00:00:20.999Z: authentication required"
            ),
            "{}",
            counted[0].reason
        );
        // Still active: the next interval counts on without an immediate record.
        assert!(denials.record(denial("192.0.2.1", "anonymous"), 30_000).is_none());
        assert_eq!(denials.take_counted().len(), 1);
        // Quiet for an interval: forgotten, so the next one is recorded at once.
        assert!(denials.take_counted().is_empty());
        assert!(denials.record(denial("192.0.2.1", "anonymous"), 90_000).is_some());
    }

    #[test]
    fn a_source_is_limited_after_its_burst_and_others_are_not() {
        let denials =
            Denials::new(DenialConfig { burst: 3, per_minute: 1, ..DenialConfig::default() });
        for _ in 0..3 {
            assert!(denials.check("192.0.2.1").is_ok());
            denials.record(denial("192.0.2.1", "anonymous"), 0);
        }
        let retry = denials.check("192.0.2.1").expect_err("limited");
        assert!((1..=60).contains(&retry), "{retry}");
        assert!(denials.check("192.0.2.2").is_ok());
    }

    #[test]
    fn many_sources_share_one_bucket_and_one_record_when_the_tables_are_full() {
        let denials =
            Denials::new(DenialConfig { burst: 1, per_minute: 1, ..DenialConfig::default() });
        let mut immediate = 0;
        for index in 0..(MAX_SOURCES + 500) {
            let source = format!("10.{}.{}.{}", index >> 16, (index >> 8) & 255, index & 255);
            if denials.record(denial(&source, "anonymous"), 5).is_some() {
                immediate += 1;
            }
        }
        assert_eq!(immediate, MAX_KINDS, "only so many kinds are recorded one by one");
        let counted = denials.take_counted();
        assert_eq!(counted.len(), 1, "the rest are one record");
        assert!(counted[0].reason.contains(&format!("{} requests", MAX_SOURCES + 500 - MAX_KINDS)));
        // Every source used its one denial; new ones share the last bucket.
        assert!(denials.check("172.16.0.1").is_err());
        assert!(denials.state().buckets.len() <= MAX_SOURCES + 1);
    }

    #[test]
    fn sources_are_addresses_and_ipv6_prefixes() {
        assert_eq!(source_of(Some("192.0.2.7".parse().expect("ip"))), "192.0.2.7");
        assert_eq!(
            source_of(Some("2001:db8:1:2:3:4:5:6".parse().expect("ip"))),
            "2001:db8:1:2::/64"
        );
        assert_eq!(source_of(Some("::ffff:192.0.2.7".parse().expect("ip"))), "192.0.2.7");
        assert_eq!(source_of(None), "unknown");
    }
}
