//! The approvers' admin API, on its own listener. Endpoints:
//!
//! | method | path | what |
//! |---|---|---|
//! | GET  | `/healthz` | liveness |
//! | GET  | `/readyz` | the store answers; `pending` counts requests awaiting a decision |
//! | GET  | `/ui` | the approver web page (static; it calls the API below) |
//! | GET  | `/admin/v1/openapi.json` | this API as OpenAPI 3.1 (no token needed) |
//! | GET  | `/admin/v1/whoami` | the signed-in approver |
//! | GET  | `/admin/v1/requests?state=pending\|approved\|denied\|expired\|bypassed&limit=N` | list, newest first |
//! | GET  | `/admin/v1/requests/{id}` | one request, with each use of its grant |
//! | POST | `/admin/v1/requests/{id}/approve` `{"comment", "grant_uses", "grant_window"}` | approve, optionally narrowing the grant |
//! | POST | `/admin/v1/requests/{id}/deny` `{"reason"}` | deny (reason required) |
//! | GET  | `/admin/v1/reviews` | break-glass bypasses awaiting acknowledgement |
//! | POST | `/admin/v1/reviews/{id}/ack` `{"comment"}` | acknowledge a bypass |
//! | GET  | `/admin/v1/events` | server-sent events: created, reviewed, approved, ... |
//! | GET  | `/admin/v1/audit?after=SEQ&limit=N` | audit records, oldest first |
//!
//! Every `/admin/v1` call except `openapi.json` needs
//! `Authorization: Bearer <approver token>`.
//! Tokens are compared by SHA-256 in constant time; workload credentials are
//! refused outright. Responses never contain secret values: held requests
//! store redacted parameters only.

pub mod sse;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::broker::Broker;
use crate::config::{sha256, Approver, Config};
use crate::events::request_view as view;
use crate::front::read_body;
use crate::gate::{Narrowing, Owner, ReviewOutcome, Reviewer, State};
use crate::holds::{HoldError, ReviewAction};
use crate::store::Store;
use crate::timestamp::Timestamp;

const MAX_ADMIN_BODY: usize = 64 * 1024;
/// The approver page, served as is (see `ui_response` for its CSP).
const UI_PAGE: &str = include_str!("admin/ui.html");
/// The admin API's OpenAPI document (kept in the repo; a test checks the
/// server against it).
pub const OPENAPI: &str = include_str!("admin/openapi.json");

/// The admin listener answers whole JSON bodies, or an event stream.
pub type AdminBody = Either<Full<Bytes>, sse::SseBody>;

/// What a route produced.
enum Reply {
    Json(Value),
    Static(&'static str, &'static str),
    Events(sse::SseBody),
}
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub struct Admin {
    approvers: Vec<Approver>,
    /// SHA-256 of every workload bearer credential, to refuse them by name.
    workload_token_hashes: Vec<[u8; 32]>,
    /// Identity name -> its owner (a person or a group).
    owners: HashMap<String, Owner>,
    broker: Arc<Broker>,
    store: Arc<dyn Store>,
}

/// An admin API failure: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: u16,
    code: &'static str,
    message: String,
}

fn api_error(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
    }
}

impl From<HoldError> for ApiError {
    fn from(e: HoldError) -> Self {
        use crate::gate::ReviewError as R;
        match &e {
            HoldError::NotFound(_) => api_error(404, "not_found", e.to_string()),
            HoldError::Review(R::NotPending(_) | R::Expired | R::AlreadyApproved(_)) => {
                api_error(409, "not_pending", e.to_string())
            }
            HoldError::Review(R::Widens(_)) => api_error(400, "widens_grant", e.to_string()),
            HoldError::Review(R::NotBypassed) => api_error(409, "not_bypassed", e.to_string()),
            HoldError::Review(R::AlreadyAcknowledged(_)) => {
                api_error(409, "already_acknowledged", e.to_string())
            }
            HoldError::Review(R::NotInGroup { .. }) => {
                api_error(403, "not_in_group", e.to_string())
            }
            HoldError::Review(R::Owner { .. }) => api_error(403, "owner", e.to_string()),
            HoldError::TooManyPending { .. }
            | HoldError::Overloaded { .. }
            | HoldError::Grant { .. } => api_error(409, "conflict", e.to_string()),
            HoldError::Store(_) => api_error(500, "store", e.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        api_error(500, "store", e.to_string())
    }
}

impl Admin {
    pub fn new(config: &Config, broker: Arc<Broker>, store: Arc<dyn Store>) -> Admin {
        Admin {
            approvers: config.approvers.clone(),
            workload_token_hashes: config
                .identities
                .iter()
                .filter_map(|i| i.vault_token.as_ref())
                .map(|t| sha256(t.expose().as_bytes()))
                .collect(),
            owners: config
                .identities
                .iter()
                .filter_map(|i| {
                    let owner = i.owner.clone()?;
                    // Config validation made sure it names an approver or a group.
                    let owner = if config.approvers.iter().any(|a| a.name == owner) {
                        Owner::Person(owner)
                    } else {
                        Owner::Group(owner)
                    };
                    Some((i.name.clone(), owner))
                })
                .collect(),
            broker,
            store,
        }
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<AdminBody> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let result = self.route(req).await;
        match result {
            Ok(Reply::Json(v)) => json_response(200, &v),
            Ok(Reply::Static(content_type, text)) => static_response(content_type, text),
            Ok(Reply::Events(body)) => Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-store")
                .header("x-accel-buffering", "no")
                .body(Either::Right(body))
                .unwrap_or_else(|_| Response::new(Either::Left(Full::default()))),
            Err(e) => {
                if e.status >= 500 {
                    tracing::error!(%method, path, code = e.code, message = %e.message, "admin request failed");
                }
                json_response(
                    e.status,
                    &json!({"error": {"code": e.code, "message": e.message}}),
                )
            }
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Reply, ApiError> {
        let path = req.uri().path().to_string();
        let query = parse_query(req.uri().query().unwrap_or(""));
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let json = |v: Value| Ok(Reply::Json(v));
        match (req.method(), segments.as_slice()) {
            (&Method::GET, ["healthz"]) => json(json!({"status": "ok"})),
            (&Method::GET, ["readyz"]) => {
                self.store.ping().await?;
                let pending = self.broker.holds().pending_count().await;
                json(json!({"status": "ok", "pending": pending}))
            }
            (&Method::GET, ["ui"]) => Ok(Reply::Static("text/html; charset=utf-8", UI_PAGE)),
            (&Method::GET, ["admin", "v1", "openapi.json"]) => {
                Ok(Reply::Static("application/json", OPENAPI))
            }
            (_, ["admin", "v1", ..]) => {
                let approver = self.authenticate(&req)?;
                match (req.method(), &segments[2..]) {
                    (&Method::GET, ["whoami"]) => {
                        json(json!({"name": approver.name, "groups": approver.groups}))
                    }
                    (&Method::GET, ["events"]) => Ok(Reply::Events(sse::stream(
                        self.broker.holds().events(),
                        self.broker.holds().closing(),
                    ))),
                    (&Method::GET, ["requests"]) => self.list(&query).await.map(Reply::Json),
                    (&Method::GET, ["requests", id]) => self.show(id).await.map(Reply::Json),
                    (&Method::POST, ["requests", id, "approve"]) => {
                        let id = id.to_string();
                        let body: ApproveBody = read_json(req).await?;
                        let narrowed = body.narrowing()?;
                        self.review(
                            &id,
                            approver,
                            ReviewAction::Approve {
                                comment: body.comment.filter(|c| !c.trim().is_empty()),
                                narrowed,
                            },
                        )
                        .await
                        .map(Reply::Json)
                    }
                    (&Method::POST, ["requests", id, "deny"]) => {
                        let id = id.to_string();
                        let body: DenyBody = read_json(req).await?;
                        let reason =
                            body.reason
                                .filter(|r| !r.trim().is_empty())
                                .ok_or_else(|| {
                                    api_error(
                                        400,
                                        "reason_required",
                                        "a denial needs a reason: {\"reason\": \"...\"}",
                                    )
                                })?;
                        self.review(&id, approver, ReviewAction::Deny { reason })
                            .await
                            .map(Reply::Json)
                    }
                    (&Method::GET, ["reviews"]) => self.reviews().await.map(Reply::Json),
                    (&Method::POST, ["reviews", id, "ack"]) => {
                        let id = id.to_string();
                        let body: AckBody = read_json(req).await?;
                        self.acknowledge(&id, approver, body.comment)
                            .await
                            .map(Reply::Json)
                    }
                    (&Method::GET, ["audit"]) => self.audit(&query).await.map(Reply::Json),
                    _ => Err(api_error(
                        404,
                        "not_found",
                        format!("no endpoint {} {path}", req.method()),
                    )),
                }
            }
            _ => Err(api_error(
                404,
                "not_found",
                format!("no endpoint {} {path}", req.method()),
            )),
        }
    }

    fn authenticate(&self, req: &Request<Incoming>) -> Result<&Approver, ApiError> {
        let header = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                api_error(
                    401,
                    "unauthenticated",
                    "send Authorization: Bearer <approver token>",
                )
            })?;
        if header.starts_with("AWS4-") {
            return Err(api_error(
                403,
                "workload_credential",
                "workload credentials cannot use the admin API",
            ));
        }
        let token = header.strip_prefix("Bearer ").ok_or_else(|| {
            api_error(
                401,
                "unauthenticated",
                "send Authorization: Bearer <approver token>",
            )
        })?;
        let hash = sha256(token.trim().as_bytes());
        // Compare against every approver without stopping early.
        let mut found = None;
        for a in &self.approvers {
            if bool::from(a.token_sha256.ct_eq(&hash)) {
                found = Some(a);
            }
        }
        if let Some(a) = found {
            return Ok(a);
        }
        if self
            .workload_token_hashes
            .iter()
            .any(|w| bool::from(w.ct_eq(&hash)))
        {
            return Err(api_error(
                403,
                "workload_credential",
                "workload credentials cannot use the admin API",
            ));
        }
        Err(api_error(401, "unauthenticated", "unknown approver token"))
    }

    async fn list(&self, query: &HashMap<String, String>) -> Result<Value, ApiError> {
        let state = match query.get("state").map(String::as_str) {
            None | Some("") | Some("all") => None,
            Some(s) => Some(State::parse(s).ok_or_else(|| {
                api_error(
                    400,
                    "bad_state",
                    format!(
                        "state {s:?} is not one of pending, approved, denied, expired, bypassed"
                    ),
                )
            })?),
        };
        let limit = parse_limit(query)?;
        let requests = self.store.requests(state, limit).await?;
        Ok(json!({"requests": requests.iter().map(view).collect::<Vec<_>>()}))
    }

    async fn show(&self, id: &str) -> Result<Value, ApiError> {
        match self.store.request(id).await? {
            Some(r) => Ok(view(&r)),
            None => Err(api_error(
                404,
                "not_found",
                format!("no such request: {id}"),
            )),
        }
    }

    async fn review(
        &self,
        id: &str,
        approver: &Approver,
        action: ReviewAction,
    ) -> Result<Value, ApiError> {
        let reviewer = Reviewer {
            name: &approver.name,
            groups: &approver.groups,
        };
        let owner = self
            .broker
            .holds()
            .identity_of(id)
            .await
            .and_then(|identity| self.owners.get(&identity).cloned());
        let (updated, outcome) = self
            .broker
            .holds()
            .review(id, reviewer, owner.as_ref(), action, Timestamp::now())
            .await?;
        tracing::info!(request = id, approver = approver.name, state = %updated.state, "review recorded");
        let mut v = view(&updated);
        v["outcome"] = match outcome {
            ReviewOutcome::Counted { have, need } => {
                json!({"result": "approval_counted", "have": have, "need": need})
            }
            ReviewOutcome::Approved => json!({"result": "approved"}),
            ReviewOutcome::DenialCounted { have, need } => {
                json!({"result": "denial_counted", "have": have, "need": need})
            }
            ReviewOutcome::Denied => json!({"result": "denied"}),
        };
        Ok(v)
    }

    /// Break-glass bypasses nobody has acknowledged yet, newest first.
    async fn reviews(&self) -> Result<Value, ApiError> {
        let bypassed = self
            .store
            .requests(Some(State::Bypassed), MAX_LIMIT)
            .await?;
        let open: Vec<Value> = bypassed
            .iter()
            .filter(|r| r.bypass.as_ref().is_some_and(|b| b.acknowledged.is_none()))
            .map(view)
            .collect();
        Ok(json!({"reviews": open}))
    }

    async fn acknowledge(
        &self,
        id: &str,
        approver: &Approver,
        comment: Option<String>,
    ) -> Result<Value, ApiError> {
        let reviewer = Reviewer {
            name: &approver.name,
            groups: &approver.groups,
        };
        let identity = self.store.request(id).await?.map(|r| r.subject.identity);
        let owner = identity.and_then(|i| self.owners.get(&i).cloned());
        let updated = self
            .broker
            .holds()
            .acknowledge(
                id,
                reviewer,
                owner.as_ref(),
                comment.filter(|c| !c.trim().is_empty()),
                Timestamp::now(),
            )
            .await?;
        tracing::info!(
            request = id,
            approver = approver.name,
            "bypass acknowledged"
        );
        Ok(view(&updated))
    }

    async fn audit(&self, query: &HashMap<String, String>) -> Result<Value, ApiError> {
        let after = match query.get("after") {
            Some(a) => a.parse().map_err(|_| {
                api_error(
                    400,
                    "bad_after",
                    format!("after={a:?} is not a sequence number"),
                )
            })?,
            None => 0,
        };
        let limit = parse_limit(query)?;
        let events = self.store.audit(after, limit).await?;
        Ok(json!({"events": events}))
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    comment: Option<String>,
    /// Narrow the grant: fewer uses than the rule allows.
    grant_uses: Option<u32>,
    /// Narrow the grant: a shorter window than the rule's, e.g. "5m".
    grant_window: Option<String>,
}

impl ApproveBody {
    fn narrowing(&self) -> Result<Narrowing, ApiError> {
        let window = self
            .grant_window
            .as_deref()
            .map(|w| {
                humantime::parse_duration(w).map_err(|e| {
                    api_error(
                        400,
                        "bad_body",
                        format!("grant_window {w:?} is not a duration ({e}); use e.g. \"5m\""),
                    )
                })
            })
            .transpose()?;
        Ok(Narrowing {
            uses: self.grant_uses,
            window,
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AckBody {
    comment: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DenyBody {
    reason: Option<String>,
}

async fn read_json<T: for<'de> Deserialize<'de> + Default>(
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    let body = read_body(req.into_body(), MAX_ADMIN_BODY)
        .await
        .map_err(|_| {
            api_error(
                400,
                "bad_body",
                format!("body missing, unreadable or over {MAX_ADMIN_BODY} bytes"),
            )
        })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&body)
        .map_err(|e| api_error(400, "bad_body", format!("invalid JSON body: {e}")))
}

fn parse_limit(query: &HashMap<String, String>) -> Result<usize, ApiError> {
    match query.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(api_error(
                400,
                "bad_limit",
                format!("limit={l:?} must be 1..={MAX_LIMIT}"),
            )),
        },
    }
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// The server's own refusals (connection cap, time budget) in the admin
/// API's error shape.
pub fn reject(r: crate::server::Rejection) -> Response<AdminBody> {
    let (status, code, message) = match r {
        crate::server::Rejection::OverCapacity => (
            503,
            "over_capacity",
            "keygate: too many open connections; try again shortly",
        ),
        crate::server::Rejection::TimedOut => (
            408,
            "request_timeout",
            "keygate: the request took longer than server.limits.request_timeout",
        ),
    };
    json_response(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

fn json_response(status: u16, v: &Value) -> Response<AdminBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Either::Left(Full::new(Bytes::from(v.to_string()))))
        .unwrap_or_else(|_| Response::new(Either::Left(Full::default())))
}

/// The page and the OpenAPI document. The page's scripts and styles are
/// inline and it talks only to this origin; the CSP holds it to that.
fn static_response(content_type: &'static str, text: &'static str) -> Response<AdminBody> {
    Response::builder()
        .status(200)
        .header("content-type", content_type)
        .header(
            "content-security-policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        )
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .header("cache-control", "no-store")
        .body(Either::Left(Full::new(Bytes::from_static(text.as_bytes()))))
        .unwrap_or_else(|_| Response::new(Either::Left(Full::default())))
}
