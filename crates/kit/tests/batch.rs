//! Batched internal calls: a service answers each item of `POST /internal/v1/batch` as if it
//! had come alone, and `ServiceClient::send_coalesced` shares requests between concurrent calls
//! only when enough are in flight, each caller hearing its own answer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::routing::{get, post};
use axum::Router;
use bazaar_discovery::{Discovery, Instance, InstanceStatus, Snapshot};
use bazaar_kit::batch::BATCH_PATH;
use bazaar_kit::client::{CallError, ServiceClient};
use bazaar_kit::context::{self, RequestContext};
use bazaar_kit::health::Readiness;
use bazaar_kit::metrics::Metrics;
use bazaar_kit::problem::ApiError;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// What the test service saw.
#[derive(Clone, Default)]
struct Seen {
    /// HTTP requests that reached the server (a batch counts once).
    requests: Arc<AtomicUsize>,
    /// Batches among them.
    batches: Arc<AtomicUsize>,
    /// Items handled by the echo route (alone or in a batch).
    echoed: Arc<AtomicUsize>,
    /// Slow items that finished.
    slow_done: Arc<AtomicUsize>,
}

/// A service whose `/internal/v1/echo` waits for a permit of `gate` and answers what it got;
/// `/internal/v1/refuse` answers 409; `/internal/v1/slow` waits for a permit of `slow`.
fn service(seen: Seen, gate: Arc<Semaphore>, slow: Arc<Semaphore>) -> Router {
    let echo_seen = seen.clone();
    let slow_seen = seen.clone();
    let routes = Router::new()
        .route(
            "/internal/v1/echo",
            post(move |headers: HeaderMap, body: axum::Json<Value>| {
                let (seen, gate) = (echo_seen.clone(), gate.clone());
                async move {
                    gate.acquire().await.expect("gate open").forget();
                    seen.echoed.fetch_add(1, Ordering::SeqCst);
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    (
                        StatusCode::CREATED,
                        axum::Json(json!({
                            "got": body.0,
                            "traceparent": header("traceparent"),
                            "authorization": header("authorization"),
                            "idempotency_key": header("idempotency-key"),
                        })),
                    )
                }
            }),
        )
        .route(
            "/internal/v1/refuse",
            post(|| async { ApiError::conflict("out_of_stock", "none left") }),
        )
        .route(
            "/internal/v1/slow",
            get(move || {
                let (seen, slow) = (slow_seen.clone(), slow.clone());
                async move {
                    slow.acquire().await.expect("open").forget();
                    slow_seen_done(&seen);
                    "done"
                }
            }),
        );
    let app = bazaar_kit::server::build_app(
        routes,
        None,
        Readiness::default(),
        Metrics::new(),
        1024 * 1024,
        true,
    );
    // Counts real HTTP requests: items dispatched inside a batch never pass here.
    app.layer(axum::middleware::from_fn(
        move |request: Request, next: Next| {
            let seen = seen.clone();
            async move {
                seen.requests.fetch_add(1, Ordering::SeqCst);
                if request.uri().path() == BATCH_PATH {
                    seen.batches.fetch_add(1, Ordering::SeqCst);
                }
                next.run(request).await
            }
        },
    ))
}

fn slow_seen_done(seen: &Seen) {
    seen.slow_done.fetch_add(1, Ordering::SeqCst);
}

async fn serve(app: Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(bazaar_kit::server::serve(
        listener,
        app,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    port
}

/// A discovery view with `services` all at the test server on `port`.
fn view(port: u16, services: &[&str]) -> Discovery {
    let mut snapshot = Snapshot {
        epoch: "test".into(),
        version: 1,
        ..Default::default()
    };
    for name in services {
        snapshot.services.insert(
            (*name).into(),
            vec![Instance {
                id: format!("{name}-1"),
                service: (*name).into(),
                address: format!("http://127.0.0.1:{port}"),
                version: "1".into(),
                metadata: Default::default(),
                status: InstanceStatus::Up,
                registered_at_ms: 0,
                last_heartbeat_ms: 0,
            }],
        );
    }
    Discovery::fixed(snapshot)
}

fn client_for(port: u16) -> ServiceClient {
    ServiceClient::new(view(port, &["stock"]))
}

/// A coalesced call to the `stock` service, made in a task of its own.
fn spawn_call(
    client: &ServiceClient,
    method: Method,
    path: &'static str,
    body: Option<Value>,
) -> tokio::task::JoinHandle<Result<reqwest::Response, CallError>> {
    let client = client.clone();
    tokio::spawn(async move {
        client
            .send_coalesced("stock", method, path, body.as_ref())
            .await
    })
}

async fn post_batch(port: u16, body: Value, wait_ms: Option<u64>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}{BATCH_PATH}"))
        .header("authorization", "Bearer caller-token")
        .json(&body);
    if let Some(wait) = wait_ms {
        request = request.header("bazaar-batch-wait-ms", wait.to_string());
    }
    let response = request.send().await.expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json answer"))
}

/// Waits (bounded) until `condition` holds.
async fn until(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..2_000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("gave up waiting until {what}");
}

#[tokio::test]
async fn a_batch_answers_each_item_as_if_it_came_alone() {
    let seen = Seen::default();
    let port = serve(service(
        seen.clone(),
        Arc::new(Semaphore::new(100)),
        Arc::new(Semaphore::new(0)),
    ))
    .await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, answer) = post_batch(
        port,
        json!({"requests": [
            {"method": "POST", "path": "/internal/v1/echo", "body": {"n": 1},
             "headers": {"traceparent": traceparent, "Idempotency-Key": "order-1"}},
            {"method": "POST", "path": "/internal/v1/refuse", "body": {}},
            {"method": "GET", "path": "/internal/v1/nowhere"},
            {"method": "POST", "path": "/internal/v1/echo", "body": {"n": 2}},
        ]}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let responses = answer["responses"].as_array().expect("responses");
    assert_eq!(responses.len(), 4);

    assert_eq!(responses[0]["status"], 201);
    let echoed = &responses[0]["body"];
    assert_eq!(echoed["got"], json!({"n": 1}));
    assert_eq!(
        echoed["authorization"], "Bearer caller-token",
        "the batch's token"
    );
    assert_eq!(echoed["idempotency_key"], "order-1");
    assert!(
        echoed["traceparent"]
            .as_str()
            .is_some_and(|t| t.contains("4bf92f3577b34da6a3ce929d0e0e4736")),
        "the item's own trace: {echoed}"
    );

    assert_eq!(responses[1]["status"], 409);
    assert_eq!(responses[1]["content_type"], "application/problem+json");
    assert_eq!(responses[1]["body"]["code"], "out_of_stock");
    assert_eq!(responses[2]["status"], 404, "unknown routes as alone");
    assert_eq!(responses[2]["body"]["code"], "route_not_found");
    assert_eq!(responses[3]["body"]["got"], json!({"n": 2}));

    assert_eq!(seen.echoed.load(Ordering::SeqCst), 2);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 1, "one HTTP request");

    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("bazaar_batches_total 1\n"), "{metrics}");
    assert!(
        metrics.contains("bazaar_batched_items_total 4\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"route="/internal/v1/echo",method="POST",status="201"} 2"#),
        "each item counted under its route: {metrics}"
    );
}

#[tokio::test]
async fn a_batch_refuses_what_a_single_internal_call_could_not_reach() {
    let seen = Seen::default();
    let port = serve(service(
        seen.clone(),
        Arc::new(Semaphore::new(100)),
        Arc::new(Semaphore::new(0)),
    ))
    .await;
    let item = |path: &str| json!({"method": "POST", "path": path, "body": {}});
    let too_many: Vec<_> = (0..65).map(|_| item("/internal/v1/echo")).collect();
    for (body, field) in [
        (json!({"requests": []}), "requests"),
        (json!({"requests": too_many}), "requests"),
        (
            json!({"requests": [item("/internal/v1/echo"), item("/api/v1/orders")]}),
            "requests[1].path",
        ),
        (
            json!({"requests": [item("/internal/v1/../../api/v1/orders")]}),
            "requests[0].path",
        ),
        (json!({"requests": [item(BATCH_PATH)]}), "requests[0].path"),
        (
            json!({"requests": [{"method": "CONNECT", "path": "/internal/v1/echo"}]}),
            "requests[0].method",
        ),
        (
            json!({"requests": [{"method": "POST", "path": "/internal/v1/echo",
                "headers": {"authorization": "Bearer other"}}]}),
            "requests[0].headers.authorization",
        ),
        (json!({"requests": "all of them"}), "requests"),
    ] {
        let (status, problem) = post_batch(port, body.clone(), None).await;
        assert_eq!(status, 422, "{body} → {problem}");
        assert_eq!(problem["field"], field, "{body} → {problem}");
    }
    assert_eq!(
        seen.echoed.load(Ordering::SeqCst),
        0,
        "nothing of a refused batch runs"
    );

    let response = reqwest::get(format!("http://127.0.0.1:{port}{BATCH_PATH}"))
        .await
        .expect("sent");
    assert_eq!(response.status(), 405);
}

#[tokio::test]
async fn an_item_that_outlasts_the_wait_is_answered_unfinished_and_still_completes() {
    let seen = Seen::default();
    let slow = Arc::new(Semaphore::new(0));
    let port = serve(service(
        seen.clone(),
        Arc::new(Semaphore::new(100)),
        slow.clone(),
    ))
    .await;
    let (status, answer) = post_batch(
        port,
        json!({"requests": [
            {"method": "GET", "path": "/internal/v1/slow"},
            {"method": "POST", "path": "/internal/v1/echo", "body": {"n": 3}},
        ]}),
        Some(200),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["responses"][0]["status"], 503);
    assert_eq!(
        answer["responses"][0]["body"]["code"],
        "batch_item_unfinished"
    );
    assert_eq!(
        answer["responses"][1]["status"], 201,
        "the quick item is answered"
    );
    assert_eq!(seen.slow_done.load(Ordering::SeqCst), 0);
    slow.add_permits(1);
    until("the slow item finished", || {
        seen.slow_done.load(Ordering::SeqCst) == 1
    })
    .await;
}

#[tokio::test]
async fn concurrent_calls_share_requests_and_each_hears_its_own_answer() {
    let seen = Seen::default();
    let gate = Arc::new(Semaphore::new(0));
    let port = serve(service(
        seen.clone(),
        gate.clone(),
        Arc::new(Semaphore::new(0)),
    ))
    .await;
    // Queued calls wait as long as it takes here, so that all 18 are counted waiting.
    let client = client_for(port)
        .with_coalescing(2)
        .with_max_queue_wait(Duration::from_secs(60));
    let caller = RequestContext::new_root();

    let calls: Vec<_> = (0..20)
        .map(|n| {
            let (client, caller) = (client.clone(), caller.clone());
            tokio::spawn(context::scope(caller, async move {
                let response = client
                    .send_coalesced(
                        "stock",
                        Method::POST,
                        "/internal/v1/echo",
                        Some(&json!({"n": n})),
                    )
                    .await
                    .expect("answered");
                assert_eq!(response.status(), 201);
                let body: Value = response.json().await.expect("json");
                (n, body)
            }))
        })
        .collect();
    // Two calls go out on their own and wait at the gate; the other 18 queue behind them.
    until("two requests are out and 18 calls wait", || {
        seen.requests.load(Ordering::SeqCst) == 2 && client.waiting("stock") == 18
    })
    .await;
    gate.add_permits(20);
    for call in calls {
        let (n, body) = call.await.expect("task");
        assert_eq!(
            body["got"],
            json!({"n": n}),
            "each caller hears its own answer"
        );
        assert!(
            body["traceparent"]
                .as_str()
                .is_some_and(|t| t.contains(&caller.trace_id)),
            "each item carries its caller's trace: {body}"
        );
    }
    assert_eq!(seen.echoed.load(Ordering::SeqCst), 20);
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        3,
        "two calls alone, then the 18 that waited in one batch"
    );
    assert_eq!(seen.batches.load(Ordering::SeqCst), 1);
    assert_eq!(client.waiting("stock"), 0);

    // A lone call, with nothing in flight, goes on its own.
    client
        .send_coalesced(
            "stock",
            Method::POST,
            "/internal/v1/refuse",
            Some(&json!({})),
        )
        .await
        .expect_err("409");
    assert_eq!(seen.requests.load(Ordering::SeqCst), 4);
    assert_eq!(seen.batches.load(Ordering::SeqCst), 1);
}

/// A service from before batches (no batch route), or one whose batch route fails: the calls
/// that waited are sent on their own, or each hears the batch's failure.
#[tokio::test]
async fn calls_that_waited_fall_back_or_fail_together() {
    for batch_status in [
        None,
        Some(StatusCode::UNPROCESSABLE_ENTITY),
        Some(StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let gate = Arc::new(Semaphore::new(0));
        let handled = Arc::new(AtomicUsize::new(0));
        let (gate_in, handled_in) = (gate.clone(), handled.clone());
        let mut app = Router::new().route(
            "/internal/v1/echo",
            post(move |body: axum::Json<Value>| {
                let (gate, handled) = (gate_in.clone(), handled_in.clone());
                async move {
                    gate.acquire().await.expect("open").forget();
                    handled.fetch_add(1, Ordering::SeqCst);
                    axum::Json(body.0)
                }
            }),
        );
        if let Some(status) = batch_status {
            app = app.route(BATCH_PATH, post(move || async move { status }));
        }
        let port = serve(app).await;
        let client = client_for(port)
            .with_coalescing(1)
            .with_max_queue_wait(Duration::from_secs(60));
        let calls: Vec<_> = (0..5)
            .map(|n| {
                spawn_call(
                    &client,
                    Method::POST,
                    "/internal/v1/echo",
                    Some(json!({"n": n})),
                )
            })
            .collect();
        until("one call out, four waiting", || {
            client.waiting("stock") == 4
        })
        .await;
        gate.add_permits(5);
        let outcomes: Vec<_> = futures::future::join_all(calls)
            .await
            .into_iter()
            .map(|joined| joined.expect("task"))
            .collect();
        match batch_status {
            None | Some(StatusCode::UNPROCESSABLE_ENTITY) => {
                // Without the route, or with the batch itself refused: a refusal of the batch
                // says nothing about each call, so each is sent on its own.
                assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
                assert_eq!(handled.load(Ordering::SeqCst), 5, "each sent on its own");
            }
            Some(_) => {
                let failed = outcomes
                    .iter()
                    .filter(|o| matches!(o, Err(CallError::Status { status: 503, .. })))
                    .count();
                assert_eq!(
                    failed, 4,
                    "the four that waited hear the batch's 503: {outcomes:?}"
                );
                assert_eq!(handled.load(Ordering::SeqCst), 1);
            }
        }
    }
}

/// A request out that does not return (a slow callee, a slow item) holds the calls queued behind
/// it only for the queue wait: then they leave together in a request of their own.
#[tokio::test]
async fn calls_queued_behind_a_slow_request_leave_after_the_queue_wait() {
    let seen = Seen::default();
    let slow = Arc::new(Semaphore::new(0));
    let port = serve(service(
        seen.clone(),
        Arc::new(Semaphore::new(100)),
        slow.clone(),
    ))
    .await;
    let client = client_for(port)
        .with_max_queue_wait(Duration::from_millis(50))
        .with_timeout(Duration::from_secs(60));
    let stuck = spawn_call(&client, Method::GET, "/internal/v1/slow", None);
    until("the slow request is out", || {
        seen.requests.load(Ordering::SeqCst) == 1
    })
    .await;
    let queued: Vec<_> = (0..3)
        .map(|n| {
            spawn_call(
                &client,
                Method::POST,
                "/internal/v1/echo",
                Some(json!({"n": n})),
            )
        })
        .collect();
    let answered = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(queued))
        .await
        .expect("the queued calls do not wait for the slow request");
    for outcome in answered {
        assert_eq!(
            outcome.expect("task").expect("answered").status(),
            StatusCode::CREATED
        );
    }
    assert_eq!(seen.slow_done.load(Ordering::SeqCst), 0, "still out");
    assert_eq!(seen.echoed.load(Ordering::SeqCst), 3);
    assert_eq!(
        seen.batches.load(Ordering::SeqCst),
        1,
        "the three left together"
    );
    slow.add_permits(1);
    let status = stuck
        .await
        .expect("task")
        .expect("the slow one is answered too")
        .status();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(client.waiting("stock"), 0);
}

/// Items refused with 401 (the cached token went stale: rotated keys, a revocation) are sent
/// again once on their own with a fresh token, as a call alone would be.
#[tokio::test]
async fn items_refused_for_a_stale_token_are_sent_again_with_a_fresh_one() {
    let issued = Arc::new(AtomicUsize::new(0));
    let slow = Arc::new(Semaphore::new(0));
    let (issued_in, slow_in) = (issued.clone(), slow.clone());
    let routes = Router::new()
        .route(
            "/oauth2/token",
            post(move || {
                let issued = issued_in.clone();
                async move {
                    let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
                    axum::Json(json!({"access_token": format!("t{n}"), "expires_in": 300}))
                }
            }),
        )
        .route(
            "/internal/v1/slow",
            get(move || {
                let slow = slow_in.clone();
                async move {
                    slow.acquire().await.expect("open").forget();
                    "done"
                }
            }),
        )
        .route(
            "/internal/v1/echo",
            post(|headers: HeaderMap, body: axum::Json<Value>| async move {
                // The first token issued has gone stale; any later one is good.
                let token = headers.get("authorization").and_then(|v| v.to_str().ok());
                if token.is_some_and(|t| t.starts_with("Bearer t") && t != "Bearer t1") {
                    Ok(axum::Json(body.0))
                } else {
                    Err(StatusCode::UNAUTHORIZED)
                }
            }),
        );
    let port = serve(bazaar_kit::server::build_app(
        routes,
        None,
        Readiness::default(),
        Metrics::new(),
        1024 * 1024,
        true,
    ))
    .await;
    let client = ServiceClient::new(view(port, &["stock", "identity"]))
        .with_credentials(bazaar_kit::client::Credentials {
            client_id: "orders".into(),
            client_secret: "secret".into(),
        })
        .with_max_queue_wait(Duration::from_secs(60))
        .with_timeout(Duration::from_secs(60));

    // The slow call goes alone with the first token (t1); the echo calls queue behind it and
    // leave as one batch, still with t1, when it returns.
    let stuck = spawn_call(&client, Method::GET, "/internal/v1/slow", None);
    until("the first token is issued", || {
        issued.load(Ordering::SeqCst) == 1
    })
    .await;
    let queued: Vec<_> = (0..3)
        .map(|n| {
            spawn_call(
                &client,
                Method::POST,
                "/internal/v1/echo",
                Some(json!({"n": n})),
            )
        })
        .collect();
    until("three calls wait", || client.waiting("stock") == 3).await;
    slow.add_permits(1);
    assert_eq!(
        stuck.await.expect("task").expect("answered").status(),
        StatusCode::OK
    );
    for (n, call) in queued.into_iter().enumerate() {
        let response = call
            .await
            .expect("task")
            .expect("answered after a fresh token");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body, json!({"n": n}));
    }
    assert!(
        issued.load(Ordering::SeqCst) >= 2,
        "fresh tokens were fetched for the calls sent again"
    );
}
