//! The web UI's sign-in and who may use the admin API: `Authorization: Bearer <admin token>`
//! (scripts, `ferry`), or a session cookie the page got by posting the token once.
//!
//! What it is for: [`require_admin`], the one check in front of every admin route, and the
//! session routes (`POST /v1/admin/session` signs in, `GET` tells the page its session and
//! CSRF token again after a reload, `DELETE` signs out). What it is not for: whether a token
//! is an admin's (`crate::fleet`), or the admin routes themselves (`admin`).
//!
//! - **Sessions** live in the fleet's store (`crate::fleet::Session`), so every replica on
//!   it knows them: a random 256-bit cookie (kept as its BLAKE3 hash), the admin token's
//!   hash (never the token), the admin's name and a random CSRF token. At most
//!   [`MAX_SESSIONS`] at once (signing in drops expired ones, then the oldest); one ends
//!   [`SESSION_IDLE`] after its last request (its last use is written back at most once a
//!   [`TOUCH_EVERY`], so it may end that much sooner) or [`SESSION_MAX`] after it signed in,
//!   at sign-out, and when its admin token is revoked (checked at every request).
//! - **The cookie** is `HttpOnly; SameSite=Strict; Path=/`, and `Secure` when the request
//!   came over TLS (`crate::connections::Connection::tls`).
//! - **Cross-site requests**: a request with the cookie is refused (403) when its
//!   `Sec-Fetch-Site` says another site or origin, or its `Origin` is not the `Host` it was
//!   sent to; a change (any method but GET and HEAD) also needs the session's CSRF token in
//!   `X-CSRF-Token`, which a page of another origin can neither read nor send. Sign-in checks
//!   the same headers and takes only `Content-Type: application/json` (a form cannot send
//!   it). A bearer token is sent by a script that holds it, never by a browser on its own,
//!   so bearer requests need none of this.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use ferry_api::admin::{SessionInfo, SessionRequest, SignedOut};

use super::{bearer, blocking, parse_json, ApiError, Shared, MAX_BODY};
use crate::connections::Connection;
use crate::fleet::{AdminKey, Caller, Fleet, FleetError, Session};

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

/// A live session's last use is written back when it is older than this.
pub const TOUCH_EVERY: Duration = Duration::from_secs(60);

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

/// The servers' clock, in milliseconds since the epoch (what stored sessions keep).
fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn expired(s: &Session, now: i64) -> bool {
    now.saturating_sub(s.last_used_ms) >= ms(SESSION_IDLE) || now.saturating_sub(s.created_ms) >= ms(SESSION_MAX)
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

/// Opens a session for `cookie` at `now` (ms), dropping expired ones and, at
/// [`MAX_SESSIONS`], the oldest.
pub(super) fn add(
    fleet: &Fleet,
    cookie: &[u8; 32],
    admin: AdminKey,
    name: String,
    csrf: String,
    now: i64,
) -> Result<(), FleetError> {
    let session = Session::new(&admin, name, csrf, now);
    fleet.session_add(cookie, &session, |kept| {
        let mut drop: Vec<[u8; 32]> = kept.iter().filter(|(_, s)| expired(s, now)).map(|(c, _)| *c).collect();
        let mut live: Vec<&([u8; 32], Session)> =
            kept.iter().filter(|(c, s)| !expired(s, now) && c != cookie).collect();
        live.sort_by_key(|(_, s)| s.created_ms);
        let excess = (live.len() + 1).saturating_sub(MAX_SESSIONS);
        drop.extend(live.iter().take(excess).map(|(c, _)| *c));
        drop
    })
}

/// What `cookie` names at `now` (ms); a live session's idle time starts again.
pub(super) fn check(fleet: &Fleet, cookie: &[u8; 32], now: i64) -> Result<Lookup, FleetError> {
    let Some(mut s) = fleet.session(cookie)? else { return Ok(Lookup::Unknown) };
    if expired(&s, now) {
        return Ok(Lookup::Expired);
    }
    let Some(admin) = s.admin_key() else { return Ok(Lookup::Unknown) };
    if now.saturating_sub(s.last_used_ms) >= ms(TOUCH_EVERY) {
        s.last_used_ms = now;
        fleet.session_touch(cookie, &s)?;
    }
    let age = Duration::from_millis(now.saturating_sub(s.created_ms).max(0) as u64);
    let ends_in = SESSION_MAX.saturating_sub(age).min(SESSION_IDLE);
    Ok(Lookup::Live { admin, name: s.name, csrf: s.csrf, ends_in })
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

fn forbidden(why: String) -> ApiError {
    ApiError(StatusCode::FORBIDDEN, why, None)
}

fn unauthorized(why: &str) -> ApiError {
    ApiError(StatusCode::UNAUTHORIZED, why.into(), None)
}

/// The most session cookies of one request that are looked up: a browser sends one (two
/// while an old one lingers under another path); each costs a read of the store.
const MAX_SESSION_COOKIES: usize = 4;

/// The hashes of the session cookies a request carries, the first [`MAX_SESSION_COOKIES`].
fn cookies(headers: &HeaderMap) -> Vec<[u8; 32]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE).and_then(|v| v.strip_prefix('=')))
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .take(MAX_SESSION_COOKIES)
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

/// Who a request with session cookies is, at `now` (ms): its cross-site headers and CSRF
/// token checked, the session live. The admin token's revocation is checked by the caller.
/// Reads the store: run it on a blocking thread.
fn by_session(
    fleet: &Fleet,
    method: &Method,
    headers: &HeaderMap,
    authority: Option<&str>,
    offered: &[[u8; 32]],
    now: i64,
) -> Result<(AdminKey, SignedIn), ApiError> {
    same_origin(headers, authority)?;
    let mut expired = false;
    for cookie in offered {
        match check(fleet, cookie, now)? {
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
        unauthorized("not signed in (signed out, or the session was dropped); sign in again")
    })
}

/// [`by_session`] on a blocking thread.
async fn by_session_blocking(
    s: &Shared,
    method: Method,
    headers: HeaderMap,
    authority: Option<String>,
    offered: Vec<[u8; 32]>,
) -> Result<(AdminKey, SignedIn), ApiError> {
    let st = s.clone();
    tokio::task::spawn_blocking(move || {
        by_session(&st.fleet, &method, &headers, authority.as_deref(), &offered, now_ms())
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("worker failed: {e}"), None))?
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
        match by_session_blocking(&s, req.method().clone(), req.headers().clone(), authority, offered).await {
            Err(e) => Err(e),
            Ok((admin, signed)) => {
                let st = s.clone();
                let cookie = signed.cookie;
                // A revoked admin token ends the session (on every server).
                blocking(move || match st.fleet.admin_by_key(&admin) {
                    Err(e @ FleetError::Unauthorized(_)) => {
                        st.fleet.session_remove(&cookie)?;
                        Err(e)
                    }
                    r => r,
                })
                .await
                .map(|who| (who, Some(signed)))
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
    let (st, hashed, n, c) = (s.clone(), *blake3::hash(cookie.as_bytes()).as_bytes(), name.clone(), csrf.clone());
    blocking(move || add(&st.fleet, &hashed, admin, n, c, now_ms())).await?;
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
    let who = Caller::Admin(signed.name);
    blocking(move || {
        s.fleet.session_remove(&signed.cookie)?;
        s.fleet.record(&who, "sign out", "web UI session".into())
    })
    .await?;
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

    /// A fleet store of its own, for the sessions it keeps.
    fn fleet() -> (tempfile::TempDir, Fleet) {
        let t = tempfile::tempdir().unwrap();
        let f = Fleet::open(t.path(), crate::fleet::Settings::default()).unwrap();
        (t, f)
    }

    const T0: i64 = 1_800_000_000_000;

    fn at(d: Duration) -> i64 {
        T0 + ms(d)
    }

    #[test]
    fn sessions_expire_when_idle_and_at_their_age_limit() {
        let (_t, f) = fleet();
        add(&f, &key(1), admin(), "ops".into(), "c1".into(), T0).unwrap();
        assert_eq!(check(&f, &key(2), T0).unwrap(), Lookup::Unknown);
        let mut now = Duration::ZERO;
        while now + 29 * MIN < SESSION_MAX {
            now += 29 * MIN;
            assert!(matches!(check(&f, &key(1), at(now)).unwrap(), Lookup::Live { .. }), "{now:?} after sign-in");
        }
        assert_eq!(check(&f, &key(1), at(SESSION_MAX)).unwrap(), Lookup::Expired);
        add(&f, &key(2), admin(), "ops".into(), "c2".into(), T0).unwrap();
        assert!(matches!(check(&f, &key(2), at(29 * MIN)).unwrap(), Lookup::Live { .. }));
        assert_eq!(check(&f, &key(2), at(59 * MIN)).unwrap(), Lookup::Expired);
        // Signing in drops expired sessions; a dropped one is unknown.
        add(&f, &key(3), admin(), "ops".into(), "c3".into(), at(60 * MIN)).unwrap();
        assert_eq!(check(&f, &key(2), at(60 * MIN)).unwrap(), Lookup::Unknown);
        f.session_remove(&key(3)).unwrap();
        assert_eq!(check(&f, &key(3), at(60 * MIN)).unwrap(), Lookup::Unknown);
    }

    /// A session's last use is written back at most once a TOUCH_EVERY: requests within it
    /// write nothing, and the idle time counts from the last write.
    #[test]
    fn a_session_s_use_is_written_back_once_a_minute() {
        let (_t, f) = fleet();
        add(&f, &key(1), admin(), "ops".into(), "c".into(), T0).unwrap();
        check(&f, &key(1), at(Duration::from_secs(30))).unwrap();
        assert_eq!(f.session(&key(1)).unwrap().unwrap().last_used_ms, T0);
        check(&f, &key(1), at(Duration::from_secs(61))).unwrap();
        assert_eq!(f.session(&key(1)).unwrap().unwrap().last_used_ms, at(Duration::from_secs(61)));
        assert!(matches!(
            check(&f, &key(1), at(Duration::from_secs(61)) + ms(SESSION_IDLE) - 1).unwrap(),
            Lookup::Live { .. }
        ));
    }

    #[test]
    fn sessions_are_bounded_and_the_oldest_goes_first() {
        let (_t, f) = fleet();
        for n in 0..=MAX_SESSIONS {
            add(&f, &key(n as u8), admin(), "ops".into(), "c".into(), at(Duration::from_secs(n as u64))).unwrap();
        }
        assert_eq!(f.sessions().unwrap().len(), MAX_SESSIONS);
        let now = at(Duration::from_secs(100));
        assert_eq!(check(&f, &key(0), now).unwrap(), Lookup::Unknown);
        assert!(matches!(check(&f, &key(1), now).unwrap(), Lookup::Live { .. }));
        assert!(matches!(check(&f, &key(MAX_SESSIONS as u8), now).unwrap(), Lookup::Live { .. }));
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

    #[test]
    fn an_expired_or_unknown_session_is_told_to_sign_in_again() {
        let (_t, f) = fleet();
        add(&f, &key(1), admin(), "ops".into(), "c".repeat(64), T0).unwrap();
        let h = headers(&[("host", "fleet.example"), ("sec-fetch-site", "same-origin")]);
        let check = |cookies: &[[u8; 32]], now: i64| by_session(&f, &Method::GET, &h, None, cookies, now);
        let (_, signed) = check(&[key(2), key(1)], at(MIN)).unwrap();
        assert_eq!((signed.name.as_str(), signed.ends_in), ("ops", SESSION_IDLE));
        let e = check(&[key(1)], at(2 * MIN + SESSION_IDLE)).unwrap_err();
        assert_eq!((e.0, e.1.as_str()), (StatusCode::UNAUTHORIZED, "session expired; sign in again"));
        let e = check(&[key(2)], T0).unwrap_err();
        assert!(e.0 == StatusCode::UNAUTHORIZED && e.1.starts_with("not signed in"), "{}", e.1);
        // A change with a live session and no CSRF token is refused before anything else.
        add(&f, &key(3), admin(), "ops".into(), "c".repeat(64), T0).unwrap();
        let e = by_session(&f, &Method::POST, &h, None, &[key(3)], T0).unwrap_err();
        assert_eq!(e.0, StatusCode::FORBIDDEN);
    }

    #[test]
    fn cookies_are_read_among_others() {
        let h = headers(&[("cookie", "a=1; ferry_admin=xyz; b=2"), ("cookie", "ferry_admin=")]);
        assert_eq!(cookies(&h), vec![*blake3::hash(b"xyz").as_bytes()]);
        assert!(cookies(&headers(&[("cookie", "ferry_adminx=1")])).is_empty());
    }

    #[test]
    fn a_request_s_cookies_past_the_fourth_are_not_looked_up() {
        // A hundred cookies in one header and fifty more headers: four lookups at most, so a
        // client cannot make one request cost a hundred reads of the store.
        let many: Vec<String> = (0..100).map(|i| format!("ferry_admin=v{i}")).collect();
        let mut pairs = vec![("cookie", many.join("; "))];
        pairs.extend((0..50).map(|i| ("cookie", format!("ferry_admin=w{i}"))));
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let got = cookies(&headers(&pairs));
        let first: Vec<[u8; 32]> = (0..4).map(|i| *blake3::hash(format!("v{i}").as_bytes()).as_bytes()).collect();
        assert_eq!(got, first);
    }
}
