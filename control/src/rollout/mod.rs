//! Staged rollouts (DESIGN §8): a signed plan reaches a cohort in waves, each judged by gates
//! before the next, with a holdout kept on the previous model until completion.
//!
//! - [`spec`]: what an operator asks for (waves, gates, holdout, policy), validated.
//! - [`machine`]: the lifecycle as a state machine without IO: commands and ticks in,
//!   transitions with their effects out.
//! - [`gates`]: the gate judgement of a wave from figures the driver gathered (no IO).
//! - [`placement`]: the deterministic choice of holdout and wave order per device.
//! - [`driver`]: the task that drives running rollouts under a lease: admits waves, gathers
//!   gate figures from device events and ingested windows, applies transitions.
//!
//! State lives in the database (`crate::store::rollouts`); a restarted server resumes where
//! the stored state says.

pub mod driver;
pub mod gates;
pub mod machine;
pub mod placement;
pub mod spec;

pub use machine::{Command, RolloutState, WavePhase};
pub use spec::{Advance, GateThresholds, OnGateFail, RolloutSpec, WaveSize, WaveSpec};
