//! An `HttpClient` for the AWS SDK with keygate's own rustls `ClientConfig`.
//!
//! aws-smithy-http-client 1.5.2 can only add trust roots (`TlsContext` /
//! `TrustStore`); its rustls config is hard-wired to `with_no_client_auth()`
//! and the hook that accepts a foreign connector (`wrap_connector`) is
//! `pub(crate)`. So keygate implements the public `HttpClient` /
//! `HttpConnector` traits over hyper-util + hyper-rustls itself.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector as TcpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::tls::rustls_client_config;
use crate::config::UpstreamTls;

type BoxError = Box<dyn StdError + Send + Sync>;

/// `None` when `tls` is all defaults: keep the SDK's own HTTP client.
pub fn aws_http_client(tls: &UpstreamTls) -> Result<Option<SharedHttpClient>, String> {
    if tls.is_default() {
        return Ok(None);
    }
    let config = Arc::new(rustls_client_config(tls).map_err(|e| e.to_string())?);
    Ok(Some(SharedHttpClient::new(TlsHttpClient {
        config,
        connectors: Mutex::new(HashMap::new()),
    })))
}

/// A pooled hyper client with keygate's TLS settings, for the `direct`
/// AWS client (`upstream::aws_direct`). For a plain-HTTP endpoint (a local
/// emulator) no trust roots are needed, and none are loaded: a container
/// without a CA store can still reach one.
pub fn hyper_client<B>(
    tls: &UpstreamTls,
    https: bool,
    connect_timeout: Duration,
) -> Result<HyperClient<ConnectTimeout, B>, String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    let config = if https {
        rustls_client_config(tls).map_err(|e| e.to_string())?
    } else {
        rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    };
    Ok(pooled_client(Arc::new(config), Some(connect_timeout)))
}

fn pooled_client<B>(
    config: Arc<rustls::ClientConfig>,
    connect_timeout: Option<Duration>,
) -> HyperClient<ConnectTimeout, B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    let mut tcp = TcpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    let https = HttpsConnector::from((tcp, config));
    hyper_util::client::legacy::Builder::new(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(ConnectTimeout {
            inner: https,
            timeout: connect_timeout,
        })
}

/// (connect timeout, read timeout) from the SDK's `HttpConnectorSettings`.
type TimeoutKey = (Option<Duration>, Option<Duration>);

/// One connector (hyper client + pool) per distinct timeout setting, as the
/// `HttpClient` contract asks.
#[derive(Debug)]
struct TlsHttpClient {
    config: Arc<rustls::ClientConfig>,
    connectors: Mutex<HashMap<TimeoutKey, SharedHttpConnector>>,
}

impl HttpClient for TlsHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let key = (settings.connect_timeout(), settings.read_timeout());
        let mut connectors = self.connectors.lock().unwrap_or_else(|p| p.into_inner());
        connectors
            .entry(key)
            .or_insert_with(|| {
                SharedHttpConnector::new(TlsConnector {
                    client: pooled_client(self.config.clone(), key.0),
                    read_timeout: key.1,
                })
            })
            .clone()
    }
}

#[derive(Clone)]
struct TlsConnector {
    client: HyperClient<ConnectTimeout, SdkBody>,
    read_timeout: Option<Duration>,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("keygate TlsConnector")
    }
}

impl HttpConnector for TlsConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let request = match request.try_into_http1x() {
            Ok(r) => r,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        let response = self.client.request(request);
        let read_timeout = self.read_timeout;
        HttpConnectorFuture::new(async move {
            let response = match read_timeout {
                Some(t) => tokio::time::timeout(t, response).await.map_err(|_| {
                    ConnectorError::timeout(format!("no HTTP response within {t:?}").into())
                })?,
                None => response.await,
            }
            .map_err(classify)?;
            HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                .map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// A rejected certificate or other TLS failure is not retried (it will not
/// heal by itself); refused/reset connections and timeouts are.
fn classify(e: hyper_util::client::legacy::Error) -> ConnectorError {
    let tls = chain_has::<rustls::Error>(&e);
    let timed_out = chain_has::<ConnectTimedOut>(&e);
    let connect = e.is_connect();
    let e: BoxError = e.into();
    if timed_out {
        ConnectorError::timeout(e)
    } else if tls {
        ConnectorError::other(e, None)
    } else if connect || chain_has::<std::io::Error>(e.as_ref()) {
        ConnectorError::io(e)
    } else {
        ConnectorError::other(e, None)
    }
}

/// Whether an error of type `T` is in `e`'s chain (looking inside io::Error
/// payloads, where hyper-rustls puts the rustls error).
pub fn chain_has<T: StdError + 'static>(e: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.is::<T>() {
            return true;
        }
        next = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => err.source(),
        };
    }
    false
}

#[derive(Debug)]
pub struct ConnectTimedOut(Duration);

impl std::fmt::Display for ConnectTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TCP connect + TLS handshake took longer than {:?}",
            self.0
        )
    }
}

impl StdError for ConnectTimedOut {}

/// Bounds TCP connect and TLS handshake together.
#[derive(Clone)]
pub struct ConnectTimeout {
    inner: HttpsConnector<TcpConnector>,
    timeout: Option<Duration>,
}

type Stream = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

impl tower_service::Service<http::Uri> for ConnectTimeout {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match timeout {
                Some(t) => tokio::time::timeout(t, connecting)
                    .await
                    .map_err(|_| Box::new(ConnectTimedOut(t)) as BoxError)?,
                None => connecting.await,
            }
        })
    }
}
