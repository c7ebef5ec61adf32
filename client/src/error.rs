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
    Failure::of(e).is_none()
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
        // Context added on the way up keeps the kind.
        let wrapped = trial.context("while updating");
        assert!(matches!(Failure::of(&wrapped), Some(Failure::TrialFailed(_))));
    }
}
