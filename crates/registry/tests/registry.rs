//! The registry against real services: registration from the kit's `Service::run`, readiness
//! through heartbeats, deregistration on shutdown, expiry without heartbeats, re-registration
//! after a registry restart, the watch, and bad input.

use std::time::{Duration, Instant};

use axum::Router;
use bazaar_discovery::{Discovery, InstanceStatus, RegistryClient};
use bazaar_kit::config::CommonConfig;
use bazaar_kit::server::Service;
use tokio::sync::oneshot;

struct Running {
    port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

async fn start(service: Service, port: u16) -> Running {
    let listener = bazaar_kit::server::bind("127.0.0.1", port)
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(service.run(listener, async move {
        let _ = rx.await;
    }));
    Running {
        port,
        stop: Some(tx),
        task,
    }
}

async fn start_registry(port: u16, ttl_ms: u64) -> Running {
    let mut common = CommonConfig::defaults("registry", port);
    common.registry_url = String::new();
    let config = bazaar_registry::Config {
        instance_ttl_ms: ttl_ms,
        heartbeat_interval_ms: 100,
        max_watch_ms: 2_000,
    };
    start(
        bazaar_registry::build(common, config).await.expect("build"),
        port,
    )
    .await
}

async fn start_service(name: &str, registry: u16) -> Running {
    let mut common = CommonConfig::defaults(name, 0);
    common.registry_url = format!("http://127.0.0.1:{registry}");
    common.heartbeat_interval_ms = 100;
    start(Service::new(common, Router::new()), 0).await
}

/// Waits (bounded) until `condition` holds for the registry's snapshot.
async fn eventually(
    client: &RegistryClient,
    what: &str,
    condition: impl Fn(&bazaar_discovery::Snapshot) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut since = 0;
    let mut epoch = String::new();
    loop {
        let snapshot = client
            .watch(&epoch, since, Duration::from_millis(500))
            .await
            .unwrap_or_default();
        if condition(&snapshot) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        since = snapshot.version;
        epoch = snapshot.epoch;
        if epoch.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn a_service_registers_becomes_routable_and_deregisters_on_shutdown() {
    let registry = start_registry(0, 5_000).await;
    let client = RegistryClient::new(format!("http://127.0.0.1:{}", registry.port));
    let catalog = start_service("catalog", registry.port).await;
    let address = format!("http://127.0.0.1:{}", catalog.port);
    eventually(&client, "catalog is routable", |s| {
        s.routable("catalog").iter().any(|i| i.address == address)
    })
    .await;
    let instance = &client.snapshot().await.expect("snapshot").services["catalog"][0];
    assert_eq!(instance.status, InstanceStatus::Up);
    assert!(instance.metadata.contains_key("pid"));

    catalog.stop().await;
    eventually(&client, "catalog is gone", |s| {
        !s.services.contains_key("catalog")
    })
    .await;
    registry.stop().await;
}

#[tokio::test]
async fn an_instance_that_stops_heartbeating_expires() {
    let registry = start_registry(0, 300).await;
    let base = format!("http://127.0.0.1:{}", registry.port);
    let client = RegistryClient::new(&base);
    let accepted = client
        .register(&bazaar_discovery::Registration {
            service: "ghost".into(),
            address: "http://127.0.0.1:9".into(),
            version: "1".into(),
            metadata: Default::default(),
            instance_id: None,
        })
        .await
        .expect("register");
    assert_eq!(accepted.ttl_ms, 300);
    eventually(&client, "ghost expired", |s| {
        !s.services.contains_key("ghost")
    })
    .await;
    let error = client
        .heartbeat(&accepted.instance_id, &Default::default())
        .await
        .expect_err("expired instance is unknown");
    assert!(matches!(
        error,
        bazaar_discovery::RegistryError::UnknownInstance(_)
    ));
    registry.stop().await;
}

#[tokio::test]
async fn instances_re_register_after_a_registry_restart_and_watchers_follow() {
    let registry = start_registry(0, 5_000).await;
    let port = registry.port;
    let client = RegistryClient::new(format!("http://127.0.0.1:{port}"));
    let discovery = Discovery::start(client.clone());
    let catalog = start_service("catalog", port).await;
    eventually(&client, "catalog registered", |s| {
        !s.routable("catalog").is_empty()
    })
    .await;
    let before = client.snapshot().await.expect("snapshot");
    let id = before.services["catalog"][0].id.clone();

    registry.stop().await;
    let restarted = start_registry(port, 5_000).await;
    eventually(&client, "catalog re-registered", |s| {
        s.epoch != before.epoch && s.routable("catalog").iter().any(|i| i.id == id)
    })
    .await;

    let deadline = Instant::now() + Duration::from_secs(10);
    while discovery.snapshot().epoch == before.epoch || discovery.instances("catalog").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the discovery view follows the new registry"
        );
        let mut watcher = discovery.clone();
        let _ = tokio::time::timeout(Duration::from_millis(500), watcher.changed()).await;
    }
    assert_eq!(discovery.instances("catalog")[0].id, id, "same instance id");
    catalog.stop().await;
    restarted.stop().await;
}

#[tokio::test]
async fn watch_answers_at_once_on_change_and_waits_otherwise() {
    let registry = start_registry(0, 5_000).await;
    let client = RegistryClient::new(format!("http://127.0.0.1:{}", registry.port));
    let first = client.snapshot().await.expect("snapshot");
    let started = Instant::now();
    let same = client
        .watch(&first.epoch, first.version, Duration::from_millis(300))
        .await
        .expect("watch");
    assert_eq!(same.version, first.version);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "waited for a change"
    );

    let waiter = {
        let client = client.clone();
        let epoch = first.epoch.clone();
        tokio::spawn(async move {
            client
                .watch(&epoch, first.version, Duration::from_secs(10))
                .await
        })
    };
    let started = Instant::now();
    let _service = start_service("cart", registry.port).await;
    let changed = waiter.await.expect("task").expect("watch");
    assert!(changed.version > first.version);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered on change, not at timeout"
    );
    registry.stop().await;
}

#[tokio::test]
async fn bad_registrations_are_refused_with_the_field_named() {
    let registry = start_registry(0, 5_000).await;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/api/v1/instances", registry.port);
    for (body, field) in [
        (
            r#"{"service":"Bad Name","address":"http://127.0.0.1:1","version":"1"}"#,
            "service",
        ),
        (
            r#"{"service":"ok","address":"ftp://x","version":"1"}"#,
            "address",
        ),
        (
            r#"{"service":"ok","address":"http://127.0.0.1:1"}"#,
            "version",
        ),
        (
            r#"{"service":"ok","address":"http://127.0.0.1:1","version":"1","instance_id":"a b"}"#,
            "instance_id",
        ),
    ] {
        let response = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 422, "{body}");
        let problem: serde_json::Value = response.json().await.expect("json");
        assert_eq!(problem["field"], field, "{problem}");
    }
    let response = http
        .put(format!(
            "http://127.0.0.1:{}/api/v1/instances/nope/heartbeat",
            registry.port
        ))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 404);
    let response = http
        .get(format!(
            "http://127.0.0.1:{}/api/v1/watch?since=abc",
            registry.port
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    registry.stop().await;
}
