//! The catalog's one integration-test binary.
//!
//! - `api_*`: handlers through the complete application (`Service::app()`, so the kit's
//!   fallbacks and layers are included) with `oneshot`, on a fresh SQLite file each.
//! - `storage_*`: the repository, each written once as an `async fn` over a database URL and
//!   run on SQLite always and on PostgreSQL when `BAZAAR_TEST_POSTGRES_URL` is set.
//!
//! Expectations about the seed are computed from the seed itself, so the data file can grow.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use bazaar_catalog::model::{Money, ProductFilter, ProductInput, Sort};
use bazaar_catalog::repository::RepoError;
use bazaar_catalog::{seed, Config, Repository};
use bazaar_kit::config::CommonConfig;
use bazaar_kit::storage::testing::{fresh_postgres_database, sqlite_url};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

// ---------------------------------------------------------------------------------------------
// helpers

struct TestApp {
    app: Router,
    _dir: tempfile::TempDir,
    issuer: bazaar_auth::testing::TestIssuer,
    /// The token writes carry (an admin's, unless a test changes it).
    token: Option<String>,
}

async fn spawn_app() -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut common = CommonConfig::defaults(bazaar_catalog::NAME, 0);
    common.data_dir = dir.path().to_owned();
    common.registry_url = String::new();
    let issuer = bazaar_auth::testing::TestIssuer::new();
    let service = bazaar_catalog::service(
        common,
        Config::default(),
        issuer.verifier(&["bazaar", "catalog"]),
    )
    .await
    .expect("service builds");
    let token = Some(issuer.admin("admin-1"));
    TestApp {
        app: service.app(),
        _dir: dir,
        issuer,
        token,
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl TestApp {
    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!("not JSON ({status}): {}", String::from_utf8_lossy(&bytes))
            })
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, uri: &str) -> Answer {
        self.send(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    async fn get_with(&self, uri: &str, name: header::HeaderName, value: &str) -> Answer {
        self.send(
            Request::get(uri)
                .header(name, value)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    async fn write(
        &self,
        method: Method,
        uri: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> Answer {
        self.write_raw(method, uri, body.to_string(), if_match)
            .await
    }

    async fn write_raw(
        &self,
        method: Method,
        uri: &str,
        body: String,
        if_match: Option<&str>,
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(tag) = if_match {
            request = request.header(header::IF_MATCH, tag);
        }
        self.send(request.body(Body::from(body)).unwrap()).await
    }

    async fn delete(&self, uri: &str, if_match: Option<&str>) -> Answer {
        let mut request = Request::delete(uri);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(tag) = if_match {
            request = request.header(header::IF_MATCH, tag);
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    /// Every product, through the API, in the given sort.
    async fn all(&self, sort: &str) -> Vec<Value> {
        let answer = self
            .get(&format!("/api/v1/products?per_page=100&sort={sort}"))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert!(
            answer.body["total"].as_u64().unwrap() <= 100,
            "fits one page"
        );
        answer.body["items"].as_array().unwrap().clone()
    }
}

fn etag(answer: &Answer) -> String {
    answer
        .headers
        .get(header::ETAG)
        .expect("ETag header")
        .to_str()
        .unwrap()
        .to_owned()
}

fn assert_problem(answer: &Answer, status: StatusCode, code: &str, field: Option<&str>) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(
        answer.headers.get(header::CONTENT_TYPE).unwrap(),
        "application/problem+json"
    );
    assert_eq!(answer.body["code"], code, "{}", answer.body);
    assert_eq!(answer.body["status"], status.as_u16());
    assert_eq!(answer.body["field"].as_str(), field, "{}", answer.body);
}

fn new_product() -> Value {
    json!({
        "sku": "TEST-0001",
        "name": "Test Teapot",
        "description": "A teapot made for tests.",
        "category": "kitchen",
        "price": {"amount_minor": 1999, "currency": "EUR"},
        "weight_grams": 800,
        "images": ["products/kit-0001.svg", "https://cdn.example.com/teapot.png", "products/not-compiled-in.svg"],
        "attributes": {"material": "stoneware"},
        "featured": false
    })
}

fn builtin_seed() -> seed::Seed {
    seed::builtin().expect("valid seed")
}

/// Seed products whose name, description or SKU contains `q`, case-insensitively.
fn seed_matches(q: &str) -> usize {
    let q = q.to_lowercase();
    builtin_seed()
        .products
        .iter()
        .filter(|p| {
            p.name.to_lowercase().contains(&q)
                || p.description.to_lowercase().contains(&q)
                || p.sku.to_lowercase().contains(&q)
        })
        .count()
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn names(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// API

#[tokio::test]
async fn api_seeded_listing_and_categories() {
    let app = spawn_app().await;
    let seed = builtin_seed();
    let answer = app.get("/api/v1/products").await;
    assert_eq!(answer.status, StatusCode::OK);
    let total = answer.body["total"].as_u64().unwrap();
    assert!(total >= 50, "seeded with at least 50 products: {total}");
    assert_eq!(total as usize, seed.products.len());
    assert_eq!(answer.body["page"], 1);
    assert_eq!(answer.body["per_page"], 20, "default page size");
    assert_eq!(answer.body["items"].as_array().unwrap().len(), 20);

    let product = &answer.body["items"][0];
    for field in [
        "id",
        "sku",
        "name",
        "description",
        "category",
        "created_at",
        "updated_at",
    ] {
        assert!(product[field].is_string(), "{field} in {product}");
    }
    assert!(product["price"]["amount_minor"].is_i64());
    assert_eq!(product["version"], 1);
    assert!(
        humantime::parse_rfc3339(product["created_at"].as_str().unwrap()).is_ok(),
        "RFC 3339 times"
    );
    let image = product["images"][0].as_str().unwrap();
    assert!(
        image.starts_with("/static/products/"),
        "hashed public URL: {image}"
    );

    let categories = app.get("/api/v1/categories").await;
    assert_eq!(categories.status, StatusCode::OK);
    let items = categories.body["items"].as_array().unwrap();
    assert!(items.len() >= 7, "{}", items.len());
    let slugs: Vec<&str> = items.iter().map(|c| c["slug"].as_str().unwrap()).collect();
    let seed_slugs: Vec<&str> = seed.categories.iter().map(|c| c.slug.as_str()).collect();
    assert_eq!(slugs, seed_slugs, "in seed order");
    let counted: i64 = items
        .iter()
        .map(|c| c["product_count"].as_i64().unwrap())
        .sum();
    assert_eq!(counted as u64, total, "counts add up");
    assert!(items
        .iter()
        .all(|c| c["name"].is_string() && c["description"].is_string()));
}

#[tokio::test]
async fn api_search_is_case_insensitive_over_name_description_and_sku() {
    let app = spawn_app().await;
    let seed = builtin_seed();
    let first = &seed.products[0];
    // A word from a name, shouted.
    let word = first.name.split_whitespace().last().unwrap().to_uppercase();
    let answer = app
        .get(&format!(
            "/api/v1/products?q={}&per_page=100",
            percent_encode(&word)
        ))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.body["total"].as_u64().unwrap() as usize,
        seed_matches(&word)
    );
    assert!(names(answer.body["items"].as_array().unwrap()).contains(&first.name));

    // By SKU, lowercased.
    let sku = first.sku.to_lowercase();
    let answer = app
        .get(&format!("/api/v1/products?q={}", percent_encode(&sku)))
        .await;
    assert_eq!(
        answer.body["total"].as_u64().unwrap() as usize,
        seed_matches(&sku)
    );
    assert!(answer.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["sku"] == first.sku.as_str()));

    // By a phrase only the description has.
    let phrase: String = first
        .description
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let answer = app
        .get(&format!("/api/v1/products?q={}", percent_encode(&phrase)))
        .await;
    assert_eq!(
        answer.body["total"].as_u64().unwrap() as usize,
        seed_matches(&phrase)
    );
    assert!(answer.body["total"].as_u64().unwrap() >= 1);

    // Wildcards are literal.
    for wildcard in ["%25", "_"] {
        let answer = app.get(&format!("/api/v1/products?q={wildcard}")).await;
        let literal = if wildcard == "%25" { "%" } else { "_" };
        assert_eq!(
            answer.body["total"].as_u64().unwrap() as usize,
            seed_matches(literal)
        );
    }
    let answer = app.get("/api/v1/products?q=zzzz-no-such-thing").await;
    assert_eq!(answer.body["total"], 0);
    assert_eq!(answer.body["total_pages"], 0);
    assert_eq!(answer.body["items"], json!([]));
}

#[tokio::test]
async fn api_category_and_featured_filters() {
    let app = spawn_app().await;
    let seed = builtin_seed();
    for category in &seed.categories {
        let answer = app
            .get(&format!(
                "/api/v1/products?category={}&per_page=100",
                category.slug
            ))
            .await;
        let expected = seed
            .products
            .iter()
            .filter(|p| p.category == category.slug)
            .count();
        assert_eq!(answer.body["total"].as_u64().unwrap() as usize, expected);
        assert!(answer.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["category"] == category.slug.as_str()));
    }
    let unknown = app.get("/api/v1/products?category=no-such-category").await;
    assert_eq!(
        unknown.status,
        StatusCode::OK,
        "an unknown category is not an error"
    );
    assert_eq!(unknown.body["total"], 0);

    let featured = app.get("/api/v1/products?featured=true&per_page=100").await;
    let expected = seed.products.iter().filter(|p| p.featured).count();
    assert_eq!(featured.body["total"].as_u64().unwrap() as usize, expected);
    assert!(featured.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["featured"] == true));
    let not_featured = app
        .get("/api/v1/products?featured=false&per_page=100")
        .await;
    assert_eq!(
        not_featured.body["total"].as_u64().unwrap() as usize,
        seed.products.len() - expected
    );
}

#[tokio::test]
async fn api_every_sort_orders_correctly() {
    let app = spawn_app().await;

    let by_name = names(&app.all("name").await);
    let mut expected = by_name.clone();
    expected.sort_by_key(|n| n.to_lowercase());
    assert_eq!(by_name, expected, "name: A to Z, case-insensitive");
    let default_order = app.get("/api/v1/products?per_page=100").await;
    assert_eq!(
        names(default_order.body["items"].as_array().unwrap()),
        by_name,
        "name is the default"
    );

    let by_name_desc = names(&app.all("-name").await);
    let mut reversed = by_name.clone();
    reversed.reverse();
    assert_eq!(by_name_desc, reversed, "-name: Z to A");

    let prices = |items: Vec<Value>| -> Vec<i64> {
        items
            .iter()
            .map(|p| p["price"]["amount_minor"].as_i64().unwrap())
            .collect()
    };
    let ascending = prices(app.all("price").await);
    assert!(
        ascending.windows(2).all(|w| w[0] <= w[1]),
        "price: {ascending:?}"
    );
    let descending = prices(app.all("-price").await);
    assert!(
        descending.windows(2).all(|w| w[0] >= w[1]),
        "-price: {descending:?}"
    );
    assert_ne!(ascending, descending);

    // Newest: a product created now comes first.
    let created = app
        .write(Method::POST, "/api/v1/products", &new_product(), None)
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let newest = app.get("/api/v1/products?sort=newest&per_page=3").await;
    assert_eq!(newest.body["items"][0]["id"], created.body["id"]);
    let times: Vec<String> = app
        .all("newest")
        .await
        .iter()
        .map(|p| p["created_at"].as_str().unwrap().to_owned())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
}

#[tokio::test]
async fn api_pagination_math() {
    let app = spawn_app().await;
    let everything: Vec<Value> = app.all("name").await;
    let total = everything.len() as u64;
    let per_page = 7u64;
    let first = app.get("/api/v1/products?per_page=7").await;
    assert_eq!(first.body["total"].as_u64().unwrap(), total);
    let pages = total.div_ceil(per_page);
    assert_eq!(first.body["total_pages"].as_u64().unwrap(), pages);

    let mut collected = Vec::new();
    for page in 1..=pages {
        let answer = app
            .get(&format!("/api/v1/products?per_page=7&page={page}"))
            .await;
        assert_eq!(answer.body["page"], page);
        assert_eq!(answer.body["per_page"], 7);
        let items = answer.body["items"].as_array().unwrap();
        let expected = if page < pages {
            per_page
        } else {
            total - per_page * (pages - 1)
        };
        assert_eq!(items.len() as u64, expected, "page {page}");
        collected.extend(items.iter().cloned());
    }
    assert_eq!(
        collected, everything,
        "the pages tile the listing with no gap or repeat"
    );

    let beyond = app
        .get(&format!("/api/v1/products?per_page=7&page={}", pages + 1))
        .await;
    assert_eq!(beyond.status, StatusCode::OK);
    assert_eq!(beyond.body["items"], json!([]));
    assert_eq!(beyond.body["total"].as_u64().unwrap(), total);

    let max = app.get("/api/v1/products?per_page=100").await;
    assert_eq!(max.status, StatusCode::OK, "the cap itself is allowed");
}

#[tokio::test]
async fn api_bad_query_parameters_are_400_naming_them() {
    let app = spawn_app().await;
    for (query, field) in [
        ("per_page=101", "per_page"),
        ("per_page=0", "per_page"),
        ("per_page=-3", "per_page"),
        ("page=0", "page"),
        ("page=abc", "page"),
        ("sort=cheapest", "sort"),
        ("featured=maybe", "featured"),
    ] {
        let answer = app.get(&format!("/api/v1/products?{query}")).await;
        assert_problem(
            &answer,
            StatusCode::BAD_REQUEST,
            "invalid_query",
            Some(field),
        );
    }
}

#[tokio::test]
async fn api_reads_answer_304_on_if_none_match() {
    let app = spawn_app().await;
    let listing = app.get("/api/v1/products").await;
    let id = listing.body["items"][0]["id"].as_str().unwrap().to_owned();
    for uri in [
        "/api/v1/products".to_owned(),
        "/api/v1/products?category=kitchen&sort=-price".to_owned(),
        "/api/v1/categories".to_owned(),
        format!("/api/v1/products/{id}"),
    ] {
        let first = app.get(&uri).await;
        assert_eq!(first.status, StatusCode::OK);
        let tag = etag(&first);
        let again = app.get_with(&uri, header::IF_NONE_MATCH, &tag).await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{uri}");
        assert_eq!(again.body, Value::Null);
        assert_eq!(etag(&again), tag);
        let other = app.get_with(&uri, header::IF_NONE_MATCH, "\"stale\"").await;
        assert_eq!(other.status, StatusCode::OK, "{uri}");
    }

    // A change gives a new tag.
    let uri = format!("/api/v1/products/{id}");
    let before = app.get(&uri).await;
    let mut body = before.body.clone();
    body["name"] = json!("Renamed");
    let updated = app.write(Method::PUT, &uri, &body, None).await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    let after = app
        .get_with(&uri, header::IF_NONE_MATCH, &etag(&before))
        .await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(after.body["name"], "Renamed");
}

#[tokio::test]
async fn api_create_read_update_delete_round_trip() {
    let app = spawn_app().await;
    let created = app
        .write(Method::POST, "/api/v1/products", &new_product(), None)
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let uuid = uuid::Uuid::parse_str(&id).expect("a UUID");
    assert_eq!(uuid.get_version_num(), 7, "UUID v7");
    let location = created
        .headers
        .get(header::LOCATION)
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(location, format!("/api/v1/products/{id}"));
    assert_eq!(created.body["version"], 1);
    assert_eq!(
        created.body["price"],
        json!({"amount_minor": 1999, "currency": "EUR"})
    );
    let images = created.body["images"].as_array().unwrap();
    assert_eq!(
        images[0].as_str(),
        bazaar_assets::assets()
            .url("products/kit-0001.svg")
            .as_deref(),
        "a logical path becomes its hashed URL"
    );
    assert_eq!(
        images[1], "https://cdn.example.com/teapot.png",
        "URLs are kept"
    );
    assert_eq!(
        images[2], "products/not-compiled-in.svg",
        "unknown paths are kept"
    );

    let read = app.get(location).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body, created.body);
    assert_eq!(
        etag(&read),
        etag(&created),
        "the write's ETag is the read's"
    );
    let listed = app.get("/api/v1/products?q=test%20teapot").await;
    assert_eq!(listed.body["total"], 1);

    // Replace with If-Match: the version number.
    let mut replacement = read.body.clone();
    replacement["name"] = json!("Test Teapot, Large");
    replacement["price"]["amount_minor"] = json!(2599);
    replacement["featured"] = json!(true);
    let updated = app
        .write(Method::PUT, location, &replacement, Some("1"))
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    assert_eq!(updated.body["version"], 2);
    assert_eq!(updated.body["name"], "Test Teapot, Large");
    assert_eq!(updated.body["created_at"], created.body["created_at"]);
    assert_eq!(
        updated.body["images"], created.body["images"],
        "hashed URLs sent back are stored as their logical paths"
    );

    // A stale ETag or version is refused and changes nothing.
    let stale = app
        .write(Method::PUT, location, &replacement, Some(&etag(&read)))
        .await;
    assert_problem(
        &stale,
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
        None,
    );
    let stale = app
        .write(Method::PUT, location, &replacement, Some("\"1\""))
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(app.get(location).await.body["version"], 2);

    // The current ETag works.
    replacement["description"] = json!("Bigger.");
    let updated = app
        .write(Method::PUT, location, &replacement, Some(&etag(&updated)))
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    assert_eq!(updated.body["version"], 3);
    assert_eq!(updated.body["description"], "Bigger.");

    // Delete: a stale If-Match is refused; then gone.
    let refused = app.delete(location, Some("2")).await;
    assert_eq!(refused.status, StatusCode::PRECONDITION_FAILED);
    let deleted = app.delete(location, Some("3")).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_problem(
        &app.get(location).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_problem(
        &app.delete(location, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    let missing = app.write(Method::PUT, location, &replacement, None).await;
    assert_problem(&missing, StatusCode::NOT_FOUND, "not_found", None);

    // A client-chosen id.
    let mut chosen = new_product();
    chosen["id"] = json!("my-teapot");
    chosen["sku"] = json!("TEST-0002");
    let created = app
        .write(Method::POST, "/api/v1/products", &chosen, None)
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["id"], "my-teapot");
    let unconditional = app
        .write(Method::PUT, "/api/v1/products/my-teapot", &chosen, None)
        .await;
    assert_eq!(unconditional.status, StatusCode::OK);
    assert_eq!(unconditional.body["version"], 2);
    let star = app.delete("/api/v1/products/my-teapot", Some("*")).await;
    assert_eq!(star.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn api_validation_errors_name_the_field() {
    let app = spawn_app().await;
    let seed_sku = builtin_seed().products[0].sku.clone();
    let seed_id = builtin_seed().products[0].id.clone().unwrap();
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit, StatusCode, &str, &str)> = vec![
        (
            "empty name",
            Box::new(|p| p["name"] = json!("")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "name",
        ),
        (
            "blank name",
            Box::new(|p| p["name"] = json!("   ")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "name",
        ),
        (
            "long name",
            Box::new(|p| p["name"] = json!("x".repeat(201))),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "name",
        ),
        (
            "missing name",
            Box::new(|p| {
                p.as_object_mut().unwrap().remove("name");
            }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "name",
        ),
        (
            "negative price",
            Box::new(|p| p["price"]["amount_minor"] = json!(-1)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "price.amount_minor",
        ),
        (
            "price of the wrong type",
            Box::new(|p| p["price"]["amount_minor"] = json!("12.50")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "price.amount_minor",
        ),
        (
            "lowercase currency",
            Box::new(|p| p["price"]["currency"] = json!("usd")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "price.currency",
        ),
        (
            "short currency",
            Box::new(|p| p["price"]["currency"] = json!("US")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "price.currency",
        ),
        (
            "long currency",
            Box::new(|p| p["price"]["currency"] = json!("USDX")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "price.currency",
        ),
        (
            "unknown category",
            Box::new(|p| p["category"] = json!("no-such-category")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "category",
        ),
        (
            "duplicate sku",
            Box::new(move |p| p["sku"] = json!(seed_sku.clone())),
            StatusCode::CONFLICT,
            "sku_taken",
            "sku",
        ),
        (
            "duplicate id",
            Box::new(move |p| p["id"] = json!(seed_id.clone())),
            StatusCode::CONFLICT,
            "id_taken",
            "id",
        ),
        (
            "negative weight",
            Box::new(|p| p["weight_grams"] = json!(-5)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "weight_grams",
        ),
        (
            "weight of the wrong type",
            Box::new(|p| p["weight_grams"] = json!("heavy")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "weight_grams",
        ),
        (
            "too many images",
            Box::new(|p| p["images"] = json!(vec!["products/kit-0001.svg"; 11])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "images",
        ),
        (
            "a bad image",
            Box::new(|p| p["images"] = json!(["products/ok.svg", "../../etc/passwd"])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "images[1]",
        ),
        (
            "too many attributes",
            Box::new(|p| {
                let many: BTreeMap<String, String> =
                    (0..33).map(|i| (format!("k{i}"), "v".to_owned())).collect();
                p["attributes"] = json!(many);
            }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "attributes",
        ),
        (
            "attribute of the wrong type",
            Box::new(|p| p["attributes"] = json!({"size": 3})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "attributes.size",
        ),
        (
            "a bad sku",
            Box::new(|p| p["sku"] = json!("has space")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "sku",
        ),
    ];
    let existing = app.get("/api/v1/products?per_page=1").await.body["items"][0].clone();
    let existing_uri = format!("/api/v1/products/{}", existing["id"].as_str().unwrap());
    for (what, edit, status, code, field) in &cases {
        let mut body = new_product();
        edit(&mut body);
        let answer = app
            .write(Method::POST, "/api/v1/products", &body, None)
            .await;
        assert_eq!(answer.status, *status, "POST {what}: {}", answer.body);
        assert_problem(&answer, *status, code, Some(field));

        // The same rules hold for a replace (except the id, which the path fixes).
        if *field != "id" {
            let mut body = existing.clone();
            edit(&mut body);
            if *code == "sku_taken" && body["sku"] == existing["sku"] {
                continue; // its own SKU is not taken
            }
            let answer = app.write(Method::PUT, &existing_uri, &body, None).await;
            assert_eq!(answer.status, *status, "PUT {what}: {}", answer.body);
            assert_problem(&answer, *status, code, Some(field));
        }
    }
    // Nothing was written.
    let total = app.get("/api/v1/products").await.body["total"]
        .as_u64()
        .unwrap();
    assert_eq!(total as usize, builtin_seed().products.len());
    assert_eq!(app.get(&existing_uri).await.body["version"], 1);

    // A body id that differs from the path.
    let mut body = existing.clone();
    body["id"] = json!("someone-else");
    let answer = app.write(Method::PUT, &existing_uri, &body, None).await;
    assert_problem(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("id"),
    );
}

#[tokio::test]
async fn api_malformed_bodies_and_unknown_routes() {
    let app = spawn_app().await;
    let answer = app
        .write_raw(Method::POST, "/api/v1/products", "{\"name\": ".into(), None)
        .await;
    assert_problem(&answer, StatusCode::BAD_REQUEST, "malformed_json", None);
    let answer = app
        .write_raw(
            Method::POST,
            "/api/v1/products",
            "{'sku': 'single quotes'}".into(),
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);

    let answer = app
        .send(
            Request::post("/api/v1/products")
                .header(header::CONTENT_TYPE, "text/plain")
                .header(
                    header::AUTHORIZATION,
                    format!("Bearer {}", app.token.as_deref().unwrap_or_default()),
                )
                .body(Body::from("hello"))
                .unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let answer = app.get("/api/v1/nope").await;
    assert_problem(&answer, StatusCode::NOT_FOUND, "route_not_found", None);
    let answer = app.get("/api/v1/products/no-such-product").await;
    assert_problem(&answer, StatusCode::NOT_FOUND, "not_found", None);
    let answer = app
        .send(
            Request::patch("/api/v1/products")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn api_publishes_openapi_and_readiness() {
    let app = spawn_app().await;
    let doc = app.get("/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    for path in [
        "/api/v1/products",
        "/api/v1/products/{id}",
        "/api/v1/categories",
        "/api/v1/admin/audit",
    ] {
        assert!(doc.body["paths"][path].is_object(), "{path} documented");
    }
    for schema in [
        "Product",
        "ProductInput",
        "ProductPage",
        "Category",
        "Problem",
    ] {
        assert!(
            doc.body["components"]["schemas"][schema].is_object(),
            "{schema}"
        );
    }
    assert_eq!(bazaar_catalog::openapi().paths.paths.len(), 4);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
}

#[test]
fn config_defaults() {
    let config = Config::default();
    assert!(config.seed);
    assert_eq!(config.max_per_page, 100);
    let parsed: Config = serde_json::from_str(r#"{"max_per_page": 5}"#).unwrap();
    assert_eq!(
        parsed,
        Config {
            seed: true,
            max_per_page: 5,
            issuer: "http://127.0.0.1:8080".into(),
        }
    );
}

#[tokio::test]
async fn api_writes_need_an_admin_token_and_are_audited() {
    let mut app = spawn_app().await;
    app.token = None;
    let anonymous = app
        .write(Method::POST, "/api/v1/products", &new_product(), None)
        .await;
    assert_problem(
        &anonymous,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        None,
    );
    assert!(anonymous.headers.contains_key(header::WWW_AUTHENTICATE));

    app.token = Some(app.issuer.customer("user-7"));
    let customer = app
        .write(Method::POST, "/api/v1/products", &new_product(), None)
        .await;
    assert_problem(&customer, StatusCode::FORBIDDEN, "forbidden", None);
    let delete = app
        .delete("/api/v1/products/kitchen-espresso-cup-set", None)
        .await;
    assert_problem(&delete, StatusCode::FORBIDDEN, "forbidden", None);

    app.token = Some(bazaar_auth::testing::TestIssuer::new().admin("impostor"));
    let foreign = app
        .write(Method::POST, "/api/v1/products", &new_product(), None)
        .await;
    assert_problem(&foreign, StatusCode::UNAUTHORIZED, "invalid_token", None);

    app.token = Some(app.issuer.admin("admin-9"));
    let created = app
        .write(Method::POST, "/api/v1/products", &new_product(), None)
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let deleted = app.delete(&format!("/api/v1/products/{id}"), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);

    // Nothing was written for the refused attempts; both admin writes are in the audit log.
    let dir = app._dir.path().join("catalog.db");
    let pool = sqlx::any::AnyPoolOptions::new()
        .connect(&format!("sqlite://{}", dir.display()))
        .await
        .unwrap();
    let records = bazaar_kit::audit::read_records(&pool, 0, 100)
        .await
        .unwrap();
    bazaar_kit::audit::verify_chain(&records).unwrap();
    let actions: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r.actor.as_str(), r.action.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("admin-9", "product.created"),
            ("admin-9", "product.deleted")
        ]
    );
}

#[tokio::test]
async fn api_audit_log_is_admin_only_and_checks_the_chain() {
    let mut app = spawn_app().await;
    let created = app
        .write(Method::POST, "/api/v1/products", &new_product(), None)
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let deleted = app.delete(&format!("/api/v1/products/{id}"), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);

    let read = |app: &TestApp, uri: &str| {
        let mut request = Request::get(uri);
        if let Some(token) = &app.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        request.body(Body::empty()).unwrap()
    };
    let admin = app.send(read(&app, "/api/v1/admin/audit?limit=1")).await;
    assert_eq!(admin.status, StatusCode::OK, "{}", admin.body);
    assert_eq!(admin.body["service"], "catalog");
    assert_eq!(
        admin.body["chain"],
        json!({"ok": true, "records": 2}),
        "the whole chain is checked, whatever the limit"
    );
    let records = admin.body["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "limited");
    assert_eq!(records[0]["action"], "product.deleted", "newest first");
    assert_eq!(records[0]["actor"], "admin-1");

    let bad = app.send(read(&app, "/api/v1/admin/audit?limit=0")).await;
    assert_problem(
        &bad,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        Some("limit"),
    );

    app.token = Some(app.issuer.customer("user-7"));
    let customer = app.send(read(&app, "/api/v1/admin/audit")).await;
    assert_problem(&customer, StatusCode::FORBIDDEN, "forbidden", None);
    app.token = None;
    let anonymous = app.send(read(&app, "/api/v1/admin/audit")).await;
    assert_problem(
        &anonymous,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        None,
    );
}

#[tokio::test]
async fn api_per_page_cap_follows_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        max_per_page: 10,
        ..Config::default()
    };
    let repository = bazaar_catalog::open(&sqlite_url(dir.path(), "catalog"), &config)
        .await
        .unwrap();
    let issuer = bazaar_auth::testing::TestIssuer::new();
    let state = bazaar_catalog::AppState::new(repository, &config, issuer.verifier(&["bazaar"]))
        .await
        .unwrap();
    let app = TestApp {
        app: bazaar_catalog::router(state),
        _dir: dir,
        issuer,
        token: None,
    };
    assert_eq!(
        app.get("/api/v1/products?per_page=10").await.status,
        StatusCode::OK
    );
    let over = app.get("/api/v1/products?per_page=11").await;
    assert_problem(
        &over,
        StatusCode::BAD_REQUEST,
        "invalid_query",
        Some("per_page"),
    );
    assert!(over.body["detail"].as_str().unwrap().contains("10"));
    assert_eq!(
        app.get("/api/v1/products").await.body["per_page"],
        10,
        "default capped too"
    );
}

// ---------------------------------------------------------------------------------------------
// storage, on both engines

fn input(sku: &str, name: &str, category: &str, amount_minor: i64) -> ProductInput {
    ProductInput {
        id: None,
        sku: sku.into(),
        name: name.into(),
        description: format!("{name}, for storage tests"),
        category: category.into(),
        price: Money {
            amount_minor,
            currency: "USD".into(),
        },
        weight_grams: 100,
        images: vec!["products/kit-0001.svg".into()],
        attributes: BTreeMap::from([("colour".into(), "red".into())]),
        featured: false,
    }
}

async fn open(url: &str, seed: bool) -> Repository {
    bazaar_catalog::open(
        url,
        &Config {
            seed,
            ..Config::default()
        },
    )
    .await
    .expect("opens")
}

/// Seeding fills an empty database once; opening again adds nothing; categories count.
async fn seeding_is_idempotent(url: String) {
    let seed = builtin_seed();
    let repository = open(&url, true).await;
    assert_eq!(
        repository.count_products().await.unwrap() as usize,
        seed.products.len()
    );
    repository.database().close().await;

    let repository = open(&url, true).await;
    assert_eq!(
        repository.count_products().await.unwrap() as usize,
        seed.products.len(),
        "a reopen does not seed twice"
    );
    let again = repository
        .seed(&seed.categories, &seed.products)
        .await
        .unwrap();
    assert_eq!(again, 0, "seeding a non-empty catalogue does nothing");
    let categories = repository.list_categories().await.unwrap();
    assert_eq!(categories.len(), seed.categories.len());
    for category in &categories {
        let expected = seed
            .products
            .iter()
            .filter(|p| p.category == category.slug)
            .count();
        assert_eq!(
            category.product_count as usize, expected,
            "{}",
            category.slug
        );
    }
    let first = &seed.products[0];
    let stored = repository
        .get_product(first.id.as_deref().unwrap())
        .await
        .unwrap()
        .expect("seed ids are kept");
    assert_eq!(stored.sku, first.sku);
    assert_eq!(stored.price, first.price);
    assert_eq!(stored.images, first.images, "images stored as given");
    assert_eq!(stored.attributes, first.attributes);
    assert_eq!(stored.featured, first.featured);
    assert_eq!(stored.version, 1);
    repository.database().close().await;
}

/// Two seeders racing on one empty database both succeed and the data is there once.
async fn concurrent_seeding_is_safe(url: String) {
    let seed = builtin_seed();
    let repository = open(&url, false).await;
    assert_eq!(repository.count_products().await.unwrap(), 0, "seed off");
    let (a, b) = tokio::join!(
        repository.seed(&seed.categories, &seed.products),
        repository.seed(&seed.categories, &seed.products)
    );
    let (a, b) = (a.expect("first seeder"), b.expect("second seeder"));
    assert_eq!((a + b) as usize, seed.products.len(), "{a} + {b}");
    assert_eq!(
        repository.count_products().await.unwrap() as usize,
        seed.products.len()
    );
    repository.database().close().await;
}

/// Search, filters and sorts through the repository, with wildcards taken literally.
async fn queries_filter_and_sort(url: String) {
    let repository = open(&url, false).await;
    let seed = builtin_seed();
    repository.seed(&seed.categories, &[]).await.unwrap();
    let category = seed.categories[0].slug.clone();
    for (sku, name, price) in [
        ("S-1", "banana Bread", 300),
        ("S-2", "Apple pie", 500),
        ("S-3", "100% Cotton_Tee", 100),
        ("S-4", "100 percent cotton tee", 200),
        ("S-5", "a pie", 400),
    ] {
        repository
            .create_product(&input(sku, name, &category, price))
            .await
            .unwrap();
    }
    let list = |filter: ProductFilter| {
        let repository = repository.clone();
        async move {
            let (items, total) = repository.list_products(&filter).await.unwrap();
            (items.into_iter().map(|p| p.name).collect::<Vec<_>>(), total)
        }
    };
    let all = |sort| ProductFilter {
        sort,
        ..ProductFilter::default()
    };
    assert_eq!(
        list(all(Sort::Name)).await.0,
        [
            "100 percent cotton tee",
            "100% Cotton_Tee",
            "a pie",
            "Apple pie",
            "banana Bread"
        ],
        "byte order of lowercased names on every engine"
    );
    assert_eq!(
        list(all(Sort::NameDesc)).await.0,
        [
            "banana Bread",
            "Apple pie",
            "a pie",
            "100% Cotton_Tee",
            "100 percent cotton tee"
        ]
    );
    assert_eq!(
        list(all(Sort::Price)).await.0,
        [
            "100% Cotton_Tee",
            "100 percent cotton tee",
            "banana Bread",
            "a pie",
            "Apple pie"
        ]
    );
    assert_eq!(list(all(Sort::PriceDesc)).await.0[0], "Apple pie");
    let (newest, _) = list(all(Sort::Newest)).await;
    assert_eq!(newest.len(), 5);

    let search = |q: &str| ProductFilter {
        q: Some(q.to_lowercase()),
        ..ProductFilter::default()
    };
    assert_eq!(
        list(search("100%")).await,
        (vec!["100% Cotton_Tee".to_owned()], 1),
        "% is literal"
    );
    assert_eq!(
        list(search("n_t")).await,
        (vec!["100% Cotton_Tee".to_owned()], 1),
        "_ is literal"
    );
    assert_eq!(list(search("COTTON")).await.1, 2, "case-insensitive");
    assert_eq!(list(search("s-3")).await.0, ["100% Cotton_Tee"], "by sku");
    assert_eq!(list(search("for storage")).await.1, 5, "by description");
    assert_eq!(
        list(search("!")).await.1,
        0,
        "the escape character is literal too"
    );

    let paged = ProductFilter {
        per_page: 2,
        page: 3,
        ..ProductFilter::default()
    };
    assert_eq!(list(paged).await, (vec!["banana Bread".to_owned()], 5));
    let other = ProductFilter {
        category: Some("nope".into()),
        ..ProductFilter::default()
    };
    assert_eq!(list(other).await.1, 0);
    let featured = ProductFilter {
        featured: Some(true),
        ..ProductFilter::default()
    };
    assert_eq!(list(featured).await.1, 0);
    let not_featured = ProductFilter {
        featured: Some(false),
        ..ProductFilter::default()
    };
    assert_eq!(list(not_featured).await.1, 5);
    repository.database().close().await;
}

/// Writes: constraints become typed errors; versions and times behave.
async fn writes_keep_the_invariants(url: String) {
    let repository = open(&url, true).await;
    let seed = builtin_seed();
    let category = seed.categories[1].slug.clone();
    let created = repository
        .create_product(&input("W-1", "Widget", &category, 1000))
        .await
        .unwrap();
    assert_eq!(created.version, 1);
    assert_eq!(
        repository.get_product(&created.id).await.unwrap().as_ref(),
        Some(&created)
    );

    let clash = repository
        .create_product(&input(&seed.products[0].sku, "Clash", &category, 1))
        .await;
    assert!(matches!(clash, Err(RepoError::SkuTaken(_))), "{clash:?}");
    let unknown = repository
        .create_product(&input("W-2", "Lost", "nowhere", 1))
        .await;
    assert!(
        matches!(unknown, Err(RepoError::UnknownCategory(_))),
        "{unknown:?}"
    );
    let mut same_id = input("W-3", "Twin", &category, 1);
    same_id.id = Some(created.id.clone());
    let twin = repository.create_product(&same_id).await;
    assert!(matches!(twin, Err(RepoError::IdTaken(_))), "{twin:?}");

    let mut change = input("W-1b", "Widget Pro", &category, 1500);
    change.featured = true;
    let stale = repository
        .replace_product(&created.id, &change, Some(7))
        .await;
    assert!(
        matches!(
            stale,
            Err(RepoError::VersionMismatch {
                actual: 1,
                expected: 7,
                ..
            })
        ),
        "{stale:?}"
    );
    let replaced = repository
        .replace_product(&created.id, &change, Some(1))
        .await
        .unwrap();
    assert_eq!(replaced.version, 2);
    assert_eq!(replaced.sku, "W-1b");
    assert!(replaced.featured);
    assert_eq!(
        replaced.created_at_ms, created.created_at_ms,
        "created_at kept"
    );
    assert!(replaced.updated_at_ms >= created.updated_at_ms);
    let replaced = repository
        .replace_product(&created.id, &change, None)
        .await
        .unwrap();
    assert_eq!(replaced.version, 3, "unconditional replace bumps too");

    let mut steal = change.clone();
    steal.sku = seed.products[0].sku.clone();
    let stolen = repository.replace_product(&created.id, &steal, None).await;
    assert!(matches!(stolen, Err(RepoError::SkuTaken(_))), "{stolen:?}");
    let mut moved = change.clone();
    moved.category = "nowhere".into();
    let moved = repository.replace_product(&created.id, &moved, None).await;
    assert!(
        matches!(moved, Err(RepoError::UnknownCategory(_))),
        "{moved:?}"
    );
    let missing = repository.replace_product("missing", &change, None).await;
    assert!(
        matches!(missing, Err(RepoError::NotFound(_))),
        "{missing:?}"
    );

    let refused = repository.delete_product(&created.id, Some(1)).await;
    assert!(
        matches!(refused, Err(RepoError::VersionMismatch { .. })),
        "{refused:?}"
    );
    repository
        .delete_product(&created.id, Some(3))
        .await
        .unwrap();
    assert_eq!(repository.get_product(&created.id).await.unwrap(), None);
    let gone = repository.delete_product(&created.id, None).await;
    assert!(matches!(gone, Err(RepoError::NotFound(_))), "{gone:?}");
    assert_eq!(
        repository.count_products().await.unwrap() as usize,
        seed.products.len()
    );
    repository.database().close().await;
}

/// Data written survives closing and reopening the database.
async fn data_persists_across_reopen(url: String) {
    let seed = builtin_seed();
    let repository = open(&url, true).await;
    let created = repository
        .create_product(&input("P-1", "Persistent", &seed.categories[0].slug, 42))
        .await
        .unwrap();
    repository.database().close().await;

    let repository = open(&url, true).await;
    assert_eq!(
        repository.get_product(&created.id).await.unwrap(),
        Some(created)
    );
    assert_eq!(
        repository.count_products().await.unwrap() as usize,
        seed.products.len() + 1,
        "kept, and the seed not loaded again"
    );
    repository.database().close().await;
}

macro_rules! storage_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    super::$name(super::sqlite_url(dir.path(), "catalog")).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(url) = super::fresh_postgres_database(stringify!($name)).await {
                        super::$name(url).await;
                    }
                }
            )*
        }
    };
}

storage_tests!(
    seeding_is_idempotent,
    concurrent_seeding_is_safe,
    queries_filter_and_sort,
    writes_keep_the_invariants,
    data_persists_across_reopen,
);
