//! What every gateway handler shares: the route table, the registry view, the balancer (whose
//! per-instance statistics and ejections must be shared by all requests to mean anything), the
//! pooled client, the metrics, the OpenAPI cache, and the authorization and limits.

use std::sync::Arc;

use bazaar_discovery::{Balancer, Discovery};

use crate::authorize::Security;
use crate::client::HttpClient;
use crate::metrics::GatewayMetrics;
use crate::openapi::OpenApiCache;
use crate::routes::RouteTable;

/// Shared state. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub routes: Arc<RouteTable>,
    pub discovery: Discovery,
    pub balancer: Balancer,
    pub client: HttpClient,
    pub metrics: GatewayMetrics,
    pub max_body_bytes: usize,
    pub openapi: Arc<OpenApiCache>,
    pub security: Arc<Security>,
}
