//! Serving a service: the common routes (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`)
//! and layers (request context, metrics, body limit, problem fallbacks) around a service's own
//! router, bound with a clear error, served with header limits, registered with the registry
//! while it runs, and shut down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::routing::{get, post};
use axum::Router;
use bazaar_discovery::{InstanceStatus, Registrar, Registration, RegistryClient};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::batch;
use crate::config::CommonConfig;
use crate::health::{self, Readiness};
use crate::metrics::{self, Metrics};
use crate::problem;

/// Largest request head (request line + headers) accepted, in bytes.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most headers accepted on one request.
pub const MAX_HEADERS: usize = 100;

/// A service ready to run: its router plus everything common.
pub struct Service {
    common: CommonConfig,
    router: Router,
    openapi: Option<utoipa::openapi::OpenApi>,
    readiness: Readiness,
    metrics: Metrics,
    metadata: Vec<(String, String)>,
    batches: bool,
}

impl Service {
    pub fn new(common: CommonConfig, router: Router) -> Self {
        Self {
            common,
            router,
            openapi: None,
            readiness: Readiness::default(),
            metrics: Metrics::new(),
            metadata: Vec::new(),
            batches: true,
        }
    }

    /// Leaves out the batch route ([`crate::batch`]): for a process that is not reached by
    /// internal calls (the gateway, which never routes `/internal`, or the outside card
    /// processor).
    pub fn without_batches(mut self) -> Self {
        self.batches = false;
        self
    }

    /// Publishes the service's OpenAPI document at `/openapi.json`.
    pub fn with_openapi(mut self, openapi: utoipa::openapi::OpenApi) -> Self {
        self.openapi = Some(openapi);
        self
    }

    /// Uses `metrics` (created earlier so handlers can record into it).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Adds a readiness check that also decides whether the registry routes to this instance.
    pub fn ready_when<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.readiness.add(name, true, check);
        self
    }

    /// Adds a label published with the registration.
    pub fn with_metadata(mut self, key: &str, value: impl Into<String>) -> Self {
        self.metadata.push((key.to_owned(), value.into()));
        self
    }

    pub fn common(&self) -> &CommonConfig {
        &self.common
    }

    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// The complete application, for in-process tests with `oneshot`.
    pub fn app(&self) -> Router {
        build_app(
            self.router.clone(),
            self.openapi.clone(),
            self.readiness.clone(),
            self.metrics.clone(),
            self.common.max_body_bytes,
            self.batches,
        )
    }

    /// Binds the configured address, with an error that names it.
    pub async fn bind(&self) -> anyhow::Result<TcpListener> {
        bind(&self.common.host, self.common.port).await
    }

    /// Serves on `listener` until `shutdown` resolves: registers, heartbeats, deregisters, then
    /// drains in-flight requests for up to the configured grace period.
    pub async fn run(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let local = listener.local_addr()?;
        let address = self.common.advertised_url(local.port());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

        let registrar = if self.common.registry_url.is_empty() {
            None
        } else {
            let mut registration = Registration {
                service: self.common.service.clone(),
                address: address.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                metadata: self.metadata.iter().cloned().collect(),
                instance_id: None,
            };
            registration
                .metadata
                .insert("pid".into(), std::process::id().to_string());
            let registrar =
                Registrar::new(RegistryClient::new(&self.common.registry_url), registration)
                    .with_heartbeat_interval(Duration::from_millis(
                        self.common.heartbeat_interval_ms,
                    ));
            let state = registrar.state();
            self.readiness.add("registry", false, move || {
                let registered = state.is_registered();
                async move {
                    if registered {
                        Ok(())
                    } else {
                        Err("not registered with the registry".to_owned())
                    }
                }
            });
            let readiness = self.readiness.clone();
            let mut stop = stop_rx.clone();
            Some(tokio::spawn(async move {
                registrar
                    .run(
                        move || {
                            let readiness = readiness.clone();
                            async move {
                                if readiness.report_for_registry().await.ready {
                                    InstanceStatus::Up
                                } else {
                                    InstanceStatus::NotReady
                                }
                            }
                        },
                        async move {
                            let _ = stop.wait_for(|stopped| *stopped).await;
                        },
                    )
                    .await;
            }))
        };

        let app = self.app();
        tracing::info!(service = %self.common.service, %address, "listening");
        let grace = Duration::from_millis(self.common.shutdown_grace_ms);
        // Deregister before draining: routers stop sending new requests here while the
        // listener still answers the ones in flight (and the registry can still reach itself).
        serve(
            listener,
            app,
            async move {
                shutdown.await;
                let _ = stop_tx.send(true);
                if let Some(task) = registrar {
                    let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
                }
            },
            grace,
        )
        .await?;
        tracing::info!(service = %self.common.service, "stopped");
        Ok(())
    }
}

/// Adds the common routes and layers to a service router, and with `batches` the batch route
/// ([`crate::batch`]) that dispatches its items through all of it.
pub fn build_app(
    router: Router,
    openapi: Option<utoipa::openapi::OpenApi>,
    readiness: Readiness,
    metrics: Metrics,
    max_body_bytes: usize,
    batches: bool,
) -> Router {
    let mut common = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz).with_state(readiness.clone()))
        .route(
            "/metrics",
            get(metrics::handler).with_state(metrics.clone()),
        );
    if let Some(mut document) = openapi {
        if batches {
            document.merge(batch::openapi());
        }
        let document = std::sync::Arc::new(document);
        common = common.route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move { axum::Json((*document).clone()) }
            }),
        );
    }
    let app = with_common_layers(
        router
            .merge(common)
            .fallback(problem::not_found_fallback)
            .method_not_allowed_fallback(problem::method_not_allowed_fallback),
        metrics.clone(),
        max_body_bytes,
    );
    if !batches {
        return app;
    }
    // The batch route is outside `app`, so an item can never be a batch.
    let (items, batch_metrics) = (app.clone(), metrics.clone());
    let batch = Router::new()
        .route(
            batch::BATCH_PATH,
            post(move |request| batch::handle(items.clone(), batch_metrics.clone(), request)),
        )
        .method_not_allowed_fallback(problem::method_not_allowed_fallback);
    with_common_layers(batch, metrics, max_body_bytes).merge(app)
}

/// The layers every request goes through: request context and access log, metrics, header and
/// body limits.
fn with_common_layers(router: Router, metrics: Metrics, max_body_bytes: usize) -> Router {
    router
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(header_limit))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::middleware,
        ))
        .layer(axum::middleware::from_fn(crate::context::middleware))
}

/// Refuses requests whose headers add up to more than [`MAX_HEADER_BYTES`] with 431. hyper's
/// read-buffer bound alone lets a head that arrives in one read through.
async fn header_limit(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let size: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > MAX_HEADER_BYTES {
        return axum::response::IntoResponse::into_response(
            problem::ApiError::new(
                http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                "Request headers too large",
            )
            .detail(format!(
                "request headers may add up to {MAX_HEADER_BYTES} bytes"
            )),
        );
    }
    next.run(request).await
}

/// Binds `host:port`, with an error naming the address (and saying when it is taken).
pub async fn bind(host: &str, port: u16) -> anyhow::Result<TcpListener> {
    let address = format!("{host}:{port}");
    TcpListener::bind(&address).await.map_err(|error| {
        if error.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "port {port} on {host} is already in use: stop whatever holds it or choose another port"
            )
        } else {
            anyhow::anyhow!("cannot listen on {address}: {error}")
        }
    })
}

/// Serves `app` over HTTP/1.1 with header limits until `shutdown`, then waits up to `grace` for
/// open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(MAX_HEADER_BYTES.max(8192))
        .max_headers(MAX_HEADERS)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(axum::body::Body::new);
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(peer));
            app.clone().oneshot(request)
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!("grace period over; closing remaining connections");
        }
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown requested");
}
