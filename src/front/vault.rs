//! The Vault HTTP API front end, on the same workload listener as the AWS
//! one: `/v1/<path>`, `X-Vault-Token` (or `Authorization: Bearer`), the LIST
//! verb or `?list=true`. Answers are Vault's own, relayed unchanged; keygate's
//! own errors use Vault's `{"errors": [...]}` shape.
//!
//! Two identity modes: a keygate-issued token names a configured identity
//! (broker mode: keygate calls upstream with its own credentials); with
//! `vault.passthrough`, any other token is looked up upstream (`lookup-self`,
//! cached briefly) and forwarded as the workload's own.

pub mod ops;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};

use super::{
    cert_caller, once_durable, read_body, Body, BodyError, CertCaller, Fronts, RequestLog,
};
use crate::broker::{
    AccessRequest, Admission, Broker, BrokerError, Durable, Parameters, Refusal, Verdict,
};
use crate::cache::ReadCache;
use crate::config::{sha256, Identity, VaultConfig};
use crate::front::header;
use crate::policy::{Front, OpClass};
use crate::secret::{SecretBytes, SecretString};
use crate::tls::peer::CertIdentities;
use crate::upstream::vault::{CallAs, LookupError, VaultBackend, VaultCall};
use crate::upstream::UpstreamError;

/// A Vault-style error: status and one message.
#[derive(Debug)]
struct VaultError {
    status: u16,
    message: String,
}

fn verr(status: u16, message: impl Into<String>) -> VaultError {
    VaultError {
        status,
        message: message.into(),
    }
}

fn permission_denied() -> VaultError {
    verr(403, "permission denied")
}

/// Who is calling, once authenticated.
#[derive(Clone, Debug)]
enum Caller {
    Broker(Arc<Identity>),
    Passthrough(Arc<PassthroughIdentity>),
}

#[derive(Debug)]
struct PassthroughIdentity {
    name: String,
    groups: Vec<String>,
    /// Cache partition: responses fetched with one token are never served to another.
    token_hash: String,
}

impl Caller {
    fn name(&self) -> &str {
        match self {
            Caller::Broker(i) => &i.name,
            Caller::Passthrough(p) => &p.name,
        }
    }

    fn groups(&self) -> &[String] {
        match self {
            Caller::Broker(i) => &i.groups,
            Caller::Passthrough(p) => &p.groups,
        }
    }
}

pub struct VaultFront {
    /// SHA-256 of each keygate-issued token -> identity. Looking up by hash
    /// means the token itself is never compared byte by byte.
    tokens: HashMap<[u8; 32], Arc<Identity>>,
    /// Client-certificate names -> identity (mTLS).
    certs: CertIdentities,
    config: VaultConfig,
    broker: Arc<Broker>,
    backend: Option<Arc<dyn VaultBackend>>,
    cache: ReadCache,
    passthrough: Option<moka::sync::Cache<[u8; 32], Arc<PassthroughIdentity>>>,
    max_body_bytes: usize,
}

impl VaultFront {
    pub fn new(
        config: VaultConfig,
        identities: &[Arc<Identity>],
        broker: Arc<Broker>,
        backend: Option<Arc<dyn VaultBackend>>,
        cache: ReadCache,
        max_body_bytes: usize,
    ) -> VaultFront {
        let tokens = identities
            .iter()
            .filter_map(|i| {
                i.vault_token
                    .as_ref()
                    .map(|t| (sha256(t.expose().as_bytes()), i.clone()))
            })
            .collect();
        let passthrough = config.passthrough.then(|| {
            moka::sync::Cache::builder()
                .time_to_live(config.passthrough_cache_ttl)
                .max_capacity(10_000)
                .build()
        });
        VaultFront {
            tokens,
            certs: CertIdentities::new(identities),
            config,
            broker,
            backend,
            cache,
            passthrough,
            max_body_bytes,
        }
    }

    /// Answer one request.
    ///
    /// Not an `async fn`: the request moves at once into the boxed
    /// decision, which reads, authenticates and decides it and is gone
    /// before any approval wait. The future returned keeps no copy of the
    /// request, only what executing it needs, and that is all a held
    /// request keeps while it waits. The connection's `Fronts` comes back
    /// out of the decision too, so that one reference serves the whole
    /// request.
    pub fn handle(
        fronts: Arc<Fronts>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<Body>> + Send + 'static {
        let started = Instant::now();
        let deciding = Box::pin(Self::decide_logged(fronts, req));
        async move {
            let request_id = crate::request_id::next();
            let (fronts, mut log, decided) = deciding.await;
            let this = &fronts.vault;
            let answered = 'answer: {
                let (verdict, call) = match decided {
                    Ok(Decided::Admitting(verdict, call)) => (verdict, call),
                    Ok(Decided::Answered(response)) => break 'answer Ok(response),
                    Err(e) => break 'answer Err(e),
                };
                let durable = match admission(this.broker.settle(verdict).await, &mut log) {
                    Ok(durable) => durable,
                    Err(e) => break 'answer Err(e),
                };
                match once_durable(this.execute(call, &mut log), durable).await {
                    Ok(answer) => answer,
                    Err(e) => Err(store_failed(e, &mut log)),
                }
            };
            let response = answered.unwrap_or_else(|e| error_response(&e));
            let status = response.status().as_u16();
            log.emit("vault", &request_id, status, started);
            response
        }
    }

    async fn decide_logged(
        fronts: Arc<Fronts>,
        req: Request<Incoming>,
    ) -> (Arc<Fronts>, RequestLog, Result<Decided, VaultError>) {
        let mut log = RequestLog::default();
        let decided = fronts.vault.decide(req, &mut log).await;
        (fronts, log, decided)
    }

    /// Read, authenticate and decide a request: the broker's verdict, and
    /// what executing the request will need if it may go ahead.
    async fn decide(
        &self,
        req: Request<Incoming>,
        log: &mut RequestLog,
    ) -> Result<Decided, VaultError> {
        log.outcome = "rejected";
        let Some(backend) = &self.backend else {
            return Err(verr(
                404,
                "keygate: the Vault front end has no upstream configured",
            ));
        };
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().trim_start_matches("/v1/").to_string();
        if path.split('/').any(|seg| seg == ".." || seg == ".") {
            return Err(verr(400, "invalid path"));
        }
        let (method, query) =
            normalize_list(parts.method.as_str(), parts.uri.query().unwrap_or(""));
        let body = match read_body(body, self.max_body_bytes).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                return Err(verr(
                    413,
                    format!(
                        "keygate: request body exceeds {} bytes",
                        self.max_body_bytes
                    ),
                ))
            }
            Err(BodyError::Broken(e)) => {
                return Err(verr(400, format!("could not read the request body: {e}")))
            }
        };
        // Owned copies of what is used after the approval wait: nothing
        // below may point into hyper's read buffer (`parts` is dropped
        // before `admit`), or a held request would pin that buffer and the
        // connection's next read would allocate a second one.
        let get = |name: &http::HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let owned = |name: &http::HeaderName| get(name).map(str::to_owned);
        let wrap_ttl = owned(&header::VAULT_WRAP_TTL);
        let wrap_ttl = wrap_ttl.as_deref();
        let namespace = owned(&header::VAULT_NAMESPACE);
        let content_type = owned(&http::header::CONTENT_TYPE);
        let content_type = content_type.as_deref();
        let token = get(&header::VAULT_TOKEN)
            .or_else(|| get(&http::header::AUTHORIZATION).and_then(|a| a.strip_prefix("Bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(SecretString::new);
        let justification: Option<String> =
            get(&header::JUSTIFICATION).map(|s| s.chars().take(1024).collect());
        let break_glass = owned(&header::BREAK_GLASS);
        let (client, certificate) = (
            super::client_ip(&parts.extensions),
            super::cert_name(&parts.extensions),
        );

        let caller = match self
            .authenticate(
                &parts.extensions,
                backend.as_ref(),
                token.as_ref().map(SecretString::expose),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                log.outcome = "unauthenticated";
                return Err(e);
            }
        };
        log.identity = caller.name().to_string();
        if let Some(target) = path.strip_prefix("sys/internal/ui/mounts/") {
            log.outcome = "allowed";
            return self.mount_preflight(target).map(Decided::Answered);
        }
        let json_body: Option<Value> = if body.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(
                serde_json::from_slice(&body)
                    .map_err(|e| verr(400, format!("failed to parse JSON input: {e}")))?,
            )
        };
        let fields = json_body.as_ref().and_then(Value::as_object);
        let mut classified = ops::classify(&self.config, &method, &path, fields);
        // A namespace changes which secret a path names: policy, approvals and
        // the cache all see the namespaced path, so nothing carries across.
        let namespace = namespace
            .as_deref()
            .map(|n| n.trim_matches('/'))
            .filter(|n| !n.is_empty());
        let scoped_path = match namespace {
            Some(ns) => {
                for r in &mut classified.resources {
                    *r = format!("{ns}/{r}");
                }
                format!("{ns}/{path}")
            }
            None => path.clone(),
        };
        log.operation = classified.operation;
        let access = AccessRequest {
            identity: caller.name(),
            groups: caller.groups(),
            front: Front::Vault,
            operation: classified.operation,
            class: classified.class,
            resources: classified.resources.clone(),
            parameters: Parameters::Redacted(ops::redacted_parameters(
                &method,
                &scoped_path,
                &query,
                wrap_ttl,
                json_body.as_ref(),
            )),
            digest_material: digest_material(
                &method,
                &scoped_path,
                &query,
                wrap_ttl,
                json_body.as_ref(),
                &body,
            ),
            justification,
            facts: classified.facts.clone(),
            break_glass,
            client,
            certificate,
            read_only: classified.changes_nothing(wrap_ttl.is_some()),
        };
        drop(parts);
        let cache_key = self.cache_key(
            &caller,
            &classified,
            &method,
            &scoped_path,
            &query,
            wrap_ttl,
        );
        let call = Box::new(Call {
            // A reference count: `access` borrows the caller's name and groups.
            caller: caller.clone(),
            class: classified.class,
            cache_key,
            method,
            path,
            query,
            body: super::owned_body(body),
            content_type: content_type.map(str::to_owned),
            wrap_ttl: wrap_ttl.map(str::to_owned),
            namespace: namespace.map(str::to_owned),
            token,
        });
        match self.broker.decide(&access).await {
            Ok(verdict) => Ok(Decided::Admitting(verdict, call)),
            Err(e) => Err(store_failed(e, log)),
        }
    }

    /// Answer an admitted request from the cache or the upstream.
    async fn execute(
        &self,
        call: Box<Call>,
        log: &mut RequestLog,
    ) -> Result<Response<Body>, VaultError> {
        let Some(backend) = &self.backend else {
            return Err(verr(
                404,
                "keygate: the Vault front end has no upstream configured",
            ));
        };
        if let Some(key) = &call.cache_key {
            if let Some(hit) = self.cache.get("vault", key) {
                return Ok(json_ok(hit.expose().clone()));
            }
        }
        let as_ = match &call.caller {
            Caller::Broker(_) => CallAs::Keygate,
            // A pass-through caller was identified by its token, so one is here.
            Caller::Passthrough(_) => CallAs::Workload(
                call.token
                    .as_ref()
                    .map(SecretString::expose)
                    .ok_or_else(permission_denied)?,
            ),
        };
        let forward = VaultCall {
            method: &call.method,
            path: &call.path,
            query: &call.query,
            body: call.body.clone(),
            content_type: call.content_type.as_deref(),
            wrap_ttl: call.wrap_ttl.as_deref(),
            namespace: call.namespace.as_deref(),
            as_,
        };
        let reply = match backend.forward(forward).await {
            Ok(r) => r,
            Err(e) => {
                log.outcome = "upstream-unavailable";
                return relay(Err(e));
            }
        };
        if let Some(key) = call.cache_key {
            if reply.status == 200 && !is_leased(&reply.body) {
                self.cache
                    .insert("vault", key, SecretBytes::new(reply.body.clone()));
            }
        }
        if matches!(
            call.class,
            OpClass::Write | OpClass::Delete | OpClass::Privilege
        ) && reply.status < 300
        {
            self.cache.invalidate_all();
        }
        relay(Ok(reply))
    }

    /// The caller, from a client certificate, a token, or both. With a
    /// certificate and no token the certificate alone authenticates; with
    /// both, they must name the same identity.
    async fn authenticate(
        &self,
        ext: &http::Extensions,
        backend: &dyn VaultBackend,
        token: Option<&str>,
    ) -> Result<Caller, VaultError> {
        match (cert_caller(ext, &self.certs), token) {
            (CertCaller::Absent, Some(token)) => self.identify(backend, token).await,
            (CertCaller::Absent, None) => Err(permission_denied()),
            (CertCaller::Refused(why), _) => Err(verr(403, why)),
            (CertCaller::Identity(identity), None) => Ok(Caller::Broker(identity.clone())),
            (CertCaller::Identity(identity), Some(token)) => {
                let by_token = self.identify(backend, token).await?;
                if by_token.name() != identity.name {
                    return Err(verr(
                        403,
                        format!(
                            "keygate: the client certificate identifies {:?} but the token \
                             belongs to {:?}; both must name the same identity",
                            identity.name,
                            by_token.name()
                        ),
                    ));
                }
                Ok(by_token)
            }
        }
    }

    async fn identify(
        &self,
        backend: &dyn VaultBackend,
        token: &str,
    ) -> Result<Caller, VaultError> {
        let hash = sha256(token.as_bytes());
        if let Some(identity) = self.tokens.get(&hash) {
            return Ok(Caller::Broker(identity.clone()));
        }
        let Some(cache) = &self.passthrough else {
            return Err(permission_denied());
        };
        if let Some(p) = cache.get(&hash) {
            return Ok(Caller::Passthrough(p));
        }
        match backend.lookup_self(token).await {
            Ok(info) => {
                let mut groups: Vec<String> = info
                    .policies
                    .iter()
                    .map(|p| format!("vault-policy:{p}"))
                    .collect();
                if !info.entity_id.is_empty() {
                    groups.push(format!("vault-entity:{}", info.entity_id));
                }
                let p = Arc::new(PassthroughIdentity {
                    name: format!("vault:{}", info.display_name),
                    groups,
                    token_hash: hex::encode(hash),
                });
                cache.insert(hash, p.clone());
                Ok(Caller::Passthrough(p))
            }
            Err(LookupError::Denied) => Err(permission_denied()),
            Err(LookupError::Upstream(e)) => {
                tracing::warn!(error = %e, "token lookup upstream failed");
                Err(verr(502, "keygate: upstream Vault unavailable; try again"))
            }
        }
    }

    /// The mount-type preflight the `vault`/`bao` CLI makes before KV calls.
    /// keygate knows its mounts, so it answers without asking upstream.
    fn mount_preflight(&self, target: &str) -> Result<Response<Body>, VaultError> {
        let (version, mount) =
            if let Some((m, _)) = ops::split_mount(&self.config.kv2_mounts, target) {
                ("2", m)
            } else if let Some((m, _)) = ops::split_mount(&self.config.kv1_mounts, target) {
                ("1", m)
            } else {
                return Err(verr(404, String::new()));
            };
        let body = json!({
            "request_id": uuid::Uuid::new_v4().to_string(),
            "lease_id": "", "renewable": false, "lease_duration": 0,
            "data": {
                "accessor": "", "config": {}, "description": "", "external_entropy_access": false,
                "local": false, "options": {"version": version}, "path": format!("{mount}/"),
                "seal_wrap": false, "type": "kv", "uuid": ""
            },
            "wrap_info": null, "warnings": null, "auth": null
        });
        Ok(json_ok(Bytes::from(body.to_string())))
    }

    /// Plain KV reads are cached; certificates, tokens and wrapped answers never.
    fn cache_key(
        &self,
        caller: &Caller,
        c: &ops::Classified,
        method: &str,
        path: &str,
        query: &str,
        wrap: Option<&str>,
    ) -> Option<Bytes> {
        if c.operation != "kv.read" || method != "GET" || wrap.is_some() {
            return None;
        }
        let partition = match caller {
            Caller::Broker(_) => "keygate",
            Caller::Passthrough(p) => &p.token_hash,
        };
        Some(Bytes::from(format!("{partition}\n{path}?{query}")))
    }
}

/// What deciding a request came to.
enum Decided {
    /// Answered without the broker (the UI's mount preflight).
    Answered(Response<Body>),
    /// The broker's verdict, and what executing the request needs (boxed:
    /// it is larger than the AWS front end's, and inline it would set the
    /// size of every request's future, AWS ones included).
    Admitting(Verdict, Box<Call>),
}

/// What executing an admitted request needs: all that a held request
/// keeps while it waits for its approval.
struct Call {
    caller: Caller,
    class: OpClass,
    cache_key: Option<Bytes>,
    method: String,
    path: String,
    query: String,
    /// The request body (an owned copy, not a slice of hyper's buffer).
    body: Bytes,
    content_type: Option<String>,
    wrap_ttl: Option<String>,
    /// Trimmed of slashes; `None` when absent or empty.
    namespace: Option<String>,
    /// The workload's token (pass-through mode forwards it).
    token: Option<SecretString>,
}

/// Whether a settled request may go ahead (and what its answer must wait
/// for), and the log's outcome.
fn admission(
    settled: Result<(Admission, Durable), BrokerError>,
    log: &mut RequestLog,
) -> Result<Durable, VaultError> {
    match settled {
        Ok((Admission::Proceed { .. }, durable)) => {
            log.outcome = "allowed";
            Ok(durable)
        }
        Ok((Admission::Refused(r), _)) => {
            log.outcome = r.label();
            let status = match r {
                Refusal::TooManyPending { .. } => 429,
                Refusal::Overloaded | Refusal::ShuttingDown { .. } => 503,
                _ => 403,
            };
            Err(verr(status, r.message()))
        }
        Err(e) => Err(store_failed(e, log)),
    }
}

/// The decision could not be recorded: refuse, and say nothing more.
fn store_failed(e: BrokerError, log: &mut RequestLog) -> VaultError {
    log.outcome = "store-error";
    tracing::error!(error = %e, "cannot record decision; refusing");
    verr(
        500,
        "keygate: could not record the decision, so the request was refused; try again",
    )
}

/// `LIST` may arrive as the verb or as `GET ?list=true`; keygate uses the verb.
fn normalize_list(method: &str, query: &str) -> (String, String) {
    let mut is_list = method.eq_ignore_ascii_case("LIST");
    let rest: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            if *p == "list=true" && method == "GET" {
                is_list = true;
                false
            } else {
                true
            }
        })
        .collect();
    let method = if is_list {
        "LIST".to_string()
    } else {
        method.to_ascii_uppercase()
    };
    (method, rest.join("&"))
}

fn digest_material(
    method: &str,
    path: &str,
    query: &str,
    wrap: Option<&str>,
    json: Option<&Value>,
    raw: &[u8],
) -> Vec<u8> {
    let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_unstable();
    let mut out = format!(
        "{method}\n{path}\n{}\n{}\n",
        pairs.join("&"),
        wrap.unwrap_or("")
    )
    .into_bytes();
    match json {
        // serde_json's map is ordered, so this is canonical.
        Some(v) => out.extend_from_slice(v.to_string().as_bytes()),
        None => out.extend_from_slice(raw),
    }
    out
}

fn is_leased(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[serde(default)]
        lease_id: String,
        #[serde(default)]
        wrap_info: Option<Value>,
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(e) => !e.lease_id.is_empty() || e.wrap_info.is_some_and(|w| !w.is_null()),
        Err(_) => true,
    }
}

fn relay(
    reply: Result<crate::upstream::vault::VaultReply, UpstreamError>,
) -> Result<Response<Body>, VaultError> {
    match reply {
        Ok(r) => {
            let mut b = Response::builder().status(r.status);
            if let Some(ct) = &r.content_type {
                b = b.header("content-type", ct.as_str());
            }
            Ok(b.body(Full::new(r.body)).unwrap_or_default())
        }
        Err(e) => {
            tracing::warn!(error = %e, "upstream Vault unavailable");
            Err(verr(502, "keygate: upstream Vault unavailable; try again"))
        }
    }
}

fn json_ok(body: Bytes) -> Response<Body> {
    super::ok_response(body, "application/json")
}

/// The single place Vault-style errors are rendered. A 404 with no message
/// is Vault's `{"errors": []}`.
/// A Vault-shaped error for the server's own refusals.
pub fn error(status: u16, message: &str) -> Response<Body> {
    error_response(&verr(status, message))
}

fn error_response(e: &VaultError) -> Response<Body> {
    let errors: Vec<&str> = if e.message.is_empty() {
        vec![]
    } else {
        vec![e.message.as_str()]
    };
    Response::builder()
        .status(e.status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({ "errors": errors }).to_string(),
        )))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_normalized_from_verb_or_query() {
        assert_eq!(normalize_list("LIST", ""), ("LIST".into(), "".into()));
        assert_eq!(
            normalize_list("GET", "list=true"),
            ("LIST".into(), "".into())
        );
        assert_eq!(
            normalize_list("GET", "version=2"),
            ("GET".into(), "version=2".into())
        );
        assert_eq!(
            normalize_list("GET", "a=1&list=true"),
            ("LIST".into(), "a=1".into())
        );
    }

    #[test]
    fn leased_or_wrapped_answers_are_never_cached() {
        assert!(!is_leased(br#"{"lease_id":"","data":{"data":{}}}"#));
        assert!(is_leased(br#"{"lease_id":"pki/issue/x/123","data":{}}"#));
        assert!(is_leased(br#"{"lease_id":"","wrap_info":{"token":"t"}}"#));
        assert!(is_leased(b"not json"));
    }

    #[test]
    fn digest_binds_method_path_query_wrap_and_body() {
        let body = json!({"a": 1});
        let base = digest_material("GET", "secret/data/x", "b=1&a=2", None, Some(&body), b"");
        assert_eq!(
            base,
            digest_material("GET", "secret/data/x", "a=2&b=1", None, Some(&body), b"")
        );
        for other in [
            digest_material("PUT", "secret/data/x", "b=1&a=2", None, Some(&body), b""),
            digest_material("GET", "secret/data/y", "b=1&a=2", None, Some(&body), b""),
            digest_material("GET", "secret/data/x", "a=2", None, Some(&body), b""),
            digest_material(
                "GET",
                "secret/data/x",
                "b=1&a=2",
                Some("60s"),
                Some(&body),
                b"",
            ),
            digest_material(
                "GET",
                "secret/data/x",
                "b=1&a=2",
                None,
                Some(&json!({"a": 2})),
                b"",
            ),
        ] {
            assert_ne!(base, other);
        }
    }
}
