//! The storefront's pages: home, search, product, cart, checkout, order status, order history
//! and the mailbox. Each page asks the services it needs concurrently and renders what it got:
//! a service that is down costs its part of the page (with a message), not the page.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::backend::{query_value, BackendError, BackendResult};
use crate::pages::{render, render_status, PageError, WebForm, WebQuery};
use crate::signin::safe_return_to;
use crate::visitor::{set_cookie, Visitor, CURRENCY_COOKIE};
use crate::AppState;

/// Keys under which services put money, converted into the visitor's currency for display.
const PRICE_KEYS: &[&str] = &["price", "unit_price", "line_total", "subtotal", "amount"];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/search", get(search))
        .route("/products/{id}", get(product))
        .route("/cart", get(cart))
        .route("/cart/add", post(cart_add))
        .route("/cart/update", post(cart_update))
        .route("/currency", post(choose_currency))
        .route("/checkout", get(checkout_page).post(checkout))
        .route("/orders", get(orders))
        .route("/orders/{id}", get(order))
        .route("/account/mailbox", get(mailbox))
}

/// What a page shows instead of a part whose service did not answer.
fn unavailable<T>(result: &BackendResult<T>) -> Option<String> {
    result.as_ref().err().map(BackendError::message)
}

/// `GET /`: categories and featured products.
async fn home(State(state): State<AppState>, visitor: Visitor) -> Response {
    let caller = visitor.caller();
    let (chrome, categories, featured) = tokio::join!(
        visitor.chrome(&state),
        state.backend.get(&caller, "catalog", "/api/v1/categories"),
        state.backend.get(
            &caller,
            "catalog",
            "/api/v1/products?featured=true&per_page=8"
        ),
    );
    let catalog_error = unavailable(&featured).or_else(|| unavailable(&categories));
    let mut featured = featured.unwrap_or(Value::Null);
    state
        .backend
        .convert_all(&mut featured, PRICE_KEYS, &visitor.currency)
        .await;
    render(
        "home.html",
        minijinja::context! {
            chrome,
            categories => categories.ok().and_then(|c| c.get("items").cloned()),
            products => featured.get("items").cloned(),
            catalog_error,
        },
    )
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    category: String,
    #[serde(default)]
    sort: String,
    page: Option<u32>,
}

/// `GET /search`: text search with a category filter, sorting and pagination.
async fn search(
    State(state): State<AppState>,
    visitor: Visitor,
    WebQuery(query): WebQuery<SearchQuery>,
) -> Response {
    let page = query.page.unwrap_or(1).max(1);
    let sort = match query.sort.as_str() {
        "name" | "-name" | "price" | "-price" | "newest" => query.sort.as_str(),
        _ => "name",
    };
    let mut path = format!(
        "/api/v1/products?page={page}&per_page={}&sort={}",
        state.config.page_size,
        query_value(sort)
    );
    if !query.q.trim().is_empty() {
        path.push_str(&format!("&q={}", query_value(query.q.trim())));
    }
    if !query.category.is_empty() {
        path.push_str(&format!("&category={}", query_value(&query.category)));
    }
    let caller = visitor.caller();
    let (chrome, categories, results) = tokio::join!(
        visitor.chrome(&state),
        state.backend.get(&caller, "catalog", "/api/v1/categories"),
        state.backend.get(&caller, "catalog", &path),
    );
    let catalog_error = unavailable(&results);
    let mut results = results.unwrap_or(Value::Null);
    state
        .backend
        .convert_all(&mut results, PRICE_KEYS, &visitor.currency)
        .await;
    let total = results.get("total").and_then(Value::as_u64).unwrap_or(0);
    let pages = total
        .div_ceil(u64::from(state.config.page_size.max(1)))
        .max(1);
    // Links keep the filters and change only the page.
    let link = |to: u64| {
        serde_urlencoded::to_string([
            ("q", query.q.as_str()),
            ("category", query.category.as_str()),
            ("sort", sort),
            ("page", &to.to_string()),
        ])
        .map(|q| format!("/search?{q}"))
        .unwrap_or_default()
    };
    let page = u64::from(page);
    render(
        "search.html",
        minijinja::context! {
            chrome,
            query => &query,
            sort,
            categories => categories.ok().and_then(|c| c.get("items").cloned()),
            products => results.get("items").cloned(),
            total,
            page,
            pages,
            previous => (page > 1).then(|| link(page - 1)),
            next => (page < pages).then(|| link(page + 1)),
            catalog_error,
        },
    )
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct EstimateQuery {
    #[serde(default)]
    country: String,
    #[serde(default)]
    postal_code: String,
}

/// `GET /products/{id}`: the product, its stock, and a shipping estimate for a postal code.
async fn product(
    State(state): State<AppState>,
    visitor: Visitor,
    Path(id): Path<String>,
    WebQuery(estimate): WebQuery<EstimateQuery>,
) -> Result<Response, PageError> {
    let caller = visitor.caller();
    let product_path = format!("/api/v1/products/{}", query_value(&id));
    let stock_path = format!("/api/v1/inventory/{}", query_value(&id));
    let wants_quote = !estimate.postal_code.trim().is_empty();
    let quote_body = json!({
        "destination": {
            "country": if estimate.country.is_empty() { "US" } else { estimate.country.as_str() },
            "postal_code": estimate.postal_code.trim(),
        },
        "items": [{"product_id": id, "quantity": 1}],
    });
    let quote = async {
        if wants_quote {
            Some(
                state
                    .backend
                    .call(
                        &caller,
                        "shipping",
                        Method::POST,
                        "/api/v1/shipping/quote",
                        Some(&quote_body),
                    )
                    .await,
            )
        } else {
            None
        }
    };
    let (chrome, product, stock, quote) = tokio::join!(
        visitor.chrome(&state),
        state.backend.get(&caller, "catalog", &product_path),
        state.backend.get(&caller, "inventory", &stock_path),
        quote,
    );
    let mut product = product.map_err(|e| PageError::from(e).with_chrome(&chrome))?;
    state
        .backend
        .convert_all(&mut product, PRICE_KEYS, &visitor.currency)
        .await;
    let stock_error = unavailable(&stock);
    let (mut quote, quote_error) = match quote {
        Some(Ok(quote)) => (Some(quote), None),
        Some(Err(error)) => (None, Some(error.message())),
        None => (None, None),
    };
    if let Some(quote) = quote.as_mut() {
        state
            .backend
            .convert_all(quote, PRICE_KEYS, &visitor.currency)
            .await;
    }
    Ok(render(
        "product.html",
        minijinja::context! {
            chrome,
            product,
            available => stock.ok().and_then(|s| s.get("available").and_then(Value::as_i64)),
            stock_error,
            estimate => &estimate,
            quote,
            quote_error,
        },
    ))
}

/// `GET /cart`.
async fn cart(State(state): State<AppState>, visitor: Visitor) -> Response {
    let cart = state
        .backend
        .get(&visitor.caller(), "cart", "/api/v1/cart")
        .await;
    let count = cart
        .as_ref()
        .ok()
        .and_then(|c| c.get("item_count").and_then(Value::as_u64))
        .unwrap_or(0);
    let chrome = visitor.chrome_with_count(&state, count);
    let cart_error = unavailable(&cart);
    let mut cart = cart.unwrap_or(Value::Null);
    state
        .backend
        .convert_all(&mut cart, PRICE_KEYS, &visitor.currency)
        .await;
    render(
        "cart.html",
        minijinja::context! { chrome, cart, cart_error },
    )
}

#[derive(Debug, Deserialize)]
struct CartLineForm {
    product_id: String,
    quantity: u32,
}

/// `POST /cart/add`: adds a quantity, then shows the cart.
async fn cart_add(
    State(state): State<AppState>,
    visitor: Visitor,
    WebForm(form): WebForm<CartLineForm>,
) -> Result<Response, PageError> {
    let body = json!({"product_id": form.product_id, "quantity": form.quantity});
    state
        .backend
        .call(
            &visitor.caller(),
            "cart",
            Method::POST,
            "/api/v1/cart/lines",
            Some(&body),
        )
        .await
        .map_err(PageError::from)?;
    Ok(Redirect::to("/cart").into_response())
}

/// `POST /cart/update`: sets a line's quantity (0 removes it).
async fn cart_update(
    State(state): State<AppState>,
    visitor: Visitor,
    WebForm(form): WebForm<CartLineForm>,
) -> Result<Response, PageError> {
    let path = format!("/api/v1/cart/lines/{}", query_value(&form.product_id));
    let body = json!({"quantity": form.quantity});
    state
        .backend
        .call(&visitor.caller(), "cart", Method::PUT, &path, Some(&body))
        .await
        .map_err(PageError::from)?;
    Ok(Redirect::to("/cart").into_response())
}

#[derive(Debug, Deserialize)]
struct CurrencyForm {
    currency: String,
    return_to: Option<String>,
}

/// `POST /currency`: remembers the visitor's currency.
async fn choose_currency(
    State(state): State<AppState>,
    WebForm(form): WebForm<CurrencyForm>,
) -> Result<Response, PageError> {
    if !state.config.display_currencies.contains(&form.currency) {
        return Err(PageError::new(
            http::StatusCode::BAD_REQUEST,
            "Unknown currency",
            format!("{} is not one of the currencies offered.", form.currency),
        ));
    }
    let mut response = Redirect::to(&safe_return_to(form.return_to.as_deref())).into_response();
    response.headers_mut().append(
        http::header::SET_COOKIE,
        set_cookie(&state, CURRENCY_COOKIE, &form.currency, 365 * 24 * 3600),
    );
    Ok(response)
}

/// The checkout form's fields (the card number goes to payments' vault and nowhere else).
#[derive(Debug, Default, Deserialize, Serialize)]
struct CheckoutForm {
    #[serde(default)]
    idempotency_key: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    line1: String,
    #[serde(default)]
    city: String,
    #[serde(default)]
    country: String,
    #[serde(default)]
    postal_code: String,
    #[serde(default, skip_serializing)]
    card_number: String,
    #[serde(default)]
    expiry: String,
    #[serde(default, skip_serializing)]
    cvc: String,
}

/// `GET /checkout`: the address and card form, with the simulator's test cards listed.
async fn checkout_page(State(state): State<AppState>, visitor: Visitor) -> Response {
    if let Some(signin) = visitor.signin_redirect() {
        return signin;
    }
    let form = CheckoutForm {
        idempotency_key: uuid::Uuid::new_v4().to_string(),
        country: "US".to_owned(),
        expiry: "12/30".to_owned(),
        ..CheckoutForm::default()
    };
    checkout_form(&state, &visitor, form, None, None).await
}

async fn checkout_form(
    state: &AppState,
    visitor: &Visitor,
    form: CheckoutForm,
    error: Option<String>,
    field: Option<String>,
) -> Response {
    let caller = visitor.caller();
    let (cart, cards) = tokio::join!(
        state.backend.get(&caller, "cart", "/api/v1/cart"),
        state
            .backend
            .get(&caller, "payments", "/api/v1/payments/test-cards"),
    );
    let count = cart
        .as_ref()
        .ok()
        .and_then(|c| c.get("item_count").and_then(Value::as_u64))
        .unwrap_or(0);
    let chrome = visitor.chrome_with_count(state, count);
    let cart_error = unavailable(&cart);
    let mut cart = cart.unwrap_or(Value::Null);
    state
        .backend
        .convert_all(&mut cart, PRICE_KEYS, &visitor.currency)
        .await;
    let status = if error.is_some() {
        http::StatusCode::UNPROCESSABLE_ENTITY
    } else {
        http::StatusCode::OK
    };
    render_status(
        status,
        "checkout.html",
        minijinja::context! {
            chrome,
            cart,
            cart_error,
            test_cards => cards.ok().and_then(|c| c.get("test_cards").cloned()),
            form,
            error,
            field,
        },
    )
}

/// Splits `MM/YY` (or `MM/YYYY`) into month and four-digit year.
fn parse_expiry(expiry: &str) -> Option<(u32, u32)> {
    let (month, year) = expiry.trim().split_once('/')?;
    let month: u32 = month.trim().parse().ok()?;
    let year: u32 = year.trim().parse().ok()?;
    let year = if year < 100 { 2000 + year } else { year };
    (1..=12).contains(&month).then_some((month, year))
}

/// `POST /checkout`: stores the card in payments' vault, then places the order with the
/// form's idempotency key (a double submit places one order), then shows its status.
async fn checkout(
    State(state): State<AppState>,
    visitor: Visitor,
    WebForm(form): WebForm<CheckoutForm>,
) -> Response {
    if let Some(signin) = visitor.signin_redirect() {
        return signin;
    }
    let retry = |form: CheckoutForm, error: String, field: Option<&str>| {
        let state = state.clone();
        let visitor = visitor.clone();
        let field = field.map(str::to_owned);
        async move { checkout_form(&state, &visitor, form, Some(error), field).await }
    };
    if uuid::Uuid::parse_str(&form.idempotency_key).is_err() {
        let form = CheckoutForm {
            idempotency_key: uuid::Uuid::new_v4().to_string(),
            ..form
        };
        return retry(
            form,
            "The form expired; please submit it again.".into(),
            None,
        )
        .await;
    }
    let Some((exp_month, exp_year)) = parse_expiry(&form.expiry) else {
        return retry(
            form,
            "Enter the card's expiry as MM/YY.".into(),
            Some("expiry"),
        )
        .await;
    };
    let caller = visitor.caller();
    let card = json!({
        "number": form.card_number.replace([' ', '-'], ""),
        "exp_month": exp_month,
        "exp_year": exp_year,
        "cvc": form.cvc.trim(),
        "holder": form.name.trim(),
    });
    let card = state
        .backend
        .call(
            &caller,
            "payments",
            Method::POST,
            "/api/v1/payments/cards",
            Some(&card),
        )
        .await;
    let card_token = match card {
        Ok(card) => card
            .get("card_token")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        Err(error) => {
            // Payments names the card's fields as `number`, `exp_month`...: map to the form's.
            let field = error
                .problem()
                .and_then(|p| p.field.as_deref())
                .map(|f| match f {
                    "number" => "card_number",
                    "exp_month" | "exp_year" => "expiry",
                    other => other,
                })
                .map(str::to_owned);
            return retry(form, error.message(), field.as_deref()).await;
        }
    };
    let order = json!({
        "shipping_address": {
            "name": form.name.trim(),
            "line1": form.line1.trim(),
            "city": form.city.trim(),
            "country": form.country.trim(),
            "postal_code": form.postal_code.trim(),
        },
        "card_token": card_token,
        "currency": visitor.currency,
    });
    let mut headers = HeaderMap::new();
    if let Ok(key) = HeaderValue::from_str(&form.idempotency_key) {
        headers.insert(HeaderName::from_static("idempotency-key"), key);
    }
    let placed = state
        .backend
        .call_with(
            &caller,
            "orders",
            Method::POST,
            "/api/v1/orders",
            Some(&order),
            headers,
        )
        .await;
    match placed {
        Ok(placed) => {
            let id = placed
                .get("order_id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            Redirect::to(&format!("/orders/{}", query_value(id))).into_response()
        }
        Err(error) => {
            // `shipping_address.postal_code` → the form's `postal_code`.
            let field = error
                .problem()
                .and_then(|p| p.field.as_deref())
                .map(|f| f.trim_start_matches("shipping_address.").to_owned());
            retry(form, error.message(), field.as_deref()).await
        }
    }
}

/// `GET /orders`: the signed-in user's orders.
async fn orders(State(state): State<AppState>, visitor: Visitor) -> Response {
    if let Some(signin) = visitor.signin_redirect() {
        return signin;
    }
    let caller = visitor.caller();
    let (chrome, orders) = tokio::join!(
        visitor.chrome(&state),
        state.backend.get(&caller, "orders", "/api/v1/orders"),
    );
    let orders_error = unavailable(&orders);
    render(
        "orders.html",
        minijinja::context! {
            chrome,
            orders => orders.ok().and_then(|o| o.get("orders").cloned()),
            orders_error,
        },
    )
}

/// `GET /orders/{id}`: the order's status as the saga advances, its steps, payment and shipment
/// tracking. A pending order's page waits up to 2 s for the order to finish (the orders
/// service's `?wait=`, inside the backend's 3 s timeout), so a shopper sent here by checkout
/// usually sees the outcome at once; it reloads itself while the order is still pending.
async fn order(
    State(state): State<AppState>,
    visitor: Visitor,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    if let Some(signin) = visitor.signin_redirect() {
        return Ok(signin);
    }
    let caller = visitor.caller();
    let order_path = format!("/api/v1/orders/{}?wait=2", query_value(&id));
    let shipments_path = format!("/api/v1/shipments?order_id={}", query_value(&id));
    let (chrome, order) = tokio::join!(
        visitor.chrome(&state),
        state.backend.get(&caller, "orders", &order_path),
    );
    let order = order.map_err(|e| PageError::from(e).with_chrome(&chrome))?;
    // After the order's answer: a shipment created while it waited is shown.
    let shipments = state
        .backend
        .get(&caller, "shipping", &shipments_path)
        .await;
    let pending = order.get("status").and_then(Value::as_str) == Some("pending");
    Ok(render(
        "order.html",
        minijinja::context! {
            chrome,
            order,
            pending,
            shipment => shipments
                .as_ref()
                .ok()
                .and_then(|s| s.get("shipments"))
                .and_then(|s| s.get(0))
                .cloned(),
            shipping_error => unavailable(&shipments),
        },
    ))
}

/// `GET /account/mailbox`: the emails the shop wrote to the signed-in user.
async fn mailbox(State(state): State<AppState>, visitor: Visitor) -> Response {
    if let Some(signin) = visitor.signin_redirect() {
        return signin;
    }
    let caller = visitor.caller();
    let (chrome, mail) = tokio::join!(
        visitor.chrome(&state),
        state
            .backend
            .get(&caller, "notifications", "/api/v1/notifications"),
    );
    let mail_error = unavailable(&mail);
    render(
        "mailbox.html",
        minijinja::context! {
            chrome,
            emails => mail.ok().and_then(|m| m.get("items").cloned()),
            mail_error,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_accepts_two_and_four_digit_years_and_refuses_a_bad_month() {
        assert_eq!(parse_expiry("12/30"), Some((12, 2030)));
        assert_eq!(parse_expiry(" 1 / 2031 "), Some((1, 2031)));
        assert_eq!(parse_expiry("13/30"), None);
        assert_eq!(parse_expiry("1230"), None);
    }
}
