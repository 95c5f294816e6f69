//! The cluster's certificates and the TLS configurations built from them.
//!
//! One cluster CA signs every node's certificate. A node certificate names
//! `node-<id>.palaver` (and `palaver-node`) and may serve as both a server
//! and a client certificate, so the same identity accepts and dials.
//! - The dialler checks the server's chain against the cluster CA and the
//!   name `node-<id>.palaver` of the node it meant to reach.
//! - The accepter requires a client certificate chaining to the cluster CA
//!   (rustls' `WebPkiClientVerifier`); the transport then checks the node id
//!   the dialler announces against the certificate's names
//!   ([`cert_names_node`]).
//!
//! Keys are ECDSA P-256; certificates are valid from 1975 to 4096 (rcgen's
//! defaults): the CA is the trust boundary, rotation means a new CA.

use std::fmt;
use std::fs;
use std::io;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Once;

use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::Issuer;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::ServerName;
use rustls::pki_types::UnixTime;
use rustls::pki_types::pem::PemObject;
use rustls::server::ParsedCertificate;
use rustls::server::WebPkiClientVerifier;
use sha2::Digest;
use sha2::Sha256;

/// The ALPN protocol name of the node-to-node transport.
pub const ALPN: &[u8] = b"palaver-peer/1";

/// A name every node certificate carries besides its own.
pub const SHARED_NAME: &str = "palaver-node";

/// The subject common name of a CA made here, followed by a fingerprint of
/// its key (so two clusters' CAs have different names, and an existing CA
/// key can be turned back into an issuer without parsing its certificate).
const CA_COMMON_NAME: &str = "Palaver cluster CA";

/// The DNS name in node `id`'s certificate, and the server name a dialler
/// asks for: `node-<id>.palaver`.
pub fn node_name(id: u64) -> String {
    format!("node-{id}.palaver")
}

/// Why certificates could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// rcgen refused to make a key or certificate.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM text did not hold what it should.
    #[error("{what}: {reason}")]
    Pem {
        /// Which PEM (file name or role).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration (e.g. the key does not match the
    /// certificate).
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The certificate verifiers could not be built from the CA.
    #[error("certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// quinn refused the TLS configuration.
    #[error("quic crypto configuration: {0}")]
    Quic(String),
    /// The certificates are inconsistent (wrong CA, wrong node, missing
    /// half of a pair, ...).
    #[error("{0}")]
    Invalid(String),
}

/// The cluster's certificate authority: certificate and private key, PEM.
#[derive(Clone)]
pub struct ClusterCa {
    /// The CA certificate (PEM).
    pub cert_pem: String,
    /// The CA private key (PKCS#8 PEM).
    pub key_pem: String,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa").field("cert_pem", &self.cert_pem).field("key_pem", &"<secret>").finish()
    }
}

impl ClusterCa {
    /// A new CA with a fresh key.
    pub fn generate() -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let cert = ca_params(&key).self_signed(&key)?;
        Ok(Self { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A fresh key and certificate for node `node_id`, signed by this CA.
    ///
    /// Works for CAs made by [`ClusterCa::generate`]: the issuer is rebuilt
    /// from the key and the fixed CA name rather than parsed from the
    /// certificate (that would need an x509 parser), and the result is
    /// verified against the CA certificate, so a foreign CA is an error
    /// rather than a certificate nobody accepts.
    pub fn issue(&self, node_id: u64) -> Result<NodeIdentity, TlsError> {
        let ca_key = KeyPair::from_pem(&self.key_pem)
            .map_err(|e| TlsError::Pem { what: "CA key".into(), reason: e.to_string() })?;
        let issuer = Issuer::new(ca_params(&ca_key), ca_key);
        let mut params = CertificateParams::new(vec![node_name(node_id), SHARED_NAME.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, format!("palaver node {node_id}"));
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let identity =
            NodeIdentity { ca_pem: self.cert_pem.clone(), cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        verify_identity(&identity, node_id).map_err(|e| {
            TlsError::Invalid(format!(
                "the CA key does not issue certificates its certificate vouches for \
                 (a CA not made by palaver?): {e}"
            ))
        })?;
        Ok(identity)
    }
}

/// What one node needs for the transport: the cluster CA certificate, its
/// own certificate and its private key, all PEM.
#[derive(Clone)]
pub struct NodeIdentity {
    /// The cluster CA certificate (PEM).
    pub ca_pem: String,
    /// This node's certificate (PEM; may be followed by intermediates).
    pub cert_pem: String,
    /// This node's private key (PEM).
    pub key_pem: String,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<secret>")
            .finish()
    }
}

/// Where [`ensure_cluster_certs`] keeps the files of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPaths {
    /// `<dir>/ca.pem`.
    pub ca: PathBuf,
    /// `<dir>/node-<id>.pem`.
    pub cert: PathBuf,
    /// `<dir>/node-<id>.key`.
    pub key: PathBuf,
}

/// The file names [`ensure_cluster_certs`] uses for node `node_id`.
pub fn cert_paths(dir: &Path, node_id: u64) -> CertPaths {
    CertPaths {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("node-{node_id}.pem")),
        key: dir.join(format!("node-{node_id}.key")),
    }
}

/// Creates `<dir>/ca.pem`, `<dir>/ca.key` and `<dir>/node-<id>.pem`/`.key`
/// for every id when absent (used by `palaver up`). Existing files are
/// reused, never overwritten; keys are written owner-only (0600) on Unix.
/// Half a pair (a certificate without its key or the reverse), node files
/// without a CA, or a node certificate the CA does not vouch for are
/// errors, so a stale directory is reported instead of silently mixed.
pub fn ensure_cluster_certs(dir: &Path, node_ids: &[u64]) -> Result<(), TlsError> {
    fs::create_dir_all(dir).map_err(|source| TlsError::Io { path: dir.to_path_buf(), source })?;
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let node_files: Vec<(u64, CertPaths)> = node_ids.iter().map(|&id| (id, cert_paths(dir, id))).collect();
    let ca = match (ca_cert.exists(), ca_key.exists()) {
        (true, true) => Some(ClusterCa { cert_pem: read(&ca_cert)?, key_pem: read(&ca_key)? }),
        (true, false) => None, // fine while no node certificate is missing
        (false, true) => {
            return Err(TlsError::Invalid(format!(
                "{} exists but {} does not; refusing to replace the CA",
                ca_key.display(),
                ca_cert.display()
            )));
        }
        (false, false) => {
            if let Some((_, p)) = node_files.iter().find(|(_, p)| p.cert.exists() || p.key.exists()) {
                return Err(TlsError::Invalid(format!(
                    "{} exists but there is no CA in {}; a new CA would not vouch for it",
                    if p.cert.exists() { p.cert.display() } else { p.key.display() },
                    dir.display()
                )));
            }
            let ca = ClusterCa::generate()?;
            write_new(&ca_cert, &ca.cert_pem, false)?;
            write_new(&ca_key, &ca.key_pem, true)?;
            Some(ca)
        }
    };
    for (id, paths) in &node_files {
        match (paths.cert.exists(), paths.key.exists()) {
            (true, true) => {
                let identity = load_identity(&paths.ca, &paths.cert, &paths.key)?;
                verify_identity(&identity, *id).map_err(|e| {
                    TlsError::Invalid(format!("{} is not a valid certificate for node {id}: {e}", paths.cert.display()))
                })?;
            }
            (false, false) => {
                let Some(ca) = &ca else {
                    return Err(TlsError::Invalid(format!(
                        "{} is missing and {} is absent, so no certificate can be issued",
                        paths.cert.display(),
                        ca_key.display()
                    )));
                };
                let identity = ca.issue(*id)?;
                write_new(&paths.key, &identity.key_pem, true)?;
                write_new(&paths.cert, &identity.cert_pem, false)?;
            }
            (true, false) | (false, true) => {
                return Err(TlsError::Invalid(format!(
                    "only one of {} and {} exists; refusing to replace it",
                    paths.cert.display(),
                    paths.key.display()
                )));
            }
        }
    }
    Ok(())
}

/// Reads a node's identity from PEM files and checks that each holds what
/// it should (a CA certificate, a certificate, a private key).
pub fn load_identity(ca: &Path, cert: &Path, key: &Path) -> Result<NodeIdentity, TlsError> {
    let identity = NodeIdentity { ca_pem: read(ca)?, cert_pem: read(cert)?, key_pem: read(key)? };
    let names = [ca.display().to_string(), cert.display().to_string(), key.display().to_string()];
    Material::parse_named(&identity, &names)?;
    Ok(identity)
}

/// For tests: a fresh CA and an identity for each id, in memory.
pub fn generate_cluster(node_ids: &[u64]) -> Result<(ClusterCa, Vec<(u64, NodeIdentity)>), TlsError> {
    let ca = ClusterCa::generate()?;
    let identities = node_ids.iter().map(|&id| Ok((id, ca.issue(id)?))).collect::<Result<Vec<_>, TlsError>>()?;
    Ok((ca, identities))
}

/// Installs rustls' ring provider as the process default, once. Configs
/// built here name the provider explicitly anyway; this is for other
/// rustls users in the process (two enabled providers and none installed
/// make `ServerConfig::builder()` panic). An already installed provider is
/// kept.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Checks that `identity`'s certificate chains to its CA and names node
/// `node_id`.
pub fn verify_identity(identity: &NodeIdentity, node_id: u64) -> Result<(), TlsError> {
    let material = Material::parse(identity)?;
    let verifier = WebPkiServerVerifier::builder_with_provider(material.roots.clone(), provider()).build()?;
    let name = server_name(node_id)?;
    let (end_entity, intermediates) = material.split_chain()?;
    verifier.verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now())?;
    Ok(())
}

/// Whether `cert` (already verified against the CA) names node `node_id`.
pub fn cert_names_node(cert: &CertificateDer<'_>, node_id: u64) -> bool {
    let Ok(parsed) = ParsedCertificate::try_from(cert) else { return false };
    let Ok(name) = server_name(node_id) else { return false };
    rustls::client::verify_server_name(&parsed, &name).is_ok()
}

/// The parsed form of a [`NodeIdentity`].
pub(crate) struct Material {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Material {
    pub(crate) fn parse(identity: &NodeIdentity) -> Result<Self, TlsError> {
        Self::parse_named(identity, &["CA certificate".into(), "node certificate".into(), "node key".into()])
    }

    fn parse_named(identity: &NodeIdentity, names: &[String; 3]) -> Result<Self, TlsError> {
        let pem_err = |what: &String, reason: String| TlsError::Pem { what: what.clone(), reason };
        let ca_certs = parse_certs(&identity.ca_pem).map_err(|r| pem_err(&names[0], r))?;
        let mut roots = RootCertStore::empty();
        for cert in ca_certs {
            roots.add(cert).map_err(|e| pem_err(&names[0], format!("not a usable CA certificate: {e}")))?;
        }
        let chain = parse_certs(&identity.cert_pem).map_err(|r| pem_err(&names[1], r))?;
        let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
            .map_err(|e| pem_err(&names[2], format!("no private key: {e}")))?;
        Ok(Self { roots: Arc::new(roots), chain, key })
    }

    fn split_chain(&self) -> Result<(&CertificateDer<'static>, &[CertificateDer<'static>]), TlsError> {
        self.chain.split_first().ok_or_else(|| TlsError::Invalid("empty certificate chain".into()))
    }

    /// A key for stateless resets, derived from the node's private key: a
    /// restarted node resets the connections its previous run held, so
    /// peers notice at once instead of after the idle timeout.
    pub(crate) fn reset_key(&self) -> ResetKey {
        let mut hasher = Sha256::new();
        hasher.update(b"palaver/quic-stateless-reset/v1\0");
        hasher.update(self.key.secret_der());
        ResetKey(hasher.finalize().into())
    }

    /// The rustls server side: our certificate, and a client certificate
    /// chaining to the cluster CA required.
    pub(crate) fn server_crypto(&self) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider()).build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        quinn::crypto::rustls::QuicServerConfig::try_from(config).map_err(|e| TlsError::Quic(e.to_string()))
    }

    /// The rustls client side: trust the cluster CA only, present our
    /// certificate, no session resumption (every connection shows its
    /// certificate in full).
    pub(crate) fn client_crypto(&self) -> Result<quinn::crypto::rustls::QuicClientConfig, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        quinn::crypto::rustls::QuicClientConfig::try_from(config).map_err(|e| TlsError::Quic(e.to_string()))
    }

    /// The cluster roots, for a client config built elsewhere (tests).
    #[cfg(test)]
    pub(crate) fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }
}

/// HMAC-SHA256 key for QUIC stateless reset tokens.
pub(crate) struct ResetKey([u8; 32]);

impl ResetKey {
    fn mac(&self, data: &[u8]) -> [u8; 32] {
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&self.0);
        let mut inner = Sha256::new();
        inner.update(block.map(|b| b ^ 0x36));
        inner.update(data);
        let mut outer = Sha256::new();
        outer.update(block.map(|b| b ^ 0x5c));
        outer.update(inner.finalize());
        outer.finalize().into()
    }
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let tag = self.mac(data);
        let n = signature_out.len().min(tag.len());
        signature_out[..n].copy_from_slice(&tag[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        let tag = self.mac(data);
        let same =
            signature.len() == tag.len() && tag.iter().zip(signature).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if same { Ok(()) } else { Err(quinn::crypto::CryptoError) }
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_name(node_id: u64) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(node_name(node_id)).map_err(|e| TlsError::Invalid(format!("bad server name: {e}")))
}

fn ca_params(key: &KeyPair) -> CertificateParams {
    let digest = Sha256::digest(key.public_key_raw());
    let fingerprint: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, format!("{CA_COMMON_NAME} {fingerprint}"));
    params.distinguished_name.push(DnType::OrganizationName, "Palaver");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block".into());
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Io { path: path.to_path_buf(), source })
}

/// Writes a file that must not exist yet (never replaces one).
fn write_new(path: &Path, contents: &str, secret: bool) -> Result<(), TlsError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let io_err = |source| TlsError::Io { path: path.to_path_buf(), source };
    let mut file = options.open(path).map_err(io_err)?;
    file.write_all(contents.as_bytes()).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    Ok(())
}
