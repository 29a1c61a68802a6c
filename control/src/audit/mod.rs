//! The tamper-evident audit trail of DESIGN §9.
//!
//! - [`merkle`]: the RFC 6962 tree: hashes, stored complete subtrees, inclusion and consistency
//!   proofs and their verification.
//! - [`note`]: C2SP signed notes with Ed25519 keys and the `tlog-checkpoint` body.
//! - [`record`]: a record's canonical bytes (the leaf data) and the action vocabulary.
//! - [`key`]: the log's signing key in the data directory, pinned in the database.
//! - [`log`]: the server side: checkpoints, proofs, exports, and the periodic task.
//! - [`export`]: the export directory's files and their offline verification.
//!
//! The records themselves and the sequencing step live in [`crate::store::audit`].

pub mod export;
pub mod key;
pub mod log;
pub mod merkle;
pub mod note;
pub mod record;
