//! Every SQL statement of the shipping service, portable across SQLite and PostgreSQL.
//!
//! Writes that publish (creating a shipment, advancing its tracking) append their event to the
//! transactional outbox in the same transaction, and run under
//! [`retry_conflicts`] because concurrent appends collide on the outbox sequence. A creation
//! racing another for the same order inserts nothing (`ON CONFLICT (order_id) DO NOTHING`: the
//! `order_id` is unique) and answers the winner's shipment, which is what makes creation
//! idempotent under races too. Creations go through kit's `GroupedWrites`: on SQLite the ones
//! waiting at the same moment (the items of one batched request from the orders saga) share
//! one commit, each in its own savepoint. Status changes are guarded by the status they change
//! from, so two trackers running at once never record or announce a transition twice.

use bazaar_kit::group_commit::GroupedWrites;
use bazaar_kit::storage::{now_ms, retry_conflicts, Connection, Database};
use bazaar_messaging::{NewEvent, Outbox};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::model::{
    events, rfc3339, status, HistoryEntry, Money, ParcelInput, Shipment, ShipmentCreated,
    ShipmentDestination, ShipmentStatusChanged,
};

/// When tracking advances, measured from a shipment's creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub in_transit_after_ms: i64,
    pub delivered_after_ms: i64,
}

/// Most shipments one tracker pass looks at (the next pass takes the rest).
pub const TRACKING_BATCH: i64 = 500;

/// A shipment to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewShipment {
    pub order_id: String,
    pub user_id: String,
    pub fee_minor: i64,
    pub distance_km: f64,
    pub estimated_days: i64,
    pub destination: ShipmentDestination,
    pub parcels: Vec<ParcelInput>,
}

/// What a creation did.
enum Created {
    /// Inserted now: the shipment as stored.
    New(Box<Shipment>),
    /// The order already had this shipment.
    Existing(String),
}

/// Which shipments a listing returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub user_id: Option<String>,
    pub order_id: Option<String>,
    pub limit: i64,
}

/// The shipping service's data. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Repository {
    db: Database,
    outbox: Outbox,
    settings: Settings,
    /// Shipment creations, committed together under load.
    writes: GroupedWrites,
}

const COLUMNS: &str = "id, order_id, user_id, tracking_number, status, fee_minor, fee_currency, \
    distance_km, estimated_days, destination, parcels, created_at_ms, updated_at_ms";

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

    /// Creates the shipment of `new.order_id`, or returns the one it already has. `true` when
    /// this call created it (and published `shipment.created` with it).
    pub async fn create_shipment(
        &self,
        new: &NewShipment,
    ) -> Result<(Shipment, bool), sqlx::Error> {
        let created = self
            .writes
            .run(
                (self.outbox.clone(), new.clone()),
                |(outbox, new), connection| Box::pin(create_in(connection, outbox, new)),
            )
            .await?;
        match created {
            Created::New(shipment) => {
                self.outbox.notify();
                Ok((*shipment, true))
            }
            Created::Existing(id) => {
                let shipment = self.get(&id).await?.ok_or(sqlx::Error::RowNotFound)?;
                Ok((shipment, false))
            }
        }
    }

    /// One shipment with its history.
    pub async fn get(&self, id: &str) -> Result<Option<Shipment>, sqlx::Error> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM shipments WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.db)
            .await?;
        match row {
            Some(row) => Ok(Some(self.with_history(&row).await?)),
            None => Ok(None),
        }
    }

    /// The shipment of an order.
    pub async fn by_order(&self, order_id: &str) -> Result<Option<Shipment>, sqlx::Error> {
        let id: Option<String> = sqlx::query_scalar("SELECT id FROM shipments WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(&self.db)
            .await?;
        match id {
            Some(id) => self.get(&id).await,
            None => Ok(None),
        }
    }

    /// Shipments matching `filter`, newest first.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Shipment>, sqlx::Error> {
        // Unset filters compare the column with itself, so one statement serves every case.
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM shipments \
             WHERE user_id = COALESCE($1, user_id) AND order_id = COALESCE($2, order_id) \
             ORDER BY created_at_ms DESC, id DESC LIMIT $3"
        ))
        .bind(filter.user_id.as_deref())
        .bind(filter.order_id.as_deref())
        .bind(filter.limit.max(1))
        .fetch_all(&self.db)
        .await?;
        let mut shipments = Vec::with_capacity(rows.len());
        for row in &rows {
            shipments.push(self.with_history(row).await?);
        }
        Ok(shipments)
    }

    async fn with_history(&self, row: &AnyRow) -> Result<Shipment, sqlx::Error> {
        let id: String = row.try_get("id")?;
        let history = sqlx::query(
            "SELECT status, at_ms FROM shipment_history WHERE shipment_id = $1 ORDER BY position",
        )
        .bind(&id)
        .fetch_all(&self.db)
        .await?
        .iter()
        .map(|h| {
            Ok(HistoryEntry {
                status: h.try_get("status")?,
                at: rfc3339(h.try_get("at_ms")?),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        decode(row, history)
    }

    /// Moves every shipment whose time has come along `label_created → in_transit →
    /// delivered`, as of `now_ms`: in transit `in_transit_after_ms` after creation, delivered
    /// `delivered_after_ms` after creation (never before it was in transit). Each transition is
    /// recorded in the history and announced with `shipment.status_changed` in the same
    /// transaction. Returns how many transitions this call made (a shipment overdue for both
    /// makes two). Safe to run from several instances at once.
    pub async fn advance_tracking(&self, now_ms: i64) -> Result<usize, sqlx::Error> {
        let in_transit_cutoff = now_ms.saturating_sub(self.settings.in_transit_after_ms);
        let delivered_cutoff = now_ms.saturating_sub(
            self.settings
                .delivered_after_ms
                .max(self.settings.in_transit_after_ms),
        );
        let due: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM shipments \
             WHERE (status = $1 AND created_at_ms <= $2) OR (status = $3 AND created_at_ms <= $4) \
             ORDER BY created_at_ms, id LIMIT $5",
        )
        .bind(status::LABEL_CREATED)
        .bind(in_transit_cutoff)
        .bind(status::IN_TRANSIT)
        .bind(delivered_cutoff)
        .bind(TRACKING_BATCH)
        .fetch_all(&self.db)
        .await?;
        let mut transitions = 0;
        for id in due {
            transitions += retry_conflicts(|| {
                self.advance_once(&id, now_ms, in_transit_cutoff, delivered_cutoff)
            })
            .await?;
        }
        if transitions > 0 {
            self.outbox.notify();
        }
        Ok(transitions)
    }

    async fn advance_once(
        &self,
        id: &str,
        now_ms: i64,
        in_transit_cutoff: i64,
        delivered_cutoff: i64,
    ) -> Result<usize, sqlx::Error> {
        let _turn = self.db.write_turn().await;
        let mut connection = self.db.connection().await?;
        let mut tx = connection.begin().await?;
        let Some(row) = sqlx::query(
            "SELECT order_id, user_id, tracking_number, status, created_at_ms FROM shipments \
             WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(0);
        };
        let created_at_ms: i64 = row.try_get("created_at_ms")?;
        let mut current: String = row.try_get("status")?;
        let mut made = 0;
        loop {
            let next = match current.as_str() {
                status::LABEL_CREATED if created_at_ms <= in_transit_cutoff => status::IN_TRANSIT,
                status::IN_TRANSIT if created_at_ms <= delivered_cutoff => status::DELIVERED,
                _ => break,
            };
            let changed = sqlx::query(
                "UPDATE shipments SET status = $1, updated_at_ms = $2 WHERE id = $3 AND status = $4",
            )
            .bind(next)
            .bind(now_ms)
            .bind(id)
            .bind(&current)
            .execute(&mut *tx)
            .await?;
            if changed.rows_affected() == 0 {
                // Another tracker moved it first; it recorded and announced the change.
                break;
            }
            let position: i64 = sqlx::query_scalar(
                "SELECT COALESCE(MAX(position), 0) + 1 FROM shipment_history WHERE shipment_id = $1",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            insert_history(&mut tx, id, position, next, now_ms).await?;
            let payload = ShipmentStatusChanged {
                shipment_id: id.to_owned(),
                order_id: row.try_get("order_id")?,
                user_id: row.try_get("user_id")?,
                tracking_number: row.try_get("tracking_number")?,
                status: next.to_owned(),
            };
            self.outbox
                .append_in(
                    &mut tx,
                    NewEvent::new(events::SHIPMENT_STATUS_CHANGED, id, &payload),
                )
                .await?;
            current = next.to_owned();
            made += 1;
        }
        tx.commit().await?;
        Ok(made)
    }
}

/// The transaction of [`Repository::create_shipment`], on the connection its writer gives.
async fn create_in(
    connection: &mut Connection,
    outbox: &Outbox,
    new: &NewShipment,
) -> Result<Created, sqlx::Error> {
    let mut tx = connection.begin().await?;
    let id = uuid::Uuid::now_v7().to_string();
    // A tracking number that collides with another violates its unique key: the retry
    // draws a new one.
    let tracking_number = tracking_number();
    let now = now_ms();
    let destination =
        serde_json::to_string(&new.destination).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let parcels =
        serde_json::to_string(&new.parcels).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let inserted = sqlx::query(
        "INSERT INTO shipments (id, order_id, user_id, tracking_number, status, fee_minor, \
         fee_currency, distance_km, estimated_days, destination, parcels, created_at_ms, \
         updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(&id)
    .bind(&new.order_id)
    .bind(&new.user_id)
    .bind(&tracking_number)
    .bind(status::LABEL_CREATED)
    .bind(new.fee_minor)
    .bind(crate::quote::FEE_CURRENCY)
    .bind(new.distance_km)
    .bind(new.estimated_days)
    .bind(&destination)
    .bind(&parcels)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        // The order has its shipment already (made since the caller looked): that one it
        // is. Asking the unique key, rather than reading first, saves a statement.
        tx.rollback().await?;
        // On the connection this function is given: the database has no other on SQLite.
        let existing: String = sqlx::query_scalar("SELECT id FROM shipments WHERE order_id = $1")
            .bind(&new.order_id)
            .fetch_one(&mut *connection)
            .await?;
        return Ok(Created::Existing(existing));
    }
    insert_history(&mut tx, &id, 1, status::LABEL_CREATED, now).await?;
    let payload = ShipmentCreated {
        shipment_id: id.clone(),
        order_id: new.order_id.clone(),
        user_id: new.user_id.clone(),
        tracking_number: tracking_number.clone(),
        fee: Money::usd(new.fee_minor),
    };
    outbox
        .append_in(
            &mut tx,
            NewEvent::new(events::SHIPMENT_CREATED, &id, &payload),
        )
        .await?;
    tx.commit().await?;
    // What was just written, as `get` would read it back (one statement and one round trip
    // fewer per shipment).
    Ok(Created::New(Box::new(Shipment {
        shipment_id: id,
        order_id: new.order_id.clone(),
        user_id: new.user_id.clone(),
        tracking_number,
        status: status::LABEL_CREATED.to_owned(),
        fee: Money {
            amount_minor: new.fee_minor,
            currency: crate::quote::FEE_CURRENCY.to_owned(),
        },
        distance_km: new.distance_km,
        estimated_days: new.estimated_days,
        destination: new.destination.clone(),
        parcels: new.parcels.clone(),
        history: vec![HistoryEntry {
            status: status::LABEL_CREATED.to_owned(),
            at: rfc3339(now),
        }],
        created_at: rfc3339(now),
        updated_at: rfc3339(now),
    })))
}

async fn insert_history(
    connection: &mut Connection,
    shipment_id: &str,
    position: i64,
    status: &str,
    at_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO shipment_history (shipment_id, position, status, at_ms) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(shipment_id)
    .bind(position)
    .bind(status)
    .bind(at_ms)
    .execute(connection)
    .await?;
    Ok(())
}

fn decode(row: &AnyRow, history: Vec<HistoryEntry>) -> Result<Shipment, sqlx::Error> {
    let json_column = |name: &str| -> Result<String, sqlx::Error> { row.try_get(name) };
    let destination: ShipmentDestination = serde_json::from_str(&json_column("destination")?)
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let parcels: Vec<ParcelInput> = serde_json::from_str(&json_column("parcels")?)
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(Shipment {
        shipment_id: row.try_get("id")?,
        order_id: row.try_get("order_id")?,
        user_id: row.try_get("user_id")?,
        tracking_number: row.try_get("tracking_number")?,
        status: row.try_get("status")?,
        fee: Money {
            amount_minor: row.try_get("fee_minor")?,
            currency: row.try_get("fee_currency")?,
        },
        distance_km: row.try_get("distance_km")?,
        estimated_days: row.try_get("estimated_days")?,
        destination,
        parcels,
        history,
        created_at: rfc3339(row.try_get("created_at_ms")?),
        updated_at: rfc3339(row.try_get("updated_at_ms")?),
    })
}

/// A fresh tracking number in the UPU S10 format: service indicator `BZ`, an 8-digit serial, its
/// check digit, country `US`.
pub fn tracking_number() -> String {
    let serial: u32 = fastrand::u32(0..100_000_000);
    let digits = format!("{serial:08}");
    format!("BZ{digits}{}US", s10_check_digit(&digits))
}

/// The S10 check digit of an 8-digit serial: weights 8 6 4 2 3 5 9 7, `11 - sum mod 11`, with
/// 10 → 0 and 11 → 5.
pub fn s10_check_digit(serial: &str) -> u32 {
    const WEIGHTS: [u32; 8] = [8, 6, 4, 2, 3, 5, 9, 7];
    let sum: u32 = serial
        .chars()
        .filter_map(|c| c.to_digit(10))
        .zip(WEIGHTS)
        .map(|(d, w)| d * w)
        .sum();
    match 11 - sum % 11 {
        10 => 0,
        11 => 5,
        c => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s10_check_digits() {
        // The UPU's example RR473124829GB: 4*8 + 7*6 + 3*4 + 1*2 + 2*3 + 4*5 + 8*9 + 2*7 = 200,
        // 11 - 200 % 11 = 9.
        assert_eq!(s10_check_digit("47312482"), 9);
        assert_eq!(s10_check_digit("00000000"), 5);
        let number = tracking_number();
        assert_eq!(number.len(), 13);
        assert!(number.starts_with("BZ") && number.ends_with("US"));
        let serial = &number[2..10];
        assert_eq!(
            number[10..11].parse::<u32>().unwrap(),
            s10_check_digit(serial)
        );
    }
}
