//! Service discovery: the registry's wire contract, a client for it, a locally cached view of
//! every service's instances kept fresh by long-polling the registry's watch, a load balancer
//! (power of two choices with outlier ejection), and the registrar that keeps one instance
//! registered for as long as it runs.
//!
//! This crate is shared by every service, the gateway and the CLI; the `registry` service crate
//! depends on it only for the wire types, never the other way round.

mod balancer;
mod client;
mod model;
mod registrar;
mod watch;

pub use balancer::{Balancer, BalancerConfig, Endpoint, InFlight};
pub use client::{RegistryClient, RegistryError};
pub use model::{
    HeartbeatRequest, Instance, InstanceStatus, Registration, RegistrationAccepted, Snapshot,
};
pub use registrar::{Registrar, RegistrationState};
pub use watch::Discovery;
