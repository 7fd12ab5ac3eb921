//! The service kit's promises, checked on a real router: problem documents for every kind of
//! bad input, request context in and out, metrics, readiness, and a real server on port 0.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use bazaar_kit::config::CommonConfig;
use bazaar_kit::extract::{Json, Query};
use bazaar_kit::server::Service;
use http_body_util::BodyExt;
use serde::Deserialize;
use tower::ServiceExt;

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Item {
    name: String,
    price: Price,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Price {
    amount_minor: i64,
    currency: String,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Paging {
    page: Option<u32>,
}

fn service() -> Service {
    let router = Router::new()
        .route(
            "/items",
            post(|Json(item): Json<Item>| async move { item.name }),
        )
        .route(
            "/items",
            get(|Query(p): Query<Paging>| async move { format!("{:?}", p.page) }),
        )
        .route(
            "/boom",
            get(|| async {
                Err::<(), _>(bazaar_kit::ApiError::internal("secret db password in here"))
            }),
        );
    let mut common = CommonConfig::defaults("kit-test", 0);
    common.registry_url = String::new();
    common.max_body_bytes = 1024;
    Service::new(common, router)
}

async fn call(request: Request<Body>) -> (StatusCode, HeaderMap, serde_json::Value) {
    let response = service().app().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, headers, json)
}

fn post_json(body: &str) -> Request<Body> {
    Request::post("/items")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .expect("request")
}

fn assert_problem(headers: &HeaderMap, body: &serde_json::Value, code: &str) {
    assert_eq!(
        headers[header::CONTENT_TYPE],
        "application/problem+json",
        "{body}"
    );
    assert_eq!(body["code"], code, "{body}");
    assert!(body["type"].as_str().unwrap_or_default().ends_with(code));
    assert!(
        body["request_id"].is_string(),
        "problems carry the request id"
    );
}

#[tokio::test]
async fn bad_input_gets_problem_documents_naming_the_field() {
    let (status, headers, body) = call(post_json("{not json")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_problem(&headers, &body, "malformed_json");

    let (status, headers, body) = call(post_json(
        r#"{"name":"x","price":{"amount_minor":"ten","currency":"USD"}}"#,
    ))
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_problem(&headers, &body, "validation_failed");
    assert_eq!(body["field"], "price.amount_minor");

    let (status, _, body) = call(post_json(r#"{"name":"x"}"#)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["field"], "price", "a missing field is named: {body}");

    let (status, headers, body) = call(
        Request::post("/items")
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from("hi"))
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_problem(&headers, &body, "unsupported_media_type");

    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(4096));
    let (status, headers, body) = call(post_json(&big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_problem(&headers, &body, "payload_too_large");

    let (status, headers, body) = call(
        Request::get("/items?page=minus-one")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_problem(&headers, &body, "invalid_query");
    assert_eq!(body["field"], "page");

    let (status, headers, body) = call(
        Request::get("/nowhere")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_problem(&headers, &body, "route_not_found");

    let (status, headers, body) = call(
        Request::delete("/items")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_problem(&headers, &body, "method_not_allowed");
}

#[tokio::test]
async fn internal_errors_leak_nothing() {
    let (status, headers, body) =
        call(Request::get("/boom").body(Body::empty()).expect("request")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_problem(&headers, &body, "internal");
    assert!(!body.to_string().contains("password"), "{body}");
}

#[tokio::test]
async fn request_id_and_traceparent_are_continued_and_returned() {
    let (_, headers, _) = call(
        Request::get("/items")
            .header("x-request-id", "req-42")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(headers["x-request-id"], "req-42");
    let traceparent = headers["traceparent"].to_str().expect("ascii");
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{traceparent}"
    );

    let (_, headers, _) = call(Request::get("/items").body(Body::empty()).expect("request")).await;
    assert!(!headers["x-request-id"].is_empty(), "created when absent");
    assert!(bazaar_kit::context::parse_traceparent(
        headers["traceparent"].to_str().expect("ascii")
    )
    .is_some());
}

#[tokio::test]
async fn metrics_count_requests_per_route_and_health_answers() {
    let service = service();
    let app = service.app();
    for _ in 0..3 {
        let response = app
            .clone()
            .oneshot(
                Request::get("/items?page=2")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = app
        .clone()
        .oneshot(
            Request::get("/metrics")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec(),
    )
    .expect("utf8");
    assert!(
        text.contains(r#"bazaar_http_requests_total{route="/items",method="GET",status="200"} 3"#),
        "{text}"
    );
    assert!(
        text.contains("bazaar_http_request_duration_seconds_bucket"),
        "{text}"
    );

    for path in ["/healthz", "/readyz"] {
        let response = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn readiness_fails_with_the_failing_check_named() {
    let service = service().ready_when("database", || async {
        Err("database unreachable".to_owned())
    });
    let response = service
        .app()
        .oneshot(
            Request::get("/readyz")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = serde_json::from_slice(
        &response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes(),
    )
    .expect("json");
    assert_eq!(body["checks"]["database"], "database unreachable");
}

#[tokio::test]
async fn runs_on_port_zero_and_stops_gracefully() {
    let service = service();
    let listener = service.bind().await.expect("bind port 0");
    let port = listener.local_addr().expect("addr").port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(service.run(listener, async move {
        let _ = stop_rx.await;
    }));
    let body = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .expect("served")
        .text()
        .await
        .expect("body");
    assert!(body.contains("alive"));
    stop_tx.send(()).expect("server waiting");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("stops promptly")
        .expect("task")
        .expect("clean exit");
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn binding_a_taken_port_names_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let error = bazaar_kit::server::bind("127.0.0.1", port)
        .await
        .expect_err("taken");
    assert!(error.to_string().contains(&port.to_string()), "{error}");
    assert!(error.to_string().contains("already in use"), "{error}");
}

/// Sends raw bytes to a fresh server and returns the status line it answers with.
async fn raw_status_line(request: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let service = service();
    let listener = service.bind().await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(service.run(listener, async move {
        let _ = stop_rx.await;
    }));
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.write_all(&request).await.expect("write");
    let mut answer = vec![0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    let _ = stop_tx.send(());
    let _ = server.await;
    String::from_utf8_lossy(&answer[..read])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn header_limits_are_enforced_by_the_server() {
    let mut many = String::from("GET /healthz HTTP/1.1\r\nhost: x\r\n");
    for i in 0..(bazaar_kit::server::MAX_HEADERS + 20) {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let status = raw_status_line(many.into_bytes()).await;
    assert!(
        status.starts_with("HTTP/1.1 431"),
        "too many headers: {status}"
    );

    let huge = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(bazaar_kit::server::MAX_HEADER_BYTES + 1024)
    );
    let status = raw_status_line(huge.into_bytes()).await;
    assert!(
        status.starts_with("HTTP/1.1 431"),
        "oversized head: {status}"
    );

    let fine = raw_status_line(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n".to_vec()).await;
    assert!(fine.starts_with("HTTP/1.1 200"), "{fine}");
}
