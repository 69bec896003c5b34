//! The approval state machine for held requests: PURE. No IO, no `.await`;
//! every transition takes `now` and either changes the request or returns why
//! it cannot. Persisting, notifying waiters and auditing happen around it
//! (see `holds`).
//!
//! ```text
//!            approve (quorum met)            take_grant (uses left, not expired)
//! Pending ─────────────────────────► Approved ──┐
//!    │ deny            │ expire                 └─ spent when uses_left == 0
//!    ▼                 ▼
//! Denied            Expired        (expired = denied: never allowed)
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::policy::{Front, GrantSpec, HoldSpec, OpClass};
use crate::timestamp::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Approved,
    Denied,
    Expired,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Pending,
        State::Approved,
        State::Denied,
        State::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
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
    pub parameters: serde_json::Value,
    pub justification: Option<String>,
    pub digest: String,
    /// Where the request came from (after trusted proxies), for approvers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The client certificate that proved the identity, if mTLS did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    pub approver: String,
    pub at: Timestamp,
    pub comment: Option<String>,
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
    pub denial: Option<Denial>,
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
    #[error("{0} has already approved this request")]
    AlreadyApproved(String),
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReviewOutcome {
    /// The approval counted; more are needed.
    Counted { have: u32, need: u32 },
    /// Quorum met: the request is approved and carries a grant.
    Approved,
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
            denial: None,
            grant: None,
            created_at: now,
            expires_at,
            decided_at: None,
        }
    }

    fn check_reviewable(
        &self,
        reviewer: Reviewer<'_>,
        owner: Option<&str>,
        now: Timestamp,
    ) -> Result<(), ReviewError> {
        if self.state != State::Pending {
            return Err(ReviewError::NotPending(self.state));
        }
        if now >= self.expires_at {
            return Err(ReviewError::Expired);
        }
        if !reviewer.groups.contains(&self.spec.approver_group) {
            return Err(ReviewError::NotInGroup {
                approver: reviewer.name.to_string(),
                group: self.spec.approver_group.clone(),
            });
        }
        if owner == Some(reviewer.name) {
            return Err(ReviewError::Owner {
                approver: reviewer.name.to_string(),
                identity: self.subject.identity.clone(),
            });
        }
        Ok(())
    }

    /// Record an approval. `owner` is the requesting identity's owner, whose
    /// approval never counts for its own workload.
    pub fn approve(
        &mut self,
        reviewer: Reviewer<'_>,
        owner: Option<&str>,
        comment: Option<String>,
        now: Timestamp,
    ) -> Result<ReviewOutcome, ReviewError> {
        self.check_reviewable(reviewer, owner, now)?;
        if self.approvals.iter().any(|r| r.approver == reviewer.name) {
            return Err(ReviewError::AlreadyApproved(reviewer.name.to_string()));
        }
        self.approvals.push(Review {
            approver: reviewer.name.to_string(),
            at: now,
            comment,
        });
        let have = u32::try_from(self.approvals.len()).unwrap_or(u32::MAX);
        let need = self.spec.approvals.get();
        if have < need {
            return Ok(ReviewOutcome::Counted { have, need });
        }
        self.state = State::Approved;
        self.decided_at = Some(now);
        self.grant = Some(Grant {
            uses_left: self.spec.grant.uses(),
            expires_at: now.plus(self.spec.approval_ttl),
            used_at: Vec::new(),
        });
        Ok(ReviewOutcome::Approved)
    }

    /// Deny with a reason; one denial decides the request.
    pub fn deny(
        &mut self,
        reviewer: Reviewer<'_>,
        owner: Option<&str>,
        reason: String,
        now: Timestamp,
    ) -> Result<(), ReviewError> {
        self.check_reviewable(reviewer, owner, now)?;
        self.state = State::Denied;
        self.decided_at = Some(now);
        self.denial = Some(Denial {
            by: reviewer.name.to_string(),
            reason,
            at: now,
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
            grant.expires_at = now.plus(window);
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
            State::Denied | State::Expired => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;
    use std::time::Duration;

    fn spec(approvals: u32, grant: GrantSpec) -> HoldSpec {
        HoldSpec {
            approver_group: "secops".into(),
            approvals: NonZeroU32::new(approvals).expect("nonzero"),
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
            parameters: serde_json::json!({"SecretId": "prod/x"}),
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
        Deny(&'static str, Result<(), ReviewError>),
        Take(Result<(), GrantError>),
        Expire(bool),
    }

    /// Run steps at given times against one request and check each result.
    fn check(approvals: u32, grant: GrantSpec, steps: Vec<(u64, Step)>, end: State) {
        let mut r = held(approvals, grant);
        let groups = secops();
        for (i, (at, step)) in steps.into_iter().enumerate() {
            let now = t(at);
            match step {
                Step::Approve(who, want) => {
                    let got = r.approve(
                        Reviewer {
                            name: who,
                            groups: &groups,
                        },
                        Some("owner"),
                        None,
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
                        Some("owner"),
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
                (2, Deny("bob", Ok(()))),
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
            t(1),
        )
        .expect("approve");
        assert!(r.is_live(t(2)));
        r.take_grant(t(2)).expect("take");
        assert!(!r.is_live(t(3)));
    }
}
