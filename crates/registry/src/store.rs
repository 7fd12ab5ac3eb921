//! The registry's in-memory state: instances by id, a version bumped on every change, and a
//! notifier for watchers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bazaar_discovery::{Instance, InstanceStatus, Registration, Snapshot};
use bazaar_kit::storage::now_ms;
use tokio::sync::watch;

struct Inner {
    instances: HashMap<String, Instance>,
    version: u64,
}

/// Shared registry state. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
    epoch: String,
    ttl: Duration,
    heartbeat_interval: Duration,
    changes: watch::Sender<u64>,
}

impl Store {
    pub fn new(ttl: Duration, heartbeat_interval: Duration) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                instances: HashMap::new(),
                version: 0,
            })),
            epoch: uuid::Uuid::new_v4().simple().to_string(),
            ttl,
            heartbeat_interval,
            changes: watch::channel(0).0,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    fn changed(&self, inner: &mut Inner) {
        inner.version += 1;
        self.changes.send_replace(inner.version);
    }

    /// Registers (or re-registers, keeping the id) an instance; returns its id.
    pub fn register(&self, registration: Registration) -> String {
        let now = now_ms() as u64;
        let id = registration.instance_id.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                registration.service,
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            )
        });
        let mut inner = self.inner.lock().expect("registry lock");
        let registered_at_ms = inner
            .instances
            .get(&id)
            .map_or(now, |existing| existing.registered_at_ms);
        let instance = Instance {
            id: id.clone(),
            service: registration.service,
            address: registration.address,
            version: registration.version,
            metadata: registration.metadata,
            // Not routable until its first heartbeat reports it ready.
            status: InstanceStatus::NotReady,
            registered_at_ms,
            last_heartbeat_ms: now,
        };
        if inner.instances.get(&id) != Some(&instance) {
            inner.instances.insert(id.clone(), instance);
            self.changed(&mut inner);
        }
        id
    }

    /// Records a heartbeat; false if the instance is unknown (expired, or the registry
    /// restarted), which tells it to register again.
    pub fn heartbeat(&self, id: &str, status: InstanceStatus) -> bool {
        let mut inner = self.inner.lock().expect("registry lock");
        let Some(instance) = inner.instances.get_mut(id) else {
            return false;
        };
        instance.last_heartbeat_ms = now_ms() as u64;
        if instance.status != status {
            instance.status = status;
            self.changed(&mut inner);
        }
        true
    }

    /// Removes an instance; false if it was unknown.
    pub fn deregister(&self, id: &str) -> bool {
        let mut inner = self.inner.lock().expect("registry lock");
        let removed = inner.instances.remove(id).is_some();
        if removed {
            self.changed(&mut inner);
        }
        removed
    }

    /// Removes instances whose last heartbeat is older than the TTL; returns their ids.
    pub fn expire(&self) -> Vec<String> {
        let cutoff = (now_ms() as u64).saturating_sub(self.ttl.as_millis() as u64);
        let mut inner = self.inner.lock().expect("registry lock");
        let expired: Vec<String> = inner
            .instances
            .values()
            .filter(|i| i.last_heartbeat_ms < cutoff)
            .map(|i| i.id.clone())
            .collect();
        for id in &expired {
            inner.instances.remove(id);
        }
        if !expired.is_empty() {
            self.changed(&mut inner);
        }
        expired
    }

    /// Everything, grouped by service, instances sorted by id.
    pub fn snapshot(&self) -> Snapshot {
        let inner = self.inner.lock().expect("registry lock");
        let mut services: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
        for instance in inner.instances.values() {
            services
                .entry(instance.service.clone())
                .or_default()
                .push(instance.clone());
        }
        for list in services.values_mut() {
            list.sort_by(|a, b| a.id.cmp(&b.id));
        }
        Snapshot {
            epoch: self.epoch.clone(),
            version: inner.version,
            services,
        }
    }

    /// Waits until the version differs from `since` (or `epoch` is not ours), at most `wait`.
    pub async fn wait_for_change(&self, epoch: &str, since: u64, wait: Duration) -> Snapshot {
        if epoch == self.epoch {
            let mut changes = self.changes.subscribe();
            let _ = tokio::time::timeout(wait, changes.wait_for(|v| *v != since)).await;
        }
        self.snapshot()
    }

    /// Expires stale instances every quarter TTL, for the life of the process.
    pub fn spawn_sweeper(&self) {
        let store = self.clone();
        let period = (self.ttl / 4).max(Duration::from_millis(25));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                for id in store.expire() {
                    tracing::info!(instance = %id, "instance expired: no heartbeat within the ttl");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(service: &str) -> Registration {
        Registration {
            service: service.into(),
            address: "http://127.0.0.1:1".into(),
            version: "1".into(),
            metadata: Default::default(),
            instance_id: None,
        }
    }

    #[test]
    fn instances_become_routable_on_heartbeat_and_expire_without_one() {
        let store = Store::new(Duration::from_millis(30), Duration::from_millis(10));
        let id = store.register(registration("catalog"));
        assert!(
            store.snapshot().routable("catalog").is_empty(),
            "not ready before a heartbeat"
        );
        assert!(store.heartbeat(&id, InstanceStatus::Up));
        assert_eq!(store.snapshot().routable("catalog").len(), 1);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(store.expire(), vec![id.clone()]);
        assert!(
            !store.heartbeat(&id, InstanceStatus::Up),
            "expired instance is unknown"
        );
    }

    #[test]
    fn re_registration_keeps_the_id() {
        let store = Store::new(Duration::from_secs(5), Duration::from_secs(1));
        let mut r = registration("catalog");
        r.instance_id = Some("catalog-fixed".into());
        assert_eq!(store.register(r.clone()), "catalog-fixed");
        assert_eq!(store.register(r), "catalog-fixed");
        assert_eq!(store.snapshot().services["catalog"].len(), 1);
    }
}
