//! TLS on the public address: the balancer terminates it when the cluster
//! file names a certificate and key (`[public] tls_cert`, `tls_key`, PEM),
//! and relays the plain bytes to the nodes, which see the client's address
//! in the PROXY header as before.
//!
//! The certificate is read again on [`PublicTls::reload`] (SIGHUP): new
//! handshakes use the new one, and connections already open keep theirs,
//! so a renewal drops nothing. rustls with its defaults: TLS 1.2 and 1.3,
//! modern suites only; ALPN `http/1.1` (WebSockets upgrade over it).
//!
//! rustls makes the handshake ([`handshake`]); after it the balancer seals
//! and opens records itself ([`record`]) with the keys rustls hands over,
//! so that an idle connection keeps its keys and nothing else
//! ([`relay`]).

pub mod handshake;
pub mod record;
pub mod relay;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

/// Where the public certificate chain and its key are (PEM files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// Why the public certificate could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing or holds no usable PEM.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the pair (a key that does not match, say).
    #[error("the certificate and key cannot be used: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The public TLS settings in use, swapped whole on reload.
pub struct PublicTls {
    files: TlsFiles,
    config: RwLock<Arc<ServerConfig>>,
}

impl PublicTls {
    /// Reads the certificate and key.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = RwLock::new(relay_config(&files)?);
        Ok(Self { files, config })
    }

    /// Reads the files again; on an error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = relay_config(&self.files)?;
        *self.config.write() = fresh;
        Ok(())
    }

    /// The config for the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.read().clone()
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

/// [`server_config`] that hands its keys over after the handshake, for
/// [`record`].
fn relay_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = Arc::unwrap_or_clone(server_config(files)?);
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

fn pem_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Pem { path: path.to_path_buf(), reason: reason.to_string() }
}

/// A server config for the pair of files: rustls' default versions and
/// suites with the ring provider, no client certificates.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| pem_error(&files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(&files.cert, e))?;
    if chain.is_empty() {
        return Err(pem_error(&files.cert, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| pem_error(&files.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
