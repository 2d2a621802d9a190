//! Registry credentials and authentication.

use std::sync::Arc;

use crate::error::Result;

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// No credentials: anonymous access (bearer tokens may still be issued).
    Anonymous,
    /// A username and password (or access token used as a password).
    Basic {
        /// User name.
        username: String,
        /// Password or token.
        password: String,
    },
    /// An identity (refresh) token, exchanged at the token server, or a registry
    /// bearer token used as is.
    Token(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach logs or errors.
        match self {
            Credential::Anonymous => f.write_str("Anonymous"),
            Credential::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credential::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// Asked for credentials: `(registry host[:port], scope)`; the scope is
/// `repository:<name>:pull`. `Ok(None)` means "no opinion": fall back to the
/// default chain.
pub type CredentialFn = Arc<dyn Fn(&str, &str) -> Result<Option<Credential>> + Send + Sync>;
