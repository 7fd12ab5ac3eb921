//! Forwarding a request along its route: refuse `/internal` paths, admit the caller under the
//! route's policy and limits (`authorize`), pick an instance with the balancer, send the
//! buffered request with the caller's identity (request id, trace, `X-Forwarded-*`,
//! `x-bazaar-*`), retry on another instance where that is safe, and stream the answer back.
//!
//! Retry policy, and why:
//! - a refused (or timed-out) *connect* is retried on another instance for every method: the
//!   request never left the gateway, so nothing can have happened twice;
//! - any other transport failure (a connection reset mid-request) is retried only for idempotent
//!   methods (GET, HEAD, PUT, DELETE, OPTIONS), since the upstream may have acted on it;
//! - a 5xx answer or a timeout is not retried: the upstream did receive the request, and a
//!   timeout has used the route's whole time budget anyway.
//!
//! Every attempt reports its outcome to the balancer, which ejects failing instances; when the
//! candidates have all failed and are ejected the answer is a 503, not a 502, because the client
//! should retry later rather than conclude the request itself is bad.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use bazaar_kit::context::{self, RequestContext};
use bazaar_kit::ApiError;
use bytes::Bytes;
use http_body_util::Full;
use tokio::time::Instant;

use crate::authorize::{self, Admission};
use crate::error;
use crate::headers;
use crate::metrics::Outcome;
use crate::routes::Route;
use crate::state::Gateway;

/// Most instances tried for one request.
const MAX_ATTEMPTS: usize = 3;

/// The handler behind every configured route prefix.
pub async fn proxy(State(gateway): State<Gateway>, request: Request) -> Response {
    let routes = gateway.routes.clone();
    let path = request.uri().path();
    let route = routes.resolve(path).filter(|route| {
        // The services' private surface, however the path is spelled and wherever a rewrite
        // would send it, is not there from outside.
        !crate::routes::is_internal(path) && !crate::routes::is_internal(&route.forward_path(path))
    });
    let Some(route) = route else {
        return bazaar_kit::problem::not_found_fallback(request.uri().clone())
            .await
            .into_response();
    };
    let (parts, body) = request.into_parts();
    let browser = error::wants_html(&parts.method, &parts.headers);
    let policy = route.policy_for(&parts.method);
    let admitted = if has_dot_segment(parts.uri.path()) {
        Err(error::invalid_path())
    } else {
        authorize::admit(&gateway.security, policy, &parts).await
    };
    let response = match admitted {
        Ok(admission) => {
            let extra = admission.response.clone();
            let mut response = match forward(&gateway, route, parts, body, admission).await {
                Ok(response) => response,
                // The upstream is down or silent: a person gets a page, a program a problem.
                Err(failed) if browser => error::as_html_page(failed),
                Err(failed) => failed.into_response(),
            };
            for (name, value) in extra {
                response.headers_mut().insert(name, value);
            }
            response
        }
        Err(refused) => refused.into_response(),
    };
    gateway
        .metrics
        .request(&route.prefix, response.status().as_u16());
    response
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
    )
}

/// Whether the path has `.` or `..` segments (also percent-encoded), which an upstream could
/// resolve to a path outside the route's prefix.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        let segment = segment.to_ascii_lowercase().replace("%2e", ".");
        segment == "." || segment == ".."
    })
}

async fn forward(
    gateway: &Gateway,
    route: &Route,
    parts: http::request::Parts,
    body: Body,
    admission: Admission,
) -> Result<Response, ApiError> {
    let path = parts.uri.path().to_owned();
    let body = crate::body::buffer(body, &parts.headers, gateway.max_body_bytes).await?;

    let mut headers = parts.headers;
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    headers::prepare_request(&mut headers, peer);
    headers::strip_identity(&mut headers);
    for (name, value) in admission.upstream {
        headers.insert(name, value);
    }
    let request_context = parts
        .extensions
        .get::<RequestContext>()
        .cloned()
        .or_else(context::current);
    if let Some(request_context) = request_context {
        request_context.inject(&mut headers);
    }
    let forward_path = route.forward_path(&path);
    let path_and_query = match parts.uri.query() {
        Some(query) => format!("{forward_path}?{query}"),
        None => forward_path,
    };

    let attempt = Attempt {
        gateway,
        route,
        method: parts.method,
        path_and_query,
        headers,
        body,
    };
    attempt.run().await
}

/// One request to forward, possibly several times.
struct Attempt<'a> {
    gateway: &'a Gateway,
    route: &'a Route,
    method: Method,
    path_and_query: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Attempt<'_> {
    async fn run(self) -> Result<Response, ApiError> {
        let gateway = self.gateway;
        let target = self.route.target.name();
        let instances = self.route.instances(&gateway.discovery);
        if instances.is_empty() {
            return Err(error::no_healthy_upstream(target));
        }
        // One budget for all attempts: retries must not stretch the route's timeout.
        let deadline = Instant::now() + self.route.timeout;
        let mut tried: Vec<String> = Vec::new();
        let mut last_error = None;
        while tried.len() < MAX_ATTEMPTS {
            let Some(endpoint) = gateway.balancer.pick(&instances, &tried) else {
                break;
            };
            let instance_id = endpoint.instance.id.clone();
            tried.push(instance_id.clone());
            let request = self.build(&endpoint.instance.address, target)?;
            let started = Instant::now();
            let sent = tokio::time::timeout_at(deadline, gateway.client.request(request)).await;
            let seconds = started.elapsed().as_secs_f64();
            let record = |outcome| {
                gateway
                    .metrics
                    .attempt(target, &instance_id, outcome, seconds)
            };
            match sent {
                Err(_elapsed) => {
                    endpoint.in_flight.failure();
                    record(Outcome::Timeout);
                    tracing::warn!(upstream = target, instance = %instance_id, "upstream timed out");
                    return Err(error::upstream_timeout(
                        target,
                        self.route.timeout.as_millis(),
                    ));
                }
                Ok(Ok(response)) => {
                    if response.status().is_server_error() {
                        endpoint.in_flight.failure();
                        record(Outcome::ServerError);
                    } else {
                        endpoint.in_flight.success();
                        record(Outcome::Success);
                    }
                    return Ok(relay(response));
                }
                Ok(Err(cause)) if cause.is_connect() => {
                    endpoint.in_flight.connect_failure();
                    record(Outcome::ConnectError);
                    tracing::warn!(upstream = target, instance = %instance_id, error = %cause, "upstream connect failed");
                    last_error = Some(error::upstream_unreachable(target));
                }
                Ok(Err(cause)) => {
                    endpoint.in_flight.failure();
                    record(Outcome::Error);
                    tracing::warn!(upstream = target, instance = %instance_id, error = %cause, "upstream request failed");
                    if !is_idempotent(&self.method) {
                        return Err(error::upstream_unreachable(target));
                    }
                    last_error = Some(error::upstream_unreachable(target));
                }
            }
        }
        let all_ejected = instances
            .iter()
            .all(|instance| gateway.balancer.is_ejected(&instance.id));
        match last_error {
            Some(unreachable) if !all_ejected => Err(unreachable),
            _ => Err(error::no_healthy_upstream(target)),
        }
    }

    fn build(&self, address: &str, target: &str) -> Result<hyper::Request<Full<Bytes>>, ApiError> {
        let uri: Uri = format!("{}{}", address.trim_end_matches('/'), self.path_and_query)
            .parse()
            .map_err(|_| error::bad_upstream_address(target))?;
        let mut request = hyper::Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = self.headers.clone();
        Ok(request)
    }
}

/// The upstream's answer, minus hop-by-hop headers, its body streamed through.
fn relay(response: hyper::Response<hyper::body::Incoming>) -> Response {
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Body::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_detected_even_when_encoded() {
        assert!(has_dot_segment("/api/v1/registry/../admin"));
        assert!(has_dot_segment("/api/v1/registry/%2E%2e/admin"));
        assert!(has_dot_segment("/api/./x"));
        assert!(!has_dot_segment("/api/v1/products/a..b"));
        assert!(!has_dot_segment("/static/app.3fa9c2d1e0.js"));
    }
}
