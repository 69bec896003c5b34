//! The AWS Secrets Manager front end: `POST /` with `X-Amz-Target:
//! secretsmanager.<Operation>` and JSON 1.1 bodies, SigV4-authenticated with
//! keygate-issued keys. Responses and errors are in AWS's own shapes so the
//! SDKs and the aws CLI parse them unchanged.
//!
//! `error_response` is the one place that turns failures into the wire format.

pub mod ops;
pub mod sigv4;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::Value;

use super::{
    cert_caller, header, once_durable, read_body, Body, BodyError, CertCaller, Fronts, RequestLog,
};
use crate::broker::{
    AccessRequest, Admission, Broker, BrokerError, Durable, Parameters, Refusal, Verdict,
};
use crate::cache::ReadCache;
use crate::config::Identity;
use crate::policy::{Front, OpClass};
use crate::secret::SecretBytes;
use crate::timestamp::Timestamp;
use crate::tls::peer::CertIdentities;
use crate::upstream::{SecretsUpstream, ServiceError, UpstreamError};

const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
const TARGET_PREFIX: &str = "secretsmanager.";

pub struct AwsFront {
    region: String,
    /// Access key id -> identity and its current signing key.
    /// aHash, not SipHash: looked up on every request (~200 instructions less).
    keys: ahash::HashMap<String, IssuedKey>,
    /// Client-certificate names -> identity (mTLS).
    certs: CertIdentities,
    broker: Arc<Broker>,
    upstream: Arc<dyn SecretsUpstream>,
    cache: ReadCache,
    max_body_bytes: usize,
}

/// A keygate-issued access key.
struct IssuedKey {
    identity: Arc<Identity>,
    /// The SigV4 signing key for the most recent credential date, as HMAC
    /// state already keyed with it. Deriving one costs four HMACs and it
    /// changes only at midnight UTC, so each request just loads this (no
    /// lock, no allocation), compares dates and copies the state.
    signing: ArcSwapOption<SigningKey>,
}

struct SigningKey {
    date: String,
    mac: sigv4::SigningMac,
}

impl IssuedKey {
    fn signing_key(&self, secret: &str, date: &str, region: &str) -> sigv4::SigningMac {
        if let Some(current) = self.signing.load().as_deref() {
            if current.date == date {
                return current.mac.clone();
            }
        }
        let mac =
            sigv4::SigningMac::new(&sigv4::signing_key(secret, date, region, "secretsmanager"));
        // Around midnight, requests signed for two dates may alternate;
        // each then derives its key, which is correct, only slower.
        self.signing.store(Some(Arc::new(SigningKey {
            date: date.to_string(),
            mac: mac.clone(),
        })));
        mac
    }
}

impl AwsFront {
    pub fn new(
        region: String,
        identities: &[Arc<Identity>],
        broker: Arc<Broker>,
        upstream: Arc<dyn SecretsUpstream>,
        cache: ReadCache,
        max_body_bytes: usize,
    ) -> AwsFront {
        let keys = identities
            .iter()
            .filter_map(|i| {
                let k = i.aws.as_ref()?;
                let issued = IssuedKey {
                    identity: i.clone(),
                    signing: ArcSwapOption::empty(),
                };
                Some((k.access_key_id.clone(), issued))
            })
            .collect();
        AwsFront {
            region,
            keys,
            certs: CertIdentities::new(identities),
            broker,
            upstream,
            cache,
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
            let this = &fronts.aws;
            let answered = 'answer: {
                let (verdict, call) = match decided {
                    Ok(decided) => decided,
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
            log.emit("aws", &request_id, status, started);
            with_request_id(response, &request_id)
        }
    }

    async fn decide_logged(
        fronts: Arc<Fronts>,
        req: Request<Incoming>,
    ) -> (
        Arc<Fronts>,
        RequestLog,
        Result<(Verdict, Call), ServiceError>,
    ) {
        let mut log = RequestLog::default();
        let decided = fronts.aws.decide(req, &mut log).await;
        (fronts, log, decided)
    }

    /// Read, authenticate and decide a request: the broker's verdict, and
    /// what executing the request will need if it may go ahead.
    async fn decide(
        &self,
        req: Request<Incoming>,
        log: &mut RequestLog,
    ) -> Result<(Verdict, Call), ServiceError> {
        let (parts, body) = req.into_parts();
        macro_rules! fail {
            ($status:expr, $ty:expr, $msg:expr) => {{
                log.outcome = "rejected";
                return Err(ServiceError::new($status, $ty, $msg));
            }};
        }
        if parts.method != http::Method::POST {
            fail!(
                400,
                "UnknownOperationException",
                "keygate: the AWS front end accepts POST / only"
            );
        }
        let body = match read_body(body, self.max_body_bytes).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => fail!(
                413,
                "RequestEntityTooLargeException",
                format!(
                    "keygate: request body exceeds {} bytes",
                    self.max_body_bytes
                )
            ),
            Err(BodyError::Broken(e)) => fail!(
                400,
                "SerializationException",
                format!("keygate: could not read the request body: {e}")
            ),
        };
        let identity = match self.authenticate(&parts, &body) {
            Ok(i) => i,
            Err(e) => {
                log.outcome = "unauthenticated";
                return Err(e);
            }
        };
        log.identity = identity.name.clone();
        let target = parts
            .headers
            .get(header::AMZ_TARGET)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let Some((operation, class)) = target.strip_prefix(TARGET_PREFIX).and_then(ops::lookup)
        else {
            fail!(
                400,
                "UnknownOperationException",
                format!("keygate: unknown operation {target:?}")
            );
        };
        log.operation = operation;
        let fields = match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) => m,
            Ok(_) => fail!(
                400,
                "SerializationException",
                "keygate: the request body must be a JSON object"
            ),
            Err(e) => fail!(
                400,
                "SerializationException",
                format!("keygate: the request body is not valid JSON: {e}")
            ),
        };
        let justification = parts
            .headers
            .get(header::JUSTIFICATION)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(1024).collect());
        let material = ops::digest_material(&fields);
        let access = AccessRequest {
            identity: &identity.name,
            groups: &identity.groups,
            front: Front::Aws,
            operation,
            class,
            resources: ops::resources(&fields),
            parameters: Parameters::Deferred(fields, ops::redacted_parameters),
            digest_material: material.clone(),
            justification,
            facts: crate::policy::Facts::default(),
            break_glass: parts
                .headers
                .get(header::BREAK_GLASS)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            client: super::client_ip(&parts.extensions),
            certificate: super::cert_name(&parts.extensions),
            read_only: !ops::changes_state(class),
        };
        // Nothing below may point into hyper's read buffer: a request held
        // for approval would otherwise pin that buffer, and hyper's read for
        // the connection's next request would allocate a second one.
        drop(parts);
        let call = Call {
            operation,
            class,
            body: super::owned_body(body),
            cache_key: Bytes::from(material),
        };
        match self.broker.decide(&access).await {
            Ok(verdict) => Ok((verdict, call)),
            Err(e) => Err(store_failed(e, log)),
        }
    }

    /// Answer an admitted request from the cache or the upstream.
    async fn execute(
        &self,
        call: Call,
        log: &mut RequestLog,
    ) -> Result<Response<Body>, ServiceError> {
        let Call {
            operation,
            class,
            body,
            cache_key,
        } = call;
        if ops::is_cacheable(operation) {
            if let Some(hit) = self.cache.get(operation, &cache_key) {
                return Ok(ok_response(hit.expose().clone()));
            }
        }
        match self.upstream.call(operation, body).await {
            Ok(out) => {
                if ops::is_cacheable(operation) {
                    self.cache
                        .insert(operation, cache_key, SecretBytes::new(out.clone()));
                } else if ops::changes_state(class) {
                    self.cache.invalidate_all();
                }
                Ok(ok_response(out))
            }
            Err(UpstreamError::Service(e)) => {
                log.outcome = "upstream-error";
                if ops::changes_state(class) {
                    // A failed write may still have changed something upstream.
                    self.cache.invalidate_all();
                }
                Err(e)
            }
            Err(UpstreamError::Unavailable(detail)) => {
                log.outcome = "upstream-unavailable";
                tracing::warn!(upstream = %self.upstream.describe(), %detail, "upstream unavailable");
                Err(ServiceError::new(
                    503,
                    "ServiceUnavailable",
                    "keygate: the upstream secret store is unavailable; try again",
                ))
            }
        }
    }

    /// The caller's identity, from a client certificate, SigV4, or both.
    ///
    /// With a certificate: a SigV4 signature by a keygate-issued key is still
    /// verified and must name the same identity; a signature by a key keygate
    /// never issued (SDKs insist on some credentials) or none at all leaves
    /// the certificate as the only proof.
    fn authenticate(
        &self,
        parts: &http::request::Parts,
        body: &[u8],
    ) -> Result<&Arc<Identity>, ServiceError> {
        let by_cert = match cert_caller(&parts.extensions, &self.certs) {
            CertCaller::Absent => return self.authenticate_sigv4(parts, body),
            CertCaller::Refused(why) => {
                return Err(ServiceError::new(403, "AccessDeniedException", why))
            }
            CertCaller::Identity(identity) => identity,
        };
        let issued_key = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| sigv4::parse_authorization(h).ok())
            .is_some_and(|auth| self.keys.contains_key(auth.access_key_id));
        if !issued_key {
            return Ok(by_cert);
        }
        let by_signature = self.authenticate_sigv4(parts, body)?;
        if by_signature.name != by_cert.name {
            return Err(ServiceError::new(
                403,
                "AccessDeniedException",
                format!(
                    "keygate: the client certificate identifies {:?} but the signing key \
                     belongs to {:?}; both must name the same identity",
                    by_cert.name, by_signature.name
                ),
            ));
        }
        Ok(by_cert)
    }

    fn authenticate_sigv4(
        &self,
        parts: &http::request::Parts,
        body: &[u8],
    ) -> Result<&Arc<Identity>, ServiceError> {
        let Some(header) = parts.headers.get(http::header::AUTHORIZATION) else {
            return Err(ServiceError::new(
                403,
                "MissingAuthenticationTokenException",
                sigv4::SigError::Missing.to_string(),
            ));
        };
        let header = header.to_str().map_err(|_| {
            ServiceError::new(
                400,
                "IncompleteSignatureException",
                "Authorization header is not ASCII",
            )
        })?;
        let auth = sigv4::parse_authorization(header).map_err(sig_error)?;
        let issued = self
            .keys
            .get(auth.access_key_id)
            .ok_or_else(|| sig_error(sigv4::SigError::UnknownKey))?;
        let identity = &issued.identity;
        let key = identity
            .aws
            .as_ref()
            .ok_or_else(|| sig_error(sigv4::SigError::UnknownKey))?;
        let req = sigv4::RequestParts {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            headers: &parts.headers,
            authority: parts.uri.authority().map(|a| a.as_str()),
            body,
        };
        let signing_key =
            issued.signing_key(key.secret_access_key.expose(), auth.date, &self.region);
        sigv4::verify(
            &auth,
            &req,
            signing_key,
            &self.region,
            "secretsmanager",
            Timestamp::now(),
        )
        .map_err(sig_error)?;
        Ok(identity)
    }
}

fn sig_error(e: sigv4::SigError) -> ServiceError {
    use sigv4::SigError::*;
    let ty = match &e {
        Missing => "MissingAuthenticationTokenException",
        Incomplete(_) => "IncompleteSignatureException",
        UnknownKey => "UnrecognizedClientException",
        Mismatch | Expired { .. } | Future { .. } | Region(_) | Service => {
            "InvalidSignatureException"
        }
    };
    let status = if matches!(e, Missing) { 403 } else { 400 };
    ServiceError::new(status, ty, e.to_string())
}

/// What executing an admitted request needs: all that a held request
/// keeps while it waits for its approval.
struct Call {
    operation: &'static str,
    class: OpClass,
    /// The request body (an owned copy, not a slice of hyper's buffer).
    body: Bytes,
    cache_key: Bytes,
}

/// Whether a settled request may go ahead (and what its answer must wait
/// for), and the log's outcome.
fn admission(
    settled: Result<(Admission, Durable), BrokerError>,
    log: &mut RequestLog,
) -> Result<Durable, ServiceError> {
    match settled {
        Ok((Admission::Proceed { .. }, durable)) => {
            log.outcome = "allowed";
            Ok(durable)
        }
        Ok((Admission::Refused(r), _)) => {
            log.outcome = r.label();
            Err(refusal_error(&r))
        }
        Err(e) => Err(store_failed(e, log)),
    }
}

/// The decision could not be recorded: refuse, and say nothing more.
fn store_failed(e: BrokerError, log: &mut RequestLog) -> ServiceError {
    log.outcome = "store-error";
    tracing::error!(error = %e, "cannot record decision; refusing");
    ServiceError::new(
        500,
        "InternalServiceError",
        "keygate: could not record the decision, so the request was refused; try again",
    )
}

fn refusal_error(r: &Refusal) -> ServiceError {
    match r {
        Refusal::TooManyPending { .. } => {
            ServiceError::new(429, "ThrottlingException", r.message())
        }
        Refusal::Overloaded | Refusal::ShuttingDown { .. } => {
            ServiceError::new(503, "ServiceUnavailable", r.message())
        }
        _ => ServiceError::new(400, "AccessDeniedException", r.message()),
    }
}

fn ok_response(body: Bytes) -> Response<Body> {
    super::ok_response(body, CONTENT_TYPE)
}

/// The single place AWS-style errors are rendered.
pub fn error_response(e: &ServiceError) -> Response<Body> {
    let body = serde_json::json!({"__type": e.error_type, "message": e.message});
    Response::builder()
        .status(e.status)
        .header("content-type", CONTENT_TYPE)
        .header("x-amzn-errortype", e.error_type.as_str())
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

/// Built once: a custom header name from a string is parsed on every use.
const REQUEST_ID_HEADER: http::HeaderName = http::HeaderName::from_static("x-amzn-requestid");

fn with_request_id(mut r: Response<Body>, id: &str) -> Response<Body> {
    if let Ok(v) = http::HeaderValue::from_str(id) {
        r.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    r
}
