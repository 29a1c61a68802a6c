//! Supervised background tasks: a task of `outpost serve` (the MQTT subscriber, the rollout
//! driver, the audit log, the drift monitor, …) that panics is logged (by the panic hook),
//! counted in `outpost_task_restarts_total{task}` and started again after a backoff, instead
//! of leaving the server running without it. A task that returns has finished (the server is
//! stopping) and is not restarted.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::metrics::Metrics;

/// The first pause before a restart; it doubles with each panic in a row up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest pause before a restart.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A task that ran this long before panicking is restarted after [`FIRST_BACKOFF`] again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs `make()` as a task named `name`, and again after a backoff each time it panics, until
/// it returns or `stop` turns true.
pub fn supervise<F, Fut>(
    name: &'static str,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
    mut make: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut backoff = FIRST_BACKOFF;
        let mut first = true;
        loop {
            let started = Instant::now();
            let task = make();
            let inject = first && crate::panics::fault_injected(&format!("task:{name}"));
            first = false;
            let result = tokio::spawn(async move {
                if inject {
                    panic!("injected fault: task {name} panics once");
                }
                task.await;
            })
            .await;
            let message = match result {
                Ok(()) => return,
                Err(error) if error.is_cancelled() => return,
                Err(error) => crate::panics::payload_message(error.into_panic().as_ref()),
            };
            metrics.task_restarted(name);
            if *stop.borrow() {
                return;
            }
            if started.elapsed() >= HEALTHY_RUN {
                backoff = FIRST_BACKOFF;
            }
            tracing::error!(task = name, %message, ?backoff, "background task panicked; restarting");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_is_restarted_with_backoff_and_counted() {
        crate::panics::install_hook(true);
        let metrics = Arc::new(Metrics::default());
        let (_stop, stop_receiver) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let handle = supervise("flaky", metrics.clone(), stop_receiver, move || {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                assert!(run >= 2, "run {run} fails");
            }
        });
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("the third run returns")
            .expect("supervisor ends cleanly");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(metrics.task_restarts("flaky"), 2);
    }

    #[tokio::test]
    async fn stopping_ends_the_backoff() {
        crate::panics::install_hook(true);
        let metrics = Arc::new(Metrics::default());
        let (stop, stop_receiver) = watch::channel(false);
        let handle = supervise("always-fails", metrics.clone(), stop_receiver, || async {
            panic!("always");
        });
        // Let it fail twice, then stop: the supervisor ends instead of restarting again.
        // (Polling a counter with a timeout; the backoff itself is what takes the time.)
        tokio::time::timeout(Duration::from_secs(10), async {
            while metrics.task_restarts("always-fails") < 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("two restarts");
        stop.send(true).expect("stop");
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("ends after stop, without waiting out the backoff")
            .expect("clean end");
    }
}
