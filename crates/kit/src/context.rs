//! Request context: a request id and a W3C `traceparent`, accepted from the caller or created,
//! logged on every line of the request's span, returned in the response, and carried on every
//! outgoing call made while handling the request (through a task-local).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub const REQUEST_ID: &str = "x-request-id";
pub const TRACEPARENT: &str = "traceparent";

/// Identity of the request being handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    pub request_id: String,
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// This hop's span id, 16 lowercase hex digits.
    pub span_id: String,
    /// Whether the trace is sampled (the `01` flag).
    pub sampled: bool,
}

tokio::task_local! {
    static CURRENT: RequestContext;
}

/// The context of the request this task is handling, if any.
pub fn current() -> Option<RequestContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `future` with `context` as the current request context.
pub async fn scope<F: std::future::Future>(context: RequestContext, future: F) -> F::Output {
    CURRENT.scope(context, future).await
}

fn random_hex(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes * 2);
    while out.len() < bytes * 2 {
        out.push_str(&format!("{:016x}", fastrand::u64(1..)));
    }
    out.truncate(bytes * 2);
    out
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

impl RequestContext {
    /// A fresh context with new ids (a new trace).
    pub fn new_root() -> Self {
        Self {
            request_id: uuid::Uuid::new_v4().to_string(),
            trace_id: random_hex(16),
            span_id: random_hex(8),
            sampled: true,
        }
    }

    /// Continues the caller's trace and request id when the headers carry valid ones.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut context = Self::new_root();
        if let Some(id) = headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()) {
            let id = id.trim();
            if !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
            {
                context.request_id = id.to_owned();
            }
        }
        if let Some((trace_id, sampled)) = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent)
        {
            context.trace_id = trace_id;
            context.sampled = sampled;
        }
        context
    }

    /// The `traceparent` to send on a call made from this hop.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{}",
            self.trace_id,
            self.span_id,
            if self.sampled { "01" } else { "00" }
        )
    }

    /// Adds `x-request-id` and `traceparent` to outgoing headers.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            headers.insert(REQUEST_ID, v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.traceparent()) {
            headers.insert(TRACEPARENT, v);
        }
    }
}

/// Parses `00-<trace-id>-<parent-id>-<flags>`; returns the trace id and the sampled flag.
pub fn parse_traceparent(value: &str) -> Option<(String, bool)> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let parent_id = parts.next()?;
    let flags = parts.next()?;
    let version_ok = version.len() == 2
        && version
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && version != "ff";
    if !version_ok || !is_hex(trace_id, 32) || !is_hex(parent_id, 16) || flags.len() != 2 {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id.to_owned(), flags & 1 == 1))
}

/// Middleware: establishes the context, runs the request inside its span, writes the access
/// log line and returns the ids in the response headers.
pub async fn middleware(mut request: Request, next: Next) -> Response {
    let context = RequestContext::from_headers(request.headers());
    request.extensions_mut().insert(context.clone());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let span = tracing::info_span!(
        "request",
        request_id = %context.request_id,
        trace_id = %context.trace_id,
    );
    let started = Instant::now();
    let mut response = scope(context.clone(), next.run(request).instrument(span.clone())).await;
    let status = response.status().as_u16();
    span.in_scope(|| {
        tracing::info!(
            target: "access",
            %method,
            path,
            route = route.as_deref().unwrap_or(""),
            status,
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request handled"
        )
    });
    context.inject(response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_valid_traceparent_and_rejects_garbage() {
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        let context = RequestContext::from_headers(&headers);
        assert_eq!(context.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.request_id, "abc-123");
        assert_ne!(context.span_id, "00f067aa0ba902b7", "a new span per hop");
        assert!(context
            .traceparent()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));

        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        headers.insert(REQUEST_ID, HeaderValue::from_static("has spaces in it"));
        assert_ne!(
            RequestContext::from_headers(&headers).request_id,
            "has spaces in it"
        );
    }
}
