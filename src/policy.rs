//! The policy engine: PURE. `Policy::decide` maps a request and its context to
//! an allow / hold / deny decision. No IO, no `.await`, no clock: "now" and the
//! identity's recent read history come in as parameters.
//!
//! Rules are tried in order and the first match decides; when none matches the
//! policy's default applies (shipped default: deny). Deciding cannot fail: a
//! denial is a value, never an `Err`.

use std::collections::VecDeque;
use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::Serialize;

use crate::glob::Glob;
use crate::timestamp::Timestamp;

/// Which wire protocol a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Front {
    Aws,
    Vault,
}

impl Front {
    pub fn as_str(self) -> &'static str {
        match self {
            Front::Aws => "aws",
            Front::Vault => "vault",
        }
    }
}

/// The coarse kind of an operation, so rules can speak of "all writes" without
/// listing every API call of every front end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpClass {
    Read,
    Describe,
    List,
    Bulk,
    /// Minting something new: a certificate, a token.
    Issue,
    Write,
    Delete,
    Privilege,
    Other,
}

impl OpClass {
    pub const ALL: [OpClass; 9] = [
        OpClass::Read,
        OpClass::Describe,
        OpClass::List,
        OpClass::Bulk,
        OpClass::Issue,
        OpClass::Write,
        OpClass::Delete,
        OpClass::Privilege,
        OpClass::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OpClass::Read => "read",
            OpClass::Describe => "describe",
            OpClass::List => "list",
            OpClass::Bulk => "bulk",
            OpClass::Issue => "issue",
            OpClass::Write => "write",
            OpClass::Delete => "delete",
            OpClass::Privilege => "privilege",
            OpClass::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<OpClass> {
        OpClass::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub default: DefaultAction,
    pub rules: Vec<Rule>,
    index: RuleIndex,
    /// Names of rules with `require_justification`.
    justified: std::collections::HashSet<String>,
}

/// Which rules can apply to an identity, compiled once so that deciding does
/// not scan every rule. A rule is filed under each literal identity it names,
/// under the literal prefix of each glob it names (`app-7-*` under `app-7-`),
/// or, when a pattern has no literal prefix or the rule names no identity, in
/// `generic` (a candidate for everyone). Lists hold rule positions in
/// ascending order, so walking the candidates in order keeps first-match
/// semantics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct RuleIndex {
    // aHash: one lookup per decision, SipHash was ~180 instructions of it.
    by_identity: ahash::HashMap<String, Vec<usize>>,
    by_prefix: ahash::HashMap<String, Vec<usize>>,
    /// Distinct prefix lengths in `by_prefix`, ascending: the only lengths
    /// worth looking up.
    prefix_lengths: Vec<usize>,
    generic: Vec<usize>,
}

fn file_under(map: &mut ahash::HashMap<String, Vec<usize>>, key: &str, rule: usize) {
    let slot = map.entry(key.to_string()).or_default();
    if slot.last() != Some(&rule) {
        slot.push(rule);
    }
}

impl RuleIndex {
    fn build(rules: &[Rule]) -> RuleIndex {
        let mut index = RuleIndex::default();
        for (i, rule) in rules.iter().enumerate() {
            let patterns: Vec<&str> = rule.identities.iter().map(Glob::as_str).collect();
            let prefix_of = |p: &str| p.find(['*', '?']).map(|at| p[..at].to_string());
            if patterns.is_empty()
                || patterns
                    .iter()
                    .any(|p| prefix_of(p).is_some_and(|x| x.is_empty()))
            {
                index.generic.push(i);
                continue;
            }
            for p in patterns {
                match prefix_of(p) {
                    None => file_under(&mut index.by_identity, p, i),
                    Some(prefix) => file_under(&mut index.by_prefix, &prefix, i),
                }
            }
        }
        let mut lengths: Vec<usize> = index.by_prefix.keys().map(String::len).collect();
        lengths.sort_unstable();
        lengths.dedup();
        index.prefix_lengths = lengths;
        index
    }

    /// Positions of the rules that may match `identity`, in rule order.
    fn candidates<'a>(&'a self, identity: &str) -> Candidates<'a> {
        let named: &[usize] = self.by_identity.get(identity).map_or(&[], Vec::as_slice);
        if self.prefix_lengths.is_empty() {
            return Candidates::Merge(MergeSorted {
                a: named,
                b: &self.generic,
            });
        }
        let mut all: Vec<usize> = named.iter().chain(&self.generic).copied().collect();
        for &len in &self.prefix_lengths {
            if let Some(rules) = identity.get(..len).and_then(|p| self.by_prefix.get(p)) {
                all.extend_from_slice(rules);
            }
        }
        all.sort_unstable();
        all.dedup();
        Candidates::Listed(all.into_iter())
    }
}

enum Candidates<'a> {
    /// No prefix rules: merge two sorted lists without allocating.
    Merge(MergeSorted<'a>),
    Listed(std::vec::IntoIter<usize>),
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Candidates::Merge(m) => m.next(),
            Candidates::Listed(l) => l.next(),
        }
    }
}

/// The ascending merge of two ascending slices of distinct positions.
struct MergeSorted<'a> {
    a: &'a [usize],
    b: &'a [usize],
}

impl Iterator for MergeSorted<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let take_a = match (self.a.first(), self.b.first()) {
            (Some(x), Some(y)) => x < y,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let (head, rest) = if take_a {
            self.a.split_first()?
        } else {
            self.b.split_first()?
        };
        if take_a {
            self.a = rest;
        } else {
            self.b = rest;
        }
        Some(*head)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultAction {
    Allow,
    Deny,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    /// Identity name patterns; empty means any identity (subject to `groups`).
    pub identities: Vec<Glob>,
    /// The identity must be in at least one of these groups; empty means any.
    pub groups: Vec<String>,
    pub fronts: Vec<Front>,
    /// Exact operation names (e.g. `GetSecretValue`); empty means any.
    pub operations: Vec<String>,
    pub classes: Vec<OpClass>,
    /// Every resource of the request must match one of these; empty means any.
    /// A request that names no resource (a listing, a filtered export) only
    /// matches rules without resource patterns.
    pub resources: Vec<Glob>,
    pub conditions: Conditions,
    pub action: Action,
    /// A request this rule decides must say why (`X-Keygate-Justification`).
    pub require_justification: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    /// Matches when the request touches at least this many resources.
    pub min_batch: Option<u32>,
    /// Matches when the identity, counting this request, has read at least
    /// `count` distinct secrets within `window`: bulk export by volume.
    pub distinct_reads: Option<VolumeCondition>,
    /// Matches when the requested TTL, if any, is at most this.
    pub max_ttl: Option<Duration>,
    /// Matches when every requested name (certificate CN and SANs) matches
    /// one of these; `{identity}` stands for the requester's name.
    pub names: Vec<String>,
    /// Whether a wildcard name may satisfy `names`.
    pub allow_wildcard_names: bool,
    /// Matches when every requested token policy is in this set.
    pub token_policies: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeCondition {
    pub count: u32,
    pub window: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny { reason: String },
    Hold(HoldSpec),
}

/// What a hold rule asks for. The three lifetimes are kept apart on purpose:
/// how long the request may wait (`request_ttl`), how long an approval stays
/// usable before its first use (`approval_ttl`), and how long a window grant
/// lasts once used (`GrantSpec::Window::window`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct HoldSpec {
    /// The first approval factor: `approvals` people from `approver_group`.
    pub approver_group: String,
    pub approvals: NonZeroU32,
    /// Further factors, all of which must be met too (e.g. 1 from secops AND
    /// 1 from the data owners). Each person fills at most one slot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_factors: Vec<Factor>,
    /// Denials that decide the request (default 1: any single denial).
    #[serde(default = "one")]
    pub denials: NonZeroU32,
    /// Who is asked when nobody decides in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<Escalation>,
    /// Identities that may bypass this hold with a reason (break-glass).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub break_glass: Vec<String>,
    /// How long the client's connection is held open waiting for a decision.
    #[serde(with = "duration_ms")]
    pub hold_window: Duration,
    #[serde(with = "duration_ms")]
    pub request_ttl: Duration,
    #[serde(with = "duration_ms")]
    pub approval_ttl: Duration,
    pub grant: GrantSpec,
}

fn one() -> NonZeroU32 {
    NonZeroU32::MIN
}

/// `approvals` distinct people from `group`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Factor {
    pub group: String,
    pub approvals: NonZeroU32,
}

/// Ask `group` once a request has been pending for `after`; with
/// `can_approve`, its members may then fill any approval slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Escalation {
    pub group: String,
    #[serde(rename = "after_ms", with = "duration_ms")]
    pub after: Duration,
    pub can_approve: bool,
}

impl HoldSpec {
    /// Every approval factor, the first one first.
    pub fn factors(&self) -> Vec<Factor> {
        let mut all = Vec::with_capacity(1 + self.extra_factors.len());
        all.push(Factor {
            group: self.approver_group.clone(),
            approvals: self.approvals,
        });
        all.extend(self.extra_factors.iter().cloned());
        all
    }

    /// The groups whose members may review (factor groups, then escalation).
    pub fn reviewer_groups(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.approver_group.as_str())
            .chain(self.extra_factors.iter().map(|f| f.group.as_str()))
            .chain(self.escalation.iter().map(|e| e.group.as_str()))
    }

    /// "2 from secops and 1 from payments-owners", for messages.
    pub fn describe_quorum(&self) -> String {
        self.factors()
            .iter()
            .map(|f| format!("{} from {}", f.approvals, f.group))
            .collect::<Vec<_>>()
            .join(" and ")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum GrantSpec {
    /// The approval allows exactly one execution of the approved request.
    Once,
    /// The approval allows `uses` executions within `window` of the first.
    Window {
        uses: NonZeroU32,
        #[serde(with = "duration_ms")]
        window: Duration,
    },
}

impl GrantSpec {
    pub fn uses(self) -> u32 {
        match self {
            GrantSpec::Once => 1,
            GrantSpec::Window { uses, .. } => uses.get(),
        }
    }
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// What the policy sees of one request.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub identity: &'a str,
    pub groups: &'a [String],
    pub front: Front,
    pub operation: &'a str,
    pub class: OpClass,
    pub resources: &'a [String],
    pub facts: &'a Facts,
}

/// What a certificate or token request asks for, extracted by the front end
/// so that rules can tell an ordinary fetch from an exceptional one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub ttl: Option<Duration>,
    pub names: Vec<String>,
    /// `None`: not a token request. `Some(empty)`: a token request naming no
    /// policies, which would inherit keygate's own.
    pub token_policies: Option<Vec<String>>,
}

impl Facts {
    pub const NONE: Facts = Facts {
        ttl: None,
        names: Vec::new(),
        token_policies: None,
    };
}

/// The decision, borrowing the rule that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision<'p> {
    Allow {
        rule: Option<&'p str>,
    },
    Hold {
        rule: &'p str,
        spec: &'p HoldSpec,
        reasons: Vec<String>,
    },
    Deny {
        rule: Option<&'p str>,
        reason: String,
    },
}

impl Decision<'_> {
    pub fn rule(&self) -> Option<&str> {
        match self {
            Decision::Allow { rule } | Decision::Deny { rule, .. } => *rule,
            Decision::Hold { rule, .. } => Some(rule),
        }
    }
}

/// Why a rule did not match; formatted only when explaining.
#[derive(Debug, PartialEq, Eq)]
pub enum Mismatch<'a> {
    Identity,
    Group,
    Front(Front),
    Operation(&'a str),
    Class(OpClass),
    NoResource,
    Resource(&'a str),
    BatchTooSmall { size: usize, min: u32 },
    VolumeBelow { distinct: usize, count: u32 },
    TtlTooLong { ttl: Duration, max: Duration },
    NoNames,
    Wildcard(&'a str),
    Name(&'a str),
    NotTokenRequest,
    InheritedPolicies,
    TokenPolicy(&'a str),
}

impl fmt::Display for Mismatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Identity => f.write_str("identity does not match"),
            Mismatch::Group => f.write_str("identity is in none of the rule's groups"),
            Mismatch::Front(fr) => write!(f, "front end {} not listed", fr.as_str()),
            Mismatch::Operation(op) => write!(f, "operation {op} not listed"),
            Mismatch::Class(c) => write!(f, "operation class {} not listed", c.as_str()),
            Mismatch::NoResource => {
                f.write_str("request names no resource but the rule lists resources")
            }
            Mismatch::Resource(r) => write!(f, "resource {r} matches none of the rule's patterns"),
            Mismatch::BatchTooSmall { size, min } => {
                write!(f, "batch of {size} is below min_batch {min}")
            }
            Mismatch::VolumeBelow { distinct, count } => write!(
                f,
                "{distinct} distinct secrets read in the window, below {count}"
            ),
            Mismatch::TtlTooLong { ttl, max } => write!(
                f,
                "requested ttl {} exceeds max_ttl {}",
                humantime::format_duration(*ttl),
                humantime::format_duration(*max)
            ),
            Mismatch::NoNames => f.write_str("request names no certificate name"),
            Mismatch::Wildcard(n) => write!(f, "wildcard name {n} (allow_wildcard_names is off)"),
            Mismatch::Name(n) => write!(f, "name {n} matches none of the rule's names"),
            Mismatch::NotTokenRequest => f.write_str("not a token request"),
            Mismatch::InheritedPolicies => {
                f.write_str("token request names no policies (it would inherit keygate's)")
            }
            Mismatch::TokenPolicy(p) => write!(f, "token policy {p} is outside the allowed set"),
        }
    }
}

impl Policy {
    pub fn new(default: DefaultAction, rules: Vec<Rule>) -> Policy {
        let index = RuleIndex::build(&rules);
        let justified = rules
            .iter()
            .filter(|r| r.require_justification)
            .map(|r| r.name.clone())
            .collect();
        Policy {
            justified,
            default,
            rules,
            index,
        }
    }

    /// Decide one request. `history` is the identity's recent reads (for
    /// volume conditions); `now` is the current time.
    pub fn decide<'p>(
        &'p self,
        req: &Request<'_>,
        history: &ReadHistory,
        now: Timestamp,
    ) -> Decision<'p> {
        for i in self.index.candidates(req.identity) {
            let rule = &self.rules[i];
            if rule.mismatch(req, history, now).is_none() {
                return rule.decision(req, history, now);
            }
        }
        match self.default {
            DefaultAction::Allow => Decision::Allow { rule: None },
            DefaultAction::Deny => Decision::Deny {
                rule: None,
                reason: format!(
                    "no rule allows {} on {} for {} (default deny)",
                    req.operation,
                    describe_resources(req.resources),
                    req.identity
                ),
            },
        }
    }

    /// Whether requests decided by `rule` must carry a justification.
    pub fn requires_justification(&self, rule: &str) -> bool {
        !self.justified.is_empty() && self.justified.contains(rule)
    }

    /// Every rule in order with why it did or did not match, then the decision.
    pub fn explain(&self, req: &Request<'_>, history: &ReadHistory, now: Timestamp) -> Vec<String> {
        let mut lines = Vec::new();
        for rule in &self.rules {
            match rule.mismatch(req, history, now) {
                Some(why) => lines.push(format!("rule {}: skipped ({why})", rule.name)),
                None => {
                    lines.push(format!("rule {}: MATCHES", rule.name));
                    break;
                }
            }
        }
        let decision = self.decide(req, history, now);
        lines.push(match &decision {
            Decision::Allow { rule } => format!("decision: allow ({})", rule.unwrap_or("default")),
            Decision::Deny { reason, .. } => format!("decision: deny: {reason}"),
            Decision::Hold {
                rule,
                spec,
                reasons,
            } => format!(
                "decision: hold by rule {rule}: approval by {}; {}",
                spec.describe_quorum(),
                reasons.join("; ")
            ),
        });
        lines
    }

    /// The longest volume window of any rule: how much read history is worth keeping.
    pub fn longest_volume_window(&self) -> Duration {
        self.rules
            .iter()
            .filter_map(|r| r.conditions.distinct_reads.map(|v| v.window))
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

impl Rule {
    pub fn mismatch<'a>(
        &self,
        req: &Request<'a>,
        history: &ReadHistory,
        now: Timestamp,
    ) -> Option<Mismatch<'a>> {
        if !self.identities.is_empty() && !self.identities.iter().any(|g| g.matches(req.identity)) {
            return Some(Mismatch::Identity);
        }
        if !self.groups.is_empty() && !self.groups.iter().any(|g| req.groups.contains(g)) {
            return Some(Mismatch::Group);
        }
        if !self.fronts.is_empty() && !self.fronts.contains(&req.front) {
            return Some(Mismatch::Front(req.front));
        }
        if !self.operations.is_empty() && !self.operations.iter().any(|o| o == req.operation) {
            return Some(Mismatch::Operation(req.operation));
        }
        if !self.classes.is_empty() && !self.classes.contains(&req.class) {
            return Some(Mismatch::Class(req.class));
        }
        if !self.resources.is_empty() {
            if req.resources.is_empty() {
                return Some(Mismatch::NoResource);
            }
            if let Some(r) = req
                .resources
                .iter()
                .find(|r| !self.resources.iter().any(|g| g.matches(r)))
            {
                return Some(Mismatch::Resource(r));
            }
        }
        if let Some(min) = self.conditions.min_batch {
            if req.resources.len() < min as usize {
                return Some(Mismatch::BatchTooSmall {
                    size: req.resources.len(),
                    min,
                });
            }
        }
        if let Some(v) = self.conditions.distinct_reads {
            let distinct = history.distinct_within(now, v.window, req.resources);
            if distinct < v.count as usize {
                return Some(Mismatch::VolumeBelow {
                    distinct,
                    count: v.count,
                });
            }
        }
        self.facts_mismatch(req)
    }

    fn facts_mismatch<'a>(&self, req: &Request<'a>) -> Option<Mismatch<'a>> {
        let c = &self.conditions;
        if let (Some(max), Some(ttl)) = (c.max_ttl, req.facts.ttl) {
            if ttl > max {
                return Some(Mismatch::TtlTooLong { ttl, max });
            }
        }
        if !c.names.is_empty() {
            if req.facts.names.is_empty() {
                return Some(Mismatch::NoNames);
            }
            for name in &req.facts.names {
                if name.contains('*') && !c.allow_wildcard_names {
                    return Some(Mismatch::Wildcard(name));
                }
                let allowed = c
                    .names
                    .iter()
                    .any(|p| Glob::new(&p.replace("{identity}", req.identity)).matches(name));
                if !allowed {
                    return Some(Mismatch::Name(name));
                }
            }
        }
        if let Some(allowed) = &c.token_policies {
            match &req.facts.token_policies {
                None => return Some(Mismatch::NotTokenRequest),
                Some(asked) if asked.is_empty() => return Some(Mismatch::InheritedPolicies),
                Some(asked) => {
                    if let Some(p) = asked.iter().find(|p| !allowed.contains(p)) {
                        return Some(Mismatch::TokenPolicy(p));
                    }
                }
            }
        }
        None
    }

    fn decision<'p>(
        &'p self,
        req: &Request<'_>,
        history: &ReadHistory,
        now: Timestamp,
    ) -> Decision<'p> {
        match &self.action {
            Action::Allow => Decision::Allow {
                rule: Some(&self.name),
            },
            Action::Deny { reason } => Decision::Deny {
                rule: Some(&self.name),
                reason: reason.clone(),
            },
            Action::Hold(spec) => Decision::Hold {
                rule: &self.name,
                spec,
                reasons: self.hold_reasons(req, history, now),
            },
        }
    }

    /// Explicit criteria for a hold: every hold names the rule and why it matched.
    fn hold_reasons(
        &self,
        req: &Request<'_>,
        history: &ReadHistory,
        now: Timestamp,
    ) -> Vec<String> {
        let mut reasons = vec![format!(
            "rule {} holds {} ({}) on {}",
            self.name,
            req.operation,
            req.class.as_str(),
            describe_resources(req.resources)
        )];
        if !self.resources.is_empty() {
            let pats: Vec<&str> = self.resources.iter().map(Glob::as_str).collect();
            reasons.push(format!("resource matches {}", pats.join(", ")));
        }
        if let Some(min) = self.conditions.min_batch {
            reasons.push(format!(
                "batch of {} secrets (min_batch {min})",
                req.resources.len()
            ));
        }
        if !req.facts.names.is_empty() {
            reasons.push(format!("names requested: {}", req.facts.names.join(", ")));
        }
        if let Some(ttl) = req.facts.ttl {
            reasons.push(format!(
                "ttl requested: {}",
                humantime::format_duration(ttl)
            ));
        }
        if let Some(policies) = &req.facts.token_policies {
            reasons.push(if policies.is_empty() {
                "token policies: none named (would inherit keygate's own)".to_string()
            } else {
                format!("token policies requested: {}", policies.join(", "))
            });
        }
        if let Some(v) = self.conditions.distinct_reads {
            reasons.push(format!(
                "{} distinct secrets read within {} (threshold {})",
                history.distinct_within(now, v.window, req.resources),
                humantime::format_duration(v.window),
                v.count
            ));
        }
        reasons
    }
}

fn describe_resources(resources: &[String]) -> String {
    match resources {
        [] => "(no specific secret)".to_string(),
        [one] => one.clone(),
        many => format!("{} secrets: {}", many.len(), many.join(", ")),
    }
}

/// An identity's recent reads, for volume conditions. Bounded: entries older
/// than the longest window any rule uses are dropped, and at most `cap` kept.
#[derive(Clone, Debug, Default)]
pub struct ReadHistory {
    reads: VecDeque<(Timestamp, String)>,
}

impl ReadHistory {
    const CAP: usize = 4096;

    pub fn record(&mut self, now: Timestamp, keep: Duration, resources: &[String]) {
        if keep.is_zero() {
            return;
        }
        let horizon = now.minus(keep);
        while self.reads.front().is_some_and(|(t, _)| *t < horizon) {
            self.reads.pop_front();
        }
        for r in resources {
            if self.reads.len() == Self::CAP {
                self.reads.pop_front();
            }
            self.reads.push_back((now, r.clone()));
        }
    }

    /// Distinct secrets read within `window` before `now`, counting `extra` too.
    pub fn distinct_within(&self, now: Timestamp, window: Duration, extra: &[String]) -> usize {
        let horizon = now.minus(window);
        let mut seen: Vec<&str> = extra.iter().map(String::as_str).collect();
        for (t, r) in self.reads.iter().rev() {
            if *t < horizon {
                break;
            }
            seen.push(r);
        }
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(group: &str) -> Action {
        Action::Hold(HoldSpec {
            approver_group: group.into(),
            approvals: NonZeroU32::MIN,
            extra_factors: vec![],
            denials: NonZeroU32::MIN,
            escalation: None,
            break_glass: vec![],
            hold_window: Duration::from_secs(20),
            request_ttl: Duration::from_secs(3600),
            approval_ttl: Duration::from_secs(900),
            grant: GrantSpec::Once,
        })
    }

    fn rule(name: &str, ops: &[&str], resources: &[&str], action: Action) -> Rule {
        Rule {
            name: name.into(),
            identities: vec![Glob::new("demo-*")],
            groups: vec![],
            fronts: vec![],
            operations: ops.iter().map(|s| s.to_string()).collect(),
            classes: vec![],
            resources: resources.iter().map(|s| Glob::new(s)).collect(),
            conditions: Conditions::default(),
            action,
            require_justification: false,
        }
    }

    fn demo_policy() -> Policy {
        let mut volume = rule("volume", &["GetSecretValue"], &[], hold("secops"));
        volume.conditions.distinct_reads = Some(VolumeCondition {
            count: 3,
            window: Duration::from_secs(60),
        });
        let mut batch = rule("big-batch", &["BatchGetSecretValue"], &[], hold("secops"));
        batch.conditions.min_batch = Some(3);
        Policy::new(
            DefaultAction::Deny,
            vec![
                volume,
                rule(
                    "demo-read",
                    &["GetSecretValue", "DescribeSecret"],
                    &["demo/*"],
                    Action::Allow,
                ),
                rule(
                    "prod-read",
                    &["GetSecretValue"],
                    &["prod/*"],
                    hold("secops"),
                ),
                batch,
                rule(
                    "small-batch",
                    &["BatchGetSecretValue"],
                    &["demo/*"],
                    Action::Allow,
                ),
                rule(
                    "no-delete",
                    &["DeleteSecret"],
                    &[],
                    Action::Deny {
                        reason: "never".into(),
                    },
                ),
            ],
        )
    }

    /// (identity, operation, resources, previously read) -> expected (kind, rule)
    fn check(
        identity: &str,
        op: &str,
        resources: &[&str],
        read_before: &[&str],
        expect: (&str, Option<&str>),
    ) {
        let policy = demo_policy();
        let now = Timestamp::from_millis(1_000_000);
        let mut history = ReadHistory::default();
        let before: Vec<String> = read_before.iter().map(|s| s.to_string()).collect();
        history.record(
            now.minus(Duration::from_secs(10)),
            Duration::from_secs(60),
            &before,
        );
        let resources: Vec<String> = resources.iter().map(|s| s.to_string()).collect();
        let req = Request {
            identity,
            groups: &[],
            front: Front::Aws,
            operation: op,
            class: OpClass::Read,
            resources: &resources,
            facts: &Facts::NONE,
        };
        let d = policy.decide(&req, &history, now);
        let kind = match d {
            Decision::Allow { .. } => "allow",
            Decision::Hold { .. } => "hold",
            Decision::Deny { .. } => "deny",
        };
        assert_eq!((kind, d.rule()), expect, "{identity} {op} {resources:?}");
    }

    #[test]
    fn decisions_table() {
        check(
            "demo-app",
            "GetSecretValue",
            &["demo/db"],
            &[],
            ("allow", Some("demo-read")),
        );
        check(
            "demo-app",
            "DescribeSecret",
            &["demo/db"],
            &[],
            ("allow", Some("demo-read")),
        );
        check(
            "demo-app",
            "GetSecretValue",
            &["prod/pay"],
            &[],
            ("hold", Some("prod-read")),
        );
        check("other", "GetSecretValue", &["demo/db"], &[], ("deny", None));
        check(
            "demo-app",
            "DeleteSecret",
            &["demo/db"],
            &[],
            ("deny", Some("no-delete")),
        );
        check(
            "demo-app",
            "PutSecretValue",
            &["demo/db"],
            &[],
            ("deny", None),
        );
        // A listing names no resource, so resource-scoped rules do not match it.
        check("demo-app", "GetSecretValue", &[], &[], ("deny", None));
        // One resource outside the pattern is enough to fall through.
        check(
            "demo-app",
            "BatchGetSecretValue",
            &["demo/a", "prod/b"],
            &[],
            ("deny", None),
        );
        check(
            "demo-app",
            "BatchGetSecretValue",
            &["demo/a", "demo/b"],
            &[],
            ("allow", Some("small-batch")),
        );
        check(
            "demo-app",
            "BatchGetSecretValue",
            &["demo/a", "demo/b", "demo/c"],
            &[],
            ("hold", Some("big-batch")),
        );
        // Volume: the third distinct secret within the window is held.
        check(
            "demo-app",
            "GetSecretValue",
            &["demo/c"],
            &["demo/a", "demo/b"],
            ("hold", Some("volume")),
        );
        check(
            "demo-app",
            "GetSecretValue",
            &["demo/a"],
            &["demo/a", "demo/b"],
            ("allow", Some("demo-read")),
        );
    }

    #[test]
    fn default_allow_is_possible_but_explicit() {
        let policy = Policy::new(DefaultAction::Allow, vec![]);
        let req = Request {
            identity: "x",
            groups: &[],
            front: Front::Aws,
            operation: "GetSecretValue",
            class: OpClass::Read,
            resources: &[],
            facts: &Facts::NONE,
        };
        let d = policy.decide(&req, &ReadHistory::default(), Timestamp::from_millis(0));
        assert_eq!(d, Decision::Allow { rule: None });
    }

    #[test]
    fn history_forgets_reads_outside_the_window() {
        let mut h = ReadHistory::default();
        let t0 = Timestamp::from_millis(0);
        let keep = Duration::from_secs(60);
        h.record(t0, keep, &["a".into(), "b".into()]);
        let later = t0.plus(Duration::from_secs(61));
        assert_eq!(h.distinct_within(later, keep, &[]), 0);
        assert_eq!(
            h.distinct_within(
                t0.plus(Duration::from_secs(30)),
                keep,
                &["a".into(), "c".into()]
            ),
            3
        );
        h.record(later, keep, &["c".into()]);
        assert_eq!(h.reads.len(), 1, "old entries are pruned on record");
    }

    /// (names, ttl secs, token policies) of a request -> which rule decides.
    fn check_facts(
        names: &[&str],
        ttl: Option<u64>,
        policies: Option<&[&str]>,
        expect: (&str, Option<&str>),
    ) {
        let mut cert = rule("own-cert", &["pki.issue"], &[], Action::Allow);
        cert.conditions.names = vec!["{identity}.svc.cluster.local".into()];
        cert.conditions.max_ttl = Some(Duration::from_secs(24 * 3600));
        let mut token = rule("baseline-token", &["token.create"], &[], Action::Allow);
        token.conditions.token_policies = Some(vec!["default".into(), "app-read".into()]);
        let policy = Policy::new(
            DefaultAction::Deny,
            vec![
                cert,
                rule("other-cert", &["pki.issue"], &[], hold("secops")),
                token,
                rule("other-token", &["token.create"], &[], hold("secops")),
            ],
        );
        let facts = Facts {
            ttl: ttl.map(Duration::from_secs),
            names: names.iter().map(|s| s.to_string()).collect(),
            token_policies: policies.map(|p| p.iter().map(|s| s.to_string()).collect()),
        };
        let op = if policies.is_some() {
            "token.create"
        } else {
            "pki.issue"
        };
        let req = Request {
            identity: "demo-app",
            groups: &[],
            front: Front::Vault,
            operation: op,
            class: OpClass::Issue,
            resources: &[],
            facts: &facts,
        };
        let d = policy.decide(&req, &ReadHistory::default(), Timestamp::from_millis(0));
        let kind = match d {
            Decision::Allow { .. } => "allow",
            Decision::Hold { .. } => "hold",
            Decision::Deny { .. } => "deny",
        };
        assert_eq!((kind, d.rule()), expect, "{names:?} {ttl:?} {policies:?}");
    }

    #[test]
    fn certificate_and_token_conditions_table() {
        let own = "demo-app.svc.cluster.local";
        check_facts(&[own], Some(3600), None, ("allow", Some("own-cert")));
        check_facts(&[own], None, None, ("allow", Some("own-cert")));
        check_facts(&[own], Some(48 * 3600), None, ("hold", Some("other-cert")));
        check_facts(
            &["*.svc.cluster.local"],
            Some(3600),
            None,
            ("hold", Some("other-cert")),
        );
        check_facts(
            &[own, "db.svc.cluster.local"],
            Some(3600),
            None,
            ("hold", Some("other-cert")),
        );
        check_facts(&[], Some(3600), None, ("hold", Some("other-cert")));
        check_facts(
            &[],
            None,
            Some(&["app-read"]),
            ("allow", Some("baseline-token")),
        );
        check_facts(
            &[],
            None,
            Some(&["default", "app-read"]),
            ("allow", Some("baseline-token")),
        );
        check_facts(&[], None, Some(&["admin"]), ("hold", Some("other-token")));
        check_facts(&[], None, Some(&[]), ("hold", Some("other-token")));
    }

    #[test]
    fn the_identity_index_keeps_first_match_order() {
        let named = |name: &str, identity: &str, action: Action| Rule {
            identities: vec![Glob::new(identity)],
            ..rule(name, &["GetSecretValue"], &[], action)
        };
        let deny = || Action::Deny {
            reason: "no".into(),
        };
        let policy = Policy::new(
            DefaultAction::Deny,
            vec![
                named("a-literal", "app-a", deny()),
                named("glob", "app-*", Action::Allow),
                named("b-literal", "app-b", deny()),
                named("c-literal", "app-c", Action::Allow),
                named("ci-glob", "ci-?-*", Action::Allow),
                named("anyone", "*", deny()),
            ],
        );
        let decide = |identity: &str| {
            let req = Request {
                identity,
                groups: &[],
                front: Front::Aws,
                operation: "GetSecretValue",
                class: OpClass::Read,
                resources: &[],
                facts: &Facts::NONE,
            };
            policy
                .decide(&req, &ReadHistory::default(), Timestamp::from_millis(0))
                .rule()
                .map(str::to_string)
        };
        assert_eq!(
            decide("app-a").as_deref(),
            Some("a-literal"),
            "a literal before the glob wins"
        );
        assert_eq!(
            decide("app-b").as_deref(),
            Some("glob"),
            "the glob before a literal wins"
        );
        assert_eq!(decide("app-z").as_deref(), Some("glob"));
        assert_eq!(
            decide("ci-7-build").as_deref(),
            Some("ci-glob"),
            "found by prefix"
        );
        assert_eq!(
            decide("ci-77-build").as_deref(),
            Some("anyone"),
            "prefix found, glob does not match"
        );
        assert_eq!(
            decide("other").as_deref(),
            Some("anyone"),
            "a bare * is generic"
        );
    }

    #[test]
    fn explain_names_skipped_rules_and_the_match() {
        let policy = demo_policy();
        let resources = vec!["prod/pay".to_string()];
        let req = Request {
            identity: "demo-app",
            groups: &[],
            front: Front::Aws,
            operation: "GetSecretValue",
            class: OpClass::Read,
            resources: &resources,
            facts: &Facts::NONE,
        };
        let lines = policy.explain(&req, &ReadHistory::default(), Timestamp::from_millis(0));
        assert!(
            lines[1].contains("demo-read: skipped (resource prod/pay"),
            "{lines:?}"
        );
        assert!(lines[2].contains("prod-read: MATCHES"), "{lines:?}");
        assert!(
            lines
                .last()
                .is_some_and(|l| l.starts_with("decision: hold")),
            "{lines:?}"
        );
    }
}
