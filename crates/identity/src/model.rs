//! The identity provider's wire contract (JSON DTOs of the users and admin APIs) and the
//! domain records the repository reads and writes, with input validation.
//!
//! Validation happens here, before anything reaches the database, and every failure names the
//! field so a client can show it next to the right input.

use bazaar_kit::ApiError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Shortest accepted password.
pub const MIN_PASSWORD_LEN: usize = 10;
/// Longest accepted password: argon2 would take anything, but a megabyte "password" is a
/// denial-of-service attempt, not a credential.
pub const MAX_PASSWORD_LEN: usize = 256;

/// The role every user has.
pub const ROLE_CUSTOMER: &str = "customer";
/// The role that unlocks the admin APIs.
pub const ROLE_ADMIN: &str = "admin";

/// A user as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredUser {
    pub id: String,
    pub email: String,
    pub name: String,
    pub password_hash: String,
    pub roles: Vec<String>,
    pub created_at: i64,
}

impl StoredUser {
    pub fn to_api(&self) -> User {
        User {
            id: self.id.clone(),
            email: self.email.clone(),
            name: self.name.clone(),
            roles: self.roles.clone(),
            created_at: self.created_at,
        }
    }
}

/// A user, as the API shows it (never the password hash).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
    pub roles: Vec<String>,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A list of users.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct UserList {
    pub items: Vec<User>,
}

/// `POST /api/v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Registration {
    pub email: String,
    /// At least 10 characters.
    pub password: String,
    pub name: String,
}

/// A validated registration.
#[derive(Debug, Clone, PartialEq)]
pub struct NewUser {
    pub email: String,
    pub name: String,
    pub password: String,
    pub roles: Vec<String>,
}

impl Registration {
    pub fn validate(self) -> Result<NewUser, ApiError> {
        let email = normalize_email(&self.email);
        validate_email(&email)?;
        validate_password("password", &self.password)?;
        let name = self.name.trim().to_owned();
        if name.is_empty() {
            return Err(ApiError::invalid("name", "name must not be empty"));
        }
        if name.chars().count() > 200 {
            return Err(ApiError::invalid(
                "name",
                "name must be at most 200 characters",
            ));
        }
        Ok(NewUser {
            email,
            name,
            password: self.password,
            roles: vec![ROLE_CUSTOMER.to_owned()],
        })
    }
}

/// Emails compare case-insensitively: stored lowercased and trimmed.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// A deliberately loose check (one `@`, something on both sides, a dot in the domain): the
/// only real proof of an address is mail reaching it.
pub fn validate_email(email: &str) -> Result<(), ApiError> {
    let valid = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            }
            None => false,
        };
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "email",
            "email must be an address like name@example.com",
        ))
    }
}

pub fn validate_password(field: &str, password: &str) -> Result<(), ApiError> {
    let length = password.chars().count();
    if length < MIN_PASSWORD_LEN {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be at least {MIN_PASSWORD_LEN} characters"),
        ));
    }
    if length > MAX_PASSWORD_LEN {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be at most {MAX_PASSWORD_LEN} characters"),
        ));
    }
    Ok(())
}

/// `PUT /api/v1/users/me/password`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PasswordChange {
    pub current_password: String,
    pub new_password: String,
}

/// `POST /api/v1/identity/sessions`: the JSON login (sets the same session cookie as the form).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Credentials {
    pub email: String,
    pub password: String,
}

/// An OAuth client as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredClient {
    pub id: String,
    pub name: String,
    /// argon2id PHC string; empty for a public client.
    pub secret_hash: String,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    pub roles: Vec<String>,
    pub require_pkce: bool,
    pub may_introspect: bool,
    pub first_party: bool,
    pub created_at: i64,
}

impl StoredClient {
    pub fn is_public(&self) -> bool {
        self.secret_hash.is_empty()
    }

    pub fn allows_grant(&self, grant: &str) -> bool {
        self.grant_types.iter().any(|g| g == grant)
    }

    pub fn to_api(&self) -> Client {
        Client {
            client_id: self.id.clone(),
            name: self.name.clone(),
            confidential: !self.is_public(),
            redirect_uris: self.redirect_uris.clone(),
            grant_types: self.grant_types.clone(),
            scopes: self.scopes.clone(),
            audiences: self.audiences.clone(),
            roles: self.roles.clone(),
            may_introspect: self.may_introspect,
            created_at: self.created_at,
        }
    }
}

/// A client, as the admin API shows it (never the secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Client {
    pub client_id: String,
    pub name: String,
    pub confidential: bool,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    pub roles: Vec<String>,
    pub may_introspect: bool,
    pub created_at: i64,
}

/// A list of clients.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ClientList {
    pub items: Vec<Client>,
}

/// A just-registered client: the only time its secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct CreatedClient {
    #[serde(flatten)]
    pub client: Client,
    /// Present for confidential clients; store it now, it cannot be read again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
}

/// Grant types a client may be registered with.
pub const GRANT_TYPES: [&str; 3] = ["authorization_code", "refresh_token", "client_credentials"];

/// `POST /api/v1/identity/clients`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientRegistration {
    /// Chosen by the server when absent.
    #[serde(default)]
    pub client_id: Option<String>,
    pub name: String,
    /// Confidential clients get a secret; public ones must use PKCE.
    #[serde(default)]
    pub confidential: bool,
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub may_introspect: bool,
}

impl ClientRegistration {
    /// Checks the registration; `secret_hash` is filled in by the caller.
    pub fn validate(self) -> Result<StoredClient, ApiError> {
        let id = match self.client_id {
            Some(id) => {
                let ok = !id.is_empty()
                    && id.len() <= 100
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if !ok {
                    return Err(ApiError::invalid(
                        "client_id",
                        "client_id must be 1-100 letters, digits, '-', '_' or '.'",
                    ));
                }
                id
            }
            None => uuid::Uuid::new_v4().simple().to_string(),
        };
        if self.name.trim().is_empty() {
            return Err(ApiError::invalid("name", "name must not be empty"));
        }
        if self.grant_types.is_empty() {
            return Err(ApiError::invalid(
                "grant_types",
                "at least one grant type is required",
            ));
        }
        for (i, grant) in self.grant_types.iter().enumerate() {
            if !GRANT_TYPES.contains(&grant.as_str()) {
                return Err(ApiError::invalid(
                    format!("grant_types[{i}]"),
                    format!("unsupported grant type {grant}"),
                ));
            }
        }
        let has = |g: &str| self.grant_types.iter().any(|x| x == g);
        if has("client_credentials") && !self.confidential {
            return Err(ApiError::invalid(
                "grant_types",
                "client_credentials needs a confidential client",
            ));
        }
        if has("authorization_code") && self.redirect_uris.is_empty() {
            return Err(ApiError::invalid(
                "redirect_uris",
                "authorization_code needs at least one redirect uri",
            ));
        }
        for (i, uri) in self.redirect_uris.iter().enumerate() {
            let parsed = url::Url::parse(uri).ok();
            let ok = parsed
                .as_ref()
                .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.fragment().is_none());
            if !ok {
                return Err(ApiError::invalid(
                    format!("redirect_uris[{i}]"),
                    "a redirect uri must be an absolute http(s) URL without a fragment",
                ));
            }
        }
        for (i, scope) in self.scopes.iter().enumerate() {
            if scope.is_empty() || scope.chars().any(|c| c.is_whitespace() || c == '"') {
                return Err(ApiError::invalid(
                    format!("scopes[{i}]"),
                    "a scope is a non-empty word without spaces",
                ));
            }
        }
        if self.may_introspect && !self.confidential {
            return Err(ApiError::invalid(
                "may_introspect",
                "only confidential clients may introspect",
            ));
        }
        let audiences = if self.audiences.is_empty() {
            vec![crate::DEFAULT_AUDIENCE.to_owned()]
        } else {
            self.audiences
        };
        Ok(StoredClient {
            id,
            name: self.name.trim().to_owned(),
            secret_hash: String::new(),
            redirect_uris: self.redirect_uris,
            grant_types: self.grant_types,
            scopes: self.scopes,
            audiences,
            roles: self.roles,
            // Public clients cannot keep a secret, so PKCE is their proof; confidential ones
            // get it too, because it also stops code injection.
            require_pkce: true,
            may_introspect: self.may_introspect,
            first_party: false,
            created_at: 0,
        })
    }
}

/// Result of `POST /api/v1/identity/keys/rotate`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Rotation {
    /// The key that signs from now on (the former next key).
    pub current_kid: String,
    /// The newly created next key, already published.
    pub next_kid: String,
    /// The former current key, published until its tokens have expired.
    pub retired_kid: Option<String>,
}

/// A signing key as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKey {
    pub kid: String,
    pub state: KeyState,
    /// PKCS#8 DER, base64.
    pub private_key: String,
    /// Raw public key, base64url (JWK `x`).
    pub public_x: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Next,
    Current,
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Current => "current",
            KeyState::Retired => "retired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "next" => Some(KeyState::Next),
            "current" => Some(KeyState::Current),
            "retired" => Some(KeyState::Retired),
            _ => None,
        }
    }
}

/// A stored authorization code.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCode {
    pub client_id: String,
    pub user_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub nonce: Option<String>,
    pub code_challenge: String,
    pub auth_time: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub family_id: Option<String>,
}

/// A stored refresh token.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRefresh {
    pub family_id: String,
    pub client_id: String,
    pub user_id: String,
    pub scope: String,
    pub auth_time: i64,
    pub expires_at: i64,
    pub rotated_at: Option<i64>,
    pub family_revoked: bool,
}

/// A stored session.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSession {
    pub user_id: String,
    pub auth_time: i64,
    pub expires_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_validation_names_fields() {
        let ok = Registration {
            email: " Ann@Example.COM ".into(),
            password: "long-enough-1".into(),
            name: "Ann".into(),
        };
        assert_eq!(ok.clone().validate().unwrap().email, "ann@example.com");
        let bad = Registration {
            email: "nope".into(),
            ..ok.clone()
        };
        assert_eq!(bad.validate().unwrap_err().field.as_deref(), Some("email"));
        let short = Registration {
            password: "short".into(),
            ..ok.clone()
        };
        assert_eq!(
            short.validate().unwrap_err().field.as_deref(),
            Some("password")
        );
        let nameless = Registration {
            name: " ".into(),
            ..ok
        };
        assert_eq!(
            nameless.validate().unwrap_err().field.as_deref(),
            Some("name")
        );
    }
}
