//! `GET /`: a small landing page pointing at what the gateway offers, until a storefront takes
//! the root over (a route with prefix `/` replaces it).

use axum::http::HeaderMap;
use axum::response::Response;

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>bazaar</title>
  <link rel="icon" href="/favicon.ico" type="image/svg+xml">
  <style>
    body { font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem; line-height: 1.5; color: #222; }
    h1 { margin-bottom: 0.25rem; }
    p.lead { color: #555; margin-top: 0; }
    ul { padding-left: 1.25rem; }
    code { background: #f3f3f3; padding: 0 0.25rem; border-radius: 3px; }
  </style>
</head>
<body>
  <main>
    <h1>bazaar</h1>
    <p class="lead">A microservices shop. This is its API gateway; the storefront is coming.</p>
    <ul>
      <li><a href="/api/docs">API documentation</a> (<a href="/api/openapi.json">OpenAPI document</a>)</li>
      <li><a href="/api/v1/products">Products</a>: <code>GET /api/v1/products</code></li>
      <li><a href="/api/v1/categories">Categories</a>: <code>GET /api/v1/categories</code></li>
      <li><a href="/healthz">Health</a> and <a href="/readyz">readiness</a></li>
    </ul>
  </main>
</body>
</html>
"#;

/// The landing page, with an ETag so a reload costs a 304.
#[utoipa::path(get, path = "/", tag = "gateway",
    responses((status = 200, description = "HTML landing page", content_type = "text/html")))]
pub async fn landing(headers: HeaderMap) -> Response {
    bazaar_kit::etag::respond(
        &headers,
        "text/html; charset=utf-8",
        "no-cache",
        PAGE.as_bytes().to_vec(),
    )
}
