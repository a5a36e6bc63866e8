//! Bearer-token authentication: with a token configured, every RPC must
//! carry `authorization: Bearer <token>`, or it is refused with
//! `UNAUTHENTICATED` before it reaches the shard (so it changes nothing).

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::shard::Shard;

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
    pub fn new(token: Option<&ps_proto::AuthToken>, shard: Arc<Shard>) -> Self {
        Self { expected: token.map(|t| digest(t.reveal().as_bytes())), shard }
    }
}

/// The token of an `authorization` value in the Bearer scheme, whose name
/// is case-insensitive (RFC 7235): `Bearer t`, `bearer t` and `BEARER t` all
/// give `t`; another scheme gives `None`.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start_matches(' '))
}

impl Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else { return Ok(req) };
        let given = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).and_then(bearer_token);
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
    fn the_bearer_scheme_name_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer s3cr3t"), Some("s3cr3t"));
        assert_eq!(bearer_token("bearer s3cr3t"), Some("s3cr3t"));
        assert_eq!(bearer_token("BEARER  s3cr3t"), Some("s3cr3t"));
        assert_eq!(bearer_token("Basic s3cr3t"), None);
        assert_eq!(bearer_token("Bearers3cr3t"), None);
        assert_eq!(bearer_token("s3cr3t"), None);
    }

    #[test]
    fn digests_compare_equal_only_when_equal() {
        assert!(constant_time_eq(&digest(b"secret"), &digest(b"secret")));
        assert!(!constant_time_eq(&digest(b"secret"), &digest(b"secreT")));
        assert!(!constant_time_eq(&digest(b"secret"), &digest(b"secret-longer")));
    }
}
