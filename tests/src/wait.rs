//! Waiting on conditions with timeouts, instead of sleeping as synchronisation.
//!
//! Each helper checks its condition every [`POLL_INTERVAL`] until it holds and fails with a
//! message naming what was awaited once the timeout passes, so a slow machine only makes a
//! test slower, and a broken one fails with a reason instead of hanging. The async variants
//! use tokio's clock, so they also work under `tokio::time::pause()`.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A condition did not hold in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    pub what: String,
    pub timeout: Duration,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timed out after {:?} waiting for {}", self.timeout, self.what)
    }
}

impl std::error::Error for TimedOut {}

/// Waits until `condition` returns `Some`, checking every [`POLL_INTERVAL`], and returns it.
pub fn try_until_some<T>(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> Option<T>,
) -> Result<T, TimedOut> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(TimedOut { what: what.to_string(), timeout });
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

/// Waits until `condition` holds; panics naming `what` after `timeout`.
#[track_caller]
pub fn until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    if let Err(error) = try_until_some(timeout, what, || condition().then_some(())) {
        panic!("{error}");
    }
}

/// Waits until `condition` returns `Some` and returns it; panics naming `what` after `timeout`.
#[track_caller]
pub fn until_some<T>(timeout: Duration, what: &str, condition: impl FnMut() -> Option<T>) -> T {
    match try_until_some(timeout, what, condition) {
        Ok(value) => value,
        Err(error) => panic!("{error}"),
    }
}

/// The async form of [`try_until_some`]: `condition` is a closure returning a future.
pub async fn try_until_some_async<T, F, Fut>(
    timeout: Duration,
    what: &str,
    mut condition: F,
) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = condition().await {
            return Ok(value);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(TimedOut { what: what.to_string(), timeout });
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

/// Waits until the future made by `condition` yields `true`; panics naming `what` after
/// `timeout`.
pub async fn until_async<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let result = try_until_some_async(timeout, what, || {
        let check = condition();
        async move { check.await.then_some(()) }
    })
    .await;
    if let Err(error) = result {
        panic!("{error}");
    }
}

/// `future`'s output, or a panic naming `what` if it takes longer than `timeout`.
pub async fn within<T>(timeout: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(timeout, future).await {
        Ok(value) => value,
        Err(_) => panic!("{}", TimedOut { what: what.to_string(), timeout }),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn returns_as_soon_as_the_condition_holds() {
        let calls = Cell::new(0);
        let value = until_some(Duration::from_secs(5), "the third call", || {
            calls.set(calls.get() + 1);
            (calls.get() == 3).then_some("done")
        });
        assert_eq!(value, "done");
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn fails_with_what_was_awaited() {
        let error = try_until_some(Duration::from_millis(50), "a miracle", || None::<()>)
            .expect_err("never holds");
        assert_eq!(error.to_string(), "timed out after 50ms waiting for a miracle");
        let panic = std::panic::catch_unwind(|| until(Duration::ZERO, "nothing", || false))
            .expect_err("panics");
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("waiting for nothing"), "{message}");
    }

    #[tokio::test(start_paused = true)]
    async fn async_waits_follow_tokio_time() {
        let start = tokio::time::Instant::now();
        let result =
            try_until_some_async(Duration::from_secs(3600), "an hour", || async { None::<()> })
                .await;
        assert!(result.is_err());
        assert!(start.elapsed() >= Duration::from_secs(3600));
        let calls = Cell::new(0);
        until_async(Duration::from_secs(1), "two calls", || {
            calls.set(calls.get() + 1);
            let done = calls.get() >= 2;
            async move { done }
        })
        .await;
        assert_eq!(within(Duration::from_secs(1), "a ready future", async { 7 }).await, 7);
    }
}
