//! The client of the card processor: an outside system, reached at a configured URL with the
//! merchant's secret key (not through the registry, and not with bazaar service tokens).
//!
//! Every write carries an `Idempotency-Key` chosen and stored by the caller before the call,
//! so a call that timed out or whose answer was lost can be repeated and the processor answers
//! with what it recorded. Errors say whether the request may have reached the processor
//! ([`ProcessorError::Timeout`]) or certainly did nothing useful.

use std::time::Duration;

use bazaar_kit::config::Secret;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use crate::model::CardInput;

/// The processor's answer to a tokenization.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TokenizedCard {
    pub token: String,
    pub brand: String,
    pub last4: String,
    pub exp_month: i64,
    pub exp_year: i64,
}

/// What an authorization request sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthorizeRequest<'a> {
    pub token: &'a str,
    pub amount_minor: i64,
    pub currency: &'a str,
    /// The order id, so the processor's records can be reconciled with ours.
    pub reference: &'a str,
}

/// The processor's view of an authorization (the fields payments uses).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProcessorAuthorization {
    pub id: String,
    /// `approved` or `declined`.
    pub status: String,
    #[serde(default)]
    pub decline_code: Option<String>,
    /// `authorized`, `captured`, `voided`, `refunded` or `declined`.
    pub state: String,
    pub amount_minor: i64,
    pub currency: String,
}

/// Why a processor call failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// No answer in time: the request may or may not have had its effect.
    #[error("the processor did not answer within {0:?}")]
    Timeout(Duration),
    /// The processor could not be reached or the connection broke.
    #[error("the processor is unreachable: {0}")]
    Unavailable(String),
    /// The processor answered with an error status; `problem` is its problem document, if any.
    #[error("the processor answered {status}")]
    Status {
        status: u16,
        problem: Option<serde_json::Value>,
    },
    /// The processor answered 2xx with a body we cannot read.
    #[error("unexpected answer from the processor: {0}")]
    Decode(String),
}

impl ProcessorError {
    /// The processor's problem `code`, if it sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ProcessorError::Status {
                problem: Some(problem),
                ..
            } => problem.get("code").and_then(|c| c.as_str()),
            _ => None,
        }
    }
}

/// The processor client. Cheap to clone.
#[derive(Clone)]
pub struct ProcessorClient {
    http: reqwest::Client,
    base_url: String,
    merchant_key: Secret,
    timeout: Duration,
}

impl std::fmt::Debug for ProcessorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessorClient")
            .field("base_url", &self.base_url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ProcessorClient {
    pub fn new(base_url: &str, merchant_key: Secret, timeout: Duration) -> Self {
        Self {
            http: reqwest::Client::builder()
                .connect_timeout(timeout.min(Duration::from_secs(2)))
                .build()
                .expect("reqwest client without TLS always builds"),
            base_url: base_url.trim_end_matches('/').to_owned(),
            merchant_key,
            timeout,
        }
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        method: reqwest::Method,
        path: &str,
        idempotency_key: Option<&str>,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, ProcessorError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .bearer_auth(self.merchant_key.expose())
            .timeout(self.timeout);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.transport(e))?;
        if !status.is_success() {
            return Err(ProcessorError::Status {
                status: status.as_u16(),
                problem: serde_json::from_slice(&bytes).ok(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ProcessorError::Decode(e.to_string()))
    }

    fn transport(&self, error: reqwest::Error) -> ProcessorError {
        if error.is_timeout() {
            ProcessorError::Timeout(self.timeout)
        } else {
            // Without the URL: only the processor's address is in it, but keep errors terse.
            ProcessorError::Unavailable(error.without_url().to_string())
        }
    }

    /// Puts a card in the processor's vault.
    pub async fn tokenize(&self, card: &CardInput) -> Result<TokenizedCard, ProcessorError> {
        self.call(reqwest::Method::POST, "/v1/tokens", None, Some(card))
            .await
    }

    /// Authorizes `request` under `idempotency_key`.
    pub async fn authorize(
        &self,
        idempotency_key: &str,
        request: &AuthorizeRequest<'_>,
    ) -> Result<ProcessorAuthorization, ProcessorError> {
        self.call(
            reqwest::Method::POST,
            "/v1/authorizations",
            Some(idempotency_key),
            Some(request),
        )
        .await
    }

    /// Captures, voids or refunds (`action`) authorization `id` under `idempotency_key`.
    pub async fn act(
        &self,
        id: &str,
        action: &str,
        idempotency_key: &str,
    ) -> Result<ProcessorAuthorization, ProcessorError> {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/authorizations/{id}/{action}"),
            Some(idempotency_key),
            None::<&()>,
        )
        .await
    }

    /// One authorization.
    pub async fn authorization(&self, id: &str) -> Result<ProcessorAuthorization, ProcessorError> {
        self.call(
            reqwest::Method::GET,
            &format!("/v1/authorizations/{id}"),
            None,
            None::<&()>,
        )
        .await
    }

    /// The processor's published test cards, as it publishes them.
    pub async fn test_cards(&self) -> Result<serde_json::Value, ProcessorError> {
        self.call(reqwest::Method::GET, "/v1/test-cards", None, None::<&()>)
            .await
    }
}

/// Whether `status` is the processor refusing a state change (409).
pub fn is_conflict(error: &ProcessorError) -> bool {
    matches!(error, ProcessorError::Status { status, .. } if *status == StatusCode::CONFLICT.as_u16())
}
