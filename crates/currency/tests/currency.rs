//! The currency service through its HTTP API: the rate table, exact conversions with half-even
//! rounding at the target's minor unit, round trips, zero-exponent currencies and bad input.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use bazaar_currency::{service, Config, Rates};
use bazaar_kit::config::CommonConfig;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

fn app(config: Config) -> Router {
    service(CommonConfig::defaults("currency", 0), config)
        .expect("service builds")
        .app()
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    }
    (status, body)
}

async fn convert(app: &Router, amount: i64, from: &str, to: &str) -> i64 {
    let (status, body) = get(
        app,
        &format!("/api/v1/currencies/convert?amount_minor={amount}&from={from}&to={to}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rounding"], "half-even");
    body["amount_minor"].as_i64().expect("integer amount")
}

fn assert_problem(answer: &(StatusCode, Value), status: StatusCode, code: &str, field: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["code"], code, "{}", answer.1);
    assert_eq!(answer.1["field"], field, "{}", answer.1);
}

/// A table with rates chosen so conversions land exactly on halves: `HLF` is worth two USD,
/// `NIL` has no minor unit (like JPY) and is worth one USD, `THO` has none and is a tenth of a
/// cent, `THR` has 3 minor units and is worth four USD.
fn test_table(dir: &tempfile::TempDir) -> Config {
    let table = json!({
        "base": "USD", "date": "2025-01-01", "source": "test",
        "currencies": [
            {"code": "USD", "name": "US dollar", "minor_units": 2, "rate": "1"},
            {"code": "HLF", "name": "Half", "minor_units": 2, "rate": "0.5"},
            {"code": "NIL", "name": "No minor unit", "minor_units": 0, "rate": "1"},
            {"code": "THO", "name": "Thousand", "minor_units": 0, "rate": "1000"},
            {"code": "THR", "name": "Three digits", "minor_units": 3, "rate": "0.25"}
        ]
    });
    let path = dir.path().join("rates.json");
    std::fs::write(&path, table.to_string()).unwrap();
    Config {
        rates_file: Some(path),
    }
}

#[tokio::test]
async fn lists_the_compiled_in_table() {
    let app = app(Config::default());
    let (status, body) = get(&app, "/api/v1/currencies").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["base"], "USD");
    assert!(body["source"]
        .as_str()
        .unwrap()
        .starts_with("ECB reference rates, 2025-"));
    let currencies = body["currencies"].as_array().unwrap();
    assert!(currencies.len() >= 12, "{} currencies", currencies.len());
    let find = |code: &str| {
        currencies
            .iter()
            .find(|c| c["code"] == code)
            .unwrap_or_else(|| panic!("{code} listed"))
            .clone()
    };
    assert_eq!(find("USD")["rate"], "1");
    assert_eq!(find("JPY")["minor_units"], 0);
    assert_eq!(find("KRW")["minor_units"], 0);
    for code in [
        "EUR", "GBP", "CHF", "CAD", "AUD", "SEK", "NOK", "DKK", "PLN", "INR", "BRL",
    ] {
        let currency = find(code);
        assert_eq!(currency["minor_units"], 2, "{code}");
        // Rates are exact decimal strings, never JSON floats.
        let rate = currency["rate"].as_str().expect("rate is a string");
        assert!(rate.parse::<f64>().unwrap() > 0.0, "{code} {rate}");
    }
}

#[tokio::test]
async fn rounding_table_is_half_even_at_the_target_minor_unit() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(test_table(&dir));
    // (amount, from, to, expected): the exact value is in the comment.
    let table = [
        (1, "USD", "HLF", 0),   // 0.5 -> 0 (even)
        (3, "USD", "HLF", 2),   // 1.5 -> 2 (even)
        (5, "USD", "HLF", 2),   // 2.5 -> 2 (even)
        (7, "USD", "HLF", 4),   // 3.5 -> 4
        (9, "USD", "HLF", 4),   // 4.5 -> 4
        (-5, "USD", "HLF", -2), // -2.5 -> -2
        (-7, "USD", "HLF", -4), // -3.5 -> -4
        (150, "USD", "NIL", 2), // 1.50 USD -> 1.5 NIL -> 2
        (250, "USD", "NIL", 2), // 2.5 -> 2
        (350, "USD", "NIL", 4), // 3.5 -> 4
        (249, "USD", "NIL", 2), // 2.49 -> 2
        (251, "USD", "NIL", 3), // 2.51 -> 3
        (1, "NIL", "USD", 100), // exponents: 1 NIL = 1.00 USD
        (1, "USD", "THO", 10),  // 0.01 USD = 10 THO exactly
        (3, "THO", "USD", 0),   // 0.3 cents -> 0
        (5, "THO", "USD", 0),   // 0.5 cents -> 0 (even)
        (15, "THO", "USD", 2),  // 1.5 cents -> 2
        (25, "THO", "USD", 2),  // 2.5 cents -> 2
        (26, "THO", "USD", 3),  // 2.6 cents -> 3
        (1, "USD", "THR", 2),   // 0.01 USD = 0.0025 THR = 2.5 milli -> 2
        (3, "USD", "THR", 8),   // 7.5 milli -> 8
        (1, "THR", "USD", 0),   // 0.001 THR = 0.004 USD = 0.4 cents -> 0
        (10, "THR", "NIL", 0),  // 0.01 THR = 0.04 NIL -> 0
        (125, "THR", "NIL", 0), // 0.125 THR = 0.5 NIL -> 0 (even)
        (375, "THR", "NIL", 2), // 1.5 -> 2
    ];
    for (amount, from, to, expected) in table {
        assert_eq!(
            convert(&app, amount, from, to).await,
            expected,
            "{amount} {from} -> {to}"
        );
    }
    // The shown rate is units of `to` per unit of `from`.
    let (_, body) = get(
        &app,
        "/api/v1/currencies/convert?amount_minor=1&from=HLF&to=THR",
    )
    .await;
    assert_eq!(body["rate"], "0.5");
    assert_eq!(body["currency"], "THR");
}

#[tokio::test]
async fn zero_exponent_currencies_convert_with_the_real_table() {
    let app = app(Config::default());
    let rates = Rates::builtin().unwrap();
    let jpy = rates.get("JPY").unwrap().rate.to_string();
    // 100.00 USD in yen: 100 * rate, rounded to whole yen.
    let yen = convert(&app, 10_000, "USD", "JPY").await;
    let expected: f64 = jpy.parse::<f64>().unwrap() * 100.0; // only to sanity-check the magnitude
    assert!((yen as f64 - expected).abs() <= 0.5, "{yen} vs {expected}");
    // 1 yen back to dollars is well under a dollar but more than zero cents.
    let cents = convert(&app, 1_000, "JPY", "USD").await;
    assert!((600..800).contains(&cents), "1000 JPY = {cents} cents");
    // KRW: no minor unit either; 1 USD is more than a thousand won.
    let won = convert(&app, 100, "USD", "KRW").await;
    assert!((1_000..2_000).contains(&won), "1 USD = {won} KRW");
    // JPY <-> KRW: both exponent 0.
    let won_per_1000_yen = convert(&app, 1_000, "JPY", "KRW").await;
    assert!(
        (8_000..11_000).contains(&won_per_1000_yen),
        "{won_per_1000_yen}"
    );
    // Lower-case codes are accepted; the answer names the canonical code.
    let (status, body) = get(
        &app,
        "/api/v1/currencies/convert?amount_minor=100&from=usd&to=jpy",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["currency"], "JPY");
    // Same currency: unchanged, rate 1.
    let (_, body) = get(
        &app,
        "/api/v1/currencies/convert?amount_minor=12345&from=EUR&to=EUR",
    )
    .await;
    assert_eq!(body["amount_minor"], 12345);
    assert_eq!(body["rate"], "1");
}

#[tokio::test]
async fn round_trips_lose_at_most_one_minor_unit() {
    let app = app(Config::default());
    // From a currency to one whose minor unit is at most ~1.4 of the source's and back: the two
    // roundings add up to less than 1.5 source units, so the integer difference is at most 1.
    let pairs = [
        ("USD", "EUR"),
        ("EUR", "USD"),
        ("USD", "GBP"),
        ("USD", "JPY"),
        ("USD", "KRW"),
        ("EUR", "SEK"),
        ("GBP", "INR"),
        ("CHF", "BRL"),
    ];
    for (a, b) in pairs {
        for amount in [1, 99, 1_234, 99_999, 123_456_789, 7_000_000_000_000] {
            let there = convert(&app, amount, a, b).await;
            let back = convert(&app, there, b, a).await;
            assert!(
                (back - amount).abs() <= 1,
                "{amount} {a} -> {there} {b} -> {back} {a}"
            );
        }
    }
    // Conversion is exact: USD -> EUR at the table rate, checked by hand in integers.
    let rate = Rates::builtin().unwrap().get("EUR").unwrap().rate;
    assert_eq!(rate.scale, 6);
    let amount: i128 = 1_000_000; // 10,000.00 USD
    let exact_times_1e6 = amount * rate.mantissa; // cents * 10^6
    let expected = (exact_times_1e6 + 500_000) / 1_000_000; // not a tie here
    assert_eq!(
        convert(&app, 1_000_000, "USD", "EUR").await as i128,
        expected
    );
}

#[tokio::test]
async fn bad_input_is_a_problem_naming_the_field() {
    let app = app(Config::default());
    let base = "/api/v1/currencies/convert";
    assert_problem(
        &get(&app, &format!("{base}?amount_minor=100&from=XXX&to=EUR")).await,
        StatusCode::BAD_REQUEST,
        "unknown_currency",
        "from",
    );
    assert_problem(
        &get(&app, &format!("{base}?amount_minor=100&from=USD&to=EURO")).await,
        StatusCode::BAD_REQUEST,
        "unknown_currency",
        "to",
    );
    assert_problem(
        &get(&app, &format!("{base}?amount_minor=1.5&from=USD&to=EUR")).await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
        "amount_minor",
    );
    assert_problem(
        &get(
            &app,
            &format!("{base}?amount_minor=99999999999999999999&from=USD&to=EUR"),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
        "amount_minor",
    );
    assert_problem(
        &get(&app, &format!("{base}?from=USD&to=EUR")).await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
        "amount_minor",
    );
    assert_problem(
        &get(&app, &format!("{base}?amount_minor=5&to=EUR")).await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
        "from",
    );
    // i64::MAX dollars in yen does not fit in 64 bits: refused, not wrapped.
    assert_problem(
        &get(
            &app,
            &format!("{base}?amount_minor={}&from=USD&to=JPY", i64::MAX),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "amount_overflow",
        "amount_minor",
    );
    assert_problem(
        &get(
            &app,
            &format!("{base}?amount_minor={}&from=USD&to=KRW", i64::MIN),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "amount_overflow",
        "amount_minor",
    );
}

#[test]
fn a_bad_rate_table_stops_start_up_naming_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rates.json");
    let cases = [
        (
            r#"{"base":"USD","date":"d","source":"s","currencies":[{"code":"USD","name":"x","minor_units":2,"rate":"1"},{"code":"EUR","name":"e","minor_units":2,"rate":"0.9x"}]}"#,
            "EUR",
        ),
        (
            r#"{"base":"USD","date":"d","source":"s","currencies":[{"code":"USD","name":"x","minor_units":2,"rate":"2"}]}"#,
            "rate 1",
        ),
        (
            r#"{"base":"USD","date":"d","source":"s","currencies":[{"code":"USD","name":"x","minor_units":2,"rate":"1"},{"code":"usd","name":"x","minor_units":2,"rate":"1"}]}"#,
            "three uppercase",
        ),
        (
            r#"{"base":"USD","date":"d","source":"s","currencies":[{"code":"USD","name":"x","minor_units":2,"rate":"1"},{"code":"ZZZ","name":"x","minor_units":2,"rate":"0"}]}"#,
            "positive",
        ),
    ];
    for (json, needle) in cases {
        std::fs::write(&path, json).unwrap();
        let error = service(
            CommonConfig::defaults("currency", 0),
            Config {
                rates_file: Some(path.clone()),
            },
        )
        .err()
        .expect("refused");
        let message = format!("{error:#}");
        assert!(message.contains(needle), "{message}");
    }
    let missing = service(
        CommonConfig::defaults("currency", 0),
        Config {
            rates_file: Some(dir.path().join("absent.json")),
        },
    );
    assert!(missing.is_err());
}

#[tokio::test]
async fn ready_without_a_database() {
    let app = app(Config::default());
    let (status, body) = get(&app, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
