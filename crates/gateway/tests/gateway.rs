//! The gateway end to end: a real gateway and real upstream servers on 127.0.0.1 port 0, talked
//! to over TCP. Upstreams are small axum routers that echo what they received, so each test can
//! assert on what crossed the gateway in both directions. Authorization, API keys and limits
//! are in `gateway/security.rs`.

#[path = "gateway/security.rs"]
mod security;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use bazaar_discovery::{Discovery, Instance, InstanceStatus, Registration, Snapshot};
use bazaar_gateway::{Config, RouteConfig};
use bazaar_kit::config::CommonConfig;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------
// Harness

/// A server running on its own task until stopped.
struct Server {
    url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    /// Shuts the server down and waits until it has stopped listening and closed connections.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("server task");
    }
}

async fn spawn_with<F, Fut>(run: F) -> Server
where
    F: FnOnce(TcpListener, oneshot::Receiver<()>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(run(listener, stopped));
    Server { url, stop, task }
}

/// Serves `app` with the kit's server loop.
async fn spawn(app: Router) -> Server {
    spawn_with(|listener, stopped| async move {
        bazaar_kit::server::serve(
            listener,
            app,
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(1),
        )
        .await
        .expect("serve");
    })
    .await
}

/// An upstream named `name` that echoes the request as JSON, plus a few special paths.
fn upstream(name: &'static str) -> Router {
    let echo = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| async move {
        let headers: BTreeMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        Json(json!({
            "instance": name,
            "method": method.as_str(),
            "path": uri.path(),
            "query": uri.query(),
            "headers": headers,
            "body_len": body.len(),
        }))
    };
    Router::new()
        .route(
            "/api/v1/products/slow",
            get(|| async {
                // The thing under test is the gateway giving up, not this sleep finishing.
                tokio::time::sleep(Duration::from_secs(3)).await;
                "late"
            }),
        )
        .route(
            "/api/v1/products/precompressed",
            get(|| async {
                (
                    [
                        ("content-encoding", "br"),
                        ("content-type", "application/json"),
                    ],
                    vec![0x0bu8; 2048],
                )
                    .into_response()
            }),
        )
        .route(
            "/openapi.json",
            get(|| async {
                Json(json!({
                    "openapi": "3.1.0",
                    "info": {"title": "catalog", "version": "1"},
                    "paths": {
                        "/api/v1/products": {"get": {"summary": "List products"}},
                        "/api/v1/products/{id}": {"get": {"summary": "One product"}},
                        "/internal/reindex": {"post": {}}
                    },
                    "components": {"schemas": {"Product": {"type": "object"}}}
                }))
            }),
        )
        .fallback(echo)
}

fn instance(id: &str, service: &str, address: &str) -> Instance {
    Instance {
        id: id.to_owned(),
        service: service.to_owned(),
        address: address.to_owned(),
        version: "test".to_owned(),
        metadata: BTreeMap::new(),
        status: InstanceStatus::Up,
        registered_at_ms: 0,
        last_heartbeat_ms: 0,
    }
}

/// A fixed view with the given instances.
fn fixed(instances: Vec<Instance>) -> Discovery {
    let mut services: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
    for instance in instances {
        services
            .entry(instance.service.clone())
            .or_default()
            .push(instance);
    }
    Discovery::fixed(Snapshot {
        epoch: "test".to_owned(),
        version: 1,
        services,
    })
}

/// An address nothing listens on: bound, then released.
async fn dead_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    url
}

const MAX_BODY: usize = 1024;

fn common() -> CommonConfig {
    let mut common = CommonConfig::defaults("gateway", 0);
    common.registry_url = String::new();
    common.max_body_bytes = MAX_BODY;
    common.shutdown_grace_ms = 1_000;
    common
}

/// A gateway over `discovery`, served exactly as in production (kit layers included), except
/// that tokens are verified against the test key's JWKS and the developer service is called
/// without credentials.
async fn gateway(config: Config, discovery: Discovery) -> Server {
    let services = bazaar_kit::client::ServiceClient::new(discovery.clone());
    gateway_with(config, discovery, services).await
}

/// `config` without the default `/` route (to the web service), so an unknown path is the
/// gateway's own 404 rather than a 503 for a web service these tests do not run.
fn without_root(mut config: Config) -> Config {
    config.routes.retain(|route| route.prefix != "/");
    config
}

async fn gateway_with(
    config: Config,
    discovery: Discovery,
    services: bazaar_kit::client::ServiceClient,
) -> Server {
    let dependencies = bazaar_gateway::Dependencies {
        verifier: tokens::verifier(),
        services,
    };
    let service = bazaar_gateway::service_with(common(), config, discovery, dependencies)
        .expect("gateway builds");
    run_service(service).await
}

/// Test access tokens: EdDSA-signed with a fixed key whose JWKS the test verifier serves.
mod tokens {
    use std::sync::Arc;
    use std::time::{SystemTime, UNIX_EPOCH};

    use base64::Engine;
    use bazaar_auth::Verifier;
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use ed25519_dalek::SigningKey;
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::{json, Value};

    pub const ISSUER: &str = "http://127.0.0.1:8080";
    pub const KID: &str = "test-key";

    pub fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    pub fn jwks() -> Value {
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(key().verifying_key().as_bytes());
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": KID, "alg": "EdDSA", "use": "sig"}]})
    }

    pub fn verifier() -> Arc<Verifier> {
        Verifier::new(
            ISSUER,
            &["bazaar"],
            Arc::new(|| {
                Box::pin(async {
                    serde_json::from_value::<JwkSet>(jwks()).map_err(|e| e.to_string())
                })
            }),
        )
    }

    pub fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    pub fn sign_with(signing: &SigningKey, kid: &str, claims: &Value) -> String {
        let der = signing.to_pkcs8_der().expect("pkcs8");
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes()))
            .expect("sign")
    }

    pub fn sign(claims: &Value) -> String {
        sign_with(&key(), KID, claims)
    }

    /// A user's token (authorization code flow: `sub` differs from `client_id`).
    pub fn user_claims(sub: &str, roles: &[&str]) -> Value {
        json!({"iss": ISSUER, "sub": sub, "aud": "bazaar", "exp": now() + 300, "iat": now(),
               "nbf": now(), "jti": format!("j-{sub}"), "client_id": "storefront",
               "scope": "openid", "roles": roles})
    }

    pub fn customer() -> String {
        sign(&user_claims("user-1", &["customer"]))
    }

    pub fn admin() -> String {
        sign(&user_claims("admin-1", &["admin"]))
    }

    /// A client-credentials token (`sub` is the client).
    pub fn client(client_id: &str, scope: &str) -> String {
        sign(
            &json!({"iss": ISSUER, "sub": client_id, "aud": "bazaar", "exp": now() + 300,
                     "iat": now(), "client_id": client_id, "scope": scope, "roles": []}),
        )
    }
}

async fn run_service(service: bazaar_kit::server::Service) -> Server {
    let listener = service.bind().await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        service
            .run(listener, async move {
                let _ = stopped.await;
            })
            .await
            .expect("gateway runs");
    });
    Server { url, stop, task }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn get_json(client: &reqwest::Client, url: &str) -> (StatusCode, HeaderMap, Value) {
    let response = client.get(url).send().await.expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

fn assert_problem(headers: &HeaderMap, body: &Value, code: &str) {
    assert_eq!(
        headers["content-type"], "application/problem+json",
        "errors are problem documents: {body}"
    );
    assert_eq!(body["code"], code, "{body}");
}

/// Sends `request` as raw bytes and returns everything the server answers until it closes.
async fn raw(url: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn config(routes: Vec<RouteConfig>) -> Config {
    Config {
        routes,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Routing

#[tokio::test]
async fn routes_by_longest_prefix_rewrite_and_forwarded_headers() {
    let catalog = spawn(upstream("catalog-1")).await;
    let registry = spawn(upstream("registry-1")).await;
    let gw = gateway(
        without_root(Config::default()),
        fixed(vec![
            instance("c1", "catalog", &catalog.url),
            instance("r1", "registry", &registry.url),
        ]),
    )
    .await;
    let client = http();

    let (status, _, body) =
        get_json(&client, &format!("{}/api/v1/products/42?q=mug", gw.url)).await;
    assert_eq!(status, 200);
    assert_eq!(body["instance"], "catalog-1");
    assert_eq!(body["path"], "/api/v1/products/42");
    assert_eq!(body["query"], "q=mug");
    assert_eq!(body["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(body["headers"]["x-forwarded-proto"], "http");
    assert_eq!(
        body["headers"]["x-forwarded-host"],
        gw.url.trim_start_matches("http://")
    );

    let (status, _, body) = get_json(&client, &format!("{}/api/v1/categories", gw.url)).await;
    assert_eq!(status, 200);
    assert_eq!(body["path"], "/api/v1/categories");

    // The registry route is for admins (policy admin); the token is forwarded as is.
    let body: Value = client
        .get(format!("{}/api/v1/registry/services", gw.url))
        .bearer_auth(tokens::admin())
        .send()
        .await
        .expect("registry")
        .json()
        .await
        .expect("json");
    assert_eq!(body["instance"], "registry-1");
    assert_eq!(body["path"], "/api/v1/services", "prefix rewritten");

    // Segment boundary: `/api/v1/productsx` is not under `/api/v1/products`.
    let (status, headers, body) = get_json(&client, &format!("{}/api/v1/productsx", gw.url)).await;
    assert_eq!(status, 404);
    assert_problem(&headers, &body, "route_not_found");

    // Sent raw: HTTP client libraries normalize dot segments away before sending.
    let answer = raw(
        &gw.url,
        "GET /api/v1/registry/%2e%2e/admin HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("invalid_path"), "{answer}");

    let response = client
        .post(format!("{}/api/v1/products", gw.url))
        .bearer_auth(tokens::admin())
        .header("content-type", "application/json")
        .body(r#"{"name":"mug"}"#)
        .send()
        .await
        .expect("post");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["method"], "POST");
    assert_eq!(body["body_len"], 14, "the body is forwarded");

    gw.stop().await;
    catalog.stop().await;
    registry.stop().await;
}

#[tokio::test]
async fn a_browser_gets_a_page_and_a_program_a_problem_when_the_upstream_is_down() {
    // The default routes send `/` to the web service, which is not running here.
    let gw = gateway(Config::default(), fixed(vec![])).await;
    let client = http();
    let response = client
        .get(format!("{}/search?q=mug", gw.url))
        .header("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")
        .send()
        .await
        .expect("browser request");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert!(response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/html"));
    let page = response.text().await.expect("text");
    assert!(
        page.contains("no healthy instance of web") && page.contains("try again"),
        "{page}"
    );

    let (status, headers, body) = get_json(&client, &format!("{}/search?q=mug", gw.url)).await;
    assert_eq!(status, 503);
    assert_problem(&headers, &body, "no_healthy_upstream");
    gw.stop().await;
}

#[tokio::test]
async fn unknown_route_is_a_404_problem() {
    let gw = gateway(without_root(Config::default()), fixed(vec![])).await;
    let (status, headers, body) = get_json(&http(), &format!("{}/nope/at/all", gw.url)).await;
    assert_eq!(status, 404);
    assert_problem(&headers, &body, "route_not_found");
    // The services' batch route is not the gateway's: the public edge has no way in to
    // `/internal`, batched or not.
    let response = http()
        .post(format!("{}/internal/v1/batch", gw.url))
        .json(&serde_json::json!({"requests": [
            {"method": "GET", "path": "/internal/v1/carts/someone"}
        ]}))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 404);
    gw.stop().await;
}

#[tokio::test]
async fn external_upstream_route_reaches_a_legacy_base_url() {
    let legacy = spawn(upstream("monolith")).await;
    let gw = gateway(
        config(vec![
            RouteConfig::upstream("/legacy", &format!("{}/base/", legacy.url)).rewrite("/"),
            RouteConfig::upstream("/shop", &legacy.url),
        ]),
        fixed(vec![]),
    )
    .await;
    let client = http();
    let (status, _, body) = get_json(&client, &format!("{}/legacy/orders/7", gw.url)).await;
    assert_eq!(status, 200);
    assert_eq!(body["instance"], "monolith");
    assert_eq!(body["path"], "/base/orders/7");
    let (_, _, body) = get_json(&client, &format!("{}/shop/cart", gw.url)).await;
    assert_eq!(body["path"], "/shop/cart");
    gw.stop().await;
    legacy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Balancing, retries, failure

#[tokio::test]
async fn load_spreads_across_two_instances() {
    let a = spawn(upstream("a")).await;
    let b = spawn(upstream("b")).await;
    let gw = gateway(
        Config::default(),
        fixed(vec![
            instance("a", "catalog", &a.url),
            instance("b", "catalog", &b.url),
        ]),
    )
    .await;
    let client = http();
    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..40 {
        let (status, _, body) = get_json(&client, &format!("{}/api/v1/products", gw.url)).await;
        assert_eq!(status, 200);
        *seen
            .entry(body["instance"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "both instances served: {seen:?}");
    gw.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn get_to_a_dead_instance_is_retried_on_another_and_counted() {
    let live = spawn(upstream("live")).await;
    let dead = dead_address().await;
    let gw = gateway(
        Config::default(),
        fixed(vec![
            instance("dead", "catalog", &dead),
            instance("live", "catalog", &live.url),
        ]),
    )
    .await;
    let client = http();
    for _ in 0..20 {
        let (status, _, body) = get_json(&client, &format!("{}/api/v1/products", gw.url)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["instance"], "live");
    }
    let metrics = client
        .get(format!("{}/metrics", gw.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("gateway_requests_total{route=\"/api/v1/products\",status=\"200\"} 20"),
        "{metrics}"
    );
    assert!(
        metrics.contains("instance=\"live\",outcome=\"success\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_upstream_duration_seconds"),
        "{metrics}"
    );
    gw.stop().await;
    live.stop().await;
}

#[tokio::test]
async fn no_instance_at_all_is_a_fast_503() {
    let dead = dead_address().await;
    let gw = gateway(
        config(vec![
            RouteConfig::service("/api/v1/products", "catalog"),
            RouteConfig::service("/api/v1/dead", "dead"),
        ]),
        fixed(vec![instance("d", "dead", &dead)]),
    )
    .await;
    let client = http();
    let started = Instant::now();
    let response = client
        .get(format!("{}/api/v1/products", gw.url))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let headers = response.headers().clone();
    let body: Value = response.json().await.expect("json");
    assert_problem(&headers, &body, "no_healthy_upstream");
    assert!(started.elapsed() < Duration::from_secs(1));

    // A POST whose only instance refuses the connection: nothing was sent, and the instance is
    // now ejected, so this is "try later" (503), not a broken upstream (502).
    let response = client
        .post(format!("{}/api/v1/dead", gw.url))
        .body("{}")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 503);
    gw.stop().await;
}

/// Two instances behind a real registry: one dies, then both, then a new one appears.
#[tokio::test]
async fn survives_one_instance_dying_fails_fast_when_all_are_dead_and_recovers() {
    let store = bazaar_registry::Store::new(Duration::from_secs(60), Duration::from_secs(30));
    let registry = spawn(bazaar_registry::router(
        store.clone(),
        Duration::from_secs(5),
    ))
    .await;
    let register = |id: &str, address: &str| {
        let id = store.register(Registration {
            service: "catalog".into(),
            address: address.into(),
            version: "test".into(),
            metadata: BTreeMap::new(),
            instance_id: Some(id.into()),
        });
        assert!(store.heartbeat(&id, InstanceStatus::Up));
    };
    let a = spawn(upstream("a")).await;
    let b = spawn(upstream("b")).await;
    register("a", &a.url);
    register("b", &b.url);

    // The production entry point, watching the registry.
    let mut common = common();
    common.registry_url = registry.url.clone();
    let service = bazaar_gateway::build(common, Config::default())
        .await
        .expect("builds");
    let gw = run_service(service).await;
    let client = http();
    let products = format!("{}/api/v1/products", gw.url);

    // Ready once the registry view is loaded (and the gateway has registered itself).
    let mut ready = false;
    for _ in 0..100 {
        let response = client.get(format!("{}/readyz", gw.url)).send().await;
        if response.is_ok_and(|r| r.status() == 200) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "gateway never became ready");

    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (status, _, body) = get_json(&client, &products).await;
        assert_eq!(status, 200, "{body}");
        seen.insert(body["instance"].as_str().unwrap_or("?").to_owned());
    }
    assert_eq!(seen.len(), 2, "both instances served: {seen:?}");

    a.stop().await;
    for _ in 0..20 {
        let (status, _, body) = get_json(&client, &products).await;
        assert_eq!(
            status, 200,
            "one dead instance must not fail requests: {body}"
        );
        assert_eq!(body["instance"], "b");
    }

    b.stop().await;
    let started = Instant::now();
    let (status, headers, body) = get_json(&client, &products).await;
    let elapsed = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert_problem(&headers, &body, "no_healthy_upstream");
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");

    let c = spawn(upstream("c")).await;
    register("c", &c.url);
    let mut served = None;
    for _ in 0..100 {
        let (status, _, body) = get_json(&client, &products).await;
        if status == 200 {
            served = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = served.expect("the new instance was never used");
    assert_eq!(body["instance"], "c");

    gw.stop().await;
    c.stop().await;
    registry.stop().await;
}

#[tokio::test]
async fn slow_upstream_is_a_504_after_the_route_timeout() {
    let slow = spawn(upstream("slow")).await;
    let gw = gateway(
        config(vec![
            RouteConfig::service("/api/v1/products", "catalog").timeout_ms(200)
        ]),
        fixed(vec![instance("s", "catalog", &slow.url)]),
    )
    .await;
    let started = Instant::now();
    let (status, headers, body) =
        get_json(&http(), &format!("{}/api/v1/products/slow", gw.url)).await;
    assert_eq!(status, 504);
    assert_problem(&headers, &body, "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(2));
    gw.stop().await;
    // Not waiting for the slow upstream's in-flight request: its server task is just dropped.
    drop(slow);
}

#[tokio::test]
async fn oversized_bodies_are_413_problems() {
    let catalog = spawn(upstream("catalog")).await;
    let gw = gateway(
        Config::default(),
        fixed(vec![instance("c", "catalog", &catalog.url)]),
    )
    .await;
    let admin = tokens::admin();
    let response = http()
        .post(format!("{}/api/v1/products", gw.url))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(vec![b'x'; MAX_BODY * 4])
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 413);
    let headers = response.headers().clone();
    let body: Value = response.json().await.expect("json");
    assert_problem(&headers, &body, "payload_too_large");

    // Streamed without a length: refused once it crosses the cap.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(gw.url.trim_start_matches("http://"))
        .await
        .expect("connect");
    let head = format!("POST /api/v1/products HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {admin}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("head");
    let chunk = format!("{:x}\r\n{}\r\n", 512, "y".repeat(512));
    for _ in 0..4 {
        // The gateway may answer and close before everything is written; that is the point.
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");

    gw.stop().await;
    catalog.stop().await;
}

#[tokio::test]
async fn request_id_and_trace_reach_the_upstream_and_come_back() {
    let catalog = spawn(upstream("catalog")).await;
    let gw = gateway(
        Config::default(),
        fixed(vec![instance("c", "catalog", &catalog.url)]),
    )
    .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = http()
        .get(format!("{}/api/v1/products", gw.url))
        .header("x-request-id", "req-gw-1")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.headers()["x-request-id"], "req-gw-1");
    let returned = response.headers()["traceparent"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        returned.starts_with(&format!("00-{trace_id}-")),
        "{returned}"
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["headers"]["x-request-id"], "req-gw-1");
    let upstream_parent = body["headers"]["traceparent"]
        .as_str()
        .expect("traceparent");
    assert!(
        upstream_parent.starts_with(&format!("00-{trace_id}-")),
        "{upstream_parent}"
    );
    assert!(
        !upstream_parent.contains("00f067aa0ba902b7"),
        "the gateway is a hop with its own span id"
    );
    gw.stop().await;
    catalog.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Static content, docs, CORS, compression

#[tokio::test]
async fn static_assets_are_cached_by_name_and_revalidated_by_etag() {
    let gw = gateway(Config::default(), fixed(vec![])).await;
    let client = http();
    let hashed = bazaar_assets::assets()
        .url("favicon.svg")
        .expect("favicon.svg is an asset");

    let response = client
        .get(format!("{}{hashed}", gw.url))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(response.headers()["content-type"], "image/svg+xml");
    assert!(response.headers().contains_key("etag"));

    let logical = format!("{}/static/favicon.svg", gw.url);
    let response = client.get(&logical).send().await.expect("get");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["cache-control"],
        "public, max-age=0, must-revalidate"
    );
    let etag = response.headers()["etag"].clone();
    let response = client
        .get(&logical)
        .header("if-none-match", etag.clone())
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 304);
    assert_eq!(response.headers()["etag"], etag);
    let response = client.head(&logical).send().await.expect("head");
    assert_eq!(response.status(), 200);

    let response = client
        .get(format!("{}/favicon.ico", gw.url))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/svg+xml");

    let (status, headers, body) =
        get_json(&client, &format!("{}/static/no/such.css", gw.url)).await;
    assert_eq!(status, 404);
    assert_problem(&headers, &body, "asset_not_found");

    let response = client
        .get(format!("{}/api/docs", gw.url))
        .send()
        .await
        .expect("docs");
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/html"));

    gw.stop().await;

    // The default routes send `/` to the web service; without a root route the gateway shows
    // its own landing page.
    let gw = gateway(without_root(Config::default()), fixed(vec![])).await;
    let response = client
        .get(format!("{}/", gw.url))
        .send()
        .await
        .expect("landing");
    assert_eq!(response.status(), 200);
    let page = response.text().await.expect("text");
    assert!(page.contains("/api/docs") && page.contains("/healthz"));
    gw.stop().await;
}

#[tokio::test]
async fn merged_openapi_has_routed_paths_in_public_form_and_names_missing_services() {
    let catalog = spawn(upstream("catalog")).await;
    let gw = gateway(
        Config::default(),
        fixed(vec![instance("c", "catalog", &catalog.url)]),
    )
    .await;
    let client = http();
    let (status, headers, document) =
        get_json(&client, &format!("{}/api/openapi.json", gw.url)).await;
    assert_eq!(status, 200);
    let paths = document["paths"].as_object().expect("paths");
    assert!(paths.contains_key("/api/v1/products/{id}"), "{document}");
    assert!(
        paths.contains_key("/api/openapi.json"),
        "the gateway's own paths"
    );
    assert!(
        !paths.contains_key("/internal/reindex"),
        "not reachable through a route"
    );
    assert!(document["components"]["schemas"].get("Product").is_some());
    let unavailable = document["x-bazaar-unavailable"].to_string();
    assert!(unavailable.contains("registry"), "{unavailable}");

    // Served with an ETag from the cache.
    let response = client
        .get(format!("{}/api/openapi.json", gw.url))
        .header("if-none-match", headers["etag"].clone())
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 304);
    gw.stop().await;
    catalog.stop().await;
}

#[tokio::test]
async fn cors_preflight_from_the_storefront_origin() {
    let gw = gateway(Config::default(), fixed(vec![])).await;
    let client = http();
    let preflight = |origin: &'static str| {
        client
            .request(Method::OPTIONS, format!("{}/api/v1/products", gw.url))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let response = preflight("http://localhost:8080").await.expect("preflight");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "http://localhost:8080"
    );
    assert!(response.headers()["access-control-allow-methods"]
        .to_str()
        .expect("ascii")
        .contains("POST"));
    let response = preflight("http://evil.example").await.expect("preflight");
    assert!(!response
        .headers()
        .contains_key("access-control-allow-origin"));
    gw.stop().await;
}

#[tokio::test]
async fn compresses_when_asked_but_never_twice() {
    let catalog = spawn(upstream("catalog")).await;
    let gw = gateway(
        Config::default(),
        fixed(vec![instance("c", "catalog", &catalog.url)]),
    )
    .await;
    let client = http();
    for encoding in ["gzip", "br"] {
        let response = client
            .get(format!("{}/api/v1/products", gw.url))
            .header("accept-encoding", encoding)
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-encoding"], encoding);
    }
    let response = client
        .get(format!("{}/", gw.url))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("get");
    assert_eq!(response.headers()["content-encoding"], "gzip");

    let response = client
        .get(format!("{}/api/v1/products/precompressed", gw.url))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("get");
    assert_eq!(response.headers()["content-encoding"], "br");
    assert_eq!(response.bytes().await.expect("body").len(), 2048);
    gw.stop().await;
    catalog.stop().await;
}
