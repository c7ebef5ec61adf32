//! The device API (`/v1/device/...`, authenticated by a device token) and the admin API
//! (`/v1/admin/...`, authenticated by an admin token, or the web UI's session signed in with
//! one) over [`crate::fleet::Fleet`].
//!
//! What it is for: turning HTTP requests into fleet operations and fleet errors into status
//! codes with a JSON `{"error": ...}` body. What it is not for: the rules (in `fleet`). The
//! two APIs share nothing but the store: a device token is refused by every admin route and
//! an admin token by every device route, and a device's identity comes only from its token,
//! never from a serial in the request. [`require_reader`] guards the repository's routes
//! under `--fleet`: they need an admin token or an accepted device's token.
//!
//! `device` holds the device API's routes and `admin` the admin API's; `sessions` the web
//! UI's sign-in and the guard in front of every admin route (bearer token or session cookie,
//! the CSRF and cross-site rules); this module holds what they share (the token check,
//! errors as answers, the blocking pool), the web UI's page, and [`routes`], which joins
//! them. Every body is one of `ferry_api`'s messages. The admin token never travels in a URL:
//! no route reads one from a query string, and the page posts it once, in a JSON body.

mod admin;
mod device;
mod sessions;

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
    /// Mutual TLS: device certificates issued at enrollment and required after it.
    pub certificates: DeviceCertificates,
    /// The last fleet summary counted, when its count ended, and the operator changes it had
    /// seen: requests within [`SUMMARY_FRESHNESS`] of its end share it, unless an operator
    /// changed a device since; one task counts while the others wait for its answer.
    summary: tokio::sync::Mutex<Option<(ferry_api::admin::FleetSummary, std::time::Instant, u64)>>,
    /// Operator changes to devices (accept, revoke, remove, groups) so far: a summary counted
    /// before the latest is not shared.
    device_changes: std::sync::atomic::AtomicU64,
}

impl FleetState {
    /// Says that an operator changed a device: the next summary counts afresh.
    fn device_changed(&self) {
        self.device_changes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How old a fleet summary may be before a request counts the fleet again (seconds).
pub const SUMMARY_FRESHNESS: i64 = 10;

impl FleetState {
    /// The state over `fleet` and `documents`, with no configuration key and no device
    /// certificates (set the fields to add them).
    pub fn new(fleet: Fleet, documents: Box<dyn Documents>) -> FleetState {
        FleetState {
            fleet,
            documents,
            config_key: None,
            certificates: DeviceCertificates::default(),
            summary: Default::default(),
            device_changes: Default::default(),
        }
    }
}

/// Devices' client certificates (`ferry serve --client-ca`): which CA issues them at
/// enrollment, whether device requests must present the one bound to the device, and a
/// load balancer's header that may carry it.
#[derive(Debug, Default)]
pub struct DeviceCertificates {
    /// Issues a certificate to a device that enrolls with a certificate request.
    pub issuer: Option<crate::ca::FleetCa>,
    /// Every device request after enrollment must come with the device's certificate.
    pub required: bool,
    /// A header a TLS-terminating load balancer fills with the client certificate's
    /// SHA-256 (hex, colons allowed), believed only from these peer addresses.
    pub forwarded: Option<(axum::http::HeaderName, Vec<std::net::IpAddr>)>,
}

impl DeviceCertificates {
    /// The SHA-256 of the client certificate a request came with: the connection's own,
    /// or the forwarded header's when the peer is a trusted load balancer.
    pub fn presented(&self, conn: Option<&crate::connections::Connection>, headers: &HeaderMap) -> Option<[u8; 32]> {
        if let Some(c) = conn.and_then(|c| c.client_certificate) {
            return Some(c);
        }
        let (name, trusted) = self.forwarded.as_ref()?;
        // A server listening on `[::]` sees an IPv4 balancer as `::ffff:a.b.c.d`.
        if !conn.is_some_and(|c| trusted.iter().any(|t| t.to_canonical() == c.peer.ip().to_canonical())) {
            return None;
        }
        let text: String = headers.get(name)?.to_str().ok()?.chars().filter(|c| *c != ':').collect();
        let mut out = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut out).ok()?;
        Some(out)
    }

    /// Refuses a device request without the certificate bound to `device` when required.
    fn check(
        &self,
        fleet: &Fleet,
        device: &crate::fleet::Device,
        presented: Option<[u8; 32]>,
    ) -> Result<(), FleetError> {
        if self.required {
            fleet.check_certificate(device, presented.as_ref())?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for FleetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetState").field("fleet", &self.fleet).finish()
    }
}

type Shared = Arc<FleetState>;

#[derive(Debug)]
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
            FleetError::Database(detail) => {
                tracing::warn!(error = %detail, "the fleet's database did not answer");
                return ApiError(StatusCode::SERVICE_UNAVAILABLE, crate::fleet::DATABASE_UNAVAILABLE.into(), Some(5));
            }
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
    let presented = s.certificates.presented(req.extensions().get(), req.headers());
    match blocking(move || {
        let caller = s.fleet.reader(&token)?;
        if let crate::fleet::Caller::Device(serial) = &caller {
            s.certificates.check(&s.fleet, &s.fleet.device(serial)?, presented)?;
        }
        Ok(caller)
    })
    .await
    {
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
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        include_str!("../ui.html"),
    )
        .into_response()
}

/// The device and admin routes over `state`; every admin route but sign-in behind
/// `sessions::require_admin`.
pub fn routes(state: Shared) -> Router {
    let (sign_in, session) = sessions::routes();
    let admin = admin::routes()
        .merge(session)
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), sessions::require_admin));
    Router::new()
        .route("/", get(ui))
        .route("/ui", get(ui))
        .merge(device::routes())
        .merge(admin)
        .merge(sign_in)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_failure_tells_the_client_only_to_retry() {
        let detail = "fleet database postgres://ferry:***@db.internal:5432/fleet: connection refused";
        let e = ApiError::from(FleetError::Database(detail.into()));
        assert_eq!((e.0, e.2), (StatusCode::SERVICE_UNAVAILABLE, Some(5)));
        assert_eq!(e.1, crate::fleet::DATABASE_UNAVAILABLE);
        assert!(!e.1.contains("db.internal"));
    }
}
