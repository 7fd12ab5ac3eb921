//! Every SQL statement of the catalog, so handlers never see SQL and the portable subset is
//! kept in one place.
//!
//! The statements run unchanged on SQLite and PostgreSQL through `sqlx::Any`: `$n`
//! placeholders, `TEXT`/`BIGINT`/`BOOLEAN` columns, JSON kept as `TEXT`, times as Unix
//! milliseconds, rows read with `Row::try_get` into the few types `Any` supports.
//!
//! Writes are single statements whose constraints do the checking (`UNIQUE` id and SKU,
//! `REFERENCES` for the category, a `version` condition for `If-Match`), and violations are
//! mapped to [`RepoError`]s. That keeps every check atomic with its write on both engines and
//! avoids SQLite's read-then-write transactions, which fail with "database is locked" rather
//! than wait when another writer commits in between.

use std::collections::BTreeMap;

use bazaar_kit::storage::{now_ms, Database};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Row};

use crate::model::{Category, Money, ProductFilter, ProductInput, Sort, StoredProduct};

/// Why a repository call failed.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("no product with id {0}")]
    NotFound(String),
    #[error("no category {0}")]
    UnknownCategory(String),
    #[error("sku {0} is already used by another product")]
    SkuTaken(String),
    #[error("id {0} is already used by another product")]
    IdTaken(String),
    /// The product's version is not the one the caller expected (`If-Match`), or it changed
    /// between our read and our write.
    #[error("product {id} is at version {actual}, not {expected}")]
    VersionMismatch {
        id: String,
        expected: i64,
        actual: i64,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// One bind value: the handful of types the `Any` driver carries.
#[derive(Debug, Clone)]
enum Bind {
    Text(String),
    Int(i64),
    Bool(bool),
}

fn bind_all<'q>(
    mut query: Query<'q, Any, AnyArguments<'q>>,
    binds: &[Bind],
) -> Query<'q, Any, AnyArguments<'q>> {
    for bind in binds {
        query = match bind {
            Bind::Text(s) => query.bind(s.clone()),
            Bind::Int(i) => query.bind(*i),
            Bind::Bool(b) => query.bind(*b),
        };
    }
    query
}

/// The escape character of search patterns. `!` rather than `\` because a backslash in a SQL
/// literal means different things depending on PostgreSQL's `standard_conforming_strings`.
const LIKE_ESCAPE: char = '!';

/// A `LIKE` pattern matching `text` anywhere, with the wildcards in `text` taken literally.
pub fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if c == '%' || c == '_' || c == LIKE_ESCAPE {
            pattern.push(LIKE_ESCAPE);
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The sort key of a name: hex of its lowercased UTF-8, so `ORDER BY` compares bytes on every
/// engine and under every collation.
pub fn name_key(name: &str) -> String {
    hex::encode(name.to_lowercase().as_bytes())
}

/// A category as the seed provides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCategory {
    pub slug: String,
    pub name: String,
    pub description: String,
    pub position: i64,
}

/// Columns written by an `INSERT`, in the order [`bind_product`] binds them.
const PRODUCT_COLUMNS: &str = "id, sku, name, description, category, amount_minor, currency, \
     weight_grams, images, attributes, featured, created_at, updated_at, version, name_key";

/// Columns read back. `featured` is read as an integer because `sqlx::Any` refuses SQLite
/// columns declared `BOOLEAN` outright (it maps SQLite's declared types, and has no mapping for
/// that one), while an expression has no declared type and decodes as an integer on both
/// engines.
const PRODUCT_SELECT: &str = "id, sku, name, description, category, amount_minor, currency, \
     weight_grams, images, attributes, CASE WHEN featured THEN 1 ELSE 0 END AS featured, \
     created_at, updated_at, version";

/// The catalog's data access.
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

    /// Every category, in display order, with its product count.
    pub async fn list_categories(&self) -> Result<Vec<Category>, RepoError> {
        let rows = sqlx::query(
            "SELECT c.slug, c.name, c.description, COUNT(p.id) AS product_count \
             FROM categories c LEFT JOIN products p ON p.category = c.slug \
             GROUP BY c.slug, c.name, c.description, c.position \
             ORDER BY c.position, c.slug",
        )
        .fetch_all(&self.db)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Category {
                    slug: row.try_get("slug")?,
                    name: row.try_get("name")?,
                    description: row.try_get("description")?,
                    product_count: row.try_get("product_count")?,
                })
            })
            .collect()
    }

    /// One page of products matching `filter`, and how many match in all.
    pub async fn list_products(
        &self,
        filter: &ProductFilter,
    ) -> Result<(Vec<StoredProduct>, u64), RepoError> {
        let mut conditions = Vec::new();
        let mut binds = Vec::new();
        if let Some(q) = &filter.q {
            binds.push(Bind::Text(contains_pattern(&q.to_lowercase())));
            let n = binds.len();
            conditions.push(format!(
                "(LOWER(name) LIKE ${n} ESCAPE '{LIKE_ESCAPE}' \
                 OR LOWER(description) LIKE ${n} ESCAPE '{LIKE_ESCAPE}' \
                 OR LOWER(sku) LIKE ${n} ESCAPE '{LIKE_ESCAPE}')"
            ));
        }
        if let Some(category) = &filter.category {
            binds.push(Bind::Text(category.clone()));
            conditions.push(format!("category = ${}", binds.len()));
        }
        if let Some(featured) = filter.featured {
            binds.push(Bind::Bool(featured));
            conditions.push(format!("featured = ${}", binds.len()));
        }
        let where_clause = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };

        let count_sql = format!("SELECT COUNT(*) AS total FROM products{where_clause}");
        let total: i64 = bind_all(sqlx::query(&count_sql), &binds)
            .fetch_one(&self.db)
            .await?
            .try_get("total")?;

        // `id` breaks ties so paging is stable.
        let order = match filter.sort {
            Sort::Name => "name_key ASC, id ASC",
            Sort::NameDesc => "name_key DESC, id DESC",
            Sort::Price => "amount_minor ASC, name_key ASC, id ASC",
            Sort::PriceDesc => "amount_minor DESC, name_key ASC, id ASC",
            Sort::Newest => "created_at DESC, id DESC",
        };
        let mut page_binds = binds;
        page_binds.push(Bind::Int(i64::from(filter.per_page)));
        let limit = page_binds.len();
        page_binds.push(Bind::Int(
            i64::from(filter.page - 1) * i64::from(filter.per_page),
        ));
        let offset = page_binds.len();
        let sql = format!(
            "SELECT {PRODUCT_SELECT} FROM products{where_clause} \
             ORDER BY {order} LIMIT ${limit} OFFSET ${offset}"
        );
        let rows = bind_all(sqlx::query(&sql), &page_binds)
            .fetch_all(&self.db)
            .await?;
        let items = rows.iter().map(read_product).collect::<Result<_, _>>()?;
        Ok((items, total.max(0) as u64))
    }

    /// The product `id`, if any.
    pub async fn get_product(&self, id: &str) -> Result<Option<StoredProduct>, RepoError> {
        let row = sqlx::query(&format!(
            "SELECT {PRODUCT_SELECT} FROM products WHERE id = $1"
        ))
        .bind(id.to_owned())
        .fetch_optional(&self.db)
        .await?;
        row.as_ref().map(read_product).transpose()
    }

    /// How many products there are.
    pub async fn count_products(&self) -> Result<i64, RepoError> {
        let row = sqlx::query("SELECT COUNT(*) AS total FROM products")
            .fetch_one(&self.db)
            .await?;
        Ok(row.try_get("total")?)
    }

    /// Creates a product from validated input; its id is `input.id` or a new UUID v7.
    ///
    /// One `INSERT` and nothing before it: the constraints decide (unique id and SKU, existing
    /// category) and their violations become [`RepoError`]s. Checking first and writing after
    /// would be a read-then-write transaction, which SQLite answers with "database is locked"
    /// instead of waiting when another writer got in between.
    pub async fn create_product(&self, input: &ProductInput) -> Result<StoredProduct, RepoError> {
        let id = input
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let now = now_ms();
        let product = stored(id, input, now, now, 1);
        let sql = format!(
            "INSERT INTO products ({PRODUCT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        );
        bind_product(sqlx::query(&sql), &product)
            .execute(&self.db)
            .await
            .map_err(|e| constraint_error(e, &product))?;
        Ok(product)
    }

    /// Replaces every client-settable field of product `id`, bumping its version. With
    /// `expected_version`, refuses unless the product is at that version.
    ///
    /// One `UPDATE ... RETURNING` (both engines have it): the version condition in its `WHERE`
    /// makes check-and-write atomic, and, as for creation, constraints report SKU clashes and
    /// unknown categories.
    pub async fn replace_product(
        &self,
        id: &str,
        input: &ProductInput,
        expected_version: Option<i64>,
    ) -> Result<StoredProduct, RepoError> {
        let version_condition = if expected_version.is_some() {
            " AND version = $14"
        } else {
            ""
        };
        // `updated_at` never goes backwards for one product, whatever the clock does.
        let sql = format!(
            "UPDATE products SET sku = $1, name = $2, name_key = $3, description = $4, \
             category = $5, amount_minor = $6, currency = $7, weight_grams = $8, images = $9, \
             attributes = $10, featured = $11, \
             updated_at = CASE WHEN updated_at > $12 THEN updated_at ELSE $12 END, \
             version = version + 1 \
             WHERE id = $13{version_condition} RETURNING {PRODUCT_SELECT}"
        );
        // Only used to name a violated constraint.
        let attempted = stored(id.to_owned(), input, 0, 0, 0);
        let mut query = sqlx::query(&sql)
            .bind(input.sku.clone())
            .bind(input.name.clone())
            .bind(name_key(&input.name))
            .bind(input.description.clone())
            .bind(input.category.clone())
            .bind(input.price.amount_minor)
            .bind(input.price.currency.clone())
            .bind(input.weight_grams)
            .bind(to_json(&input.images))
            .bind(to_json(&input.attributes))
            .bind(input.featured)
            .bind(now_ms())
            .bind(id.to_owned());
        if let Some(version) = expected_version {
            query = query.bind(version);
        }
        let row = query
            .fetch_optional(&self.db)
            .await
            .map_err(|e| constraint_error(e, &attempted))?;
        if let Some(row) = row {
            return read_product(&row);
        }
        match (self.get_product(id).await?, expected_version) {
            (Some(current), Some(expected)) => Err(RepoError::VersionMismatch {
                id: id.to_owned(),
                expected,
                actual: current.version,
            }),
            _ => Err(RepoError::NotFound(id.to_owned())),
        }
    }

    /// Deletes product `id` (at `expected_version`, when given).
    pub async fn delete_product(
        &self,
        id: &str,
        expected_version: Option<i64>,
    ) -> Result<(), RepoError> {
        let result = match expected_version {
            Some(version) => {
                sqlx::query("DELETE FROM products WHERE id = $1 AND version = $2")
                    .bind(id.to_owned())
                    .bind(version)
                    .execute(&self.db)
                    .await?
            }
            None => {
                sqlx::query("DELETE FROM products WHERE id = $1")
                    .bind(id.to_owned())
                    .execute(&self.db)
                    .await?
            }
        };
        if result.rows_affected() == 1 {
            return Ok(());
        }
        match (self.get_product(id).await?, expected_version) {
            (Some(current), Some(expected)) => Err(RepoError::VersionMismatch {
                id: id.to_owned(),
                expected,
                actual: current.version,
            }),
            _ => Err(RepoError::NotFound(id.to_owned())),
        }
    }

    /// Loads the seed in one transaction when the products table is empty; returns how many
    /// products it inserted (0 when there was nothing to do).
    ///
    /// Inserts use `ON CONFLICT DO NOTHING` so two replicas seeding the same empty database at
    /// once both succeed and the data is there once.
    pub async fn seed(
        &self,
        categories: &[NewCategory],
        products: &[ProductInput],
    ) -> Result<u64, RepoError> {
        let mut connection = self.db.connection().await?;
        let mut tx = connection.begin().await?;
        // A write first: on SQLite it takes the write lock (waiting for another seeder) before
        // anything is read, so the count below cannot go stale before our inserts.
        for category in categories {
            sqlx::query(
                "INSERT INTO categories (slug, name, description, position) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (slug) DO NOTHING",
            )
            .bind(category.slug.clone())
            .bind(category.name.clone())
            .bind(category.description.clone())
            .bind(category.position)
            .execute(&mut *tx)
            .await?;
        }
        let existing: i64 = sqlx::query("SELECT COUNT(*) AS total FROM products")
            .fetch_one(&mut *tx)
            .await?
            .try_get("total")?;
        if existing > 0 {
            // Nothing to do; dropping the transaction rolls the category inserts back.
            return Ok(0);
        }
        let now = now_ms();
        let mut inserted = 0;
        for input in products {
            let id = input
                .id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            let product = stored(id, input, now, now, 1);
            // Conflicts are skipped so a concurrent seeder's rows are kept, not an error.
            let sql = format!(
                "INSERT INTO products ({PRODUCT_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
                 ON CONFLICT DO NOTHING"
            );
            inserted += bind_product(sqlx::query(&sql), &product)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(inserted)
    }
}

fn stored(
    id: String,
    input: &ProductInput,
    created_at_ms: i64,
    updated_at_ms: i64,
    version: i64,
) -> StoredProduct {
    StoredProduct {
        id,
        sku: input.sku.clone(),
        name: input.name.clone(),
        description: input.description.clone(),
        category: input.category.clone(),
        price: input.price.clone(),
        weight_grams: input.weight_grams,
        images: input.images.clone(),
        attributes: input.attributes.clone(),
        featured: input.featured,
        created_at_ms,
        updated_at_ms,
        version,
    }
}

fn bind_product<'q>(
    query: Query<'q, Any, AnyArguments<'q>>,
    product: &StoredProduct,
) -> Query<'q, Any, AnyArguments<'q>> {
    query
        .bind(product.id.clone())
        .bind(product.sku.clone())
        .bind(product.name.clone())
        .bind(product.description.clone())
        .bind(product.category.clone())
        .bind(product.price.amount_minor)
        .bind(product.price.currency.clone())
        .bind(product.weight_grams)
        .bind(to_json(&product.images))
        .bind(to_json(&product.attributes))
        .bind(product.featured)
        .bind(product.created_at_ms)
        .bind(product.updated_at_ms)
        .bind(product.version)
        .bind(name_key(&product.name))
}

/// Maps a constraint violation met by a racing writer to the error the pre-checks would have
/// given.
fn constraint_error(error: sqlx::Error, product: &StoredProduct) -> RepoError {
    if let sqlx::Error::Database(db) = &error {
        let message = db.message().to_lowercase();
        if db.is_unique_violation() {
            return if message.contains("sku") {
                RepoError::SkuTaken(product.sku.clone())
            } else {
                RepoError::IdTaken(product.id.clone())
            };
        }
        if db.is_foreign_key_violation() {
            return RepoError::UnknownCategory(product.category.clone());
        }
    }
    RepoError::Database(error)
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("strings and maps of strings serialize")
}

/// `featured` as [`PRODUCT_SELECT`] reads it: an integer (a boolean, should a driver give one).
fn read_bool(row: &AnyRow, column: &str) -> Result<bool, sqlx::Error> {
    row.try_get::<i64, _>(column)
        .map(|v| v != 0)
        .or_else(|_| row.try_get::<bool, _>(column))
}

fn read_product(row: &AnyRow) -> Result<StoredProduct, RepoError> {
    let id: String = row.try_get("id")?;
    let images: String = row.try_get("images")?;
    let attributes: String = row.try_get("attributes")?;
    let images: Vec<String> = serde_json::from_str(&images)
        .map_err(|e| RepoError::Corrupt(format!("images of product {id}: {e}")))?;
    let attributes: BTreeMap<String, String> = serde_json::from_str(&attributes)
        .map_err(|e| RepoError::Corrupt(format!("attributes of product {id}: {e}")))?;
    Ok(StoredProduct {
        sku: row.try_get("sku")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        category: row.try_get("category")?,
        price: Money {
            amount_minor: row.try_get("amount_minor")?,
            currency: row.try_get("currency")?,
        },
        weight_grams: row.try_get("weight_grams")?,
        images,
        attributes,
        featured: read_bool(row, "featured")?,
        created_at_ms: row.try_get("created_at")?,
        updated_at_ms: row.try_get("updated_at")?,
        version: row.try_get("version")?,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_escape_wildcards() {
        assert_eq!(contains_pattern("mug"), "%mug%");
        assert_eq!(contains_pattern("50%_off!"), "%50!%!_off!!%");
    }

    #[test]
    fn name_keys_sort_like_lowercase_bytes() {
        let mut names = vec!["b", "A Year", "Abc", "a"];
        names.sort_by_key(|n| name_key(n));
        assert_eq!(names, vec!["a", "A Year", "Abc", "b"]);
    }
}
