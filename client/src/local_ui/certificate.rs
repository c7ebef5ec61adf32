//! The local page's device certificate: a self-signed ECDSA P-256 certificate and its private
//! key, made on the device itself so the key never leaves it, and kept together in
//! `state_dir/local-ui-tls.pem` (0600, written whole or not at all through `ferry-durable`).
//!
//! - **When it is made**: by `ferryd provision` at first boot when `[local_ui] tls = true`, or
//!   else by the first `ferryd local-ui` with `tls = true`; `ferry image` never makes one (a
//!   key in the image would be every device's key). Once present it is only read: a damaged
//!   file is an error naming it and the command that replaces it (`ferryd local-ui-cert
//!   --new`), never silently a new certificate, since the technician compares its fingerprint.
//! - **What it names** (subject alternative names): `localhost`, 127.0.0.1 and ::1, the
//!   device's host name and serial number (when they are valid DNS names), every name and
//!   address in `[local_ui] hosts` (list the access point's address there, e.g.
//!   192.168.4.1, for a certificate made at provisioning), and the listen address when
//!   `ferryd local-ui` made it. Browsers warn about any self-signed certificate anyway; the
//!   technician checks the fingerprint the browser shows against the one `ferryd status`
//!   prints. A page started on an address its certificate does not name says so in its log.
//! - **Fingerprint**: SHA-256 of the certificate (DER), as browsers show it: upper-case hex
//!   pairs joined by colons.
//!
//! Not for: the fleet server's certificates or the device's client certificate, which a
//! fleet's CA issues and which are checked against it.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// The file format's header line (the rest is the two PEM sections `rustls` and `openssl`
/// read): a later format changes it.
const HEADER: &str = "# ferryd local page certificate, format 1: the private key, then the certificate\n";

/// When a certificate's own signature and names are checked: 2001-01-01, within the
/// validity of every certificate this module makes.
const CHECKED_AT: u64 = 978_307_200;

/// What to run to replace a damaged or unwanted certificate.
pub const RENEW_COMMAND: &str = "ferryd local-ui-cert --new";

/// The device's certificate and key, as read from (or just written to) the state directory.
pub struct DeviceCert {
    pub path: PathBuf,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for DeviceCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCert").field("path", &self.path).field("fingerprint", &self.fingerprint()).finish()
    }
}

impl DeviceCert {
    /// SHA-256 of the certificate, the form browsers show (`AB:CD:...`, 32 pairs).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }

    /// The certificate alone (PEM), e.g. to import into a technician's browser; no key.
    pub fn certificate_pem(&self) -> String {
        let b64 = base64(&self.cert);
        let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
        out
    }

    /// Whether the certificate names `ip`, as a browser that trusts it would check.
    pub fn names(&self, ip: IpAddr) -> bool {
        let server = rustls::pki_types::ServerName::IpAddress(ip.to_canonical().into());
        verify(&self.cert, &server).is_ok()
    }

    /// A TLS server configuration (TLS 1.2 and 1.3, ring, HTTP/1.1 by ALPN) serving it.
    pub fn server_config(&self) -> Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("choosing TLS versions")?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .with_context(|| format!("serving the certificate in {}", self.path.display()))?;
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(c)
    }
}

/// SHA-256 of a certificate (DER) as browsers show it: upper-case hex pairs joined by colons.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

fn path(config: &Config) -> PathBuf {
    config.layout().local_ui_tls()
}

/// The certificate in the state directory; `None` if none was made yet. A file that is not
/// a certificate with its own key is an error naming it and [`RENEW_COMMAND`].
pub fn load(config: &Config) -> Result<Option<DeviceCert>> {
    let path = path(config);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading the local page's certificate {}", path.display())),
    };
    parse(&bytes).map(|(cert, key)| Some(DeviceCert { path: path.clone(), cert, key })).map_err(|what| {
        anyhow!(
            "the local page's certificate {} is damaged: {what}; `{RENEW_COMMAND}` makes a new one \
             (browsers and `ferryd status` then show a new fingerprint)",
            path.display()
        )
    })
}

/// The certificate and key in a file's bytes, checked to belong together; the error says
/// what is wrong.
fn parse(bytes: &[u8]) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), String> {
    let key = PrivateKeyDer::from_pem_slice(bytes).map_err(|e| format!("no private key in it ({e})"))?;
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("its certificate is not readable ({e})"))?;
    let [cert] = <[_; 1]>::try_from(certs).map_err(|c| format!("it holds {} certificates, not 1", c.len()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("its private key is not a usable key ({e})"))?;
    rustls::sign::CertifiedKey::new(vec![cert.clone()], signer)
        .keys_match()
        .map_err(|e| format!("its certificate is not its key's ({e})"))?;
    let localhost = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    verify(&cert, &localhost).map_err(|e| format!("its certificate does not verify as this page's ({e})"))?;
    Ok((cert, key))
}

/// Checks a certificate as a client that trusts it (and nothing else) would for `name`: its
/// own signature, its names, its use. At a fixed time within its validity: the device's
/// clock may be anywhere, and browsers judge dates by their own.
fn verify(cert: &CertificateDer<'static>, name: &rustls::pki_types::ServerName<'_>) -> Result<(), String> {
    use rustls::client::danger::ServerCertVerifier;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).map_err(|e| format!("not readable: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| e.to_string())?;
    let at = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(CHECKED_AT));
    verifier.verify_server_cert(cert, &[], name, &[], at).map(|_| ()).map_err(|e| e.to_string())
}

/// The certificate, made and written now if there is none. The `bool` is whether it was
/// made now. A damaged one is an error (see [`load`]), never replaced here.
pub fn ensure(config: &Config, listen: Option<IpAddr>) -> Result<(DeviceCert, bool)> {
    if let Some(c) = load(config)? {
        return Ok((c, false));
    }
    let path = path(config);
    let text = generate(config, listen)?;
    make_state_dir(config)?;
    match ferry_durable::write_new(&path, text.as_bytes(), 0o600) {
        Ok(()) => {}
        // Another process (provisioning, the page) made one meanwhile: that one is the device's.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let c = load(config)?.ok_or_else(|| anyhow!("{} appeared and went away", path.display()))?;
            return Ok((c, false));
        }
        Err(e) => return Err(e).with_context(|| format!("writing the local page's certificate {}", path.display())),
    }
    let c = read_back(path, &text)?;
    tracing::info!(path = %c.path.display(), fingerprint = %c.fingerprint(), "made the local page's certificate");
    Ok((c, true))
}

/// Makes the state directory (and its parents) if there is none, 0755 whatever the umask (the page's unit runs
/// with 0077): the page's user and the application read what is in it.
fn make_state_dir(config: &Config) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Each directory it makes, parents too.
    let missing: Vec<&std::path::Path> = config.state_dir.ancestors().take_while(|d| !d.is_dir()).collect();
    for dir in missing.into_iter().rev() {
        std::fs::create_dir(dir)
            .or_else(|e| if e.kind() == std::io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)))
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
    }
    Ok(())
}

/// Makes a new certificate and key and writes them, replacing what is there (damaged or
/// not). The page must be restarted to serve it.
pub fn renew(config: &Config, listen: Option<IpAddr>) -> Result<DeviceCert> {
    let path = path(config);
    let text = generate(config, listen)?;
    make_state_dir(config)?;
    ferry_durable::replace_secret(&path, text.as_bytes())
        .with_context(|| format!("writing the local page's certificate {}", path.display()))?;
    let c = read_back(path, &text)?;
    tracing::info!(path = %c.path.display(), fingerprint = %c.fingerprint(), "made a new local page certificate");
    Ok(c)
}

/// The certificate just written to `path` as `text`.
fn read_back(path: PathBuf, text: &str) -> Result<DeviceCert> {
    let (cert, key) = parse(text.as_bytes()).map_err(|e| anyhow!("the certificate just made is not readable: {e}"))?;
    Ok(DeviceCert { path, cert, key })
}

/// The names the certificate is made for (see the module doc), without repeats.
fn names(config: &Config, listen: Option<IpAddr>) -> Vec<String> {
    let mut out: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let serial = config.fleet.as_ref().and_then(|f| f.serial().ok());
    let hosts = config.local_ui.iter().flat_map(|l| l.hosts.iter().cloned());
    for name in [Some(hostname.trim().to_string()), serial].into_iter().flatten().chain(hosts) {
        if let Ok(ip) = name.parse::<IpAddr>() {
            out.push(ip.to_canonical().to_string());
            continue;
        }
        let name = name.strip_suffix('.').unwrap_or(&name).to_ascii_lowercase();
        if is_dns_name(&name) {
            out.push(name);
        }
    }
    if let Some(ip) = listen.filter(|ip| !ip.is_unspecified()) {
        out.push(ip.to_canonical().to_string());
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|n| seen.insert(n.clone()));
    out
}

/// A name browsers accept in a certificate: dot-separated labels of letters, digits and
/// hyphens (not at a label's ends), at most 253 bytes, not all digits and dots.
fn is_dns_name(name: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(label_ok)
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// A new key and a certificate for it, as the file's text.
fn generate(config: &Config, listen: Option<IpAddr>) -> Result<String> {
    let names = names(config, listen);
    let mut params = rcgen::CertificateParams::new(names.clone())
        .with_context(|| format!("a certificate for the names {names:?}"))?;
    let who = config.fleet.as_ref().and_then(|f| f.serial().ok()).unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
    });
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "Ferry");
    dn.push(rcgen::DnType::CommonName, format!("ferryd local page {who}").trim().to_string());
    params.distinguished_name = dn;
    // The device's clock may be anywhere at first boot; browsers do not hold a self-signed
    // certificate to the public CAs' 398 days.
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(9999, 12, 31);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    // A random serial: a renewed certificate must not repeat the old one's (Firefox refuses
    // two certificates with one issuer and serial).
    let mut serial = [0u8; 16];
    getrandom::getrandom(&mut serial).map_err(|e| anyhow!("no randomness for a certificate serial: {e}"))?;
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("making a P-256 key")?;
    let cert = params.self_signed(&key).context("signing the local page's certificate")?;
    Ok(format!("{HEADER}{}{}", key.serialize_pem(), cert.pem()))
}

/// Standard base64 with padding (for the certificate's PEM).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_colon_separated_upper_case_sha256() {
        // SHA-256 of the empty string.
        assert_eq!(
            fingerprint(b""),
            "E3:B0:C4:42:98:FC:1C:14:9A:FB:F4:C8:99:6F:B9:24:27:AE:41:E4:64:9B:93:4C:A4:95:99:1B:78:52:B8:55"
        );
    }

    #[test]
    fn base64_pads_like_the_standard() {
        for (input, want) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg==")] {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
    }

    #[test]
    fn dns_names_exclude_what_a_certificate_cannot_carry() {
        for ok in ["localhost", "setup.local", "sn-1234", "a1.b2"] {
            assert!(is_dns_name(ok), "{ok}");
        }
        for bad in ["", "SN 1234", "-x", "x-", "a..b", "1.2.3.4", "ünï", &"a".repeat(64)] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_file_is_parsed_only_whole_and_with_its_own_key() {
        let config = Config::parse(
            "insecure_http = true\nserver = \"http://127.0.0.1:9\"\nbranch = \"main\"\ntrusted_keys = [\"/k\"]\ncurrent_link = \"/c\"\n",
        )
        .unwrap();
        let text = generate(&config, None).unwrap();
        assert!(parse(text.as_bytes()).is_ok());
        let other = generate(&config, None).unwrap();
        let key_end = text.find("-----BEGIN CERTIFICATE-----").unwrap();
        let other_cert = &other[other.find("-----BEGIN CERTIFICATE-----").unwrap()..];
        let mixed = format!("{}{other_cert}", &text[..key_end]);
        assert!(parse(mixed.as_bytes()).unwrap_err().contains("not its key's"));
        let no_cert = &text[..key_end];
        assert!(parse(no_cert.as_bytes()).unwrap_err().contains("holds 0 certificates"));
        assert!(parse(&text.as_bytes()[key_end..]).unwrap_err().contains("no private key"));
    }
}
