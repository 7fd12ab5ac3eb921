//! Load balancing across instances: power of two choices on a cost made of in-flight requests
//! and a moving average of latency, with outlier ejection (a circuit breaker per instance).
//!
//! An instance that fails `eject_after` times in a row (connect errors, timeouts, 5xx as the
//! caller reports them) is ejected for `ejection`; after that it is half-open: it may be picked
//! again, and one more failure ejects it again for twice as long (capped), one success closes it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::model::Instance;

/// Tuning of ejection.
#[derive(Debug, Clone, Copy)]
pub struct BalancerConfig {
    /// Consecutive failures that eject an instance.
    pub eject_after: u32,
    /// How long the first ejection lasts; doubles on each repeated ejection, up to 8x.
    pub ejection: Duration,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        Self {
            eject_after: 3,
            ejection: Duration::from_secs(5),
        }
    }
}

#[derive(Default)]
struct Stats {
    in_flight: AtomicUsize,
    /// Exponentially weighted moving average of latency in microseconds.
    ewma_micros: AtomicU64,
    breaker: Mutex<Breaker>,
}

#[derive(Default)]
struct Breaker {
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
}

/// One chosen instance plus the guard that counts it in flight.
pub struct Endpoint {
    pub instance: Instance,
    pub in_flight: InFlight,
}

/// Counts a request in flight for its instance until dropped; report the outcome through it.
pub struct InFlight {
    stats: Arc<Stats>,
    started: Instant,
    config: BalancerConfig,
    instance_id: String,
}

impl InFlight {
    /// The request got a usable answer.
    pub fn success(self) {
        let micros = self.started.elapsed().as_micros() as u64;
        let old = self.stats.ewma_micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            micros
        } else {
            (old * 7 + micros) / 8
        };
        self.stats.ewma_micros.store(new, Ordering::Relaxed);
        let mut breaker = self.stats.breaker.lock().expect("breaker lock");
        breaker.consecutive_failures = 0;
        breaker.ejections = 0;
        breaker.ejected_until = None;
    }

    /// The instance failed (refused the connection, timed out, or answered 5xx). Returns true if
    /// this failure ejected it.
    pub fn failure(self) -> bool {
        let mut breaker = self.stats.breaker.lock().expect("breaker lock");
        breaker.consecutive_failures += 1;
        if breaker.consecutive_failures >= self.config.eject_after {
            let factor = 1u32 << breaker.ejections.min(3);
            breaker.ejected_until = Some(Instant::now() + self.config.ejection * factor);
            breaker.ejections += 1;
            breaker.consecutive_failures = 0;
            tracing::warn!(instance = %self.instance_id, "instance ejected after repeated failures");
            return true;
        }
        false
    }

    /// The instance could not even be connected to: eject it at once, nothing can be in doubt.
    pub fn connect_failure(self) {
        let mut breaker = self.stats.breaker.lock().expect("breaker lock");
        let factor = 1u32 << breaker.ejections.min(3);
        breaker.ejected_until = Some(Instant::now() + self.config.ejection * factor);
        breaker.ejections += 1;
        breaker.consecutive_failures = 0;
        tracing::warn!(instance = %self.instance_id, "instance refused connection; ejected");
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks instances; keeps per-instance statistics keyed by instance id. Cheap to clone.
#[derive(Clone, Default)]
pub struct Balancer {
    config: BalancerConfig,
    stats: Arc<Mutex<HashMap<String, Arc<Stats>>>>,
}

impl Balancer {
    pub fn new(config: BalancerConfig) -> Self {
        Self {
            config,
            stats: Arc::default(),
        }
    }

    fn stats_for(&self, id: &str) -> Arc<Stats> {
        let mut all = self.stats.lock().expect("balancer lock");
        all.entry(id.to_owned()).or_default().clone()
    }

    /// Whether the instance is currently ejected.
    pub fn is_ejected(&self, id: &str) -> bool {
        let stats = self.stats_for(id);
        let breaker = stats.breaker.lock().expect("breaker lock");
        breaker.ejected_until.is_some_and(|t| t > Instant::now())
    }

    /// Picks one of `instances` not in `exclude` and not ejected, by power of two choices.
    pub fn pick(&self, instances: &[Instance], exclude: &[String]) -> Option<Endpoint> {
        let now = Instant::now();
        let candidates: Vec<(&Instance, Arc<Stats>)> = instances
            .iter()
            .filter(|i| !exclude.contains(&i.id))
            .map(|i| (i, self.stats_for(&i.id)))
            .filter(|(_, s)| {
                let breaker = s.breaker.lock().expect("breaker lock");
                breaker.ejected_until.is_none_or(|t| t <= now)
            })
            .collect();
        let chosen = match candidates.len() {
            0 => return None,
            1 => &candidates[0],
            n => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                if cost(&candidates[a].1) <= cost(&candidates[b].1) {
                    &candidates[a]
                } else {
                    &candidates[b]
                }
            }
        };
        chosen.1.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Endpoint {
            instance: chosen.0.clone(),
            in_flight: InFlight {
                stats: chosen.1.clone(),
                started: Instant::now(),
                config: self.config,
                instance_id: chosen.0.id.clone(),
            },
        })
    }

    /// Forgets statistics of instances that are no longer registered.
    pub fn retain(&self, live_ids: &[String]) {
        let mut all = self.stats.lock().expect("balancer lock");
        all.retain(|id, _| live_ids.contains(id));
    }
}

/// Lower is better: latency scaled by the queue the instance would have with one more request.
fn cost(stats: &Stats) -> u64 {
    let latency = stats.ewma_micros.load(Ordering::Relaxed).max(1);
    latency * (stats.in_flight.load(Ordering::Relaxed) as u64 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str) -> Instance {
        Instance {
            id: id.into(),
            service: "svc".into(),
            address: format!("http://{id}"),
            version: "0".into(),
            metadata: Default::default(),
            status: crate::InstanceStatus::Up,
            registered_at_ms: 0,
            last_heartbeat_ms: 0,
        }
    }

    #[test]
    fn prefers_the_instance_with_fewer_requests_in_flight() {
        let balancer = Balancer::default();
        let all = [instance("a"), instance("b")];
        let _busy: Vec<_> = (0..5)
            .map(|_| balancer.pick(&all[..1], &[]).expect("a"))
            .collect();
        for _ in 0..20 {
            let picked = balancer.pick(&all, &[]).expect("some");
            assert_eq!(picked.instance.id, "b");
        }
    }

    #[test]
    fn ejects_after_repeated_failures_and_readmits_after_the_ejection() {
        let balancer = Balancer::new(BalancerConfig {
            eject_after: 2,
            ejection: Duration::from_millis(50),
        });
        let all = [instance("a")];
        assert!(!balancer.pick(&all, &[]).expect("a").in_flight.failure());
        assert!(balancer.pick(&all, &[]).expect("a").in_flight.failure());
        assert!(
            balancer.pick(&all, &[]).is_none(),
            "ejected instance must not be picked"
        );
        std::thread::sleep(Duration::from_millis(60));
        let again = balancer.pick(&all, &[]).expect("half-open after ejection");
        again.in_flight.success();
        assert!(!balancer.is_ejected("a"));
    }

    #[test]
    fn excluded_instances_are_skipped() {
        let balancer = Balancer::default();
        let all = [instance("a"), instance("b")];
        let picked = balancer.pick(&all, &["a".into()]).expect("b");
        assert_eq!(picked.instance.id, "b");
        assert!(balancer.pick(&all, &["a".into(), "b".into()]).is_none());
    }
}
