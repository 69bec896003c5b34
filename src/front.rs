//! Front ends: the wire protocols workloads speak. Only `front::*` and
//! `admin` know HTTP. The workload listener routes each request to the front
//! end whose protocol it speaks.

pub mod aws;
pub mod vault;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};

pub type Body = Full<Bytes>;

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

/// The workload listener: Vault paths (`/v1/...`) go to the Vault front end;
/// everything else is the AWS Secrets Manager JSON protocol.
pub async fn route(
    aws: &aws::AwsFront,
    vault: &vault::VaultFront,
    req: Request<Incoming>,
) -> Response<Body> {
    if req.uri().path().starts_with("/v1/") {
        return vault.handle(req).await;
    }
    aws.handle(req).await
}

/// What one workload request did, for its log line. Routine allowed requests
/// log at debug (they are the hot path); everything else at info.
#[derive(Default)]
pub struct RequestLog {
    pub identity: String,
    pub operation: String,
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
