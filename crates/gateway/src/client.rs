//! The HTTP client that forwards to upstreams: hyper-util's pooled legacy client over a plain
//! `HttpConnector`.
//!
//! The connect timeout is short on purpose: on a LAN a healthy instance accepts within
//! milliseconds, so a slow connect means a dead or overloaded host, and failing fast lets the
//! proxy retry elsewhere well within the route's timeout. Connections are kept alive and pooled
//! per instance so a proxied request normally costs no handshake at all; an idle connection is
//! dropped after a few seconds, before a server's own idle limits would close it under a request
//! (the one failure a retry cannot always cover, for non-idempotent methods).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// How long establishing a TCP connection to an upstream may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Bodies are buffered before forwarding (so a request can be retried), hence `Full`.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A new pooled client.
pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(32)
        .build(connector)
}
