//! AWS Secrets Manager through the official `aws-sdk-secretsmanager`.
//!
//! keygate calls with its own credentials (default provider chain), region
//! and optional endpoint override; the workload's credentials never leave
//! keygate. To relay requests and responses byte for byte without a typed
//! conversion per operation, each call starts the SDK's own operation (so the
//! SDK signs, retries, resolves the endpoint and sets `X-Amz-Target`), and an
//! interceptor puts the workload's JSON body in place before signing and
//! captures the raw response body after it is read.
//!
//! The interceptor is registered once on the client; the call's body and
//! reply slot reach it through a task-local (`EXCHANGE`). Attaching it per
//! call with `customize()` instead rebuilt the operation's config layers on
//! every cache miss.
//!
//! With `upstream.client = "direct"`, calls skip the SDK client: the same
//! loaded SDK configuration (credentials, region, endpoint, retry settings)
//! feeds `aws_direct::DirectClient`, which signs with `aws-sigv4` and sends
//! each call itself. Both answer through `parse_error` alike.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_config::BehaviorVersion;
use aws_sdk_secretsmanager::config::interceptors::{
    AfterDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextMut,
};
use aws_sdk_secretsmanager::config::{ConfigBag, Intercept, Region, RuntimeComponents};
use aws_sdk_secretsmanager::Client;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::timeout::TimeoutConfig;
use bytes::Bytes;

use super::aws_direct::DirectClient;
use super::{SecretsUpstream, ServiceError, UpstreamError};
use crate::config::{AwsClient, UpstreamTls};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct AwsUpstream {
    calls: Calls,
    label: String,
}

/// Who makes the calls (`upstream.client`).
enum Calls {
    Sdk(Client),
    /// Boxed: its retry and credential state make it ~600 bytes.
    Direct(Box<DirectClient>),
}

impl AwsUpstream {
    pub async fn new(
        region: Option<String>,
        endpoint: Option<String>,
        timeout: Duration,
        tls: &UpstreamTls,
        mode: AwsClient,
    ) -> Result<AwsUpstream, UpstreamError> {
        // Build the TLS client first: a bad CA bundle or key fails start-up.
        let http = super::aws_http::aws_http_client(tls).map_err(UpstreamError::Unavailable)?;
        if tls.insecure_skip_verify {
            tracing::warn!("upstream.tls.insecure_skip_verify is on: the Secrets Manager endpoint's certificate is NOT verified (development only)");
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3).min(timeout))
                    .operation_attempt_timeout(timeout)
                    .operation_timeout(timeout * 2)
                    .build(),
            )
            // Stalled-stream protection watches a body's throughput while
            // it streams, for large downloads. Secrets Manager's answers
            // are small JSON documents, and `operation_attempt_timeout`
            // already bounds a stalled one; the watch cost ~3% of a cache
            // miss's instructions (BENCHMARKS.md, fourteenth session).
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled());
        if let Some(r) = region {
            loader = loader.region(Region::new(r));
        }
        if let Some(e) = &endpoint {
            loader = loader.endpoint_url(e);
        }
        let sdk = loader.load().await;
        let region = sdk
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "(none)".into());
        let endpoint = endpoint
            .or_else(|| std::env::var("AWS_ENDPOINT_URL_SECRETS_MANAGER").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        let (calls, label) = match mode {
            AwsClient::Sdk => {
                // Only the Secrets Manager client gets keygate's TLS
                // settings; the credential providers keep the SDK's client
                // (they talk to AWS itself).
                let mut conf =
                    aws_sdk_secretsmanager::config::Builder::from(&sdk).interceptor(RawExchange);
                if let Some(http) = http {
                    conf = conf.http_client(http);
                }
                let label = format!(
                    "AWS Secrets Manager (region {region}, endpoint {}, SDK client)",
                    endpoint.as_deref().unwrap_or("default")
                );
                (Calls::Sdk(Client::from_conf(conf.build())), label)
            }
            AwsClient::Direct => {
                let direct = DirectClient::new(&sdk, endpoint.as_deref(), timeout, tls)
                    .await
                    .map_err(UpstreamError::Unavailable)?;
                let label = format!(
                    "AWS Secrets Manager (region {region}, endpoint {}, direct client)",
                    direct.url()
                );
                (Calls::Direct(Box::new(direct)), label)
            }
        };
        Ok(AwsUpstream { calls, label })
    }
}

/// What the interceptor saw of the upstream's answer.
#[derive(Debug, Default)]
struct Captured {
    status: u16,
    error_type_header: Option<String>,
    body: Bytes,
}

/// One call's workload body and the slot for the upstream's answer.
#[derive(Debug)]
struct Exchange {
    body: Bytes,
    reply: Mutex<Option<Captured>>,
}

tokio::task_local! {
    /// The exchange of the call this task is making (see the module docs).
    static EXCHANGE: Arc<Exchange>;
}

/// The client's interceptor; a no-op outside `AwsUpstream::call`.
#[derive(Debug)]
struct RawExchange;

impl Intercept for RawExchange {
    fn name(&self) -> &'static str {
        "keygate-raw-exchange"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Ok(exchange) = EXCHANGE.try_with(Arc::clone) else {
            return Ok(());
        };
        let request = context.request_mut();
        *request.body_mut() = SdkBody::from(exchange.body.clone());
        request
            .headers_mut()
            .insert("content-length", exchange.body.len().to_string());
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Ok(exchange) = EXCHANGE.try_with(Arc::clone) else {
            return Ok(());
        };
        let response = context.response();
        if let Some(body) = response.body().bytes() {
            let captured = Captured {
                status: response.status().as_u16(),
                error_type_header: response
                    .headers()
                    .get("x-amzn-errortype")
                    .map(str::to_string),
                body: Bytes::copy_from_slice(body),
            };
            if let Ok(mut slot) = exchange.reply.lock() {
                *slot = Some(captured);
            }
        }
        Ok(())
    }
}

/// Start the SDK operation named `$op`.
macro_rules! dispatch {
    ($client:expr, $op:expr, { $($name:literal => $method:ident),* $(,)? }) => {
        match $op {
            $( $name => $client.$method().send().await
                .map(|_| ()).map_err(|e| DisplayErrorContext(e).to_string()), )*
            other => {
                return Err(UpstreamError::Service(ServiceError::new(
                    400,
                    "UnknownOperationException",
                    format!("keygate does not forward operation {other}"),
                )))
            }
        }
    };
}

#[async_trait]
impl SecretsUpstream for AwsUpstream {
    async fn call(&self, operation: &str, body: Bytes) -> Result<Bytes, UpstreamError> {
        let c = match &self.calls {
            Calls::Sdk(client) => client,
            Calls::Direct(direct) => {
                let a = direct.call(operation, body).await?;
                return match a.status {
                    200 => Ok(a.body),
                    status => Err(UpstreamError::Service(parse_error(
                        status,
                        a.error_type_header.as_deref(),
                        &a.body,
                    ))),
                };
            }
        };
        let exchange = Arc::new(Exchange {
            body,
            reply: Mutex::new(None),
        });
        let sdk_result = EXCHANGE
            .scope(exchange.clone(), async move {
                Ok(dispatch!(c, operation, {
                    "BatchGetSecretValue" => batch_get_secret_value,
                    "CancelRotateSecret" => cancel_rotate_secret,
                    "CreateSecret" => create_secret,
                    "DeleteResourcePolicy" => delete_resource_policy,
                    "DeleteSecret" => delete_secret,
                    "DescribeSecret" => describe_secret,
                    "GetRandomPassword" => get_random_password,
                    "GetResourcePolicy" => get_resource_policy,
                    "GetSecretValue" => get_secret_value,
                    "ListSecretVersionIds" => list_secret_version_ids,
                    "ListSecrets" => list_secrets,
                    "PutResourcePolicy" => put_resource_policy,
                    "PutSecretValue" => put_secret_value,
                    "RemoveRegionsFromReplication" => remove_regions_from_replication,
                    "ReplicateSecretToRegions" => replicate_secret_to_regions,
                    "RestoreSecret" => restore_secret,
                    "RotateSecret" => rotate_secret,
                    "StopReplicationToReplica" => stop_replication_to_replica,
                    "TagResource" => tag_resource,
                    "UntagResource" => untag_resource,
                    "UpdateSecret" => update_secret,
                    "UpdateSecretVersionStage" => update_secret_version_stage,
                    "ValidateResourcePolicy" => validate_resource_policy,
                }))
            })
            .await?;
        let captured = exchange.reply.lock().ok().and_then(|mut slot| slot.take());
        match captured {
            Some(c) if c.status == 200 => Ok(c.body),
            Some(c) => Err(UpstreamError::Service(parse_error(
                c.status,
                c.error_type_header.as_deref(),
                &c.body,
            ))),
            // No HTTP answer at all: connection refused, timeout, credentials.
            None => Err(UpstreamError::Unavailable(
                sdk_result
                    .err()
                    .unwrap_or_else(|| "no response captured".into()),
            )),
        }
    }

    fn describe(&self) -> String {
        self.label.clone()
    }
}

/// Read an AWS JSON error; anything else (moto's HTML 500s) becomes a 502.
fn parse_error(status: u16, error_type_header: Option<&str>, body: &[u8]) -> ServiceError {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(rename = "__type")]
        error_type: Option<String>,
        #[serde(alias = "Message")]
        message: Option<String>,
    }
    let parsed: Option<Body> = serde_json::from_slice(body).ok();
    let error_type = parsed
        .as_ref()
        .and_then(|b| b.error_type.as_deref())
        .or(error_type_header)
        .map(bare_error_code);
    match error_type {
        Some(t) => ServiceError {
            status,
            error_type: t.to_string(),
            message: parsed.and_then(|b| b.message).unwrap_or_default(),
        },
        None => ServiceError::new(
            502,
            "InternalServiceError",
            format!("keygate: the upstream answered HTTP {status} with an unreadable body"),
        ),
    }
}

/// An AWS error code without the namespace (`com.amazonaws.secretsmanager#X`)
/// or `:` suffix that `__type` and `X-Amzn-ErrorType` may carry.
pub(super) fn bare_error_code(raw: &str) -> &str {
    let code = raw.rsplit('#').next().unwrap_or(raw);
    code.split(':').next().unwrap_or(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: u16, header: Option<&str>, body: &str, expect: (u16, &str, &str)) {
        let e = parse_error(status, header, body.as_bytes());
        assert_eq!(
            (e.status, e.error_type.as_str(), e.message.as_str()),
            expect
        );
    }

    #[test]
    fn upstream_errors_are_read_in_every_shape_aws_uses() {
        check(
            400,
            None,
            r#"{"__type":"ResourceNotFoundException","message":"nope"}"#,
            (400, "ResourceNotFoundException", "nope"),
        );
        check(
            400,
            None,
            r#"{"__type":"com.amazonaws.secretsmanager#InvalidRequestException","Message":"m"}"#,
            (400, "InvalidRequestException", "m"),
        );
        check(
            400,
            Some("ThrottlingException:http://x"),
            "{}",
            (400, "ThrottlingException", ""),
        );
        check(
            500,
            None,
            "<html>boom</html>",
            (
                502,
                "InternalServiceError",
                "keygate: the upstream answered HTTP 500 with an unreadable body",
            ),
        );
    }
}
