//! The service-to-service client: resolves names through the discovery view, retries on
//! another instance only where safe, and carries the request context.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use bazaar_discovery::{Discovery, Instance, InstanceStatus, Snapshot};
use bazaar_kit::client::{CallError, ServiceClient};
use bazaar_kit::context::{self, RequestContext};

fn instance(id: &str, port: u16) -> Instance {
    Instance {
        id: id.into(),
        service: "stock".into(),
        address: format!("http://127.0.0.1:{port}"),
        version: "1".into(),
        metadata: Default::default(),
        status: InstanceStatus::Up,
        registered_at_ms: 0,
        last_heartbeat_ms: 0,
    }
}

fn view(instances: Vec<Instance>) -> Discovery {
    let mut snapshot = Snapshot {
        epoch: "test".into(),
        version: 1,
        ..Default::default()
    };
    snapshot.services.insert("stock".into(), instances);
    Discovery::fixed(snapshot)
}

#[derive(Clone, Default)]
struct Upstream {
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

async fn spawn_upstream(upstream: Upstream) -> u16 {
    let u1 = upstream.clone();
    let u2 = upstream.clone();
    let app = Router::new()
        .route(
            "/level",
            get(move |headers: HeaderMap| {
                let u = u1.clone();
                async move {
                    u.hits.fetch_add(1, Ordering::SeqCst);
                    u.seen.lock().expect("lock").push(headers);
                    axum::Json(serde_json::json!({"level": 7}))
                }
            }),
        )
        .route(
            "/reserve",
            post(move || {
                let u = u2.clone();
                async move {
                    u.hits.fetch_add(1, Ordering::SeqCst);
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[tokio::test]
async fn a_refused_instance_is_skipped_and_context_is_carried() {
    let upstream = Upstream::default();
    let live = spawn_upstream(upstream.clone()).await;
    let client = ServiceClient::new(view(vec![
        instance("dead", dead_port()),
        instance("live", live),
    ]));
    let caller = RequestContext::new_root();
    for _ in 0..6 {
        let body: serde_json::Value =
            context::scope(caller.clone(), client.get_json("stock", "/level"))
                .await
                .expect("served by the live instance");
        assert_eq!(body["level"], 7);
    }
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 6);
    let seen = upstream.seen.lock().expect("lock");
    for headers in seen.iter() {
        assert_eq!(headers["x-request-id"], caller.request_id.as_str());
        let traceparent = headers["traceparent"].to_str().expect("ascii");
        assert!(traceparent.contains(&caller.trace_id), "{traceparent}");
    }
}

#[tokio::test]
async fn a_failed_post_is_not_retried_and_no_instance_is_an_error() {
    let first = Upstream::default();
    let second = Upstream::default();
    let a = spawn_upstream(first.clone()).await;
    let b = spawn_upstream(second.clone()).await;
    let client = ServiceClient::new(view(vec![instance("a", a), instance("b", b)]));
    let error = client
        .send(
            "stock",
            Method::POST,
            "/reserve",
            Some(&serde_json::json!({"sku": "X"})),
            HeaderMap::new(),
        )
        .await
        .expect_err("500");
    assert!(
        matches!(error, CallError::Status { status: 500, .. }),
        "{error}"
    );
    let total = first.hits.load(Ordering::SeqCst) + second.hits.load(Ordering::SeqCst);
    assert_eq!(
        total, 1,
        "a POST that reached an instance is never sent twice"
    );

    let empty = ServiceClient::new(view(vec![]));
    let error = empty
        .get_json::<serde_json::Value>("stock", "/level")
        .await
        .expect_err("none");
    assert!(matches!(error, CallError::NoInstance(_)), "{error}");
}

/// A discovery view with `stock` and `identity` both at `port`.
fn view_with_identity(port: u16) -> Discovery {
    let mut snapshot = Snapshot {
        epoch: "test".into(),
        version: 1,
        ..Default::default()
    };
    snapshot
        .services
        .insert("stock".into(), vec![instance("stock-1", port)]);
    let identity = Instance {
        id: "identity-1".into(),
        service: "identity".into(),
        ..instance("identity-1", port)
    };
    snapshot.services.insert("identity".into(), vec![identity]);
    Discovery::fixed(snapshot)
}

fn with_credentials(client: ServiceClient) -> ServiceClient {
    client.with_credentials(bazaar_kit::client::Credentials {
        client_id: "orders".into(),
        client_secret: "secret".into(),
    })
}

/// A token endpoint issuing `t1`, `t2`, ... and counting them; each answer waits for a permit
/// of `gate`.
fn token_route(issued: Arc<AtomicUsize>, gate: Arc<tokio::sync::Semaphore>) -> Router {
    Router::new().route(
        "/oauth2/token",
        post(move || {
            let (issued, gate) = (issued.clone(), gate.clone());
            async move {
                let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
                gate.acquire().await.expect("open").forget();
                axum::Json(serde_json::json!({"access_token": format!("t{n}"), "expires_in": 300}))
            }
        }),
    )
}

async fn until(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..2_000 {
        if condition() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("gave up waiting until {what}");
}

/// Callers that all find no valid token (first use, or expiry under load) wait for one token
/// request instead of each sending their own.
#[tokio::test]
async fn callers_needing_a_token_at_once_share_one_request() {
    let issued = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = token_route(issued.clone(), gate.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = with_credentials(ServiceClient::new(view_with_identity(port)));

    let started = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..10)
        .map(|_| {
            let (client, started) = (client.clone(), started.clone());
            tokio::spawn(async move {
                started.fetch_add(1, Ordering::SeqCst);
                client.token_for("stock").await
            })
        })
        .collect();
    // Every caller has looked in the (empty) cache while the first request is held.
    until("the first token request arrives", || {
        issued.load(Ordering::SeqCst) >= 1
    })
    .await;
    until("every caller has started", || {
        started.load(Ordering::SeqCst) == 10
    })
    .await;
    gate.add_permits(100);
    for caller in callers {
        let token = caller.await.expect("task").expect("a token");
        assert_eq!(token.as_deref(), Some("t1"));
    }
    assert_eq!(issued.load(Ordering::SeqCst), 1, "one token request");
}

/// Calls refused together for a stale token fetch one fresh token between them, and none of
/// them throws away the fresh one another has just fetched.
#[tokio::test]
async fn calls_refused_together_fetch_one_fresh_token() {
    let issued = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(1_000));
    // The first token is refused, once three calls carry it, to all three at once.
    let together = Arc::new(tokio::sync::Barrier::new(3));
    let app = token_route(issued.clone(), gate).route(
        "/level",
        get(move |headers: HeaderMap| {
            let together = together.clone();
            async move {
                let token = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                if token == "Bearer t1" {
                    together.wait().await;
                    return Err(StatusCode::UNAUTHORIZED);
                }
                Ok(axum::Json(serde_json::json!({"token": token})))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = with_credentials(ServiceClient::new(view_with_identity(port)));
    assert_eq!(
        client.token_for("stock").await.expect("token").as_deref(),
        Some("t1")
    );

    let calls: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .get_json::<serde_json::Value>("stock", "/level")
                    .await
            })
        })
        .collect();
    for call in calls {
        let body = call
            .await
            .expect("task")
            .expect("answered after a fresh token");
        assert_eq!(body["token"], "Bearer t2");
    }
    assert_eq!(
        issued.load(Ordering::SeqCst),
        2,
        "the stale token and one fresh one"
    );
}
