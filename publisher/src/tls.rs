//! TLS for `ferry serve`: the certificate and key from files, reloaded when they change on
//! disk or on SIGHUP, and the client certificates a fleet's devices may present.
//!
//! What it is for: the `rustls::ServerConfig` the connections are accepted with. What it is
//! not for: the connections themselves (`connections`: caps, timeouts, HTTP/1.1 and HTTP/2
//! by ALPN), or what a client certificate entitles a device to (`fleet`).
//!
//! - **Provider**: ring only (the same crypto as the device; no aws-lc-rs). TLS 1.2 and 1.3;
//!   ALPN offers `h2` and `http/1.1`.
//! - **Reload**: the files are looked at every [`RELOAD_POLL`] and on SIGHUP; when either
//!   changed (size, modification time or inode, so a renamed-in file or a switched symlink
//!   counts), both are read again and the pair is swapped in only if the key matches the
//!   certificate. Handshakes after the swap get the new certificate; connections already
//!   open keep theirs, so nothing in flight is cut. A pair that fails (a renewal tool that
//!   has written the certificate but not yet the key) keeps the old one serving and is
//!   retried at the next look, logged once per state of the files.
//! - **Client certificates** (`--client-ca`): devices may present a certificate issued by
//!   the fleet's CA; one without is still served (a device enrolls with its token before it
//!   has one). The certificate's SHA-256 reaches the routes in the connection's
//!   [`crate::connections::Connection`], and the fleet decides what it is worth.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

/// How often the certificate and key files are looked at for a change.
pub const RELOAD_POLL: Duration = Duration::from_secs(5);

/// The most bytes of a certificate, key or CA file read.
const MAX_PEM: u64 = 4 << 20;

/// The files `ferry serve --tls-cert --tls-key [--client-ca]` names.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

/// The server's TLS: its configuration and the certificate it reloads.
#[derive(Debug, Clone)]
pub struct Tls {
    pub config: Arc<rustls::ServerConfig>,
    certificate: Arc<Reloading>,
}

impl Tls {
    /// Reads the files; an error names the file and what is wrong with it. With
    /// `client_ca`, clients may present a certificate it issued (none is still served).
    pub fn load(files: &TlsFiles, client_ca: Option<&Path>) -> Result<Tls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certificate = Arc::new(Reloading::load(files.cert.clone(), files.key.clone(), &provider)?);
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("choosing TLS versions")?;
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                let (added, _) = roots.add_parsable_certificates(read_certificates(ca)?);
                if added == 0 {
                    bail!("{}: no usable CA certificate in it", ca.display());
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .allow_unauthenticated()
                    .build()
                    .with_context(|| format!("{}: cannot verify client certificates with it", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(certificate.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls { config: Arc::new(config), certificate })
    }

    /// Reloads the certificate when its files change (looked at every [`RELOAD_POLL`]) or
    /// on SIGHUP, until `stop` resolves.
    pub async fn watch(&self, stop: impl std::future::Future<Output = ()>) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = signal(SignalKind::hangup()).ok();
        let mut stop = std::pin::pin!(stop);
        let mut tick = tokio::time::interval(RELOAD_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => false,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            let certificate = self.certificate.clone();
            // File reads on the blocking pool: a slow disk does not hold a runtime thread.
            let _ = tokio::task::spawn_blocking(move || certificate.reload_if_changed(forced)).await;
        }
    }
}

/// What identifies a file's content cheaply: a renewal replaces it (new inode or mtime).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(u64, u64, i64, i64)>);

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    // `metadata` follows symlinks: certbot's live/ links switching to new files count.
    Stamp(std::fs::metadata(path).ok().map(|m| (m.ino(), m.len(), m.mtime(), m.mtime_nsec())))
}

/// The certificate's and the key's stamps.
type Stamps = (Stamp, Stamp);

/// The certificate handshakes get, swapped when its files change.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' stamps when `current` was read, and the stamps a reload last failed at.
    seen: Mutex<(Stamps, Option<Stamps>)>,
}

impl Reloading {
    fn load(cert: PathBuf, key: PathBuf, provider: &Arc<rustls::crypto::CryptoProvider>) -> Result<Reloading> {
        let stamps = (stamp(&cert), stamp(&key));
        let current = certified(&cert, &key, provider)?;
        Ok(Reloading {
            cert,
            key,
            provider: provider.clone(),
            current: RwLock::new(Arc::new(current)),
            seen: Mutex::new((stamps, None)),
        })
    }

    /// Reads the pair again if a file changed (or `forced`), and swaps it in if it is good.
    fn reload_if_changed(&self, forced: bool) {
        let stamps = (stamp(&self.cert), stamp(&self.key));
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if !forced && seen.0 == stamps {
            return;
        }
        match certified(&self.cert, &self.key, &self.provider) {
            Ok(new) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
                *seen = (stamps, None);
                tracing::info!(cert = %self.cert.display(), "loaded a new TLS certificate");
            }
            Err(e) => {
                if seen.1.as_ref() != Some(&stamps) || forced {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "the TLS certificate changed on disk but cannot be used; still serving the previous one"
                    );
                }
                seen.1 = Some(stamps);
            }
        }
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The certificate chain and key of two PEM files, checked to belong together.
fn certified(cert: &Path, key: &Path, provider: &rustls::crypto::CryptoProvider) -> Result<CertifiedKey> {
    let chain = read_certificates(cert)?;
    let pem = read_small(key)?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        anyhow!("{}: no private key in it (expected PEM, -----BEGIN PRIVATE KEY-----): {e}", key.display())
    })?;
    CertifiedKey::from_der(chain, der, provider).map_err(|e| {
        anyhow!(
            "{} and {}: the key does not belong to the certificate, or its type is not supported: {e}",
            key.display(),
            cert.display()
        )
    })
}

/// Every certificate of a PEM file.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_small(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no certificate in it (expected PEM, -----BEGIN CERTIFICATE-----)", path.display());
    }
    Ok(certs)
}

fn read_small(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    file.take(MAX_PEM + 1).read_to_end(&mut out).with_context(|| format!("reading {}", path.display()))?;
    if out.len() as u64 > MAX_PEM {
        bail!("{}: larger than the {MAX_PEM} bytes a certificate file may be", path.display());
    }
    Ok(out)
}

/// Where the system's CA bundle is looked for (after `SSL_CERT_FILE`): Debian and Ubuntu,
/// Fedora and RHEL, Alpine and others.
const SYSTEM_BUNDLES: &[&str] =
    &["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/// An HTTP client builder for the operator's commands: `https://` servers verified against
/// `ca_file` (the fleet's CA) or the system's roots. Without either, only `http://` works.
pub fn https_client(ca_file: Option<&Path>) -> Result<reqwest::ClientBuilder> {
    let bundle = match ca_file {
        Some(p) => Some(p.to_path_buf()),
        None => std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .into_iter()
            .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
            .find(|p| p.is_file()),
    };
    // The server never redirects: an answer that does must not take the admin token's
    // request elsewhere.
    let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if let Some(path) = bundle {
        for cert in read_certificates(&path)? {
            let cert = reqwest::Certificate::from_der(&cert)
                .with_context(|| format!("{}: a certificate in it cannot be used", path.display()))?;
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}
