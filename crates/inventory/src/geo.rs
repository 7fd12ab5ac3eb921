//! Great-circle distance, for the nearest-warehouse allocation rule.

/// Mean Earth radius in kilometres (IUGG), the usual constant for the haversine formula.
pub const EARTH_RADIUS_KM: f64 = 6_371.008_8;

/// Distance in kilometres between two points given in decimal degrees, by the haversine
/// formula (accurate to about 0.5% on the real, slightly flattened Earth, which is plenty to
/// rank warehouses).
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let d_phi = (lat2 - lat1).to_radians();
    let d_lambda = (lon2 - lon1).to_radians();
    let a = (d_phi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (d_lambda / 2.0).sin().powi(2);
    // `min` guards asin against rounding pushing `a` a hair above 1 for antipodal points.
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_distances() {
        assert_eq!(haversine_km(10.0, 20.0, 10.0, 20.0), 0.0);
        // New York JFK to London Heathrow is about 5,540 km.
        let d = haversine_km(40.6413, -73.7781, 51.4700, -0.4543);
        assert!((d - 5_540.0).abs() < 20.0, "{d}");
        // Reno to Columbus, about 3,140 km.
        let d = haversine_km(39.5296, -119.8138, 39.9612, -82.9988);
        assert!((d - 3_140.0).abs() < 30.0, "{d}");
        // Symmetric, and half the circumference between antipodes.
        assert!(
            (haversine_km(0.0, 0.0, 0.0, 180.0) - std::f64::consts::PI * EARTH_RADIUS_KM).abs()
                < 1e-6
        );
        assert_eq!(
            haversine_km(1.0, 2.0, 3.0, 4.0),
            haversine_km(3.0, 4.0, 1.0, 2.0)
        );
    }
}
