//! Configuration: a raw serde shape (`deny_unknown_fields`) read from TOML,
//! then validated into typed `Config`. Every error names the key, the bad
//! value and what is allowed. `keygate check` and `keygate serve` run the same
//! code, and `serve` binds nothing until this has succeeded.
//!
//! Secrets in the file may be given inline (demo only), as `env:NAME` or as
//! `file:/path`; they are resolved here and held as `SecretString`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::front::aws::ops as aws_ops;
use crate::front::vault::ops as vault_ops;
use crate::glob::Glob;
use crate::policy::{
    Action, Conditions, DefaultAction, Escalation, Factor, Front, GrantSpec, HoldSpec, OpClass,
    Policy, Rule, VolumeCondition,
};
use crate::secret::SecretString;

mod notify;
mod transport;
pub use notify::{NotifyConfig, WebhookConfig, WebhookFormat};
pub use transport::{ClientAuth, IpNet, Limits, ListenerTls, UpstreamTls};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------
// Validated configuration
// ---------------------------------------------------------------------------

#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub upstream: UpstreamConfig,
    pub cache: CacheConfig,
    pub gate: GateConfig,
    pub identities: Vec<Identity>,
    pub approvers: Vec<Approver>,
    pub dev_secrets: Vec<(String, SecretString)>,
    /// KV v2 seeds for the dev store's Vault side: (mount, path in mount, data).
    pub dev_kv: Vec<DevKvSeed>,
    pub vault: VaultConfig,
    pub audit: AuditMode,
    pub policy: Policy,
    pub notify: NotifyConfig,
}

/// When a decision's audit record must be durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditMode {
    /// Before the client is answered, surviving a power loss (the default).
    Strict,
    /// Queued and group-committed without waiting: a crash may lose the last
    /// moments of allowed/denied decision records. Holds, approvals and
    /// grants are always strict.
    Batched,
}

#[derive(Debug, Clone)]
pub struct DevKvSeed {
    pub mount: String,
    pub path: String,
    pub data: serde_json::Map<String, serde_json::Value>,
}

/// The Vault front end: how paths map to engines, and pass-through mode.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    pub kv2_mounts: Vec<String>,
    pub kv1_mounts: Vec<String>,
    pub pki_mounts: Vec<Glob>,
    pub passthrough: bool,
    pub passthrough_cache_ttl: Duration,
    /// Where Vault requests go. `None`: the dev store (when `upstream.kind = "dev"`).
    pub upstream: Option<VaultUpstreamConfig>,
}

#[derive(Debug, Clone)]
pub struct VaultUpstreamConfig {
    pub address: String,
    pub auth: VaultAuth,
    pub timeout: Duration,
    pub tls: UpstreamTls,
}

#[derive(Debug, Clone)]
pub enum VaultAuth {
    Token(SecretString),
    AppRole {
        mount: String,
        role_id: SecretString,
        secret_id: SecretString,
    },
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub region: String,
    pub state: PathBuf,
    pub max_body_bytes: usize,
    /// TLS on the workload listener; `None` is plain HTTP.
    pub tls: Option<ListenerTls>,
    /// TLS on the admin listener; required off loopback.
    pub admin_tls: Option<ListenerTls>,
    pub limits: Limits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone)]
pub enum UpstreamConfig {
    /// The embedded dev store (not for production).
    Dev,
    /// AWS Secrets Manager through the official SDK.
    Aws {
        region: Option<String>,
        endpoint: Option<String>,
        timeout: Duration,
        tls: UpstreamTls,
        client: AwsClient,
    },
}

/// How calls to AWS are made (`upstream.client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AwsClient {
    /// The SDK's client and its per-call orchestrator (the default).
    #[default]
    Sdk,
    /// keygate signs with `aws-sigv4` and sends each call itself, with the
    /// SDK's credentials, region, endpoint rules and retry settings
    /// (`upstream::aws_direct`): a cache miss costs ~100 µs less.
    Direct,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub ttl: Duration,
    pub max_entries: u64,
}

#[derive(Debug, Clone)]
pub struct GateConfig {
    pub max_pending_per_identity: usize,
    /// Held requests across all identities; past it, new holds get a 503.
    pub max_pending_total: usize,
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub groups: Vec<String>,
    /// The approver who owns this workload; their approval never counts for it.
    pub owner: Option<String>,
    pub aws: Option<AwsKey>,
    pub vault_token: Option<SecretString>,
    /// Client-certificate names (SPIFFE ID, DNS name or CN; exact or glob)
    /// that authenticate as this identity over mTLS.
    pub certificates: Vec<Glob>,
}

#[derive(Debug, Clone)]
pub struct AwsKey {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
}

#[derive(Debug, Clone)]
pub struct Approver {
    pub name: String,
    /// SHA-256 of the bearer token; the token itself is not kept.
    pub token_sha256: [u8; 32],
    pub groups: Vec<String>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        raw.validate()
    }
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

// ---------------------------------------------------------------------------
// Raw shape
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    gate: RawGate,
    #[serde(default)]
    identities: Vec<RawIdentity>,
    #[serde(default)]
    approvers: Vec<RawApprover>,
    #[serde(default)]
    dev_store: RawDevStore,
    #[serde(default)]
    vault: RawVault,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    notify: notify::RawNotify,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    admin_listen: String,
    #[serde(default = "default_region")]
    region: String,
    state: PathBuf,
    #[serde(default = "default_max_body")]
    max_body_bytes: usize,
    tls: Option<transport::RawListenerTls>,
    admin_tls: Option<transport::RawListenerTls>,
    #[serde(default)]
    limits: transport::RawLimits,
}

fn default_region() -> String {
    "us-east-1".to_string()
}

fn default_max_body() -> usize {
    // Secrets Manager caps a secret at 64 KiB; a batch request is small.
    1024 * 1024
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    kind: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    timeout: Option<String>,
    client: Option<String>,
    vault: Option<RawVaultUpstream>,
    tls: Option<transport::RawUpstreamTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVaultUpstream {
    address: String,
    token: Option<String>,
    approle_mount: Option<String>,
    approle_role_id: Option<String>,
    approle_secret_id: Option<String>,
    timeout: Option<String>,
    tls: Option<transport::RawUpstreamTls>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawVault {
    kv2_mounts: Option<Vec<String>>,
    kv1_mounts: Option<Vec<String>>,
    pki_mounts: Option<Vec<String>>,
    passthrough: Option<bool>,
    passthrough_cache_ttl: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    ttl: Option<String>,
    max_entries: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGate {
    max_pending_per_identity: Option<usize>,
    max_pending_total: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    name: String,
    #[serde(default)]
    groups: Vec<String>,
    owner: Option<String>,
    aws_access_key_id: Option<String>,
    aws_secret_access_key: Option<String>,
    vault_token: Option<String>,
    #[serde(default)]
    certificates: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprover {
    name: String,
    token: Option<String>,
    token_sha256: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDevStore {
    #[serde(default)]
    secrets: Vec<RawDevSecret>,
    #[serde(default)]
    kv: Vec<RawDevKv>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevKv {
    path: String,
    data: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevSecret {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default = "default_deny")]
    default: String,
    #[serde(default)]
    rules: Vec<RawRule>,
}

impl Default for RawPolicy {
    fn default() -> Self {
        RawPolicy {
            default: default_deny(),
            rules: Vec::new(),
        }
    }
}

fn default_deny() -> String {
    "deny".to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default)]
    identities: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    fronts: Vec<String>,
    #[serde(default)]
    operations: Vec<String>,
    #[serde(default)]
    classes: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    min_batch: Option<u32>,
    min_distinct_reads: Option<u32>,
    reads_within: Option<String>,
    max_ttl: Option<String>,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    allow_wildcard_names: bool,
    token_policies: Option<Vec<String>>,
    action: String,
    reason: Option<String>,
    approvers: Option<String>,
    approvals: Option<u32>,
    hold_window: Option<String>,
    request_ttl: Option<String>,
    approval_ttl: Option<String>,
    grant: Option<String>,
    grant_uses: Option<u32>,
    grant_window: Option<String>,
    #[serde(default)]
    require_justification: bool,
    factors: Option<Vec<RawFactor>>,
    denials: Option<u32>,
    escalate_after: Option<String>,
    escalate_to: Option<String>,
    #[serde(default)]
    escalation_can_approve: bool,
    #[serde(default)]
    break_glass: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFactor {
    group: String,
    #[serde(default = "one_approval")]
    approvals: u32,
}

fn one_approval() -> u32 {
    1
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

fn duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value).map_err(|e| {
        invalid(
            key,
            format!("{value:?} is not a duration ({e}); use e.g. \"20s\", \"15m\", \"1h\""),
        )
    })
}

fn socket_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            format!("{value:?} is not an address; use IP:PORT, e.g. \"127.0.0.1:8740\""),
        )
    })
}

/// Resolve `env:NAME`, `file:/path` or an inline value.
pub fn resolve_secret(key: &str, value: &str) -> Result<SecretString, ConfigError> {
    if let Some(name) = value.strip_prefix("env:") {
        std::env::var(name)
            .map(SecretString::new)
            .map_err(|_| invalid(key, format!("environment variable {name} is not set")))
    } else if let Some(path) = value.strip_prefix("file:") {
        std::fs::read_to_string(path)
            .map(|s| SecretString::new(s.trim_end_matches(['\n', '\r'])))
            .map_err(|e| invalid(key, format!("cannot read {path}: {e}")))
    } else {
        Ok(SecretString::new(value))
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let tls = self
            .server
            .tls
            .map(|t| transport::validate_listener_tls("server.tls", t))
            .transpose()?;
        let admin_tls = self
            .server
            .admin_tls
            .map(|t| transport::validate_listener_tls("server.admin_tls", t))
            .transpose()?;
        let admin_listen = socket_addr("server.admin_listen", &self.server.admin_listen)?;
        transport::check_admin_exposure(admin_listen, admin_tls.as_ref())?;
        let server = ServerConfig {
            listen: socket_addr("server.listen", &self.server.listen)?,
            admin_listen,
            region: non_empty("server.region", self.server.region)?,
            state: self.server.state,
            max_body_bytes: self.server.max_body_bytes,
            tls,
            admin_tls,
            limits: transport::validate_limits(self.server.limits)?,
        };
        let log = LogConfig {
            format: match self.log.format.as_deref() {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(invalid(
                        "log.format",
                        format!("{other:?} is not allowed; use \"text\" or \"json\""),
                    ))
                }
            },
            level: self.log.level.unwrap_or_else(|| "info".to_string()),
        };
        let upstream = match self.upstream.kind.as_deref() {
            None | Some("dev") => {
                for (k, v) in [
                    ("region", &self.upstream.region),
                    ("endpoint", &self.upstream.endpoint),
                    ("client", &self.upstream.client),
                ] {
                    if v.is_some() {
                        return Err(invalid(
                            format!("upstream.{k}"),
                            "only applies to kind = \"aws\"",
                        ));
                    }
                }
                if self.upstream.tls.is_some() {
                    return Err(invalid("upstream.tls", "only applies to kind = \"aws\""));
                }
                UpstreamConfig::Dev
            }
            Some("aws") => UpstreamConfig::Aws {
                region: self.upstream.region,
                endpoint: self.upstream.endpoint,
                timeout: match &self.upstream.timeout {
                    Some(t) => duration("upstream.timeout", t)?,
                    None => Duration::from_secs(10),
                },
                tls: match self.upstream.tls {
                    Some(t) => transport::validate_upstream_tls("upstream.tls", t)?,
                    None => UpstreamTls::default(),
                },
                client: match self.upstream.client.as_deref() {
                    None | Some("sdk") => AwsClient::Sdk,
                    Some("direct") => AwsClient::Direct,
                    Some(other) => {
                        return Err(invalid(
                            "upstream.client",
                            format!("{other:?} is not allowed; use \"sdk\" or \"direct\""),
                        ))
                    }
                },
            },
            Some(other) => {
                return Err(invalid(
                    "upstream.kind",
                    format!("{other:?} is not allowed; use \"dev\" or \"aws\""),
                ))
            }
        };
        let cache = CacheConfig {
            ttl: match &self.cache.ttl {
                Some(t) => duration("cache.ttl", t)?,
                None => Duration::from_secs(30),
            },
            max_entries: self.cache.max_entries.unwrap_or(10_000),
        };
        let gate = GateConfig {
            max_pending_per_identity: match self.gate.max_pending_per_identity {
                Some(0) => {
                    return Err(invalid(
                        "gate.max_pending_per_identity",
                        "0 would refuse every hold; use at least 1",
                    ))
                }
                Some(n) => n,
                None => 20,
            },
            max_pending_total: match self.gate.max_pending_total {
                Some(0) => {
                    return Err(invalid(
                        "gate.max_pending_total",
                        "0 would refuse every hold; use at least 1",
                    ))
                }
                Some(n) => n,
                None => 10_000,
            },
        };
        if gate.max_pending_total > server.limits.max_connections {
            return Err(invalid(
                "gate.max_pending_total",
                format!(
                    "{} held requests need as many open connections, but \
                     server.limits.max_connections is {}",
                    gate.max_pending_total, server.limits.max_connections
                ),
            ));
        }
        let approvers = validate_approvers(self.approvers)?;
        let identities = validate_identities(self.identities, &approvers)?;
        let dev_secrets = validate_dev_secrets(self.dev_store.secrets, &upstream)?;
        let vault_upstream = self
            .upstream
            .vault
            .map(validate_vault_upstream)
            .transpose()?;
        let vault = validate_vault(self.vault, vault_upstream)?;
        if vault.passthrough && server.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) {
            // A pass-through token names a Vault entity keygate cannot relate
            // to a certificate identity, so "both must agree" has no meaning.
            return Err(invalid(
                "vault.passthrough",
                "cannot be combined with client certificates on the workload listener \
                 (server.tls.client_ca); use broker mode for mTLS workloads",
            ));
        }
        let dev_kv = validate_dev_kv(self.dev_store.kv, &vault, &upstream)?;
        let policy = validate_policy(self.policy, &approvers, &identities)?;
        let audit = match self.audit.mode.as_deref() {
            None | Some("strict") => AuditMode::Strict,
            Some("batched") => AuditMode::Batched,
            Some(other) => {
                return Err(invalid(
                    "audit.mode",
                    format!("{other:?} is not allowed; use \"strict\" or \"batched\""),
                ))
            }
        };
        let notify = notify::validate_notify(self.notify)?;
        Ok(Config {
            notify,
            server,
            log,
            upstream,
            cache,
            gate,
            identities,
            approvers,
            dev_secrets,
            dev_kv,
            vault,
            audit,
            policy,
        })
    }
}

fn non_empty(key: &str, value: String) -> Result<String, ConfigError> {
    if value.trim().is_empty() {
        Err(invalid(key, "must not be empty"))
    } else {
        Ok(value)
    }
}

fn validate_approvers(raw: Vec<RawApprover>) -> Result<Vec<Approver>, ConfigError> {
    let mut names = HashSet::new();
    let mut hashes = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, a) in raw.into_iter().enumerate() {
        let key = format!("approvers[{i}]");
        let name = non_empty(&format!("{key}.name"), a.name)?;
        if !names.insert(name.clone()) {
            return Err(invalid(
                format!("{key}.name"),
                format!("{name:?} is listed twice"),
            ));
        }
        let token_sha256 = match (a.token, a.token_sha256) {
            (Some(t), None) => {
                let token = resolve_secret(&format!("{key}.token"), &t)?;
                if token.expose().len() < 8 {
                    return Err(invalid(
                        format!("{key}.token"),
                        "must be at least 8 characters",
                    ));
                }
                sha256(token.expose().as_bytes())
            }
            (None, Some(h)) => {
                let bytes = hex::decode(h.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok());
                bytes.ok_or_else(|| {
                    invalid(
                        format!("{key}.token_sha256"),
                        "must be 64 hex characters (a SHA-256)",
                    )
                })?
            }
            _ => {
                return Err(invalid(
                    key,
                    "give exactly one of `token` or `token_sha256`",
                ))
            }
        };
        if !hashes.insert(token_sha256) {
            return Err(invalid(
                format!("{key}.token"),
                "the same token is used by another approver",
            ));
        }
        out.push(Approver {
            name,
            token_sha256,
            groups: a.groups,
        });
    }
    Ok(out)
}

fn validate_identities(
    raw: Vec<RawIdentity>,
    approvers: &[Approver],
) -> Result<Vec<Identity>, ConfigError> {
    let mut names = HashSet::new();
    let mut key_ids = HashSet::new();
    let mut tokens = HashSet::new();
    let mut cert_names = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let key = format!("identities[{i}]");
        let name = non_empty(&format!("{key}.name"), r.name)?;
        if !names.insert(name.clone()) {
            return Err(invalid(
                format!("{key}.name"),
                format!("{name:?} is listed twice"),
            ));
        }
        if name.starts_with("vault:") {
            return Err(invalid(
                format!("{key}.name"),
                format!("{name:?}: names starting with \"vault:\" are reserved for pass-through Vault tokens"),
            ));
        }
        // A workload can never act as an approver: keep the namespaces apart.
        if approvers.iter().any(|a| a.name == name) {
            return Err(invalid(
                format!("{key}.name"),
                format!("{name:?} is also an approver; workload identities cannot approve"),
            ));
        }
        if let Some(owner) = &r.owner {
            // A person (an approver's stable name) or a group of approvers.
            let person = approvers.iter().any(|a| &a.name == owner);
            let group = approvers.iter().any(|a| a.groups.contains(owner));
            if person && group {
                return Err(invalid(
                    format!("{key}.owner"),
                    format!("{owner:?} is both an approver and a group; rename one"),
                ));
            }
            if !person && !group {
                return Err(invalid(
                    format!("{key}.owner"),
                    format!("{owner:?} is neither a configured approver nor an approver group"),
                ));
            }
        }
        let aws = match (r.aws_access_key_id, r.aws_secret_access_key) {
            (Some(id), Some(secret)) => {
                if !id.chars().all(|c| c.is_ascii_alphanumeric()) || id.len() < 16 {
                    return Err(invalid(
                        format!("{key}.aws_access_key_id"),
                        format!("{id:?} must be at least 16 ASCII letters and digits"),
                    ));
                }
                if !key_ids.insert(id.clone()) {
                    return Err(invalid(
                        format!("{key}.aws_access_key_id"),
                        format!("{id:?} is used by another identity"),
                    ));
                }
                Some(AwsKey {
                    access_key_id: id,
                    secret_access_key: resolve_secret(
                        &format!("{key}.aws_secret_access_key"),
                        &secret,
                    )?,
                })
            }
            (None, None) => None,
            _ => {
                return Err(invalid(
                    key,
                    "aws_access_key_id and aws_secret_access_key go together",
                ))
            }
        };
        let vault_token = match r.vault_token {
            Some(t) => {
                let token = resolve_secret(&format!("{key}.vault_token"), &t)?;
                if !tokens.insert(token.expose().to_string()) {
                    return Err(invalid(
                        format!("{key}.vault_token"),
                        "used by another identity",
                    ));
                }
                if approvers
                    .iter()
                    .any(|a| a.token_sha256 == sha256(token.expose().as_bytes()))
                {
                    return Err(invalid(
                        format!("{key}.vault_token"),
                        "equals an approver's token",
                    ));
                }
                Some(token)
            }
            None => None,
        };
        let mut certificates = Vec::with_capacity(r.certificates.len());
        for (j, c) in r.certificates.iter().enumerate() {
            let ckey = format!("{key}.certificates[{j}]");
            let c = non_empty(&ckey, c.clone())?;
            if c == "*" {
                return Err(invalid(
                    ckey,
                    "\"*\" would make every client certificate this identity; name a trust domain or host",
                ));
            }
            if !c.contains(['*', '?']) && !cert_names.insert(c.clone()) {
                return Err(invalid(
                    ckey,
                    format!("{c:?} is mapped to another identity too"),
                ));
            }
            certificates.push(Glob::new(&c));
        }
        out.push(Identity {
            name,
            groups: r.groups,
            owner: r.owner,
            aws,
            vault_token,
            certificates,
        });
    }
    Ok(out)
}

fn validate_dev_secrets(
    raw: Vec<RawDevSecret>,
    upstream: &UpstreamConfig,
) -> Result<Vec<(String, SecretString)>, ConfigError> {
    if !raw.is_empty() && !matches!(upstream, UpstreamConfig::Dev) {
        return Err(invalid(
            "dev_store.secrets",
            "only used with upstream.kind = \"dev\"; remove them or switch the upstream",
        ));
    }
    let mut seen = HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, s)| {
            let key = format!("dev_store.secrets[{i}]");
            let name = non_empty(&format!("{key}.name"), s.name)?;
            if !seen.insert(name.clone()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("{name:?} is listed twice"),
                ));
            }
            Ok((name, resolve_secret(&format!("{key}.value"), &s.value)?))
        })
        .collect()
}

fn validate_vault_upstream(raw: RawVaultUpstream) -> Result<VaultUpstreamConfig, ConfigError> {
    let address = resolve_secret("upstream.vault.address", &raw.address)?
        .expose()
        .trim_end_matches('/')
        .to_string();
    if !(address.starts_with("http://") || address.starts_with("https://")) {
        return Err(invalid(
            "upstream.vault.address",
            format!("{address:?} must start with http:// or https://"),
        ));
    }
    let auth = match (raw.token, raw.approle_role_id, raw.approle_secret_id) {
        (Some(t), None, None) => VaultAuth::Token(resolve_secret("upstream.vault.token", &t)?),
        (None, Some(role), Some(secret)) => VaultAuth::AppRole {
            mount: raw.approle_mount.unwrap_or_else(|| "approle".to_string()),
            role_id: resolve_secret("upstream.vault.approle_role_id", &role)?,
            secret_id: resolve_secret("upstream.vault.approle_secret_id", &secret)?,
        },
        _ => {
            return Err(invalid(
                "upstream.vault",
                "give either `token`, or `approle_role_id` and `approle_secret_id`",
            ))
        }
    };
    Ok(VaultUpstreamConfig {
        address,
        auth,
        timeout: match &raw.timeout {
            Some(t) => duration("upstream.vault.timeout", t)?,
            None => Duration::from_secs(10),
        },
        tls: match raw.tls {
            Some(t) => transport::validate_upstream_tls("upstream.vault.tls", t)?,
            None => UpstreamTls::default(),
        },
    })
}

fn validate_vault(
    raw: RawVault,
    upstream: Option<VaultUpstreamConfig>,
) -> Result<VaultConfig, ConfigError> {
    let mounts =
        |key: &str, v: Option<Vec<String>>, default: &[&str]| -> Result<Vec<String>, ConfigError> {
            let list = v.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
            for m in &list {
                let trimmed = m.trim_matches('/');
                if trimmed.is_empty() || trimmed != m {
                    return Err(invalid(
                        format!("vault.{key}"),
                        format!("{m:?} must be a mount path without leading or trailing slashes"),
                    ));
                }
            }
            Ok(list)
        };
    let passthrough = raw.passthrough.unwrap_or(false);
    if passthrough && upstream.is_none() {
        return Err(invalid(
            "vault.passthrough",
            "pass-through needs a real Vault: configure [upstream.vault]",
        ));
    }
    Ok(VaultConfig {
        kv2_mounts: mounts("kv2_mounts", raw.kv2_mounts, &["secret"])?,
        kv1_mounts: mounts("kv1_mounts", raw.kv1_mounts, &[])?,
        pki_mounts: mounts("pki_mounts", raw.pki_mounts, &["pki*"])?
            .iter()
            .map(|m| Glob::new(m))
            .collect(),
        passthrough,
        passthrough_cache_ttl: match &raw.passthrough_cache_ttl {
            Some(t) => duration("vault.passthrough_cache_ttl", t)?,
            None => Duration::from_secs(30),
        },
        upstream,
    })
}

fn validate_dev_kv(
    raw: Vec<RawDevKv>,
    vault: &VaultConfig,
    upstream: &UpstreamConfig,
) -> Result<Vec<DevKvSeed>, ConfigError> {
    if !raw.is_empty() && (vault.upstream.is_some() || !matches!(upstream, UpstreamConfig::Dev)) {
        return Err(invalid(
            "dev_store.kv",
            "only used when the Vault front uses the dev store (upstream.kind = \"dev\" and no [upstream.vault])",
        ));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, s)| {
            let key = format!("dev_store.kv[{i}].path");
            let mount = vault
                .kv2_mounts
                .iter()
                .filter(|m| s.path.starts_with(&format!("{m}/")))
                .max_by_key(|m| m.len())
                .ok_or_else(|| {
                    invalid(
                        &key,
                        format!(
                            "{:?} is not under a KV v2 mount ({})",
                            s.path,
                            vault.kv2_mounts.join(", ")
                        ),
                    )
                })?;
            let path = s.path[mount.len() + 1..].trim_matches('/').to_string();
            if path.is_empty() {
                return Err(invalid(&key, "names a mount, not a secret"));
            }
            let data = serde_json::to_value(&s.data)
                .ok()
                .and_then(|v| v.as_object().cloned())
                .ok_or_else(|| invalid(format!("dev_store.kv[{i}].data"), "must be a table"))?;
            Ok(DevKvSeed {
                mount: mount.clone(),
                path,
                data,
            })
        })
        .collect()
}

fn validate_policy(
    raw: RawPolicy,
    approvers: &[Approver],
    identities: &[Identity],
) -> Result<Policy, ConfigError> {
    let default = match raw.default.as_str() {
        "deny" => DefaultAction::Deny,
        "allow" => DefaultAction::Allow,
        other => {
            return Err(invalid(
                "policy.default",
                format!("{other:?} is not allowed; use \"deny\" (recommended) or \"allow\""),
            ))
        }
    };
    let mut group_sizes: HashMap<&str, u32> = HashMap::new();
    for a in approvers {
        for g in &a.groups {
            *group_sizes.entry(g.as_str()).or_default() += 1;
        }
    }
    let mut names = HashSet::new();
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (i, r) in raw.rules.into_iter().enumerate() {
        let key = format!("policy.rules[{i}]");
        let name = non_empty(&format!("{key}.name"), r.name.clone())?;
        if !names.insert(name.clone()) {
            return Err(invalid(
                format!("{key}.name"),
                format!("{name:?} is used by another rule"),
            ));
        }
        for (j, who) in r.break_glass.iter().enumerate() {
            if !identities.iter().any(|i| &i.name == who) {
                return Err(invalid(
                    format!("{key}.break_glass[{j}]"),
                    format!("{who:?} is not a configured identity"),
                ));
            }
        }
        rules.push(validate_rule(&key, name, r, &group_sizes)?);
    }
    Ok(Policy::new(default, rules))
}

fn validate_rule(
    key: &str,
    name: String,
    r: RawRule,
    group_sizes: &HashMap<&str, u32>,
) -> Result<Rule, ConfigError> {
    let fronts = r
        .fronts
        .iter()
        .map(|f| match f.as_str() {
            "aws" => Ok(Front::Aws),
            "vault" => Ok(Front::Vault),
            other => Err(invalid(
                format!("{key}.fronts"),
                format!("{other:?} is not allowed; use \"aws\" or \"vault\""),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    for op in &r.operations {
        if aws_ops::classify(op).is_none() && !vault_ops::is_operation(op) {
            return Err(invalid(
                format!("{key}.operations"),
                format!(
                    "{op:?} is not a known operation; AWS: {}; Vault: {}",
                    aws_ops::names().collect::<Vec<_>>().join(", "),
                    vault_ops::OPERATIONS.join(", ")
                ),
            ));
        }
    }
    let classes = r
        .classes
        .iter()
        .map(|c| {
            OpClass::parse(c).ok_or_else(|| {
                let allowed: Vec<&str> = OpClass::ALL.iter().map(|c| c.as_str()).collect();
                invalid(
                    format!("{key}.classes"),
                    format!("{c:?} is not allowed; use one of {}", allowed.join(", ")),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let distinct_reads = match (r.min_distinct_reads, &r.reads_within) {
        (None, None) => None,
        (Some(0), _) => {
            return Err(invalid(
                format!("{key}.min_distinct_reads"),
                "must be at least 1",
            ))
        }
        (Some(count), Some(w)) => Some(VolumeCondition {
            count,
            window: duration(&format!("{key}.reads_within"), w)?,
        }),
        _ => {
            return Err(invalid(
                key,
                "min_distinct_reads and reads_within go together",
            ))
        }
    };
    let hold_keys = [
        ("approvers", r.approvers.is_some()),
        ("approvals", r.approvals.is_some()),
        ("hold_window", r.hold_window.is_some()),
        ("request_ttl", r.request_ttl.is_some()),
        ("approval_ttl", r.approval_ttl.is_some()),
        ("grant", r.grant.is_some()),
        ("grant_uses", r.grant_uses.is_some()),
        ("grant_window", r.grant_window.is_some()),
        ("factors", r.factors.is_some()),
        ("denials", r.denials.is_some()),
        ("escalate_after", r.escalate_after.is_some()),
        ("escalate_to", r.escalate_to.is_some()),
        ("escalation_can_approve", r.escalation_can_approve),
        ("break_glass", !r.break_glass.is_empty()),
    ];
    let action = match r.action.as_str() {
        "allow" | "deny" => {
            if let Some((k, _)) = hold_keys.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    format!("{key}.{k}"),
                    format!("only applies to action = \"hold\", not {:?}", r.action),
                ));
            }
            if r.action == "allow" {
                if r.reason.is_some() {
                    return Err(invalid(
                        format!("{key}.reason"),
                        "only applies to deny and hold",
                    ));
                }
                Action::Allow
            } else {
                Action::Deny {
                    reason: r
                        .reason
                        .unwrap_or_else(|| format!("denied by policy rule {name}")),
                }
            }
        }
        "hold" => Action::Hold(validate_hold(key, &r, group_sizes)?),
        other => {
            return Err(invalid(
                format!("{key}.action"),
                format!("{other:?} is not allowed; use \"allow\", \"hold\" or \"deny\""),
            ))
        }
    };
    Ok(Rule {
        name,
        identities: r.identities.iter().map(|p| Glob::new(p)).collect(),
        groups: r.groups,
        fronts,
        operations: r.operations,
        classes,
        resources: r.resources.iter().map(|p| Glob::new(p)).collect(),
        conditions: Conditions {
            min_batch: r.min_batch,
            distinct_reads,
            max_ttl: r
                .max_ttl
                .as_deref()
                .map(|t| duration(&format!("{key}.max_ttl"), t))
                .transpose()?,
            names: r.names.clone(),
            allow_wildcard_names: r.allow_wildcard_names,
            token_policies: r.token_policies.clone(),
        },
        action,
        require_justification: r.require_justification,
    })
}

fn validate_hold(
    key: &str,
    r: &RawRule,
    group_sizes: &HashMap<&str, u32>,
) -> Result<HoldSpec, ConfigError> {
    // Either one factor (`approvers` + `approvals`) or a list of `factors`.
    let raw_factors: Vec<(String, String, Option<u32>)> = match (&r.factors, &r.approvers) {
        (Some(_), Some(_)) | (Some(_), None) if r.approvals.is_some() => {
            return Err(invalid(
                format!("{key}.factors"),
                "give either approvers + approvals, or factors, not both",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                format!("{key}.factors"),
                "give either approvers + approvals, or factors, not both",
            ))
        }
        (Some(list), None) if list.is_empty() => {
            return Err(invalid(
                format!("{key}.factors"),
                "must list at least one {group, approvals}",
            ))
        }
        (Some(list), None) => list
            .iter()
            .enumerate()
            .map(|(i, f)| {
                (
                    format!("{key}.factors[{i}]"),
                    f.group.clone(),
                    Some(f.approvals),
                )
            })
            .collect(),
        (None, Some(group)) => vec![(key.to_string(), group.clone(), r.approvals)],
        (None, None) => {
            return Err(invalid(
                format!("{key}.approvers"),
                "a hold rule must name an approver group (approvers = \"...\") or factors",
            ))
        }
    };
    let mut factors = Vec::with_capacity(raw_factors.len());
    for (fkey, group, approvals) in raw_factors {
        // Fail closed: a hold nobody could approve, or approved by nobody, is a config error.
        let approvals = match approvals {
            None => NonZeroU32::MIN,
            Some(n) => NonZeroU32::new(n).ok_or_else(|| {
                invalid(
                    format!("{fkey}.approvals"),
                    "0 is not allowed: a rule that needs approval needs at least 1",
                )
            })?,
        };
        let members = group_sizes.get(group.as_str()).copied().unwrap_or(0);
        if members == 0 {
            return Err(invalid(
                format!("{fkey}.approvers"),
                format!(
                    "group {group:?} has no approvers; add approvers with groups = [{group:?}]"
                ),
            ));
        }
        if approvals.get() > members {
            return Err(invalid(
                format!("{fkey}.approvals"),
                format!(
                    "{approvals} approvals needed but group {group:?} has only {members} approver(s)"
                ),
            ));
        }
        if factors.iter().any(|f: &Factor| f.group == group) {
            return Err(invalid(
                format!("{fkey}.group"),
                format!("group {group:?} is listed twice; raise its approvals instead"),
            ));
        }
        factors.push(Factor { group, approvals });
    }
    let denials = match r.denials {
        None => NonZeroU32::MIN,
        Some(n) => NonZeroU32::new(n).ok_or_else(|| {
            invalid(
                format!("{key}.denials"),
                "0 is not allowed: at least one denial must be able to decide",
            )
        })?,
    };
    let escalation = match (&r.escalate_after, &r.escalate_to) {
        (None, None) => {
            if r.escalation_can_approve {
                return Err(invalid(
                    format!("{key}.escalation_can_approve"),
                    "needs escalate_after and escalate_to",
                ));
            }
            None
        }
        (Some(after), Some(group)) => {
            if group_sizes.get(group.as_str()).copied().unwrap_or(0) == 0 {
                return Err(invalid(
                    format!("{key}.escalate_to"),
                    format!("group {group:?} has no approvers"),
                ));
            }
            Some(Escalation {
                group: group.clone(),
                after: duration(&format!("{key}.escalate_after"), after)?,
                can_approve: r.escalation_can_approve,
            })
        }
        _ => return Err(invalid(key, "escalate_after and escalate_to go together")),
    };
    let dur = |k: &str, v: &Option<String>, default: Duration| match v {
        Some(s) => duration(&format!("{key}.{k}"), s),
        None => Ok(default),
    };
    let hold_window = dur("hold_window", &r.hold_window, Duration::from_secs(20))?;
    let request_ttl = dur("request_ttl", &r.request_ttl, Duration::from_secs(3600))?;
    let approval_ttl = dur("approval_ttl", &r.approval_ttl, Duration::from_secs(900))?;
    if request_ttl < hold_window {
        return Err(invalid(
            format!("{key}.request_ttl"),
            "must be at least hold_window: a request cannot expire while its client still waits",
        ));
    }
    let grant = match r.grant.as_deref() {
        None | Some("once") => {
            if r.grant_uses.is_some() || r.grant_window.is_some() {
                return Err(invalid(
                    format!("{key}.grant"),
                    "grant_uses and grant_window need grant = \"window\"",
                ));
            }
            GrantSpec::Once
        }
        Some("window") => {
            let uses = r.grant_uses.and_then(NonZeroU32::new).ok_or_else(|| {
                invalid(
                    format!("{key}.grant_uses"),
                    "grant = \"window\" needs grant_uses >= 1",
                )
            })?;
            let window = r.grant_window.as_ref().ok_or_else(|| {
                invalid(
                    format!("{key}.grant_window"),
                    "grant = \"window\" needs a grant_window",
                )
            })?;
            GrantSpec::Window {
                uses,
                window: duration(&format!("{key}.grant_window"), window)?,
            }
        }
        Some(other) => {
            return Err(invalid(
                format!("{key}.grant"),
                format!("{other:?} is not allowed; use \"once\" or \"window\""),
            ))
        }
    };
    if let Some(e) = &escalation {
        if e.after >= request_ttl {
            return Err(invalid(
                format!("{key}.escalate_after"),
                "must be shorter than request_ttl, or the request expires before anyone is asked",
            ));
        }
    }
    let mut factors = factors.into_iter();
    let first = factors
        .next()
        .ok_or_else(|| invalid(key, "a hold rule needs at least one approval factor"))?;
    Ok(HoldSpec {
        approver_group: first.group,
        approvals: first.approvals,
        extra_factors: factors.collect(),
        denials,
        escalation,
        break_glass: r.break_glass.clone(),
        hold_window,
        request_ttl,
        approval_ttl,
        grant,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
state = "x.db"
[[approvers]]
name = "alice"
token = "kg-alice-token"
groups = ["secops"]
[[identities]]
name = "app"
aws_access_key_id = "AKIAKEYGATETEST0001"
aws_secret_access_key = "s"
"#;

    fn check_err(extra: &str, key: &str, words: &str) {
        let text = format!("{BASE}{extra}");
        let err = Config::parse(&text, Path::new("t.toml")).expect_err("must be refused");
        let msg = err.to_string();
        assert!(msg.contains(key) && msg.contains(words), "{msg}");
    }

    #[test]
    fn shipped_configs_are_valid() {
        // demo-upstream.toml reads these; the values only need to be well-formed.
        std::env::set_var("VAULT_ADDR", "http://127.0.0.1:8200");
        std::env::set_var("VAULT_TOKEN", "root");
        for f in ["config/demo.toml", "config/demo-upstream.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
            let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert_eq!(cfg.policy.default, DefaultAction::Deny, "{f}");
        }
    }

    #[test]
    fn refusals_name_key_and_value() {
        let hold = "[[policy.rules]]\nname = \"h\"\naction = \"hold\"\napprovers = \"secops\"\n";
        check_err(
            &format!("{hold}approvals = 0\n"),
            "policy.rules[0].approvals",
            "at least 1",
        );
        check_err(
            &format!("{hold}approvals = 2\n"),
            "policy.rules[0].approvals",
            "only 1",
        );
        check_err(
            "[[policy.rules]]\nname = \"h\"\naction = \"hold\"\napprovers = \"nobody\"\n",
            "policy.rules[0].approvers",
            "no approvers",
        );
        check_err(
            "[[policy.rules]]\nname = \"a\"\naction = \"allow\"\napprovals = 1\n",
            "policy.rules[0].approvals",
            "only applies to action = \"hold\"",
        );
        check_err(
            "[[policy.rules]]\nname = \"a\"\naction = \"permit\"\n",
            "policy.rules[0].action",
            "\"permit\"",
        );
        check_err(
            "[[policy.rules]]\nname = \"a\"\naction = \"allow\"\noperations = [\"GetSecret\"]\n",
            "policy.rules[0].operations",
            "GetSecretValue",
        );
        check_err(
            &format!("{hold}hold_window = \"soon\"\n"),
            "policy.rules[0].hold_window",
            "\"soon\"",
        );
        check_err(
            "[policy]\ndefault = \"maybe\"\n",
            "policy.default",
            "\"maybe\"",
        );
        check_err("[cache]\nttl = \"1s\"\nsize = 3\n", "unknown field", "size");
    }

    #[test]
    fn the_aws_client_is_the_sdk_unless_direct_is_asked_for() {
        let client = |extra: &str| {
            let text = format!("{BASE}[upstream]\nkind = \"aws\"\n{extra}");
            match Config::parse(&text, Path::new("t.toml")).map(|c| c.upstream) {
                Ok(UpstreamConfig::Aws { client, .. }) => client,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(client(""), AwsClient::Sdk);
        assert_eq!(client("client = \"sdk\"\n"), AwsClient::Sdk);
        assert_eq!(client("client = \"direct\"\n"), AwsClient::Direct);
        check_err(
            "[upstream]\nkind = \"aws\"\nclient = \"fast\"\n",
            "upstream.client",
            "\"fast\" is not allowed",
        );
        check_err(
            "[upstream]\nclient = \"direct\"\n",
            "upstream.client",
            "only applies to kind = \"aws\"",
        );
    }

    #[test]
    fn workload_cannot_share_an_approver_name_or_token() {
        let text = BASE.replace("name = \"app\"", "name = \"alice\"");
        let err = Config::parse(&text, Path::new("t.toml")).expect_err("refused");
        assert!(
            err.to_string()
                .contains("workload identities cannot approve"),
            "{err}"
        );
        let err = Config::parse(
            &format!("{BASE}vault_token = \"kg-alice-token\"\n"),
            Path::new("t.toml"),
        )
        .expect_err("refused");
        assert!(err.to_string().contains("approver's token"), "{err}");
    }

    #[test]
    fn secret_references_resolve_from_env_and_file() {
        std::env::set_var("KEYGATE_TEST_SECRET_REF", "from-env");
        assert_eq!(
            resolve_secret("k", "env:KEYGATE_TEST_SECRET_REF")
                .map(|s| s.expose().to_string())
                .ok(),
            Some("from-env".into())
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("s");
        std::fs::write(&p, "from-file\n").expect("write");
        let got = resolve_secret("k", &format!("file:{}", p.display())).expect("file ref");
        assert_eq!(got.expose(), "from-file");
        let err =
            resolve_secret("identities[0].x", "env:KEYGATE_TEST_UNSET_VAR").expect_err("unset");
        assert!(
            err.to_string().contains("identities[0].x")
                && err.to_string().contains("KEYGATE_TEST_UNSET_VAR")
        );
    }
}
