//! The catalog's wire contract (request and response DTOs) and the validation of what clients
//! send. Validation lives here, next to the types, so the API and the seed loader apply exactly
//! the same rules; the one rule that needs the database (the category must exist) is checked by
//! the repository inside the write transaction.

use std::collections::BTreeMap;

use bazaar_kit::ApiError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Longest product name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 5_000;
/// Longest SKU, in characters.
pub const MAX_SKU_CHARS: usize = 64;
/// Longest client-chosen id, in characters.
pub const MAX_ID_CHARS: usize = 128;
/// Most images per product.
pub const MAX_IMAGES: usize = 10;
/// Longest image reference, in characters.
pub const MAX_IMAGE_CHARS: usize = 2_048;
/// Most attributes per product.
pub const MAX_ATTRIBUTES: usize = 32;
/// Longest attribute key, in characters.
pub const MAX_ATTRIBUTE_KEY_CHARS: usize = 64;
/// Longest attribute value, in characters.
pub const MAX_ATTRIBUTE_VALUE_CHARS: usize = 500;
/// Default page size.
pub const DEFAULT_PER_PAGE: u32 = 20;

/// A price: integer minor units (cents) so no rounding ever happens, and its currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Money {
    /// Amount in the currency's minor unit (e.g. cents), never negative.
    #[schema(example = 2499)]
    pub amount_minor: i64,
    /// ISO 4217 code: three uppercase letters.
    #[schema(example = "USD")]
    pub currency: String,
}

/// What a client sends to create (`POST`) or fully replace (`PUT`) a product. Also the shape of
/// a product in the seed file.
///
/// Unknown fields are ignored rather than rejected, so a client can send back what it read
/// (`created_at`, `updated_at` and `version` are read-only and ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProductInput {
    /// Optional on create (a UUID v7 is assigned); on replace it must equal the path id.
    #[serde(default)]
    pub id: Option<String>,
    /// Stock keeping unit, unique across the catalog.
    #[schema(example = "KIT-0001")]
    pub sku: String,
    #[schema(example = "Espresso Cup Set")]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Slug of an existing category.
    #[schema(example = "kitchen")]
    pub category: String,
    pub price: Money,
    pub weight_grams: i64,
    /// Logical asset paths (`products/kit-0001.svg`) or absolute http(s) URLs.
    #[serde(default)]
    pub images: Vec<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub featured: bool,
}

/// A product as the API answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Product {
    pub id: String,
    pub sku: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price: Money,
    pub weight_grams: i64,
    /// Public URLs: logical asset paths are turned into hashed, immutable `/static/...` URLs.
    pub images: Vec<String>,
    pub attributes: BTreeMap<String, String>,
    pub featured: bool,
    /// RFC 3339.
    #[schema(example = "2025-01-31T12:00:00.000Z")]
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Bumped by every update; usable in `If-Match`.
    pub version: i64,
}

/// A product as stored: images exactly as given, times as Unix milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredProduct {
    pub id: String,
    pub sku: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price: Money,
    pub weight_grams: i64,
    pub images: Vec<String>,
    pub attributes: BTreeMap<String, String>,
    pub featured: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub version: i64,
}

impl StoredProduct {
    /// The API representation: public image URLs and RFC 3339 times.
    pub fn to_api(&self) -> Product {
        Product {
            id: self.id.clone(),
            sku: self.sku.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            category: self.category.clone(),
            price: self.price.clone(),
            weight_grams: self.weight_grams,
            images: self.images.iter().map(|i| public_image_url(i)).collect(),
            attributes: self.attributes.clone(),
            featured: self.featured,
            created_at: rfc3339(self.created_at_ms),
            updated_at: rfc3339(self.updated_at_ms),
            version: self.version,
        }
    }
}

/// A category, with how many products it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Category {
    #[schema(example = "kitchen")]
    pub slug: String,
    pub name: String,
    pub description: String,
    pub product_count: i64,
}

/// The categories listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CategoryList {
    pub items: Vec<Category>,
}

/// One page of products.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProductPage {
    pub items: Vec<Product>,
    /// 1-based page number.
    pub page: u32,
    pub per_page: u32,
    /// Products matching the filters, over all pages.
    pub total: u64,
    /// `ceil(total / per_page)`; 0 when nothing matches.
    pub total_pages: u64,
}

/// Orders of the product listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub enum Sort {
    /// Name, A to Z (case-insensitive).
    #[default]
    #[serde(rename = "name")]
    Name,
    /// Name, Z to A.
    #[serde(rename = "-name")]
    NameDesc,
    /// Price, lowest first (amounts compared as numbers, whatever their currency).
    #[serde(rename = "price")]
    Price,
    /// Price, highest first.
    #[serde(rename = "-price")]
    PriceDesc,
    /// Most recently created first.
    #[serde(rename = "newest")]
    Newest,
}

/// Query parameters of `GET /api/v1/products`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Case-insensitive substring of the name, description or SKU.
    pub q: Option<String>,
    /// Category slug; an unknown one matches nothing.
    pub category: Option<String>,
    /// Only featured (`true`) or only non-featured (`false`) products.
    pub featured: Option<bool>,
    /// `name` (default), `-name`, `price`, `-price` or `newest`.
    #[param(value_type = Option<String>)]
    pub sort: Option<Sort>,
    /// 1-based page number (default 1).
    pub page: Option<u32>,
    /// Page size, 1 to the configured maximum (default 20; over the maximum is a 400).
    pub per_page: Option<u32>,
}

/// A validated listing request, as the repository takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductFilter {
    /// Lowercased search text.
    pub q: Option<String>,
    pub category: Option<String>,
    pub featured: Option<bool>,
    pub sort: Sort,
    pub page: u32,
    pub per_page: u32,
}

impl Default for ProductFilter {
    fn default() -> Self {
        Self {
            q: None,
            category: None,
            featured: None,
            sort: Sort::Name,
            page: 1,
            per_page: DEFAULT_PER_PAGE,
        }
    }
}

impl ListQuery {
    /// Checks the paging bounds. Over-the-cap `per_page` is refused rather than clamped, so a
    /// client never silently gets fewer items per page than it asked for.
    pub fn into_filter(self, max_per_page: u32) -> Result<ProductFilter, ApiError> {
        let page = self.page.unwrap_or(1);
        if page < 1 {
            return Err(query_error("page", "page starts at 1"));
        }
        let per_page = self.per_page.unwrap_or(DEFAULT_PER_PAGE.min(max_per_page));
        if per_page < 1 || per_page > max_per_page {
            return Err(query_error(
                "per_page",
                format!("per_page must be between 1 and {max_per_page}"),
            ));
        }
        let q = self
            .q
            .map(|q| q.trim().to_lowercase())
            .filter(|q| !q.is_empty());
        if q.as_ref()
            .is_some_and(|q| q.chars().count() > MAX_NAME_CHARS)
        {
            return Err(query_error(
                "q",
                format!("at most {MAX_NAME_CHARS} characters"),
            ));
        }
        Ok(ProductFilter {
            q,
            category: self.category.filter(|c| !c.is_empty()),
            featured: self.featured,
            sort: self.sort.unwrap_or_default(),
            page,
            per_page,
        })
    }
}

/// 400 about a query parameter, in the same shape as the kit's `Query` rejections.
fn query_error(field: &str, detail: impl Into<String>) -> ApiError {
    ApiError::new(
        http::StatusCode::BAD_REQUEST,
        "invalid_query",
        "A query parameter is invalid",
    )
    .field(field)
    .detail(detail)
}

impl ProductInput {
    /// Checks every rule that does not need the database, naming the first field at fault, and
    /// normalizes image references (`/static/...` URLs read from this API go back to their
    /// logical paths, so a client can send back what it read).
    pub fn validate(&mut self) -> Result<(), ApiError> {
        if let Some(id) = &self.id {
            if !is_token(id, MAX_ID_CHARS) {
                return Err(ApiError::invalid(
                    "id",
                    format!("1-{MAX_ID_CHARS} characters of A-Z, a-z, 0-9, '-', '_', '.'"),
                ));
            }
        }
        if !is_token(&self.sku, MAX_SKU_CHARS) {
            return Err(ApiError::invalid(
                "sku",
                format!("1-{MAX_SKU_CHARS} characters of A-Z, a-z, 0-9, '-', '_', '.'"),
            ));
        }
        if self.name.trim().is_empty() {
            return Err(ApiError::invalid("name", "name must not be empty"));
        }
        if self.name.chars().count() > MAX_NAME_CHARS {
            return Err(ApiError::invalid(
                "name",
                format!("at most {MAX_NAME_CHARS} characters"),
            ));
        }
        if self.description.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(ApiError::invalid(
                "description",
                format!("at most {MAX_DESCRIPTION_CHARS} characters"),
            ));
        }
        if self.category.is_empty() {
            return Err(ApiError::invalid("category", "category must not be empty"));
        }
        if self.price.amount_minor < 0 {
            return Err(ApiError::invalid(
                "price.amount_minor",
                "the amount must not be negative",
            ));
        }
        if !(self.price.currency.len() == 3
            && self.price.currency.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(ApiError::invalid(
                "price.currency",
                "an ISO 4217 code: three uppercase letters such as USD",
            ));
        }
        if self.weight_grams < 0 {
            return Err(ApiError::invalid(
                "weight_grams",
                "the weight must not be negative",
            ));
        }
        if self.images.len() > MAX_IMAGES {
            return Err(ApiError::invalid(
                "images",
                format!("at most {MAX_IMAGES} images"),
            ));
        }
        for (i, image) in self.images.iter_mut().enumerate() {
            *image = normalize_image(image).ok_or_else(|| {
                ApiError::invalid(
                    format!("images[{i}]"),
                    "an asset path such as products/kit-0001.svg or an absolute http(s) URL",
                )
            })?;
        }
        if self.attributes.len() > MAX_ATTRIBUTES {
            return Err(ApiError::invalid(
                "attributes",
                format!("at most {MAX_ATTRIBUTES} attributes"),
            ));
        }
        for (key, value) in &self.attributes {
            if key.trim().is_empty() || key.chars().count() > MAX_ATTRIBUTE_KEY_CHARS {
                return Err(ApiError::invalid(
                    "attributes",
                    format!("attribute names are 1-{MAX_ATTRIBUTE_KEY_CHARS} characters"),
                ));
            }
            if value.chars().count() > MAX_ATTRIBUTE_VALUE_CHARS {
                return Err(ApiError::invalid(
                    format!("attributes.{key}"),
                    format!("at most {MAX_ATTRIBUTE_VALUE_CHARS} characters"),
                ));
            }
        }
        Ok(())
    }
}

/// Ids and SKUs go into URLs and logs: keep them to a safe alphabet.
fn is_token(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The stored form of an image reference, or `None` when it is not acceptable.
fn normalize_image(image: &str) -> Option<String> {
    if image.is_empty() || image.chars().count() > MAX_IMAGE_CHARS {
        return None;
    }
    if let Some(rest) = image
        .strip_prefix("http://")
        .or_else(|| image.strip_prefix("https://"))
    {
        let valid = !rest.is_empty()
            && !rest.starts_with('/')
            && !image.chars().any(|c| c.is_whitespace() || c.is_control())
            && image.parse::<http::Uri>().is_ok();
        return valid.then(|| image.to_owned());
    }
    if let Some(rest) = image.strip_prefix(bazaar_assets::URL_PREFIX) {
        // A URL this service handed out: store the logical path it stands for.
        return bazaar_assets::assets()
            .lookup(rest)
            .map(|(asset, _)| asset.logical.clone());
    }
    // A logical path: relative, no parent segments, a conservative alphabet.
    let valid = !image.starts_with('/')
        && !image
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        && image
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
    valid.then(|| image.to_owned())
}

/// The public URL of a stored image reference: logical asset paths become hashed `/static/`
/// URLs; absolute URLs and paths with no compiled-in asset are answered as stored.
pub fn public_image_url(image: &str) -> String {
    if image.starts_with("http://") || image.starts_with("https://") {
        return image.to_owned();
    }
    bazaar_assets::assets()
        .url(image)
        .unwrap_or_else(|| image.to_owned())
}

/// RFC 3339 (UTC, milliseconds) for Unix milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> ProductInput {
        ProductInput {
            id: None,
            sku: "T-1".into(),
            name: "Thing".into(),
            description: String::new(),
            category: "kitchen".into(),
            price: Money {
                amount_minor: 100,
                currency: "USD".into(),
            },
            weight_grams: 10,
            images: vec![],
            attributes: BTreeMap::new(),
            featured: false,
        }
    }

    #[test]
    fn images_are_normalized_or_refused() {
        assert_eq!(
            normalize_image("products/kit-0001.svg").as_deref(),
            Some("products/kit-0001.svg")
        );
        assert_eq!(
            normalize_image("https://cdn.example.com/a.png").as_deref(),
            Some("https://cdn.example.com/a.png")
        );
        for bad in [
            "",
            "/etc/passwd",
            "../x.svg",
            "a//b.svg",
            "http://",
            "ftp://x/y",
            "a b.svg",
        ] {
            assert_eq!(normalize_image(bad), None, "{bad}");
        }
        if let Some(url) = bazaar_assets::assets().url("products/kit-0001.svg") {
            assert_eq!(
                normalize_image(&url).as_deref(),
                Some("products/kit-0001.svg"),
                "a hashed URL goes back to its logical path"
            );
        }
    }

    #[test]
    fn validation_names_the_field() {
        let field = |f: fn(&mut ProductInput)| {
            let mut i = input();
            f(&mut i);
            i.validate().err().and_then(|e| e.field)
        };
        assert_eq!(field(|_| {}), None);
        assert_eq!(field(|i| i.name = " ".into()).as_deref(), Some("name"));
        assert_eq!(field(|i| i.sku = "a b".into()).as_deref(), Some("sku"));
        assert_eq!(
            field(|i| i.price.currency = "usd".into()).as_deref(),
            Some("price.currency")
        );
        assert_eq!(
            field(|i| i.images = vec!["ok.svg".into(), "/bad".into()]).as_deref(),
            Some("images[1]")
        );
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
