//! `palaver up --tls`: a certificate for the public address on this
//! machine. Made once, on first use, in `<data_dir>/public-tls`: a local
//! CA (`ca.pem`, its key `ca.key` readable by the owner only) and a
//! certificate for `localhost`, `127.0.0.1` and `::1` signed by it. A
//! browser trusts the page once the person trusts `ca.pem` (README, "TLS").
//! The cluster file's `[public] tls_cert` and `tls_key` win when set.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use anyhow::Context;
use anyhow::Result;
use palaver_balancer::TlsFiles;
use palaver_node::config::Config;
use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::Issuer;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;

/// The public address's certificate, and the CA to trust when it is ours.
pub struct PublicCert {
    /// What the balancer serves.
    pub files: TlsFiles,
    /// The local CA's certificate, when the certificate is the one made here.
    pub ca: Option<PathBuf>,
}

/// The certificate `palaver up --tls` serves for the cluster file at
/// `config_path`: the file's own, else the local one (made if missing).
pub fn for_config(config_path: &Path) -> Result<PublicCert> {
    let config = Config::load(config_path)?;
    if let (Some(cert), Some(key)) = (&config.public.tls_cert, &config.public.tls_key) {
        return Ok(PublicCert { files: TlsFiles { cert: cert.clone(), key: key.clone() }, ca: None });
    }
    let dir = config.cluster.data_dir.join("public-tls");
    ensure(&dir).with_context(|| format!("making the local certificate in {}", dir.display()))
}

/// Reuses the four files in `dir` when all are there; otherwise makes them
/// all anew (a half set cannot be trusted to match).
pub fn ensure(dir: &Path) -> Result<PublicCert> {
    let [ca, ca_key, cert, key] = ["ca.pem", "ca.key", "localhost.pem", "localhost.key"].map(|f| dir.join(f));
    let found = [&ca, &ca_key, &cert, &key].iter().filter(|p| p.exists()).count();
    if found != 4 {
        if found > 0 {
            tracing::warn!(dir = %dir.display(), "an incomplete local certificate set: making a new CA (trust it again)");
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let made = generate()?;
        write(&ca, &made.ca_pem, false)?;
        write(&ca_key, &made.ca_key_pem, true)?;
        write(&cert, &made.cert_pem, false)?;
        write(&key, &made.key_pem, true)?;
    }
    Ok(PublicCert { files: TlsFiles { cert, key }, ca: Some(ca) })
}

/// A fresh local CA and a server certificate it signed, PEM.
struct Made {
    ca_pem: String,
    ca_key_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn generate() -> Result<Made> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    // A name of its own per machine and run, so two local CAs never clash
    // in a trust store.
    let tag: String = ca_key.public_key_raw().iter().take(6).map(|b| format!("{b:02x}")).collect();
    ca.distinguished_name.push(DnType::CommonName, format!("Palaver local CA {tag}"));
    ca.distinguished_name.push(DnType::OrganizationName, "Palaver (palaver up --tls)");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])?;
    leaf.distinguished_name.push(DnType::CommonName, "localhost");
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(Made { ca_pem: ca_cert.pem(), ca_key_pem, cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Writes `contents` to `path`, owner-only when `secret` (on Unix).
fn write(path: &Path, contents: &str, secret: bool) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// How to make a browser, curl or the system trust `ca`.
pub fn trust_help(ca: &Path) -> String {
    let ca = ca.display();
    format!(
        "  trust the local CA {ca} once:\n\
         \x20   curl:          curl --cacert {ca} https://127.0.0.1:8080/healthz\n\
         \x20   Chrome/Linux:  certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n palaver-local -i {ca}\n\
         \x20   Firefox:       Settings → Privacy & Security → Certificates → Import… {ca}\n\
         \x20   Debian/Ubuntu: sudo cp {ca} /usr/local/share/ca-certificates/palaver-local.crt && sudo update-ca-certificates\n\
         \x20   macOS:         sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {ca}"
    )
}
