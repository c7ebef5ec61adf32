//! The device API (`/v1/device/...`, authenticated by a device token) and the admin API
//! (`/v1/admin/...`, authenticated by an admin token) over [`crate::fleet::Fleet`].
//!
//! What it is for: turning HTTP requests into fleet operations and fleet errors into status
//! codes with a JSON `{"error": ...}` body. What it is not for: the rules (in `fleet`). The
//! two APIs share nothing but the store: a device token is refused by every admin route and
//! an admin token by every device route, and a device's identity comes only from its token,
//! never from a serial in the request. [`require_reader`] guards the repository's routes
//! under `--fleet`: they need an admin token or an accepted device's token.
//!
//! `device` holds the device API's routes and `admin` the admin API's; this module holds
//! what they share (the token check, errors as answers, the blocking pool), the web UI's
//! page, and [`routes`], which joins them. Every body is one of `ferry_api`'s messages.

mod admin;
mod device;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ferry_api::admin::{ChannelListing, PromoteRequest, Promoted};
use ferry_api::ErrorBody;
use serde::Deserialize;

use crate::fleet::{Fleet, FleetError, HeadDoc};

/// The largest JSON body either API reads.
pub const MAX_BODY: usize = 64 * 1024;

/// Where check-ins and rollouts read channel documents from (the repository).
pub trait Documents: Send + Sync {
    /// The channel's newest document: what the fleet needs of it, and its encoded envelope.
    fn head(&self, channel: &str) -> Option<(HeadDoc, Vec<u8>)>;
    /// A document's encoded envelope by id (hex).
    fn by_id(&self, id: &str) -> Option<Vec<u8>>;
    /// Every channel's newest document, history and upstream.
    fn channels(&self) -> Result<Vec<ChannelListing>, String>;
    /// Promotes to channel `to` with the server's online channel key: the new document.
    fn promote(&self, to: &str, req: &PromoteRequest) -> Result<Promoted, (StatusCode, String)>;
    /// The trust the repository's key chain gives (what devices reach), `None` without a key
    /// document: what offline-signed configuration is checked against.
    fn trust(&self) -> Result<Option<ferry_store::channel::Trust>, String>;
}

pub struct FleetState {
    pub fleet: Fleet,
    pub documents: Box<dyn Documents>,
    /// The online configuration key (`ferry serve --config-key`): every check-in answer
    /// carries the device's configuration signed with it.
    pub config_key: Option<ferry_store::SecretKey>,
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
        let mut resp = (self.0, Json(ErrorBody::new(self.1))).into_response();
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
        include_str!("../ui.html"),
    )
        .into_response()
}

/// The device and admin routes over `state`.
pub fn routes(state: Shared) -> Router {
    Router::new()
        .route("/", get(ui))
        .route("/ui", get(ui))
        .merge(device::routes())
        .merge(admin::routes())
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}
