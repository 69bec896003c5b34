//! SQLite store (the embedded default).
//!
//! One writer thread owns the connection. Commits queue on a channel; the
//! thread drains whatever is queued and applies it in ONE transaction (group
//! commit), then answers every caller. The audit chain's head lives in that
//! thread, so appends are ordered without a lock. WAL mode with
//! `synchronous=FULL`: a `kill -9` or power loss after a commit returned loses
//! nothing acknowledged. Groups made only of relaxed commits (decision
//! records in `batched` audit mode, not awaited by anyone) run with
//! `synchronous=NORMAL`: durable against a process crash, not a power loss.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::{Commit, Store, StoreError};
use crate::audit::{self, AuditKind, AuditRecord, StoredRow, GENESIS};
use crate::gate::{HeldRequest, State};
use crate::timestamp::Timestamp;

/// How many queued commits one transaction may absorb.
const MAX_GROUP: usize = 512;
/// Detached (batched-mode) commits wait at most this long for their group.
/// Short, so that each group's work is a short burst: at 80k requests/s a
/// 10 ms group took ~1.8 ms of a core at once, and requests that arrived
/// meanwhile waited (p99 3.3-3.7 ms at 32 connections; 2.2 ms at 2 ms, for
/// ~3% less throughput; BENCHMARKS.md). It also bounds what a crash loses.
/// An idle writer does not wake: see `Command::DetachedQueued`.
const DETACHED_FLUSH: Duration = Duration::from_millis(2);
/// ...or until this many are queued, whichever comes first.
const DETACHED_WAKE_AT: usize = 1024;

type Reply = Option<oneshot::Sender<Result<(), StoreError>>>;

enum Command {
    /// A commit, and whom to tell when it is durable (`None`: detached).
    Commit(Prepared, Reply),
    Read(Box<dyn FnOnce(&Connection) + Send>),
    /// Wake up: the detached queue is long.
    Flush,
    /// The detached queue was empty and now is not: write it within
    /// `DETACHED_FLUSH`. Sent once per group, so an idle writer sleeps.
    DetachedQueued,
}

pub struct SqliteStore {
    tx: mpsc::Sender<Command>,
    /// Set by the writer when a commit fails, cleared by the next success.
    failing: Arc<AtomicBool>,
    /// Detached commits. Pushing does not wake the writer (that wake-up per
    /// request was the largest cost on the hot path); it drains this queue on
    /// a short timer or when the queue grows long.
    detached: Arc<Mutex<Vec<Prepared>>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    identity TEXT NOT NULL,
    digest TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    live INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_by_state ON requests (state, created_at);
CREATE INDEX IF NOT EXISTS requests_live ON requests (live);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    code TEXT NOT NULL,
    actor TEXT NOT NULL,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
"#;

impl SqliteStore {
    /// Open (creating the file and its directory if needed) and start the writer.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Database(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let conn = Connection::open(path).map_err(db_err)?;
        // page_size first: it takes effect only before the file is created
        // (an existing database keeps its own). 16 KiB pages: a batched
        // group of ~100 audit rows is then 3-4 WAL frames instead of ~13,
        // and each frame is two pwrite calls (BENCHMARKS.md).
        conn.execute_batch(
            "PRAGMA page_size=16384; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
             PRAGMA busy_timeout=5000;",
        )
        .map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        let head = chain_head(&conn)?;
        let (tx, rx) = mpsc::channel();
        let name: PathBuf = path.to_path_buf();
        let failing = Arc::new(AtomicBool::new(false));
        let detached = Arc::new(Mutex::new(Vec::new()));
        let writer_state = Writer {
            failing: failing.clone(),
            detached: detached.clone(),
            path: name,
        };
        thread::Builder::new()
            .name("keygate-sqlite".into())
            .spawn(move || writer(conn, rx, head, writer_state))
            .map_err(|e| StoreError::Database(format!("cannot start writer thread: {e}")))?;
        Ok(SqliteStore {
            tx,
            failing,
            detached,
        })
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        let job = Box::new(move |conn: &Connection| {
            let _ = reply.send(f(conn));
        });
        self.tx
            .send(Command::Read(job))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

fn chain_head(conn: &Connection) -> Result<(u64, String), StoreError> {
    let row = conn
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
        )
        .optional()
        .map_err(db_err)?;
    Ok(match row {
        Some((seq, hash)) => (u64::try_from(seq).unwrap_or(0), hash),
        None => (0, GENESIS.to_string()),
    })
}

/// A commit made ready for the writer on the caller's thread: each event's
/// body is serialized there (the bytes the chain hashes; the writer only
/// hashes and inserts) and the event is dropped there. Its strings are then
/// freed by the thread that allocated them: a free from the writer thread
/// takes the allocating thread's malloc arena lock, which the workers
/// contend for (about 1.4% of CPU at 60k requests/s, BENCHMARKS.md).
struct Prepared {
    requests: Vec<HeldRequest>,
    events: Vec<PreparedEvent>,
    relaxed: bool,
}

/// An audit event as it is stored: the columns that repeat parts of the
/// body, and the body.
struct PreparedEvent {
    at: Timestamp,
    kind: AuditKind,
    actor: String,
    body: String,
}

impl From<Commit> for Prepared {
    fn from(c: Commit) -> Prepared {
        // A loop, not `collect`: collecting reuses the events' buffer in
        // place and then reallocates it to the smaller element size.
        let mut events = Vec::with_capacity(c.events.len());
        for mut e in c.events {
            events.push(PreparedEvent {
                at: e.at,
                kind: e.kind,
                body: audit::event_body(&e),
                actor: std::mem::take(&mut e.actor),
            });
        }
        Prepared {
            requests: c.requests,
            events,
            relaxed: c.relaxed,
        }
    }
}

/// What the writer thread shares with the store handle.
struct Writer {
    failing: Arc<AtomicBool>,
    detached: Arc<Mutex<Vec<Prepared>>>,
    path: PathBuf,
}

fn writer(conn: Connection, rx: mpsc::Receiver<Command>, mut head: (u64, String), w: Writer) {
    let (failing, path) = (&w.failing, &w.path);
    let mut full_sync = true;
    let mut closing = false;
    // When queued detached commits must be written (None: none are queued).
    let mut flush_at: Option<Instant> = None;
    while !closing {
        let received = match flush_at {
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        let first = match received {
            Ok(Command::DetachedQueued) => {
                flush_at.get_or_insert_with(|| Instant::now() + DETACHED_FLUSH);
                continue;
            }
            Ok(c) => Some(c),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            // Every handle is gone: write what is still queued, then stop.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                closing = true;
                None
            }
        };
        let mut group: Vec<(Prepared, Reply)> = Vec::new();
        let mut reads = Vec::new();
        let mut take = |cmd: Command, group: &mut Vec<(Prepared, Reply)>| match cmd {
            Command::Commit(c, r) => group.push((c, r)),
            Command::Read(f) => reads.push(f),
            // The detached queue is drained below in any case.
            Command::Flush | Command::DetachedQueued => {}
        };
        if let Some(cmd) = first {
            take(cmd, &mut group);
        }
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(cmd) => take(cmd, &mut group),
                Err(_) => break,
            }
        }
        // Detached decision records go first: they were decided before any
        // commit now waiting on the channel was queued behind them.
        let queued = std::mem::take(&mut *w.detached.lock().unwrap_or_else(|p| p.into_inner()));
        // Drained: the next push finds the queue empty and signals again.
        flush_at = None;
        if !queued.is_empty() {
            let mut all: Vec<(Prepared, Reply)> = queued.into_iter().map(|c| (c, None)).collect();
            all.append(&mut group);
            group = all;
        }
        if !group.is_empty() {
            let commits: Vec<&Prepared> = group.iter().map(|(c, _)| c).collect();
            let want_full = commits.iter().any(|c| !c.relaxed);
            if want_full != full_sync {
                let pragma = if want_full {
                    "PRAGMA synchronous=FULL"
                } else {
                    "PRAGMA synchronous=NORMAL"
                };
                if conn.execute_batch(pragma).is_ok() {
                    full_sync = want_full;
                }
            }
            // Never let a relaxed setting weaken a commit that asked for full durability.
            let result = if want_full && !full_sync {
                Err(StoreError::Database(
                    "cannot switch to synchronous=FULL".into(),
                ))
            } else {
                apply(&conn, &commits, &head)
            };
            let outcome = match result {
                Ok(new_head) => {
                    head = new_head;
                    failing.store(false, Ordering::Relaxed);
                    Ok(())
                }
                Err(e) => {
                    failing.store(true, Ordering::Relaxed);
                    tracing::error!(db = %path.display(), error = %e, "commit failed");
                    Err(e)
                }
            };
            for reply in group.into_iter().filter_map(|(_, r)| r) {
                let _ = reply.send(match &outcome {
                    Ok(()) => Ok(()),
                    Err(e) => Err(StoreError::Database(e.to_string())),
                });
            }
        }
        for f in reads {
            f(&conn);
        }
    }
}

/// Apply a group of commits in one transaction; returns the new chain head.
fn apply(
    conn: &Connection,
    commits: &[&Prepared],
    head: &(u64, String),
) -> Result<(u64, String), StoreError> {
    let tx = WriteTx::begin(conn).map_err(db_err)?;
    let mut seq = head.0;
    // The previous record's hash as hex digits, one buffer reused for the
    // whole group.
    let mut prev: Vec<u8> = head.1.as_bytes().to_vec();
    {
        let mut put_request = tx
            .prepare_cached(
                "INSERT INTO requests (id, state, identity, digest, created_at, live, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(id) DO UPDATE SET state = excluded.state, live = excluded.live, body = excluded.body",
            )
            .map_err(db_err)?;
        let mut put_audit = tx
            .prepare_cached(
                "INSERT INTO audit (seq, at, kind, code, actor, body, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(db_err)?;
        for c in commits {
            for r in &c.requests {
                let body =
                    serde_json::to_string(r).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let live = match r.state {
                    State::Pending => true,
                    State::Approved => r.grant.as_ref().is_some_and(|g| g.uses_left > 0),
                    State::Denied | State::Expired | State::Bypassed => false,
                };
                put_request
                    .execute(params![
                        r.id,
                        r.state.as_str(),
                        r.subject.identity,
                        r.subject.digest,
                        r.created_at.millis(),
                        live,
                        body
                    ])
                    .map_err(db_err)?;
            }
            for e in &c.events {
                seq += 1;
                let hash = audit::chain_hash_hex(&prev, seq, &e.body);
                // The body begins with the same `at` text; formatting it
                // again cost a String per record.
                let formatted;
                let at = match audit::body_at(&e.body) {
                    Some(at) => at,
                    None => {
                        formatted = e.at.to_rfc3339();
                        &formatted
                    }
                };
                put_audit
                    .execute(params![
                        i64::try_from(seq).unwrap_or(i64::MAX),
                        at,
                        e.kind.name(),
                        e.kind.code(),
                        e.actor,
                        e.body,
                        hex_text(&prev),
                        hex_text(&hash)
                    ])
                    .map_err(db_err)?;
                prev.clear();
                prev.extend_from_slice(&hash);
            }
        }
    }
    tx.commit().map_err(db_err)?;
    Ok((
        seq,
        String::from_utf8(prev).map_err(|e| StoreError::Corrupt(e.to_string()))?,
    ))
}

/// A write transaction begun and committed with cached statements.
/// rusqlite's `Transaction` runs `execute_batch("BEGIN")` and
/// `execute_batch("COMMIT")`, which parse and compile the SQL every time:
/// ~12,000 instructions a transaction, as much as inserting two audit rows,
/// and strict mode commits small groups (one row each at one connection).
struct WriteTx<'c> {
    conn: &'c Connection,
}

impl<'c> WriteTx<'c> {
    /// IMMEDIATE: take the write lock now rather than upgrade to it at the
    /// first insert, so a concurrent writer elsewhere is met (and waited
    /// for, up to busy_timeout) before any work is done.
    fn begin(conn: &'c Connection) -> rusqlite::Result<WriteTx<'c>> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(WriteTx { conn })
    }

    fn prepare_cached(&self, sql: &str) -> rusqlite::Result<rusqlite::CachedStatement<'c>> {
        self.conn.prepare_cached(sql)
    }

    /// Commit; on failure the drop below rolls back what is still open.
    fn commit(self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        // Still inside the transaction: an insert or the COMMIT failed.
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// Hex digits as SQL text (they are ASCII).
fn hex_text(hex: &[u8]) -> &str {
    std::str::from_utf8(hex).unwrap_or_default()
}

fn decode_request(body: String) -> Result<HeldRequest, StoreError> {
    serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(format!("request row: {e}")))
}

fn query_requests(
    conn: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
) -> Result<Vec<HeldRequest>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(db_err)?;
    let bodies = stmt
        .query_map(p, |r| r.get::<_, String>(0))
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)?;
    bodies.into_iter().map(decode_request).collect()
}

fn query_rows(conn: &Connection, after: u64, limit: usize) -> Result<Vec<StoredRow>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, at, kind, code, actor, body, prev_hash, hash FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map(
            params![i64::try_from(after).unwrap_or(i64::MAX), limit as i64],
            |r| {
                Ok(StoredRow {
                    seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                    at: r.get(1)?,
                    kind: r.get(2)?,
                    code: r.get(3)?,
                    actor: r.get(4)?,
                    body: r.get(5)?,
                    prev_hash: r.get(6)?,
                    hash: r.get(7)?,
                })
            },
        )
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)?;
    Ok(rows)
}

#[async_trait]
impl Store for SqliteStore {
    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Commit(Prepared::from(commit), Some(reply)))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn commit_detached(&self, commit: Commit) -> Result<(), Commit> {
        if self.failing.load(Ordering::Relaxed) {
            return Err(commit);
        }
        let queued = {
            let prepared = Prepared::from(commit);
            let mut q = self.detached.lock().unwrap_or_else(|p| p.into_inner());
            q.push(prepared);
            q.len()
        };
        if queued == 1 {
            let _ = self.tx.send(Command::DetachedQueued);
        } else if queued == DETACHED_WAKE_AT {
            let _ = self.tx.send(Command::Flush);
        }
        Ok(())
    }

    async fn live_requests(&self) -> Result<Vec<HeldRequest>, StoreError> {
        self.read(|c| {
            query_requests(
                c,
                "SELECT body FROM requests WHERE live = 1 ORDER BY created_at",
                [],
            )
        })
        .await
    }

    async fn request(&self, id: &str) -> Result<Option<HeldRequest>, StoreError> {
        let id = id.to_string();
        self.read(move |c| {
            Ok(query_requests(c, "SELECT body FROM requests WHERE id = ?1", [id])?.pop())
        })
        .await
    }

    async fn requests(
        &self,
        state: Option<State>,
        limit: usize,
    ) -> Result<Vec<HeldRequest>, StoreError> {
        let limit = limit as i64;
        self.read(move |c| match state {
            Some(s) => query_requests(
                c,
                "SELECT body FROM requests WHERE state = ?1 ORDER BY created_at DESC LIMIT ?2",
                params![s.as_str(), limit],
            ),
            None => query_requests(
                c,
                "SELECT body FROM requests ORDER BY created_at DESC LIMIT ?1",
                params![limit],
            ),
        })
        .await
    }

    async fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = self.audit_rows(after, limit).await?;
        rows.into_iter()
            .map(|row| {
                let event: audit::AuditEvent = serde_json::from_str(&row.body)
                    .map_err(|e| StoreError::Corrupt(format!("audit record {}: {e}", row.seq)))?;
                let code = event.kind.code();
                Ok(AuditRecord {
                    seq: row.seq,
                    event,
                    code,
                    prev_hash: row.prev_hash,
                    hash: row.hash,
                })
            })
            .collect()
    }

    async fn audit_rows(&self, after: u64, limit: usize) -> Result<Vec<StoredRow>, StoreError> {
        self.read(move |c| query_rows(c, after, limit)).await
    }

    async fn digest_key(&self) -> Result<[u8; 32], StoreError> {
        self.read(|c| {
            let existing: Option<Vec<u8>> = c
                .query_row("SELECT value FROM meta WHERE key = 'digest_key'", [], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(db_err)?;
            if let Some(v) = existing {
                return <[u8; 32]>::try_from(v.as_slice())
                    .map_err(|_| StoreError::Corrupt("digest_key has the wrong length".into()));
            }
            let key: [u8; 32] = rand::random();
            c.execute(
                "INSERT INTO meta (key, value) VALUES ('digest_key', ?1)",
                [key.to_vec()],
            )
            .map_err(db_err)?;
            Ok(key)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(db_err))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, AuditKind, ChainVerifier};
    use crate::timestamp::Timestamp;

    fn event(n: i64) -> AuditEvent {
        AuditEvent::new(AuditKind::Allowed, "policy", Timestamp::from_millis(n))
    }

    #[tokio::test]
    async fn commits_chain_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state/k.db");
        {
            let store = SqliteStore::open(&path).expect("open");
            let commits = (0..20).map(|i| store.commit(Commit::event(event(i))));
            for r in futures_join(commits).await {
                r.expect("commit");
            }
        }
        let store = SqliteStore::open(&path).expect("reopen");
        store
            .commit(Commit::event(event(99)))
            .await
            .expect("commit after reopen");
        let rows = store.audit_rows(0, 1000).await.expect("rows");
        assert_eq!(rows.len(), 21);
        let mut v = ChainVerifier::default();
        for r in &rows {
            v.push(r).expect("chain intact across reopen");
        }
        let key1 = store.digest_key().await.expect("key");
        assert_eq!(
            store.digest_key().await.expect("key"),
            key1,
            "the digest key is stable"
        );
    }

    #[tokio::test]
    async fn detached_commits_are_written_within_the_flush_interval_on_their_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.db");
        let store = SqliteStore::open(&path).expect("open");
        // A second connection sees what the writer committed, without
        // sending the writer anything (a read through the store would
        // make it drain the queue).
        let probe = Connection::open(&path).expect("probe connection");
        let count = || -> usize {
            probe
                .query_row("SELECT COUNT(*) FROM audit", [], |r| r.get::<_, i64>(0))
                .expect("count") as usize
        };
        // Two groups, with the writer idle (blocked, no timer) in between.
        for round in 0..2 {
            for i in 0..3 {
                let mut c = Commit::event(event(round * 10 + i));
                c.relaxed = true;
                store.commit_detached(c).expect("queued");
            }
            let want = (round as usize + 1) * 3;
            let started = std::time::Instant::now();
            while count() < want && started.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(
                count(),
                want,
                "round {round}: queued records were not written"
            );
            tokio::time::sleep(DETACHED_FLUSH * 5).await;
        }
    }

    #[tokio::test]
    async fn detached_commits_are_durable_after_a_flush_and_keep_the_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("k.db")).expect("open");
        for i in 0..50 {
            let mut c = Commit::event(event(i));
            c.relaxed = true;
            store.commit_detached(c).expect("queued");
        }
        store
            .commit(Commit::event(event(1000)))
            .await
            .expect("strict commit");
        store.commit(Commit::default()).await.expect("flush");
        let rows = store.audit_rows(0, 1000).await.expect("rows");
        assert_eq!(rows.len(), 51);
        let mut v = ChainVerifier::default();
        for r in &rows {
            v.push(r).expect("chain intact");
        }
        // Decisions queued before the strict commit are written before it.
        assert!(
            rows[50]
                .body
                .contains("\"at\":\"1970-01-01T00:00:01.000Z\""),
            "{}",
            rows[50].body
        );
    }

    #[test]
    fn a_failed_group_writes_nothing_and_leaves_the_connection_usable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = Connection::open(dir.path().join("k.db")).expect("open");
        conn.execute_batch(SCHEMA).expect("schema");
        let group = |n: i64| -> Vec<Prepared> {
            (0..n)
                .map(|i| Prepared::from(Commit::event(event(i))))
                .collect()
        };
        let genesis = chain_head(&conn).expect("head");
        let one = group(1);
        let head = apply(&conn, &one.iter().collect::<Vec<_>>(), &genesis).expect("first");
        // A stale head: the group's first row reuses seq 1, so its insert
        // fails after nothing else was written.
        let three = group(3);
        apply(&conn, &three.iter().collect::<Vec<_>>(), &genesis).expect_err("seq 1 is taken");
        assert!(
            conn.is_autocommit(),
            "the failed transaction was rolled back"
        );
        assert_eq!(chain_head(&conn).expect("head"), head);
        let after = apply(&conn, &three.iter().collect::<Vec<_>>(), &head).expect("retry");
        assert_eq!(after.0, 4);
        let rows = query_rows(&conn, 0, 100).expect("rows");
        assert_eq!(rows.len(), 4);
        let mut v = ChainVerifier::default();
        for r in &rows {
            v.push(r).expect("chain intact");
        }
    }

    async fn futures_join<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
        let mut out = Vec::new();
        let handles: Vec<_> = fs.collect();
        for f in handles {
            out.push(f.await);
        }
        out
    }
}
