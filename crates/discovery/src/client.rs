//! HTTP client for the registry's API.

use std::time::Duration;

use crate::model::{HeartbeatRequest, Registration, RegistrationAccepted, Snapshot};

/// Why a call to the registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry unreachable: {0}")]
    Unreachable(#[source] reqwest::Error),
    #[error("registry does not know instance {0}")]
    UnknownInstance(String),
    #[error("registry answered {status}: {body}")]
    Rejected { status: u16, body: String },
}

/// A client of one registry base URL.
#[derive(Clone, Debug)]
pub struct RegistryClient {
    base_url: String,
    http: reqwest::Client,
}

impl RegistryClient {
    pub fn new(base_url: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client without TLS always builds");
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            http,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub async fn register(
        &self,
        registration: &Registration,
    ) -> Result<RegistrationAccepted, RegistryError> {
        let response = self
            .http
            .post(format!("{}/api/v1/instances", self.base_url))
            .timeout(Duration::from_secs(2))
            .json(registration)
            .send()
            .await
            .map_err(RegistryError::Unreachable)?;
        Self::decode(response).await
    }

    pub async fn heartbeat(
        &self,
        instance_id: &str,
        body: &HeartbeatRequest,
    ) -> Result<(), RegistryError> {
        let response = self
            .http
            .put(format!(
                "{}/api/v1/instances/{instance_id}/heartbeat",
                self.base_url
            ))
            .timeout(Duration::from_secs(2))
            .json(body)
            .send()
            .await
            .map_err(RegistryError::Unreachable)?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(RegistryError::UnknownInstance(instance_id.to_owned()));
        }
        Self::check(response).await.map(|_| ())
    }

    pub async fn deregister(&self, instance_id: &str) -> Result<(), RegistryError> {
        let response = self
            .http
            .delete(format!("{}/api/v1/instances/{instance_id}", self.base_url))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(RegistryError::Unreachable)?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        Self::check(response).await.map(|_| ())
    }

    /// The current snapshot.
    pub async fn snapshot(&self) -> Result<Snapshot, RegistryError> {
        let response = self
            .http
            .get(format!("{}/api/v1/services", self.base_url))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(RegistryError::Unreachable)?;
        Self::decode(response).await
    }

    /// Long-poll: returns as soon as the registry's version differs from `since` (or its epoch
    /// from `epoch`), or after `wait` with the unchanged snapshot.
    pub async fn watch(
        &self,
        epoch: &str,
        since: u64,
        wait: Duration,
    ) -> Result<Snapshot, RegistryError> {
        let response = self
            .http
            .get(format!("{}/api/v1/watch", self.base_url))
            .query(&[
                ("epoch", epoch.to_owned()),
                ("since", since.to_string()),
                ("wait_ms", wait.as_millis().to_string()),
            ])
            .timeout(wait + Duration::from_secs(2))
            .send()
            .await
            .map_err(RegistryError::Unreachable)?;
        Self::decode(response).await
    }

    async fn check(response: reqwest::Response) -> Result<reqwest::Response, RegistryError> {
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        Err(RegistryError::Rejected { status, body })
    }

    async fn decode<T: serde::de::DeserializeOwned>(
        response: reqwest::Response,
    ) -> Result<T, RegistryError> {
        Self::check(response)
            .await?
            .json()
            .await
            .map_err(RegistryError::Unreachable)
    }
}
