//! The public address's certificate as `palaver certs --tls` makes it (a
//! local CA and a certificate for `localhost`/`127.0.0.1`), for the tests
//! and benches that serve TLS.

use std::path::Path;
use std::path::PathBuf;

use anyhow::Context;
use anyhow::Result;
use palaver_balancer::TlsFiles;

use crate::process::palaver_exe;

/// What `palaver certs --tls` made.
#[derive(Clone, Debug)]
pub struct PublicCert {
    /// The certificate and its key (PEM).
    pub files: TlsFiles,
    /// The local CA that signed it (PEM).
    pub ca: PathBuf,
}

/// Runs `palaver certs --tls` for a cluster file whose data folder is in `dir`.
pub fn public_cert(dir: &Path) -> Result<PublicCert> {
    let file = dir.join("cluster.toml");
    std::fs::write(&file, format!("[cluster]\ndata_dir = {:?}\n", dir.join("data").display().to_string()))?;
    let out = std::process::Command::new(palaver_exe())
        .args(["certs", "--tls", "--config"])
        .arg(&file)
        .output()
        .context("running palaver certs --tls")?;
    anyhow::ensure!(out.status.success(), "palaver certs --tls: {}", String::from_utf8_lossy(&out.stderr));
    let tls = dir.join("data").join("public-tls");
    let cert = PublicCert {
        files: TlsFiles { cert: tls.join("localhost.pem"), key: tls.join("localhost.key") },
        ca: tls.join("ca.pem"),
    };
    for f in [&cert.files.cert, &cert.files.key, &cert.ca] {
        anyhow::ensure!(f.exists(), "{} was not made", f.display());
    }
    Ok(cert)
}
