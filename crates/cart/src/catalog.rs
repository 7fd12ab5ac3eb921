//! What the cart asks the catalog: one product by id (`GET /api/v1/products/{id}`, the
//! catalog's public contract), reduced to what a cart line shows. The catalog is the source of
//! truth for prices; the cart only keeps the last answer for when the catalog is down.

use std::time::Duration;

use bazaar_kit::client::{CallError, ServiceClient};
use serde::Deserialize;

use crate::model::{Money, ProductSnapshot};

/// The catalog's registry name.
pub const CATALOG: &str = "catalog";

/// The catalog's answer, as far as the cart reads it (other fields are ignored).
#[derive(Debug, Deserialize)]
struct CatalogProduct {
    sku: String,
    name: String,
    price: Money,
    weight_grams: i64,
    #[serde(default)]
    images: Vec<String>,
}

/// What a product lookup found.
#[derive(Debug)]
pub enum Lookup {
    Found(ProductSnapshot),
    /// The catalog answered 404: there is no such product (any more).
    Missing,
    /// The catalog could not answer (down, timed out, 5xx, undecodable).
    Unavailable(CallError),
}

/// Calls to the catalog.
#[derive(Clone)]
pub struct Catalog {
    client: ServiceClient,
}

impl Catalog {
    /// A catalog reached through `client`, each attempt bounded by `timeout`: a slow catalog
    /// must not hold a cart page for the client's default five seconds per attempt.
    pub fn new(client: ServiceClient, timeout: Duration) -> Self {
        Self {
            client: client.with_timeout(timeout),
        }
    }

    /// The product `id` (validated by the caller to the catalog's id alphabet, so it goes
    /// into the path as it is).
    pub async fn product(&self, id: &str) -> Lookup {
        let path = format!("/api/v1/products/{id}");
        match self.client.get_json::<CatalogProduct>(CATALOG, &path).await {
            Ok(product) => Lookup::Found(ProductSnapshot {
                sku: product.sku,
                name: product.name,
                image: product.images.into_iter().next().unwrap_or_default(),
                price: product.price,
                weight_grams: product.weight_grams,
            }),
            Err(CallError::Status { status: 404, .. }) => Lookup::Missing,
            Err(error) => Lookup::Unavailable(error),
        }
    }
}
