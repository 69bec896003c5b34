//! Front ends: the wire protocols workloads speak. Only `front::*` and
//! `admin` know HTTP. The workload listener routes each request to the front
//! end whose protocol it speaks.

pub mod aws;
pub mod vault;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::Either;
use futures_util::FutureExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::broker::{BrokerError, Durable};
use crate::config::Identity;
use crate::server::Rejection;
use crate::tls::peer::{CertIdentities, CertMatch, Peer};

pub type Body = Full<Bytes>;

/// Request header names the front ends read, built once: a lookup by
/// `&str` parses and validates the name again on every request.
pub mod header {
    use http::HeaderName;

    /// Why the workload needs this (shown to approvers).
    pub const JUSTIFICATION: HeaderName = HeaderName::from_static("x-keygate-justification");
    /// A break-glass reason; see `policy::HoldSpec::break_glass`.
    pub const BREAK_GLASS: HeaderName = HeaderName::from_static("x-keygate-break-glass");
    pub const AMZ_TARGET: HeaderName = HeaderName::from_static("x-amz-target");
    pub const AMZ_DATE: HeaderName = HeaderName::from_static("x-amz-date");
    pub const AMZ_CONTENT_SHA256: HeaderName = HeaderName::from_static("x-amz-content-sha256");
    pub const VAULT_TOKEN: HeaderName = HeaderName::from_static("x-vault-token");
    pub const VAULT_WRAP_TTL: HeaderName = HeaderName::from_static("x-vault-wrap-ttl");
    pub const VAULT_NAMESPACE: HeaderName = HeaderName::from_static("x-vault-namespace");
}

/// Read a request body up to `limit` bytes; `None` if it is larger (or broken).
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(BodyError::TooLarge)
        }
        Err(e) => Err(BodyError::Broken(e.to_string())),
    }
}

#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    Broken(String),
}

/// Run an admitted request's `executing` while its decision record is made
/// durable, and give its answer only once the record is: if the record
/// cannot be written, the answer (which may hold a secret) is dropped and
/// the store's error comes back instead. Nothing un-audited is answered.
///
/// Not an `async fn`, which would keep `executing` twice (its argument and
/// its await; rust-lang/rust#62958). An already durable record adds nothing
/// to `executing`; the join is boxed, so that it is not part of every
/// request's future, held ones included.
pub fn once_durable<'a, T: Send + 'a>(
    executing: impl Future<Output = T> + Send + 'a,
    durable: Durable,
) -> impl Future<Output = Result<T, BrokerError>> + Send + 'a {
    match durable {
        Durable::Done => Either::Left(executing.map(Ok)),
        recording => Either::Right(Box::pin(async move {
            // The record first: its first poll queues the commit, so the
            // fsync starts before the upstream call's own work (SigV4
            // signing and all) rather than after it.
            let (recorded, answer) = tokio::join!(biased; recording.wait(), executing);
            recorded.map(|()| answer)
        })),
    }
}

/// A copy of a request body that shares no memory with hyper's read buffer,
/// for a request that may be held. The original (a slice of that buffer) is
/// moved in and dropped here: shadowing it with `let body = copy(&body)`
/// would keep it, and so the whole buffer, alive until the handler ends.
pub(crate) fn owned_body(body: Bytes) -> Bytes {
    Bytes::copy_from_slice(&body)
}

/// A 200 answer with a fixed content type, built without `http`'s builder:
/// the builder parses the header name and checks the value on every call,
/// and this is every cache hit's answer.
pub(crate) fn ok_response(body: Bytes, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

/// The workload listener's front ends as one connection reaches them: made
/// once per connection (`app`), and cloned by each of its requests in place
/// of the front ends' own `Arc`s. Those counts are shared by every
/// connection, and with requests on both cores each clone and drop moved
/// their cache line from one core to the other (~100 ns each on the
/// benchmark VM; BENCHMARKS.md, thirteenth session).
pub struct Fronts {
    pub aws: Arc<aws::AwsFront>,
    pub vault: Arc<vault::VaultFront>,
}

/// The workload listener: Vault paths (`/v1/...`) go to the Vault front end;
/// everything else is the AWS Secrets Manager JSON protocol.
///
/// Hand a request to the front end its path names. Not an `async fn`, so
/// that the request moves straight into the front end's own future (see
/// `aws::AwsFront::handle`) instead of being kept here as well.
pub fn route(
    fronts: &Arc<Fronts>,
    req: Request<Incoming>,
) -> impl std::future::Future<Output = Response<Body>> + Send + 'static {
    if req.uri().path().starts_with("/v1/") {
        Either::Left(vault::VaultFront::handle(Arc::clone(fronts), req))
    } else {
        Either::Right(aws::AwsFront::handle(Arc::clone(fronts), req))
    }
}

/// The server's own refusals, in the wire format of the front end the
/// request was for.
pub fn reject(rejection: Rejection, path: &str) -> Response<Body> {
    let (status, message) = match rejection {
        Rejection::OverCapacity => (503, "keygate: too many open connections; try again shortly"),
        Rejection::TimedOut => (
            408,
            "keygate: the request took longer than server.limits.request_timeout",
        ),
    };
    if path.starts_with("/v1/") {
        return vault::error(status, message);
    }
    let error_type = match rejection {
        Rejection::OverCapacity => "ServiceUnavailable",
        Rejection::TimedOut => "RequestTimeout",
    };
    aws::error_response(&crate::upstream::ServiceError::new(
        status, error_type, message,
    ))
}

/// What the connection's client certificate says about the caller.
pub enum CertCaller<'a> {
    /// No client certificate on this connection.
    Absent,
    /// The certificate maps to this identity.
    Identity(&'a Arc<Identity>),
    /// A certificate was presented but names no single identity: refuse.
    Refused(String),
}

/// Map the request's client certificate (if any) to an identity.
pub fn cert_caller<'a>(ext: &http::Extensions, certs: &'a CertIdentities) -> CertCaller<'a> {
    let Some(peer) = ext.get::<Peer>() else {
        return CertCaller::Absent;
    };
    match &peer.cert {
        None => CertCaller::Absent,
        Some(Err(why)) => CertCaller::Refused(format!("keygate: {why}")),
        Some(Ok(name)) => match certs.lookup(&name.name) {
            CertMatch::Identity(i) => CertCaller::Identity(i),
            CertMatch::Unknown => CertCaller::Refused(format!(
                "keygate: the client certificate {:?} is not mapped to a keygate identity \
                 (identities[].certificates)",
                name.name
            )),
            CertMatch::Ambiguous(names) => CertCaller::Refused(format!(
                "keygate: the client certificate {:?} matches several identities ({}); \
                 make the certificates patterns distinct",
                name.name,
                names.join(", ")
            )),
        },
    }
}

/// The certificate name to record, when the identity was proven by one.
pub fn cert_name(ext: &http::Extensions) -> Option<String> {
    match &ext.get::<Peer>()?.cert {
        Some(Ok(name)) => Some(name.name.clone()),
        _ => None,
    }
}

/// The client's address as the server worked it out (trusted proxies applied).
pub fn client_ip(ext: &http::Extensions) -> Option<std::net::IpAddr> {
    ext.get::<Peer>().map(|p| p.client)
}

/// What one workload request did, for its log line. Routine allowed requests
/// log at debug (they are the hot path); everything else at info.
#[derive(Default)]
pub struct RequestLog {
    pub identity: String,
    pub operation: &'static str,
    pub outcome: &'static str,
}

impl RequestLog {
    pub fn emit(
        &self,
        front: &'static str,
        request_id: &str,
        status: u16,
        started: std::time::Instant,
    ) {
        let micros = started.elapsed().as_micros() as u64;
        let (identity, operation, outcome) = (&self.identity, &self.operation, self.outcome);
        if outcome == "allowed" {
            tracing::debug!(
                front, request_id, identity, operation, outcome, status, micros, "request"
            );
        } else {
            tracing::info!(
                front, request_id, identity, operation, outcome, status, micros, "request"
            );
        }
    }
}
