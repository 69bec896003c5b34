//! A small client for the admin API, used by `keygate requests ...`.

use std::path::Path;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the admin API at {addr}: {message}")]
    Unreachable { addr: String, message: String },
    #[error("{message} (HTTP {status})")]
    Api { status: u16, message: String },
    #[error("invalid request: {0}")]
    Invalid(String),
}

pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// A client for `addr` (`host:port`, `http://…` or `https://…`), trusting
    /// the system roots.
    pub fn new(addr: &str, token: &str) -> AdminClient {
        Self::build(addr, token, reqwest::Client::builder()).unwrap_or_else(|_| AdminClient {
            base: base_url(addr),
            token: token.to_string(),
            http: reqwest::Client::new(),
        })
    }

    /// Like `new`, also trusting the CA certificates in `ca` (PEM), for an
    /// admin listener with a private CA (`[server.admin_tls]`).
    pub fn with_ca(addr: &str, token: &str, ca: &Path) -> Result<AdminClient, ClientError> {
        let pem = std::fs::read(ca)
            .map_err(|e| ClientError::Invalid(format!("cannot read {}: {e}", ca.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ClientError::Invalid(format!("{}: {e}", ca.display())))?;
        Self::build(
            addr,
            token,
            reqwest::Client::builder().tls_certs_merge(certs),
        )
    }

    fn build(
        addr: &str,
        token: &str,
        builder: reqwest::ClientBuilder,
    ) -> Result<AdminClient, ClientError> {
        let http = builder
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| ClientError::Invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(AdminClient {
            base: base_url(addr),
            token: token.to_string(),
            http,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value, ClientError> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    fn unreachable(&self, e: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            addr: self.base.clone(),
            message: crate::error_chain::with_causes(&e.without_url()),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{}", self.base, path);
        let resp = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body.map(|b| b.to_string()).unwrap_or_default())
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status >= 400 {
            let message = value["error"]["message"]
                .as_str()
                .unwrap_or("request failed")
                .to_string();
            return Err(ClientError::Api { status, message });
        }
        Ok(value)
    }
}

impl AdminClient {
    /// GET `path` and hand each chunk of the (streaming) body to `on_chunk`
    /// until the stream ends or `on_chunk` returns false.
    pub async fn stream(
        &self,
        path: &str,
        mut on_chunk: impl FnMut(&str) -> bool,
    ) -> Result<(), ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut resp = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .header("accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(ClientError::Api {
                status,
                message: value["error"]["message"]
                    .as_str()
                    .unwrap_or("request failed")
                    .to_string(),
            });
        }
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.unreachable(e))? {
            if !on_chunk(&String::from_utf8_lossy(&chunk)) {
                break;
            }
        }
        Ok(())
    }
}

fn base_url(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", addr.trim_end_matches('/'))
    }
}
