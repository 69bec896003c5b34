//! Vault HTTP paths as keygate's policy sees them: which engine a path
//! belongs to, the operation name and class, the resources, the facts of a
//! certificate or token request, and what of the body an approver may see.
//! Pure: no IO.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::VaultConfig;
use crate::policy::{Facts, OpClass};

/// Every operation name a Vault rule may use.
pub const OPERATIONS: &[&str] = &[
    "kv.read",
    "kv.write",
    "kv.patch",
    "kv.delete",
    "kv.undelete",
    "kv.destroy",
    "kv.list",
    "kv.metadata.read",
    "kv.metadata.write",
    "kv.metadata.delete",
    "kv.config",
    "pki.issue",
    "pki.sign",
    "pki.sign-verbatim",
    "pki.read",
    "pki.admin",
    "token.create",
    "token.lookup-self",
    "token.renew-self",
    "token.revoke-self",
    "token.admin",
    "auth.login",
    "sys.health",
    "sys.unwrap",
    "sys.admin",
    "vault.read",
    "vault.write",
    "vault.list",
    "vault.delete",
];

pub fn is_operation(name: &str) -> bool {
    OPERATIONS.contains(&name)
}

/// Which engine serves a path (for routing to the dev store and caching).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Engine {
    Kv2 { mount: String, rest: String },
    Kv1 { mount: String, rest: String },
    Pki,
    Token,
    Sys,
    Other,
}

/// A classified Vault request.
#[derive(Clone, Debug, PartialEq)]
pub struct Classified {
    pub operation: &'static str,
    pub class: OpClass,
    pub engine: Engine,
    pub resources: Vec<String>,
    pub facts: Facts,
}

/// `method` is upper case with `LIST` already normalized; `path` has no
/// `/v1/` prefix and no leading slash.
pub fn classify(
    vault: &VaultConfig,
    method: &str,
    path: &str,
    body: Option<&Map<String, Value>>,
) -> Classified {
    let path = path.trim_start_matches('/');
    if let Some((mount, rest)) = split_mount(&vault.kv2_mounts, path) {
        return kv2(method, mount, rest);
    }
    if let Some((mount, rest)) = split_mount(&vault.kv1_mounts, path) {
        let (operation, class) = match method {
            "GET" => ("kv.read", OpClass::Read),
            "LIST" => ("kv.list", OpClass::List),
            "DELETE" => ("kv.delete", OpClass::Delete),
            _ => ("kv.write", OpClass::Write),
        };
        let resource = resource(mount, rest, method == "LIST");
        return Classified {
            operation,
            class,
            engine: Engine::Kv1 {
                mount: mount.to_string(),
                rest: rest.to_string(),
            },
            resources: vec![resource],
            facts: Facts::default(),
        };
    }
    let first = path.split('/').next().unwrap_or("");
    if vault.pki_mounts.iter().any(|g| g.matches(first)) {
        return pki(method, path, first, body);
    }
    if let Some(rest) = path.strip_prefix("auth/token/") {
        return token(method, path, rest, body);
    }
    if path.starts_with("auth/") && path.ends_with("/login") {
        return simple("auth.login", OpClass::Other, Engine::Other, path);
    }
    if let Some(rest) = path.strip_prefix("sys/") {
        let (operation, class) = match rest {
            "health" | "seal-status" | "leader" => ("sys.health", OpClass::Describe),
            "wrapping/unwrap" => ("sys.unwrap", OpClass::Read),
            _ => ("sys.admin", OpClass::Privilege),
        };
        return simple(operation, class, Engine::Sys, path);
    }
    let operation = match method {
        "GET" => "vault.read",
        "LIST" => "vault.list",
        "DELETE" => "vault.delete",
        _ => "vault.write",
    };
    simple(operation, OpClass::Other, Engine::Other, path)
}

impl Classified {
    /// Executing it changes nothing in Vault, so under strict audit it may
    /// run while its decision record is written (`AccessRequest::read_only`).
    /// Only a plain KV read: elsewhere a read can mint a credential
    /// (dynamic secrets), and a response-wrapped read mints a wrapping token.
    pub fn changes_nothing(&self, wrapped: bool) -> bool {
        !wrapped
            && matches!(self.engine, Engine::Kv1 { .. } | Engine::Kv2 { .. })
            && matches!(
                self.class,
                OpClass::Read | OpClass::List | OpClass::Describe
            )
    }
}

/// The longest configured mount that `path` lies under.
pub fn split_mount<'p>(mounts: &[String], path: &'p str) -> Option<(&'p str, &'p str)> {
    mounts
        .iter()
        .filter(|m| path == m.as_str() || path.starts_with(&format!("{m}/")))
        .max_by_key(|m| m.len())
        .map(|m| {
            let rest = path.get(m.len()..).unwrap_or("").trim_start_matches('/');
            (&path[..m.len()], rest)
        })
}

fn simple(operation: &'static str, class: OpClass, engine: Engine, path: &str) -> Classified {
    Classified {
        operation,
        class,
        engine,
        resources: vec![path.trim_end_matches('/').to_string()],
        facts: Facts::default(),
    }
}

/// `mount/path`, with a trailing slash for listings so `secret/demo/*` covers them.
fn resource(mount: &str, path: &str, listing: bool) -> String {
    let path = path.trim_matches('/');
    match (path.is_empty(), listing) {
        (true, _) => format!("{mount}/"),
        (false, true) => format!("{mount}/{path}/"),
        (false, false) => format!("{mount}/{path}"),
    }
}

fn kv2(method: &str, mount: &str, rest: &str) -> Classified {
    let (section, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (operation, class) = match (section, method) {
        ("data", "GET") => ("kv.read", OpClass::Read),
        ("data", "PATCH") => ("kv.patch", OpClass::Write),
        ("data", "DELETE") => ("kv.delete", OpClass::Delete),
        ("data", _) => ("kv.write", OpClass::Write),
        ("metadata", "LIST") => ("kv.list", OpClass::List),
        ("metadata", "GET") => ("kv.metadata.read", OpClass::Describe),
        ("metadata", "DELETE") => ("kv.metadata.delete", OpClass::Delete),
        ("metadata", _) => ("kv.metadata.write", OpClass::Write),
        ("subkeys", _) => ("kv.metadata.read", OpClass::Describe),
        ("delete", _) => ("kv.delete", OpClass::Delete),
        ("undelete", _) => ("kv.undelete", OpClass::Write),
        ("destroy", _) => ("kv.destroy", OpClass::Delete),
        ("config", "GET") => ("kv.config", OpClass::Describe),
        ("config", _) => ("kv.config", OpClass::Privilege),
        (_, "GET") => ("vault.read", OpClass::Other),
        (_, "LIST") => ("vault.list", OpClass::Other),
        (_, "DELETE") => ("vault.delete", OpClass::Other),
        _ => ("vault.write", OpClass::Other),
    };
    let resources = if section == "config" {
        vec![format!("{mount}/config")]
    } else {
        vec![resource(mount, path, method == "LIST")]
    };
    Classified {
        operation,
        class,
        engine: Engine::Kv2 {
            mount: mount.to_string(),
            rest: rest.to_string(),
        },
        resources,
        facts: Facts::default(),
    }
}

fn pki(method: &str, path: &str, mount: &str, body: Option<&Map<String, Value>>) -> Classified {
    let rest = path[mount.len()..].trim_start_matches('/');
    let head = rest.split('/').next().unwrap_or("");
    let (operation, class) = match (head, method) {
        ("issue", "POST" | "PUT") => ("pki.issue", OpClass::Issue),
        ("sign", "POST" | "PUT") => ("pki.sign", OpClass::Issue),
        ("sign-verbatim", _) => ("pki.sign-verbatim", OpClass::Privilege),
        (_, "GET" | "LIST") => ("pki.read", OpClass::Describe),
        _ => ("pki.admin", OpClass::Privilege),
    };
    let facts = if class == OpClass::Issue {
        Facts {
            ttl: body.and_then(|b| b.get("ttl")).map(parse_ttl),
            names: cert_names(body),
            token_policies: None,
        }
    } else {
        Facts::default()
    };
    Classified {
        operation,
        class,
        engine: Engine::Pki,
        resources: vec![path.trim_end_matches('/').to_string()],
        facts,
    }
}

fn token(method: &str, path: &str, rest: &str, body: Option<&Map<String, Value>>) -> Classified {
    let (operation, class) = match rest {
        r if r == "create" || r == "create-orphan" || r.starts_with("create/") => {
            ("token.create", OpClass::Issue)
        }
        "lookup-self" => ("token.lookup-self", OpClass::Describe),
        "renew-self" => ("token.renew-self", OpClass::Write),
        "revoke-self" => ("token.revoke-self", OpClass::Delete),
        _ => ("token.admin", OpClass::Privilege),
    };
    let _ = method;
    let facts = if operation == "token.create" {
        Facts {
            ttl: body.and_then(|b| b.get("ttl")).map(parse_ttl),
            names: Vec::new(),
            token_policies: Some(string_list(body.and_then(|b| b.get("policies")))),
        }
    } else {
        Facts::default()
    };
    Classified {
        operation,
        class,
        engine: Engine::Token,
        resources: vec![path.trim_end_matches('/').to_string()],
        facts,
    }
}

/// Vault TTLs are seconds (number or digits) or Go durations ("1h30m").
/// Anything unreadable counts as unbounded, so a `max_ttl` condition fails closed.
fn parse_ttl(v: &Value) -> Duration {
    const UNBOUNDED: Duration = Duration::from_secs(u64::MAX / 4);
    match v {
        Value::Number(n) => n.as_u64().map(Duration::from_secs).unwrap_or(UNBOUNDED),
        Value::String(s) if s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty() => {
            s.parse().map(Duration::from_secs).unwrap_or(UNBOUNDED)
        }
        Value::String(s) => humantime::parse_duration(s).unwrap_or(UNBOUNDED),
        _ => UNBOUNDED,
    }
}

/// A list given as a JSON array or a comma-separated string.
fn string_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

fn cert_names(body: Option<&Map<String, Value>>) -> Vec<String> {
    let Some(b) = body else { return Vec::new() };
    let mut names = string_list(b.get("common_name"));
    for key in ["alt_names", "ip_sans", "uri_sans"] {
        names.extend(string_list(b.get(key)));
    }
    names
}

/// Body fields never shown to approvers or stored: values a workload writes
/// (`data` of KV writes) and credentials.
const SECRET_KEYS: &[&str] = &[
    "password",
    "secret_id",
    "token",
    "private_key",
    "secret",
    "key",
];

/// Parameters of a Vault request safe to show an approver.
pub fn redacted_parameters(
    method: &str,
    path: &str,
    query: &str,
    wrap_ttl: Option<&str>,
    body: Option<&Value>,
) -> Value {
    let mut out = Map::new();
    out.insert("method".into(), Value::String(method.to_string()));
    out.insert("path".into(), Value::String(path.to_string()));
    if !query.is_empty() {
        out.insert("query".into(), Value::String(query.to_string()));
    }
    if let Some(w) = wrap_ttl {
        out.insert("wrap_ttl".into(), Value::String(w.to_string()));
    }
    if let Some(b) = body {
        out.insert("body".into(), redact(b, false));
    }
    Value::Object(out)
}

fn redact(v: &Value, everything: bool) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let hide = everything || SECRET_KEYS.contains(&k.as_str());
                    let inner = if k == "data" {
                        redact(v, true)
                    } else if hide {
                        redact_leaf(v)
                    } else {
                        redact(v, false)
                    };
                    (k.clone(), inner)
                })
                .collect(),
        ),
        Value::Array(items) if everything => Value::Array(items.iter().map(redact_leaf).collect()),
        other if everything => redact_leaf(other),
        other => other.clone(),
    }
}

fn redact_leaf(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), redact_leaf(v))).collect())
        }
        _ => Value::String("<redacted>".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::glob::Glob;
    use serde_json::json;

    fn vault() -> VaultConfig {
        VaultConfig {
            kv2_mounts: vec!["secret".into(), "team/kv".into()],
            kv1_mounts: vec!["kv".into()],
            pki_mounts: vec![Glob::new("pki*")],
            passthrough: false,
            passthrough_cache_ttl: Duration::from_secs(30),
            upstream: None,
        }
    }

    fn check(method: &str, path: &str, body: Value, expect: (&str, OpClass, &[&str])) {
        let body = body.as_object().cloned();
        let c = classify(&vault(), method, path, body.as_ref());
        let resources: Vec<&str> = c.resources.iter().map(String::as_str).collect();
        assert_eq!(
            (c.operation, c.class, resources.as_slice()),
            expect,
            "{method} {path}"
        );
    }

    #[test]
    fn only_unwrapped_kv_reads_change_nothing() {
        let none = json!(null);
        let body = none.as_object();
        let changes_nothing = |method: &str, path: &str, wrapped: bool| {
            classify(&vault(), method, path, body).changes_nothing(wrapped)
        };
        assert!(changes_nothing("GET", "secret/data/app/db", false));
        assert!(changes_nothing("GET", "secret/metadata/app/db", false));
        assert!(changes_nothing("LIST", "secret/metadata/app", false));
        assert!(changes_nothing("GET", "kv/app/db", false));
        assert!(!changes_nothing("GET", "secret/data/app/db", true));
        assert!(!changes_nothing("POST", "secret/data/app/db", false));
        assert!(!changes_nothing("DELETE", "kv/app/db", false));
        assert!(!changes_nothing("GET", "database/creds/readonly", false));
        assert!(!changes_nothing("POST", "pki/issue/web", false));
        assert!(!changes_nothing("POST", "sys/wrapping/unwrap", false));
        assert!(!changes_nothing("GET", "auth/token/lookup-self", false));
    }

    #[test]
    fn classification_table() {
        use OpClass::*;
        let none = json!(null);
        check(
            "GET",
            "secret/data/demo/db",
            none.clone(),
            ("kv.read", Read, &["secret/demo/db"]),
        );
        check(
            "PUT",
            "secret/data/demo/db",
            none.clone(),
            ("kv.write", Write, &["secret/demo/db"]),
        );
        check(
            "PATCH",
            "secret/data/demo/db",
            none.clone(),
            ("kv.patch", Write, &["secret/demo/db"]),
        );
        check(
            "DELETE",
            "secret/data/demo/db",
            none.clone(),
            ("kv.delete", Delete, &["secret/demo/db"]),
        );
        check(
            "LIST",
            "secret/metadata/demo",
            none.clone(),
            ("kv.list", List, &["secret/demo/"]),
        );
        check(
            "LIST",
            "secret/metadata/",
            none.clone(),
            ("kv.list", List, &["secret/"]),
        );
        check(
            "GET",
            "secret/metadata/demo/db",
            none.clone(),
            ("kv.metadata.read", Describe, &["secret/demo/db"]),
        );
        check(
            "POST",
            "secret/destroy/demo/db",
            none.clone(),
            ("kv.destroy", Delete, &["secret/demo/db"]),
        );
        check(
            "POST",
            "secret/undelete/demo/db",
            none.clone(),
            ("kv.undelete", Write, &["secret/demo/db"]),
        );
        check(
            "GET",
            "team/kv/data/x",
            none.clone(),
            ("kv.read", Read, &["team/kv/x"]),
        );
        check(
            "GET",
            "kv/app/x",
            none.clone(),
            ("kv.read", Read, &["kv/app/x"]),
        );
        check(
            "LIST",
            "kv/app",
            none.clone(),
            ("kv.list", List, &["kv/app/"]),
        );
        check(
            "POST",
            "pki/issue/svc",
            none.clone(),
            ("pki.issue", Issue, &["pki/issue/svc"]),
        );
        check(
            "POST",
            "pki_int/sign/svc",
            none.clone(),
            ("pki.sign", Issue, &["pki_int/sign/svc"]),
        );
        check(
            "POST",
            "pki/sign-verbatim",
            none.clone(),
            ("pki.sign-verbatim", Privilege, &["pki/sign-verbatim"]),
        );
        check(
            "POST",
            "pki/root/generate/internal",
            none.clone(),
            ("pki.admin", Privilege, &["pki/root/generate/internal"]),
        );
        check(
            "GET",
            "pki/cert/ca",
            none.clone(),
            ("pki.read", Describe, &["pki/cert/ca"]),
        );
        check(
            "POST",
            "auth/token/create",
            none.clone(),
            ("token.create", Issue, &["auth/token/create"]),
        );
        check(
            "POST",
            "auth/token/create/ci",
            none.clone(),
            ("token.create", Issue, &["auth/token/create/ci"]),
        );
        check(
            "GET",
            "auth/token/lookup-self",
            none.clone(),
            ("token.lookup-self", Describe, &["auth/token/lookup-self"]),
        );
        check(
            "POST",
            "auth/token/revoke",
            none.clone(),
            ("token.admin", Privilege, &["auth/token/revoke"]),
        );
        check(
            "POST",
            "auth/approle/login",
            none.clone(),
            ("auth.login", Other, &["auth/approle/login"]),
        );
        check(
            "GET",
            "sys/health",
            none.clone(),
            ("sys.health", Describe, &["sys/health"]),
        );
        check(
            "POST",
            "sys/wrapping/unwrap",
            none.clone(),
            ("sys.unwrap", Read, &["sys/wrapping/unwrap"]),
        );
        check(
            "PUT",
            "sys/policies/acl/x",
            none.clone(),
            ("sys.admin", Privilege, &["sys/policies/acl/x"]),
        );
        check(
            "GET",
            "cubbyhole/x",
            none,
            ("vault.read", Other, &["cubbyhole/x"]),
        );
    }

    #[test]
    fn certificate_and_token_facts() {
        let body = json!({"common_name": "a.svc", "alt_names": "b.svc, *.svc", "ip_sans": ["10.0.0.1"], "ttl": "1h30m"});
        let c = classify(&vault(), "POST", "pki/issue/svc", body.as_object());
        assert_eq!(c.facts.names, vec!["a.svc", "b.svc", "*.svc", "10.0.0.1"]);
        assert_eq!(c.facts.ttl, Some(Duration::from_secs(5400)));
        for (ttl, secs) in [(json!(60), 60), (json!("60"), 60), (json!("2h"), 7200)] {
            assert_eq!(parse_ttl(&ttl), Duration::from_secs(secs));
        }
        assert!(
            parse_ttl(&json!("forever")) > Duration::from_secs(1 << 40),
            "unreadable TTLs fail closed"
        );
        let t = classify(
            &vault(),
            "POST",
            "auth/token/create",
            json!({"policies": ["a", "b"]}).as_object(),
        );
        assert_eq!(
            t.facts.token_policies,
            Some(vec!["a".to_string(), "b".to_string()])
        );
        let inherit = classify(&vault(), "POST", "auth/token/create", None);
        assert_eq!(
            inherit.facts.token_policies,
            Some(vec![]),
            "no policies named: inherits"
        );
    }

    #[test]
    fn secret_values_are_redacted_from_parameters() {
        let body = json!({"data": {"password": "hunter2", "nested": {"k": "v"}, "list": ["x"]}, "options": {"cas": 1}, "token": "t"});
        let p = redacted_parameters("PUT", "secret/data/x", "", None, Some(&body));
        let text = p.to_string();
        for secret in ["hunter2", "\"v\"", "\"x\"", "\"t\""] {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
        assert_eq!(
            p["body"]["options"]["cas"],
            json!(1),
            "non-secret fields stay visible"
        );
    }
}
