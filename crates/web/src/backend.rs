//! The backend-for-frontend's calls to the shop's services: found through the registry,
//! balanced and retried by `bazaar_kit::client`, carrying the signed-in user's access token (or
//! the anonymous cart session) so each service still checks who may do what.
//!
//! Answers come back as JSON values that templates read directly; a failure is sorted into
//! "the service is unavailable" (the page says so and renders the rest) or "the service refused
//! the input" (the page shows the service's problem detail next to the field it names).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bazaar_discovery::Discovery;
use bazaar_kit::client::{CallError, ServiceClient};
use http::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Header selecting an anonymous cart (the cart service's contract).
pub const CART_SESSION_HEADER: &str = "x-cart-session";

/// On whose behalf a call is made.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The signed-in user's access token.
    pub token: Option<String>,
    /// The browser's anonymous cart session (used only when not signed in).
    pub cart_session: Option<String>,
}

impl Caller {
    pub fn anonymous() -> Self {
        Self::default()
    }

    pub fn user(token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            cart_session: None,
        }
    }

    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(token) = &self.token {
            if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
                headers.insert(AUTHORIZATION, value);
            }
        } else if let Some(session) = &self.cart_session {
            if let Ok(value) = HeaderValue::from_str(session) {
                headers.insert(HeaderName::from_static(CART_SESSION_HEADER), value);
            }
        }
        headers
    }
}

/// A problem document as services answer it (RFC 9457), read leniently.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Problem {
    pub title: String,
    pub status: u16,
    pub detail: Option<String>,
    pub code: String,
    pub field: Option<String>,
}

/// Why a call did not give an answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    /// Down, unreachable, timing out or failing (5xx): the page says it is unavailable.
    #[error("{service} is unavailable")]
    Unavailable { service: String },
    /// The service refused the request (4xx) and said why.
    #[error("{service} refused: {}", problem.detail.as_deref().unwrap_or(&problem.title))]
    Refused { service: String, problem: Problem },
}

impl BackendError {
    /// The refusal's problem, when it is one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            BackendError::Refused { problem, .. } => Some(problem),
            BackendError::Unavailable { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        self.problem().map(|p| p.status)
    }

    /// A sentence for the page.
    pub fn message(&self) -> String {
        match self {
            BackendError::Unavailable { service } => format!(
                "The {service} service is unavailable right now. Please try again in a moment."
            ),
            BackendError::Refused { problem, .. } => problem
                .detail
                .clone()
                .unwrap_or_else(|| problem.title.clone()),
        }
    }

    fn from_call(service: &str, error: CallError) -> Self {
        match error {
            CallError::Status { status, body, .. } if (400..500).contains(&status) => {
                let mut problem: Problem = serde_json::from_str(&body).unwrap_or_default();
                problem.status = status;
                if problem.title.is_empty() {
                    problem.title = "Refused".to_owned();
                }
                BackendError::Refused {
                    service: service.to_owned(),
                    problem,
                }
            }
            other => {
                tracing::warn!(service, error = %other, "backend call failed");
                BackendError::Unavailable {
                    service: service.to_owned(),
                }
            }
        }
    }
}

pub type BackendResult<T = Value> = Result<T, BackendError>;

/// Calls to the services.
#[derive(Clone)]
pub struct Backend {
    client: ServiceClient,
    /// Conversions already asked for, so a page of prices costs one call per distinct amount.
    conversions: Arc<RwLock<ConversionCache>>,
}

/// (amount, from, to) → (converted amount, when it was asked).
type ConversionCache = HashMap<(i64, String, String), (i64, Instant)>;

/// How long a converted amount is reused (the rate table changes daily at most).
const CONVERSION_TTL: Duration = Duration::from_secs(300);

impl Backend {
    pub fn new(discovery: Discovery) -> Self {
        Self {
            // No service credentials: every call carries the user's own token (or none), so the
            // services authorize the user, not the web service.
            client: ServiceClient::new(discovery).with_timeout(Duration::from_secs(3)),
            conversions: Arc::default(),
        }
    }

    /// The registry view the calls are resolved through (the admin console draws it).
    pub fn discovery(&self) -> &Discovery {
        self.client.discovery()
    }

    /// `GET` a JSON document.
    pub async fn get(&self, caller: &Caller, service: &str, path: &str) -> BackendResult {
        self.call::<()>(caller, service, Method::GET, path, None)
            .await
    }

    /// Any method with an optional JSON body; an empty answer (204) is `null`.
    pub async fn call<B: Serialize>(
        &self,
        caller: &Caller,
        service: &str,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> BackendResult {
        self.call_with(caller, service, method, path, body, HeaderMap::new())
            .await
    }

    /// [`Backend::call`] with extra request headers (`Idempotency-Key`).
    pub async fn call_with<B: Serialize>(
        &self,
        caller: &Caller,
        service: &str,
        method: Method,
        path: &str,
        body: Option<&B>,
        extra: HeaderMap,
    ) -> BackendResult {
        let mut headers = caller.headers();
        headers.extend(extra);
        let response = self
            .client
            .send(service, method, path, body, headers)
            .await
            .map_err(|e| BackendError::from_call(service, e))?;
        let bytes = response.bytes().await.map_err(|error| {
            tracing::warn!(service, %error, "reading a backend answer failed");
            BackendError::Unavailable {
                service: service.to_owned(),
            }
        })?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|error| {
            tracing::warn!(service, %error, "a backend answered something that is not JSON");
            BackendError::Unavailable {
                service: service.to_owned(),
            }
        })
    }

    /// The currency list (also teaches the `money` filter each currency's minor unit).
    pub async fn currencies(&self) -> BackendResult {
        let list = self
            .get(&Caller::anonymous(), "currency", "/api/v1/currencies")
            .await?;
        for item in list
            .get("currencies")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(code), Some(units)) = (
                item.get("code").and_then(Value::as_str),
                item.get("minor_units").and_then(Value::as_u64),
            ) {
                crate::pages::learn_minor_units(code, units as u32);
            }
        }
        Ok(list)
    }

    /// `money` (`{amount_minor, currency}`) in `to`, converted exactly by the currency service.
    /// Returns the money unchanged when it already is in `to` or the service cannot answer (a
    /// price shown in its own currency beats no price).
    pub async fn convert(&self, money: &Value, to: &str) -> Value {
        let (Some(amount), Some(from)) = (
            money.get("amount_minor").and_then(Value::as_i64),
            money.get("currency").and_then(Value::as_str),
        ) else {
            return money.clone();
        };
        if from == to {
            return money.clone();
        }
        let key = (amount, from.to_owned(), to.to_owned());
        if let Some((converted, at)) = self.conversions.read().expect("conversions lock").get(&key)
        {
            if at.elapsed() < CONVERSION_TTL {
                return serde_json::json!({"amount_minor": converted, "currency": to});
            }
        }
        let path = format!("/api/v1/currencies/convert?amount_minor={amount}&from={from}&to={to}");
        match self.get(&Caller::anonymous(), "currency", &path).await {
            Ok(answer) => match answer.get("amount_minor").and_then(Value::as_i64) {
                Some(converted) => {
                    self.conversions
                        .write()
                        .expect("conversions lock")
                        .insert(key, (converted, Instant::now()));
                    serde_json::json!({"amount_minor": converted, "currency": to})
                }
                None => money.clone(),
            },
            Err(_) => money.clone(),
        }
    }

    /// Rewrites, in place, every money object found at the given JSON pointers' arrays/objects:
    /// `paths` name keys (`price`, `unit_price`...) anywhere in `value`.
    pub async fn convert_all(&self, value: &mut Value, keys: &[&str], to: &str) {
        let mut found = Vec::new();
        collect_money(value, keys, &mut String::new(), &mut found);
        let converted =
            futures::future::join_all(found.iter().map(|(pointer, money)| async move {
                (pointer.clone(), self.convert(money, to).await)
            }))
            .await;
        for (pointer, money) in converted {
            if let Some(slot) = value.pointer_mut(&pointer) {
                *slot = money;
            }
        }
    }
}

/// Collects (JSON pointer, value) of every object under a key in `keys` that looks like money.
fn collect_money(value: &Value, keys: &[&str], at: &mut String, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let len = at.len();
                at.push('/');
                at.push_str(&key.replace('~', "~0").replace('/', "~1"));
                if keys.contains(&key.as_str()) && child.get("amount_minor").is_some() {
                    out.push((at.clone(), child.clone()));
                } else {
                    collect_money(child, keys, at, out);
                }
                at.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let len = at.len();
                at.push('/');
                at.push_str(&i.to_string());
                collect_money(child, keys, at, out);
                at.truncate(len);
            }
        }
        _ => {}
    }
}

/// Percent-encodes a query value.
pub fn query_value(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_found_under_the_named_keys_at_any_depth() {
        let value = serde_json::json!({
            "lines": [{"unit_price": {"amount_minor": 100, "currency": "USD"}, "name": "a"}],
            "subtotal": {"amount_minor": 100, "currency": "USD"},
            "other": {"amount_minor": 5, "currency": "USD"}
        });
        let mut found = Vec::new();
        collect_money(
            &value,
            &["unit_price", "subtotal"],
            &mut String::new(),
            &mut found,
        );
        let pointers: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(pointers, vec!["/lines/0/unit_price", "/subtotal"]);
    }

    #[test]
    fn a_4xx_problem_is_a_refusal_naming_the_field_and_a_5xx_is_unavailable() {
        let refused = BackendError::from_call(
            "orders",
            CallError::Status {
                service: "orders".into(),
                status: 422,
                body: r#"{"title":"Unshippable","status":422,"code":"unshippable_destination","detail":"no such postal code","field":"shipping_address.postal_code"}"#.into(),
            },
        );
        let problem = refused.problem().expect("a refusal");
        assert_eq!(
            problem.field.as_deref(),
            Some("shipping_address.postal_code")
        );
        assert_eq!(refused.message(), "no such postal code");
        let down = BackendError::from_call(
            "orders",
            CallError::Status {
                service: "orders".into(),
                status: 503,
                body: String::new(),
            },
        );
        assert_eq!(
            down,
            BackendError::Unavailable {
                service: "orders".into()
            }
        );
    }
}
