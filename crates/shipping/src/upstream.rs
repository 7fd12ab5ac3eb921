//! The public quote's calls to other services, over their published contracts
//! (docs/shop.md): inventory's batch stock read (`GET /api/v1/inventory?product_ids=`) for where
//! stock is, and catalog's product read (`GET /api/v1/products/{id}`) for weights; then the
//! choice of warehouses the quote prices.
//!
//! Both are public endpoints, so these calls carry no service token: a public quote does not
//! depend on the identity service being up.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use bazaar_kit::client::{CallError, ServiceClient};
use bazaar_kit::ApiError;
use serde::Deserialize;

use crate::model::{ItemInput, ParcelInput};
use crate::quote::{haversine_km, Resolved};

/// Registry name of the inventory service.
pub const INVENTORY: &str = "inventory";
/// Registry name of the catalog service.
pub const CATALOG: &str = "catalog";

/// One product's stock, as inventory answers it.
#[derive(Debug, Clone, Deserialize)]
pub struct StockItem {
    pub product_id: String,
    #[serde(default)]
    pub warehouses: Vec<WarehouseStock>,
}

/// Stock at one warehouse.
#[derive(Debug, Clone, Deserialize)]
pub struct WarehouseStock {
    pub warehouse_id: String,
    pub lat: f64,
    pub lon: f64,
    pub available: i64,
}

#[derive(Debug, Deserialize)]
struct StockList {
    items: Vec<StockItem>,
}

#[derive(Debug, Deserialize)]
struct Product {
    weight_grams: i64,
}

/// Calls to inventory and catalog. Cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    client: ServiceClient,
}

/// 503 for a dependency that is down, slow or answering nonsense (the client may retry); 502
/// when it refused a request we thought valid (a contract mismatch, not the client's fault).
fn unavailable(error: &CallError) -> ApiError {
    tracing::warn!(%error, "a dependency of the shipping quote failed");
    if let CallError::Status {
        service, status, ..
    } = error
    {
        if (400..500).contains(status) {
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_rejected",
                "A dependency refused the request",
            )
            .detail(format!("the {service} service answered {status}"));
        }
    }
    let service = match error {
        CallError::NoInstance(s) => s.as_str(),
        CallError::Timeout { service }
        | CallError::Transport { service, .. }
        | CallError::Status { service, .. }
        | CallError::Decode { service, .. }
        | CallError::Encode { service, .. }
        | CallError::Batch { service, .. } => service.as_str(),
        CallError::Token { audience, .. } => audience.as_str(),
    };
    ApiError::unavailable(
        "upstream_unavailable",
        format!("the {service} service is unavailable; try again shortly"),
    )
}

impl Upstream {
    pub fn new(client: ServiceClient) -> Self {
        Self { client }
    }

    /// Stock of `product_ids` (distinct, at most 100: inventory's batch limit).
    pub async fn stock(&self, product_ids: &[String]) -> Result<Vec<StockItem>, ApiError> {
        let ids: String =
            form_urlencoded::byte_serialize(product_ids.join(",").as_bytes()).collect();
        let list: StockList = self
            .client
            .get_json(INVENTORY, &format!("/api/v1/inventory?product_ids={ids}"))
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(list.items)
    }

    /// A product's weight; `None` when the catalog has no such product.
    pub async fn weight(&self, product_id: &str) -> Result<Option<i64>, ApiError> {
        let path = format!("/api/v1/products/{}", encode_segment(product_id));
        match self.client.get_json::<Product>(CATALOG, &path).await {
            Ok(product) => Ok(Some(product.weight_grams.max(0))),
            Err(CallError::Status { status: 404, .. }) => Ok(None),
            Err(error) => Err(unavailable(&error)),
        }
    }

    /// Where `items` ship from: the parcels a quote prices. Inventory and catalog are asked
    /// concurrently.
    pub async fn parcels(
        &self,
        items: &[ItemInput],
        destination: &Resolved,
    ) -> Result<Vec<ParcelInput>, ApiError> {
        // Total demand per product, remembering the first item that asked (for problems).
        let mut demand: BTreeMap<&str, (i64, usize)> = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            let entry = demand.entry(item.product_id.as_str()).or_insert((0, i));
            entry.0 = entry.0.saturating_add(item.quantity);
        }
        let ids: Vec<String> = demand.keys().map(|id| (*id).to_owned()).collect();
        let (stock, weights) = futures::join!(
            self.stock(&ids),
            futures::future::try_join_all(ids.iter().map(|id| self.weight(id)))
        );
        let stock = stock?;
        let weights = weights?;
        let mut products = Vec::with_capacity(ids.len());
        for (id, weight) in ids.iter().zip(weights) {
            let (quantity, item) = demand[id.as_str()];
            let weight = weight.ok_or_else(|| {
                ApiError::invalid(
                    format!("items[{item}].product_id"),
                    format!("there is no product {id}"),
                )
            })?;
            let warehouses = stock
                .iter()
                .find(|s| &s.product_id == id)
                .map(|s| s.warehouses.clone())
                .unwrap_or_default();
            products.push(Demand {
                product_id: id.clone(),
                item,
                quantity,
                weight_grams: weight,
                warehouses,
            });
        }
        plan(&products, (destination.lat, destination.lon))
    }
}

/// What one product needs.
#[derive(Debug, Clone)]
pub struct Demand {
    pub product_id: String,
    /// Index of the first item asking for it.
    pub item: usize,
    pub quantity: i64,
    pub weight_grams: i64,
    pub warehouses: Vec<WarehouseStock>,
}

/// Chooses the warehouses: the nearest one that can ship everything, when there is one;
/// otherwise each product from the nearest warehouse that has all of it, or split over the
/// nearest ones (inventory's own allocation rule). Not enough anywhere → 409
/// `insufficient_stock` naming the item's quantity.
pub fn plan(products: &[Demand], destination: (f64, f64)) -> Result<Vec<ParcelInput>, ApiError> {
    // Every warehouse that appears, nearest first (ties by id, so the plan is deterministic).
    let mut warehouses: Vec<(f64, &WarehouseStock)> = Vec::new();
    for stock in products.iter().flat_map(|p| &p.warehouses) {
        if !warehouses
            .iter()
            .any(|(_, w)| w.warehouse_id == stock.warehouse_id)
        {
            warehouses.push((haversine_km((stock.lat, stock.lon), destination), stock));
        }
    }
    warehouses.sort_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then(a.1.warehouse_id.cmp(&b.1.warehouse_id))
    });
    let available = |product: &Demand, warehouse: &str| {
        product
            .warehouses
            .iter()
            .find(|w| w.warehouse_id == warehouse)
            .map_or(0, |w| w.available.max(0))
    };
    let weight_of = |product: &Demand, units: i64| product.weight_grams.saturating_mul(units);

    // Grams per warehouse, in the order parcels are first needed.
    let mut parcels: Vec<(WarehouseStock, i64)> = Vec::new();
    let mut add = |warehouse: &WarehouseStock, grams: i64| match parcels
        .iter_mut()
        .find(|(w, _)| w.warehouse_id == warehouse.warehouse_id)
    {
        Some((_, total)) => *total = total.saturating_add(grams),
        None => parcels.push((warehouse.clone(), grams)),
    };

    let everything = warehouses.iter().find(|(_, w)| {
        products
            .iter()
            .all(|p| available(p, &w.warehouse_id) >= p.quantity)
    });
    if let Some((_, warehouse)) = everything {
        let grams = products
            .iter()
            .fold(0i64, |sum, p| sum.saturating_add(weight_of(p, p.quantity)));
        add(warehouse, grams);
    } else {
        for product in products {
            let whole = warehouses
                .iter()
                .find(|(_, w)| available(product, &w.warehouse_id) >= product.quantity);
            if let Some((_, warehouse)) = whole {
                add(warehouse, weight_of(product, product.quantity));
                continue;
            }
            let total: i64 = warehouses
                .iter()
                .map(|(_, w)| available(product, &w.warehouse_id))
                .fold(0i64, i64::saturating_add);
            if total < product.quantity {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "insufficient_stock",
                    "Not enough stock",
                )
                .field(format!("items[{}].quantity", product.item))
                .detail(format!(
                    "only {total} of {} {} available",
                    product.quantity, product.product_id
                )));
            }
            let mut remaining = product.quantity;
            for (_, warehouse) in &warehouses {
                if remaining == 0 {
                    break;
                }
                let take = available(product, &warehouse.warehouse_id).min(remaining);
                if take > 0 {
                    add(warehouse, weight_of(product, take));
                    remaining -= take;
                }
            }
        }
    }
    Ok(parcels
        .into_iter()
        .map(|(warehouse, grams)| ParcelInput {
            warehouse_id: warehouse.warehouse_id,
            lat: warehouse.lat,
            lon: warehouse.lon,
            weight_grams: grams,
        })
        .collect())
}

/// Percent-encodes a path segment (everything but RFC 3986 unreserved characters).
fn encode_segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stock(id: &str, lat: f64, lon: f64, available: i64) -> WarehouseStock {
        WarehouseStock {
            warehouse_id: id.into(),
            lat,
            lon,
            available,
        }
    }

    fn demand(id: &str, quantity: i64, grams: i64, warehouses: Vec<WarehouseStock>) -> Demand {
        Demand {
            product_id: id.into(),
            item: 0,
            quantity,
            weight_grams: grams,
            warehouses,
        }
    }

    const NEAR: (f64, f64) = (40.0, -83.0);
    const FAR: (f64, f64) = (39.5, -119.8);
    const DEST: (f64, f64) = (40.7, -74.0);

    #[test]
    fn one_warehouse_for_everything_when_possible() {
        let products = [
            demand(
                "a",
                2,
                100,
                vec![
                    stock("near", NEAR.0, NEAR.1, 1),
                    stock("far", FAR.0, FAR.1, 5),
                ],
            ),
            demand(
                "b",
                1,
                300,
                vec![
                    stock("near", NEAR.0, NEAR.1, 9),
                    stock("far", FAR.0, FAR.1, 9),
                ],
            ),
        ];
        let parcels = plan(&products, DEST).unwrap();
        assert_eq!(parcels.len(), 1);
        assert_eq!(parcels[0].warehouse_id, "far");
        assert_eq!(parcels[0].weight_grams, 500);
    }

    #[test]
    fn nearest_per_item_then_split() {
        let products = [
            demand(
                "a",
                2,
                100,
                vec![
                    stock("near", NEAR.0, NEAR.1, 5),
                    stock("far", FAR.0, FAR.1, 0),
                ],
            ),
            demand(
                "b",
                3,
                300,
                vec![
                    stock("near", NEAR.0, NEAR.1, 0),
                    stock("far", FAR.0, FAR.1, 3),
                ],
            ),
            demand(
                "c",
                4,
                10,
                vec![
                    stock("near", NEAR.0, NEAR.1, 1),
                    stock("far", FAR.0, FAR.1, 3),
                ],
            ),
        ];
        let parcels = plan(&products, DEST).unwrap();
        let grams = |id: &str| {
            parcels
                .iter()
                .find(|p| p.warehouse_id == id)
                .unwrap()
                .weight_grams
        };
        assert_eq!(grams("near"), 200 + 10);
        assert_eq!(grams("far"), 900 + 30);
        let short = [demand("a", 7, 1, vec![stock("near", NEAR.0, NEAR.1, 5)])];
        let error = plan(&short, DEST).unwrap_err();
        assert_eq!(error.code, "insufficient_stock");
        assert_eq!(error.field.as_deref(), Some("items[0].quantity"));
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode_segment("kit-0001"), "kit-0001");
        assert_eq!(encode_segment("a b?c"), "a%20b%3Fc");
    }
}
