//! What a panic in `outpost serve` becomes. The control is built to unwind (the release
//! profile keeps `panic = "unwind"`; only the device profile aborts), so a panic ends the
//! task it happened in, never the process. This module owns the pieces that turn it into
//! something an operator sees:
//!
//! - [`install_hook`]: every panic is counted ([`panics_total`], exported as
//!   `outpost_panics_total`) and logged through `tracing` with its location and message.
//! - [`CatchUnwind`]: a future that answers `Err(message)` instead of unwinding further; the
//!   API wraps every request in it and answers a panic with a 500 (`crate::api::panic`), and
//!   the supervisor of background tasks (`crate::server::supervise`) restarts a task that
//!   panicked, with backoff.
//!
//! A panic is still a bug: these only keep one bug from taking the fleet's control down.
//!
//! Tests inject panics with the environment variable `OUTPOST_FAULT`, a comma-separated list
//! of `panic:api:<operationId>` (that route's handler panics) and `panic:task:<name>` (that
//! background task panics once, at its first start); see [`fault_injected`]. Without the
//! variable nothing is injected and no injection layer is even installed.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

/// Panics seen by the hook in this process.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// Whether the hook is installed (first caller wins).
static INSTALLED: OnceLock<()> = OnceLock::new();

/// Panics in this process since it started (counted from [`install_hook`] on).
pub fn panics_total() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// Installs the panic hook once per process: count, then log through `tracing` (target
/// `outpost::panic`). With `keep_previous`, the hook that was installed before also runs (the
/// test harness and the CLI's own hook keep working); without it, the log line is the only
/// report, as `outpost serve` wants.
pub fn install_hook(keep_previous: bool) {
    INSTALLED.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::Relaxed);
            let location =
                info.location().map_or_else(|| "unknown location".to_string(), ToString::to_string);
            let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
            tracing::error!(
                target: "outpost::panic",
                %location,
                %thread,
                message = %payload_message(info.payload()),
                "panic: the task is ended and reported; the server keeps running"
            );
            if keep_previous {
                previous(info);
            }
        }));
    });
}

/// The faults `OUTPOST_FAULT` asks for, read once.
static FAULTS: OnceLock<Vec<String>> = OnceLock::new();

/// Whether `OUTPOST_FAULT` asks for a panic at `point` (`api:<operationId>`, `task:<name>`).
pub fn fault_injected(point: &str) -> bool {
    let faults = FAULTS.get_or_init(|| {
        std::env::var("OUTPOST_FAULT")
            .unwrap_or_default()
            .split(',')
            .filter_map(|item| item.trim().strip_prefix("panic:").map(str::to_string))
            .collect()
    });
    faults.iter().any(|fault| fault == point)
}

/// Whether `OUTPOST_FAULT` asks for any panic in a route handler.
pub fn api_faults_injected() -> bool {
    std::env::var("OUTPOST_FAULT").is_ok_and(|faults| faults.contains("panic:api:"))
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub fn payload_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|text| (*text).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// A future that resolves to `Err(message)` when polling the inner future panics.
pub struct CatchUnwind<F> {
    inner: Pin<Box<F>>,
}

impl<F> std::fmt::Debug for CatchUnwind<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CatchUnwind")
    }
}

/// Wraps `future` so a panic while polling it becomes `Err(message)`.
pub fn catch_unwind<F: Future>(future: F) -> CatchUnwind<F> {
    CatchUnwind { inner: Box::pin(future) }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.inner.as_mut();
        // The inner future is never polled again after a panic (it is dropped with `self`), so
        // no broken invariant of it can be observed: asserting unwind safety is sound here.
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(context))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(payload) => Poll::Ready(Err(payload_message(payload.as_ref()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_future_becomes_an_error_with_its_message() {
        install_hook(true);
        let before = panics_total();
        let answer = catch_unwind(async {
            tokio::task::yield_now().await;
            let values: Vec<u32> = Vec::new();
            values.get(3).copied().unwrap_or_else(|| panic!("index {} is out of range", 3))
        })
        .await;
        assert_eq!(answer, Err("index 3 is out of range".to_string()));
        assert!(panics_total() > before, "the hook counted it");
        assert_eq!(catch_unwind(async { 7 }).await, Ok(7));
    }
}
