//! The fleet's own certificate authority: the CA a fleet's devices pin (`ca_file`), the
//! server certificates it issues for `ferry serve --tls-cert`, and the client certificates
//! it issues to enrolled devices (mutual TLS).
//!
//! What it is for: making and using the CA's key and certificate (rcgen, ring). What it is
//! not for: serving TLS (`tls`) or deciding which device gets a certificate (`fleet`).
//!
//! A CA is a directory holding `ca.crt` (PEM, the file devices pin) and `ca.key` (PEM,
//! mode 0600; whoever holds it can impersonate the server to every device, so keep it off
//! the server unless it issues device certificates). Keys are ECDSA P-256, which every TLS
//! stack and browser accepts. Creating a CA never overwrites one; issuing a certificate
//! overwrites its output only when asked.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

/// The CA certificate's file name in a CA directory.
pub const CA_CERT: &str = "ca.crt";
/// The CA key's file name in a CA directory.
pub const CA_KEY: &str = "ca.key";
/// The longest validity a certificate may be given, in days (a CA's: 30 years).
pub const MAX_DAYS: u32 = 30 * 366;
/// Certificates issued by a CA start this long before now, so a clock a little behind
/// (the issuing machine's or the device's) does not see them as not yet valid.
const BACKDATE_SECS: i64 = 3600;

/// A fleet CA loaded from its directory, able to issue certificates.
#[derive(Debug)]
pub struct FleetCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate (PEM).
    pub cert_pem: String,
}

/// A certificate and its private key, as PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

fn validity(params: &mut CertificateParams, days: u32) -> Result<()> {
    if days == 0 || days > MAX_DAYS {
        bail!("a validity of {days} days: give 1 to {MAX_DAYS}");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs() as i64;
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + time_secs(now - BACKDATE_SECS);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + time_secs(now + i64::from(days) * 86_400);
    Ok(())
}

fn time_secs(secs: i64) -> std::time::Duration {
    std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// Creates a CA in `dir` (made if absent): a new key and a self-signed certificate named
/// `name`, valid `days`. Refuses a directory that already holds a CA.
pub fn create(dir: &Path, name: &str, days: u32) -> Result<PathBuf> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            bail!(
                "{} exists: {} already holds a CA (a new one would cut off every device that pins it)",
                p.display(),
                dir.display()
            );
        }
    }
    if name.trim().is_empty() || name.len() > 64 {
        bail!("the CA's name must be 1 to 64 characters");
    }
    let mut params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days)?;
    let key = KeyPair::generate().context("generating the CA key")?;
    let cert = params.self_signed(&key).context("signing the CA certificate")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // The key first: a CA certificate without its key would be useless, a key alone is
    // overwritten by nothing (the next create refuses), so it is removed on failure.
    ferry_durable::write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)
        .with_context(|| format!("writing {}", key_path.display()))?;
    if let Err(e) = ferry_durable::write_new(&cert_path, cert.pem().as_bytes(), 0o644) {
        let _ = ferry_durable::remove(&key_path);
        return Err(e).with_context(|| format!("writing {}", cert_path.display()));
    }
    Ok(cert_path)
}

/// The most bytes of a device's certificate request.
pub const MAX_CSR: usize = 8 * 1024;

/// How long a device certificate is valid: devices are replaced less often than servers
/// renew, and revocation is by the device record, not by expiry.
pub const DEVICE_CERT_DAYS: u32 = 5 * 366;

impl FleetCa {
    /// The CA in `dir`; an error names the file that is missing or wrong.
    pub fn open(dir: &Path) -> Result<FleetCa> {
        FleetCa::from_files(&dir.join(CA_CERT), &dir.join(CA_KEY))
    }

    /// The CA of a certificate and a key file.
    pub fn from_files(cert_path: &Path, key_path: &Path) -> Result<FleetCa> {
        let cert_pem = std::fs::read_to_string(cert_path)
            .with_context(|| format!("reading {} (create a CA with `ferry ca init`)", cert_path.display()))?;
        let key_pem = std::fs::read_to_string(key_path).with_context(|| format!("reading {}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem).with_context(|| format!("{}: not a private key", key_path.display()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .with_context(|| format!("{}: not a CA certificate this key can issue with", cert_path.display()))?;
        Ok(FleetCa { issuer, cert_pem })
    }

    /// A client certificate for device `serial`, for the key of its certificate request
    /// (PEM, checked to be signed by that key); everything else the request asks for is
    /// ignored. Returns the certificate (PEM) and its SHA-256.
    pub fn issue_device(&self, csr_pem: &str, serial: &str) -> Result<(String, [u8; 32])> {
        if csr_pem.len() > MAX_CSR {
            bail!("the certificate request is larger than {MAX_CSR} bytes");
        }
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| anyhow::anyhow!("the certificate request is not a valid, self-signed PEM request: {e}"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).context("certificate parameters")?;
        params.distinguished_name.push(DnType::CommonName, serial);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, DEVICE_CERT_DAYS)?;
        csr.params = params;
        let cert = csr.signed_by(&self.issuer).context("signing the device certificate")?;
        Ok((cert.pem(), crate::connections::fingerprint(cert.der())))
    }

    /// A server certificate for `hosts` (DNS names or IP addresses), valid `days`.
    pub fn issue_server(&self, hosts: &[String], days: u32) -> Result<Issued> {
        if hosts.is_empty() {
            bail!("give at least one --host: the names devices reach the server by");
        }
        let mut params = CertificateParams::new(Vec::<String>::new()).context("certificate parameters")?;
        for h in hosts {
            params.subject_alt_names.push(san(h)?);
        }
        params.distinguished_name.push(DnType::CommonName, hosts[0].as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, days)?;
        let key = KeyPair::generate().context("generating the server key")?;
        let cert = params.signed_by(&key, &self.issuer).context("signing the server certificate")?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// A subject alternative name: an IP address if it parses as one, else a DNS name.
fn san(host: &str) -> Result<SanType> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
        });
    if !valid {
        bail!("{host:?} is neither a host name nor an IP address");
    }
    Ok(SanType::DnsName(host.try_into().with_context(|| format!("{host:?} is not a valid host name"))?))
}

/// Writes an issued certificate and key to `PREFIX.crt` and `PREFIX.key` (0600), durably.
/// Existing files are replaced only with `overwrite` (a renewal).
pub fn write_issued(issued: &Issued, prefix: &Path, overwrite: bool) -> Result<(PathBuf, PathBuf)> {
    let cert = prefix.with_extension("crt");
    let key = prefix.with_extension("key");
    if !overwrite {
        for p in [&cert, &key] {
            if p.exists() {
                bail!("{} exists; give --force to replace it (a renewal)", p.display());
            }
        }
    }
    // The key before the certificate: a server reloading between the two sees a pair that
    // does not match and keeps serving the old one until the certificate follows.
    ferry_durable::replace_secret(&key, issued.key_pem.as_bytes())
        .with_context(|| format!("writing {}", key.display()))?;
    ferry_durable::replace(&cert, issued.cert_pem.as_bytes()).with_context(|| format!("writing {}", cert.display()))?;
    Ok((cert, key))
}
