//! The password's guard: one comparison a second on a schedule every connection shares,
//! reserved before it is made, and the lockout after ten wrong passwords in a row (the
//! rules are in the parent module's documentation).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::sessions::same;
use super::{error, lock, Shared, ATTEMPT_SPACING, LOCKOUT_AFTER, LOCKOUT_FIRST, LOCKOUT_MAX, MAX_ATTEMPT_WAIT};

/// The password's schedule and lockout, shared by every connection.
#[derive(Debug)]
pub(super) struct Attempts {
    /// The earliest instant the next attempt may be compared.
    next_slot: Instant,
    /// Wrong passwords since the last right one or the last lockout.
    failures: u32,
    /// Lockouts since the last right password.
    lockouts: u32,
    locked_until: Option<Instant>,
}

/// Why an attempt was refused without comparing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Too many wrong passwords: every attempt is refused for this long.
    Locked(Duration),
    /// Too many attempts waiting: one may be made after this long.
    Busy(Duration),
}

/// What an attempt came to at its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Right,
    /// The `in_a_row`th wrong password in a row; `locked`: it started a lockout this long.
    Wrong {
        in_a_row: u32,
        locked: Option<Duration>,
    },
    /// A lockout began while the attempt waited: not compared.
    Refused(Refusal),
}

impl Attempts {
    pub(super) fn new(now: Instant) -> Attempts {
        Attempts { next_slot: now, failures: 0, lockouts: 0, locked_until: None }
    }

    fn locked_for(&self, now: Instant) -> Option<Duration> {
        self.locked_until.map(|u| u.saturating_duration_since(now)).filter(|d| !d.is_zero())
    }

    /// Takes the next slot for an attempt: the instant it may be compared. The slot is spent
    /// whatever happens to the attempt afterwards.
    pub(super) fn reserve(&mut self, now: Instant) -> Result<Instant, Refusal> {
        if let Some(left) = self.locked_for(now) {
            return Err(Refusal::Locked(left));
        }
        let slot = self.next_slot.max(now);
        let wait = slot - now;
        if wait > MAX_ATTEMPT_WAIT {
            return Err(Refusal::Busy(wait - MAX_ATTEMPT_WAIT));
        }
        self.next_slot = slot + ATTEMPT_SPACING;
        Ok(slot)
    }

    /// Settles an attempt at its slot: compares it with `right` (unless a lockout began
    /// meanwhile) and counts the outcome.
    fn judge(&mut self, now: Instant, right: impl FnOnce() -> bool) -> Verdict {
        if let Some(left) = self.locked_for(now) {
            return Verdict::Refused(Refusal::Locked(left));
        }
        if right() {
            self.failures = 0;
            self.lockouts = 0;
            self.locked_until = None;
            return Verdict::Right;
        }
        self.failures += 1;
        let in_a_row = self.failures;
        if in_a_row < LOCKOUT_AFTER {
            return Verdict::Wrong { in_a_row, locked: None };
        }
        let length = LOCKOUT_FIRST.saturating_mul(1 << self.lockouts.min(16)).min(LOCKOUT_MAX);
        self.failures = 0;
        self.lockouts = self.lockouts.saturating_add(1);
        self.locked_until = Some(now + length);
        Verdict::Wrong { in_a_row, locked: Some(length) }
    }
}

/// How a password was given, for the log.
#[derive(Debug, Clone, Copy)]
pub(super) enum Via {
    SignIn,
    Bearer,
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Via::SignIn => "sign-in",
            Via::Bearer => "bearer",
        })
    }
}

/// Whole seconds, rounded up: what a person is told to wait.
pub(super) fn seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// 429 with the reason and Retry-After.
pub(super) fn refused(r: Refusal) -> Response<Full<Bytes>> {
    let (message, wait) = match r {
        Refusal::Locked(d) => (format!("too many wrong passwords; locked for {} s", seconds(d)), d),
        Refusal::Busy(d) => (format!("too many password attempts at once; try again in {} s", seconds(d)), d),
    };
    let mut resp = error(StatusCode::TOO_MANY_REQUESTS, &message);
    resp.headers_mut().insert("retry-after", seconds(wait).into());
    resp
}

/// Checks a password on the schedule (see the module documentation): takes a slot, then
/// waits for it and compares in a task of its own, which a client hanging up cannot stop.
pub(super) async fn check_password(
    shared: &Arc<Shared>,
    given: blake3::Hash,
    peer: SocketAddr,
    via: Via,
) -> Result<(), Response<Full<Bytes>>> {
    let reserved = lock(&shared.attempts).reserve(Instant::now());
    let slot = match reserved {
        Ok(slot) => slot,
        Err(r) => {
            tracing::debug!("local page: a {via} password from {peer} refused uncompared: {r:?}");
            return Err(refused(r));
        }
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task_shared = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep_until(tokio::time::Instant::from_std(slot)).await;
        let shared = task_shared;
        let verdict = lock(&shared.attempts).judge(Instant::now(), || same(&given, &shared.password));
        match verdict {
            Verdict::Right => match via {
                Via::SignIn => tracing::info!("local page: signed in from {peer}"),
                Via::Bearer => tracing::debug!("local page: a right bearer password from {peer}"),
            },
            Verdict::Wrong { in_a_row, locked: None } => {
                tracing::warn!("local page: a wrong password ({via}) from {peer}, {in_a_row} in a row")
            }
            Verdict::Wrong { in_a_row, locked: Some(d) } => tracing::warn!(
                "local page: a wrong password ({via}) from {peer}, {in_a_row} in a row: locked for {} s",
                seconds(d)
            ),
            Verdict::Refused(r) => {
                tracing::debug!("local page: a {via} password from {peer} refused uncompared: {r:?}")
            }
        }
        let _ = tx.send(verdict);
    });
    match rx.await {
        Ok(Verdict::Right) => Ok(()),
        Ok(Verdict::Wrong { locked: None, .. }) => Err(error(StatusCode::UNAUTHORIZED, "wrong password")),
        Ok(Verdict::Wrong { locked: Some(d), .. }) => {
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                &format!("wrong password; too many wrong passwords; locked for {} s", seconds(d)),
            );
            resp.headers_mut().insert("retry-after", seconds(d).into());
            Err(resp)
        }
        Ok(Verdict::Refused(r)) => Err(refused(r)),
        Err(_) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, "lost track of a password check")),
    }
}

#[cfg(test)]
mod tests {
    //! The time rules on a clock the test moves; the attacks themselves run against the
    //! real `ferryd local-ui` in `tests/it/local_ui.rs`.

    use super::*;

    #[test]
    fn attempts_are_a_second_apart_and_the_queue_is_bounded() {
        let t0 = Instant::now();
        let mut a = Attempts::new(t0);
        let slots: Vec<_> = (0..11).map(|_| a.reserve(t0)).collect();
        for (i, slot) in slots.iter().enumerate() {
            assert_eq!(*slot, Ok(t0 + ATTEMPT_SPACING * i as u32));
        }
        // The twelfth would wait 11 s: refused at once, and it takes no slot.
        assert_eq!(a.reserve(t0), Err(Refusal::Busy(Duration::from_secs(1))));
        assert_eq!(a.reserve(t0 + Duration::from_secs(1)), Ok(t0 + Duration::from_secs(11)));
    }

    #[test]
    fn lockout_doubles_up_to_fifteen_minutes_and_a_success_resets_it() {
        let mut now = Instant::now();
        let mut a = Attempts::new(now);
        let mut lengths = Vec::new();
        for _ in 0..6 {
            for i in 1..LOCKOUT_AFTER {
                assert_eq!(a.judge(now, || false), Verdict::Wrong { in_a_row: i, locked: None });
            }
            let Verdict::Wrong { locked: Some(d), .. } = a.judge(now, || false) else { panic!("no lockout") };
            lengths.push(d.as_secs() / 60);
            // Locked: even the right password is refused, and not compared.
            assert_eq!(a.reserve(now), Err(Refusal::Locked(d)));
            assert_eq!(
                a.judge(now + d / 2, || panic!("compared while locked")),
                Verdict::Refused(Refusal::Locked(d / 2))
            );
            now += d;
        }
        assert_eq!(lengths, [1, 2, 4, 8, 15, 15]);
        assert_eq!(a.judge(now, || true), Verdict::Right);
        for _ in 1..LOCKOUT_AFTER {
            a.judge(now, || false);
        }
        assert_eq!(a.judge(now, || false), Verdict::Wrong { in_a_row: LOCKOUT_AFTER, locked: Some(LOCKOUT_FIRST) });
    }
}
