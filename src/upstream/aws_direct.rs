//! AWS Secrets Manager without the SDK's per-call orchestrator
//! (`upstream.client = "direct"`).
//!
//! Through the SDK, each call runs its orchestrator: config layering,
//! interceptors, endpoint rules, identity resolution, signing, retry
//! classification and a typed deserialization keygate throws away. That is
//! ~100 µs of CPU a call on the benchmark VM, two thirds of a cache miss
//! (BENCHMARKS.md, fifteenth session). This client does the same wire work
//! with the SDK's own parts, each set up once:
//!
//! - credentials, region, FIPS and dual-stack settings and the retry
//!   settings come from the SDK's default chain (`aws-config`), as for the
//!   SDK client; credentials are cached until five minutes before they
//!   expire and refreshed by one caller at a time;
//! - the endpoint is resolved once, at start-up, by the SDK's own endpoint
//!   rules (`DefaultResolver`), or is the configured endpoint URL;
//! - each request is signed by the official `aws-sigv4` crate;
//! - retries follow the SDK's standard mode: up to `max_attempts` (3 by
//!   default) for connection failures, timeouts, HTTP 500/502/503/504 and
//!   the SDK's throttling and transient error codes, with exponential
//!   backoff and full jitter (1 s base, 20 s cap by default), drawing on a
//!   retry quota (500 tokens; 5 a retry, 10 after a timeout; returned on
//!   success) so that an outage does not triple the load on it.
//!
//! - clock skew is corrected as the SDK's `ServiceClockSkewInterceptor`
//!   does: every answer's `Date` measures the skew (against the midpoint of
//!   the exchange), later requests are signed at local time plus it, and a
//!   signature error from a server more than four minutes off is retried.
//!
//! Left out: the SDK's adaptive retry mode (client-side rate limiting) and
//! its user-agent metrics.

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use aws_config::SdkConfig;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_secretsmanager::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;

use super::aws_http::{chain_has, hyper_client, ConnectTimeout};
use super::UpstreamError;
use crate::config::UpstreamTls;

/// The SDK's standard retry quota (`aws-smithy-runtime`'s token bucket).
const RETRY_QUOTA: u32 = 500;
const RETRY_COST: u32 = 5;
const TIMEOUT_RETRY_COST: u32 = 10;
/// Credentials are refreshed this long before they expire.
const CREDENTIALS_MARGIN: Duration = Duration::from_secs(300);
/// The SDK's clock-skew numbers (`aws-runtime`'s `service_clock_skew`): a
/// skew beyond this makes a signature error worth a retry...
const SKEW_DETECTION_THRESHOLD: Duration = Duration::from_secs(4 * 60);
/// ...and an exchange slower than this says nothing reliable about it.
const MAX_TRUSTED_REQUEST_DURATION: Duration = Duration::from_secs(15 * 60);
/// Error codes AWS answers a request signed at the wrong time with.
const CLOCK_SKEW_ERROR_CODES: &[&str] = &[
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "AuthFailure",
    "RequestTimeTooSkewed",
    "AccessDeniedException",
];

/// What AWS answered (any status): the caller maps non-200 answers.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub error_type_header: Option<String>,
    pub body: Bytes,
    /// The server's clock is more than `SKEW_DETECTION_THRESHOLD` off ours
    /// (measured on this answer).
    pub skewed: bool,
}

pub struct DirectClient {
    http: Client<ConnectTimeout, Full<Bytes>>,
    /// `https://secretsmanager.<region>.amazonaws.com/` or the configured URL, ending in `/`.
    url: String,
    host: String,
    region: String,
    credentials: SharedCredentialsProvider,
    cached: ArcSwapOption<CachedIdentity>,
    /// One refresh at a time; the others wait for it and use its result.
    refreshing: tokio::sync::Mutex<()>,
    retry: RetryPolicy,
    quota: AtomicU32,
    /// The server's clock minus ours, in milliseconds, from the last answer
    /// with a usable `Date`; requests are signed at our time plus this.
    skew_ms: AtomicI64,
    attempt_timeout: Duration,
    operation_timeout: Duration,
    user_agent: String,
}

struct CachedIdentity {
    identity: Identity,
    expires: Option<SystemTime>,
}

/// The standard retry mode's numbers, from the SDK's retry settings.
#[derive(Clone, Copy, Debug)]
struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
}

/// Why an attempt failed, and whether another may follow.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// No answer: the connection failed or was reset (retryable).
    Connection(String),
    /// No answer within the attempt timeout (retryable, costs more quota).
    Timeout(String),
    /// An answer that no retry will change (a TLS failure, a bad request).
    Permanent(String),
}

impl DirectClient {
    /// Set up from the SDK's loaded configuration. `endpoint` is the
    /// configured or environment endpoint URL, if any.
    pub async fn new(
        sdk: &SdkConfig,
        endpoint: Option<&str>,
        timeout: Duration,
        tls: &UpstreamTls,
    ) -> Result<DirectClient, String> {
        let region = sdk
            .region()
            .map(|r| r.to_string())
            .ok_or("no AWS region: set upstream.region or AWS_REGION")?;
        let credentials = sdk.credentials_provider().ok_or(
            "no AWS credentials provider (the SDK's default chain found no way to get credentials)",
        )?;
        let url = resolve_endpoint(sdk, &region, endpoint).await?;
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("endpoint {url:?} is not a URL: {e}"))?;
        let host = uri
            .authority()
            .ok_or_else(|| format!("endpoint {url:?} has no host"))?
            .as_str()
            .to_string();
        let https = uri.scheme_str() == Some("https");
        let retry = sdk.retry_config().map_or(
            RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(20),
            },
            |r| RetryPolicy {
                max_attempts: r.max_attempts().max(1),
                initial_backoff: r.initial_backoff(),
                max_backoff: r.max_backoff(),
            },
        );
        Ok(DirectClient {
            http: hyper_client(tls, https, Duration::from_secs(3).min(timeout))?,
            url,
            host,
            region,
            credentials,
            cached: ArcSwapOption::empty(),
            refreshing: tokio::sync::Mutex::new(()),
            retry,
            quota: AtomicU32::new(RETRY_QUOTA),
            skew_ms: AtomicI64::new(0),
            attempt_timeout: timeout,
            operation_timeout: timeout * 2,
            user_agent: format!("keygate/{} aws-sigv4", env!("CARGO_PKG_VERSION")),
        })
    }

    /// The resolved endpoint, for the start-up log line.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Send `operation` with the workload's JSON body; retry as the SDK's
    /// standard mode would. `Err` only when no answer came at all.
    pub async fn call(&self, operation: &str, body: Bytes) -> Result<Answer, UpstreamError> {
        let deadline = Instant::now() + self.operation_timeout;
        let target = format!("secretsmanager.{operation}");
        let mut retries = 0;
        let mut spent = 0;
        loop {
            let attempt = self.attempt(&target, body.clone());
            // The outcome to report if no further attempt is made.
            let (last, cost) = match tokio::time::timeout_at(deadline.into(), attempt).await {
                Err(_) => {
                    return Err(UpstreamError::Unavailable(format!(
                        "no answer within the operation timeout ({:?})",
                        self.operation_timeout
                    )))
                }
                Ok(Ok(answer)) => match answer_is_retryable(&answer) {
                    false => {
                        self.refund(spent);
                        return Ok(answer);
                    }
                    true if retries + 1 >= self.retry.max_attempts => return Ok(answer),
                    true => (Ok(answer), RETRY_COST),
                },
                Ok(Err(Failure::Permanent(why))) => return Err(UpstreamError::Unavailable(why)),
                Ok(Err(Failure::Connection(why))) => (Err(why), RETRY_COST),
                Ok(Err(Failure::Timeout(why))) => (Err(why), TIMEOUT_RETRY_COST),
            };
            let out_of_attempts = retries + 1 >= self.retry.max_attempts;
            if out_of_attempts || !self.take_quota(cost) {
                return last.map_err(UpstreamError::Unavailable);
            }
            spent += cost;
            let wait = backoff(self.retry, retries, rand::random::<f64>());
            if Instant::now() + wait >= deadline {
                return last.map_err(UpstreamError::Unavailable);
            }
            tokio::time::sleep(wait).await;
            retries += 1;
        }
    }

    async fn attempt(&self, target: &str, body: Bytes) -> Result<Answer, Failure> {
        let identity = self.identity().await.map_err(Failure::Permanent)?;
        let sent = SystemTime::now();
        let signing_time = shift(sent, self.skew_ms.load(Ordering::Relaxed));
        let request = self
            .signed_request(target, body, &identity, signing_time)
            .map_err(Failure::Permanent)?;
        let exchange = async {
            let response = self.http.request(request).await.map_err(classify)?;
            let skew = measured_skew(response.headers(), sent, SystemTime::now());
            if let Some(skew) = skew {
                self.skew_ms.store(skew, Ordering::Relaxed);
            }
            let skewed = skew.is_some_and(|ms| {
                Duration::from_millis(ms.unsigned_abs()) > SKEW_DETECTION_THRESHOLD
            });
            let status = response.status().as_u16();
            let error_type_header = response
                .headers()
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| Failure::Connection(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Answer {
                status,
                error_type_header,
                body,
                skewed,
            })
        };
        match tokio::time::timeout(self.attempt_timeout, exchange).await {
            Ok(answered) => answered,
            Err(_) => Err(Failure::Timeout(format!(
                "no answer within {:?}",
                self.attempt_timeout
            ))),
        }
    }

    /// The request, signed with SigV4 for `secretsmanager` in our region.
    fn signed_request(
        &self,
        target: &str,
        body: Bytes,
        identity: &Identity,
        now: SystemTime,
    ) -> Result<http::Request<Full<Bytes>>, String> {
        let headers = [
            ("content-type", "application/x-amz-json-1.1"),
            ("host", self.host.as_str()),
            ("x-amz-target", target),
        ];
        let signable = SignableRequest::new(
            "POST",
            &self.url,
            headers.iter().copied(),
            SignableBody::Bytes(&body),
        )
        .map_err(|e| format!("cannot sign the request: {e}"))?;
        let params = v4::SigningParams::builder()
            .identity(identity)
            .region(&self.region)
            .name("secretsmanager")
            .time(now)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| format!("cannot sign the request: {e}"))?
            .into();
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| format!("cannot sign the request: {e}"))?
            .into_parts();
        let mut request = http::Request::post(&self.url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let mut request = request
            .header("user-agent", &self.user_agent)
            .body(Full::new(body))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        instructions.apply_to_request_http1x(&mut request);
        Ok(request)
    }

    /// Credentials from the cache, or fetched by one caller at a time.
    async fn identity(&self) -> Result<Identity, String> {
        if let Some(identity) = self.fresh_identity() {
            return Ok(identity);
        }
        let _one_at_a_time = self.refreshing.lock().await;
        // Someone else may have refreshed while we waited.
        if let Some(identity) = self.fresh_identity() {
            return Ok(identity);
        }
        let credentials = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| format!("cannot get AWS credentials: {e}"))?;
        let expires = credentials.expiry();
        let identity: Identity = credentials.into();
        self.cached.store(Some(Arc::new(CachedIdentity {
            identity: identity.clone(),
            expires,
        })));
        Ok(identity)
    }

    fn fresh_identity(&self) -> Option<Identity> {
        let cached = self.cached.load();
        let cached = cached.as_deref()?;
        let fresh = cached
            .expires
            .map_or(true, |at| at > SystemTime::now() + CREDENTIALS_MARGIN);
        fresh.then(|| cached.identity.clone())
    }

    fn take_quota(&self, cost: u32) -> bool {
        self.quota
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(cost)
            })
            .is_ok()
    }

    fn refund(&self, cost: u32) {
        if cost > 0 {
            let _ = self
                .quota
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                    Some((left + cost).min(RETRY_QUOTA))
                });
        }
    }
}

/// The endpoint the SDK would call: the configured URL, or the one its
/// endpoint rules give for this region and the FIPS / dual-stack settings.
async fn resolve_endpoint(
    sdk: &SdkConfig,
    region: &str,
    endpoint: Option<&str>,
) -> Result<String, String> {
    let mut params = Params::builder()
        .region(region)
        .use_fips(sdk.use_fips().unwrap_or(false))
        .use_dual_stack(sdk.use_dual_stack().unwrap_or(false));
    if let Some(url) = endpoint.or(sdk.endpoint_url()) {
        params = params.endpoint(url);
    }
    let params = params
        .build()
        .map_err(|e| format!("cannot resolve the Secrets Manager endpoint: {e}"))?;
    let resolved = DefaultResolver::new()
        .resolve_endpoint(&params)
        .await
        .map_err(|e| format!("cannot resolve the Secrets Manager endpoint: {e}"))?;
    // The awsJson protocol posts to the endpoint's path plus "/".
    Ok(format!("{}/", resolved.url().trim_end_matches('/')))
}

/// The SDK's standard classification of an answer: server errors and the
/// throttling and transient error codes are worth another attempt.
fn answer_is_retryable(answer: &Answer) -> bool {
    /// `aws-runtime`'s `THROTTLING_ERRORS` and `TRANSIENT_ERRORS`.
    const RETRYABLE_CODES: &[&str] = &[
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "RequestTimeout",
        "RequestTimeoutException",
    ];
    match answer.status {
        200 => false,
        500 | 502 | 503 | 504 => true,
        _ => error_code(answer).is_some_and(|code| {
            RETRYABLE_CODES.contains(&code.as_str())
                || (answer.skewed && CLOCK_SKEW_ERROR_CODES.contains(&code.as_str()))
        }),
    }
}

/// The server's clock minus ours, in milliseconds, from an answer's `Date`
/// against the midpoint of the exchange; `None` when the answer cannot
/// tell (no usable `Date`, a cached answer, too slow an exchange).
fn measured_skew(headers: &http::HeaderMap, sent: SystemTime, received: SystemTime) -> Option<i64> {
    if headers.contains_key("age") {
        return None;
    }
    let date = headers.get("date")?.to_str().ok()?;
    let server =
        aws_smithy_types::DateTime::from_str(date, aws_smithy_types::date_time::Format::HttpDate)
            .ok()?;
    let server = SystemTime::try_from(server).ok()?;
    let elapsed = received.duration_since(sent).unwrap_or_default();
    if elapsed > MAX_TRUSTED_REQUEST_DURATION {
        return None;
    }
    let midpoint = sent + elapsed / 2;
    Some(match server.duration_since(midpoint) {
        Ok(ahead) => i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX),
        Err(behind) => -i64::try_from(behind.duration().as_millis()).unwrap_or(i64::MAX),
    })
}

/// `t` moved by `ms` milliseconds (either way).
fn shift(t: SystemTime, ms: i64) -> SystemTime {
    let by = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        t.checked_add(by)
    } else {
        t.checked_sub(by)
    }
    .unwrap_or(t)
}

/// An error answer's code, from `X-Amzn-ErrorType` or the body's `__type`
/// (as the SDK reads it: the header first), without namespace or suffix.
fn error_code(answer: &Answer) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(rename = "__type")]
        error_type: Option<String>,
    }
    let raw = answer.error_type_header.clone().or_else(|| {
        serde_json::from_slice::<Body>(&answer.body)
            .ok()
            .and_then(|b| b.error_type)
    })?;
    Some(super::aws::bare_error_code(&raw).to_string())
}

/// Full jitter: `jitter` (0..1) times `initial_backoff * 2^retries`, capped.
fn backoff(policy: RetryPolicy, retries: u32, jitter: f64) -> Duration {
    let exponential = policy
        .initial_backoff
        .checked_mul(2u32.saturating_pow(retries))
        .unwrap_or(policy.max_backoff)
        .min(policy.max_backoff);
    exponential.mul_f64(jitter.clamp(0.0, 1.0))
}

/// As the SDK path classifies (`aws_http::classify`): a TLS failure will not
/// heal by itself; refused or reset connections and connect timeouts may;
/// anything else (a malformed answer) is not retried.
fn classify(e: hyper_util::client::legacy::Error) -> Failure {
    let message = crate::error_chain::with_causes(&e);
    if chain_has::<rustls::Error>(&e) {
        Failure::Permanent(message)
    } else if chain_has::<super::aws_http::ConnectTimedOut>(&e) {
        Failure::Timeout(message)
    } else if e.is_connect() || chain_has::<std::io::Error>(&e) {
        Failure::Connection(message)
    } else {
        Failure::Permanent(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, header: Option<&str>, body: &str) -> Answer {
        Answer {
            status,
            error_type_header: header.map(str::to_string),
            body: Bytes::from(body.to_string()),
            skewed: false,
        }
    }

    #[test]
    fn server_errors_and_throttling_are_retried_and_client_errors_are_not() {
        assert!(!answer_is_retryable(&answer(200, None, "{}")));
        for status in [500, 502, 503, 504] {
            assert!(answer_is_retryable(&answer(status, None, "")));
        }
        assert!(answer_is_retryable(&answer(
            400,
            None,
            r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#
        )));
        assert!(answer_is_retryable(&answer(
            400,
            Some("com.amazonaws.secretsmanager#ThrottlingException:http://internal"),
            "{}"
        )));
        assert!(answer_is_retryable(&answer(
            400,
            None,
            r#"{"__type":"RequestTimeoutException"}"#
        )));
        for code in [
            "ResourceNotFoundException",
            "AccessDeniedException",
            "InvalidSignatureException",
        ] {
            let body = format!(r#"{{"__type":"{code}","message":"m"}}"#);
            assert!(!answer_is_retryable(&answer(400, None, &body)), "{code}");
        }
        assert!(!answer_is_retryable(&answer(501, None, "<html>")));
        // A signature error is retried only from a server whose clock is off.
        let bad_signature = r#"{"__type":"InvalidSignatureException","message":"expired"}"#;
        let mut a = answer(400, None, bad_signature);
        assert!(!answer_is_retryable(&a));
        a.skewed = true;
        assert!(answer_is_retryable(&a));
    }

    #[test]
    fn skew_is_the_servers_date_against_the_exchanges_midpoint() {
        let sent = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let received = sent + Duration::from_secs(2);
        let headers = |date: &str, cached: bool| {
            let mut h = http::HeaderMap::new();
            h.insert("date", date.parse().expect("value"));
            if cached {
                h.insert("age", "10".parse().expect("value"));
            }
            h
        };
        let at = |t: SystemTime| {
            aws_smithy_types::DateTime::from(t)
                .fmt(aws_smithy_types::date_time::Format::HttpDate)
                .expect("date")
        };
        let midpoint = sent + Duration::from_secs(1);
        let ahead = at(midpoint + Duration::from_secs(3600));
        let behind = at(midpoint - Duration::from_secs(600));
        assert_eq!(
            measured_skew(&headers(&ahead, false), sent, received),
            Some(3_600_000)
        );
        assert_eq!(
            measured_skew(&headers(&behind, false), sent, received),
            Some(-600_000)
        );
        assert_eq!(
            measured_skew(&headers(&ahead, true), sent, received),
            None,
            "cached"
        );
        assert_eq!(
            measured_skew(&headers("yesterday", false), sent, received),
            None
        );
        let slow = sent + MAX_TRUSTED_REQUEST_DURATION + Duration::from_secs(1);
        assert_eq!(
            measured_skew(&headers(&ahead, false), sent, slow),
            None,
            "too slow"
        );
        assert_eq!(shift(sent, -1000), sent - Duration::from_secs(1));
    }

    #[test]
    fn backoff_doubles_from_the_initial_value_up_to_the_cap_with_jitter() {
        let p = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(20),
        };
        assert_eq!(backoff(p, 0, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(p, 1, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(p, 2, 0.5), Duration::from_secs(2));
        assert_eq!(backoff(p, 10, 1.0), Duration::from_secs(20));
        assert_eq!(backoff(p, 40, 1.0), Duration::from_secs(20));
        assert_eq!(backoff(p, 3, 0.0), Duration::ZERO);
    }

    // --- the client against a scripted local server ---------------------

    use std::sync::atomic::AtomicUsize;

    use aws_config::{BehaviorVersion, Region};
    use aws_credential_types::Credentials;
    use aws_smithy_types::retry::RetryConfig;
    use tokio::net::TcpListener;

    use crate::front::aws::sigv4;
    use crate::timestamp::Timestamp;

    const ACCESS_KEY: &str = "AKIAKEYGATEUPSTREAM1";
    const SECRET_KEY: &str = "upstream-secret-key";

    /// The SDK configuration keygate would load, with fast retries.
    fn sdk(endpoint: Option<&str>, region: &str) -> SdkConfig {
        let mut b = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                ACCESS_KEY, SECRET_KEY, None, None, "test",
            )))
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_initial_backoff(Duration::from_millis(1))
                    .with_max_backoff(Duration::from_millis(5)),
            );
        if let Some(e) = endpoint {
            b = b.endpoint_url(e);
        }
        b.build()
    }

    async fn client(endpoint: &str) -> DirectClient {
        DirectClient::new(
            &sdk(Some(endpoint), "us-east-1"),
            None,
            Duration::from_secs(2),
            &UpstreamTls::default(),
        )
        .await
        .expect("client")
    }

    /// A local server answering the n-th correctly signed request with
    /// `script[n]` (the last entry repeats); each request's signature is
    /// checked with keygate's own SigV4 verifier, and a bad one answered as
    /// AWS does. Returns its URL and the count of requests it saw.
    async fn serve(script: Vec<(u16, &'static str)>) -> (String, Arc<AtomicUsize>) {
        serve_with_clock(script, 0).await
    }

    /// [`serve`] with a clock `offset_secs` ahead of ours, which it uses to
    /// check signatures and puts in each answer's `Date`.
    async fn serve_with_clock(
        script: Vec<(u16, &'static str)>,
        offset_secs: i64,
    ) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(AtomicUsize::new(0));
        let signed_ok = Arc::new(AtomicUsize::new(0));
        let (script, counters) = (Arc::new(script), (seen.clone(), signed_ok));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (script, counters) = (script.clone(), counters.clone());
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (script, (seen, signed_ok)) = (script.clone(), counters.clone());
                        async move {
                            seen.fetch_add(1, Ordering::SeqCst);
                            let now = shift(SystemTime::now(), offset_secs * 1000);
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let (status, answer) = match verify_signature(&parts, &body, now) {
                                Err(e) => (
                                    400,
                                    serde_json::json!({"__type": "InvalidSignatureException", "message": e})
                                        .to_string(),
                                ),
                                Ok(()) => {
                                    let n = signed_ok.fetch_add(1, Ordering::SeqCst);
                                    let (status, answer) = script[n.min(script.len() - 1)];
                                    (status, answer.to_string())
                                }
                            };
                            let date = aws_smithy_types::DateTime::from(now)
                                .fmt(aws_smithy_types::date_time::Format::HttpDate)
                                .expect("an HTTP date");
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(answer)));
                            *resp.status_mut() =
                                hyper::StatusCode::from_u16(status).expect("status");
                            resp.headers_mut()
                                .insert("date", date.parse().expect("header value"));
                            Ok::<_, hyper::Error>(resp)
                        }
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        (url, seen)
    }

    fn verify_signature(
        parts: &http::request::Parts,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), String> {
        let header = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or("no Authorization header")?;
        let auth = sigv4::parse_authorization(header).map_err(|e| e.to_string())?;
        if auth.access_key_id != ACCESS_KEY {
            return Err(format!("signed by {}", auth.access_key_id));
        }
        let target = parts
            .headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok());
        if target != Some("secretsmanager.GetSecretValue")
            || !auth.signed_headers.contains(&"x-amz-target")
        {
            return Err(format!("X-Amz-Target {target:?} is missing or unsigned"));
        }
        let key = sigv4::signing_key(SECRET_KEY, auth.date, "us-east-1", "secretsmanager");
        let req = sigv4::RequestParts {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            headers: &parts.headers,
            authority: None,
            body,
        };
        sigv4::verify(
            &auth,
            &req,
            sigv4::SigningMac::new(&key),
            "us-east-1",
            "secretsmanager",
            Timestamp::from_system(now),
        )
        .map_err(|e| e.to_string())
    }

    const SECRET_ID: &[u8] = br#"{"SecretId":"demo/api/key"}"#;

    /// GetSecretValue through `c`; panics unless some answer came back.
    async fn get(c: &DirectClient) -> Answer {
        c.call("GetSecretValue", Bytes::from_static(SECRET_ID))
            .await
            .expect("an answer")
    }
    const VALUE: &str = r#"{"Name":"demo/api/key","SecretString":"s3cr3t"}"#;
    const THROTTLED: &str = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;
    const NOT_FOUND: &str = r#"{"__type":"ResourceNotFoundException","message":"no such secret"}"#;

    #[tokio::test]
    async fn a_call_is_signed_as_aws_checks_it_and_answered_verbatim() {
        let (url, count) = serve(vec![(200, VALUE)]).await;
        let c = client(&url).await;
        assert_eq!(c.url(), format!("{url}/"));
        let answer = get(&c).await;
        assert_eq!((answer.status, &answer.body[..]), (200, VALUE.as_bytes()));
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn throttling_and_server_errors_are_retried_until_one_succeeds() {
        let (url, count) = serve(vec![(400, THROTTLED), (503, ""), (200, VALUE)]).await;
        let answer = get(&client(&url).await).await;
        assert_eq!(answer.status, 200);
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn retries_stop_at_max_attempts_and_the_last_answer_is_relayed() {
        let (url, count) = serve(vec![(503, "")]).await;
        let answer = get(&client(&url).await).await;
        assert_eq!(answer.status, 503);
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_client_error_is_answered_at_once() {
        let (url, count) = serve(vec![(400, NOT_FOUND), (200, VALUE)]).await;
        let answer = get(&client(&url).await).await;
        assert_eq!(
            (answer.status, &answer.body[..]),
            (400, NOT_FOUND.as_bytes())
        );
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn no_server_is_unavailable_after_the_retries() {
        // Bound and dropped: nothing listens there now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let c = client(&format!("http://127.0.0.1:{port}")).await;
        match c
            .call("GetSecretValue", Bytes::from_static(SECRET_ID))
            .await
        {
            Err(UpstreamError::Unavailable(why)) => assert!(why.contains("onnect"), "{why}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        // Two retries drew on the quota.
        assert_eq!(c.quota.load(Ordering::SeqCst), RETRY_QUOTA - 2 * RETRY_COST);
    }

    #[tokio::test]
    async fn an_empty_retry_quota_stops_retries() {
        let (url, count) = serve(vec![(503, "")]).await;
        let c = client(&url).await;
        c.quota.store(RETRY_COST - 1, Ordering::SeqCst);
        let answer = get(&c).await;
        assert_eq!(answer.status, 503);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    /// Credentials that expire `valid_for` after each fetch, and count the
    /// fetches; each fetch takes a moment, so that callers overlap it.
    #[derive(Debug)]
    struct CountingProvider {
        fetches: Arc<AtomicUsize>,
        valid_for: Duration,
    }

    impl ProvideCredentials for CountingProvider {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            aws_credential_types::provider::future::ProvideCredentials::new(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                self.fetches.fetch_add(1, Ordering::SeqCst);
                Ok(Credentials::new(
                    ACCESS_KEY,
                    SECRET_KEY,
                    None,
                    Some(SystemTime::now() + self.valid_for),
                    "counting",
                ))
            })
        }
    }

    async fn counting_client(url: &str, valid_for: Duration) -> (DirectClient, Arc<AtomicUsize>) {
        let fetches = Arc::new(AtomicUsize::new(0));
        let provider = CountingProvider {
            fetches: fetches.clone(),
            valid_for,
        };
        let sdk = sdk(Some(url), "us-east-1")
            .into_builder()
            .credentials_provider(SharedCredentialsProvider::new(provider))
            .build();
        let c = DirectClient::new(&sdk, None, Duration::from_secs(2), &UpstreamTls::default())
            .await
            .expect("client");
        (c, fetches)
    }

    #[tokio::test]
    async fn credentials_are_fetched_once_by_concurrent_callers_and_then_reused() {
        let (url, count) = serve(vec![(200, VALUE)]).await;
        let (c, fetches) = counting_client(&url, Duration::from_secs(3600)).await;
        let answers = futures_util::future::join_all((0..8).map(|_| get(&c))).await;
        assert!(answers.iter().all(|a| a.status == 200));
        assert_eq!(get(&c).await.status, 200);
        assert_eq!(count.load(Ordering::SeqCst), 9);
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "one fetch for all");
    }

    #[tokio::test]
    async fn credentials_close_to_expiry_are_fetched_again() {
        let (url, _) = serve(vec![(200, VALUE)]).await;
        // Inside the five-minute margin from the start: never reused.
        let (c, fetches) = counting_client(&url, Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert_eq!(get(&c).await.status, 200);
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_server_an_hour_ahead_is_answered_after_one_retry_and_then_at_once() {
        let (url, seen) = serve_with_clock(vec![(200, VALUE)], 3600).await;
        let c = client(&url).await;
        // Signed at our time: refused, the skew learned from its Date, retried.
        assert_eq!(get(&c).await.status, 200);
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        // Signed at the server's time from the start.
        assert_eq!(get(&c).await.status, 200);
        assert_eq!(seen.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn the_endpoint_is_the_one_the_sdk_rules_give() {
        let tls = UpstreamTls::default();
        let timeout = Duration::from_secs(1);
        for (region, expected) in [
            (
                "us-east-1",
                "https://secretsmanager.us-east-1.amazonaws.com/",
            ),
            (
                "cn-north-1",
                "https://secretsmanager.cn-north-1.amazonaws.com.cn/",
            ),
        ] {
            let c = DirectClient::new(&sdk(None, region), None, timeout, &tls)
                .await
                .expect("client");
            assert_eq!(c.url(), expected);
        }
        let fips = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .use_fips(true)
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                ACCESS_KEY, SECRET_KEY, None, None, "test",
            )))
            .build();
        let c = DirectClient::new(&fips, None, timeout, &tls)
            .await
            .expect("client");
        assert_eq!(
            c.url(),
            "https://secretsmanager-fips.us-east-1.amazonaws.com/"
        );
        // A configured endpoint wins, with its path kept.
        let c = DirectClient::new(
            &sdk(None, "us-east-1"),
            Some("http://127.0.0.1:4566/prefix/"),
            timeout,
            &tls,
        )
        .await
        .expect("client");
        assert_eq!(c.url(), "http://127.0.0.1:4566/prefix/");
    }
}
