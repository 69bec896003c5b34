//! Secret stores keygate forwards to. Only `upstream::*` knows the AWS SDK
//! (and, later, Vault). An upstream takes an operation and its JSON request
//! body, and returns the JSON response body unchanged, so what the workload
//! receives is exactly what the store answered.

pub mod aws;
pub mod aws_direct;
pub mod aws_http;
pub mod dev;
pub mod dev_kv;
pub mod tls;
pub mod vault;

use async_trait::async_trait;
use bytes::Bytes;

/// An error in the AWS JSON protocol's shape: HTTP status, `__type` and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    pub status: u16,
    pub error_type: String,
    pub message: String,
}

impl ServiceError {
    pub fn new(status: u16, error_type: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            error_type: error_type.to_string(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The store answered with an error: relay it as it is.
    #[error("{} {}: {}", .0.status, .0.error_type, .0.message)]
    Service(ServiceError),
    /// The store could not be reached in time, or its answer was unreadable.
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait SecretsUpstream: Send + Sync + 'static {
    /// Run `operation` (an `X-Amz-Target` suffix) with the JSON `body`.
    async fn call(&self, operation: &str, body: Bytes) -> Result<Bytes, UpstreamError>;
    /// A name for logs and readiness output.
    fn describe(&self) -> String;
}

#[async_trait]
impl SecretsUpstream for dev::DevStore {
    async fn call(&self, operation: &str, body: Bytes) -> Result<Bytes, UpstreamError> {
        let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            UpstreamError::Service(ServiceError::new(
                400,
                "SerializationException",
                e.to_string(),
            ))
        })?;
        let out = dev::DevStore::call(self, operation, &json, std::time::SystemTime::now())
            .map_err(UpstreamError::Service)?;
        serde_json::to_vec(&out)
            .map(Bytes::from)
            .map_err(|e| UpstreamError::Unavailable(e.to_string()))
    }

    fn describe(&self) -> String {
        "embedded dev store (NOT FOR PRODUCTION)".to_string()
    }
}
