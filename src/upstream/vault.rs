//! Vault / OpenBao upstreams for the Vault front end.
//!
//! `RemoteVault` authenticates with vaultrs (a static token, or an AppRole
//! login renewed in the background) and forwards requests generically with
//! the HTTP client vaultrs is built on, so every path (KV, PKI, tokens, the
//! long tail) is relayed with Vault's own status and body. Timeouts and a
//! response size cap keep an unhealthy Vault from hanging clients.
//! `DevVault` serves KV v2 mounts from the embedded dev store.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use vaultrs::client::VaultClient;

use super::dev_kv::DevKv;
use super::tls::{vault_http, VaultTls};
use super::UpstreamError;
use crate::config::{VaultAuth, VaultUpstreamConfig};
use crate::secret::SecretString;

/// Upstream answers larger than this are refused rather than buffered.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Whose token the upstream call carries.
#[derive(Clone, Copy, Debug)]
pub enum CallAs<'a> {
    /// Broker mode: keygate's own upstream credentials.
    Keygate,
    /// Pass-through mode: the workload's own Vault token.
    Workload(&'a str),
}

/// One request to forward.
#[derive(Debug)]
pub struct VaultCall<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub body: Bytes,
    pub content_type: Option<&'a str>,
    pub wrap_ttl: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub as_: CallAs<'a>,
}

/// Vault's answer, relayed as is.
#[derive(Debug, Clone)]
pub struct VaultReply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// What `lookup-self` says of a workload's token (pass-through mode).
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub display_name: String,
    pub policies: Vec<String>,
    pub entity_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("the token is not valid upstream")]
    Denied,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

#[async_trait]
pub trait VaultBackend: Send + Sync + 'static {
    async fn forward(&self, call: VaultCall<'_>) -> Result<VaultReply, UpstreamError>;
    async fn lookup_self(&self, token: &str) -> Result<TokenInfo, LookupError>;
    fn describe(&self) -> String;
}

pub struct RemoteVault {
    address: String,
    http: reqwest::Client,
    /// The same TLS settings as `http`, for vaultrs clients.
    tls: VaultTls,
    timeout: Duration,
    /// keygate's current upstream token; replaced by AppRole renewal.
    token: Arc<RwLock<SecretString>>,
}

impl RemoteVault {
    /// Log in if configured for AppRole (failing start-up if Vault refuses),
    /// and start background renewal.
    pub async fn connect(config: &VaultUpstreamConfig) -> Result<RemoteVault, UpstreamError> {
        let base = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2).min(config.timeout))
            .timeout(config.timeout);
        let (http, tls) = vault_http(&config.tls, base).map_err(UpstreamError::Unavailable)?;
        if config.tls.insecure_skip_verify {
            tracing::warn!(address = %config.address, "upstream.vault.tls.insecure_skip_verify is on: Vault's certificate is NOT verified (development only)");
        }
        let token = match &config.auth {
            VaultAuth::Token(t) => t.clone(),
            VaultAuth::AppRole {
                mount,
                role_id,
                secret_id,
            } => {
                let (token, lease) = approle_login(
                    &config.address,
                    config.timeout,
                    &tls,
                    mount,
                    role_id,
                    secret_id,
                )
                .await?;
                let token = Arc::new(RwLock::new(token));
                spawn_renewal(config.clone(), tls.clone(), token.clone(), lease);
                return Ok(RemoteVault {
                    address: config.address.clone(),
                    http,
                    tls,
                    timeout: config.timeout,
                    token,
                });
            }
        };
        Ok(RemoteVault {
            address: config.address.clone(),
            http,
            tls,
            timeout: config.timeout,
            token: Arc::new(RwLock::new(token)),
        })
    }

    fn current_token(&self) -> String {
        self.token
            .read()
            .map(|t| t.expose().to_string())
            .unwrap_or_default()
    }
}

fn vaultrs_client(
    address: &str,
    token: &str,
    timeout: Duration,
    tls: &VaultTls,
) -> Result<VaultClient, UpstreamError> {
    super::tls::vaultrs_client(address, token, timeout, tls).map_err(UpstreamError::Unavailable)
}

async fn approle_login(
    address: &str,
    timeout: Duration,
    tls: &VaultTls,
    mount: &str,
    role_id: &SecretString,
    secret_id: &SecretString,
) -> Result<(SecretString, Duration), UpstreamError> {
    let client = vaultrs_client(address, "", timeout, tls)?;
    let auth = vaultrs::auth::approle::login(&client, mount, role_id.expose(), secret_id.expose())
        .await
        .map_err(|e| {
            UpstreamError::Unavailable(format!(
                "AppRole login at {mount} failed: {}",
                crate::error_chain::with_causes(&e)
            ))
        })?;
    Ok((
        SecretString::new(auth.client_token),
        Duration::from_secs(auth.lease_duration),
    ))
}

/// Renew keygate's AppRole token at half its lease; log in again if renewal fails.
fn spawn_renewal(
    config: VaultUpstreamConfig,
    tls: VaultTls,
    token: Arc<RwLock<SecretString>>,
    mut lease: Duration,
) {
    let VaultAuth::AppRole {
        mount,
        role_id,
        secret_id,
    } = config.auth.clone()
    else {
        return;
    };
    tokio::spawn(async move {
        loop {
            // A zero lease means a non-expiring token: nothing to renew.
            if lease.is_zero() {
                return;
            }
            tokio::time::sleep((lease / 2).max(Duration::from_secs(1))).await;
            let current = token
                .read()
                .map(|t| t.expose().to_string())
                .unwrap_or_default();
            let renewed = match vaultrs_client(&config.address, &current, config.timeout, &tls) {
                Ok(c) => vaultrs::token::renew_self(&c, None).await.ok(),
                Err(_) => None,
            };
            match renewed {
                Some(auth) => {
                    lease = Duration::from_secs(auth.lease_duration);
                    tracing::debug!(
                        lease_secs = auth.lease_duration,
                        "renewed keygate's Vault token"
                    );
                }
                None => match approle_login(
                    &config.address,
                    config.timeout,
                    &tls,
                    &mount,
                    &role_id,
                    &secret_id,
                )
                .await
                {
                    Ok((t, l)) => {
                        if let Ok(mut slot) = token.write() {
                            *slot = t;
                        }
                        lease = l;
                        tracing::info!("logged in to Vault again with AppRole");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot renew or log in to Vault; retrying in 5s");
                        lease = Duration::from_secs(10);
                    }
                },
            }
        }
    });
}

#[async_trait]
impl VaultBackend for RemoteVault {
    async fn forward(&self, call: VaultCall<'_>) -> Result<VaultReply, UpstreamError> {
        let method = reqwest::Method::from_bytes(call.method.as_bytes())
            .map_err(|_| UpstreamError::Unavailable(format!("bad method {}", call.method)))?;
        let mut url = format!("{}/v1/{}", self.address, call.path);
        if !call.query.is_empty() {
            url.push('?');
            url.push_str(call.query);
        }
        let token = match call.as_ {
            CallAs::Keygate => self.current_token(),
            CallAs::Workload(t) => t.to_string(),
        };
        let mut req = self
            .http
            .request(method, &url)
            .header("X-Vault-Token", token)
            .header("X-Vault-Request", "true");
        if let Some(ct) = call.content_type {
            req = req.header("Content-Type", ct);
        }
        if let Some(w) = call.wrap_ttl {
            req = req.header("X-Vault-Wrap-TTL", w);
        }
        if let Some(ns) = call.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if !call.body.is_empty() {
            req = req.body(call.body);
        }
        let unavailable = |e| UpstreamError::Unavailable(crate::error_chain::describe_reqwest(e));
        // Bodies are in memory, so the request can always be cloned.
        let retry = req.try_clone();
        let mut resp = match req.send().await {
            Ok(resp) => resp,
            // Sent once more, on a new connection, only when the first was
            // never written (see `never_sent`). A Vault that refuses
            // keygate's TLS 1.3 client certificate fails the same way
            // again, usually now with its alert in the error.
            Err(e) if crate::error_chain::never_sent(&e) => match retry {
                Some(again) => again.send().await.map_err(unavailable)?,
                None => return Err(unavailable(e)),
            },
            Err(e) => return Err(unavailable(e)),
        };
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| UpstreamError::Unavailable(crate::error_chain::describe_reqwest(e)))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(UpstreamError::Unavailable(format!(
                    "upstream answer exceeds {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(VaultReply {
            status,
            content_type,
            body: Bytes::from(body),
        })
    }

    async fn lookup_self(&self, token: &str) -> Result<TokenInfo, LookupError> {
        let client = vaultrs_client(&self.address, token, self.timeout, &self.tls)?;
        match vaultrs::token::lookup_self(&client).await {
            Ok(info) => Ok(TokenInfo {
                display_name: info.display_name,
                policies: info.policies,
                entity_id: info.entity_id,
            }),
            Err(vaultrs::error::ClientError::APIError {
                code: 400 | 401 | 403,
                ..
            }) => Err(LookupError::Denied),
            Err(e) => Err(LookupError::Upstream(UpstreamError::Unavailable(format!(
                "lookup-self: {e}"
            )))),
        }
    }

    fn describe(&self) -> String {
        format!("Vault at {}", self.address)
    }
}

/// The embedded dev store's Vault side: KV v2 mounts only.
pub struct DevVault {
    mounts: Vec<DevKv>,
}

impl DevVault {
    pub fn new(mounts: Vec<DevKv>) -> DevVault {
        DevVault { mounts }
    }
}

fn json_reply(status: u16, body: Option<serde_json::Value>) -> VaultReply {
    VaultReply {
        status,
        content_type: body.as_ref().map(|_| "application/json".to_string()),
        body: body.map(|b| Bytes::from(b.to_string())).unwrap_or_default(),
    }
}

#[async_trait]
impl VaultBackend for DevVault {
    async fn forward(&self, call: VaultCall<'_>) -> Result<VaultReply, UpstreamError> {
        if call.wrap_ttl.is_some() {
            return Ok(json_reply(
                400,
                Some(
                    serde_json::json!({"errors": ["response wrapping is not supported by the keygate dev store"]}),
                ),
            ));
        }
        let kv = self
            .mounts
            .iter()
            .find(|m| call.path == m.mount() || call.path.starts_with(&format!("{}/", m.mount())));
        let Some(kv) = kv else {
            return Ok(json_reply(
                404,
                Some(
                    serde_json::json!({"errors": [format!("no handler for route \"{}\": the keygate dev store serves KV v2 mounts only", call.path)]}),
                ),
            ));
        };
        let rest = call.path[kv.mount().len()..].trim_start_matches('/');
        let body = if call.body.is_empty() {
            None
        } else {
            match serde_json::from_slice::<serde_json::Value>(&call.body) {
                Ok(v) => Some(v),
                Err(e) => {
                    return Ok(json_reply(
                        400,
                        Some(
                            serde_json::json!({"errors": [format!("failed to parse JSON input: {e}")]}),
                        ),
                    ));
                }
            }
        };
        let reply = kv.call(
            call.method,
            rest,
            call.query,
            body.as_ref(),
            std::time::SystemTime::now(),
        );
        Ok(json_reply(reply.status, reply.body))
    }

    async fn lookup_self(&self, _token: &str) -> Result<TokenInfo, LookupError> {
        Err(LookupError::Denied)
    }

    fn describe(&self) -> String {
        let names: Vec<&str> = self.mounts.iter().map(DevKv::mount).collect();
        format!(
            "embedded dev store, KV v2 mounts {} (NOT FOR PRODUCTION)",
            names.join(", ")
        )
    }
}
