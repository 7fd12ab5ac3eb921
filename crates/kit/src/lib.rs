//! The service kit: everything every bazaar service needs set up the same way, so a service's
//! start-up is a few lines (configuration, logging, request context, errors, extractors,
//! metrics, health, storage, service-to-service calls, registration, serving and shutdown).
//!
//! A service crate builds its own `axum::Router` and hands it to [`server::Service`], which adds
//! the common routes and layers and runs it.

pub mod audit;
pub mod batch;
pub mod client;
pub mod config;
pub mod context;
pub mod etag;
pub mod extract;
pub mod group_commit;
pub mod health;
pub mod metrics;
pub mod problem;
pub mod process_cpu;
pub mod server;
pub mod state;
pub mod storage;
pub mod telemetry;

pub use problem::{ApiError, ApiResult};
