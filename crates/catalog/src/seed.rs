//! The seed catalogue: `data/catalog.json`, compiled into the binary so a fresh install has
//! products to show with no setup, loaded on first start (when the products table is empty).
//!
//! Seed products go through the same validation as API input, so a bad edit to the data file
//! stops the service at start-up with the product and field named, rather than serving data
//! the API itself would have refused.

use anyhow::Context;
use serde::Deserialize;

use crate::model::ProductInput;
use crate::repository::{NewCategory, Repository};

/// The seed file, as compiled in.
pub const SEED_JSON: &str = include_str!("../../../data/catalog.json");

#[derive(Debug, Deserialize)]
struct SeedFile {
    categories: Vec<SeedCategory>,
    products: Vec<ProductInput>,
}

#[derive(Debug, Deserialize)]
struct SeedCategory {
    slug: String,
    name: String,
    #[serde(default)]
    description: String,
}

/// The parsed and validated seed.
#[derive(Debug, Clone)]
pub struct Seed {
    pub categories: Vec<NewCategory>,
    pub products: Vec<ProductInput>,
}

/// Parses and validates a seed document.
pub fn parse(json: &str) -> anyhow::Result<Seed> {
    let file: SeedFile = bazaar_kit::extract::parse_json(json.as_bytes())
        .map_err(|e| anyhow::anyhow!("the seed catalogue is invalid: {e} (field {:?})", e.field))?;
    let categories: Vec<NewCategory> = file
        .categories
        .into_iter()
        .enumerate()
        .map(|(position, c)| NewCategory {
            slug: c.slug,
            name: c.name,
            description: c.description,
            position: position as i64,
        })
        .collect();
    let mut products = file.products;
    for product in &mut products {
        product.validate().map_err(|e| {
            anyhow::anyhow!(
                "seed product {} is invalid: field {}: {}",
                product.id.as_deref().unwrap_or(&product.sku),
                e.field.as_deref().unwrap_or("?"),
                e.detail.as_deref().unwrap_or("")
            )
        })?;
        if !categories.iter().any(|c| c.slug == product.category) {
            anyhow::bail!(
                "seed product {} names unknown category {}",
                product.sku,
                product.category
            );
        }
    }
    Ok(Seed {
        categories,
        products,
    })
}

/// The compiled-in seed.
pub fn builtin() -> anyhow::Result<Seed> {
    parse(SEED_JSON)
}

/// Loads `seed` if the catalogue has no products yet; returns how many products it added.
pub async fn load(repository: &Repository, seed: &Seed) -> anyhow::Result<u64> {
    let inserted = repository
        .seed(&seed.categories, &seed.products)
        .await
        .context("loading the seed catalogue")?;
    if inserted > 0 {
        tracing::info!(
            products = inserted,
            categories = seed.categories.len(),
            "seeded the catalogue"
        );
    }
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_seed_is_valid_and_consistent() {
        let seed = builtin().expect("valid seed");
        assert!(seed.categories.len() >= 7, "{}", seed.categories.len());
        assert!(seed.products.len() >= 50, "{}", seed.products.len());
        let mut skus: Vec<_> = seed.products.iter().map(|p| &p.sku).collect();
        skus.sort();
        skus.dedup();
        assert_eq!(skus.len(), seed.products.len(), "SKUs are unique");
        let mut ids: Vec<_> = seed.products.iter().map(|p| &p.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), seed.products.len(), "ids are unique");
        for product in &seed.products {
            for image in &product.images {
                assert!(
                    bazaar_assets::assets().url(image).is_some(),
                    "image {image} of {} is a compiled-in asset",
                    product.sku
                );
            }
        }
    }

    #[test]
    fn bad_seed_names_the_product_and_field() {
        let json = r#"{"categories":[{"slug":"a","name":"A"}],"products":[{"id":"x","sku":"X-1",
            "name":"X","category":"a","price":{"amount_minor":1,"currency":"usd"},"weight_grams":1}]}"#;
        let error = parse(json).expect_err("bad currency").to_string();
        assert!(
            error.contains("price.currency") && error.contains('x'),
            "{error}"
        );
    }
}
