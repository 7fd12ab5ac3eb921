//! The developer portal's API documentation model: the gateway's merged OpenAPI document turned
//! into what `/developers/docs` shows — operations grouped by tag, each with its access tier and
//! a curl example a developer can paste.
//!
//! Pure functions of the document (no I/O), so the grouping, the tier of each operation and the
//! curl examples are unit-tested here.
//!
//! Where the tier comes from, first match wins:
//! 1. an `x-bazaar-policy` extension on the operation, or `x-bazaar-policy` /
//!    `x-bazaar-write-policy` on its path item: the policy the gateway enforces on the route,
//!    which the gateway writes into every path of its merged document;
//! 2. the operation's (or the document's) OpenAPI `security` requirements;
//! 3. public, raised to what the service itself documents (a `403 Not an admin` means admin; a
//!    `401 Not signed in` means a user token) — for a document from elsewhere that says neither.

use serde::Serialize;
use serde_json::{Map, Value};

/// Who may call an operation, as the gateway classifies routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Anyone, no credentials.
    Public,
    /// A signed-in user's access token.
    User,
    /// A partner's client-credentials token (scope `partner`).
    Partner,
    /// An API key on a plan, in `x-api-key`.
    ApiKey,
    /// An access token with the `admin` role.
    Admin,
}

impl Tier {
    /// Reads a gateway policy name (`public`, `user`, `admin`, `partner`, `api_key`).
    pub fn parse(text: &str) -> Option<Tier> {
        match text.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "public" | "open" => Some(Tier::Public),
            "user" => Some(Tier::User),
            "admin" => Some(Tier::Admin),
            "partner" => Some(Tier::Partner),
            "api_key" | "apikey" => Some(Tier::ApiKey),
            _ => None,
        }
    }

    /// The policy's name, as the gateway's configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Public => "public",
            Tier::User => "user",
            Tier::Admin => "admin",
            Tier::Partner => "partner",
            Tier::ApiKey => "api_key",
        }
    }

    /// A short label for the page.
    pub fn label(self) -> &'static str {
        match self {
            Tier::Public => "Public",
            Tier::User => "User token",
            Tier::Admin => "Admin token",
            Tier::Partner => "Partner token",
            Tier::ApiKey => "API key",
        }
    }
}

/// Methods listed in a path item, in the order the page shows them.
const METHODS: &[&str] = &["get", "post", "put", "patch", "delete", "head", "options"];

/// The group of operations that carry no tag.
const UNTAGGED: &str = "other";

/// The whole page's model.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ApiDocs {
    pub title: String,
    pub version: String,
    pub description: String,
    /// Tag groups in the document's tag order (untagged operations last).
    pub groups: Vec<TagGroup>,
    /// Services whose documents the gateway could not fetch: `name (reason)`.
    pub unavailable: Vec<String>,
    /// Number of operations over all groups.
    pub operation_count: usize,
}

/// The operations under one tag.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TagGroup {
    pub name: String,
    pub description: String,
    /// For the page's table of contents and `id` attributes.
    pub anchor: String,
    pub operations: Vec<Operation>,
}

/// One method on one path.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Operation {
    /// Upper case (`GET`).
    pub method: String,
    pub path: String,
    pub summary: String,
    pub tier: Tier,
    pub tier_label: &'static str,
    pub curl: String,
    pub anchor: String,
}

/// Builds the page's model from the merged document; `public_url` is the gateway's public base
/// URL the curl examples call.
pub fn from_openapi(document: &Value, public_url: &str) -> ApiDocs {
    let empty = Map::new();
    let paths = document
        .get("paths")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut groups: Vec<TagGroup> = document
        .get("tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|tag| {
            let name = tag.get("name")?.as_str()?;
            Some(TagGroup {
                name: name.to_owned(),
                description: text(tag.get("description")),
                anchor: format!("tag-{}", slug(name)),
                operations: Vec::new(),
            })
        })
        .collect();

    // By path, so groups met outside the declared tags come in a stable order.
    let mut sorted: Vec<(&String, &Value)> = paths.iter().collect();
    sorted.sort_by_key(|(path, _)| path.as_str());
    for (path, item) in sorted {
        for method in METHODS {
            let Some(operation) = item.get(*method).filter(|o| o.is_object()) else {
                continue;
            };
            let tier = tier_of(document, item, method, operation);
            let entry = Operation {
                method: method.to_ascii_uppercase(),
                path: path.clone(),
                summary: summary_of(operation),
                tier,
                tier_label: tier.label(),
                curl: curl_example(
                    public_url,
                    method,
                    path,
                    tier,
                    &example_query(operation),
                    operation.get("requestBody").is_some(),
                ),
                anchor: format!("op-{method}-{}", slug(path)),
            };
            let tag = operation
                .get("tags")
                .and_then(Value::as_array)
                .and_then(|tags| tags.first())
                .and_then(Value::as_str)
                .unwrap_or(UNTAGGED);
            match groups.iter_mut().find(|group| group.name == tag) {
                Some(group) => group.operations.push(entry),
                None => groups.push(TagGroup {
                    name: tag.to_owned(),
                    description: String::new(),
                    anchor: format!("tag-{}", slug(tag)),
                    operations: vec![entry],
                }),
            }
        }
    }
    // Untagged operations last; tags without a routed operation (`internal`) are not shown.
    groups.retain(|group| !group.operations.is_empty());
    if let Some(at) = groups.iter().position(|g| g.name == UNTAGGED) {
        let untagged = groups.remove(at);
        groups.push(untagged);
    }
    for group in &mut groups {
        group
            .operations
            .sort_by_key(|op| (op.path.clone(), method_rank(&op.method)));
    }

    let info = document.get("info");
    ApiDocs {
        title: text(info.and_then(|i| i.get("title"))),
        version: text(info.and_then(|i| i.get("version"))),
        description: text(info.and_then(|i| i.get("description"))),
        operation_count: groups.iter().map(|g| g.operations.len()).sum(),
        groups,
        unavailable: document
            .get("x-bazaar-unavailable")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let target = entry.get("target")?.as_str()?;
                Some(match entry.get("reason").and_then(Value::as_str) {
                    Some(reason) => format!("{target} ({reason})"),
                    None => target.to_owned(),
                })
            })
            .collect(),
    }
}

/// The access tier of one operation (see the module documentation for the order of sources).
pub fn tier_of(document: &Value, item: &Value, method: &str, operation: &Value) -> Tier {
    let writes = !matches!(method, "get" | "head" | "options");
    let declared = |value: Option<&Value>| value.and_then(Value::as_str).and_then(Tier::parse);
    if let Some(tier) = declared(operation.get("x-bazaar-policy")) {
        return tier;
    }
    let item_tier = if writes {
        declared(item.get("x-bazaar-write-policy"))
            .or_else(|| declared(item.get("x-bazaar-policy")))
    } else {
        declared(item.get("x-bazaar-policy"))
    };
    if let Some(tier) = item_tier {
        return tier;
    }
    let security = operation
        .get("security")
        .or_else(|| document.get("security"));
    if let Some(tier) = security.and_then(|s| tier_from_security(document, s)) {
        return tier;
    }
    raised_by_service(Tier::Public, operation)
}

/// What the service itself says beyond the gateway's policy: a documented `403` "Not an admin"
/// means only admins get through; a documented `401` "Not signed in" / "No valid token" on a
/// route the gateway leaves public means a user token is needed.
fn raised_by_service(routed: Tier, operation: &Value) -> Tier {
    let response = |status: &str| {
        operation
            .get("responses")
            .and_then(|r| r.get(status))
            .and_then(|r| r.get("description"))
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
    };
    if response("403").is_some_and(|d| d.contains("not an admin")) {
        return Tier::Admin;
    }
    if routed == Tier::Public
        && response("401")
            .is_some_and(|d| d.starts_with("not signed in") || d.starts_with("no valid"))
    {
        return Tier::User;
    }
    routed
}

/// The tier an OpenAPI `security` list asks for; `None` when it names nothing we recognise.
fn tier_from_security(document: &Value, security: &Value) -> Option<Tier> {
    let requirements = security.as_array()?;
    // `[]` or an empty requirement `{}` among the alternatives: no credentials needed.
    if requirements.is_empty()
        || requirements
            .iter()
            .any(|r| r.as_object().is_some_and(Map::is_empty))
    {
        return Some(Tier::Public);
    }
    let schemes = document
        .get("components")
        .and_then(|c| c.get("securitySchemes"));
    requirements
        .iter()
        .filter_map(Value::as_object)
        .flat_map(|requirement| requirement.iter())
        .filter_map(|(name, scopes)| {
            let scopes: Vec<&str> = scopes
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if scopes.contains(&"admin") {
                return Some(Tier::Admin);
            }
            if scopes.contains(&"partner") {
                return Some(Tier::Partner);
            }
            let scheme = schemes.and_then(|s| s.get(name));
            let kind = scheme
                .and_then(|s| s.get("type"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let lowered = name.to_ascii_lowercase();
            if kind == "apiKey" || lowered.contains("api_key") || lowered.contains("apikey") {
                Some(Tier::ApiKey)
            } else if lowered.contains("partner")
                || scheme
                    .and_then(|s| s.get("flows"))
                    .and_then(Value::as_object)
                    .is_some_and(|flows| {
                        flows.len() == 1 && flows.contains_key("clientCredentials")
                    })
            {
                Some(Tier::Partner)
            } else if lowered.contains("admin") {
                Some(Tier::Admin)
            } else if matches!(kind, "http" | "oauth2" | "openIdConnect") || scheme.is_none() {
                Some(Tier::User)
            } else {
                None
            }
        })
        // Of several alternatives, the easiest to obtain is what the page names.
        .min()
}

/// A curl command calling `path` with `method` as `tier` requires. `query` is appended when not
/// empty; `has_body` adds a JSON body read from a file.
pub fn curl_example(
    public_url: &str,
    method: &str,
    path: &str,
    tier: Tier,
    query: &str,
    has_body: bool,
) -> String {
    let mut parts = vec!["curl".to_owned()];
    let method = method.to_ascii_uppercase();
    if method == "HEAD" {
        parts.push("-I".to_owned());
    } else if method != "GET" {
        parts.push(format!("-X {method}"));
    }
    match tier {
        Tier::Public => {}
        Tier::ApiKey => parts.push("-H 'x-api-key: YOUR_KEY'".to_owned()),
        // Double quotes: the shell must expand the variable.
        Tier::User | Tier::Admin => parts.push("-H \"Authorization: Bearer $TOKEN\"".to_owned()),
        Tier::Partner => parts.push("-H \"Authorization: Bearer $PARTNER_TOKEN\"".to_owned()),
    }
    if has_body {
        parts.push("-H 'Content-Type: application/json' -d @body.json".to_owned());
    }
    let mut url = format!("{}{path}", public_url.trim_end_matches('/'));
    if !query.is_empty() {
        url.push('?');
        url.push_str(query);
    }
    parts.push(shell_word(&url));
    parts.join(" ")
}

/// A query string worth showing in an example: a small page when the operation pages, and a
/// placeholder for every required query parameter.
fn example_query(operation: &Value) -> String {
    let mut pairs = Vec::new();
    for parameter in operation
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if parameter.get("in").and_then(Value::as_str) != Some("query") {
            continue;
        }
        let Some(name) = parameter.get("name").and_then(Value::as_str) else {
            continue;
        };
        if name == "per_page" {
            pairs.push("per_page=2".to_owned());
        } else if parameter.get("required").and_then(Value::as_bool) == Some(true) {
            // The documented example when there is one, so the command runs as pasted.
            let example = parameter
                .get("example")
                .or_else(|| parameter.get("schema").and_then(|s| s.get("example")))
                .and_then(|example| match example {
                    Value::String(text) => Some(text.clone()),
                    Value::Number(_) | Value::Bool(_) => Some(example.to_string()),
                    _ => None,
                })
                .unwrap_or_else(|| name.to_ascii_uppercase());
            pairs.push(format!("{name}={}", crate::backend::query_value(&example)));
        }
    }
    pairs.join("&")
}

/// `word` as one shell word: bare when it holds nothing a shell would interpret (`?` globs in
/// zsh, `&` ends the command), else single-quoted.
fn shell_word(word: &str) -> String {
    let plain = word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:=%@+,".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The operation's summary, or the first line of its description.
fn summary_of(operation: &Value) -> String {
    let summary = text(operation.get("summary"));
    let summary = if summary.is_empty() {
        text(operation.get("description"))
    } else {
        summary
    };
    // utoipa joins a doc comment's wrapped lines with newlines.
    summary.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn text(value: Option<&Value>) -> String {
    value.and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn method_rank(method: &str) -> usize {
    METHODS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(method))
        .unwrap_or(METHODS.len())
}

/// Letters and digits kept, every other run of characters one `-`.
fn slug(text: &str) -> String {
    let mut slug = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    slug.trim_matches('-').to_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const URL: &str = "http://127.0.0.1:8080";

    /// A trimmed copy of what the gateway merges: the feed, a user route, an admin write, the
    /// plans, an untagged gateway route, and a service that was down.
    fn document() -> Value {
        json!({
            "info": {"title": "bazaar API", "version": "0.1.0", "description": "Merged."},
            "tags": [
                {"name": "gateway", "description": "The gateway's own endpoints"},
                {"name": "catalog"},
                {"name": "developer"},
                {"name": "internal"}
            ],
            "paths": {
                "/api/v1/feed/products": {
                    "x-bazaar-policy": "api_key", "x-bazaar-write-policy": "admin",
                    "get": {"tags": ["catalog"], "summary": "List products, filtered,\nsorted and paged.",
                            "parameters": [{"name": "q", "in": "query"}, {"name": "per_page", "in": "query"}]},
                    "post": {"tags": ["catalog"], "summary": "Create a product.", "requestBody": {}}
                },
                "/api/v1/products/{id}": {
                    "x-bazaar-policy": "public", "x-bazaar-write-policy": "admin",
                    "put": {"tags": ["catalog"], "summary": "Replace a product.", "requestBody": {}},
                    "get": {"tags": ["catalog"], "summary": "One product."}
                },
                "/api/v1/developer/keys": {
                    "x-bazaar-policy": "user", "x-bazaar-write-policy": "user",
                    "get": {"tags": ["developer"], "summary": "The caller's own keys."}
                },
                "/api/v1/developer/plans": {
                    "x-bazaar-policy": "public", "x-bazaar-write-policy": "public",
                    "get": {"tags": ["developer"], "summary": "The plans."}
                },
                "/api/v1/users": {
                    "get": {"summary": "Every user (admin).",
                            "responses": {"401": {"description": "No valid access token"},
                                          "403": {"description": "Not an admin"}}}
                },
                "/api/v1/users/me": {
                    "get": {"tags": ["identity"], "summary": "The signed-in user.",
                            "responses": {"401": {"description": "No valid access token"}}}
                },
                "/api/v1/cart": {
                    "get": {"tags": ["cart"], "summary": "The caller's cart.",
                            "responses": {"401": {"description": "Neither a valid token nor a session"}}}
                },
                "/api/docs": {"get": {"tags": ["gateway"], "summary": "The docs page."}},
                "/api/v1/currencies/convert": {"get": {"tags": ["currency"], "summary": "Converts.",
                    "parameters": [
                        {"name": "amount_minor", "in": "query", "required": true, "example": 1999},
                        {"name": "from", "in": "query", "required": true, "schema": {"example": "USD"}},
                        {"name": "to", "in": "query", "required": true},
                        {"name": "date", "in": "query"}
                    ]}}
            },
            "x-bazaar-unavailable": [{"target": "orders", "reason": "no healthy instance"}]
        })
    }

    fn find<'a>(docs: &'a ApiDocs, method: &str, path: &str) -> &'a Operation {
        docs.groups
            .iter()
            .flat_map(|g| &g.operations)
            .find(|op| op.method == method && op.path == path)
            .unwrap_or_else(|| panic!("{method} {path} is listed"))
    }

    #[test]
    fn operations_are_grouped_by_their_first_tag_in_the_document_tag_order() {
        let docs = from_openapi(&document(), URL);
        let names: Vec<&str> = docs.groups.iter().map(|g| g.name.as_str()).collect();
        // `internal` has no operation; `identity`/`cart` are not declared so come after the
        // declared ones in the order met; untagged operations are last.
        assert_eq!(
            names,
            vec![
                "gateway",
                "catalog",
                "developer",
                "cart",
                "currency",
                "identity",
                "other"
            ]
        );
        let catalog = &docs.groups[1];
        let listed: Vec<(&str, &str)> = catalog
            .operations
            .iter()
            .map(|op| (op.method.as_str(), op.path.as_str()))
            .collect();
        assert_eq!(
            listed,
            vec![
                ("GET", "/api/v1/feed/products"),
                ("POST", "/api/v1/feed/products"),
                ("GET", "/api/v1/products/{id}"),
                ("PUT", "/api/v1/products/{id}"),
            ]
        );
        assert_eq!(docs.operation_count, 11);
        assert_eq!(docs.groups[0].description, "The gateway's own endpoints");
        assert_eq!(catalog.anchor, "tag-catalog");
        assert_eq!(
            find(&docs, "GET", "/api/v1/feed/products").summary,
            "List products, filtered, sorted and paged."
        );
        assert_eq!(docs.unavailable, vec!["orders (no healthy instance)"]);
        assert_eq!(docs.title, "bazaar API");
    }

    #[test]
    fn tiers_follow_the_gateway_routes_and_what_the_service_documents() {
        let docs = from_openapi(&document(), URL);
        let tier = |method, path| find(&docs, method, path).tier;
        assert_eq!(tier("GET", "/api/v1/feed/products"), Tier::ApiKey);
        assert_eq!(tier("GET", "/api/v1/products/{id}"), Tier::Public);
        assert_eq!(
            tier("PUT", "/api/v1/products/{id}"),
            Tier::Admin,
            "write policy"
        );
        assert_eq!(tier("POST", "/api/v1/feed/products"), Tier::Admin);
        assert_eq!(tier("GET", "/api/v1/developer/keys"), Tier::User);
        assert_eq!(tier("GET", "/api/v1/developer/plans"), Tier::Public);
        assert_eq!(
            tier("GET", "/api/v1/users"),
            Tier::Admin,
            "403 Not an admin"
        );
        assert_eq!(
            tier("GET", "/api/v1/users/me"),
            Tier::User,
            "401 on a public route"
        );
        assert_eq!(
            tier("GET", "/api/v1/cart"),
            Tier::Public,
            "a session is enough"
        );
        assert_eq!(tier("GET", "/api/docs"), Tier::Public, "the gateway's own");
    }

    #[test]
    fn a_declared_policy_or_security_requirement_wins_over_the_route_table() {
        let document = json!({
            "components": {"securitySchemes": {
                "key": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "bearer": {"type": "http", "scheme": "bearer"},
                "partners": {"type": "oauth2", "flows": {"clientCredentials": {"tokenUrl": "/t", "scopes": {}}}}
            }},
            "paths": {}
        });
        let op = |extra: Value| extra;
        let item = json!({"x-bazaar-policy": "partner", "x-bazaar-write-policy": "admin"});
        assert_eq!(
            tier_of(&document, &item, "get", &op(json!({}))),
            Tier::Partner
        );
        assert_eq!(
            tier_of(&document, &item, "delete", &op(json!({}))),
            Tier::Admin
        );
        assert_eq!(
            tier_of(
                &document,
                &item,
                "get",
                &op(json!({"x-bazaar-policy": "api_key"}))
            ),
            Tier::ApiKey
        );
        let plain = json!({});
        let with =
            |security: Value| tier_of(&document, &plain, "get", &json!({ "security": security }));
        assert_eq!(with(json!([{"key": []}])), Tier::ApiKey);
        assert_eq!(with(json!([{"bearer": []}])), Tier::User);
        assert_eq!(with(json!([{"bearer": ["admin"]}])), Tier::Admin);
        assert_eq!(with(json!([{"partners": []}])), Tier::Partner);
        assert_eq!(with(json!([{}, {"bearer": []}])), Tier::Public, "optional");
        assert_eq!(with(json!([])), Tier::Public);
        // Without any of it, public.
        assert_eq!(tier_of(&document, &plain, "get", &json!({})), Tier::Public);
    }

    #[test]
    fn curl_examples_carry_what_each_tier_needs() {
        let docs = from_openapi(&document(), URL);
        assert_eq!(
            find(&docs, "GET", "/api/v1/feed/products").curl,
            "curl -H 'x-api-key: YOUR_KEY' 'http://127.0.0.1:8080/api/v1/feed/products?per_page=2'"
        );
        assert_eq!(
            find(&docs, "GET", "/api/v1/developer/keys").curl,
            "curl -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:8080/api/v1/developer/keys"
        );
        assert_eq!(
            find(&docs, "GET", "/api/v1/developer/plans").curl,
            "curl http://127.0.0.1:8080/api/v1/developer/plans"
        );
        assert_eq!(
            find(&docs, "PUT", "/api/v1/products/{id}").curl,
            "curl -X PUT -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \
             -d @body.json 'http://127.0.0.1:8080/api/v1/products/{id}'"
        );
        assert_eq!(
            find(&docs, "GET", "/api/v1/currencies/convert").curl,
            "curl 'http://127.0.0.1:8080/api/v1/currencies/convert?amount_minor=1999&from=USD&to=TO'",
            "required query parameters with their examples, optional ones left out"
        );
        assert_eq!(
            curl_example(URL, "get", "/api/v1/partner/products", Tier::Partner, "", false),
            "curl -H \"Authorization: Bearer $PARTNER_TOKEN\" http://127.0.0.1:8080/api/v1/partner/products"
        );
        assert_eq!(
            curl_example(
                "https://shop.example/",
                "get",
                "/x",
                Tier::Public,
                "a=1&b=2",
                false
            ),
            "curl 'https://shop.example/x?a=1&b=2'",
            "no doubled slash; `&` quoted"
        );
    }

    #[test]
    fn a_document_without_paths_gives_an_empty_page_not_a_failure() {
        let docs = from_openapi(&json!({"info": {"title": "t"}}), URL);
        assert!(docs.groups.is_empty());
        assert_eq!(docs.operation_count, 0);
        assert_eq!(docs.title, "t");
        assert!(docs.unavailable.is_empty());
    }
}
