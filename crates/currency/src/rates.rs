//! The rate table and exact money conversion.
//!
//! Rates are decimal strings ("0.868659": units of the currency per one unit of the base
//! currency, USD) parsed into integer mantissa and scale, so no binary floating point ever
//! touches an amount. A conversion of `amount_minor` from currency F (exponent `e_f`, rate
//! `m_f / 10^s_f`) to T (exponent `e_t`, rate `m_t / 10^s_t`) is the one exact fraction
//!
//! ```text
//! amount_minor * m_t * 10^(e_t + s_f)
//! -----------------------------------
//!       m_f * 10^(e_f + s_t)
//! ```
//!
//! computed in `i128` with checked operations and rounded once, half to even (banker's
//! rounding: a result exactly halfway between two minor units goes to the even one, so rounding
//! errors do not drift in one direction over many conversions). Anything that does not fit
//! (`i128` intermediates or an `i64` result) is an [`ConvertError::Overflow`], never a wrap.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The compiled-in rate table.
pub const RATES_JSON: &str = include_str!("../../../data/currency_rates.json");

/// Most decimal places a rate may have (keeps intermediates well inside `i128`).
pub const MAX_RATE_SCALE: u32 = 10;
/// Most minor-unit digits a currency may have (ISO 4217 uses 0 to 4).
pub const MAX_MINOR_UNITS: u32 = 4;
/// Decimal places of the effective rate shown with a conversion.
pub const SHOWN_RATE_SCALE: u32 = 8;

/// An exact non-negative decimal: `mantissa / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    pub mantissa: i128,
    pub scale: u32,
}

impl Decimal {
    /// Parses a plain decimal string (`"144.284225"`, `"1"`): digits, at most one point, no
    /// sign, no exponent.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits_only(whole) || !digits_only(fraction) {
            return Err(format!("`{text}` is not a plain decimal number"));
        }
        if text.contains('.') && fraction.is_empty() {
            return Err(format!("`{text}` has no digits after the point"));
        }
        let scale = fraction.len() as u32;
        if scale > MAX_RATE_SCALE {
            return Err(format!(
                "`{text}` has more than {MAX_RATE_SCALE} decimal places"
            ));
        }
        let mantissa: i128 = format!("{whole}{fraction}")
            .parse()
            .map_err(|_| format!("`{text}` is too large"))?;
        // Rates are at most ~10^15 units per USD; bounding the mantissa keeps every
        // intermediate product of a conversion representable.
        if mantissa > 10i128.pow(18) {
            return Err(format!("`{text}` is too large"));
        }
        Ok(Self { mantissa, scale })
    }

    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format_scaled(self.mantissa, self.scale))
    }
}

/// Writes `value / 10^scale` as a decimal string without trailing fractional zeros.
fn format_scaled(value: i128, scale: u32) -> String {
    let sign = if value < 0 { "-" } else { "" };
    let digits = value.unsigned_abs().to_string();
    let scale = scale as usize;
    let (whole, fraction) = if digits.len() > scale {
        digits.split_at(digits.len() - scale)
    } else {
        ("0", digits.as_str())
    };
    let fraction = format!("{fraction:0>scale$}");
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{fraction}")
    }
}

/// `numerator / denominator` rounded to the nearest integer, ties to the even one.
/// `denominator` must not be zero.
pub fn div_round_half_even(numerator: i128, denominator: i128) -> Option<i128> {
    if denominator == 0 {
        return None;
    }
    // Normalise so the denominator is positive; the sign then lives in the numerator.
    let (numerator, denominator) = if denominator < 0 {
        (numerator.checked_neg()?, denominator.checked_neg()?)
    } else {
        (numerator, denominator)
    };
    let quotient = numerator / denominator; // truncates toward zero
    let remainder = (numerator % denominator).checked_abs()?;
    let twice = remainder.checked_mul(2)?;
    let away = twice > denominator || (twice == denominator && quotient % 2 != 0);
    if !away {
        return Some(quotient);
    }
    if numerator < 0 {
        quotient.checked_sub(1)
    } else {
        quotient.checked_add(1)
    }
}

/// One currency of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Currency {
    pub code: String,
    pub name: String,
    /// ISO 4217 exponent: 2 for USD (cents), 0 for JPY and KRW.
    pub minor_units: u32,
    /// Units of this currency per one unit of the base currency.
    pub rate: Decimal,
}

/// The rate table.
#[derive(Debug, Clone)]
pub struct Rates {
    pub base: String,
    pub date: String,
    pub source: String,
    /// In the order of the file.
    pub currencies: Vec<Currency>,
    by_code: BTreeMap<String, usize>,
}

/// Which side of a conversion a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    From,
    To,
}

impl Side {
    /// The query parameter naming this side.
    pub fn field(self) -> &'static str {
        match self {
            Side::From => "from",
            Side::To => "to",
        }
    }
}

/// Why a conversion is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("unknown currency {code:?}")]
    UnknownCurrency { side: Side, code: String },
    #[error("the converted amount does not fit in a 64-bit integer of minor units")]
    Overflow,
}

/// A conversion's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    pub amount_minor: i64,
    pub currency: String,
    /// Units of `to` per unit of `from`, rounded half-even to [`SHOWN_RATE_SCALE`] places (for
    /// display only: the amount is computed from the exact rates).
    pub rate: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RatesFile {
    base: String,
    date: String,
    source: String,
    #[serde(default)]
    #[allow(dead_code)] // documentation for people editing the file
    note: Option<String>,
    currencies: Vec<CurrencyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CurrencyEntry {
    code: String,
    name: String,
    minor_units: u32,
    rate: String,
}

impl Rates {
    /// The compiled-in table.
    pub fn builtin() -> anyhow::Result<Self> {
        Self::parse(RATES_JSON)
    }

    /// Parses and validates a rate table: codes are three uppercase letters and unique, the
    /// base currency is listed with rate 1, every rate is a positive plain decimal, exponents
    /// are 0 to 4.
    pub fn parse(json: &str) -> anyhow::Result<Self> {
        let file: RatesFile = serde_json::from_str(json)
            .map_err(|e| anyhow::anyhow!("the currency rate table is invalid: {e}"))?;
        let mut currencies = Vec::with_capacity(file.currencies.len());
        let mut by_code = BTreeMap::new();
        for (i, entry) in file.currencies.into_iter().enumerate() {
            let at = format!("currencies[{i}] ({})", entry.code);
            if !is_code(&entry.code) {
                anyhow::bail!("{at}: the code must be three uppercase letters");
            }
            if entry.minor_units > MAX_MINOR_UNITS {
                anyhow::bail!("{at}: minor_units must be 0 to {MAX_MINOR_UNITS}");
            }
            let rate = Decimal::parse(&entry.rate).map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
            if rate.is_zero() {
                anyhow::bail!("{at}: the rate must be positive");
            }
            if by_code.insert(entry.code.clone(), i).is_some() {
                anyhow::bail!("{at}: the code is listed twice");
            }
            currencies.push(Currency {
                code: entry.code,
                name: entry.name,
                minor_units: entry.minor_units,
                rate,
            });
        }
        let rates = Self {
            base: file.base,
            date: file.date,
            source: file.source,
            currencies,
            by_code,
        };
        match rates.get(&rates.base) {
            Some(base) if base.rate.mantissa == 10i128.pow(base.rate.scale) => Ok(rates),
            Some(_) => anyhow::bail!("the base currency {} must have rate 1", rates.base),
            None => anyhow::bail!("the base currency {} is not listed", rates.base),
        }
    }

    /// The currency with `code` (exact, uppercase).
    pub fn get(&self, code: &str) -> Option<&Currency> {
        self.by_code.get(code).map(|&i| &self.currencies[i])
    }

    fn side(&self, side: Side, code: &str) -> Result<&Currency, ConvertError> {
        self.get(&code.trim().to_ascii_uppercase())
            .ok_or_else(|| ConvertError::UnknownCurrency {
                side,
                code: code.to_owned(),
            })
    }

    /// Converts `amount_minor` of `from` into minor units of `to`, exactly, rounded once half to
    /// even. Codes are matched case-insensitively. Negative amounts (refunds, adjustments) round
    /// symmetrically.
    pub fn convert(
        &self,
        amount_minor: i64,
        from: &str,
        to: &str,
    ) -> Result<Conversion, ConvertError> {
        let from = self.side(Side::From, from)?;
        let to = self.side(Side::To, to)?;
        if from.code == to.code {
            return Ok(Conversion {
                amount_minor,
                currency: to.code.clone(),
                rate: "1".to_owned(),
            });
        }
        let pow10 = |exponent: u32| 10i128.checked_pow(exponent);
        let numerator = i128::from(amount_minor)
            .checked_mul(to.rate.mantissa)
            .and_then(|n| n.checked_mul(pow10(to.minor_units + from.rate.scale)?));
        let denominator = from
            .rate
            .mantissa
            .checked_mul(pow10(from.minor_units + to.rate.scale).ok_or(ConvertError::Overflow)?);
        let result = match (numerator, denominator) {
            (Some(n), Some(d)) => div_round_half_even(n, d),
            _ => None,
        };
        let amount = result
            .and_then(|r| i64::try_from(r).ok())
            .ok_or(ConvertError::Overflow)?;
        Ok(Conversion {
            amount_minor: amount,
            currency: to.code.clone(),
            rate: effective_rate(from, to),
        })
    }
}

/// Units of `to` per unit of `from`, rounded half-even to [`SHOWN_RATE_SCALE`] places.
fn effective_rate(from: &Currency, to: &Currency) -> String {
    // rate_to / rate_from = m_t * 10^s_f / (m_f * 10^s_t); scaled by 10^SHOWN_RATE_SCALE.
    // Mantissas are at most 10^18 and scales at most 10, so this stays inside i128.
    let numerator = to
        .rate
        .mantissa
        .checked_mul(10i128.pow(from.rate.scale + SHOWN_RATE_SCALE));
    let denominator = from.rate.mantissa.checked_mul(10i128.pow(to.rate.scale));
    match (numerator, denominator) {
        (Some(n), Some(d)) => div_round_half_even(n, d)
            .map(|scaled| format_scaled(scaled, SHOWN_RATE_SCALE))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// Three uppercase ASCII letters.
pub fn is_code(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_even_division() {
        let cases = [
            (5, 10, 0),
            (15, 10, 2),
            (25, 10, 2),
            (35, 10, 4),
            (14, 10, 1),
            (16, 10, 2),
            (-5, 10, 0),
            (-15, 10, -2),
            (-25, 10, -2),
            (-16, 10, -2),
            (7, -2, -4),
            (0, 3, 0),
        ];
        for (n, d, want) in cases {
            assert_eq!(div_round_half_even(n, d), Some(want), "{n}/{d}");
        }
        assert_eq!(div_round_half_even(1, 0), None);
    }

    #[test]
    fn decimals_parse_strictly() {
        assert_eq!(
            Decimal::parse("1.50").unwrap(),
            Decimal {
                mantissa: 150,
                scale: 2
            }
        );
        assert_eq!(
            Decimal::parse("7").unwrap(),
            Decimal {
                mantissa: 7,
                scale: 0
            }
        );
        for bad in ["", ".5", "1.", "-1", "1e3", "1,5", "abc", "1.00000000001"] {
            assert!(Decimal::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(format_scaled(150, 2), "1.5");
        assert_eq!(format_scaled(5, 3), "0.005");
        assert_eq!(format_scaled(100, 2), "1");
    }

    #[test]
    fn builtin_table_is_valid() {
        let rates = Rates::builtin().expect("the compiled-in table parses");
        assert!(rates.currencies.len() >= 12);
        assert_eq!(rates.get("JPY").unwrap().minor_units, 0);
        assert_eq!(rates.get("KRW").unwrap().minor_units, 0);
        assert!(rates.source.starts_with("ECB reference rates"));
    }
}
