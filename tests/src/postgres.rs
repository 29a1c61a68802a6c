//! A real PostgreSQL server for tests: `initdb` into a fresh temporary directory and `pg_ctl
//! start` on a free loopback port, stopped and deleted on drop. Nothing depends on a service
//! left running by hand.
//!
//! PostgreSQL refuses to run as root. When the tests run as root (containers, CI), the server
//! runs as the `postgres` user (`runuser -u postgres`) in a directory handed to that user; the
//! Debian `postgresql` package creates the user and `cargo xtask test` installs the package.
//! The binaries are found in `/usr/lib/postgresql/<newest>/bin`, or `OUTPOST_PG_BIN`.

use std::fmt;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Environment variable naming the directory of `initdb` and `pg_ctl`.
pub const BIN_DIR_ENV: &str = "OUTPOST_PG_BIN";

/// Why a server could not be started, with what to do about it.
#[derive(Debug)]
pub struct PostgresError(String);

impl fmt::Display for PostgresError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PostgresError {}

fn fail(message: impl Into<String>) -> PostgresError {
    PostgresError(message.into())
}

/// A running PostgreSQL server; dropped, it stops and its directory is deleted.
#[derive(Debug)]
pub struct Postgres {
    directory: tempfile::TempDir,
    bin_dir: PathBuf,
    port: u16,
    run_as_postgres: bool,
}

/// The directory holding `initdb` and `pg_ctl`.
pub fn find_bin_dir() -> Result<PathBuf, PostgresError> {
    if let Ok(dir) = std::env::var(BIN_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| {
            fail(
                "PostgreSQL server binaries not found in /usr/lib/postgresql: install the \
                 `postgresql` package (apt-get install postgresql; `cargo xtask test` does) or \
                 set OUTPOST_PG_BIN",
            )
        })?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| fail("no /usr/lib/postgresql/<version>/bin/initdb: install `postgresql`"))
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> Result<u16, PostgresError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|error| fail(format!("cannot find a free port: {error}")))
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\n{}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

impl Postgres {
    /// Initialises a cluster in a new temporary directory and starts it on a free port, with
    /// fsync off (tests need no durability across a power cut).
    pub fn start() -> Result<Postgres, PostgresError> {
        Postgres::start_with_fsync(false)
    }

    /// [`Postgres::start`] with fsync on, as a production server runs (for benchmarks).
    pub fn start_durable() -> Result<Postgres, PostgresError> {
        Postgres::start_with_fsync(true)
    }

    fn start_with_fsync(fsync: bool) -> Result<Postgres, PostgresError> {
        let bin_dir = find_bin_dir()?;
        let run_as_postgres = running_as_root();
        if run_as_postgres {
            let exists = Command::new("id").args(["-u", "postgres"]).output();
            if !exists.is_ok_and(|out| out.status.success()) {
                return Err(fail(
                    "PostgreSQL refuses to run as root and there is no `postgres` user to run it \
                     as: install the `postgresql` package (it creates the user; `cargo xtask \
                     test` installs it)",
                ));
            }
        }
        let directory = tempfile::Builder::new()
            .prefix("outpost-pg-")
            .tempdir()
            .map_err(|error| fail(format!("cannot create a temporary directory: {error}")))?;
        let mut server = Postgres { directory, bin_dir, port: 0, run_as_postgres };
        if run_as_postgres {
            server.run_checked(
                "chown",
                &["chown", "postgres:postgres", &server.dir_text()],
                false,
            )?;
        }
        let data = server.data_dir_text();
        server.run_checked(
            "initdb",
            &[
                &server.bin("initdb"),
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            true,
        )?;
        // A port found free can be taken before the server binds it: try a few.
        let mut last_error = None;
        for _ in 0..3 {
            server.port = free_port()?;
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync={}",
                server.port,
                server.dir_text(),
                if fsync { "on" } else { "off" }
            );
            let log = server.directory.path().join("server.log").display().to_string();
            match server.run_checked(
                "pg_ctl start",
                &[
                    &server.bin("pg_ctl"),
                    "-D",
                    &data,
                    "-l",
                    &log,
                    "-o",
                    &options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
                true,
            ) {
                Ok(()) => return Ok(server),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| fail("pg_ctl start failed")))
    }

    fn dir_text(&self) -> String {
        self.directory.path().display().to_string()
    }

    fn data_dir_text(&self) -> String {
        self.directory.path().join("data").display().to_string()
    }

    fn bin(&self, name: &str) -> String {
        self.bin_dir.join(name).display().to_string()
    }

    /// Runs `argv` (as the `postgres` user when needed) and fails with its output.
    fn run_checked(
        &self,
        what: &str,
        argv: &[&str],
        as_postgres: bool,
    ) -> Result<(), PostgresError> {
        let mut command = if as_postgres && self.run_as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).args(argv);
            command
        } else {
            let mut command = Command::new(argv[0]);
            command.args(&argv[1..]);
            command
        };
        let output = command
            .current_dir(self.directory.path())
            .output()
            .map_err(|error| fail(format!("cannot run {what}: {error}")))?;
        if output.status.success() {
            Ok(())
        } else {
            let log = std::fs::read_to_string(self.directory.path().join("server.log"))
                .unwrap_or_default();
            Err(fail(format!("{what} failed: {}\nserver log:\n{log}", describe(&output))))
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of the `postgres` database as the `postgres` superuser (trust auth on loopback).
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The URL of database `name` on this server.
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates an empty database and returns its URL, so tests can share one server.
    pub fn create_database(&self, name: &str) -> Result<String, PostgresError> {
        let port = self.port.to_string();
        self.run_checked(
            "createdb",
            &[&self.bin("createdb"), "-h", "127.0.0.1", "-p", &port, "-U", "postgres", name],
            true,
        )?;
        Ok(self.database_url(name))
    }

    /// The server's temporary directory.
    pub fn directory(&self) -> &Path {
        self.directory.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data_dir_text();
        let _ = self.run_checked(
            "pg_ctl stop",
            &[&self.bin("pg_ctl"), "-D", &data, "-m", "immediate", "-w", "-t", "30", "stop"],
            true,
        );
    }
}
