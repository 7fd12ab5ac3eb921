//! Authorization, API keys, rate limits, quotas and usage, end to end: a real gateway, real
//! upstreams, and a fixture `developer` service (an in-memory implementation of the key lookup
//! and usage contract) on 127.0.0.1.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::routing::post;
use bazaar_kit::client::{Credentials, ServiceClient};
use reqwest::RequestBuilder;

use super::*;

// ---------------------------------------------------------------------------------------------
// Fixture developer service

#[derive(Default)]
struct Developer {
    keys: Mutex<HashMap<String, Value>>,
    usage: Mutex<HashMap<String, Value>>,
    reports: Mutex<Vec<Value>>,
    authorizations: Mutex<Vec<String>>,
}

impl Developer {
    fn add_key(&self, key: &str, record: Value) {
        self.keys.lock().expect("lock").insert(key.into(), record);
    }

    /// Requests of `key_id` reported so far, over every report.
    fn reported(&self, key_id: &str) -> u64 {
        self.reports
            .lock()
            .expect("lock")
            .iter()
            .flat_map(|report| report["counts"].as_array().cloned().unwrap_or_default())
            .filter(|count| count["key_id"] == key_id)
            .map(|count| count["count"].as_u64().unwrap_or(0))
            .sum()
    }
}

fn seen_authorization(state: &Developer, headers: &HeaderMap) {
    state.authorizations.lock().expect("lock").push(
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
    );
}

fn developer(state: Arc<Developer>) -> Router {
    Router::new()
        .route(
            "/internal/v1/keys/lookup",
            post(
                |State(state): State<Arc<Developer>>,
                 headers: HeaderMap,
                 Json(body): Json<Value>| async move {
                    seen_authorization(&state, &headers);
                    let key = body["key"].as_str().unwrap_or("");
                    match state.keys.lock().expect("lock").get(key) {
                        Some(record) => Json(record.clone()).into_response(),
                        None => StatusCode::NOT_FOUND.into_response(),
                    }
                },
            ),
        )
        .route(
            "/internal/v1/usage",
            post(
                |State(state): State<Arc<Developer>>,
                 headers: HeaderMap,
                 Json(body): Json<Value>| async move {
                    seen_authorization(&state, &headers);
                    state.reports.lock().expect("lock").push(body);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/internal/v1/usage/{key_id}",
            get(
                |State(state): State<Arc<Developer>>, Path(key_id): Path<String>| async move {
                    match state.usage.lock().expect("lock").get(&key_id) {
                        Some(usage) => Json(usage.clone()).into_response(),
                        None => StatusCode::NOT_FOUND.into_response(),
                    }
                },
            ),
        )
        .fallback(|| async { "developer" })
        .with_state(state)
}

/// An identity stub issuing one client-credentials token to the gateway's service client.
fn identity_stub() -> Router {
    Router::new()
        .route(
            "/oauth2/token",
            post(|| async {
                Json(
                    json!({"access_token": "svc-token", "token_type": "Bearer", "expires_in": 300}),
                )
            }),
        )
        .fallback(|| async { Json(json!({"instance": "identity"})) })
}

fn plan(rate: u32, burst: u32, day: Option<u64>, month: Option<u64>) -> Value {
    json!({"title": "Test", "rate_per_second": rate, "burst": burst, "quota_per_day": day,
           "quota_per_month": month, "trial_days": 0, "self_service": true})
}

fn key_record(key_id: &str, status: &str, plan_name: &str, plan: Value) -> Value {
    json!({"key_id": key_id, "owner": "user-1", "name": "test key", "status": status,
           "plan_name": plan_name, "plan": plan, "expires_at": null})
}

fn today() -> String {
    // Same arithmetic as the gateway, checked independently here via the date of `now`.
    let days = tokens::now() / 86_400;
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

struct Shop {
    catalog: Server,
    registry: Server,
    developer: Server,
    identity: Server,
    state: Arc<Developer>,
}

impl Shop {
    async fn start() -> Self {
        let state = Arc::new(Developer::default());
        Self {
            catalog: spawn(upstream("catalog")).await,
            registry: spawn(upstream("registry")).await,
            developer: spawn(developer(state.clone())).await,
            identity: spawn(identity_stub()).await,
            state,
        }
    }

    fn discovery(&self) -> Discovery {
        fixed(vec![
            instance("c1", "catalog", &self.catalog.url),
            instance("r1", "registry", &self.registry.url),
            instance("d1", "developer", &self.developer.url),
            instance("i1", "identity", &self.identity.url),
        ])
    }

    async fn stop(self) {
        self.catalog.stop().await;
        self.registry.stop().await;
        self.developer.stop().await;
        self.identity.stop().await;
    }
}

async fn status_of(request: RequestBuilder) -> (StatusCode, HeaderMap, Value) {
    let response = request.send().await.expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

// ---------------------------------------------------------------------------------------------
// Policies and tokens

#[tokio::test]
async fn each_policy_admits_and_refuses_the_right_callers() {
    let shop = Shop::start().await;
    shop.state.add_key(
        "bzr_good",
        key_record("key-1", "active", "pro", plan(100, 100, None, None)),
    );
    let gw = gateway(Config::default(), shop.discovery()).await;
    let client = http();
    let customer = tokens::customer();
    let admin = tokens::admin();
    let partner = tokens::client("partner-co", "partner");
    let plain_client = tokens::client("some-client", "internal");
    let user_with_partner_scope = tokens::sign(&{
        let mut claims = tokens::user_claims("user-2", &["customer"]);
        claims["scope"] = json!("openid partner");
        claims
    });

    #[derive(Clone, Copy)]
    enum Who<'a> {
        Anonymous,
        Token(&'a str),
        Key(&'a str),
    }
    use Who::*;
    let cases: Vec<(Method, &str, Who<'_>, u16)> = vec![
        // public reads, admin writes
        (Method::GET, "/api/v1/products", Anonymous, 200),
        (Method::GET, "/api/v1/products", Token(&customer), 200),
        (Method::GET, "/api/v1/categories", Key("bzr_good"), 200),
        (Method::POST, "/api/v1/products", Anonymous, 401),
        (Method::POST, "/api/v1/products", Token(&customer), 403),
        (Method::DELETE, "/api/v1/categories/1", Token(&partner), 403),
        (Method::POST, "/api/v1/products", Token(&admin), 200),
        (Method::HEAD, "/api/v1/products", Anonymous, 200),
        // admin
        (Method::GET, "/api/v1/registry/services", Anonymous, 401),
        (
            Method::GET,
            "/api/v1/registry/services",
            Token(&customer),
            403,
        ),
        (
            Method::GET,
            "/api/v1/registry/services",
            Key("bzr_good"),
            401,
        ),
        (Method::GET, "/api/v1/registry/services", Token(&admin), 200),
        (Method::GET, "/api/v1/admin/usage", Token(&customer), 403),
        (Method::GET, "/api/v1/admin/usage", Token(&admin), 200),
        // user
        (Method::GET, "/api/v1/developer/keys", Anonymous, 401),
        (Method::GET, "/api/v1/developer/keys", Key("bzr_good"), 401),
        (Method::GET, "/api/v1/developer/keys", Token(&customer), 200),
        (
            Method::POST,
            "/api/v1/developer/keys",
            Token(&customer),
            200,
        ),
        (Method::GET, "/api/v1/developer/plans", Anonymous, 200),
        // partner
        (Method::GET, "/api/v1/partner/products", Anonymous, 401),
        (
            Method::GET,
            "/api/v1/partner/products",
            Token(&customer),
            403,
        ),
        (Method::GET, "/api/v1/partner/products", Token(&admin), 403),
        (
            Method::GET,
            "/api/v1/partner/products",
            Token(&plain_client),
            403,
        ),
        (
            Method::GET,
            "/api/v1/partner/products",
            Token(&user_with_partner_scope),
            403,
        ),
        (
            Method::GET,
            "/api/v1/partner/products",
            Key("bzr_good"),
            401,
        ),
        (
            Method::GET,
            "/api/v1/partner/products",
            Token(&partner),
            200,
        ),
        // api_key
        (Method::GET, "/api/v1/feed/products", Anonymous, 401),
        (Method::GET, "/api/v1/feed/products", Token(&admin), 401),
        (Method::GET, "/api/v1/feed/products", Token(&partner), 401),
        (Method::GET, "/api/v1/feed/products", Key("bzr_good"), 200),
        // identity routes are public, their own credentials pass through untouched
        (Method::POST, "/oauth2/token", Anonymous, 200),
        (
            Method::GET,
            "/.well-known/openid-configuration",
            Anonymous,
            200,
        ),
    ];
    for (method, path, who, expected) in cases {
        let mut request = client.request(method.clone(), format!("{}{path}", gw.url));
        request = match who {
            Anonymous => request,
            Token(token) => request.bearer_auth(token),
            Key(key) => request.header("x-api-key", key),
        };
        let (status, headers, body) = status_of(request).await;
        assert_eq!(status.as_u16(), expected, "{method} {path}: {body}");
        match expected {
            401 => {
                assert!(headers.contains_key("www-authenticate"), "{method} {path}");
                if method != Method::HEAD {
                    assert_eq!(headers["content-type"], "application/problem+json");
                }
            }
            403 => assert_problem(&headers, &body, "forbidden"),
            _ => {}
        }
    }

    // The feed and partner routes reach the catalog's product list.
    let (_, _, body) = status_of(
        client
            .get(format!("{}/api/v1/partner/products?page=2", gw.url))
            .bearer_auth(&partner),
    )
    .await;
    assert_eq!(body["instance"], "catalog");
    assert_eq!(body["path"], "/api/v1/products");
    assert_eq!(body["query"], "page=2");

    // Basic credentials to the token endpoint are forwarded, not taken for a bearer token.
    let (status, _, _) = status_of(
        client
            .post(format!("{}/oauth2/token", gw.url))
            .basic_auth("storefront", Some("secret")),
    )
    .await;
    assert_eq!(status, 200);

    gw.stop().await;
    shop.stop().await;
}

#[tokio::test]
async fn every_token_defect_is_a_401_with_www_authenticate() {
    let shop = Shop::start().await;
    let gw = gateway(Config::default(), shop.discovery()).await;
    let client = http();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = tokens::user_claims("user-1", &["admin"]);
        change(&mut claims);
        tokens::sign(&claims)
    };
    let b64 = |v: Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let hs256 = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(tokens::KID.into());
        let x = tokens::jwks()["keys"][0]["x"]
            .as_str()
            .expect("x")
            .to_owned();
        jsonwebtoken::encode(
            &header,
            &tokens::user_claims("user-1", &["admin"]),
            &jsonwebtoken::EncodingKey::from_secret(x.as_bytes()),
        )
        .expect("hs256")
    };
    let impostor = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let defects: Vec<(&str, String)> = vec![
        ("expired", with(&|c| c["exp"] = json!(tokens::now() - 60))),
        ("issuer", with(&|c| c["iss"] = json!("http://evil.example"))),
        ("audience", with(&|c| c["aud"] = json!("payments"))),
        (
            "not yet valid",
            with(&|c| c["nbf"] = json!(tokens::now() + 600)),
        ),
        (
            "signature",
            tokens::sign_with(
                &impostor,
                tokens::KID,
                &tokens::user_claims("user-1", &["admin"]),
            ),
        ),
        (
            "unknown kid",
            tokens::sign_with(
                &impostor,
                "other",
                &tokens::user_claims("user-1", &["admin"]),
            ),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({"alg": "none", "kid": tokens::KID})),
                b64(tokens::user_claims("user-1", &["admin"]))
            ),
        ),
        ("hs256 confusion", hs256),
        ("garbage", "not-a-jwt".to_owned()),
    ];
    // On a public route a bad token is refused too, and on an admin route it is not a 403.
    for path in ["/api/v1/products", "/api/v1/registry/services"] {
        for (defect, token) in &defects {
            let (status, headers, body) =
                status_of(client.get(format!("{}{path}", gw.url)).bearer_auth(token)).await;
            assert_eq!(status, 401, "{defect} on {path}: {body}");
            assert_problem(&headers, &body, "invalid_token");
            let challenge = headers["www-authenticate"].to_str().expect("ascii");
            assert!(
                challenge.starts_with("Bearer") && challenge.contains("invalid_token"),
                "{defect}: {challenge}"
            );
        }
    }
    gw.stop().await;
    shop.stop().await;
}

#[tokio::test]
async fn internal_paths_are_never_routed() {
    let shop = Shop::start().await;
    let legacy = spawn(upstream("legacy")).await;
    let mut routes = default_routes_with_root(&legacy.url);
    routes.push(RouteConfig::service("/api/v1/dev", "developer").rewrite("/"));
    let gw = gateway(config(routes), shop.discovery()).await;
    let client = http();
    let admin = tokens::admin();
    for path in [
        "/internal/v1/keys/lookup",
        "/internal",
        "/Internal/v1/usage",
        "/%69nternal/v1/usage",
        "//internal/v1/usage",
        "/api/v1/dev/internal/v1/usage/key-1",
    ] {
        let (status, headers, body) = status_of(
            client
                .post(format!("{}{path}", gw.url))
                .bearer_auth(&admin)
                .json(&json!({"key": "bzr_x"})),
        )
        .await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_problem(&headers, &body, "route_not_found");
    }
    // The root route still works for everything else.
    let (status, _, body) = get_json(&client, &format!("{}/somewhere", gw.url)).await;
    assert_eq!(status, 200);
    assert_eq!(body["instance"], "legacy");
    assert!(
        shop.state.authorizations.lock().expect("lock").is_empty(),
        "nothing reached the developer service's internal API"
    );

    // And such a route is refused at start-up.
    for route in [
        RouteConfig::service("/internal/v1", "developer"),
        RouteConfig::service("/dev", "developer").rewrite("/internal"),
    ] {
        let error = bazaar_gateway::router(
            &config(vec![route]),
            fixed(vec![]),
            bazaar_kit::metrics::Metrics::new(),
            1024,
        )
        .expect_err("refused");
        assert!(error.to_string().contains("never routed"), "{error}");
    }
    gw.stop().await;
    legacy.stop().await;
    shop.stop().await;
}

fn default_routes_with_root(root: &str) -> Vec<RouteConfig> {
    // The defaults send `/` to the web service; this root replaces it.
    let mut routes = bazaar_gateway::default_routes();
    routes.retain(|route| route.prefix != "/");
    routes.push(RouteConfig::upstream("/", root));
    routes
}

#[tokio::test]
async fn identity_headers_are_forwarded_and_spoofed_ones_stripped() {
    let shop = Shop::start().await;
    shop.state.add_key(
        "bzr_good",
        key_record("key-7", "active", "pro", plan(100, 100, None, None)),
    );
    let gw = gateway(Config::default(), shop.discovery()).await;
    let client = http();
    let customer = tokens::customer();
    let spoof = |request: RequestBuilder| {
        request
            .header("x-bazaar-subject", "admin-1")
            .header("x-bazaar-roles", "admin")
            .header("x-bazaar-api-key-id", "key-999")
            .header("x-bazaar-anything", "1")
    };

    let (_, _, body) = status_of(spoof(
        client
            .get(format!("{}/api/v1/products", gw.url))
            .bearer_auth(&customer),
    ))
    .await;
    let seen = &body["headers"];
    assert_eq!(seen["authorization"], format!("Bearer {customer}"));
    assert_eq!(seen["x-bazaar-subject"], "user-1");
    assert_eq!(seen["x-bazaar-client-id"], "storefront");
    assert_eq!(seen["x-bazaar-roles"], "customer");
    assert!(seen.get("x-bazaar-api-key-id").is_none(), "{seen}");
    assert!(seen.get("x-bazaar-anything").is_none(), "{seen}");

    let (_, _, body) = status_of(spoof(client.get(format!("{}/api/v1/products", gw.url)))).await;
    let seen = &body["headers"];
    for name in ["x-bazaar-subject", "x-bazaar-roles", "x-bazaar-api-key-id"] {
        assert!(seen.get(name).is_none(), "anonymous: {name} in {seen}");
    }

    let (_, _, body) = status_of(spoof(
        client
            .get(format!("{}/api/v1/feed/products", gw.url))
            .header("x-api-key", "bzr_good"),
    ))
    .await;
    let seen = &body["headers"];
    assert_eq!(seen["x-bazaar-api-key-id"], "key-7");
    assert_eq!(seen["x-bazaar-plan"], "pro");
    assert!(
        seen.get("x-api-key").is_none(),
        "the key stays at the gateway"
    );
    assert!(seen.get("x-bazaar-subject").is_none(), "{seen}");
    gw.stop().await;
    shop.stop().await;
}

// ---------------------------------------------------------------------------------------------
// API keys, limits, usage

#[tokio::test]
async fn api_keys_are_held_to_status_rate_and_quota_and_usage_is_reported() {
    let shop = Shop::start().await;
    let state = &shop.state;
    state.add_key(
        "bzr_fast",
        key_record("key-fast", "active", "pro", plan(1, 2, None, None)),
    );
    state.add_key(
        "bzr_revoked",
        key_record("key-rev", "revoked", "pro", plan(100, 100, None, None)),
    );
    let mut trial = key_record("key-trial", "expired", "free-trial", plan(5, 5, None, None));
    trial["plan"]["title"] = json!("free-trial");
    trial["expires_at"] = json!("2025-01-31T00:00:00Z");
    state.add_key("bzr_trial", trial);
    state.add_key(
        "bzr_quota",
        key_record(
            "key-quota",
            "active",
            "basic",
            plan(100, 100, Some(3), Some(1000)),
        ),
    );
    state.usage.lock().expect("lock").insert(
        "key-quota".into(),
        json!({"day": today(), "day_count": 1, "month": &today()[..7], "month_count": 10}),
    );

    // With credentials, as in production: internal calls carry a client-credentials token.
    let discovery = shop.discovery();
    let services = ServiceClient::new(discovery.clone()).with_credentials(Credentials {
        client_id: "bazaar-services".into(),
        client_secret: "secret".into(),
    });
    let gw = gateway_with(
        Config {
            usage_flush_ms: 100,
            ..Config::default()
        },
        discovery,
        services,
    )
    .await;
    let client = http();
    let feed = format!("{}/api/v1/feed/products", gw.url);
    let keyed = |key: &str| client.get(&feed).header("x-api-key", key.to_owned());

    // Active: through, with the RateLimit fields.
    let (status, headers, body) = status_of(keyed("bzr_fast")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["ratelimit-policy"], "\"rate\";q=2;w=2");
    assert_eq!(headers["ratelimit"], "\"rate\";r=1;t=1");
    let (status, _, _) = status_of(keyed("bzr_fast")).await;
    assert_eq!(status, 200, "the burst allows a second at once");
    // Over the rate.
    let (status, headers, body) = status_of(keyed("bzr_fast")).await;
    assert_eq!(status, 429);
    assert_problem(&headers, &body, "rate_limited");
    let retry: u64 = headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(headers["ratelimit"], format!("\"rate\";r=0;t={retry}"));
    assert!(headers.contains_key("ratelimit-policy"));

    // Revoked and unknown keys.
    for key in ["bzr_revoked", "bzr_nope", ""] {
        let (status, headers, body) = status_of(keyed(key)).await;
        assert_eq!(status, 401, "{key}");
        assert_problem(&headers, &body, "invalid_api_key");
        assert!(headers.contains_key("www-authenticate"));
    }

    // The trial is over.
    let (status, headers, body) = status_of(keyed("bzr_trial")).await;
    assert_eq!(status, 403);
    assert_problem(&headers, &body, "plan_expired");
    let detail = body["detail"].as_str().expect("detail");
    assert!(
        detail.contains("free-trial plan of key key-trial ended on 2025-01-31T00:00:00Z")
            && detail.contains("choose a paid plan"),
        "{detail}"
    );

    // A trial that ended after the developer service last said "active" (a cached answer).
    let mut lapsed = key_record("key-lapsed", "active", "free-trial", plan(5, 5, None, None));
    lapsed["expires_at"] = json!("2020-01-01T00:00:00Z");
    state.add_key("bzr_lapsed", lapsed);
    let (status, headers, body) = status_of(keyed("bzr_lapsed")).await;
    assert_eq!(status, 403, "{body}");
    assert_problem(&headers, &body, "plan_expired");

    // Quota 3 a day, 1 already used (seeded from the developer service): two more pass.
    for remaining in [1, 0] {
        let (status, headers, body) = status_of(keyed("bzr_quota")).await;
        assert_eq!(status, 200, "{body}");
        let state = headers["ratelimit"].to_str().expect("ascii");
        assert!(
            state.contains(&format!("\"day\";r={remaining};")),
            "{state}"
        );
        assert!(state.contains("\"month\";r="), "{state}");
        let policy = headers["ratelimit-policy"].to_str().expect("ascii");
        assert!(policy.contains("\"day\";q=3;w=86400"), "{policy}");
    }
    let (status, headers, body) = status_of(keyed("bzr_quota")).await;
    assert_eq!(status, 429);
    assert_problem(&headers, &body, "quota_exceeded");
    assert!(headers.contains_key("retry-after"));
    assert!(headers["ratelimit"]
        .to_str()
        .expect("ascii")
        .contains("\"day\";r=0;"));

    // Usage: accepted requests only, reported in the background; internal calls authenticated.
    let mut reported = (0, 0);
    for _ in 0..50 {
        reported = (state.reported("key-fast"), state.reported("key-quota"));
        if reported == (2, 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        reported,
        (2, 2),
        "{:?}",
        state.reports.lock().expect("lock")
    );
    let report = state.reports.lock().expect("lock")[0].clone();
    assert!(report["report_id"]
        .as_str()
        .is_some_and(|id| id.len() == 36));
    assert!(report["gateway"].as_str().is_some_and(|g| !g.is_empty()));
    assert!(report["counts"][0]["day"] == today(), "{report}");
    assert!(state
        .authorizations
        .lock()
        .expect("lock")
        .iter()
        .all(|a| a == "Bearer svc-token"));

    // One more accepted request, then a stop: the last count is reported at shutdown.
    let (status, _, _) = status_of(
        client
            .get(format!("{}/api/v1/products", gw.url))
            .header("x-api-key", "bzr_trial_none"),
    )
    .await;
    assert_eq!(status, 401, "a key on a public route must be valid too");
    shop.state.add_key(
        "bzr_slow",
        key_record("key-slow", "active", "pro", plan(100, 100, None, None)),
    );
    let (status, _, _) = status_of(keyed("bzr_slow")).await;
    assert_eq!(status, 200);
    gw.stop().await;
    let mut last = 0;
    for _ in 0..50 {
        last = state.reported("key-slow");
        if last == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, 1, "flushed at shutdown");
    shop.stop().await;
}

#[tokio::test]
async fn a_revocation_takes_effect_when_the_cached_lookup_expires() {
    let shop = Shop::start().await;
    shop.state.add_key(
        "bzr_k",
        key_record("key-k", "active", "pro", plan(100, 100, None, None)),
    );
    let gw = gateway(
        Config {
            key_cache_ms: 300,
            ..Config::default()
        },
        shop.discovery(),
    )
    .await;
    let client = http();
    let feed = format!("{}/api/v1/feed/products", gw.url);
    let (status, _, _) = status_of(client.get(&feed).header("x-api-key", "bzr_k")).await;
    assert_eq!(status, 200);
    shop.state.add_key(
        "bzr_k",
        key_record("key-k", "revoked", "pro", plan(100, 100, None, None)),
    );
    let (status, _, _) = status_of(client.get(&feed).header("x-api-key", "bzr_k")).await;
    assert_eq!(status, 200, "still cached");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, _, _) = status_of(client.get(&feed).header("x-api-key", "bzr_k")).await;
    assert_eq!(status, 401, "revoked once the cache entry expired");
    gw.stop().await;
    shop.stop().await;
}

#[tokio::test]
async fn anonymous_traffic_is_limited_per_address_and_forwarded_for_cannot_escape() {
    let shop = Shop::start().await;
    let limited = Config {
        anonymous_rate_per_second: 1,
        anonymous_burst: 3,
        ..Config::default()
    };
    let gw = gateway(limited.clone(), shop.discovery()).await;
    let client = http();
    let products = format!("{}/api/v1/products", gw.url);
    for _ in 0..3 {
        let (status, _, _) = status_of(client.get(&products)).await;
        assert_eq!(status, 200);
    }
    let (status, headers, body) = status_of(client.get(&products)).await;
    assert_eq!(status, 429);
    assert_problem(&headers, &body, "rate_limited");
    assert!(headers.contains_key("retry-after"));
    assert!(headers["ratelimit-policy"]
        .to_str()
        .expect("ascii")
        .starts_with("\"anonymous\";q=3;w=3"));
    // A made-up X-Forwarded-For from an untrusted peer changes nothing.
    for spoofed in ["203.0.113.9", "10.0.0.1, 198.51.100.4", "127.0.0.2"] {
        let (status, _, _) =
            status_of(client.get(&products).header("x-forwarded-for", spoofed)).await;
        assert_eq!(status, 429, "{spoofed}");
    }
    // Callers with a token are not anonymous.
    let (status, _, _) = status_of(client.get(&products).bearer_auth(tokens::customer())).await;
    assert_eq!(status, 200);
    gw.stop().await;

    // Behind a trusted proxy (here: 127.0.0.1), the client is the rightmost untrusted entry.
    let gw = gateway(
        Config {
            trusted_proxies: vec!["127.0.0.1/32".into()],
            ..limited
        },
        shop.discovery(),
    )
    .await;
    let products = format!("{}/api/v1/products", gw.url);
    let via_proxy = |chain: &str| {
        client
            .get(&products)
            .header("x-forwarded-for", chain.to_owned())
    };
    for _ in 0..3 {
        let (status, _, _) = status_of(via_proxy("203.0.113.1")).await;
        assert_eq!(status, 200);
    }
    let (status, _, _) = status_of(via_proxy("203.0.113.1")).await;
    assert_eq!(status, 429);
    // Prepending addresses does not help: the proxy appended the real one last.
    let (status, _, _) = status_of(via_proxy("198.51.100.7, 203.0.113.1")).await;
    assert_eq!(status, 429);
    let (status, _, _) = status_of(via_proxy("203.0.113.2")).await;
    assert_eq!(status, 200, "another client has its own budget");
    gw.stop().await;
    shop.stop().await;
}

#[tokio::test]
async fn two_gateways_share_one_quota_and_rate_through_redis() {
    let Ok(redis_url) = std::env::var("BAZAAR_TEST_REDIS_URL") else {
        println!("skipping: BAZAAR_TEST_REDIS_URL is not set");
        return;
    };
    let shop = Shop::start().await;
    shop.state.add_key(
        "bzr_shared",
        key_record(
            "key-shared",
            "active",
            "basic",
            plan(1000, 1000, Some(4), None),
        ),
    );
    shop.state.add_key(
        "bzr_rate",
        key_record("key-rate", "active", "basic", plan(3, 3, None, None)),
    );
    shop.state.usage.lock().expect("lock").insert(
        "key-shared".into(),
        json!({"day": today(), "day_count": 1, "month": &today()[..7], "month_count": 1}),
    );
    let namespace = format!("bazaar-test:{}", uuid::Uuid::new_v4());
    let config = Config {
        limits_backend: redis_url,
        limits_namespace: namespace.clone(),
        ..Config::default()
    };
    let a = gateway(config.clone(), shop.discovery()).await;
    let b = gateway(config, shop.discovery()).await;
    let client = http();
    let get = |gw: &Server, key: &str| {
        client
            .get(format!("{}/api/v1/feed/products", gw.url))
            .header("x-api-key", key.to_owned())
    };

    // Quota 4 a day, 1 used before (seeded once into Redis): three pass in all, whichever
    // gateway they go through.
    let mut passed = 0;
    let mut refused = 0;
    for round in 0..8 {
        let gw = if round % 2 == 0 { &a } else { &b };
        let (status, headers, body) = status_of(get(gw, "bzr_shared")).await;
        match status.as_u16() {
            200 => {
                passed += 1;
                assert!(headers.contains_key("ratelimit"));
            }
            429 => {
                refused += 1;
                assert_problem(&headers, &body, "quota_exceeded");
                assert!(headers.contains_key("retry-after"));
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((passed, refused), (3, 5));

    // Rate 3 per 1 s window across both: at most 3 in one window, so 8 back-to-back requests
    // (which may straddle one window boundary) see at most 6 pass and some refused.
    let mut passed = 0;
    for round in 0..8 {
        let gw = if round % 2 == 0 { &a } else { &b };
        let (status, headers, _) = status_of(get(gw, "bzr_rate")).await;
        if status == 200 {
            passed += 1;
        } else {
            assert_eq!(status, 429);
            assert!(headers.contains_key("retry-after"));
        }
    }
    assert!((3..=6).contains(&passed), "{passed} passed");

    a.stop().await;
    b.stop().await;
    shop.stop().await;

    // Leave the shared Redis as it was.
    let redis = redis::Client::open(std::env::var("BAZAAR_TEST_REDIS_URL").expect("url"))
        .expect("redis url");
    let mut connection = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}:*"))
        .query_async(&mut connection)
        .await
        .expect("keys");
    assert!(!keys.is_empty(), "the counters lived in redis");
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut connection)
        .await
        .expect("del");
}
