//! Service-to-service HTTP calls: resolve a service name through the registry view, balance
//! across its instances, apply a timeout, retry on another instance only where that is safe
//! (idempotent methods, or a connection that was refused so nothing was sent), and carry the
//! current request id and `traceparent`. With credentials, every call carries a
//! client-credentials access token for the callee's audience, obtained from the `identity`
//! service and cached until shortly before it expires.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    #[error("cannot encode the request to {service}: {reason}")]
    Encode { service: String, reason: String },
    #[error("cannot obtain a token for {audience}: {reason}")]
    Token { audience: String, reason: String },
}

/// A request body, encoded once and resent as is on a retry.
struct Encoded {
    content_type: &'static str,
    bytes: Vec<u8>,
}

/// OAuth client credentials for service-to-service calls.
#[derive(Clone)]
pub struct Credentials {
    pub client_id: String,
    pub client_secret: String,
}

/// The service that issues tokens; calls to it carry none.
pub const IDENTITY_SERVICE: &str = "identity";

#[derive(Default)]
struct TokenCache {
    by_audience: Mutex<HashMap<String, (String, Instant)>>,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// A load-balanced client for calling other services by name. Cheap to clone.
#[derive(Clone)]
pub struct ServiceClient {
    discovery: Discovery,
    balancer: Balancer,
    http: reqwest::Client,
    timeout: Duration,
    attempts: usize,
    credentials: Option<Credentials>,
    tokens: Arc<TokenCache>,
}

impl ServiceClient {
    /// A client for a service with the credentials of its configuration.
    pub fn for_service(common: &crate::config::CommonConfig, discovery: Discovery) -> Self {
        Self::new(discovery).with_credentials(Credentials {
            client_id: common.client_id.clone(),
            client_secret: common.client_secret.expose().to_owned(),
        })
    }

    /// Sends a client-credentials token for the callee's audience on every call.
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// A token for `audience`, from the cache or freshly issued by the identity service.
    pub async fn token_for(&self, audience: &str) -> Result<Option<String>, CallError> {
        let Some(credentials) = &self.credentials else {
            return Ok(None);
        };
        if let Some((token, until)) = self
            .tokens
            .by_audience
            .lock()
            .expect("token cache lock")
            .get(audience)
        {
            if *until > Instant::now() {
                return Ok(Some(token.clone()));
            }
        }
        let failure = |reason: String| CallError::Token {
            audience: audience.to_owned(),
            reason,
        };
        let instances = self.discovery.instances(IDENTITY_SERVICE);
        let endpoint = self
            .balancer
            .pick(&instances, &[])
            .ok_or_else(|| failure("no identity instance".into()))?;
        let response = self
            .http
            .post(format!("{}/oauth2/token", endpoint.instance.address))
            .basic_auth(&credentials.client_id, Some(&credentials.client_secret))
            .form(&[
                ("grant_type", "client_credentials"),
                ("audience", audience),
                ("scope", "internal"),
            ])
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| failure(e.to_string()))?;
        if !response.status().is_success() {
            endpoint.in_flight.success();
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            return Err(failure(format!("{status}: {body}")));
        }
        endpoint.in_flight.success();
        let issued: TokenResponse = response.json().await.map_err(|e| failure(e.to_string()))?;
        // Renew a little before expiry so a token never dies in flight.
        let lifetime = Duration::from_secs(issued.expires_in.unwrap_or(60));
        let until = Instant::now() + lifetime.saturating_sub(Duration::from_secs(15));
        self.tokens
            .by_audience
            .lock()
            .expect("token cache lock")
            .insert(audience.to_owned(), (issued.access_token.clone(), until));
        Ok(Some(issued.access_token))
    }

    fn forget_token(&self, audience: &str) {
        self.tokens
            .by_audience
            .lock()
            .expect("token cache lock")
            .remove(audience);
    }

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
            credentials: None,
            tokens: Arc::default(),
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

    /// Sends a request; non-2xx answers become [`CallError::Status`]. A 401 with a cached token
    /// (the callee saw a rotation or a revocation) is retried once with a fresh token.
    pub async fn send<B: Serialize>(
        &self,
        service: &str,
        method: Method,
        path: &str,
        body: Option<&B>,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, CallError> {
        let body = match body {
            Some(body) => Some(Encoded {
                content_type: "application/json",
                bytes: serde_json::to_vec(body).map_err(|e| CallError::Encode {
                    service: service.to_owned(),
                    reason: e.to_string(),
                })?,
            }),
            None => None,
        };
        self.send_encoded(service, method, path, body, headers)
            .await
    }

    /// `POST`s an `application/x-www-form-urlencoded` form (what OAuth endpoints take), with the
    /// same resolution, balancing and error mapping as [`ServiceClient::send`].
    pub async fn post_form(
        &self,
        service: &str,
        path: &str,
        form: &[(&str, &str)],
        headers: HeaderMap,
    ) -> Result<reqwest::Response, CallError> {
        let bytes = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish()
            .into_bytes();
        let body = Some(Encoded {
            content_type: "application/x-www-form-urlencoded",
            bytes,
        });
        self.send_encoded(service, Method::POST, path, body, headers)
            .await
    }

    async fn send_encoded(
        &self,
        service: &str,
        method: Method,
        path: &str,
        body: Option<Encoded>,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, CallError> {
        let body = body.as_ref();
        let first = self
            .send_once(service, method.clone(), path, body, headers.clone())
            .await;
        match first {
            Err(CallError::Status { status: 401, .. })
                if self.credentials.is_some() && service != IDENTITY_SERVICE =>
            {
                self.forget_token(service);
                self.send_once(service, method, path, body, headers).await
            }
            other => other,
        }
    }

    async fn send_once(
        &self,
        service: &str,
        method: Method,
        path: &str,
        body: Option<&Encoded>,
        mut headers: HeaderMap,
    ) -> Result<reqwest::Response, CallError> {
        if service != IDENTITY_SERVICE {
            if let Some(token) = self.token_for(service).await? {
                if let Ok(value) =
                    reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                {
                    headers.insert(reqwest::header::AUTHORIZATION, value);
                }
            }
        }
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
                request = request
                    .header(reqwest::header::CONTENT_TYPE, body.content_type)
                    .body(body.bytes.clone());
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
