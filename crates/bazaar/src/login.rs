//! `bazaar login`, `bazaar logout` and `bazaar whoami`.
//!
//! `login` is the OAuth 2.0 authorization code flow with PKCE (S256) for a native app with a
//! loopback redirect (RFC 8252): it listens on `127.0.0.1:<port>` (any free port by default;
//! identity accepts any port for the `bazaar-cli` client's port-less loopback redirect URI),
//! prints the authorization URL for a browser, waits for the redirect to `/callback`, checks
//! `state`, redeems the code with the PKCE verifier, and stores the tokens (see `session`).
//! The browser tab is answered only once the code has been redeemed, so what it says is true.
//!
//! `logout` revokes the refresh token, which ends the whole grant (its access tokens too), and
//! forgets the stored sign-in. `whoami` asks the provider's userinfo endpoint, so it reports a
//! sign-in that still works rather than what the file remembers.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use rand::RngCore;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::cli::{Global, LoginArgs};
use crate::session::{self, Credentials, Store, TokenError, User, CLIENT_ID, SCOPES};

/// What the browser brought back to `/callback`, and where to send the page to show it.
struct Callback {
    params: HashMap<String, String>,
    reply: oneshot::Sender<Page>,
}

/// The page the browser tab shows after the redirect.
struct Page {
    ok: bool,
    message: String,
}

impl IntoResponse for Page {
    fn into_response(self) -> axum::response::Response {
        let (status, title) = if self.ok {
            (StatusCode::OK, "Signed in")
        } else {
            (StatusCode::BAD_REQUEST, "Sign-in failed")
        };
        let html = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>bazaar: {title}</title></head>\
             <body style=\"font-family: sans-serif; max-width: 32rem; margin: 4rem auto\">\
             <h1>{title}</h1><p>{}</p></body></html>",
            escape(&self.message)
        );
        let mut response = (status, Html(html)).into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `n` random bytes from the OS, base64url without padding (PKCE verifier, state, nonce).
fn random_b64(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The S256 challenge of a PKCE verifier (RFC 7636 §4.2).
fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The claims of a JWT, unverified. Only used on tokens received straight from the token
/// endpoint, which OpenID Connect Core §3.1.3.7 allows to trust by the channel.
fn jwt_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

async fn callback(
    State(sender): State<mpsc::Sender<Callback>>,
    Query(params): Query<HashMap<String, String>>,
) -> Page {
    let (reply, answer) = oneshot::channel();
    let over = || Page {
        ok: false,
        message: "This sign-in is over. Run `bazaar login` again.".into(),
    };
    if sender.send(Callback { params, reply }).await.is_err() {
        return over();
    }
    answer.await.unwrap_or_else(|_| over())
}

/// Opens `url` with `xdg-open` when a person is at a terminal and it exists; never fails.
fn open_browser(url: &str) {
    if !std::io::stdout().is_terminal() {
        return;
    }
    let Some(path) = std::env::var_os("PATH") else {
        return;
    };
    let Some(opener) = std::env::split_paths(&path)
        .map(|dir| dir.join("xdg-open"))
        .find(|candidate| candidate.is_file())
    else {
        return;
    };
    let spawned = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Ok(mut child) = spawned {
        // Reap it whenever it ends, so it never lingers as a zombie.
        std::thread::spawn(move || child.wait());
    }
}

/// What one login attempt needs to check and redeem the callback.
struct Attempt {
    gateway: String,
    redirect_uri: String,
    verifier: String,
    state: String,
    nonce: String,
}

pub async fn login(global: Global, args: LoginArgs) -> anyhow::Result<()> {
    let store = Store::from_env()?;
    let gateway = session::gateway_key(&global.gateway);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port))?;
    let port = listener.local_addr()?.port();
    let attempt = Attempt {
        redirect_uri: format!("http://127.0.0.1:{port}/callback"),
        // 32 bytes: a 43-character verifier, the shortest RFC 7636 allows, with 256 bits.
        verifier: random_b64(32),
        state: random_b64(16),
        nonce: random_b64(16),
        gateway,
    };
    let url = reqwest::Url::parse_with_params(
        &format!("{}/oauth2/authorize", attempt.gateway),
        &[
            ("response_type", "code"),
            ("client_id", CLIENT_ID),
            ("redirect_uri", attempt.redirect_uri.as_str()),
            ("scope", SCOPES),
            ("state", attempt.state.as_str()),
            ("nonce", attempt.nonce.as_str()),
            ("code_challenge", s256(&attempt.verifier).as_str()),
            ("code_challenge_method", "S256"),
        ],
    )
    .with_context(|| format!("--gateway {} is not a URL", attempt.gateway))?;
    println!(
        "To sign in to {}, open this URL in a browser:",
        attempt.gateway
    );
    println!();
    println!("  {url}");
    println!();
    open_browser(url.as_str());
    println!(
        "Waiting for the browser (up to {})...",
        humantime::format_duration(args.timeout)
    );

    let (sender, mut callbacks) = mpsc::channel::<Callback>(8);
    let app = Router::new()
        .route("/callback", get(callback))
        .with_state(sender);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });

    let outcome = tokio::time::timeout(args.timeout, async {
        while let Some(Callback { params, reply }) = callbacks.recv().await {
            match handle(&attempt, &params).await {
                Handled::Ignore(message) => {
                    eprintln!("warning: {message}");
                    let _ = reply.send(Page { ok: false, message });
                }
                Handled::Done(Ok(credentials)) => {
                    let _ = reply.send(Page {
                        ok: true,
                        message: format!(
                            "Signed in to bazaar as {}. You can close this tab and go back to the terminal.",
                            display_name(&credentials.user)
                        ),
                    });
                    return Ok(credentials);
                }
                Handled::Done(Err(error)) => {
                    let _ = reply.send(Page {
                        ok: false,
                        message: format!("{error:#}. Go back to the terminal and try again."),
                    });
                    return Err(error);
                }
            }
        }
        Err(anyhow::anyhow!("the callback listener stopped"))
    })
    .await;
    // Let the page reach the browser before the listener goes away (bounded: a browser that
    // keeps its connection open must not hold the command).
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;

    let credentials = match outcome {
        Ok(result) => result?,
        Err(_) => anyhow::bail!(
            "gave up after {} waiting for the sign-in in the browser (use --timeout to wait longer)",
            humantime::format_duration(args.timeout)
        ),
    };
    store.put(credentials.clone())?;
    if global.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&whoami_json(&credentials))?
        );
    } else {
        println!(
            "Signed in to {} as {}; the sign-in is stored in {}",
            credentials.gateway,
            display_name(&credentials.user),
            store.path().display()
        );
    }
    Ok(())
}

enum Handled {
    /// Not the redirect this login waits for (wrong `state`): answer it and keep waiting, so
    /// a stray or forged request cannot end a sign-in in progress.
    Ignore(String),
    /// The end of this login, signed in or not.
    Done(anyhow::Result<Credentials>),
}

async fn handle(attempt: &Attempt, params: &HashMap<String, String>) -> Handled {
    if params.get("state") != Some(&attempt.state) {
        return Handled::Ignore(
            "ignored a redirect that does not belong to this sign-in (state does not match)".into(),
        );
    }
    if let Some(error) = params.get("error") {
        return Handled::Done(Err(anyhow::anyhow!(
            "the identity provider refused the sign-in: {error}: {}",
            params
                .get("error_description")
                .map(String::as_str)
                .unwrap_or_default()
        )));
    }
    let Some(code) = params.get("code") else {
        return Handled::Done(Err(anyhow::anyhow!(
            "the redirect carried neither a code nor an error"
        )));
    };
    Handled::Done(redeem(attempt, code).await)
}

/// Redeems the code and finds out who signed in.
async fn redeem(attempt: &Attempt, code: &str) -> anyhow::Result<Credentials> {
    let http = reqwest::Client::new();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", attempt.redirect_uri.as_str()),
        ("client_id", CLIENT_ID),
        ("code_verifier", attempt.verifier.as_str()),
    ];
    let tokens = session::token_request(&http, &attempt.gateway, &form)
        .await
        .map_err(|error| match error {
            TokenError::Failed(error) => error.context("cannot redeem the authorization code"),
            rejected => anyhow::anyhow!("{rejected}"),
        })?;
    let user = userinfo(&http, &attempt.gateway, &tokens.access_token).await?;
    if let Some(id_token) = &tokens.id_token {
        let claims = jwt_claims(id_token).context("the ID token is not a JWT")?;
        // The nonce ties the ID token to this attempt; its subject must be userinfo's
        // (OpenID Connect Core §5.3.2).
        if claims["nonce"].as_str() != Some(attempt.nonce.as_str()) {
            anyhow::bail!("the ID token's nonce does not match this sign-in");
        }
        if claims["sub"].as_str() != Some(user.sub.as_str()) {
            anyhow::bail!("the ID token and userinfo name different users");
        }
    }
    Ok(Credentials {
        gateway: attempt.gateway.clone(),
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        expires_at: session::now_secs() + tokens.expires_in,
        user,
    })
}

/// `GET {gateway}/oauth2/userinfo`: who the token belongs to, according to the provider.
async fn userinfo(http: &reqwest::Client, gateway: &str, token: &str) -> anyhow::Result<User> {
    let response = http
        .get(format!("{gateway}/oauth2/userinfo"))
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {gateway} (is bazaar up?)"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        anyhow::bail!(
            "the identity provider does not accept the token ({status}): {}",
            body["error_description"].as_str().unwrap_or_default()
        );
    }
    Ok(User {
        sub: body["sub"]
            .as_str()
            .context("userinfo named no subject")?
            .to_owned(),
        email: body["email"].as_str().map(str::to_owned),
        name: body["name"].as_str().map(str::to_owned),
        roles: body["roles"]
            .as_array()
            .map(|roles| {
                roles
                    .iter()
                    .filter_map(|r| r.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn display_name(user: &User) -> String {
    match (&user.name, &user.email) {
        (Some(name), Some(email)) => format!("{name} <{email}>"),
        (None, Some(email)) => email.clone(),
        (Some(name), None) => name.clone(),
        (None, None) => user.sub.clone(),
    }
}

fn rfc3339(unix_secs: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_secs.max(0) as u64))
        .to_string()
}

fn whoami_json(credentials: &Credentials) -> Value {
    json!({
        "gateway": credentials.gateway,
        "sub": credentials.user.sub,
        "email": credentials.user.email,
        "name": credentials.user.name,
        "roles": credentials.user.roles,
        "access_token_expires_at": rfc3339(credentials.expires_at),
    })
}

pub async fn whoami(global: Global) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let gateway = session::gateway_key(&global.gateway);
    let (token, stored) = match &global.token {
        Some(token) => (token.clone(), None),
        None => {
            let credentials = session::signed_in(&Store::from_env()?, &gateway).await?;
            (credentials.access_token.clone(), Some(credentials))
        }
    };
    let user = userinfo(&http, &gateway, &token).await?;
    let mut out = match &stored {
        Some(credentials) => whoami_json(&Credentials {
            user: user.clone(),
            ..credentials.clone()
        }),
        None => json!({
            "gateway": gateway, "sub": user.sub, "email": user.email, "name": user.name,
            "roles": user.roles,
        }),
    };
    out["source"] = json!(if stored.is_some() {
        "credentials"
    } else {
        "token"
    });
    if global.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{} on {gateway}", display_name(&user));
        println!("  subject  {}", user.sub);
        println!("  roles    {}", user.roles.join(", "));
        if let Some(credentials) = &stored {
            println!(
                "  token    valid until {} (refreshed automatically)",
                rfc3339(credentials.expires_at)
            );
        } else {
            println!("  token    from --token / BAZAAR_TOKEN");
        }
    }
    Ok(())
}

pub async fn logout(global: Global) -> anyhow::Result<()> {
    let store = Store::from_env()?;
    let gateway = session::gateway_key(&global.gateway);
    let Some(credentials) = store.get(&gateway)? else {
        if global.json {
            println!("{}", json!({"gateway": gateway, "signed_out": false}));
        } else {
            println!("not signed in to {gateway}: nothing to do");
        }
        return Ok(());
    };
    // Revoking the refresh token ends the grant, access tokens included (RFC 7009 §2.1);
    // without one, the access token is what there is to revoke.
    let token = credentials
        .refresh_token
        .as_deref()
        .unwrap_or(&credentials.access_token);
    let revoked = revoke(&gateway, token).await;
    // Forget it either way: the user asked to be signed out here.
    store.remove(&gateway)?;
    revoked.with_context(|| {
        format!(
            "the sign-in for {gateway} is removed from {}, but revoking it at the gateway failed",
            store.path().display()
        )
    })?;
    if global.json {
        println!("{}", json!({"gateway": gateway, "signed_out": true}));
    } else {
        println!(
            "signed out of {gateway} ({})",
            display_name(&credentials.user)
        );
    }
    Ok(())
}

/// `POST {gateway}/oauth2/revoke` (RFC 7009) as the public client.
async fn revoke(gateway: &str, token: &str) -> anyhow::Result<()> {
    let response = reqwest::Client::new()
        .post(format!("{gateway}/oauth2/revoke"))
        .form(&[("token", token), ("client_id", CLIENT_ID)])
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {gateway}"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        anyhow::bail!("the revocation endpoint answered {status}: {body}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_matches_rfc_7636_appendix_b() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let verifier = random_b64(32);
        assert_eq!(verifier.len(), 43);
        assert_ne!(verifier, random_b64(32));
    }

    #[test]
    fn pages_escape_what_they_show() {
        let response = Page {
            ok: false,
            message: "<script>".into(),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            escape("<a href=\"x\">&"),
            "&lt;a href=&quot;x&quot;&gt;&amp;"
        );
    }
}
