//! The device API (`/v1/device/...`, authenticated by a device token) and the admin API
//! (`/v1/admin/...`, authenticated by an admin token) over [`crate::fleet::Fleet`].
//!
//! What it is for: turning HTTP requests into fleet operations and fleet errors into status
//! codes with a JSON `{"error": ...}` body. What it is not for: the rules (in `fleet`). The
//! two APIs share nothing but the store: a device token is refused by every admin route and
//! an admin token by every device route, and a device's identity comes only from its token,
//! never from a serial in the request. [`require_reader`] guards the repository's routes
//! under `--fleet`: they need an admin token or an accepted device's token.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_api::admin::{
    Approval, ConfigChange, ConfigVersion, DeviceAction, DeviceActionAnswer, DeviceGroups, Groups, RolloutAction,
    RolloutRequest, Settled, TokenCreated, TokenRequest, TokensRevoked,
};
use ferry_api::device::{CheckinAnswer, DeviceConfig, EnrollRequest, Enrolled, Report};
use ferry_api::ErrorBody;
use serde::Deserialize;

use crate::fleet::{Caller, Fleet, FleetError, HeadDoc, Pick, Scope};

/// The largest JSON body either API reads.
pub const MAX_BODY: usize = 64 * 1024;

/// Where check-ins and rollouts read channel documents from (the repository).
pub trait Documents: Send + Sync {
    /// The channel's newest document: what the fleet needs of it, and its encoded envelope.
    fn head(&self, channel: &str) -> Option<(HeadDoc, Vec<u8>)>;
    /// A document's encoded envelope by id (hex).
    fn by_id(&self, id: &str) -> Option<Vec<u8>>;
    /// Every channel's newest document and history, as JSON.
    fn channels(&self) -> Result<Vec<serde_json::Value>, String>;
    /// Promotes with the server's online channel key; the new document as JSON.
    fn promote(&self, req: &PromoteBody) -> Result<serde_json::Value, (StatusCode, String)>;
}

/// `POST /v1/admin/channels/{name}/promote`: what `ferry promote` takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteBody {
    #[serde(skip)]
    pub to: String,
    pub commit: Option<String>,
    pub from: Option<String>,
    #[serde(default)]
    pub hardware: Vec<String>,
    #[serde(default)]
    pub rollback: bool,
    #[serde(default)]
    pub force: bool,
    pub expires: Option<String>,
}

pub struct FleetState {
    pub fleet: Fleet,
    pub documents: Box<dyn Documents>,
}

impl std::fmt::Debug for FleetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetState").field("fleet", &self.fleet).finish()
    }
}

type Shared = Arc<FleetState>;

struct ApiError(StatusCode, String, Option<u64>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.0, Json(ErrorBody { error: self.1 })).into_response();
        if let Some(secs) = self.2 {
            resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        if self.0 == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> ApiError {
        let status = match &e {
            FleetError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            FleetError::Forbidden(_) => StatusCode::FORBIDDEN,
            FleetError::NotFound(_) => StatusCode::NOT_FOUND,
            FleetError::BadRequest(_) => StatusCode::BAD_REQUEST,
            FleetError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            FleetError::Conflict(_) => StatusCode::CONFLICT,
            FleetError::TooMany { retry_after, .. } => {
                return ApiError(StatusCode::TOO_MANY_REQUESTS, e.to_string(), Some(*retry_after));
            }
            FleetError::Store(_) | FleetError::Damaged { .. } => {
                tracing::error!(error = %e, "fleet store error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError(status, e.to_string(), None)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FleetError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("worker failed: {e}"), None))?
        .map_err(ApiError::from)
}

fn bearer(headers: &HeaderMap) -> Result<String, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty() && t.len() <= 256)
        .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "missing `Authorization: Bearer <token>`".into(), None))
}

fn parse_json<T: for<'a> Deserialize<'a>>(body: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("{what}: {e}"), None))
}

// ---- the repository's routes under --fleet -----------------------------------------------

/// Whom a repository request comes from under `--fleet` (`admin:NAME` or `device:SERIAL`),
/// put in the request's extensions by [`require_reader`]: the server's patch budget is
/// kept per reader.
#[derive(Debug, Clone)]
pub struct Reader(pub String);

/// Middleware for the repository's routes under `--fleet`: `Authorization: Bearer` with an
/// admin token or an accepted device's token, else 401 (no token, an unknown or replaced
/// one) or 403 (a pending or revoked device, a re-enrollment waiting for approval).
pub async fn require_reader(
    State(s): State<Shared>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let token = match bearer(req.headers()) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    match blocking(move || s.fleet.reader(&token)).await {
        Ok(caller) => {
            req.extensions_mut().insert(Reader(caller.who()));
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

// ---- device API -------------------------------------------------------------------------

async fn enroll(State(s): State<Shared>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let req: EnrollRequest = parse_json(&body, "enrollment request")?;
    let out = blocking(move || s.fleet.enroll(&req.serial, &req.hardware, &req.enrollment_token)).await?;
    Ok(Json(Enrolled { device_token: out.token, state: out.state }).into_response())
}

async fn check_in(State(s): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let token = bearer(&headers)?;
    let report: Report = parse_json(&body, "check-in report")?;
    let st = s.clone();
    let (device, config) = blocking(move || {
        let d = st.fleet.device_for(&token)?;
        let d = st.fleet.check_in(&d, report)?;
        let config = st.fleet.merged_config(&d)?;
        Ok((d, config))
    })
    .await?;
    let channel = device.report.channel.clone();
    let document = match &channel {
        Some(c) => {
            let (st, c, d) = (s.clone(), c.clone(), device.clone());
            blocking(move || {
                let Some((head, bytes)) = st.documents.head(&c) else { return Ok(None) };
                match st.fleet.pick(&d, &c, &head)? {
                    Pick::Head => Ok(Some(bytes)),
                    // Never the head instead: the device must not slip past the rollout.
                    Pick::Base(id) => st.documents.by_id(&id).map(Some).ok_or_else(|| {
                        FleetError::Unavailable(format!("the rollout's base document {id} cannot be read"))
                    }),
                }
            })
            .await?
        }
        None => None,
    };
    Ok(Json(CheckinAnswer {
        channel,
        channel_document: document.map(hex::encode),
        config: Some(DeviceConfig { values: config.values, version: config.version }),
        serial: device.serial,
        state: device.state,
    })
    .into_response())
}

// ---- admin API --------------------------------------------------------------------------

async fn admin(s: &Shared, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let token = bearer(headers)?;
    let st = s.clone();
    blocking(move || st.fleet.admin(&token)).await
}

#[derive(Deserialize)]
struct DeviceFilter {
    group: Option<String>,
    channel: Option<String>,
    state: Option<String>,
}

async fn devices(
    State(s): State<Shared>,
    headers: HeaderMap,
    Query(f): Query<DeviceFilter>,
) -> Result<Response, ApiError> {
    admin(&s, &headers).await?;
    let list = blocking(move || s.fleet.devices()).await?;
    let list: Vec<_> = list
        .into_iter()
        .filter(|d| f.group.as_ref().is_none_or(|g| d.groups.contains(g)))
        .filter(|d| f.channel.as_ref().is_none_or(|c| d.report.channel.as_ref() == Some(c)))
        .filter(|d| {
            f.state.as_ref().is_none_or(|st| {
                format!("{:?}", d.state).eq_ignore_ascii_case(st) || d.report.trial.as_deref() == Some(st.as_str())
            })
        })
        .map(|d| d.view(None))
        .collect();
    Ok(Json(list).into_response())
}

async fn device(State(s): State<Shared>, headers: HeaderMap, Path(serial): Path<String>) -> Result<Response, ApiError> {
    admin(&s, &headers).await?;
    let (d, events) = blocking(move || Ok((s.fleet.device(&serial)?, s.fleet.events(&serial)?))).await?;
    Ok(Json(d.view(Some(events))).into_response())
}

async fn device_action(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((serial, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let who = admin(&s, &headers).await?;
    let action = DeviceAction::parse(&action).ok_or_else(|| {
        ApiError::from(FleetError::NotFound(format!(
            "no device action {action:?} (accept, revoke, remove, approve-reenrollment, reject-reenrollment)"
        )))
    })?;
    let approval = if action == DeviceAction::ApproveReenrollment {
        let a: Approval = serde_json::from_slice(&body).map_err(|e| {
            ApiError::from(FleetError::BadRequest(format!(
                "approve-reenrollment needs {{\"request\": FINGERPRINT}} (as `ferry device show` and `ferryd status` show it): {e}"
            )))
        })?;
        Some(a.request)
    } else {
        None
    };
    let answer = |d: crate::fleet::Device, reenrollment| DeviceActionAnswer {
        reenrollment,
        removed: None,
        serial: d.serial,
        state: Some(d.state),
    };
    let out = blocking(move || match action {
        DeviceAction::Accept => s.fleet.accept(&who, &serial).map(|d| answer(d, None)),
        DeviceAction::Revoke => s.fleet.revoke(&who, &serial).map(|d| answer(d, None)),
        DeviceAction::Remove => s.fleet.remove(&who, &serial).map(|()| DeviceActionAnswer {
            reenrollment: None,
            removed: Some(true),
            serial,
            state: None,
        }),
        DeviceAction::ApproveReenrollment => s
            .fleet
            .approve_reenrollment(&who, &serial, approval.as_deref().unwrap_or_default())
            .map(|d| answer(d, Some(Settled::Approved))),
        DeviceAction::RejectReenrollment => {
            s.fleet.reject_reenrollment(&who, &serial).map(|d| answer(d, Some(Settled::Rejected)))
        }
    })
    .await?;
    Ok(Json(out).into_response())
}

async fn create_token(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let who = admin(&s, &headers).await?;
    let req: TokenRequest = parse_json(&body, "token request")?;
    let token = blocking(move || s.fleet.create_token(&who, req.kind, &req.name)).await?;
    Ok((StatusCode::CREATED, Json(TokenCreated { token })).into_response())
}

async fn tokens(State(s): State<Shared>, headers: HeaderMap) -> Result<Response, ApiError> {
    admin(&s, &headers).await?;
    Ok(Json(blocking(move || s.fleet.tokens()).await?).into_response())
}

async fn revoke_token(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let who = admin(&s, &headers).await?;
    let n = blocking(move || s.fleet.revoke_token(&who, &name)).await?;
    Ok(Json(TokensRevoked { revoked: n }).into_response())
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn audit(State(s): State<Shared>, headers: HeaderMap, Query(l): Query<Limit>) -> Result<Response, ApiError> {
    admin(&s, &headers).await?;
    let limit = l.limit.unwrap_or(100).min(10_000);
    Ok(Json(blocking(move || s.fleet.audit(limit)).await?).into_response())
}

fn scope(path: &str) -> Result<Scope, ApiError> {
    let bad = || {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("no configuration level {path:?} (fleet, group/NAME, device/SERIAL)"),
            None,
        )
    };
    match path.split_once('/') {
        None if path == "fleet" => Ok(Scope::Fleet),
        Some(("group", g)) if !g.contains('/') => Ok(Scope::Group(g.into())),
        Some(("device", d)) if !d.contains('/') => Ok(Scope::Device(d.into())),
        _ => Err(bad()),
    }
}

async fn get_config(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    admin(&s, &headers).await?;
    let scope = scope(&path)?;
    Ok(Json(blocking(move || s.fleet.level(&scope)).await?).into_response())
}

async fn change_config(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(path): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let who = admin(&s, &headers).await?;
    let scope = scope(&path)?;
    let change: ConfigChange = parse_json(&body, "configuration change")?;
    let set: Vec<(String, String)> = change.set.into_iter().collect();
    let version = blocking(move || s.fleet.set_config(&who, &scope, &set, &change.unset)).await?;
    Ok(Json(ConfigVersion { version }).into_response())
}

async fn device_config(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(serial): Path<String>,
) -> Result<Response, ApiError> {
    admin(&s, &headers).await?;
    Ok(Json(blocking(move || s.fleet.merged_config(&s.fleet.device(&serial)?)).await?).into_response())
}

async fn set_groups(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(serial): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let who = admin(&s, &headers).await?;
    let g: Groups = parse_json(&body, "groups")?;
    let d = blocking(move || s.fleet.set_groups(&who, &serial, &g.groups)).await?;
    Ok(Json(DeviceGroups { groups: d.groups, serial: d.serial }).into_response())
}

async fn rollout_action(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((channel, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let who = admin(&s, &headers).await?;
    let req: RolloutRequest =
        if body.is_empty() { RolloutRequest::default() } else { parse_json(&body, "rollout request")? };
    let status = blocking(move || {
        let head = s.documents.head(&channel).map(|(h, _)| h);
        let action = RolloutAction::parse(&action).ok_or_else(|| crate::fleet::no_rollout_action(&action))?;
        let r = if action == RolloutAction::Start {
            let base = head
                .as_ref()
                .ok_or_else(|| FleetError::NotFound(format!("channel {channel} has no document to start from")))?;
            let percent = req.percent.ok_or_else(|| FleetError::BadRequest("start needs a percent".into()))?;
            s.fleet.start_rollout(&who, &channel, base, percent, req.group, req.max_failure_percent.unwrap_or(10))?
        } else {
            s.fleet.change_rollout(&who, &channel, action, req.percent)?
        };
        s.fleet.rollout_status(r)
    })
    .await?;
    Ok(Json(status).into_response())
}

async fn rollouts(State(s): State<Shared>, headers: HeaderMap) -> Result<Response, ApiError> {
    admin(&s, &headers).await?;
    let list = blocking(move || {
        let mut out = Vec::new();
        for r in s.fleet.rollouts()? {
            out.push(s.fleet.rollout_status(r)?);
        }
        Ok(out)
    })
    .await?;
    Ok(Json(list).into_response())
}

async fn channels(State(s): State<Shared>, headers: HeaderMap) -> Result<Response, ApiError> {
    admin(&s, &headers).await?;
    let list = tokio::task::spawn_blocking(move || s.documents.channels())
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))?
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e, None))?;
    Ok(Json(list).into_response())
}

async fn promote(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let who = admin(&s, &headers).await?;
    let mut req: PromoteBody = parse_json(&body, "promotion")?;
    req.to = name;
    let out = tokio::task::spawn_blocking(move || -> Result<serde_json::Value, ApiError> {
        let v = s.documents.promote(&req).map_err(|(st, m)| ApiError(st, m, None))?;
        let what = match (&req.commit, &req.from) {
            (Some(c), _) => format!("commit {c}"),
            (None, Some(f)) => format!("from {f}"),
            (None, None) => "nothing".into(),
        };
        let detail =
            format!("{} serial {} ({what}{})", req.to, v["serial"], if req.rollback { ", rollback" } else { "" });
        s.fleet.record(&who, "promote", detail)?;
        Ok(v)
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))??;
    Ok(Json(out).into_response())
}

/// The fleet's web UI: one page over the admin API.
async fn ui() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
            ),
        ],
        include_str!("ui.html"),
    )
        .into_response()
}

/// The device and admin routes over `state`.
pub fn routes(state: Shared) -> Router {
    Router::new()
        .route("/", get(ui))
        .route("/ui", get(ui))
        .route("/v1/device/enroll", post(enroll))
        .route("/v1/device/checkin", post(check_in))
        .route("/v1/admin/devices", get(devices))
        .route("/v1/admin/devices/{serial}", get(device))
        .route("/v1/admin/devices/{serial}/{action}", post(device_action))
        .route("/v1/admin/devices/{serial}/config", get(device_config))
        .route("/v1/admin/devices/{serial}/groups", post(set_groups))
        .route("/v1/admin/config/{*scope}", get(get_config).post(change_config))
        .route("/v1/admin/tokens", get(tokens).post(create_token))
        .route("/v1/admin/tokens/{name}/revoke", post(revoke_token))
        .route("/v1/admin/audit", get(audit))
        .route("/v1/admin/rollouts", get(rollouts))
        .route("/v1/admin/channels", get(channels))
        .route("/v1/admin/channels/{name}/promote", post(promote))
        .route("/v1/admin/rollouts/{channel}/{action}", post(rollout_action))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}
