//! Typed calls to the services the saga drives (inventory, payments, shipping, currency) and to
//! the cart at placement, over the contracts in docs/shop.md. Every command carries an
//! idempotency key derived from the order id, so a step retried after a crash or a timeout never
//! acts twice. Failures are sorted into "try again later" and "the answer is no".

use bazaar_kit::client::{CallError, ServiceClient};
use bazaar_kit::problem::Problem;
use http::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::model::{Address, Allocation, Money, OrderLine};

/// How a remote step failed.
#[derive(Debug, Clone, PartialEq)]
pub enum StepError {
    /// The service is down, slow or failing: retry with backoff; the order stays pending.
    Unavailable { service: String, reason: String },
    /// The service said no (a 4xx): the order cannot go on and is compensated.
    Rejected { code: String, detail: String },
}

impl StepError {
    fn from_call(error: CallError) -> Self {
        match error {
            CallError::Status {
                service,
                status,
                body,
            } if (400..500).contains(&status)
                && status != 401
                && status != 403
                && status != 429 =>
            {
                let problem: Option<Problem> = serde_json::from_str(&body).ok();
                let (code, detail) = match problem {
                    Some(p) => (p.code, p.detail.unwrap_or(p.title)),
                    None => (format!("http_{status}"), body),
                };
                tracing::debug!(%service, status, %code, "step rejected");
                StepError::Rejected { code, detail }
            }
            CallError::Status {
                service, status, ..
            } => StepError::Unavailable {
                reason: format!("{service} answered {status}"),
                service,
            },
            CallError::NoInstance(service) => StepError::Unavailable {
                reason: format!("no instance of {service} is up"),
                service,
            },
            CallError::Timeout { service } => StepError::Unavailable {
                reason: format!("{service} timed out"),
                service,
            },
            CallError::Transport { service, .. } => StepError::Unavailable {
                reason: format!("{service} is unreachable"),
                service,
            },
            CallError::Decode { service, source } => StepError::Unavailable {
                reason: format!("{service} answered an undecodable body: {source}"),
                service,
            },
            CallError::Encode { service, reason } => StepError::Unavailable {
                reason: format!("cannot encode the request to {service}: {reason}"),
                service,
            },
            CallError::Token { audience, reason } => StepError::Unavailable {
                reason: format!("no token for {audience}: {reason}"),
                service: "identity".to_owned(),
            },
            CallError::Batch { service, reason } => StepError::Unavailable { reason, service },
        }
    }
}

/// The other services, as the orders service sees them.
#[derive(Clone)]
pub struct Remote {
    client: ServiceClient,
    /// Whether internal calls go through [`ServiceClient::send_coalesced`].
    coalesce: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CartLine {
    pub product_id: String,
    #[serde(default)]
    pub sku: String,
    #[serde(default)]
    pub name: String,
    pub quantity: i64,
    pub unit_price: Money,
    #[serde(default)]
    pub weight_grams: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Cart {
    pub lines: Vec<CartLine>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Reservation {
    pub status: String,
    #[serde(default)]
    pub allocations: Vec<Allocation>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Quote {
    pub amount: Money,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Conversion {
    pub amount_minor: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Payment {
    pub payment_id: String,
    pub status: String,
    #[serde(default)]
    pub decline_code: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Shipment {
    pub shipment_id: String,
    pub tracking_number: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Parcel {
    pub warehouse_id: String,
    pub lat: f64,
    pub lon: f64,
    pub weight_grams: i64,
}

impl Remote {
    pub fn new(client: ServiceClient, coalesce: bool) -> Self {
        Self { client, coalesce }
    }

    /// A read of another service. When coalescing, internal reads and the saga's commands go
    /// through [`ServiceClient::send_coalesced`] (which sends anything not internal on its
    /// own): with many orders in flight, the calls to one service share requests (every
    /// command is idempotent by its key, so a failed batch is retried like a failed call).
    async fn get<T: DeserializeOwned>(&self, service: &str, path: &str) -> Result<T, StepError> {
        self.call(service, Method::GET, path, None::<&()>).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        service: &str,
        path: &str,
        body: &B,
    ) -> Result<T, StepError> {
        self.call(service, Method::POST, path, Some(body)).await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        service: &str,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, StepError> {
        let sent = if self.coalesce {
            self.client
                .send_coalesced(service, method, path, body)
                .await
        } else {
            self.client
                .send(service, method, path, body, Default::default())
                .await
        };
        let response = sent.map_err(StepError::from_call)?;
        response.json().await.map_err(|e| StepError::Unavailable {
            service: service.to_owned(),
            reason: format!("undecodable answer: {e}"),
        })
    }

    /// The user's cart, at placement.
    pub async fn cart(&self, user_id: &str) -> Result<Cart, StepError> {
        self.get("cart", &format!("/internal/v1/carts/{}", encode(user_id)))
            .await
    }

    /// Coordinates of a shipping address (422 `unshippable_destination` when unknown).
    pub async fn locate(&self, address: &Address) -> Result<Location, StepError> {
        self.get(
            "shipping",
            &format!(
                "/internal/v1/locate?country={}&postal_code={}",
                encode(&address.country),
                encode(&address.postal_code)
            ),
        )
        .await
    }

    pub async fn reserve(
        &self,
        order_id: &str,
        lines: &[OrderLine],
        destination: (f64, f64),
    ) -> Result<Reservation, StepError> {
        let lines: Vec<_> = lines
            .iter()
            .map(|l| serde_json::json!({"product_id": l.product_id, "quantity": l.quantity}))
            .collect();
        self.post(
            "inventory",
            "/internal/v1/reservations",
            &serde_json::json!({
                "key": order_id,
                "lines": lines,
                "destination": {"lat": destination.0, "lon": destination.1},
            }),
        )
        .await
    }

    pub async fn commit_stock(&self, order_id: &str) -> Result<Reservation, StepError> {
        self.post(
            "inventory",
            &format!("/internal/v1/reservations/{}/commit", encode(order_id)),
            &serde_json::json!({}),
        )
        .await
    }

    pub async fn release_stock(&self, order_id: &str) -> Result<Reservation, StepError> {
        self.post(
            "inventory",
            &format!("/internal/v1/reservations/{}/release", encode(order_id)),
            &serde_json::json!({}),
        )
        .await
    }

    pub async fn quote(
        &self,
        destination: (f64, f64),
        parcels: &[Parcel],
    ) -> Result<Quote, StepError> {
        self.post(
            "shipping",
            "/internal/v1/quotes",
            &serde_json::json!({
                "destination": {"lat": destination.0, "lon": destination.1},
                "parcels": parcels,
            }),
        )
        .await
    }

    pub async fn convert(&self, amount: &Money, to: &str) -> Result<i64, StepError> {
        if amount.currency == to {
            return Ok(amount.amount_minor);
        }
        let conversion: Conversion = self
            .get(
                "currency",
                &format!(
                    "/api/v1/currencies/convert?amount_minor={}&from={}&to={}",
                    amount.amount_minor,
                    encode(&amount.currency),
                    encode(to)
                ),
            )
            .await?;
        Ok(conversion.amount_minor)
    }

    pub async fn authorize(
        &self,
        order_id: &str,
        user_id: &str,
        amount: &Money,
        card_token: &str,
    ) -> Result<Payment, StepError> {
        self.post(
            "payments",
            "/internal/v1/payments/authorize",
            &serde_json::json!({
                "idempotency_key": format!("{order_id}-authorize"),
                "order_id": order_id,
                "user_id": user_id,
                "amount": amount,
                "card_token": card_token,
            }),
        )
        .await
    }

    /// `action` is `capture` or `void`.
    pub async fn settle(
        &self,
        order_id: &str,
        payment_id: &str,
        action: &str,
    ) -> Result<Payment, StepError> {
        self.post(
            "payments",
            &format!("/internal/v1/payments/{}/{action}", encode(payment_id)),
            &serde_json::json!({ "idempotency_key": format!("{order_id}-{action}") }),
        )
        .await
    }

    pub async fn create_shipment(
        &self,
        order_id: &str,
        user_id: &str,
        address: &Address,
        parcels: &[Parcel],
    ) -> Result<Shipment, StepError> {
        self.post(
            "shipping",
            "/internal/v1/shipments",
            &serde_json::json!({
                "order_id": order_id,
                "user_id": user_id,
                "destination": address,
                "parcels": parcels,
            }),
        )
        .await
    }
}

/// Percent-encodes a path or query component.
fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}
