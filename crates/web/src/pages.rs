//! Rendering: the templates (compiled into the binary from `templates/`), the filters and
//! functions they share (`money`, `datetime`, `asset`), and the error page.
//!
//! Templates autoescape HTML, so a product name or a problem detail can never inject markup.
//! Every page extends `layout.html`, which needs a [`Chrome`] (who is signed in, the cart's
//! size, the chosen currency) under the name `chrome`.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use minijinja::{Environment, Value as TemplateValue};
use serde::Serialize;

/// The storefront's templates, by name. Adding a page means adding its line here (the admin
/// console's and the portal's lists live in their modules).
const TEMPLATES: &[(&str, &str)] = &[
    ("layout.html", include_str!("../templates/layout.html")),
    ("macros.html", include_str!("../templates/macros.html")),
    ("error.html", include_str!("../templates/error.html")),
    ("home.html", include_str!("../templates/home.html")),
    ("search.html", include_str!("../templates/search.html")),
    ("product.html", include_str!("../templates/product.html")),
    ("cart.html", include_str!("../templates/cart.html")),
    ("checkout.html", include_str!("../templates/checkout.html")),
    ("order.html", include_str!("../templates/order.html")),
    ("orders.html", include_str!("../templates/orders.html")),
    ("mailbox.html", include_str!("../templates/mailbox.html")),
    ("register.html", include_str!("../templates/register.html")),
];

/// The part of every page around its content.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Chrome {
    /// The signed-in user's email, if any.
    pub user: Option<String>,
    pub is_admin: bool,
    pub cart_count: u64,
    /// The currency prices are shown in.
    pub currency: String,
    /// The currencies a visitor may choose.
    pub currencies: Vec<String>,
    /// The path of this page (to come back to after signing in or switching currency).
    pub path: String,
}

static MINOR_UNITS: OnceLock<RwLock<HashMap<String, u32>>> = OnceLock::new();

fn minor_units() -> &'static RwLock<HashMap<String, u32>> {
    MINOR_UNITS.get_or_init(Default::default)
}

/// Records `currency`'s minor-unit digits (learnt from the currency service).
pub fn learn_minor_units(currency: &str, units: u32) {
    minor_units()
        .write()
        .expect("minor units lock")
        .insert(currency.to_owned(), units);
}

/// `amount_minor` in `currency` for people: `$12.34`, `€0.99`, `¥1,200`, `CHF 5.00`.
pub fn format_money(amount_minor: i64, currency: &str) -> String {
    let units = minor_units()
        .read()
        .expect("minor units lock")
        .get(currency)
        .copied()
        // ISO 4217 zero-decimal currencies that matter before the table is learnt.
        .unwrap_or(if matches!(currency, "JPY" | "KRW" | "ISK") {
            0
        } else {
            2
        });
    let scale = 10i64.pow(units);
    let sign = if amount_minor < 0 { "-" } else { "" };
    let whole = (amount_minor / scale).unsigned_abs();
    let fraction = (amount_minor % scale).unsigned_abs();
    let digits = whole.to_string();
    let mut grouped = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let number = if units == 0 {
        grouped
    } else {
        format!("{grouped}.{fraction:0width$}", width = units as usize)
    };
    match currency {
        "USD" => format!("{sign}${number}"),
        "EUR" => format!("{sign}€{number}"),
        "GBP" => format!("{sign}£{number}"),
        "JPY" => format!("{sign}¥{number}"),
        other => format!("{sign}{other} {number}"),
    }
}

fn money_filter(value: TemplateValue) -> String {
    let amount = value
        .get_attr("amount_minor")
        .ok()
        .and_then(|v| i64::try_from(v).ok());
    let currency = value
        .get_attr("currency")
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned));
    match (amount, currency) {
        (Some(amount), Some(currency)) => format_money(amount, &currency),
        _ => String::new(),
    }
}

/// Unix milliseconds as `2026-11-24 10:32 UTC`.
pub fn format_datetime(ms: i64) -> String {
    let Ok(ms) = u64::try_from(ms) else {
        return String::new();
    };
    let time = UNIX_EPOCH + Duration::from_millis(ms);
    let text = humantime::format_rfc3339_seconds(time).to_string();
    // 2026-11-24T10:32:05Z -> 2026-11-24 10:32 UTC
    match (text.get(..10), text.get(11..16)) {
        (Some(date), Some(clock)) => format!("{date} {clock} UTC"),
        _ => text,
    }
}

fn datetime_filter(value: TemplateValue) -> String {
    i64::try_from(value)
        .map(format_datetime)
        .unwrap_or_default()
}

/// `asset("web/site.css")` → the content-hashed URL, cacheable forever. Marked safe: asset
/// names are ours, and escaping would only turn every `/` into `&#x2f;`.
fn asset_function(logical: &str) -> TemplateValue {
    let url = bazaar_assets::assets()
        .url(logical)
        .unwrap_or_else(|| format!("{}{logical}", bazaar_assets::URL_PREFIX));
    TemplateValue::from_safe_string(url)
}

/// A status word for people (`pending_payment` → `pending payment`).
fn words_filter(value: &str) -> String {
    value.replace(['_', '.'], " ")
}

fn all_templates() -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    TEMPLATES
        .iter()
        .chain(crate::admin::TEMPLATES)
        .chain(crate::portal::TEMPLATES)
}

fn environment() -> &'static Environment<'static> {
    static ENVIRONMENT: OnceLock<Environment<'static>> = OnceLock::new();
    ENVIRONMENT.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in all_templates() {
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("template {name} does not parse: {e:#}"));
        }
        env.add_filter("money", money_filter);
        env.add_filter("datetime", datetime_filter);
        env.add_filter("words", words_filter);
        env.add_function("asset", asset_function);
        env
    })
}

/// Renders `template` with `context` as an HTML response with `status`. Pages carry personal
/// data, so they are never stored by shared caches.
pub fn render_status<S: Serialize>(status: StatusCode, template: &str, context: S) -> Response {
    let rendered = environment()
        .get_template(template)
        .and_then(|t| t.render(context));
    match rendered {
        Ok(html) => (
            status,
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            html,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(template, error = %format!("{error:#}"), "rendering failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "The page could not be rendered. The error has been logged.",
            )
                .into_response()
        }
    }
}

/// [`render_status`] with 200.
pub fn render<S: Serialize>(template: &str, context: S) -> Response {
    render_status(StatusCode::OK, template, context)
}

/// A page that could not be shown: rendered as the error page with a clear message.
#[derive(Debug)]
pub struct PageError {
    pub status: StatusCode,
    pub title: String,
    pub message: String,
    pub chrome: Chrome,
}

impl PageError {
    pub fn new(status: StatusCode, title: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            title: title.to_owned(),
            message: message.into(),
            chrome: Chrome::default(),
        }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("We could not find {what}."),
        )
    }

    pub fn with_chrome(mut self, chrome: &Chrome) -> Self {
        self.chrome = chrome.clone();
        self
    }
}

impl From<crate::backend::BackendError> for PageError {
    fn from(error: crate::backend::BackendError) -> Self {
        match &error {
            crate::backend::BackendError::Unavailable { .. } => PageError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Temporarily unavailable",
                error.message(),
            ),
            crate::backend::BackendError::Refused { problem, .. } => {
                let status =
                    StatusCode::from_u16(problem.status).unwrap_or(StatusCode::BAD_REQUEST);
                let title = if status == StatusCode::NOT_FOUND {
                    "Not found"
                } else if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
                    "Not allowed"
                } else {
                    "That did not work"
                };
                PageError::new(status, title, error.message())
            }
        }
    }
}

impl From<sqlx::Error> for PageError {
    fn from(error: sqlx::Error) -> Self {
        tracing::error!(%error, "web database error");
        PageError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "Something went wrong on our side. Please try again.",
        )
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        render_status(
            self.status,
            "error.html",
            minijinja::context! {
                chrome => self.chrome,
                title => self.title,
                message => self.message,
                status => self.status.as_u16(),
            },
        )
    }
}

/// The error page for a form or query string that does not parse (a quantity or page that is
/// not a number, a missing field): axum's rejection text names the field and the problem.
fn unparsable(text: String) -> PageError {
    PageError::new(
        StatusCode::BAD_REQUEST,
        "That form was not filled in correctly",
        text,
    )
}

/// A submitted form, like `axum::Form`, but one that does not parse is answered with the error
/// page naming what was wrong, not a bare text response.
#[derive(Debug, Clone)]
pub struct WebForm<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for WebForm<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = PageError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, PageError> {
        axum::Form::<T>::from_request(request, state)
            .await
            .map(|axum::Form(value)| WebForm(value))
            .map_err(|rejection| unparsable(rejection.body_text()))
    }
}

/// A query string, like `axum::extract::Query`, answered like [`WebForm`] when it does not parse.
#[derive(Debug, Clone)]
pub struct WebQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for WebQuery<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = PageError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, PageError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| WebQuery(value))
            .map_err(|rejection| unparsable(rejection.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_formatted_with_the_currency_minor_units_and_grouping() {
        assert_eq!(format_money(123_456, "USD"), "$1,234.56");
        assert_eq!(format_money(5, "EUR"), "€0.05");
        assert_eq!(format_money(-250, "GBP"), "-£2.50");
        assert_eq!(format_money(1_200, "JPY"), "¥1,200");
        assert_eq!(format_money(500, "CHF"), "CHF 5.00");
    }

    #[test]
    fn every_template_parses() {
        let env = environment();
        for (name, _) in all_templates() {
            env.get_template(name).expect("template parses");
        }
    }

    #[test]
    fn datetimes_are_utc_minutes() {
        assert_eq!(format_datetime(0), "1970-01-01 00:00 UTC");
    }
}
