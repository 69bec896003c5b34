//! The AWS Secrets Manager operations keygate knows, their policy class, and
//! what of a request body the policy, the approver and the digest may see.

use serde_json::{Map, Value};

use crate::policy::OpClass;

/// Every operation of the Secrets Manager API, with its class.
pub const OPERATIONS: &[(&str, OpClass)] = &[
    ("GetSecretValue", OpClass::Read),
    ("BatchGetSecretValue", OpClass::Bulk),
    ("DescribeSecret", OpClass::Describe),
    ("ListSecretVersionIds", OpClass::Describe),
    ("GetResourcePolicy", OpClass::Describe),
    ("ListSecrets", OpClass::List),
    ("CreateSecret", OpClass::Write),
    ("PutSecretValue", OpClass::Write),
    ("UpdateSecret", OpClass::Write),
    ("UpdateSecretVersionStage", OpClass::Write),
    ("RestoreSecret", OpClass::Write),
    ("RotateSecret", OpClass::Write),
    ("CancelRotateSecret", OpClass::Write),
    ("TagResource", OpClass::Write),
    ("UntagResource", OpClass::Write),
    ("ReplicateSecretToRegions", OpClass::Write),
    ("RemoveRegionsFromReplication", OpClass::Write),
    ("StopReplicationToReplica", OpClass::Write),
    ("DeleteSecret", OpClass::Delete),
    ("PutResourcePolicy", OpClass::Privilege),
    ("DeleteResourcePolicy", OpClass::Privilege),
    ("ValidateResourcePolicy", OpClass::Other),
    ("GetRandomPassword", OpClass::Other),
];

pub fn classify(operation: &str) -> Option<OpClass> {
    lookup(operation).map(|(_, class)| class)
}

/// The operation's name as a `'static` string (so a request need not keep
/// its headers to remember it), and its class.
pub fn lookup(operation: &str) -> Option<(&'static str, OpClass)> {
    OPERATIONS
        .iter()
        .find(|(name, _)| *name == operation)
        .copied()
}

pub fn names() -> impl Iterator<Item = &'static str> {
    OPERATIONS.iter().map(|(n, _)| *n)
}

/// Reads whose answers may be cached (keyed by the exact request body).
pub fn is_cacheable(operation: &str) -> bool {
    matches!(operation, "GetSecretValue" | "DescribeSecret")
}

/// Operations that change stored state, after which cached reads are stale.
pub fn changes_state(class: OpClass) -> bool {
    matches!(class, OpClass::Write | OpClass::Delete | OpClass::Privilege)
}

/// The secrets a request names: `SecretId`, `Name` (CreateSecret), or
/// `SecretIdList` (BatchGetSecretValue). A filtered listing names none.
pub fn resources(body: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for key in ["SecretId", "Name"] {
        if let Some(Value::String(s)) = body.get(key) {
            out.push(resource_name(s));
        }
    }
    if let Some(Value::Array(ids)) = body.get("SecretIdList") {
        out.extend(ids.iter().filter_map(Value::as_str).map(resource_name));
    }
    out
}

/// A secret referenced by ARN is matched by the part after `:secret:`
/// (AWS's 6-character suffix included), so `prod/*` covers both forms.
fn resource_name(id: &str) -> String {
    // Names are the common case: look for ":secret:" (a substring search
    // that is costly to set up) only in what may be an ARN.
    if !id.starts_with("arn:") {
        return id.to_string();
    }
    match id.split_once(":secret:") {
        Some((prefix, name)) if prefix.starts_with("arn:") => name.to_string(),
        _ => id.to_string(),
    }
}

/// Request fields that hold secret values (or could): never shown, logged or stored.
const SECRET_FIELDS: &[&str] = &["SecretString", "SecretBinary"];

/// Fields that do not bind an approval: the SDKs fill `ClientRequestToken`
/// with a fresh random value on every call, so a retry would never match.
const UNBOUND_FIELDS: &[&str] = &["ClientRequestToken"];

/// Parameters safe to show an approver and store in a held request.
pub fn redacted_parameters(body: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    for (k, v) in body {
        if SECRET_FIELDS.contains(&k.as_str()) {
            out.insert(k.clone(), Value::String("<redacted>".into()));
        } else if !UNBOUND_FIELDS.contains(&k.as_str()) {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

/// The body as the request digest binds it: every field except unbound ones,
/// serialized with sorted keys (serde_json's map is ordered).
pub fn digest_material(body: &Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(&Bound(body)).unwrap_or_default()
}

/// The bound fields of a body, serialized in place (in the map's sorted
/// key order) rather than copied into a new map first.
struct Bound<'a>(&'a Map<String, Value>);

impl serde::Serialize for Bound<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(
            self.0
                .iter()
                .filter(|(k, _)| !UNBOUND_FIELDS.contains(&k.as_str())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn resources_come_from_ids_names_and_lists() {
        for (body, expect) in [
            (json!({"SecretId": "demo/db"}), vec!["demo/db"]),
            (
                json!({"SecretId": "arn:aws:secretsmanager:us-east-1:1:secret:prod/x-AbCdEf"}),
                vec!["prod/x-AbCdEf"],
            ),
            (
                json!({"Name": "new/one", "SecretString": "v"}),
                vec!["new/one"],
            ),
            (json!({"SecretIdList": ["a", "b"]}), vec!["a", "b"]),
            (
                json!({"Filters": [{"Key": "name", "Values": ["demo"]}]}),
                vec![],
            ),
        ] {
            assert_eq!(resources(&obj(body.clone())), expect, "{body}");
        }
    }

    #[test]
    fn secret_values_never_reach_parameters() {
        let p = redacted_parameters(&obj(
            json!({"SecretId": "x", "SecretString": "hunter2", "ClientRequestToken": "t"}),
        ));
        assert_eq!(p, json!({"SecretId": "x", "SecretString": "<redacted>"}));
    }

    #[test]
    fn digest_ignores_the_sdk_idempotency_token_only() {
        let a = digest_material(&obj(json!({"SecretId": "x", "ClientRequestToken": "1"})));
        let b = digest_material(&obj(json!({"ClientRequestToken": "2", "SecretId": "x"})));
        let c = digest_material(&obj(json!({"SecretId": "y"})));
        assert_eq!(a, b);
        assert_ne!(a, c);
        // The exact bytes are part of stored digests (merging identical
        // requests across restarts): sorted keys, compact JSON.
        let d = digest_material(&obj(json!({"VersionStage": "AWSCURRENT", "SecretId": "x"})));
        assert_eq!(d, br#"{"SecretId":"x","VersionStage":"AWSCURRENT"}"#);
    }

    #[test]
    fn every_operation_is_classified_once() {
        let mut names: Vec<_> = names().collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), OPERATIONS.len());
    }
}
