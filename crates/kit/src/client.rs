//! Service-to-service HTTP calls: resolve a service name through the registry view, balance
//! across its instances, apply a timeout, retry on another instance only where that is safe
//! (idempotent methods, or a connection that was refused so nothing was sent), and carry the
//! current request id and `traceparent`. With credentials, every call carries a
//! client-credentials access token for the callee's audience, obtained from the `identity`
//! service and cached until shortly before it expires.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bazaar_discovery::{Balancer, BalancerConfig, Discovery};
use http::Method;
use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::batch::{self, BatchItem, BatchRequest, BatchResponse, ItemResponse};
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
    /// The batch that carried a coalesced call failed in a way only the batch knows about (its
    /// connection broke, its answer was not a batch answer).
    #[error("the batch carrying the call to {service} failed: {reason}")]
    Batch { service: String, reason: String },
}

impl CallError {
    /// The same failure, for another call of the batch that met it.
    fn replicate(&self) -> CallError {
        match self {
            CallError::NoInstance(service) => CallError::NoInstance(service.clone()),
            CallError::Timeout { service } => CallError::Timeout {
                service: service.clone(),
            },
            CallError::Status {
                service,
                status,
                body,
            } => CallError::Status {
                service: service.clone(),
                status: *status,
                body: body.clone(),
            },
            CallError::Encode { service, reason } => CallError::Encode {
                service: service.clone(),
                reason: reason.clone(),
            },
            CallError::Token { audience, reason } => CallError::Token {
                audience: audience.clone(),
                reason: reason.clone(),
            },
            CallError::Batch { service, reason } => CallError::Batch {
                service: service.clone(),
                reason: reason.clone(),
            },
            CallError::Transport { service, source } | CallError::Decode { service, source } => {
                CallError::Batch {
                    service: service.clone(),
                    reason: source.to_string(),
                }
            }
        }
    }
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

/// Service tokens by audience, and who is fetching one.
#[derive(Default)]
struct TokenCache {
    by_audience: Mutex<HashMap<String, CachedToken>>,
    /// One lock per audience, held while a token for it is being fetched: callers that find
    /// no valid token wait for that one request instead of each sending their own (at a
    /// token's expiry under load, every call in flight would otherwise ask the identity
    /// service at once).
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

struct CachedToken {
    token: String,
    /// Renew from here on.
    until: Instant,
    /// When it was put in the cache: a refusal of a request sent before then says nothing
    /// about this token.
    cached_at: Instant,
}

impl TokenCache {
    fn valid(&self, audience: &str) -> Option<String> {
        let by_audience = self.by_audience.lock().expect("token cache lock");
        by_audience
            .get(audience)
            .filter(|cached| cached.until > Instant::now())
            .map(|cached| cached.token.clone())
    }

    fn fetch_lock(&self, audience: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.fetching
            .lock()
            .expect("token fetch locks")
            .entry(audience.to_owned())
            .or_default()
            .clone()
    }
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
    lanes: Arc<Lanes>,
    /// Requests to one service a coalescing caller keeps out at once before queueing.
    max_in_flight: usize,
    /// Longest a queued call waits for a request out to return.
    max_queue_wait: Duration,
}

/// Requests out at once to one service, per [`ServiceClient::send_coalesced`], by default: one,
/// so that any call made while another is out waits for it and leaves with the others in one
/// batch (measured against two in docs/performance.md).
pub const COALESCE_IN_FLIGHT: usize = 1;

/// Longest a coalesced call waits for the request out to return before it leaves anyway (with
/// whatever else waits): a slow request, such as a payment held by a slow card processor, must
/// not hold up every other call to that service.
pub const MAX_QUEUE_WAIT: Duration = Duration::from_millis(25);

/// The coalesced calls to each service: requests out, and calls waiting for one to return.
#[derive(Default)]
struct Lanes {
    by_service: Mutex<HashMap<String, Lane>>,
}

#[derive(Default)]
struct Lane {
    in_flight: usize,
    waiting: Vec<Waiting>,
}

/// A call queued for the next batch, and where its answer goes.
struct Waiting {
    item: BatchItem,
    done: oneshot::Sender<Result<reqwest::Response, CallError>>,
}

/// One of a lane's requests out: when dropped (answered, failed or abandoned), the calls
/// waiting in the lane leave as the next batch, or the lane has one request fewer out.
struct Turn {
    client: ServiceClient,
    service: String,
}

impl Lanes {
    /// Runs `f` on `service`'s lane, under the lock (never held across an await).
    fn with<R>(&self, service: &str, f: impl FnOnce(&mut Lane) -> R) -> R {
        let mut lanes = self
            .by_service
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(lanes.entry(service.to_owned()).or_default())
    }
}

impl Lane {
    /// The calls the next batch takes.
    fn next_batch(&mut self) -> Vec<Waiting> {
        let take = self.waiting.len().min(batch::MAX_ITEMS);
        self.waiting.drain(..take).collect()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let next = self.client.lanes.with(&self.service, |lane| {
            if lane.waiting.is_empty() {
                lane.in_flight = lane.in_flight.saturating_sub(1);
                None
            } else {
                Some(lane.next_batch())
            }
        });
        let Some(next) = next else {
            return;
        };
        // The turn passes to the batch, which gives it up in its turn.
        Turn {
            client: self.client.clone(),
            service: self.service.clone(),
        }
        .send_in_background(next);
    }
}

impl Turn {
    /// Sends `next` in the background under this turn, which ends with the delivery.
    fn send_in_background(self, next: Vec<Waiting>) {
        let turn = self;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    turn.client.deliver(&turn.service, next).await;
                    drop(turn);
                });
            }
            Err(_) => {
                // No runtime left (shutting down): the waiting calls hear so, and dropping the
                // turn passes it on to whatever queued meanwhile, or frees it.
                for waiting in next {
                    let _ = waiting.done.send(Err(CallError::Batch {
                        service: turn.service.clone(),
                        reason: "the client is shutting down".into(),
                    }));
                }
                drop(turn);
            }
        }
    }
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

    /// A token for `audience`, from the cache or freshly issued by the identity service (one
    /// request at a time per audience, whoever else needs one meanwhile).
    pub async fn token_for(&self, audience: &str) -> Result<Option<String>, CallError> {
        let Some(credentials) = &self.credentials else {
            return Ok(None);
        };
        if let Some(token) = self.tokens.valid(audience) {
            return Ok(Some(token));
        }
        let fetch_lock = self.tokens.fetch_lock(audience);
        let _fetching = fetch_lock.lock().await;
        // Whoever held the lock before may have fetched one.
        if let Some(token) = self.tokens.valid(audience) {
            return Ok(Some(token));
        }
        self.fetch_token(audience, credentials).await.map(Some)
    }

    /// Asks the identity service for a token for `audience` and caches it.
    async fn fetch_token(
        &self,
        audience: &str,
        credentials: &Credentials,
    ) -> Result<String, CallError> {
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
        let now = Instant::now();
        self.tokens
            .by_audience
            .lock()
            .expect("token cache lock")
            .insert(
                audience.to_owned(),
                CachedToken {
                    token: issued.access_token.clone(),
                    until: now + lifetime.saturating_sub(Duration::from_secs(15)),
                    cached_at: now,
                },
            );
        Ok(issued.access_token)
    }

    /// Drops the cached token for `audience` after a request sent at `sent_at` was refused
    /// with it, unless the token was cached after that (another caller, refused too, has
    /// already fetched a fresh one, which is kept).
    fn forget_token(&self, audience: &str, sent_at: Instant) {
        let mut by_audience = self.tokens.by_audience.lock().expect("token cache lock");
        if by_audience
            .get(audience)
            .is_some_and(|cached| cached.cached_at <= sent_at)
        {
            by_audience.remove(audience);
        }
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
            lanes: Arc::default(),
            max_in_flight: COALESCE_IN_FLIGHT,
            max_queue_wait: MAX_QUEUE_WAIT,
        }
    }

    /// How many requests to one service [`ServiceClient::send_coalesced`] keeps out before
    /// queueing calls for a batch (at least 1).
    pub fn with_coalescing(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight.max(1);
        self
    }

    /// How long a queued call waits for a request out to return before leaving anyway
    /// (default [`MAX_QUEUE_WAIT`]).
    pub fn with_max_queue_wait(mut self, wait: Duration) -> Self {
        self.max_queue_wait = wait;
        self
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

    /// Coalesced calls to `service` waiting for a batch now (a measure of the queue, for
    /// metrics and tests).
    pub fn waiting(&self, service: &str) -> usize {
        self.lanes.with(service, |lane| lane.waiting.len())
    }

    /// Sends an internal call that may share a request with others to the same service
    /// ([`crate::batch`]): on its own while fewer than [`COALESCE_IN_FLIGHT`] requests to
    /// `service` are out, otherwise in the batch that leaves when one of them returns, or after
    /// [`ServiceClient::with_max_queue_wait`] if none has by then (a slow request holds nobody
    /// up). The
    /// answer is the call's own, as [`ServiceClient::send`] would give it. Only for
    /// `/internal/` paths, and only for calls that are safe to repeat (idempotent by key): a
    /// batch that fails fails every call in it, and its caller may not know which were done.
    pub async fn send_coalesced<B: Serialize>(
        &self,
        service: &str,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<reqwest::Response, CallError> {
        if !path.starts_with("/internal/") {
            // Only internal routes can be batched: anything else goes on its own.
            return self
                .send(service, method, path, body, HeaderMap::new())
                .await;
        }
        let body = match body {
            Some(body) => {
                Some(
                    serde_json::value::to_raw_value(body).map_err(|e| CallError::Encode {
                        service: service.to_owned(),
                        reason: e.to_string(),
                    })?,
                )
            }
            None => None,
        };
        let mut headers = BTreeMap::new();
        if let Some(context) = context::current() {
            headers.insert(context::TRACEPARENT.to_owned(), context.traceparent());
            headers.insert(context::REQUEST_ID.to_owned(), context.request_id);
        }
        let item = BatchItem {
            method: method.to_string(),
            path: path.to_owned(),
            headers,
            body,
        };
        let queued = self.lanes.with(service, |lane| {
            if lane.in_flight < self.max_in_flight {
                lane.in_flight += 1;
                Err(item)
            } else {
                let (done, answer) = oneshot::channel();
                lane.waiting.push(Waiting { item, done });
                Ok(answer)
            }
        });
        match queued {
            Ok(mut answer) => {
                let answered = match tokio::time::timeout(self.max_queue_wait, &mut answer).await {
                    Ok(answered) => answered,
                    Err(_) => {
                        // The request out is slow (a slow or stuck callee, or an item of it that
                        // takes long): what waits leaves now in a request of its own instead
                        // of waiting for it.
                        self.flush(service);
                        answer.await
                    }
                };
                answered.unwrap_or_else(|_| {
                    Err(CallError::Batch {
                        service: service.to_owned(),
                        reason: "the batch was abandoned".into(),
                    })
                })
            }
            Err(item) => {
                let _turn = Turn {
                    client: self.clone(),
                    service: service.to_owned(),
                };
                self.send_item(service, item).await
            }
        }
    }

    /// Sends what waits in `service`'s lane now, as one more request out.
    fn flush(&self, service: &str) {
        let next = self.lanes.with(service, |lane| {
            if lane.waiting.is_empty() {
                return None;
            }
            lane.in_flight += 1;
            Some(lane.next_batch())
        });
        let Some(next) = next else {
            return;
        };
        Turn {
            client: self.clone(),
            service: service.to_owned(),
        }
        .send_in_background(next);
    }

    /// Sends one coalesced call on its own.
    async fn send_item(
        &self,
        service: &str,
        item: BatchItem,
    ) -> Result<reqwest::Response, CallError> {
        let method = Method::from_bytes(item.method.as_bytes()).unwrap_or(Method::POST);
        let mut headers = HeaderMap::new();
        for (name, value) in &item.headers {
            if let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                reqwest::header::HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        let body = item.body.map(|json| Encoded {
            content_type: "application/json",
            bytes: json.get().as_bytes().to_vec(),
        });
        self.send_encoded(service, method, &item.path, body, headers)
            .await
    }

    /// Sends the calls that waited, as one batch (or on its own, for a lone call), and answers
    /// each.
    async fn deliver(&self, service: &str, waiting: Vec<Waiting>) {
        if waiting.len() == 1 {
            let Some(Waiting { item, done }) = waiting.into_iter().next() else {
                return;
            };
            let _ = done.send(self.send_item(service, item).await);
            return;
        }
        let (items, answers): (Vec<_>, Vec<_>) =
            waiting.into_iter().map(|w| (w.item, w.done)).unzip();
        let batch = BatchRequest { requests: items };
        let mut headers = HeaderMap::new();
        let wait = self.timeout.saturating_sub(Duration::from_millis(500));
        if let Ok(value) = reqwest::header::HeaderValue::from_str(&wait.as_millis().to_string()) {
            headers.insert(batch::wait_header(), value);
        }
        let sent_at = Instant::now();
        let outcome = self
            .send(
                service,
                Method::POST,
                batch::BATCH_PATH,
                Some(&batch),
                headers,
            )
            .await;
        let answered = match outcome {
            Ok(response) => response
                .json::<BatchResponse>()
                .await
                .map_err(|e| CallError::Batch {
                    service: service.to_owned(),
                    reason: format!("undecodable batch answer: {e}"),
                })
                .and_then(|answer| {
                    if answer.responses.len() == answers.len() {
                        Ok(answer.responses)
                    } else {
                        Err(CallError::Batch {
                            service: service.to_owned(),
                            reason: format!(
                                "{} answers to {} requests",
                                answer.responses.len(),
                                answers.len()
                            ),
                        })
                    }
                }),
            Err(CallError::Status { status, .. }) if (400..500).contains(&status) => {
                // The batch itself was refused: a service from before batches (404, 405), or a
                // batch it will not take (too large, an item it cannot batch). A refusal of
                // the batch says nothing about each call, so each goes on its own and hears
                // its own answer.
                let singles = batch
                    .requests
                    .into_iter()
                    .map(|item| self.send_item(service, item));
                let outcomes = futures::future::join_all(singles).await;
                for (done, outcome) in answers.into_iter().zip(outcomes) {
                    let _ = done.send(outcome);
                }
                return;
            }
            Err(error) => Err(error),
        };
        match answered {
            Ok(responses) => {
                let stale_token = responses.iter().any(|response| response.status == 401);
                if stale_token {
                    // The batch itself needs no token, so only its items can say the cached
                    // one is stale (rotated keys, a revocation): as `send` does for a call
                    // alone, those calls are sent again once, on their own, with a fresh one.
                    self.forget_token(service, sent_at);
                }
                let mut again = Vec::new();
                for ((done, response), item) in
                    answers.into_iter().zip(responses).zip(batch.requests)
                {
                    if stale_token && response.status == 401 {
                        again.push(async move {
                            let _ = done.send(self.send_item(service, item).await);
                        });
                    } else {
                        let _ = done.send(item_outcome(service, response));
                    }
                }
                futures::future::join_all(again).await;
            }
            Err(error) => {
                for done in answers {
                    let _ = done.send(Err(error.replicate()));
                }
            }
        }
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
        let sent_at = Instant::now();
        let first = self
            .send_once(service, method.clone(), path, body, headers.clone())
            .await;
        match first {
            Err(CallError::Status { status: 401, .. })
                if self.credentials.is_some() && service != IDENTITY_SERVICE =>
            {
                self.forget_token(service, sent_at);
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

/// One item's answer from a batch, as [`ServiceClient::send`] would have given it alone.
fn item_outcome(service: &str, item: ItemResponse) -> Result<reqwest::Response, CallError> {
    let body = item.body_bytes();
    if !(200..300).contains(&item.status) {
        return Err(CallError::Status {
            service: service.to_owned(),
            status: item.status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    let mut response = http::Response::builder().status(item.status);
    if let Some(content_type) = &item.content_type {
        response = response.header(reqwest::header::CONTENT_TYPE, content_type);
    }
    response
        .body(body)
        .map(reqwest::Response::from)
        .map_err(|e| CallError::Batch {
            service: service.to_owned(),
            reason: format!("unusable item answer: {e}"),
        })
}
