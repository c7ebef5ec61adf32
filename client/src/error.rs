//! The failures code decides on. An update, an apply or a deploy that fails for another
//! reason (the server unreachable, a connection cut, a full disk) is an `anyhow` error and is
//! tried again; these two are not.

/// Why an update did not happen, where the reason decides what comes next.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Untrusted or wrong content, or a rule of this device (a downgrade, a pin, no space):
    /// no retry can fix it, and nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// The release was switched to and failed its trial: the device went back (or, with
    /// nothing to go back to, keeps it, marked bad). It is never installed again.
    #[error("{0}")]
    TrialFailed(String),
    /// The fleet server does not let this device in yet (or any more): it is pending an
    /// operator's acceptance, a re-enrollment waits for approval, or it was revoked.
    #[error("{0}")]
    NotAccepted(String),
    /// The configuration file is missing: the device is not set up.
    #[error("{0}")]
    NoConfiguration(String),
}

/// `ferryd`'s exit codes, for scripts (README "Exit codes").
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// `fsck` or `doctor` found problems (each printed).
    pub const PROBLEMS: u8 = 1;
    /// Any other error: a bad argument or configuration, a local failure.
    pub const ERROR: u8 = 2;
    /// The update was refused: untrusted or wrong content, or a rule of this device.
    pub const REFUSED: u8 = 3;
    /// The release failed its trial and the device went back (or keeps it, marked bad).
    pub const ROLLED_BACK: u8 = 4;
    /// The server could not be reached (connection refused, timed out, name unknown).
    pub const UNREACHABLE: u8 = 5;
    /// The fleet server does not accept this device yet: waiting for an operator.
    pub const NOT_ACCEPTED: u8 = 6;
    /// No configuration file.
    pub const NO_CONFIGURATION: u8 = 7;
}

/// The exit code an error ends `ferryd` with.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match Failure::of(e) {
        Some(Failure::Refused(_)) => return exit::REFUSED,
        Some(Failure::TrialFailed(_)) => return exit::ROLLED_BACK,
        Some(Failure::NotAccepted(_)) => return exit::NOT_ACCEPTED,
        Some(Failure::NoConfiguration(_)) => return exit::NO_CONFIGURATION,
        None => {}
    }
    // Only a connection that never came about: a reset or a timeout in the middle of an
    // answer is a server that was reached.
    let unreachable = e.chain().any(|cause| {
        if let Some(r) = cause.downcast_ref::<reqwest::Error>() {
            return r.is_connect();
        }
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
            use std::io::ErrorKind::*;
            matches!(io.kind(), ConnectionRefused | HostUnreachable | NetworkUnreachable)
        })
    });
    if unreachable {
        exit::UNREACHABLE
    } else {
        exit::ERROR
    }
}

/// How `e` is told to a person: its chain of contexts, except that a request which got no
/// answer (no connection, or none in time) ends in what failed at the bottom and what to
/// check, not in the HTTP library's layers (`client error (Connect): tcp connect error`).
pub fn describe(e: &anyhow::Error) -> String {
    let Some(r) = e.chain().find_map(|c| c.downcast_ref::<reqwest::Error>()) else { return format!("{e:#}") };
    if !(r.is_connect() || r.is_timeout()) {
        return format!("{e:#}");
    }
    let mut root: &dyn std::error::Error = r;
    while let Some(next) = root.source() {
        root = next;
    }
    let url = r.url().map_or_else(|| "the server".to_string(), |u| format!("{}://{}", u.scheme(), u.authority()));
    let what =
        if r.is_connect() { format!("cannot reach {url}: {root}") } else { format!("no answer from {url} in time") };
    let above: Vec<String> =
        e.chain().take_while(|c| c.downcast_ref::<reqwest::Error>().is_none()).map(|c| c.to_string()).collect();
    let hint = "(is `server` in the configuration right, and the network up? `ferryd doctor` checks both)";
    match above.is_empty() {
        true => format!("{what} {hint}"),
        false => format!("{}: {what} {hint}", above.join(": ")),
    }
}

impl Failure {
    /// The failure an error is, if it is one.
    pub fn of(e: &anyhow::Error) -> Option<&Failure> {
        e.downcast_ref()
    }
}

/// The retry policy: another attempt may succeed unless the update was refused or the
/// release failed its trial.
pub fn retryable(e: &anyhow::Error) -> bool {
    !matches!(Failure::of(e), Some(Failure::Refused(_) | Failure::TrialFailed(_)))
}

/// Whether `e` is a failed trial (already recorded by the trial; not an update error).
pub fn is_failed_trial(e: &anyhow::Error) -> bool {
    matches!(Failure::of(e), Some(Failure::TrialFailed(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_and_failed_trials_are_final() {
        let refused: anyhow::Error = Failure::Refused("untrusted".into()).into();
        let trial: anyhow::Error = Failure::TrialFailed("rolled back".into()).into();
        let network = anyhow::anyhow!("connection reset");
        assert!(!retryable(&refused) && !retryable(&trial) && retryable(&network));
        assert!(is_failed_trial(&trial) && !is_failed_trial(&refused));
        // A device waiting for an operator asks again.
        let pending: anyhow::Error = Failure::NotAccepted("pending".into()).into();
        assert!(retryable(&pending));
        assert_eq!(exit_code(&pending.context("checking in")), exit::NOT_ACCEPTED);
        assert_eq!(exit_code(&refused), exit::REFUSED);
        assert_eq!(exit_code(&network), exit::ERROR);
        let refused_connection = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(exit_code(&refused_connection.context("connecting")), exit::UNREACHABLE);
        // Context added on the way up keeps the kind.
        let wrapped = trial.context("while updating");
        assert!(matches!(Failure::of(&wrapped), Some(Failure::TrialFailed(_))));
    }
}
