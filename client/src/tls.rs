//! TLS for the agent's connections to the server: which certificates it trusts, the time it
//! judges them at, and errors a technician can act on.
//!
//! What it is for: the `rustls::ClientConfig` every request to the server goes through, and
//! turning a refused handshake into a sentence. What it is not for: requests (`http`), or
//! the device's own page (`local_ui`).
//!
//! - **Roots.** `ca_file` in `ferryd.toml` pins the fleet's own CA (PEM, one or more
//!   certificates): the server's certificate must chain to it and nothing else. Without it
//!   the system's bundle is used (`SSL_CERT_FILE`, else Debian's, Fedora's or Alpine's
//!   path). ring is the only crypto provider (it cross-compiles for ARM); there is no
//!   platform verifier on the device.
//! - **Time.** A device's clock may read 1970 at first boot. A certificate is judged at the
//!   later of the clock and the device's clock floor (the newest signed time it has seen, at
//!   least the agent's build date), the floor channel documents are judged with: a clock
//!   behind cannot make a valid certificate look "not valid yet", and cannot make an expired
//!   one valid either (the floor only grows, and an expired certificate stays expired at any
//!   later time).
//! - **Errors.** A certificate refused for its time says what the clock and the floor read,
//!   so a wrong clock is told from a wrong certificate; one from an unknown CA names the
//!   roots it was checked against; one for another name says so.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use ferry_store::time::format_utc as utc;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Where the system's CA bundle is looked for when no `ca_file` is given (after
/// `SSL_CERT_FILE`): Debian and Ubuntu, Fedora and RHEL, Alpine and others.
const SYSTEM_BUNDLES: &[&str] =
    &["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/// The most bytes of a CA or certificate file read (a full system bundle is about 200 KiB).
const MAX_PEM: u64 = 4 << 20;

/// The certificates a device trusts for the server, and where they came from (for errors).
#[derive(Debug, Clone)]
pub struct Roots {
    store: Arc<RootCertStore>,
    /// `ca_file ...` or `the system's roots (...)`.
    pub source: String,
    /// How many certificates are trusted.
    pub count: usize,
}

impl Roots {
    /// The pinned `ca_file`, or the system's bundle.
    pub fn load(ca_file: Option<&Path>) -> Result<Roots> {
        match ca_file {
            Some(path) => Roots::from_file(path, format!("ca_file {}", path.display())),
            None => {
                let found = std::env::var_os("SSL_CERT_FILE")
                    .map(PathBuf::from)
                    .into_iter()
                    .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
                    .find(|p| p.is_file())
                    .ok_or_else(|| {
                        anyhow!(
                            "no CA bundle on this system (looked at SSL_CERT_FILE and {}); set ca_file in ferryd.toml to the fleet's CA",
                            SYSTEM_BUNDLES.join(", ")
                        )
                    })?;
                let source = format!("the system's roots ({})", found.display());
                Roots::from_file(&found, source)
            }
        }
    }

    fn from_file(path: &Path, source: String) -> Result<Roots> {
        let certs = read_certificates(path)?;
        let mut store = RootCertStore::empty();
        let (added, _ignored) = store.add_parsable_certificates(certs);
        if added == 0 {
            bail!("{}: no usable CA certificate in it", path.display());
        }
        Ok(Roots { store: Arc::new(store), source, count: added })
    }
}

/// Every certificate of a PEM file; an error names the file when it holds none or is not PEM.
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

/// The private key of a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read_small(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        anyhow!("{}: no private key in it (expected PEM, -----BEGIN PRIVATE KEY-----): {e}", path.display())
    })
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

/// A client certificate and its key, presented to a server that asks for one (mutual TLS).
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// The device's own key for mutual TLS, made on first use (ECDSA P-256, 0600; it never
/// leaves the device), and a certificate request for it naming `serial`: what enrollment
/// sends for the fleet's CA to sign.
pub fn certificate_request(config: &crate::config::Config, serial: &str) -> Result<String> {
    let path = config.layout().client_key();
    let key = match std::fs::read_to_string(&path) {
        Ok(pem) => rcgen::KeyPair::from_pem(&pem).map_err(|e| {
            anyhow!(
                "{}: not a private key ({e}); remove it and the device makes a new one when it enrolls",
                path.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = rcgen::KeyPair::generate().context("making the device's key")?;
            std::fs::create_dir_all(&config.state_dir)?;
            ferry_durable::replace_secret(&path, key.serialize_pem().as_bytes())
                .with_context(|| format!("saving {}", path.display()))?;
            key
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).context("a certificate request")?;
    params.distinguished_name.push(rcgen::DnType::CommonName, serial);
    let csr = params.serialize_request(&key).context("signing the certificate request")?;
    csr.pem().context("encoding the certificate request")
}

/// Keeps the certificate an enrollment brought (checked to be a certificate for the
/// device's key), or removes an old one when the server issued none.
pub fn save_certificate(config: &crate::config::Config, pem: Option<&str>) -> Result<()> {
    let path = config.layout().client_cert();
    let Some(pem) = pem else {
        return ferry_durable::remove(&path).with_context(|| format!("removing {}", path.display()));
    };
    if pem.len() > 64 * 1024 {
        bail!("larger than 64 KiB");
    }
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("not a PEM certificate: {e}"))?;
    if chain.is_empty() {
        bail!("no certificate in it");
    }
    let key = read_private_key(&config.layout().client_key())?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| anyhow!("it is not a certificate for this device's key: {e}"))?;
    ferry_durable::replace(&path, pem.as_bytes()).with_context(|| format!("saving {}", path.display()))
}

/// The device's client certificate and key, if an enrollment brought one.
pub fn identity(config: &crate::config::Config) -> Result<Option<Identity>> {
    let (cert, key) = (config.layout().client_cert(), config.layout().client_key());
    if !cert.exists() {
        return Ok(None);
    }
    Ok(Some(Identity { chain: read_certificates(&cert)?, key: read_private_key(&key)? }))
}

/// The TLS configuration of the agent's requests: `roots`, certificates judged no earlier
/// than `floor` (Unix seconds), and `identity` presented when the server asks.
pub fn client_config(roots: &Roots, floor: i64, identity: Option<Identity>) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(roots.store.clone(), provider.clone())
        .build()
        .context("setting up certificate verification")?;
    let verifier = Arc::new(FloorVerifier { inner, floor, roots: roots.source.clone() });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(id) => {
            builder.with_client_auth_cert(id.chain, id.key).context("loading the device's client certificate")?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// webpki's verification, at the later of the clock and the floor, with errors explained.
#[derive(Debug)]
struct FloorVerifier {
    inner: Arc<WebPkiServerVerifier>,
    floor: i64,
    roots: String,
}

impl ServerCertVerifier for FloorVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The agent's own clock (the one channel documents are judged with; tests shift it).
        let clock = crate::trust::clock().unwrap_or_else(|_| i64::try_from(now.as_secs()).unwrap_or(i64::MAX));
        let judged = clock.max(self.floor);
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(u64::try_from(judged).unwrap_or(0)));
        self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, at).map_err(|e| {
            let why = explain(&e, server_name, clock, self.floor, &self.roots);
            match why {
                Some(why) => rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
                    Refused(why),
                )))),
                None => e,
            }
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Why the server's certificate was refused, in words ([`explain_error`] finds it in an
/// error's chain).
#[derive(Debug, Clone)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// A refusal worth explaining, in words; `None` leaves rustls's own.
fn explain(e: &rustls::Error, name: &ServerName<'_>, clock: i64, floor: i64, roots: &str) -> Option<String> {
    let rustls::Error::InvalidCertificate(cert) = e else { return None };
    let clock_words = || {
        if clock < floor {
            format!(
                "judged at this device's clock floor {} (its clock reads {}, earlier than the newest signed time it has seen: the clock is wrong, so the floor is used)",
                utc(floor),
                utc(clock)
            )
        } else {
            format!("judged at this device's clock, {} (its clock floor is {})", utc(clock), utc(floor))
        }
    };
    let name = name.to_str();
    Some(match cert {
        CertificateError::ExpiredContext { not_after, .. } => format!(
            "the server's certificate for {name} expired at {}, {}; if the clock is right, the server must renew its certificate",
            utc(secs(*not_after)),
            clock_words()
        ),
        CertificateError::Expired => format!("the server's certificate for {name} has expired, {}", clock_words()),
        CertificateError::NotValidYetContext { not_before, .. } => format!(
            "the server's certificate for {name} is not valid before {}, {}; if this device's clock is behind, set it",
            utc(secs(*not_before)),
            clock_words()
        ),
        CertificateError::NotValidYet => {
            format!("the server's certificate for {name} is not valid yet, {}; if this device's clock is behind, set it", clock_words())
        }
        CertificateError::UnknownIssuer => format!(
            "the server's certificate for {name} is not issued by a CA this device trusts ({roots}): a wrong ca_file, or someone between the device and the server"
        ),
        CertificateError::BadSignature => format!(
            "the server's certificate for {name} does not verify against {roots}: a wrong ca_file, or someone between the device and the server"
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
            "the server's certificate is not for {name}: it names other hosts (the server URL must use a name its certificate carries), or someone between the device and the server answered"
        ),
        _ => return None,
    })
}

fn secs(t: UnixTime) -> i64 {
    i64::try_from(t.as_secs()).unwrap_or(i64::MAX)
}

/// The explanation a failed request carries, if its cause was a certificate this module
/// refused: the sentence for the technician, without reqwest's and hyper's layers around it.
pub fn explain_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = as_rustls(err) {
            if let rustls::Error::InvalidCertificate(CertificateError::Other(other)) = tls {
                if let Some(r) = other.0.downcast_ref::<Refused>() {
                    return Some(r.0.clone());
                }
            }
            return Some(format!("TLS with the server failed: {tls}"));
        }
        cur = err.source();
    }
    None
}

/// A rustls error, directly or inside the `io::Error` tokio-rustls wraps it in (whose
/// `source` skips it).
fn as_rustls<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = err.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    err.downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}
