//! The admin API (`/v1/admin/...`, an admin token): devices, tokens, the audit log,
//! configuration, rollouts, and the channels' documents and promotions (through
//! [`super::Documents`]). Every change goes through `crate::fleet`, which writes it to the
//! audit log with the token's name. What it is not for: the rules themselves, or who may
//! call these routes: `sessions::require_admin` stands in front of every one (a bearer admin
//! token or the web UI's session) and hands each the [`Caller`].

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use ferry_api::admin::{
    Approval, ConfigChange, ConfigVersion, DeviceAction, DeviceActionAnswer, DeviceGroups, DeviceQuery, Groups, Health,
    PromoteRequest, Promoted, RolloutAction, RolloutRequest, Settled, TokenCreated, TokenRequest, TokensRevoked,
};
use serde::Deserialize;

use super::{blocking, parse_json, ApiError, Shared};
use crate::fleet::{Caller, FleetError, Scope};

/// The most devices one answer of `GET /v1/admin/devices` holds.
pub const MAX_DEVICES_PAGE: usize = DeviceQuery::MAX_LIMIT;

/// A request's query as `T`, or a 400 that names what is wrong with it.
fn query<T: serde::de::DeserializeOwned>(uri: &axum::http::Uri) -> Result<T, ApiError> {
    Query::<T>::try_from_uri(uri).map(|Query(q)| q).map_err(|e| {
        FleetError::BadRequest(format!("the query {:?}: {}", uri.query().unwrap_or(""), e.body_text())).into()
    })
}

/// One page of the devices that pass the query's filters, in serial order ([`DeviceQuery`]);
/// while more follow, a `Link: <…>; rel="next"` header names the next page's path.
async fn devices(State(s): State<Shared>, _: Extension<Caller>, uri: axum::http::Uri) -> Result<Response, ApiError> {
    let f: DeviceQuery = query(&uri)?;
    let limit = f.limit.unwrap_or(MAX_DEVICES_PAGE);
    if !(1..=MAX_DEVICES_PAGE).contains(&limit) {
        return Err(
            FleetError::BadRequest(format!("limit {limit} must be a number from 1 to {MAX_DEVICES_PAGE}")).into()
        );
    }
    if let Some(a) = &f.after {
        crate::fleet::check_name("after (a serial)", a)?;
    }
    // As long as anything a device may report in these fields (reports allow 255 bytes).
    const MAX_FILTER: usize = 255;
    for (name, v) in [
        ("q", &f.q),
        ("group", &f.group),
        ("channel", &f.channel),
        ("version", &f.version),
        ("hardware", &f.hardware),
        ("state", &f.state),
    ] {
        if v.as_ref().is_some_and(|v| v.len() > MAX_FILTER) {
            return Err(FleetError::BadRequest(format!("{name} is longer than {MAX_FILTER} bytes")).into());
        }
    }
    if let Some(h) = f.health.as_deref().filter(|h| Health::parse(h).is_none()) {
        return Err(FleetError::BadRequest(format!("health {h:?} is none of {}", Health::names())).into());
    }
    let query = f.clone();
    let (list, after) = blocking(move || s.fleet.devices_matching(&query, limit, crate::fleet::now())).await?;
    let next = after.map(|after| {
        let next = DeviceQuery { after: Some(after), limit: Some(limit), ..f };
        format!("</v1/admin/{}>; rel=\"next\"", next.path())
    });
    let list: Vec<_> = list.into_iter().map(|d| d.view(None)).collect();
    let mut r = Json(list).into_response();
    if let Some(next) = next.and_then(|n| axum::http::HeaderValue::from_str(&n).ok()) {
        r.headers_mut().insert(axum::http::header::LINK, next);
    }
    Ok(r)
}

/// The fleet at a glance ([`ferry_api::admin::FleetSummary`]), counted at most once every
/// [`super::SUMMARY_FRESHNESS`] seconds (from the end of the last count) unless an operator
/// changed a device since. The count runs in a task of its own, which caches its answer even
/// if every request that waited for it has gone; the others wait for it on the async lock (not
/// a thread) and share the answer.
async fn summary(State(s): State<Shared>, _: Extension<Caller>) -> Result<Response, ApiError> {
    let counting = tokio::spawn(async move {
        let mut last = s.summary.lock().await;
        let changes = s.device_changes.load(std::sync::atomic::Ordering::SeqCst);
        let fresh = std::time::Duration::from_secs(super::SUMMARY_FRESHNESS as u64);
        if let Some((v, _, _)) = last.as_ref().filter(|(_, ended, seen)| ended.elapsed() < fresh && *seen == changes) {
            return Ok(v.clone());
        }
        let fleet = s.clone();
        let v = blocking(move || fleet.fleet.summary(crate::fleet::now())).await?;
        *last = Some((v.clone(), std::time::Instant::now(), changes));
        Ok::<_, ApiError>(v)
    });
    let v = counting
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("counting the fleet failed: {e}"), None))??;
    Ok(Json(v).into_response())
}

async fn device(
    State(s): State<Shared>,
    _: Extension<Caller>,
    Path(serial): Path<String>,
) -> Result<Response, ApiError> {
    let (d, events) = blocking(move || Ok((s.fleet.device(&serial)?, s.fleet.events(&serial)?))).await?;
    Ok(Json(d.view(Some(events))).into_response())
}

async fn device_action(
    State(s): State<Shared>,
    Extension(who): Extension<Caller>,
    Path((serial, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
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
    let state = s.clone();
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
    state.device_changed();
    Ok(Json(out).into_response())
}

async fn create_token(
    State(s): State<Shared>,
    Extension(who): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: TokenRequest = parse_json(&body, "token request")?;
    let token = blocking(move || s.fleet.create_token(&who, req.kind, &req.name)).await?;
    Ok((StatusCode::CREATED, Json(TokenCreated { token })).into_response())
}

async fn tokens(State(s): State<Shared>, _: Extension<Caller>) -> Result<Response, ApiError> {
    Ok(Json(blocking(move || s.fleet.tokens()).await?).into_response())
}

async fn revoke_token(
    State(s): State<Shared>,
    Extension(who): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let n = blocking(move || s.fleet.revoke_token(&who, &name)).await?;
    Ok(Json(TokensRevoked { revoked: n }).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Limit {
    limit: Option<usize>,
}

async fn audit(State(s): State<Shared>, _: Extension<Caller>, uri: axum::http::Uri) -> Result<Response, ApiError> {
    let l: Limit = query(&uri)?;
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
    _: Extension<Caller>,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    let scope = scope(&path)?;
    Ok(Json(blocking(move || s.fleet.level(&scope)).await?).into_response())
}

async fn change_config(
    State(s): State<Shared>,
    Extension(who): Extension<Caller>,
    Path(path): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let scope = scope(&path)?;
    let change: ConfigChange = parse_json(&body, "configuration change")?;
    let set: Vec<(String, String)> = change.set.into_iter().collect();
    let version = blocking(move || s.fleet.set_config(&who, &scope, &set, &change.unset)).await?;
    Ok(Json(ConfigVersion { version }).into_response())
}

async fn device_config(
    State(s): State<Shared>,
    _: Extension<Caller>,
    Path(serial): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(blocking(move || s.fleet.merged_config(&s.fleet.device(&serial)?)).await?).into_response())
}

/// A configuration document the operator signed offline for one device: checked (it
/// decodes, its signatures meet the configuration threshold of the repository's key
/// document, it is this device's current configuration) and kept for its check-ins.
async fn upload_config_document(
    State(s): State<Shared>,
    Extension(who): Extension<Caller>,
    Path(serial): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let up: ferry_api::admin::ConfigDocumentUpload = parse_json(&body, "configuration document upload")?;
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m, None);
    let bytes = hex::decode(&up.document).map_err(|_| bad("the configuration document is not hex".into()))?;
    let envelope = ferry_store::channel::Envelope::decode(&bytes)
        .map_err(|e| bad(format!("the configuration document does not decode: {e}")))?;
    let doc = ferry_store::device_config::ConfigDoc::decode(&envelope.document)
        .map_err(|e| bad(format!("the configuration document does not decode: {e}")))?;
    let st = s.clone();
    let trust = blocking(move || st.documents.trust().map_err(FleetError::Unavailable)).await?;
    let trust = trust
        .filter(|t| !t.config_keys.is_empty())
        .ok_or_else(|| bad("the key document names no configuration keys: devices would refuse any configuration document; add them with `ferry keys set --config-key`".into()))?;
    let quorum = trust.quorum(ferry_store::Signed::Config);
    let signed = quorum.signed(&envelope.id(), &envelope.signatures);
    if signed < usize::from(quorum.threshold) {
        return Err(bad(format!(
            "the configuration document is signed by {signed} of the configuration keys of key document {}, {} needed: devices would refuse it",
            trust.serial, quorum.threshold
        )));
    }
    let version = doc.version;
    blocking(move || s.fleet.set_signed_config(&who, &serial, &doc, &bytes)).await?;
    Ok(Json(ConfigVersion { version }).into_response())
}

async fn set_groups(
    State(s): State<Shared>,
    Extension(who): Extension<Caller>,
    Path(serial): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let g: Groups = parse_json(&body, "groups")?;
    let state = s.clone();
    let d = blocking(move || s.fleet.set_groups(&who, &serial, &g.groups)).await?;
    state.device_changed();
    Ok(Json(DeviceGroups { groups: d.groups, serial: d.serial }).into_response())
}

async fn rollout_action(
    State(s): State<Shared>,
    Extension(who): Extension<Caller>,
    Path((channel, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
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

async fn rollouts(State(s): State<Shared>, _: Extension<Caller>) -> Result<Response, ApiError> {
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

async fn channels(State(s): State<Shared>, _: Extension<Caller>) -> Result<Response, ApiError> {
    let list = tokio::task::spawn_blocking(move || s.documents.channels())
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))?
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e, None))?;
    Ok(Json(list).into_response())
}

async fn promote(
    State(s): State<Shared>,
    Extension(who): Extension<Caller>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: PromoteRequest = parse_json(&body, "promotion")?;
    let out = tokio::task::spawn_blocking(move || -> Result<Promoted, ApiError> {
        let v = s.documents.promote(&name, &req).map_err(|(st, m)| ApiError(st, m, None))?;
        let what = match (&req.commit, &req.from) {
            (Some(c), _) => format!("commit {c}"),
            (None, Some(f)) => format!("from {f}"),
            (None, None) => "nothing".into(),
        };
        let detail =
            format!("{name} serial {} ({what}{})", v.document.serial, if req.rollback { ", rollback" } else { "" });
        s.fleet.record(&who, "promote", detail)?;
        Ok(v)
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))??;
    Ok(Json(out).into_response())
}

/// The admin API's routes (without their guard, which [`super::routes`] puts in front).
pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/admin/devices", get(devices))
        .route("/v1/admin/summary", get(summary))
        .route("/v1/admin/devices/{serial}", get(device))
        .route("/v1/admin/devices/{serial}/{action}", post(device_action))
        .route("/v1/admin/devices/{serial}/config", get(device_config))
        .route("/v1/admin/devices/{serial}/groups", post(set_groups))
        .route("/v1/admin/devices/{serial}/config-document", post(upload_config_document))
        .route("/v1/admin/config/{*scope}", get(get_config).post(change_config))
        .route("/v1/admin/tokens", get(tokens).post(create_token))
        .route("/v1/admin/tokens/{name}/revoke", post(revoke_token))
        .route("/v1/admin/audit", get(audit))
        .route("/v1/admin/rollouts", get(rollouts))
        .route("/v1/admin/channels", get(channels))
        .route("/v1/admin/channels/{name}/promote", post(promote))
        .route("/v1/admin/rollouts/{channel}/{action}", post(rollout_action))
}
