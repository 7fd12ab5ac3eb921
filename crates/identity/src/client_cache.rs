//! A one-second memory of client records for client authentication.
//!
//! Every call to the token, revocation and introspection endpoints authenticates its client,
//! and services and partners call the token endpoint constantly; reading the client row each
//! time was a database round trip per grant. A record read here is reused for [`TTL`]. Clients
//! change only when an instance starts (configured clients are upserted) or an admin registers a
//! new one (a new id, never cached as absent: unknown ids are always read), so a change made on
//! another instance is seen here within a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::model::StoredClient;
use crate::repository::{RepoError, Repository};

/// How long a client record is reused.
pub const TTL: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct ClientCache {
    /// Bounded by the number of registered clients: only records that exist are kept.
    by_id: Mutex<HashMap<String, (Arc<StoredClient>, Instant)>>,
}

impl ClientCache {
    /// The client `id`, from memory when read within [`TTL`], else from the database.
    pub async fn get(
        &self,
        repository: &Repository,
        id: &str,
    ) -> Result<Option<Arc<StoredClient>>, RepoError> {
        if let Some((client, read_at)) = self.entries().get(id) {
            if read_at.elapsed() < TTL {
                return Ok(Some(client.clone()));
            }
        }
        let read_at = Instant::now();
        let Some(client) = repository.client(id).await?.map(Arc::new) else {
            self.entries().remove(id);
            return Ok(None);
        };
        self.entries()
            .insert(id.to_owned(), (client.clone(), read_at));
        Ok(Some(client))
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Arc<StoredClient>, Instant)>> {
        // Entries are replaced whole, so a poisoned lock still holds consistent ones.
        self.by_id.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
