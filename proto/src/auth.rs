//! The cluster's bearer token: what a worker sends with every request and
//! what a shard checks it against.

/// The metadata key that carries the token, as `Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";

/// A cluster's shared secret. Always printable ASCII without spaces (so it is
/// a valid HTTP/2 header value); its `Debug` output never shows it.
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

    /// The secret itself, for the side that checks or sends it. Never log it.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthToken(<redacted>)")
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
    }
}
