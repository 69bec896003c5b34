//! Held requests at runtime: the live index, the waiting clients, and
//! persistence of every transition.
//!
//! Transitions are computed by the pure state machine in `gate` on a copy,
//! committed to the store together with their audit events, and only then
//! made visible and announced to waiters. One async mutex serializes all
//! transitions, so concurrent approvals are applied one after another and
//! never double-count; it is held across the store commit on purpose (holds
//! are the exceptional path, and correctness beats parallelism here).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex};

use crate::audit::{AuditEvent, AuditKind, SYSTEM_ACTOR};
use crate::events::{EventHub, EventKind, GateEvent};
use crate::gate::{
    Denial, GrantError, HeldRequest, Narrowing, Owner, ReviewError, ReviewOutcome, Reviewer, State,
    Subject,
};
use crate::policy::HoldSpec;
use crate::store::{Commit, Store, StoreError};
use crate::timestamp::Timestamp;

/// What a waiting client learns when a held request changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Approved,
    Denied(Denial),
    Expired,
    /// Not a state: keygate is stopping, so the waiter is answered now and
    /// the request stays pending in the store.
    ShuttingDown,
}

fn outcome_of(r: &HeldRequest) -> Outcome {
    match r.state {
        State::Pending => Outcome::Pending,
        State::Approved => Outcome::Approved,
        State::Denied => Outcome::Denied(r.denial.clone().unwrap_or(Denial {
            by: "unknown".into(),
            reason: String::new(),
            at: r.created_at,
        })),
        State::Expired => Outcome::Expired,
        // Never live: a bypass is executed when it is recorded.
        State::Bypassed => Outcome::Approved,
    }
}

struct Entry {
    request: HeldRequest,
    announce: watch::Sender<Outcome>,
}

#[derive(Default)]
struct Live {
    /// Boxed: a table keeps spare slots (up to half of them after it
    /// grows), and an entry inline is most of a kilobyte.
    by_id: HashMap<String, Box<Entry>>,
    /// Digest -> id of the request that currently answers for that digest:
    /// pending, approved with a usable grant, or denied (until it would have
    /// expired, so that a retry learns the denial instead of asking again).
    by_digest: HashMap<String, String>,
}

impl Live {
    fn insert(&mut self, request: HeldRequest) -> watch::Receiver<Outcome> {
        let (announce, rx) = watch::channel(outcome_of(&request));
        self.by_digest
            .insert(request.subject.digest.clone(), request.id.clone());
        self.by_id
            .insert(request.id.clone(), Box::new(Entry { request, announce }));
        rx
    }

    fn remove(&mut self, id: &str) {
        if let Some(e) = self.by_id.remove(id) {
            if self
                .by_digest
                .get(&e.request.subject.digest)
                .map(String::as_str)
                == Some(id)
            {
                self.by_digest.remove(&e.request.subject.digest);
            }
        }
    }

    /// Pending requests: (of `identity`, in all).
    fn pending(&self, identity: &str) -> (usize, usize) {
        let (mut mine, mut all) = (0, 0);
        for e in self.by_id.values() {
            if e.request.state == State::Pending {
                all += 1;
                mine += usize::from(e.request.subject.identity == identity);
            }
        }
        (mine, all)
    }
}

/// The answer to "this request needs approval" at the moment it arrives.
#[derive(Debug)]
pub enum Admit {
    /// An approved grant for exactly this request was used.
    Granted { id: String },
    /// The request is pending (new, or merged into an identical one); wait on `rx`.
    Waiting {
        id: String,
        rx: watch::Receiver<Outcome>,
    },
    /// An identical request was denied and the denial still stands.
    Denied { id: String, denial: Denial },
}

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("{identity} already has {limit} requests awaiting approval")]
    TooManyPending { identity: String, limit: usize },
    #[error("{limit} requests are awaiting approval in all (gate.max_pending_total)")]
    Overloaded { limit: usize },
    #[error("no such request: {0}")]
    NotFound(String),
    #[error(transparent)]
    Review(#[from] ReviewError),
    #[error("request {id}: {source}")]
    Grant {
        id: String,
        #[source]
        source: GrantError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub enum ReviewAction {
    Approve {
        comment: Option<String>,
        narrowed: Narrowing,
    },
    Deny {
        reason: String,
    },
}

pub struct Holds {
    store: Arc<dyn Store>,
    live: Mutex<Live>,
    max_pending_per_identity: usize,
    max_pending_total: usize,
    /// Flipped once at shutdown; every `wait` watches it.
    closing: watch::Sender<bool>,
    /// Where transitions are announced (SSE, webhooks) once durable.
    events: EventHub,
}

/// An event about the workload's own request (held, bypassed): it also
/// records where the request came from and the certificate that proved it.
fn origin_event(kind: AuditKind, actor: &str, r: &HeldRequest, now: Timestamp) -> AuditEvent {
    let mut e = event(kind, actor, r, now);
    e.client = r.subject.client.clone();
    e.certificate = r.subject.certificate.clone();
    e
}

fn event(kind: AuditKind, actor: &str, r: &HeldRequest, now: Timestamp) -> AuditEvent {
    let mut e = AuditEvent::new(kind, actor, now);
    e.identity = Some(r.subject.identity.clone());
    e.request_id = Some(r.id.clone());
    e.front = Some(r.subject.front);
    e.operation = Some(r.subject.operation.clone().into());
    e.resources = r.subject.resources.clone();
    e.rule = Some(r.rule.clone());
    e
}

impl Holds {
    /// Make one request's new state and its audit events durable, together.
    /// Never relaxed: holds, reviews and grants are always synchronous=FULL.
    async fn persist(
        &self,
        request: &HeldRequest,
        events: Vec<AuditEvent>,
    ) -> Result<(), StoreError> {
        self.store
            .commit(Commit {
                relaxed: false,
                requests: vec![request.clone()],
                events,
            })
            .await
    }

    /// Rebuild the live index from the store (after a restart nothing pending is lost).
    pub async fn load(
        store: Arc<dyn Store>,
        max_pending_per_identity: usize,
        max_pending_total: usize,
        now: Timestamp,
    ) -> Result<Holds, StoreError> {
        let mut live = Live::default();
        for r in store.live_requests().await? {
            if r.is_live(now) || r.state == State::Pending {
                live.insert(r);
            }
        }
        Ok(Holds {
            store,
            live: Mutex::new(live),
            max_pending_per_identity,
            max_pending_total,
            closing: watch::channel(false).0,
            events: EventHub::default(),
        })
    }

    /// A request the policy holds: use a grant, merge, or create a pending request.
    pub async fn admit(
        &self,
        subject: Subject,
        rule: &str,
        reasons: Vec<String>,
        spec: &HoldSpec,
        now: Timestamp,
    ) -> Result<Admit, HoldError> {
        let mut live = self.live.lock().await;
        if let Some(id) = live.by_digest.get(&subject.digest).cloned() {
            if let Some(entry) = live.by_id.get(&id) {
                let existing = entry.request.clone();
                match existing.state {
                    State::Approved => {
                        let mut next = existing;
                        if next.take_grant(now).is_ok() {
                            let e = event(AuditKind::GrantUsed, &next.subject.identity, &next, now);
                            self.persist(&next, vec![e]).await?;
                            let spent = !next.is_live(now);
                            if let Some(entry) = live.by_id.get_mut(&id) {
                                entry.request = next;
                            }
                            if spent {
                                live.remove(&id);
                            }
                            return Ok(Admit::Granted { id });
                        }
                        // Spent or lapsed: this digest asks anew.
                        live.remove(&id);
                    }
                    State::Pending if now < existing.expires_at => {
                        let mut e = event(
                            AuditKind::Merged,
                            &existing.subject.identity,
                            &existing,
                            now,
                        );
                        e.detail = Some("identical request merged into the pending one".into());
                        self.store.commit(Commit::event(e)).await?;
                        let rx = live.by_id.get(&id).map(|e| e.announce.subscribe());
                        if let Some(rx) = rx {
                            return Ok(Admit::Waiting { id, rx });
                        }
                    }
                    State::Denied if now < existing.expires_at => {
                        if let Some(denial) = existing.denial {
                            return Ok(Admit::Denied { id, denial });
                        }
                    }
                    _ => live.remove(&id),
                }
            }
        }
        let identity = subject.identity.clone();
        let (mine, all) = live.pending(&identity);
        if mine >= self.max_pending_per_identity {
            return Err(HoldError::TooManyPending {
                identity,
                limit: self.max_pending_per_identity,
            });
        }
        if all >= self.max_pending_total {
            return Err(HoldError::Overloaded {
                limit: self.max_pending_total,
            });
        }
        let request = HeldRequest::new(
            uuid::Uuid::new_v4().to_string(),
            subject,
            rule.to_string(),
            reasons,
            spec.clone(),
            now,
        );
        let mut e = origin_event(AuditKind::Held, crate::audit::POLICY_ACTOR, &request, now);
        e.detail = Some(request.reasons.join("; "));
        self.persist(&request, vec![e]).await?;
        self.events.publish_with(|| {
            GateEvent::new(
                EventKind::Created,
                crate::audit::POLICY_ACTOR,
                request.subject.justification.clone(),
                &request,
                now,
            )
        });
        let id = request.id.clone();
        let rx = live.insert(request);
        Ok(Admit::Waiting { id, rx })
    }

    /// Wait up to `window` for a decision on a request, or until shutdown.
    pub async fn wait(&self, mut rx: watch::Receiver<Outcome>, window: Duration) -> Outcome {
        let mut closing = self.closing.subscribe();
        if *closing.borrow_and_update() {
            return Outcome::ShuttingDown;
        }
        // Made inside the select: a `let` first would keep a second copy
        // of the waiting future in this (long-lived) state.
        tokio::select! {
            d = tokio::time::timeout(window, rx.wait_for(|o| *o != Outcome::Pending)) => match d {
                Ok(Ok(o)) => o.clone(),
                // Timed out, or the request left the live index: still pending.
                _ => Outcome::Pending,
            },
            _ = closing.changed() => Outcome::ShuttingDown,
        }
    }

    /// Answer every waiting client with `ShuttingDown` (their requests stay
    /// pending in the store). Returns how many clients were waiting.
    pub fn shut_down(&self) -> usize {
        let waiting = self.closing.receiver_count();
        self.closing.send_replace(true);
        waiting
    }

    /// A waiting client whose request was approved uses the grant.
    pub async fn release(&self, id: &str, now: Timestamp) -> Result<(), HoldError> {
        let mut live = self.live.lock().await;
        let entry = live
            .by_id
            .get(id)
            .ok_or_else(|| HoldError::NotFound(id.to_string()))?;
        let mut next = entry.request.clone();
        next.take_grant(now).map_err(|source| HoldError::Grant {
            id: id.to_string(),
            source,
        })?;
        let events = vec![
            event(AuditKind::GrantUsed, &next.subject.identity, &next, now),
            event(AuditKind::Released, SYSTEM_ACTOR, &next, now),
        ];
        self.persist(&next, events).await?;
        let spent = !next.is_live(now);
        if let Some(entry) = live.by_id.get_mut(id) {
            entry.request = next;
        }
        if spent {
            live.remove(id);
        }
        Ok(())
    }

    /// Apply an approver's review. The caller has authenticated `reviewer`.
    pub async fn review(
        &self,
        id: &str,
        reviewer: Reviewer<'_>,
        owner: Option<&Owner>,
        action: ReviewAction,
        now: Timestamp,
    ) -> Result<(HeldRequest, ReviewOutcome), HoldError> {
        let mut live = self.live.lock().await;
        let Some(entry) = live.by_id.get(id) else {
            // Not live: either decided long ago or unknown.
            return match self.store.request(id).await? {
                Some(r) => Err(ReviewError::NotPending(r.state).into()),
                None => Err(HoldError::NotFound(id.to_string())),
            };
        };
        let mut next = entry.request.clone();
        let (result, comment) = match action {
            ReviewAction::Approve { comment, narrowed } => (
                next.approve(reviewer, owner, comment.clone(), narrowed, now),
                comment,
            ),
            ReviewAction::Deny { reason } => (
                next.deny(reviewer, owner, reason.clone(), now),
                Some(reason),
            ),
        };
        let outcome = match result {
            Ok(o) => o,
            Err(ReviewError::Expired) => {
                drop(live);
                self.sweep(now).await?;
                return Err(ReviewError::Expired.into());
            }
            Err(other) => return Err(other.into()),
        };
        let (kind, published, detail) = match &outcome {
            ReviewOutcome::Counted { have, need } => (
                AuditKind::Approved,
                EventKind::Reviewed,
                format!("approval {have} of {need}"),
            ),
            ReviewOutcome::Approved => (
                AuditKind::Approved,
                EventKind::Approved,
                "approved".to_string(),
            ),
            ReviewOutcome::DenialCounted { have, need } => (
                AuditKind::Rejected,
                EventKind::Reviewed,
                format!("denial {have} of {need}"),
            ),
            ReviewOutcome::Denied => (AuditKind::Rejected, EventKind::Denied, "denied".to_string()),
        };
        // Every review is its own audit record: reviewer, decision, comment, time.
        let mut e = event(kind, reviewer.name, &next, now);
        e.detail = Some(match &comment {
            Some(c) => format!("{detail}; comment: {c}"),
            None => detail,
        });
        self.persist(&next, vec![e]).await?;
        if let Some(entry) = live.by_id.get_mut(id) {
            entry.request = next.clone();
            entry.announce.send_replace(outcome_of(&next));
        }
        self.events
            .publish_with(|| GateEvent::new(published, reviewer.name, comment, &next, now));
        Ok((next, outcome))
    }

    /// A break-glass identity bypasses the hold: the request is recorded as
    /// executed (`request.bypassed`) and waits in the review queue until
    /// someone acknowledges it.
    pub async fn bypass(
        &self,
        subject: Subject,
        rule: &str,
        reasons: Vec<String>,
        spec: &HoldSpec,
        reason: String,
        now: Timestamp,
    ) -> Result<HeldRequest, StoreError> {
        let request = HeldRequest::bypassed(
            uuid::Uuid::new_v4().to_string(),
            subject,
            rule.to_string(),
            reasons,
            spec.clone(),
            reason.clone(),
            now,
        );
        let mut e = origin_event(
            AuditKind::Bypassed,
            &request.subject.identity,
            &request,
            now,
        );
        e.detail = Some(format!("break-glass: {reason}"));
        self.persist(&request, vec![e]).await?;
        self.events.publish_with(|| {
            GateEvent::new(
                EventKind::Bypassed,
                &request.subject.identity,
                Some(reason),
                &request,
                now,
            )
        });
        Ok(request)
    }

    /// Acknowledge a bypass in the review queue.
    pub async fn acknowledge(
        &self,
        id: &str,
        reviewer: Reviewer<'_>,
        owner: Option<&Owner>,
        comment: Option<String>,
        now: Timestamp,
    ) -> Result<HeldRequest, HoldError> {
        // Serialized with every other transition.
        let _live = self.live.lock().await;
        let mut next = self
            .store
            .request(id)
            .await?
            .ok_or_else(|| HoldError::NotFound(id.to_string()))?;
        next.acknowledge(reviewer, owner, comment.clone(), now)?;
        let mut e = event(AuditKind::Acknowledged, reviewer.name, &next, now);
        e.detail = comment.clone();
        self.persist(&next, vec![e]).await?;
        self.events.publish_with(|| {
            GateEvent::new(EventKind::Acknowledged, reviewer.name, comment, &next, now)
        });
        Ok(next)
    }

    /// The hub transitions are announced on.
    pub fn events(&self) -> &EventHub {
        &self.events
    }

    /// A receiver that flips to `true` when keygate starts shutting down.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Expire overdue pending requests and forget entries that no longer
    /// answer for their digest. Returns how many requests expired.
    pub async fn sweep(&self, now: Timestamp) -> Result<usize, StoreError> {
        let mut live = self.live.lock().await;
        let mut expired = Vec::new();
        let mut escalated = Vec::new();
        let mut forget = Vec::new();
        for (id, entry) in &live.by_id {
            let r = &entry.request;
            if r.state == State::Pending && now < r.expires_at {
                let mut due = r.clone();
                if due.escalate_if_due(now) {
                    escalated.push(due);
                }
            } else if r.state == State::Pending && now >= r.expires_at {
                let mut due = r.clone();
                due.expire_if_due(now);
                expired.push(due);
            } else if r.state == State::Denied && now >= r.expires_at
                || r.state == State::Approved && !r.is_live(now)
            {
                forget.push(id.clone());
            }
        }
        if !expired.is_empty() {
            let events = expired
                .iter()
                .map(|r| {
                    let mut e = event(AuditKind::Expired, SYSTEM_ACTOR, r, now);
                    e.detail = Some("no decision before the request's deadline".into());
                    e
                })
                .collect();
            self.store
                .commit(Commit {
                    relaxed: false,
                    requests: expired.clone(),
                    events,
                })
                .await?;
            for r in &expired {
                if let Some(entry) = live.by_id.get(&r.id) {
                    entry.announce.send_replace(Outcome::Expired);
                }
                live.remove(&r.id);
            }
        }
        if !escalated.is_empty() {
            let events = escalated
                .iter()
                .map(|r| {
                    let mut e = event(AuditKind::Escalated, SYSTEM_ACTOR, r, now);
                    e.detail = r
                        .spec
                        .escalation
                        .as_ref()
                        .map(|x| format!("no decision in time; asking {}", x.group));
                    e
                })
                .collect();
            self.store
                .commit(Commit {
                    relaxed: false,
                    requests: escalated.clone(),
                    events,
                })
                .await?;
            for r in escalated {
                if let Some(entry) = live.by_id.get_mut(&r.id) {
                    entry.request = r.clone();
                }
                self.events.publish_with(|| {
                    GateEvent::new(EventKind::Escalated, SYSTEM_ACTOR, None, &r, now)
                });
            }
        }
        for r in &expired {
            self.events
                .publish_with(|| GateEvent::new(EventKind::Expired, SYSTEM_ACTOR, None, r, now));
        }
        for id in forget {
            live.remove(&id);
        }
        Ok(expired.len())
    }

    /// The identity that made a live request (to look up its owner).
    pub async fn identity_of(&self, id: &str) -> Option<String> {
        let live = self.live.lock().await;
        live.by_id
            .get(id)
            .map(|e| e.request.subject.identity.clone())
    }

    /// How many requests await a decision (readiness output and tests).
    pub async fn pending_count(&self) -> usize {
        let live = self.live.lock().await;
        live.by_id
            .values()
            .filter(|e| e.request.state == State::Pending)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::Subject;
    use crate::policy::{Front, GrantSpec, OpClass};
    use crate::store::sqlite::SqliteStore;
    use std::num::NonZeroU32;

    fn spec() -> HoldSpec {
        HoldSpec {
            approver_group: "secops".into(),
            approvals: NonZeroU32::MIN,
            extra_factors: vec![],
            denials: NonZeroU32::MIN,
            escalation: None,
            break_glass: vec![],
            hold_window: Duration::from_millis(50),
            request_ttl: Duration::from_secs(60),
            approval_ttl: Duration::from_secs(60),
            grant: GrantSpec::Once,
        }
    }

    fn subject(identity: &str, digest: &str) -> Subject {
        Subject {
            identity: identity.into(),
            front: Front::Aws,
            operation: "GetSecretValue".into(),
            class: OpClass::Read,
            resources: vec!["prod/x".into()],
            parameters: serde_json::json!({"SecretId": "prod/x"}).into(),
            justification: None,
            digest: digest.into(),
            client: None,
            certificate: None,
        }
    }

    fn t(secs: u64) -> Timestamp {
        Timestamp::from_millis(1_000_000).plus(Duration::from_secs(secs))
    }

    async fn holds(path: &std::path::Path, cap: usize) -> Holds {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(path).expect("open"));
        Holds::load(store, cap, 1000, t(0)).await.expect("load")
    }

    fn waiting(a: Admit) -> (String, watch::Receiver<Outcome>) {
        match a {
            Admit::Waiting { id, rx } => (id, rx),
            other => panic!("expected Waiting, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn identical_requests_merge_and_expiry_reaches_waiters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = holds(&dir.path().join("s.db"), 5).await;
        let (id1, rx) = waiting(
            h.admit(subject("app", "d1"), "r", vec![], &spec(), t(0))
                .await
                .expect("admit"),
        );
        let (id2, _) = waiting(
            h.admit(subject("app", "d1"), "r", vec![], &spec(), t(1))
                .await
                .expect("admit"),
        );
        assert_eq!(id1, id2, "identical pending requests merge");
        assert_eq!(h.sweep(t(59)).await.expect("sweep"), 0);
        assert_eq!(h.sweep(t(60)).await.expect("sweep"), 1);
        assert_eq!(*rx.borrow(), Outcome::Expired);
        let (id3, _) = waiting(
            h.admit(subject("app", "d1"), "r", vec![], &spec(), t(61))
                .await
                .expect("admit"),
        );
        assert_ne!(id3, id1, "after expiry the same request asks anew");
    }

    #[tokio::test]
    async fn pending_requests_survive_a_restart_and_the_cap_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let id = {
            let h = holds(&path, 2).await;
            let (id, _) = waiting(
                h.admit(subject("app", "a"), "r", vec![], &spec(), t(0))
                    .await
                    .expect("admit"),
            );
            waiting(
                h.admit(subject("app", "b"), "r", vec![], &spec(), t(0))
                    .await
                    .expect("admit"),
            );
            let refused = h
                .admit(subject("app", "c"), "r", vec![], &spec(), t(0))
                .await;
            assert!(
                matches!(refused, Err(HoldError::TooManyPending { limit: 2, .. })),
                "{refused:?}"
            );
            waiting(
                h.admit(subject("other", "c"), "r", vec![], &spec(), t(0))
                    .await
                    .expect("the cap is per identity"),
            );
            id
        };
        let h = holds(&path, 2).await;
        assert_eq!(h.pending_count().await, 3);
        let groups = vec!["secops".to_string()];
        let reviewer = Reviewer {
            name: "alice",
            groups: &groups,
        };
        let r = h
            .review(
                &id,
                reviewer,
                None,
                ReviewAction::Approve {
                    comment: None,
                    narrowed: Narrowing::default(),
                },
                t(5),
            )
            .await
            .expect("approve after restart");
        assert_eq!(r.0.state, State::Approved);
        match h
            .admit(subject("app", "a"), "r", vec![], &spec(), t(6))
            .await
            .expect("admit")
        {
            Admit::Granted { id: used } => assert_eq!(used, id),
            other => panic!("expected the grant to be used, got {other:?}"),
        }
        let again = h
            .review(
                &id,
                reviewer,
                None,
                ReviewAction::Deny {
                    reason: "late".into(),
                },
                t(7),
            )
            .await;
        assert!(
            matches!(
                again,
                Err(HoldError::Review(ReviewError::NotPending(State::Approved)))
            ),
            "{again:?}"
        );
    }

    #[tokio::test]
    async fn a_denial_answers_retries_until_the_request_would_have_expired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = holds(&dir.path().join("s.db"), 5).await;
        let (id, _) = waiting(
            h.admit(subject("app", "d"), "r", vec![], &spec(), t(0))
                .await
                .expect("admit"),
        );
        let groups = vec!["secops".to_string()];
        h.review(
            &id,
            Reviewer {
                name: "bob",
                groups: &groups,
            },
            None,
            ReviewAction::Deny {
                reason: "no".into(),
            },
            t(1),
        )
        .await
        .expect("deny");
        match h
            .admit(subject("app", "d"), "r", vec![], &spec(), t(2))
            .await
            .expect("admit")
        {
            Admit::Denied { id: same, denial } => {
                assert_eq!((same, denial.by.as_str()), (id, "bob"))
            }
            other => panic!("expected the standing denial, got {other:?}"),
        }
        h.sweep(t(61)).await.expect("sweep");
        waiting(
            h.admit(subject("app", "d"), "r", vec![], &spec(), t(62))
                .await
                .expect("asks anew later"),
        );
    }
}
