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
