//! Waiting on conditions with timeouts (being written).
