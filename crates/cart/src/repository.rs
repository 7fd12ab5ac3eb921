//! Every SQL statement of the cart, portable across SQLite and PostgreSQL through `sqlx::Any`
//! (`$n` placeholders in order of first use, `TEXT`/`BIGINT` columns, times as Unix ms).
//!
//! Every write transaction on a cart starts by upserting its `carts` row ([`touch`]). That
//! first write takes the row lock on PostgreSQL and the database write lock on SQLite, so two
//! writers of one cart run one after the other and the reads that follow (line count, current
//! quantity) stay true until commit. Transactions run under
//! [`retry_conflicts`](bazaar_kit::storage::retry_conflicts), which replays them on SQLite's
//! busy answers and PostgreSQL serialization failures.

use std::collections::BTreeMap;

use bazaar_kit::storage::{now_ms, retry_conflicts, Database};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::model::{Money, ProductSnapshot, StoredLine};

/// Why a repository call refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("product {0} is not in the cart")]
    NotInCart(String),
    #[error("the cart already holds {0} different products")]
    CartFull(usize),
    #[error("product {product_id} would reach {wanted} units; at most {max}")]
    QuantityTooLarge {
        product_id: String,
        wanted: i64,
        max: i64,
    },
    #[error("product {product_id} is priced in {product}, the cart in {cart}")]
    CurrencyMismatch {
        product_id: String,
        cart: String,
        product: String,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Limits a write must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most distinct products in one cart.
    pub max_lines: usize,
    /// Most units on one line.
    pub max_quantity: i64,
}

/// What a merge did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeOutcome {
    /// Anonymous lines added to (or summed into) the user's cart.
    pub merged: usize,
    /// Anonymous lines that did not fit (the user's cart was full, or in another currency).
    pub dropped: Vec<String>,
}

const LINE_SELECT: &str = "product_id, quantity, sku, name, image, amount_minor, currency, \
     weight_grams, priced_at, added_at";

/// The cart's data access.
#[derive(Clone, Debug)]
pub struct Repository {
    db: Database,
}

impl Repository {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The lines of the cart `owner`, in the order they were first added; empty when there is
    /// no such cart.
    pub async fn lines(&self, owner: &str) -> Result<Vec<StoredLine>, RepoError> {
        let mut connection = self.db.connection().await?;
        Ok(lines_in(&mut connection, owner).await?)
    }

    /// Adds `quantity` units of `product_id` (the caller checked it exists; `snapshot` is what
    /// the catalog said of it), refreshing the line's snapshot.
    pub async fn add(
        &self,
        owner: &str,
        product_id: &str,
        quantity: i64,
        snapshot: &ProductSnapshot,
        limits: Limits,
    ) -> Result<(), RepoError> {
        retry_conflicts(|| async {
            let _turn = self.db.write_turn().await;
            let mut connection = self.db.connection().await?;
            let mut tx = connection.begin().await?;
            let outcome = add_in(&mut tx, owner, product_id, quantity, snapshot, limits).await?;
            finish(tx, outcome).await
        })
        .await?
    }

    /// Sets the line's quantity (at least 1: removal is [`Repository::remove`]). A product not
    /// in the cart is added when `snapshot` is given (the caller checked it exists), and is
    /// [`RepoError::NotInCart`] otherwise.
    pub async fn set(
        &self,
        owner: &str,
        product_id: &str,
        quantity: i64,
        snapshot: Option<&ProductSnapshot>,
        limits: Limits,
    ) -> Result<(), RepoError> {
        retry_conflicts(|| async {
            let _turn = self.db.write_turn().await;
            let mut connection = self.db.connection().await?;
            let mut tx = connection.begin().await?;
            let outcome = set_in(&mut tx, owner, product_id, quantity, snapshot, limits).await?;
            finish(tx, outcome).await
        })
        .await?
    }

    /// Removes the line; [`RepoError::NotInCart`] when there is none.
    pub async fn remove(&self, owner: &str, product_id: &str) -> Result<(), RepoError> {
        let removed = sqlx::query("DELETE FROM cart_lines WHERE owner = $1 AND product_id = $2")
            .bind(owner.to_owned())
            .bind(product_id.to_owned())
            .execute(&self.db)
            .await?;
        if removed.rows_affected() == 0 {
            return Err(RepoError::NotInCart(product_id.to_owned()));
        }
        Ok(())
    }

    /// Moves the lines of the anonymous cart `from` into the cart `into` (quantities summed and
    /// capped at the limit) and deletes `from`, in one transaction. Deleting first, with
    /// `RETURNING`, is what makes a repeated or concurrent merge of the same session harmless:
    /// only one transaction gets the rows back.
    pub async fn merge(
        &self,
        from: &str,
        into: &str,
        limits: Limits,
    ) -> Result<MergeOutcome, RepoError> {
        let outcome = retry_conflicts(|| async {
            let _turn = self.db.write_turn().await;
            let mut connection = self.db.connection().await?;
            let mut tx = connection.begin().await?;
            let outcome = merge_in(&mut tx, from, into, limits).await?;
            tx.commit().await?;
            Ok(outcome)
        })
        .await?;
        Ok(outcome)
    }

    /// Stores what the catalog now says of products in the cart, for the next time it cannot
    /// be reached.
    pub async fn refresh_snapshots(
        &self,
        owner: &str,
        fresh: &[(String, ProductSnapshot)],
    ) -> Result<(), RepoError> {
        let now = now_ms();
        for (product_id, snapshot) in fresh {
            sqlx::query(
                "UPDATE cart_lines SET sku = $1, name = $2, image = $3, amount_minor = $4, \
                 currency = $5, weight_grams = $6, priced_at = $7 \
                 WHERE owner = $8 AND product_id = $9",
            )
            .bind(snapshot.sku.clone())
            .bind(snapshot.name.clone())
            .bind(snapshot.image.clone())
            .bind(snapshot.price.amount_minor)
            .bind(snapshot.price.currency.clone())
            .bind(snapshot.weight_grams)
            .bind(now)
            .bind(owner.to_owned())
            .bind(product_id.clone())
            .execute(&self.db)
            .await?;
        }
        Ok(())
    }
}

/// Commits when the work succeeded; otherwise drops `tx`, which rolls back.
async fn finish<T>(
    tx: bazaar_kit::storage::Transaction<'_>,
    outcome: Result<T, RepoError>,
) -> Result<Result<T, RepoError>, sqlx::Error> {
    if outcome.is_ok() {
        tx.commit().await?;
    }
    Ok(outcome)
}

async fn add_in(
    tx: &mut bazaar_kit::storage::Connection,
    owner: &str,
    product_id: &str,
    quantity: i64,
    snapshot: &ProductSnapshot,
    limits: Limits,
) -> Result<Result<(), RepoError>, sqlx::Error> {
    touch(tx, owner).await?;
    let lines = lines_in(tx, owner).await?;
    let existing = lines.iter().find(|l| l.product_id == product_id);
    let wanted = existing.map_or(0, |l| l.quantity) + quantity;
    if wanted > limits.max_quantity {
        return Ok(Err(RepoError::QuantityTooLarge {
            product_id: product_id.to_owned(),
            wanted,
            max: limits.max_quantity,
        }));
    }
    if let Err(refused) = fits(&lines, product_id, snapshot, limits) {
        return Ok(Err(refused));
    }
    if existing.is_some() {
        update_line(tx, owner, product_id, wanted, Some(snapshot)).await?;
    } else {
        insert_line(tx, owner, product_id, wanted, snapshot).await?;
    }
    Ok(Ok(()))
}

async fn set_in(
    tx: &mut bazaar_kit::storage::Connection,
    owner: &str,
    product_id: &str,
    quantity: i64,
    snapshot: Option<&ProductSnapshot>,
    limits: Limits,
) -> Result<Result<(), RepoError>, sqlx::Error> {
    touch(tx, owner).await?;
    let lines = lines_in(tx, owner).await?;
    if lines.iter().any(|l| l.product_id == product_id) {
        update_line(tx, owner, product_id, quantity, snapshot).await?;
        return Ok(Ok(()));
    }
    let Some(snapshot) = snapshot else {
        return Ok(Err(RepoError::NotInCart(product_id.to_owned())));
    };
    if let Err(refused) = fits(&lines, product_id, snapshot, limits) {
        return Ok(Err(refused));
    }
    insert_line(tx, owner, product_id, quantity, snapshot).await?;
    Ok(Ok(()))
}

async fn merge_in(
    tx: &mut bazaar_kit::storage::Connection,
    from: &str,
    into: &str,
    limits: Limits,
) -> Result<MergeOutcome, sqlx::Error> {
    touch(tx, into).await?;
    let taken = sqlx::query(&format!(
        "DELETE FROM cart_lines WHERE owner = $1 RETURNING {LINE_SELECT}"
    ))
    .bind(from.to_owned())
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM carts WHERE owner = $1")
        .bind(from.to_owned())
        .execute(&mut *tx)
        .await?;
    let mut taken = taken.iter().map(read_line).collect::<Result<Vec<_>, _>>()?;
    // RETURNING gives no order: merge the earliest additions first, so that if the user's
    // cart fills up, what is left out is what the visitor added last.
    taken.sort_by(|a, b| (a.added_at_ms, &a.product_id).cmp(&(b.added_at_ms, &b.product_id)));
    let mut lines = lines_in(tx, into).await?;
    let mut outcome = MergeOutcome::default();
    for line in taken {
        if let Some(mine) = lines.iter().find(|l| l.product_id == line.product_id) {
            let quantity = (mine.quantity + line.quantity).min(limits.max_quantity);
            update_line(tx, into, &line.product_id, quantity, None).await?;
            outcome.merged += 1;
        } else if fits(&lines, &line.product_id, &line.snapshot, limits).is_ok() {
            let quantity = line.quantity.min(limits.max_quantity);
            insert_line(tx, into, &line.product_id, quantity, &line.snapshot).await?;
            outcome.merged += 1;
            lines.push(line);
        } else {
            outcome.dropped.push(line.product_id);
        }
    }
    Ok(outcome)
}

/// Removes the ordered quantities from the cart `owner` (a line reaching 0 is deleted; a
/// product no longer in the cart is skipped), on the consumer's connection.
pub async fn remove_ordered(
    tx: &mut bazaar_kit::storage::Connection,
    owner: &str,
    lines: &[(String, i64)],
) -> Result<(), sqlx::Error> {
    // An order may name a product on two lines: subtract the sum once.
    let mut ordered: BTreeMap<&str, i64> = BTreeMap::new();
    for (product_id, quantity) in lines {
        if *quantity > 0 {
            *ordered.entry(product_id.as_str()).or_default() += quantity;
        }
    }
    if ordered.is_empty() {
        return Ok(());
    }
    sqlx::query("UPDATE carts SET updated_at = $1 WHERE owner = $2")
        .bind(now_ms())
        .bind(owner.to_owned())
        .execute(&mut *tx)
        .await?;
    for (product_id, quantity) in ordered {
        // Delete first: updating first would turn 5 - 3 into 2, which the delete (`<= 3`)
        // would then remove as well.
        sqlx::query(
            "DELETE FROM cart_lines WHERE owner = $1 AND product_id = $2 AND quantity <= $3",
        )
        .bind(owner.to_owned())
        .bind(product_id.to_owned())
        .bind(quantity)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE cart_lines SET quantity = quantity - $1, updated_at = $2 \
             WHERE owner = $3 AND product_id = $4 AND quantity > $5",
        )
        .bind(quantity)
        .bind(now_ms())
        .bind(owner.to_owned())
        .bind(product_id.to_owned())
        .bind(quantity)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Creates the cart row if needed and bumps `updated_at`: the transaction's first write, which
/// serializes writers of one cart (see the module documentation).
async fn touch(tx: &mut bazaar_kit::storage::Connection, owner: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO carts (owner, created_at, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (owner) DO UPDATE SET updated_at = excluded.updated_at",
    )
    .bind(owner.to_owned())
    .bind(now_ms())
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Whether `product_id` may be in a cart holding `lines`: a new line needs room, and every
/// line shares one currency (so the subtotal is a sum).
fn fits(
    lines: &[StoredLine],
    product_id: &str,
    snapshot: &ProductSnapshot,
    limits: Limits,
) -> Result<(), RepoError> {
    let is_new = !lines.iter().any(|l| l.product_id == product_id);
    if is_new && lines.len() >= limits.max_lines {
        return Err(RepoError::CartFull(lines.len()));
    }
    if let Some(other) = lines.iter().find(|l| l.product_id != product_id) {
        if other.snapshot.price.currency != snapshot.price.currency {
            return Err(RepoError::CurrencyMismatch {
                product_id: product_id.to_owned(),
                cart: other.snapshot.price.currency.clone(),
                product: snapshot.price.currency.clone(),
            });
        }
    }
    Ok(())
}

async fn lines_in(
    tx: &mut bazaar_kit::storage::Connection,
    owner: &str,
) -> Result<Vec<StoredLine>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {LINE_SELECT} FROM cart_lines WHERE owner = $1 ORDER BY added_at, product_id"
    ))
    .bind(owner.to_owned())
    .fetch_all(&mut *tx)
    .await?;
    rows.iter().map(read_line).collect()
}

async fn insert_line(
    tx: &mut bazaar_kit::storage::Connection,
    owner: &str,
    product_id: &str,
    quantity: i64,
    snapshot: &ProductSnapshot,
) -> Result<(), sqlx::Error> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO cart_lines (owner, product_id, quantity, sku, name, image, amount_minor, \
         currency, weight_grams, priced_at, added_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(owner.to_owned())
    .bind(product_id.to_owned())
    .bind(quantity)
    .bind(snapshot.sku.clone())
    .bind(snapshot.name.clone())
    .bind(snapshot.image.clone())
    .bind(snapshot.price.amount_minor)
    .bind(snapshot.price.currency.clone())
    .bind(snapshot.weight_grams)
    .bind(now)
    .bind(now)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Sets a line's quantity, and its snapshot when a fresh one is given.
async fn update_line(
    tx: &mut bazaar_kit::storage::Connection,
    owner: &str,
    product_id: &str,
    quantity: i64,
    snapshot: Option<&ProductSnapshot>,
) -> Result<(), sqlx::Error> {
    let now = now_ms();
    match snapshot {
        Some(snapshot) => {
            sqlx::query(
                "UPDATE cart_lines SET quantity = $1, sku = $2, name = $3, image = $4, \
                 amount_minor = $5, currency = $6, weight_grams = $7, priced_at = $8, \
                 updated_at = $9 WHERE owner = $10 AND product_id = $11",
            )
            .bind(quantity)
            .bind(snapshot.sku.clone())
            .bind(snapshot.name.clone())
            .bind(snapshot.image.clone())
            .bind(snapshot.price.amount_minor)
            .bind(snapshot.price.currency.clone())
            .bind(snapshot.weight_grams)
            .bind(now)
            .bind(now)
            .bind(owner.to_owned())
            .bind(product_id.to_owned())
            .execute(&mut *tx)
            .await?;
        }
        None => {
            sqlx::query(
                "UPDATE cart_lines SET quantity = $1, updated_at = $2 \
                 WHERE owner = $3 AND product_id = $4",
            )
            .bind(quantity)
            .bind(now)
            .bind(owner.to_owned())
            .bind(product_id.to_owned())
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}

fn read_line(row: &AnyRow) -> Result<StoredLine, sqlx::Error> {
    Ok(StoredLine {
        product_id: row.try_get("product_id")?,
        quantity: row.try_get("quantity")?,
        snapshot: ProductSnapshot {
            sku: row.try_get("sku")?,
            name: row.try_get("name")?,
            image: row.try_get("image")?,
            price: Money {
                amount_minor: row.try_get("amount_minor")?,
                currency: row.try_get("currency")?,
            },
            weight_grams: row.try_get("weight_grams")?,
        },
        priced_at_ms: row.try_get("priced_at")?,
        added_at_ms: row.try_get("added_at")?,
    })
}
