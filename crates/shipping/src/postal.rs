//! The postal-code table (`data/postal_codes.csv`: country, postal code, place, coordinates),
//! compiled in, and the lookups shipping needs: a postal address to coordinates, and a point to
//! the country it is (most likely) in.
//!
//! Codes are matched after normalisation: upper case, spaces and hyphens removed, then cut to
//! the part the table keys on: the ZIP's first 5 digits in the US (ZIP+4 is fine), the forward
//! sortation area (first 3 characters) in Canada, the outward code in Great Britain (everything
//! but the 3-character inward code), the 4 digits in the Netherlands; other countries as given.
//!
//! The table is a sample of real places (major cities of the countries the shop ships to), not a
//! complete gazetteer: an unknown code is unshippable rather than guessed.

use std::collections::HashMap;

use anyhow::Context;
use serde::Deserialize;

/// The table, as compiled in.
pub const POSTAL_CODES_CSV: &str = include_str!("../../../data/postal_codes.csv");

/// Everything south of 60°S is the Antarctic Treaty area: country `AQ`.
pub const ANTARCTIC_LATITUDE: f64 = -60.0;

/// One known place.
#[derive(Debug, Clone, PartialEq)]
pub struct Place {
    /// ISO 3166-1 alpha-2.
    pub country: String,
    /// The normalised code the table keys on.
    pub postal_code: String,
    pub name: String,
    /// `None` when the place is known but not geocoded (it cannot be shipped to).
    pub point: Option<(f64, f64)>,
}

#[derive(Debug, Deserialize)]
struct Row {
    country: String,
    postal_code: String,
    place: String,
    lat: Option<f64>,
    lon: Option<f64>,
}

/// The postal-code table.
#[derive(Debug, Clone)]
pub struct PostalTable {
    places: Vec<Place>,
    by_key: HashMap<(String, String), usize>,
    /// Each geocoded place's point as a unit vector from the Earth's centre, with the place's
    /// index, for [`PostalTable::country_of`].
    vectors: Vec<([f64; 3], usize)>,
}

/// `lat`/`lon` (degrees) as a unit vector from the Earth's centre: the nearer of two points
/// by great-circle distance is the one whose vector has the larger dot product with the
/// other's, so a search for the nearest place needs no trigonometry per place.
fn unit_vector(lat: f64, lon: f64) -> [f64; 3] {
    let (lat, lon) = (lat.to_radians(), lon.to_radians());
    [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()]
}

impl PostalTable {
    /// The compiled-in table.
    pub fn builtin() -> anyhow::Result<Self> {
        Self::parse(POSTAL_CODES_CSV)
    }

    /// Parses a CSV with the header `country,postal_code,place,lat,lon`; `lat` and `lon` may
    /// both be empty. Refuses duplicates, bad country codes and out-of-range coordinates, naming
    /// the line.
    pub fn parse(csv_text: &str) -> anyhow::Result<Self> {
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(csv_text.as_bytes());
        let mut places = Vec::new();
        let mut by_key = HashMap::new();
        for (i, row) in reader.deserialize::<Row>().enumerate() {
            let line = i + 2; // 1-based, after the header
            let row = row.with_context(|| format!("postal code table, line {line}"))?;
            let country = row.country.to_ascii_uppercase();
            if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
                anyhow::bail!(
                    "postal code table, line {line}: bad country {:?}",
                    row.country
                );
            }
            let postal_code = normalize(&country, &row.postal_code);
            if postal_code.is_empty() {
                anyhow::bail!("postal code table, line {line}: empty postal code");
            }
            let point = match (row.lat, row.lon) {
                (Some(lat), Some(lon)) => {
                    if !valid_point(lat, lon) {
                        anyhow::bail!("postal code table, line {line}: coordinates out of range");
                    }
                    Some((lat, lon))
                }
                (None, None) => None,
                _ => anyhow::bail!(
                    "postal code table, line {line}: give both lat and lon or neither"
                ),
            };
            let key = (country.clone(), postal_code.clone());
            if by_key.insert(key, places.len()).is_some() {
                anyhow::bail!(
                    "postal code table, line {line}: {country} {postal_code} is listed twice"
                );
            }
            places.push(Place {
                country,
                postal_code,
                name: row.place,
                point,
            });
        }
        let vectors = places
            .iter()
            .enumerate()
            .filter_map(|(index, place)| {
                place.point.map(|(lat, lon)| (unit_vector(lat, lon), index))
            })
            .collect();
        Ok(Self {
            places,
            by_key,
            vectors,
        })
    }

    pub fn len(&self) -> usize {
        self.places.len()
    }

    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }

    pub fn places(&self) -> &[Place] {
        &self.places
    }

    /// The place a postal address is in, if the table knows it.
    pub fn lookup(&self, country: &str, postal_code: &str) -> Option<&Place> {
        let country = country.trim().to_ascii_uppercase();
        let code = normalize(&country, postal_code);
        self.by_key.get(&(country, code)).map(|&i| &self.places[i])
    }

    /// The country `point` is most likely in: `AQ` south of 60°S, otherwise the country of the
    /// nearest geocoded place of the table (good enough to tell domestic from international
    /// shipping between the countries the shop serves; `None` only for an empty table).
    pub fn country_of(&self, lat: f64, lon: f64) -> Option<&str> {
        if lat < ANTARCTIC_LATITUDE {
            return Some("AQ");
        }
        // Every quote asks this for its destination and each parcel's origin: a haversine
        // distance to each of the table's places cost five trigonometric calls each, about
        // 8% of the shipping service's CPU under load. The largest dot product of unit vectors
        // is the smallest great-circle distance (the first such place on a tie, as before).
        let point = unit_vector(lat, lon);
        let dot = |v: &[f64; 3]| v[0] * point[0] + v[1] * point[1] + v[2] * point[2];
        self.vectors
            .iter()
            .map(|(vector, index)| (dot(vector), *index))
            .min_by(|a, b| b.0.total_cmp(&a.0))
            .map(|(_, index)| self.places[index].country.as_str())
    }
}

/// Whether `lat`/`lon` are finite and in range.
pub fn valid_point(lat: f64, lon: f64) -> bool {
    lat.is_finite()
        && lon.is_finite()
        && (-90.0..=90.0).contains(&lat)
        && (-180.0..=180.0).contains(&lon)
}

/// The key a postal code of `country` is looked up by (see the module documentation).
pub fn normalize(country: &str, postal_code: &str) -> String {
    let code: String = postal_code
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_uppercase)
        .collect();
    let prefix = |n: usize| code.chars().take(n).collect::<String>();
    match country {
        "US" => prefix(5),
        "CA" => prefix(3),
        "NL" => prefix(4),
        // A full GB postcode ends with a 3-character inward code (digit, letter, letter).
        "GB" if code.chars().count() >= 5 => {
            let keep = code.chars().count() - 3;
            prefix(keep)
        }
        _ => code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_normalise_per_country() {
        assert_eq!(normalize("US", "10001-1234"), "10001");
        assert_eq!(normalize("CA", "m5v 3l9"), "M5V");
        assert_eq!(normalize("GB", "SW1A 1AA"), "SW1A");
        assert_eq!(normalize("GB", "m1 1ae"), "M1");
        assert_eq!(normalize("GB", "M11 2AB"), "M11");
        assert_eq!(normalize("GB", "EC1A"), "EC1A");
        assert_eq!(normalize("NL", "1012 AB"), "1012");
        assert_eq!(normalize("JP", "100-0005"), "1000005");
        assert_eq!(normalize("DE", " 10115 "), "10115");
    }

    #[test]
    fn the_country_of_a_point_is_that_of_the_nearest_place_by_great_circle() {
        let table = PostalTable::builtin().expect("valid table");
        let by_haversine = |lat: f64, lon: f64| {
            table
                .places()
                .iter()
                .filter_map(|place| {
                    place
                        .point
                        .map(|p| (crate::quote::haversine_km((lat, lon), p), place))
                })
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, place)| place.country.as_str())
        };
        let mut checked = 0;
        for lat in (-59..=89).step_by(4) {
            for lon in (-180..=180).step_by(5) {
                let (lat, lon) = (f64::from(lat) + 0.37, f64::from(lon) + 0.61);
                assert_eq!(
                    table.country_of(lat, lon),
                    by_haversine(lat, lon),
                    "at {lat}, {lon}"
                );
                checked += 1;
            }
        }
        assert!(checked > 2_000);
    }

    #[test]
    fn builtin_table_has_the_countries_served() {
        let table = PostalTable::builtin().expect("valid table");
        assert!(table.len() >= 120, "{} entries", table.len());
        for country in ["US", "CA", "GB", "DE", "FR", "NL", "ES", "IT", "JP", "AU"] {
            assert!(
                table.places().iter().any(|p| p.country == country),
                "{country} missing"
            );
        }
        assert!(table.places().iter().all(|p| p.point.is_some()));
        let boston = table.lookup("us", "02108").expect("Boston");
        assert!(boston.name.starts_with("Boston"));
        assert_eq!(table.lookup("GB", "sw1a 1aa").unwrap().postal_code, "SW1A");
        assert_eq!(
            table.lookup("JP", "100-0005").unwrap().postal_code,
            "1000005"
        );
        assert!(table.lookup("US", "00000").is_none());
        assert!(table.lookup("BR", "01000").is_none());
    }

    #[test]
    fn points_map_to_countries() {
        let table = PostalTable::builtin().unwrap();
        assert_eq!(table.country_of(39.5296, -119.8138), Some("US")); // Reno warehouse
        assert_eq!(table.country_of(51.9244, 4.4777), Some("NL")); // Rotterdam warehouse
        assert_eq!(table.country_of(48.85, 2.35), Some("FR"));
        assert_eq!(table.country_of(-77.85, 166.67), Some("AQ")); // McMurdo
    }

    #[test]
    fn bad_tables_are_refused() {
        let header = "country,postal_code,place,lat,lon\n";
        for body in [
            "USA,1,x,1,1\n",
            "US,,x,1,1\n",
            "US,1,x,91,1\n",
            "US,1,x,1,\n",
            "US,1,x,1,1\nUS,1,y,2,2\n",
            "US,1,x,north,1\n",
        ] {
            assert!(
                PostalTable::parse(&format!("{header}{body}")).is_err(),
                "{body:?}"
            );
        }
        let ungeocoded = PostalTable::parse(&format!("{header}US,12345,Nowhere,,\n")).unwrap();
        assert_eq!(ungeocoded.lookup("US", "12345").unwrap().point, None);
    }
}
