//! The `openidconnect` crate, an independent OpenID Connect relying party, discovers bazaar's
//! identity provider through the gateway, redeems an authorization code obtained through the
//! login form with PKCE, and validates the ID token (signature against the published JWKS,
//! issuer, audience, nonce, expiry).

mod support;

use std::time::Duration;

use openidconnect::core::{CoreClient, CoreProviderMetadata, CoreResponseType};
use openidconnect::{
    AuthenticationFlow, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
    PkceCodeChallenge, RedirectUrl, Scope, TokenResponse,
};
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn discovery_and_id_token_validation_with_openidconnect() {
    let data = tempfile::tempdir().expect("tempdir");
    let gateway = free_port();
    let base = free_port_range(16);
    let (_up, rx) = up(data.path(), gateway, base);
    wait_for_line(&rx, "bazaar is up", Duration::from_secs(120));
    let issuer = format!("http://127.0.0.1:{gateway}");

    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client");
    let metadata = CoreProviderMetadata::discover_async(
        IssuerUrl::new(issuer.clone()).expect("issuer url"),
        &http,
    )
    .await
    .expect("discovery document and JWKS");
    let (client_id, secret, redirect_uri) = TEST_RP;
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(client_id.into()),
        Some(ClientSecret::new(secret.into())),
    )
    .set_redirect_uri(RedirectUrl::new(redirect_uri.into()).expect("redirect"));

    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (authorize_url, _state, nonce) = client
        .authorize_url(
            AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("email".into()))
        .set_pkce_challenge(challenge)
        .url();

    let url = authorize_url.to_string();
    let (email, password) = DEMO_CUSTOMER;
    let code = tokio::task::spawn_blocking(move || {
        authorization_code(
            &format!("http://127.0.0.1:{gateway}"),
            &url,
            email,
            password,
        )
    })
    .await
    .expect("login task");

    let token = client
        .exchange_code(AuthorizationCode::new(code))
        .expect("token endpoint known")
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .expect("code redeemed");
    let id_token = token.id_token().expect("an ID token for scope openid");
    let claims = id_token
        .claims(&client.id_token_verifier(), &nonce)
        .expect("the ID token verifies: signature, iss, aud, nonce, exp");
    assert_eq!(claims.issuer().as_str(), issuer);
    assert!(claims.audiences().iter().any(|a| a.as_str() == client_id));

    // A wrong nonce is refused: the verification above is not vacuous.
    assert!(id_token
        .claims(
            &client.id_token_verifier(),
            &Nonce::new("not-the-nonce".into())
        )
        .is_err());
}
