//! A locally cached view of the registry, kept fresh by long-polling its watch endpoint, so that
//! picking an instance never waits on the network and the registry being down changes nothing
//! until it returns (the last known instances keep being used).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::client::RegistryClient;
use crate::model::{Instance, Snapshot};

/// Shared handle to the cached registry view. Cheap to clone.
#[derive(Clone)]
pub struct Discovery {
    view: watch::Receiver<Arc<Snapshot>>,
}

impl Discovery {
    /// Starts the background watcher; it ends when every handle is dropped.
    pub fn start(client: RegistryClient) -> Self {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        tokio::spawn(watch_loop(client, tx));
        Self { view: rx }
    }

    /// A view that never changes: for tests and for fixed upstreams.
    pub fn fixed(snapshot: Snapshot) -> Self {
        let (tx, rx) = watch::channel(Arc::new(snapshot));
        // Keep the sender alive forever so receivers never see a closed channel.
        std::mem::forget(tx);
        Self { view: rx }
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.view.borrow().clone()
    }

    /// Routable instances of `service` as last seen.
    pub fn instances(&self, service: &str) -> Vec<Instance> {
        self.view.borrow().routable(service)
    }

    /// Waits until the view has been filled from the registry at least once, or `timeout`.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let mut view = self.view.clone();
        tokio::time::timeout(timeout, view.wait_for(|s| !s.epoch.is_empty()))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }

    /// Resolves when the view changes next.
    pub async fn changed(&mut self) -> bool {
        self.view.changed().await.is_ok()
    }
}

async fn watch_loop(client: RegistryClient, tx: watch::Sender<Arc<Snapshot>>) {
    const WAIT: Duration = Duration::from_secs(20);
    let mut backoff = Duration::from_millis(100);
    loop {
        if tx.is_closed() {
            return;
        }
        let (epoch, since) = {
            let current = tx.borrow();
            (current.epoch.clone(), current.version)
        };
        match client.watch(&epoch, since, WAIT).await {
            Ok(snapshot) => {
                backoff = Duration::from_millis(100);
                if snapshot.epoch != epoch || snapshot.version != since {
                    tx.send_replace(Arc::new(snapshot));
                }
            }
            Err(error) => {
                tracing::debug!(%error, "registry watch failed; keeping last known instances");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}
