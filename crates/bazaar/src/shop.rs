//! `bazaar cart ...`, `bazaar checkout` and `bazaar orders ...`: a shopper's client, through the
//! gateway like the storefront, as the user `session::user_token` finds (`--token`, or the
//! stored sign-in from `bazaar login`).

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

use crate::api::Api;
use crate::cli::{CartArgs, CartCommand, CheckoutArgs, Global, OrdersArgs, OrdersCommand};
use crate::output;
use crate::products::encode;

pub async fn cart(global: Global, args: CartArgs) -> anyhow::Result<()> {
    let shop = Api::signed_in(&global).await?;
    use reqwest::Method;
    let body = match &args.command {
        CartCommand::Show => shop.call(Method::GET, "/api/v1/cart", None, &[]).await?,
        CartCommand::Add {
            product_id,
            quantity,
        } => {
            shop.call(
                Method::POST,
                "/api/v1/cart/lines",
                Some(json!({"product_id": product_id, "quantity": quantity})),
                &[],
            )
            .await?
        }
        CartCommand::Set {
            product_id,
            quantity,
        } => {
            shop.call(
                Method::PUT,
                &format!("/api/v1/cart/lines/{}", encode(product_id)),
                Some(json!({"quantity": quantity})),
                &[],
            )
            .await?
        }
        CartCommand::Remove { product_id } => {
            shop.call(
                Method::DELETE,
                &format!("/api/v1/cart/lines/{}", encode(product_id)),
                None,
                &[],
            )
            .await?
        }
    };
    let body = if body.is_null() {
        shop.call(Method::GET, "/api/v1/cart", None, &[]).await?
    } else {
        body
    };
    if global.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        print_cart(&body);
    }
    Ok(())
}

fn print_cart(cart: &Value) {
    let lines = cart["lines"].as_array().cloned().unwrap_or_default();
    if lines.is_empty() {
        println!("the cart is empty");
        return;
    }
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|l| {
            vec![
                l["product_id"].as_str().unwrap_or_default().to_owned(),
                l["name"].as_str().unwrap_or_default().to_owned(),
                l["quantity"].to_string(),
                money(&l["line_total"]),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(&["PRODUCT", "NAME", "QTY", "TOTAL"], &rows)
    );
    println!("subtotal: {}", money(&cart["subtotal"]));
}

fn money(value: &Value) -> String {
    output::money(
        value["amount_minor"].as_i64().unwrap_or_default(),
        value["currency"].as_str().unwrap_or("USD"),
    )
}

pub async fn checkout(global: Global, args: CheckoutArgs) -> anyhow::Result<()> {
    let shop = Api::signed_in(&global).await?;
    let (exp_month, exp_year) = args
        .expiry
        .split_once('/')
        .and_then(|(m, y)| Some((m.trim().parse::<u32>().ok()?, y.trim().parse::<u32>().ok()?)))
        .map(|(m, y)| (m, if y < 100 { 2000 + y } else { y }))
        .context("--expiry must look like MM/YY, e.g. 12/30")?;
    let card = shop
        .call(
            reqwest::Method::POST,
            "/api/v1/payments/cards",
            Some(json!({"number": args.card, "exp_month": exp_month, "exp_year": exp_year, "cvc": args.cvc})),
            &[],
        )
        .await
        .context("the card was not accepted")?;
    let card_token = card["card_token"]
        .as_str()
        .context("payments did not return a card token")?;
    let key = args
        .idempotency_key
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut body = json!({
        "shipping_address": {
            "name": args.name, "line1": args.line1, "city": args.city,
            "country": args.country, "postal_code": args.postal_code,
        },
        "card_token": card_token,
    });
    if let Some(currency) = &args.currency {
        body["currency"] = json!(currency);
    }
    let placed = shop
        .call(
            reqwest::Method::POST,
            "/api/v1/orders",
            Some(body),
            &[("idempotency-key", key)],
        )
        .await?;
    let order_id = placed["order_id"].as_str().unwrap_or_default().to_owned();
    let mut order = placed.clone();
    if args.wait {
        let deadline = Instant::now() + Duration::from_secs(args.wait_seconds);
        loop {
            // The orders service holds each answer until the order finishes (at most 5 s).
            let left = deadline.saturating_duration_since(Instant::now()).as_secs();
            order = shop
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/orders/{order_id}?wait={}", left.clamp(1, 5)),
                    None,
                    &[],
                )
                .await?;
            if order["status"] != "pending" || Instant::now() >= deadline {
                break;
            }
        }
    }
    if global.json {
        println!("{}", serde_json::to_string_pretty(&order)?);
    } else {
        println!(
            "order {order_id}: {} {}",
            order["status"].as_str().unwrap_or_default(),
            order["status_reason"].as_str().unwrap_or_default()
        );
    }
    if order["status"] == "cancelled" {
        anyhow::bail!("the order was cancelled");
    }
    Ok(())
}

pub async fn orders(global: Global, args: OrdersArgs) -> anyhow::Result<()> {
    let shop = Api::signed_in(&global).await?;
    match &args.command {
        OrdersCommand::List => {
            let body = shop
                .call(reqwest::Method::GET, "/api/v1/orders", None, &[])
                .await?;
            if global.json {
                println!("{}", serde_json::to_string_pretty(&body)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = body["orders"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|o| {
                    vec![
                        o["id"].as_str().unwrap_or_default().to_owned(),
                        o["status"].as_str().unwrap_or_default().to_owned(),
                        money(&o["total"]),
                        o["status_reason"].as_str().unwrap_or_default().to_owned(),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(&["ORDER", "STATUS", "TOTAL", "REASON"], &rows)
            );
        }
        OrdersCommand::Show { id } => {
            let order = shop
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/orders/{}", encode(id)),
                    None,
                    &[],
                )
                .await?;
            if global.json {
                println!("{}", serde_json::to_string_pretty(&order)?);
                return Ok(());
            }
            println!("order {}", order["id"].as_str().unwrap_or_default());
            println!(
                "status: {} ({})",
                order["status"].as_str().unwrap_or_default(),
                order["status_reason"].as_str().unwrap_or_default()
            );
            println!("total: {}", money(&order["total"]));
            if let Some(tracking) = order["tracking_number"].as_str() {
                println!("tracking: {tracking}");
            }
            let rows: Vec<Vec<String>> = order["history"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|h| {
                    vec![
                        h["step"].as_str().unwrap_or_default().to_owned(),
                        h["outcome"].as_str().unwrap_or_default().to_owned(),
                        h["detail"].as_str().unwrap_or_default().to_owned(),
                    ]
                })
                .collect();
            print!("{}", output::table(&["STEP", "OUTCOME", "DETAIL"], &rows));
        }
    }
    Ok(())
}
