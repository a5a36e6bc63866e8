//! The shard's TLS settings, read and checked before it serves: each
//! problem (a file that cannot be read, holds no PEM certificate or key, or
//! a key that does not fit its certificate) names the file and the reason,
//! so `ps-server` can refuse to start with one line instead of failing
//! every handshake later.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::ShardConfig;

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// A file could not be read.
    #[error("{flag} {}: cannot read it: {source}", path.display())]
    Read {
        /// The command-line flag that names the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        #[source]
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{flag} {}: {reason}", path.display())]
    Content {
        /// The command-line flag that names the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read { flag, path: path.to_path_buf(), source })
}

/// Checks that `pem` holds at least one certificate and nothing malformed.
fn certificates(flag: &'static str, path: &Path, pem: &[u8]) -> Result<(), TlsFileError> {
    let content = |reason: String| TlsFileError::Content { flag, path: path.to_path_buf(), reason };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(content("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()));
    }
    Ok(())
}

/// The TLS settings of `config`, its PEM files read and checked; `None` for plaintext.
pub fn server_tls(config: &ShardConfig) -> Result<Option<ServerTlsConfig>, TlsFileError> {
    let (Some(cert_path), Some(key_path)) = (&config.tls_cert, &config.tls_key) else { return Ok(None) };
    let cert = read("--tls-cert", cert_path)?;
    certificates("--tls-cert", cert_path, &cert)?;
    let key = read("--tls-key", key_path)?;
    PrivateKeyDer::from_pem_slice(&key).map_err(|e| TlsFileError::Content {
        flag: "--tls-key",
        path: key_path.clone(),
        reason: format!("holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
    })?;
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca_path) = &config.tls_client_ca {
        let ca = read("--tls-ca", ca_path)?;
        certificates("--tls-ca", ca_path, &ca)?;
        tls = tls.client_ca_root(Certificate::from_pem(ca));
    }
    // Building the acceptor is what checks that the key fits the certificate.
    if let Err(e) = tonic::transport::Server::builder().tls_config(tls.clone()) {
        return Err(TlsFileError::Content {
            flag: "--tls-key",
            path: key_path.clone(),
            reason: format!("cannot serve TLS with it and --tls-cert {}: {}", cert_path.display(), chain(&e)),
        });
    }
    Ok(Some(tls))
}

/// An error and its sources, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        line = format!("{line}: {c}");
        cause = c.source();
    }
    line
}
