//! The currency service's wire contract (docs/shop.md, "currency").

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::rates::{Currency, Rates};

/// The rate table as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CurrencyList {
    /// The currency every rate is quoted against.
    #[schema(example = "USD")]
    pub base: String,
    /// The date the rates are from (ISO 8601).
    #[schema(example = "2025-06-13")]
    pub date: String,
    #[schema(example = "ECB reference rates, 2025-06-13")]
    pub source: String,
    pub currencies: Vec<CurrencyInfo>,
}

/// One currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CurrencyInfo {
    /// ISO 4217 code.
    #[schema(example = "JPY")]
    pub code: String,
    #[schema(example = "Japanese yen")]
    pub name: String,
    /// ISO 4217 exponent: digits of the minor unit (2 for cents, 0 for yen).
    #[schema(example = 0)]
    pub minor_units: u32,
    /// Units of this currency per one unit of `base`, as an exact decimal string.
    #[schema(example = "144.284225")]
    pub rate: String,
}

impl From<&Currency> for CurrencyInfo {
    fn from(currency: &Currency) -> Self {
        Self {
            code: currency.code.clone(),
            name: currency.name.clone(),
            minor_units: currency.minor_units,
            rate: currency.rate.to_string(),
        }
    }
}

impl From<&Rates> for CurrencyList {
    fn from(rates: &Rates) -> Self {
        Self {
            base: rates.base.clone(),
            date: rates.date.clone(),
            source: rates.source.clone(),
            currencies: rates.currencies.iter().map(CurrencyInfo::from).collect(),
        }
    }
}

/// The query of a conversion.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConvertQuery {
    /// The amount in minor units of `from` (cents for USD); may be negative.
    #[param(example = 1999)]
    pub amount_minor: i64,
    /// ISO 4217 code of the amount's currency (case-insensitive).
    #[param(example = "USD")]
    pub from: String,
    /// ISO 4217 code to convert into (case-insensitive).
    #[param(example = "JPY")]
    pub to: String,
}

/// A converted amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConversionResult {
    /// The amount in minor units of `currency`.
    #[schema(example = 2884)]
    pub amount_minor: i64,
    #[schema(example = "JPY")]
    pub currency: String,
    /// Units of `to` per unit of `from`, rounded half-even to 8 decimal places (informative: the
    /// amount is computed from the exact table rates).
    #[schema(example = "144.284225")]
    pub rate: String,
    /// Always `half-even`: a result exactly halfway between two minor units goes to the even one.
    #[schema(example = "half-even")]
    pub rounding: String,
}
