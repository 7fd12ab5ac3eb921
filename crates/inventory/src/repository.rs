//! Every SQL statement of the inventory, and the transactions that keep stock right.
//!
//! The statements run unchanged on SQLite and PostgreSQL through `sqlx::Any`: `$n`
//! placeholders, `TEXT`/`BIGINT`/`DOUBLE PRECISION` columns, times as Unix milliseconds.
//!
//! How stock stays right under concurrency, on both engines:
//! - units are taken with a guarded `UPDATE ... WHERE on_hand - reserved >= $n`, so a write
//!   that would oversell changes nothing (PostgreSQL re-checks the guard on the latest row
//!   version after waiting for a concurrent writer), and `CHECK` constraints back it up;
//! - every write transaction starts with a write (claiming the reservation key, or the guarded
//!   update itself), so on SQLite it takes the database's write lock before reading anything
//!   and cannot be invalidated by a writer in between;
//! - events go to the outbox inside the same transaction, which runs under
//!   [`retry_conflicts`] because concurrent appends collide on the outbox sequence;
//! - on SQLite the write transactions of this process take turns (kit's `Database::write_turn`):
//!   SQLite has one writer at a time and makes the others poll with growing sleeps (its busy
//!   handler waits up to 100 ms between tries), which under load cost far more than the writes;
//!   queued in memory, each write starts the moment the previous one commits. PostgreSQL locks rows, so its writers run side by side;
//! - reservations, commits, releases and expiries go through kit's `GroupedWrites`: on SQLite
//!   the ones waiting at the same moment (the items of one batched request from the orders
//!   saga) share one commit, each in its own savepoint, so a refusal undoes only its own work.
//!   Admin adjustments and the seed run their own transactions.

use std::collections::BTreeMap;

use bazaar_kit::audit::{AuditEvent, AuditLog};
use bazaar_kit::group_commit::GroupedWrites;
use bazaar_kit::storage::{now_ms, retry_conflicts, Connection, Database};
use bazaar_messaging::{NewEvent, Outbox};
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::geo::haversine_km;
use crate::model::{
    events, Allocation, CommittedLine, InventoryItem, LineInput, Point, Reservation,
    ReservationCommitted, ReservationReleased, ReservationStatus, StockLow, Warehouse,
    WarehouseStock, REASON_EXPIRED,
};

/// Why a repository call failed.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("the inventory has no product {0}")]
    ProductNotFound(String),
    #[error("there is no warehouse {0}")]
    UnknownWarehouse(String),
    #[error("there is no reservation {0}")]
    ReservationNotFound(String),
    /// Line `index` of a reservation cannot be served from all warehouses together.
    #[error("only {available} of {requested} units of {product_id} are available")]
    InsufficientStock {
        index: usize,
        product_id: String,
        requested: i64,
        available: i64,
    },
    /// An adjustment would take a warehouse's stock below zero (or below what is reserved).
    #[error("{product_id} at {warehouse_id}: {on_hand} on hand, {reserved} reserved, cannot apply {delta}")]
    AdjustmentBelowZero {
        product_id: String,
        warehouse_id: String,
        on_hand: i64,
        reserved: i64,
        delta: i64,
    },
    /// The reservation was released (or expired), or a release tombstone holds its key.
    #[error("reservation {0} was released")]
    Released(String),
    #[error("reservation {0} was committed")]
    Committed(String),
    /// The key is taken by a reservation of different lines.
    #[error("reservation key {0} was used for different lines")]
    KeyReused(String),
    /// Stock kept changing under a reservation on every attempt (PostgreSQL only, under heavy
    /// contention).
    #[error("stock of {0} kept changing; try again")]
    Contended(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Stock rows of one product and warehouse as the seed provides them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedStock {
    pub product_id: String,
    pub warehouse_id: String,
    pub quantity: i64,
}

/// Settings the repository applies.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Lifetime of a reservation when the request names none.
    pub reservation_ttl_ms: i64,
    /// `stock.low` is published when a warehouse's available units drop below this.
    pub low_stock_threshold: i64,
}

/// A reservation as `reserve` answers it: new (201) or a repeat of the same key (200).
#[derive(Debug, Clone, PartialEq)]
pub struct Reserved {
    pub reservation: Reservation,
    pub created: bool,
}

/// The inventory's data access. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Repository {
    db: Database,
    outbox: Outbox,
    settings: Settings,
    /// Reservations, commits, releases and expiries, committed together under load.
    writes: GroupedWrites,
}

/// One product's stock at one warehouse, with the warehouse's position.
#[derive(Debug, Clone)]
struct StockRow {
    warehouse_id: String,
    available: i64,
    lat: f64,
    lon: f64,
    position: i64,
}

impl Repository {
    pub fn new(db: Database, outbox: Outbox, settings: Settings) -> Self {
        Self {
            writes: GroupedWrites::start(db.clone()),
            db,
            outbox,
            settings,
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    // -----------------------------------------------------------------------------------------
    // reads

    /// Every warehouse, in display order.
    pub async fn warehouses(&self) -> Result<Vec<Warehouse>, RepoError> {
        let rows = sqlx::query(
            "SELECT id, name, city, country, lat, lon FROM warehouses ORDER BY position, id",
        )
        .fetch_all(&self.db)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Warehouse {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    city: row.try_get("city")?,
                    country: row.try_get("country")?,
                    lat: row.try_get("lat")?,
                    lon: row.try_get("lon")?,
                })
            })
            .collect()
    }

    /// The stock of each of `product_ids`, in that order, at every warehouse. A product the
    /// inventory has never stocked gets zeros everywhere and `known == false`.
    pub async fn items(
        &self,
        product_ids: &[String],
    ) -> Result<Vec<(InventoryItem, bool)>, RepoError> {
        if product_ids.is_empty() {
            return Ok(Vec::new());
        }
        let warehouses = self.warehouses().await?;
        let placeholders = (1..=product_ids.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT product_id, warehouse_id, on_hand, reserved FROM stock \
             WHERE product_id IN ({placeholders})"
        );
        let mut query = sqlx::query(&sql);
        for id in product_ids {
            query = query.bind(id.clone());
        }
        let rows = query.fetch_all(&self.db).await?;
        let mut stock: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
        for row in &rows {
            stock.insert(
                (row.try_get("product_id")?, row.try_get("warehouse_id")?),
                (row.try_get("on_hand")?, row.try_get("reserved")?),
            );
        }
        Ok(product_ids
            .iter()
            .map(|product_id| {
                let mut known = false;
                let warehouses: Vec<WarehouseStock> = warehouses
                    .iter()
                    .map(|w| {
                        let (on_hand, reserved) =
                            match stock.get(&(product_id.clone(), w.id.clone())) {
                                Some(&levels) => {
                                    known = true;
                                    levels
                                }
                                None => (0, 0),
                            };
                        WarehouseStock {
                            warehouse_id: w.id.clone(),
                            name: w.name.clone(),
                            lat: w.lat,
                            lon: w.lon,
                            on_hand,
                            reserved,
                            available: on_hand - reserved,
                        }
                    })
                    .collect();
                let item = InventoryItem {
                    product_id: product_id.clone(),
                    available: warehouses.iter().map(|w| w.available).sum(),
                    warehouses,
                };
                (item, known)
            })
            .collect())
    }

    /// The stock of `product_id`, if the inventory has ever stocked it.
    pub async fn item(&self, product_id: &str) -> Result<Option<InventoryItem>, RepoError> {
        let mut items = self.items(&[product_id.to_owned()]).await?;
        Ok(items
            .pop()
            .filter(|(_, known)| *known)
            .map(|(item, _)| item))
    }

    /// The reservation under `key`, if any.
    pub async fn reservation(&self, key: &str) -> Result<Option<Reservation>, RepoError> {
        let mut connection = self.db.connection().await?;
        Ok(read_reservation(&mut connection, key).await?)
    }

    /// Every reservation (with `status`, when given), oldest first.
    pub async fn reservations(
        &self,
        status: Option<ReservationStatus>,
    ) -> Result<Vec<Reservation>, RepoError> {
        let (filter, allocation_filter) = match status {
            Some(_) => (" WHERE status = $1", " WHERE r.status = $1"),
            None => ("", ""),
        };
        let sql = format!(
            "SELECT {RESERVATION_COLUMNS} FROM reservations{filter} \
             ORDER BY created_at_ms, reservation_key"
        );
        let allocations_sql = format!(
            "SELECT {ALLOCATION_COLUMNS} FROM reservation_allocations a \
             JOIN warehouses w ON w.id = a.warehouse_id \
             JOIN reservations r ON r.reservation_key = a.reservation_key{allocation_filter} \
             ORDER BY a.reservation_key, a.position"
        );
        let mut query = sqlx::query(&sql);
        let mut allocations_query = sqlx::query(&allocations_sql);
        if let Some(status) = status {
            query = query.bind(status.as_str());
            allocations_query = allocations_query.bind(status.as_str());
        }
        let rows = query.fetch_all(&self.db).await?;
        let mut allocations: BTreeMap<String, Vec<Allocation>> = BTreeMap::new();
        for row in allocations_query.fetch_all(&self.db).await? {
            let key: String = row.try_get("reservation_key")?;
            allocations
                .entry(key)
                .or_default()
                .push(read_allocation(&row)?);
        }
        rows.iter()
            .map(|row| {
                let mut reservation = read_reservation_row(row)?;
                reservation.allocations = allocations.remove(&reservation.key).unwrap_or_default();
                Ok(reservation)
            })
            .collect()
    }

    // -----------------------------------------------------------------------------------------
    // reservations

    /// Reserves `lines` under `key`, each from the warehouse nearest `destination` that has
    /// enough available units; a line splits across warehouses only when none has it all (the
    /// nearest that has some gives what it has, and the rest is placed by the same rule).
    ///
    /// Idempotent: a repeat of the key returns the reservation as it stands (`created ==
    /// false`); a released or expired one, or a release tombstone, is refused with
    /// [`RepoError::Released`]; a key used for different lines with
    /// [`RepoError::KeyReused`]. Not enough stock for some line reserves nothing.
    pub async fn reserve(
        &self,
        key: &str,
        lines: &[LineInput],
        destination: Point,
        ttl_ms: Option<i64>,
    ) -> Result<Reserved, RepoError> {
        let fingerprint = fingerprint(lines);
        let ttl_ms = ttl_ms.unwrap_or(self.settings.reservation_ttl_ms).max(1);
        let command = (
            self.clone(),
            key.to_owned(),
            lines.to_vec(),
            destination,
            ttl_ms,
            fingerprint,
        );
        let (outcome, appended) = self
            .writes
            .run(
                command,
                |(this, key, lines, destination, ttl_ms, fingerprint), connection| {
                    Box::pin(this.reserve_in(
                        connection,
                        key,
                        lines,
                        *destination,
                        *ttl_ms,
                        fingerprint,
                    ))
                },
            )
            .await?;
        self.notify_if(appended);
        outcome
    }

    /// The transaction of [`Repository::reserve`], on the connection its writer gives.
    async fn reserve_in(
        &self,
        connection: &mut Connection,
        key: &str,
        lines: &[LineInput],
        destination: Point,
        ttl_ms: i64,
        fingerprint: &str,
    ) -> Result<(Result<Reserved, RepoError>, bool), sqlx::Error> {
        let now = now_ms();
        let mut tx = connection.begin().await?;
        // Claim the key first: the write takes SQLite's lock before anything is read, and on
        // PostgreSQL a concurrent claim of the same key waits for ours to commit or roll back.
        let claimed = sqlx::query(
            "INSERT INTO reservations (reservation_key, status, fingerprint, reason, \
             created_at_ms, expires_at_ms) VALUES ($1, 'reserved', $2, '', $3, $4) \
             ON CONFLICT (reservation_key) DO NOTHING",
        )
        .bind(key)
        .bind(fingerprint)
        .bind(now)
        .bind(now.saturating_add(ttl_ms))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;

        if !claimed {
            let existing = read_reservation(&mut tx, key)
                .await?
                .ok_or_else(|| corrupt(format!("reservation {key} vanished")))?;
            let stored_fingerprint: String = sqlx::query_scalar(
                "SELECT fingerprint FROM reservations WHERE reservation_key = $1",
            )
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
            if existing.status == ReservationStatus::Released {
                return Ok((Err(RepoError::Released(key.to_owned())), false));
            }
            if stored_fingerprint != fingerprint {
                return Ok((Err(RepoError::KeyReused(key.to_owned())), false));
            }
            if existing.status == ReservationStatus::Reserved && existing.expires_at_ms <= now {
                // Expired but not swept yet: it is released now, and the answer says so.
                let events = self.expire_in(&mut tx, key, now).await?;
                let appended = self.append(&mut tx, events).await?;
                tx.commit().await?;
                return Ok((Err(RepoError::Released(key.to_owned())), appended));
            }
            return Ok((
                Ok(Reserved {
                    reservation: existing,
                    created: false,
                }),
                false,
            ));
        }

        let mut taken: Vec<(String, String, i64)> = Vec::new();
        for (index, line) in lines.iter().enumerate() {
            match self
                .allocate(&mut tx, index, line, destination, now)
                .await?
            {
                Ok(parts) => {
                    for (warehouse_id, quantity) in parts {
                        match taken
                            .iter_mut()
                            .find(|(p, w, _)| *p == line.product_id && *w == warehouse_id)
                        {
                            Some(existing) => existing.2 += quantity,
                            None => taken.push((line.product_id.clone(), warehouse_id, quantity)),
                        }
                    }
                }
                // Dropping the transaction rolls back the key claim and every unit taken.
                Err(error) => return Ok((Err(error), false)),
            }
        }
        let mut events = Vec::new();
        for (position, (product_id, warehouse_id, quantity)) in taken.iter().enumerate() {
            sqlx::query(
                "INSERT INTO reservation_allocations (reservation_key, product_id, \
                 warehouse_id, quantity, position) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(key)
            .bind(product_id)
            .bind(warehouse_id)
            .bind(*quantity)
            .bind(position as i64)
            .execute(&mut *tx)
            .await?;
            events.extend(self.check_low(&mut tx, product_id, warehouse_id).await?);
        }
        let reservation = read_reservation(&mut tx, key)
            .await?
            .ok_or_else(|| corrupt(format!("reservation {key} vanished")))?;
        let appended = self.append(&mut tx, events).await?;
        tx.commit().await?;
        Ok((
            Ok(Reserved {
                reservation,
                created: true,
            }),
            appended,
        ))
    }

    /// Takes the units of line `index`: `Ok(Ok(parts))` with the `(warehouse, units)` taken,
    /// or [`RepoError::InsufficientStock`] when all warehouses together have fewer (some units
    /// may have been taken by then: the caller rolls back).
    async fn allocate(
        &self,
        connection: &mut Connection,
        index: usize,
        line: &LineInput,
        destination: Point,
        now: i64,
    ) -> Result<Result<Vec<(String, i64)>, RepoError>, sqlx::Error> {
        let product_id = line.product_id.as_str();
        let mut remaining = line.quantity;
        let mut parts: Vec<(String, i64)> = Vec::new();
        // Each failed guarded update means a concurrent reservation took units in between
        // (PostgreSQL only; SQLite holds the write lock): read again and re-plan. Stock only
        // shrinks that way, so this ends; the bound is a safety net.
        for _ in 0..1_000 {
            let mut rows = stock_rows(connection, product_id).await?;
            rows.sort_by(|a, b| {
                let da = haversine_km(destination.lat, destination.lon, a.lat, a.lon);
                let db = haversine_km(destination.lat, destination.lon, b.lat, b.lon);
                da.total_cmp(&db)
                    .then(a.position.cmp(&b.position))
                    .then(a.warehouse_id.cmp(&b.warehouse_id))
            });
            let total: i64 = rows.iter().map(|r| r.available.max(0)).sum();
            if total < remaining {
                let taken: i64 = parts.iter().map(|(_, q)| q).sum();
                return Ok(Err(RepoError::InsufficientStock {
                    index,
                    product_id: product_id.to_owned(),
                    requested: line.quantity,
                    available: total + taken,
                }));
            }
            // The nearest warehouse with all of it; failing that, the nearest with some.
            let (warehouse_id, units) = match rows.iter().find(|r| r.available >= remaining) {
                Some(row) => (row.warehouse_id.clone(), remaining),
                None => {
                    let row = rows
                        .iter()
                        .find(|r| r.available > 0)
                        .expect("total >= remaining > 0, so some warehouse has units");
                    (row.warehouse_id.clone(), row.available)
                }
            };
            let took = sqlx::query(
                "UPDATE stock SET reserved = reserved + $1, updated_at = $2 \
                 WHERE product_id = $3 AND warehouse_id = $4 AND on_hand - reserved >= $1",
            )
            .bind(units)
            .bind(now)
            .bind(product_id)
            .bind(&warehouse_id)
            .execute(&mut *connection)
            .await?
            .rows_affected()
                == 1;
            if took {
                match parts.iter_mut().find(|(w, _)| *w == warehouse_id) {
                    Some(part) => part.1 += units,
                    None => parts.push((warehouse_id, units)),
                }
                remaining -= units;
                if remaining == 0 {
                    return Ok(Ok(parts));
                }
            }
        }
        Ok(Err(RepoError::Contended(product_id.to_owned())))
    }

    /// Commits the reservation under `key`: its units leave the warehouses (on hand and
    /// reserved both go down) and `reservation.committed` is published. Idempotent: a
    /// committed one is returned as it is; a released or expired one is refused with
    /// [`RepoError::Released`].
    pub async fn commit(&self, key: &str) -> Result<Reservation, RepoError> {
        let (outcome, appended) = self
            .writes
            .run((self.clone(), key.to_owned()), |(this, key), connection| {
                Box::pin(this.commit_in(connection, key))
            })
            .await?;
        self.notify_if(appended);
        outcome
    }

    /// The transaction of [`Repository::commit`], on the connection its writer gives.
    async fn commit_in(
        &self,
        connection: &mut Connection,
        key: &str,
    ) -> Result<(Result<Reservation, RepoError>, bool), sqlx::Error> {
        let now = now_ms();
        let mut tx = connection.begin().await?;
        let committed = sqlx::query(
            "UPDATE reservations SET status = 'committed', committed_at_ms = $1 \
             WHERE reservation_key = $2 AND status = 'reserved' AND expires_at_ms > $1",
        )
        .bind(now)
        .bind(key)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let Some(reservation) = read_reservation(&mut tx, key).await? else {
            return Ok((Err(RepoError::ReservationNotFound(key.to_owned())), false));
        };
        if !committed {
            return Ok(match reservation.status {
                ReservationStatus::Committed => (Ok(reservation), false),
                ReservationStatus::Released => (Err(RepoError::Released(key.to_owned())), false),
                ReservationStatus::Reserved => {
                    // Expired but not swept yet: too late to commit; release it now.
                    let events = self.expire_in(&mut tx, key, now).await?;
                    let appended = self.append(&mut tx, events).await?;
                    tx.commit().await?;
                    (Err(RepoError::Released(key.to_owned())), appended)
                }
            });
        }
        let mut lines = Vec::with_capacity(reservation.allocations.len());
        for allocation in &reservation.allocations {
            // On hand never drops below reserved (a CHECK), so reserved >= quantity suffices.
            let shipped = sqlx::query(
                "UPDATE stock SET on_hand = on_hand - $1, reserved = reserved - $1, \
                 updated_at = $2 WHERE product_id = $3 AND warehouse_id = $4 AND reserved >= $1",
            )
            .bind(allocation.quantity)
            .bind(now)
            .bind(&allocation.product_id)
            .bind(&allocation.warehouse_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if shipped != 1 {
                return Err(corrupt(format!(
                    "reservation {key} holds {} of {} at {} that the stock does not show as \
                     reserved",
                    allocation.quantity, allocation.product_id, allocation.warehouse_id
                )));
            }
            lines.push(CommittedLine {
                product_id: allocation.product_id.clone(),
                warehouse_id: allocation.warehouse_id.clone(),
                quantity: allocation.quantity,
            });
        }
        // Available units are unchanged by a commit, so no `stock.low` check is needed.
        let event = NewEvent::new(
            events::RESERVATION_COMMITTED,
            key,
            &ReservationCommitted {
                key: key.to_owned(),
                lines,
            },
        );
        let appended = self.append(&mut tx, vec![event]).await?;
        tx.commit().await?;
        Ok((Ok(reservation), appended))
    }

    /// Releases the reservation under `key`, returning its units to stock and publishing
    /// `reservation.released`. Idempotent: a released one is returned as it is. An unknown key
    /// gets a tombstone (a released reservation without allocations), so a reserve that
    /// arrives after the release it raced is refused. A committed one is refused with
    /// [`RepoError::Committed`].
    pub async fn release(&self, key: &str, reason: &str) -> Result<Reservation, RepoError> {
        let command = (self.clone(), key.to_owned(), reason.to_owned());
        let (outcome, appended) = self
            .writes
            .run(command, |(this, key, reason), connection| {
                Box::pin(this.release_in(connection, key, reason))
            })
            .await?;
        self.notify_if(appended);
        outcome
    }

    /// The transaction of [`Repository::release`], on the connection its writer gives.
    async fn release_in(
        &self,
        connection: &mut Connection,
        key: &str,
        reason: &str,
    ) -> Result<(Result<Reservation, RepoError>, bool), sqlx::Error> {
        let now = now_ms();
        let mut tx = connection.begin().await?;
        // The tombstone insert is also the transaction's first write (see `reserve_in`).
        let tombstone = sqlx::query(
            "INSERT INTO reservations (reservation_key, status, fingerprint, reason, \
             created_at_ms, expires_at_ms, released_at_ms) \
             VALUES ($1, 'released', '', $2, $3, 0, $3) \
             ON CONFLICT (reservation_key) DO NOTHING",
        )
        .bind(key)
        .bind(reason)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let mut events = Vec::new();
        if !tombstone {
            let released = sqlx::query(
                "UPDATE reservations SET status = 'released', reason = $1, released_at_ms = $2 \
                 WHERE reservation_key = $3 AND status = 'reserved'",
            )
            .bind(reason)
            .bind(now)
            .bind(key)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if released {
                events = self.return_units(&mut tx, key, reason, now).await?;
            }
        }
        let reservation = read_reservation(&mut tx, key)
            .await?
            .ok_or_else(|| corrupt(format!("reservation {key} vanished")))?;
        if reservation.status == ReservationStatus::Committed {
            return Ok((Err(RepoError::Committed(key.to_owned())), false));
        }
        let appended = self.append(&mut tx, events).await?;
        tx.commit().await?;
        Ok((Ok(reservation), appended))
    }

    /// Releases every reservation that expired at `now_ms` (Unix ms) or before; returns how
    /// many. The background sweeper calls it periodically; tests call it with a chosen time.
    pub async fn release_expired(&self, now_ms: i64) -> Result<usize, RepoError> {
        const BATCH: i64 = 500;
        let mut released = 0;
        loop {
            let keys: Vec<String> = sqlx::query_scalar(
                "SELECT reservation_key FROM reservations \
                 WHERE status = 'reserved' AND expires_at_ms <= $1 \
                 ORDER BY expires_at_ms, reservation_key LIMIT $2",
            )
            .bind(now_ms)
            .bind(BATCH)
            .fetch_all(&self.db)
            .await?;
            let mut progress = 0;
            for key in &keys {
                let appended = self
                    .writes
                    .run(
                        (self.clone(), key.clone(), now_ms),
                        |(this, key, now_ms), connection| {
                            Box::pin(this.expire_if_due(connection, key, *now_ms))
                        },
                    )
                    .await?;
                if let Some(appended) = appended {
                    progress += 1;
                    self.notify_if(appended);
                }
            }
            released += progress;
            // A short batch was the last; a batch without progress would repeat itself.
            if (keys.len() as i64) < BATCH || progress == 0 {
                return Ok(released);
            }
        }
    }

    /// Expires `key` if it is still reserved and expired at `now`: `Some(appended)` when it
    /// did, `None` when a commit or release got there first.
    async fn expire_if_due(
        &self,
        connection: &mut Connection,
        key: &str,
        now: i64,
    ) -> Result<Option<bool>, sqlx::Error> {
        let mut tx = connection.begin().await?;
        let expired = sqlx::query(
            "UPDATE reservations SET status = 'released', reason = $1, released_at_ms = $2 \
             WHERE reservation_key = $3 AND status = 'reserved' AND expires_at_ms <= $2",
        )
        .bind(REASON_EXPIRED)
        .bind(now)
        .bind(key)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !expired {
            return Ok(None);
        }
        let events = self.return_units(&mut tx, key, REASON_EXPIRED, now).await?;
        let appended = self.append(&mut tx, events).await?;
        tx.commit().await?;
        Ok(Some(appended))
    }

    /// Marks a reserved, expired `key` released inside the caller's transaction and returns its
    /// units; the events to publish.
    async fn expire_in(
        &self,
        connection: &mut Connection,
        key: &str,
        now: i64,
    ) -> Result<Vec<NewEvent>, sqlx::Error> {
        let expired = sqlx::query(
            "UPDATE reservations SET status = 'released', reason = $1, released_at_ms = $2 \
             WHERE reservation_key = $3 AND status = 'reserved'",
        )
        .bind(REASON_EXPIRED)
        .bind(now)
        .bind(key)
        .execute(&mut *connection)
        .await?
        .rows_affected();
        if expired != 1 {
            return Ok(Vec::new());
        }
        self.return_units(connection, key, REASON_EXPIRED, now)
            .await
    }

    /// Gives a just-released reservation's units back to stock; the events to publish
    /// (`reservation.released`, and no `stock.low`: available only grows here, but a warehouse
    /// back above the threshold is re-armed).
    async fn return_units(
        &self,
        connection: &mut Connection,
        key: &str,
        reason: &str,
        now: i64,
    ) -> Result<Vec<NewEvent>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT product_id, warehouse_id, quantity FROM reservation_allocations \
             WHERE reservation_key = $1 ORDER BY position",
        )
        .bind(key)
        .fetch_all(&mut *connection)
        .await?;
        let mut events = Vec::new();
        for row in &rows {
            let product_id: String = row.try_get("product_id")?;
            let warehouse_id: String = row.try_get("warehouse_id")?;
            let quantity: i64 = row.try_get("quantity")?;
            let returned = sqlx::query(
                "UPDATE stock SET reserved = reserved - $1, updated_at = $2 \
                 WHERE product_id = $3 AND warehouse_id = $4 AND reserved >= $1",
            )
            .bind(quantity)
            .bind(now)
            .bind(&product_id)
            .bind(&warehouse_id)
            .execute(&mut *connection)
            .await?
            .rows_affected();
            if returned != 1 {
                return Err(corrupt(format!(
                    "reservation {key} holds {quantity} of {product_id} at {warehouse_id} \
                     that the stock does not show as reserved"
                )));
            }
            events.extend(
                self.check_low(connection, &product_id, &warehouse_id)
                    .await?,
            );
        }
        events.push(NewEvent::new(
            events::RESERVATION_RELEASED,
            key,
            &ReservationReleased {
                key: key.to_owned(),
                reason: reason.to_owned(),
            },
        ));
        Ok(events)
    }

    // -----------------------------------------------------------------------------------------
    // adjustments and seed

    /// Adds `delta` units on hand of `product_id` at `warehouse_id` (an admin's correction),
    /// audited in the same transaction. Refused with [`RepoError::AdjustmentBelowZero`] when
    /// it would leave fewer units on hand than are reserved (so never below zero). A product
    /// the inventory has never stocked gets zero-stock rows at every warehouse first.
    pub async fn adjust(
        &self,
        audit: &AuditLog,
        actor: &str,
        product_id: &str,
        warehouse_id: &str,
        delta: i64,
        reason: &str,
    ) -> Result<InventoryItem, RepoError> {
        let (outcome, appended) = retry_conflicts(|| {
            self.adjust_once(audit, actor, product_id, warehouse_id, delta, reason)
        })
        .await?;
        self.notify_if(appended);
        outcome?;
        self.item(product_id)
            .await?
            .ok_or_else(|| RepoError::ProductNotFound(product_id.to_owned()))
    }

    async fn adjust_once(
        &self,
        audit: &AuditLog,
        actor: &str,
        product_id: &str,
        warehouse_id: &str,
        delta: i64,
        reason: &str,
    ) -> Result<(Result<(), RepoError>, bool), sqlx::Error> {
        let _turn = self.db.write_turn().await;
        let now = now_ms();
        let mut connection = self.db.connection().await?;
        let mut tx = connection.begin().await?;
        let mut applied = apply_delta(&mut tx, product_id, warehouse_id, delta, now).await?;
        if !applied {
            let known_warehouse: Option<String> =
                sqlx::query_scalar("SELECT id FROM warehouses WHERE id = $1")
                    .bind(warehouse_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if known_warehouse.is_none() {
                return Ok((
                    Err(RepoError::UnknownWarehouse(warehouse_id.to_owned())),
                    false,
                ));
            }
            let levels = sqlx::query(
                "SELECT on_hand, reserved FROM stock WHERE product_id = $1 AND warehouse_id = $2",
            )
            .bind(product_id)
            .bind(warehouse_id)
            .fetch_optional(&mut *tx)
            .await?;
            let below_zero = |on_hand, reserved| RepoError::AdjustmentBelowZero {
                product_id: product_id.to_owned(),
                warehouse_id: warehouse_id.to_owned(),
                on_hand,
                reserved,
                delta,
            };
            match levels {
                Some(row) => {
                    let error = below_zero(row.try_get("on_hand")?, row.try_get("reserved")?);
                    return Ok((Err(error), false));
                }
                None if delta < 0 => return Ok((Err(below_zero(0, 0)), false)),
                None => {
                    // A product new to the inventory: stock it everywhere (empty, hence
                    // already "low"), then apply the delta. (`WHERE 1 = 1`: SQLite needs a
                    // WHERE before an upsert's ON CONFLICT to tell it from a join's ON.)
                    sqlx::query(
                        "INSERT INTO stock (product_id, warehouse_id, on_hand, reserved, low, \
                         updated_at) SELECT $1, id, 0, 0, $2, $3 FROM warehouses WHERE 1 = 1 \
                         ON CONFLICT (product_id, warehouse_id) DO NOTHING",
                    )
                    .bind(product_id)
                    .bind(i64::from(0 < self.settings.low_stock_threshold))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    applied = apply_delta(&mut tx, product_id, warehouse_id, delta, now).await?;
                    if !applied {
                        return Err(corrupt(format!(
                            "a positive adjustment of new product {product_id} did not apply"
                        )));
                    }
                }
            }
        }
        let on_hand: i64 = sqlx::query_scalar(
            "SELECT on_hand FROM stock WHERE product_id = $1 AND warehouse_id = $2",
        )
        .bind(product_id)
        .bind(warehouse_id)
        .fetch_one(&mut *tx)
        .await?;
        audit
            .append_in(
                &mut tx,
                AuditEvent::new(actor, "stock.adjusted")
                    .target(product_id)
                    .details(serde_json::json!({
                        "warehouse_id": warehouse_id,
                        "delta": delta,
                        "reason": reason,
                        "on_hand": on_hand,
                    })),
            )
            .await?;
        let events = self.check_low(&mut tx, product_id, warehouse_id).await?;
        let appended = self.append(&mut tx, events.into_iter().collect()).await?;
        tx.commit().await?;
        Ok((Ok(()), appended))
    }

    /// Loads the seed in one transaction when there is no stock yet; returns how many stock
    /// rows it inserted (0 when there was nothing to do). Inserts skip conflicts, so two
    /// replicas seeding the same empty database at once both succeed.
    pub async fn seed(
        &self,
        warehouses: &[Warehouse],
        stock: &[SeedStock],
    ) -> Result<u64, RepoError> {
        let _turn = self.db.write_turn().await;
        let mut connection = self.db.connection().await?;
        let mut tx = connection.begin().await?;
        // A write first, so on SQLite the count below cannot go stale before our inserts.
        for (position, w) in warehouses.iter().enumerate() {
            sqlx::query(
                "INSERT INTO warehouses (id, name, city, country, lat, lon, position) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&w.id)
            .bind(&w.name)
            .bind(&w.city)
            .bind(&w.country)
            .bind(w.lat)
            .bind(w.lon)
            .bind(position as i64)
            .execute(&mut *tx)
            .await?;
        }
        let existing: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM stock")
            .fetch_one(&mut *tx)
            .await?;
        if existing > 0 {
            return Ok(0);
        }
        let now = now_ms();
        let mut inserted = 0;
        for s in stock {
            // Seeded scarce stock is marked low already: it never crossed the threshold, so
            // it is not news; it will be once it has been above and drops again.
            inserted += sqlx::query(
                "INSERT INTO stock (product_id, warehouse_id, on_hand, reserved, low, updated_at) \
                 VALUES ($1, $2, $3, 0, $4, $5) ON CONFLICT (product_id, warehouse_id) DO NOTHING",
            )
            .bind(&s.product_id)
            .bind(&s.warehouse_id)
            .bind(s.quantity)
            .bind(i64::from(s.quantity < self.settings.low_stock_threshold))
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(inserted)
    }

    // -----------------------------------------------------------------------------------------
    // events

    /// After a change to one stock row: publishes `stock.low` when its available units are
    /// below the threshold and it was not low yet, and re-arms it once back at or above.
    async fn check_low(
        &self,
        connection: &mut Connection,
        product_id: &str,
        warehouse_id: &str,
    ) -> Result<Option<NewEvent>, sqlx::Error> {
        let threshold = self.settings.low_stock_threshold;
        let row = sqlx::query(
            "SELECT on_hand - reserved AS available, low FROM stock \
             WHERE product_id = $1 AND warehouse_id = $2",
        )
        .bind(product_id)
        .bind(warehouse_id)
        .fetch_one(&mut *connection)
        .await?;
        let available: i64 = row.try_get("available")?;
        let low = row.try_get::<i64, _>("low")? != 0;
        let now_low = available < threshold;
        if now_low == low {
            return Ok(None);
        }
        sqlx::query("UPDATE stock SET low = $1 WHERE product_id = $2 AND warehouse_id = $3")
            .bind(i64::from(now_low))
            .bind(product_id)
            .bind(warehouse_id)
            .execute(&mut *connection)
            .await?;
        Ok(now_low.then(|| {
            NewEvent::new(
                events::STOCK_LOW,
                product_id,
                &StockLow {
                    product_id: product_id.to_owned(),
                    warehouse_id: warehouse_id.to_owned(),
                    available,
                    threshold,
                },
            )
        }))
    }

    /// Appends `events` to the outbox in the caller's transaction; whether there were any.
    async fn append(
        &self,
        connection: &mut Connection,
        events: Vec<NewEvent>,
    ) -> Result<bool, sqlx::Error> {
        let any = !events.is_empty();
        for event in events {
            self.outbox.append_in(&mut *connection, event).await?;
        }
        Ok(any)
    }

    /// Wakes feed readers after a commit that appended events.
    fn notify_if(&self, appended: bool) {
        if appended {
            self.outbox.notify();
        }
    }
}

const RESERVATION_COLUMNS: &str = "reservation_key, status, reason, created_at_ms, \
     expires_at_ms, committed_at_ms, released_at_ms";

const ALLOCATION_COLUMNS: &str =
    "a.reservation_key, a.product_id, a.warehouse_id, a.quantity, w.lat, w.lon";

/// The guarded update of an adjustment: applies only if on hand stays at or above reserved.
async fn apply_delta(
    connection: &mut Connection,
    product_id: &str,
    warehouse_id: &str,
    delta: i64,
    now: i64,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE stock SET on_hand = on_hand + $1, updated_at = $2 \
         WHERE product_id = $3 AND warehouse_id = $4 AND on_hand + $1 >= reserved",
    )
    .bind(delta)
    .bind(now)
    .bind(product_id)
    .bind(warehouse_id)
    .execute(&mut *connection)
    .await?
    .rows_affected()
        == 1)
}

async fn stock_rows(
    connection: &mut Connection,
    product_id: &str,
) -> Result<Vec<StockRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT s.warehouse_id, s.on_hand - s.reserved AS available, w.lat, w.lon, w.position \
         FROM stock s JOIN warehouses w ON w.id = s.warehouse_id WHERE s.product_id = $1",
    )
    .bind(product_id)
    .fetch_all(&mut *connection)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(StockRow {
                warehouse_id: row.try_get("warehouse_id")?,
                available: row.try_get("available")?,
                lat: row.try_get("lat")?,
                lon: row.try_get("lon")?,
                position: row.try_get("position")?,
            })
        })
        .collect()
}

async fn read_reservation(
    connection: &mut Connection,
    key: &str,
) -> Result<Option<Reservation>, sqlx::Error> {
    // The reservation and its allocations in one statement (one round trip, not two): a row
    // per allocation, or one row with NULL allocation columns when it has none.
    let rows = sqlx::query(
        "SELECT r.reservation_key, r.status, r.reason, r.created_at_ms, r.expires_at_ms, \
         r.committed_at_ms, r.released_at_ms, \
         a.product_id, a.warehouse_id, a.quantity, w.lat, w.lon \
         FROM reservations r \
         LEFT JOIN reservation_allocations a ON a.reservation_key = r.reservation_key \
         LEFT JOIN warehouses w ON w.id = a.warehouse_id \
         WHERE r.reservation_key = $1 ORDER BY a.position",
    )
    .bind(key)
    .fetch_all(&mut *connection)
    .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let mut reservation = read_reservation_row(first)?;
    for row in &rows {
        if row.try_get::<Option<String>, _>("product_id")?.is_some() {
            reservation.allocations.push(read_allocation(row)?);
        }
    }
    Ok(Some(reservation))
}

fn read_reservation_row(row: &AnyRow) -> Result<Reservation, sqlx::Error> {
    let key: String = row.try_get("reservation_key")?;
    let status: String = row.try_get("status")?;
    let status = ReservationStatus::parse(&status)
        .ok_or_else(|| corrupt(format!("reservation {key} has status {status}")))?;
    let reason: String = row.try_get("reason")?;
    Ok(Reservation {
        status,
        expires_at_ms: row.try_get("expires_at_ms")?,
        allocations: Vec::new(),
        created_at_ms: row.try_get("created_at_ms")?,
        committed_at_ms: row.try_get("committed_at_ms")?,
        released_at_ms: row.try_get("released_at_ms")?,
        reason: (!reason.is_empty()).then_some(reason),
        key,
    })
}

fn read_allocation(row: &AnyRow) -> Result<Allocation, sqlx::Error> {
    Ok(Allocation {
        product_id: row.try_get("product_id")?,
        warehouse_id: row.try_get("warehouse_id")?,
        quantity: row.try_get("quantity")?,
        lat: row.try_get("lat")?,
        lon: row.try_get("lon")?,
    })
}

/// What identifies a reservation request's content: its lines, in order.
fn fingerprint(lines: &[LineInput]) -> String {
    let mut hasher = Sha256::new();
    for line in lines {
        hasher.update(line.product_id.as_bytes());
        hasher.update([0]);
        hasher.update(line.quantity.to_be_bytes());
    }
    format!("{:x}", hasher.finalize())
}

/// A broken invariant found in stored data, as a database error so it ends the transaction.
fn corrupt(what: String) -> sqlx::Error {
    sqlx::Error::Protocol(format!("inventory data is inconsistent: {what}"))
}
