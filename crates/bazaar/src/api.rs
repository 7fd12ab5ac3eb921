//! The gateway as a JSON API for client commands: one request helper that adds the caller's
//! token and turns problem documents into errors.

use anyhow::Context;
use serde_json::Value;

use crate::cli::Global;
use crate::output;
use crate::session;

/// The gateway, with (or without) the caller's token on every request.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// For public endpoints: no token.
    pub fn anonymous(global: &Global) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: session::gateway_key(&global.gateway),
            token: None,
        }
    }

    /// For endpoints that need a user: the token from [`session::user_token`].
    pub async fn signed_in(global: &Global) -> anyhow::Result<Self> {
        let token = session::user_token(global).await?;
        Ok(Self {
            token: Some(token),
            ..Self::anonymous(global)
        })
    }

    /// Sends a request; a non-2xx answer is an error, 204 is `Value::Null`.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, String)],
    ) -> anyhow::Result<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| {
            format!("cannot reach the gateway at {} (is bazaar up?)", self.base)
        })?;
        if !response.status().is_success() {
            return Err(output::problem_error(response).await);
        }
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        response
            .json()
            .await
            .context("the gateway sent invalid JSON")
    }

    /// A GET whose answer is read as `T`.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let body = self.call(reqwest::Method::GET, path, None, &[]).await?;
        serde_json::from_value(body)
            .with_context(|| format!("the gateway answered GET {path} with an unexpected document"))
    }
}
