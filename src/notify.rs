//! Webhook notifications: tells approvers that a request waits for them, and
//! a workload's owner how its request ended, so nobody has to poll the admin
//! API and held clients are not left waiting on an unwatched queue.
//!
//! The notifier listens to the `EventHub` in its own task and never slows
//! the data path: if it falls behind the hub it misses events (and logs how
//! many). Each webhook has its own bounded queue and delivery task, so a slow
//! or broken endpoint delays nobody else; when its queue is full, new events
//! for it are dropped and logged. Deliveries are retried with exponential
//! backoff on timeouts, connection errors, 408, 429 and 5xx; any other
//! answer outside 2xx is final.
//!
//! Payloads carry only the approver's view of the request, which is already
//! redacted, plus who should act. The webhook URL is a secret (a Slack URL
//! is its own credential): logs and errors name the webhook, never the URL.
//!
//! Who is told (`recipients` in each payload):
//! - `created`: approvers of every factor group, except the workload's owner
//!   (whose approval would not count);
//! - `escalated`: the escalation group;
//! - `bypassed`: every approver of the rule, escalation group included;
//! - `approved`, `denied`, `expired`: the workload's owner;
//! - `reviewed`, `acknowledged`: nobody in particular.

mod slack;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio::task::{JoinHandle, JoinSet};

use crate::config::{Approver, Identity, NotifyConfig, WebhookConfig, WebhookFormat};
use crate::events::{EventKind, GateEvent};

/// Events that may wait for one webhook before new ones are dropped.
const QUEUE: usize = 1024;
/// Longest wait between two attempts, before jitter.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Bytes of an error answer kept for the log.
const MAX_SNIPPET: usize = 200;
/// Longest `Retry-After` honoured; a longer one would stall the queue.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(String),
}

// ---------------------------------------------------------------------------
// Who is told
// ---------------------------------------------------------------------------

/// The people events are addressed to: approvers with their groups, and the
/// owner of each workload identity. Built once from the config.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    /// In config order, so recipient lists are stable.
    approvers: Vec<(String, Vec<String>)>,
    /// Identity name → owner (an approver name, or a group of approvers).
    owners: HashMap<String, String>,
}

impl Directory {
    pub fn new(approvers: &[Approver], identities: &[Identity]) -> Directory {
        Directory {
            approvers: approvers
                .iter()
                .map(|a| (a.name.clone(), a.groups.clone()))
                .collect(),
            owners: identities
                .iter()
                .filter_map(|i| Some((i.name.clone(), i.owner.clone()?)))
                .collect(),
        }
    }

    /// Approvers in any of `groups`, each once, in config order.
    fn members(&self, groups: &[&str]) -> Vec<String> {
        self.approvers
            .iter()
            .filter(|(_, gs)| gs.iter().any(|g| groups.contains(&g.as_str())))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The approvers who own `identity`: the named approver, or the members
    /// of the named group.
    fn owners_of(&self, identity: &str) -> Vec<String> {
        let Some(owner) = self.owners.get(identity) else {
            return Vec::new();
        };
        if self.approvers.iter().any(|(name, _)| name == owner) {
            vec![owner.clone()]
        } else {
            self.members(&[owner.as_str()])
        }
    }
}

/// Who should hear about `event`; see the module docs.
pub fn recipients(directory: &Directory, event: &GateEvent) -> Vec<String> {
    let view = View(&event.request);
    match event.kind {
        EventKind::Created => {
            let owners = directory.owners_of(view.identity());
            let mut names = directory.members(&view.factor_groups());
            names.retain(|n| !owners.contains(n));
            names
        }
        EventKind::Escalated => match view.escalation_group() {
            Some(group) => directory.members(&[group]),
            None => Vec::new(),
        },
        EventKind::Bypassed => {
            let mut groups = view.factor_groups();
            groups.extend(view.escalation_group());
            directory.members(&groups)
        }
        EventKind::Approved | EventKind::Denied | EventKind::Expired => {
            directory.owners_of(view.identity())
        }
        EventKind::Reviewed | EventKind::Acknowledged => Vec::new(),
    }
}

/// Read access to the fields of the request view (`events::request_view`)
/// that messages use. Missing fields read as empty: a message with a gap is
/// better than no message.
#[derive(Clone, Copy)]
struct View<'a>(&'a Value);

impl<'a> View<'a> {
    fn str(self, field: &str) -> &'a str {
        self.0.get(field).and_then(Value::as_str).unwrap_or("")
    }

    fn id(self) -> &'a str {
        self.str("id")
    }

    fn identity(self) -> &'a str {
        self.str("identity")
    }

    fn operation(self) -> &'a str {
        self.str("operation")
    }

    fn rule(self) -> &'a str {
        self.str("rule")
    }

    fn justification(self) -> Option<&'a str> {
        Some(self.str("justification")).filter(|s| !s.is_empty())
    }

    fn strings(self, field: &str) -> Vec<&'a str> {
        self.0
            .get(field)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    fn resources(self) -> Vec<&'a str> {
        self.strings("resources")
    }

    fn reasons(self) -> Vec<&'a str> {
        self.strings("reasons")
    }

    /// `(group, approvals)` per factor; a request without factors has one
    /// factor, its `approver_group`.
    fn factors(self) -> Vec<(&'a str, u64)> {
        let factors: Vec<(&str, u64)> = self
            .0
            .get("factors")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|f| {
                        let group = f.get("group")?.as_str()?;
                        let n = f.get("approvals").and_then(Value::as_u64).unwrap_or(1);
                        Some((group, n))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !factors.is_empty() {
            return factors;
        }
        let group = self.str("approver_group");
        let n = self
            .0
            .get("required_approvals")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        if group.is_empty() {
            Vec::new()
        } else {
            vec![(group, n)]
        }
    }

    fn factor_groups(self) -> Vec<&'a str> {
        self.factors().into_iter().map(|(g, _)| g).collect()
    }

    fn escalation_group(self) -> Option<&'a str> {
        self.0
            .get("escalation")?
            .get("group")?
            .as_str()
            .filter(|g| !g.is_empty())
    }
}

// ---------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------

/// What every webhook subscribed to an event is sent, before formatting.
#[derive(Debug)]
struct Notice {
    event: Arc<GateEvent>,
    recipients: Vec<String>,
    link: Option<String>,
}

/// The approver page's anchor for a request.
fn link(admin_url: Option<&str>, event: &GateEvent) -> Option<String> {
    let id = View(&event.request).id();
    admin_url.map(|base| format!("{base}#{id}"))
}

/// keygate's own JSON document (`format = "json"`).
pub fn json_payload(event: &GateEvent, recipients: &[String], link: Option<&str>) -> Value {
    json!({
        "event": event.kind.as_str(),
        "at": event.at,
        "actor": event.actor,
        "comment": event.comment,
        "recipients": recipients,
        "request": event.request,
        "link": link,
    })
}

/// A Slack incoming-webhook message (`format = "slack"`).
pub fn slack_payload(event: &GateEvent, recipients: &[String], link: Option<&str>) -> Value {
    slack::payload(event, recipients, link)
}

fn render(format: WebhookFormat, notice: &Notice) -> Bytes {
    let link = notice.link.as_deref();
    let value = match format {
        WebhookFormat::Json => json_payload(&notice.event, &notice.recipients, link),
        WebhookFormat::Slack => slack_payload(&notice.event, &notice.recipients, link),
    };
    Bytes::from(value.to_string())
}

// ---------------------------------------------------------------------------
// Retry policy (pure)
// ---------------------------------------------------------------------------

/// What an HTTP answer means for a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered.
    Done,
    /// The endpoint may succeed later: try again after a delay.
    Retry,
    /// The endpoint refuses this payload; trying again would not help.
    GiveUp,
}

pub fn classify(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Done,
        408 | 429 | 500..=599 => Verdict::Retry,
        // Redirects are not followed (a webhook that moved is a config
        // error), and other 4xx mean the payload or URL is wrong.
        _ => Verdict::GiveUp,
    }
}

/// The delay before retry number `retry` (1 for the first retry), before
/// jitter: `base`, then doubling, capped at 30 s.
pub fn backoff(base: Duration, retry: u32) -> Duration {
    let factor = 1u32
        .checked_shl(retry.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(MAX_BACKOFF)
}

/// Up to a quarter less than `d`, so retries after a shared outage spread out.
fn jitter(d: Duration) -> Duration {
    let quarter = u64::try_from(d.as_millis() / 4).unwrap_or(u64::MAX);
    let off = rand::thread_rng().gen_range(0..=quarter);
    d.saturating_sub(Duration::from_millis(off))
}

/// `Retry-After: <seconds>` on a 429 or 503, capped. HTTP dates are not
/// honoured (the backoff applies instead).
fn retry_after(status: u16, headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    if status != 429 && status != 503 {
        return None;
    }
    let secs: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

// ---------------------------------------------------------------------------
// Delivery
// ---------------------------------------------------------------------------

/// How one delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Delivered { attempts: u32 },
    GaveUp { attempts: u32, reason: String },
}

/// POST `body` to the webhook until it is delivered, refused, or
/// `max_attempts` is used up.
async fn deliver(http: &reqwest::Client, hook: &WebhookConfig, body: Bytes) -> Outcome {
    let mut attempt = 1;
    loop {
        let sent = http
            .post(hook.url.expose())
            .timeout(hook.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        let (verdict, hint, reason) = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                let verdict = classify(status);
                let hint = retry_after(status, response.headers());
                let reason = match verdict {
                    Verdict::Done => String::new(),
                    _ => match snippet(response).await {
                        s if s.is_empty() => format!("HTTP {status}"),
                        s => format!("HTTP {status}: {s}"),
                    },
                };
                (verdict, hint, reason)
            }
            // A malformed request never gets better.
            Err(e) if e.is_builder() => (
                Verdict::GiveUp,
                None,
                crate::error_chain::describe_reqwest(e),
            ),
            Err(e) => (
                Verdict::Retry,
                None,
                crate::error_chain::describe_reqwest(e),
            ),
        };
        match verdict {
            Verdict::Done => return Outcome::Delivered { attempts: attempt },
            Verdict::GiveUp => {
                return Outcome::GaveUp {
                    attempts: attempt,
                    reason,
                }
            }
            Verdict::Retry if attempt >= hook.max_attempts => {
                return Outcome::GaveUp {
                    attempts: attempt,
                    reason,
                }
            }
            Verdict::Retry => {
                let wait = hint.unwrap_or_else(|| jitter(backoff(hook.backoff_base, attempt)));
                tracing::debug!(webhook = %hook.name, attempt, %reason, wait_ms = wait.as_millis() as u64, "webhook delivery failed; will retry");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        }
    }
}

/// The start of an error answer, on one line: Slack, for one, says what is
/// wrong in the body (`invalid_payload`, `no_service`).
async fn snippet(mut response: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < MAX_SNIPPET {
        match response.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(MAX_SNIPPET);
    let text: String = String::from_utf8_lossy(&buf)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    text.trim().to_string()
}

/// One webhook's delivery loop: events in queue order, one at a time.
async fn run_webhook(
    http: reqwest::Client,
    hook: WebhookConfig,
    mut queue: mpsc::Receiver<Arc<Notice>>,
) {
    while let Some(notice) = queue.recv().await {
        let body = render(hook.format, &notice);
        let event = notice.event.kind.as_str();
        let request = View(&notice.event.request).id();
        match deliver(&http, &hook, body).await {
            Outcome::Delivered { attempts } => {
                tracing::debug!(webhook = %hook.name, event, request, attempts, "webhook delivered");
            }
            Outcome::GaveUp { attempts, reason } => {
                tracing::warn!(webhook = %hook.name, event, request, attempts, %reason, "webhook delivery given up");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The notifier task
// ---------------------------------------------------------------------------

/// One webhook as the dispatcher sees it: which events it wants and its queue.
struct Route {
    name: String,
    events: Vec<EventKind>,
    queue: mpsc::Sender<Arc<Notice>>,
}

/// Listens to the event hub and hands each event to the webhooks that want it.
pub struct Notifier {
    directory: Directory,
    admin_url: Option<String>,
    routes: Vec<Route>,
}

impl Notifier {
    /// Start the notifier and one delivery task per webhook. The returned
    /// task ends when the hub closes and the queued deliveries are done;
    /// aborting it drops whatever is still queued.
    pub fn spawn(
        config: NotifyConfig,
        directory: Directory,
        events: broadcast::Receiver<Arc<GateEvent>>,
    ) -> Result<JoinHandle<()>, NotifyError> {
        if config.webhooks.is_empty() {
            // Dropping the receiver leaves the hub one listener lighter.
            return Ok(tokio::spawn(async {}));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("keygate/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| NotifyError::Client(crate::error_chain::describe_reqwest(e)))?;
        let names: Vec<&str> = config.webhooks.iter().map(|w| w.name.as_str()).collect();
        tracing::info!(webhooks = ?names, "webhook notifications on");
        let mut deliveries = JoinSet::new();
        let mut routes = Vec::with_capacity(config.webhooks.len());
        for hook in config.webhooks {
            let (tx, rx) = mpsc::channel(QUEUE);
            routes.push(Route {
                name: hook.name.clone(),
                events: hook.events.clone(),
                queue: tx,
            });
            deliveries.spawn(run_webhook(http.clone(), hook, rx));
        }
        let notifier = Notifier {
            directory,
            admin_url: config.admin_url,
            routes,
        };
        Ok(tokio::spawn(async move {
            notifier.listen(events).await;
            // `notifier` (and with it every queue sender) is gone: each
            // delivery task finishes its queue and ends.
            while deliveries.join_next().await.is_some() {}
        }))
    }

    async fn listen(self, mut events: broadcast::Receiver<Arc<GateEvent>>) {
        loop {
            match events.recv().await {
                Ok(event) => self.dispatch(event),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "notifier fell behind the event hub; these events were not notified"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Queue `event` for every webhook that wants it, without waiting.
    fn dispatch(&self, event: Arc<GateEvent>) {
        let kind = event.kind;
        let mut wanted = self
            .routes
            .iter()
            .filter(|r| r.events.contains(&kind))
            .peekable();
        if wanted.peek().is_none() {
            return;
        }
        let notice = Arc::new(Notice {
            recipients: recipients(&self.directory, &event),
            link: link(self.admin_url.as_deref(), &event),
            event,
        });
        for route in wanted {
            if let Err(e) = route.queue.try_send(notice.clone()) {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "its queue is full",
                    mpsc::error::TrySendError::Closed(_) => "its delivery task has stopped",
                };
                tracing::warn!(
                    webhook = %route.name,
                    event = notice.event.kind.as_str(),
                    request = View(&notice.event.request).id(),
                    "webhook notification dropped: {why}"
                );
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::timestamp::Timestamp;

    pub(super) const ID: &str = "3f0c2b1a-0000-4000-8000-000000000001";
    pub(super) const ADMIN: &str = "https://keygate.internal:8741/ui";

    /// alice, bob: secops; bob, carol: payments-owners; dave: payments-leads.
    /// demo-app is owned by bob, ci-job by nobody, shared-app by a group.
    pub(super) fn directory() -> Directory {
        let approver = |name: &str, groups: &[&str]| {
            (
                name.to_string(),
                groups.iter().map(|g| g.to_string()).collect(),
            )
        };
        Directory {
            approvers: vec![
                approver("alice", &["secops"]),
                approver("bob", &["secops", "payments-owners"]),
                approver("carol", &["payments-owners"]),
                approver("dave", &["payments-leads"]),
                approver("erin", &["auditors"]),
            ],
            owners: HashMap::from([
                ("demo-app".to_string(), "bob".to_string()),
                ("shared-app".to_string(), "payments-owners".to_string()),
            ]),
        }
    }

    /// A request view as `events::request_view` renders it (the fields
    /// notifications read, plus a few they must pass through untouched).
    pub(super) fn request(identity: &str) -> Value {
        json!({
            "id": ID,
            "identity": identity,
            "front": "aws",
            "operation": "GetSecretValue",
            "class": "read",
            "resources": ["prod/payments/db"],
            "parameters": {"SecretId": "prod/payments/db"},
            "state": "pending",
            "rule": "prod-read",
            "reasons": ["crown-jewel path prod/payments/*"],
            "justification": "incident 4711",
            "approver_group": "secops",
            "required_approvals": 1,
            "factors": [
                {"group": "secops", "approvals": 1},
                {"group": "payments-owners", "approvals": 1},
            ],
            "escalation": {"group": "payments-leads", "after_ms": 600000, "can_approve": true},
            "created_at": "2026-11-18T11:06:40.123Z",
            "expires_at": "2026-11-18T12:06:40.123Z",
        })
    }

    pub(super) fn event(
        kind: EventKind,
        actor: &str,
        comment: Option<&str>,
        request: Value,
    ) -> GateEvent {
        GateEvent {
            kind,
            at: Timestamp::from_millis(1_795_000_000_123),
            actor: actor.to_string(),
            comment: comment.map(str::to_string),
            request,
        }
    }

    // -- recipients --------------------------------------------------------

    fn check_recipients(kind: EventKind, request: Value, expect: &[&str]) {
        let got = recipients(&directory(), &event(kind, "x", None, request));
        assert_eq!(got, expect, "recipients of {kind:?}");
    }

    #[test]
    fn recipients_per_kind() {
        use EventKind::*;
        // The owner (bob) is not asked: his approval would not count.
        check_recipients(Created, request("demo-app"), &["alice", "carol"]);
        check_recipients(Created, request("ci-job"), &["alice", "bob", "carol"]);
        check_recipients(Created, request("shared-app"), &["alice"]);
        check_recipients(Escalated, request("demo-app"), &["dave"]);
        check_recipients(
            Bypassed,
            request("demo-app"),
            &["alice", "bob", "carol", "dave"],
        );
        // The owner hears how the request ended.
        for kind in [Approved, Denied, Expired] {
            check_recipients(kind, request("demo-app"), &["bob"]);
            check_recipients(kind, request("shared-app"), &["bob", "carol"]);
            check_recipients(kind, request("ci-job"), &[]);
        }
        for kind in [Reviewed, Acknowledged] {
            check_recipients(kind, request("demo-app"), &[]);
        }
    }

    #[test]
    fn recipients_without_factors_or_escalation() {
        let mut r = request("ci-job");
        r["factors"] = Value::Null;
        r["escalation"] = Value::Null;
        check_recipients(EventKind::Created, r.clone(), &["alice", "bob"]);
        check_recipients(EventKind::Escalated, r.clone(), &[]);
        check_recipients(EventKind::Bypassed, r, &["alice", "bob"]);
    }

    // -- payloads ----------------------------------------------------------

    #[test]
    fn json_payload_shape_for_every_kind() {
        for kind in EventKind::ALL {
            let e = event(kind, "alice", Some("ok"), request("demo-app"));
            let who = recipients(&directory(), &e);
            let link = link(Some(ADMIN), &e);
            let p = json_payload(&e, &who, link.as_deref());
            let keys: Vec<&str> = p
                .as_object()
                .expect("object")
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(
                keys,
                [
                    "actor",
                    "at",
                    "comment",
                    "event",
                    "link",
                    "recipients",
                    "request"
                ],
                "{kind:?}"
            );
            assert_eq!(p["event"], kind.as_str());
            assert_eq!(p["at"], "2026-11-18T11:06:40.123Z");
            assert_eq!(p["actor"], "alice");
            assert_eq!(p["comment"], "ok");
            assert_eq!(p["recipients"], json!(who));
            // The request view is passed through as is, nothing added.
            assert_eq!(p["request"], request("demo-app"));
            assert_eq!(p["link"], format!("{ADMIN}#{ID}"));
        }
        let e = event(EventKind::Expired, "system", None, request("ci-job"));
        let p = json_payload(&e, &[], link(None, &e).as_deref());
        assert_eq!(p["link"], Value::Null);
        assert_eq!(p["comment"], Value::Null);
        assert_eq!(p["recipients"], json!([]));
    }

    // -- retry policy ------------------------------------------------------

    #[test]
    fn backoff_doubles_from_the_base_and_is_capped() {
        let base = Duration::from_millis(500);
        let schedule: Vec<u64> = (1..=9)
            .map(|n| backoff(base, n).as_millis() as u64)
            .collect();
        assert_eq!(
            schedule,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(backoff(base, 0), base);
        assert_eq!(backoff(base, 64), MAX_BACKOFF);
        assert_eq!(backoff(base, u32::MAX), MAX_BACKOFF);
        for n in 1..=8 {
            let d = backoff(base, n);
            for _ in 0..20 {
                let j = jitter(d);
                assert!(j <= d && j >= d * 3 / 4, "{j:?} for {d:?}");
            }
        }
    }

    #[test]
    fn classification_of_answers() {
        for (status, expect) in [
            (200, Verdict::Done),
            (202, Verdict::Done),
            (204, Verdict::Done),
            (408, Verdict::Retry),
            (429, Verdict::Retry),
            (500, Verdict::Retry),
            (502, Verdict::Retry),
            (503, Verdict::Retry),
            (504, Verdict::Retry),
            (301, Verdict::GiveUp),
            (302, Verdict::GiveUp),
            (400, Verdict::GiveUp),
            (401, Verdict::GiveUp),
            (403, Verdict::GiveUp),
            (404, Verdict::GiveUp),
            (410, Verdict::GiveUp),
            (413, Verdict::GiveUp),
        ] {
            assert_eq!(classify(status), expect, "HTTP {status}");
        }
    }

    #[test]
    fn retry_after_seconds_are_honoured_on_429_and_503_only() {
        let headers = |v: &str| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(
                reqwest::header::RETRY_AFTER,
                v.parse().expect("header value"),
            );
            h
        };
        assert_eq!(
            retry_after(429, &headers("7")),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(503, &headers(" 2 ")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(retry_after(503, &headers("3600")), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after(500, &headers("7")), None);
        assert_eq!(
            retry_after(429, &headers("Wed, 21 Oct 2026 07:28:00 GMT")),
            None
        );
        assert_eq!(retry_after(429, &reqwest::header::HeaderMap::new()), None);
    }

    // -- dispatch ----------------------------------------------------------

    fn notifier_with_queue(
        events: Vec<EventKind>,
        capacity: usize,
    ) -> (Notifier, mpsc::Receiver<Arc<Notice>>) {
        let (tx, rx) = mpsc::channel(capacity);
        let notifier = Notifier {
            directory: directory(),
            admin_url: Some(ADMIN.to_string()),
            routes: vec![Route {
                name: "hook".to_string(),
                events,
                queue: tx,
            }],
        };
        (notifier, rx)
    }

    #[test]
    fn dispatch_queues_subscribed_kinds_and_drops_when_full() {
        let (n, mut rx) = notifier_with_queue(vec![EventKind::Created, EventKind::Denied], 2);
        let e = |kind| Arc::new(event(kind, "x", None, request("demo-app")));
        n.dispatch(e(EventKind::Reviewed)); // not subscribed
        n.dispatch(e(EventKind::Created));
        n.dispatch(e(EventKind::Denied));
        n.dispatch(e(EventKind::Created)); // queue full: dropped, not blocking
        let first = rx.try_recv().expect("queued");
        assert_eq!(first.event.kind, EventKind::Created);
        assert_eq!(first.recipients, ["alice", "carol"]);
        assert_eq!(
            first.link.as_deref(),
            Some(format!("{ADMIN}#{ID}").as_str())
        );
        assert_eq!(rx.try_recv().expect("queued").event.kind, EventKind::Denied);
        assert!(rx.try_recv().is_err());
    }

    // -- delivery against a local HTTP server --------------------------------

    /// What the test server answers to one request.
    #[derive(Clone, Copy)]
    struct Reply {
        status: u16,
        delay: Duration,
        retry_after: Option<&'static str>,
    }

    fn reply(status: u16) -> Reply {
        Reply {
            status,
            delay: Duration::ZERO,
            retry_after: None,
        }
    }

    /// One request as the test server saw it.
    struct Hit {
        content_type: Option<String>,
        body: Bytes,
    }

    struct TestServer {
        url: String,
        hits: mpsc::UnboundedReceiver<Hit>,
        count: Arc<AtomicUsize>,
    }

    /// An HTTP/1 server on 127.0.0.1 answering the n-th request with
    /// `script[n]` (the last entry repeats).
    async fn serve(script: Vec<Reply>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, hits) = mpsc::unbounded_channel();
        let count = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(script);
        let counter = count.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, script, count) = (tx.clone(), script.clone(), counter.clone());
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (tx, script, count) = (tx.clone(), script.clone(), count.clone());
                        async move {
                            let n = count.fetch_add(1, Ordering::SeqCst);
                            let r = script[n.min(script.len() - 1)];
                            let content_type = req
                                .headers()
                                .get(http::header::CONTENT_TYPE)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            let body = req.into_body().collect().await?.to_bytes();
                            let _ = tx.send(Hit { content_type, body });
                            tokio::time::sleep(r.delay).await;
                            let mut answer = hyper::Response::builder().status(r.status);
                            if let Some(v) = r.retry_after {
                                answer = answer.header(http::header::RETRY_AFTER, v);
                            }
                            let answer = answer
                                .body(http_body_util::Full::new(Bytes::from_static(b"ok")))
                                .expect("valid response");
                            Ok::<_, hyper::Error>(answer)
                        }
                    },
                );
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        TestServer {
            url: format!("http://{addr}/services/T000/B000/secret-path"),
            hits,
            count,
        }
    }

    fn hook(name: &str, url: &str, format: WebhookFormat) -> WebhookConfig {
        WebhookConfig {
            name: name.to_string(),
            url: crate::secret::SecretString::new(url),
            format,
            events: EventKind::ALL.to_vec(),
            timeout: Duration::from_secs(5),
            max_attempts: 6,
            backoff_base: Duration::from_millis(10),
        }
    }

    async fn next_hit(server: &mut TestServer) -> Hit {
        tokio::time::timeout(Duration::from_secs(10), server.hits.recv())
            .await
            .expect("a request within 10s")
            .expect("server running")
    }

    #[tokio::test]
    async fn retries_503_then_delivers() {
        let mut server = serve(vec![reply(503), reply(503), reply(200)]).await;
        let config = NotifyConfig {
            admin_url: Some(ADMIN.to_string()),
            webhooks: vec![hook("ops", &server.url, WebhookFormat::Json)],
        };
        let (tx, rx) = broadcast::channel(16);
        let task = Notifier::spawn(config, directory(), rx).expect("notifier starts");
        tx.send(Arc::new(event(
            EventKind::Created,
            "demo-app",
            None,
            request("demo-app"),
        )))
        .expect("a listener");
        let bodies = [
            next_hit(&mut server).await,
            next_hit(&mut server).await,
            next_hit(&mut server).await,
        ];
        for hit in &bodies {
            assert_eq!(hit.content_type.as_deref(), Some("application/json"));
            assert_eq!(
                hit.body, bodies[0].body,
                "every attempt sends the same body"
            );
        }
        let sent: Value = serde_json::from_slice(&bodies[2].body).expect("JSON body");
        assert_eq!(sent["event"], "created");
        assert_eq!(sent["recipients"], json!(["alice", "carol"]));
        assert_eq!(sent["request"]["id"], ID);
        assert_eq!(sent["link"], format!("{ADMIN}#{ID}"));
        // Closing the hub ends the notifier once its queues are done.
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("notifier ends")
            .expect("no panic");
        assert_eq!(server.count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn gives_up_at_once_on_400() {
        let server = serve(vec![reply(400)]).await;
        let http = reqwest::Client::new();
        let out = deliver(
            &http,
            &hook("h", &server.url, WebhookFormat::Json),
            Bytes::from_static(b"{}"),
        )
        .await;
        assert_eq!(
            out,
            Outcome::GaveUp {
                attempts: 1,
                reason: "HTTP 400: ok".to_string()
            }
        );
        assert_eq!(server.count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts() {
        let server = serve(vec![reply(500)]).await;
        let mut h = hook("h", &server.url, WebhookFormat::Json);
        h.max_attempts = 3;
        let out = deliver(&reqwest::Client::new(), &h, Bytes::from_static(b"{}")).await;
        assert_eq!(
            out,
            Outcome::GaveUp {
                attempts: 3,
                reason: "HTTP 500: ok".to_string()
            }
        );
        assert_eq!(server.count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn honours_retry_after_on_429() {
        let server = serve(vec![
            Reply {
                retry_after: Some("1"),
                ..reply(429)
            },
            reply(204),
        ])
        .await;
        let started = std::time::Instant::now();
        let out = deliver(
            &reqwest::Client::new(),
            &hook("h", &server.url, WebhookFormat::Json),
            Bytes::from_static(b"{}"),
        )
        .await;
        assert_eq!(out, Outcome::Delivered { attempts: 2 });
        assert!(started.elapsed() >= Duration::from_secs(1));
    }

    #[tokio::test]
    async fn connection_errors_are_retried_and_never_show_the_url() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        drop(listener);
        let mut h = hook(
            "h",
            &format!("http://{addr}/hooks/secret-path"),
            WebhookFormat::Json,
        );
        h.max_attempts = 2;
        let out = deliver(&reqwest::Client::new(), &h, Bytes::from_static(b"{}")).await;
        let Outcome::GaveUp { attempts, reason } = out else {
            panic!("delivered to a closed port")
        };
        assert_eq!(attempts, 2);
        assert!(reason.starts_with("cannot connect"), "{reason}");
        assert!(!reason.contains("secret-path"), "{reason}");
    }

    #[tokio::test]
    async fn a_slow_webhook_does_not_delay_another() {
        let slow = serve(vec![Reply {
            delay: Duration::from_secs(2),
            ..reply(200)
        }])
        .await;
        let mut fast = serve(vec![reply(200)]).await;
        let config = NotifyConfig {
            admin_url: None,
            webhooks: vec![
                hook("slow", &slow.url, WebhookFormat::Json),
                hook("fast", &fast.url, WebhookFormat::Slack),
            ],
        };
        let (tx, rx) = broadcast::channel(16);
        let _task = Notifier::spawn(config, directory(), rx).expect("notifier starts");
        let started = std::time::Instant::now();
        for kind in [EventKind::Created, EventKind::Escalated] {
            tx.send(Arc::new(event(kind, "system", None, request("demo-app"))))
                .expect("a listener");
        }
        let first: Value = serde_json::from_slice(&next_hit(&mut fast).await.body).expect("JSON");
        let second: Value = serde_json::from_slice(&next_hit(&mut fast).await.body).expect("JSON");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "the fast webhook waited for the slow one: {:?}",
            started.elapsed()
        );
        assert!(first["text"].as_str().unwrap_or("").starts_with(":lock:"));
        assert!(second["text"]
            .as_str()
            .unwrap_or("")
            .starts_with(":rotating_light:"));
    }

    #[tokio::test]
    async fn no_webhooks_means_nothing_runs() {
        let (tx, rx) = broadcast::channel::<Arc<GateEvent>>(16);
        let task = Notifier::spawn(NotifyConfig::default(), Directory::default(), rx)
            .expect("notifier starts");
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("ends at once")
            .expect("no panic");
        // The receiver was dropped: the hub has no listener left.
        assert_eq!(tx.receiver_count(), 0);
    }
}
