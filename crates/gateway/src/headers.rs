//! Header rewriting at the proxy boundary (RFC 9110 §7.6): hop-by-hop headers describe one
//! connection and must not travel on to the next one, and the upstream is told who the original
//! client was through the de-facto `X-Forwarded-*` headers.

use std::net::SocketAddr;

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that only concern a single connection.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The API key a client sends; checked here, never forwarded.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
/// Identity the gateway vouches for. Only the gateway sets `x-bazaar-*` headers.
pub const X_BAZAAR_SUBJECT: HeaderName = HeaderName::from_static("x-bazaar-subject");
pub const X_BAZAAR_CLIENT_ID: HeaderName = HeaderName::from_static("x-bazaar-client-id");
pub const X_BAZAAR_ROLES: HeaderName = HeaderName::from_static("x-bazaar-roles");
pub const X_BAZAAR_API_KEY_ID: HeaderName = HeaderName::from_static("x-bazaar-api-key-id");
pub const X_BAZAAR_PLAN: HeaderName = HeaderName::from_static("x-bazaar-plan");

/// Removes every `x-bazaar-*` header a client sent (so none can pose as a vouched identity)
/// and the API key.
pub fn strip_identity(headers: &mut HeaderMap) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-bazaar-"))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
    headers.remove(X_API_KEY);
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    // Any other `Proxy-*` header (e.g. `Proxy-Connection` from old clients) is hop-by-hop too.
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

/// Prepares the headers of a request to forward: drops hop-by-hop headers and those the
/// outgoing connection sets itself, and adds the `X-Forwarded-*` trio.
pub fn prepare_request(headers: &mut HeaderMap, peer: Option<SocketAddr>) {
    strip_hop_by_hop(headers);
    let original_host = headers.remove(header::HOST);
    // The body is re-sent in full, so its length is recomputed and nothing needs to "continue".
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::EXPECT);

    if let Some(peer) = peer {
        let ip = peer.ip().to_string();
        // Append to an existing chain, as each proxy on the way does.
        let chain = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(existing) if !existing.trim().is_empty() => format!("{existing}, {ip}"),
            _ => ip,
        };
        if let Ok(value) = HeaderValue::from_str(&chain) {
            headers.insert(X_FORWARDED_FOR, value);
        }
    }
    // A TLS terminator in front of the gateway sets these for the real client; keep them then.
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if let Some(host) = original_host {
        if !headers.contains_key(X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST, host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_adds_forwarded_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::HOST, HeaderValue::from_static("shop.example"));
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        prepare_request(&mut headers, Some("10.0.0.7:5555".parse().expect("addr")));
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "host",
        ] {
            assert!(!headers.contains_key(gone), "{gone} should be stripped");
        }
        assert_eq!(headers[X_FORWARDED_FOR], "203.0.113.9, 10.0.0.7");
        assert_eq!(headers[X_FORWARDED_PROTO], "http");
        assert_eq!(headers[X_FORWARDED_HOST], "shop.example");
        assert_eq!(headers[header::ACCEPT], "application/json");
    }
}
