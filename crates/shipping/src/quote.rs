//! Where a destination is and what shipping to it costs.
//!
//! **Distance** is the great-circle (haversine) distance on a sphere of radius 6371 km from a
//! parcel's origin (its warehouse) to the destination.
//!
//! **Price**, in USD minor units (cents), per parcel:
//!
//! ```text
//! fee = min(499 + 50 × ⌈distance_km / 100⌉ + 80 × ⌈weight_grams / 500⌉, 7500)
//!       + 1500 if the parcel crosses a border
//! ```
//!
//! that is a base of 4.99 USD, 0.50 per started 100 km, 0.80 per started 500 g, capped at
//! 75.00 USD, plus a 15.00 USD international surcharge (the origin's country, from the postal
//! table's nearest place, differs from the destination's). A quote for several parcels costs
//! the sum of their fees. Distance is geometry and stays a float; it becomes an integer count
//! of started 100 km blocks before it touches money, so every amount is exact integer cents.
//!
//! **Delivery estimate**, per parcel: `2 + ⌊distance_km / 1000⌋` days, `+ 3` across a border;
//! a quote answers the slowest parcel's, and its `distance_km` and `origin_warehouse_id` are the
//! farthest parcel's.
//!
//! **Unshippable** (422 `unshippable_destination`): a postal code the table does not know or
//! has no coordinates for, a country in `unserved_countries` (default `AQ`, which is also where
//! every point south of 60°S is), or a parcel farther than `max_distance_km`.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::http::StatusCode;
use bazaar_kit::ApiError;

use crate::model::{Destination, Money, ParcelInput, ParcelQuote, Quote};
use crate::postal::PostalTable;

/// Mean Earth radius used for distances, in km.
pub const EARTH_RADIUS_KM: f64 = 6371.0;
/// Base fee per parcel (4.99 USD).
pub const BASE_FEE_MINOR: i64 = 499;
/// Fee per started 100 km (0.50 USD).
pub const PER_100_KM_MINOR: i64 = 50;
/// Fee per started 500 g (0.80 USD).
pub const PER_500_G_MINOR: i64 = 80;
/// Most a parcel costs before the international surcharge (75.00 USD).
pub const PARCEL_CAP_MINOR: i64 = 7_500;
/// Surcharge for a parcel crossing a border (15.00 USD).
pub const INTERNATIONAL_SURCHARGE_MINOR: i64 = 1_500;
/// Currency of every fee.
pub const FEE_CURRENCY: &str = "USD";

/// Great-circle distance between two `(lat, lon)` points in degrees, in km.
pub fn haversine_km(from: (f64, f64), to: (f64, f64)) -> f64 {
    let (lat1, lon1) = (from.0.to_radians(), from.1.to_radians());
    let (lat2, lon2) = (to.0.to_radians(), to.1.to_radians());
    let a = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

/// The fee of one parcel, in cents (see the module documentation).
pub fn parcel_fee_minor(distance_km: f64, weight_grams: i64, international: bool) -> i64 {
    // Distances are at most half the circumference (~20,015 km), so the block count is small.
    let blocks_100_km = (distance_km.max(0.0) / 100.0).ceil() as i64;
    let blocks_500_g = weight_grams.max(0).saturating_add(499) / 500;
    let fee = BASE_FEE_MINOR
        .saturating_add(PER_100_KM_MINOR.saturating_mul(blocks_100_km))
        .saturating_add(PER_500_G_MINOR.saturating_mul(blocks_500_g))
        .min(PARCEL_CAP_MINOR);
    if international {
        fee + INTERNATIONAL_SURCHARGE_MINOR
    } else {
        fee
    }
}

/// Days a parcel takes (see the module documentation).
pub fn parcel_days(distance_km: f64, international: bool) -> i64 {
    2 + (distance_km.max(0.0) / 1000.0).floor() as i64 + if international { 3 } else { 0 }
}

/// A destination resolved to a point.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Resolved {
    /// ISO 3166-1 alpha-2.
    pub country: String,
    /// The normalised code, for postal destinations.
    pub postal_code: Option<String>,
    /// The table's place name, for postal destinations.
    pub place: Option<String>,
    pub lat: f64,
    pub lon: f64,
    /// The input field an "unshippable" problem about this destination names.
    #[serde(skip)]
    pub field: String,
}

/// Resolves destinations and prices parcels. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Quoter {
    postal: Arc<PostalTable>,
    max_distance_km: f64,
    unserved: BTreeSet<String>,
}

/// 422 `unshippable_destination` naming `field`.
pub fn unshippable(field: &str, detail: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "unshippable_destination",
        "We cannot ship to this destination",
    )
    .field(field)
    .detail(detail)
}

impl Quoter {
    pub fn new(postal: Arc<PostalTable>, max_distance_km: f64, unserved: &[String]) -> Self {
        Self {
            postal,
            max_distance_km,
            unserved: unserved
                .iter()
                .map(|c| c.trim().to_ascii_uppercase())
                .collect(),
        }
    }

    pub fn postal(&self) -> &PostalTable {
        &self.postal
    }

    /// Where a postal address is; `country_field`/`code_field` name the inputs in problems.
    pub fn locate(
        &self,
        country: &str,
        postal_code: &str,
        country_field: &str,
        code_field: &str,
    ) -> Result<Resolved, ApiError> {
        let country = country.trim().to_ascii_uppercase();
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ApiError::invalid(
                country_field,
                "country must be an ISO 3166-1 alpha-2 code such as US",
            ));
        }
        if postal_code.trim().is_empty() {
            return Err(ApiError::invalid(code_field, "postal_code is required"));
        }
        if self.unserved.contains(&country) {
            return Err(unshippable(
                country_field,
                format!("we do not ship to {country}"),
            ));
        }
        let place = self.postal.lookup(&country, postal_code).ok_or_else(|| {
            unshippable(
                code_field,
                format!(
                    "postal code {:?} in {country} is not one we deliver to",
                    postal_code.trim()
                ),
            )
        })?;
        let (lat, lon) = place.point.ok_or_else(|| {
            unshippable(
                code_field,
                format!(
                    "postal code {} in {country} has no known location",
                    place.postal_code
                ),
            )
        })?;
        Ok(Resolved {
            country,
            postal_code: Some(place.postal_code.clone()),
            place: Some(place.name.clone()),
            lat,
            lon,
            field: code_field.to_owned(),
        })
    }

    /// Resolves a destination: coordinates when given, else country and postal code.
    pub fn resolve(&self, destination: &Destination) -> Result<Resolved, ApiError> {
        destination.validate()?;
        match (destination.lat, destination.lon) {
            (Some(lat), Some(lon)) => {
                let country = self.postal.country_of(lat, lon).unwrap_or("").to_owned();
                if self.unserved.contains(&country) {
                    return Err(unshippable(
                        "destination",
                        format!("we do not ship to {country}"),
                    ));
                }
                Ok(Resolved {
                    country,
                    postal_code: None,
                    place: None,
                    lat,
                    lon,
                    field: "destination".to_owned(),
                })
            }
            _ => self.locate(
                destination.country.as_deref().unwrap_or(""),
                destination.postal_code.as_deref().unwrap_or(""),
                "destination.country",
                "destination.postal_code",
            ),
        }
    }

    /// Prices `parcels` to `destination`.
    pub fn quote(
        &self,
        destination: &Resolved,
        parcels: &[ParcelInput],
    ) -> Result<Quote, ApiError> {
        if parcels.is_empty() {
            return Err(ApiError::invalid(
                "parcels",
                "at least one parcel is required",
            ));
        }
        let mut quotes = Vec::with_capacity(parcels.len());
        for (i, parcel) in parcels.iter().enumerate() {
            parcel.validate(&format!("parcels[{i}]"))?;
            let distance =
                haversine_km((parcel.lat, parcel.lon), (destination.lat, destination.lon));
            if distance > self.max_distance_km {
                return Err(unshippable(
                    &destination.field,
                    format!(
                        "the destination is {distance:.0} km from warehouse {}, beyond the {:.0} km we ship",
                        parcel.warehouse_id, self.max_distance_km
                    ),
                ));
            }
            let origin_country = self.postal.country_of(parcel.lat, parcel.lon).unwrap_or("");
            let international = origin_country != destination.country;
            quotes.push(ParcelQuote {
                warehouse_id: parcel.warehouse_id.clone(),
                distance_km: round_km(distance),
                weight_grams: parcel.weight_grams,
                international,
                estimated_days: parcel_days(distance, international),
                amount: Money::usd(parcel_fee_minor(
                    distance,
                    parcel.weight_grams,
                    international,
                )),
            });
        }
        let total = quotes
            .iter()
            .try_fold(0i64, |sum, q| sum.checked_add(q.amount.amount_minor))
            .ok_or_else(|| ApiError::invalid("parcels", "too many parcels"))?;
        let farthest = quotes
            .iter()
            .max_by(|a, b| a.distance_km.total_cmp(&b.distance_km))
            .expect("at least one parcel");
        Ok(Quote {
            amount: Money::usd(total),
            distance_km: farthest.distance_km,
            origin_warehouse_id: farthest.warehouse_id.clone(),
            estimated_days: quotes.iter().map(|q| q.estimated_days).max().unwrap_or(0),
            parcels: quotes,
        })
    }
}

/// Kilometres to one decimal place (what the API shows).
pub fn round_km(km: f64) -> f64 {
    (km * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haversine_matches_known_distances() {
        let nyc = (40.7128, -74.0060);
        let la = (34.0522, -118.2437);
        let d = haversine_km(nyc, la);
        assert!((d - 3936.0).abs() < 39.36, "NYC-LA {d}");
        assert!(haversine_km(nyc, nyc).abs() < 1e-9);
        let london = (51.5074, -0.1278);
        let paris = (48.8566, 2.3522);
        let d = haversine_km(london, paris);
        assert!((d - 343.5).abs() < 3.5, "London-Paris {d}");
        // Antipodes: half the circumference.
        let d = haversine_km((0.0, 0.0), (0.0, 180.0));
        assert!((d - std::f64::consts::PI * EARTH_RADIUS_KM).abs() < 1e-6);
    }

    #[test]
    fn fees_follow_the_formula() {
        // Base only.
        assert_eq!(parcel_fee_minor(0.0, 0, false), 499);
        // 1 km and 1 g both start a block.
        assert_eq!(parcel_fee_minor(1.0, 1, false), 499 + 50 + 80);
        // Exactly 100 km and 500 g: one block each.
        assert_eq!(parcel_fee_minor(100.0, 500, false), 499 + 50 + 80);
        assert_eq!(parcel_fee_minor(100.1, 501, false), 499 + 100 + 160);
        // NYC-LA, 2 kg: 40 blocks of 100 km, 4 of 500 g.
        assert_eq!(parcel_fee_minor(3936.0, 2000, false), 499 + 2000 + 320);
        // Capped, then the surcharge.
        assert_eq!(parcel_fee_minor(19_000.0, 50_000, false), PARCEL_CAP_MINOR);
        assert_eq!(
            parcel_fee_minor(19_000.0, 50_000, true),
            PARCEL_CAP_MINOR + INTERNATIONAL_SURCHARGE_MINOR
        );
        assert_eq!(parcel_fee_minor(0.0, 0, true), 499 + 1500);
        assert_eq!(parcel_days(3936.0, false), 5);
        assert_eq!(parcel_days(5900.0, true), 10);
    }
}
