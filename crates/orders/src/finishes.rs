//! Wakes the requests waiting for an order to finish (`GET /api/v1/orders/{id}?wait=N`): a
//! client that wants the outcome asks once and is answered the moment the saga confirms or
//! cancels the order, instead of polling its status.
//!
//! In memory: this instance's saga worker announces the orders it finishes. An order that
//! another instance drives (several orders instances share the work on PostgreSQL) is not
//! announced here, so a waiting request also reads the order again every [`RECHECK`].

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// How often a waiting request reads its order again in case another instance finished it.
pub const RECHECK: Duration = Duration::from_secs(1);

/// The orders some request is waiting for, each with the [`Notify`] its waiters share.
#[derive(Clone, Default)]
pub struct Finishes {
    waiting: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

impl Finishes {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        // The map is consistent after every statement: a panic elsewhere cannot break it.
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts watching order `id`; the watch ends when it is dropped.
    pub fn watch(&self, id: &str) -> Watch<'_> {
        let notify = self.lock().entry(id.to_owned()).or_default().clone();
        Watch {
            finishes: self,
            id: id.to_owned(),
            notify,
        }
    }

    /// Wakes every request waiting for order `id`: call it once the order's terminal status is
    /// committed (a woken request reads the order).
    pub fn announce(&self, id: &str) {
        let notify = self.lock().remove(id);
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }

    /// Orders with a request waiting (tests).
    pub fn watched(&self) -> usize {
        self.lock().len()
    }
}

/// One request's watch on an order.
pub struct Watch<'a> {
    finishes: &'a Finishes,
    id: String,
    notify: Arc<Notify>,
}

impl Watch<'_> {
    /// A future that completes at the next announcement of this order. Take it *before*
    /// reading the order: an announcement between the read and the wait is then not missed.
    pub fn next_announcement(&self) -> Pin<Box<Notified<'_>>> {
        let mut notified = Box::pin(self.notify.notified());
        notified.as_mut().enable();
        notified
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut waiting = self.finishes.lock();
        // The last watch of an order not yet announced takes its entry away (the map holds
        // one reference, this watch the other).
        let last = waiting
            .get(&self.id)
            .is_some_and(|notify| Arc::ptr_eq(notify, &self.notify))
            && Arc::strong_count(&self.notify) == 2;
        if last {
            waiting.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_announcement_wakes_every_watch_taken_before_it_even_if_not_yet_awaited() {
        let finishes = Finishes::default();
        let first = finishes.watch("o-1");
        let second = finishes.watch("o-1");
        let (a, b) = (first.next_announcement(), second.next_announcement());
        finishes.announce("o-1");
        tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(a, b) })
            .await
            .expect("both watches woken");
        assert_eq!(finishes.watched(), 0, "an announced order is forgotten");
    }

    #[tokio::test]
    async fn an_announcement_of_another_order_wakes_nobody() {
        let finishes = Finishes::default();
        let watch = finishes.watch("o-1");
        let announced = watch.next_announcement();
        finishes.announce("o-2");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), announced)
                .await
                .is_err(),
            "woken by another order's announcement"
        );
    }

    #[test]
    fn the_last_watch_dropped_forgets_the_order() {
        let finishes = Finishes::default();
        let first = finishes.watch("o-1");
        let second = finishes.watch("o-1");
        drop(first);
        assert_eq!(finishes.watched(), 1, "the second watch still waits");
        drop(second);
        assert_eq!(finishes.watched(), 0);
        // A watch outliving its order's announcement leaves nothing behind either.
        let late = finishes.watch("o-2");
        finishes.announce("o-2");
        let again = finishes.watch("o-2");
        drop(late);
        assert_eq!(finishes.watched(), 1, "the newer watch keeps its entry");
        drop(again);
        assert_eq!(finishes.watched(), 0);
    }
}
