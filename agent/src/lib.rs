//! `outpost-agent`: the device side of Outpost — runs a verified ONNX model with tract, serves
//! it locally, and reports what it sees over MQTT.
//!
//! - [`runtime`]: [`Runtime`], the in-process inference API (one optimized plan per model,
//!   statistics recorded on every call).
//! - [`window`]: the sans-IO statistics window accumulator over the baseline profile's bins.
//! - [`api`]: the Open Inference Protocol v2 REST server on loopback or a Unix socket.
//! - [`store`]: the data directory — trust root, A/B slots, `state.json` — written atomically.
//! - [`config`]: the typed configuration (embedded default, file, environment).
//! - [`app`]: the commands of the binary wired together (`run`, `provision`, `check-model`).
//! - [`mqtt`], [`queue`], [`backoff`]: telemetry to the broker and the offline window queue.
//! - [`update`]: verified model updates — plan admission, resumable download, A/B install,
//!   acceptance, shadow, health watch, commit or rollback.
//! - [`systemd`]: readiness and watchdog notifications.
//! - [`fsutil`]: crash-safe file writes.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod backoff;
pub mod config;
pub mod fsutil;
pub mod mqtt;
pub mod queue;
pub mod runtime;
pub mod sampling;
pub mod store;
pub mod systemd;
pub mod update;
pub mod window;

pub use config::AgentConfig;
pub use runtime::{Runtime, RuntimeError};
pub use store::Store;
pub use window::WindowAccumulator;
