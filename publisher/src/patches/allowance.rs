//! The bounds on fresh patch work (answers computed rather than read from the cache):
//! [`Limits`] per request and per client, the clients' running requests and buckets of CPU
//! seconds ([`Admission`]), and one request's share of them ([`Allowance`]). Not the
//! computing or the cache (`super`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Bounds on the fresh work (answers computed rather than read from the cache) that
/// requests may cause.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// CPU seconds of fresh work one request may use; the rest of its items that are not
    /// cached are answered plain.
    pub request_seconds: f64,
    /// Patch requests one client may have running at once; more are refused (429).
    pub client_requests: usize,
    /// A client's bucket of CPU seconds: at most this full (a new client starts full) ...
    pub client_burst_seconds: f64,
    /// ... and refilled at this many seconds per minute.
    pub client_seconds_per_minute: f64,
}

impl Default for Limits {
    /// 30 s per request (some 30 MB of fresh patches at level 19), 2 requests at once per
    /// client (a device sends one at a time), 120 s of burst per client refilled at 10 s a
    /// minute: the first device on a new version gets a large update patched; past that,
    /// what it would have computed comes plain and the next device's requests compute more.
    fn default() -> Limits {
        Limits {
            request_seconds: 30.0,
            client_requests: 2,
            client_burst_seconds: 120.0,
            client_seconds_per_minute: 10.0,
        }
    }
}

/// What one client has running and left.
#[derive(Debug)]
struct ClientUse {
    running: usize,
    /// CPU seconds left in the bucket (negative: in debt for work that overran it).
    bucket: f64,
    refilled: Instant,
}

/// The most clients tracked; past it, idle clients with full buckets are forgotten.
const MAX_CLIENTS: usize = 100_000;

type Clients = Arc<Mutex<HashMap<String, ClientUse>>>;

/// Why a request was not admitted: the client has [`Limits::client_requests`] running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    /// Seconds after which to try again.
    pub retry_after: u64,
}

/// One request's allowance of fresh work, from [`Patcher::admit`]; the client's running
/// count drops when it is dropped.
#[derive(Debug)]
pub struct Allowance {
    clients: Clients,
    limits: Limits,
    client: Option<String>,
    /// CPU seconds the request has left.
    left: Mutex<f64>,
}

impl Allowance {
    /// No bound at all (the in-process tools and tests).
    pub fn unlimited() -> Allowance {
        let limits = Limits {
            request_seconds: f64::INFINITY,
            client_requests: usize::MAX,
            client_burst_seconds: f64::INFINITY,
            client_seconds_per_minute: 0.0,
        };
        Allowance { clients: Clients::default(), limits, client: None, left: Mutex::new(f64::INFINITY) }
    }

    /// True if fresh work may start: the request and its client both have seconds left.
    pub(super) fn may_compute(&self) -> bool {
        if *self.left.lock().unwrap_or_else(|e| e.into_inner()) <= 0.0 {
            return false;
        }
        let Some(client) = &self.client else { return true };
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.get_mut(client).is_none_or(|c| refill(c, &self.limits) > 0.0)
    }

    /// Charges `secs` of fresh work to the request and its client.
    pub(super) fn charge(&self, secs: f64) {
        *self.left.lock().unwrap_or_else(|e| e.into_inner()) -= secs;
        if let Some(client) = &self.client {
            if let Some(c) = self.clients.lock().unwrap_or_else(|e| e.into_inner()).get_mut(client) {
                refill(c, &self.limits);
                c.bucket -= secs;
            }
        }
    }
}

impl Drop for Allowance {
    fn drop(&mut self) {
        if let Some(client) = &self.client {
            if let Some(c) = self.clients.lock().unwrap_or_else(|e| e.into_inner()).get_mut(client) {
                c.running = c.running.saturating_sub(1);
            }
        }
    }
}

/// Refills a client's bucket for the time since its last refill; returns what it holds.
fn refill(c: &mut ClientUse, limits: &Limits) -> f64 {
    let now = Instant::now();
    let gained = now.duration_since(c.refilled).as_secs_f64() * limits.client_seconds_per_minute / 60.0;
    c.bucket = (c.bucket + gained).min(limits.client_burst_seconds);
    c.refilled = now;
    c.bucket
}

/// The clients' running patch requests and buckets, and the [`Limits`] they are held to.
#[derive(Debug)]
pub(super) struct Admission {
    limits: Limits,
    clients: Clients,
}

impl Admission {
    pub(super) fn new(limits: Limits) -> Admission {
        Admission { limits, clients: Clients::default() }
    }

    /// The same clients held to other limits.
    pub(super) fn with_limits(self, limits: Limits) -> Admission {
        Admission { limits, ..self }
    }

    /// Admits one request from `client` (a token's owner; `None` when the server knows no
    /// clients, and then only the per-request bound applies), or says when to try again.
    pub(super) fn admit(&self, client: Option<&str>) -> Result<Allowance, Busy> {
        let limits = self.limits;
        if let Some(name) = client {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            if clients.len() >= MAX_CLIENTS && !clients.contains_key(name) {
                clients.retain(|_, c| c.running > 0 || refill(c, &limits) < limits.client_burst_seconds);
            }
            let c = clients.entry(name.to_string()).or_insert_with(|| ClientUse {
                running: 0,
                bucket: limits.client_burst_seconds,
                refilled: Instant::now(),
            });
            if c.running >= limits.client_requests {
                return Err(Busy { retry_after: 1 });
            }
            c.running += 1;
        }
        Ok(Allowance {
            clients: self.clients.clone(),
            limits,
            client: client.map(str::to_string),
            left: Mutex::new(limits.request_seconds),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_runs_a_bounded_number_of_patch_requests_and_spends_a_bounded_budget() {
        let limits = Limits {
            request_seconds: 5.0,
            client_requests: 2,
            client_burst_seconds: 3.0,
            client_seconds_per_minute: 0.0,
        };
        let p = Admission::new(limits);
        let (a, b) = (p.admit(Some("device:A")).unwrap(), p.admit(Some("device:A")).unwrap());
        assert_eq!(p.admit(Some("device:A")).unwrap_err(), Busy { retry_after: 1 });
        // Another client, and requests without a client, are not held up.
        let other = p.admit(Some("device:B")).unwrap();
        let _anonymous = p.admit(None).unwrap();
        drop(b);
        let c = p.admit(Some("device:A")).unwrap();
        // A's bucket (3 s) is shared by its requests; B's is its own.
        assert!(a.may_compute() && c.may_compute());
        a.charge(2.0);
        assert!(a.may_compute() && c.may_compute());
        c.charge(1.5);
        assert!(!a.may_compute() && !c.may_compute());
        assert!(other.may_compute());
        // A request's own bound holds whatever its client's bucket.
        other.charge(2.9);
        assert!(other.may_compute());
        let anonymous = p.admit(None).unwrap();
        anonymous.charge(5.0);
        assert!(!anonymous.may_compute());
    }
}
