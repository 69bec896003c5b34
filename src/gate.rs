//! The approval state machine for held requests: PURE. No IO, no `.await`;
//! every transition takes `now` and either changes the request or returns why
//! it cannot. Persisting, notifying waiters and auditing happen around it
//! (see `holds`).
//!
//! ```text
//!            approve (every factor met)      take_grant (uses left, not expired)
//! Pending ─────────────────────────► Approved ──┐
//!    │ deny (denial quorum)  │ expire           └─ spent when uses_left == 0
//!    ▼                       ▼
//! Denied                  Expired        (expired = denied: never allowed)
//!
//! Bypassed (break-glass): created already executed; awaits acknowledgement.
//! ```
//!
//! Quorum: a hold names one or more factors ("2 from secops AND 1 from
//! payments-owners"). Each approver fills at most one slot; approvals are
//! assigned to factors by a bipartite matching, so the quorum is met exactly
//! when distinct people can cover every slot. The workload's owner (a person
//! or a group) never counts. Escalation approvers may fill any slot.

use std::fmt;

use serde::{Deserialize, Serialize};

use std::time::Duration;

use crate::policy::{Front, GrantSpec, HoldSpec, OpClass};
use crate::timestamp::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Approved,
    Denied,
    Expired,
    /// A break-glass identity bypassed the hold: executed at once, reviewed after.
    Bypassed,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Pending,
        State::Approved,
        State::Denied,
        State::Expired,
        State::Bypassed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Bypassed => "bypassed",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The exact request a hold is about. `digest` binds identity, front,
/// operation and every parameter (keyed hash; see `broker::digest`), so an
/// approval can only ever release this request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub identity: String,
    pub front: Front,
    pub operation: String,
    pub class: OpClass,
    pub resources: Vec<String>,
    /// Request parameters with secret values removed: safe to show approvers.
    pub parameters: ParametersJson,
    pub justification: Option<String>,
    pub digest: String,
    /// Where the request came from (after trusted proxies), for approvers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The client certificate that proved the identity, if mTLS did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

/// A held request's parameters as JSON text, written and read verbatim.
///
/// Text rather than a `serde_json::Value`: a parsed object is a B-tree
/// whose first node alone is over 600 bytes, and every pending request
/// keeps its parameters in memory for as long as it waits.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ParametersJson(Box<serde_json::value::RawValue>);

impl ParametersJson {
    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

impl From<serde_json::Value> for ParametersJson {
    fn from(v: serde_json::Value) -> ParametersJson {
        // A `Value` always serializes; `null` is the (unreachable) fallback.
        let raw = serde_json::value::to_raw_value(&v)
            .unwrap_or_else(|_| serde_json::value::to_raw_value(&()).expect("null serializes"));
        ParametersJson(raw)
    }
}

impl PartialEq for ParametersJson {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ParametersJson {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    pub approver: String,
    pub at: Timestamp,
    pub comment: Option<String>,
    /// Factors (indexes into `HoldSpec::factors`) this approver could fill
    /// when they reviewed. Empty in records from before factors existed,
    /// which means the first factor.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub factors: Vec<usize>,
    /// What the approver narrowed the grant to, if anything.
    #[serde(default, skip_serializing_if = "Narrowing::is_none")]
    pub narrowed: Narrowing,
}

/// An approver may grant less than the rule allows, never more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Narrowing {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration_ms"
    )]
    pub window: Option<Duration>,
}

impl Narrowing {
    pub fn is_none(&self) -> bool {
        self.uses.is_none() && self.window.is_none()
    }
}

mod opt_duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// Who owns a workload: their approval never counts for its requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    Person(String),
    /// Every member of the group.
    Group(String),
}

impl Owner {
    pub fn owns(&self, reviewer: Reviewer<'_>) -> bool {
        match self {
            Owner::Person(p) => p == reviewer.name,
            Owner::Group(g) => reviewer.groups.contains(g),
        }
    }
}

/// A break-glass bypass and its after-the-fact acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bypass {
    pub by: String,
    pub reason: String,
    pub at: Timestamp,
    pub acknowledged: Option<Review>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    pub by: String,
    pub reason: String,
    pub at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub uses_left: u32,
    pub expires_at: Timestamp,
    /// A window grant's length once used (the rule's, or narrower).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration_ms"
    )]
    pub window: Option<Duration>,
    /// Each execution made under this grant, for post-approval review.
    pub used_at: Vec<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldRequest {
    pub id: String,
    pub subject: Subject,
    pub rule: String,
    pub reasons: Vec<String>,
    pub spec: HoldSpec,
    pub state: State,
    pub approvals: Vec<Review>,
    /// Denials so far, when a rule needs more than one to decide.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denials: Vec<Review>,
    pub denial: Option<Denial>,
    /// When the escalation group was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalated_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bypass: Option<Bypass>,
    pub grant: Option<Grant>,
    pub created_at: Timestamp,
    /// Deadline for a decision; a request still pending then is expired.
    pub expires_at: Timestamp,
    pub decided_at: Option<Timestamp>,
}

/// Who is reviewing, as the gate needs to know them.
#[derive(Clone, Copy, Debug)]
pub struct Reviewer<'a> {
    pub name: &'a str,
    pub groups: &'a [String],
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("request is {0}, not pending")]
    NotPending(State),
    #[error("request expired before it was decided")]
    Expired,
    #[error("{approver} is not in approver group {group}")]
    NotInGroup { approver: String, group: String },
    #[error("{approver} owns identity {identity} and cannot review its requests")]
    Owner { approver: String, identity: String },
    #[error("{0} has already reviewed this request")]
    AlreadyApproved(String),
    #[error("the grant can only be narrowed: {0}")]
    Widens(String),
    #[error("this request was not a break-glass bypass")]
    NotBypassed,
    #[error("this bypass was already acknowledged by {0}")]
    AlreadyAcknowledged(String),
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReviewOutcome {
    /// The approval counted; more are needed.
    Counted { have: u32, need: u32 },
    /// Quorum met: the request is approved and carries a grant.
    Approved,
    /// The denial counted; more are needed to deny.
    DenialCounted { have: u32, need: u32 },
    /// Denied.
    Denied,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("request is {0}")]
    NotApproved(State),
    #[error("the approval's grant has been used up")]
    Spent,
    #[error("the approval's grant expired")]
    Expired,
}

impl HeldRequest {
    pub fn new(
        id: String,
        subject: Subject,
        rule: String,
        reasons: Vec<String>,
        spec: HoldSpec,
        now: Timestamp,
    ) -> HeldRequest {
        let expires_at = now.plus(spec.request_ttl);
        HeldRequest {
            id,
            subject,
            rule,
            reasons,
            spec,
            state: State::Pending,
            approvals: Vec::new(),
            denials: Vec::new(),
            denial: None,
            escalated_at: None,
            bypass: None,
            grant: None,
            created_at: now,
            expires_at,
            decided_at: None,
        }
    }

    /// A break-glass request: executed at once by `by`, reviewed afterwards.
    pub fn bypassed(
        id: String,
        subject: Subject,
        rule: String,
        reasons: Vec<String>,
        spec: HoldSpec,
        reason: String,
        now: Timestamp,
    ) -> HeldRequest {
        let by = subject.identity.clone();
        let mut r = HeldRequest::new(id, subject, rule, reasons, spec, now);
        r.state = State::Bypassed;
        r.decided_at = Some(now);
        r.bypass = Some(Bypass {
            by,
            reason,
            at: now,
            acknowledged: None,
        });
        r
    }

    /// The factors `reviewer` may fill; empty if they may not review at all.
    fn eligible_factors(&self, reviewer: Reviewer<'_>) -> Vec<usize> {
        let factors = self.spec.factors();
        let escalated_approver = self.escalated_at.is_some()
            && self
                .spec
                .escalation
                .as_ref()
                .is_some_and(|e| e.can_approve && reviewer.groups.contains(&e.group));
        (0..factors.len())
            .filter(|&i| escalated_approver || reviewer.groups.contains(&factors[i].group))
            .collect()
    }

    fn check_reviewable(
        &self,
        reviewer: Reviewer<'_>,
        owner: Option<&Owner>,
        now: Timestamp,
    ) -> Result<Vec<usize>, ReviewError> {
        if self.state != State::Pending {
            return Err(ReviewError::NotPending(self.state));
        }
        if now >= self.expires_at {
            return Err(ReviewError::Expired);
        }
        let eligible = self.eligible_factors(reviewer);
        if eligible.is_empty() {
            return Err(ReviewError::NotInGroup {
                approver: reviewer.name.to_string(),
                group: self
                    .spec
                    .factors()
                    .iter()
                    .map(|f| f.group.as_str())
                    .collect::<Vec<_>>()
                    .join(" or "),
            });
        }
        if owner.is_some_and(|o| o.owns(reviewer)) {
            return Err(ReviewError::Owner {
                approver: reviewer.name.to_string(),
                identity: self.subject.identity.clone(),
            });
        }
        let reviewed = |list: &[Review]| list.iter().any(|r| r.approver == reviewer.name);
        if reviewed(&self.approvals) || reviewed(&self.denials) {
            return Err(ReviewError::AlreadyApproved(reviewer.name.to_string()));
        }
        Ok(eligible)
    }

    /// Check that `narrowed` grants no more than the rule allows.
    fn check_narrowing(&self, narrowed: Narrowing) -> Result<(), ReviewError> {
        if narrowed.uses == Some(0) {
            return Err(ReviewError::Widens(
                "grant_uses must be at least 1 (deny instead)".into(),
            ));
        }
        let max_uses = self.spec.grant.uses();
        if let Some(uses) = narrowed.uses.filter(|&u| u > max_uses) {
            return Err(ReviewError::Widens(format!(
                "grant_uses {uses} is more than the rule's {max_uses}"
            )));
        }
        if let Some(window) = narrowed.window {
            match self.spec.grant {
                GrantSpec::Once => {
                    return Err(ReviewError::Widens(
                        "the rule grants one use, which has no window to narrow".into(),
                    ))
                }
                GrantSpec::Window { window: max, .. } if window > max => {
                    return Err(ReviewError::Widens(format!(
                        "grant_window {} is longer than the rule's {}",
                        humantime::format_duration(window),
                        humantime::format_duration(max)
                    )))
                }
                GrantSpec::Window { .. } => {}
            }
        }
        Ok(())
    }

    /// Record an approval. `owner` owns the requesting identity; their
    /// approval never counts for its own workload. `narrowed` may shorten the
    /// grant the rule would give.
    pub fn approve(
        &mut self,
        reviewer: Reviewer<'_>,
        owner: Option<&Owner>,
        comment: Option<String>,
        narrowed: Narrowing,
        now: Timestamp,
    ) -> Result<ReviewOutcome, ReviewError> {
        let eligible = self.check_reviewable(reviewer, owner, now)?;
        self.check_narrowing(narrowed)?;
        self.approvals.push(Review {
            approver: reviewer.name.to_string(),
            at: now,
            comment,
            factors: eligible,
            narrowed,
        });
        let need = self.spec.factors().iter().map(|f| f.approvals.get()).sum();
        let have = filled_slots(&self.spec, &self.approvals);
        if have < need {
            return Ok(ReviewOutcome::Counted { have, need });
        }
        self.state = State::Approved;
        self.decided_at = Some(now);
        // The narrowest any approver asked for wins.
        let uses = self
            .approvals
            .iter()
            .filter_map(|r| r.narrowed.uses)
            .fold(self.spec.grant.uses(), u32::min);
        let window = match self.spec.grant {
            GrantSpec::Once => None,
            GrantSpec::Window { window, .. } => Some(
                self.approvals
                    .iter()
                    .filter_map(|r| r.narrowed.window)
                    .fold(window, Duration::min),
            ),
        };
        self.grant = Some(Grant {
            uses_left: uses,
            expires_at: now.plus(self.spec.approval_ttl),
            window,
            used_at: Vec::new(),
        });
        Ok(ReviewOutcome::Approved)
    }

    /// Record a denial with a reason. The rule's `denials` (default 1)
    /// decide the request.
    pub fn deny(
        &mut self,
        reviewer: Reviewer<'_>,
        owner: Option<&Owner>,
        reason: String,
        now: Timestamp,
    ) -> Result<ReviewOutcome, ReviewError> {
        let eligible = self.check_reviewable(reviewer, owner, now)?;
        self.denials.push(Review {
            approver: reviewer.name.to_string(),
            at: now,
            comment: Some(reason.clone()),
            factors: eligible,
            narrowed: Narrowing::default(),
        });
        let have = u32::try_from(self.denials.len()).unwrap_or(u32::MAX);
        let need = self.spec.denials.get();
        if have < need {
            return Ok(ReviewOutcome::DenialCounted { have, need });
        }
        self.state = State::Denied;
        self.decided_at = Some(now);
        self.denial = Some(Denial {
            by: reviewer.name.to_string(),
            reason,
            at: now,
        });
        Ok(ReviewOutcome::Denied)
    }

    /// Mark a pending request escalated once `escalate_after` has passed.
    /// Returns whether it changed.
    pub fn escalate_if_due(&mut self, now: Timestamp) -> bool {
        let Some(e) = &self.spec.escalation else {
            return false;
        };
        if self.state == State::Pending
            && self.escalated_at.is_none()
            && now >= self.created_at.plus(e.after)
            && now < self.expires_at
        {
            self.escalated_at = Some(now);
            return true;
        }
        false
    }

    /// Acknowledge a break-glass bypass after the fact. Anyone who could
    /// have reviewed the hold may, except the workload's owner.
    pub fn acknowledge(
        &mut self,
        reviewer: Reviewer<'_>,
        owner: Option<&Owner>,
        comment: Option<String>,
        now: Timestamp,
    ) -> Result<(), ReviewError> {
        if self.state != State::Bypassed {
            return Err(ReviewError::NotBypassed);
        }
        if !self
            .spec
            .reviewer_groups()
            .any(|g| reviewer.groups.iter().any(|mine| mine == g))
        {
            return Err(ReviewError::NotInGroup {
                approver: reviewer.name.to_string(),
                group: self.spec.reviewer_groups().collect::<Vec<_>>().join(" or "),
            });
        }
        if owner.is_some_and(|o| o.owns(reviewer)) {
            return Err(ReviewError::Owner {
                approver: reviewer.name.to_string(),
                identity: self.subject.identity.clone(),
            });
        }
        let bypass = self.bypass.as_mut().ok_or(ReviewError::NotBypassed)?;
        if let Some(done) = &bypass.acknowledged {
            return Err(ReviewError::AlreadyAcknowledged(done.approver.clone()));
        }
        bypass.acknowledged = Some(Review {
            approver: reviewer.name.to_string(),
            at: now,
            comment,
            factors: Vec::new(),
            narrowed: Narrowing::default(),
        });
        Ok(())
    }

    /// Expire a pending request whose deadline has passed. Returns whether it changed.
    pub fn expire_if_due(&mut self, now: Timestamp) -> bool {
        if self.state == State::Pending && now >= self.expires_at {
            self.state = State::Expired;
            self.decided_at = Some(now);
            true
        } else {
            false
        }
    }

    /// Use the grant once. A window grant's clock starts at its first use.
    pub fn take_grant(&mut self, now: Timestamp) -> Result<(), GrantError> {
        if self.state != State::Approved {
            return Err(GrantError::NotApproved(self.state));
        }
        let spec = self.spec.grant;
        let grant = self.grant.as_mut().ok_or(GrantError::Spent)?;
        if grant.uses_left == 0 {
            return Err(GrantError::Spent);
        }
        if now >= grant.expires_at {
            return Err(GrantError::Expired);
        }
        if let (GrantSpec::Window { window, .. }, true) = (spec, grant.used_at.is_empty()) {
            grant.expires_at = now.plus(grant.window.unwrap_or(window));
        }
        grant.uses_left -= 1;
        grant.used_at.push(now);
        Ok(())
    }

    /// Whether the request still matters to the data path: pending, or
    /// approved with a usable grant.
    pub fn is_live(&self, now: Timestamp) -> bool {
        match self.state {
            State::Pending => true,
            State::Approved => self
                .grant
                .as_ref()
                .is_some_and(|g| g.uses_left > 0 && now < g.expires_at),
            State::Denied | State::Expired | State::Bypassed => false,
        }
    }
}

/// How many approval slots distinct approvers can fill: a maximum bipartite
/// matching of approvers to slots (Kuhn's augmenting paths; a handful of
/// people and slots, so the simple algorithm is plenty).
fn filled_slots(spec: &HoldSpec, approvals: &[Review]) -> u32 {
    // One slot per required approval, labelled with its factor.
    let slots: Vec<usize> = spec
        .factors()
        .iter()
        .enumerate()
        .flat_map(|(i, f)| std::iter::repeat(i).take(f.approvals.get() as usize))
        .collect();
    let can_fill = |person: usize, slot: usize| {
        let factors = &approvals[person].factors;
        if factors.is_empty() {
            slots[slot] == 0
        } else {
            factors.contains(&slots[slot])
        }
    };
    let mut owner_of_slot: Vec<Option<usize>> = vec![None; slots.len()];
    fn augment(
        person: usize,
        seen: &mut [bool],
        owner_of_slot: &mut [Option<usize>],
        can_fill: &dyn Fn(usize, usize) -> bool,
    ) -> bool {
        for slot in 0..owner_of_slot.len() {
            if seen[slot] || !can_fill(person, slot) {
                continue;
            }
            seen[slot] = true;
            let free = match owner_of_slot[slot] {
                None => true,
                Some(other) => augment(other, seen, owner_of_slot, can_fill),
            };
            if free {
                owner_of_slot[slot] = Some(person);
                return true;
            }
        }
        false
    }
    let mut filled = 0;
    for person in 0..approvals.len() {
        let mut seen = vec![false; slots.len()];
        if augment(person, &mut seen, &mut owner_of_slot, &can_fill) {
            filled += 1;
        }
    }
    filled
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;
    use std::time::Duration;

    #[test]
    fn parameters_are_kept_and_stored_as_the_json_they_were() {
        let p = ParametersJson::from(
            serde_json::json!({"SecretId": "prod/x", "VersionStage": "AWSCURRENT"}),
        );
        assert_eq!(
            p.as_str(),
            r#"{"SecretId":"prod/x","VersionStage":"AWSCURRENT"}"#
        );
        // Stored inside a request record, read back unchanged.
        let record =
            serde_json::to_string(&serde_json::json!({ "parameters": p })).expect("serialize");
        assert_eq!(
            record,
            r#"{"parameters":{"SecretId":"prod/x","VersionStage":"AWSCURRENT"}}"#
        );
        #[derive(serde::Deserialize)]
        struct Record {
            parameters: ParametersJson,
        }
        let back: Record = serde_json::from_str(&record).expect("deserialize");
        assert_eq!(back.parameters, p);
        assert_ne!(back.parameters, ParametersJson::from(serde_json::json!({})));
    }

    fn spec(approvals: u32, grant: GrantSpec) -> HoldSpec {
        HoldSpec {
            approver_group: "secops".into(),
            approvals: NonZeroU32::new(approvals).expect("nonzero"),
            extra_factors: vec![],
            denials: NonZeroU32::MIN,
            escalation: None,
            break_glass: vec![],
            hold_window: Duration::from_secs(20),
            request_ttl: Duration::from_secs(60),
            approval_ttl: Duration::from_secs(30),
            grant,
        }
    }

    fn held(approvals: u32, grant: GrantSpec) -> HeldRequest {
        let subject = Subject {
            identity: "demo-app".into(),
            front: Front::Aws,
            operation: "GetSecretValue".into(),
            class: OpClass::Read,
            resources: vec!["prod/x".into()],
            parameters: serde_json::json!({"SecretId": "prod/x"}).into(),
            justification: None,
            digest: "d".into(),
            client: None,
            certificate: None,
        };
        HeldRequest::new(
            "r1".into(),
            subject,
            "prod-read".into(),
            vec![],
            spec(approvals, grant),
            t(0),
        )
    }

    fn t(secs: u64) -> Timestamp {
        Timestamp::from_millis(0).plus(Duration::from_secs(secs))
    }

    fn secops() -> Vec<String> {
        vec!["secops".to_string()]
    }

    enum Step {
        Approve(&'static str, Result<ReviewOutcome, ReviewError>),
        Deny(&'static str, Result<ReviewOutcome, ReviewError>),
        Take(Result<(), GrantError>),
        Expire(bool),
    }

    /// Run steps at given times against one request and check each result.
    fn check(approvals: u32, grant: GrantSpec, steps: Vec<(u64, Step)>, end: State) {
        let mut r = held(approvals, grant);
        let groups = secops();
        let owner = Owner::Person("owner".into());
        for (i, (at, step)) in steps.into_iter().enumerate() {
            let now = t(at);
            match step {
                Step::Approve(who, want) => {
                    let got = r.approve(
                        Reviewer {
                            name: who,
                            groups: &groups,
                        },
                        Some(&owner),
                        None,
                        Narrowing::default(),
                        now,
                    );
                    assert_eq!(got, want, "step {i}");
                }
                Step::Deny(who, want) => {
                    let got = r.deny(
                        Reviewer {
                            name: who,
                            groups: &groups,
                        },
                        Some(&owner),
                        "no".into(),
                        now,
                    );
                    assert_eq!(got, want, "step {i}");
                }
                Step::Take(want) => assert_eq!(r.take_grant(now), want, "step {i}"),
                Step::Expire(want) => assert_eq!(r.expire_if_due(now), want, "step {i}"),
            }
        }
        assert_eq!(r.state, end);
    }

    #[test]
    fn once_grant_is_used_exactly_once() {
        use Step::*;
        check(
            1,
            GrantSpec::Once,
            vec![
                (1, Take(Err(GrantError::NotApproved(State::Pending)))),
                (2, Approve("alice", Ok(ReviewOutcome::Approved))),
                (3, Take(Ok(()))),
                (4, Take(Err(GrantError::Spent))),
            ],
            State::Approved,
        );
    }

    #[test]
    fn quorum_counts_each_person_once_and_never_the_owner() {
        use Step::*;
        check(
            2,
            GrantSpec::Once,
            vec![
                (
                    1,
                    Approve("alice", Ok(ReviewOutcome::Counted { have: 1, need: 2 })),
                ),
                (
                    2,
                    Approve("alice", Err(ReviewError::AlreadyApproved("alice".into()))),
                ),
                (
                    3,
                    Approve(
                        "owner",
                        Err(ReviewError::Owner {
                            approver: "owner".into(),
                            identity: "demo-app".into(),
                        }),
                    ),
                ),
                (4, Approve("bob", Ok(ReviewOutcome::Approved))),
                (
                    5,
                    Approve("carol", Err(ReviewError::NotPending(State::Approved))),
                ),
            ],
            State::Approved,
        );
    }

    #[test]
    fn a_denial_decides_and_cannot_be_overturned() {
        use Step::*;
        check(
            2,
            GrantSpec::Once,
            vec![
                (
                    1,
                    Approve("alice", Ok(ReviewOutcome::Counted { have: 1, need: 2 })),
                ),
                (2, Deny("bob", Ok(ReviewOutcome::Denied))),
                (
                    3,
                    Approve("carol", Err(ReviewError::NotPending(State::Denied))),
                ),
                (4, Take(Err(GrantError::NotApproved(State::Denied)))),
            ],
            State::Denied,
        );
    }

    #[test]
    fn pending_requests_expire_and_are_never_allowed() {
        use Step::*;
        check(
            1,
            GrantSpec::Once,
            vec![
                (59, Expire(false)),
                (60, Approve("alice", Err(ReviewError::Expired))),
                (60, Expire(true)),
                (61, Take(Err(GrantError::NotApproved(State::Expired)))),
                (62, Expire(false)),
            ],
            State::Expired,
        );
    }

    #[test]
    fn an_unused_approval_lapses_after_approval_ttl() {
        use Step::*;
        check(
            1,
            GrantSpec::Once,
            vec![
                (10, Approve("alice", Ok(ReviewOutcome::Approved))),
                (40, Take(Err(GrantError::Expired))),
            ],
            State::Approved,
        );
    }

    #[test]
    fn window_grant_starts_at_first_use_and_counts_uses() {
        use Step::*;
        let grant = GrantSpec::Window {
            uses: NonZeroU32::new(2).expect("2"),
            window: Duration::from_secs(5),
        };
        check(
            1,
            grant,
            vec![
                (1, Approve("alice", Ok(ReviewOutcome::Approved))),
                (20, Take(Ok(()))),
                (26, Take(Err(GrantError::Expired))),
            ],
            State::Approved,
        );
        check(
            1,
            grant,
            vec![
                (1, Approve("alice", Ok(ReviewOutcome::Approved))),
                (2, Take(Ok(()))),
                (3, Take(Ok(()))),
                (4, Take(Err(GrantError::Spent))),
            ],
            State::Approved,
        );
    }

    #[test]
    fn reviewers_outside_the_group_are_refused() {
        let mut r = held(1, GrantSpec::Once);
        let groups = vec!["payments".to_string()];
        let got = r.approve(
            Reviewer {
                name: "carol",
                groups: &groups,
            },
            None,
            None,
            Narrowing::default(),
            t(1),
        );
        assert_eq!(
            got,
            Err(ReviewError::NotInGroup {
                approver: "carol".into(),
                group: "secops".into()
            })
        );
        assert_eq!(r.state, State::Pending);
        assert!(r.approvals.is_empty());
    }

    #[test]
    fn liveness_follows_state_and_grant() {
        let mut r = held(1, GrantSpec::Once);
        assert!(r.is_live(t(1)));
        let groups = secops();
        r.approve(
            Reviewer {
                name: "alice",
                groups: &groups,
            },
            None,
            None,
            Narrowing::default(),
            t(1),
        )
        .expect("approve");
        assert!(r.is_live(t(2)));
        r.take_grant(t(2)).expect("take");
        assert!(!r.is_live(t(3)));
    }

    fn factored(factors: &[(&str, u32)], denials: u32, grant: GrantSpec) -> HeldRequest {
        let mut r = held(1, grant);
        let (first, rest) = factors.split_first().expect("a factor");
        r.spec.approver_group = first.0.into();
        r.spec.approvals = NonZeroU32::new(first.1).expect("nonzero");
        r.spec.extra_factors = rest
            .iter()
            .map(|(g, n)| crate::policy::Factor {
                group: g.to_string(),
                approvals: NonZeroU32::new(*n).expect("nonzero"),
            })
            .collect();
        r.spec.denials = NonZeroU32::new(denials).expect("nonzero");
        r
    }

    fn groups(list: &[&str]) -> Vec<String> {
        list.iter().map(|g| g.to_string()).collect()
    }

    fn approve_as(
        r: &mut HeldRequest,
        who: &str,
        member_of: &[&str],
        owner: Option<&Owner>,
        at: u64,
    ) -> Result<ReviewOutcome, ReviewError> {
        let g = groups(member_of);
        r.approve(
            Reviewer {
                name: who,
                groups: &g,
            },
            owner,
            None,
            Narrowing::default(),
            t(at),
        )
    }

    #[test]
    fn every_factor_must_be_met_by_distinct_people() {
        let mut r = factored(&[("secops", 1), ("payments-owners", 1)], 1, GrantSpec::Once);
        // Alice is in both groups: she fills one slot, not two.
        assert_eq!(
            approve_as(&mut r, "alice", &["secops", "payments-owners"], None, 1),
            Ok(ReviewOutcome::Counted { have: 1, need: 2 })
        );
        // Bob is only in secops; the matching moves Alice to payments-owners.
        assert_eq!(
            approve_as(&mut r, "bob", &["secops"], None, 2),
            Ok(ReviewOutcome::Approved)
        );
    }

    #[test]
    fn two_people_from_one_group_do_not_meet_a_second_factor() {
        let mut r = factored(&[("secops", 1), ("payments-owners", 1)], 1, GrantSpec::Once);
        assert_eq!(
            approve_as(&mut r, "alice", &["secops"], None, 1),
            Ok(ReviewOutcome::Counted { have: 1, need: 2 })
        );
        assert_eq!(
            approve_as(&mut r, "bob", &["secops"], None, 2),
            Ok(ReviewOutcome::Counted { have: 1, need: 2 })
        );
        assert_eq!(
            approve_as(&mut r, "bob", &["secops"], None, 3),
            Err(ReviewError::AlreadyApproved("bob".into())),
            "a person counts once"
        );
        assert_eq!(
            approve_as(&mut r, "pat", &["payments-owners"], None, 4),
            Ok(ReviewOutcome::Approved)
        );
    }

    #[test]
    fn an_owner_group_never_counts() {
        let mut r = factored(&[("secops", 1)], 1, GrantSpec::Once);
        let owner = Owner::Group("payments-team".into());
        assert!(matches!(
            approve_as(
                &mut r,
                "dana",
                &["secops", "payments-team"],
                Some(&owner),
                1
            ),
            Err(ReviewError::Owner { .. })
        ));
        assert_eq!(
            approve_as(&mut r, "alice", &["secops"], Some(&owner), 2),
            Ok(ReviewOutcome::Approved)
        );
    }

    #[test]
    fn a_rule_may_need_several_denials() {
        let mut r = factored(&[("secops", 2)], 2, GrantSpec::Once);
        let g = groups(&["secops"]);
        let deny = |r: &mut HeldRequest, who: &str, at| {
            r.deny(
                Reviewer {
                    name: who,
                    groups: &g,
                },
                None,
                "no".into(),
                t(at),
            )
        };
        assert_eq!(
            deny(&mut r, "alice", 1),
            Ok(ReviewOutcome::DenialCounted { have: 1, need: 2 })
        );
        assert_eq!(r.state, State::Pending);
        assert_eq!(deny(&mut r, "bob", 2), Ok(ReviewOutcome::Denied));
        assert_eq!(r.denial.as_ref().map(|d| d.by.as_str()), Some("bob"));
    }

    #[test]
    fn approvers_may_narrow_the_grant_but_never_widen_it() {
        let window = GrantSpec::Window {
            uses: NonZeroU32::new(5).expect("nonzero"),
            window: Duration::from_secs(600),
        };
        let mut r = factored(&[("secops", 2)], 1, window);
        let g = groups(&["secops"]);
        let narrow = |r: &mut HeldRequest, who: &str, uses, mins: u64| {
            r.approve(
                Reviewer {
                    name: who,
                    groups: &g,
                },
                None,
                None,
                Narrowing {
                    uses,
                    window: Some(Duration::from_secs(mins * 60)),
                },
                t(1),
            )
        };
        assert!(matches!(
            narrow(&mut r, "alice", Some(6), 5),
            Err(ReviewError::Widens(_))
        ));
        assert!(matches!(
            narrow(&mut r, "alice", Some(2), 11),
            Err(ReviewError::Widens(_))
        ));
        assert!(
            r.approvals.is_empty(),
            "a refused narrowing records nothing"
        );
        assert_eq!(
            narrow(&mut r, "alice", Some(3), 10),
            Ok(ReviewOutcome::Counted { have: 1, need: 2 })
        );
        assert_eq!(narrow(&mut r, "bob", None, 2), Ok(ReviewOutcome::Approved));
        let grant = r.grant.clone().expect("grant");
        assert_eq!(grant.uses_left, 3, "the narrowest uses win");
        assert_eq!(
            grant.window,
            Some(Duration::from_secs(120)),
            "the narrowest window wins"
        );
        r.take_grant(t(2)).expect("first use");
        assert_eq!(r.take_grant(t(2 + 121)), Err(GrantError::Expired));
    }

    #[test]
    fn escalation_is_due_once_and_lets_the_escalation_group_approve() {
        let mut r = factored(&[("secops", 1)], 1, GrantSpec::Once);
        r.spec.escalation = Some(crate::policy::Escalation {
            group: "leads".into(),
            after: Duration::from_secs(10),
            can_approve: true,
        });
        assert!(matches!(
            approve_as(&mut r, "lee", &["leads"], None, 5),
            Err(ReviewError::NotInGroup { .. })
        ));
        assert!(!r.escalate_if_due(t(9)));
        assert!(r.escalate_if_due(t(10)));
        assert!(!r.escalate_if_due(t(11)), "escalates once");
        assert_eq!(
            approve_as(&mut r, "lee", &["leads"], None, 12),
            Ok(ReviewOutcome::Approved)
        );
    }

    #[test]
    fn a_bypass_is_acknowledged_once_by_a_reviewer_who_is_not_the_owner() {
        let subject = held(1, GrantSpec::Once).subject;
        let mut r = HeldRequest::bypassed(
            "b1".into(),
            subject,
            "prod-read".into(),
            vec![],
            spec(1, GrantSpec::Once),
            "incident 42".into(),
            t(0),
        );
        assert_eq!(r.state, State::Bypassed);
        assert!(!r.is_live(t(0)));
        let g = groups(&["secops"]);
        let outsider = groups(&["payments"]);
        let reviewer = |name, groups| Reviewer { name, groups };
        assert!(matches!(
            r.acknowledge(reviewer("carol", &outsider), None, None, t(1)),
            Err(ReviewError::NotInGroup { .. })
        ));
        let owner = Owner::Person("bob".into());
        assert!(matches!(
            r.acknowledge(reviewer("bob", &g), Some(&owner), None, t(1)),
            Err(ReviewError::Owner { .. })
        ));
        r.acknowledge(reviewer("alice", &g), Some(&owner), Some("ok".into()), t(2))
            .expect("ack");
        assert_eq!(
            r.acknowledge(reviewer("dave", &g), None, None, t(3)),
            Err(ReviewError::AlreadyAcknowledged("alice".into()))
        );
        let mut pending = held(1, GrantSpec::Once);
        assert_eq!(
            pending.acknowledge(reviewer("alice", &g), None, None, t(1)),
            Err(ReviewError::NotBypassed)
        );
    }
}
