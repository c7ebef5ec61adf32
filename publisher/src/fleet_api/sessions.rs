//! The web UI's sign-in and who may use the admin API: `Authorization: Bearer <admin token>`
//! (scripts, `ferry`), or a session cookie the page got by posting the token once.
//!
//! What it is for: [`require_admin`], the one check in front of every admin route, and the
//! session routes (`POST /v1/admin/session` signs in, `GET` tells the page its session and
//! CSRF token again after a reload, `DELETE` signs out). What it is not for: whether a token
//! is an admin's (`crate::fleet`), or the admin routes themselves (`admin`).
//!
//! - **Sessions** live in the server's memory only: a random 256-bit cookie (kept as its
//!   BLAKE3 hash), the admin token's hash (never the token), the admin's name and a random
//!   CSRF token. At most [`MAX_SESSIONS`] at once (signing in drops expired ones, then the
//!   oldest); one ends [`SESSION_IDLE`] after its last request or [`SESSION_MAX`] after it
//!   signed in, at sign-out, when its admin token is revoked (checked at every request), and
//!   when the server restarts.
//! - **The cookie** is `HttpOnly; SameSite=Strict; Path=/`, and `Secure` when the request
//!   came over TLS (`crate::connections::Connection::tls`).
//! - **Cross-site requests**: a request with the cookie is refused (403) when its
//!   `Sec-Fetch-Site` says another site or origin, or its `Origin` is not the `Host` it was
//!   sent to; a change (any method but GET and HEAD) also needs the session's CSRF token in
//!   `X-CSRF-Token`, which a page of another origin can neither read nor send. Sign-in checks
//!   the same headers and takes only `Content-Type: application/json` (a form cannot send
//!   it). A bearer token is sent by a script that holds it, never by a browser on its own,
//!   so bearer requests need none of this.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use ferry_api::admin::{SessionInfo, SessionRequest, SignedOut};

use super::{bearer, blocking, parse_json, ApiError, Shared, MAX_BODY};
use crate::connections::Connection;
use crate::fleet::{AdminKey, Caller, FleetError};

/// The session cookie's name.
pub const COOKIE: &str = "ferry_admin";
/// The header a session's changes carry its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Sessions kept at once; signing in beyond it ends the oldest.
pub const MAX_SESSIONS: usize = 64;
/// A session ends this long after its last request...
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// ...or this long after it signed in, whichever comes first.
pub const SESSION_MAX: Duration = Duration::from_secs(8 * 3600);

/// A signed-in browser's session.
struct Session {
    admin: AdminKey,
    name: String,
    csrf: String,
    created: Instant,
    last_used: Instant,
}

impl Session {
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_used) >= SESSION_IDLE
            || now.saturating_duration_since(self.created) >= SESSION_MAX
    }
}

/// What a cookie names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Lookup {
    /// A live session (its idle time starts again).
    Live {
        admin: AdminKey,
        name: String,
        csrf: String,
        ends_in: Duration,
    },
    Expired,
    Unknown,
}

/// The sessions signed in, by the BLAKE3 hash of their cookie.
#[derive(Default)]
pub struct Sessions(HashMap<[u8; 32], Session>);

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sessions({} open)", self.0.len())
    }
}

impl Sessions {
    /// Opens a session for `cookie`, dropping expired ones and, at [`MAX_SESSIONS`], the oldest.
    pub(super) fn add(&mut self, cookie: &[u8; 32], admin: AdminKey, name: String, csrf: String, now: Instant) {
        self.0.retain(|_, s| !s.expired(now));
        while self.0.len() >= MAX_SESSIONS {
            let Some(oldest) = self.0.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k) else { break };
            self.0.remove(&oldest);
        }
        self.0.insert(*cookie, Session { admin, name, csrf, created: now, last_used: now });
    }

    /// What `cookie` names at `now`; a live session's idle time starts again.
    pub(super) fn check(&mut self, cookie: &[u8; 32], now: Instant) -> Lookup {
        match self.0.get_mut(cookie) {
            None => Lookup::Unknown,
            Some(s) if s.expired(now) => Lookup::Expired,
            Some(s) => {
                s.last_used = now;
                let ends_in = (SESSION_MAX.saturating_sub(now.saturating_duration_since(s.created))).min(SESSION_IDLE);
                Lookup::Live { admin: s.admin, name: s.name.clone(), csrf: s.csrf.clone(), ends_in }
            }
        }
    }

    pub(super) fn remove(&mut self, cookie: &[u8; 32]) {
        self.0.remove(cookie);
    }
}

/// The session a request signed in with, put in its extensions by [`require_admin`] beside
/// its [`Caller`].
#[derive(Debug, Clone)]
struct SignedIn {
    cookie: [u8; 32],
    name: String,
    csrf: String,
    ends_in: Duration,
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Sessions> {
    s.sessions.lock().unwrap_or_else(|e| e.into_inner())
}

fn forbidden(why: String) -> ApiError {
    ApiError(StatusCode::FORBIDDEN, why, None)
}

fn unauthorized(why: &str) -> ApiError {
    ApiError(StatusCode::UNAUTHORIZED, why.into(), None)
}

/// The hashes of the session cookies a request carries.
fn cookies(headers: &HeaderMap) -> Vec<[u8; 32]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE).and_then(|v| v.strip_prefix('=')))
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(|v| *blake3::hash(v.as_bytes()).as_bytes())
        .collect()
}

/// Refuses a request a page of another origin made the browser send: `Sec-Fetch-Site`
/// other than `same-origin` or `none` (the user's own navigation), or an `Origin` that is
/// not the host the request was sent to.
pub(super) fn same_origin(headers: &HeaderMap, authority: Option<&str>) -> Result<(), ApiError> {
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("?");
        if !matches!(site, "same-origin" | "none") {
            return Err(forbidden(format!(
                "cross-site request refused (Sec-Fetch-Site: {site}): sign in on this server's own page"
            )));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("?");
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).or(authority);
        let from = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
        let same = matches!((from, host), (Some(f), Some(h)) if f.eq_ignore_ascii_case(h));
        if !same {
            return Err(forbidden(format!(
                "request from another origin refused (Origin: {origin}, sent to {})",
                host.unwrap_or("an unnamed host")
            )));
        }
    }
    Ok(())
}

/// Whether a request asks for a change (anything but GET and HEAD).
fn changes(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD)
}

/// Compares two strings without an early exit on the first difference.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The CSRF rule: a change made with a session carries its token in [`CSRF_HEADER`].
pub(super) fn check_csrf(method: &Method, headers: &HeaderMap, csrf: &str) -> Result<(), ApiError> {
    if !changes(method) {
        return Ok(());
    }
    match headers.get(CSRF_HEADER).map(|v| v.to_str().unwrap_or("")) {
        None => Err(forbidden(format!(
            "missing the X-CSRF-Token header: a change ({method}) made with a session cookie needs the token its sign-in answered"
        ))),
        Some(given) if same_secret(given, csrf) => Ok(()),
        Some(_) => Err(forbidden("X-CSRF-Token does not match this session; reload the page".into())),
    }
}

/// Who a request with session cookies is, at `now`: its cross-site headers and CSRF token
/// checked, the session live. The admin token's revocation is checked by the caller.
fn by_session(
    s: &Shared,
    method: &Method,
    headers: &HeaderMap,
    authority: Option<&str>,
    offered: &[[u8; 32]],
    now: Instant,
) -> Result<(AdminKey, SignedIn), ApiError> {
    same_origin(headers, authority)?;
    let mut expired = false;
    let mut sessions = lock(s);
    for cookie in offered {
        match sessions.check(cookie, now) {
            Lookup::Live { admin, name, csrf, ends_in } => {
                check_csrf(method, headers, &csrf)?;
                return Ok((admin, SignedIn { cookie: *cookie, name, csrf, ends_in }));
            }
            Lookup::Expired => expired = true,
            Lookup::Unknown => {}
        }
    }
    Err(if expired {
        unauthorized("session expired; sign in again")
    } else {
        unauthorized("not signed in (signed out, or the server restarted since); sign in again")
    })
}

/// Middleware in front of every admin route: a bearer admin token, or a live session with
/// the cross-site and CSRF rules met. Puts the [`Caller`] (and a session's [`SignedIn`]) in
/// the request's extensions.
pub(super) async fn require_admin(State(s): State<Shared>, mut req: Request, next: Next) -> Response {
    let signed = if req.headers().contains_key(header::AUTHORIZATION) {
        let token = match bearer(req.headers()) {
            Ok(t) => t,
            Err(e) => return e.into_response(),
        };
        let st = s.clone();
        blocking(move || st.fleet.admin(&token)).await.map(|who| (who, None))
    } else {
        let offered = cookies(req.headers());
        if offered.is_empty() {
            return unauthorized("not signed in: send `Authorization: Bearer <token>` or sign in on the web page")
                .into_response();
        }
        let authority = req.uri().authority().map(|a| a.as_str().to_string());
        match by_session(&s, req.method(), req.headers(), authority.as_deref(), &offered, Instant::now()) {
            Err(e) => Err(e),
            Ok((admin, signed)) => {
                let st = s.clone();
                match blocking(move || st.fleet.admin_by_key(&admin)).await {
                    Ok(who) => Ok((who, Some(signed))),
                    Err(e) => {
                        if e.0 == StatusCode::UNAUTHORIZED {
                            lock(&s).remove(&signed.cookie);
                        }
                        Err(e)
                    }
                }
            }
        }
    };
    match signed {
        Ok((who, signed)) => {
            req.extensions_mut().insert(who);
            if let Some(signed) = signed {
                req.extensions_mut().insert(signed);
            }
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// The `Set-Cookie` value of a session cookie (`value` empty: the one that clears it).
pub(super) fn set_cookie(value: &str, max_age: Duration, tls: bool) -> HeaderValue {
    let secure = if tls { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={value}; Max-Age={}; Path=/; HttpOnly; SameSite=Strict{secure}", max_age.as_secs());
    // A hex value and fixed attributes: always a valid header.
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static("ferry_admin=; Max-Age=0; Path=/"))
}

fn tls(req: &Request) -> bool {
    req.extensions().get::<Connection>().is_some_and(|c| c.tls)
}

fn random_hex() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("no random bytes for a session: {e}"), None)
    })?;
    Ok(hex::encode(bytes))
}

fn session_answer(status: StatusCode, info: SessionInfo, cookie: Option<HeaderValue>) -> Response {
    let mut resp = (status, Json(info)).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(c) = cookie {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

/// `POST /v1/admin/session` `{"token": "fa_…"}`: signs in; answers the session's CSRF token
/// and sets its cookie.
async fn sign_in(State(s): State<Shared>, req: Request) -> Result<Response, ApiError> {
    let authority = req.uri().authority().map(|a| a.as_str().to_string());
    same_origin(req.headers(), authority.as_deref())?;
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !json {
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "sign-in takes a JSON body {\"token\": ...} (Content-Type: application/json)".into(),
            None,
        ));
    }
    let tls = tls(&req);
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("reading the sign-in: {e}"), None))?;
    let asked: SessionRequest = parse_json(&body, "sign-in")?;
    let token = asked.token.trim().to_string();
    if token.is_empty() || token.len() > 256 {
        return Err(unauthorized("not a valid admin token"));
    }
    let st = s.clone();
    let (who, admin) = blocking(move || {
        let (who, admin) = st.fleet.admin_key(&token)?;
        st.fleet.record(&who, "sign in", "web UI session".into())?;
        Ok((who, admin))
    })
    .await?;
    let Caller::Admin(name) = who else {
        return Err(ApiError::from(FleetError::Unauthorized("not a valid admin token".into())));
    };
    let (cookie, csrf) = (random_hex()?, random_hex()?);
    lock(&s).add(blake3::hash(cookie.as_bytes()).as_bytes(), admin, name.clone(), csrf.clone(), Instant::now());
    let info = SessionInfo { csrf_token: csrf, expires_in: SESSION_MAX.as_secs(), name };
    Ok(session_answer(StatusCode::OK, info, Some(set_cookie(&cookie, SESSION_MAX, tls))))
}

fn no_session() -> ApiError {
    ApiError(
        StatusCode::BAD_REQUEST,
        "this request has no session: it sent a bearer token (sessions are the web page's)".into(),
        None,
    )
}

/// `GET /v1/admin/session`: the page's session after a reload (its CSRF token again).
async fn session(signed: Option<Extension<SignedIn>>) -> Result<Response, ApiError> {
    let Extension(signed) = signed.ok_or_else(no_session)?;
    let info = SessionInfo { csrf_token: signed.csrf, expires_in: signed.ends_in.as_secs(), name: signed.name };
    Ok(session_answer(StatusCode::OK, info, None))
}

/// `DELETE /v1/admin/session` (with the CSRF token): signs out; the cookie is cleared.
async fn sign_out(State(s): State<Shared>, req: Request) -> Result<Response, ApiError> {
    let tls = tls(&req);
    let signed = req.extensions().get::<SignedIn>().cloned().ok_or_else(no_session)?;
    lock(&s).remove(&signed.cookie);
    let who = Caller::Admin(signed.name);
    blocking(move || s.fleet.record(&who, "sign out", "web UI session".into())).await?;
    let mut resp = Json(SignedOut { signed_out: true }).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, set_cookie("", Duration::ZERO, tls));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// The session's routes: sign-in (open to anyone, like the token check itself) and, behind
/// [`require_admin`] with the admin routes, the session's view and sign-out.
pub(super) fn routes() -> (Router<Shared>, Router<Shared>) {
    let open = Router::new().route("/v1/admin/session", post(sign_in));
    let guarded = Router::new().route("/v1/admin/session", axum::routing::get(session).delete(sign_out));
    (open, guarded)
}

#[cfg(test)]
mod tests {
    //! The time, cross-site and CSRF rules, on a clock the test moves; the routes themselves
    //! are tested against the real server in `tests/it/web_ui.rs`.

    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn key(n: u8) -> [u8; 32] {
        [n; 32]
    }

    fn admin() -> AdminKey {
        // Any key: the store's check is not what these tests are about.
        crate::fleet::AdminKey::for_tests([7; 32])
    }

    #[test]
    fn sessions_expire_when_idle_and_at_their_age_limit() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        s.add(&key(1), admin(), "ops".into(), "c1".into(), t0);
        assert_eq!(s.check(&key(2), t0), Lookup::Unknown);
        let mut now = t0;
        while now + 29 * MIN < t0 + SESSION_MAX {
            now += 29 * MIN;
            assert!(matches!(s.check(&key(1), now), Lookup::Live { .. }), "{:?} after sign-in", now - t0);
        }
        assert_eq!(s.check(&key(1), t0 + SESSION_MAX), Lookup::Expired);
        s.add(&key(2), admin(), "ops".into(), "c2".into(), t0);
        assert!(matches!(s.check(&key(2), t0 + 29 * MIN), Lookup::Live { .. }));
        assert_eq!(s.check(&key(2), t0 + 59 * MIN), Lookup::Expired);
        // Signing in drops expired sessions; a dropped one is unknown.
        s.add(&key(3), admin(), "ops".into(), "c3".into(), t0 + 60 * MIN);
        assert_eq!(s.check(&key(2), t0 + 60 * MIN), Lookup::Unknown);
        s.remove(&key(3));
        assert_eq!(s.check(&key(3), t0 + 60 * MIN), Lookup::Unknown);
    }

    #[test]
    fn sessions_are_bounded_and_the_oldest_goes_first() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        for n in 0..=MAX_SESSIONS {
            s.add(&key(n as u8), admin(), "ops".into(), "c".into(), t0 + Duration::from_secs(n as u64));
        }
        assert_eq!(s.0.len(), MAX_SESSIONS);
        let now = t0 + Duration::from_secs(100);
        assert_eq!(s.check(&key(0), now), Lookup::Unknown);
        assert!(matches!(s.check(&key(1), now), Lookup::Live { .. }));
        assert!(matches!(s.check(&key(MAX_SESSIONS as u8), now), Lookup::Live { .. }));
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cross_site_requests_are_refused() {
        let ok = |h: &[(&'static str, &str)]| same_origin(&headers(h), None).is_ok();
        assert!(ok(&[("host", "fleet.example:8080")]));
        assert!(ok(&[("host", "fleet.example:8080"), ("sec-fetch-site", "same-origin")]));
        assert!(ok(&[("host", "fleet.example:8080"), ("sec-fetch-site", "none")]));
        assert!(ok(&[("host", "fleet.example:8080"), ("origin", "https://fleet.example:8080")]));
        assert!(ok(&[("host", "Fleet.Example"), ("origin", "http://fleet.example")]));
        assert!(!ok(&[("host", "fleet.example:8080"), ("sec-fetch-site", "same-site")]));
        assert!(!ok(&[("host", "fleet.example:8080"), ("sec-fetch-site", "cross-site")]));
        assert!(!ok(&[("host", "fleet.example:8080"), ("origin", "http://fleet.example:9090")]));
        assert!(!ok(&[("host", "fleet.example:8080"), ("origin", "null")]));
        assert!(!ok(&[("origin", "http://fleet.example:8080")]));
        // HTTP/2 names the host in the request's authority.
        assert!(same_origin(&headers(&[("origin", "https://fleet.example")]), Some("fleet.example")).is_ok());
        let e = same_origin(&headers(&[("host", "a"), ("sec-fetch-site", "cross-site")]), None).unwrap_err();
        assert_eq!(e.0, StatusCode::FORBIDDEN);
        assert!(e.1.contains("Sec-Fetch-Site: cross-site"), "{}", e.1);
    }

    #[test]
    fn a_change_needs_the_sessions_csrf_token() {
        let csrf = "c".repeat(64);
        assert!(check_csrf(&Method::GET, &headers(&[]), &csrf).is_ok());
        assert!(check_csrf(&Method::HEAD, &headers(&[]), &csrf).is_ok());
        for m in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            let e = check_csrf(&m, &headers(&[]), &csrf).unwrap_err();
            assert_eq!(e.0, StatusCode::FORBIDDEN);
            assert!(e.1.contains("missing the X-CSRF-Token header"), "{}", e.1);
            let e = check_csrf(&m, &headers(&[("x-csrf-token", &"d".repeat(64))]), &csrf).unwrap_err();
            assert!(e.1.contains("does not match"), "{}", e.1);
            assert!(check_csrf(&m, &headers(&[("x-csrf-token", "c")]), &csrf).is_err());
            assert!(check_csrf(&m, &headers(&[("x-csrf-token", &csrf)]), &csrf).is_ok());
        }
    }

    #[test]
    fn the_cookie_is_secure_over_tls_only() {
        let plain = set_cookie("ab", SESSION_MAX, false);
        assert_eq!(plain.to_str().unwrap(), "ferry_admin=ab; Max-Age=28800; Path=/; HttpOnly; SameSite=Strict");
        let tls = set_cookie("ab", SESSION_MAX, true);
        assert_eq!(tls.to_str().unwrap(), "ferry_admin=ab; Max-Age=28800; Path=/; HttpOnly; SameSite=Strict; Secure");
        assert_eq!(
            set_cookie("", Duration::ZERO, true).to_str().unwrap(),
            "ferry_admin=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict; Secure"
        );
    }

    /// No channels: these tests need only the fleet.
    struct NoDocuments;

    impl super::super::Documents for NoDocuments {
        fn head(&self, _: &str) -> Option<(crate::fleet::HeadDoc, Vec<u8>)> {
            None
        }
        fn by_id(&self, _: &str) -> Option<Vec<u8>> {
            None
        }
        fn channels(&self) -> Result<Vec<ferry_api::admin::ChannelListing>, String> {
            Ok(Vec::new())
        }
        fn promote(
            &self,
            to: &str,
            _: &ferry_api::admin::PromoteRequest,
        ) -> Result<ferry_api::admin::Promoted, (StatusCode, String)> {
            Err((StatusCode::CONFLICT, format!("no channel {to}")))
        }
        fn trust(&self) -> Result<Option<ferry_store::channel::Trust>, String> {
            Ok(None)
        }
    }

    #[test]
    fn an_expired_or_unknown_session_is_told_to_sign_in_again() {
        let t = tempfile::tempdir().unwrap();
        let settings = crate::fleet::Settings { require_approval: false, enrollments_per_minute: 10 };
        let fleet = crate::fleet::Fleet::open(t.path(), settings).unwrap();
        let s: Shared = std::sync::Arc::new(super::super::FleetState::new(fleet, Box::new(NoDocuments)));
        let t0 = Instant::now();
        lock(&s).add(&key(1), admin(), "ops".into(), "c".repeat(64), t0);
        let h = headers(&[("host", "fleet.example"), ("sec-fetch-site", "same-origin")]);
        let check = |cookies: &[[u8; 32]], at: Instant| by_session(&s, &Method::GET, &h, None, cookies, at);
        let (_, signed) = check(&[key(2), key(1)], t0 + MIN).unwrap();
        assert_eq!((signed.name.as_str(), signed.ends_in), ("ops", SESSION_IDLE));
        let e = check(&[key(1)], t0 + 2 * MIN + SESSION_IDLE).unwrap_err();
        assert_eq!((e.0, e.1.as_str()), (StatusCode::UNAUTHORIZED, "session expired; sign in again"));
        let e = check(&[key(2)], t0).unwrap_err();
        assert!(e.0 == StatusCode::UNAUTHORIZED && e.1.starts_with("not signed in"), "{}", e.1);
        // A change with a live session and no CSRF token is refused before anything else.
        lock(&s).add(&key(3), admin(), "ops".into(), "c".repeat(64), t0);
        let e = by_session(&s, &Method::POST, &h, None, &[key(3)], t0).unwrap_err();
        assert_eq!(e.0, StatusCode::FORBIDDEN);
    }

    #[test]
    fn cookies_are_read_among_others() {
        let h = headers(&[("cookie", "a=1; ferry_admin=xyz; b=2"), ("cookie", "ferry_admin=")]);
        assert_eq!(cookies(&h), vec![*blake3::hash(b"xyz").as_bytes()]);
        assert!(cookies(&headers(&[("cookie", "ferry_adminx=1")])).is_empty());
    }
}
