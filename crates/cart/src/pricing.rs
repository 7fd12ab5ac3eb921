//! Turning stored lines into the cart a client sees: every line is re-read from the catalog
//! (price, name, sku, image, weight), and when the catalog cannot answer, the line keeps the
//! last data the cart saw and the cart says `prices_stale: true` rather than failing.

use bazaar_kit::ApiResult;

use crate::catalog::Lookup;
use crate::model::{Cart, CartLine, Money, ProductSnapshot};
use crate::AppState;

/// The cart stored under `owner`, priced by the catalog now.
pub async fn priced_cart(state: &AppState, owner: &str) -> ApiResult<Cart> {
    priced_cart_knowing(state, owner, None).await
}

/// [`priced_cart`] for a request that has just read `known` (a product id and what the catalog
/// said of it) from the catalog itself: that line is priced with it instead of asking again.
pub async fn priced_cart_knowing(
    state: &AppState,
    owner: &str,
    known: Option<(&str, &ProductSnapshot)>,
) -> ApiResult<Cart> {
    let lines = state.repository.lines(owner).await?;
    // All lookups at once: a cart read then costs one catalog round trip (or one timeout when
    // the catalog hangs), not one per line.
    let lookups = futures::future::join_all(lines.iter().map(|line| async {
        match known {
            Some((product_id, snapshot)) if product_id == line.product_id => {
                Lookup::Found(snapshot.clone())
            }
            _ => state.catalog.product(&line.product_id).await,
        }
    }))
    .await;

    let mut stale = false;
    let mut changed: Vec<(String, ProductSnapshot)> = Vec::new();
    let mut priced = Vec::with_capacity(lines.len());
    for (line, lookup) in lines.into_iter().zip(lookups) {
        let (snapshot, available) = match lookup {
            Lookup::Found(fresh) => {
                if fresh != line.snapshot {
                    changed.push((line.product_id.clone(), fresh.clone()));
                }
                (fresh, true)
            }
            Lookup::Missing => (line.snapshot, false),
            Lookup::Unavailable(error) => {
                if !stale {
                    tracing::warn!(%error, "catalog unavailable; answering with last known prices");
                }
                stale = true;
                (line.snapshot, true)
            }
        };
        priced.push(CartLine {
            line_total: Money {
                amount_minor: snapshot.price.amount_minor.saturating_mul(line.quantity),
                currency: snapshot.price.currency.clone(),
            },
            product_id: line.product_id,
            sku: snapshot.sku,
            name: snapshot.name,
            image: Some(snapshot.image).filter(|i| !i.is_empty()),
            unit_price: snapshot.price,
            quantity: line.quantity,
            weight_grams: snapshot.weight_grams,
            available,
        });
    }

    if !changed.is_empty() {
        // Only a cache for the next outage: failing to store it must not fail this read.
        if let Err(error) = state.repository.refresh_snapshots(owner, &changed).await {
            tracing::warn!(%error, "could not store refreshed product data");
        }
    }
    Ok(summarize(priced, stale, &state.currency))
}

/// Adds up the available lines. Lines share one currency (the repository refuses a second);
/// should the catalog have changed a product's currency since, that line is left out of the
/// subtotal rather than added to amounts in another currency.
fn summarize(lines: Vec<CartLine>, prices_stale: bool, default_currency: &str) -> Cart {
    let currency = lines.iter().find(|l| l.available).map_or_else(
        || default_currency.to_owned(),
        |l| l.unit_price.currency.clone(),
    );
    let counted = || {
        lines
            .iter()
            .filter(|l| l.available && l.unit_price.currency == currency)
    };
    let subtotal = counted().fold(0i64, |sum, l| sum.saturating_add(l.line_total.amount_minor));
    let item_count = counted().map(|l| l.quantity).sum();
    Cart {
        subtotal: Money {
            amount_minor: subtotal,
            currency,
        },
        item_count,
        prices_stale,
        lines,
    }
}
