//! Command-line flags for reaching a cluster that requires a token or TLS,
//! shared by the binaries that act as clients.

use ps_worker::{AuthToken, ClientTls, WorkerConfig};

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
    pub fn apply(&self, cfg: WorkerConfig) -> Result<WorkerConfig, String> {
        let auth_token = self.auth_token_file.as_deref().map(AuthToken::from_file).transpose()?;
        let tls = match &self.tls_ca {
            Some(ca) => {
                let identity = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
                Some(ClientTls::from_files(ca, &self.tls_domain, identity)?)
            }
            None => None,
        };
        Ok(WorkerConfig { auth_token, tls, ..cfg })
    }
}
