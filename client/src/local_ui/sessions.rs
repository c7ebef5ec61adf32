//! Signed-in sessions (random cookies kept only as hashes, ending when idle or old) and
//! what a request offers to be let in.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, COOKIE as COOKIE_HEADER};
use hyper::{Request, Response, StatusCode};

use super::guard::{check_password, Via};
use super::{error, lock, Shared, COOKIE, MAX_SESSIONS, SESSION_IDLE, SESSION_MAX};

/// A signed-in browser's session.
#[derive(Debug)]
pub(super) struct Session {
    /// BLAKE3 of the cookie's value (the value itself is kept nowhere).
    token: blake3::Hash,
    created: Instant,
    last_used: Instant,
}

impl Session {
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_used) >= SESSION_IDLE
            || now.saturating_duration_since(self.created) >= SESSION_MAX
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SessionCheck {
    Valid,
    Expired,
    Unknown,
}

/// The sessions signed in, oldest first. An expired one stays (its cookie is told it expired)
/// until the next sign-in drops it, or it is pushed out.
#[derive(Debug, Default)]
pub(super) struct Sessions(VecDeque<Session>);

impl Sessions {
    pub(super) fn add(&mut self, token: blake3::Hash, now: Instant) {
        self.0.retain(|s| !s.expired(now));
        if self.0.len() >= MAX_SESSIONS {
            self.0.pop_front();
        }
        self.0.push_back(Session { token, created: now, last_used: now });
    }

    /// Whether `token` is a live session; a live one's idle time starts again.
    pub(super) fn check(&mut self, token: &blake3::Hash, now: Instant) -> SessionCheck {
        match self.0.iter_mut().find(|s| same(&s.token, token)) {
            None => SessionCheck::Unknown,
            Some(s) if s.expired(now) => SessionCheck::Expired,
            Some(s) => {
                s.last_used = now;
                SessionCheck::Valid
            }
        }
    }

    pub(super) fn remove(&mut self, token: &blake3::Hash) {
        self.0.retain(|s| !same(&s.token, token));
    }
}

/// The session cookies a request carries, hashed.
pub(super) fn cookie_tokens(req: &Request<Incoming>) -> Vec<blake3::Hash> {
    req.headers()
        .get_all(COOKIE_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE).and_then(|v| v.strip_prefix('=')))
        .filter(|v| !v.is_empty())
        .map(|v| blake3::hash(v.as_bytes()))
        .collect()
}

/// Compares two hashes without an early exit.
pub(super) fn same(a: &blake3::Hash, b: &blake3::Hash) -> bool {
    a.as_bytes().iter().zip(b.as_bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a request offers to be let in: a bearer password and session cookies, hashed.
pub(super) fn offered(req: &Request<Incoming>) -> (Option<blake3::Hash>, Vec<blake3::Hash>) {
    let bearer = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|given| blake3::hash(given.as_bytes()));
    (bearer, cookie_tokens(req))
}

/// Lets a request that needs a session through: a live session cookie, or the right bearer
/// password (on the schedule).
pub(super) async fn authorize(
    shared: &Arc<Shared>,
    bearer: Option<blake3::Hash>,
    tokens: Vec<blake3::Hash>,
    peer: SocketAddr,
) -> Result<(), Response<Full<Bytes>>> {
    if let Some(given) = bearer {
        return check_password(shared, given, peer, Via::Bearer).await;
    }
    let now = Instant::now();
    let mut sessions = lock(&shared.sessions);
    let mut seen = SessionCheck::Unknown;
    for token in &tokens {
        match sessions.check(token, now) {
            SessionCheck::Valid => return Ok(()),
            SessionCheck::Expired => seen = SessionCheck::Expired,
            SessionCheck::Unknown => {}
        }
    }
    Err(match seen {
        SessionCheck::Expired => error(StatusCode::UNAUTHORIZED, "session expired; sign in again"),
        _ => error(StatusCode::UNAUTHORIZED, "sign in first (or send Authorization: Bearer <password>)"),
    })
}

#[cfg(test)]
mod tests {
    //! The time rules on a clock the test moves; the attacks themselves run against the
    //! real `ferryd local-ui` in `tests/it/local_ui.rs`.

    use super::*;
    use std::time::Duration;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn sessions_expire_when_idle_and_at_their_age_limit() {
        let t0 = Instant::now();
        let (a, b) = (blake3::hash(b"a"), blake3::hash(b"b"));
        let mut s = Sessions::default();
        s.add(a, t0);
        assert_eq!(s.check(&b, t0), SessionCheck::Unknown);
        // Used every 29 minutes, a session lives until its age limit.
        let mut now = t0;
        while now + 29 * MIN < t0 + SESSION_MAX {
            now += 29 * MIN;
            assert_eq!(s.check(&a, now), SessionCheck::Valid, "{:?} after sign-in", now - t0);
        }
        assert_eq!(s.check(&a, t0 + SESSION_MAX), SessionCheck::Expired);
        // Left alone for 30 minutes, it ends, and stays ended.
        s.add(b, t0);
        assert_eq!(s.check(&b, t0 + 29 * MIN), SessionCheck::Valid);
        assert_eq!(s.check(&b, t0 + 59 * MIN), SessionCheck::Expired);
        assert_eq!(s.check(&b, t0 + 60 * MIN), SessionCheck::Expired);
        // The next sign-in drops expired sessions; a dropped one is unknown.
        s.add(blake3::hash(b"c"), t0 + 60 * MIN);
        assert_eq!(s.check(&b, t0 + 60 * MIN), SessionCheck::Unknown);
    }
}
