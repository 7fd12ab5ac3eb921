//! Wire types of the registry's REST API (`/api/v1/instances`, `/api/v1/services`,
//! `/api/v1/watch`). These are the contract between the registry and everyone else.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What an instance sends to register itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Registration {
    /// Logical service name, e.g. `catalog`.
    pub service: String,
    /// Base URL the instance answers on, e.g. `http://127.0.0.1:8082`.
    pub address: String,
    /// Version of the code the instance runs.
    pub version: String,
    /// Free-form labels (zone, canary, pid...).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Instance id to keep across re-registrations (after a registry restart); the registry
    /// assigns one when absent.
    #[serde(default)]
    pub instance_id: Option<String>,
}

/// The registry's answer to a registration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RegistrationAccepted {
    pub instance_id: String,
    /// An instance that has not heartbeated for this long is expired.
    pub ttl_ms: u64,
    /// How often the registry expects a heartbeat.
    pub heartbeat_interval_ms: u64,
}

/// Health an instance reports about itself in each heartbeat.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    /// Ready to serve traffic.
    #[default]
    Up,
    /// Alive but not ready (a dependency is down); not routed to.
    NotReady,
    /// Shutting down: finish in-flight work, send nothing new.
    Draining,
}

/// Body of `PUT /api/v1/instances/{id}/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default, utoipa::ToSchema)]
pub struct HeartbeatRequest {
    #[serde(default)]
    pub status: InstanceStatus,
}

/// One registered instance as the registry sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Instance {
    pub id: String,
    pub service: String,
    pub address: String,
    pub version: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub status: InstanceStatus,
    /// Unix milliseconds.
    pub registered_at_ms: u64,
    /// Unix milliseconds of the last heartbeat.
    pub last_heartbeat_ms: u64,
}

impl Instance {
    /// Whether traffic may be routed to this instance.
    pub fn is_routable(&self) -> bool {
        self.status == InstanceStatus::Up
    }
}

/// Everything the registry knows, with a version that increases on every change. `epoch` changes
/// when the registry restarts, so a watcher can tell a fresh registry from an old version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default, utoipa::ToSchema)]
pub struct Snapshot {
    pub epoch: String,
    pub version: u64,
    pub services: BTreeMap<String, Vec<Instance>>,
}

impl Snapshot {
    /// Routable instances of one service.
    pub fn routable(&self, service: &str) -> Vec<Instance> {
        self.services
            .get(service)
            .map(|all| all.iter().filter(|i| i.is_routable()).cloned().collect())
            .unwrap_or_default()
    }
}
