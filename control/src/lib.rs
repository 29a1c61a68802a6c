//! `outpost-control`: the `outpost` command line (and, as it grows, the control server).
//!
//! - [`cli`]: argument definitions and one module per command family (`keys`, `trust`,
//!   `bundle`, `plan`). Commands are thin: verification and document logic live in
//!   `outpost-shared`; this crate adds files, passphrases and human output.
//! - [`audit`]: the tamper-evident audit trail: Merkle log, signed checkpoints, exports and
//!   their offline verification.
//! - [`files`]: atomic writes and key file handling.
//! - [`fleet_drift`]: merged windows compared with the baseline profile (fleet drift).
//! - [`panics`]: the panic strategy of `outpost serve`: count, log, answer 500, restart.
//! - [`rollout`]: staged rollouts: spec, lifecycle state machine, gates, the driver task.
//! - [`server`] (`outpost serve`), [`config`], [`store`] (SQLite / PostgreSQL), [`api`] (REST,
//!   route table with roles, OpenAPI, and the client the CLI uses).
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod ca;
pub mod cli;
pub mod config;
pub mod files;
pub mod fleet_drift;
pub mod panics;
pub mod rollout;
pub mod server;
pub mod store;
