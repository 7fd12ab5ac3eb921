//! The signed-in user: the one place client commands get a user's access token from, and the
//! credentials file `bazaar login` writes.
//!
//! A command that needs a user token calls [`user_token`], which takes, in order:
//! `--token` / `BAZAAR_TOKEN`; else the stored sign-in for `--gateway`, refreshed first (with
//! the refresh token, storing the rotated one) when its access token expires within
//! [`REFRESH_MARGIN_SECS`]; else it fails with [`NOT_SIGNED_IN`].
//!
//! The credentials live in `credentials.json` in the user's config directory
//! (`$BAZAAR_CONFIG_DIR`, else `$XDG_CONFIG_HOME/bazaar`, else `$HOME/.config/bazaar`), one
//! entry per gateway URL so several systems can be signed in to at once. The file holds live
//! tokens, so it is created with mode 0600 (in a 0700 directory) and replaced atomically
//! (write a temporary file, then rename), so a crash or a concurrent reader never sees half a
//! file.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::cli::Global;

/// The identity provider's public client for this command line (see identity's
/// `default_clients`).
pub const CLIENT_ID: &str = "bazaar-cli";
/// What `bazaar login` asks for: an ID token, the profile and email, and a refresh token.
pub const SCOPES: &str = "openid profile email offline_access";
/// The start of the error every command needing a user gives when there is none.
pub const NOT_SIGNED_IN: &str = "not signed in: run `bazaar login`";
/// An access token expiring sooner than this is refreshed before use, so it cannot expire
/// between being checked and reaching a service.
pub const REFRESH_MARGIN_SECS: i64 = 30;
const FILE_NAME: &str = "credentials.json";

/// One gateway's stored sign-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The gateway URL this sign-in is for (the entry's key, normalized by [`gateway_key`]).
    pub gateway: String,
    pub access_token: String,
    /// `None` if the provider issued none (then the sign-in ends with the access token).
    pub refresh_token: Option<String>,
    /// When the access token expires, in Unix seconds.
    pub expires_at: i64,
    /// Who signed in.
    pub user: User,
}

/// Who a sign-in belongs to: the subset of the ID token's and userinfo's claims we show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub sub: String,
    pub email: Option<String>,
    pub name: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
}

/// The whole file: every gateway's sign-in, by gateway URL.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CredentialsFile {
    #[serde(default)]
    gateways: BTreeMap<String, Credentials>,
}

/// The normalized form of a gateway URL used as the key (`http://127.0.0.1:8080/` and
/// `HTTP://127.0.0.1:8080` are the same gateway).
pub fn gateway_key(gateway: &str) -> String {
    match reqwest::Url::parse(gateway.trim()) {
        Ok(url) => url.as_str().trim_end_matches('/').to_owned(),
        Err(_) => gateway.trim().trim_end_matches('/').to_owned(),
    }
}

/// The config directory from the three variables, in order of precedence. Empty or relative
/// `XDG_CONFIG_HOME` is ignored, as the XDG base directory specification says.
fn config_dir_from(
    bazaar: Option<OsString>,
    xdg: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    let non_empty = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = non_empty(bazaar) {
        return Some(dir);
    }
    if let Some(dir) = non_empty(xdg).filter(|d| d.is_absolute()) {
        return Some(dir.join("bazaar"));
    }
    non_empty(home).map(|home| home.join(".config").join("bazaar"))
}

/// The credentials file of one config directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The user's store, from the environment.
    pub fn from_env() -> anyhow::Result<Self> {
        let dir = config_dir_from(
            std::env::var_os("BAZAAR_CONFIG_DIR"),
            std::env::var_os("XDG_CONFIG_HOME"),
            std::env::var_os("HOME"),
        )
        .context(
            "cannot find a config directory: set BAZAAR_CONFIG_DIR, XDG_CONFIG_HOME or HOME",
        )?;
        Ok(Self::at(dir))
    }

    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// The sign-in stored for `gateway`, if any.
    pub fn get(&self, gateway: &str) -> anyhow::Result<Option<Credentials>> {
        Ok(self.load()?.gateways.remove(&gateway_key(gateway)))
    }

    /// Stores (or replaces) the sign-in for `credentials.gateway`, keeping the others.
    pub fn put(&self, mut credentials: Credentials) -> anyhow::Result<()> {
        credentials.gateway = gateway_key(&credentials.gateway);
        let mut file = self.load()?;
        file.gateways
            .insert(credentials.gateway.clone(), credentials);
        self.save(&file)
    }

    /// Forgets the sign-in for `gateway`, returning it.
    pub fn remove(&self, gateway: &str) -> anyhow::Result<Option<Credentials>> {
        let mut file = self.load()?;
        let removed = file.gateways.remove(&gateway_key(gateway));
        if removed.is_some() {
            self.save(&file)?;
        }
        Ok(removed)
    }

    fn load(&self) -> anyhow::Result<CredentialsFile> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is not a credentials file (delete it and run `bazaar login`)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CredentialsFile::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn save(&self, file: &CredentialsFile) -> anyhow::Result<()> {
        create_private_dir(&self.dir)?;
        let path = self.path();
        let temporary = self.dir.join(format!(
            ".{FILE_NAME}.{}.{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let bytes = serde_json::to_vec_pretty(file)?;
        let written = (|| -> std::io::Result<()> {
            let mut out = private_file(&temporary)?;
            out.write_all(&bytes)?;
            out.write_all(b"\n")?;
            out.sync_all()?;
            std::fs::rename(&temporary, &path)
        })();
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(error).with_context(|| format!("cannot write {}", path.display()));
        }
        Ok(())
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// A new file only its owner can read: created with mode 0600, never widened by the umask.
#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

pub fn now_secs() -> i64 {
    bazaar_kit::storage::now_ms() / 1000
}

/// The access token for a command that needs a signed-in user (see the module docs).
pub async fn user_token(global: &Global) -> anyhow::Result<String> {
    if let Some(token) = &global.token {
        return Ok(token.clone());
    }
    let store = Store::from_env()?;
    Ok(signed_in(&store, &global.gateway).await?.access_token)
}

/// The stored sign-in for `gateway`, with an access token valid for at least
/// [`REFRESH_MARGIN_SECS`] (refreshed and stored again if it was not).
pub async fn signed_in(store: &Store, gateway: &str) -> anyhow::Result<Credentials> {
    let key = gateway_key(gateway);
    let Some(stored) = store.get(&key)? else {
        anyhow::bail!(
            "{NOT_SIGNED_IN} (no sign-in for {key} in {}; or pass --token)",
            store.path().display()
        );
    };
    if stored.expires_at - now_secs() > REFRESH_MARGIN_SECS {
        return Ok(stored);
    }
    let Some(refresh_token) = stored.refresh_token.clone() else {
        anyhow::bail!("{NOT_SIGNED_IN} (the sign-in for {key} has expired)");
    };
    let http = reqwest::Client::new();
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.as_str()),
        ("client_id", CLIENT_ID),
    ];
    match token_request(&http, &key, &form).await {
        Ok(tokens) => {
            let refreshed = Credentials {
                access_token: tokens.access_token,
                // Rotation: the old refresh token is spent, only the new one works from now.
                refresh_token: tokens.refresh_token.or(stored.refresh_token),
                expires_at: now_secs() + tokens.expires_in,
                ..stored
            };
            store.put(refreshed.clone())?;
            Ok(refreshed)
        }
        Err(TokenError::Rejected(reason)) => {
            // Another bazaar process may have rotated the same token a moment ago (the
            // provider refuses the second use without revoking): use what it stored.
            if let Some(current) = store.get(&key)? {
                if current.refresh_token != stored.refresh_token
                    && current.expires_at - now_secs() > REFRESH_MARGIN_SECS
                {
                    return Ok(current);
                }
            }
            anyhow::bail!(
                "{NOT_SIGNED_IN} (the sign-in for {key} expired or was revoked: {reason})"
            )
        }
        Err(TokenError::Failed(error)) => Err(error.context("cannot refresh the sign-in")),
    }
}

/// A successful answer of the token endpoint.
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    /// Seconds the access token lives.
    pub expires_in: i64,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
}

/// Why a token request failed.
#[derive(Debug)]
pub enum TokenError {
    /// The provider answered with an OAuth error (`invalid_grant`...): `error: description`.
    Rejected(String),
    /// It could not be asked, or answered something else.
    Failed(anyhow::Error),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rejected(reason) => write!(f, "the identity provider refused: {reason}"),
            Self::Failed(error) => write!(f, "{error:#}"),
        }
    }
}

/// `POST {gateway}/oauth2/token` with `form` (a public client: `client_id` in the form).
pub async fn token_request(
    http: &reqwest::Client,
    gateway: &str,
    form: &[(&str, &str)],
) -> Result<TokenResponse, TokenError> {
    let response = http
        .post(format!("{gateway}/oauth2/token"))
        .form(form)
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {gateway} (is bazaar up?)"))
        .map_err(TokenError::Failed)?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .with_context(|| format!("the token endpoint answered {status} without JSON"))
        .map_err(TokenError::Failed)?;
    if status.is_success() {
        return serde_json::from_value(body)
            .context("the token endpoint answered an unexpected document")
            .map_err(TokenError::Failed);
    }
    match body["error"].as_str() {
        Some(error) => Err(TokenError::Rejected(format!(
            "{error}: {}",
            body["error_description"].as_str().unwrap_or_default()
        ))),
        None => Err(TokenError::Failed(anyhow::anyhow!(
            "the token endpoint answered {status}: {body}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(gateway: &str, token: &str) -> Credentials {
        Credentials {
            gateway: gateway.to_owned(),
            access_token: token.to_owned(),
            refresh_token: Some(format!("refresh-{token}")),
            expires_at: now_secs() + 300,
            user: User {
                sub: "u1".into(),
                email: Some("shopper@bazaar.test".into()),
                name: None,
                roles: vec!["customer".into()],
            },
        }
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn the_file_is_private_and_keyed_by_gateway() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::at(dir.path().join("nested").join("bazaar"));
        assert_eq!(store.get("http://127.0.0.1:8080").expect("get"), None);

        store
            .put(credentials("http://127.0.0.1:8080/", "a"))
            .expect("put a");
        store
            .put(credentials("http://127.0.0.1:9090", "b"))
            .expect("put b");
        #[cfg(unix)]
        {
            assert_eq!(mode(&store.path()), 0o600);
            assert_eq!(mode(&dir.path().join("nested").join("bazaar")), 0o700);
        }

        // Spellings of one gateway find the same entry; another gateway keeps its own.
        let a = store.get("HTTP://127.0.0.1:8080").expect("get").expect("a");
        assert_eq!(a.access_token, "a");
        assert_eq!(a.gateway, "http://127.0.0.1:8080");
        assert_eq!(
            store
                .get("http://127.0.0.1:9090/")
                .expect("get")
                .expect("b")
                .access_token,
            "b"
        );

        // Replacing one entry keeps the other, and the file stays private after a rewrite
        // even if someone had widened it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
        }
        store
            .put(credentials("http://127.0.0.1:8080", "a2"))
            .expect("put a2");
        #[cfg(unix)]
        assert_eq!(mode(&store.path()), 0o600);
        assert_eq!(
            store
                .get("http://127.0.0.1:8080")
                .expect("get")
                .expect("a2")
                .access_token,
            "a2"
        );
        assert!(store.get("http://127.0.0.1:9090").expect("get").is_some());

        let removed = store.remove("http://127.0.0.1:8080").expect("remove");
        assert_eq!(removed.map(|c| c.access_token), Some("a2".to_owned()));
        assert_eq!(store.get("http://127.0.0.1:8080").expect("get"), None);
        assert!(store.get("http://127.0.0.1:9090").expect("get").is_some());

        // No temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path().join("nested").join("bazaar"))
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [FILE_NAME]);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::at(dir.path());
        std::fs::write(store.path(), "not json").expect("write");
        let error = store.get("http://127.0.0.1:8080").expect_err("corrupt");
        assert!(format!("{error:#}").contains(FILE_NAME), "{error:#}");
    }

    #[test]
    fn the_config_dir_follows_the_documented_precedence() {
        let s = |v: &str| Some(OsString::from(v));
        assert_eq!(
            config_dir_from(s("/b"), s("/x"), s("/h")),
            Some(PathBuf::from("/b"))
        );
        assert_eq!(
            config_dir_from(None, s("/x"), s("/h")),
            Some(PathBuf::from("/x/bazaar"))
        );
        assert_eq!(
            config_dir_from(s(""), s("relative"), s("/h")),
            Some(PathBuf::from("/h/.config/bazaar"))
        );
        assert_eq!(config_dir_from(None, None, None), None);
    }

    #[tokio::test]
    async fn without_a_token_or_a_sign_in_the_error_says_to_log_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::at(dir.path());
        let error = signed_in(&store, "http://127.0.0.1:1")
            .await
            .expect_err("nobody is signed in");
        assert!(error.to_string().starts_with(NOT_SIGNED_IN), "{error}");

        // A fresh stored token is used as it is, without asking the (unreachable) gateway.
        store
            .put(credentials("http://127.0.0.1:1", "fresh"))
            .expect("put");
        let got = signed_in(&store, "http://127.0.0.1:1")
            .await
            .expect("fresh");
        assert_eq!(got.access_token, "fresh");
    }
}
