//! The bearer token a worker sends with every request.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// A cluster's shared secret. Its `Debug` output never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(String);

impl AuthToken {
    /// A token; it must be printable ASCII without spaces (it travels in an HTTP/2 header).
    pub fn new(token: impl Into<String>) -> Result<Self, String> {
        let token = token.into();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("an auth token must be non-empty printable ASCII without spaces".into());
        }
        Ok(Self(token))
    }

    /// The token in a file (surrounding whitespace removed); the error names the path.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the auth token file {}: {e}", path.display()))?;
        if text.trim().is_empty() {
            return Err(format!("the auth token file {} is empty", path.display()));
        }
        Self::new(text.trim()).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The secret itself, for the side that checks it. Never log it.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

/// Command-line flags for reaching a cluster that requires a token or TLS;
/// shared by every binary that acts as a client.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct AccessArgs {
    /// File holding the cluster's bearer token (the shards' --auth-token-file).
    #[arg(long)]
    pub auth_token_file: Option<std::path::PathBuf>,

    /// Connect with TLS, trusting shard certificates signed by this PEM CA.
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Name the shards' certificates are issued for.
    #[arg(long, default_value = "localhost", requires = "tls_ca")]
    pub tls_domain: String,

    /// Client PEM certificate, for shards started with --tls-ca (with --tls-key).
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

impl AccessArgs {
    /// `cfg` with the token and TLS settings these flags name (files are read
    /// now; errors name the path).
    pub fn apply(&self, cfg: crate::WorkerConfig) -> Result<crate::WorkerConfig, String> {
        let auth_token = self.auth_token_file.as_deref().map(AuthToken::from_file).transpose()?;
        let tls = match &self.tls_ca {
            Some(ca) => {
                let identity = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
                Some(ClientTls::from_files(ca, &self.tls_domain, identity)?)
            }
            None => None,
        };
        Ok(crate::WorkerConfig { auth_token, tls, ..cfg })
    }
}

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

/// How a worker verifies the shards over TLS (and, for mutual TLS, proves
/// who it is). PEM contents, read at construction.
#[derive(Clone)]
pub struct ClientTls {
    /// CA certificate that signed the shards' certificates.
    pub ca_pem: Vec<u8>,
    /// Name the shards' certificates are issued for (e.g. `localhost`).
    pub domain: String,
    /// This worker's certificate and key, for shards that require client certificates.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("domain", &self.domain)
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl ClientTls {
    /// Reads the CA and, optionally, a client certificate and key; errors name the path.
    pub fn from_files(
        ca: &std::path::Path,
        domain: &str,
        identity: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<Self, String> {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let identity = match identity {
            Some((cert, key)) => Some((read(cert)?, read(key)?)),
            None => None,
        };
        Ok(Self { ca_pem: read(ca)?, domain: domain.to_string(), identity })
    }

    /// The tonic client configuration.
    pub fn config(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut cfg = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(self.domain.clone());
        if let Some((cert, key)) = &self.identity {
            cfg = cfg.identity(Identity::from_pem(cert, key));
        }
        cfg
    }
}

/// Adds `authorization: Bearer <token>` to every request, when a token is set.
#[derive(Clone, Debug, Default)]
pub struct AddToken {
    header: Option<MetadataValue<Ascii>>,
}

impl AddToken {
    /// Sends `token`, or nothing when `None`.
    pub fn new(token: Option<&AuthToken>) -> Self {
        // Checked printable ASCII at construction, so it is a valid header value.
        let header = token.and_then(|t| MetadataValue::try_from(format!("Bearer {}", t.0)).ok());
        Self { header }
    }
}

impl Interceptor for AddToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_validated_and_never_printed() {
        assert!(AuthToken::new("has space").is_err());
        assert!(AuthToken::new("").is_err());
        let dir = std::env::temp_dir().join(format!("ps-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("good"), "s3cr3t\n").unwrap();
        assert_eq!(AuthToken::from_file(&dir.join("good")).unwrap().reveal(), "s3cr3t");
        std::fs::write(dir.join("empty"), "  \n").unwrap();
        assert!(AuthToken::from_file(&dir.join("empty")).unwrap_err().contains("is empty"));
        let missing = AuthToken::from_file(&dir.join("missing")).unwrap_err();
        assert!(missing.contains("missing") && missing.contains("cannot read"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
        let t = AuthToken::new("s3cr3t").unwrap();
        assert_eq!(format!("{t:?}"), "AuthToken(<redacted>)");
        let mut add = AddToken::new(Some(&t));
        let req = add.call(Request::new(())).unwrap();
        assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer s3cr3t");
        assert!(
            AddToken::new(None).call(Request::new(())).unwrap().metadata().get("authorization").is_none()
        );
    }
}
