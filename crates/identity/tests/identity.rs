//! The identity service's one integration-test binary.
//!
//! - `flow_*`, `api_*`: a real server on 127.0.0.1:0 (`Service::run`, so the TCP peer address
//!   is real, which the brute-force tests need), driven with reqwest with redirects disabled,
//!   the way a browser and an OAuth client would drive it. Each test gets a fresh SQLite file.
//! - `storage_*`: the repository's atomic state changes, each written once as an `async fn`
//!   over a database URL and run on SQLite always and on PostgreSQL when
//!   `BAZAAR_TEST_POSTGRES_URL` is set; `postgres::full_flow` runs the whole authorization code
//!   flow against PostgreSQL too, and the issuance tests (concurrent grants all recorded and
//!   audited; a failed batch answers no token) run a server on both engines.

use std::collections::HashMap;
use std::time::Duration;

use bazaar_identity::model::{NewUser, StoredCode};
use bazaar_identity::repository::{NewRefresh, RotateOutcome};
use bazaar_identity::{Config, Repository};
use bazaar_kit::config::CommonConfig;
use bazaar_kit::storage::testing::{fresh_postgres_database, sqlite_url};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// helpers

struct Server {
    base: String,
    http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn spawn() -> Server {
    spawn_with(None, |_| {}).await
}

async fn spawn_with(database_url: Option<String>, tweak: impl FnOnce(&mut Config)) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let base = format!("http://127.0.0.1:{port}");
    let mut common = CommonConfig::defaults(bazaar_identity::NAME, 0);
    common.data_dir = dir.path().to_owned();
    common.registry_url = String::new();
    common.database_url = database_url;
    let mut config = Config {
        issuer: base.clone(),
        ..Config::default()
    };
    tweak(&mut config);
    let service = bazaar_identity::build(common, config)
        .await
        .expect("service builds");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(service.run(listener, async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    Server {
        base,
        http,
        _stop: stop,
        _dir: dir,
    }
}

fn cookie_from(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn hidden_field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).expect("hidden field") + marker.len();
    let end = html[start..].find('"').expect("closing quote") + start;
    unescape(&html[start..end])
}

fn query_params(location: &str) -> HashMap<String, String> {
    let url = url::Url::parse(location).expect("absolute location");
    url.query_pairs().into_owned().collect()
}

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .expect("a Location header")
        .to_owned()
}

fn pkce() -> (String, String) {
    let verifier = format!("v{}", uuid::Uuid::new_v4().simple()).repeat(2);
    let challenge = bazaar_identity::crypto::b64url(&Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

const STOREFRONT_REDIRECT: &str = "http://127.0.0.1:8080/auth/callback";
const TEST_RP_REDIRECT: &str = "http://127.0.0.1:8799/callback";

struct Authorization<'a> {
    client_id: &'a str,
    redirect_uri: &'a str,
    scope: &'a str,
    challenge: Option<&'a str>,
    method: Option<&'a str>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get_json(&self, path: &str) -> Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json")
    }

    fn authorize_path(&self, a: &Authorization<'_>) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", a.client_id)
            .append_pair("redirect_uri", a.redirect_uri)
            .append_pair("scope", a.scope)
            .append_pair("state", "st-123")
            .append_pair("nonce", "n-456");
        if let Some(c) = a.challenge {
            query.append_pair("code_challenge", c);
        }
        if let Some(m) = a.method {
            query.append_pair("code_challenge_method", m);
        }
        format!("/oauth2/authorize?{}", query.finish())
    }

    /// Fetches the login form: (csrf cookie, csrf field, return_to field).
    async fn login_form(&self, path: &str) -> (String, String, String) {
        let response = self.http.get(self.url(path)).send().await.expect("send");
        assert_eq!(response.status(), StatusCode::OK);
        let cookie = cookie_from(response.headers(), "bazaar_csrf").expect("csrf cookie");
        let html = response.text().await.expect("html");
        assert!(html.contains("autocomplete=\"current-password\""), "{html}");
        assert!(html.contains("<label for=\"email\">"));
        (
            cookie,
            hidden_field(&html, "csrf"),
            hidden_field(&html, "return_to"),
        )
    }

    /// Posts the login form as a browser would, from `forwarded_for` when given.
    async fn post_login(
        &self,
        email: &str,
        password: &str,
        return_to: &str,
        forwarded_for: Option<&str>,
    ) -> reqwest::Response {
        let (cookie, csrf, _) = self.login_form("/login").await;
        let mut request = self
            .http
            .post(self.url("/login"))
            .header("cookie", format!("bazaar_csrf={cookie}"))
            .form(&[
                ("email", email),
                ("password", password),
                ("return_to", return_to),
                ("csrf", csrf.as_str()),
            ]);
        if let Some(xff) = forwarded_for {
            request = request.header("x-forwarded-for", xff);
        }
        request.send().await.expect("send")
    }

    /// Signs in through the form; returns the session cookie value.
    async fn sign_in(&self, email: &str, password: &str) -> String {
        let response = self.post_login(email, password, "/", None).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        cookie_from(response.headers(), "bazaar_session").expect("session cookie")
    }

    /// The whole browser part of the flow: authorize → login form → authorize → code.
    async fn authorize(&self, a: &Authorization<'_>, email: &str, password: &str) -> String {
        let path = self.authorize_path(a);
        let response = self.http.get(self.url(&path)).send().await.expect("send");
        assert_eq!(response.status(), StatusCode::FOUND);
        let login = location(&response);
        assert!(login.starts_with("/login?return_to="), "{login}");

        let (cookie, csrf, return_to) = self.login_form(&login).await;
        assert_eq!(
            return_to, path,
            "the form carries the authorize request back"
        );
        let response = self
            .http
            .post(self.url("/login"))
            .header("cookie", format!("bazaar_csrf={cookie}"))
            .form(&[
                ("email", email),
                ("password", password),
                ("return_to", return_to.as_str()),
                ("csrf", csrf.as_str()),
            ])
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        let set_cookie = response
            .headers()
            .get(SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .expect("set-cookie")
            .to_owned();
        assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"));
        let session = cookie_from(response.headers(), "bazaar_session").expect("session");
        let back = location(&response);
        assert_eq!(back, path);

        let response = self
            .http
            .get(self.url(&back))
            .header("cookie", format!("bazaar_session={session}"))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::FOUND);
        let to_client = location(&response);
        assert!(to_client.starts_with(a.redirect_uri), "{to_client}");
        let params = query_params(&to_client);
        assert_eq!(params["state"], "st-123");
        assert_eq!(params["iss"], self.base);
        params["code"].clone()
    }

    async fn token(
        &self,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.post(self.url("/oauth2/token")).form(form);
        if let Some((id, secret)) = basic {
            request = request.basic_auth(id, Some(secret));
        }
        let response = request.send().await.expect("send");
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED {
            assert!(response.headers().contains_key("www-authenticate"));
        }
        (status, response.json().await.expect("json"))
    }

    async fn redeem(
        &self,
        client_id: &str,
        redirect_uri: &str,
        code: &str,
        verifier: &str,
        basic: Option<(&str, &str)>,
    ) -> (StatusCode, Value) {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        if basic.is_none() {
            form.push(("client_id", client_id));
        }
        self.token(&form, basic).await
    }

    /// A complete storefront sign-in: tokens for `email`.
    async fn user_tokens(&self, email: &str, password: &str, scope: &str) -> Value {
        let (verifier, challenge) = pkce();
        let code = self
            .authorize(
                &Authorization {
                    client_id: "storefront",
                    redirect_uri: STOREFRONT_REDIRECT,
                    scope,
                    challenge: Some(&challenge),
                    method: Some("S256"),
                },
                email,
                password,
            )
            .await;
        let (status, body) = self
            .redeem("storefront", STOREFRONT_REDIRECT, &code, &verifier, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn introspect(&self, token: &str) -> Value {
        let response = self
            .http
            .post(self.url("/oauth2/introspect"))
            .basic_auth("demo-partner", Some("demo-partner-secret"))
            .form(&[("token", token)])
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("json")
    }

    async fn refresh(&self, token: &str) -> (StatusCode, Value) {
        self.token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", token),
                ("client_id", "storefront"),
            ],
            None,
        )
        .await
    }

    async fn client_token(
        &self,
        id: &str,
        secret: &str,
        extra: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut form = vec![("grant_type", "client_credentials")];
        form.extend_from_slice(extra);
        self.token(&form, Some((id, secret))).await
    }

    async fn admin_token(&self) -> String {
        let tokens = self
            .user_tokens(
                bazaar_identity::DEMO_ADMIN.0,
                bazaar_identity::DEMO_ADMIN.1,
                "openid",
            )
            .await;
        tokens["access_token"].as_str().expect("token").to_owned()
    }
}

/// Verifies `token` with the published JWKS, as a resource server would.
async fn verify_with_jwks<T: serde::de::DeserializeOwned>(
    server: &Server,
    token: &str,
    audience: &str,
) -> T {
    let jwks: JwkSet =
        serde_json::from_value(server.get_json("/oauth2/jwks.json").await).expect("a JWK set");
    let header = jsonwebtoken::decode_header(token).expect("header");
    assert_eq!(header.alg, Algorithm::EdDSA);
    let kid = header.kid.expect("kid");
    let jwk = jwks.find(&kid).expect("the signing key is published");
    let key = DecodingKey::from_jwk(jwk).expect("decoding key");
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[&server.base]);
    validation.set_audience(&[audience]);
    jsonwebtoken::decode::<T>(token, &key, &validation)
        .expect("verifies")
        .claims
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("header")
        .kid
        .expect("kid")
}

// ---------------------------------------------------------------------------------------------
// discovery and keys

#[tokio::test]
async fn flow_discovery_and_jwks() {
    let server = spawn().await;
    let doc = server.get_json("/.well-known/openid-configuration").await;
    let base = &server.base;
    assert_eq!(doc["issuer"], *base);
    assert_eq!(
        doc["authorization_endpoint"],
        format!("{base}/oauth2/authorize")
    );
    assert_eq!(doc["token_endpoint"], format!("{base}/oauth2/token"));
    assert_eq!(doc["userinfo_endpoint"], format!("{base}/oauth2/userinfo"));
    assert_eq!(doc["jwks_uri"], format!("{base}/oauth2/jwks.json"));
    assert_eq!(doc["revocation_endpoint"], format!("{base}/oauth2/revoke"));
    assert_eq!(
        doc["introspection_endpoint"],
        format!("{base}/oauth2/introspect")
    );
    assert_eq!(doc["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(
        doc["subject_types_supported"],
        serde_json::json!(["public"])
    );
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        serde_json::json!(["EdDSA"])
    );
    assert_eq!(
        doc["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_basic", "client_secret_post", "none"])
    );
    for field in [
        "grant_types_supported",
        "scopes_supported",
        "claims_supported",
    ] {
        assert!(
            doc[field].as_array().is_some_and(|a| !a.is_empty()),
            "{field}"
        );
    }

    let jwks = server.get_json("/oauth2/jwks.json").await;
    let keys = jwks["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 2, "current and next: {jwks}");
    for key in keys {
        assert_eq!(key["kty"], "OKP");
        assert_eq!(key["crv"], "Ed25519");
        assert_eq!(key["alg"], "EdDSA");
        assert_eq!(key["use"], "sig");
        assert!(key["x"].as_str().is_some_and(|x| x.len() == 43));
        assert!(key["kid"].is_string());
    }
    assert!(key_set_has_no_private_parts(&jwks));
}

fn key_set_has_no_private_parts(jwks: &Value) -> bool {
    jwks["keys"]
        .as_array()
        .is_some_and(|keys| keys.iter().all(|k| k.get("d").is_none()))
}

// ---------------------------------------------------------------------------------------------
// authorization code flow

#[tokio::test]
async fn flow_authorization_code_with_pkce_through_the_login_form() {
    let server = spawn().await;
    let (email, password) = bazaar_identity::DEMO_CUSTOMER;
    let tokens = server
        .user_tokens(email, password, "openid profile email offline_access")
        .await;
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 300);
    assert!(tokens["refresh_token"].is_string());
    let access = tokens["access_token"].as_str().unwrap();

    // The access token: header and claims of the contract, verified with the JWKS.
    let header = jsonwebtoken::decode_header(access).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let claims: Value = verify_with_jwks(&server, access, "bazaar").await;
    assert_eq!(claims["iss"], server.base);
    assert_eq!(claims["aud"], "bazaar");
    assert_eq!(claims["client_id"], "storefront");
    assert_eq!(claims["roles"], serde_json::json!(["customer"]));
    assert_eq!(claims["email"], email);
    assert_eq!(claims["scope"], "openid profile email offline_access");
    for claim in ["sub", "exp", "iat", "nbf", "jti"] {
        assert!(!claims[claim].is_null(), "{claim}");
    }

    // The ID token: aud = client id, the nonce, auth_time.
    let id_token = tokens["id_token"].as_str().expect("id token");
    let id: Value = verify_with_jwks(&server, id_token, "storefront").await;
    assert_eq!(id["nonce"], "n-456");
    assert_eq!(id["at_hash"], bazaar_identity::crypto::at_hash(access));
    assert_eq!(id["sub"], claims["sub"]);
    assert_eq!(id["email"], email);
    assert!(id["auth_time"].as_i64().is_some());

    // The token works on userinfo and on /users/me.
    let info: Value = server
        .http
        .get(server.url("/oauth2/userinfo"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["sub"], claims["sub"]);
    assert_eq!(info["email"], email);
    let me = server
        .http
        .get(server.url("/api/v1/users/me"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    assert_eq!(me.json::<Value>().await.unwrap()["email"], email);

    // The admin gets the admin role.
    let admin = server.admin_token().await;
    let claims: Value = verify_with_jwks(&server, &admin, "bazaar").await;
    assert_eq!(claims["roles"], serde_json::json!(["customer", "admin"]));
}

#[tokio::test]
async fn flow_confidential_client_authenticates_basic_and_post() {
    let server = spawn().await;
    let (email, password) = bazaar_identity::DEMO_CUSTOMER;
    for method in ["basic", "post", "wrong"] {
        let (verifier, challenge) = pkce();
        let code = server
            .authorize(
                &Authorization {
                    client_id: "test-rp",
                    redirect_uri: TEST_RP_REDIRECT,
                    scope: "openid",
                    challenge: Some(&challenge),
                    method: Some("S256"),
                },
                email,
                password,
            )
            .await;
        let base = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", TEST_RP_REDIRECT),
            ("code_verifier", verifier.as_str()),
        ];
        let (status, body) = match method {
            "basic" => {
                server
                    .token(&base, Some(("test-rp", "test-rp-secret")))
                    .await
            }
            "post" => {
                let mut form = base.to_vec();
                form.push(("client_id", "test-rp"));
                form.push(("client_secret", "test-rp-secret"));
                server.token(&form, None).await
            }
            _ => {
                server
                    .token(&base, Some(("test-rp", "not-the-secret")))
                    .await
            }
        };
        if method == "wrong" {
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(body["error"], "invalid_client");
        } else {
            assert_eq!(status, StatusCode::OK, "{method}: {body}");
            assert!(body["id_token"].is_string());
            assert!(
                body.get("refresh_token").is_none(),
                "no offline_access asked"
            );
        }
    }
    // A confidential client cannot pass itself off as public.
    let (status, body) = server
        .token(
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "test-rp"),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
}

#[tokio::test]
async fn flow_pkce_is_required_s256_only_and_verified() {
    let server = spawn().await;
    let session = server
        .sign_in("shopper@bazaar.test", "shopper-pass-1")
        .await;
    let (verifier, challenge) = pkce();
    for (challenge, method) in [
        (None, None),
        (Some(challenge.as_str()), Some("plain")),
        (Some(challenge.as_str()), None),
    ] {
        let path = server.authorize_path(&Authorization {
            client_id: "storefront",
            redirect_uri: STOREFRONT_REDIRECT,
            scope: "openid",
            challenge,
            method,
        });
        let response = server
            .http
            .get(server.url(&path))
            .header("cookie", format!("bazaar_session={session}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FOUND);
        let params = query_params(&location(&response));
        assert_eq!(params["error"], "invalid_request", "{method:?}");
        assert_eq!(params["state"], "st-123");
        assert!(!params.contains_key("code"));
    }

    // A wrong verifier is refused, without spending the code.
    let path = server.authorize_path(&Authorization {
        client_id: "storefront",
        redirect_uri: STOREFRONT_REDIRECT,
        scope: "openid",
        challenge: Some(&challenge),
        method: Some("S256"),
    });
    let response = server
        .http
        .get(server.url(&path))
        .header("cookie", format!("bazaar_session={session}"))
        .send()
        .await
        .unwrap();
    let code = query_params(&location(&response))["code"].clone();
    let (other, _) = pkce();
    let (status, body) = server
        .redeem("storefront", STOREFRONT_REDIRECT, &code, &other, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    let (status, body) = server
        .token(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", STOREFRONT_REDIRECT),
                ("client_id", "storefront"),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "missing verifier");
    assert_eq!(body["error"], "invalid_grant");
    let (status, _) = server
        .redeem("storefront", STOREFRONT_REDIRECT, &code, &verifier, None)
        .await;
    assert_eq!(status, StatusCode::OK, "the right verifier still works");
}

#[tokio::test]
async fn flow_bad_client_or_redirect_uri_never_redirects() {
    let server = spawn().await;
    let session = server
        .sign_in("shopper@bazaar.test", "shopper-pass-1")
        .await;
    let (_, challenge) = pkce();
    for (client_id, redirect_uri) in [
        ("no-such-client", STOREFRONT_REDIRECT),
        ("storefront", "https://evil.test/callback"),
        ("storefront", "http://127.0.0.1:8080/auth/callback/extra"),
    ] {
        let path = server.authorize_path(&Authorization {
            client_id,
            redirect_uri,
            scope: "openid",
            challenge: Some(&challenge),
            method: Some("S256"),
        });
        for cookie in [String::new(), format!("bazaar_session={session}")] {
            let response = server
                .http
                .get(server.url(&path))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::BAD_REQUEST,
                "{client_id} {redirect_uri}"
            );
            assert!(response.headers().get(LOCATION).is_none());
            assert!(response.text().await.unwrap().contains("refused"));
        }
    }

    // At the token endpoint, a redirect_uri differing from the authorization request fails.
    let (verifier, challenge) = pkce();
    let path = server.authorize_path(&Authorization {
        client_id: "storefront",
        redirect_uri: STOREFRONT_REDIRECT,
        scope: "openid",
        challenge: Some(&challenge),
        method: Some("S256"),
    });
    let response = server
        .http
        .get(server.url(&path))
        .header("cookie", format!("bazaar_session={session}"))
        .send()
        .await
        .unwrap();
    let code = query_params(&location(&response))["code"].clone();
    let (status, body) = server
        .redeem(
            "storefront",
            "http://localhost:8080/auth/callback",
            &code,
            &verifier,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
}

/// RFC 8252 §7.3: the CLI's loopback redirect URI is registered without a port, so any port
/// the CLI happened to bind is accepted, with the same scheme, host and path; everything else,
/// and the storefront's loopback URI registered with a port, stays an exact match.
#[tokio::test]
async fn flow_loopback_redirect_accepts_any_port_for_the_cli_only() {
    let server = spawn().await;
    let session = server
        .sign_in("shopper@bazaar.test", "shopper-pass-1")
        .await;
    let authorize = |client_id: &'static str, redirect_uri: String, challenge: String| {
        let path = server.authorize_path(&Authorization {
            client_id,
            redirect_uri: &redirect_uri,
            scope: "openid offline_access",
            challenge: Some(&challenge),
            method: Some("S256"),
        });
        let request = server
            .http
            .get(server.url(&path))
            .header("cookie", format!("bazaar_session={session}"));
        async move { request.send().await.expect("send") }
    };

    for port in [49152_u16, 8765, 61000] {
        let redirect_uri = format!("http://127.0.0.1:{port}/callback");
        let (verifier, challenge) = pkce();
        let response = authorize("bazaar-cli", redirect_uri.clone(), challenge).await;
        assert_eq!(response.status(), StatusCode::FOUND, "port {port}");
        let to_client = location(&response);
        assert!(
            to_client.starts_with(&format!("{redirect_uri}?")),
            "{to_client}"
        );
        let code = query_params(&to_client)["code"].clone();
        // The code is bound to the port it was sent to.
        let other = format!("http://127.0.0.1:{}/callback", port + 1);
        let (status, body) = server
            .redeem("bazaar-cli", &other, &code, &verifier, None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"], "invalid_grant");
        let (status, body) = server
            .redeem("bazaar-cli", &redirect_uri, &code, &verifier, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["refresh_token"].is_string(), "{body}");
    }

    for (client_id, redirect_uri) in [
        ("bazaar-cli", "http://127.0.0.1:49152/other"),
        ("bazaar-cli", "http://127.0.0.1:49152/callback/extra"),
        ("bazaar-cli", "http://localhost:49152/callback"),
        ("bazaar-cli", "http://[::1]:49152/callback"),
        ("bazaar-cli", "http://127.0.0.2:49152/callback"),
        ("bazaar-cli", "https://127.0.0.1:49152/callback"),
        ("bazaar-cli", "http://evil.test:49152/callback"),
        // The storefront registered its loopback URI with a port: exact match only.
        ("storefront", "http://127.0.0.1:8081/auth/callback"),
        ("storefront", "http://127.0.0.1/auth/callback"),
    ] {
        let (_, challenge) = pkce();
        let response = authorize(client_id, redirect_uri.to_owned(), challenge).await;
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{client_id} {redirect_uri}"
        );
        assert!(response.headers().get(LOCATION).is_none());
        assert!(response.text().await.unwrap().contains("refused"));
    }
    let (_, challenge) = pkce();
    let response = authorize("storefront", STOREFRONT_REDIRECT.to_owned(), challenge).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert!(location(&response).starts_with(STOREFRONT_REDIRECT));
}

#[tokio::test]
async fn flow_code_reuse_is_refused_and_revokes_the_first_tokens() {
    let server = spawn().await;
    let (verifier, challenge) = pkce();
    let code = server
        .authorize(
            &Authorization {
                client_id: "storefront",
                redirect_uri: STOREFRONT_REDIRECT,
                scope: "openid offline_access",
                challenge: Some(&challenge),
                method: Some("S256"),
            },
            "shopper@bazaar.test",
            "shopper-pass-1",
        )
        .await;
    let (status, first) = server
        .redeem("storefront", STOREFRONT_REDIRECT, &code, &verifier, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let access = first["access_token"].as_str().unwrap();
    let refresh = first["refresh_token"].as_str().unwrap();
    assert_eq!(server.introspect(access).await["active"], true);

    let (status, second) = server
        .redeem("storefront", STOREFRONT_REDIRECT, &code, &verifier, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(second["error"], "invalid_grant");

    assert_eq!(server.introspect(access).await["active"], false);
    assert_eq!(server.introspect(refresh).await["active"], false);
    let (status, body) = server.refresh(refresh).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    let me = server
        .http
        .get(server.url("/api/v1/users/me"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED);
}

// ---------------------------------------------------------------------------------------------
// refresh tokens

#[tokio::test]
async fn flow_refresh_rotates_and_a_retry_within_grace_keeps_the_family() {
    let server = spawn().await;
    let tokens = server
        .user_tokens(
            "shopper@bazaar.test",
            "shopper-pass-1",
            "openid offline_access",
        )
        .await;
    let first = tokens["refresh_token"].as_str().unwrap().to_owned();
    let (status, rotated) = server.refresh(&first).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let second = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(first, second, "rotated on use");
    assert!(rotated["access_token"].is_string());
    assert!(rotated["id_token"].is_string());

    // The old one again, right away: a concurrent retry, refused without revoking.
    let (status, body) = server.refresh(&first).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(
        server
            .introspect(rotated["access_token"].as_str().unwrap())
            .await["active"],
        true
    );
    let (status, third) = server.refresh(&second).await;
    assert_eq!(status, StatusCode::OK, "the family lives on: {third}");

    // Another client cannot use it.
    let (status, body) = server
        .token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", third["refresh_token"].as_str().unwrap()),
                ("client_id", "bazaar-cli"),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    let (status, _) = server
        .refresh(third["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a foreign attempt has no side effect"
    );
}

#[tokio::test]
async fn flow_refresh_reuse_after_grace_revokes_the_family() {
    let server = spawn_with(None, |c| c.refresh_reuse_grace_secs = 0).await;
    let tokens = server
        .user_tokens(
            "shopper@bazaar.test",
            "shopper-pass-1",
            "openid offline_access",
        )
        .await;
    let first = tokens["refresh_token"].as_str().unwrap().to_owned();
    let (_, rotated) = server.refresh(&first).await;
    let second = rotated["refresh_token"].as_str().unwrap().to_owned();
    let access = rotated["access_token"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let (status, body) = server.refresh(&first).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");

    let (status, body) = server.refresh(&second).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the whole family is revoked"
    );
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(server.introspect(&access).await["active"], false);
    assert_eq!(
        server
            .introspect(tokens["access_token"].as_str().unwrap())
            .await["active"],
        false
    );
}

// ---------------------------------------------------------------------------------------------
// client credentials, revocation, introspection

#[tokio::test]
async fn flow_client_credentials_with_audience_and_scopes() {
    let server = spawn().await;
    let (status, body) = server
        .client_token("demo-partner", "demo-partner-secret", &[])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("refresh_token").is_none());
    let claims: Value =
        verify_with_jwks(&server, body["access_token"].as_str().unwrap(), "bazaar").await;
    assert_eq!(claims["sub"], "demo-partner");
    assert_eq!(claims["client_id"], "demo-partner");
    assert_eq!(claims["roles"], serde_json::json!([]));
    assert_eq!(claims["scope"], "partner catalog:read");
    assert!(claims.get("email").is_none());

    let (status, body) = server
        .client_token(
            "bazaar-services",
            "bazaar-services-secret",
            &[("audience", "catalog")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let claims: Value =
        verify_with_jwks(&server, body["access_token"].as_str().unwrap(), "catalog").await;
    assert_eq!(claims["aud"], "catalog");
    assert_eq!(claims["roles"], serde_json::json!(["service"]));
    assert_eq!(claims["scope"], "internal");

    let (status, body) = server
        .client_token(
            "demo-partner",
            "demo-partner-secret",
            &[("scope", "catalog:read")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["scope"], "catalog:read");

    let (status, body) = server
        .client_token(
            "demo-partner",
            "demo-partner-secret",
            &[("audience", "catalog")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_target");
    let (status, body) = server
        .client_token(
            "demo-partner",
            "demo-partner-secret",
            &[("scope", "internal")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_scope");
    let (status, body) = server
        .token(
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "storefront"),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "unauthorized_client");
    let (status, body) = server
        .token(
            &[("grant_type", "password"), ("client_id", "storefront")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "unsupported_grant_type");
}

#[tokio::test]
async fn flow_revocation_and_introspection() {
    let server = spawn().await;
    let (_, body) = server
        .client_token("demo-partner", "demo-partner-secret", &[])
        .await;
    let access = body["access_token"].as_str().unwrap().to_owned();
    let active = server.introspect(&access).await;
    assert_eq!(active["active"], true);
    assert_eq!(active["client_id"], "demo-partner");
    assert_eq!(active["aud"], "bazaar");

    // Public clients may not introspect; unauthenticated calls neither.
    let response = server
        .http
        .post(server.url("/oauth2/introspect"))
        .form(&[("token", access.as_str()), ("client_id", "storefront")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "invalid_client"
    );
    let response = server
        .http
        .post(server.url("/oauth2/introspect"))
        .form(&[("token", access.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // A confidential client without the permission gets 403.
    let response = server
        .http
        .post(server.url("/oauth2/introspect"))
        .basic_auth("bazaar-services", Some("bazaar-services-secret"))
        .form(&[("token", access.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // Revoking: unknown tokens get 200 too; the access token goes inactive.
    for token in ["no-such-token", access.as_str()] {
        let response = server
            .http
            .post(server.url("/oauth2/revoke"))
            .basic_auth("demo-partner", Some("demo-partner-secret"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(server.introspect(&access).await["active"], false);
    assert_eq!(server.introspect("garbage").await["active"], false);

    // A public client revokes its refresh token: the grant ends, access token included.
    let tokens = server
        .user_tokens(
            "shopper@bazaar.test",
            "shopper-pass-1",
            "openid offline_access",
        )
        .await;
    let refresh = tokens["refresh_token"].as_str().unwrap();
    assert_eq!(server.introspect(refresh).await["active"], true);
    let response = server
        .http
        .post(server.url("/oauth2/revoke"))
        .form(&[("token", refresh), ("client_id", "storefront")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.introspect(refresh).await["active"], false);
    assert_eq!(
        server
            .introspect(tokens["access_token"].as_str().unwrap())
            .await["active"],
        false
    );
    let (status, _) = server.refresh(refresh).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

// ---------------------------------------------------------------------------------------------
// login form and brute force

#[tokio::test]
async fn flow_login_rejects_open_redirects_and_csrf() {
    let server = spawn().await;
    for evil in ["https://evil.test/", "//evil.test/x", "/\\evil.test"] {
        let response = server
            .post_login("shopper@bazaar.test", "shopper-pass-1", evil, None)
            .await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(location(&response), "/", "{evil}");
    }
    // A form without the matching CSRF cookie is refused.
    let (_, csrf, _) = server.login_form("/login").await;
    let response = server
        .http
        .post(server.url("/login"))
        .header("cookie", "bazaar_csrf=something-else")
        .form(&[
            ("email", "shopper@bazaar.test"),
            ("password", "shopper-pass-1"),
            ("return_to", "/"),
            ("csrf", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(cookie_from(response.headers(), "bazaar_session").is_none());

    // Logout ends the session.
    let session = server
        .sign_in("shopper@bazaar.test", "shopper-pass-1")
        .await;
    let response = server
        .http
        .post(server.url("/logout"))
        .header("cookie", format!("bazaar_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let (_, challenge) = pkce();
    let path = server.authorize_path(&Authorization {
        client_id: "storefront",
        redirect_uri: STOREFRONT_REDIRECT,
        scope: "openid",
        challenge: Some(&challenge),
        method: Some("S256"),
    });
    let response = server
        .http
        .get(server.url(&path))
        .header("cookie", format!("bazaar_session={session}"))
        .send()
        .await
        .unwrap();
    assert!(location(&response).starts_with("/login"), "session is gone");
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After seconds")
}

#[tokio::test]
async fn flow_brute_force_per_account_form_and_json() {
    // No trusted proxies: each attempt counts against the real peer (127.0.0.1) and the
    // account; the account limit trips at the same time, so try from distinct forwarded
    // addresses to prove it is the account that is locked.
    let server = spawn().await;
    for i in 0..5 {
        let xff = format!("10.0.0.{i}");
        let response = server
            .post_login("shopper@bazaar.test", "wrong-password", "/", Some(&xff))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "attempt {i}");
        assert!(response
            .text()
            .await
            .unwrap()
            .contains("Wrong email or password"));
    }
    let response = server
        .post_login(
            "shopper@bazaar.test",
            "shopper-pass-1",
            "/",
            Some("10.0.0.99"),
        )
        .await;
    assert_eq!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "locked, even with the right password"
    );
    let wait = retry_after(&response);
    assert!((2..=900).contains(&wait), "{wait}");
    assert!(cookie_from(response.headers(), "bazaar_session").is_none());

    // The JSON login obeys the same lock.
    let response = server
        .http
        .post(server.url("/api/v1/identity/sessions"))
        .header("x-forwarded-for", "10.0.0.98")
        .json(&serde_json::json!({"email": "SHOPPER@bazaar.test", "password": "shopper-pass-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&response) >= 1);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "too_many_attempts"
    );

    // Another account from another address is unaffected.
    let response = server
        .http
        .post(server.url("/api/v1/identity/sessions"))
        .header("x-forwarded-for", "10.0.0.97")
        .json(&serde_json::json!({"email": "admin@bazaar.test", "password": "admin-pass-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(cookie_from(response.headers(), "bazaar_session").is_some());
}

#[tokio::test]
async fn flow_brute_force_per_address_ignores_spoofed_forwarded_entries() {
    let server = spawn().await;
    // The gateway (a trusted peer, 127.0.0.1) appends the real address 203.0.113.7; the
    // attacker varies the leftmost entries to look like someone new each time.
    for i in 0..5 {
        let xff = format!("198.51.100.{i}, 203.0.113.7");
        let response = server
            .post_login(
                &format!("nobody{i}@bazaar.test"),
                "wrong-password",
                "/",
                Some(&xff),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "attempt {i}");
    }
    let response = server
        .post_login(
            "shopper@bazaar.test",
            "shopper-pass-1",
            "/",
            Some("192.0.2.200, 203.0.113.7"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&response) >= 1);
    let response = server
        .http
        .post(server.url("/api/v1/identity/sessions"))
        .header("x-forwarded-for", "1.2.3.4, 203.0.113.7")
        .json(&serde_json::json!({"email": "admin@bazaar.test", "password": "admin-pass-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);

    // A different real address is not locked.
    let response = server
        .post_login(
            "shopper@bazaar.test",
            "shopper-pass-1",
            "/",
            Some("203.0.113.8"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn flow_forwarded_header_is_ignored_from_untrusted_peers() {
    let server = spawn_with(None, |c| c.trusted_proxies = Vec::new()).await;
    for i in 0..5 {
        let xff = format!("203.0.113.{i}");
        let response = server
            .post_login(
                &format!("nobody{i}@bazaar.test"),
                "wrong-password",
                "/",
                Some(&xff),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = server
        .post_login(
            "shopper@bazaar.test",
            "shopper-pass-1",
            "/",
            Some("203.0.113.250"),
        )
        .await;
    assert_eq!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the peer (127.0.0.1) is counted, whatever the header says"
    );
}

// ---------------------------------------------------------------------------------------------
// keys

#[tokio::test]
async fn flow_key_rotation_keeps_old_tokens_verifiable() {
    let server = spawn().await;
    let before = server.get_json("/oauth2/jwks.json").await;
    let published_before: Vec<String> = before["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    let admin = server.admin_token().await;
    let old_kid = kid_of(&admin);
    assert_eq!(published_before[0], old_kid, "current first");
    let next_kid = published_before[1].clone();

    // Only admins rotate.
    let (_, partner) = server
        .client_token("demo-partner", "demo-partner-secret", &[])
        .await;
    let response = server
        .http
        .post(server.url("/api/v1/identity/keys/rotate"))
        .bearer_auth(partner["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    let response = server
        .http
        .post(server.url("/api/v1/identity/keys/rotate"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let rotation: Value = response.json().await.unwrap();
    assert_eq!(
        rotation["current_kid"],
        next_kid.as_str(),
        "the published next key signs now"
    );
    assert_eq!(rotation["retired_kid"], old_kid.as_str());

    let after = server.get_json("/oauth2/jwks.json").await;
    let published_after: Vec<&str> = after["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(published_after.len(), 3, "current, next, retired: {after}");
    assert!(published_after.contains(&old_kid.as_str()));
    assert!(published_after.contains(&rotation["next_kid"].as_str().unwrap()));

    // The old token still verifies and still works; new tokens use the new kid.
    let _: Value = verify_with_jwks(&server, &admin, "bazaar").await;
    assert_eq!(server.introspect(&admin).await["active"], true);
    let (_, fresh) = server
        .client_token("demo-partner", "demo-partner-secret", &[])
        .await;
    let fresh = fresh["access_token"].as_str().unwrap();
    assert_eq!(kid_of(fresh), next_kid);
    let _: Value = verify_with_jwks(&server, fresh, "bazaar").await;
}

#[tokio::test]
async fn flow_two_rotations_keep_both_retired_keys_while_their_tokens_live() {
    // (Retired keys leaving the JWKS once their tokens have expired is proven by the storage
    // test `keys_rotate_atomically`, which looks at the JWKS of a later time.)
    let server = spawn().await;
    let admin = server.admin_token().await;
    for _ in 0..2 {
        let response = server
            .http
            .post(server.url("/api/v1/identity/keys/rotate"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let jwks = server.get_json("/oauth2/jwks.json").await;
    assert_eq!(
        jwks["keys"].as_array().unwrap().len(),
        4,
        "current, next, two retired"
    );
    // The admin token was signed by the first key, retired two rotations ago: still valid.
    let _: Value = verify_with_jwks(&server, &admin, "bazaar").await;
}

#[tokio::test]
async fn flow_security_events_are_audited_in_a_verifiable_chain() {
    let server = spawn().await;
    let failed = server
        .post_login("shopper@bazaar.test", "wrong-password", "/", None)
        .await;
    assert_eq!(failed.status(), StatusCode::OK);
    let (verifier, challenge) = pkce();
    let code = server
        .authorize(
            &Authorization {
                client_id: "storefront",
                redirect_uri: STOREFRONT_REDIRECT,
                scope: "openid",
                challenge: Some(&challenge),
                method: Some("S256"),
            },
            "admin@bazaar.test",
            "admin-pass-1",
        )
        .await;
    let (_, tokens) = server
        .redeem("storefront", STOREFRONT_REDIRECT, &code, &verifier, None)
        .await;
    let (status, _) = server
        .redeem("storefront", STOREFRONT_REDIRECT, &code, &verifier, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let admin = server.admin_token().await;
    let response = server
        .http
        .post(server.url("/api/v1/identity/keys/rotate"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(tokens["access_token"].is_string());

    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&sqlite_url(server._dir.path(), "identity"))
        .await
        .unwrap();
    let records = bazaar_kit::audit::read_records(&pool, 0, 1000)
        .await
        .unwrap();
    bazaar_kit::audit::verify_chain(&records).expect("an unbroken chain");
    let has = |action: &str, outcome: &str| {
        records
            .iter()
            .any(|r| r.action == action && r.outcome == outcome)
    };
    assert!(has("login", "failure"));
    assert!(has("login", "success"));
    assert!(has("code.issued", "success"));
    assert!(has("token.issued", "success"));
    assert!(has("code.reused", "failure"));
    assert!(has("key.rotated", "success"));
    let failure = records
        .iter()
        .find(|r| r.action == "login" && r.outcome == "failure")
        .unwrap();
    assert_eq!(failure.source, "127.0.0.1");
    assert!(
        records.iter().all(|r| !r.details.contains("pass")),
        "no secrets in the audit log"
    );
    pool.close().await;
}

// ---------------------------------------------------------------------------------------------
// users and admin API

async fn post_json(
    server: &Server,
    path: &str,
    body: Value,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = server.http.post(server.url(path)).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn api_registration_validation_and_duplicates() {
    let server = spawn().await;
    for (body, field) in [
        (
            serde_json::json!({"email": "not-an-email", "password": "long-enough-1", "name": "A"}),
            "email",
        ),
        (
            serde_json::json!({"email": "a@b.test", "password": "short", "name": "A"}),
            "password",
        ),
        (
            serde_json::json!({"email": "a@b.test", "password": "long-enough-1", "name": "  "}),
            "name",
        ),
        (
            serde_json::json!({"email": "a@b.test", "password": "long-enough-1"}),
            "name",
        ),
        (
            serde_json::json!({"email": "a@b.test", "password": 5, "name": "A"}),
            "password",
        ),
    ] {
        let (status, problem) = post_json(&server, "/api/v1/users", body, None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(problem["field"], field, "{problem}");
        assert_eq!(problem["code"], "validation_failed");
    }
    let (status, user) = post_json(
        &server,
        "/api/v1/users",
        serde_json::json!({"email": "New.User@Bazaar.test", "password": "long-enough-1", "name": "New User"}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    assert_eq!(user["email"], "new.user@bazaar.test");
    assert_eq!(user["roles"], serde_json::json!(["customer"]));
    assert!(user.get("password_hash").is_none());
    let (status, problem) = post_json(
        &server,
        "/api/v1/users",
        serde_json::json!({"email": "new.user@bazaar.TEST", "password": "long-enough-2", "name": "Again"}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem["code"], "email_taken");
    assert_eq!(problem["field"], "email");

    // The new user signs in, changes the password, and signs in with the new one.
    let tokens = server
        .user_tokens("new.user@bazaar.test", "long-enough-1", "openid")
        .await;
    let access = tokens["access_token"].as_str().unwrap();
    let change = |current: &str, new: &str| {
        server
            .http
            .put(server.url("/api/v1/users/me/password"))
            .bearer_auth(access)
            .json(&serde_json::json!({"current_password": current, "new_password": new}))
            .send()
    };
    let response = change("long-enough-1", "short").await.unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        response.json::<Value>().await.unwrap()["field"],
        "new_password"
    );
    let response = change("wrong-current-1", "brand-new-pass").await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = change("long-enough-1", "brand-new-pass").await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (status, _) = post_json(
        &server,
        "/api/v1/identity/sessions",
        serde_json::json!({"email": "new.user@bazaar.test", "password": "brand-new-pass"}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Listing users is for admins.
    let response = server
        .http
        .get(server.url("/api/v1/users"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = server
        .http
        .get(server.url("/api/v1/users"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().contains_key("www-authenticate"));
    let admin = server.admin_token().await;
    let list: Value = server
        .http
        .get(server.url("/api/v1/users"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn api_admin_registers_clients_and_the_secret_works_once_shown() {
    let server = spawn().await;
    let admin = server.admin_token().await;
    let (status, problem) = post_json(
        &server,
        "/api/v1/identity/clients",
        serde_json::json!({"name": "x", "grant_types": ["implicit"]}),
        Some(&admin),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["field"], "grant_types[0]");
    let (status, created) = post_json(
        &server,
        "/api/v1/identity/clients",
        serde_json::json!({"client_id": "reporting", "name": "Reporting", "confidential": true,
            "grant_types": ["client_credentials"], "scopes": ["reports"], "roles": ["service"]}),
        Some(&admin),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["client_secret"]
        .as_str()
        .expect("secret shown once")
        .to_owned();
    let (status, body) = server
        .client_token("reporting", &secret, &[("scope", "reports")])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = post_json(
        &server,
        "/api/v1/identity/clients",
        serde_json::json!({"client_id": "reporting", "name": "again", "confidential": true,
            "grant_types": ["client_credentials"]}),
        Some(&admin),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let list: Value = server
        .http
        .get(server.url("/api/v1/identity/clients"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = list["items"].as_array().unwrap();
    assert!(items.iter().any(|c| c["client_id"] == "reporting"));
    assert!(items.iter().all(|c| c.get("client_secret").is_none()));
}

#[tokio::test]
async fn flow_third_party_clients_ask_for_consent() {
    let server = spawn().await;
    let admin = server.admin_token().await;
    let (status, created) = post_json(
        &server,
        "/api/v1/identity/clients",
        serde_json::json!({"client_id": "third-party", "name": "Third <Party>",
            "grant_types": ["authorization_code"], "scopes": ["openid", "email"],
            "redirect_uris": ["https://third.test/cb"]}),
        Some(&admin),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert!(created.get("client_secret").is_none(), "public client");
    let session = server
        .sign_in("shopper@bazaar.test", "shopper-pass-1")
        .await;
    let (verifier, challenge) = pkce();
    let path = server.authorize_path(&Authorization {
        client_id: "third-party",
        redirect_uri: "https://third.test/cb",
        scope: "openid email",
        challenge: Some(&challenge),
        method: Some("S256"),
    });
    let consent_form = || async {
        let response = server
            .http
            .get(server.url(&path))
            .header("cookie", format!("bazaar_session={session}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "a consent page, not a redirect"
        );
        let csrf_cookie = cookie_from(response.headers(), "bazaar_csrf").unwrap();
        let html = response.text().await.unwrap();
        assert!(html.contains("Third &lt;Party&gt;"), "escaped: {html}");
        (
            csrf_cookie,
            hidden_field(&html, "csrf"),
            hidden_field(&html, "request"),
        )
    };
    let decide = |cookie: String, csrf: String, request: String, decision: &'static str| {
        server
            .http
            .post(server.url("/oauth2/authorize"))
            .header(
                "cookie",
                format!("bazaar_session={session}; bazaar_csrf={cookie}"),
            )
            .form(&[
                ("csrf", csrf),
                ("request", request),
                ("decision", decision.to_owned()),
            ])
            .send()
    };

    let (cookie, csrf, request) = consent_form().await;
    let response = decide("forged".into(), csrf, request, "allow")
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "CSRF checked");

    let (cookie2, csrf, request) = consent_form().await;
    assert_ne!(cookie, cookie2);
    let response = decide(cookie2, csrf, request, "deny").await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(query_params(&location(&response))["error"], "access_denied");

    let (cookie, csrf, request) = consent_form().await;
    let response = decide(cookie, csrf, request, "allow").await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let params = query_params(&location(&response));
    let (status, tokens) = server
        .redeem(
            "third-party",
            "https://third.test/cb",
            &params["code"],
            &verifier,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
}

#[test]
fn config_defaults_match_the_contract() {
    let config = Config::default();
    assert_eq!(config.issuer, "http://127.0.0.1:8080");
    assert_eq!(
        (
            config.access_token_ttl_secs,
            config.id_token_ttl_secs,
            config.code_ttl_secs
        ),
        (300, 300, 60)
    );
    assert_eq!(config.refresh_token_ttl_secs, 2_592_000);
    assert_eq!(config.refresh_reuse_grace_secs, 10);
    assert!(config.seed_users);
    assert_eq!(config.trusted_proxies, ["127.0.0.1/32", "::1/128"]);
    let ids: Vec<&str> = config
        .clients
        .iter()
        .map(|c| c.client_id.as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "storefront",
            "bazaar-cli",
            "demo-partner",
            "test-rp",
            "bazaar-services"
        ]
    );
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("demo-partner-secret"),
        "secrets stay out of logs"
    );
    assert_eq!(bazaar_identity::NAME, "identity");
    assert_eq!(bazaar_identity::DEFAULT_PORT, 8083);
}

#[tokio::test]
async fn api_publishes_openapi_and_readiness() {
    let server = spawn().await;
    let doc = server.get_json("/openapi.json").await;
    assert!(doc["paths"]["/api/v1/users"].is_object());
    assert!(doc["paths"]["/api/v1/identity/keys/rotate"].is_object());
    let response = server.http.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// storage, on SQLite and PostgreSQL

async fn open(url: &str) -> Repository {
    bazaar_identity::open(url, &Config::default())
        .await
        .expect("opens")
}

async fn users_are_unique_by_email(url: String) {
    let repository = open(&url).await;
    let user = NewUser {
        email: "unique@bazaar.test".into(),
        name: "U".into(),
        password: "irrelevant-here".into(),
        roles: vec!["customer".into()],
    };
    let stored = repository.create_user(&user, "$argon2id$x").await.unwrap();
    assert_eq!(
        repository
            .user_by_email("unique@bazaar.test")
            .await
            .unwrap(),
        Some(stored.clone())
    );
    assert!(matches!(
        repository.create_user(&user, "$argon2id$y").await,
        Err(bazaar_identity::repository::RepoError::EmailTaken(_))
    ));
    // Seeded users and clients exist, and re-opening does not duplicate them.
    repository.database().close().await;
    let repository = open(&url).await;
    assert_eq!(repository.list_users().await.unwrap().len(), 3);
    assert_eq!(repository.list_clients().await.unwrap().len(), 5);
    let partner = repository.client("demo-partner").await.unwrap().unwrap();
    assert!(partner.secret_hash.starts_with("$argon2id$"));
    assert!(partner.may_introspect);
    repository.database().close().await;
}

async fn codes_redeem_once(url: String) {
    let repository = open(&url).await;
    let user = repository
        .user_by_email(bazaar_identity::DEMO_CUSTOMER.0)
        .await
        .unwrap()
        .unwrap();
    let code = StoredCode {
        client_id: "storefront".into(),
        user_id: user.id.clone(),
        redirect_uri: STOREFRONT_REDIRECT.into(),
        scope: "openid".into(),
        nonce: None,
        code_challenge: "c".into(),
        auth_time: 1,
        expires_at: i64::MAX,
        used_at: None,
        family_id: None,
    };
    repository.insert_code("hash-1", &code).await.unwrap();
    let (a, b) = tokio::join!(
        repository.redeem_code("hash-1", "family-a", "storefront", &user.id),
        repository.redeem_code("hash-1", "family-b", "storefront", &user.id),
    );
    let wins = [a.unwrap(), b.unwrap()].iter().filter(|w| **w).count();
    assert_eq!(wins, 1, "exactly one redemption wins");
    let stored = repository.code("hash-1").await.unwrap().unwrap();
    assert!(stored.used_at.is_some());
    assert!(stored.family_id.is_some());
    repository.database().close().await;
}

async fn refresh_rotation_and_family_revocation(url: String) {
    let repository = open(&url).await;
    let user = repository
        .user_by_email(bazaar_identity::DEMO_CUSTOMER.0)
        .await
        .unwrap()
        .unwrap();
    repository
        .create_family("fam", "storefront", &user.id)
        .await
        .unwrap();
    repository
        .insert_refresh(&NewRefresh {
            token_hash: "r1",
            family_id: "fam",
            client_id: "storefront",
            user_id: &user.id,
            scope: "openid offline_access",
            auth_time: 1,
            expires_at: i64::MAX,
        })
        .await
        .unwrap();
    repository
        .record_access_token("jti-1", Some("fam"), "storefront", &user.id, i64::MAX)
        .await
        .unwrap();
    assert!(!repository.access_token_revoked("jti-1").await.unwrap());
    assert!(repository
        .access_token_revoked("never-issued")
        .await
        .unwrap());

    let outcome = repository
        .rotate_refresh("r1", "r2", i64::MAX)
        .await
        .unwrap();
    assert!(matches!(outcome, RotateOutcome::Rotated(_)));
    let outcome = repository
        .rotate_refresh("r1", "r3", i64::MAX)
        .await
        .unwrap();
    assert!(matches!(outcome, RotateOutcome::AlreadyRotated { .. }));
    assert_eq!(
        repository
            .rotate_refresh("nope", "r4", i64::MAX)
            .await
            .unwrap(),
        RotateOutcome::Unknown
    );
    assert!(repository.revoke_family("fam").await.unwrap());
    assert!(repository.access_token_revoked("jti-1").await.unwrap());
    assert_eq!(
        repository
            .rotate_refresh("r2", "r5", i64::MAX)
            .await
            .unwrap(),
        RotateOutcome::Dead
    );
    repository.database().close().await;
}

async fn keys_rotate_atomically(url: String) {
    let repository = open(&url).await;
    let signer = bazaar_identity::tokens::Signer::new(repository.clone(), "http://x".into(), 300);
    let before = signer.jwks().await.unwrap();
    assert_eq!(before.keys.len(), 2);
    let (current, next, retired) = signer.rotate().await.unwrap();
    assert_eq!(current, before.keys[1].kid);
    assert_eq!(retired.as_deref(), Some(before.keys[0].kid.as_str()));
    let after = signer.jwks().await.unwrap();
    let kids: Vec<&str> = after.keys.iter().map(|k| k.kid.as_str()).collect();
    assert_eq!(
        kids,
        [current.as_str(), next.as_str(), before.keys[0].kid.as_str()]
    );

    // The retired key stays published for 300 s + 60 s after the rotation, then leaves.
    let now = bazaar_kit::storage::now_ms();
    assert_eq!(signer.jwks_at(now + 350_000).await.unwrap().keys.len(), 3);
    let later: Vec<String> = signer
        .jwks_at(now + 370_000)
        .await
        .unwrap()
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(later, [current.clone(), next.clone()]);
    repository.database().close().await;
}

async fn full_flow(url: String) {
    let server = spawn_with(Some(url), |_| {}).await;
    let tokens = server
        .user_tokens(
            "shopper@bazaar.test",
            "shopper-pass-1",
            "openid offline_access",
        )
        .await;
    let (status, rotated) = server
        .refresh(tokens["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let id: Value =
        verify_with_jwks(&server, rotated["id_token"].as_str().unwrap(), "storefront").await;
    assert_eq!(id["iss"], server.base);
    assert_eq!(
        server
            .introspect(rotated["access_token"].as_str().unwrap())
            .await["active"],
        true
    );
}

// ---------------------------------------------------------------------------------------------
// issuance: every grant's token and audit record commit together, many grants per transaction

/// A one-connection pool on the service's database, as an operator's tool would open it.
async fn side_pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("the test opens the service's database")
}

async fn audit_records(url: &str) -> Vec<bazaar_kit::audit::AuditRecord> {
    let pool = side_pool(url).await;
    let records = bazaar_kit::audit::read_records(&pool, 0, 100_000)
        .await
        .expect("audit records");
    pool.close().await;
    records
}

fn token_issued(
    records: &[bazaar_kit::audit::AuditRecord],
) -> Vec<&bazaar_kit::audit::AuditRecord> {
    records
        .iter()
        .filter(|r| r.action == "token.issued")
        .collect()
}

async fn partner_grant(server: &Server, request_id: &str) -> (StatusCode, Value) {
    let response = server
        .http
        .post(server.url("/oauth2/token"))
        .basic_auth("demo-partner", Some("demo-partner-secret"))
        .header("x-request-id", request_id)
        .form(&[("grant_type", "client_credentials"), ("scope", "partner")])
        .send()
        .await
        .expect("send");
    (response.status(), response.json().await.expect("json"))
}

/// 500 client-credentials grants over 32 concurrent tasks: every token is recorded
/// (introspection calls it active) and audited exactly once, with its own request's id, in a
/// chain that verifies.
async fn concurrent_grants_all_recorded_audited(url: String) {
    const GRANTS: usize = 500;
    const TASKS: usize = 32;
    let server = std::sync::Arc::new(spawn_with(Some(url.clone()), |_| {}).await);
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let server = server.clone();
            tokio::spawn(async move {
                let mut issued = Vec::new();
                for n in (task..GRANTS).step_by(TASKS) {
                    let request_id = format!("grant-{n}");
                    let (status, body) = partner_grant(&server, &request_id).await;
                    assert_eq!(status, StatusCode::OK, "{body}");
                    let token = body["access_token"].as_str().expect("a token").to_owned();
                    issued.push((request_id, token));
                }
                issued
            })
        })
        .collect();
    let mut issued = Vec::new();
    for task in tasks {
        issued.extend(task.await.expect("grant task"));
    }
    assert_eq!(issued.len(), GRANTS);

    let mut answered = HashMap::new();
    for (request_id, token) in &issued {
        let introspection = server.introspect(token).await;
        assert_eq!(
            introspection["active"], true,
            "{request_id}: {introspection}"
        );
        let jti = introspection["jti"].as_str().expect("jti").to_owned();
        assert!(
            answered.insert(jti, request_id.clone()).is_none(),
            "jtis are unique"
        );
    }

    let records = audit_records(&url).await;
    bazaar_kit::audit::verify_chain(&records).expect("an unbroken chain");
    let mut audited = HashMap::new();
    for record in token_issued(&records) {
        let details: Value = serde_json::from_str(&record.details).expect("details");
        assert_eq!(details["grant"], "client_credentials");
        assert_eq!(record.actor, "demo-partner");
        let jti = details["jti"].as_str().expect("the record names its token");
        assert!(
            audited
                .insert(jti.to_owned(), record.request_id.clone())
                .is_none(),
            "one token.issued record per token"
        );
    }
    assert_eq!(
        audited, answered,
        "each answered token, and only those, is audited under its own request id"
    );
}

/// When the batch's transaction fails (here its audit append: the table is gone), every grant
/// waiting in it is refused with a server error and no token, and the token rows written before
/// the failure are rolled back with it.
async fn a_failed_batch_fails_every_grant_in_it(url: String) {
    let server = std::sync::Arc::new(spawn_with(Some(url.clone()), |_| {}).await);
    let (status, first) = partner_grant(&server, "before").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(token_issued(&audit_records(&url).await).len(), 1);

    let pool = side_pool(&url).await;
    sqlx::query("DROP TABLE audit_log")
        .execute(&pool)
        .await
        .expect("drop");
    let grants: Vec<_> = (0..64)
        .map(|n| {
            let server = server.clone();
            tokio::spawn(async move { partner_grant(&server, &format!("doomed-{n}")).await })
        })
        .collect();
    for grant in grants {
        let (status, body) = grant.await.expect("grant task");
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert_eq!(body["error"], "server_error");
        assert!(body.get("access_token").is_none(), "no token: {body}");
    }
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM access_tokens")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 1, "only the first grant's token was committed");
    pool.close().await;
    assert_eq!(
        server
            .introspect(first["access_token"].as_str().unwrap())
            .await["active"],
        true
    );
}

/// The signer's JWS is byte for byte what `jsonwebtoken::encode` makes with the stored key
/// (Ed25519 signatures are deterministic), so caching the expanded key changed nothing visible.
async fn signatures_match_jsonwebtoken(url: String) {
    let repository = open(&url).await;
    let signer = bazaar_identity::tokens::Signer::new(repository.clone(), "http://x".into(), 300);
    let claims = serde_json::json!({"iss": "http://x", "sub": "s", "exp": 4_000_000_000_i64});
    let ours = signer.sign("at+jwt", &claims).await.expect("signs");
    let current = repository
        .keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.state == bazaar_identity::model::KeyState::Current)
        .expect("a current key");
    let der = bazaar_identity::crypto::decode_private_key(&current.private_key).unwrap();
    let mut header = jsonwebtoken::Header::new(Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    header.kid = Some(current.kid.clone());
    let theirs = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_der(&der),
    )
    .unwrap();
    assert_eq!(ours, theirs);
    repository.database().close().await;
}

macro_rules! storage_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    super::$name(super::sqlite_url(dir.path(), "identity")).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(url) = super::fresh_postgres_database(stringify!($name)).await {
                        super::$name(url).await;
                    }
                }
            )*
        }
    };
}

storage_tests!(
    users_are_unique_by_email,
    codes_redeem_once,
    refresh_rotation_and_family_revocation,
    keys_rotate_atomically,
    full_flow,
    concurrent_grants_all_recorded_audited,
    a_failed_batch_fails_every_grant_in_it,
    signatures_match_jsonwebtoken,
);
