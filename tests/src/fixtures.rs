//! Signed fixtures for tests (being written).
