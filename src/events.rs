//! What happens to held requests, published once for everyone listening:
//! the admin API's server-sent event stream, webhooks, the approver page.
//!
//! Events are published after the transition they describe is durable, so a
//! listener never hears of something the store could still lose. Publishing
//! never blocks: a slow listener misses events (and is told how many) rather
//! than slowing the data path.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::gate::HeldRequest;
use crate::timestamp::Timestamp;

/// How many events a listener may fall behind before it misses some.
const BACKLOG: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A request was held and awaits approval.
    Created,
    /// An approval counted, but the quorum is not met yet.
    Reviewed,
    /// The quorum was met: the request is approved.
    Approved,
    /// The request was denied by approvers.
    Denied,
    /// The request expired without a decision.
    Expired,
    /// Nobody decided within `escalate_after`: the escalation group is asked.
    Escalated,
    /// A break-glass identity bypassed the hold; it awaits acknowledgement.
    Bypassed,
    /// Someone acknowledged a bypass in the review queue.
    Acknowledged,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Reviewed => "reviewed",
            EventKind::Approved => "approved",
            EventKind::Denied => "denied",
            EventKind::Expired => "expired",
            EventKind::Escalated => "escalated",
            EventKind::Bypassed => "bypassed",
            EventKind::Acknowledged => "acknowledged",
        }
    }

    pub const ALL: [EventKind; 8] = [
        EventKind::Created,
        EventKind::Reviewed,
        EventKind::Approved,
        EventKind::Denied,
        EventKind::Expired,
        EventKind::Escalated,
        EventKind::Bypassed,
        EventKind::Acknowledged,
    ];

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One event. `request` is the approver's view of the request (redacted
/// parameters, never a secret value).
#[derive(Clone, Debug, Serialize)]
pub struct GateEvent {
    pub kind: EventKind,
    pub at: Timestamp,
    /// Who caused it: an approver, a break-glass identity, `policy` or `system`.
    pub actor: String,
    /// The approver's comment, the denial reason or the break-glass reason.
    pub comment: Option<String>,
    pub request: Value,
}

impl GateEvent {
    pub fn new(
        kind: EventKind,
        actor: &str,
        comment: Option<String>,
        request: &HeldRequest,
        at: Timestamp,
    ) -> GateEvent {
        GateEvent {
            kind,
            at,
            actor: actor.to_string(),
            comment,
            request: request_view(request),
        }
    }
}

/// The fan-out point. Cheap to clone.
#[derive(Clone)]
pub struct EventHub {
    tx: broadcast::Sender<Arc<GateEvent>>,
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub {
            tx: broadcast::channel(BACKLOG).0,
        }
    }
}

impl EventHub {
    pub fn publish(&self, event: GateEvent) {
        // No listener is fine: nothing to tell.
        let _ = self.tx.send(Arc::new(event));
    }

    /// Publish, building the event (the request's JSON view) only when
    /// someone listens: most deployments without webhooks or an open page
    /// should not pay for it on every hold.
    pub fn publish_with(&self, make: impl FnOnce() -> GateEvent) {
        if self.tx.receiver_count() > 0 {
            self.publish(make());
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<GateEvent>> {
        self.tx.subscribe()
    }
}

/// A held request as approvers see it: who asked for what, why it is held,
/// the justification, the reviews so far, and (after approval) each use of
/// the grant. Parameters are already redacted.
pub fn request_view(r: &HeldRequest) -> Value {
    json!({
        "id": r.id,
        "identity": r.subject.identity,
        "front": r.subject.front,
        "operation": r.subject.operation,
        "class": r.subject.class,
        "resources": r.subject.resources,
        "parameters": r.subject.parameters,
        "state": r.state,
        "rule": r.rule,
        "reasons": r.reasons,
        "justification": r.subject.justification,
        "client": r.subject.client,
        "certificate": r.subject.certificate,
        "approver_group": r.spec.approver_group,
        "required_approvals": r.spec.approvals,
        "factors": r.spec.factors(),
        "escalation": r.spec.escalation,
        "escalated_at": r.escalated_at,
        "approvals": r.approvals,
        "denials": r.denials,
        "denial": r.denial,
        "bypass": r.bypass,
        "grant": r.grant.as_ref().map(|g| json!({"uses_left": g.uses_left, "expires_at": g.expires_at, "used_at": g.used_at})),
        "created_at": r.created_at,
        "expires_at": r.expires_at,
        "decided_at": r.decided_at,
    })
}
