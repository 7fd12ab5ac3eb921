//! Entity tags: strong ETags from content hashes, and `If-None-Match` evaluation (RFC 9110
//! weak comparison), so reads can be answered with 304 Not Modified.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// A strong ETag (quoted) for `bytes`.
pub fn etag_for(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    format!("\"{}\"", hex::encode(&digest[..16]))
}

/// Whether `If-None-Match` in `headers` matches `etag`.
pub fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let wanted = bare(etag);
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|candidate| candidate.trim() == "*" || bare(candidate) == wanted)
}

/// Answers `body` with its ETag, or 304 when the client already has it.
pub fn respond(
    headers: &HeaderMap,
    content_type: &'static str,
    cache_control: &'static str,
    body: Vec<u8>,
) -> Response {
    let etag = etag_for(&body);
    let etag_value = HeaderValue::from_str(&etag).expect("hex etag is a valid header");
    let common = [
        (header::ETAG, etag_value),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static(cache_control),
        ),
    ];
    if if_none_match(headers, &etag) {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

/// Serializes `value` as JSON and answers it with an ETag (304 on match).
pub fn json<T: serde::Serialize>(headers: &HeaderMap, value: &T) -> Response {
    let body = serde_json::to_vec(value).expect("response types serialize");
    respond(headers, "application/json", "no-cache", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_strong_weak_lists_and_star() {
        let etag = etag_for(b"hello");
        let mut headers = HeaderMap::new();
        assert!(!if_none_match(&headers, &etag));
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&etag).unwrap());
        assert!(if_none_match(&headers, &etag));
        let listed = format!("\"other\", W/{etag}");
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&listed).unwrap(),
        );
        assert!(if_none_match(&headers, &etag));
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"nope\""));
        assert!(!if_none_match(&headers, &etag));
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(if_none_match(&headers, &etag));
    }
}
