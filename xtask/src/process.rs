//! Running child processes: announcing each step on stderr, showing commands the way a user
//! would type them, running with inherited output (tools people know, like cargo and apt-get)
//! or captured with a time limit (the demo, which narrates each command's output itself).

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Announces a step on stderr as `==> what`, so a new user always knows what is happening.
macro_rules! step {
    ($($arg:tt)*) => {
        eprintln!("==> {}", format_args!($($arg)*))
    };
}
pub(crate) use step;

/// The repository root: the parent of this crate's folder.
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The cargo that runs this xtask (cargo sets `CARGO` for the programs it runs), so every
/// nested build uses the same toolchain.
pub fn cargo_program() -> PathBuf {
    std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from)
}

/// The cargo target folder: `CARGO_TARGET_DIR` (made absolute against the folder xtask was
/// started in, as cargo reads it) or `<repo>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => {
            std::env::current_dir().map(|cwd| cwd.join(&dir)).unwrap_or_else(|_| PathBuf::from(dir))
        }
        None => repo_root().join("target"),
    }
}

/// A `cargo` command running in the repository root. A relative `CARGO_TARGET_DIR` is passed
/// on made absolute, so the nested cargo builds where the outer one did.
pub fn cargo() -> Command {
    let mut command = Command::new(cargo_program());
    command.current_dir(repo_root());
    if std::env::var_os("CARGO_TARGET_DIR")
        .is_some_and(|dir| !dir.is_empty() && Path::new(&dir).is_relative())
    {
        command.env("CARGO_TARGET_DIR", target_dir());
    }
    command
}

/// Quotes one word for display the way a POSIX shell would need it.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%^".contains(&b));
    if plain { word.to_string() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

/// A command line as a user would type it. The cargo binary that runs xtask is shown as
/// `cargo`, and environment variables set on the command are shown in front.
pub fn display(command: &Command) -> String {
    let program = command.get_program();
    let program_text = if Path::new(program) == cargo_program() {
        "cargo".to_string()
    } else {
        shell_quote(&program.to_string_lossy())
    };
    let envs = command.get_envs().filter_map(|(key, value)| {
        value.map(|value| {
            format!("{}={}", key.to_string_lossy(), shell_quote(&value.to_string_lossy()))
        })
    });
    let args = command.get_args().map(|arg: &OsStr| shell_quote(&arg.to_string_lossy()));
    envs.chain(std::iter::once(program_text)).chain(args).collect::<Vec<_>>().join(" ")
}

/// Announces `what` with the command line, runs it with inherited stdio and fails unless it
/// exits 0.
pub fn run(what: &str, command: &mut Command) -> Result<()> {
    let line = display(command);
    step!("{what}: {line}");
    let status = command.status().with_context(|| format!("could not start `{line}`"))?;
    check_status(status, &line)
}

fn check_status(status: ExitStatus, line: &str) -> Result<()> {
    if status.success() { Ok(()) } else { bail!("`{line}` failed ({status})") }
}

/// Runs `command` with captured output; on failure the output is shown and the error says so.
/// For helpers whose output only matters when they fail.
pub fn run_quietly(command: &mut Command) -> Result<()> {
    let line = display(command);
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !output.status.success() {
        eprint!("{}", String::from_utf8_lossy(&output.stdout));
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
    }
    check_status(output.status, &line)
}

/// Whether `command` starts and exits 0, with its output discarded. For probes such as
/// "is this tool installed?".
pub fn succeeds(command: &mut Command) -> bool {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// What a command with captured output did.
#[derive(Debug)]
pub struct Captured {
    /// The exit code; `None` when the process was killed by a signal or by the time limit.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

/// Runs `command` with stdin closed and stdout/stderr captured, killing it after `limit`.
pub fn run_captured(command: &mut Command, limit: Duration) -> Result<Captured> {
    let line = display(command);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let started = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().with_context(|| format!("waiting for `{line}`"))? {
            break status;
        }
        if started.elapsed() >= limit {
            timed_out = true;
            // The child may exit between the check and the kill; the wait below settles it.
            let _ = child.kill();
            break child
                .wait()
                .with_context(|| format!("waiting for `{line}` after killing it"))?;
        }
        thread::sleep(Duration::from_millis(20));
    };
    Ok(Captured {
        code: if timed_out { None } else { status.code() },
        stdout: stdout.map(join_drain).unwrap_or_default(),
        stderr: stderr.map(join_drain).unwrap_or_default(),
        timed_out,
    })
}

/// Reads a pipe to its end on a thread, so a chatty child never blocks on a full pipe.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error leaves what was read so far, which is all the demo can show anyway.
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn join_drain(handle: thread::JoinHandle<String>) -> String {
    handle.join().unwrap_or_else(|_| String::from("(output lost: the reader thread panicked)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_leaves_plain_words_alone_and_quotes_the_rest() {
        let cases = [
            ("keys/root1.pub.json", "keys/root1.pub.json"),
            ("site=berlin", "site=berlin"),
            ("--root-threshold", "--root-threshold"),
            ("${Status}", "'${Status}'"),
            ("two words", "'two words'"),
            ("it's", r"'it'\''s'"),
            ("", "''"),
        ];
        for (word, expected) in cases {
            assert_eq!(shell_quote(word), expected, "quoting {word:?}");
        }
    }

    #[test]
    fn display_shows_env_program_and_args() {
        let mut command = Command::new("apt-get");
        command.env("DEBIAN_FRONTEND", "noninteractive").args(["install", "-y", "xvfb"]);
        assert_eq!(display(&command), "DEBIAN_FRONTEND=noninteractive apt-get install -y xvfb");
        assert_eq!(display(cargo().args(["fmt", "--all"])), "cargo fmt --all");
    }

    #[test]
    fn captured_run_reports_exit_code_and_both_streams() -> Result<()> {
        let mut command = Command::new("sh");
        command.args(["-c", "echo out; echo err >&2; exit 3"]);
        let captured = run_captured(&mut command, Duration::from_secs(30))?;
        assert_eq!(captured.code, Some(3));
        assert_eq!(captured.stdout, "out\n");
        assert_eq!(captured.stderr, "err\n");
        assert!(!captured.timed_out);
        Ok(())
    }

    #[test]
    fn captured_run_kills_a_child_past_its_time_limit() -> Result<()> {
        let mut command = Command::new("sleep");
        command.arg("30");
        let started = Instant::now();
        let captured = run_captured(&mut command, Duration::from_millis(100))?;
        assert!(captured.timed_out);
        assert_eq!(captured.code, None);
        assert!(started.elapsed() < Duration::from_secs(10));
        Ok(())
    }

    #[test]
    fn run_fails_with_the_command_line_in_the_error() {
        let mut command = Command::new("sh");
        command.args(["-c", "exit 2"]);
        let error = run_quietly(&mut command).expect_err("exit 2 is a failure");
        assert!(format!("{error:#}").contains("`sh -c 'exit 2'` failed"), "{error:#}");
    }
}
