//! The claims of a bazaar access token (the identity service's contract).

use serde::{Deserialize, Serialize};

/// `aud` is a string or an array of strings (RFC 7519).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, wanted: &str) -> bool {
        match self {
            Audience::One(a) => a == wanted,
            Audience::Many(all) => all.iter().any(|a| a == wanted),
        }
    }
}

/// Verified claims.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    /// The user id, or the client id for client-credentials tokens.
    pub sub: String,
    pub aud: Audience,
    pub exp: u64,
    #[serde(default)]
    pub iat: u64,
    #[serde(default)]
    pub jti: String,
    #[serde(default)]
    pub client_id: String,
    /// Space-separated scopes.
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub email: Option<String>,
}

impl Claims {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split_whitespace().any(|s| s == scope)
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn is_admin(&self) -> bool {
        self.has_role("admin")
    }

    /// A token issued to a user (authorization code flow), as opposed to a client.
    pub fn is_user(&self) -> bool {
        self.sub != self.client_id
    }
}
