//! `outpost-agent`: the device side of Outpost.
//!
//! Being built; see ARCHITECTURE.md for the module map as it lands.
#![forbid(unsafe_code)]
