//! systemd integration over the `sd_notify(3)` protocol: readiness, stopping, status text and
//! the service watchdog, with the messages formatted by the `sd-notify` crate.
//!
//! Everything here is a no-op when the agent was not started by systemd (no `NOTIFY_SOCKET`
//! in the environment), so the same binary runs under systemd, in a terminal and in tests.
//!
//! How the agent uses it (see `outpost-agent.service` in `cross/debian/`, `Type=notify` with a
//! `WatchdogSec=`):
//!
//! 1. Read the environment once at start-up with [`Notifier::from_env`].
//! 2. Send [`Notifier::ready`] only when the model is loaded and the API is listening: systemd
//!    starts units ordered after the agent at that moment, and restarts the agent if it never
//!    comes.
//! 3. While serving, run [`run_watchdog`] on its own task with a health check: it pings at
//!    half of [`Notifier::watchdog_interval`] and only while the check passes, so a wedged
//!    runtime is restarted by systemd instead of being kept alive by a healthy timer.
//! 4. On shutdown send [`Notifier::stopping`] before draining.
//!
//! The socket path is read once instead of on every call, so a test can point a notifier at
//! its own socket ([`Notifier::with_socket`]) without changing the process environment.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use sd_notify::NotifyState;

/// The environment variable systemd sets to the notification socket of a `Type=notify` unit.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Where service state notifications go: systemd's socket, or nowhere.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<OsString>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The notifier systemd asked for: `NOTIFY_SOCKET` and, when the unit sets `WatchdogSec=`,
    /// `WATCHDOG_USEC` (honoured only when `WATCHDOG_PID` is unset or this process).
    pub fn from_env() -> Self {
        Self {
            socket: std::env::var_os(NOTIFY_SOCKET_ENV).filter(|path| !path.is_empty()),
            watchdog: sd_notify::watchdog_enabled().filter(|interval| !interval.is_zero()),
        }
    }

    /// A notifier that sends nothing: not running under systemd.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// A notifier sending to `socket` (a path, or `@name` for the abstract namespace) with the
    /// given watchdog interval.
    pub fn with_socket(socket: impl Into<OsString>, watchdog: Option<Duration>) -> Self {
        Self { socket: Some(socket.into()), watchdog }
    }

    /// Whether notifications go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Tells systemd the agent is serving (`READY=1`) with a status line.
    pub fn ready(&self, status: &str) -> io::Result<()> {
        self.send(&[NotifyState::Ready, NotifyState::Status(&one_line(status))])
    }

    /// Tells systemd the agent is shutting down (`STOPPING=1`).
    pub fn stopping(&self) -> io::Result<()> {
        self.send(&[NotifyState::Stopping])
    }

    /// Sets the status line `systemctl status outpost-agent` shows.
    pub fn status(&self, status: &str) -> io::Result<()> {
        self.send(&[NotifyState::Status(&one_line(status))])
    }

    /// Keeps the watchdog from firing (`WATCHDOG=1`). Send it only while the agent is healthy.
    pub fn watchdog(&self) -> io::Result<()> {
        self.send(&[NotifyState::Watchdog])
    }

    /// The unit's `WatchdogSec=`, when systemd enabled the watchdog for this process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.is_enabled())
    }

    /// How often to ping the watchdog: half its interval, as `sd_watchdog_enabled(3)` advises.
    pub fn watchdog_ping_period(&self) -> Option<Duration> {
        self.watchdog_interval().map(|interval| interval / 2)
    }

    fn send(&self, states: &[NotifyState<'_>]) -> io::Result<()> {
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        let message: String = states.iter().map(|state| format!("{state}\n")).collect();
        let datagram = connect(socket)?;
        let sent = datagram.send(message.as_bytes())?;
        if sent == message.len() {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::WriteZero, "sd_notify message cut short"))
        }
    }
}

/// Connects an unbound datagram socket to systemd's: a path, or `@name` in the abstract
/// namespace (systemd uses that inside some containers).
fn connect(socket: &OsStr) -> io::Result<UnixDatagram> {
    let datagram = UnixDatagram::unbound()?;
    match socket.as_encoded_bytes().strip_prefix(b"@") {
        Some(name) => connect_abstract(&datagram, name)?,
        None => datagram.connect(socket)?,
    }
    Ok(datagram)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn connect_abstract(datagram: &UnixDatagram, name: &[u8]) -> io::Result<()> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt as _;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt as _;
    datagram.connect_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name)?)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn connect_abstract(_: &UnixDatagram, _: &[u8]) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "abstract sockets need Linux"))
}

/// A status is one line of the notification message; a newline would start a new state.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// Pings the watchdog at [`Notifier::watchdog_ping_period`] for as long as it runs, skipping
/// every tick at which `healthy()` is false, so systemd restarts an agent that stopped
/// serving. Returns at once when the watchdog is off. Send failures are logged, not fatal:
/// systemd notices a missing ping by itself.
pub async fn run_watchdog(notifier: Notifier, healthy: impl Fn() -> bool) {
    let Some(period) = notifier.watchdog_ping_period() else {
        return;
    };
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !healthy() {
            tracing::warn!("runtime unhealthy: not pinging the systemd watchdog");
            continue;
        }
        if let Err(error) = notifier.watchdog() {
            tracing::warn!(%error, "could not ping the systemd watchdog");
        }
    }
}

/// [`Notifier::ready`] on the notifier the environment names.
pub fn notify_ready(status: &str) -> io::Result<()> {
    Notifier::from_env().ready(status)
}

/// [`Notifier::stopping`] on the notifier the environment names.
pub fn notify_stopping() -> io::Result<()> {
    Notifier::from_env().stopping()
}

/// [`Notifier::status`] on the notifier the environment names.
pub fn notify_status(status: &str) -> io::Result<()> {
    Notifier::from_env().status(status)
}

/// [`Notifier::watchdog`] on the notifier the environment names.
pub fn notify_watchdog() -> io::Result<()> {
    Notifier::from_env().watchdog()
}

/// [`Notifier::watchdog_interval`] of the environment: the unit's `WatchdogSec=`, if any.
pub fn watchdog_interval() -> Option<Duration> {
    Notifier::from_env().watchdog_interval()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A stand-in for systemd's notification socket in a temporary folder.
    struct FakeSystemd {
        _dir: tempfile::TempDir,
        socket: UnixDatagram,
        path: std::path::PathBuf,
    }

    impl FakeSystemd {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("notify");
            let socket = UnixDatagram::bind(&path).expect("bind the fake notify socket");
            // Every wait is bounded: a missing message fails the test instead of hanging it.
            socket.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
            Self { _dir: dir, socket, path }
        }

        fn path(&self) -> &Path {
            &self.path
        }

        fn receive(&self) -> String {
            let mut buffer = [0; 4096];
            let length = self.socket.recv(&mut buffer).expect("a notification");
            String::from_utf8_lossy(&buffer[..length]).into_owned()
        }
    }

    #[test]
    fn ready_stopping_status_and_watchdog_reach_the_socket() {
        let systemd = FakeSystemd::new();
        let notifier = Notifier::with_socket(systemd.path(), None);
        assert!(notifier.is_enabled());

        notifier.ready("serving mlp_classifier 1.0.0").expect("ready");
        assert_eq!(systemd.receive(), "READY=1\nSTATUS=serving mlp_classifier 1.0.0\n");
        notifier.status("two\nlines").expect("status");
        assert_eq!(systemd.receive(), "STATUS=two lines\n");
        notifier.watchdog().expect("watchdog");
        assert_eq!(systemd.receive(), "WATCHDOG=1\n");
        notifier.stopping().expect("stopping");
        assert_eq!(systemd.receive(), "STOPPING=1\n");
    }

    #[test]
    fn abstract_socket_names_are_reached() {
        let name = format!("outpost-agent-test-{}", std::process::id());
        let address = {
            use std::os::linux::net::SocketAddrExt as _;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("address")
        };
        let socket = UnixDatagram::bind_addr(&address).expect("bind abstract");
        socket.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
        Notifier::with_socket(format!("@{name}"), None).ready("up").expect("ready");
        let mut buffer = [0; 256];
        let length = socket.recv(&mut buffer).expect("a notification");
        assert_eq!(&buffer[..length], b"READY=1\nSTATUS=up\n");
    }

    #[test]
    fn without_systemd_everything_is_a_no_op() {
        let notifier = Notifier::disabled();
        assert!(!notifier.is_enabled());
        notifier.ready("up").expect("no-op");
        notifier.stopping().expect("no-op");
        notifier.watchdog().expect("no-op");
        assert_eq!(notifier.watchdog_interval(), None);
        // A watchdog interval without a socket to ping is no watchdog.
        let half_set = Notifier { socket: None, watchdog: Some(Duration::from_secs(30)) };
        assert_eq!(half_set.watchdog_ping_period(), None);
    }

    #[test]
    fn the_watchdog_is_pinged_at_half_its_interval() {
        let notifier = Notifier::with_socket("/nonexistent", Some(Duration::from_secs(30)));
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(30)));
        assert_eq!(notifier.watchdog_ping_period(), Some(Duration::from_secs(15)));
    }

    #[test]
    fn a_missing_socket_is_an_error_the_caller_can_log() {
        let notifier = Notifier::with_socket("/nonexistent/outpost/notify", None);
        assert!(notifier.ready("up").is_err());
    }

    fn watchdog_test_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .expect("tokio runtime")
    }

    #[test]
    fn the_watchdog_task_pings_only_while_healthy() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU32, Ordering};

        let systemd = FakeSystemd::new();
        let notifier = Notifier::with_socket(systemd.path(), Some(Duration::from_millis(20)));
        let checks = Arc::new(AtomicU32::new(0));
        let healthy = {
            let checks = Arc::clone(&checks);
            // Unhealthy for the first three ticks, then healthy.
            move || checks.fetch_add(1, Ordering::SeqCst) >= 3
        };
        let runtime = watchdog_test_runtime();
        let ticker = runtime.spawn(run_watchdog(notifier, healthy));
        // The fake socket's read timeout bounds the wait.
        assert_eq!(systemd.receive(), "WATCHDOG=1\n");
        assert!(checks.load(Ordering::SeqCst) >= 4, "pinged while unhealthy");
        ticker.abort();
    }

    #[test]
    fn the_watchdog_task_ends_at_once_without_a_watchdog() {
        let runtime = watchdog_test_runtime();
        // Would never return if it ticked: there is no interval to tick at.
        runtime.block_on(run_watchdog(Notifier::disabled(), || true));
        let no_interval = Notifier::with_socket("/nonexistent", None);
        runtime.block_on(run_watchdog(no_interval, || panic!("must not check health")));
    }
}
