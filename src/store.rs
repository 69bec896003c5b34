//! Durable state: held requests (with their approvals and grants) and the
//! audit chain. `Store` is the seam a PostgreSQL implementation will follow
//! for multi-replica deployments; only `store::*` knows the disk format.
//!
//! **Invariant:** a `commit` is atomic and durable when it returns `Ok`:
//! request changes and the audit events that describe them land together or
//! not at all. Callers answer clients and approvers only after that.

pub mod sqlite;

use async_trait::async_trait;

use crate::audit::{AuditEvent, AuditRecord, StoredRow};
use crate::gate::{HeldRequest, State};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the store has shut down")]
    Closed,
}

/// One atomic unit of change.
#[derive(Debug, Default)]
pub struct Commit {
    pub requests: Vec<HeldRequest>,
    pub events: Vec<AuditEvent>,
    /// May be made durable against a process crash only (not a power loss):
    /// allowed only for plain decision records in `batched` audit mode.
    /// Request transitions (holds, approvals, grants) are never relaxed.
    pub relaxed: bool,
}

impl Commit {
    pub fn event(e: AuditEvent) -> Commit {
        Commit {
            requests: Vec::new(),
            events: vec![e],
            relaxed: false,
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn commit(&self, commit: Commit) -> Result<(), StoreError>;
    /// Queue a commit without waiting for it (`batched` audit mode). If a
    /// recent commit failed, the commit is handed back so that the caller can
    /// commit and wait instead, and so fail closed.
    fn commit_detached(&self, commit: Commit) -> Result<(), Commit>;
    /// Requests that still matter after a restart: pending ones and approved
    /// ones whose grant has uses left.
    async fn live_requests(&self) -> Result<Vec<HeldRequest>, StoreError>;
    async fn request(&self, id: &str) -> Result<Option<HeldRequest>, StoreError>;
    /// Newest first.
    async fn requests(
        &self,
        state: Option<State>,
        limit: usize,
    ) -> Result<Vec<HeldRequest>, StoreError>;
    /// Audit records with `seq > after`, oldest first.
    async fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError>;
    /// Raw rows for verification, `seq > after`, in stored order.
    async fn audit_rows(&self, after: u64, limit: usize) -> Result<Vec<StoredRow>, StoreError>;
    /// A per-installation key for request digests, created on first use.
    async fn digest_key(&self) -> Result<[u8; 32], StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
}
