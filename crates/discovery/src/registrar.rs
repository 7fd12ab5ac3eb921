//! Keeps one instance registered: registers at start, heartbeats with the instance's readiness,
//! re-registers (same instance id) when the registry forgot it (a registry restart), and
//! deregisters on shutdown.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::client::{RegistryClient, RegistryError};
use crate::model::{HeartbeatRequest, InstanceStatus, Registration};

/// Whether the instance is currently registered; read by `/readyz`.
#[derive(Clone, Default)]
pub struct RegistrationState(Arc<AtomicBool>);

impl RegistrationState {
    pub fn is_registered(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    fn set(&self, value: bool) {
        self.0.store(value, Ordering::Relaxed);
    }
}

/// Registers one instance and keeps it registered.
pub struct Registrar {
    client: RegistryClient,
    registration: Registration,
    state: RegistrationState,
    heartbeat_interval: Duration,
}

impl Registrar {
    pub fn new(client: RegistryClient, mut registration: Registration) -> Self {
        if registration.instance_id.is_none() {
            registration.instance_id = Some(format!(
                "{}-{}",
                registration.service,
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ));
        }
        Self {
            client,
            registration,
            state: RegistrationState::default(),
            heartbeat_interval: Duration::from_secs(2),
        }
    }

    /// Heartbeat at least this often (the registry may ask for more often).
    pub fn with_heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    pub fn state(&self) -> RegistrationState {
        self.state.clone()
    }

    pub fn instance_id(&self) -> &str {
        self.registration.instance_id.as_deref().unwrap_or_default()
    }

    /// Runs until `shutdown` resolves, then deregisters. `status` is asked before every heartbeat.
    pub async fn run<S, F>(self, status: S, shutdown: impl Future<Output = ()>)
    where
        S: Fn() -> F,
        F: Future<Output = InstanceStatus>,
    {
        tokio::pin!(shutdown);
        let id = self.instance_id().to_owned();
        let mut interval = self.heartbeat_interval;
        // While unregistered, retry quickly (doubling up to the heartbeat interval) so a service
        // started together with the registry becomes ready as soon as the registry is.
        let mut retry = Duration::from_millis(100);
        loop {
            let outcome = if self.state.is_registered() {
                let body = HeartbeatRequest {
                    status: status().await,
                };
                self.client.heartbeat(&id, &body).await
            } else {
                match self.client.register(&self.registration).await {
                    Ok(accepted) => {
                        interval = interval.min(Duration::from_millis(
                            accepted.heartbeat_interval_ms.max(50),
                        ));
                        tracing::info!(instance = %id, registry = %self.client.base_url(), "registered");
                        self.state.set(true);
                        // Report readiness at once rather than one interval later.
                        let body = HeartbeatRequest {
                            status: status().await,
                        };
                        self.client.heartbeat(&id, &body).await
                    }
                    Err(e) => Err(e),
                }
            };
            match outcome {
                Ok(()) => {}
                Err(RegistryError::UnknownInstance(_)) => {
                    tracing::info!(instance = %id, "registry forgot this instance; re-registering");
                    self.state.set(false);
                    continue;
                }
                Err(error) => {
                    tracing::warn!(instance = %id, %error, "registry heartbeat failed");
                    self.state.set(false);
                }
            }
            let pause = if self.state.is_registered() {
                retry = Duration::from_millis(100);
                interval
            } else {
                retry = (retry * 2).min(interval);
                retry
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        if let Err(error) = self.client.deregister(&id).await {
            tracing::warn!(instance = %id, %error, "deregistration failed; the registry will expire it");
        } else {
            tracing::info!(instance = %id, "deregistered");
        }
        self.state.set(false);
    }
}
