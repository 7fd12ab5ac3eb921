//! The seed: warehouses from `data/warehouses.json` and initial stock for every product of the
//! demo catalogue (`data/catalog.json`), both compiled into the binary so a fresh install can
//! take orders with no setup. Loaded on first start, when there is no stock yet.
//!
//! Quantities are deterministic (derived from a hash of product and warehouse ids, 5 to 60
//! units), so every install and every test sees the same numbers; the warehouse file's
//! `stock_overrides` make a few products deliberately scarce (zero or low somewhere), so the
//! out-of-stock and split-shipment paths show up in a demo.

use std::collections::BTreeSet;

use anyhow::Context;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::model::Warehouse;
use crate::repository::{Repository, SeedStock};

/// The warehouse file, as compiled in.
pub const WAREHOUSES_JSON: &str = include_str!("../../../data/warehouses.json");
/// The demo catalogue, as compiled in: only its product ids are used here.
pub const CATALOG_JSON: &str = include_str!("../../../data/catalog.json");

/// Fewest units a hash-derived quantity gives.
pub const MIN_SEED_QUANTITY: i64 = 5;
/// Most units a hash-derived quantity gives.
pub const MAX_SEED_QUANTITY: i64 = 60;

#[derive(Debug, Deserialize)]
struct WarehouseFile {
    warehouses: Vec<Warehouse>,
    #[serde(default)]
    stock_overrides: Vec<Override>,
}

#[derive(Debug, Deserialize)]
struct Override {
    product_id: String,
    warehouse_id: String,
    quantity: i64,
}

#[derive(Debug, Deserialize)]
struct CatalogFile {
    products: Vec<CatalogProduct>,
}

#[derive(Debug, Deserialize)]
struct CatalogProduct {
    id: String,
}

/// The parsed and checked seed.
#[derive(Debug, Clone)]
pub struct Seed {
    pub warehouses: Vec<Warehouse>,
    /// One entry per product per warehouse.
    pub stock: Vec<SeedStock>,
}

/// The hash-derived quantity of `product_id` at `warehouse_id`: 5 to 60.
pub fn seed_quantity(product_id: &str, warehouse_id: &str) -> i64 {
    let digest = Sha256::digest(format!("{product_id}\n{warehouse_id}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let span = (MAX_SEED_QUANTITY - MIN_SEED_QUANTITY + 1) as u64;
    MIN_SEED_QUANTITY + (u64::from_be_bytes(first) % span) as i64
}

/// Parses a warehouse file and a catalogue, checking that they agree.
pub fn parse(warehouses_json: &str, catalog_json: &str) -> anyhow::Result<Seed> {
    let file: WarehouseFile =
        serde_json::from_str(warehouses_json).context("the warehouse file is invalid")?;
    let catalog: CatalogFile =
        serde_json::from_str(catalog_json).context("the seed catalogue is invalid")?;
    if file.warehouses.is_empty() {
        anyhow::bail!("the warehouse file lists no warehouses");
    }
    let mut warehouse_ids = BTreeSet::new();
    for w in &file.warehouses {
        if w.id.trim().is_empty() || !warehouse_ids.insert(w.id.as_str()) {
            anyhow::bail!("warehouse id {:?} is empty or repeated", w.id);
        }
        if !(-90.0..=90.0).contains(&w.lat) || !(-180.0..=180.0).contains(&w.lon) {
            anyhow::bail!("warehouse {} has coordinates out of range", w.id);
        }
    }
    let product_ids: Vec<&str> = catalog.products.iter().map(|p| p.id.as_str()).collect();
    let mut stock = Vec::with_capacity(product_ids.len() * file.warehouses.len());
    for product_id in &product_ids {
        for w in &file.warehouses {
            stock.push(SeedStock {
                product_id: (*product_id).to_owned(),
                warehouse_id: w.id.clone(),
                quantity: seed_quantity(product_id, &w.id),
            });
        }
    }
    for o in &file.stock_overrides {
        if o.quantity < 0 {
            anyhow::bail!(
                "stock override of {} at {} is negative",
                o.product_id,
                o.warehouse_id
            );
        }
        let entry = stock
            .iter_mut()
            .find(|s| s.product_id == o.product_id && s.warehouse_id == o.warehouse_id)
            .with_context(|| {
                format!(
                    "stock override names an unknown product or warehouse: {} at {}",
                    o.product_id, o.warehouse_id
                )
            })?;
        entry.quantity = o.quantity;
    }
    Ok(Seed {
        warehouses: file.warehouses,
        stock,
    })
}

/// The compiled-in seed.
pub fn builtin() -> anyhow::Result<Seed> {
    parse(WAREHOUSES_JSON, CATALOG_JSON)
}

/// Loads `seed` if there is no stock yet; returns how many stock rows it added.
pub async fn load(repository: &Repository, seed: &Seed) -> anyhow::Result<u64> {
    let inserted = repository
        .seed(&seed.warehouses, &seed.stock)
        .await
        .context("loading the seed stock")?;
    if inserted > 0 {
        tracing::info!(
            rows = inserted,
            warehouses = seed.warehouses.len(),
            "seeded the inventory"
        );
    }
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_seed_covers_every_product_everywhere() {
        let seed = builtin().expect("valid seed");
        assert!(seed.warehouses.len() >= 3);
        let catalog: CatalogFile = serde_json::from_str(CATALOG_JSON).unwrap();
        assert_eq!(
            seed.stock.len(),
            catalog.products.len() * seed.warehouses.len()
        );
        // Some are deliberately out of stock somewhere, the rest hash into 5..=60.
        assert!(seed.stock.iter().any(|s| s.quantity == 0));
        assert!(seed
            .stock
            .iter()
            .all(|s| (0..=MAX_SEED_QUANTITY).contains(&s.quantity)));
        let hashed = seed
            .stock
            .iter()
            .filter(|s| s.quantity >= MIN_SEED_QUANTITY)
            .count();
        assert!(hashed >= seed.stock.len() - 10, "{hashed}");
    }

    #[test]
    fn quantities_are_deterministic_and_in_range() {
        for i in 0..500 {
            let q = seed_quantity(&format!("p{i}"), "reno");
            assert!((MIN_SEED_QUANTITY..=MAX_SEED_QUANTITY).contains(&q), "{q}");
            assert_eq!(q, seed_quantity(&format!("p{i}"), "reno"));
        }
    }

    #[test]
    fn overrides_must_name_known_products_and_warehouses() {
        let warehouses = r#"{"warehouses":[{"id":"w","name":"W","city":"C","country":"US","lat":1,"lon":2}],
            "stock_overrides":[{"product_id":"nope","warehouse_id":"w","quantity":0}]}"#;
        let catalog = r#"{"products":[{"id":"p"}]}"#;
        let error = parse(warehouses, catalog)
            .expect_err("unknown product")
            .to_string();
        assert!(error.contains("nope"), "{error}");
    }
}
