//! N-rule policies for benchmarks (and any test that wants one), built only
//! from keygate's public API. Reuse it from another bench or test with
//!
//! ```ignore
//! #[path = "../benches/common/policy_fixture.rs"]
//! mod policy_fixture;
//! ```
//!
//! Rule `i` allows identity `app-<i>` to `GetSecretValue` on `team-<i>/*`, so
//! a request from `app-<n-1>` for `team-<n-1>/x` is decided by the LAST rule
//! (every rule before it fails on identity, if it is tried at all), and a
//! request from an identity no rule names falls through to the default (deny).
//!
//! The policy indexes rules by literal identity, so those two cases only walk
//! the rules that name the requester. `policy_with_glob_rules` names the
//! identity by a glob (`app-<i>-*`) instead, which no index by name can
//! serve: every rule is a candidate and the last-rule request
//! (`glob_last_rule_request`) pays for a scan of all of them.

#![allow(dead_code)] // each includer uses what it needs

use keygate::glob::Glob;
use keygate::policy::Request;
use keygate::policy::{Action, Conditions, DefaultAction, Facts, Front, OpClass, Policy, Rule};

/// Rule `i` of the fixture.
pub fn rule(i: usize) -> Rule {
    rule_for_identity(i, &format!("app-{i}"))
}

/// Rule `i` of the glob fixture: identity pattern `app-<i>-*` (`app-1-*`
/// does not match `app-10-x`, so still only rule `i` matches its requester).
pub fn glob_rule(i: usize) -> Rule {
    rule_for_identity(i, &format!("app-{i}-*"))
}

fn rule_for_identity(i: usize, identity: &str) -> Rule {
    Rule {
        name: format!("rule-{i}"),
        identities: vec![Glob::new(identity)],
        groups: vec![],
        fronts: vec![],
        operations: vec!["GetSecretValue".to_string()],
        classes: vec![],
        resources: vec![Glob::new(&format!("team-{i}/*"))],
        conditions: Conditions::default(),
        action: Action::Allow,
        require_justification: false,
    }
}

/// A policy of `n` rules (see the module doc), default deny.
pub fn policy_with_rules(n: usize) -> Policy {
    Policy::new(DefaultAction::Deny, (0..n).map(rule).collect())
}

/// A policy of `n` glob-identity rules (see the module doc), default deny.
pub fn policy_with_glob_rules(n: usize) -> Policy {
    Policy::new(DefaultAction::Deny, (0..n).map(glob_rule).collect())
}

/// The owned parts of a request, so callers can borrow a `Request` from them.
pub struct OwnedRequest {
    pub identity: String,
    pub groups: Vec<String>,
    pub resources: Vec<String>,
    pub facts: Facts,
}

impl OwnedRequest {
    pub fn get_secret_value(identity: &str, resource: &str) -> OwnedRequest {
        OwnedRequest {
            identity: identity.to_string(),
            groups: vec![],
            resources: vec![resource.to_string()],
            facts: Facts::default(),
        }
    }

    pub fn as_request(&self) -> Request<'_> {
        Request {
            identity: &self.identity,
            groups: &self.groups,
            front: Front::Aws,
            operation: "GetSecretValue",
            class: OpClass::Read,
            resources: &self.resources,
            facts: &self.facts,
        }
    }
}

/// A request that only the last rule of a `policy_with_rules(n)` matches.
pub fn last_rule_request(n: usize) -> OwnedRequest {
    let last = n.checked_sub(1).expect("a policy with at least one rule");
    OwnedRequest::get_secret_value(&format!("app-{last}"), &format!("team-{last}/x"))
}

/// A request that only the last rule of a `policy_with_glob_rules(n)` matches.
pub fn glob_last_rule_request(n: usize) -> OwnedRequest {
    let last = n.checked_sub(1).expect("a policy with at least one rule");
    OwnedRequest::get_secret_value(&format!("app-{last}-x"), &format!("team-{last}/x"))
}

/// A request that no rule matches: decided by the default (deny).
pub fn no_match_request() -> OwnedRequest {
    OwnedRequest::get_secret_value("stranger", "elsewhere/x")
}
