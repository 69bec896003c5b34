//! Audit events and their hash chain.
//!
//! Every decision is an `AuditEvent` with a stable kind and code and an actor
//! (a person, an identity, or the policy itself). The store appends events in
//! order and chains them: `hash = SHA-256(prev_hash | seq | body)`, so that
//! `verify_chain` detects an edited, removed, inserted or reordered record.
//! Events carry names, operations and reasons, never secret values.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::policy::Front;
use crate::timestamp::Timestamp;

/// Stable event kinds. The string and the code never change meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditKind {
    #[serde(rename = "request.allowed")]
    Allowed,
    #[serde(rename = "request.denied")]
    Denied,
    #[serde(rename = "request.held")]
    Held,
    #[serde(rename = "request.merged")]
    Merged,
    #[serde(rename = "request.approved")]
    Approved,
    #[serde(rename = "request.rejected")]
    Rejected,
    #[serde(rename = "request.expired")]
    Expired,
    #[serde(rename = "request.released")]
    Released,
    #[serde(rename = "grant.used")]
    GrantUsed,
    #[serde(rename = "request.escalated")]
    Escalated,
    #[serde(rename = "request.bypassed")]
    Bypassed,
    #[serde(rename = "bypass.acknowledged")]
    Acknowledged,
}

impl AuditKind {
    pub fn name(self) -> &'static str {
        match self {
            AuditKind::Allowed => "request.allowed",
            AuditKind::Denied => "request.denied",
            AuditKind::Held => "request.held",
            AuditKind::Merged => "request.merged",
            AuditKind::Approved => "request.approved",
            AuditKind::Rejected => "request.rejected",
            AuditKind::Expired => "request.expired",
            AuditKind::Released => "request.released",
            AuditKind::GrantUsed => "grant.used",
            AuditKind::Escalated => "request.escalated",
            AuditKind::Bypassed => "request.bypassed",
            AuditKind::Acknowledged => "bypass.acknowledged",
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            AuditKind::Allowed => "KG1000",
            AuditKind::Denied => "KG1001",
            AuditKind::Held => "KG1100",
            AuditKind::Merged => "KG1101",
            AuditKind::Approved => "KG1200",
            AuditKind::Rejected => "KG1201",
            AuditKind::Expired => "KG1202",
            AuditKind::Released => "KG1300",
            AuditKind::GrantUsed => "KG1301",
            AuditKind::Escalated => "KG1203",
            AuditKind::Bypassed => "KG1400",
            AuditKind::Acknowledged => "KG1401",
        }
    }
}

/// The actor of the policy's own decisions.
pub const POLICY_ACTOR: &str = "policy";
/// The actor of time-driven transitions (expiry).
pub const SYSTEM_ACTOR: &str = "system";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub at: Timestamp,
    pub kind: AuditKind,
    pub actor: String,
    pub identity: Option<String>,
    pub request_id: Option<String>,
    pub front: Option<Front>,
    /// Borrowed for workload requests (the fronts' operation names are
    /// static), which saves a copy on every decision.
    pub operation: Option<Cow<'static, str>>,
    pub resources: Vec<String>,
    pub rule: Option<String>,
    /// A reason, comment or note. Never a secret value.
    pub detail: Option<String>,
    /// The client's address (after trusted proxies), for workload requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The client certificate's name, when mTLS proved the identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

impl AuditEvent {
    pub fn new(kind: AuditKind, actor: impl Into<String>, at: Timestamp) -> AuditEvent {
        AuditEvent {
            at,
            kind,
            actor: actor.into(),
            identity: None,
            request_id: None,
            front: None,
            operation: None,
            resources: Vec::new(),
            rule: None,
            detail: None,
            client: None,
            certificate: None,
        }
    }
}

/// An event as stored: its place in the chain and the chain hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    pub seq: u64,
    #[serde(flatten)]
    pub event: AuditEvent,
    pub code: &'static str,
    pub prev_hash: String,
    pub hash: String,
}

/// The hash before the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The event's stored body: exactly the JSON `serde_json::to_string(event)`
/// writes (a unit test holds the two equal), written directly because it is
/// built for every decision. serde_json escapes every key and value through
/// its general string writer; here the keys are constants and a value is
/// copied as is unless it holds a character JSON must escape.
pub fn event_body(e: &AuditEvent) -> String {
    // A typical workload decision is ~300 bytes.
    let mut out = String::with_capacity(512);
    out.push_str("{\"at\":\"");
    e.at.push_rfc3339(&mut out);
    out.push_str("\",\"kind\":\"");
    out.push_str(e.kind.name());
    out.push_str("\",\"actor\":");
    push_json_str(&mut out, &e.actor);
    out.push_str(",\"identity\":");
    push_json_opt(&mut out, e.identity.as_deref());
    out.push_str(",\"request_id\":");
    push_json_opt(&mut out, e.request_id.as_deref());
    out.push_str(",\"front\":");
    push_json_opt(&mut out, e.front.map(Front::as_str));
    out.push_str(",\"operation\":");
    push_json_opt(&mut out, e.operation.as_deref());
    out.push_str(",\"resources\":[");
    for (i, r) in e.resources.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(&mut out, r);
    }
    out.push_str("],\"rule\":");
    push_json_opt(&mut out, e.rule.as_deref());
    out.push_str(",\"detail\":");
    push_json_opt(&mut out, e.detail.as_deref());
    // Left out when absent (`skip_serializing_if`), as serde writes them.
    if let Some(client) = &e.client {
        out.push_str(",\"client\":");
        push_json_str(&mut out, client);
    }
    if let Some(certificate) = &e.certificate {
        out.push_str(",\"certificate\":");
        push_json_str(&mut out, certificate);
    }
    out.push('}');
    out
}

fn push_json_opt(out: &mut String, value: Option<&str>) {
    match value {
        Some(v) => push_json_str(out, v),
        None => out.push_str("null"),
    }
}

/// A JSON string literal, escaped as serde_json escapes: `"`, `\\` and the
/// control characters below U+0020, nothing else.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    // Almost every value needs no escaping. A branch-free pass over all
    // bytes, which the compiler turns into 16-byte SIMD compares, finds
    // that out for a few instructions per 16 bytes; the escaping loop
    // below costs ~5 a byte.
    let needs_escape = s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[plain..i]);
        plain = i + 1;
        if escaped.is_empty() {
            out.push_str("\\u00");
            crate::hexfmt::hex_u64(u64::from(b), 2, out);
        } else {
            out.push_str(escaped);
        }
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

pub fn chain_hash(prev_hash: &str, seq: u64, body: &str) -> String {
    let hex = chain_hash_hex(prev_hash.as_bytes(), seq, body);
    // ASCII by construction.
    std::str::from_utf8(&hex).unwrap_or_default().to_owned()
}

/// [`chain_hash`] as lowercase hex digits on the stack, for the writer's
/// loop (no `String` per record).
pub fn chain_hash_hex(prev_hash: &[u8], seq: u64, body: &str) -> [u8; 64] {
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(b"|");
    let (digits, start) = crate::hexfmt::decimal(seq);
    h.update(&digits[start..]);
    h.update(b"|");
    h.update(body.as_bytes());
    crate::hexfmt::hex32(&h.finalize().into())
}

/// The `at` text an [`event_body`] begins with (`{"at":"<rfc3339>",...`),
/// so that the store's `at` column repeats it without formatting it again.
pub fn body_at(body: &str) -> Option<&str> {
    let rest = body.strip_prefix("{\"at\":\"")?;
    rest.find('"').map(|end| &rest[..end])
}

/// A stored row, as `verify_chain` reads it back (columns kept separately so
/// that an edit to a column that duplicates the body is caught too).
#[derive(Clone, Debug)]
pub struct StoredRow {
    pub seq: u64,
    pub at: String,
    pub kind: String,
    pub code: String,
    pub actor: String,
    pub body: String,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("record {seq}: expected sequence number {expected} (a record was removed, inserted or reordered)")]
    Sequence { seq: u64, expected: u64 },
    #[error("record {seq}: prev_hash does not match the previous record's hash")]
    Link { seq: u64 },
    #[error("record {seq}: hash does not match its contents (the record was edited)")]
    Hash { seq: u64 },
    #[error(
        "record {seq}: column {column} disagrees with the hashed body (the record was edited)"
    )]
    Column { seq: u64, column: &'static str },
    #[error("record {seq}: body is not a valid event: {message}")]
    Body { seq: u64, message: String },
}

/// Incremental verifier: feed rows in `seq` order.
#[derive(Debug)]
pub struct ChainVerifier {
    expected_seq: u64,
    prev_hash: String,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            expected_seq: 1,
            prev_hash: GENESIS.to_string(),
        }
    }
}

impl ChainVerifier {
    pub fn push(&mut self, row: &StoredRow) -> Result<(), ChainError> {
        let seq = row.seq;
        if seq != self.expected_seq {
            return Err(ChainError::Sequence {
                seq,
                expected: self.expected_seq,
            });
        }
        if row.prev_hash != self.prev_hash {
            return Err(ChainError::Link { seq });
        }
        if chain_hash(&row.prev_hash, seq, &row.body) != row.hash {
            return Err(ChainError::Hash { seq });
        }
        let event: AuditEvent = serde_json::from_str(&row.body).map_err(|e| ChainError::Body {
            seq,
            message: e.to_string(),
        })?;
        // Compared as times: records written before timestamps had a fixed
        // width spell the same instant differently (".47Z" for ".470Z").
        if Timestamp::parse_rfc3339(&row.at) != Some(event.at) {
            return Err(ChainError::Column { seq, column: "at" });
        }
        for (column, stored, hashed) in [
            ("kind", row.kind.as_str(), event.kind.name().to_string()),
            ("code", row.code.as_str(), event.kind.code().to_string()),
            ("actor", row.actor.as_str(), event.actor.clone()),
        ] {
            if stored != hashed {
                return Err(ChainError::Column { seq, column });
            }
        }
        self.expected_seq += 1;
        self.prev_hash = row.hash.clone();
        Ok(())
    }

    pub fn count(&self) -> u64 {
        self.expected_seq - 1
    }

    pub fn head(&self) -> &str {
        &self.prev_hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<StoredRow> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let mut e = AuditEvent::new(
                    AuditKind::Allowed,
                    "policy",
                    Timestamp::from_millis(seq as i64),
                );
                e.identity = Some("demo-app".into());
                let body = event_body(&e);
                let hash = chain_hash(&prev, seq, &body);
                let row = StoredRow {
                    seq,
                    at: e.at.to_rfc3339(),
                    kind: e.kind.name().into(),
                    code: e.kind.code().into(),
                    actor: e.actor.clone(),
                    body,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                row
            })
            .collect()
    }

    fn verify(rows: &[StoredRow]) -> Result<u64, ChainError> {
        let mut v = ChainVerifier::default();
        for r in rows {
            v.push(r)?;
        }
        Ok(v.count())
    }

    #[test]
    fn body_at_is_the_events_own_timestamp_text() {
        let e = AuditEvent::new(
            AuditKind::Allowed,
            "policy",
            Timestamp::from_millis(1_764_000_000_123),
        );
        let body = event_body(&e);
        assert_eq!(body_at(&body), Some(e.at.to_rfc3339().as_str()));
        assert_eq!(body_at("{\"kind\":\"x\"}"), None);
        assert_eq!(
            chain_hash(GENESIS, 1, &body).as_bytes(),
            chain_hash_hex(GENESIS.as_bytes(), 1, &body)
        );
    }

    #[test]
    fn event_body_is_what_serde_json_writes() {
        let tricky = [
            "",
            "plain",
            "quote \" and backslash \\",
            "lines\nand\rtabs\t, \u{8}\u{c}",
            "\u{0}\u{1}\u{1f} and \u{7f}",
            "non-ASCII: é, 日本, 🔑",
            "</script> & 'single'",
        ];
        let mut events = Vec::new();
        for (i, text) in tricky.iter().enumerate() {
            let mut e = AuditEvent::new(
                AuditKind::Denied,
                *text,
                Timestamp::from_millis(1_790_000_000_123 + i as i64),
            );
            e.identity = Some(text.to_string());
            e.request_id = Some(format!("req-{i}"));
            e.front = Some(if i % 2 == 0 { Front::Aws } else { Front::Vault });
            e.operation = Some("GetSecretValue".into());
            e.resources = tricky[..i].iter().map(|s| s.to_string()).collect();
            e.rule = Some(text.to_string());
            e.detail = Some(format!("detail {text}"));
            e.client = (i % 2 == 0).then(|| "127.0.0.1".to_string());
            e.certificate = (i % 3 == 0).then(|| text.to_string());
            events.push(e);
        }
        // Everything absent, and a time outside the years RFC 3339 can write.
        events.push(AuditEvent::new(
            AuditKind::Allowed,
            "policy",
            Timestamp::from_millis(i64::MAX),
        ));
        for e in &events {
            let serde = serde_json::to_string(e).expect("serializes");
            assert_eq!(event_body(e), serde);
        }
        // (A time written as a number does not parse back; no clock writes one.)
        for e in &events[..events.len() - 1] {
            let back: AuditEvent = serde_json::from_str(&event_body(e)).expect("parses back");
            assert_eq!(&back, e);
        }
    }

    #[test]
    fn every_ascii_character_is_escaped_as_serde_json_escapes_it() {
        // Alone, and at the start, in the middle and at the end of values
        // long enough for the vectorized check's full blocks and its tail.
        for c in (0u8..=0x7f).map(char::from) {
            let (x, y) = ("x".repeat(17), "y".repeat(20));
            for text in [
                c.to_string(),
                format!("{c}{x}{y}"),
                format!("{x}{c}{y}"),
                format!("{x}{y}{c}"),
            ] {
                let mut ours = String::new();
                push_json_str(&mut ours, &text);
                let serde = serde_json::to_string(&text).expect("serializes");
                assert_eq!(ours, serde, "{text:?}");
            }
        }
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify(&chain(5)), Ok(5));
    }

    #[test]
    fn tampering_is_detected() {
        let mut edited_body = chain(5);
        edited_body[2].body = edited_body[2].body.replace("demo-app", "other");
        assert_eq!(verify(&edited_body), Err(ChainError::Hash { seq: 3 }));

        let mut edited_column = chain(5);
        edited_column[1].actor = "mallory".into();
        assert_eq!(
            verify(&edited_column),
            Err(ChainError::Column {
                seq: 2,
                column: "actor"
            })
        );

        let mut removed = chain(5);
        removed.remove(2);
        assert_eq!(
            verify(&removed),
            Err(ChainError::Sequence {
                seq: 4,
                expected: 3
            })
        );

        let mut reordered = chain(5);
        reordered.swap(1, 2);
        assert_eq!(
            verify(&reordered),
            Err(ChainError::Sequence {
                seq: 3,
                expected: 2
            })
        );

        // Renumbering after a removal still breaks the link.
        let mut renumbered = chain(5);
        renumbered.remove(2);
        for (i, r) in renumbered.iter_mut().enumerate() {
            r.seq = i as u64 + 1;
        }
        assert_eq!(verify(&renumbered), Err(ChainError::Link { seq: 3 }));
    }
}
