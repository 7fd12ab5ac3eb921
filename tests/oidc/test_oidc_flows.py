"""An independent OpenID Connect client (Authlib) drives bazaar's identity provider end to end,
through the gateway: authorization code + PKCE with the login form, ID-token validation against
the JWKS, client credentials, refresh rotation and reuse detection, revocation, introspection.
"""
import time

import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.jose import JsonWebKey, jwt
from authlib.common.security import generate_token

from conftest import login_through_form

CUSTOMER = ("shopper@bazaar.test", "shopper-pass-1")
RP = ("test-rp", "test-rp-secret", "http://127.0.0.1:8799/callback")
PARTNER = ("demo-partner", "demo-partner-secret")


def rp_session(discovery, scope="openid profile email offline_access"):
    client_id, secret, redirect_uri = RP
    return OAuth2Session(client_id, secret, scope=scope, redirect_uri=redirect_uri,
                         code_challenge_method="S256",
                         token_endpoint_auth_method="client_secret_basic")


def authorize(bazaar, discovery, session, nonce=None):
    verifier = generate_token(48)
    nonce = nonce or generate_token(16)
    url, state = session.create_authorization_url(
        discovery["authorization_endpoint"], code_verifier=verifier, nonce=nonce)
    browser = requests.Session()
    callback = login_through_form(browser, bazaar, url, *CUSTOMER)
    assert callback.startswith(RP[2]), callback
    assert f"state={state}" in callback
    return callback, verifier, nonce


def test_discovery_document_is_complete(bazaar, discovery):
    assert discovery["issuer"] == bazaar
    for field in ["authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri",
                  "revocation_endpoint", "introspection_endpoint", "response_types_supported",
                  "subject_types_supported", "id_token_signing_alg_values_supported"]:
        assert field in discovery, field
    assert discovery["code_challenge_methods_supported"] == ["S256"]
    keys = requests.get(discovery["jwks_uri"], timeout=5).json()["keys"]
    assert keys and all(k["kty"] == "OKP" and k["crv"] == "Ed25519" for k in keys)


def test_authorization_code_with_pkce_through_the_login_form(bazaar, discovery):
    session = rp_session(discovery)
    callback, verifier, nonce = authorize(bazaar, discovery, session)
    token = session.fetch_token(discovery["token_endpoint"], authorization_response=callback,
                                code_verifier=verifier)
    assert token["token_type"].lower() == "bearer"
    assert token.get("refresh_token")

    jwks = JsonWebKey.import_key_set(requests.get(discovery["jwks_uri"], timeout=5).json())
    claims = jwt.decode(token["id_token"], jwks,
                        claims_options={"iss": {"essential": True, "value": bazaar},
                                        "aud": {"essential": True, "value": RP[0]},
                                        "nonce": {"essential": True, "value": nonce}})
    claims.validate()
    assert claims["sub"]

    # The access token works through the gateway, and userinfo names the same subject.
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    me = requests.get(bazaar + "/api/v1/users/me", headers=headers, timeout=5)
    assert me.status_code == 200, me.text
    assert me.json()["email"] == CUSTOMER[0]
    info = requests.get(discovery["userinfo_endpoint"], headers=headers, timeout=5).json()
    assert info["sub"] == claims["sub"]


def test_a_code_cannot_be_redeemed_twice(bazaar, discovery):
    session = rp_session(discovery)
    callback, verifier, _ = authorize(bazaar, discovery, session)
    first = session.fetch_token(discovery["token_endpoint"], authorization_response=callback,
                                code_verifier=verifier)
    code = callback.split("code=")[1].split("&")[0]
    replay = requests.post(discovery["token_endpoint"], auth=(RP[0], RP[1]), timeout=5, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": RP[2],
        "code_verifier": verifier})
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    # The tokens issued from the code are revoked.
    introspected = requests.post(discovery["introspection_endpoint"], auth=PARTNER, timeout=5,
                                 data={"token": first["refresh_token"]}).json()
    assert introspected["active"] is False


def test_pkce_is_required_and_checked(bazaar, discovery):
    session = rp_session(discovery)
    callback, verifier, _ = authorize(bazaar, discovery, session)
    code = callback.split("code=")[1].split("&")[0]
    wrong = requests.post(discovery["token_endpoint"], auth=(RP[0], RP[1]), timeout=5, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": RP[2],
        "code_verifier": generate_token(48)})
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"

    plain = requests.get(discovery["authorization_endpoint"], allow_redirects=False, timeout=5,
                         params={"response_type": "code", "client_id": RP[0], "redirect_uri": RP[2],
                                 "scope": "openid", "state": "s", "code_challenge": "abc",
                                 "code_challenge_method": "plain"})
    location = plain.headers.get("Location", "")
    assert plain.status_code >= 400 or "error=" in location, (plain.status_code, location)


def test_redirect_uri_mismatch_never_redirects(bazaar, discovery):
    response = requests.get(discovery["authorization_endpoint"], allow_redirects=False, timeout=5,
                            params={"response_type": "code", "client_id": RP[0],
                                    "redirect_uri": "http://evil.example/callback", "scope": "openid",
                                    "state": "s", "code_challenge": "x" * 43,
                                    "code_challenge_method": "S256"})
    assert response.status_code == 400
    assert "evil.example" not in response.headers.get("Location", "")


def test_client_credentials_for_a_partner(bazaar, discovery):
    session = OAuth2Session(PARTNER[0], PARTNER[1], scope="partner")
    token = session.fetch_token(discovery["token_endpoint"], grant_type="client_credentials")
    assert token["access_token"] and "refresh_token" not in token
    feed = requests.get(bazaar + "/api/v1/partner/products",
                        headers={"Authorization": f"Bearer {token['access_token']}"}, timeout=5)
    assert feed.status_code == 200, feed.text
    anonymous = requests.get(bazaar + "/api/v1/partner/products", timeout=5)
    assert anonymous.status_code == 401
    assert "Bearer" in anonymous.headers.get("WWW-Authenticate", "")


def test_refresh_rotates_and_reuse_revokes_the_chain(bazaar, discovery):
    session = rp_session(discovery)
    callback, verifier, _ = authorize(bazaar, discovery, session)
    first = session.fetch_token(discovery["token_endpoint"], authorization_response=callback,
                                code_verifier=verifier)
    second = session.refresh_token(discovery["token_endpoint"], refresh_token=first["refresh_token"])
    assert second["refresh_token"] != first["refresh_token"]
    time.sleep(1.5)  # past the (test-configured, 1 s) grace window for concurrent retries
    reuse = requests.post(discovery["token_endpoint"], auth=(RP[0], RP[1]), timeout=5, data={
        "grant_type": "refresh_token", "refresh_token": first["refresh_token"]})
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    after = requests.post(discovery["token_endpoint"], auth=(RP[0], RP[1]), timeout=5, data={
        "grant_type": "refresh_token", "refresh_token": second["refresh_token"]})
    assert after.status_code == 400, "reuse of a rotated token revokes the whole chain"


def test_revocation_and_introspection(bazaar, discovery):
    session = OAuth2Session(PARTNER[0], PARTNER[1], scope="partner")
    token = session.fetch_token(discovery["token_endpoint"], grant_type="client_credentials")
    live = requests.post(discovery["introspection_endpoint"], auth=PARTNER, timeout=5,
                         data={"token": token["access_token"]}).json()
    assert live["active"] is True and live["client_id"] == PARTNER[0]
    revoked = session.revoke_token(discovery["revocation_endpoint"], token=token["access_token"],
                                   token_type_hint="access_token")
    assert revoked.status_code == 200
    dead = requests.post(discovery["introspection_endpoint"], auth=PARTNER, timeout=5,
                         data={"token": token["access_token"]}).json()
    assert dead["active"] is False
    public = requests.post(discovery["introspection_endpoint"], timeout=5,
                           data={"token": token["access_token"], "client_id": "storefront"})
    assert public.status_code == 401, "public clients may not introspect"
