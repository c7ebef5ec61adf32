//! The channel documents the fleet's API serves to devices and the admin API lists and
//! promotes ([`crate::fleet_api::Documents`]), read from the served repository; with an
//! online channel key, promotions are written to it.

use std::time::Instant;

use axum::http::StatusCode;
use ferry_api::admin::{ChannelListing, PromoteRequest, Promoted};
use ferry_store::{Id, Repository, StoreError};

use super::{catch_up, Shared};

/// How stale the repository may be for a check-in's channel document.
const CHECKIN_FRESHNESS: std::time::Duration = std::time::Duration::from_millis(250);

/// Channel documents for the fleet, read from the repository; with an online channel key,
/// promotions written to it (the repository is opened for writing just for that).
/// How fresh a look for a channel the server has not seen must be.
const MISS_FRESHNESS: std::time::Duration = std::time::Duration::from_secs(1);

/// Warns in the log of every channel whose document expires within
/// [`ferry_api::admin::EXPIRY_WARNING`] (or has expired): once at the start, then hourly,
/// until the server's state is dropped (outside a runtime, never).
pub(super) fn watch_expiry(state: &Shared) {
    use crate::fleet_api::Documents;
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let weak = std::sync::Arc::downgrade(state);
    runtime.spawn(async move {
        loop {
            let Some(s) = weak.upgrade() else { return };
            match tokio::task::spawn_blocking(move || RepoDocuments(s, None).channels()).await {
                Ok(Ok(list)) => {
                    for warning in list.into_iter().filter_map(|c| c.warning) {
                        tracing::warn!("{warning}");
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "the channels cannot be read to check their expiry"),
                Err(e) => tracing::warn!(error = %e, "the channels' expiry check failed"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
    });
}

pub(super) struct RepoDocuments(pub(super) Shared, pub(super) Option<ferry_store::SecretKey>);

impl crate::fleet_api::Documents for RepoDocuments {
    fn head(&self, channel: &str) -> Option<(crate::fleet::HeadDoc, Vec<u8>)> {
        // Check-ins come by the thousand: a promotion reaches them within CHECKIN_FRESHNESS
        // instead of every check-in catching up with the writer on its own.
        catch_up(&self.0, Instant::now() - CHECKIN_FRESHNESS).ok()?;
        ferry_store::repo::check_branch_name(channel).ok()?;
        let id = match self.0.repo.channel(channel).ok()? {
            Some(id) => id,
            None => {
                // A channel not seen yet may be brand new: look again, caught up within the
                // last second (not at every check-in: the devices of a retired or mistyped
                // channel would each make the server catch up with the writer).
                catch_up(&self.0, Instant::now() - MISS_FRESHNESS).ok()?;
                self.0.repo.channel(channel).ok()??
            }
        };
        let envelope = self.0.repo.read_envelope(&id).ok()?;
        let doc = ferry_store::channel::ChannelDoc::decode(&envelope.document).ok()?;
        let head = crate::fleet::HeadDoc {
            id: id.to_hex(),
            serial: doc.serial,
            targets: doc.targets.iter().map(|t| (t.hardware.clone(), t.commit.to_hex())).collect(),
        };
        Some((head, envelope.encode()))
    }

    fn by_id(&self, id: &str) -> Option<Vec<u8>> {
        let id: Id = id.parse().ok()?;
        Some(self.0.repo.read_envelope(&id).ok()?.encode())
    }

    fn channels(&self) -> Result<Vec<ChannelListing>, String> {
        catch_up(&self.0, Instant::now()).map_err(|e| e.1)?;
        let repo = &self.0.repo;
        let mut out = Vec::new();
        for (name, _) in repo.channels().map_err(|e| e.to_string())? {
            let history = crate::channels::history(repo, &name).map_err(|e| format!("{e:#}"))?;
            let Some((id, doc, _)) = history.first() else { continue };
            let upstream = repo.upstream(&name).map_err(|e| e.to_string())?;
            let documents = history.iter().map(|(id, d, _)| crate::channels::document(id, d)).collect();
            let mut listing = ChannelListing::new(crate::channels::document(id, doc), documents, upstream);
            listing.warning = ferry_api::admin::expiry_warning(&name, listing.expires, crate::fleet::now());
            out.push(listing);
        }
        Ok(out)
    }

    fn trust(&self) -> Result<Option<ferry_store::channel::Trust>, String> {
        catch_up(&self.0, Instant::now()).map_err(|e| e.1)?;
        crate::channels::current_trust(&self.0.repo).map_err(|e| format!("{e:#}"))
    }

    fn promote(&self, to: &str, req: &PromoteRequest) -> Result<Promoted, (StatusCode, String)> {
        let key = self.1.as_ref().ok_or_else(|| {
            (
                StatusCode::CONFLICT,
                "this server holds no channel key: start it with --channel-key, or promote with `ferry promote`"
                    .to_string(),
            )
        })?;
        let repo = Repository::open(self.0.repo.path()).map_err(|e| match e {
            StoreError::Locked { .. } => {
                (StatusCode::CONFLICT, "the repository is being written (a commit is running); try again".to_string())
            }
            e => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        })?;
        let bad = |e: anyhow::Error| (StatusCode::BAD_REQUEST, format!("{e:#}"));
        let commit = req.commit.as_deref().map(|c| repo.resolve(c)).transpose().map_err(|e| bad(e.into()))?;
        let expires_in = crate::channels::parse_duration(req.expires.as_deref().unwrap_or("7d")).map_err(bad)?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let p = crate::channels::Promotion {
            to: to.to_string(),
            commit,
            from: req.from.clone(),
            hardware: req.hardware.clone(),
            keys: std::slice::from_ref(key),
            expires_in,
            rollback: req.rollback,
            force: req.force,
            create: req.create,
            now,
        };
        let out = crate::channels::promote(&repo, &p).map_err(bad)?;
        Ok(Promoted { changed: out.changed, document: crate::channels::document(&out.id, &out.doc) })
    }
}
