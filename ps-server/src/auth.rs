//! Bearer-token authentication: with a token configured, every RPC must
//! carry `authorization: Bearer <token>`, or it is refused with
//! `UNAUTHENTICATED` before it reaches the shard (so it changes nothing).

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::shard::Shard;

/// Reads a token file: its contents without surrounding whitespace. Fails,
/// naming the path, if it cannot be read or holds no token.
pub fn read_token_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the auth token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("the auth token file {} is empty", path.display()));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("the auth token in {} must be printable ASCII without spaces", path.display()));
    }
    Ok(token.to_string())
}

/// Checks the bearer token of every request. Tokens are compared through
/// their SHA-256 digests in constant time, so neither the contents nor the
/// length of the expected token leak through timing.
#[derive(Clone)]
pub struct TokenCheck {
    expected: Option<[u8; 32]>,
    shard: Arc<Shard>,
}

impl std::fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCheck").field("enabled", &self.expected.is_some()).finish()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Equality of two digests in time independent of where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl TokenCheck {
    /// Accepts only requests bearing `token`; accepts everything when `None`.
    /// Refusals are counted in the shard's metrics.
    pub fn new(token: Option<&str>, shard: Arc<Shard>) -> Self {
        Self { expected: token.map(|t| digest(t.as_bytes())), shard }
    }
}

impl Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else { return Ok(req) };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| constant_time_eq(&digest(g.as_bytes()), expected));
        if ok {
            return Ok(req);
        }
        self.shard.metrics().unauthenticated();
        let what = if given.is_some() { "a wrong bearer token" } else { "no bearer token" };
        Err(Status::unauthenticated(format!(
            "shard {}: request with {what}; this cluster requires the token of its --auth-token-file",
            self.shard.config().shard_id
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_compare_equal_only_when_equal() {
        assert!(constant_time_eq(&digest(b"secret"), &digest(b"secret")));
        assert!(!constant_time_eq(&digest(b"secret"), &digest(b"secreT")));
        assert!(!constant_time_eq(&digest(b"secret"), &digest(b"secret-longer")));
    }

    #[test]
    fn token_files_are_trimmed_and_checked() {
        let dir = std::env::temp_dir().join(format!("ps-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, "s3cr3t\n").unwrap();
        assert_eq!(read_token_file(&good).unwrap(), "s3cr3t");
        let empty = dir.join("empty");
        std::fs::write(&empty, "  \n").unwrap();
        assert!(read_token_file(&empty).unwrap_err().contains("is empty"));
        let missing = read_token_file(&dir.join("missing")).unwrap_err();
        assert!(missing.contains("missing") && missing.contains("cannot read"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
