//! Service-to-service HTTP calls: resolve a service name through the registry view, balance
//! across its instances, apply a timeout, retry on another instance only where that is safe
//! (idempotent methods, or a connection that was refused so nothing was sent), and carry the
//! current request id and `traceparent`.

use std::time::Duration;

use bazaar_discovery::{Balancer, BalancerConfig, Discovery};
use http::Method;
use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no healthy instance of {0}")]
    NoInstance(String),
    #[error("{service} timed out")]
    Timeout { service: String },
    #[error("{service} unreachable: {source}")]
    Transport {
        service: String,
        source: reqwest::Error,
    },
    #[error("{service} answered {status}: {body}")]
    Status {
        service: String,
        status: u16,
        body: String,
    },
    #[error("{service} answered with an undecodable body: {source}")]
    Decode {
        service: String,
        source: reqwest::Error,
    },
}

/// A load-balanced client for calling other services by name. Cheap to clone.
#[derive(Clone)]
pub struct ServiceClient {
    discovery: Discovery,
    balancer: Balancer,
    http: reqwest::Client,
    timeout: Duration,
    attempts: usize,
}

impl ServiceClient {
    pub fn new(discovery: Discovery) -> Self {
        Self {
            discovery,
            balancer: Balancer::new(BalancerConfig::default()),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_millis(500))
                .pool_max_idle_per_host(32)
                .build()
                .expect("reqwest client without TLS always builds"),
            timeout: Duration::from_secs(5),
            attempts: 3,
        }
    }

    /// Per-attempt timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// `GET` and decode JSON.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        service: &str,
        path: &str,
    ) -> Result<T, CallError> {
        let response = self
            .send::<()>(service, Method::GET, path, None, HeaderMap::new())
            .await?;
        response.json().await.map_err(|source| CallError::Decode {
            service: service.to_owned(),
            source,
        })
    }

    /// Sends a request; non-2xx answers become [`CallError::Status`].
    pub async fn send<B: Serialize>(
        &self,
        service: &str,
        method: Method,
        path: &str,
        body: Option<&B>,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, CallError> {
        let idempotent = matches!(
            method,
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
        );
        let mut tried: Vec<String> = Vec::new();
        let mut last_error = None;
        for _ in 0..self.attempts {
            let instances = self.discovery.instances(service);
            let Some(endpoint) = self.balancer.pick(&instances, &tried) else {
                break;
            };
            tried.push(endpoint.instance.id.clone());
            let mut request = self
                .http
                .request(
                    method.clone(),
                    format!("{}{}", endpoint.instance.address, path),
                )
                .timeout(self.timeout)
                .headers(headers.clone());
            if let Some(context) = context::current() {
                let mut propagated = HeaderMap::new();
                context.inject(&mut propagated);
                request = request.headers(propagated);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(response) if response.status().is_server_error() => {
                    endpoint.in_flight.failure();
                    let status = response.status().as_u16();
                    let body = response.text().await.unwrap_or_default();
                    last_error = Some(CallError::Status {
                        service: service.to_owned(),
                        status,
                        body,
                    });
                    if !idempotent {
                        break;
                    }
                }
                Ok(response) => {
                    endpoint.in_flight.success();
                    if response.status().is_success() {
                        return Ok(response);
                    }
                    let status = response.status().as_u16();
                    let body = response.text().await.unwrap_or_default();
                    return Err(CallError::Status {
                        service: service.to_owned(),
                        status,
                        body,
                    });
                }
                Err(error) if error.is_connect() => {
                    endpoint.in_flight.connect_failure();
                    last_error = Some(CallError::Transport {
                        service: service.to_owned(),
                        source: error,
                    });
                }
                Err(error) => {
                    endpoint.in_flight.failure();
                    last_error = Some(if error.is_timeout() {
                        CallError::Timeout {
                            service: service.to_owned(),
                        }
                    } else {
                        CallError::Transport {
                            service: service.to_owned(),
                            source: error,
                        }
                    });
                    if !idempotent {
                        break;
                    }
                }
            }
        }
        Err(last_error.unwrap_or_else(|| CallError::NoInstance(service.to_owned())))
    }
}
