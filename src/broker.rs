//! The data path shared by every front end: decide, audit, hold.
//!
//! A front end authenticates the workload and translates its wire request
//! into an `AccessRequest`; `Broker::admit` answers whether it may proceed.
//! Only then does the front end consult the cache or the upstream, so
//! authorization always comes before the cache.
//!
//! `admit` is two steps that a front end may also take apart: `decide`
//! answers at once or returns a `Pending` hold, and `await_decision` waits
//! for the human. Between them the front end drops the request it parsed,
//! so that a request waiting minutes keeps only what its answer needs.
//!
//! **Invariant:** nothing is answered unaudited. The decision's audit event
//! is committed before `decide` (or `await_decision`) returns `Proceed`,
//! with one exception: under strict audit, a `read_only` request's verdict
//! is `Verdict::Recording`, whose record is written while the request
//! executes, and whose answer the front end gives only once
//! [`Durable::wait`] has returned `Ok` (`front::once_durable`). `admit`
//! waits for that too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::audit::{AuditEvent, AuditKind, POLICY_ACTOR};
use crate::config::AuditMode;
use crate::gate::Subject;
use crate::holds::{Admit, HoldError, Holds, Outcome};
use crate::policy::{self, Decision, Front, OpClass, Policy, ReadHistory};
use crate::store::{Commit, Store, StoreError};
use crate::timestamp::Timestamp;

/// One workload request, as every front end describes it. The identity's
/// name and groups are borrowed from the configuration: a request is
/// decided while its caller's identity is at hand, and copying them cost
/// allocations on every request.
#[derive(Debug, Clone)]
pub struct AccessRequest<'a> {
    pub identity: &'a str,
    pub groups: &'a [String],
    pub front: Front,
    /// One of the front end's fixed operation names.
    pub operation: &'static str,
    pub class: OpClass,
    pub resources: Vec<String>,
    /// Parameters as approvers may see them (built only for holds).
    pub parameters: Parameters,
    /// Canonical bytes of every parameter that binds an approval.
    pub digest_material: Vec<u8>,
    pub justification: Option<String>,
    /// What a certificate or token request asks for (empty otherwise).
    pub facts: policy::Facts,
    /// A break-glass reason (`X-Keygate-Break-Glass`): honoured only for
    /// identities a hold rule lists in `break_glass`.
    pub break_glass: Option<String>,
    /// Where the request came from, for the audit record.
    pub client: Option<std::net::IpAddr>,
    /// The client certificate's name, when mTLS proved the identity.
    pub certificate: Option<String>,
    /// Executing it changes nothing upstream (a read): under strict audit
    /// it may execute while its decision record is made durable, and only
    /// its answer waits for that (see [`Durable`]).
    pub read_only: bool,
}

/// A request's parameters for approvers. Redacting costs a copy of the body,
/// and most requests are never held, so a front end may defer it.
#[derive(Clone)]
pub enum Parameters {
    /// Already redacted.
    Redacted(serde_json::Value),
    /// The raw body (which may hold secret values) and the redactor to apply.
    Deferred(
        serde_json::Map<String, serde_json::Value>,
        fn(&serde_json::Map<String, serde_json::Value>) -> serde_json::Value,
    ),
}

impl Parameters {
    pub fn redacted(&self) -> serde_json::Value {
        match self {
            Parameters::Redacted(v) => v.clone(),
            Parameters::Deferred(body, redact) => redact(body),
        }
    }
}

/// Never prints the raw body: it may carry secret values.
impl std::fmt::Debug for Parameters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Parameters::Redacted(v) => write!(f, "Redacted({v})"),
            Parameters::Deferred(..) => f.write_str("Deferred(<not yet redacted>)"),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Proceed {
        rule: Option<String>,
        /// The held request whose grant this execution uses.
        grant: Option<String>,
    },
    Refused(Refusal),
}

/// What [`Broker::decide`] came to.
#[derive(Debug)]
pub enum Verdict {
    /// Decided and recorded: go ahead, or refuse.
    Now(Admission),
    /// Allowed, and its decision record is on its way to disk: a read
    /// under strict audit. It may execute now; its answer waits for
    /// [`Durable::wait`].
    Recording(Admission, Durable),
    /// Held for a human; [`Broker::await_decision`] waits for the decision.
    Held(Pending),
}

/// A decision record being made durable. Until [`Durable::wait`] returns
/// `Ok`, nothing of the request's answer may leave keygate.
pub enum Durable {
    /// Already durable (or not asked to be: batched audit).
    Done,
    /// The store's commit; polled for the first time by `wait`.
    Committing(std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send>>),
}

impl Durable {
    pub async fn wait(self) -> Result<(), BrokerError> {
        match self {
            Durable::Done => Ok(()),
            Durable::Committing(commit) => Ok(commit.await?),
        }
    }
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Durable::Done => "Done",
            Durable::Committing(_) => "Committing",
        })
    }
}

/// A held request's place in the approval queue: what its wait and the
/// grant's use need, and nothing of the request it came from.
#[derive(Debug)]
pub struct Pending {
    id: String,
    rx: tokio::sync::watch::Receiver<Outcome>,
    rule: String,
    group: String,
    window: Duration,
    /// The identity and resources that volume rules count once it is
    /// released (only when some rule counts reads and this is one).
    reads: Option<(String, Vec<String>)>,
    /// When the request was decided: its reads count from then.
    decided_at: Timestamp,
}

/// Why a request may not proceed; each front end words it natively.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Policy {
        rule: Option<String>,
        reason: String,
    },
    AwaitingApproval {
        id: String,
        rule: String,
        group: String,
    },
    Rejected {
        id: String,
        by: String,
        reason: String,
    },
    Expired {
        id: String,
    },
    GrantUnavailable {
        id: String,
        why: String,
    },
    TooManyPending {
        limit: usize,
    },
    /// The rule requires a justification and the request carried none.
    JustificationRequired {
        rule: String,
    },
    /// `gate.max_pending_total` is reached: nothing new can be held.
    Overloaded,
    /// keygate is stopping while the client waited; the request stays pending.
    ShuttingDown {
        id: String,
    },
}

impl Refusal {
    /// A short stable name for logs.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Policy { .. } => "denied",
            Refusal::AwaitingApproval { .. } => "held",
            Refusal::Rejected { .. } => "rejected",
            Refusal::Expired { .. } => "expired",
            Refusal::GrantUnavailable { .. } => "grant-unavailable",
            Refusal::TooManyPending { .. } => "too-many-pending",
            Refusal::Overloaded => "overloaded",
            Refusal::JustificationRequired { .. } => "justification-required",
            Refusal::ShuttingDown { .. } => "shutting-down",
        }
    }

    /// The message the client sees (never a secret value).
    pub fn message(&self) -> String {
        match self {
            Refusal::Policy {
                rule: Some(rule),
                reason,
            } => {
                format!("keygate: denied by rule {rule}: {reason}")
            }
            Refusal::Policy { rule: None, reason } => format!("keygate: {reason}"),
            Refusal::AwaitingApproval { id, rule, group } => format!(
                "keygate: request {id} is awaiting approval by {group} (rule {rule}); \
                 retry the same request after it is approved"
            ),
            Refusal::Rejected { id, by, reason } => {
                format!("keygate: request {id} was denied by {by}: {reason}")
            }
            Refusal::Expired { id } => {
                format!("keygate: request {id} expired without a decision and was not allowed")
            }
            Refusal::GrantUnavailable { id, why } => {
                format!("keygate: request {id} was approved but cannot be used: {why}")
            }
            Refusal::TooManyPending { limit } => format!(
                "keygate: this identity already has {limit} requests awaiting approval; \
                 wait for decisions before asking again"
            ),
            Refusal::JustificationRequired { rule } => format!(
                "keygate: rule {rule} requires a justification: send the header \
                 X-Keygate-Justification: <why you need this> with the request \
                 (boto3: an event hook on before-sign.secrets-manager.*; hvac: \
                 Client(..., headers={{...}}) or session headers; curl: -H)"
            ),
            Refusal::Overloaded => "keygate: too many requests are awaiting approval; \
                                    try again later"
                .to_string(),
            Refusal::ShuttingDown { id } => format!(
                "keygate: shutting down; request {id} stays pending and can be approved; \
                 retry the same request after keygate is back"
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("could not record the decision: {0}")]
    Store(#[from] StoreError),
}

pub struct Broker {
    policy: Policy,
    holds: Holds,
    store: Arc<dyn Store>,
    digest_key: [u8; 32],
    /// Per-identity recent reads for volume rules. A std mutex: held only for
    /// a few map operations, never across an `.await`.
    histories: Mutex<HashMap<String, ReadHistory>>,
    history_keep: Duration,
    audit_mode: AuditMode,
}

impl Broker {
    pub fn new(
        policy: Policy,
        holds: Holds,
        store: Arc<dyn Store>,
        digest_key: [u8; 32],
        audit_mode: AuditMode,
    ) -> Broker {
        let history_keep = policy.longest_volume_window();
        Broker {
            policy,
            holds,
            store,
            digest_key,
            histories: Mutex::new(HashMap::new()),
            history_keep,
            audit_mode,
        }
    }

    pub fn holds(&self) -> &Holds {
        &self.holds
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Keyed digest of the exact request: identity, front, operation and
    /// every binding parameter. Keyed so that a digest of a low-entropy
    /// secret written through keygate cannot be brute-forced from the store.
    pub fn digest(&self, req: &AccessRequest<'_>) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.digest_key)
            .expect("HMAC accepts keys of any length");
        for part in [
            req.identity.as_bytes(),
            req.front.as_str().as_bytes(),
            req.operation.as_bytes(),
        ] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(&req.digest_material);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Decide `req`, wait for a human if it is held and for its decision
    /// record to be durable: [`Broker::decide`], then [`Broker::settle`],
    /// then [`Durable::wait`].
    pub async fn admit(&self, req: &AccessRequest<'_>) -> Result<Admission, BrokerError> {
        let verdict = self.decide(req).await?;
        let (admission, durable) = self.settle(verdict).await?;
        durable.wait().await?;
        Ok(admission)
    }

    /// A verdict's final answer: at once, or once a human has decided. A
    /// `Proceed` may come with its record still [`Durable`]: the caller
    /// executes the request meanwhile and answers only after `wait`.
    pub async fn settle(&self, verdict: Verdict) -> Result<(Admission, Durable), BrokerError> {
        match verdict {
            Verdict::Now(admission) => Ok((admission, Durable::Done)),
            Verdict::Recording(admission, durable) => Ok((admission, durable)),
            Verdict::Held(pending) => {
                // Boxed: only held requests carry the wait's state.
                let waiting = Box::pin(self.await_decision(pending));
                Ok((waiting.await?, Durable::Done))
            }
        }
    }

    /// Decide `req` and record the decision. A request held for approval
    /// comes back as [`Verdict::Held`] once its hold is durable, so that
    /// the caller can let go of everything it needed to decide before the
    /// (possibly long) wait.
    pub async fn decide(&self, req: &AccessRequest<'_>) -> Result<Verdict, BrokerError> {
        let now = Timestamp::now();
        let decision = {
            let view = policy::Request {
                identity: req.identity,
                groups: req.groups,
                front: req.front,
                operation: req.operation,
                class: req.class,
                resources: &req.resources,
                facts: &req.facts,
            };
            let empty = ReadHistory::default();
            // Without volume rules there is no history to consult: skip the lock.
            let histories = (!self.history_keep.is_zero())
                .then(|| self.histories.lock().unwrap_or_else(|p| p.into_inner()));
            let history = histories
                .as_ref()
                .and_then(|h| h.get(req.identity))
                .unwrap_or(&empty);
            match self.policy.decide(&view, history, now) {
                Decision::Allow { rule } => Decided::Allow(rule.map(str::to_string)),
                Decision::Deny { rule, reason } => Decided::Deny(rule.map(str::to_string), reason),
                Decision::Hold {
                    rule,
                    spec,
                    reasons,
                } => Decided::Hold(rule.to_string(), spec.clone(), reasons),
            }
        };
        let justified = req
            .justification
            .as_deref()
            .is_some_and(|j| !j.trim().is_empty());
        let rule_name = match &decision {
            Decided::Allow(rule) | Decided::Deny(rule, _) => rule.as_deref(),
            Decided::Hold(rule, ..) => Some(rule.as_str()),
        };
        if let Some(rule) =
            rule_name.filter(|r| !justified && self.policy.requires_justification(r))
        {
            let mut e = self.event(AuditKind::Denied, POLICY_ACTOR, req, now);
            e.rule = Some(rule.to_string());
            e.detail = Some("no justification given; the rule requires one".into());
            self.record_decision(e).await?;
            return Ok(Verdict::Now(Admission::Refused(
                Refusal::JustificationRequired {
                    rule: rule.to_string(),
                },
            )));
        }
        match decision {
            Decided::Allow(rule) => {
                let mut e = self.event(AuditKind::Allowed, POLICY_ACTOR, req, now);
                e.rule = rule.clone();
                let proceed = Admission::Proceed { rule, grant: None };
                if req.read_only && self.audit_mode == AuditMode::Strict {
                    // The fsync overlaps the upstream call; the answer
                    // still waits for it.
                    let store = Arc::clone(&self.store);
                    let commit = Box::pin(async move { store.commit(Commit::event(e)).await });
                    self.record_reads(req, now);
                    return Ok(Verdict::Recording(proceed, Durable::Committing(commit)));
                }
                self.record_decision(e).await?;
                self.record_reads(req, now);
                Ok(Verdict::Now(proceed))
            }
            Decided::Deny(rule, reason) => {
                let mut e = self.event(AuditKind::Denied, POLICY_ACTOR, req, now);
                e.rule = rule.clone();
                e.detail = Some(reason.clone());
                self.record_decision(e).await?;
                Ok(Verdict::Now(Admission::Refused(Refusal::Policy {
                    rule,
                    reason,
                })))
            }
            // Boxed: the hold path's future is several times the size of
            // the allow path's, and inline it would make every request's
            // future that large.
            Decided::Hold(rule, spec, reasons) => {
                Box::pin(self.hold(req, rule, spec, reasons, now)).await
            }
        }
    }

    async fn hold(
        &self,
        req: &AccessRequest<'_>,
        rule: String,
        spec: policy::HoldSpec,
        reasons: Vec<String>,
        now: Timestamp,
    ) -> Result<Verdict, BrokerError> {
        let subject = Subject {
            identity: req.identity.to_string(),
            front: req.front,
            operation: req.operation.to_string(),
            class: req.class,
            resources: req.resources.clone(),
            parameters: req.parameters.redacted().into(),
            justification: req.justification.clone(),
            digest: self.digest(req),
            client: req.client.map(crate::hexfmt::ip),
            certificate: req.certificate.clone(),
        };
        let mut reasons = reasons;
        if let Some(reason) = req
            .break_glass
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
        {
            if spec.break_glass.iter().any(|i| i == req.identity) {
                let reason: String = reason.chars().take(1024).collect();
                let bypassed = Box::pin(
                    self.holds
                        .bypass(subject, &rule, reasons, &spec, reason, now),
                )
                .await?;
                self.record_reads(req, now);
                return Ok(Verdict::Now(Admission::Proceed {
                    rule: Some(rule),
                    grant: Some(bypassed.id),
                }));
            }
            // Not on the rule's break-glass list: the hold stands, and
            // approvers see that it was tried.
            reasons.push(format!(
                "break-glass requested ({reason}) but {} may not bypass rule {rule}",
                req.identity
            ));
        }
        // From here the request may wait minutes: let the server park it.
        crate::server::budget::may_park();
        let refused = |r| Ok(Verdict::Now(Admission::Refused(r)));
        let admitted = match Box::pin(self.holds.admit(subject, &rule, reasons, &spec, now)).await {
            Ok(a) => a,
            Err(HoldError::TooManyPending { limit, .. }) => {
                let mut e = self.event(AuditKind::Denied, POLICY_ACTOR, req, now);
                e.rule = Some(rule);
                e.detail = Some(format!("pending request limit ({limit}) reached"));
                self.store.commit(Commit::event(e)).await?;
                return refused(Refusal::TooManyPending { limit });
            }
            Err(HoldError::Overloaded { limit }) => {
                let mut e = self.event(AuditKind::Denied, POLICY_ACTOR, req, now);
                e.rule = Some(rule);
                e.detail = Some(format!("global pending request limit ({limit}) reached"));
                self.store.commit(Commit::event(e)).await?;
                return refused(Refusal::Overloaded);
            }
            Err(HoldError::Store(e)) => return Err(e.into()),
            Err(other) => {
                return refused(Refusal::Policy {
                    rule: Some(rule),
                    reason: other.to_string(),
                })
            }
        };
        match admitted {
            Admit::Granted { id } => {
                self.record_reads(req, now);
                Ok(Verdict::Now(Admission::Proceed {
                    rule: Some(rule),
                    grant: Some(id),
                }))
            }
            Admit::Denied { id, denial } => refused(Refusal::Rejected {
                id,
                by: denial.by,
                reason: denial.reason,
            }),
            Admit::Waiting { id, rx } => Ok(Verdict::Held(Pending {
                id,
                rx,
                rule,
                group: spec.approver_group,
                window: spec.hold_window,
                reads: self.reads_of(req),
                decided_at: now,
            })),
        }
    }

    /// Wait for a human's decision on a held request, then use its grant.
    /// Only what `pending` holds is kept for the wait, which may take the
    /// whole hold window.
    pub async fn await_decision(&self, pending: Pending) -> Result<Admission, BrokerError> {
        let Pending {
            id,
            rx,
            rule,
            group,
            window,
            reads,
            decided_at,
        } = pending;
        // The approval wait does not spend the request's time budget.
        let pause = crate::server::budget::pause();
        let waited = self.holds.wait(rx, window).await;
        drop(pause);
        let refused = |r| Ok(Admission::Refused(r));
        match waited {
            Outcome::ShuttingDown => refused(Refusal::ShuttingDown { id }),
            Outcome::Pending => refused(Refusal::AwaitingApproval { id, rule, group }),
            Outcome::Denied(d) => refused(Refusal::Rejected {
                id,
                by: d.by,
                reason: d.reason,
            }),
            Outcome::Expired => refused(Refusal::Expired { id }),
            Outcome::Approved => {
                // Its own statement: a temporary in the awaiting one would
                // keep room for the unboxed future in this (long-lived) state.
                let releasing = Box::pin(self.holds.release(&id, Timestamp::now()));
                self.use_grant(releasing.await, id, rule, reads, decided_at)
            }
        }
    }

    /// The end of an approved request's wait: use its grant.
    fn use_grant(
        &self,
        released: Result<(), HoldError>,
        id: String,
        rule: String,
        reads: Option<(String, Vec<String>)>,
        decided_at: Timestamp,
    ) -> Result<Admission, BrokerError> {
        match released {
            Ok(()) => {
                if let Some((identity, resources)) = reads {
                    self.record_history(identity, decided_at, &resources);
                }
                Ok(Admission::Proceed {
                    rule: Some(rule),
                    grant: Some(id),
                })
            }
            Err(HoldError::Store(e)) => Err(e.into()),
            // Another waiter on the same merged request used a one-time grant first.
            Err(other) => Ok(Admission::Refused(Refusal::GrantUnavailable {
                id,
                why: other.to_string(),
            })),
        }
    }

    /// Wait until every audit record queued so far is durable (at shutdown).
    pub async fn flush_audit(&self) -> Result<(), StoreError> {
        self.store.commit(Commit::default()).await
    }

    /// Record an allow or deny decision as the audit mode asks.
    async fn record_decision(&self, e: AuditEvent) -> Result<(), StoreError> {
        match self.audit_mode {
            AuditMode::Strict => self.store.commit(Commit::event(e)).await,
            AuditMode::Batched => {
                let relaxed = Commit {
                    requests: Vec::new(),
                    events: vec![e],
                    relaxed: true,
                };
                match self.store.commit_detached(relaxed) {
                    Ok(()) => Ok(()),
                    // The store is failing: wait for the commit, which fails closed.
                    Err(mut refused) => {
                        refused.relaxed = false;
                        self.store.commit(refused).await
                    }
                }
            }
        }
    }

    fn event(
        &self,
        kind: AuditKind,
        actor: &str,
        req: &AccessRequest<'_>,
        now: Timestamp,
    ) -> AuditEvent {
        let mut e = AuditEvent::new(kind, actor, now);
        e.identity = Some(req.identity.to_string());
        e.front = Some(req.front);
        e.operation = Some(req.operation.into());
        e.resources = req.resources.clone();
        e.client = req.client.map(crate::hexfmt::ip);
        e.certificate = req.certificate.clone();
        e
    }

    fn record_reads(&self, req: &AccessRequest<'_>, now: Timestamp) {
        if let Some((identity, resources)) = self.reads_of(req) {
            self.record_history(identity, now, &resources);
        }
    }

    /// What volume rules will count of `req`, if any rule counts reads and
    /// `req` is a read: kept by a held request until its release.
    fn reads_of(&self, req: &AccessRequest<'_>) -> Option<(String, Vec<String>)> {
        (!self.history_keep.is_zero() && matches!(req.class, OpClass::Read | OpClass::Bulk))
            .then(|| (req.identity.to_string(), req.resources.clone()))
    }

    fn record_history(&self, identity: String, now: Timestamp, resources: &[String]) {
        let mut histories = self.histories.lock().unwrap_or_else(|p| p.into_inner());
        histories
            .entry(identity)
            .or_default()
            .record(now, self.history_keep, resources);
    }
}

enum Decided {
    Allow(Option<String>),
    Deny(Option<String>, String),
    Hold(String, policy::HoldSpec, Vec<String>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::{Narrowing, Reviewer};
    use crate::glob::Glob;
    use crate::holds::ReviewAction;
    use crate::policy::{Action, Conditions, DefaultAction, GrantSpec, HoldSpec, Rule};
    use crate::store::sqlite::SqliteStore;
    use std::num::NonZeroU32;

    fn hold_rule() -> Rule {
        Rule {
            name: "prod-read".into(),
            identities: vec![],
            groups: vec![],
            fronts: vec![],
            operations: vec!["GetSecretValue".into()],
            classes: vec![],
            resources: vec![Glob::new("prod/*")],
            conditions: Conditions::default(),
            action: Action::Hold(HoldSpec {
                approver_group: "secops".into(),
                approvals: NonZeroU32::MIN,
                extra_factors: vec![],
                denials: NonZeroU32::MIN,
                escalation: None,
                break_glass: vec![],
                hold_window: Duration::from_secs(20),
                request_ttl: Duration::from_secs(60),
                approval_ttl: Duration::from_secs(60),
                grant: GrantSpec::Once,
            }),
            require_justification: false,
        }
    }

    async fn broker(dir: &tempfile::TempDir) -> Broker {
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("state.db")).expect("open store"));
        let holds = Holds::load(store.clone(), 10, 100, Timestamp::now())
            .await
            .expect("load holds");
        let policy = Policy::new(DefaultAction::Deny, vec![hold_rule()]);
        Broker::new(policy, holds, store, [7; 32], AuditMode::Strict)
    }

    fn request(secret: &str) -> AccessRequest<'static> {
        AccessRequest {
            identity: "app",
            groups: &[],
            front: Front::Aws,
            operation: "GetSecretValue",
            class: OpClass::Read,
            resources: vec![secret.into()],
            parameters: Parameters::Redacted(serde_json::json!({ "SecretId": secret })),
            digest_material: secret.as_bytes().to_vec(),
            justification: None,
            facts: policy::Facts::default(),
            break_glass: None,
            client: None,
            certificate: None,
            read_only: true,
        }
    }

    fn held(verdict: Verdict) -> Pending {
        match verdict {
            Verdict::Held(pending) => pending,
            other => panic!("expected the request to be held, got {other:?}"),
        }
    }

    async fn broker_allowing_dev(dir: &tempfile::TempDir, mode: AuditMode) -> Broker {
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("state.db")).expect("open store"));
        let holds = Holds::load(store.clone(), 10, 100, Timestamp::now())
            .await
            .expect("load holds");
        let allow = Rule {
            name: "dev-read".into(),
            resources: vec![Glob::new("dev/*")],
            action: Action::Allow,
            ..hold_rule()
        };
        let policy = Policy::new(DefaultAction::Deny, vec![allow]);
        Broker::new(policy, holds, store, [7; 32], mode)
    }

    async fn audit_count(b: &Broker) -> usize {
        b.flush_audit().await.expect("flush");
        b.store.audit_rows(0, 100).await.expect("rows").len()
    }

    #[tokio::test]
    async fn a_strict_read_proceeds_while_its_record_is_made_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = broker_allowing_dev(&dir, AuditMode::Strict).await;
        let verdict = b.decide(&request("dev/db")).await.expect("decide");
        let Verdict::Recording(admission, durable) = verdict else {
            panic!("expected a read allowed while recording, got {verdict:?}");
        };
        assert_eq!(
            admission,
            Admission::Proceed {
                rule: Some("dev-read".into()),
                grant: None
            }
        );
        durable.wait().await.expect("durable");
        assert_eq!(audit_count(&b).await, 1);
    }

    #[tokio::test]
    async fn a_strict_write_and_a_batched_read_are_recorded_before_the_verdict() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = broker_allowing_dev(&dir, AuditMode::Strict).await;
        let write = AccessRequest {
            read_only: false,
            ..request("dev/db")
        };
        let verdict = b.decide(&write).await.expect("decide");
        assert!(
            matches!(verdict, Verdict::Now(Admission::Proceed { .. })),
            "{verdict:?}"
        );
        assert_eq!(audit_count(&b).await, 1);

        let dir = tempfile::tempdir().expect("tempdir");
        let b = broker_allowing_dev(&dir, AuditMode::Batched).await;
        let verdict = b.decide(&request("dev/db")).await.expect("decide");
        assert!(
            matches!(verdict, Verdict::Now(Admission::Proceed { .. })),
            "{verdict:?}"
        );
        assert_eq!(audit_count(&b).await, 1);
    }

    #[tokio::test]
    async fn a_held_request_waits_on_its_pending_hold_alone_and_proceeds_once_approved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = broker(&dir).await;
        let req = request("prod/db");
        let pending = held(b.decide(&req).await.expect("decide"));
        // The wait needs nothing of the request it came from.
        drop(req);
        let id = pending.id.clone();
        let groups = vec!["secops".to_string()];
        let approve = async {
            b.holds()
                .review(
                    &id,
                    Reviewer {
                        name: "alice",
                        groups: &groups,
                    },
                    None,
                    ReviewAction::Approve {
                        comment: None,
                        narrowed: Narrowing::default(),
                    },
                    Timestamp::now(),
                )
                .await
                .expect("approve")
        };
        let (admission, _) = tokio::join!(b.await_decision(pending), approve);
        assert_eq!(
            admission.expect("no store error"),
            Admission::Proceed {
                rule: Some("prod-read".into()),
                grant: Some(id),
            }
        );
    }

    #[tokio::test]
    async fn admit_is_decide_then_await_decision() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = broker(&dir).await;
        match b.admit(&request("dev/db")).await.expect("admit") {
            Admission::Refused(Refusal::Policy { rule: None, .. }) => {}
            other => panic!("expected the default deny, got {other:?}"),
        }
        // A held request that nobody decides: shutting down answers it, and
        // it stays pending.
        b.holds().shut_down();
        match b.admit(&request("prod/db")).await.expect("admit") {
            Admission::Refused(Refusal::ShuttingDown { .. }) => {}
            other => panic!("expected ShuttingDown, got {other:?}"),
        }
        assert_eq!(b.holds().pending_count().await, 1);
    }
}
