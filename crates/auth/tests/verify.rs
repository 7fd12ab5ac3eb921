//! Every defect a token can have is refused; a rotation the verifier has not seen is picked up
//! by a rate-limited refetch; cached keys survive the identity service being down.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bazaar_auth::{AuthError, Verifier};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const ISSUER: &str = "http://127.0.0.1:8080";

struct Key {
    kid: String,
    signing: SigningKey,
}

impl Key {
    fn new(kid: &str) -> Self {
        Self {
            kid: kid.into(),
            signing: SigningKey::generate(&mut rand_core::OsRng),
        }
    }
    fn jwk(&self) -> serde_json::Value {
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(self.signing.verifying_key().as_bytes());
        json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.kid, "alg": "EdDSA", "use": "sig"})
    }
    fn sign(&self, claims: &serde_json::Value) -> String {
        let der = self.signing.to_pkcs8_der().expect("pkcs8");
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes()))
            .expect("sign")
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn claims() -> serde_json::Value {
    json!({"iss": ISSUER, "sub": "user-1", "aud": "bazaar", "exp": now() + 300, "iat": now(),
           "nbf": now(), "jti": "j1", "client_id": "storefront", "scope": "openid", "roles": ["customer"]})
}

/// A JWKS source the test controls: the set it serves, whether it is up, how often it was asked.
#[derive(Clone, Default)]
struct Source {
    set: Arc<Mutex<serde_json::Value>>,
    down: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
}

impl Source {
    fn serve(&self, keys: &[&Key]) {
        *self.set.lock().expect("lock") =
            json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
    }
    fn verifier(&self) -> Arc<Verifier> {
        let source = self.clone();
        Verifier::new(
            ISSUER,
            &["bazaar"],
            Arc::new(move || {
                let source = source.clone();
                Box::pin(async move {
                    source.fetches.fetch_add(1, Ordering::SeqCst);
                    if source.down.load(Ordering::SeqCst) {
                        return Err("identity is down".to_owned());
                    }
                    let set = source.set.lock().expect("lock").clone();
                    serde_json::from_value::<JwkSet>(set).map_err(|e| e.to_string())
                })
            }),
        )
    }
}

#[tokio::test]
async fn a_good_token_verifies_and_every_defect_is_refused() {
    let key = Key::new("k1");
    let source = Source::default();
    source.serve(&[&key]);
    let verifier = source.verifier();
    verifier.refresh().await.expect("jwks");

    let verified = verifier.verify(&key.sign(&claims())).await.expect("valid");
    assert_eq!(verified.sub, "user-1");
    assert!(verified.has_role("customer") && !verified.is_admin());

    let mut expired = claims();
    expired["exp"] = json!(now() - 60);
    assert_eq!(
        verifier.verify(&key.sign(&expired)).await,
        Err(AuthError::Expired)
    );

    let mut issuer = claims();
    issuer["iss"] = json!("http://evil.example");
    assert_eq!(
        verifier.verify(&key.sign(&issuer)).await,
        Err(AuthError::Issuer)
    );

    let mut audience = claims();
    audience["aud"] = json!("payments");
    assert_eq!(
        verifier.verify(&key.sign(&audience)).await,
        Err(AuthError::Audience)
    );

    let mut future = claims();
    future["nbf"] = json!(now() + 600);
    assert_eq!(
        verifier.verify(&key.sign(&future)).await,
        Err(AuthError::NotYetValid)
    );

    // Signed by a key that claims a known kid but is not the published key.
    let impostor = Key {
        kid: "k1".into(),
        signing: SigningKey::generate(&mut rand_core::OsRng),
    };
    assert_eq!(
        verifier.verify(&impostor.sign(&claims())).await,
        Err(AuthError::Signature)
    );

    // alg=none: an unsigned token.
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": "k1"})),
        b64(claims())
    );
    assert!(matches!(
        verifier.verify(&unsigned).await,
        Err(AuthError::Algorithm | AuthError::Malformed)
    ));

    // HS256 with the public key as the secret (the classic confusion attack).
    let x = key.jwk()["x"].as_str().expect("x").to_owned();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let confused =
        jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(x.as_bytes()))
            .expect("hs256");
    assert_eq!(verifier.verify(&confused).await, Err(AuthError::Algorithm));

    assert_eq!(
        verifier.verify("not-a-jwt").await,
        Err(AuthError::Malformed)
    );
}

#[tokio::test]
async fn an_unknown_kid_triggers_one_rate_limited_refetch() {
    let old = Key::new("old");
    let new = Key::new("new");
    let source = Source::default();
    source.serve(&[&old]);
    let verifier = source
        .verifier()
        .with_min_refetch(Duration::from_millis(200));
    verifier.refresh().await.expect("jwks");
    let before = verifier
        .verify(&old.sign(&claims()))
        .await
        .expect("old key");
    assert_eq!(before.sub, "user-1");

    // Identity rotated; this verifier has not seen the new key yet.
    source.serve(&[&old, &new]);
    tokio::time::sleep(Duration::from_millis(250)).await;
    verifier
        .verify(&new.sign(&claims()))
        .await
        .expect("refetched and verified");
    assert!(verifier.knows("new"));

    // Garbage kids do not turn into a fetch per request.
    let fetches = source.fetches.load(Ordering::SeqCst);
    let stranger = Key::new("stranger");
    for _ in 0..20 {
        assert_eq!(
            verifier.verify(&stranger.sign(&claims())).await,
            Err(AuthError::UnknownKey)
        );
    }
    assert!(
        source.fetches.load(Ordering::SeqCst) <= fetches + 1,
        "refetches are rate limited"
    );
}

#[tokio::test]
async fn cached_keys_survive_identity_being_down() {
    let key = Key::new("k1");
    let source = Source::default();
    source.serve(&[&key]);
    let verifier = source.verifier();
    verifier.refresh().await.expect("jwks");
    source.down.store(true, Ordering::SeqCst);
    assert!(verifier.refresh().await.is_err());
    verifier
        .verify(&key.sign(&claims()))
        .await
        .expect("still verifies with cached keys");
}

#[tokio::test]
async fn a_failed_fetch_does_not_hold_back_the_next_one() {
    let key = Key::new("k1");
    let source = Source::default();
    source.serve(&[&key]);
    source.down.store(true, Ordering::SeqCst);
    let verifier = source.verifier();
    assert!(verifier.refresh().await.is_err(), "identity not up yet");
    source.down.store(false, Ordering::SeqCst);
    verifier
        .verify(&key.sign(&claims()))
        .await
        .expect("the first token after identity comes up verifies at once");
}

#[tokio::test]
async fn a_remembered_token_still_expires_and_others_are_still_checked() {
    let key = Key::new("k1");
    let source = Source::default();
    source.serve(&[&key]);
    let verifier = source.verifier();
    verifier.refresh().await.expect("jwks");
    // Expired 3 s ago: still inside the 5 s clock-skew leeway, for about two more seconds.
    let mut short = claims();
    short["exp"] = json!(now() - 3);
    let token = key.sign(&short);
    verifier.verify(&token).await.expect("valid now");
    verifier
        .verify(&token)
        .await
        .expect("valid again, from memory");
    // A different token with the same claims but a forged signature is not "remembered".
    let impostor = Key {
        kid: "k1".into(),
        signing: SigningKey::generate(&mut rand_core::OsRng),
    };
    assert_eq!(
        verifier.verify(&impostor.sign(&short)).await,
        Err(AuthError::Signature)
    );
    tokio::time::sleep(Duration::from_millis(3100)).await;
    // Now past exp + leeway.
    assert_eq!(
        verifier.verify(&token).await,
        Err(AuthError::Expired),
        "a remembered token stops verifying at its exp"
    );
}
