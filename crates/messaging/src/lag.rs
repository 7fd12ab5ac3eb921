//! Consumer lag as a Prometheus gauge (`bazaar_consumer_lag{group,source}`): how many events a
//! subscriber group has still to apply from a source. `bazaar status` and the admin console read
//! it from `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LagLabels {
    group: String,
    source: String,
}

/// The lag gauges of one service.
#[derive(Clone, Default)]
pub struct Lag {
    gauges: Family<LagLabels, Gauge>,
    unpublished: Gauge,
}

impl Lag {
    /// Registers the gauges in the service's metrics.
    pub fn register(metrics: &bazaar_kit::metrics::Metrics) -> Self {
        let lag = Self::default();
        let mut registry = metrics.registry();
        registry.register(
            "consumer_lag",
            "Events a subscriber group has not applied yet, by group and source",
            lag.gauges.clone(),
        );
        registry.register(
            "outbox_unpublished",
            "Events in this service's outbox not yet acknowledged by the broker (nats transport)",
            lag.unpublished.clone(),
        );
        lag
    }

    pub fn set(&self, group: &str, source: &str, lag: i64) {
        self.gauges
            .get_or_create(&LagLabels {
                group: group.to_owned(),
                source: source.to_owned(),
            })
            .set(lag);
    }

    pub fn set_unpublished(&self, count: i64) {
        self.unpublished.set(count);
    }
}
