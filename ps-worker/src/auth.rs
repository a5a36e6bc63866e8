//! How a worker proves itself to the shards: the bearer token it sends with
//! every request, and the TLS settings it connects with.

pub use ps_proto::AuthToken;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

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
pub(crate) struct AddToken {
    header: Option<MetadataValue<Ascii>>,
}

impl AddToken {
    /// Sends `token`, or nothing when `None`.
    pub(crate) fn new(token: Option<&AuthToken>) -> Self {
        // Checked printable ASCII at construction, so it is a valid header value.
        let header = token.and_then(|t| MetadataValue::try_from(format!("Bearer {}", t.reveal())).ok());
        Self { header }
    }
}

impl Interceptor for AddToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert(ps_proto::auth::AUTHORIZATION, h.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_sent_as_a_bearer_header_only_when_set() {
        let t = AuthToken::new("s3cr3t").unwrap();
        let mut add = AddToken::new(Some(&t));
        let req = add.call(Request::new(())).unwrap();
        assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer s3cr3t");
        assert!(
            AddToken::new(None).call(Request::new(())).unwrap().metadata().get("authorization").is_none()
        );
    }
}
