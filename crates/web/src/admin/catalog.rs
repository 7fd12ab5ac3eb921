//! `/admin/catalog`: products with their stock per warehouse, a form to create a product, and
//! per product (`/admin/catalog/products/{id}`) a form to change its name, price and featured
//! flag and a form to adjust its stock at a warehouse. The catalog and inventory services do
//! the admin checks and validation; a refusal is shown next to the field its problem names.
//!
//! Edits send the product back whole (`PUT`, the catalog's contract) with `If-Match` set to
//! the version the form was filled from, so an edit never overwrites a change the admin has not
//! seen.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::unavailable;
use super::Admin;
use crate::backend::{query_value, BackendError};
use crate::pages::{render_status, WebForm, WebQuery};
use crate::visitor::Visitor;
use crate::AppState;

/// Products per page of the list.
const PER_PAGE: u32 = 20;

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
    /// Text, so a mangled link shows page 1 rather than an error.
    #[serde(default)]
    page: String,
}

/// The create form's fields (text as typed, so a refused form comes back as it was).
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct CreateForm {
    #[serde(default)]
    sku: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    category: String,
    #[serde(default)]
    price_minor: String,
    #[serde(default)]
    currency: String,
    #[serde(default)]
    weight_grams: String,
    #[serde(default)]
    description: String,
    /// A checkbox: present (`on`) when ticked.
    #[serde(default)]
    featured: Option<String>,
}

/// A form's refusal: the message, and the form field it is about.
#[derive(Debug, Default, Serialize)]
struct Refusal {
    message: Option<String>,
    field: Option<String>,
}

impl Refusal {
    fn field(field: &str, message: &str) -> Self {
        Self {
            message: Some(message.to_owned()),
            field: Some(field.to_owned()),
        }
    }

    /// From a service's answer: its problem's `field` mapped to the form's names.
    fn from_backend(error: &BackendError) -> Self {
        let field = error.problem().and_then(|p| p.field.as_deref()).map(|f| {
            match f {
                "price.amount_minor" | "price" => "price_minor",
                "price.currency" => "currency",
                other => other,
            }
            .to_owned()
        });
        Self {
            message: Some(error.message()),
            field,
        }
    }

    /// The status a page with this refusal answers.
    fn status(error: &BackendError) -> StatusCode {
        match error {
            BackendError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            BackendError::Refused { problem, .. } => {
                StatusCode::from_u16(problem.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY)
            }
        }
    }
}

/// Parses an integer form field, or says which field is wrong.
fn integer(field: &str, text: &str, what: &str) -> Result<i64, Refusal> {
    text.trim()
        .parse()
        .map_err(|_| Refusal::field(field, &format!("{what} must be a whole number.")))
}

/// `GET /admin/catalog`.
pub async fn list(
    State(state): State<AppState>,
    Admin(visitor): Admin,
    WebQuery(query): WebQuery<ListQuery>,
) -> Response {
    list_page(
        &state,
        &visitor,
        query,
        CreateForm {
            currency: "USD".to_owned(),
            ..CreateForm::default()
        },
        Refusal::default(),
        StatusCode::OK,
    )
    .await
}

async fn list_page(
    state: &AppState,
    visitor: &Visitor,
    query: ListQuery,
    form: CreateForm,
    refusal: Refusal,
    status: StatusCode,
) -> Response {
    let page = super::number(&query.page, 1, 1, u32::MAX);
    let mut path = format!("/api/v1/products?page={page}&per_page={PER_PAGE}&sort=name");
    if !query.q.trim().is_empty() {
        path.push_str(&format!("&q={}", query_value(query.q.trim())));
    }
    let caller = visitor.caller();
    let (chrome, products, categories, warehouses) = tokio::join!(
        visitor.chrome(state),
        state.backend.get(&caller, "catalog", &path),
        state.backend.get(&caller, "catalog", "/api/v1/categories"),
        state
            .backend
            .get(&caller, "inventory", "/api/v1/warehouses"),
    );
    let catalog_error = unavailable(&products);
    let items: Vec<Value> = products
        .as_ref()
        .ok()
        .and_then(|p| p.get("items").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    let ids: Vec<&str> = items
        .iter()
        .filter_map(|p| p.get("id").and_then(Value::as_str))
        .collect();
    let stock = if ids.is_empty() {
        Ok(json!({"items": []}))
    } else {
        let path = format!(
            "/api/v1/inventory?product_ids={}",
            query_value(&ids.join(","))
        );
        state.backend.get(&caller, "inventory", &path).await
    };
    let inventory_error = unavailable(&stock).or_else(|| unavailable(&warehouses));
    let stock_items: Vec<Value> = stock
        .ok()
        .and_then(|s| s.get("items").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    // Each product with its stock by warehouse id, for the table's columns.
    let rows: Vec<Value> = items
        .iter()
        .map(|product| {
            let id = product.get("id").and_then(Value::as_str);
            let item = stock_items
                .iter()
                .find(|s| s.get("product_id").and_then(Value::as_str) == id);
            let by_warehouse: serde_json::Map<String, Value> = item
                .and_then(|i| i.get("warehouses").and_then(Value::as_array))
                .into_iter()
                .flatten()
                .filter_map(|w| Some((w.get("warehouse_id")?.as_str()?.to_owned(), w.clone())))
                .collect();
            json!({
                "product": product,
                "available": item.and_then(|i| i.get("available")).cloned(),
                "stock": by_warehouse,
            })
        })
        .collect();
    let total_pages = products
        .as_ref()
        .ok()
        .and_then(|p| p.get("total_pages").and_then(Value::as_u64))
        .unwrap_or(1)
        .max(1);
    let link = |to: u32| {
        serde_urlencoded::to_string([("q", query.q.as_str()), ("page", &to.to_string())])
            .map(|q| format!("/admin/catalog?{q}"))
            .unwrap_or_default()
    };
    render_status(
        status,
        "admin/catalog.html",
        minijinja::context! {
            chrome,
            section => "catalog",
            query => &query,
            rows,
            total => products.as_ref().ok().and_then(|p| p.get("total").cloned()),
            page,
            total_pages,
            previous => (page > 1).then(|| link(page - 1)),
            next => (u64::from(page) < total_pages).then(|| link(page + 1)),
            categories => categories.ok().and_then(|c| c.get("items").cloned()),
            warehouses => warehouses.ok().and_then(|w| w.get("warehouses").cloned()),
            catalog_error,
            inventory_error,
            form,
            refusal,
        },
    )
}

/// `POST /admin/catalog/products`: creates a product.
pub async fn create(
    State(state): State<AppState>,
    Admin(visitor): Admin,
    WebForm(form): WebForm<CreateForm>,
) -> Response {
    let again = |form: CreateForm, refusal: Refusal, status: StatusCode| {
        let state = state.clone();
        let visitor = visitor.clone();
        async move {
            list_page(
                &state,
                &visitor,
                ListQuery::default(),
                form,
                refusal,
                status,
            )
            .await
        }
    };
    let numbers = integer("price_minor", &form.price_minor, "The price").and_then(|price| {
        integer("weight_grams", &form.weight_grams, "The weight").map(|weight| (price, weight))
    });
    let (price, weight) = match numbers {
        Ok(numbers) => numbers,
        Err(refusal) => return again(form, refusal, StatusCode::UNPROCESSABLE_ENTITY).await,
    };
    let body = json!({
        "sku": form.sku.trim(),
        "name": form.name.trim(),
        "category": form.category.trim(),
        "price": {"amount_minor": price, "currency": form.currency.trim()},
        "weight_grams": weight,
        "description": form.description.trim(),
        "featured": form.featured.is_some(),
    });
    let created = state
        .backend
        .call(
            &visitor.caller(),
            "catalog",
            Method::POST,
            "/api/v1/products",
            Some(&body),
        )
        .await;
    match created {
        Ok(product) => {
            let id = product
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            Redirect::to(&format!(
                "/admin/catalog/products/{}?done=created",
                query_value(id)
            ))
            .into_response()
        }
        Err(error) => again(form, Refusal::from_backend(&error), Refusal::status(&error)).await,
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ProductQuery {
    /// What was just done: `created`, `saved` or `adjusted`.
    #[serde(default)]
    done: String,
}

/// The edit form's fields.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct EditForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    price_minor: String,
    #[serde(default)]
    featured: Option<String>,
    /// The product version the form was filled from (sent as `If-Match`).
    #[serde(default)]
    version: String,
}

/// The stock adjustment form's fields.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct AdjustForm {
    #[serde(default)]
    warehouse_id: String,
    #[serde(default)]
    delta: String,
    #[serde(default)]
    reason: String,
}

/// What the product page shows besides the product.
#[derive(Default)]
struct ProductPage {
    done: String,
    edit: Option<EditForm>,
    edit_refusal: Refusal,
    adjust: AdjustForm,
    adjust_refusal: Refusal,
    status: Option<StatusCode>,
}

/// `GET /admin/catalog/products/{id}`.
pub async fn product(
    State(state): State<AppState>,
    Admin(visitor): Admin,
    Path(id): Path<String>,
    WebQuery(query): WebQuery<ProductQuery>,
) -> Response {
    product_page(
        &state,
        &visitor,
        &id,
        ProductPage {
            done: query.done,
            ..ProductPage::default()
        },
    )
    .await
}

async fn product_page(
    state: &AppState,
    visitor: &Visitor,
    id: &str,
    page: ProductPage,
) -> Response {
    let caller = visitor.caller();
    let product_path = format!("/api/v1/products/{}", query_value(id));
    let stock_path = format!("/api/v1/inventory/{}", query_value(id));
    let (chrome, product, stock, warehouses) = tokio::join!(
        visitor.chrome(state),
        state.backend.get(&caller, "catalog", &product_path),
        state.backend.get(&caller, "inventory", &stock_path),
        state
            .backend
            .get(&caller, "inventory", "/api/v1/warehouses"),
    );
    let product_missing = product.as_ref().err().and_then(BackendError::status) == Some(404);
    // 404 from inventory: it has never stocked this product (a new one); not an outage.
    let never_stocked = stock.as_ref().err().and_then(BackendError::status) == Some(404);
    let catalog_error = if product_missing {
        None
    } else {
        unavailable(&product)
    };
    let inventory_error = if never_stocked {
        None
    } else {
        unavailable(&stock).or_else(|| unavailable(&warehouses))
    };
    let product = product.ok();
    let edit = page.edit.unwrap_or_else(|| EditForm {
        name: product
            .as_ref()
            .and_then(|p| p.get("name").and_then(Value::as_str))
            .unwrap_or_default()
            .to_owned(),
        price_minor: product
            .as_ref()
            .and_then(|p| p.pointer("/price/amount_minor").and_then(Value::as_i64))
            .map(|n| n.to_string())
            .unwrap_or_default(),
        featured: product
            .as_ref()
            .and_then(|p| p.get("featured").and_then(Value::as_bool))
            .filter(|f| *f)
            .map(|_| "on".to_owned()),
        version: product
            .as_ref()
            .and_then(|p| p.get("version").and_then(Value::as_i64))
            .map(|n| n.to_string())
            .unwrap_or_default(),
    });
    let status = page.status.unwrap_or(if product_missing {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    });
    render_status(
        status,
        "admin/product.html",
        minijinja::context! {
            chrome,
            section => "catalog",
            id,
            product,
            product_missing,
            catalog_error,
            stock => stock.ok(),
            never_stocked,
            warehouses => warehouses.ok().and_then(|w| w.get("warehouses").cloned()),
            inventory_error,
            done => page.done,
            edit,
            edit_refusal => page.edit_refusal,
            adjust => page.adjust,
            adjust_refusal => page.adjust_refusal,
        },
    )
}

/// `POST /admin/catalog/products/{id}`: changes the name, price and featured flag.
pub async fn update(
    State(state): State<AppState>,
    Admin(visitor): Admin,
    Path(id): Path<String>,
    WebForm(form): WebForm<EditForm>,
) -> Response {
    let again = |form: EditForm, refusal: Refusal, status: StatusCode| {
        let state = state.clone();
        let visitor = visitor.clone();
        let id = id.clone();
        async move {
            let page = ProductPage {
                edit: Some(form),
                edit_refusal: refusal,
                status: Some(status),
                ..ProductPage::default()
            };
            product_page(&state, &visitor, &id, page).await
        }
    };
    let price = match integer("price_minor", &form.price_minor, "The price") {
        Ok(price) => price,
        Err(refusal) => return again(form, refusal, StatusCode::UNPROCESSABLE_ENTITY).await,
    };
    let caller = visitor.caller();
    let path = format!("/api/v1/products/{}", query_value(&id));
    // The catalog replaces whole products: start from what it holds now.
    let mut product = match state.backend.get(&caller, "catalog", &path).await {
        Ok(product) => product,
        Err(error) => {
            return again(form, Refusal::from_backend(&error), Refusal::status(&error)).await
        }
    };
    if let Some(fields) = product.as_object_mut() {
        fields.insert("name".into(), json!(form.name.trim()));
        fields.insert("featured".into(), json!(form.featured.is_some()));
        if let Some(money) = fields.get_mut("price").and_then(Value::as_object_mut) {
            money.insert("amount_minor".into(), json!(price));
        }
    }
    let mut headers = HeaderMap::new();
    if let Ok(version) = HeaderValue::from_str(form.version.trim()) {
        if !form.version.trim().is_empty() {
            headers.insert(HeaderName::from_static("if-match"), version);
        }
    }
    let saved = state
        .backend
        .call_with(
            &caller,
            "catalog",
            Method::PUT,
            &path,
            Some(&product),
            headers,
        )
        .await;
    match saved {
        Ok(_) => Redirect::to(&format!(
            "/admin/catalog/products/{}?done=saved",
            query_value(&id)
        ))
        .into_response(),
        Err(error) if error.status() == Some(412) => {
            // Someone changed it meanwhile: show the current values, and say so.
            let page = ProductPage {
                edit_refusal: Refusal {
                    message: Some(
                        "This product was changed by someone else since you opened it. The \
                         form now shows the current values; make your change again."
                            .to_owned(),
                    ),
                    field: None,
                },
                status: Some(StatusCode::PRECONDITION_FAILED),
                ..ProductPage::default()
            };
            product_page(&state, &visitor, &id, page).await
        }
        Err(error) => again(form, Refusal::from_backend(&error), Refusal::status(&error)).await,
    }
}

/// `POST /admin/catalog/products/{id}/adjustments`: adds or removes units at a warehouse.
pub async fn adjust(
    State(state): State<AppState>,
    Admin(visitor): Admin,
    Path(id): Path<String>,
    WebForm(form): WebForm<AdjustForm>,
) -> Response {
    let again = |form: AdjustForm, refusal: Refusal, status: StatusCode| {
        let state = state.clone();
        let visitor = visitor.clone();
        let id = id.clone();
        async move {
            let page = ProductPage {
                adjust: form,
                adjust_refusal: refusal,
                status: Some(status),
                ..ProductPage::default()
            };
            product_page(&state, &visitor, &id, page).await
        }
    };
    let delta = match integer("delta", &form.delta, "The change") {
        Ok(delta) => delta,
        Err(refusal) => return again(form, refusal, StatusCode::UNPROCESSABLE_ENTITY).await,
    };
    let body = json!({
        "warehouse_id": form.warehouse_id.trim(),
        "delta": delta,
        "reason": form.reason.trim(),
    });
    let path = format!("/api/v1/inventory/{}/adjustments", query_value(&id));
    let adjusted = state
        .backend
        .call(
            &visitor.caller(),
            "inventory",
            Method::POST,
            &path,
            Some(&body),
        )
        .await;
    match adjusted {
        Ok(_) => Redirect::to(&format!(
            "/admin/catalog/products/{}?done=adjusted",
            query_value(&id)
        ))
        .into_response(),
        Err(error) => again(form, Refusal::from_backend(&error), Refusal::status(&error)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Problem;

    #[test]
    fn a_refusal_names_the_form_field_the_problem_names() {
        let refused = |field: &str| BackendError::Refused {
            service: "catalog".into(),
            problem: Problem {
                title: "A field has an invalid value".into(),
                status: 422,
                detail: Some("bad".into()),
                code: "validation_failed".into(),
                field: Some(field.into()),
            },
        };
        let field = |f: &str| Refusal::from_backend(&refused(f)).field;
        assert_eq!(field("price.amount_minor").as_deref(), Some("price_minor"));
        assert_eq!(field("price.currency").as_deref(), Some("currency"));
        assert_eq!(field("sku").as_deref(), Some("sku"));
        assert_eq!(
            Refusal::status(&refused("sku")),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        let down = BackendError::Unavailable {
            service: "catalog".into(),
        };
        assert_eq!(Refusal::status(&down), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(Refusal::from_backend(&down).field, None);
    }

    #[test]
    fn numbers_are_checked_before_asking_a_service() {
        assert_eq!(integer("delta", " -3 ", "The change").ok(), Some(-3));
        let refusal = integer("delta", "three", "The change").expect_err("refused");
        assert_eq!(refusal.field.as_deref(), Some("delta"));
    }
}
