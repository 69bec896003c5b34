//! The approvers' admin API, on its own listener. Endpoints:
//!
//! | method | path | what |
//! |---|---|---|
//! | GET  | `/healthz` | liveness |
//! | GET  | `/readyz` | the store answers; `pending` counts requests awaiting a decision |
//! | GET  | `/admin/v1/requests?state=pending\|approved\|denied\|expired&limit=N` | list, newest first |
//! | GET  | `/admin/v1/requests/{id}` | one request |
//! | POST | `/admin/v1/requests/{id}/approve` `{"comment"}` | approve |
//! | POST | `/admin/v1/requests/{id}/deny` `{"reason"}` | deny (reason required) |
//! | GET  | `/admin/v1/audit?after=SEQ&limit=N` | audit records, oldest first |
//!
//! Every `/admin/v1` call needs `Authorization: Bearer <approver token>`.
//! Tokens are compared by SHA-256 in constant time; workload credentials are
//! refused outright. Responses never contain secret values: held requests
//! store redacted parameters only.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::broker::Broker;
use crate::config::{sha256, Approver, Config};
use crate::front::{read_body, Body};
use crate::gate::{HeldRequest, Reviewer, State};
use crate::holds::{HoldError, ReviewAction};
use crate::store::Store;
use crate::timestamp::Timestamp;

const MAX_ADMIN_BODY: usize = 64 * 1024;
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub struct Admin {
    approvers: Vec<Approver>,
    /// SHA-256 of every workload bearer credential, to refuse them by name.
    workload_token_hashes: Vec<[u8; 32]>,
    /// Identity name -> owner (approver name).
    owners: HashMap<String, String>,
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
                .filter_map(|i| i.owner.clone().map(|o| (i.name.clone(), o)))
                .collect(),
            broker,
            store,
        }
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let result = self.route(req).await;
        match result {
            Ok(v) => json_response(200, &v),
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

    async fn route(&self, req: Request<Incoming>) -> Result<Value, ApiError> {
        let path = req.uri().path().to_string();
        let query = parse_query(req.uri().query().unwrap_or(""));
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (req.method(), segments.as_slice()) {
            (&Method::GET, ["healthz"]) => Ok(json!({"status": "ok"})),
            (&Method::GET, ["readyz"]) => {
                self.store.ping().await?;
                let pending = self.broker.holds().pending_count().await;
                Ok(json!({"status": "ok", "pending": pending}))
            }
            (_, ["admin", "v1", ..]) => {
                let approver = self.authenticate(&req)?;
                match (req.method(), &segments[2..]) {
                    (&Method::GET, ["requests"]) => self.list(&query).await,
                    (&Method::GET, ["requests", id]) => self.show(id).await,
                    (&Method::POST, ["requests", id, "approve"]) => {
                        let id = id.to_string();
                        let body: ApproveBody = read_json(req).await?;
                        self.review(
                            &id,
                            approver,
                            ReviewAction::Approve {
                                comment: body.comment.filter(|c| !c.trim().is_empty()),
                            },
                        )
                        .await
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
                    }
                    (&Method::GET, ["audit"]) => self.audit(&query).await,
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
                    format!("state {s:?} is not one of pending, approved, denied, expired"),
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
        let updated = self
            .broker
            .holds()
            .review(id, reviewer, owner.as_deref(), action, Timestamp::now())
            .await?;
        tracing::info!(request = id, approver = approver.name, state = %updated.state, "review recorded");
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

/// The approver's view of a held request (never a secret value: the stored
/// parameters are redacted at the front end).
pub fn view(r: &HeldRequest) -> Value {
    json!({
        "id": r.id,
        "identity": r.subject.identity,
        "front": r.subject.front,
        "operation": r.subject.operation,
        "class": r.subject.class,
        "resources": r.subject.resources,
        "parameters": r.subject.parameters,
        "state": r.state,
        "rule": r.rule,
        "reasons": r.reasons,
        "justification": r.subject.justification,
        "client": r.subject.client,
        "certificate": r.subject.certificate,
        "approver_group": r.spec.approver_group,
        "required_approvals": r.spec.approvals,
        "approvals": r.approvals,
        "denial": r.denial,
        "grant": r.grant.as_ref().map(|g| json!({"uses_left": g.uses_left, "expires_at": g.expires_at, "used_at": g.used_at})),
        "created_at": r.created_at,
        "expires_at": r.expires_at,
        "decided_at": r.decided_at,
    })
}

/// The server's own refusals (connection cap, time budget) in the admin
/// API's error shape.
pub fn reject(r: crate::server::Rejection) -> Response<Body> {
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

fn json_response(status: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap_or_default()
}
